//! Shared helpers of the gateway's black-box tests (`mod support;` in each
//! file): start the real `sse-gateway` binary on 127.0.0.1:0 against a
//! testkit [`Backend`], open accepted streams, send and publish, read metrics.

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;

use serde_json::{Value, json};
use sse_testkit::{Backend, Process, SseClient, request, send_json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

/// The exact bytes of the `ready` event.
pub const READY: &[u8] = b"event: ready\ndata:\n\n";

/// The routing keys of the fan-out and RabbitMQ tests: every stream is
/// reachable by `broadcast` and by `connection.<request_id>`.
pub const DEFAULT_BINDINGS: (&str, &str) = ("DEFAULT_BINDINGS", "broadcast,connection.{request_id}");

/// Starts the gateway (public and internal listener on 127.0.0.1:0) with its
/// callback at `backend`, plus `env` (a later entry wins over an earlier one).
pub async fn gateway(backend: &Backend, env: &[(&str, &str)]) -> Process {
    let url = backend.callback_url();
    let mut all =
        vec![("LISTEN_ADDR", "127.0.0.1:0"), ("INTERNAL_LISTEN", "127.0.0.1:0"), ("CALLBACK_URL", url.as_str())];
    all.extend_from_slice(env);
    Process::spawn(BIN, &[], &all).await
}

/// Opens a stream that the backend accepts; checks the 200 and `ready`;
/// returns the stream and its token.
pub async fn stream(gw: &Process, backend: &Backend, path: &str) -> (SseClient, String) {
    let mut client = SseClient::open(gw.addr, path, &[]).await;
    let token = backend.expect("connect").await.token();
    assert_eq!(client.head.status, 200);
    assert_eq!(client.next_event().await.event_type, "ready");
    (client, token)
}

/// `POST /internal/send` to `addr`; status and JSON answer.
pub async fn send(addr: SocketAddr, body: Value) -> (u16, Value) {
    let r = send_json(addr, "/internal/send", &body).await;
    (r.status, r.json())
}

/// `POST /internal/publish` on the internal listener; status and JSON answer.
pub async fn publish(gw: &Process, body: Value) -> (u16, Value) {
    let r = send_json(gw.internal_addr(), "/internal/publish", &body).await;
    (r.status, r.json())
}

/// The `event` object of a send or publish.
pub fn event(name: &str, data: &str) -> Value {
    json!({"name": name, "data": data})
}

/// The `data` of an enveloped application event, as the gateway writes it.
pub fn payload(name: &str, data: &str) -> String {
    format!("{{\"type\":\"{name}\",\"payload\":{data}}}")
}

/// The value of the metric line that starts with `line_prefix` (name and
/// labels) on the internal listener, if there is one.
pub async fn metric_value(gw: &Process, line_prefix: &str) -> Option<f64> {
    let r = request(gw.internal_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200, "GET /metrics");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines().find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse().ok()))
}

/// Like [`metric_value`]; panics when the line is missing.
pub async fn metric(gw: &Process, line_prefix: &str) -> f64 {
    match metric_value(gw, line_prefix).await {
        Some(v) => v,
        None => panic!("metric {line_prefix} not found in:\n{}", metrics_text(gw).await),
    }
}

/// Waits (at most `sse_testkit::WAIT`) until the metric reads `want` (a missing
/// line reads 0); for effects the gateway finishes after answering the test.
pub async fn wait_for_metric(gw: &Process, line_prefix: &str, want: f64) {
    let reached = tokio::time::timeout(sse_testkit::WAIT, async {
        loop {
            if metric_value(gw, line_prefix).await.unwrap_or(0.0) == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if reached.is_err() {
        let text = metrics_text(gw).await;
        panic!("metric {line_prefix} never became {want} within {:?}:\n{text}", sse_testkit::WAIT);
    }
}

/// Waits (at most `sse_testkit::WAIT`) until the metric reads at least `want`.
pub async fn wait_for_metric_at_least(gw: &Process, line_prefix: &str, want: f64) {
    let reached = tokio::time::timeout(sse_testkit::WAIT, async {
        while metric_value(gw, line_prefix).await.unwrap_or(0.0) < want {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if reached.is_err() {
        let text = metrics_text(gw).await;
        panic!("metric {line_prefix} never reached {want} within {:?}:\n{text}", sse_testkit::WAIT);
    }
}

async fn metrics_text(gw: &Process) -> String {
    String::from_utf8_lossy(&request(gw.internal_addr(), "GET", "/metrics", &[], b"").await.body).into_owned()
}

/// Starts the gateway like [`gateway`], its public listener on HTTPS with `cert`.
pub async fn tls_gateway(backend: &Backend, cert: &sse_testkit::TestCert, env: &[(&str, &str)]) -> Process {
    let files = cert.env();
    let mut all: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(env);
    let gw = gateway(backend, &all).await;
    assert!(gw.https, "the gateway announces https://");
    gw
}

/// Opens a stream over `conn` that the backend accepts; checks the 200 and
/// `ready`; returns the stream and its token.
pub async fn tls_stream(
    conn: &mut sse_testkit::HttpsConnection,
    backend: &Backend,
    path: &str,
) -> (sse_testkit::TlsSseStream, String) {
    let mut s = conn.sse(path).await;
    let token = backend.expect("connect").await.token();
    assert_eq!(s.status, 200);
    assert_eq!(s.next_event().await.event_type, "ready");
    (s, token)
}

/// Opens a stream at `path` the backend accepts, resuming from
/// `last_event_id` when given (history tests); returns it, its token, the
/// events before `ready`, and `ready`. Skips callbacks of earlier streams
/// (a disconnect may still be on its way).
pub async fn open_resuming(
    gw: &Process,
    backend: &Backend,
    path: &str,
    last_event_id: Option<&str>,
) -> (SseClient, String, Vec<sse_wire::ParsedEvent>, sse_wire::ParsedEvent) {
    let headers: Vec<(&str, &[u8])> = last_event_id.iter().map(|id| ("Last-Event-ID", id.as_bytes())).collect();
    let mut client = SseClient::open(gw.addr, path, &headers).await;
    let token = loop {
        let call = backend.next_call().await;
        if call.action() == "connect" {
            break call.token();
        }
    };
    assert_eq!(client.head.status, 200);
    let mut before = Vec::new();
    loop {
        let e = client.next_event().await;
        if e.event_type == "ready" {
            return (client, token, before, e);
        }
        before.push(e);
    }
}
