//! Parsing and validation of `POST /internal/send` bodies.
//!
//! Pure logic: bytes in, a [`SendCommand`] or the exact SSEGateway error code
//! out. The checks run in the contract's order, so a body with several
//! problems reports the same code as the Node version.

use bytes::Bytes;
use serde_json::Value;

use crate::error::ApiError;

/// A validated send: target token, the encoded event (if any), and `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCommand {
    /// The token as given.
    pub token: String,
    /// The event, already encoded for the wire (encode once, here).
    pub frame: Option<Bytes>,
    /// End the stream after writing.
    pub close: bool,
}

impl SendCommand {
    /// Validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("INVALID_JSON", format!("Request body is not valid JSON: {e}")))?;
        let empty = serde_json::Map::new();
        let obj = value.as_object().unwrap_or(&empty);

        let token = obj
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("INVALID_TOKEN_MISSING", "token is required and must be a string"))?;

        let event = match obj.get("event") {
            None => None,
            Some(Value::Object(e)) => Some(e),
            Some(_) => return Err(ApiError::bad_request("INVALID_EVENT_TYPE", "event must be an object")),
        };
        let mut frame = None;
        if let Some(event) = event {
            let data = event.get("data").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request("INVALID_EVENT_DATA_MISSING", "event.data is required and must be a string")
            })?;
            let name = match event.get("name") {
                None => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => {
                    return Err(ApiError::bad_request("INVALID_EVENT_NAME_TYPE", "event.name must be a string"));
                }
            };
            frame = Some((name, data));
        }
        let close = match obj.get("close") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::bad_request("INVALID_CLOSE_TYPE", "close must be a boolean")),
        };
        let frame = match frame {
            None => None,
            Some((Some(name), data)) if !name.is_empty() => {
                Some(sse_wire::encode::envelope(name, data).map_err(|_| {
                    ApiError::bad_request("INVALID_EVENT_NAME", "event.name must not contain CR, LF or NUL")
                })?)
            }
            Some((_, data)) => Some(sse_wire::encode::data(data)),
        };
        Ok(Self { token: token.to_owned(), frame, close })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        SendCommand::parse(body.as_bytes()).unwrap_err().code
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
