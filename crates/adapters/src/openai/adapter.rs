//! The upstream adapter for OpenAI and every OpenAI-compatible provider.
//!
//! Fast path: when the client speaks `openai-chat` too, the body goes upstream as the
//! client wrote it, field for field and in order, with only `model` replaced and (for
//! streams) `stream_options.include_usage` turned on. Unknown fields pass untouched.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value};

use relay_core::error::parse_retry_after;
use relay_core::{
    Adapter, DecodedResponse, DialectId, Operation, RelayError, StreamTranslator, UpstreamCall,
};

use super::errors::parse_error_body;
use super::peek::ResponsePeek;
use super::stream::PassthroughStream;
use crate::catalog::{Auth, ProviderSpec};

/// An OpenAI-dialect provider, configured by its catalog entry.
#[derive(Debug, Clone, Copy)]
pub struct OpenAiAdapter {
    spec: ProviderSpec,
}

impl OpenAiAdapter {
    /// The adapter for one catalog entry.
    pub fn new(spec: ProviderSpec) -> Self {
        OpenAiAdapter { spec }
    }

    fn wants_usage(&self, call: &UpstreamCall<'_>) -> bool {
        call.request.stream && call.request.op == Operation::Chat && self.spec.stream_options
    }

    /// The upstream body: the client's fields in order, `model` replaced, usage asked for.
    fn encode_body(&self, call: &UpstreamCall<'_>) -> Result<Vec<u8>, RelayError> {
        let body = &call.request.body;
        let add_usage = self.wants_usage(call);
        let size: usize = body.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
        let mut out = Vec::with_capacity(size + call.model.len() + 40);
        out.push(b'{');
        let mut first = true;
        let mut saw_options = false;
        let json_err =
            |e: serde_json::Error| RelayError::internal(format!("encoding the upstream body: {e}"));
        for (key, value) in body {
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut out, key).map_err(json_err)?;
            out.push(b':');
            match key.as_str() {
                "model" => serde_json::to_writer(&mut out, call.model).map_err(json_err)?,
                "stream_options" if add_usage => {
                    saw_options = true;
                    let mut opts: Map<String, Value> =
                        serde_json::from_str(value.get()).unwrap_or_default();
                    opts.insert("include_usage".into(), Value::Bool(true));
                    serde_json::to_writer(&mut out, &opts).map_err(json_err)?;
                }
                _ => out.extend_from_slice(value.get().as_bytes()),
            }
        }
        if add_usage && !saw_options {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Ok(out)
    }
}

impl Adapter for OpenAiAdapter {
    fn provider(&self) -> &str {
        self.spec.name
    }

    fn dialect(&self) -> DialectId {
        DialectId::OPENAI_CHAT
    }

    fn default_base_url(&self) -> Option<&str> {
        self.spec.base_url
    }

    fn allows_private_network(&self) -> bool {
        self.spec.local
    }

    fn requires_key(&self) -> bool {
        self.spec.requires_key
    }

    fn accepts(&self, dialect: DialectId) -> bool {
        dialect == DialectId::OPENAI_CHAT
    }

    fn build_request(&self, call: &UpstreamCall<'_>) -> Result<http::Request<Bytes>, RelayError> {
        if call.request.dialect != DialectId::OPENAI_CHAT {
            return Err(RelayError::bad_request(format!(
                "provider `{}` cannot yet serve `{}` clients",
                self.spec.name, call.request.dialect
            )));
        }
        let path = match call.request.op {
            Operation::Chat => "/chat/completions",
            Operation::Embeddings => "/embeddings",
        };
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri(format!("{}{}", call.base_url, path))
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(
                header::ACCEPT,
                HeaderValue::from_static(if call.request.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                }),
            );
        if let Some(key) = call.api_key {
            let mut value = match self.spec.auth {
                Auth::Bearer => HeaderValue::try_from(format!("Bearer {}", key.expose())),
                Auth::Header(_) => HeaderValue::try_from(key.expose()),
            }
            .map_err(|_| {
                RelayError::internal(format!(
                    "channel `{}` has a credential that is not a valid header value",
                    call.channel.id
                ))
            })?;
            value.set_sensitive(true);
            builder = match self.spec.auth {
                Auth::Bearer => builder.header(header::AUTHORIZATION, value),
                Auth::Header(name) => builder.header(name, value),
            };
        }
        for (name, value) in &call.channel.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = self.encode_body(call)?;
        builder.body(Bytes::from(body)).map_err(|e| {
            RelayError::internal(format!(
                "building the upstream request for `{}`: {e}",
                call.channel.id
            ))
        })
    }

    fn classify_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> RelayError {
        let code = status.as_u16();
        let message = if matches!(code, 401 | 403) {
            // The upstream's text may quote part of the channel's key: never pass it on.
            format!(
                "the upstream `{}` refused the channel's credential ({code})",
                self.spec.name
            )
        } else {
            format!(
                "upstream `{}` answered {code}: {}",
                self.spec.name,
                parse_error_body(body)
            )
        };
        RelayError::upstream_status(code, message).with_retry_after(parse_retry_after(headers))
    }

    fn decode_response(
        &self,
        call: &UpstreamCall<'_>,
        body: Bytes,
    ) -> Result<DecodedResponse, RelayError> {
        let peek: ResponsePeek = serde_json::from_slice(&body).map_err(|e| {
            RelayError::new(
                relay_core::ErrorKind::UpstreamProtocol,
                relay_core::Side::Upstream,
                format!(
                    "upstream `{}` sent a body that is not valid JSON: {e}",
                    call.channel.id
                ),
            )
        })?;
        if peek.error.is_some() && peek.choices.is_none() && peek.data.is_none() {
            // Some providers answer 200 with an error object.
            return Err(RelayError::upstream_status(
                502,
                format!(
                    "upstream `{}` answered 200 with an error: {}",
                    self.spec.name,
                    parse_error_body(&body)
                ),
            ));
        }
        Ok(DecodedResponse {
            usage: peek.usage.as_ref().map(|u| u.to_usage()),
            body,
            content_type: HeaderValue::from_static("application/json"),
        })
    }

    fn stream_translator(
        &self,
        call: &UpstreamCall<'_>,
    ) -> Result<Box<dyn StreamTranslator>, RelayError> {
        Ok(Box::new(PassthroughStream::new(call.request.include_usage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::PROVIDERS;
    use crate::openai::OpenAiDialect;
    use relay_core::{ChannelConfig, ClientDialect, Secret};

    fn adapter(name: &str) -> OpenAiAdapter {
        OpenAiAdapter::new(*PROVIDERS.iter().find(|p| p.name == name).unwrap())
    }

    fn build(name: &str, body: &str) -> http::Request<Bytes> {
        let req = OpenAiDialect
            .parse_request(Operation::Chat, body.as_bytes())
            .unwrap();
        let mut channel = ChannelConfig::new("c1", name);
        channel.headers.insert("x-extra".into(), "1".into());
        let key = Secret::new("sk-test");
        let call = UpstreamCall {
            request: &req,
            channel: &channel,
            base_url: "https://api.example.com/v1",
            api_key: Some(&key),
            model: "real-model",
        };
        adapter(name).build_request(&call).unwrap()
    }

    #[test]
    fn fast_path_patches_model_and_keeps_the_rest() {
        let r = build(
            "openai",
            r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"seed":7,"x":{"y":[1]}}"#,
        );
        assert_eq!(r.uri(), "https://api.example.com/v1/chat/completions");
        assert_eq!(r.headers()["authorization"], "Bearer sk-test");
        assert!(r.headers()["authorization"].is_sensitive());
        assert_eq!(r.headers()["x-extra"], "1");
        assert_eq!(
            std::str::from_utf8(r.body()).unwrap(),
            r#"{"model":"real-model","messages":[{"role":"user","content":"hi"}],"seed":7,"x":{"y":[1]}}"#
        );
    }

    #[test]
    fn streams_ask_for_usage() {
        let r = build(
            "deepseek",
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        );
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let r = build(
            "openai",
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false,"other":1}}"#,
        );
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["other"], 1);
        // A provider that rejects stream_options does not get it.
        let r = build(
            "mistral",
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        );
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn errors_are_classified_without_leaking_keys() {
        let a = adapter("openai");
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let e = a.classify_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":{"message":"slow down"}}"#,
        );
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(3)));
        assert!(e.message().contains("slow down"));
        let e = a.classify_error(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz"}}"#,
        );
        assert!(!e.message().contains("sk-abc"));
        let e = a.classify_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":{"message":"context too long"}}"#,
        );
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("context too long"));
    }
}
