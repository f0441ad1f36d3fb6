//! The HTTP error of PROTOCOL.md §5: `{"error":{"code","message"}}` with the
//! right status. Internal causes are logged, never shown to the caller.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Everything an `/api/*` handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A dependency (Redis, PostgreSQL) failed; the cause goes to the log.
    #[error("{what} unavailable: {cause}")]
    Unavailable { what: &'static str, cause: String },
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unavailable { .. } => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn redis(e: impl std::fmt::Display) -> Self {
        ApiError::Unavailable {
            what: "redis",
            cause: e.to_string(),
        }
    }

    pub fn postgres(e: impl std::fmt::Display) -> Self {
        ApiError::Unavailable {
            what: "postgresql",
            cause: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Unavailable { what, cause } => {
                tracing::warn!(dependency = what, error = %cause, "request failed");
                format!("{what} is unavailable, try again")
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({"error": {"code": self.code(), "message": message}});
        (self.status(), Json(body)).into_response()
    }
}
