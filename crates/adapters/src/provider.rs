//! [`ProviderAdapter`]: one catalog entry plus its dialect's codec, serving clients of any
//! dialect.
//!
//! - **Same dialect** (the fast path): the client's body goes upstream field for field,
//!   in order, with only what must change patched (`model`; for OpenAI streams
//!   `stream_options.include_usage`; for Gemini the route's `model`/`stream` removed).
//!   Answers pass byte for byte while a decoded copy yields usage.
//! - **Across dialects**: the client's request is decoded to the IR (or taken from
//!   [`InboundRequest::ir`]) and encoded for the upstream; answers go back through the IR
//!   ([`TranslatingStream`] for streams).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value};

use relay_core::codec::{CodecRegistry, DialectCodec, EncoderOptions};
use relay_core::error::parse_retry_after;
use relay_core::ir::ChatRequest;
use relay_core::{
    Adapter, DecodedResponse, DialectId, ErrorKind, JsonObject, Operation, RelayError, Side,
    StreamTranslator, UpstreamCall,
};

use crate::catalog::{Auth, Layout, ProviderSpec};
use crate::openai::PassthroughStream;
use crate::openai::peek::ResponsePeek;
use crate::translate::{ObservedPassthrough, TranslatingStream};

/// A provider from the catalog, with its dialect's codec and every client codec.
pub struct ProviderAdapter {
    spec: ProviderSpec,
    upstream: Arc<dyn DialectCodec>,
    codecs: CodecRegistry,
}

impl std::fmt::Debug for ProviderAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderAdapter")
            .field("spec", &self.spec)
            .finish()
    }
}

impl ProviderAdapter {
    /// The adapter for `spec`; `None` when no codec speaks its dialect.
    pub fn new(spec: ProviderSpec, codecs: &CodecRegistry) -> Option<Self> {
        let upstream = codecs.get(spec.dialect)?.clone();
        Some(ProviderAdapter {
            spec,
            upstream,
            codecs: codecs.clone(),
        })
    }

    fn same_dialect(&self, call: &UpstreamCall<'_>) -> bool {
        call.request.dialect == self.spec.dialect
    }

    fn client_codec(&self, dialect: DialectId) -> Result<&Arc<dyn DialectCodec>, RelayError> {
        self.codecs.get(dialect).ok_or_else(|| {
            RelayError::bad_request(format!(
                "provider `{}` cannot serve `{dialect}` clients",
                self.spec.name
            ))
        })
    }

    /// The request in the IR, with this attempt's model and stream settings.
    fn ir_request(&self, call: &UpstreamCall<'_>) -> Result<ChatRequest, RelayError> {
        let inbound = call.request;
        let mut ir = match &inbound.ir {
            Some(ir) => ChatRequest::clone(ir),
            None => self
                .client_codec(inbound.dialect)?
                .decode_request(&inbound.body)?,
        };
        ir.model = call.model.to_owned();
        ir.stream = inbound.stream;
        ir.include_usage = inbound.stream && self.spec.stream_options;
        if inbound.dialect != self.spec.dialect {
            // Another dialect's leftovers mean nothing here (and may be refused).
            ir.extra.clear();
            for m in &mut ir.messages {
                m.extra.clear();
            }
        }
        Ok(ir)
    }

    fn url(&self, call: &UpstreamCall<'_>) -> Result<String, RelayError> {
        let base = call.base_url;
        let op = call.request.op;
        let no_embeddings = || {
            RelayError::bad_request(format!(
                "provider `{}` has no embeddings API in Relay yet",
                self.spec.name
            ))
        };
        Ok(match self.spec.layout {
            Layout::OpenAi => match op {
                Operation::Chat => [base, "/chat/completions"].concat(),
                Operation::Embeddings => [base, "/embeddings"].concat(),
            },
            Layout::AzureOpenAi {
                default_api_version,
            } => {
                let deployment = path_segment(call.model, "deployment")?;
                let version = call
                    .channel
                    .api_version
                    .as_deref()
                    .unwrap_or(default_api_version);
                let what = match op {
                    Operation::Chat => "chat/completions",
                    Operation::Embeddings => "embeddings",
                };
                format!("{base}/openai/deployments/{deployment}/{what}?api-version={version}")
            }
            Layout::Anthropic => match op {
                Operation::Chat => [base, "/v1/messages"].concat(),
                Operation::Embeddings => return Err(no_embeddings()),
            },
            Layout::Gemini => match op {
                Operation::Chat => {
                    let model = path_segment(call.model.trim_start_matches("models/"), "model")?;
                    if call.request.stream {
                        format!("{base}/models/{model}:streamGenerateContent?alt=sse")
                    } else {
                        format!("{base}/models/{model}:generateContent")
                    }
                }
                Operation::Embeddings => return Err(no_embeddings()),
            },
        })
    }

    fn body(&self, call: &UpstreamCall<'_>) -> Result<Vec<u8>, RelayError> {
        let inbound = call.request;
        if inbound.op == Operation::Embeddings {
            if inbound.dialect != DialectId::OPENAI_CHAT
                || self.spec.dialect != DialectId::OPENAI_CHAT
            {
                return Err(RelayError::bad_request(format!(
                    "embeddings through provider `{}` are not supported",
                    self.spec.name
                )));
            }
            return patch_body(&inbound.body, Some(call.model), &[], false);
        }
        if self.same_dialect(call) {
            return match self.spec.layout {
                Layout::OpenAi => patch_body(
                    &inbound.body,
                    Some(call.model),
                    &[],
                    inbound.stream && self.spec.stream_options,
                ),
                // Azure takes the deployment from the URL; the model field is ignored.
                Layout::AzureOpenAi { .. } => {
                    patch_body(&inbound.body, None, &["model"], inbound.stream)
                }
                Layout::Anthropic => patch_body(&inbound.body, Some(call.model), &[], false),
                Layout::Gemini => patch_body(&inbound.body, None, &["model", "stream"], false),
            };
        }
        let ir = self.ir_request(call)?;
        self.upstream.encode_request(&ir)
    }
}

/// A model or deployment name placed in a URL path: letters, digits, `.-_:@` only.
fn path_segment<'a>(name: &'a str, what: &str) -> Result<&'a str, RelayError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@'))
    {
        Ok(name)
    } else {
        Err(RelayError::invalid_param(
            "model",
            format!("{name:?} cannot be used as a {what} name in the upstream URL"),
        ))
    }
}

/// Write `body` back in order: `model` replaced (when given), `drop` fields removed, and
/// `stream_options.include_usage` forced on (when asked). Values are copied verbatim.
fn patch_body(
    body: &JsonObject,
    model: Option<&str>,
    drop: &[&str],
    add_usage: bool,
) -> Result<Vec<u8>, RelayError> {
    let size: usize = body.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
    let mut out = Vec::with_capacity(size + 64);
    out.push(b'{');
    let mut first = true;
    let mut saw_options = false;
    let json_err =
        |e: serde_json::Error| RelayError::internal(format!("encoding the upstream body: {e}"));
    for (key, value) in body {
        if drop.contains(&key.as_str()) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, key).map_err(json_err)?;
        out.push(b':');
        match (key.as_str(), model) {
            ("model", Some(model)) => serde_json::to_writer(&mut out, model).map_err(json_err)?,
            ("stream_options", _) if add_usage => {
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

impl Adapter for ProviderAdapter {
    fn provider(&self) -> &str {
        self.spec.name
    }

    fn dialect(&self) -> DialectId {
        self.spec.dialect
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
        self.codecs.get(dialect).is_some()
    }

    fn build_request(&self, call: &UpstreamCall<'_>) -> Result<http::Request<Bytes>, RelayError> {
        let url = self.url(call)?;
        let body = self.body(call)?;
        let accept = if call.request.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let uri = crate::uri_cache::parse(url).map_err(|e| {
            RelayError::internal(format!(
                "channel `{}` has an upstream URL that is not valid: {e}",
                call.channel.id
            ))
        })?;
        // Built in place rather than through `http::request::Builder`, which moves the
        // request head (about 200 bytes) through every `.header()` call.
        let invalid = |what: &str| {
            RelayError::internal(format!(
                "channel `{}` has {what} that is not a valid header",
                call.channel.id
            ))
        };
        let mut req = http::Request::new(Bytes::from(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        if let Some(key) = call.api_key {
            let raw = match self.spec.auth {
                Auth::Bearer => format!("Bearer {}", key.expose()),
                Auth::Header(_) => key.expose().to_owned(),
            };
            let mut value = HeaderValue::try_from(raw).map_err(|_| invalid("a credential"))?;
            value.set_sensitive(true);
            let name = match self.spec.auth {
                Auth::Bearer => header::AUTHORIZATION,
                // Static, lower-case and checked by the catalog's tests: no copy.
                Auth::Header(name) => HeaderName::from_static(name),
            };
            headers.append(name, value);
        }
        for (name, value) in self.spec.headers {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        for (name, value) in &call.channel.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("a header name"))?,
                HeaderValue::try_from(value.as_str()).map_err(|_| invalid("a header value"))?,
            );
        }
        Ok(req)
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
                self.upstream.error_message(body)
            )
        };
        RelayError::upstream_status(code, message).with_retry_after(parse_retry_after(headers))
    }

    fn decode_response(
        &self,
        call: &UpstreamCall<'_>,
        body: Bytes,
    ) -> Result<DecodedResponse, RelayError> {
        let json = HeaderValue::from_static("application/json");
        if call.request.op == Operation::Embeddings
            || (self.same_dialect(call) && self.spec.dialect == DialectId::OPENAI_CHAT)
        {
            let peek = ResponsePeek::from_body(&body).map_err(|e| {
                RelayError::new(
                    ErrorKind::UpstreamProtocol,
                    Side::Upstream,
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
                        self.upstream.error_message(&body)
                    ),
                ));
            }
            return Ok(DecodedResponse {
                usage: peek.usage.as_ref().map(|u| u.to_usage()),
                body,
                content_type: json,
            });
        }
        let decoded = self.upstream.decode_response(&body)?;
        if self.same_dialect(call) {
            return Ok(DecodedResponse {
                usage: decoded.usage,
                body,
                content_type: json,
            });
        }
        let client = self.client_codec(call.request.dialect)?;
        Ok(DecodedResponse {
            usage: decoded.usage,
            body: client.encode_response(&decoded)?,
            content_type: json,
        })
    }

    fn stream_translator(
        &self,
        call: &UpstreamCall<'_>,
    ) -> Result<Box<dyn StreamTranslator>, RelayError> {
        let inbound = call.request;
        let options = EncoderOptions {
            include_usage: inbound.include_usage,
            // The upstream's model name, as a whole (non-streamed) answer reports it.
            model: call.model.to_owned(),
            prompt_tokens_estimate: inbound.estimated_prompt_tokens(),
        };
        if self.same_dialect(call) {
            if self.spec.dialect == DialectId::OPENAI_CHAT {
                return Ok(Box::new(PassthroughStream::new(inbound.include_usage)));
            }
            return Ok(Box::new(ObservedPassthrough::new(&self.upstream, options)));
        }
        let client = self.client_codec(inbound.dialect)?;
        Ok(Box::new(TranslatingStream::new(
            self.upstream.as_ref(),
            client.as_ref(),
            options,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{PROVIDERS, default_codecs};
    use crate::openai::OpenAiDialect;
    use relay_core::{ChannelConfig, ClientDialect, Secret};

    fn adapter(name: &str) -> ProviderAdapter {
        let spec = *PROVIDERS.iter().find(|p| p.name == name).unwrap();
        ProviderAdapter::new(spec, &default_codecs()).unwrap()
    }

    fn build(name: &str, body: &str) -> http::Request<Bytes> {
        let req = OpenAiDialect
            .parse_request(Operation::Chat, body.as_bytes(), &Default::default())
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
    fn other_dialects_get_their_own_urls_and_auth() {
        let body = r#"{"model":"a","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"stream":true}"#;
        let r = build("anthropic", body);
        assert_eq!(r.uri(), "https://api.example.com/v1/v1/messages");
        assert_eq!(r.headers()["x-api-key"], "sk-test");
        assert_eq!(r.headers()["anthropic-version"], "2023-06-01");
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["model"], "real-model");
        assert_eq!(v["system"], "be brief");
        assert!(v["max_tokens"].as_u64().unwrap() > 0);
        let r = build("gemini", body);
        assert_eq!(
            r.uri(),
            "https://api.example.com/v1/models/real-model:streamGenerateContent?alt=sse"
        );
        assert_eq!(r.headers()["x-goog-api-key"], "sk-test");
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert!(v.get("model").is_none() && v["contents"].is_array());
        let r = build("azure-openai", body);
        assert_eq!(
            r.uri(),
            "https://api.example.com/v1/openai/deployments/real-model/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(r.headers()["api-key"], "sk-test");
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

    #[test]
    fn model_names_in_urls_are_checked() {
        assert!(path_segment("gemini-2.0-flash", "model").is_ok());
        assert!(path_segment("../../admin", "model").is_err());
        assert!(path_segment("a b", "model").is_err());
    }
}
