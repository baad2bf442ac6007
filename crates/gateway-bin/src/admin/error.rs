//! The admin API's one error type and its JSON rendering:
//! `{"error": {"type", "message", "problems": [...]}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use relay_store::StoreError;
use serde_json::json;

/// An admin request that failed.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    problems: Vec<String>,
}

impl AdminError {
    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 422: the change would make the config invalid; every problem listed.
    pub fn invalid_config(problems: Vec<String>) -> Self {
        AdminError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "invalid_config",
            message: format!(
                "the change was refused; the running config is unchanged ({} problem(s))",
                problems.len()
            ),
            problems,
        }
    }

    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} not found", what.into()),
        )
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the admin token as `Authorization: Bearer <token>`",
        )
    }

    /// Any status.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            kind,
            message: message.into(),
            problems: Vec::new(),
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => AdminError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Db(_) => {
                tracing::error!(error = %e, "admin request: store failure");
                AdminError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                )
            }
            other => AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"type": self.kind, "message": self.message}});
        if !self.problems.is_empty() {
            body["error"]["problems"] = json!(self.problems);
        }
        (self.status, Json(body)).into_response()
    }
}
