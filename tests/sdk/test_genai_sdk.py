"""Black-box tests of relay-gateway's Gemini dialect through the official `google-genai`
Python SDK, against one channel per upstream dialect (via-openai, via-anthropic,
via-gemini), so that every Gemini-client pair is covered."""

from __future__ import annotations

import json

import httpx
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from conftest import (
    API_KEY,
    EXPECTED_TEXT,
    HEALTHY_TOKENS,
    PRESETS,
    UPSTREAM_PRESETS,
    make_genai_client,
    mock_tool_tokens,
    settled,
)

PROMPT = "Say hello"
WEATHER_ARGS = {"location": "mock"}
TOOL_TOKENS = mock_tool_tokens("get_weather", '{"location":"mock"}')

WEATHER_FUNCTION = types.FunctionDeclaration(
    name="get_weather",
    description="Get the current weather for a location.",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "location": types.Schema(type=types.Type.STRING, description="City name"),
            "unit": types.Schema(type=types.Type.STRING, enum=["c", "f"]),
        },
        required=["location"],
    ),
)
TOOL_CONFIG = types.GenerateContentConfig(
    tools=[types.Tool(function_declarations=[WEATHER_FUNCTION])],
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
)


def _request_id(response) -> str:
    return response.sdk_http_response.headers["x-request-id"]


def _assert_settled(log_path, request_id: str, preset: str, usage, stream: bool) -> None:
    """The gateway's record of the request names the preset's channel and holds the usage
    the upstream reported, which is also what the client was told."""
    fields = settled(log_path, request_id)
    assert fields["channel"] == UPSTREAM_PRESETS[preset][0], fields
    assert fields["upstream_model"] == UPSTREAM_PRESETS[preset][1], fields
    assert fields["status"] == "200", fields
    assert fields["stream"] == str(stream).lower(), fields
    assert fields["estimated"] == "false", fields
    assert int(fields["output_tokens"]) == usage.candidates_token_count, fields
    assert int(fields["input_tokens"]) == usage.prompt_token_count, fields


def _assert_usage(usage, completion: int) -> None:
    assert usage is not None
    assert usage.prompt_token_count > 0
    assert usage.candidates_token_count == completion
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize("preset", PRESETS)
def test_generate_content_text(genai_client, gateway_log, gateway_log_path, preset):
    resp = genai_client.models.generate_content(model=preset, contents=PROMPT)
    assert resp.text == EXPECTED_TEXT, gateway_log()
    assert len(resp.candidates) == 1
    cand = resp.candidates[0]
    assert cand.content.role == "model"
    assert cand.finish_reason == types.FinishReason.STOP
    assert not resp.function_calls
    _assert_usage(resp.usage_metadata, HEALTHY_TOKENS)
    _assert_settled(gateway_log_path, _request_id(resp), preset, resp.usage_metadata, stream=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_generate_content_with_system_instruction(genai_client, preset):
    resp = genai_client.models.generate_content(
        model=preset,
        contents=PROMPT,
        config=types.GenerateContentConfig(system_instruction="You are terse.", max_output_tokens=256),
    )
    assert resp.text == EXPECTED_TEXT
    assert resp.usage_metadata.candidates_token_count == HEALTHY_TOKENS


@pytest.mark.parametrize("preset", PRESETS)
def test_generate_content_stream(genai_client, gateway_log, gateway_log_path, preset):
    chunks = list(genai_client.models.generate_content_stream(model=preset, contents=PROMPT))
    assert len(chunks) > 1, gateway_log()
    text = "".join(c.text or "" for c in chunks)
    assert text == EXPECTED_TEXT, [c.model_dump(exclude_none=True) for c in chunks]
    last = chunks[-1]
    _assert_usage(last.usage_metadata, HEALTHY_TOKENS)
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    finish = [c.candidates[0].finish_reason for c in chunks if c.candidates and c.candidates[0].finish_reason]
    assert finish == [types.FinishReason.STOP]
    _assert_settled(gateway_log_path, _request_id(last), preset, last.usage_metadata, stream=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_multi_turn_chat(genai_client, preset):
    chat = genai_client.chats.create(model=preset)
    first = chat.send_message("Hello")
    assert first.text == EXPECTED_TEXT
    second = chat.send_message("And again")
    assert second.text == EXPECTED_TEXT
    assert len(chat.get_history()) == 4


# --------------------------------------------------------------------------- function calling


def _function_response_turn(response) -> list:
    """The user prompt, the model's function call turn and the function response."""
    (call,) = response.function_calls
    return [
        types.Content(role="user", parts=[types.Part.from_text(text="What's the weather in Paris?")]),
        response.candidates[0].content,
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name=call.name, response={"temp_c": 18, "sky": "clear"})],
        ),
    ]


@pytest.mark.parametrize("preset", PRESETS)
def test_function_call_and_round_trip(genai_client, gateway_log, gateway_log_path, preset):
    resp = genai_client.models.generate_content(
        model=preset, contents="What's the weather in Paris?", config=TOOL_CONFIG
    )
    calls = resp.function_calls
    assert calls is not None and len(calls) == 1, (resp.model_dump(exclude_none=True), gateway_log())
    assert calls[0].name == "get_weather"
    assert calls[0].args == WEATHER_ARGS
    assert resp.candidates[0].content.role == "model"
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    _assert_usage(resp.usage_metadata, TOOL_TOKENS)
    _assert_settled(gateway_log_path, _request_id(resp), preset, resp.usage_metadata, stream=False)

    # The function response goes back (translated into the upstream's dialect) and text comes out.
    answer = genai_client.models.generate_content(
        model=preset, contents=_function_response_turn(resp), config=TOOL_CONFIG
    )
    assert not answer.function_calls, answer.model_dump(exclude_none=True)
    assert answer.text == EXPECTED_TEXT
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    _assert_usage(answer.usage_metadata, HEALTHY_TOKENS)


@pytest.mark.parametrize("preset", PRESETS)
def test_function_call_streamed_and_round_trip(genai_client, gateway_log, gateway_log_path, preset):
    chunks = list(
        genai_client.models.generate_content_stream(
            model=preset, contents="What's the weather in Paris?", config=TOOL_CONFIG
        )
    )
    calls = [fc for c in chunks for fc in (c.function_calls or [])]
    assert len(calls) == 1, ([c.model_dump(exclude_none=True) for c in chunks], gateway_log())
    assert calls[0].name == "get_weather"
    assert calls[0].args == WEATHER_ARGS
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    _assert_usage(last.usage_metadata, TOOL_TOKENS)
    _assert_settled(gateway_log_path, _request_id(last), preset, last.usage_metadata, stream=True)

    # Rebuild the model turn from the streamed call and send the function response back.
    contents = [
        types.Content(role="user", parts=[types.Part.from_text(text="What's the weather in Paris?")]),
        types.Content(role="model", parts=[types.Part(function_call=calls[0])]),
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"temp_c": 18})],
        ),
    ]
    answer_chunks = list(genai_client.models.generate_content_stream(model=preset, contents=contents, config=TOOL_CONFIG))
    assert "".join(c.text or "" for c in answer_chunks) == EXPECTED_TEXT
    assert not [fc for c in answer_chunks for fc in (c.function_calls or [])]
    _assert_usage(answer_chunks[-1].usage_metadata, HEALTHY_TOKENS)


# --------------------------------------------------------------------------- keys and routes


def test_key_as_query_parameter(gateway_url):
    """The key may also come as `?key=` (and the route also lives under /v1/)."""
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    for version in ("v1beta", "v1"):
        r = httpx.post(
            f"{gateway_url}/{version}/models/via-gemini:generateContent", params={"key": API_KEY}, json=body, timeout=20
        )
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["candidates"][0]["content"]["parts"][0]["text"] == EXPECTED_TEXT
        assert data["usageMetadata"]["candidatesTokenCount"] == HEALTHY_TOKENS


def test_stream_sse_frames_over_http(gateway_url):
    r = httpx.post(
        f"{gateway_url}/v1beta/models/via-openai:streamGenerateContent",
        params={"alt": "sse"},
        headers={"x-goog-api-key": API_KEY},
        json={"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [json.loads(l[len("data:") :]) for l in r.text.splitlines() if l.startswith("data:")]
    assert frames
    text = "".join(
        p.get("text", "")
        for f in frames
        for c in f.get("candidates", [])
        for p in c.get("content", {}).get("parts", [])
    )
    assert text == EXPECTED_TEXT
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"
    assert frames[-1]["usageMetadata"]["candidatesTokenCount"] == HEALTHY_TOKENS
    assert "[DONE]" not in r.text


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("stream", [False, True])
def test_wrong_key_is_401(gateway_url, stream):
    bad = make_genai_client(gateway_url, api_key="rk-wrong")
    with pytest.raises(genai_errors.ClientError) as info:
        if stream:
            list(bad.models.generate_content_stream(model="via-gemini", contents=PROMPT))
        else:
            bad.models.generate_content(model="via-gemini", contents=PROMPT)
    err = info.value
    assert err.code == 401
    assert err.status == "UNAUTHENTICATED"
    assert err.message
    bad.close()


def test_missing_key_is_401(gateway_url):
    r = httpx.post(
        f"{gateway_url}/v1beta/models/via-gemini:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
        timeout=20,
    )
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["code"] == 401
    assert err["status"] == "UNAUTHENTICATED"
    assert err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404(genai_client, stream):
    with pytest.raises(genai_errors.ClientError) as info:
        if stream:
            list(genai_client.models.generate_content_stream(model="no-such-model", contents=PROMPT))
        else:
            genai_client.models.generate_content(model="no-such-model", contents=PROMPT)
    err = info.value
    assert err.code == 404
    assert err.status == "NOT_FOUND"
    assert "no-such-model" in err.message


def test_empty_contents_is_400(gateway_url):
    # (the SDK refuses empty contents itself, so this goes through httpx)
    r = httpx.post(
        f"{gateway_url}/v1beta/models/via-gemini:generateContent",
        json={"contents": []},
        headers={"x-goog-api-key": API_KEY},
        timeout=20,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 400
    assert err["status"] == "INVALID_ARGUMENT"
    assert "contents" in err["message"]


def test_sdk_bad_request_is_client_error(genai_client):
    """A 400 from the gateway surfaces as ClientError (a role the dialect does not know)."""
    with pytest.raises(genai_errors.ClientError) as info:
        genai_client.models.generate_content(
            model="via-gemini", contents=[types.Content(role="wizard", parts=[types.Part.from_text(text="hi")])]
        )
    assert info.value.code == 400
    assert info.value.status == "INVALID_ARGUMENT"


def test_malformed_json_is_400(gateway_url):
    r = httpx.post(
        f"{gateway_url}/v1beta/models/via-gemini:generateContent",
        content=b'{"contents": [',
        headers={"x-goog-api-key": API_KEY, "content-type": "application/json"},
        timeout=20,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 400
    assert err["status"] == "INVALID_ARGUMENT"
