"""Cross-dialect scenarios through all three official SDKs: parallel tool calls (a mock
that answers with two calls at once, behind each upstream dialect), upstream rate limits
(a mock that always answers 429) reported in the client's dialect, reasoning / thinking
carried from an Anthropic upstream, and what each answer reports as its model."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from conftest import (
    API_KEY,
    EXPECTED_TEXT,
    HEALTHY_TOKENS,
    LIMITED_PRESETS,
    MOCK_WORDS,
    PARALLEL_PRESETS,
    PARALLEL_TOKENS,
    PARALLEL_TOOL_CALLS,
    PRESETS,
    UPSTREAM_PRESETS,
    mock_tool_tokens,
    settled,
)

PARALLEL = list(PARALLEL_PRESETS)
PARALLEL_TEXT = " ".join(MOCK_WORDS[:PARALLEL_TOKENS])
PROMPT = "What's the weather and the time in Paris?"

# The mock calls tools[k % len(tools)] for k in 0..PARALLEL_TOOL_CALLS, each with a "mock"
# string for every required property.
TOOLS = [
    ("get_weather", "Get the current weather for a location.", "location"),
    ("get_time", "Get the local time in a timezone.", "timezone"),
]
EXPECTED_CALLS = [(TOOLS[k % len(TOOLS)][0], {TOOLS[k % len(TOOLS)][2]: "mock"}) for k in range(PARALLEL_TOOL_CALLS)]
PARALLEL_TOOL_TOKENS = mock_tool_tokens(
    "".join(name for name, _ in EXPECTED_CALLS),
    "".join(json.dumps(args, separators=(",", ":")) for _, args in EXPECTED_CALLS),
)
assert PARALLEL_TOOL_TOKENS not in (PARALLEL_TOKENS, HEALTHY_TOKENS)  # a distinct, checkable number

OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {"type": "object", "properties": {prop: {"type": "string"}}, "required": [prop]},
        },
    }
    for name, desc, prop in TOOLS
]
ANTHROPIC_TOOLS = [
    {
        "name": name,
        "description": desc,
        "input_schema": {"type": "object", "properties": {prop: {"type": "string"}}, "required": [prop]},
    }
    for name, desc, prop in TOOLS
]
GENAI_TOOL_CONFIG = types.GenerateContentConfig(
    tools=[
        types.Tool(
            function_declarations=[
                types.FunctionDeclaration(
                    name=name,
                    description=desc,
                    parameters=types.Schema(
                        type=types.Type.OBJECT,
                        properties={prop: types.Schema(type=types.Type.STRING)},
                        required=[prop],
                    ),
                )
                for name, desc, prop in TOOLS
            ]
        )
    ],
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
)


def _settled_usage(log_path, request_id: str, preset: str, presets: dict) -> tuple[int, int]:
    fields = settled(log_path, request_id)
    assert fields["channel"] == presets[preset][0], fields
    assert fields["estimated"] == "false", fields
    return int(fields["input_tokens"]), int(fields["output_tokens"])


# --------------------------------------------------------------------------- parallel tool calls: OpenAI


@pytest.mark.parametrize("preset", PARALLEL)
def test_openai_parallel_tool_calls(client, gateway_log, gateway_log_path, preset):
    raw = client.chat.completions.with_raw_response.create(
        model=preset, messages=[{"role": "user", "content": PROMPT}], tools=OPENAI_TOOLS
    )
    resp = raw.parse()
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", gateway_log()
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == EXPECTED_CALLS
    assert len({c.id for c in calls}) == len(calls) and all(c.id for c in calls)
    assert resp.usage.completion_tokens == PARALLEL_TOOL_TOKENS
    assert _settled_usage(gateway_log_path, raw.headers["x-request-id"], preset, PARALLEL_PRESETS) == (
        resp.usage.prompt_tokens,
        resp.usage.completion_tokens,
    )


@pytest.mark.parametrize("preset", PARALLEL)
def test_openai_parallel_tool_calls_streamed_and_round_trip(client, gateway_log, gateway_log_path, preset):
    messages = [{"role": "user", "content": PROMPT}]
    with client.chat.completions.stream(
        model=preset, messages=messages, tools=OPENAI_TOOLS, stream_options={"include_usage": True}
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
        request_id = stream._response.headers["x-request-id"]  # private in the pinned SDK

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls", gateway_log()
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == EXPECTED_CALLS, (
        choice.message.model_dump()
    )
    assert len({c.id for c in calls}) == len(calls) and all(c.id for c in calls)
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [(e.index, e.name, json.loads(e.arguments)) for e in done] == [
        (k, name, args) for k, (name, args) in enumerate(EXPECTED_CALLS)
    ]
    assert final.usage.completion_tokens == PARALLEL_TOOL_TOKENS
    assert _settled_usage(gateway_log_path, request_id, preset, PARALLEL_PRESETS) == (
        final.usage.prompt_tokens,
        final.usage.completion_tokens,
    )

    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in calls
            ],
        }
    )
    messages += [{"role": "tool", "tool_call_id": c.id, "content": json.dumps({"ok": c.function.name})} for c in calls]
    with client.chat.completions.stream(model=preset, messages=messages, tools=OPENAI_TOOLS) as stream:
        answer = stream.get_final_completion()
    assert answer.choices[0].finish_reason == "stop", gateway_log()
    assert answer.choices[0].message.content == PARALLEL_TEXT
    assert not answer.choices[0].message.tool_calls


# --------------------------------------------------------------------------- parallel tool calls: Anthropic


@pytest.mark.parametrize("preset", PARALLEL)
def test_anthropic_parallel_tool_use_streamed_and_round_trip(anthropic_client, gateway_log, gateway_log_path, preset):
    messages = [{"role": "user", "content": PROMPT}]
    with anthropic_client.messages.stream(
        model=preset, max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]

    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == EXPECTED_CALLS, (final.model_dump(), gateway_log())
    assert len({b.id for b in uses}) == len(uses) and all(b.id for b in uses)
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == PARALLEL_TOOL_TOKENS
    assert final.usage.input_tokens > 0
    starts = [e for e in events if e.type == "content_block_start"]
    stops = [e for e in events if e.type == "content_block_stop"]
    assert sorted(e.index for e in starts) == sorted(e.index for e in stops) == list(range(len(final.content)))
    assert _settled_usage(gateway_log_path, request_id, preset, PARALLEL_PRESETS) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": b.id, "content": json.dumps({"ok": b.name})} for b in uses
            ],
        },
    ]
    answer = anthropic_client.messages.create(model=preset, max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS)
    assert [b.type for b in answer.content] == ["text"], (answer.model_dump(), gateway_log())
    assert answer.content[0].text == PARALLEL_TEXT
    assert answer.stop_reason == "end_turn"
    assert answer.usage.output_tokens == PARALLEL_TOKENS


@pytest.mark.parametrize("preset", PARALLEL)
def test_anthropic_parallel_tool_use_non_streamed(anthropic_client, preset):
    msg = anthropic_client.messages.create(
        model=preset, max_tokens=256, messages=[{"role": "user", "content": PROMPT}], tools=ANTHROPIC_TOOLS
    )
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == EXPECTED_CALLS, msg.model_dump()
    assert len({b.id for b in uses}) == len(uses)
    assert msg.stop_reason == "tool_use"
    assert msg.usage.output_tokens == PARALLEL_TOOL_TOKENS


# --------------------------------------------------------------------------- parallel tool calls: Gemini


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("preset", PARALLEL)
def test_genai_parallel_function_calls_and_round_trip(genai_client, gateway_log, gateway_log_path, preset, stream):
    if stream:
        chunks = list(genai_client.models.generate_content_stream(model=preset, contents=PROMPT, config=GENAI_TOOL_CONFIG))
        calls = [fc for c in chunks for fc in (c.function_calls or [])]
        last = chunks[-1]
    else:
        last = genai_client.models.generate_content(model=preset, contents=PROMPT, config=GENAI_TOOL_CONFIG)
        calls = last.function_calls or []
    assert [(fc.name, fc.args) for fc in calls] == EXPECTED_CALLS, gateway_log()
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    usage = last.usage_metadata
    assert usage.candidates_token_count == PARALLEL_TOOL_TOKENS
    assert usage.prompt_token_count > 0
    request_id = last.sdk_http_response.headers["x-request-id"]
    assert _settled_usage(gateway_log_path, request_id, preset, PARALLEL_PRESETS) == (
        usage.prompt_token_count,
        usage.candidates_token_count,
    )

    contents = [
        types.Content(role="user", parts=[types.Part.from_text(text=PROMPT)]),
        types.Content(role="model", parts=[types.Part(function_call=fc) for fc in calls]),
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name=fc.name, response={"ok": fc.name}) for fc in calls],
        ),
    ]
    answer = genai_client.models.generate_content(model=preset, contents=contents, config=GENAI_TOOL_CONFIG)
    assert not answer.function_calls, answer.model_dump(exclude_none=True)
    assert answer.text == PARALLEL_TEXT
    assert answer.usage_metadata.candidates_token_count == PARALLEL_TOKENS


# --------------------------------------------------------------------------- thinking / reasoning
#
# Only the Anthropic mock thinks (a leading thinking block "Let me think." with a
# signature, 3 output tokens on top of the text's), so these go through via-anthropic.

THINKING_TEXT = "Let me think."
THINKING_TOKENS = 3


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_anthropic_thinking_same_dialect(anthropic_client, stream):
    kwargs = dict(
        model="via-anthropic",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think first."}],
    )
    if stream:
        with anthropic_client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = anthropic_client.messages.create(**kwargs)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == THINKING_TEXT
    assert msg.content[0].signature
    assert msg.content[1].text == EXPECTED_TEXT
    assert msg.usage.output_tokens == HEALTHY_TOKENS + THINKING_TOKENS


def test_openai_reasoning_from_anthropic_upstream(client):
    """reasoning_effort becomes Anthropic thinking; the thinking comes back as the
    `reasoning_content` extension field, and is counted in completion tokens."""
    resp = client.chat.completions.create(
        model="via-anthropic", reasoning_effort="low", messages=[{"role": "user", "content": "Think first."}]
    )
    msg = resp.choices[0].message
    assert msg.content == EXPECTED_TEXT
    assert (msg.model_extra or {}).get("reasoning_content") == THINKING_TEXT
    assert resp.usage.completion_tokens == HEALTHY_TOKENS + THINKING_TOKENS

    chunks = list(
        client.chat.completions.create(
            model="via-anthropic",
            reasoning_effort="low",
            messages=[{"role": "user", "content": "Think first."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == THINKING_TEXT
    assert text == EXPECTED_TEXT
    assert chunks[-1].usage.completion_tokens == HEALTHY_TOKENS + THINKING_TOKENS


def _gemini_thinking_body() -> dict:
    return {
        "contents": [{"role": "user", "parts": [{"text": "Think first."}]}],
        "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}},
    }


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_gemini_thoughts_from_anthropic_upstream(gateway_url, stream):
    """Raw HTTP, to check the wire form: an Anthropic signature reaches a Gemini client as
    standard padded base64 (Gemini's `thoughtSignature` is bytes)."""
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    r = httpx.post(
        f"{gateway_url}/v1beta/models/via-anthropic:{action}",
        headers={"x-goog-api-key": API_KEY},
        json=_gemini_thinking_body(),
        timeout=20,
    )
    assert r.status_code == 200, r.text
    if stream:
        frames = [json.loads(l[len("data:") :]) for l in r.text.splitlines() if l.startswith("data:")]
    else:
        frames = [r.json()]
    parts = [p for f in frames for c in f.get("candidates", []) for p in c.get("content", {}).get("parts", [])]
    assert "".join(p["text"] for p in parts if p.get("thought")) == THINKING_TEXT
    assert "".join(p.get("text", "") for p in parts if not p.get("thought")) == EXPECTED_TEXT
    usage = frames[-1]["usageMetadata"]
    assert usage["candidatesTokenCount"] == HEALTHY_TOKENS + THINKING_TOKENS
    signatures = [p["thoughtSignature"] for p in parts if "thoughtSignature" in p]
    assert len(signatures) == 1, parts
    # proto3 JSON writes bytes as standard base64 with padding.
    decoded = base64.b64decode(signatures[0], validate=True)
    assert base64.b64encode(decoded).decode() == signatures[0]


# --------------------------------------------------------------------------- reported model


def _all_presets(client_dialect: str):
    """Every preset: streams and whole answers name the same (upstream) model, whether
    or not the stream crosses dialects for this client."""
    return list(PRESETS)


@pytest.mark.parametrize("preset", _all_presets("openai-compatible"))
def test_openai_streamed_model_matches_non_streamed(client, preset):
    plain = client.chat.completions.create(model=preset, messages=[{"role": "user", "content": "hi"}])
    chunks = list(client.chat.completions.create(model=preset, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert plain.model == UPSTREAM_PRESETS[preset][1]
    assert {c.model for c in chunks} == {plain.model}


@pytest.mark.parametrize("preset", _all_presets("anthropic"))
def test_anthropic_streamed_model_matches_non_streamed(anthropic_client, preset):
    kwargs = dict(model=preset, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    plain = anthropic_client.messages.create(**kwargs)
    with anthropic_client.messages.stream(**kwargs) as s:
        streamed = s.get_final_message()
    assert plain.model == UPSTREAM_PRESETS[preset][1]
    assert streamed.model == plain.model


@pytest.mark.parametrize("preset", _all_presets("gemini"))
def test_genai_streamed_model_matches_non_streamed(genai_client, preset):
    plain = genai_client.models.generate_content(model=preset, contents="hi")
    chunks = list(genai_client.models.generate_content_stream(model=preset, contents="hi"))
    assert plain.model_version == UPSTREAM_PRESETS[preset][1]
    assert {c.model_version for c in chunks} == {plain.model_version}


# --------------------------------------------------------------------------- upstream errors
#
# The limited mock answers 429 in its own dialect; after the gateway's retries the client
# gets a 429 in *its* dialect, which each SDK maps to its rate-limit error.

LIMITED = list(LIMITED_PRESETS)


def _assert_settled_429(log_path, response, preset: str) -> None:
    fields = settled(log_path, response.headers["x-request-id"])
    assert fields["channel"] == LIMITED_PRESETS[preset][0], fields
    assert fields["status"] == "429", fields
    assert fields["outcome"] == "Error", fields
    assert fields["error"] == "rate_limited", fields


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("preset", LIMITED)
def test_openai_upstream_429_is_rate_limit_error(client, gateway_log_path, preset, stream):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=preset, messages=[{"role": "user", "content": "hi"}], stream=stream)
    err = info.value
    assert err.status_code == 429
    assert err.code == "rate_limited"
    assert err.body["type"] == "rate_limit_error"
    _assert_settled_429(gateway_log_path, err.response, preset)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("preset", LIMITED)
def test_anthropic_upstream_429_is_rate_limit_error(anthropic_client, gateway_log_path, preset, stream):
    kwargs = dict(model=preset, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.RateLimitError) as info:
        if stream:
            with anthropic_client.messages.stream(**kwargs) as s:
                s.get_final_message()
        else:
            anthropic_client.messages.create(**kwargs)
    err = info.value
    assert err.status_code == 429
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "rate_limit_error"
    _assert_settled_429(gateway_log_path, err.response, preset)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("preset", LIMITED)
def test_genai_upstream_429_is_resource_exhausted(genai_client, gateway_log_path, preset, stream):
    with pytest.raises(genai_errors.ClientError) as info:
        if stream:
            list(genai_client.models.generate_content_stream(model=preset, contents="hi"))
        else:
            genai_client.models.generate_content(model=preset, contents="hi")
    err = info.value
    assert err.code == 429
    assert err.status == "RESOURCE_EXHAUSTED"
    assert err.message
    _assert_settled_429(gateway_log_path, err.response, preset)
