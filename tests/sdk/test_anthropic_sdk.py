"""Black-box tests of relay-gateway's Anthropic Messages dialect through the official
`anthropic` Python SDK, against one channel per upstream dialect (via-openai,
via-anthropic, via-gemini), so that every Anthropic-client pair is covered."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from conftest import (
    API_KEY,
    EXPECTED_TEXT,
    HEALTHY_TOKENS,
    PRESETS,
    UPSTREAM_PRESETS,
    mock_tool_tokens,
    settled,
)

MAX_TOKENS = 256
USER_MSG = [{"role": "user", "content": "Say something."}]

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather for a location.",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["location"],
    },
}
WEATHER_ARGS = {"location": "mock"}
# What the mock reports as output tokens for the one get_weather call, in every dialect.
TOOL_TOKENS = mock_tool_tokens("get_weather", json.dumps(WEATHER_ARGS, separators=(",", ":")))


def _text(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def _assert_settled(log_path, request_id: str, preset: str, usage, stream: bool) -> None:
    """The gateway's record of the request names the preset's channel and holds the usage
    the upstream reported, which is also what the client was told."""
    fields = settled(log_path, request_id)
    assert fields["channel"] == UPSTREAM_PRESETS[preset][0], fields
    assert fields["upstream_model"] == UPSTREAM_PRESETS[preset][1], fields
    assert fields["status"] == "200", fields
    assert fields["stream"] == str(stream).lower(), fields
    assert fields["estimated"] == "false", fields
    assert int(fields["output_tokens"]) == usage.output_tokens, fields
    assert int(fields["input_tokens"]) == usage.input_tokens, fields


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize("preset", PRESETS)
def test_messages_create_text(anthropic_client, gateway_log, gateway_log_path, preset):
    raw = anthropic_client.messages.with_raw_response.create(
        model=preset, max_tokens=MAX_TOKENS, messages=USER_MSG
    )
    msg = raw.parse()
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.id
    assert [b.type for b in msg.content] == ["text"], gateway_log()
    assert _text(msg) == EXPECTED_TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0
    assert msg.usage.output_tokens == HEALTHY_TOKENS
    _assert_settled(gateway_log_path, raw.headers["x-request-id"], preset, msg.usage, stream=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_messages_create_with_system_prompt(anthropic_client, preset):
    msg = anthropic_client.messages.create(
        model=preset, max_tokens=MAX_TOKENS, system="You are terse.", messages=USER_MSG
    )
    assert _text(msg) == EXPECTED_TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == HEALTHY_TOKENS


@pytest.mark.parametrize("preset", PRESETS)
def test_messages_stream_text(anthropic_client, gateway_log, gateway_log_path, preset):
    with anthropic_client.messages.stream(model=preset, max_tokens=MAX_TOKENS, messages=USER_MSG) as stream:
        events = list(stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    assert _text(final) == EXPECTED_TEXT, gateway_log()
    text_deltas = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert "".join(text_deltas) == EXPECTED_TEXT
    assert len(text_deltas) > 1, "the text should arrive in several deltas"
    types = [e.type for e in events]
    assert types[0] == "message_start", types
    assert types[-1] == "message_stop", types
    assert types.count("message_delta") == 1, types
    assert [b.type for b in final.content] == ["text"]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == HEALTHY_TOKENS
    assert final.usage.input_tokens > 0
    _assert_settled(gateway_log_path, request_id, preset, final.usage, stream=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_messages_stream_text_stream_helper(anthropic_client, preset):
    with anthropic_client.messages.stream(model=preset, max_tokens=MAX_TOKENS, messages=USER_MSG) as stream:
        text = "".join(stream.text_stream)
        assert stream.get_final_text() == EXPECTED_TEXT
    assert text == EXPECTED_TEXT


@pytest.mark.parametrize("preset", PRESETS)
def test_messages_create_stream_true_raw_events(anthropic_client, preset):
    """`stream=True` without the helper: the raw SSE event sequence."""
    events = list(anthropic_client.messages.create(model=preset, max_tokens=MAX_TOKENS, messages=USER_MSG, stream=True))
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop", types
    starts = [e for e in events if e.type == "content_block_start"]
    stops = [e for e in events if e.type == "content_block_stop"]
    assert [s.content_block.type for s in starts] == ["text"]
    assert [s.index for s in starts] == [s.index for s in stops] == [0]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert "".join(d.delta.text for d in deltas) == EXPECTED_TEXT
    (message_delta,) = [e for e in events if e.type == "message_delta"]
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.usage.output_tokens == HEALTHY_TOKENS


# --------------------------------------------------------------------------- tool use


def _tool_result_turn(messages: list, final) -> list:
    """`messages` plus the assistant's tool_use turn and the user's tool_result."""
    (tool_use,) = [b for b in final.content if b.type == "tool_use"]
    return messages + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use.id,
                    "content": json.dumps({"temp_c": 18, "sky": "clear"}),
                }
            ],
        },
    ]


@pytest.mark.parametrize("preset", PRESETS)
def test_tool_use_stream_and_round_trip(anthropic_client, gateway_log, gateway_log_path, preset):
    """The tool_use block survives streaming intact (input assembled from input_json_delta
    fragments) with the usage the upstream reported; via-openai is the OpenAI-compatible
    upstream translated into Anthropic events."""
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    with anthropic_client.messages.stream(
        model=preset, max_tokens=MAX_TOKENS, messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    tool_uses = [b for b in final.content if b.type == "tool_use"]
    assert len(tool_uses) == 1, (final.model_dump(), gateway_log())
    tool_use = tool_uses[0]
    assert tool_use.name == "get_weather"
    assert tool_use.input == WEATHER_ARGS
    assert tool_use.id
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens == TOOL_TOKENS

    # The input arrived as input_json_delta fragments that join to valid JSON.
    json_deltas = [
        e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert json_deltas, [e.type for e in events]
    assert json.loads("".join(json_deltas)) == WEATHER_ARGS
    starts = [e.content_block for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    assert len(starts) == 1 and starts[0].name == "get_weather" and starts[0].id == tool_use.id
    _assert_settled(gateway_log_path, request_id, preset, final.usage, stream=True)

    # The tool_result goes back (translated into the upstream's dialect) and text comes out.
    follow_up = _tool_result_turn(messages, final)
    with anthropic_client.messages.stream(
        model=preset, max_tokens=MAX_TOKENS, messages=follow_up, tools=[WEATHER_TOOL]
    ) as stream:
        answer = stream.get_final_message()
    assert [b.type for b in answer.content] == ["text"], (answer.model_dump(), gateway_log())
    assert _text(answer) == EXPECTED_TEXT
    assert answer.stop_reason == "end_turn"
    assert answer.usage.output_tokens == HEALTHY_TOKENS

    # And without streaming.
    answer = anthropic_client.messages.create(
        model=preset, max_tokens=MAX_TOKENS, messages=follow_up, tools=[WEATHER_TOOL]
    )
    assert _text(answer) == EXPECTED_TEXT
    assert answer.stop_reason == "end_turn"


@pytest.mark.parametrize("preset", PRESETS)
def test_tool_use_non_streamed(anthropic_client, gateway_log_path, preset):
    raw = anthropic_client.messages.with_raw_response.create(
        model=preset,
        max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],
    )
    msg = raw.parse()
    tool_uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(tool_uses) == 1, msg.model_dump()
    assert tool_uses[0].name == "get_weather"
    assert tool_uses[0].input == WEATHER_ARGS
    assert tool_uses[0].id
    assert msg.stop_reason == "tool_use"
    assert msg.usage.output_tokens == TOOL_TOKENS
    assert msg.usage.input_tokens > 0
    _assert_settled(gateway_log_path, raw.headers["x-request-id"], preset, msg.usage, stream=False)


# --------------------------------------------------------------------------- count_tokens


@pytest.mark.parametrize("preset", PRESETS)
def test_count_tokens(anthropic_client, preset):
    short = anthropic_client.messages.count_tokens(model=preset, messages=USER_MSG)
    assert short.input_tokens > 0
    long = anthropic_client.messages.count_tokens(
        model=preset, messages=[{"role": "user", "content": "Say something. " * 50}]
    )
    assert long.input_tokens > short.input_tokens


def test_count_tokens_unknown_model_is_not_found(anthropic_client):
    with pytest.raises(anthropic.NotFoundError) as info:
        anthropic_client.messages.count_tokens(model="no-such-model", messages=USER_MSG)
    assert info.value.status_code == 404


# --------------------------------------------------------------------------- errors


def test_wrong_key_is_authentication_error(gateway_url):
    bad = anthropic.Anthropic(base_url=gateway_url, api_key="rk-wrong", max_retries=0, timeout=20)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="via-anthropic", max_tokens=MAX_TOKENS, messages=USER_MSG)
    err = info.value
    assert err.status_code == 401
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "authentication_error"
    assert err.body["error"]["message"]
    assert err.response.headers.get("x-request-id")
    bad.close()


def test_wrong_key_streamed_is_authentication_error(gateway_url):
    bad = anthropic.Anthropic(base_url=gateway_url, api_key="rk-wrong", max_retries=0, timeout=20)
    with pytest.raises(anthropic.AuthenticationError):
        with bad.messages.stream(model="via-anthropic", max_tokens=MAX_TOKENS, messages=USER_MSG) as stream:
            stream.get_final_message()
    bad.close()


def test_bearer_key_is_accepted(gateway_url):
    """The key may also come as `Authorization: Bearer` (the SDK's auth_token)."""
    c = anthropic.Anthropic(base_url=gateway_url, auth_token=API_KEY, max_retries=0, timeout=20)
    msg = c.messages.create(model="via-anthropic", max_tokens=MAX_TOKENS, messages=USER_MSG)
    assert _text(msg) == EXPECTED_TEXT
    c.close()


def test_missing_key_is_401(gateway_url):
    r = httpx.post(
        gateway_url + "/v1/messages",
        json={"model": "via-anthropic", "max_tokens": MAX_TOKENS, "messages": USER_MSG},
        timeout=20,
    )
    assert r.status_code == 401
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_not_found(anthropic_client, stream):
    with pytest.raises(anthropic.NotFoundError) as info:
        if stream:
            with anthropic_client.messages.stream(
                model="no-such-model", max_tokens=MAX_TOKENS, messages=USER_MSG
            ) as s:
                s.get_final_message()
        else:
            anthropic_client.messages.create(model="no-such-model", max_tokens=MAX_TOKENS, messages=USER_MSG)
    err = info.value
    assert err.status_code == 404
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in err.body["error"]["message"]


def test_missing_max_tokens_is_invalid_request(gateway_url):
    r = httpx.post(
        gateway_url + "/v1/messages",
        json={"model": "via-anthropic", "messages": USER_MSG},
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        timeout=20,
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert r.headers.get("x-request-id")


def test_malformed_json_is_invalid_request(gateway_url):
    r = httpx.post(
        gateway_url + "/v1/messages",
        content=b'{"model": "via-anthropic", "messages": [',
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
        timeout=20,
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


def test_sdk_bad_request_error(anthropic_client):
    """A 400 surfaces as anthropic.BadRequestError (empty messages)."""
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client.messages.create(model="via-anthropic", max_tokens=MAX_TOKENS, messages=[])
    assert info.value.body["error"]["type"] == "invalid_request_error"
