//! The hub with an external gateway (`SSE_GATEWAY_URL`): the real
//! `sse-gateway` binary holds the streams and calls the hub's
//! `/api/sse/callback`; the hub sends over HTTP (publish by key, with the
//! gateway's bearer secret).

mod support;

use serde_json::json;
use sse_testkit::{Process, SseClient};
use support::{Hub, wait_for};

#[tokio::test]
async fn with_an_external_gateway_tasks_and_nudges_reach_the_gateways_streams() {
    // The gateway must know the hub's callback URL before the hub knows the
    // gateway's: take a free port for the hub first.
    let hub_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let callback = format!("http://127.0.0.1:{hub_port}/api/sse/callback");
    let gw_bin = sse_testkit::workspace_bin("sse-gateway");
    let gw = Process::spawn(
        gw_bin.to_str().expect("utf-8 path"),
        &[],
        &[("LISTEN_ADDR", "127.0.0.1:0"), ("CALLBACK_URL", &callback), ("INTERNAL_API_SECRET", "gw-secret")],
    )
    .await;
    let gw_url = format!("http://{}", gw.addr);
    let port = hub_port.to_string();
    let hub = Hub::start_on(
        &port,
        &["--sse-gateway-url", &gw_url, "--sse-gateway-secret", "gw-secret", "--sse-gateway-publish"],
        &[],
    )
    .await;
    assert_eq!(hub.addr().port(), hub_port);

    let mut c = SseClient::open(gw.addr, "/api/sse/stream?request_id=ext-1", &[]).await;
    assert_eq!(c.head.status, 200);
    loop {
        if c.next_event().await.event_type == "ready" {
            break;
        }
    }
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
}
