//! [`GeminiCodec`]: the Gemini dialect for both sides of the relay, with its stream
//! decoder (Gemini frames to IR events) and encoder (IR events to Gemini frames).

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::ser::Serializer;
use serde_json::Value;

use relay_core::codec::{DialectCodec, EncoderOptions, StreamDecoder, StreamEncoder};
use relay_core::dialect::{DialectId, JsonObject};
use relay_core::ir::{self, ChatRequest, ChatResponse, FinishReason, StreamEvent};
use relay_core::sse::{SseEvent, encode_event};
use relay_core::{ErrorKind, RelayError, Side, Usage};

use super::wire::{
    self, CallTracker, GenerateContentRequest, GenerateContentResponse, PartPath, Problem,
    UsageMetadata,
};

/// The Google Gemini dialect (`generateContent`, `streamGenerateContent?alt=sse`).
///
/// The model and the stream flag live in the URL: the gateway puts them into the client's
/// body as top-level `"model"` (string) and `"stream"` (bool) before
/// [`DialectCodec::decode_request`], which reads and removes them (a missing model is a
/// 400); [`DialectCodec::encode_request`] never writes them, the adapter puts them in the
/// URL. See [`wire`](super::wire) for how each field maps to the IR.
#[derive(Clone, Copy, Debug, Default)]
pub struct GeminiCodec;

/// The body without the fields the gateway injected from the URL.
struct WithoutUrlFields<'a>(&'a JsonObject);

impl Serialize for WithoutUrlFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .filter(|(k, _)| k.as_str() != "model" && k.as_str() != "stream"),
        )
    }
}

impl DialectCodec for GeminiCodec {
    fn id(&self) -> DialectId {
        DialectId::GEMINI
    }

    fn decode_request(&self, body: &JsonObject) -> Result<ChatRequest, RelayError> {
        let model: String = match body.get("model") {
            None => None,
            Some(raw) => serde_json::from_str::<Option<String>>(raw.get())
                .map_err(|_| RelayError::invalid_param("model", "the model must be a string"))?,
        }
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| RelayError::invalid_param("model", "the request names no model"))?;
        let stream = match body.get("stream") {
            None => false,
            Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
                .map_err(|_| RelayError::invalid_param("stream", "stream must be a boolean"))?
                .unwrap_or(false),
        };
        let json = serde_json::to_string(&WithoutUrlFields(body)).map_err(wire::internal)?;
        let req: GenerateContentRequest = serde_json::from_str(&json)
            .map_err(|e| RelayError::bad_request(format!("Invalid JSON payload received: {e}")))?;
        wire::request_to_ir(req, model, stream)
    }

    fn encode_response(&self, response: &ChatResponse) -> Result<Bytes, RelayError> {
        let wire = wire::response_from_ir(response)?;
        serde_json::to_vec(&wire)
            .map(Bytes::from)
            .map_err(wire::internal)
    }

    fn stream_encoder(&self, options: EncoderOptions) -> Box<dyn StreamEncoder> {
        Box::new(GeminiStreamEncoder::new(options.model))
    }

    fn error_body(&self, err: &RelayError) -> Bytes {
        wire::error_body(err)
    }

    fn encode_request(&self, request: &ChatRequest) -> Result<Vec<u8>, RelayError> {
        let wire = wire::request_from_ir(request)?;
        serde_json::to_vec(&wire).map_err(wire::internal)
    }

    fn decode_response(&self, body: &[u8]) -> Result<ChatResponse, RelayError> {
        let wire: GenerateContentResponse = serde_json::from_slice(body).map_err(|e| {
            RelayError::new(
                ErrorKind::UpstreamProtocol,
                Side::Upstream,
                format!("the upstream's answer is not a Gemini response: {e}"),
            )
        })?;
        wire::response_to_ir(wire)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(GeminiStreamDecoder::default())
    }

    fn error_message(&self, body: &[u8]) -> String {
        wire::error_message(body)
    }
}

// ---------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------

/// Gemini stream frames to IR events. Each `data:` frame is a whole
/// `GenerateContentResponse`; there is no terminal event, so [`StreamDecoder::finish`]
/// says whether a `finishReason` (or a blocked prompt) was seen.
#[derive(Debug, Default)]
struct GeminiStreamDecoder {
    started: bool,
    finished: bool,
    calls: CallTracker,
    /// Per choice: how many function calls it made.
    call_counts: Vec<(u32, u32)>,
    last_usage: Option<Usage>,
    /// A reused buffer for one part's IR parts.
    scratch: Vec<ir::ContentPart>,
}

impl GeminiStreamDecoder {
    fn call_count(&mut self, choice: u32) -> &mut u32 {
        let pos = match self.call_counts.iter().position(|(c, _)| *c == choice) {
            Some(pos) => pos,
            None => {
                self.call_counts.push((choice, 0));
                self.call_counts.len() - 1
            }
        };
        &mut self.call_counts[pos].1
    }
}

impl StreamDecoder for GeminiStreamDecoder {
    fn decode(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, RelayError> {
        let data = event.data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" {
            return Ok(false);
        }
        let frame: GenerateContentResponse = serde_json::from_slice(data).map_err(|e| {
            RelayError::new(
                ErrorKind::UpstreamProtocol,
                Side::Upstream,
                format!("the upstream sent a stream frame that is not valid JSON: {e}"),
            )
        })?;
        if let Some(err) = frame.extra.get("error") {
            return Err(wire::upstream_error(err));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: frame
                    .response_id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(wire::synthetic_response_id),
                model: frame.model_version.clone().unwrap_or_default(),
                created: 0,
            });
        }
        if frame.candidates.is_empty() && wire::prompt_blocked(&frame.extra) {
            self.finished = true;
            out.push(StreamEvent::Finish {
                choice: 0,
                reason: FinishReason::ContentFilter,
            });
        }
        for (pos, candidate) in frame.candidates.into_iter().enumerate() {
            let choice = candidate
                .index
                .unwrap_or(u32::try_from(pos).unwrap_or(u32::MAX));
            let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
            for (j, part) in parts.into_iter().enumerate() {
                let path = PartPath::Answer(pos, j);
                let mut decoded = std::mem::take(&mut self.scratch);
                decoded.clear();
                wire::part_to_ir(path, part, &mut self.calls, true, &mut decoded)
                    .map_err(Problem::upstream)?;
                for p in decoded.drain(..) {
                    match p {
                        ir::ContentPart::Text { text } => {
                            if !text.is_empty() {
                                out.push(StreamEvent::TextDelta { choice, text });
                            }
                        }
                        ir::ContentPart::Thinking {
                            text, signature, ..
                        } => {
                            if let Some(signature) = signature {
                                out.push(StreamEvent::ThinkingSignature { choice, signature });
                            }
                            if !text.is_empty() {
                                out.push(StreamEvent::ThinkingDelta { choice, text });
                            }
                        }
                        ir::ContentPart::ToolCall {
                            id,
                            name,
                            arguments,
                        } => {
                            let count = self.call_count(choice);
                            let index = *count;
                            *count += 1;
                            out.push(StreamEvent::ToolCallStart {
                                choice,
                                index,
                                id,
                                name,
                            });
                            out.push(StreamEvent::ToolCallDelta {
                                choice,
                                index,
                                arguments,
                            });
                        }
                        ir::ContentPart::Image { .. } | ir::ContentPart::ToolResult { .. } => {
                            return Err(Problem::new(
                                path.to_string(),
                                "a streamed answer can carry only text, thoughts and function calls",
                            )
                            .upstream());
                        }
                    }
                }
                self.scratch = decoded;
            }
            if let Some(reason) = candidate.finish_reason {
                self.finished = true;
                let called = *self.call_count(choice) > 0;
                out.push(StreamEvent::Finish {
                    choice,
                    reason: wire::finish_reason_to_ir(&reason, called),
                });
            }
        }
        if let Some(usage) = &frame.usage_metadata {
            let usage = wire::usage_to_ir(usage);
            if self.last_usage != Some(usage) {
                self.last_usage = Some(usage);
                out.push(StreamEvent::Usage(usage));
            }
        }
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), RelayError> {
        if self.finished {
            Ok(())
        } else {
            Err(RelayError::new(
                ErrorKind::StreamCut,
                Side::Upstream,
                "the Gemini stream ended before any candidate's finishReason",
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------

/// IR events to Gemini SSE frames (`data: <json>\n\n`, no `event:` lines, no `[DONE]`).
///
/// - Text and thinking deltas are one frame each (`"thought": true` on thinking), with
///   `index`, `modelVersion` (the client's model) and `responseId` (the `Start` id, else
///   a made-up `gemini-<n>`).
/// - A tool call is held until it is complete (the next call's start, any other event of
///   its choice, or the end), then written as one frame with a `functionCall` part whose
///   `args` is the parsed arguments; arguments that are not a JSON object end the stream
///   with an error frame.
/// - A thinking signature is written on the choice's next part (or on an empty text part
///   in the final frame).
/// - `Finish` is held: the final frame (every finished choice's `finishReason`, and
///   `usageMetadata`) goes out when usage arrives after every choice finished, or at the
///   end of the stream, so usage sent after the finish (as OpenAI does) is included.
#[derive(Debug)]
struct GeminiStreamEncoder {
    model: String,
    response_id: Option<String>,
    choices: Vec<ChoiceState>,
    usage: Option<Usage>,
    /// The final frame went out.
    done: bool,
    /// An error frame went out: nothing more is written.
    failed: bool,
}

#[derive(Debug)]
struct ChoiceState {
    choice: u32,
    signature: Option<String>,
    call: Option<PendingCall>,
    finish: Option<FinishReason>,
}

#[derive(Debug)]
struct PendingCall {
    index: u32,
    id: String,
    name: String,
    arguments: String,
    signature: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EncFrame<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    candidates: Vec<EncCandidate<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<UsageMetadata>,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EncCandidate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<EncContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'a str>,
    index: u32,
}

#[derive(Serialize)]
struct EncContent<'a> {
    role: &'static str,
    parts: [EncPart<'a>; 1],
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct EncPart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<EncFunctionCall<'a>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire::thought_signature::serialize_str"
    )]
    thought_signature: Option<&'a str>,
}

#[derive(Serialize)]
struct EncFunctionCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: &'a str,
    args: Value,
}

impl GeminiStreamEncoder {
    fn new(model: String) -> Self {
        GeminiStreamEncoder {
            model,
            response_id: None,
            choices: Vec::new(),
            usage: None,
            done: false,
            failed: false,
        }
    }

    fn state(&mut self, choice: u32) -> &mut ChoiceState {
        let pos = match self.choices.iter().position(|c| c.choice == choice) {
            Some(pos) => pos,
            None => {
                self.choices.push(ChoiceState {
                    choice,
                    signature: None,
                    call: None,
                    finish: None,
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[pos]
    }

    fn response_id(&mut self) -> String {
        self.response_id
            .get_or_insert_with(wire::synthetic_response_id)
            .clone()
    }

    fn write(
        &mut self,
        out: &mut BytesMut,
        candidates: Vec<EncCandidate<'_>>,
        usage: Option<UsageMetadata>,
    ) {
        let id = self.response_id();
        let frame = EncFrame {
            candidates,
            usage_metadata: usage,
            model_version: &self.model,
            response_id: &id,
        };
        // These structs have string keys only: serializing them cannot fail.
        if let Ok(json) = serde_json::to_vec(&frame) {
            encode_event(out, None, &json);
        }
    }

    /// One frame with one part for `choice`.
    fn write_part(&mut self, out: &mut BytesMut, choice: u32, part: EncPart<'_>) {
        let candidate = EncCandidate {
            content: Some(EncContent {
                role: wire::MODEL_ROLE,
                parts: [part],
            }),
            finish_reason: None,
            index: choice,
        };
        self.write(out, vec![candidate], None);
    }

    /// Write the choice's held tool call, if any. `false` when its arguments were bad and
    /// an error frame went out instead.
    fn flush_call(&mut self, out: &mut BytesMut, choice: u32) -> bool {
        let Some(call) = self.state(choice).call.take() else {
            return true;
        };
        let Some(args) = wire::args_object(&call.arguments) else {
            let err = RelayError::new(
                ErrorKind::UpstreamProtocol,
                Side::Upstream,
                format!(
                    "the arguments of the call to `{}` are not a JSON object: {}",
                    call.name, call.arguments
                ),
            );
            self.error(&err, out);
            return false;
        };
        let part = EncPart {
            function_call: Some(EncFunctionCall {
                id: wire::wire_call_id(&call.id),
                name: &call.name,
                args,
            }),
            thought_signature: call.signature.as_deref(),
            ..EncPart::default()
        };
        self.write_part(out, choice, part);
        true
    }

    fn flush_all_calls(&mut self, out: &mut BytesMut) -> bool {
        let choices: Vec<u32> = self.choices.iter().map(|c| c.choice).collect();
        choices.into_iter().all(|c| self.flush_call(out, c))
    }

    /// The final frame: every finished choice's reason and the usage.
    fn write_final(&mut self, out: &mut BytesMut) {
        self.done = true;
        let finishes: Vec<(u32, Option<String>, Option<&'static str>)> = self
            .choices
            .iter_mut()
            .filter(|c| c.finish.is_some() || c.signature.is_some())
            .map(|c| {
                let reason = c
                    .finish
                    .as_ref()
                    .map(|r| finish_static(wire::finish_reason_from_ir(r)));
                (c.choice, c.signature.take(), reason)
            })
            .collect();
        let usage = self.usage.as_ref().map(wire::usage_from_ir);
        if finishes.is_empty() && usage.is_none() {
            return;
        }
        let candidates = finishes
            .iter()
            .map(|(choice, signature, reason)| EncCandidate {
                content: signature.as_deref().map(|sig| EncContent {
                    role: wire::MODEL_ROLE,
                    parts: [EncPart {
                        text: Some(""),
                        thought_signature: Some(sig),
                        ..EncPart::default()
                    }],
                }),
                finish_reason: *reason,
                index: *choice,
            })
            .collect();
        self.write(out, candidates, usage);
    }
}

/// Gemini finish reasons as static strings (unknown upper-case ones become `OTHER`, which
/// keeps the frame types borrow-free).
fn finish_static(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "MALFORMED_FUNCTION_CALL",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
    ];
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("OTHER")
}

impl StreamEncoder for GeminiStreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        match event {
            StreamEvent::Start { id, .. } => {
                if self.response_id.is_none() && !id.is_empty() {
                    self.response_id = Some(id.clone());
                }
            }
            StreamEvent::TextDelta { choice, text }
            | StreamEvent::ThinkingDelta { choice, text } => {
                if text.is_empty() || !self.flush_call(out, *choice) {
                    return;
                }
                let thought = matches!(event, StreamEvent::ThinkingDelta { .. });
                let signature = self.state(*choice).signature.take();
                let part = EncPart {
                    text: Some(text),
                    thought: thought.then_some(true),
                    thought_signature: signature.as_deref(),
                    ..EncPart::default()
                };
                self.write_part(out, *choice, part);
            }
            StreamEvent::ThinkingSignature { choice, signature } => {
                if self.flush_call(out, *choice) {
                    self.state(*choice).signature = Some(signature.clone());
                }
            }
            StreamEvent::ToolCallStart {
                choice,
                index,
                id,
                name,
            } => {
                if self
                    .state(*choice)
                    .call
                    .as_ref()
                    .is_some_and(|c| c.index == *index)
                {
                    return;
                }
                if !self.flush_call(out, *choice) {
                    return;
                }
                let state = self.state(*choice);
                state.call = Some(PendingCall {
                    index: *index,
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    signature: state.signature.take(),
                });
            }
            StreamEvent::ToolCallDelta {
                choice,
                index,
                arguments,
            } => {
                if let Some(call) = self
                    .state(*choice)
                    .call
                    .as_mut()
                    .filter(|c| c.index == *index)
                {
                    call.arguments.push_str(arguments);
                    return;
                }
                // Arguments without a start: hold them as a call of their own.
                if !self.flush_call(out, *choice) {
                    return;
                }
                let state = self.state(*choice);
                state.call = Some(PendingCall {
                    index: *index,
                    id: String::new(),
                    name: String::new(),
                    arguments: arguments.clone(),
                    signature: state.signature.take(),
                });
            }
            StreamEvent::Finish { choice, reason } => {
                if self.done || !self.flush_call(out, *choice) {
                    return;
                }
                self.state(*choice).finish = Some(reason.clone());
            }
            StreamEvent::Usage(usage) => {
                if self.done {
                    return;
                }
                self.usage = Some(*usage);
                if !self.choices.is_empty()
                    && self.choices.iter().all(|c| c.finish.is_some())
                    && self.flush_all_calls(out)
                {
                    self.write_final(out);
                }
            }
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.failed || !self.flush_all_calls(out) || self.done {
            return;
        }
        self.write_final(out);
    }

    fn error(&mut self, err: &RelayError, out: &mut BytesMut) {
        self.failed = true;
        encode_event(out, None, &wire::error_body(err));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::ir::StreamEvent as E;
    use serde_json::json;

    fn body(v: &Value) -> JsonObject {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            data: Bytes::copy_from_slice(data.as_bytes()),
            ..SseEvent::default()
        }
    }

    /// The JSON of each `data:` frame; every frame is exactly `data: <json>\n\n`.
    fn frames(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
        text.split_terminator("\n\n")
            .map(|frame| {
                let json = frame.strip_prefix("data: ").unwrap();
                assert!(!json.contains('\n'), "{frame}");
                serde_json::from_str(json).unwrap()
            })
            .collect()
    }

    fn decode_all(frames: &[String]) -> (Vec<E>, Box<dyn StreamDecoder>) {
        let mut decoder = GeminiCodec.stream_decoder();
        let mut events = Vec::new();
        for f in frames {
            assert!(!decoder.decode(&ev(f), &mut events).unwrap());
        }
        (events, decoder)
    }

    fn encode_all(events: &[E], model: &str) -> Vec<Value> {
        let mut encoder = GeminiCodec.stream_encoder(EncoderOptions {
            include_usage: false,
            model: model.into(),
            prompt_tokens_estimate: 0,
        });
        let mut out = BytesMut::new();
        for e in events {
            encoder.encode(e, &mut out);
        }
        encoder.finish(&mut out);
        frames(&out)
    }

    #[test]
    fn decode_request_takes_model_and_stream_from_the_body_and_never_writes_them() {
        let wire = json!({
            "contents": [
                {"role": "user", "parts": [{"text": "What's the weather in Paris?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}}]}
            ],
            "tools": [{"functionDeclarations": [{"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}],
            "generationConfig": {"temperature": 1.0, "maxOutputTokens": 256},
            "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
        });
        let mut injected = wire.clone();
        injected["model"] = json!("gemini-2.5-flash");
        injected["stream"] = json!(true);
        let ir = GeminiCodec.decode_request(&body(&injected)).unwrap();
        assert_eq!(ir.model, "gemini-2.5-flash");
        assert!(ir.stream);
        assert!(ir.include_usage);
        assert!(!ir.extra.contains_key("model"));
        assert!(!ir.extra.contains_key("stream"));
        assert_eq!(ir.messages[2].role, ir::Role::Tool);
        let out: Value = serde_json::from_slice(&GeminiCodec.encode_request(&ir).unwrap()).unwrap();
        assert_eq!(out, wire);

        let mut plain = wire.clone();
        plain["model"] = json!("gemini-2.5-pro");
        let ir = GeminiCodec.decode_request(&body(&plain)).unwrap();
        assert!(!ir.stream);

        for (v, needle) in [
            (wire.clone(), "names no model"),
            (json!({"model": 3, "contents": []}), "must be a string"),
            (json!({"model": "", "contents": []}), "names no model"),
            (
                json!({"model": "m", "stream": "yes", "contents": []}),
                "stream must be a boolean",
            ),
        ] {
            let err = GeminiCodec.decode_request(&body(&v)).unwrap_err();
            assert_eq!(err.status_code().as_u16(), 400, "{v}");
            assert!(err.message().contains(needle), "{v}: {}", err.message());
        }
        let err = GeminiCodec
            .decode_request(&body(&json!({"model": "m", "contents": "hi"})))
            .unwrap_err();
        assert_eq!(err.status_code().as_u16(), 400);
        assert!(err.message().starts_with("Invalid JSON payload received"));
    }

    const RESPONSE_ID: &str = "mJ3xaPbiNcaYz7IPqqTJ2QM";

    /// A `streamGenerateContent?alt=sse` transcript as Gemini 2.5 Flash sends it.
    fn transcript() -> Vec<String> {
        let usage_so_far = r#""usageMetadata":{"promptTokenCount":74,"totalTokenCount":74,"promptTokensDetails":[{"modality":"TEXT","tokenCount":74}]}"#;
        let frame = |parts: &str, tail: &str| {
            format!(
                r#"{{"candidates":[{{"content":{{"parts":{parts},"role":"model"}}{tail},"index":0}}],{usage_so_far},"modelVersion":"gemini-2.5-flash","responseId":"{RESPONSE_ID}"}}"#
            )
        };
        vec![
            frame(
                r#"[{"text":"The user wants two forecasts.","thought":true}]"#,
                "",
            ),
            frame(r#"[{"text":"Let me look up "}]"#, ""),
            frame(r#"[{"text":"both cities."}]"#, ""),
            frame(
                r#"[{"functionCall":{"name":"get_weather","args":{"location":"Paris"}},"thoughtSignature":"CiQBVKhc7vB+sig=="},{"functionCall":{"name":"get_weather","args":{"location":"Tokyo","unit":"celsius"}}}]"#,
                "",
            ),
            format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":""}}],"role":"model"}},"finishReason":"STOP","index":0}}],"usageMetadata":{{"promptTokenCount":74,"candidatesTokenCount":42,"totalTokenCount":160,"promptTokensDetails":[{{"modality":"TEXT","tokenCount":74}}],"thoughtsTokenCount":44}},"modelVersion":"gemini-2.5-flash","responseId":"{RESPONSE_ID}"}}"#
            ),
        ]
    }

    fn final_usage() -> Usage {
        Usage {
            input_tokens: 74,
            output_tokens: 86,
            cached_input_tokens: 0,
            reasoning_tokens: 44,
        }
    }

    fn expected_events(with_early_usage: bool) -> Vec<E> {
        let mut events = vec![
            E::Start {
                id: RESPONSE_ID.into(),
                model: "gemini-2.5-flash".into(),
                created: 0,
            },
            E::ThinkingDelta {
                choice: 0,
                text: "The user wants two forecasts.".into(),
            },
        ];
        if with_early_usage {
            events.push(E::Usage(Usage {
                input_tokens: 74,
                ..Usage::default()
            }));
        }
        events.extend([
            E::TextDelta {
                choice: 0,
                text: "Let me look up ".into(),
            },
            E::TextDelta {
                choice: 0,
                text: "both cities.".into(),
            },
            E::ThinkingSignature {
                choice: 0,
                signature: "CiQBVKhc7vB+sig==".into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 0,
                id: "call_0".into(),
                name: "get_weather".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 0,
                arguments: r#"{"location":"Paris"}"#.into(),
            },
            E::ToolCallStart {
                choice: 0,
                index: 1,
                id: "call_1".into(),
                name: "get_weather".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 1,
                arguments: r#"{"location":"Tokyo","unit":"celsius"}"#.into(),
            },
            E::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
            E::Usage(final_usage()),
        ]);
        events
    }

    #[test]
    fn gemini_stream_decodes_to_ir_events_and_re_encodes() {
        let (events, mut decoder) = decode_all(&transcript());
        assert_eq!(events, expected_events(true));
        decoder.finish().unwrap();

        let out = encode_all(&events, "gemini-2.5-flash");
        let head = |v: &Value| {
            assert_eq!(v["modelVersion"], json!("gemini-2.5-flash"));
            assert_eq!(v["responseId"], json!(RESPONSE_ID));
        };
        out.iter().for_each(head);
        assert_eq!(out.len(), 6);
        assert_eq!(
            out[0]["candidates"],
            json!([{"content": {"role": "model", "parts": [
                {"text": "The user wants two forecasts.", "thought": true}]}, "index": 0}])
        );
        assert_eq!(
            out[1]["candidates"][0]["content"]["parts"],
            json!([{"text": "Let me look up "}])
        );
        assert_eq!(
            out[3]["candidates"][0]["content"]["parts"],
            json!([{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                "thoughtSignature": "CiQBVKhc7vB+sig=="}])
        );
        assert_eq!(
            out[4]["candidates"][0]["content"]["parts"],
            json!([{"functionCall": {"name": "get_weather",
                "args": {"location": "Tokyo", "unit": "celsius"}}}])
        );
        assert_eq!(
            out[5]["candidates"],
            json!([{"finishReason": "STOP", "index": 0}])
        );
        assert_eq!(
            out[5]["usageMetadata"],
            json!({"promptTokenCount": 74, "candidatesTokenCount": 42, "totalTokenCount": 160,
                "thoughtsTokenCount": 44})
        );

        // What a Gemini client reassembles from the re-encoded stream is what was sent.
        let again: Vec<String> = out.iter().map(Value::to_string).collect();
        let (events, mut decoder) = decode_all(&again);
        assert_eq!(events, expected_events(false));
        decoder.finish().unwrap();
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                E::TextDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Let me look up both cities.");
    }

    #[test]
    fn a_stream_without_finish_reason_is_cut() {
        let frames = transcript();
        let (_, mut decoder) = decode_all(&frames[..4]);
        let err = decoder.finish().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StreamCut);
        assert_eq!(err.side(), Side::Upstream);
        assert!(err.is_retryable());

        let (_, mut empty) = decode_all(&[]);
        assert_eq!(empty.finish().unwrap_err().kind(), ErrorKind::StreamCut);
    }

    #[test]
    fn stream_error_frames_and_blocked_prompts() {
        let mut decoder = GeminiCodec.stream_decoder();
        let mut events = Vec::new();
        let err = decoder
            .decode(
                &ev(r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#),
                &mut events,
            )
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.upstream_code(), Some(503));
        assert!(
            err.message()
                .contains("overloaded. Please try again later. [UNAVAILABLE]"),
            "{}",
            err.message()
        );
        assert!(events.is_empty());

        let err = decoder.decode(&ev("{not json"), &mut events).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UpstreamProtocol);

        let (events, mut decoder) = decode_all(&[
            r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":12,"totalTokenCount":12},"modelVersion":"gemini-2.5-pro","responseId":"abc"}"#.to_owned(),
        ]);
        assert_eq!(
            events[1..],
            [
                E::Finish {
                    choice: 0,
                    reason: FinishReason::ContentFilter
                },
                E::Usage(Usage {
                    input_tokens: 12,
                    ..Usage::default()
                })
            ]
        );
        decoder.finish().unwrap();
    }

    #[test]
    fn encoder_buffers_openai_ordered_tool_calls_into_one_frame() {
        let fragment = |a: &str| E::ToolCallDelta {
            choice: 0,
            index: 0,
            arguments: a.into(),
        };
        let events = [
            E::Start {
                id: "chatcmpl-AZl6BvZPxgzYBJ3ZhR6yPG9Z1kYy3".into(),
                model: "gpt-4o-2024-08-06".into(),
                created: 1733008043,
            },
            E::ToolCallStart {
                choice: 0,
                index: 0,
                id: "call_9bGxLs3ZKZ0GMdY5YoP9bRMa".into(),
                name: "get_weather".into(),
            },
            fragment("{\"loca"),
            fragment("tion\":\"Pa"),
            fragment("ris\"}"),
            E::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
            E::Usage(Usage {
                input_tokens: 80,
                output_tokens: 17,
                cached_input_tokens: 64,
                reasoning_tokens: 0,
            }),
        ];
        let mut encoder = GeminiCodec.stream_encoder(EncoderOptions {
            model: "gemini-2.5-flash".into(),
            ..EncoderOptions::default()
        });
        let mut out = BytesMut::new();
        for e in &events[..5] {
            encoder.encode(e, &mut out);
        }
        assert!(out.is_empty(), "the call is held until it is complete");
        encoder.encode(&events[5], &mut out);
        assert_eq!(frames(&out).len(), 1, "the finish is held for the usage");
        encoder.encode(&events[6], &mut out);
        let before_finish = out.len();
        encoder.finish(&mut out);
        assert_eq!(out.len(), before_finish, "nothing is left for the end");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("[DONE]") && !text.contains("event:"));
        assert_eq!(
            frames(&out),
            vec![
                json!({
                    "candidates": [{"content": {"role": "model", "parts": [{"functionCall": {
                        "id": "call_9bGxLs3ZKZ0GMdY5YoP9bRMa", "name": "get_weather",
                        "args": {"location": "Paris"}}}]}, "index": 0}],
                    "modelVersion": "gemini-2.5-flash",
                    "responseId": "chatcmpl-AZl6BvZPxgzYBJ3ZhR6yPG9Z1kYy3"
                }),
                json!({
                    "candidates": [{"finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 80, "candidatesTokenCount": 17,
                        "totalTokenCount": 97, "cachedContentTokenCount": 64},
                    "modelVersion": "gemini-2.5-flash",
                    "responseId": "chatcmpl-AZl6BvZPxgzYBJ3ZhR6yPG9Z1kYy3"
                }),
            ]
        );
    }

    #[test]
    fn encoder_without_usage_after_finish_closes_at_the_end() {
        let out = encode_all(
            &[
                E::Start {
                    id: String::new(),
                    model: String::new(),
                    created: 0,
                },
                E::Usage(Usage {
                    input_tokens: 5,
                    output_tokens: 2,
                    ..Usage::default()
                }),
                E::TextDelta {
                    choice: 0,
                    text: "Hi!".into(),
                },
                E::Finish {
                    choice: 0,
                    reason: FinishReason::Length,
                },
            ],
            "gemini-2.5-flash",
        );
        assert_eq!(out.len(), 2);
        let id = out[0]["responseId"].as_str().unwrap();
        assert!(id.starts_with("gemini-"), "{id}");
        assert_eq!(out[1]["responseId"], json!(id));
        assert_eq!(
            out[1]["candidates"],
            json!([{"finishReason": "MAX_TOKENS", "index": 0}])
        );
        assert_eq!(out[1]["usageMetadata"]["totalTokenCount"], json!(7));
    }

    #[test]
    fn bad_tool_arguments_and_failures_become_error_frames() {
        let mut encoder = GeminiCodec.stream_encoder(EncoderOptions::default());
        let mut out = BytesMut::new();
        for e in [
            E::ToolCallStart {
                choice: 0,
                index: 0,
                id: "call_x".into(),
                name: "f".into(),
            },
            E::ToolCallDelta {
                choice: 0,
                index: 0,
                arguments: "{\"a\": tru".into(),
            },
            E::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
            E::TextDelta {
                choice: 0,
                text: "ignored".into(),
            },
        ] {
            encoder.encode(&e, &mut out);
        }
        encoder.finish(&mut out);
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0]["error"]["code"], json!(502));
        assert_eq!(f[0]["error"]["status"], json!("UNAVAILABLE"));
        assert!(
            f[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`f` are not a JSON object")
        );

        let mut encoder = GeminiCodec.stream_encoder(EncoderOptions::default());
        let mut out = BytesMut::new();
        encoder.encode(
            &E::TextDelta {
                choice: 0,
                text: "partial".into(),
            },
            &mut out,
        );
        encoder.error(
            &RelayError::new(
                ErrorKind::IdleTimeout,
                Side::Upstream,
                "the upstream went silent",
            ),
            &mut out,
        );
        let f = frames(&out);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[1],
            json!({"error": {"code": 504, "message": "the upstream went silent",
                "status": "DEADLINE_EXCEEDED"}})
        );
    }

    #[test]
    fn whole_answers_through_the_codec() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Bonjour !"}],"role":"model"},"finishReason":"STOP","index":0,"avgLogprobs":-0.05}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"totalTokenCount":11},"modelVersion":"gemini-2.5-flash","responseId":"r-1"}"#;
        let ir = GeminiCodec.decode_response(body).unwrap();
        assert_eq!(ir.choices[0].message.text(), "Bonjour !");
        assert_eq!(ir.choices[0].finish_reason, Some(FinishReason::Stop));
        assert_eq!(ir.usage.unwrap().total_tokens(), 11);
        let back: Value =
            serde_json::from_slice(&GeminiCodec.encode_response(&ir).unwrap()).unwrap();
        assert_eq!(back, serde_json::from_slice::<Value>(body).unwrap());

        let err = GeminiCodec
            .decode_response(br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#)
            .unwrap_err();
        assert_eq!(err.status_code().as_u16(), 429);
        assert!(GeminiCodec.decode_response(b"<html>").is_err());

        assert_eq!(GeminiCodec.id(), DialectId::GEMINI);
        let v: Value =
            serde_json::from_slice(&GeminiCodec.error_body(&RelayError::model_not_found("x")))
                .unwrap();
        assert_eq!(v["error"]["code"], json!(404));
        assert_eq!(v["error"]["status"], json!("NOT_FOUND"));
        assert_eq!(
            GeminiCodec.error_message(br#"{"error":{"code":403,"message":"Permission denied","status":"PERMISSION_DENIED"}}"#),
            "Permission denied [PERMISSION_DENIED]"
        );
    }
}
