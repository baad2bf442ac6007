//! OpenAI-shaped errors: rendering ours, reading the upstream's.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use relay_core::RelayError;

use super::peek::ErrorPeek;

/// `{"error":{"message","type","param","code"}}`, as OpenAI sends it.
pub fn error_body(err: &RelayError) -> Bytes {
    let body = json!({
        "error": {
            "message": err.message(),
            "type": err.openai_type(),
            "param": err.param(),
            "code": err.code().unwrap_or(err.error_metric()),
        }
    });
    Bytes::from(body.to_string())
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    error: ErrorOrText<'a>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorOrText<'a> {
    #[serde(borrow)]
    Object(ErrorPeek<'a>),
    Text(std::borrow::Cow<'a, str>),
}

/// The message (and type) of an upstream error body, or a readable slice of the raw body.
pub fn parse_error_body(body: &[u8]) -> String {
    if let Ok(env) = serde_json::from_slice::<Envelope<'_>>(body) {
        match env.error {
            ErrorOrText::Object(e) => {
                let message = e.message.as_deref().unwrap_or("(no message)");
                return match (e.kind.as_deref(), &e.code) {
                    (Some(kind), _) => format!("{message} [{kind}]"),
                    (None, Some(code)) => format!("{message} [{code}]"),
                    (None, None) => message.to_owned(),
                };
            }
            ErrorOrText::Text(t) => return t.into_owned(),
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let e = RelayError::model_not_found("nope");
        let v: serde_json::Value = serde_json::from_slice(&error_body(&e)).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    }

    #[test]
    fn reads_upstream_errors() {
        assert_eq!(
            parse_error_body(br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#),
            "slow down [rate_limit_error]"
        );
        assert_eq!(parse_error_body(br#"{"error":"bad thing"}"#), "bad thing");
        assert_eq!(parse_error_body(b"<html>502</html>"), "<html>502</html>");
        assert_eq!(parse_error_body(b""), "(empty body)");
    }
}
