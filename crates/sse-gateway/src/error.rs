//! The one JSON error type of the gateway's HTTP surface, and who is at fault.
//!
//! Every error answer is `{"error":{"message":"...","code":"..."}}`. Each
//! [`ErrorCode`] states, in one table, its wire code, its HTTP status and its
//! [`Fault`] class (client, backend, broker, gateway); the status and the
//! `sse_gateway_error_answers{fault,code}` metric follow from it.

use bytes::Bytes;
use http::StatusCode;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fault {
    /// The request was wrong (4xx).
    Client,
    /// The backend callback failed or refused.
    Backend,
    /// RabbitMQ is unavailable or refused an operation.
    Broker,
    /// The gateway itself: not configured, shutting down, or a bug.
    Internal,
}

impl Fault {
    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Backend => "backend",
            Self::Broker => "broker",
            Self::Internal => "internal",
        }
    }
}

/// Every error the gateway answers with, as SSEGateway names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ErrorCode {
    InvalidJson,
    InvalidBody,
    InvalidTokenMissing,
    InvalidEventType,
    InvalidEventDataMissing,
    InvalidEventNameType,
    InvalidEventName,
    InvalidCloseType,
    InvalidKeyMissing,
    InvalidKey,
    InvalidMessagesType,
    InvalidLimit,
    InvalidToken,
    InvalidCloseTarget,
    InvalidRetryMs,
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    TokenNotFound,
    BufferFull,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    InternalListenerOnly,
    /// The backend answered the connect callback with this non-2xx status.
    BackendError(u16),
    GatewayTimeout,
    BackendUnavailable,
    ServiceNotConfigured,
    ShuttingDown,
    /// The broker could not carry a cluster-wide admin command.
    BrokerUnavailable,
    WriteFailed,
    InternalError,
    /// Not an HTTP answer: the broker could not bind a new stream's keys, so
    /// the stream ended with `error` (counted with the other errors).
    RoutingSetupFailed,
}

impl ErrorCode {
    /// The `code` field.
    pub(crate) fn as_str(self) -> &'static str {
        self.entry().0
    }

    /// The HTTP status.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::BackendError(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
            other => other.entry().1,
        }
    }

    /// Who is at fault.
    pub(crate) fn fault(self) -> Fault {
        self.entry().2
    }

    fn entry(self) -> (&'static str, StatusCode, Fault) {
        use Fault::*;
        use StatusCode as S;
        match self {
            Self::InvalidJson => ("INVALID_JSON", S::BAD_REQUEST, Client),
            Self::InvalidBody => ("INVALID_BODY", S::BAD_REQUEST, Client),
            Self::InvalidTokenMissing => ("INVALID_TOKEN_MISSING", S::BAD_REQUEST, Client),
            Self::InvalidEventType => ("INVALID_EVENT_TYPE", S::BAD_REQUEST, Client),
            Self::InvalidEventDataMissing => ("INVALID_EVENT_DATA_MISSING", S::BAD_REQUEST, Client),
            Self::InvalidEventNameType => ("INVALID_EVENT_NAME_TYPE", S::BAD_REQUEST, Client),
            Self::InvalidEventName => ("INVALID_EVENT_NAME", S::BAD_REQUEST, Client),
            Self::InvalidCloseType => ("INVALID_CLOSE_TYPE", S::BAD_REQUEST, Client),
            Self::InvalidKeyMissing => ("INVALID_KEY_MISSING", S::BAD_REQUEST, Client),
            Self::InvalidKey => ("INVALID_KEY", S::BAD_REQUEST, Client),
            Self::InvalidMessagesType => ("INVALID_MESSAGES_TYPE", S::BAD_REQUEST, Client),
            Self::InvalidLimit => ("INVALID_LIMIT", S::BAD_REQUEST, Client),
            Self::InvalidToken => ("INVALID_TOKEN", S::BAD_REQUEST, Client),
            Self::InvalidCloseTarget => ("INVALID_CLOSE_TARGET", S::BAD_REQUEST, Client),
            Self::InvalidRetryMs => ("INVALID_RETRY_MS", S::BAD_REQUEST, Client),
            Self::BadRequest => ("BAD_REQUEST", S::BAD_REQUEST, Client),
            Self::HeadersTooLarge => ("HEADERS_TOO_LARGE", S::REQUEST_HEADER_FIELDS_TOO_LARGE, Client),
            Self::PayloadTooLarge => ("PAYLOAD_TOO_LARGE", S::PAYLOAD_TOO_LARGE, Client),
            Self::TokenNotFound => ("TOKEN_NOT_FOUND", S::NOT_FOUND, Client),
            Self::BufferFull => ("BUFFER_FULL", S::TOO_MANY_REQUESTS, Client),
            Self::NotFound => ("NOT_FOUND", S::NOT_FOUND, Client),
            Self::MethodNotAllowed => ("METHOD_NOT_ALLOWED", S::METHOD_NOT_ALLOWED, Client),
            Self::Unauthorized => ("UNAUTHORIZED", S::UNAUTHORIZED, Client),
            Self::InternalListenerOnly => ("INTERNAL_LISTENER_ONLY", S::FORBIDDEN, Client),
            Self::BackendError(_) => ("BACKEND_ERROR", S::BAD_GATEWAY, Backend),
            Self::GatewayTimeout => ("GATEWAY_TIMEOUT", S::GATEWAY_TIMEOUT, Backend),
            Self::BackendUnavailable => ("BACKEND_UNAVAILABLE", S::SERVICE_UNAVAILABLE, Backend),
            Self::ServiceNotConfigured => ("SERVICE_NOT_CONFIGURED", S::SERVICE_UNAVAILABLE, Internal),
            Self::ShuttingDown => ("SHUTTING_DOWN", S::SERVICE_UNAVAILABLE, Internal),
            Self::BrokerUnavailable => ("BROKER_UNAVAILABLE", S::SERVICE_UNAVAILABLE, Broker),
            // The stream's client could not keep up; SSEGateway answers 500.
            Self::WriteFailed => ("WRITE_FAILED", S::INTERNAL_SERVER_ERROR, Client),
            Self::InternalError => ("INTERNAL_ERROR", S::INTERNAL_SERVER_ERROR, Internal),
            Self::RoutingSetupFailed => ("ROUTING_SETUP_FAILED", S::SERVICE_UNAVAILABLE, Broker),
        }
    }
}

/// An error answer: its code (status and fault follow) and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Bytes {
        let v = serde_json::json!({"error": {"message": self.message, "code": self.code.as_str()}});
        Bytes::from(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_faults_are_4xx_and_backend_statuses_pass_through() {
        assert_eq!(ErrorCode::TokenNotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(ErrorCode::TokenNotFound.fault(), Fault::Client);
        assert_eq!(ErrorCode::BackendError(418).status().as_u16(), 418);
        assert_eq!(ErrorCode::BackendError(99).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ErrorCode::GatewayTimeout.fault(), Fault::Backend);
        let e = ApiError::new(ErrorCode::InvalidJson, "bad");
        assert_eq!(&e.body()[..], br#"{"error":{"code":"INVALID_JSON","message":"bad"}}"#);
    }
}
