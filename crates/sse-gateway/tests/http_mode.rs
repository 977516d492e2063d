//! Black-box tests of the SSEGateway contract, HTTP mode: the real
//! `sse-gateway` binary on port 0, a real callback backend, raw TCP clients.
//! One test per behaviour of `docs/PROTOCOL.md`, named after it.

mod support;

use serde_json::{Value, json};
use sse_testkit::{Backend, Process, Reply, SseClient, request, send_json, within};
use sse_wire::Frame;
use support::{BIN, READY, gateway, metric, metric_value, send, stream, wait_for_metric};

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "error body has only `error`: {body}");
}

/// Stops the gateway (SIGTERM, exit 0) and returns every callback it sent and we did not take yet.
async fn stop(mut gw: Process, backend: &Backend) -> Vec<sse_testkit::Call> {
    assert_eq!(gw.terminate().await, 0, "gateway exit code; stderr: {:#?}", gw.stderr());
    backend.drain().await
}

#[tokio::test]
async fn stream_on_any_path_forwards_raw_url_and_headers_to_connect_callback() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let path = "/deep/any/path?request_id=abc&q=%20x%2Fy&empty=";
    let headers: &[(&str, &[u8])] =
        &[("Cookie", b"a=1"), ("X-Multi", b"one"), ("Cookie", b"b=2"), ("X-Multi", b"two"), ("X-Bin", b"caf\xe9")];
    let mut client = SseClient::open(gw.addr, path, headers).await;
    let call = backend.expect("connect").await;
    assert_eq!(call.target, "/api/sse/callback?secret=s3cret", "CALLBACK_URL is used verbatim");
    let token = call.token();
    let parsed = uuid_v4(&token);
    assert_eq!(parsed.hyphenated().to_string(), token, "token is a lower-case hyphenated UUID");
    assert_eq!(call.body["request"]["url"], path, "url is the raw path and query");
    let h = &call.body["request"]["headers"];
    assert_eq!(h["cookie"], "a=1; b=2");
    assert_eq!(h["x-multi"], "one, two");
    assert_eq!(h["x-bin"], "caf\u{FFFD}", "non-UTF-8 is forwarded lossily");
    assert!(h.as_object().unwrap().values().all(Value::is_string), "every header value is a string");
    let order: Vec<usize> = ["\"host\"", "\"accept\"", "\"cookie\"", "\"x-multi\"", "\"x-bin\""]
        .iter()
        .map(|k| call.raw.find(k).unwrap_or_else(|| panic!("{k} missing in {}", call.raw)))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "headers in order of first occurrence: {}", call.raw);
    assert_eq!(client.next_event().await.event_type, "ready");
}

fn uuid_v4(s: &str) -> uuid_check::Uuid {
    let u = uuid_check::Uuid::parse(s);
    assert_eq!(u.version, 4, "token {s} is a v4 UUID");
    u
}

/// A tiny UUID check so the test does not share the gateway's uuid code.
mod uuid_check {
    pub struct Uuid {
        pub version: u8,
        text: String,
    }
    impl Uuid {
        pub fn parse(s: &str) -> Uuid {
            let groups: Vec<&str> = s.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lens, vec![8, 4, 4, 4, 12], "uuid shape: {s}");
            assert!(s.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "uuid chars: {s}");
            let version = u8::from_str_radix(&groups[2][..1], 16).unwrap();
            Uuid { version, text: s.to_owned() }
        }
        pub fn hyphenated(&self) -> String {
            self.text.to_ascii_lowercase()
        }
    }
}

#[tokio::test]
async fn accepted_stream_has_sse_headers_cors_chunked_encoding_then_ready() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let mut client = SseClient::open(gw.addr, "/api/sse/stream?request_id=r1", &[]).await;
    backend.expect("connect").await;
    let h = &client.head;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-type"), Some("text/event-stream"));
    assert_eq!(h.header("cache-control"), Some("no-cache"));
    assert_eq!(h.header("connection"), Some("keep-alive"));
    assert_eq!(h.header("x-accel-buffering"), Some("no"));
    assert_eq!(h.header("transfer-encoding"), Some("chunked"));
    assert_eq!(h.header("access-control-allow-origin"), Some("*"));
    assert_eq!(h.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    assert_eq!(h.header("access-control-allow-headers"), Some("Content-Type, Cache-Control"));
    assert_eq!(client.next_event().await.event_type, "ready");
    assert_eq!(client.raw(), READY, "ready is exactly `event: ready\\ndata:\\n\\n`");
}

#[tokio::test]
async fn named_event_is_written_in_type_payload_envelope() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    let (status, body) =
        send(gw.addr, json!({"token": token, "event": {"name": "task_event", "data": "{\"a\": 1}"}})).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let ev = client.next_event().await;
    assert_eq!(ev.event_type, "message", "application events are unnamed on the wire");
    assert_eq!(&client.raw()[READY.len()..], b"data: {\"type\":\"task_event\",\"payload\":{\"a\": 1}}\n\n");
}

#[tokio::test]
async fn unnamed_event_splits_data_on_crlf_cr_and_lf() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    let (status, _) = send(gw.addr, json!({"token": token, "event": {"data": "a\r\nb\rc\nd"}})).await;
    assert_eq!(status, 200);
    let ev = client.next_event().await;
    assert_eq!(ev.data, "a\nb\nc\nd");
    assert_eq!(&client.raw()[READY.len()..], b"data: a\ndata: b\ndata: c\ndata: d\n\n");
}

#[tokio::test]
async fn named_event_with_empty_data_has_null_payload() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    send(gw.addr, json!({"token": token, "event": {"name": "ping", "data": ""}})).await;
    let ev = client.next_event().await;
    assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), json!({"type": "ping", "payload": null}));
}

#[tokio::test]
async fn named_event_with_multiline_data_stays_one_valid_json_message() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    send(gw.addr, json!({"token": token, "event": {"name": "n", "data": "{\r\n \"a\": [1,\r 2]\n}"}})).await;
    let ev = client.next_event().await;
    assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), json!({"type": "n", "payload": {"a": [1, 2]}}));
    send(gw.addr, json!({"token": token, "event": {"name": "after", "data": "1"}})).await;
    let next = client.next_event().await;
    assert_eq!(next.data, r#"{"type":"after","payload":1}"#, "the stream is intact afterwards");
}

#[tokio::test]
async fn events_named_ready_or_rejected_are_enveloped_like_any_other() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    for name in ["ready", "rejected"] {
        send(gw.addr, json!({"token": token, "event": {"name": name, "data": "{}"}})).await;
        let ev = client.next_event().await;
        assert_eq!(ev.event_type, "message");
        assert_eq!(ev.data, format!("{{\"type\":\"{name}\",\"payload\":{{}}}}"));
    }
}

#[tokio::test]
async fn events_sent_during_the_callback_are_buffered_and_written_before_ready() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(&backend, &[]).await;
    let addr = gw.addr;
    let opening = tokio::spawn(async move { SseClient::open(addr, "/s?request_id=r", &[]).await });
    let call = backend.expect("connect").await;
    let token = call.token();
    for i in 0..3 {
        let (status, body) =
            send(gw.addr, json!({"token": token, "event": {"name": "version", "data": i.to_string()}})).await;
        assert_eq!((status, body), (200, json!({"status": "buffered"})));
    }
    call.answer(Reply::ok("{}"));
    let mut client = within("the stream to open", opening).await.unwrap();
    for i in 0..3 {
        assert_eq!(client.next_event().await.data, format!("{{\"type\":\"version\",\"payload\":{i}}}"));
    }
    assert_eq!(client.next_event().await.event_type, "ready", "ready comes after the buffered events");
}

#[tokio::test]
async fn buffered_close_during_the_callback_ends_the_stream_with_server_closed() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(&backend, &[]).await;
    let addr = gw.addr;
    let opening = tokio::spawn(async move { SseClient::open(addr, "/s", &[]).await });
    let call = backend.expect("connect").await;
    let token = call.token();
    let (status, body) =
        send(gw.addr, json!({"token": token, "event": {"name": "bye", "data": "1"}, "close": true})).await;
    assert_eq!((status, body), (200, json!({"status": "buffered"})));
    call.answer(Reply::ok("{}"));
    let mut client = within("the stream to open", opening).await.unwrap();
    assert_eq!(client.head.status, 200);
    let rest = client.read_to_end().await;
    assert!(client.ended_cleanly());
    assert_eq!(client.raw(), b"data: {\"type\":\"bye\",\"payload\":1}\n\n", "no ready after a buffered close");
    assert_eq!(rest.len(), 1);
    let disconnect = backend.expect("disconnect").await;
    assert_eq!((disconnect.token(), disconnect.body["reason"].clone()), (token.clone(), json!("server_closed")));
    assert_eq!(send(gw.addr, json!({"token": token, "close": true})).await.0, 404);
}

#[tokio::test]
async fn callback_400_401_403_reject_in_stream_without_disconnect_callback() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let cases = [
        (401, None, "Unauthorized"),
        (403, Some("Forbidden Zone"), "Forbidden Zone"),
        (400, Some("BAD REQUEST"), "BAD REQUEST"),
    ];
    for (status, reason, message) in cases {
        backend.auto(Reply { status, reason: reason.map(str::to_owned), ..Reply::status(status) });
        let mut client = SseClient::open(gw.addr, "/s", &[]).await;
        let token = backend.expect("connect").await.token();
        assert_eq!(client.head.status, 200);
        assert_eq!(client.head.header("content-type"), Some("text/event-stream"));
        client.read_to_end().await;
        assert!(client.ended_cleanly(), "the stream is closed after the rejection");
        let want = format!("event: rejected\ndata: {{\"status\":{status},\"message\":\"{message}\"}}\n\n");
        assert_eq!(String::from_utf8_lossy(client.raw()), want);
        assert_eq!(send(gw.addr, json!({"token": token, "close": true})).await.0, 404, "token removed");
    }
    let rest = stop(gw, &backend).await;
    assert!(
        rest.is_empty(),
        "no disconnect callback after a rejection: {:?}",
        rest.iter().map(|c| &c.body).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn other_callback_status_is_passed_through_as_backend_error() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    for status in [500u16, 404, 409, 502] {
        backend.auto(Reply::status(status));
        let r = request(gw.addr, "GET", "/s", &[], b"").await;
        backend.expect("connect").await;
        assert_eq!(r.status, status);
        assert_error(&r.json(), "BACKEND_ERROR");
        assert_eq!(r.json()["error"]["message"], format!("Backend returned {status}"));
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }
}

#[tokio::test]
async fn slow_callback_is_504_gateway_timeout_and_token_removed() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(&backend, &[("CALLBACK_TIMEOUT_MS", "300")]).await;
    let addr = gw.addr;
    let pending = tokio::spawn(async move { request(addr, "GET", "/s", &[], b"").await });
    let call = backend.expect("connect").await;
    let r = within("the 504", pending).await.unwrap();
    assert_eq!(r.status, 504);
    assert_error(&r.json(), "GATEWAY_TIMEOUT");
    assert_eq!(send(gw.addr, json!({"token": call.token(), "close": true})).await.0, 404);
    call.answer(Reply::ok("{}"));
}

#[tokio::test]
async fn unreachable_backend_is_503_backend_unavailable() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{free}/cb");
    let gw = Process::spawn(BIN, &[], &[("LISTEN_ADDR", "127.0.0.1:0"), ("CALLBACK_URL", &url)]).await;
    let r = request(gw.addr, "GET", "/s", &[], b"").await;
    assert_eq!(r.status, 503);
    assert_error(&r.json(), "BACKEND_UNAVAILABLE");
}

#[tokio::test]
async fn without_callback_url_streams_are_503_and_not_ready() {
    let gw = Process::spawn(BIN, &[], &[("LISTEN_ADDR", "127.0.0.1:0")]).await;
    let r = request(gw.addr, "GET", "/s", &[], b"").await;
    assert_eq!(r.status, 503);
    assert_error(&r.json(), "SERVICE_NOT_CONFIGURED");
    let ready = request(gw.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json(),
        json!({"status": "not_ready", "configured": false, "rabbitmq": "disabled", "reasons": ["CALLBACK_URL is not configured"]})
    );
}

#[tokio::test]
async fn healthz_and_readyz_answer_when_configured() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let h = request(gw.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    let r = request(gw.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ready", "configured": true, "rabbitmq": "disabled"})));
    assert!(backend.drain().await.is_empty(), "health checks never call the backend");
}

#[tokio::test]
async fn client_leaving_during_the_callback_opens_nothing_and_reports_client_closed() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(&backend, &[]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    SseClient::send_head(&mut tcp, gw.addr, "GET", "/s", &[]).await;
    let call = backend.expect("connect").await;
    let token = call.token();
    drop(tcp);
    call.answer(Reply::ok("{}"));
    let disconnect = backend.expect("disconnect").await;
    assert_eq!(disconnect.token(), token);
    assert_eq!(disconnect.body["reason"], "client_closed", "the backend accepted, so it hears the end");
    assert_eq!(send(gw.addr, json!({"token": token, "close": true})).await.0, 404);
    let rest = stop(gw, &backend).await;
    assert!(rest.is_empty(), "exactly one disconnect callback");
}

#[tokio::test]
async fn send_validation_errors_are_400_with_their_codes_and_the_stream_stays_intact() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    let t = token.as_str();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("INVALID_JSON", b"{not json".to_vec()),
        ("INVALID_TOKEN_MISSING", json!({"event": {"data": "x"}}).to_string().into_bytes()),
        ("INVALID_TOKEN_MISSING", json!({"token": 5}).to_string().into_bytes()),
        ("INVALID_EVENT_TYPE", json!({"token": t, "event": "x"}).to_string().into_bytes()),
        ("INVALID_EVENT_DATA_MISSING", json!({"token": t, "event": {"name": "n"}}).to_string().into_bytes()),
        ("INVALID_EVENT_DATA_MISSING", json!({"token": t, "event": {"data": {"a": 1}}}).to_string().into_bytes()),
        ("INVALID_EVENT_NAME_TYPE", json!({"token": t, "event": {"data": "1", "name": 3}}).to_string().into_bytes()),
        ("INVALID_CLOSE_TYPE", json!({"token": t, "event": {"data": "1"}, "close": "yes"}).to_string().into_bytes()),
        (
            "INVALID_EVENT_NAME",
            json!({"token": t, "event": {"data": "1", "name": "a\nevent: x"}}).to_string().into_bytes(),
        ),
        ("INVALID_EVENT_NAME", json!({"token": t, "event": {"data": "1", "name": "a\rb"}}).to_string().into_bytes()),
        ("INVALID_EVENT_NAME", json!({"token": t, "event": {"data": "1", "name": "a\u{0}b"}}).to_string().into_bytes()),
    ];
    for (code, body) in cases {
        let r = request(gw.addr, "POST", "/internal/send", &[("Content-Type", "application/json")], &body).await;
        assert_eq!(r.status, 400, "{code}: {}", String::from_utf8_lossy(&body));
        assert_error(&r.json(), code);
    }
    send(gw.addr, json!({"token": t, "event": {"name": "ok", "data": "1"}})).await;
    assert_eq!(client.next_event().await.data, r#"{"type":"ok","payload":1}"#);
    assert_eq!(&client.raw()[READY.len()..], b"data: {\"type\":\"ok\",\"payload\":1}\n\n", "nothing else was written");
}

#[tokio::test]
async fn send_body_over_the_limit_is_413() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (_client, token) = stream(&gw, &backend, "/s").await;
    let big = "x".repeat(1024 * 1024);
    let r = send_json(gw.addr, "/internal/send", &json!({"token": token, "event": {"data": big}})).await;
    assert_eq!(r.status, 413);
    assert_error(&r.json(), "PAYLOAD_TOO_LARGE");
    let small_gw = gateway(&backend, &[("MAX_BODY_BYTES", "100")]).await;
    let r =
        send_json(small_gw.addr, "/internal/send", &json!({"token": token, "event": {"data": "y".repeat(100)}})).await;
    assert_eq!(r.status, 413, "the limit is configurable");
}

#[tokio::test]
async fn send_to_unknown_token_is_404() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    for token in ["6f1c1c1e-8d4a-4c53-9a55-3d2b0f0e1a2b", "not-a-uuid", ""] {
        let (status, body) = send(gw.addr, json!({"token": token, "event": {"data": "x"}})).await;
        assert_eq!(status, 404);
        assert_error(&body, "TOKEN_NOT_FOUND");
    }
}

#[tokio::test]
async fn close_command_writes_the_event_then_ends_with_server_closed() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    let (status, body) =
        send(gw.addr, json!({"token": token, "event": {"name": "last", "data": "1"}, "close": true})).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    client.read_to_end().await;
    assert!(client.ended_cleanly(), "the response ends with the terminating chunk");
    assert_eq!(&client.raw()[READY.len()..], b"data: {\"type\":\"last\",\"payload\":1}\n\n");
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].clone()), (token.clone(), json!("server_closed")));
    assert!(d.body["request"]["url"] == "/s", "disconnect carries the original request");
    assert_eq!(send(gw.addr, json!({"token": token, "event": {"data": "x"}})).await.0, 404);
}

#[tokio::test]
async fn client_closing_the_stream_reports_client_closed_once() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (client, token) = stream(&gw, &backend, "/s?request_id=x").await;
    client.close().await;
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].clone()), (token.clone(), json!("client_closed")));
    assert_eq!(d.body["request"]["url"], "/s?request_id=x");
    assert_eq!(send(gw.addr, json!({"token": token, "event": {"data": "x"}})).await.0, 404);
    let rest = stop(gw, &backend).await;
    assert!(rest.is_empty(), "exactly one disconnect callback");
}

const DISCONNECT_FAILED: &str = "sse_gateway_callbacks_total{action=\"disconnect\",outcome=\"failed\"}";
const DISCONNECT_OK: &str = "sse_gateway_callbacks_total{action=\"disconnect\",outcome=\"ok\"}";
const ACTIVE: &str = "sse_gateway_active_connections";

#[tokio::test]
async fn disconnect_callbacks_to_a_slow_backend_time_out_and_the_gateway_stays_healthy() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("CALLBACK_TIMEOUT_MS", "300")]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(stream(&gw, &backend, &format!("/s?request_id=slow{i}")).await.0);
    }
    backend.answer_disconnects(Reply { delay: std::time::Duration::from_secs(60), ..Reply::ok("{}") });
    for c in clients {
        c.close().await;
    }
    for _ in 0..3 {
        assert_eq!(backend.expect("disconnect").await.body["reason"], "client_closed", "each end was reported");
    }
    wait_for_metric(&gw, DISCONNECT_FAILED, 3.0).await;
    assert_eq!(metric(&gw, ACTIVE).await, 0.0, "no stream is left behind");
    assert_eq!(request(gw.addr, "GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(request(gw.addr, "GET", "/readyz", &[], b"").await.status, 200);

    // Streams still open and end normally once the backend answers in time.
    backend.answer_disconnects(Reply::ok("{}"));
    let (c, token) = stream(&gw, &backend, "/s?request_id=after").await;
    c.close().await;
    assert_eq!(backend.expect("disconnect").await.token(), token);
    wait_for_metric(&gw, DISCONNECT_OK, 1.0).await;
    assert_eq!(metric(&gw, DISCONNECT_FAILED).await, 3.0);
    wait_for_metric(&gw, ACTIVE, 0.0).await;
}

#[tokio::test]
async fn disconnect_callbacks_to_a_backend_that_is_down_fail_and_streams_work_again_when_it_is_back() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("CALLBACK_TIMEOUT_MS", "1000")]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(stream(&gw, &backend, &format!("/s?request_id=down{i}")).await.0);
    }
    let down = backend.shutdown().await;
    for c in clients {
        c.close().await;
    }
    wait_for_metric(&gw, DISCONNECT_FAILED, 3.0).await;
    assert_eq!(metric_value(&gw, DISCONNECT_OK).await.unwrap_or(0.0), 0.0);
    assert_eq!(metric(&gw, ACTIVE).await, 0.0, "no stream is left behind");
    assert_eq!(request(gw.addr, "GET", "/healthz", &[], b"").await.status, 200);
    let refused = request(gw.addr, "GET", "/s?request_id=while-down", &[], b"").await;
    assert_eq!(refused.status, 503, "a new stream while the backend is down");
    assert_error(&refused.json(), "BACKEND_UNAVAILABLE");

    let backend = down.restart();
    let (mut c, token) = stream(&gw, &backend, "/s?request_id=back").await;
    send(gw.addr, json!({"token": token, "event": {"name": "n", "data": "1"}})).await;
    assert_eq!(c.next_event().await.data, r#"{"type":"n","payload":1}"#);
    c.close().await;
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].clone()), (token, json!("client_closed")));
    wait_for_metric(&gw, DISCONNECT_OK, 1.0).await;
    wait_for_metric(&gw, ACTIVE, 0.0).await;
}

#[tokio::test]
async fn slow_client_is_closed_with_error_callback_and_counted() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("STREAM_QUEUE_BYTES", "65536")]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let client = SseClient::open_on(tcp, gw.addr, "GET", "/s", &[]).await;
    let token = backend.expect("connect").await.token();
    let chunk = "z".repeat(16 * 1024);
    let mut answers = Vec::new();
    for _ in 0..4000 {
        let (status, body) = send(gw.addr, json!({"token": token, "event": {"data": chunk}})).await;
        answers.push(status);
        if status != 200 {
            assert_eq!(status, 500);
            assert_error(&body, "WRITE_FAILED");
            break;
        }
    }
    assert_eq!(answers.last(), Some(&500), "the queue bound was hit within {} sends", answers.len());
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].clone()), (token.clone(), json!("error")));
    let metrics = request(gw.internal_addr(), "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("sse_gateway_queue_overflows_total{reason=\"slow_consumer\"} 1"), "{text}");
    assert_eq!(send(gw.addr, json!({"token": token, "event": {"data": "x"}})).await.0, 404);
    drop(client);
}

#[tokio::test]
async fn heartbeat_comment_is_written_once_per_interval_not_more_often() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("HEARTBEAT_INTERVAL_SECONDS", "1")]).await;
    let (mut client, _) = stream(&gw, &backend, "/s").await;
    // One ticker serves every stream, so the first beat comes 0-1 s after
    // `ready`; in 4.5 s a 1 s cadence gives 4 or 5 beats. The bounds leave
    // room for a loaded machine (a late tick) but not for a second ticker,
    // a beat per write or a burst.
    let window = std::time::Duration::from_millis(4500);
    let started = tokio::time::Instant::now();
    let mut beats = 0;
    while let Some(frame) = client.frame_within(window.saturating_sub(started.elapsed())).await {
        assert_eq!(frame, Frame::Comment("heartbeat".into()), "only heartbeats on an idle stream");
        beats += 1;
    }
    assert!((3..=6).contains(&beats), "{beats} heartbeats in {window:?} at a 1 s interval");
    assert_eq!(&client.raw()[READY.len()..], b": heartbeat\n\n".repeat(beats).as_slice(), "byte-exact comments");
}

#[tokio::test]
async fn options_is_204_with_cors_on_any_path() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    for path in ["/anything", "/internal/send"] {
        let r = request(gw.addr, "OPTIONS", path, &[], b"").await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    }
    assert!(backend.drain().await.is_empty());
}

#[tokio::test]
async fn head_is_treated_like_get() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let client = SseClient::open_on(tcp, gw.addr, "HEAD", "/s?request_id=h", &[]).await;
    let call = backend.expect("connect").await;
    assert_eq!(call.body["request"]["url"], "/s?request_id=h");
    assert_eq!(client.head.status, 200);
    assert_eq!(client.head.header("content-type"), Some("text/event-stream"));
}

#[tokio::test]
async fn two_concurrent_streams_with_different_tokens_get_only_their_events() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut a, ta) = stream(&gw, &backend, "/a").await;
    let (mut b, tb) = stream(&gw, &backend, "/b").await;
    assert_ne!(ta, tb);
    send(gw.addr, json!({"token": tb, "event": {"name": "for", "data": "\"b\""}})).await;
    send(gw.addr, json!({"token": ta, "event": {"name": "for", "data": "\"a\""}})).await;
    assert_eq!(a.next_event().await.data, r#"{"type":"for","payload":"a"}"#);
    assert_eq!(b.next_event().await.data, r#"{"type":"for","payload":"b"}"#);
    assert_eq!(a.raw().len(), READY.len() + br#"data: {"type":"for","payload":"a"}"#.len() + 2);
}

#[tokio::test]
async fn hundred_events_arrive_in_order() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut client, token) = stream(&gw, &backend, "/s").await;
    for i in 0..100 {
        let (status, _) = send(gw.addr, json!({"token": token, "event": {"name": "n", "data": i.to_string()}})).await;
        assert_eq!(status, 200);
    }
    for i in 0..100 {
        assert_eq!(client.next_event().await.data, format!("{{\"type\":\"n\",\"payload\":{i}}}"));
    }
}

#[tokio::test]
async fn metrics_count_streams_and_callbacks() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (_client, _) = stream(&gw, &backend, "/s").await;
    let r = request(gw.internal_addr(), "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("sse_gateway_active_connections 1"), "{text}");
    assert!(text.contains("sse_gateway_connections_total{action=\"connect\"} 1"), "{text}");
    assert!(text.contains("sse_gateway_callbacks_total{action=\"connect\",outcome=\"accepted\"} 1"), "{text}");
}

#[tokio::test]
async fn callback_secret_never_appears_in_logs() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (client, _) = stream(&gw, &backend, "/s").await;
    client.close().await;
    backend.expect("disconnect").await;
    let lines = gw.stderr();
    assert!(lines.iter().any(|l| l.contains("callback configured")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("s3cret")), "secret leaked: {lines:#?}");
}
