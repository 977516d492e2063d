//! Black-box tests: the demo backend (`examples/demo_backend.rs`, built with
//! this crate, served in-process on 127.0.0.1:0) behind the real `sse-gateway`
//! binary, driven by real SSE clients over TCP. Every stream's first event is
//! the `version` notice and its second is `ready` (docs/BACKEND.md, Version notices).

#[path = "../examples/demo_backend.rs"]
#[allow(dead_code)]
mod demo_backend;

use std::collections::HashMap;

use demo_backend::Demo;
use serde_json::{Value, json};
use sse_backend::config::BackendConfig;
use sse_testkit::{Process, SseClient, request, send_json, within};

struct Setup {
    gw: Process,
    backend: std::net::SocketAddr,
    demo: Demo,
}

/// Starts the demo backend and a gateway whose callback points at it.
async fn start(extra: &[(&str, &str)]) -> Setup {
    start_with(extra, &[]).await
}

/// Same, with extra gateway environment.
async fn start_with(extra: &[(&str, &str)], gateway_env: &[(&str, &str)]) -> Setup {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let backend = listener.local_addr().expect("backend addr");
    let bin = sse_testkit::workspace_bin("sse-gateway");
    let callback = format!("http://{backend}/api/sse/callback");
    let mut genv = vec![("LISTEN_ADDR", "127.0.0.1:0"), ("CALLBACK_URL", callback.as_str())];
    genv.extend_from_slice(gateway_env);
    let gw = Process::spawn(bin.to_str().expect("utf-8 path"), &[], &genv).await;
    let mut env: HashMap<String, String> = HashMap::from([
        ("SSE_GATEWAY_URL".to_owned(), format!("http://{}", gw.addr)),
        ("FRONTEND_VERSION_URL".to_owned(), format!("http://{backend}/version.json")),
    ]);
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = BackendConfig::from_lookup(|k| env.get(k).cloned()).expect("config");
    let (demo, router) = Demo::build(config);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Setup { gw, backend, demo }
}

/// The application event in the gateway's `{type,payload}` envelope.
fn envelope(e: &sse_wire::ParsedEvent) -> (String, Value) {
    assert_eq!(e.event_type, "message", "application events are unnamed: {e:?}");
    let v: Value = serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("envelope {:?}: {err}", e.data));
    (v["type"].as_str().unwrap_or_default().to_owned(), v["payload"].clone())
}

async fn next_app(c: &mut SseClient) -> (String, Value) {
    let e = c.next_event().await;
    envelope(&e)
}

/// Opens a stream for `rid`; checks `version` then `ready`; returns the
/// stream and the version payload.
async fn open(s: &Setup, rid: &str, headers: &[(&str, &[u8])]) -> (SseClient, Value) {
    let mut c = SseClient::open(s.gw.addr, &format!("/api/sse/stream?request_id={rid}"), headers).await;
    assert_eq!(c.head.status, 200);
    let (name, payload) = next_app(&mut c).await;
    assert_eq!(name, "version", "the version notice comes first");
    assert_eq!(c.next_event().await.event_type, "ready", "and before ready");
    (c, payload)
}

async fn post(s: &Setup, path: &str, body: Value) -> (u16, Value) {
    let r = send_json(s.backend, path, &body).await;
    (r.status, r.json())
}

#[tokio::test]
async fn version_on_connect_arrives_before_ready_and_unknown_when_the_fetch_fails() {
    let s = start(&[]).await;
    let (_c, v) = open(&s, "r1", &[]).await;
    assert_eq!(v, json!({"version": "v1"}), "fetched version.json, verbatim");
    *s.demo.frontend_version.lock().unwrap() = None;
    let (_c2, v) = open(&s, "r2", &[]).await;
    assert_eq!(v["version"], "unknown");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

#[tokio::test]
async fn version_push_reaches_open_streams_and_a_reconnect_with_that_id_gets_it_before_ready() {
    let s = start(&[]).await;
    let (mut a, _) = open(&s, "ra", &[]).await;
    let (mut b, _) = open(&s, "rb", &[]).await;
    let (status, body) =
        post(&s, "/api/testing/deployments/version", json!({"request_id":"ra","version":"v2","changelog":"new"})).await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"request_id":"ra","delivered":true,"status":"delivered"}));
    for c in [&mut a, &mut b] {
        assert_eq!(next_app(c).await, ("version".to_owned(), json!({"version":"v2","changelog":"new"})));
    }
    a.close().await;
    let (_a2, v) = open(&s, "ra", &[]).await;
    assert_eq!(v, json!({"version":"v2","changelog":"new"}), "pending version for that request_id");
}

#[tokio::test]
async fn a_resumed_stream_is_the_same_client_and_is_not_sent_its_version_twice() {
    let s =
        start_with(&[("SSE_GATEWAY_SECRET", "s3")], &[("HISTORY_SECONDS", "60"), ("INTERNAL_API_SECRET", "s3")]).await;
    let (a, v) = open(&s, "ra", &[]).await;
    assert_eq!(v, json!({"version": "v1"}));
    let last =
        String::from_utf8_lossy(a.raw()).lines().filter_map(|l| l.strip_prefix("id: ")).next_back().map(str::to_owned);
    let last = last.expect("with history, ready carries an id");
    a.close().await;
    // EventSource comes back with Last-Event-ID: no second version notice.
    let mut again =
        SseClient::open(s.gw.addr, "/api/sse/stream?request_id=ra", &[("Last-Event-ID", last.as_bytes())]).await;
    assert_eq!(again.next_event().await.event_type, "ready", "nothing replayed, nothing re-sent");
    // A version pushed for it while it was away does reach it.
    again.close().await;
    let (status, _) = post(&s, "/api/testing/deployments/version", json!({"request_id":"ra","version":"v2"})).await;
    assert_eq!(status, 202);
    let mut third =
        SseClient::open(s.gw.addr, "/api/sse/stream?request_id=ra", &[("Last-Event-ID", last.as_bytes())]).await;
    assert_eq!(next_app(&mut third).await, ("version".to_owned(), json!({"version": "v2"})));
    // A backend reads the position to hand out with a snapshot.
    let http = sse_backend::broadcaster::HttpBroadcaster::new(sse_backend::broadcaster::HttpBroadcasterConfig {
        secret: Some("s3".into()),
        ..sse_backend::broadcaster::HttpBroadcasterConfig::new(format!("http://{}", s.gw.addr))
    });
    use sse_backend::broadcaster::Broadcaster;
    let position = http.history_position().await.expect("position");
    assert!(position.is_some_and(|p| !p.is_empty()));
}

#[tokio::test]
async fn replacement_closes_the_old_stream_and_events_reach_only_the_new_one() {
    let s = start(&[]).await;
    let (mut old, _) = open(&s, "same", &[]).await;
    let (mut new, _) = open(&s, "same", &[]).await;
    let rest = old.read_to_end().await;
    assert!(old.ended_cleanly(), "the old stream was closed by the gateway");
    assert!(rest.iter().all(|f| !matches!(f, sse_wire::Frame::Event(_))), "no event after replacement: {rest:?}");
    let (_, body) = post(&s, "/demo/send", json!({"request_id":"same","name":"hello","data":{"n":1}})).await;
    assert_eq!(body, json!({"delivered": true}));
    assert_eq!(next_app(&mut new).await, ("hello".to_owned(), json!({"n":1})));
    assert_eq!(s.demo.manager.len(), 1, "one mapping, no drift");
    let metrics = request(s.backend, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("sse_gateway_active_connections 1"), "{text}");
}

#[tokio::test]
async fn broadcast_reaches_every_stream_by_per_token_sends() {
    let s = start(&[]).await;
    let mut clients = Vec::new();
    for n in 0..3 {
        clients.push(open(&s, &format!("r{n}"), &[]).await.0);
    }
    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"rotation-updated","data":{}})).await;
    assert_eq!(body, json!({"delivered": true}));
    for c in &mut clients {
        assert_eq!(next_app(c).await, ("rotation-updated".to_owned(), json!({})));
    }
    let (sends, publishes) = s.demo.broadcaster.request_counts();
    assert_eq!(publishes, 0);
    assert!(sends >= 3);
}

#[tokio::test]
async fn broadcast_and_subject_sends_are_one_publish_call_when_the_gateway_publishes() {
    let s = start_with(
        &[("SSE_GATEWAY_PUBLISH", "true"), ("SSE_GATEWAY_SECRET", "k3y")],
        &[("INTERNAL_API_SECRET", "k3y")],
    )
    .await;
    let (mut a, _) = open(&s, "ra", &[]).await;
    let (mut b, _) = open(&s, "rb", &[]).await;
    let before = s.demo.broadcaster.request_counts();
    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"all","data":{"n":1}})).await;
    assert_eq!(body, json!({"delivered": true}));
    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"mine","data":{},"subject":"alice"})).await;
    assert_eq!(body, json!({"delivered": true}), "OIDC off: local-user streams get subject sends");
    for c in [&mut a, &mut b] {
        assert_eq!(next_app(c).await, ("all".to_owned(), json!({"n":1})));
        assert_eq!(next_app(c).await.0, "mine");
    }
    let after = s.demo.broadcaster.request_counts();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 2), "(sends, publishes): one publish per broadcast");
}

#[tokio::test]
async fn publish_refused_by_the_gateway_falls_back_to_per_token_sends() {
    // No INTERNAL_API_SECRET on the gateway: publish on the public port is 401.
    let s = start(&[("SSE_GATEWAY_PUBLISH", "true")]).await;
    let (mut a, _) = open(&s, "ra", &[]).await;
    let (mut b, _) = open(&s, "rb", &[]).await;
    let before = s.demo.broadcaster.request_counts();
    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"all","data":{}})).await;
    assert_eq!(body, json!({"delivered": true}));
    for c in [&mut a, &mut b] {
        assert_eq!(next_app(c).await.0, "all");
    }
    let after = s.demo.broadcaster.request_counts();
    assert_eq!((after.0 - before.0, after.1 - before.1), (2, 1), "(sends, publishes)");
}

/// The key of the fixture JWKS (`kid` `test-key-1`).
const SIGNING_KEY: &[u8] = include_bytes!("fixtures/jwt-test-key.pem");
/// A key the JWKS does not hold: a forger's.
const FORGER_KEY: &[u8] = include_bytes!("fixtures/jwt-forger-key.pem");

/// A JWT with `kid` `test-key-1` and `claims`, signed with `key_pem`.
fn sign(key_pem: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// Claims the demo backend accepts (issuer, audience, expiry in 10 min) for `sub`.
fn claims(sub: &str) -> Value {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    json!({"sub": sub, "iss": "https://issuer.test", "aud": "demo", "exp": exp})
}

fn jwt(sub: &str) -> String {
    sign(SIGNING_KEY, &claims(sub))
}

const OIDC: &[(&str, &str)] = &[
    ("OIDC_ENABLED", "true"),
    ("OIDC_ISSUER_URL", "https://issuer.test"),
    ("OIDC_AUDIENCE", "demo"),
    ("OIDC_JWKS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json")),
];

#[tokio::test]
async fn per_subject_send_reaches_only_that_subject_and_unbound_streams_are_left_out() {
    let s = start(OIDC).await;
    let alice_cookie = format!("access_token={}", jwt("alice"));
    let bob_bearer = format!("Bearer {}", jwt("bob"));
    let (mut alice, _) = open(&s, "ra", &[("Cookie", alice_cookie.as_bytes())]).await;
    let (mut bob, _) = open(&s, "rb", &[("Authorization", bob_bearer.as_bytes())]).await;
    let (mut anon, _) = open(&s, "rn", &[("Cookie", b"access_token=garbage")]).await;
    assert_eq!(s.demo.manager.connection_info("ra").and_then(|c| c.subject).as_deref(), Some("alice"));
    assert_eq!(s.demo.manager.connection_info("rn").and_then(|c| c.subject), None, "bad token: open but unbound");
    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"for-alice","data":{"x":1},"subject":"alice"})).await;
    assert_eq!(body, json!({"delivered": true}));
    // An unfiltered marker after it: the others see the marker first, so they got nothing before it.
    post(&s, "/demo/broadcast", json!({"name":"marker","data":{}})).await;
    assert_eq!(next_app(&mut alice).await.0, "for-alice");
    assert_eq!(next_app(&mut alice).await.0, "marker");
    assert_eq!(next_app(&mut bob).await.0, "marker");
    assert_eq!(next_app(&mut anon).await.0, "marker", "unbound streams still get unfiltered broadcasts");
    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"x","data":{},"subject":"carol"})).await;
    assert_eq!(body, json!({"delivered": false}), "no subject match");
}

#[tokio::test]
async fn per_subject_send_reaches_local_user_streams_when_oidc_is_off() {
    let s = start(&[]).await;
    let (mut a, _) = open(&s, "ra", &[]).await;
    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"task_event","data":{"k":1},"subject":"alice"})).await;
    assert_eq!(body, json!({"delivered": true}));
    assert_eq!(next_app(&mut a).await, ("task_event".to_owned(), json!({"k":1})));
}

fn task_events(ev: &(String, Value), task_id: &str) -> bool {
    ev.0 == "task_event" && ev.1["task_id"] == task_id
}

#[tokio::test]
async fn task_full_event_sequence_arrives_in_order_and_the_stream_stays_open() {
    let s = start(&[]).await;
    let (mut c, _) = open(&s, "r1", &[]).await;
    let (status, body) =
        post(&s, "/demo/tasks/start", json!({"task_type":"demo_task","params":{"steps":3,"delay_ms":5}})).await;
    assert_eq!(status, 200);
    let id = body["task_id"].as_str().expect("task_id").to_owned();
    let mut seen = Vec::new();
    loop {
        let ev = next_app(&mut c).await;
        assert!(task_events(&ev, &id), "{ev:?}");
        let t = ev.1["event_type"].as_str().unwrap_or_default().to_owned();
        seen.push((t.clone(), ev.1["data"].clone()));
        assert!(ev.1["timestamp"].as_str().is_some_and(|ts| ts.ends_with('Z')));
        if t == "task_completed" {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            ("task_started".to_owned(), Value::Null),
            ("progress_update".to_owned(), json!({"text":"Step 1/3","value":1.0/3.0})),
            ("progress_update".to_owned(), json!({"text":"Step 2/3","value":2.0/3.0})),
            ("progress_update".to_owned(), json!({"text":"Step 3/3","value":1.0})),
            ("task_completed".to_owned(), json!({"status":"success"})),
        ]
    );
    let status = request(s.backend, "GET", &format!("/api/tasks/{id}/status"), &[], b"").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "completed");
    // task_completed does not close the stream: a later event still arrives.
    post(&s, "/demo/send", json!({"request_id":"r1","name":"after","data":{}})).await;
    assert_eq!(next_app(&mut c).await.0, "after");
    let del = request(s.backend, "DELETE", &format!("/api/tasks/{id}"), &[], b"").await;
    assert_eq!(del.status, 200);
    let gone = request(s.backend, "GET", &format!("/api/tasks/{id}/status"), &[], b"").await;
    assert_eq!((gone.status, gone.json()), (404, json!({"error":"Task not found"})));
}

#[tokio::test]
async fn task_failure_cancel_and_timeout_events_arrive() {
    let s = start(&[("TASK_TIMEOUT_SECONDS", "1")]).await;
    let (mut c, _) = open(&s, "r1", &[]).await;
    async fn run_until_end(c: &mut SseClient, id: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        loop {
            let ev = next_app(c).await;
            if !task_events(&ev, id) {
                continue;
            }
            let t = ev.1["event_type"].as_str().unwrap_or_default().to_owned();
            out.push((t.clone(), ev.1["data"].clone()));
            if ["task_completed", "task_failed", "task_cancelled"].contains(&t.as_str()) {
                return out;
            }
        }
    }
    // failure
    let (_, body) =
        post(&s, "/demo/tasks/start", json!({"task_type":"failing_task","params":{"error_message":"nope"}})).await;
    let id = body["task_id"].as_str().expect("id").to_owned();
    let evs = run_until_end(&mut c, &id).await;
    assert_eq!(evs.last(), Some(&("task_failed".to_owned(), json!({"error":"nope"}))));
    // cancel via the API, once the task is running
    let (_, body) = post(&s, "/demo/tasks/start", json!({"task_type":"waiting_task"})).await;
    let id = body["task_id"].as_str().expect("id").to_owned();
    assert_eq!(next_app(&mut c).await.1["event_type"], "task_started");
    assert_eq!(next_app(&mut c).await.1["data"]["text"], "waiting");
    let cancel = request(s.backend, "POST", &format!("/api/tasks/{id}/cancel"), &[], b"").await;
    assert_eq!((cancel.status, cancel.json()["success"].clone()), (200, json!(true)));
    let evs = run_until_end(&mut c, &id).await;
    assert_eq!(evs, vec![("task_cancelled".to_owned(), Value::Null)]);
    let again = request(s.backend, "POST", &format!("/api/tasks/{id}/cancel"), &[], b"").await;
    assert_eq!(again.status, 404);
    // timeout (TASK_TIMEOUT_SECONDS=1)
    let (_, body) = post(&s, "/demo/tasks/start", json!({"task_type":"waiting_task"})).await;
    let id = body["task_id"].as_str().expect("id").to_owned();
    let evs = run_until_end(&mut c, &id).await;
    let (t, data) = evs.last().expect("an end").clone();
    assert_eq!(t, "task_failed");
    assert_eq!(data["code"], "TASK_TIMEOUT");
    let status = request(s.backend, "GET", &format!("/api/tasks/{id}/status"), &[], b"").await;
    assert_eq!(status.json()["status"], "failed");
}

#[tokio::test]
async fn disconnect_clears_subscriptions_and_forward_reaches_subscribers_only() {
    let s = start(&[]).await;
    let (mut a, _) = open(&s, "ra", &[]).await;
    let (mut b, _) = open(&s, "rb", &[]).await;
    let (status, _) = post(&s, "/demo/subscribe", json!({"request_id":"ra","topic":"sensor.x"})).await;
    assert_eq!(status, 200);
    let (status, body) = post(&s, "/demo/subscribe", json!({"request_id":"nobody","topic":"sensor.x"})).await;
    assert_eq!((status, body["code"].clone()), (403, json!("AUTHORIZATION_FAILED")));
    let (_, body) = post(&s, "/demo/forward", json!({"topic":"sensor.x","data":{"logs":[{"message":"hi"}]}})).await;
    assert_eq!(body, json!({"sent": 1}));
    assert_eq!(next_app(&mut a).await, ("device-logs".to_owned(), json!({"logs":[{"message":"hi"}]})));
    post(&s, "/demo/broadcast", json!({"name":"marker","data":{}})).await;
    assert_eq!(next_app(&mut b).await.0, "marker", "the unsubscribed stream got nothing before the marker");
    a.close().await;
    // The disconnect callback is asynchronous: wait (bounded) for the table to empty.
    within("subscriptions cleared after disconnect", async {
        loop {
            let r = request(s.backend, "GET", "/demo/subscriptions", &[], b"").await;
            if r.json() == json!({"subscriptions": []}) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(!s.demo.manager.has_connection("ra"));
}

#[tokio::test]
async fn bad_request_id_is_rejected_in_stream_with_the_callback_message() {
    let s = start(&[]).await;
    let mut c = SseClient::open(s.gw.addr, "/api/sse/stream?request_id=task:1", &[]).await;
    assert_eq!(c.head.status, 200);
    let e = c.next_event().await;
    assert_eq!(e.event_type, "rejected");
    let v: Value = serde_json::from_str(&e.data).expect("json");
    assert_eq!(v["status"], 400);
    let cb = send_json(
        s.backend,
        "/api/sse/callback",
        &json!({"action":"connect","token":"t","request":{"url":"/s","headers":{}}}),
    )
    .await;
    assert_eq!((cb.status, cb.json()), (400, json!({"error":"Missing request_id in URL"})));
}

#[tokio::test]
async fn readiness_turns_503_once_shutdown_began_and_waits_for_tasks() {
    let s = start(&[]).await;
    let (mut c, _) = open(&s, "r1", &[]).await;
    let ready = request(s.backend, "GET", "/health/readyz", &[], b"").await;
    assert_eq!(ready.status, 200, "{:?}", String::from_utf8_lossy(&ready.body));
    let (_, body) =
        post(&s, "/demo/tasks/start", json!({"task_type":"demo_task","params":{"steps":2,"delay_ms":50}})).await;
    let id = body["task_id"].as_str().expect("id").to_owned();
    assert_eq!(next_app(&mut c).await.1["event_type"], "task_started");
    let lc = s.demo.lifecycle.clone();
    let shutdown = tokio::spawn(async move { lc.shutdown().await });
    within("shutting down", async {
        while !s.demo.lifecycle.is_shutting_down() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let r = request(s.backend, "GET", "/health/readyz", &[], b"").await;
    assert_eq!((r.status, r.json()), (503, json!({"status":"shutting down","ready":false})));
    let (status, body) = post(&s, "/demo/tasks/start", json!({"task_type":"demo_task"})).await;
    assert_eq!((status, body["code"].clone()), (409, json!("INVALID_OPERATION")));
    // The running task still completes before shutdown finishes.
    loop {
        let ev = next_app(&mut c).await;
        if ev.1["task_id"] == id.as_str() && ev.1["event_type"] == "task_completed" {
            break;
        }
    }
    within("shutdown to finish", shutdown).await.expect("shutdown task");
}

/// A stream opened with `token` (which claims to be alice) is served but gets
/// no identity: alice's subject-filtered events skip it, a subscription for
/// it is refused, the backend's own API answers 401 to the token, and the
/// failed binding is counted. A stream with a valid alice token beside it
/// gets all of that, so the test fails if binding itself is broken.
async fn assert_token_binds_no_identity(token: &str) {
    let s = start(OIDC).await;
    let forged = format!("Bearer {token}");
    let valid = format!("Bearer {}", jwt("alice"));
    let (mut bad, _) = open(&s, "rbad", &[("Authorization", forged.as_bytes())]).await;
    let (mut good, _) = open(&s, "rgood", &[("Authorization", valid.as_bytes())]).await;

    let (_, body) = post(&s, "/demo/broadcast", json!({"name":"for-alice","data":{},"subject":"alice"})).await;
    assert_eq!(body, json!({"delivered": true}));
    post(&s, "/demo/broadcast", json!({"name":"marker","data":{}})).await;
    assert_eq!(next_app(&mut good).await.0, "for-alice");
    assert_eq!(next_app(&mut good).await.0, "marker");
    assert_eq!(next_app(&mut bad).await.0, "marker", "alice's event skipped the stream with the bad token");

    async fn subscribe(s: &Setup, rid: &str, bearer: &str) -> sse_testkit::HttpResponse {
        let body = json!({"request_id": rid, "topic": "sensor.x"}).to_string();
        let headers = [("Content-Type", "application/json"), ("Authorization", bearer)];
        request(s.backend, "POST", "/demo/subscribe", &headers, body.as_bytes()).await
    }
    assert_eq!(subscribe(&s, "rgood", &valid).await.status, 200);
    let r = subscribe(&s, "rbad", &valid).await;
    assert_eq!((r.status, r.json()["code"].clone()), (403, json!("AUTHORIZATION_FAILED")), "rbad has no identity");
    assert_eq!(subscribe(&s, "rgood", &forged).await.status, 401, "the backend's API refuses the token too");

    let metrics = request(s.backend, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("sse_identity_binding_total{status=\"failed\"} 1"), "{text}");
}

#[tokio::test]
async fn jwt_with_a_known_kid_but_a_forged_signature_binds_no_identity() {
    assert_token_binds_no_identity(&sign(FORGER_KEY, &claims("alice"))).await;
}

#[tokio::test]
async fn jwt_whose_payload_was_changed_after_signing_binds_no_identity() {
    let real: Vec<String> = jwt("mallory").split('.').map(str::to_owned).collect();
    let wanted: Vec<String> = sign(FORGER_KEY, &claims("alice")).split('.').map(str::to_owned).collect();
    let tampered = format!("{}.{}.{}", real[0], wanted[1], real[2]);
    assert_token_binds_no_identity(&tampered).await;
}

#[tokio::test]
async fn jwt_from_another_issuer_binds_no_identity() {
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.test");
    assert_token_binds_no_identity(&sign(SIGNING_KEY, &c)).await;
}

#[tokio::test]
async fn jwt_without_sub_binds_no_identity() {
    let mut c = claims("alice");
    c.as_object_mut().expect("object").remove("sub");
    assert_token_binds_no_identity(&sign(SIGNING_KEY, &c)).await;
}
