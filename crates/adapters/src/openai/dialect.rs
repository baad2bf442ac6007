//! The client side of `openai-chat`: parse and validate requests, render errors.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use relay_core::{
    ClientDialect, DialectId, InboundRequest, JsonObject, Operation, RelayError, RouteParams,
};

use super::scan::{self, ObjectEvent};

/// The OpenAI Chat Completions (and Embeddings) client dialect.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAiDialect;

#[derive(Deserialize)]
struct StreamOptionsPeek {
    #[serde(default)]
    include_usage: Option<bool>,
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A role's text from its raw JSON value: the bytes between the quotes, or serde's
/// decoding when the string has escapes; `None` when the value is not a string.
fn role_text(raw: &[u8]) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

/// A member's key as the scan gives it (between the quotes, undecoded), decoded when it
/// has escapes (`"r\u006fle"` is `role`, as serde would read it).
fn key_text(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    match serde_json::from_slice::<String>(&quoted) {
        Ok(key) => Cow::Owned(key.into_bytes()),
        Err(_) => Cow::Borrowed(raw),
    }
}

fn field<'a, T: Deserialize<'a>>(
    body: &'a JsonObject,
    name: &str,
    expected: &str,
) -> Result<Option<T>, RelayError> {
    match body.get(name) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| {
            RelayError::invalid_param(
                name,
                format!("Invalid type for '{name}': expected {expected}."),
            )
        }),
    }
}

impl ClientDialect for OpenAiDialect {
    fn id(&self) -> DialectId {
        DialectId::OPENAI_CHAT
    }

    fn parse_request(
        &self,
        op: Operation,
        bytes: &[u8],
        _route: &RouteParams,
    ) -> Result<InboundRequest, RelayError> {
        let body = relay_core::parse_json_object(bytes).map_err(|e| {
            RelayError::bad_request(format!(
                "We could not parse the JSON body of your request: {e}. The body must be a JSON object."
            ))
        })?;
        let model: String = field(&body, "model", "a string")?.ok_or_else(|| {
            RelayError::invalid_param("model", "Missing required parameter: 'model'.")
        })?;
        if model.trim().is_empty() {
            return Err(RelayError::invalid_param(
                "model",
                "Invalid value for 'model': it must not be empty.",
            ));
        }
        let mut stream = false;
        let mut include_usage = false;
        let prompt_chars = match op {
            Operation::Chat => {
                stream = field(&body, "stream", "a boolean")?.unwrap_or(false);
                if let Some(opts) =
                    field::<StreamOptionsPeek>(&body, "stream_options", "an object")?
                {
                    include_usage = stream && opts.include_usage.unwrap_or(false);
                }
                let raw = body.get("messages").ok_or_else(|| {
                    RelayError::invalid_param("messages", "Missing required parameter: 'messages'.")
                })?;
                let not_messages = || {
                    RelayError::invalid_param(
                        "messages",
                        "Invalid type for 'messages': expected an array of message objects.",
                    )
                };
                // One walk over the messages serde has just checked: each must be an
                // object with a known role; content sizes give the prompt estimate.
                let mut count = 0usize;
                let mut chars = 0;
                let mut bad_role: Option<(usize, Option<String>)> = None;
                let mut role = None;
                scan::for_each_object(raw.get().as_bytes(), |event| {
                    match event {
                        ObjectEvent::Member(key, value) => match &*key_text(key) {
                            b"role" => role = Some(value),
                            b"content" | b"tool_calls" if value != b"null" => {
                                chars += value.len();
                            }
                            _ => {}
                        },
                        ObjectEvent::End => {
                            match role.take().and_then(role_text) {
                                Some(r) if ROLES.contains(&r.as_ref()) => {}
                                other => {
                                    bad_role = Some((count, other.map(|r| r.into_owned())));
                                    return None;
                                }
                            }
                            count += 1;
                        }
                    }
                    Some(())
                })
                .or_else(|| bad_role.is_some().then_some(()))
                .ok_or_else(not_messages)?;
                if let Some((i, role)) = bad_role {
                    return Err(match role {
                        Some(r) => RelayError::invalid_param(
                            &format!("messages[{i}].role"),
                            format!(
                                "Invalid value for 'messages[{i}].role': {r:?} is not one of {ROLES:?}."
                            ),
                        ),
                        None => RelayError::invalid_param(
                            &format!("messages[{i}].role"),
                            format!("Missing required parameter: 'messages[{i}].role' (a string)."),
                        ),
                    });
                }
                if count == 0 {
                    return Err(RelayError::invalid_param(
                        "messages",
                        "Invalid value for 'messages': it must contain at least one message.",
                    ));
                }
                chars
            }
            Operation::Embeddings => {
                let input = body.get("input").ok_or_else(|| {
                    RelayError::invalid_param("input", "Missing required parameter: 'input'.")
                })?;
                input.get().len()
            }
        };
        Ok(InboundRequest {
            dialect: DialectId::OPENAI_CHAT,
            op,
            model,
            stream,
            include_usage,
            body,
            prompt_chars,
            ir: None,
        })
    }

    fn error_body(&self, err: &RelayError) -> Bytes {
        super::error_body(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<InboundRequest, RelayError> {
        OpenAiDialect.parse_request(Operation::Chat, body.as_bytes(), &RouteParams::default())
    }

    #[test]
    fn parses_the_essentials_and_keeps_everything() {
        let r = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
            "stream_options":{"include_usage":true},"seed":7,"x_vendor":{"a":[1,2]}}"#,
        )
        .unwrap();
        assert_eq!(r.model, "m");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.body.get("seed").unwrap().get(), "7");
        assert_eq!(r.body.get("x_vendor").unwrap().get(), r#"{"a":[1,2]}"#);
        let keys: Vec<&str> = r.body.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "model",
                "messages",
                "stream",
                "stream_options",
                "seed",
                "x_vendor"
            ]
        );
    }

    #[test]
    fn bad_input_is_a_400_with_a_reason() {
        for (body, needle) in [
            ("{", "could not parse the JSON body"),
            ("[1,2]", "must be a JSON object"),
            (r#"{"messages":[]}"#, "Missing required parameter: 'model'"),
            (r#"{"model":5,"messages":[]}"#, "Invalid type for 'model'"),
            (r#"{"model":"m"}"#, "Missing required parameter: 'messages'"),
            (r#"{"model":"m","messages":[]}"#, "at least one message"),
            (
                r#"{"model":"m","messages":"hi"}"#,
                "Invalid type for 'messages'",
            ),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot"}]}"#,
                "\"robot\" is not one of",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
                "Invalid type for 'stream'",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status_code().as_u16(), 400, "{body}");
            assert!(e.message().contains(needle), "{body}: {}", e.message());
        }
    }

    #[test]
    fn walks_every_message_once_with_the_same_answers_as_serde() {
        // Escaped keys and role text, null content, tool calls, whitespace between tokens.
        let r = parse(
            r#"{"model":"m","messages":[ {"r\u006fle":"\u0075ser","content":"abcd"},
              {"role" : "assistant", "content":null, "tool_calls":[{"id":"t"}]},
              {"role":"tool","content":["x"]} ]}"#,
        )
        .unwrap();
        assert_eq!(
            r.prompt_chars,
            "\"abcd\"".len() + r#"[{"id":"t"}]"#.len() + r#"["x"]"#.len()
        );
        for (body, needle) in [
            (
                r#"{"model":"m","messages":[{"role":"user"},{"role":"robot"}]}"#,
                "'messages[1].role': \"robot\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"},{"role":null}]}"#,
                "Missing required parameter: 'messages[1].role'",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"},{"role":7}]}"#,
                "Missing required parameter: 'messages[1].role'",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"},"hi"]}"#,
                "Invalid type for 'messages'",
            ),
            (
                r#"{"model":"m","messages":null}"#,
                "Invalid type for 'messages'",
            ),
            (
                r#"{"model":"m","messages":{"role":"user"}}"#,
                "Invalid type for 'messages'",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status_code().as_u16(), 400, "{body}");
            assert!(e.message().contains(needle), "{body}: {}", e.message());
        }
    }

    #[test]
    fn embeddings_need_input() {
        let e = OpenAiDialect
            .parse_request(
                Operation::Embeddings,
                br#"{"model":"e"}"#,
                &Default::default(),
            )
            .unwrap_err();
        assert!(e.message().contains("'input'"));
        let r = OpenAiDialect
            .parse_request(
                Operation::Embeddings,
                br#"{"model":"e","input":"abc"}"#,
                &Default::default(),
            )
            .unwrap();
        assert!(!r.stream);
    }
}
