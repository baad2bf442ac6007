//! The client side of `openai-chat`: parse and validate requests, render errors.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use relay_core::{
    ClientDialect, DialectId, InboundRequest, JsonObject, Operation, RelayError, RouteParams,
};

/// The OpenAI Chat Completions (and Embeddings) client dialect.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAiDialect;

#[derive(Deserialize)]
struct MessagePeek<'a> {
    #[serde(default, borrow)]
    role: Option<&'a RawValue>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
}

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
        let body: JsonObject = serde_json::from_slice(bytes).map_err(|e| {
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
                let messages: Vec<MessagePeek<'_>> =
                    serde_json::from_str(raw.get()).map_err(|_| {
                        RelayError::invalid_param(
                            "messages",
                            "Invalid type for 'messages': expected an array of message objects.",
                        )
                    })?;
                if messages.is_empty() {
                    return Err(RelayError::invalid_param(
                        "messages",
                        "Invalid value for 'messages': it must contain at least one message.",
                    ));
                }
                let mut chars = 0;
                for (i, m) in messages.iter().enumerate() {
                    let role: Option<&str> =
                        m.role.and_then(|r| serde_json::from_str(r.get()).ok());
                    match role {
                        Some(r) if ROLES.contains(&r) => {}
                        Some(r) => {
                            return Err(RelayError::invalid_param(
                                &format!("messages[{i}].role"),
                                format!(
                                    "Invalid value for 'messages[{i}].role': {r:?} is not one of {ROLES:?}."
                                ),
                            ));
                        }
                        None => {
                            return Err(RelayError::invalid_param(
                                &format!("messages[{i}].role"),
                                format!(
                                    "Missing required parameter: 'messages[{i}].role' (a string)."
                                ),
                            ));
                        }
                    }
                    chars += m.content.map_or(0, |c| c.get().len());
                    chars += m.tool_calls.map_or(0, |c| c.get().len());
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
