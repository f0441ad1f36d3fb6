//! The HTTP error of PROTOCOL.md §5: `{"error":{"code","message"}}` with the
//! right status. Internal causes are logged, never shown to the caller.

use axum::http::{header, HeaderValue, StatusCode};
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
    /// A request body over its limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A request body of a type the endpoint does not take (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many history requests at once on this instance (429); the
    /// client may retry after `retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// A history query ran past its statement timeout (503): narrower
    /// windows or smaller pages will do.
    #[error("{0}")]
    Timeout(String),
    /// PostgreSQL answers but lacks the tables an endpoint needs (no bridge
    /// has applied `migrations/` to this database yet): 503 with a message
    /// that says what to do, rather than a 500.
    #[error("{0}")]
    SchemaMissing(String),
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
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Timeout(_) => "timeout",
            ApiError::SchemaMissing(_) | ApiError::Unavailable { .. } => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) | ApiError::SchemaMissing(_) | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        let mut resp = (self.status(), Json(body)).into_response();
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        } = &self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_codes_and_retry_after() {
        let r = ApiError::TooManyRequests {
            message: "busy".into(),
            retry_after_secs: 1,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        for (e, status, code) in [
            (
                ApiError::PayloadTooLarge("x".into()),
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType("x".into()),
                415,
                "unsupported_media_type",
            ),
            (ApiError::Timeout("x".into()), 503, "timeout"),
            (ApiError::NotFound("x".into()), 404, "not_found"),
        ] {
            assert_eq!((e.status().as_u16(), e.code()), (status, code));
        }
    }
}
