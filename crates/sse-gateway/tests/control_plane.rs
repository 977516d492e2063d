//! Black-box tests of the control plane (extensions): disconnect callbacks
//! retried until the backend takes them, the instance roster, the admin API
//! (list and close streams), credential expiry, and a close by key that
//! reaches another instance through RabbitMQ.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sse_testkit::{Backend, Process, Reply, SseClient, amqp_url, request, send_json};
use sse_wire::Frame;

mod support;

use support::{DEFAULT_BINDINGS, metric_value, stream, wait_for_metric_at_least};

async fn gateway(backend: &Backend, env: &[(&str, &str)]) -> Process {
    let mut all = vec![DEFAULT_BINDINGS];
    all.extend_from_slice(env);
    support::gateway(backend, &all).await
}

/// A metric's value (a missing line reads 0: counters appear on first use).
async fn metric(gw: &Process, prefix: &str) -> f64 {
    metric_value(gw, prefix).await.unwrap_or(0.0)
}

async fn admin(gw: &Process, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let r = match body {
        Some(b) => send_json(gw.internal_addr(), path, &b).await,
        None => request(gw.internal_addr(), method, path, &[], b"").await,
    };
    (r.status, r.json())
}

#[tokio::test]
async fn disconnect_callbacks_refused_with_503_are_retried_until_the_backend_takes_them() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("DISCONNECT_RETRY_SECONDS", "30")]).await;
    let mut clients = Vec::new();
    let mut tokens = BTreeSet::new();
    for i in 0..5 {
        let (c, t) = stream(&gw, &backend, &format!("/s?request_id=r{i}")).await;
        clients.push(c);
        tokens.insert(t);
    }
    backend.answer_disconnects(Reply::status(503));
    for c in clients {
        c.close().await;
    }
    // Every one of the five fails at least once and waits for a retry.
    wait_for_metric_at_least(&gw, "sse_gateway_disconnect_retries_total{outcome=\"retry\"}", 5.0).await;
    assert_eq!(
        request(gw.addr, "GET", "/healthz", &[], b"").await.status,
        200,
        "a down backend never hurts the gateway"
    );
    wait_for_metric_at_least(&gw, "sse_gateway_disconnect_retries_waiting ", 5.0).await;
    backend.answer_disconnects(Reply::ok("{}"));
    wait_for_metric_at_least(&gw, "sse_gateway_disconnect_retries_total{outcome=\"delivered\"}", 5.0).await;
    assert_eq!(metric(&gw, "sse_gateway_disconnect_retries_waiting ").await, 0.0, "none left waiting");
    let seen: BTreeSet<String> =
        backend.drain().await.iter().filter(|c| c.action() == "disconnect").map(|c| c.token()).collect();
    assert_eq!(seen, tokens, "every token's disconnect reached the backend");
    assert_eq!(metric(&gw, "sse_gateway_active_connections ").await, 0.0);
    assert_eq!(metric(&gw, "sse_gateway_disconnect_retries_total{outcome=\"window\"}").await, 0.0);
}

#[tokio::test]
async fn disconnect_callbacks_to_a_backend_that_is_down_arrive_once_it_is_back() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("DISCONNECT_RETRY_SECONDS", "60")]).await;
    let mut clients = Vec::new();
    let mut tokens = BTreeSet::new();
    for i in 0..5 {
        let (c, t) = stream(&gw, &backend, &format!("/s?request_id=d{i}")).await;
        clients.push(c);
        tokens.insert(t);
    }
    let down = backend.shutdown().await;
    for c in clients {
        c.close().await;
    }
    wait_for_metric_at_least(&gw, "sse_gateway_disconnect_retries_total{outcome=\"retry\"}", 5.0).await;
    assert_eq!(metric(&gw, "sse_gateway_active_connections ").await, 0.0, "the streams are gone at once");
    let backend = down.restart();
    let mut seen = BTreeSet::new();
    while seen.len() < tokens.len() {
        let call = backend.expect("disconnect").await;
        assert_eq!(call.body["reason"], "client_closed");
        seen.insert(call.token());
    }
    assert_eq!(seen, tokens);
    wait_for_metric_at_least(&gw, "sse_gateway_disconnect_retries_total{outcome=\"delivered\"}", 5.0).await;
}

#[tokio::test]
async fn a_drain_delivers_a_waiting_disconnect_retry_before_exit() {
    let backend = Backend::start().await;
    let mut gw = gateway(&backend, &[("DISCONNECT_RETRY_SECONDS", "60"), ("SHUTDOWN_TIMEOUT_SECONDS", "5")]).await;
    let (c, token) = stream(&gw, &backend, "/s?request_id=flush").await;
    backend.answer_disconnects(Reply::status(503));
    c.close().await;
    wait_for_metric_at_least(&gw, "sse_gateway_disconnect_retries_total{outcome=\"retry\"}", 1.0).await;
    backend.answer_disconnects(Reply::ok("{}"));
    // The drain tries waiting retries again at once and waits for them.
    assert_eq!(gw.terminate().await, 0);
    let calls: Vec<_> = backend.drain().await.into_iter().filter(|c| c.action() == "disconnect").collect();
    assert!(calls.len() >= 2 && calls.iter().all(|c| c.token() == token), "{} disconnect calls", calls.len());
}

#[tokio::test]
async fn a_disconnect_callback_failing_past_the_window_is_given_up_and_counted() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("DISCONNECT_RETRY_SECONDS", "1")]).await;
    let (c, _) = stream(&gw, &backend, "/s?request_id=gone").await;
    backend.answer_disconnects(Reply::status(500));
    c.close().await;
    wait_for_metric_at_least(&gw, "sse_gateway_disconnect_retries_total{outcome=\"window\"}", 1.0).await;
    gw.wait_for_log("gave up a disconnect callback").await;
    assert_eq!(request(gw.addr, "GET", "/readyz", &[], b"").await.status, 200);
}

#[tokio::test]
async fn rosters_list_exactly_the_tokens_held_and_callbacks_name_the_instance() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("ROSTER_INTERVAL_SECONDS", "1"), ("INSTANCE_ID", "gw-roster")]).await;
    let mut c1 = SseClient::open(gw.addr, "/s?request_id=a", &[]).await;
    let connect = backend.expect("connect").await;
    assert_eq!(connect.body["instance"], "gw-roster");
    let t1 = connect.token();
    assert_eq!(c1.next_event().await.event_type, "ready");
    let (c2, t2) = stream(&gw, &backend, "/s?request_id=b").await;
    let roster = backend.expect("roster").await;
    assert_eq!(roster.body["instance"], "gw-roster");
    assert_eq!(roster.body["interval_seconds"], 1);
    let listed: BTreeSet<&str> = roster.body["tokens"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(listed, BTreeSet::from([t1.as_str(), t2.as_str()]));
    c2.close().await;
    let disconnect = backend.expect("disconnect").await;
    assert_eq!((disconnect.token(), &disconnect.body["instance"]), (t2.clone(), &json!("gw-roster")));
    let roster = backend.expect("roster").await;
    assert_eq!(roster.body["tokens"], json!([t1]));
}

#[tokio::test]
async fn without_rosters_callbacks_carry_no_instance() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let _c = SseClient::open(gw.addr, "/s?request_id=a", &[]).await;
    let connect = backend.expect("connect").await;
    assert!(connect.body.get("instance").is_none(), "{}", connect.body);
}

#[tokio::test]
async fn a_backend_that_refuses_rosters_is_logged_once_and_the_gateway_keeps_going() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("ROSTER_INTERVAL_SECONDS", "1")]).await;
    backend.answer_disconnects(Reply::status(400));
    wait_for_metric_at_least(&gw, "sse_gateway_rosters_total{outcome=\"unsupported\"}", 2.0).await;
    let refusals = gw.stderr().iter().filter(|l| l.contains("does not support rosters")).count();
    assert_eq!(refusals, 1, "logged once");
    // It keeps going: rosters go on, and the gateway stays ready.
    wait_for_metric_at_least(&gw, "sse_gateway_rosters_total{outcome=\"unsupported\"}", 3.0).await;
    assert_eq!(request(gw.addr, "GET", "/readyz", &[], b"").await.status, 200);
}

#[tokio::test]
async fn admin_lists_streams_all_and_by_key_in_pages() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("INSTANCE_ID", "gw-admin")]).await;
    let mut tokens = BTreeSet::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let (c, t) = stream(&gw, &backend, &format!("/s?request_id=r{i}")).await;
        tokens.insert(t);
        clients.push(c);
    }
    let (status, all) = admin(&gw, "GET", "/internal/streams", None).await;
    assert_eq!(status, 200);
    assert_eq!(all["instance"], "gw-admin");
    let listed: Vec<&str> = all["streams"].as_array().unwrap().iter().filter_map(|s| s["token"].as_str()).collect();
    assert_eq!(listed, tokens.iter().map(String::as_str).collect::<Vec<_>>(), "all, in token order");
    assert_eq!(all["next_after"], Value::Null);
    let one = &all["streams"][0];
    assert_eq!(one["keys"], json!(["broadcast", format!("connection.{}", one["request_id"].as_str().unwrap())]));
    assert!(one["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{one}");
    assert!(one["connected_at"].as_str().unwrap().ends_with('Z'), "{one}");
    // Paging: one at a time, following next_after.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "/internal/streams?limit=1".to_owned()
        } else {
            format!("/internal/streams?limit=1&after={after}")
        };
        let (_, page) = admin(&gw, "GET", &q, None).await;
        paged.extend(page["streams"].as_array().unwrap().iter().map(|s| s["token"].as_str().unwrap().to_owned()));
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged.into_iter().collect::<BTreeSet<_>>(), tokens);
    let (_, by_key) = admin(&gw, "GET", "/internal/streams?key=connection.r1", None).await;
    assert_eq!(by_key["streams"].as_array().unwrap().len(), 1);
    assert_eq!(by_key["streams"][0]["request_id"], "r1");
    let (_, none) = admin(&gw, "GET", "/internal/streams?key=nobody", None).await;
    assert_eq!(none["streams"], json!([]));
    for (q, code) in [("limit=0", "INVALID_LIMIT"), ("limit=x", "INVALID_LIMIT"), ("after=nope", "INVALID_TOKEN")] {
        let (status, body) = admin(&gw, "GET", &format!("/internal/streams?{q}"), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{q}");
    }
}

#[tokio::test]
async fn admin_closes_by_token_by_key_and_broadcast_with_a_retry_hint_and_server_closed() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let (mut a, ta) = stream(&gw, &backend, "/s?request_id=a").await;
    let (mut b, _) = stream(&gw, &backend, "/s?request_id=b").await;
    let (mut c, _) = stream(&gw, &backend, "/s?request_id=c").await;
    let (status, body) = admin(&gw, "POST", "/internal/close", Some(json!({"token": ta, "retry_ms": 2500}))).await;
    assert_eq!((status, body), (200, json!({"matched": 1})));
    assert_eq!(a.next_frame().await, Frame::Retry(2500));
    assert!(a.read_to_end().await.is_empty() && a.ended_cleanly());
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (ta.clone(), Some("server_closed")));
    let (_, body) = admin(&gw, "POST", "/internal/close", Some(json!({"key": "connection.b"}))).await;
    assert_eq!(body, json!({"matched": 1}));
    assert!(matches!(b.next_frame().await, Frame::Retry(ms) if (1000..5000).contains(&ms)));
    assert_eq!(backend.expect("disconnect").await.body["reason"], "server_closed");
    let (_, body) = admin(&gw, "POST", "/internal/close", Some(json!({"key": "broadcast"}))).await;
    assert_eq!(body, json!({"matched": 1}));
    assert!(matches!(c.next_frame().await, Frame::Retry(_)));
    let (_, body) = admin(&gw, "POST", "/internal/close", Some(json!({"token": ta}))).await;
    assert_eq!(body, json!({"matched": 0}), "already gone");
    let (status, body) = admin(&gw, "POST", "/internal/close", Some(json!({"key": "a", "token": ta}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("INVALID_CLOSE_TARGET")));
    assert_eq!(metric(&gw, "sse_gateway_admin_closed_total ").await, 3.0);
}

#[tokio::test]
async fn admin_endpoints_need_the_internal_listener_or_the_secret() {
    let backend = Backend::start().await;
    let open = gateway(&backend, &[]).await;
    let r = request(open.addr, "GET", "/internal/streams", &[], b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("INTERNAL_LISTENER_ONLY")));
    let r = send_json(open.addr, "/internal/close", &json!({"key": "broadcast"})).await;
    assert_eq!(r.status, 403);
    let guarded = gateway(&backend, &[("INTERNAL_API_SECRET", "s3cret")]).await;
    let r = request(guarded.addr, "GET", "/internal/streams", &[("authorization", "Bearer wrong")], b"").await;
    assert_eq!(r.status, 401);
    let r = request(guarded.addr, "GET", "/internal/streams", &[("authorization", "Bearer s3cret")], b"").await;
    assert_eq!((r.status, r.json()["streams"].clone()), (200, json!([])));
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test]
async fn expires_at_in_the_answer_ends_the_stream_with_auth_expired_then_retry() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[]).await;
    let expires = unix_now() + 1.5;
    backend.auto(Reply::ok(&json!({"expires_at": expires}).to_string()));
    let (mut c, token) = stream(&gw, &backend, "/s?request_id=exp").await;
    let e = c.next_event().await;
    assert!(unix_now() >= expires - 0.05, "ended before its expiry");
    assert_eq!((e.event_type.as_str(), e.data.as_str()), ("auth_expired", "{}"));
    assert!(matches!(c.next_frame().await, Frame::Retry(ms) if (1000..5000).contains(&ms)));
    assert!(c.read_to_end().await.is_empty() && c.ended_cleanly());
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (token, Some("server_closed")));
    assert_eq!(metric(&gw, "sse_gateway_credentials_expired_total ").await, 1.0);
    // Already expired: ends right after ready.
    backend.auto(Reply::ok(&json!({"expires_at": unix_now() - 10.0}).to_string()));
    let (mut late, _) = stream(&gw, &backend, "/s?request_id=late").await;
    assert_eq!(late.next_event().await.event_type, "auth_expired");
}

#[tokio::test]
async fn with_rabbitmq_a_close_by_key_reaches_a_stream_on_another_instance() {
    let url = amqp_url();
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let backend = Backend::start().await;
    let amqp = |id: &'static str| {
        vec![
            ("RABBITMQ_URL", url.clone()),
            ("RABBITMQ_ENV_PREFIX", prefix.clone()),
            ("RABBITMQ_ENV_AUTO_DELETE", "true".to_owned()),
            ("INSTANCE_ID", id.to_owned()),
        ]
    };
    let env1 = amqp("gw1");
    let env2 = amqp("gw2");
    let gw1 = gateway(&backend, &env1.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let gw2 = gateway(&backend, &env2.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    gw1.wait_for_log("connected to RabbitMQ").await;
    gw2.wait_for_log("connected to RabbitMQ").await;
    // A stream on gw1 keeps the (auto-delete) test exchange alive throughout.
    let (_keep, _) = stream(&gw1, &backend, "/s?request_id=keep").await;
    let (mut there, token) = stream(&gw2, &backend, "/s?request_id=remote").await;
    let (status, body) = admin(&gw1, "POST", "/internal/close", Some(json!({"key": "connection.remote"}))).await;
    assert_eq!((status, body), (200, json!({"matched": 1, "instances": 1})));
    assert!(matches!(there.next_frame().await, Frame::Retry(_)));
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (token, Some("server_closed")));
    let (_, body) = admin(&gw1, "POST", "/internal/close", Some(json!({"key": "connection.nobody"}))).await;
    assert_eq!(body, json!({"matched": 0, "instances": 0}));
}

#[tokio::test]
async fn bad_admin_input_gets_a_precise_4xx_and_leaves_the_streams_intact() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[("MAX_BODY_BYTES", "1024")]).await;
    let (mut c, _) = stream(&gw, &backend, "/s?request_id=intact").await;
    let internal = gw.internal_addr();
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "INVALID_JSON"),
        (br#"{"key":"a\nb"}"#, 400, "INVALID_KEY"),
        (br#"{"key":"broadcast","retry_ms":1e99}"#, 400, "INVALID_RETRY_MS"),
        (br#"["broadcast"]"#, 400, "INVALID_CLOSE_TARGET"),
    ];
    for (body, status, code) in cases {
        let r = request(internal, "POST", "/internal/close", &[("content-type", "application/json")], body).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let big = format!(r#"{{"key":"broadcast","pad":"{}"}}"#, "x".repeat(4096));
    let r = request(internal, "POST", "/internal/close", &[("content-type", "application/json")], big.as_bytes()).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")));
    let (status, body) =
        admin(&gw, "POST", "/internal/close", Some(json!({"token": "00000000-0000-4000-8000-000000000000"}))).await;
    assert_eq!((status, body), (200, json!({"matched": 0})), "an unknown token matches nothing");
    let r = request(internal, "GET", "/internal/streams?key=a%0Ab", &[], b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("INVALID_KEY")));
    // The stream is untouched: it still gets what is published to it.
    let (status, _) =
        support::publish(&gw, json!({"key": "connection.intact", "event": support::event("still", "1")})).await;
    assert_eq!(status, 200);
    assert_eq!(c.next_event().await.data, support::payload("still", "1"));
}
