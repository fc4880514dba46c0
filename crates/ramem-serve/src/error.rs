//! The one error a request can get: an HTTP status, a short machine code
//! and a sentence for people, as JSON (`{"error": {"code", "message"}}`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A refused or failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable word for programs (`bad_request`, `payload_too_large`...).
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed (503 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed (a parameter out of range, bad JSON).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: no such route or memory entry.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413: the body or the image is larger than the server takes.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 415: a content type the route does not read.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 422: well-formed, but not something that can be classified (bytes
    /// that are not an image, a truncated JPEG).
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
            message,
        )
    }

    /// 503: the queue is full, or the server is shutting down; retry later.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// A failure of the work behind a request: 503 where the memory's
    /// server cannot be reached or did not answer in time (retry later),
    /// else 500.
    pub fn failed(error: &anyhow::Error) -> ApiError {
        let message = format!("{error:#}");
        let memory_away = error.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<ramem_index::SearchError>(),
                Some(
                    ramem_index::SearchError::Unavailable { .. }
                        | ramem_index::SearchError::TimedOut { .. }
                )
            ) || matches!(
                cause.downcast_ref::<ramem_store::StoreError>(),
                Some(ramem_store::StoreError::Remote { .. })
            )
        });
        match memory_away {
            true => ApiError::unavailable(message),
            false => ApiError::internal(message),
        }
    }

    /// 500: a fault of the server, never of the request.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
