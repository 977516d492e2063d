//! The one JSON error type of the gateway's HTTP surface.
//!
//! Every error answer is `{"error":{"message":"...","code":"..."}}` with a
//! status chosen by who is at fault: the client (4xx), the backend callback
//! (502-504 or the backend's own status), or the gateway itself (500).

use bytes::Bytes;
use http::StatusCode;

/// An error answer: status, stable code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `TOKEN_NOT_FOUND`.
    pub code: &'static str,
    /// What happened, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// A 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({"error": {"message": self.message, "code": self.code}});
        Bytes::from(v.to_string())
    }
}
