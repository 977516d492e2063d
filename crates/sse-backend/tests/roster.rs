//! Black-box tests of the control plane between the real `sse-gateway`
//! binary and the toolkit (docs/BACKEND.md, Roster; credential expiry): the
//! demo backend (`examples/demo_backend.rs`, served in-process on
//! 127.0.0.1:0) behind a gateway that sends rosters every second, driven by
//! real SSE clients over TCP. Waits on timers poll with an explicit deadline.

#[path = "../examples/demo_backend.rs"]
#[allow(dead_code)]
mod demo_backend;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::StatusCode;
use demo_backend::Demo;
use serde_json::{Value, json};
use sse_backend::config::BackendConfig;
use sse_testkit::{Process, SseClient, request, send_json};
use sse_wire::Frame;

/// The gateways' roster interval in these tests (`ROSTER_INTERVAL_SECONDS`).
const INTERVAL: Duration = Duration::from_secs(1);
/// Scheduling slack on top of a protocol bound (a loaded 2-core machine).
const SLACK: Duration = Duration::from_secs(3);

struct Setup {
    backend: SocketAddr,
    callback: String,
    demo: Demo,
}

/// A gateway sending rosters every [`INTERVAL`] as `instance` to `callback`.
async fn gateway(callback: &str, instance: &str, extra: &[(&str, &str)]) -> Process {
    let bin = sse_testkit::workspace_bin("sse-gateway");
    let mut env = vec![
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("CALLBACK_URL", callback),
        ("ROSTER_INTERVAL_SECONDS", "1"),
        ("INSTANCE_ID", instance),
    ];
    env.extend_from_slice(extra);
    Process::spawn(bin.to_str().expect("utf-8 path"), &[], &env).await
}

/// A callback relay in front of `backend` that forwards every callback except
/// disconnects, which it answers 503 and counts (a lost disconnect callback).
async fn lossy_relay(backend: SocketAddr) -> (String, Arc<AtomicUsize>) {
    let lost = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&lost);
    let client = reqwest::Client::new();
    let relay = axum::routing::post(move |RawQuery(query): RawQuery, body: Bytes| {
        let (client, counter) = (client.clone(), Arc::clone(&counter));
        async move {
            let action =
                serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["action"].as_str().map(str::to_owned));
            if action.as_deref() == Some("disconnect") {
                counter.fetch_add(1, Ordering::SeqCst);
                return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
            }
            let url = format!("http://{backend}/api/sse/callback?{}", query.unwrap_or_default());
            let sent = client.post(url).header("content-type", "application/json").body(body).send().await;
            let r = sent.expect("relay to the backend");
            let status = StatusCode::from_u16(r.status().as_u16()).expect("status");
            (status, r.bytes().await.expect("relayed body").to_vec())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let app = axum::Router::new().route("/api/sse/callback", relay);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/api/sse/callback"), lost)
}

/// The backend, then a rostering gateway calling it back (through `relay`'s
/// URL when given); the backend sends to that gateway.
async fn start(instance: &str, backend_env: &[(&str, &str)], gateway_env: &[(&str, &str)]) -> (Setup, Process) {
    start_via(instance, backend_env, gateway_env, false).await.0
}

async fn start_via(
    instance: &str,
    backend_env: &[(&str, &str)],
    gateway_env: &[(&str, &str)],
    lose_disconnects: bool,
) -> ((Setup, Process), Arc<AtomicUsize>) {
    // The backend needs the gateway's address and the gateway the backend's:
    // bind the backend first, point the gateway at it, then build the demo.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let callback = format!("http://{addr}/api/sse/callback");
    let (gw_callback, lost) =
        if lose_disconnects { lossy_relay(addr).await } else { (callback.clone(), Arc::new(AtomicUsize::new(0))) };
    let gw = gateway(&gw_callback, instance, gateway_env).await;
    let mut vars: HashMap<String, String> = HashMap::from([
        ("SSE_GATEWAY_URL".to_owned(), format!("http://{}", gw.addr)),
        ("FRONTEND_VERSION_URL".to_owned(), format!("http://{addr}/version.json")),
    ]);
    for (k, v) in backend_env {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = BackendConfig::from_lookup(|k| vars.get(k).cloned()).expect("config");
    let (demo, router) = Demo::build(config);
    tokio::spawn(async move { axum::serve(listener, router).await });
    ((Setup { backend: addr, callback, demo }, gw), lost)
}

fn unique_instance(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Opens a stream for `rid` through `gw`; checks the `version` notice, then `ready`.
async fn open(gw: SocketAddr, rid: &str, headers: &[(&str, &[u8])]) -> SseClient {
    let mut c = SseClient::open(gw, &format!("/api/sse/stream?request_id={rid}"), headers).await;
    assert_eq!(c.head.status, 200);
    let first = c.next_event().await;
    let envelope: Value = serde_json::from_str(&first.data).expect("envelope");
    assert_eq!(envelope["type"], "version", "the version notice comes first");
    assert_eq!(c.next_event().await.event_type, "ready");
    c
}

/// A sample of the demo backend's `/metrics` (`None`: not exposed yet).
async fn metric(backend: SocketAddr, name: &str) -> Option<f64> {
    let r = request(backend, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

const ACTIVE: &str = "sse_gateway_active_connections";
const ROSTERS: &str = "sse_backend_rosters_received_total";
const LOST: &str = "sse_backend_instance_lost_total";

/// Polls `probe` until it yields, panicking with `what` once `deadline` passed.
async fn poll_until<T>(what: &str, deadline: Instant, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within the deadline: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the backend counted at least `n` rosters.
async fn rosters_at_least(s: &Setup, n: f64) {
    let deadline = Instant::now() + INTERVAL * 2 + SLACK;
    poll_until(&format!("{n} rosters"), deadline, async || {
        metric(s.backend, ROSTERS).await.filter(|got| *got >= n).map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn sigkilled_gateway_loses_its_connections_within_three_roster_intervals() {
    let instance = unique_instance("killed");
    let (s, mut gw) = start(&instance, &[], &[]).await;
    let mut streams = Vec::new();
    for n in 0..3 {
        streams.push(open(gw.addr, &format!("r{n}"), &[]).await);
    }
    let r = send_json(s.backend, "/demo/subscribe", &json!({"request_id":"r0","topic":"sensor.x"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(metric(s.backend, ACTIVE).await, Some(3.0));
    for n in 0..3 {
        let info = s.demo.manager.connection_info(&format!("r{n}")).expect("registered");
        assert_eq!(info.instance.as_deref(), Some(instance.as_str()), "the connect callback named the instance");
    }
    // The instance must have sent a roster: only such an instance can be presumed dead.
    rosters_at_least(&s, 1.0).await;

    gw.signal(9);
    let killed = Instant::now();
    assert_eq!(gw.wait_exit().await, -1, "killed by the signal: no disconnect callback was sent");
    poll_until("the connected gauge to drop to 0", killed + INTERVAL * 3 + SLACK, async || {
        (metric(s.backend, ACTIVE).await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(metric(s.backend, LOST).await, Some(3.0));
    assert!(s.demo.manager.is_empty());
    let subs = request(s.backend, "GET", "/demo/subscriptions", &[], b"").await;
    assert_eq!(subs.json(), json!({"subscriptions": []}), "disconnect observers ran: subscriptions cleared");
    drop(streams);
}

#[tokio::test]
async fn roster_ends_a_connection_whose_disconnect_callback_was_lost_and_keeps_the_others() {
    let instance = unique_instance("lost-disconnect");
    let ((s, gw), lost_callbacks) = start_via(&instance, &[], &[("DISCONNECT_RETRY_SECONDS", "0")], true).await;
    let _kept = open(gw.addr, "kept", &[]).await;
    let gone = open(gw.addr, "gone", &[]).await;
    gone.close().await;
    poll_until("the gateway's disconnect callback (lost)", Instant::now() + SLACK, async || {
        (lost_callbacks.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(s.demo.manager.has_connection("gone"), "the backend never heard of the disconnect");
    assert_eq!(metric(s.backend, ACTIVE).await, Some(2.0));
    // Spared by a roster that may have been taken before its connect, ended by the next.
    poll_until("the roster to end the closed stream", Instant::now() + INTERVAL * 2 + SLACK, async || {
        (!s.demo.manager.has_connection("gone")).then_some(())
    })
    .await;
    assert!(s.demo.manager.has_connection("kept"), "the gateway lists its open stream");
    assert_eq!(metric(s.backend, LOST).await, Some(1.0));
    assert_eq!(metric(s.backend, ACTIVE).await, Some(1.0));
}

#[tokio::test]
async fn restarted_gateway_with_the_same_instance_id_drops_the_old_streams_and_keeps_its_own() {
    let instance = unique_instance("restarted");
    let (s, mut old) = start(&instance, &[], &[]).await;
    let _a = open(old.addr, "old-a", &[]).await;
    let _b = open(old.addr, "old-b", &[]).await;
    rosters_at_least(&s, 1.0).await;
    old.signal(9);
    old.wait_exit().await;
    let new = gateway(&s.callback, &instance, &[]).await;
    // The backend sends to the old gateway, so this stream gets no version notice.
    let mut c = SseClient::open(new.addr, "/api/sse/stream?request_id=new-c", &[]).await;
    assert_eq!(c.next_event().await.event_type, "ready");
    poll_until("the old streams to end", Instant::now() + INTERVAL * 3 + SLACK, async || {
        (metric(s.backend, ACTIVE).await == Some(1.0)).then_some(())
    })
    .await;
    assert!(!s.demo.manager.has_connection("old-a") && !s.demo.manager.has_connection("old-b"));
    // Well past 3 intervals, the restarted instance's own stream is still there.
    let seen = metric(s.backend, ROSTERS).await.expect("rosters counted");
    rosters_at_least(&s, seen + 4.0).await;
    assert!(s.demo.manager.has_connection("new-c"));
    assert_eq!(metric(s.backend, LOST).await, Some(2.0));
}

fn jwt(sub: &str, exp: u64) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt-test-key.pem")).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".to_owned());
    let claims = json!({"sub": sub, "iss": "https://issuer.test", "aud": "demo", "exp": exp});
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

const OIDC: &[(&str, &str)] = &[
    ("OIDC_ENABLED", "true"),
    ("OIDC_ISSUER_URL", "https://issuer.test"),
    ("OIDC_AUDIENCE", "demo"),
    ("OIDC_JWKS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json")),
];

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[tokio::test]
async fn token_exp_reaches_the_gateway_as_expires_at_and_the_stream_ends_with_auth_expired() {
    let (s, gw) = start(&unique_instance("expiry"), OIDC, &[]).await;
    let exp = now_secs() + 3;
    let bearer = format!("Bearer {}", jwt("alice", exp));

    // The connect answer carries the token's exp.
    let direct = json!({"action":"connect","token":"direct-check",
                        "request":{"url":"/api/sse/stream?request_id=direct","headers":{"authorization":bearer}}});
    let r = send_json(s.backend, "/api/sse/callback", &direct).await;
    assert_eq!((r.status, r.json()), (200, json!({"expires_at": exp})));
    let bye = json!({"action":"disconnect","reason":"client_closed","token":"direct-check",
                     "request":{"url":"/api/sse/stream?request_id=direct","headers":{}}});
    assert_eq!(send_json(s.backend, "/api/sse/callback", &bye).await.status, 200);

    let mut expiring = open(gw.addr, "alice", &[("Authorization", bearer.as_bytes())]).await;
    let mut anonymous = open(gw.addr, "anon", &[]).await;
    assert_eq!(s.demo.manager.connection_info("alice").and_then(|c| c.subject).as_deref(), Some("alice"));
    loop {
        match expiring.next_frame().await {
            Frame::Comment(_) => continue,
            Frame::Event(e) => {
                assert_eq!((e.event_type.as_str(), e.data.as_str()), ("auth_expired", "{}"), "{e:?}");
                break;
            }
            Frame::Retry(ms) => panic!("retry hint {ms} before auth_expired"),
        }
    }
    let ended_at = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    assert!(ended_at >= Duration::from_secs(exp) - Duration::from_millis(50), "not before exp: {ended_at:?}");
    let rest = expiring.read_to_end().await;
    assert!(expiring.ended_cleanly(), "the gateway ended the stream");
    let retry: Vec<u64> = rest.iter().filter_map(|f| if let Frame::Retry(ms) = f { Some(*ms) } else { None }).collect();
    assert!(matches!(retry.as_slice(), [ms] if (1000..=5000).contains(ms)), "one retry hint of 1-5 s: {rest:?}");
    assert!(rest.iter().all(|f| !matches!(f, Frame::Event(_))), "nothing after auth_expired: {rest:?}");
    // Its disconnect callback reached the backend; the stream without a token is untouched.
    poll_until("the expired stream's disconnect", Instant::now() + SLACK, async || {
        (!s.demo.manager.has_connection("alice")).then_some(())
    })
    .await;
    let r = send_json(s.backend, "/demo/broadcast", &json!({"name":"marker","data":{}})).await;
    assert_eq!(r.json(), json!({"delivered": true}));
    let e = anonymous.next_event().await;
    let envelope: Value = serde_json::from_str(&e.data).expect("envelope");
    assert_eq!(envelope["type"], "marker", "the stream without a credential stays open past exp");
}
