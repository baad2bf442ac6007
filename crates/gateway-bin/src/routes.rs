//! Inbound routes: pick the client dialect from the path, authenticate, read the body
//! under its limits, hand the request to the relay engine, and render errors through
//! [`crate::respond`] in that dialect.
//!
//! | route | dialect |
//! |---|---|
//! | `POST /v1/chat/completions`, `POST /v1/embeddings`, `GET /v1/models` | openai-chat |
//! | `POST /v1/messages`, `POST /v1/messages/count_tokens` | anthropic-messages |
//! | `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (also `/v1/models/...`) | gemini |

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use relay_adapters::CodecClient;
use relay_core::{
    ClientDialect, ErrorKind, Operation, RelayBody, RelayError, RelayRequest, RouteParams, Side,
};

use crate::auth::{Caller, presented_key};
use crate::respond::{error_response, json_response};
use crate::server::Gateway;

/// What a path asks for.
enum Route {
    Health,
    Models,
    OpenAi(Operation),
    Anthropic,
    AnthropicCountTokens,
    Gemini { model: String, stream: bool },
    MethodNotAllowed,
    Unknown,
}

fn route(method: &Method, path: &str) -> Route {
    let post = method == Method::POST;
    match path {
        "/healthz" if method == Method::GET => Route::Health,
        "/v1/models" if method == Method::GET => Route::Models,
        "/v1/chat/completions" if post => Route::OpenAi(Operation::Chat),
        "/v1/embeddings" if post => Route::OpenAi(Operation::Embeddings),
        "/v1/messages" if post => Route::Anthropic,
        "/v1/messages/count_tokens" if post => Route::AnthropicCountTokens,
        "/healthz"
        | "/v1/models"
        | "/v1/chat/completions"
        | "/v1/embeddings"
        | "/v1/messages"
        | "/v1/messages/count_tokens" => Route::MethodNotAllowed,
        _ => {
            let rest = path
                .strip_prefix("/v1beta/models/")
                .or_else(|| path.strip_prefix("/v1/models/"));
            match rest.and_then(|r| r.rsplit_once(':')) {
                Some((model, "generateContent")) if post => Route::Gemini {
                    model: model.to_owned(),
                    stream: false,
                },
                Some((model, "streamGenerateContent")) if post => Route::Gemini {
                    model: model.to_owned(),
                    stream: true,
                },
                Some((_, "generateContent" | "streamGenerateContent")) => Route::MethodNotAllowed,
                _ => Route::Unknown,
            }
        }
    }
}

/// Handle one request; never fails (errors are responses).
pub async fn handle(
    gw: &Gateway,
    req: Request<Incoming>,
    request_id: String,
) -> Response<RelayBody> {
    let received = Instant::now();
    let route = route(req.method(), req.uri().path());
    // Errors speak the dialect of the route (OpenAI's for anything unknown).
    let dialect: &dyn ClientDialect = match &route {
        Route::Anthropic | Route::AnthropicCountTokens => match gw.anthropic_dialect() {
            Some(d) => d,
            None => gw.openai_dialect(),
        },
        Route::Gemini { .. } => match gw.gemini_dialect() {
            Some(d) => d,
            None => gw.openai_dialect(),
        },
        _ => gw.openai_dialect(),
    };
    let result = match route {
        Route::Health => Ok(json_response(&json!({"status": "ok"}))),
        Route::Models => models(gw, &req),
        Route::OpenAi(op) => {
            relay(
                gw,
                req,
                dialect,
                op,
                RouteParams::default(),
                request_id,
                received,
            )
            .await
        }
        Route::Anthropic => {
            relay(
                gw,
                req,
                dialect,
                Operation::Chat,
                RouteParams::default(),
                request_id,
                received,
            )
            .await
        }
        Route::AnthropicCountTokens => count_tokens(gw, req).await,
        Route::Gemini { model, stream } => {
            let params = RouteParams {
                model: Some(model),
                stream: Some(stream),
            };
            relay(
                gw,
                req,
                dialect,
                Operation::Chat,
                params,
                request_id,
                received,
            )
            .await
        }
        Route::MethodNotAllowed => Err(RelayError::new(
            ErrorKind::NotFound,
            Side::Client,
            format!(
                "Method {} is not allowed on {}.",
                req.method(),
                req.uri().path()
            ),
        )
        .with_status(StatusCode::METHOD_NOT_ALLOWED)),
        Route::Unknown => Err(RelayError::new(
            ErrorKind::NotFound,
            Side::Client,
            format!(
                "Unknown request URL: {} {}.",
                req.method(),
                req.uri().path()
            ),
        )
        .with_code("unknown_url")),
    };
    match result {
        Ok(resp) => resp,
        Err(err) => {
            if err.side() == Side::Client {
                tracing::info!(status = err.status_code().as_u16(), error = %err, "request refused");
            } else {
                tracing::warn!(status = err.status_code().as_u16(), error = %err, "request failed");
            }
            error_response(dialect, &err)
        }
    }
}

fn authenticate(gw: &Gateway, req: &Request<Incoming>) -> Result<Caller, RelayError> {
    let Some(key) = presented_key(req.headers(), req.uri().query()) else {
        return Err(RelayError::new(
            ErrorKind::Unauthorized,
            Side::Client,
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or `x-api-key`, `x-goog-api-key`).",
        )
        .with_code("missing_api_key"));
    };
    if let Some(tenancy) = gw.tenancy() {
        return tenancy.authenticate(&key);
    }
    gw.keys().check(&key).ok_or_else(|| {
        RelayError::new(
            ErrorKind::Unauthorized,
            Side::Client,
            "Incorrect API key provided.",
        )
        .with_code("invalid_api_key")
    })
}

async fn relay(
    gw: &Gateway,
    req: Request<Incoming>,
    dialect: &dyn ClientDialect,
    op: Operation,
    params: RouteParams,
    request_id: String,
    received: Instant,
) -> Result<Response<RelayBody>, RelayError> {
    let caller = authenticate(gw, &req)?;
    let body = read_body(req, gw.max_body_bytes(), gw.body_timeout()).await?;
    let inbound = dialect.parse_request(op, &body, &params)?;
    if let Some(tenancy) = gw.tenancy() {
        // Allowed models, RPM/TPM, then the quota reservation (settled with the usage).
        tenancy.admit(&caller, &inbound, &request_id).await?;
    }
    let group = caller.policy.as_ref().and_then(|p| p.record.group.clone());
    let request = RelayRequest {
        inbound,
        request_id,
        key_id: Some(caller.key_name),
        group,
        received_at: received,
    };
    gw.relay().handle(request).await
}

/// Anthropic's `count_tokens`: an estimate (4 characters a token) of the prompt, after
/// checking the key, the body and the model.
async fn count_tokens(
    gw: &Gateway,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, RelayError> {
    let Some(anthropic) = gw.anthropic_dialect() else {
        return Err(RelayError::new(
            ErrorKind::NotFound,
            Side::Client,
            "The Anthropic dialect is not built in.",
        ));
    };
    authenticate(gw, &req)?;
    let bytes = read_body(req, gw.max_body_bytes(), gw.body_timeout()).await?;
    let mut body = CodecClient::body(&bytes, &RouteParams::default())?;
    if !body.contains_key("max_tokens") {
        // count_tokens requests carry no max_tokens; the Messages decoder wants one.
        if let Ok(one) = serde_json::value::RawValue::from_string("1".to_owned()) {
            body.insert("max_tokens".into(), one);
        }
    }
    let inbound = anthropic.parse_object(Operation::Chat, body)?;
    if gw.relay().table().resolve(&inbound.model).is_none() {
        return Err(RelayError::model_not_found(&inbound.model));
    }
    Ok(json_response(
        &json!({"input_tokens": inbound.estimated_prompt_tokens()}),
    ))
}

fn models(gw: &Gateway, req: &Request<Incoming>) -> Result<Response<RelayBody>, RelayError> {
    authenticate(gw, req)?;
    let table = gw.relay().table();
    let mut seen = std::collections::HashSet::new();
    let data: Vec<_> = table
        .preset_names()
        .iter()
        .map(String::as_str)
        .chain(table.served_models())
        .filter(|m| seen.insert(m.to_owned()))
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "relay"}))
        .collect();
    Ok(json_response(&json!({"object": "list", "data": data})))
}

/// Read the request body: 413 over the limit (by Content-Length up front, or while
/// reading), 408 when it trickles in too slowly.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, RelayError> {
    let too_large = || {
        RelayError::new(
            ErrorKind::PayloadTooLarge,
            Side::Client,
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let capacity = declared.map_or(0, |n| n as usize);
    match tokio::time::timeout(
        timeout,
        collect(Limited::new(req.into_body(), limit), capacity),
    )
    .await
    {
        Err(_) => Err(RelayError::new(
            ErrorKind::BadRequest,
            Side::Client,
            "The request body was not received in time.",
        )
        .with_status(StatusCode::REQUEST_TIMEOUT)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(RelayError::bad_request(format!(
            "Reading the request body failed: {e}"
        ))),
    }
}

/// The body's data frames as one `Bytes`. A body that arrives in one frame (the usual
/// case: it came with the head) is returned as it is, without a copy or a list;
/// `capacity` (the declared length) sizes the buffer when there are more.
async fn collect<B>(mut body: B, capacity: usize) -> Result<Bytes, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        match (&mut more, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(head)) => {
                let mut buf = BytesMut::with_capacity(capacity.max(head.len() + data.len()));
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
                more = Some(buf);
            }
        }
    }
    Ok(match more {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// A fresh request id.
pub fn new_request_id() -> String {
    // Time-ordered, like a UUIDv7: 48 bits of Unix milliseconds, then 80 random bits. The
    // ids sort by time, so the usage table's unique index on them grows at one end: a
    // batch of rows touches a few index pages instead of one page per row all over the
    // tree (which made every SQLite commit rewrite most of the index into its WAL).
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        & 0xFFFF_FFFF_FFFF;
    let random = rand::random::<u128>() & ((1u128 << 80) - 1);
    // By hand: `format!("req_{ms:012x}{random:020x}")` cost about 1,500 instructions.
    let mut id = String::with_capacity(36);
    id.push_str("req_");
    push_hex(&mut id, u128::from(ms), 12);
    push_hex(&mut id, random, 20);
    id
}

/// The low `digits` hex digits of `v`, zero-padded, lowercase.
fn push_hex(out: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (i * 4)) & 0xf) as usize]));
    }
}

/// The request id header's value (the id is hex, so always a valid value).
pub fn request_id_header(request_id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(request_id).ok()
}

/// Add the request id header.
pub fn tag(resp: &mut Response<RelayBody>, request_id: Option<HeaderValue>) {
    if let Some(v) = request_id {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    type Frames = Vec<Result<Frame<Bytes>, std::convert::Infallible>>;
    type FrameBody = StreamBody<futures::stream::Iter<<Frames as IntoIterator>::IntoIter>>;

    fn frames(parts: &[&'static str]) -> FrameBody {
        let mut v: Frames = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        v.push(Ok(Frame::trailers(http::HeaderMap::new())));
        StreamBody::new(futures::stream::iter(v))
    }

    #[tokio::test]
    async fn collect_keeps_one_frame_and_joins_several() {
        // One frame: the very same bytes, no copy.
        let one = Bytes::from_static(b"{\"a\":1}");
        let body = http_body_util::Full::new(one.clone());
        let got = collect(body, 0).await.unwrap();
        assert_eq!(got, one);
        assert_eq!(got.as_ptr(), one.as_ptr());
        // Several frames (and empty ones, and trailers): joined in order.
        let got = collect(frames(&["{\"a\"", "", ":1", "}"]), 8)
            .await
            .unwrap();
        assert_eq!(&got[..], b"{\"a\":1}");
        let got = collect(frames(&["ab", "cd", "ef"]), 0).await.unwrap();
        assert_eq!(&got[..], b"abcdef");
        // Nothing at all.
        let got = collect(frames(&[]), 0).await.unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn request_ids_are_time_ordered_hex() {
        let a = new_request_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_request_id();
        for id in [&a, &b] {
            assert_eq!(id.len(), 36, "{id}");
            assert!(id.starts_with("req_"), "{id}");
            assert!(
                id[4..]
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{id}"
            );
        }
        assert!(a[..16] < b[..16], "{a} then {b}");
        let ms = u64::from_str_radix(&a[4..16], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now - ms < 60_000, "{a}: {ms} vs {now}");
        let mut s = String::new();
        push_hex(&mut s, 0xab, 4);
        assert_eq!(s, "00ab");
    }

    #[test]
    fn routes_by_path() {
        assert!(matches!(
            route(&Method::POST, "/v1/messages"),
            Route::Anthropic
        ));
        assert!(matches!(
            route(
                &Method::POST,
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
            ),
            Route::Gemini { stream: true, .. }
        ));
        match route(&Method::POST, "/v1/models/g-1:generateContent") {
            Route::Gemini { model, stream } => assert_eq!((model.as_str(), stream), ("g-1", false)),
            _ => panic!("not a gemini route"),
        }
        assert!(matches!(
            route(&Method::GET, "/v1/messages"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(
            route(&Method::POST, "/v1beta/models/x:countTokens"),
            Route::Unknown
        ));
        assert!(matches!(route(&Method::GET, "/v1/models"), Route::Models));
    }
}
