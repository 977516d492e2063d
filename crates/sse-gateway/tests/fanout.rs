//! Black-box tests of the fan-out engine: routing keys, `/internal/publish`,
//! its access rule, the slow-consumer policy and the limits.

mod support;

use serde_json::json;
use sse_testkit::{Backend, Reply, SseClient, request, send_json, within};
use sse_wire::Frame;
use support::{DEFAULT_BINDINGS, event, gateway, metric, publish, stream};

#[tokio::test]
async fn publish_broadcast_reaches_every_stream_once() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(stream(&gw, &backend, &format!("/s?request_id=r{i}")).await.0);
    }
    let (status, body) = publish(&gw, json!({"key": "broadcast", "event": event("news", "{\"n\":1}")})).await;
    assert_eq!((status, body), (200, json!({"matched": 5})));
    let (_, body) = publish(&gw, json!({"key": "broadcast", "event": event("news", "{\"n\":2}")})).await;
    assert_eq!(body, json!({"matched": 5}));
    for c in &mut clients {
        assert_eq!(c.next_event().await.data, r#"{"type":"news","payload":{"n":1}}"#);
        assert_eq!(c.next_event().await.data, r#"{"type":"news","payload":{"n":2}}"#);
    }
}

#[tokio::test]
async fn publish_to_connection_key_reaches_only_that_request_id() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (mut a, _) = stream(&gw, &backend, "/s?request_id=alpha").await;
    let (mut b, _) = stream(&gw, &backend, "/s?request_id=beta").await;
    let (_, body) = publish(&gw, json!({"key": "connection.beta", "event": event("only", "\"b\"")})).await;
    assert_eq!(body, json!({"matched": 1}));
    let (_, body) = publish(&gw, json!({"key": "connection.alpha", "event": event("only", "\"a\"")})).await;
    assert_eq!(body, json!({"matched": 1}));
    assert_eq!(b.next_event().await.data, r#"{"type":"only","payload":"b"}"#);
    assert_eq!(a.next_event().await.data, r#"{"type":"only","payload":"a"}"#);
}

#[tokio::test]
async fn bindings_from_the_connect_answer_replace_the_defaults() {
    let backend = Backend::start_with(Reply::ok(
        r#"{"request_id":"r1","subject":"alice","bindings":["subject.alice","role.admin"]}"#,
    ))
    .await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (mut alice, _) = stream(&gw, &backend, "/s?request_id=r1").await;
    backend.auto(Reply::ok(r#"{"request_id":"r2","bindings":["subject.bob"]}"#));
    let (mut bob, _) = stream(&gw, &backend, "/s?request_id=r2").await;
    assert_eq!(publish(&gw, json!({"key": "subject.alice", "event": event("x", "1")})).await.1, json!({"matched": 1}));
    assert_eq!(publish(&gw, json!({"key": "role.admin", "event": event("x", "2")})).await.1, json!({"matched": 1}));
    assert_eq!(publish(&gw, json!({"key": "subject.bob", "event": event("x", "3")})).await.1, json!({"matched": 1}));
    assert_eq!(
        publish(&gw, json!({"key": "broadcast", "event": event("x", "4")})).await.1,
        json!({"matched": 0}),
        "explicit bindings replace the defaults"
    );
    assert_eq!(alice.next_event().await.data, r#"{"type":"x","payload":1}"#);
    assert_eq!(alice.next_event().await.data, r#"{"type":"x","payload":2}"#);
    assert_eq!(bob.next_event().await.data, r#"{"type":"x","payload":3}"#);
}

#[tokio::test]
async fn publish_to_a_key_with_no_streams_matches_zero() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (status, body) = publish(&gw, json!({"key": "subject.nobody", "event": event("x", "1")})).await;
    assert_eq!((status, body), (200, json!({"matched": 0})));
}

#[tokio::test]
async fn batch_publish_delivers_in_order_and_reports_each_match() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (mut c, _) = stream(&gw, &backend, "/s?request_id=q").await;
    let (status, body) = publish(
        &gw,
        json!({"messages": [
            {"key": "connection.q", "event": event("a", "1")},
            {"key": "nobody", "event": event("b", "2")},
            {"key": "broadcast", "event": event("c", "3")}
        ]}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"matched": 2, "results": [1, 0, 1]})));
    assert_eq!(c.next_event().await.data, r#"{"type":"a","payload":1}"#);
    assert_eq!(c.next_event().await.data, r#"{"type":"c","payload":3}"#);
}

#[tokio::test]
async fn publish_validation_errors_are_400_and_nothing_is_delivered() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (mut c, token) = stream(&gw, &backend, "/s").await;
    let cases = [
        ("INVALID_JSON", "{".to_owned()),
        ("INVALID_KEY_MISSING", json!({"event": event("a", "1")}).to_string()),
        ("INVALID_KEY", json!({"key": "two words", "event": event("a", "1")}).to_string()),
        ("INVALID_EVENT_TYPE", json!({"key": "broadcast", "event": []}).to_string()),
        ("INVALID_EVENT_DATA_MISSING", json!({"key": "broadcast", "event": {"name": "a"}}).to_string()),
        ("INVALID_EVENT_NAME_TYPE", json!({"key": "broadcast", "event": {"name": 1, "data": "1"}}).to_string()),
        ("INVALID_CLOSE_TYPE", json!({"key": "broadcast", "close": "no"}).to_string()),
        ("INVALID_EVENT_NAME", json!({"key": "broadcast", "event": event("a\nb", "1")}).to_string()),
        (
            "INVALID_CLOSE_TYPE",
            json!({"messages": [{"key": "broadcast", "event": event("ok", "1")}, {"key": "b", "close": 1}]})
                .to_string(),
        ),
        ("INVALID_MESSAGES_TYPE", json!({"messages": "x"}).to_string()),
    ];
    for (code, body) in cases {
        let r = request(
            gw.internal_addr(),
            "POST",
            "/internal/publish",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["code"], code, "{body}");
    }
    // The rejected batch delivered nothing: the next event is the probe.
    send_json(gw.addr, "/internal/send", &json!({"token": token, "event": event("probe", "0")})).await;
    assert_eq!(c.next_event().await.data, r#"{"type":"probe","payload":0}"#);
}

#[tokio::test]
async fn publish_on_the_public_port_needs_the_secret() {
    let backend = Backend::start().await;
    let open_gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let body = json!({"key": "broadcast", "event": event("x", "1")}).to_string();
    let headers = [("Content-Type", "application/json")];
    let r = request(open_gw.addr, "POST", "/internal/publish", &headers, body.as_bytes()).await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (403, json!("INTERNAL_LISTENER_ONLY")));
    let r = request(open_gw.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 403, "metrics are internal too");

    let gw = gateway(&backend, &[DEFAULT_BINDINGS, ("INTERNAL_API_SECRET", "t0p-secret")]).await;
    let r = request(gw.addr, "POST", "/internal/publish", &headers, body.as_bytes()).await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (401, json!("UNAUTHORIZED")));
    let wrong = [("Content-Type", "application/json"), ("Authorization", "Bearer t0p-secreT")];
    assert_eq!(request(gw.addr, "POST", "/internal/publish", &wrong, body.as_bytes()).await.status, 401);
    let right = [("Content-Type", "application/json"), ("Authorization", "Bearer t0p-secret")];
    let r = request(gw.addr, "POST", "/internal/publish", &right, body.as_bytes()).await;
    assert_eq!((r.status, r.json()), (200, json!({"matched": 0})));
    assert!(!gw.stderr().iter().any(|l| l.contains("t0p-secret")), "the secret is never logged");
}

#[tokio::test]
async fn internal_send_works_on_both_listeners() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (mut c, token) = stream(&gw, &backend, "/s").await;
    for (addr, n) in [(gw.addr, 1), (gw.internal_addr(), 2)] {
        let r = send_json(addr, "/internal/send", &json!({"token": token, "event": event("n", &n.to_string())})).await;
        assert_eq!(r.status, 200);
        assert_eq!(c.next_event().await.data, format!("{{\"type\":\"n\",\"payload\":{n}}}"));
    }
    let r = request(gw.internal_addr(), "GET", "/s", &[], b"").await;
    assert_eq!(r.status, 404, "no streams on the internal listener");
}

#[tokio::test]
async fn publish_with_close_ends_matched_streams_with_server_closed() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (mut c, token) = stream(&gw, &backend, "/s?request_id=bye").await;
    let (_, body) = publish(&gw, json!({"key": "connection.bye", "event": event("last", "1"), "close": true})).await;
    assert_eq!(body, json!({"matched": 1}));
    assert_eq!(c.next_event().await.data, r#"{"type":"last","payload":1}"#);
    c.read_to_end().await;
    assert!(c.ended_cleanly());
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].clone()), (token, json!("server_closed")));
    assert_eq!(publish(&gw, json!({"key": "connection.bye", "close": true})).await.1, json!({"matched": 0}));
}

#[tokio::test]
async fn client_that_never_reads_is_closed_and_counted_while_others_keep_receiving() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, ("STREAM_QUEUE_BYTES", "262144")]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let _stuck = SseClient::open_on(tcp, gw.addr, "GET", "/s?request_id=slow", &[]).await;
    let slow_token = backend.expect("connect").await.token();
    let (mut reader, _) = stream(&gw, &backend, "/s?request_id=fast").await;
    let payload = format!("\"{}\"", "p".repeat(32 * 1024));
    let mut sent = 0;
    let mut received = 0;
    // Publish until the slow stream is closed; the reader drains as it goes.
    let disconnect = loop {
        assert!(sent < 2000, "the slow stream was never closed");
        let (status, _) = publish(&gw, json!({"key": "broadcast", "event": event("big", &payload)})).await;
        assert_eq!(status, 200);
        sent += 1;
        let ev = reader.next_event().await;
        assert_eq!(ev.data.len(), payload.len() + r#"{"type":"big","payload":}"#.len());
        received += 1;
        if let Some(d) = backend.drain().await.into_iter().find(|c| c.action() == "disconnect") {
            break d;
        }
    };
    let token_field = format!("token={slow_token}");
    assert_eq!((disconnect.token(), disconnect.body["reason"].clone()), (slow_token, json!("error")));
    assert_eq!(metric(&gw, "sse_gateway_queue_overflows_total{reason=\"slow_consumer\"}").await, 1.0);
    let line = gw.wait_for_log("closed streams whose clients did not keep up").await;
    assert!(
        line.contains("WARN") && line.contains(&token_field) && line.contains("peer=127.0.0.1:"),
        "a warning naming the dropped stream's token and peer: {line}"
    );
    for i in 0..3 {
        let (_, body) = publish(&gw, json!({"key": "broadcast", "event": event("after", &i.to_string())})).await;
        assert_eq!(body, json!({"matched": 1}), "only the reader is left");
        assert_eq!(reader.next_event().await.data, format!("{{\"type\":\"after\",\"payload\":{i}}}"));
    }
    assert_eq!(received, sent, "the reader got every event");
}

#[tokio::test]
async fn beyond_max_connections_a_stream_gets_a_retry_hint_and_ends() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, ("MAX_CONNECTIONS", "2")]).await;
    let _a = stream(&gw, &backend, "/s").await;
    let _b = stream(&gw, &backend, "/s").await;
    let mut c = SseClient::open(gw.addr, "/s", &[]).await;
    assert_eq!(c.head.status, 200, "a status would make EventSource give up");
    assert_eq!(c.head.header("content-type"), Some("text/event-stream"));
    let Frame::Retry(ms) = c.next_frame().await else { panic!("expected a retry hint") };
    assert!((5000..15000).contains(&ms), "{ms}");
    c.read_to_end().await;
    assert!(c.ended_cleanly());
    assert_eq!(metric(&gw, "sse_gateway_streams_refused_total{reason=\"max_connections\"}").await, 1.0);
    assert!(backend.drain().await.is_empty(), "the backend is not asked about a refused stream");
}

#[tokio::test]
async fn oversized_request_head_is_431_with_a_json_error() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, ("MAX_HEADER_BYTES", "4096")]).await;
    let big = "c".repeat(8000);
    let r = request(gw.addr, "GET", "/s", &[("Cookie", &big)], b"").await;
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["code"], "HEADERS_TOO_LARGE");
    let r = request(gw.addr, "POST", "/internal/send", &[("X-Big", &big)], b"{}").await;
    assert_eq!(r.status, 431);
    assert!(backend.drain().await.is_empty());
}

#[tokio::test]
async fn a_stream_after_another_request_on_a_kept_alive_connection_works() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = within("the health answer", tcp.read(&mut buf)).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("{\"status\":\"ok\"}"), "{head}");
    let mut c = SseClient::open_on(tcp, gw.addr, "GET", "/s?request_id=ka", &[]).await;
    let token = backend.expect("connect").await.token();
    assert_eq!(c.next_event().await.event_type, "ready");
    send_json(gw.addr, "/internal/send", &json!({"token": token, "event": event("n", "1")})).await;
    assert_eq!(c.next_event().await.data, r#"{"type":"n","payload":1}"#);
    c.close().await;
    let d = backend.expect("disconnect").await;
    assert_eq!(d.body["reason"], "client_closed");
}

#[tokio::test]
async fn metrics_cover_publish_delivery_bytes_and_callback_latency() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let (mut a, _) = stream(&gw, &backend, "/s?request_id=a").await;
    let (mut b, _) = stream(&gw, &backend, "/s?request_id=b").await;
    publish(&gw, json!({"key": "broadcast", "event": event("m", "1")})).await;
    a.next_event().await;
    b.next_event().await;
    assert_eq!(metric(&gw, "sse_gateway_events_published_total{ingress=\"publish\"}").await, 1.0);
    assert_eq!(metric(&gw, "sse_gateway_events_delivered_total").await, 2.0);
    assert!(metric(&gw, "sse_gateway_bytes_written_total").await > 0.0);
    assert_eq!(metric(&gw, "sse_gateway_callback_duration_seconds_count{action=\"connect\"}").await, 2.0);
    assert_eq!(metric(&gw, "sse_gateway_api_requests_total{endpoint=\"publish\",status=\"200\"}").await, 1.0);
    assert_eq!(metric(&gw, "sse_gateway_active_connections").await, 2.0);
}

#[tokio::test]
async fn a_publish_to_many_streams_goes_through_the_writer_shards_and_to_a_few_inline() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, ("HEARTBEAT_INTERVAL", "3600")]).await;
    let mut clients = Vec::new();
    for i in 0..70 {
        clients.push(stream(&gw, &backend, &format!("/s?request_id=w{i}")).await.0);
    }
    let streams_written = "sse_gateway_writer_streams_total ";
    assert_eq!(metric(&gw, streams_written).await, 0.0, "nothing written by the shards yet");
    // 70 streams (more than the 64 written inline): the writer shards write it.
    for n in 1..=3 {
        let (_, body) = publish(&gw, json!({"key": "broadcast", "event": event("many", &n.to_string())})).await;
        assert_eq!(body, json!({"matched": 70}));
    }
    for c in &mut clients {
        for n in 1..=3 {
            assert_eq!(c.next_event().await.data, format!("{{\"type\":\"many\",\"payload\":{n}}}"));
        }
    }
    let after_broadcasts = metric(&gw, streams_written).await;
    assert!(
        (70.0..=210.0).contains(&after_broadcasts),
        "each stream handed to a shard once per turn: {after_broadcasts}"
    );
    assert!(metric(&gw, "sse_gateway_writer_runs_total ").await >= 1.0);
    // One stream (a key with few streams): written inline, the shards do nothing.
    let (_, body) = publish(&gw, json!({"key": "connection.w7", "event": event("one", "7")})).await;
    assert_eq!(body, json!({"matched": 1}));
    assert_eq!(clients[7].next_event().await.data, r#"{"type":"one","payload":7}"#);
    assert_eq!(metric(&gw, streams_written).await, after_broadcasts, "written inline");
}
