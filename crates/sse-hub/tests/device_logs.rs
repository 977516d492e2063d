//! Black-box: device logs through the real `sse-hub` binary, from the real
//! Mosquitto (`SSE_TEST_MQTT_URL`, required: the test fails without it) on a
//! topic unique to this run, and through the HTTP ingest route without a
//! broker. Logs reach subscribed streams only. A private Mosquitto
//! (`MosquittoNode`) is restarted under a running hub to show that the hub
//! resubscribes and logs flow again.

mod support;

use std::time::Duration;

use serde_json::json;
use sse_testkit::MosquittoNode;
use support::{Hub, mqtt_publish, mqtt_url, next_app, wait_for};

#[tokio::test]
async fn mqtt_logs_reach_only_subscribed_streams_cleaned_and_bad_lines_counted() {
    let url = mqtt_url().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("sse-hub-test/{run}/logsink");
    let client_id = format!("sse-hub-test-{run}");
    let hub = Hub::start(&["--mqtt-url", &url, "--mqtt-topic", &topic, "--mqtt-client-id", &client_id], &[]).await;
    hub.process.wait_for_log("subscribed to the log topic").await;
    let (mut a, _) = hub.open("la").await;
    let (mut b, _) = hub.open("lb").await;
    let r = hub
        .post("/api/device-logs/subscribe", &json!({"request_id": "la", "device_entity_id": "sensor.kitchen"}))
        .await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "subscribed", "device_entity_id": "sensor.kitchen"})));

    let msg = "{\"entity_id\":\"sensor.kitchen\",\"message\":\"\\u001b[31mhot\\u001b[0m\",\"relative_time\":12,\"level\":\"W\"}\n\
               this is not json\n\
               {\"entity_id\":\"sensor.other\",\"message\":\"nobody listens\"}\n\
               {\"entity_id\":\"sensor.kitchen\",\"message\":\"second\"}\n";
    mqtt_publish(&url, &topic, msg.as_bytes()).await;
    let (ty, p) = next_app(&mut a).await;
    assert_eq!(ty, "device-logs");
    assert_eq!(p["device_entity_id"], "sensor.kitchen");
    let logs = p["logs"].as_array().expect("logs");
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["message"], "hot", "ANSI stripped");
    assert_eq!(logs[0]["level"], "W");
    assert!(logs[0].get("relative_time").is_none(), "relative_time removed");
    assert!(logs[0]["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')));
    assert_eq!(logs[1]["message"], "second");

    // b is not subscribed: the first thing it sees is the barrier.
    assert_eq!(hub.post("/internal/rotation-nudge", &json!({})).await.status, 200);
    assert_eq!(next_app(&mut b).await.0, "rotation-updated");
    assert_eq!(next_app(&mut a).await.0, "rotation-updated", "a got nothing for sensor.other");
    assert!(hub.metric("sse_hub_device_log_lines_total{outcome=\"parse_error\"}").await >= 1.0);
    assert!(hub.metric("sse_hub_mqtt_connected").await >= 1.0);

    // Unsubscribed: no more logs.
    let r = hub
        .post("/api/device-logs/unsubscribe", &json!({"request_id": "la", "device_entity_id": "sensor.kitchen"}))
        .await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "unsubscribed"})));
    mqtt_publish(&url, &topic, b"{\"entity_id\":\"sensor.kitchen\",\"message\":\"late\"}\n").await;
    assert_eq!(hub.post("/internal/rotation-nudge", &json!({})).await.status, 200);
    let (_, skipped) = wait_for(&mut a, "rotation-updated").await;
    assert!(skipped.is_empty(), "nothing after unsubscribe: {skipped:?}");
}

#[tokio::test]
async fn http_ingest_works_without_a_broker_and_subscribe_errors_have_their_statuses() {
    let hub = Hub::start(&[], &[]).await;
    let (mut a, _) = hub.open("ha").await;
    let sub = json!({"request_id": "ha", "device_entity_id": "light.hall"});
    assert_eq!(hub.post("/api/device-logs/subscribe", &sub).await.status, 200);
    assert_eq!(hub.post("/api/device-logs/subscribe", &sub).await.status, 200, "idempotent");

    let body = b"{\"entity_id\":\"light.hall\",\"message\":\"on\"}\n[]\n{\"message\":\"no entity\"}\n";
    let r = sse_testkit::request(hub.addr(), "POST", "/internal/device-logs/ingest", &[], body).await;
    assert_eq!((r.status, r.json()), (200, json!({"accepted": 1, "rejected": 2, "delivered": 1})));
    let (ty, p) = next_app(&mut a).await;
    assert_eq!((ty.as_str(), &p["logs"][0]["message"]), ("device-logs", &json!("on")));

    let r =
        hub.post("/api/device-logs/subscribe", &json!({"request_id": "not-connected", "device_entity_id": "x"})).await;
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("AUTHORIZATION_FAILED")));
    let r = hub.post("/api/device-logs/unsubscribe", &json!({"request_id": "ha", "device_entity_id": "never"})).await;
    assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("RECORD_NOT_FOUND")));
    let r = hub.post("/api/device-logs/subscribe", &json!({"request_id": "ha", "device_id": 3})).await;
    assert_eq!(r.status, 400, "unknown fields and missing device_entity_id are refused");
}

/// How long after the broker is back the hub may take to resubscribe: its
/// reconnect backoff doubles from 0.5 s up to 30 s, so the next attempt can
/// be up to 30 s away, plus the attempt itself on a loaded machine.
const RESUBSCRIBE_WAIT: Duration = Duration::from_secs(30 + 15);

#[tokio::test]
async fn after_a_broker_restart_the_hub_resubscribes_and_logs_flow_again() {
    let mut broker = MosquittoNode::start().await;
    let url = broker.url();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("sse-hub-test/{run}/logsink");
    let client_id = format!("sse-hub-restart-{run}");
    let hub = Hub::start(&["--mqtt-url", &url, "--mqtt-topic", &topic, "--mqtt-client-id", &client_id], &[]).await;
    hub.process.wait_for_log("subscribed to the log topic").await;
    let (mut c, _) = hub.open("restart").await;
    let sub = json!({"request_id": "restart", "device_entity_id": "sensor.restart"});
    assert_eq!(hub.post("/api/device-logs/subscribe", &sub).await.status, 200);
    mqtt_publish(&url, &topic, b"{\"entity_id\":\"sensor.restart\",\"message\":\"before\"}\n").await;
    let (ty, p) = next_app(&mut c).await;
    assert_eq!((ty.as_str(), &p["logs"][0]["message"]), ("device-logs", &json!("before")));

    // The broker keeps no state across the restart (persistence off): only a
    // new SUBSCRIBE from the hub makes the topic reach it again.
    broker.stop().await;
    hub.process.wait_for_log("MQTT connection failed").await;
    assert_eq!(hub.metric("sse_hub_mqtt_connected").await, 0.0);
    broker.boot().await;
    hub.process.wait_for_logs_within("subscribed to the log topic", 2, RESUBSCRIBE_WAIT).await;
    assert_eq!(hub.metric("sse_hub_mqtt_connected").await, 1.0);

    mqtt_publish(&url, &topic, b"{\"entity_id\":\"sensor.restart\",\"message\":\"after\"}\n").await;
    let (ty, p) = next_app(&mut c).await;
    assert_eq!((ty.as_str(), &p["logs"][0]["message"]), ("device-logs", &json!("after")), "{}", broker.log());
}
