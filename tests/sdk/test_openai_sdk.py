"""Black-box tests of relay-gateway through the official OpenAI Python SDK (2.x)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import (
    API_KEY,
    EXPECTED_TEXT,
    HEALTHY_TOKENS,
    PRESETS,
    UPSTREAM_PRESETS,
    mock_tool_tokens,
    request_log,
    settled,
)

USER_MSG = [{"role": "user", "content": "Say something."}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a location.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["location"],
        },
    },
}


def _collect_stream(stream):
    """Return (text, chunks) of a raw chat-completions stream."""
    chunks = list(stream)
    text = "".join(
        (c.choices[0].delta.content or "") for c in chunks if c.choices and c.choices[0].delta is not None
    )
    return text, chunks


_request_log = request_log


# --------------------------------------------------------------------------- completions


def test_plain_completion(client):
    resp = client.chat.completions.create(model="plain", messages=USER_MSG)
    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    text = choice.message.content
    assert text.startswith("Hello")
    assert text == EXPECTED_TEXT
    assert resp.usage is not None
    assert resp.usage.completion_tokens == HEALTHY_TOKENS
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_bare_model_routing(client):
    """A bare model name (no preset) is served by a channel that serves it."""
    resp = client.chat.completions.create(model="gpt-test", messages=USER_MSG)
    assert resp.choices[0].message.content == EXPECTED_TEXT
    assert resp.usage.completion_tokens == HEALTHY_TOKENS


def test_stream_with_include_usage(client):
    plain = client.chat.completions.create(model="plain", messages=USER_MSG)
    stream = client.chat.completions.create(
        model="plain", messages=USER_MSG, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = _collect_stream(stream)
    assert text == plain.choices[0].message.content == EXPECTED_TEXT
    assert all(c.object == "chat.completion.chunk" for c in chunks)

    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, f"expected exactly one chunk with usage, got {len(usage_chunks)}"
    final = usage_chunks[0]
    assert final is chunks[-1], "the usage chunk must be the last one"
    assert final.choices == []
    assert final.usage.completion_tokens == HEALTHY_TOKENS
    assert final.usage.prompt_tokens > 0

    empty_choice_chunks = [c for c in chunks if not c.choices]
    assert empty_choice_chunks == [final]

    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    ids = {c.id for c in chunks}
    assert len(ids) == 1, f"all chunks of one stream share one id, got {ids}"


def test_stream_without_include_usage_has_no_usage(client):
    stream = client.chat.completions.create(model="plain", messages=USER_MSG, stream=True)
    text, chunks = _collect_stream(stream)
    assert text == EXPECTED_TEXT
    with_usage = [c.model_dump() for c in chunks if c.usage is not None]
    assert with_usage == [], f"chunks carrying usage although the client did not ask: {with_usage}"
    assert all(c.choices for c in chunks), "no chunk with empty choices is expected without include_usage"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finish == ["stop"]


def test_stream_include_usage_false_has_no_usage(client):
    stream = client.chat.completions.create(
        model="plain", messages=USER_MSG, stream=True, stream_options={"include_usage": False}
    )
    text, chunks = _collect_stream(stream)
    assert text == EXPECTED_TEXT
    assert [c.model_dump() for c in chunks if c.usage is not None] == []


# --------------------------------------------------------------------------- failover


def _assert_failed_over(log_path, request_id: str, stream: bool) -> None:
    mine = _request_log(log_path, request_id, "request settled")
    joined = "\n".join(mine)
    assert any("attempt failed" in l and "channel=broken" in l and "500" in l for l in mine), joined
    settled = [l for l in mine if "request settled" in l]
    assert len(settled) == 1, joined
    assert 'channel="healthy"' in settled[0] and "status=200" in settled[0], joined
    assert f"stream={str(stream).lower()}" in settled[0], joined


def test_failover_plain(client, gateway_log, gateway_log_path):
    raw = client.chat.completions.with_raw_response.create(model="failover", messages=USER_MSG)
    resp = raw.parse()
    assert resp.choices[0].message.content == EXPECTED_TEXT, gateway_log()
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == HEALTHY_TOKENS
    # The broken channel was really tried first.
    _assert_failed_over(gateway_log_path, raw.headers["x-request-id"], stream=False)


def test_failover_streamed(client, gateway_log, gateway_log_path):
    raw = client.chat.completions.with_raw_response.create(
        model="failover", messages=USER_MSG, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = _collect_stream(raw.parse())
    assert text == EXPECTED_TEXT, gateway_log()
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].usage.completion_tokens == HEALTHY_TOKENS
    _assert_failed_over(gateway_log_path, raw.headers["x-request-id"], stream=True)


# --------------------------------------------------------------------------- tool calls


def test_tool_calls_stream_helper_and_round_trip(client):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    with client.chat.completions.stream(model="plain", messages=messages, tools=[WEATHER_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args["location"] == "mock"

    # Per-event API: the arguments.done event carries the full arguments.
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert len(done) == 1, [e.type for e in events]
    assert done[0].name == "get_weather"
    assert done[0].index == 0
    assert json.loads(done[0].arguments) == args
    assert done[0].arguments == call.function.arguments
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert deltas, "argument delta events expected"
    assert "".join(e.arguments_delta for e in deltas) == call.function.arguments

    # Send the tool result back and get a text answer.
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18, "sky": "clear"})},
    ]
    with client.chat.completions.stream(model="plain", messages=messages, tools=[WEATHER_TOOL]) as stream:
        content_done = [e for e in stream if e.type == "content.done"]
        answer = stream.get_final_completion()
    assert answer.choices[0].finish_reason == "stop"
    assert not answer.choices[0].message.tool_calls
    assert answer.choices[0].message.content == EXPECTED_TEXT
    assert len(content_done) == 1 and content_done[0].content == EXPECTED_TEXT

    # The same round trip without streaming.
    resp = client.chat.completions.create(model="plain", messages=messages, tools=[WEATHER_TOOL])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == EXPECTED_TEXT


def test_tool_calls_non_streamed(client):
    resp = client.chat.completions.create(
        model="plain", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments)["location"] == "mock"


# --------------------------------------------------------------------------- embeddings / models


def test_embeddings(client):
    resp = client.embeddings.create(model="text-embedding-test", input=["a", "b"])
    assert resp.object == "list"
    assert len(resp.data) == 2
    assert [d.index for d in resp.data] == [0, 1]
    for d in resp.data:
        assert d.object == "embedding"
        assert len(d.embedding) == 8
        assert all(isinstance(x, float) for x in d.embedding)
        norm = sum(x * x for x in d.embedding) ** 0.5
        assert abs(norm - 1.0) < 1e-3
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens >= resp.usage.prompt_tokens


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    for expected in ("plain", "failover", "gpt-test"):
        assert expected in ids, ids
    assert "text-embedding-test" in ids
    assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"


# --------------------------------------------------------------------------- errors


def test_wrong_key_is_authentication_error(gateway_url):
    bad = openai.OpenAI(base_url=gateway_url + "/v1", api_key="rk-wrong", max_retries=0, timeout=20)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="plain", messages=USER_MSG)
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.body["code"] == "invalid_api_key"
    assert err.response.headers.get("x-request-id")
    bad.close()


def test_missing_key_is_401(gateway_url):
    r = httpx.post(
        gateway_url + "/v1/chat/completions", json={"model": "plain", "messages": USER_MSG}, timeout=20
    )
    assert r.status_code == 401
    body = r.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["code"] == "missing_api_key"
    assert r.headers.get("x-request-id")


def test_missing_key_on_models_is_401(gateway_url):
    r = httpx.get(gateway_url + "/v1/models", timeout=20)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER_MSG)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_unknown_model_streamed_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER_MSG, stream=True)
    assert info.value.code == "model_not_found"


def test_malformed_json_is_400(gateway_url):
    r = httpx.post(
        gateway_url + "/v1/chat/completions",
        content=b'{"model": "plain", "messages": [',
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=20,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert "json" in err["message"].lower(), err
    assert set(err) >= {"message", "type", "param", "code"}
    assert r.headers.get("x-request-id")


def test_missing_messages_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="plain", messages=openai.omit)
    assert info.value.status_code == 400
    assert "messages" in info.value.message


def test_body_too_large_is_413(gateway_url):
    big = "x" * (70 * 1024)  # the test config sets max_body_bytes = 65536
    r = httpx.post(
        gateway_url + "/v1/chat/completions",
        json={"model": "plain", "messages": [{"role": "user", "content": big}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=20,
    )
    assert r.status_code == 413
    assert "error" in r.json()


def test_x_request_id_header(client, gateway_url):
    raw = client.chat.completions.with_raw_response.create(model="plain", messages=USER_MSG)
    rid = raw.headers.get("x-request-id")
    assert rid
    assert raw.parse().choices[0].message.content == EXPECTED_TEXT

    raw2 = client.chat.completions.with_raw_response.create(model="plain", messages=USER_MSG)
    assert raw2.headers.get("x-request-id") and raw2.headers["x-request-id"] != rid

    raw_stream = client.chat.completions.with_raw_response.create(model="plain", messages=USER_MSG, stream=True)
    assert raw_stream.headers.get("x-request-id")
    text, _ = _collect_stream(raw_stream.parse())
    assert text == EXPECTED_TEXT

    assert client.embeddings.with_raw_response.create(model="text-embedding-test", input="a").headers.get(
        "x-request-id"
    )
    assert client.models.with_raw_response.list().headers.get("x-request-id")
    assert httpx.get(gateway_url + "/healthz", timeout=20).headers.get("x-request-id")
    assert httpx.get(gateway_url + "/nope", timeout=20).headers.get("x-request-id")

    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.with_raw_response.create(model="no-such-model", messages=USER_MSG)
    assert info.value.response.headers.get("x-request-id")


# --------------------------------------------------------------------------- concurrency


def test_concurrent_streams(client):
    def one(i: int) -> tuple[str, int | None]:
        model = "failover" if i % 4 == 0 else "plain"
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"request {i}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, chunks = _collect_stream(stream)
        usage = [c.usage.completion_tokens for c in chunks if c.usage is not None]
        return text, usage

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    for text, usage in results:
        assert text == EXPECTED_TEXT
        assert usage == [HEALTHY_TOKENS]


# --------------------------------------------------------------------------- upstream dialects
#
# The same OpenAI client against one channel per upstream dialect (via-openai: same
# dialect, fast path; via-anthropic / via-gemini: translated through the IR).

WEATHER_ARGS = {"location": "mock"}
TOOL_TOKENS = mock_tool_tokens("get_weather", json.dumps(WEATHER_ARGS, separators=(",", ":")))


def _assert_settled(log_path, request_id: str, preset: str, usage, stream: bool) -> None:
    """The gateway's own record of the request: the preset's channel, and the same usage the
    client was told."""
    fields = settled(log_path, request_id)
    assert fields["channel"] == UPSTREAM_PRESETS[preset][0], fields
    assert fields["upstream_model"] == UPSTREAM_PRESETS[preset][1], fields
    assert fields["status"] == "200", fields
    assert fields["stream"] == str(stream).lower(), fields
    assert fields["estimated"] == "false", fields
    assert int(fields["output_tokens"]) == usage.completion_tokens, fields
    assert int(fields["input_tokens"]) == usage.prompt_tokens, fields


@pytest.mark.parametrize("preset", PRESETS)
def test_dialect_plain(client, gateway_log, gateway_log_path, preset):
    raw = client.chat.completions.with_raw_response.create(model=preset, messages=USER_MSG)
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == EXPECTED_TEXT, gateway_log()
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert resp.usage.completion_tokens == HEALTHY_TOKENS
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    _assert_settled(gateway_log_path, raw.headers["x-request-id"], preset, resp.usage, stream=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_dialect_stream_with_include_usage(client, gateway_log, gateway_log_path, preset):
    raw = client.chat.completions.with_raw_response.create(
        model=preset, messages=USER_MSG, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = _collect_stream(raw.parse())
    assert text == EXPECTED_TEXT, gateway_log()
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, [c.model_dump() for c in usage_chunks]
    final = usage_chunks[0]
    assert final is chunks[-1], "the usage chunk must be the last one"
    assert final.choices == []
    assert final.usage.completion_tokens == HEALTHY_TOKENS
    assert final.usage.prompt_tokens > 0
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
    assert [c for c in chunks if not c.choices] == [final]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert len({c.id for c in chunks}) == 1
    _assert_settled(gateway_log_path, raw.headers["x-request-id"], preset, final.usage, stream=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_dialect_stream_without_include_usage(client, preset):
    stream = client.chat.completions.create(model=preset, messages=USER_MSG, stream=True)
    text, chunks = _collect_stream(stream)
    assert text == EXPECTED_TEXT
    assert [c.model_dump() for c in chunks if c.usage is not None] == []
    assert all(c.choices for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


@pytest.mark.parametrize("preset", PRESETS)
def test_dialect_tool_calls_stream_and_round_trip(client, gateway_log, gateway_log_path, preset):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    with client.chat.completions.stream(
        model=preset, messages=messages, tools=[WEATHER_TOOL], stream_options={"include_usage": True}
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
        # ChatCompletionStream keeps its httpx response private (openai is pinned).
        request_id = stream._response.headers["x-request-id"]

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls", gateway_log()
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1, choice.message.model_dump()
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert not choice.message.content

    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert len(done) == 1, [e.type for e in events]
    assert done[0].name == "get_weather"
    assert done[0].index == 0
    assert done[0].arguments == call.function.arguments
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert deltas and "".join(e.arguments_delta for e in deltas) == call.function.arguments

    assert final.usage is not None
    assert final.usage.completion_tokens == TOOL_TOKENS
    assert final.usage.prompt_tokens > 0
    _assert_settled(gateway_log_path, request_id, preset, final.usage, stream=True)

    # The tool result goes back (translated into the upstream's dialect) and text comes out.
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18, "sky": "clear"})},
    ]
    with client.chat.completions.stream(model=preset, messages=messages, tools=[WEATHER_TOOL]) as stream:
        content_done = [e for e in stream if e.type == "content.done"]
        answer = stream.get_final_completion()
    assert answer.choices[0].finish_reason == "stop", gateway_log()
    assert not answer.choices[0].message.tool_calls
    assert answer.choices[0].message.content == EXPECTED_TEXT
    assert len(content_done) == 1 and content_done[0].content == EXPECTED_TEXT

    resp = client.chat.completions.create(model=preset, messages=messages, tools=[WEATHER_TOOL])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == EXPECTED_TEXT
    assert resp.usage.completion_tokens == HEALTHY_TOKENS


@pytest.mark.parametrize("preset", PRESETS)
def test_dialect_tool_calls_non_streamed(client, gateway_log_path, preset):
    raw = client.chat.completions.with_raw_response.create(
        model=preset, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]
    )
    resp = raw.parse()
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert resp.usage.completion_tokens == TOOL_TOKENS
    assert resp.usage.prompt_tokens > 0
    _assert_settled(gateway_log_path, raw.headers["x-request-id"], preset, resp.usage, stream=False)
