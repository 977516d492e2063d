//! Black-box test of stalled sockets (extension): a client that stops
//! reading is closed within seconds of its socket taking nothing while data
//! waits, counted and logged with its peer, while a healthy stream beside it
//! gets everything.

mod support;

use serde_json::json;
use sse_testkit::{Backend, within};
use support::{DEFAULT_BINDINGS, event, gateway, publish, stream, wait_for_metric};

const EVENTS: usize = 400;

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_a_healthy_one_gets_everything() {
    let backend = Backend::start().await;
    let gw = gateway(
        &backend,
        &[
            DEFAULT_BINDINGS,
            ("STREAM_STALL_SECONDS", "2"),
            ("STREAM_SNDBUF_BYTES", "8192"),
            // Large enough that the queue bound is not what closes it.
            ("STREAM_QUEUE_BYTES", "67108864"),
        ],
    )
    .await;
    let (_stalled, stalled_token) = stream(&gw, &backend, "/s?request_id=stuck").await;
    let (mut healthy, _) = stream(&gw, &backend, "/s?request_id=fine").await;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < EVENTS {
            let e = healthy.next_event().await;
            assert!(e.data.contains("\"type\":\"blob\""), "{}", e.data);
            n += 1;
        }
        (n, healthy)
    });
    // 400 events of 4 KiB: far more than the stalled client's socket buffers take.
    let blob = "x".repeat(4096);
    for _ in 0..EVENTS / 100 {
        let messages: Vec<_> =
            (0..100).map(|_| json!({"key": "broadcast", "event": event("blob", &json!(blob).to_string())})).collect();
        let (status, _) = publish(&gw, json!({"messages": messages})).await;
        assert_eq!(status, 200);
    }
    let (received, _healthy) = within("the healthy stream's events", reader).await.expect("reader");
    assert_eq!(received, EVENTS);
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (stalled_token, Some("error")));
    wait_for_metric(&gw, "sse_gateway_queue_overflows_total{reason=\"stalled\"}", 1.0).await;
    let line = gw.wait_for_log("closed a stalled stream").await;
    assert!(line.contains("peer=\"127.0.0.1:"), "{line}");
}
