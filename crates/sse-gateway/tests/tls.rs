//! Black-box tests of HTTPS on the public listener (extension): with
//! `TLS_CERT_FILE` and `TLS_KEY_FILE` (a self-signed certificate made here)
//! the gateway negotiates `h2` or `http/1.1` by ALPN, and every stream
//! feature works the same over both: stream headers, buffered events,
//! `ready`, heartbeats, rejection, retry hints, close, the slow consumer cut,
//! stall detection and the drain. Over h2 many streams share one connection.
//! The internal listener stays plain HTTP. Incomplete or unusable TLS
//! settings stop the gateway with exit code 2.

mod support;

use http::Version;
use serde_json::json;
use sse_testkit::{Alpn, Backend, HttpsConnection, Reply, TestCert, within};
use sse_wire::Frame;
use support::{BIN, DEFAULT_BINDINGS, event, payload, publish, send, tls_gateway, tls_stream, wait_for_metric};

const STREAMS: usize = 5;
const SIGTERM: i32 = 15;

#[tokio::test]
async fn h2_multiplexes_streams_on_one_connection_with_events_heartbeats_and_close() {
    let cert = TestCert::generate();
    let backend = Backend::start().await;
    let gw = tls_gateway(&backend, &cert, &[DEFAULT_BINDINGS, ("HEARTBEAT_INTERVAL_SECONDS", "1")]).await;
    let mut conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    assert_eq!(conn.alpn(), Some(&b"h2"[..]), "ALPN chose h2");
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut s = conn.sse(&format!("/events?request_id=r{i}")).await;
        let call = backend.expect("connect").await;
        assert_eq!(s.status, 200);
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.headers.get("content-type").map(|v| v.as_bytes()), Some(&b"text/event-stream"[..]));
        assert_eq!(s.headers.get("cache-control").map(|v| v.as_bytes()), Some(&b"no-cache"[..]));
        assert_eq!(s.headers.get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));
        for hop in ["connection", "keep-alive", "transfer-encoding"] {
            assert!(s.headers.get(hop).is_none(), "h2 forbids {hop}: {:?}", s.header_list());
        }
        let request = &call.body["request"];
        assert_eq!(request["url"], format!("/events?request_id=r{i}"));
        assert_eq!(
            request["headers"]["host"],
            format!("localhost:{}", gw.addr.port()),
            "the :authority reaches the backend as host"
        );
        assert_eq!(s.next_event().await.event_type, "ready");
        streams.push((s, call.token()));
    }

    // One send reaches its own stream only; one publish reaches all of them.
    let (status, body) =
        send(gw.internal_addr(), json!({"token": streams[2].1, "event": event("note", "{\"n\":2}")})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
    let (status, body) = publish(&gw, json!({"key": "broadcast", "event": event("all", "7")})).await;
    assert_eq!((status, body), (200, json!({"matched": STREAMS})));
    for (i, (s, _)) in streams.iter_mut().enumerate() {
        if i == 2 {
            assert_eq!(s.next_event().await.data, payload("note", "{\"n\":2}"));
        }
        assert_eq!(s.next_event().await.data, payload("all", "7"), "stream {i}");
        let beat = within("a heartbeat", async {
            loop {
                if let Frame::Comment(c) = s.next_frame().await {
                    return c;
                }
            }
        })
        .await;
        assert_eq!(beat, "heartbeat");
    }

    // Cancelling one stream (RST_STREAM) ends it alone, reported once as client_closed.
    let (gone, gone_token) = streams.remove(0);
    drop(gone);
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (gone_token, Some("client_closed")));
    let (status, body) = publish(&gw, json!({"key": "broadcast", "event": event("after", "1")})).await;
    assert_eq!((status, body), (200, json!({"matched": STREAMS - 1})));

    // A close command writes its event and ends that stream cleanly, the others go on.
    let (mut closing, closing_token) = streams.remove(0);
    let (status, _) =
        send(gw.internal_addr(), json!({"token": closing_token, "event": event("bye", "0"), "close": true})).await;
    assert_eq!(status, 200);
    let rest = closing.read_to_end().await;
    assert!(closing.error().is_none(), "ended cleanly, not reset: {:?}", closing.error());
    let datas: Vec<_> =
        rest.iter().filter_map(|f| if let Frame::Event(e) = f { Some(e.data.clone()) } else { None }).collect();
    assert_eq!(datas.last(), Some(&payload("bye", "0")), "{datas:?}");
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (closing_token, Some("server_closed")));
    for (s, _) in &mut streams {
        loop {
            if let Frame::Event(e) = s.next_frame().await {
                assert_eq!(e.data, payload("after", "1"));
                break;
            }
        }
    }
}

#[tokio::test]
async fn http11_over_tls_serves_a_stream_like_plain_http() {
    let cert = TestCert::generate();
    let backend = Backend::start().await;
    let gw = tls_gateway(&backend, &cert, &[DEFAULT_BINDINGS]).await;
    let mut conn = HttpsConnection::connect(gw.addr, &cert, Alpn::Http11).await;
    assert_eq!(conn.alpn(), Some(&b"http/1.1"[..]));
    let (mut s, token) = tls_stream(&mut conn, &backend, "/s?request_id=h1").await;
    assert_eq!(s.version, Version::HTTP_11);
    assert_eq!(s.headers.get("connection").map(|v| v.as_bytes()), Some(&b"keep-alive"[..]));
    assert_eq!(s.headers.get("transfer-encoding").map(|v| v.as_bytes()), Some(&b"chunked"[..]));
    let (status, _) = publish(&gw, json!({"key": "connection.h1", "event": event("hi", "1")})).await;
    assert_eq!(status, 200);
    assert_eq!(s.next_event().await.data, payload("hi", "1"));
    let (status, _) = send(gw.internal_addr(), json!({"token": token, "close": true})).await;
    assert_eq!(status, 200);
    s.read_to_end().await;
    assert!(s.error().is_none(), "ended with the terminating chunk: {:?}", s.error());
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (token, Some("server_closed")));
}

#[tokio::test]
async fn over_h2_events_sent_during_the_callback_come_before_the_retry_hint_and_ready() {
    let cert = TestCert::generate();
    let backend = Backend::start().await;
    backend.manual();
    let gw = tls_gateway(&backend, &cert, &[("RETRY_JITTER_MS", "200-300")]).await;
    let mut conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    let opening = tokio::spawn(async move {
        let s = conn.sse("/s?request_id=buffered").await;
        (s, conn)
    });
    let call = backend.expect("connect").await;
    let token = call.token();
    for i in 0..3 {
        let (status, body) =
            send(gw.internal_addr(), json!({"token": token, "event": event("version", &i.to_string())})).await;
        assert_eq!((status, body), (200, json!({"status": "buffered"})));
    }
    call.answer(Reply::ok("{}"));
    let (mut s, _conn) = within("the stream to open", opening).await.expect("opening task");
    for i in 0..3 {
        assert_eq!(s.next_event().await.data, payload("version", &i.to_string()));
    }
    let Frame::Retry(ms) = s.next_frame().await else { panic!("the retry hint comes with ready") };
    assert!((200..=300).contains(&ms), "retry {ms} within RETRY_JITTER_MS");
    assert_eq!(s.next_event().await.event_type, "ready", "ready comes after the buffered events");
}

#[tokio::test]
async fn over_h2_a_refused_stream_gets_the_rejected_event_and_ends() {
    let cert = TestCert::generate();
    let backend = Backend::start_with(Reply::status(403)).await;
    let gw = tls_gateway(&backend, &cert, &[]).await;
    let mut conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    let mut s = conn.sse("/s").await;
    backend.expect("connect").await;
    assert_eq!(s.status, 200);
    s.read_to_end().await;
    assert!(s.error().is_none(), "{:?}", s.error());
    assert_eq!(
        String::from_utf8_lossy(s.raw()),
        "event: rejected\ndata: {\"status\":403,\"message\":\"Forbidden\"}\n\n"
    );
    // The connection serves the next stream.
    backend.auto(Reply::ok("{}"));
    tls_stream(&mut conn, &backend, "/s").await;
}

#[tokio::test]
async fn over_h2_a_slow_consumer_is_cut_with_its_connection_and_another_connection_goes_on() {
    let cert = TestCert::generate();
    let backend = Backend::start().await;
    let gw = tls_gateway(&backend, &cert, &[DEFAULT_BINDINGS, ("STREAM_QUEUE_BYTES", "65536")]).await;
    let mut slow_conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    // Never read: once the client's flow-control window is full, the gateway's queue fills.
    let (_slow, slow_token) = tls_stream(&mut slow_conn, &backend, "/s?request_id=slow").await;
    let (mut sibling, sibling_token) = tls_stream(&mut slow_conn, &backend, "/s?request_id=sibling").await;
    let mut healthy_conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    let (mut healthy, _) = tls_stream(&mut healthy_conn, &backend, "/s?request_id=healthy").await;
    let chunk = "z".repeat(16 * 1024);
    let mut overflowed = false;
    for _ in 0..2000 {
        let (status, body) = send(gw.internal_addr(), json!({"token": slow_token, "event": {"data": chunk}})).await;
        if status != 200 {
            assert_eq!((status, body["error"]["code"].as_str()), (500, Some("WRITE_FAILED")), "{body}");
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the queue bound was hit");
    let mut reasons = vec![];
    for _ in 0..2 {
        let d = backend.expect("disconnect").await;
        reasons.push((d.token(), d.body["reason"].as_str().unwrap_or_default().to_owned()));
    }
    reasons.sort();
    let mut want = vec![(slow_token, "error".to_owned()), (sibling_token, "client_closed".to_owned())];
    want.sort();
    assert_eq!(reasons, want, "the slow stream ends with error; its connection's other stream is cut with it");
    sibling.read_to_end().await;
    assert!(sibling.error().is_some(), "the sibling was cut, not ended");
    wait_for_metric(&gw, "sse_gateway_queue_overflows_total{reason=\"slow_consumer\"}", 1.0).await;
    let (status, body) = publish(&gw, json!({"key": "broadcast", "event": event("still", "1")})).await;
    assert_eq!((status, body), (200, json!({"matched": 1})));
    assert_eq!(healthy.next_event().await.data, payload("still", "1"));
}

#[tokio::test]
async fn over_h2_a_stalled_stream_is_closed_and_a_healthy_one_gets_everything() {
    const EVENTS: usize = 300;
    let cert = TestCert::generate();
    let backend = Backend::start().await;
    let env = [DEFAULT_BINDINGS, ("STREAM_STALL_SECONDS", "2"), ("STREAM_QUEUE_BYTES", "67108864")];
    let gw = tls_gateway(&backend, &cert, &env).await;
    let mut stalled_conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    let (_stalled, stalled_token) = tls_stream(&mut stalled_conn, &backend, "/s?request_id=stuck").await;
    let mut healthy_conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    let (mut healthy, _) = tls_stream(&mut healthy_conn, &backend, "/s?request_id=fine").await;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < EVENTS {
            let e = healthy.next_event().await;
            assert!(e.data.contains("\"type\":\"blob\""), "{}", e.data);
            n += 1;
        }
        (n, healthy)
    });
    // 300 events of 16 KiB: more than the stalled client's flow-control window and buffers take.
    let blob = "x".repeat(16 * 1024);
    for _ in 0..EVENTS / 50 {
        let messages: Vec<_> =
            (0..50).map(|_| json!({"key": "broadcast", "event": event("blob", &json!(blob).to_string())})).collect();
        let (status, _) = publish(&gw, json!({"messages": messages})).await;
        assert_eq!(status, 200);
    }
    let (received, _healthy) = within("the healthy stream's events", reader).await.expect("reader");
    assert_eq!(received, EVENTS);
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (stalled_token, Some("error")));
    wait_for_metric(&gw, "sse_gateway_queue_overflows_total{reason=\"stalled\"}", 1.0).await;
    gw.wait_for_log("closed a stalled stream").await;
}

#[tokio::test]
async fn sigterm_drains_h2_and_http11_streams_with_retry_and_server_closed() {
    let cert = TestCert::generate();
    let backend = Backend::start().await;
    let mut gw = tls_gateway(&backend, &cert, &[]).await;
    let mut h2 = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    let mut h1 = HttpsConnection::connect(gw.addr, &cert, Alpn::Http11).await;
    let mut clients = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (s, t) = tls_stream(&mut h2, &backend, "/s").await;
        clients.push(s);
        tokens.push(t);
    }
    let (s, t) = tls_stream(&mut h1, &backend, "/s").await;
    clients.push(s);
    tokens.push(t);
    gw.signal(SIGTERM);
    for s in &mut clients {
        let Frame::Retry(ms) = s.next_frame().await else { panic!("expected a retry hint") };
        assert!((1000..=5000).contains(&ms), "jittered retry between 1 and 5 s, got {ms}");
        s.read_to_end().await;
        assert!(s.error().is_none(), "each stream is ended, not cut: {:?}", s.error());
    }
    assert_eq!(gw.wait_exit().await, 0, "exit 0 after the drain");
    let mut reasons: Vec<(String, String)> =
        backend.drain().await.iter().map(|c| (c.token(), c.body["reason"].as_str().unwrap_or("").to_owned())).collect();
    reasons.sort();
    let mut want: Vec<(String, String)> = tokens.iter().map(|t| (t.clone(), "server_closed".to_owned())).collect();
    want.sort();
    assert_eq!(reasons, want);
}

#[tokio::test]
async fn the_internal_listener_stays_plain_http() {
    let cert = TestCert::generate();
    let backend = Backend::start().await;
    let gw = tls_gateway(&backend, &cert, &[]).await;
    let r = sse_testkit::request(gw.internal_addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    let mut conn = HttpsConnection::connect(gw.addr, &cert, Alpn::H2).await;
    assert_eq!(conn.request("GET", "/healthz", &[], b"").await.status, 200, "health over h2 too");
}

async fn exit_of(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear().env("LISTEN_ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = within("the gateway to exit", cmd.output()).await.expect("run the gateway");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn incomplete_or_unusable_tls_settings_exit_2_with_a_message() {
    let cert = TestCert::generate();
    let other = TestCert::generate();
    let (c, k) = (cert.cert_file.to_str().unwrap(), cert.key_file.to_str().unwrap());
    let garbage = std::env::temp_dir().join(format!("sse-not-pem-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&garbage, b"this is not PEM\n").unwrap();
    let garbage = garbage.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("TLS_CERT_FILE", c)], "TLS_CERT_FILE is set but TLS_KEY_FILE is not"),
        (vec![("TLS_KEY_FILE", k)], "TLS_KEY_FILE is set but TLS_CERT_FILE is not"),
        (
            vec![("TLS_CERT_FILE", "/nonexistent/cert.pem"), ("TLS_KEY_FILE", k)],
            "cannot read certificate file /nonexistent/cert.pem",
        ),
        (
            vec![("TLS_CERT_FILE", c), ("TLS_KEY_FILE", "/nonexistent/key.pem")],
            "cannot read key file /nonexistent/key.pem",
        ),
        (vec![("TLS_CERT_FILE", &garbage), ("TLS_KEY_FILE", k)], "holds no usable PEM certificate"),
        (vec![("TLS_CERT_FILE", c), ("TLS_KEY_FILE", &garbage)], "holds no usable PEM private key"),
        (
            vec![("TLS_CERT_FILE", c), ("TLS_KEY_FILE", other.key_file.to_str().unwrap())],
            "does not fit the certificate",
        ),
    ];
    for (env, want) in cases {
        let (code, stderr) = exit_of(&env).await;
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(want), "{env:?}: expected {want:?} in {stderr}");
        assert!(stderr.lines().count() <= 2, "one clear line, no backtrace: {stderr}");
    }
    let _ = std::fs::remove_file(&garbage);
    // The same with flags.
    let (code, stderr) = {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env_clear().args(["--listen", "127.0.0.1:0", "--tls-cert-file", c]);
        let out = within("the gateway to exit", cmd.output()).await.expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TLS_KEY_FILE"), "{stderr}");
}
