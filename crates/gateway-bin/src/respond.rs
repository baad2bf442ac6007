//! The one place a [`RelayError`] becomes an HTTP response, in the client's dialect.

use http::{HeaderValue, Response, header};
use relay_core::{ClientDialect, RelayBody, RelayError};

/// Render `err` for a client of `dialect`: its status, its dialect's JSON error body, and
/// `Retry-After` when the error carries one.
pub fn error_response(dialect: &dyn ClientDialect, err: &RelayError) -> Response<RelayBody> {
    let mut resp = Response::new(RelayBody::full(dialect.error_body(err)));
    *resp.status_mut() = err.status_code();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(after) = err.retry_after() {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if err.status_code() == http::StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// A JSON success response.
pub fn json_response(body: &serde_json::Value) -> Response<RelayBody> {
    let mut resp = Response::new(RelayBody::full(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
