//! Parsing and validation of `POST /internal/send` and `/internal/publish` bodies.
//!
//! Pure logic: bytes in, a [`SendCommand`] or the exact SSEGateway error code
//! out. The checks run in the contract's order, so a body with several
//! problems reports the same code as the Node version.

use bytes::Bytes;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::keys::{MAX_KEY_BYTES, is_valid_key};

/// A validated send: target token, the encoded event (if any), and `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendCommand {
    /// The token as given.
    pub(crate) token: String,
    /// The event, already encoded for the wire (encode once, here).
    pub(crate) frame: Option<Bytes>,
    /// End the stream after writing.
    pub(crate) close: bool,
}

impl SendCommand {
    /// Validates a `/internal/send` body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value = parse_json(body)?;
        let obj = value.as_object().unwrap_or(&EMPTY);
        let token = obj
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidTokenMissing, "token is required and must be a string"))?;
        let (frame, close) = event_and_close(obj)?;
        Ok(Self { token: token.to_owned(), frame, close })
    }
}

/// A validated publish: routing key, the encoded event (if any), and `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishCommand {
    /// The routing key, e.g. `broadcast` or `connection.<request_id>`.
    pub(crate) key: String,
    /// The event, already encoded for the wire.
    pub(crate) frame: Option<Bytes>,
    /// End the matched streams after writing.
    pub(crate) close: bool,
}

impl PublishCommand {
    /// Validates a `/internal/publish` body: one message, or `{"messages":[...]}`.
    ///
    /// A batch is validated whole before anything is delivered; an error names
    /// the index of the first bad message.
    pub(crate) fn parse_batch(body: &[u8]) -> Result<(Vec<Self>, bool), ApiError> {
        let value = parse_json(body)?;
        let obj = value.as_object().unwrap_or(&EMPTY);
        match obj.get("messages") {
            None => Ok((vec![Self::from_object(obj)?], false)),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let msg = item.as_object().unwrap_or(&EMPTY);
                    out.push(
                        Self::from_object(msg)
                            .map_err(|e| ApiError { message: format!("messages[{i}]: {}", e.message), ..e })?,
                    );
                }
                Ok((out, true))
            }
            Some(_) => Err(ApiError::new(ErrorCode::InvalidMessagesType, "messages must be an array")),
        }
    }

    fn from_object(obj: &serde_json::Map<String, Value>) -> Result<Self, ApiError> {
        let key = obj
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidKeyMissing, "key is required and must be a string"))?;
        if !is_valid_key(key) {
            return Err(ApiError::new(
                ErrorCode::InvalidKey,
                format!("key must be 1-{MAX_KEY_BYTES} bytes without whitespace or control characters"),
            ));
        }
        let (frame, close) = event_and_close(obj)?;
        Ok(Self { key: key.to_owned(), frame, close })
    }
}

/// What `POST /internal/close` ends: the streams bound to a key, or one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloseTarget {
    Key(String),
    Token(String),
}

/// A validated close: its target and the optional fixed `retry:` delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseCommand {
    pub(crate) target: CloseTarget,
    pub(crate) retry_ms: Option<u64>,
}

/// Largest `retry_ms` accepted (one day).
const MAX_RETRY_MS: u64 = 86_400_000;

impl CloseCommand {
    /// Validates a `/internal/close` body: exactly one of `key` and `token`
    /// (strings), and an optional integer `retry_ms`.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value = parse_json(body)?;
        let obj = value.as_object().unwrap_or(&EMPTY);
        let target = match (obj.get("key"), obj.get("token")) {
            (Some(Value::String(k)), None) => {
                if !is_valid_key(k) {
                    return Err(ApiError::new(
                        ErrorCode::InvalidKey,
                        format!("key must be 1-{MAX_KEY_BYTES} bytes without whitespace or control characters"),
                    ));
                }
                CloseTarget::Key(k.clone())
            }
            (None, Some(Value::String(t))) => CloseTarget::Token(t.clone()),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidCloseTarget,
                    "give exactly one of key and token, as a string",
                ));
            }
        };
        let retry_ms = match obj.get("retry_ms") {
            None => None,
            Some(v) => match v.as_u64().filter(|ms| *ms <= MAX_RETRY_MS) {
                Some(ms) => Some(ms),
                None => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRetryMs,
                        format!("retry_ms must be an integer from 0 to {MAX_RETRY_MS}"),
                    ));
                }
            },
        };
        Ok(Self { target, retry_ms })
    }
}

static EMPTY: std::sync::LazyLock<serde_json::Map<String, Value>> = std::sync::LazyLock::new(serde_json::Map::new);

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("Request body is not valid JSON: {e}")))
}

/// The `event` and `close` fields, checked in the contract's order and encoded once.
fn event_and_close(obj: &serde_json::Map<String, Value>) -> Result<(Option<Bytes>, bool), ApiError> {
    let event = match obj.get("event") {
        None => None,
        Some(Value::Object(e)) => Some(e),
        Some(_) => return Err(ApiError::new(ErrorCode::InvalidEventType, "event must be an object")),
    };
    let mut parts = None;
    if let Some(event) = event {
        let data = event.get("data").and_then(Value::as_str).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidEventDataMissing, "event.data is required and must be a string")
        })?;
        let name = match event.get("name") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(ApiError::new(ErrorCode::InvalidEventNameType, "event.name must be a string")),
        };
        parts = Some((name, data));
    }
    let close = match obj.get("close") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::new(ErrorCode::InvalidCloseType, "close must be a boolean")),
    };
    let frame = match parts {
        None => None,
        Some((name, data)) => Some(encode_event(name, data)?),
    };
    Ok((frame, close))
}

/// Encodes an application event: the envelope when named, plain data otherwise.
pub(crate) fn encode_event(name: Option<&str>, data: &str) -> Result<Bytes, ApiError> {
    match name {
        Some(name) if !name.is_empty() => sse_wire::encode::envelope(name, data)
            .map_err(|_| ApiError::new(ErrorCode::InvalidEventName, "event.name must not contain CR, LF or NUL")),
        _ => Ok(sse_wire::encode::data(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        SendCommand::parse(body.as_bytes()).unwrap_err().code.as_str()
    }

    #[test]
    fn validation_codes_in_contract_order() {
        assert_eq!(code("{"), "INVALID_JSON");
        assert_eq!(code("[]"), "INVALID_TOKEN_MISSING");
        assert_eq!(code(r#"{"token":1,"event":5}"#), "INVALID_TOKEN_MISSING");
        assert_eq!(code(r#"{"token":"t","event":5,"close":"x"}"#), "INVALID_EVENT_TYPE");
        assert_eq!(code(r#"{"token":"t","event":null}"#), "INVALID_EVENT_TYPE");
        assert_eq!(code(r#"{"token":"t","event":{"name":1}}"#), "INVALID_EVENT_DATA_MISSING");
        assert_eq!(code(r#"{"token":"t","event":{"data":1}}"#), "INVALID_EVENT_DATA_MISSING");
        assert_eq!(code(r#"{"token":"t","event":{"data":"1","name":2},"close":3}"#), "INVALID_EVENT_NAME_TYPE");
        assert_eq!(code(r#"{"token":"t","close":"yes"}"#), "INVALID_CLOSE_TYPE");
        assert_eq!(code(r#"{"token":"t","event":{"data":"1","name":"a\nb"}}"#), "INVALID_EVENT_NAME");
    }

    #[test]
    fn publish_validation_and_batches() {
        let pcode = |b: &str| PublishCommand::parse_batch(b.as_bytes()).unwrap_err();
        assert_eq!(pcode(r#"{"event":{"data":"1"}}"#).code.as_str(), "INVALID_KEY_MISSING");
        assert_eq!(pcode(r#"{"key":"a b","event":{"data":"1"}}"#).code.as_str(), "INVALID_KEY");
        assert_eq!(pcode(r#"{"key":"","close":true}"#).code.as_str(), "INVALID_KEY");
        assert_eq!(pcode(r#"{"key":"k","event":{"data":1}}"#).code.as_str(), "INVALID_EVENT_DATA_MISSING");
        assert_eq!(pcode(r#"{"messages":{}}"#).code.as_str(), "INVALID_MESSAGES_TYPE");
        let e = pcode(r#"{"messages":[{"key":"a","event":{"data":"1"}},{"key":"b","close":1}]}"#);
        assert_eq!(e.code.as_str(), "INVALID_CLOSE_TYPE");
        assert!(e.message.starts_with("messages[1]"), "{}", e.message);
        let (msgs, batch) =
            PublishCommand::parse_batch(br#"{"messages":[{"key":"a","event":{"data":"1"}},{"key":"b","close":true}]}"#)
                .unwrap();
        assert!(batch);
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[1].key.as_str(), msgs[1].close), ("b", true));
        let (one, batch) =
            PublishCommand::parse_batch(br#"{"key":"broadcast","event":{"name":"n","data":"1"}}"#).unwrap();
        assert!(!batch);
        assert_eq!(one[0].frame.as_deref(), Some(&b"data: {\"type\":\"n\",\"payload\":1}\n\n"[..]));
    }

    #[test]
    fn close_needs_exactly_one_target_and_a_sane_retry() {
        let code = |b: &str| CloseCommand::parse(b.as_bytes()).unwrap_err().code.as_str();
        assert_eq!(code("{}"), "INVALID_CLOSE_TARGET");
        assert_eq!(code(r#"{"key":"a","token":"b"}"#), "INVALID_CLOSE_TARGET");
        assert_eq!(code(r#"{"key":1}"#), "INVALID_CLOSE_TARGET");
        assert_eq!(code(r#"{"key":"a b"}"#), "INVALID_KEY");
        assert_eq!(code(r#"{"key":"a","retry_ms":-1}"#), "INVALID_RETRY_MS");
        assert_eq!(code(r#"{"key":"a","retry_ms":"5"}"#), "INVALID_RETRY_MS");
        let c = CloseCommand::parse(br#"{"key":"subject.u","retry_ms":2500}"#).unwrap();
        assert_eq!((c.target, c.retry_ms), (CloseTarget::Key("subject.u".into()), Some(2500)));
    }

    #[test]
    fn valid_commands_are_encoded_once() {
        let c = SendCommand::parse(br#"{"token":"t","event":{"name":"n","data":"{}"},"x":1}"#).unwrap();
        assert_eq!(c.frame.as_deref(), Some(&b"data: {\"type\":\"n\",\"payload\":{}}\n\n"[..]));
        assert!(!c.close);
        let c = SendCommand::parse(br#"{"token":"t","event":{"name":"","data":"a\nb"}}"#).unwrap();
        assert_eq!(c.frame.as_deref(), Some(&b"data: a\ndata: b\n\n"[..]));
        let c = SendCommand::parse(br#"{"token":"t","close":true}"#).unwrap();
        assert_eq!((c.frame, c.close), (None, true));
    }
}
