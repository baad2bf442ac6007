//! Inbound routes: authenticate, read the body under its limits, hand the request to the
//! relay engine, and render errors through [`crate::respond`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use relay_core::{ClientDialect, ErrorKind, Operation, RelayBody, RelayError, RelayRequest, Side};

use crate::auth::{Caller, presented_key};
use crate::respond::{error_response, json_response};
use crate::server::Gateway;

/// Handle one request; never fails (errors are responses).
pub async fn handle(gw: &Gateway, req: Request<Incoming>, request_id: &str) -> Response<RelayBody> {
    let received = Instant::now();
    let dialect = gw.openai_dialect();
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Ok(json_response(&json!({"status": "ok"}))),
        (&Method::POST, "/v1/chat/completions") => {
            relay(gw, req, Operation::Chat, request_id, received).await
        }
        (&Method::POST, "/v1/embeddings") => {
            relay(gw, req, Operation::Embeddings, request_id, received).await
        }
        (&Method::GET, "/v1/models") => models(gw, &req),
        (_, "/healthz" | "/v1/chat/completions" | "/v1/embeddings" | "/v1/models") => {
            Err(RelayError::new(
                ErrorKind::NotFound,
                Side::Client,
                format!(
                    "Method {} is not allowed on {}.",
                    req.method(),
                    req.uri().path()
                ),
            )
            .with_status(StatusCode::METHOD_NOT_ALLOWED))
        }
        (method, path) => Err(RelayError::new(
            ErrorKind::NotFound,
            Side::Client,
            format!("Unknown request URL: {method} {path}."),
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
    let Some(key) = presented_key(req.headers()) else {
        return Err(RelayError::new(
            ErrorKind::Unauthorized,
            Side::Client,
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
        )
        .with_code("missing_api_key"));
    };
    gw.keys().check(key).ok_or_else(|| {
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
    op: Operation,
    request_id: &str,
    received: Instant,
) -> Result<Response<RelayBody>, RelayError> {
    let caller = authenticate(gw, &req)?;
    let body = read_body(req, gw.max_body_bytes(), gw.body_timeout()).await?;
    let inbound = gw.openai_dialect().parse_request(op, &body)?;
    let request = RelayRequest {
        inbound,
        request_id: request_id.to_owned(),
        key_id: Some(caller.key_name),
        received_at: received,
    };
    gw.relay().handle(request).await
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
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Err(_) => Err(RelayError::new(
            ErrorKind::BadRequest,
            Side::Client,
            "The request body was not received in time.",
        )
        .with_status(StatusCode::REQUEST_TIMEOUT)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
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

/// A fresh request id.
pub fn new_request_id() -> String {
    format!("req_{:032x}", rand::random::<u128>())
}

/// Add the request id header.
pub fn tag(resp: &mut Response<RelayBody>, request_id: &str) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
}
