//! The hub with an external gateway (`SSE_GATEWAY_URL`): the real
//! `sse-gateway` binary holds the streams and calls the hub's
//! `/api/sse/callback`; the hub sends over HTTP (publish by key, with the
//! gateway's bearer secret). The gateway's own request counters show which
//! way each event went, so a publish that silently fell back to per-token
//! sends cannot pass for a working publish.

mod support;

use serde_json::json;
use sse_testkit::{Process, Relay, SseClient, request};
use support::{Hub, wait_for};

const PUBLISH_OK: &str = "sse_gateway_api_requests_total{endpoint=\"publish\",status=\"200\"}";
const PUBLISH_UNAUTHORIZED: &str = "sse_gateway_api_requests_total{endpoint=\"publish\",status=\"401\"}";
const SEND_OK: &str = "sse_gateway_api_requests_total{endpoint=\"send\",status=\"200\"}";

/// A gateway whose publish needs `gw-secret` and a hub publishing to it with
/// `hub_secret`, each on 127.0.0.1:0. The gateway must know the hub's callback
/// URL before the hub exists, so it calls back through a relay that is
/// pointed at the hub once the hub listens.
async fn hub_behind_gateway(hub_secret: &str) -> (Hub, Process, Relay) {
    let relay = Relay::start().await;
    let callback = format!("http://{}/api/sse/callback", relay.addr);
    let gw_bin = sse_testkit::workspace_bin("sse-gateway");
    let gw = Process::spawn(
        gw_bin.to_str().expect("utf-8 path"),
        &[],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("INTERNAL_LISTEN", "127.0.0.1:0"),
            ("CALLBACK_URL", &callback),
            ("INTERNAL_API_SECRET", "gw-secret"),
        ],
    )
    .await;
    let gw_url = format!("http://{}", gw.addr);
    let hub =
        Hub::start(&["--sse-gateway-url", &gw_url, "--sse-gateway-secret", hub_secret, "--sse-gateway-publish"], &[])
            .await;
    relay.forward_to(hub.addr());
    (hub, gw, relay)
}

async fn open_through(gw: &Process, request_id: &str) -> SseClient {
    let mut c = SseClient::open(gw.addr, &format!("/api/sse/stream?request_id={request_id}"), &[]).await;
    assert_eq!(c.head.status, 200);
    while c.next_event().await.event_type != "ready" {}
    c
}

/// A counter of the gateway's (0 while the line is absent).
async fn gateway_metric(gw: &Process, line_prefix: &str) -> f64 {
    let r = request(gw.internal_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn with_an_external_gateway_tasks_and_nudges_reach_the_streams_through_publish() {
    let (hub, gw, _relay) = hub_behind_gateway("gw-secret").await;
    let mut c = open_through(&gw, "ext-1").await;
    let sends_before = gateway_metric(&gw, SEND_OK).await;

    let r = hub.post("/api/tasks", &json!({"task_type":"demo","params":{"steps":2,"delay_ms":20}})).await;
    assert_eq!(r.status, 201);
    let id = r.json()["task_id"].as_str().expect("task_id").to_owned();
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("task_completed") {
        let (p, _) = wait_for(&mut c, "task_event").await;
        if p["task_id"] == id.as_str() {
            kinds.push(p["event_type"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(kinds, ["task_started", "progress_update", "progress_update", "task_completed"]);
    assert_eq!(hub.post("/internal/rotation-nudge", &json!({})).await.status, 200);
    let (payload, _) = wait_for(&mut c, "rotation-updated").await;
    assert_eq!(payload, json!({}));

    assert_eq!(gateway_metric(&gw, PUBLISH_OK).await, 5.0, "four task events and the nudge, one publish each");
    assert_eq!(gateway_metric(&gw, SEND_OK).await, sends_before, "nothing went per token");
    assert_eq!(gateway_metric(&gw, PUBLISH_UNAUTHORIZED).await, 0.0);
    assert!(!hub.process.stderr().iter().any(|l| l.contains("refused /internal/publish")));
}

#[tokio::test]
async fn a_wrong_publish_secret_is_reported_and_events_still_arrive_per_token() {
    let (hub, gw, _relay) = hub_behind_gateway("not-the-gw-secret").await;
    let mut c = open_through(&gw, "ext-2").await;
    let sends_before = gateway_metric(&gw, SEND_OK).await;

    assert_eq!(hub.post("/internal/rotation-nudge", &json!({})).await.status, 200);
    let (payload, _) = wait_for(&mut c, "rotation-updated").await;
    assert_eq!(payload, json!({}), "the fallback delivers the event");

    assert_eq!(gateway_metric(&gw, PUBLISH_UNAUTHORIZED).await, 1.0, "the publish was tried and refused");
    assert_eq!(gateway_metric(&gw, PUBLISH_OK).await, 0.0);
    assert_eq!(gateway_metric(&gw, SEND_OK).await, sends_before + 1.0, "then sent per token");
    let report = hub.process.wait_for_log("refused /internal/publish").await;
    assert!(report.contains("WARN") && report.contains("SSE_GATEWAY_SECRET"), "{report}");
    assert!(!hub.process.stderr().iter().any(|l| l.contains("not-the-gw-secret")), "the secret is never logged");
}
