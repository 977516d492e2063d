//! The response headers of the gateway's HTTP surface, in one place: the
//! SSE stream headers, CORS, content types, and the raw path's pre-built
//! response heads (byte-identical to what hyper writes for the same answer).

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

/// Headers of every SSE stream (SSEGateway's set); over HTTP/2 without
/// `connection` (see [`sse_for`]).
pub(crate) const SSE: [(&str, &str); 4] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("connection", "keep-alive"),
    ("x-accel-buffering", "no"),
];

/// CORS headers of every gateway answer (not of an embedding app's).
pub(crate) const CORS: [(&str, &str); 3] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, POST, OPTIONS"),
    ("access-control-allow-headers", "Content-Type, Cache-Control"),
];

/// The request header `EventSource` sends on reconnect (lower-case, as
/// forwarded headers are).
pub(crate) const LAST_EVENT_ID: &str = "last-event-id";

/// Content type of JSON answers (errors included).
pub(crate) const JSON: &str = "application/json; charset=utf-8";

/// Content type of `/metrics`.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Headers that belong to one HTTP/1 connection, not to the message:
/// HTTP/2 forbids them (a client treats a response carrying one as malformed).
const HOP_BY_HOP: [&str; 4] = ["connection", "keep-alive", "transfer-encoding", "upgrade"];

/// The SSE headers of a stream answered in `version`.
pub(crate) fn sse_for(version: Version) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    SSE.iter().filter(move |(name, _)| version < Version::HTTP_2 || !HOP_BY_HOP.contains(name))
}

/// Adds `set` to `headers` (replacing same-named ones).
pub(crate) fn apply<'a>(headers: &mut HeaderMap, set: impl IntoIterator<Item = &'a (&'static str, &'static str)>) {
    for (name, value) in set {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
}

/// The raw path's stream head: 200, SSE headers, CORS, chunked.
pub(crate) fn sse_head() -> &'static [u8] {
    static HEAD: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let mut h = String::from("HTTP/1.1 200 OK\r\n");
        for (name, value) in SSE.iter().chain(&CORS) {
            h.push_str(&format!("{name}: {value}\r\n"));
        }
        h.push_str("transfer-encoding: chunked\r\n\r\n");
        h.into_bytes()
    });
    &HEAD
}

/// The raw path's head of a JSON error answer that closes the connection.
pub(crate) fn error_head(status: StatusCode, content_length: usize) -> String {
    let mut h = format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    h.push_str(&format!("content-type: {JSON}\r\ncontent-length: {content_length}\r\n"));
    for (name, value) in CORS {
        h.push_str(&format!("{name}: {value}\r\n"));
    }
    h.push_str("connection: close\r\n\r\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_stream_head_is_sseg_gateway_s() {
        assert_eq!(
            std::str::from_utf8(sse_head()).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
             connection: keep-alive\r\nx-accel-buffering: no\r\naccess-control-allow-origin: *\r\n\
             access-control-allow-methods: GET, POST, OPTIONS\r\n\
             access-control-allow-headers: Content-Type, Cache-Control\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn http2_streams_carry_no_hop_by_hop_header() {
        let names = |v| sse_for(v).map(|(n, _)| *n).collect::<Vec<_>>();
        assert_eq!(names(Version::HTTP_11), ["content-type", "cache-control", "connection", "x-accel-buffering"]);
        assert_eq!(names(Version::HTTP_2), ["content-type", "cache-control", "x-accel-buffering"]);
    }

    #[test]
    fn an_error_head_names_status_length_and_close() {
        let h = error_head(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, 12);
        assert!(h.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{h}");
        assert!(h.contains("content-length: 12\r\n") && h.ends_with("connection: close\r\n\r\n"), "{h}");
    }
}
