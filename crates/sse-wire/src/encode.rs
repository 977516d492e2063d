//! The SSE encoder: events in, immutable `Bytes` out.
//!
//! Every function returns a complete frame (terminated by the blank line that
//! makes a browser dispatch it), so a caller can share the buffer between any
//! number of streams. Lines of `data` are split on `\r\n`, `\r` and `\n`: a bare
//! `\r` is a line end for the browser, so writing it inside a `data:` line
//! would corrupt the stream.

use bytes::{BufMut, Bytes, BytesMut};

/// A field that cannot be written without corrupting the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The named field contains a carriage return, line feed or NUL byte.
    #[error("{field} must not contain CR, LF or NUL")]
    ForbiddenCharacter {
        /// Which field (`event name`, `id`, `comment`).
        field: &'static str,
    },
}

/// A general SSE event: `event:`, `id:`, `retry:` and `data:` fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field; `None` or empty means the default `message` type.
    pub name: Option<&'a str>,
    /// The `id:` field.
    pub id: Option<&'a str>,
    /// The `retry:` field (reconnection time in milliseconds).
    pub retry: Option<u64>,
    /// The data; one `data:` line per line.
    pub data: &'a str,
}

/// The `ready` control event: exactly `event: ready\ndata:\n\n`.
///
/// The empty `data:` line matters: without data a browser does not dispatch.
pub const READY: &[u8] = b"event: ready\ndata:\n\n";

/// The heartbeat comment: `: heartbeat\n\n`.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The `auth_expired` event (extension): the client's credentials expired
/// and the stream ends; `EventSource` reconnects and re-authenticates.
pub const AUTH_EXPIRED: &[u8] = b"event: auth_expired\ndata: {}\n\n";

/// Returns true when `value` can be written on one line of the stream.
pub fn is_single_line(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

fn check(field: &'static str, value: &str) -> Result<(), WireError> {
    if is_single_line(value) { Ok(()) } else { Err(WireError::ForbiddenCharacter { field }) }
}

/// Splits text into lines on `\r\n`, `\r` or `\n` (the three SSE line ends).
///
/// An empty string is one empty line, so `data: ""` still produces a `data:`
/// line and the event is dispatched.
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

fn put_data_lines(buf: &mut BytesMut, data: &str) {
    for line in lines(data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
}

/// Encodes a general event. Rejects a name or id containing CR, LF or NUL.
pub fn event(event: &Event<'_>) -> Result<Bytes, WireError> {
    let mut buf = BytesMut::with_capacity(event.data.len() + 32);
    if let Some(name) = event.name.filter(|n| !n.is_empty()) {
        check("event name", name)?;
        buf.put_slice(b"event: ");
        buf.put_slice(name.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(id) = event.id {
        check("id", id)?;
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(ms) = event.retry {
        buf.put_slice(format!("retry: {ms}\n").as_bytes());
    }
    put_data_lines(&mut buf, event.data);
    buf.put_u8(b'\n');
    Ok(buf.freeze())
}

/// Encodes an unnamed event: one `data:` line per line of `data`.
pub fn data(data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + 16);
    put_data_lines(&mut buf, data);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// Encodes a named application event in the SSEGateway envelope:
/// `data: {"type":<name as JSON string>,"payload":<data verbatim>}`.
///
/// `data` is expected to be JSON text and is written verbatim; empty data
/// becomes `null` so the envelope stays valid JSON. Line breaks inside `data`
/// become separate `data:` lines, which the browser rejoins with `\n`.
pub fn envelope(name: &str, data: &str) -> Result<Bytes, WireError> {
    check("event name", name)?;
    let payload = if data.is_empty() { "null" } else { data };
    let mut buf = BytesMut::with_capacity(name.len() + payload.len() + 40);
    buf.put_slice(b"data: {\"type\":");
    put_json_string(&mut buf, name);
    buf.put_slice(b",\"payload\":");
    let mut first = true;
    for line in lines(payload) {
        if !first {
            buf.put_slice(b"\ndata: ");
        }
        first = false;
        buf.put_slice(line.as_bytes());
    }
    buf.put_slice(b"}\n\n");
    Ok(buf.freeze())
}

/// Encodes the in-stream rejection: `event: rejected\ndata: {"status":..,"message":..}`.
pub fn rejected(status: u16, message: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.len() + 64);
    buf.put_slice(b"event: rejected\ndata: {\"status\":");
    buf.put_slice(status.to_string().as_bytes());
    buf.put_slice(b",\"message\":");
    put_json_string(&mut buf, message);
    buf.put_slice(b"}\n\n");
    buf.freeze()
}

/// Encodes a comment line (`: text`). Rejects text containing CR, LF or NUL.
pub fn comment(text: &str) -> Result<Bytes, WireError> {
    check("comment", text)?;
    let mut buf = BytesMut::with_capacity(text.len() + 4);
    buf.put_slice(b": ");
    buf.put_slice(text.as_bytes());
    buf.put_slice(b"\n\n");
    Ok(buf.freeze())
}

/// Encodes a lone `retry:` field (tells the client when to reconnect).
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// Writes `s` as a JSON string literal (RFC 8259 escaping).
fn put_json_string(buf: &mut BytesMut, s: &str) {
    buf.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        buf.put_slice(&bytes[start..i]);
        match escape {
            Some(e) => buf.put_slice(e),
            None => buf.put_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    buf.put_slice(&bytes[start..]);
    buf.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_wraps_name_and_payload() {
        let b = envelope("task_event", r#"{"a":1}"#).unwrap();
        assert_eq!(&b[..], b"data: {\"type\":\"task_event\",\"payload\":{\"a\":1}}\n\n");
    }

    #[test]
    fn envelope_with_empty_data_has_null_payload() {
        let b = envelope("x", "").unwrap();
        assert_eq!(&b[..], b"data: {\"type\":\"x\",\"payload\":null}\n\n");
    }

    #[test]
    fn envelope_escapes_name_as_json() {
        let b = envelope("a\"b\\c\u{1}", "1").unwrap();
        assert_eq!(&b[..], b"data: {\"type\":\"a\\\"b\\\\c\\u0001\",\"payload\":1}\n\n");
    }

    #[test]
    fn envelope_splits_multiline_payload() {
        let b = envelope("n", "{\r\n\"a\":1\r}").unwrap();
        assert_eq!(&b[..], b"data: {\"type\":\"n\",\"payload\":{\ndata: \"a\":1\ndata: }}\n\n");
    }

    #[test]
    fn envelope_rejects_name_with_line_break_or_nul() {
        for name in ["a\nb", "a\rb", "a\0b"] {
            assert_eq!(envelope(name, "1"), Err(WireError::ForbiddenCharacter { field: "event name" }));
        }
    }

    #[test]
    fn data_splits_on_all_three_line_ends() {
        assert_eq!(&data("a\r\nb\rc\nd")[..], b"data: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(&data("")[..], b"data: \n\n");
        assert_eq!(&data("x\n")[..], b"data: x\ndata: \n\n");
    }

    #[test]
    fn event_writes_all_fields_in_order() {
        let e = Event { name: Some("up"), id: Some("7"), retry: Some(1500), data: "hi" };
        assert_eq!(&event(&e).unwrap()[..], b"event: up\nid: 7\nretry: 1500\ndata: hi\n\n");
    }

    #[test]
    fn event_rejects_id_with_newline() {
        let e = Event { id: Some("1\n2"), data: "x", ..Event::default() };
        assert_eq!(event(&e), Err(WireError::ForbiddenCharacter { field: "id" }));
    }

    #[test]
    fn control_frames_are_exact() {
        assert_eq!(READY, b"event: ready\ndata:\n\n");
        assert_eq!(HEARTBEAT, b": heartbeat\n\n");
        assert_eq!(
            &rejected(401, "Unauthorized")[..],
            b"event: rejected\ndata: {\"status\":401,\"message\":\"Unauthorized\"}\n\n"
        );
        assert_eq!(&comment("hi").unwrap()[..], b": hi\n\n");
        assert!(comment("a\nb").is_err());
        assert_eq!(&retry(3000)[..], b"retry: 3000\n\n");
    }
}
