//! Black-box test of paced connect callbacks (extension): at most
//! `MAX_CONCURRENT_CALLBACKS` in flight, the rest wait in a FIFO queue
//! bounded by `MAX_QUEUED_CONNECTS`, a client that leaves while waiting
//! leaves the queue (the backend never hears of it), and beyond the queue a
//! new stream is refused at once.

mod support;

use sse_testkit::{Backend, Reply, SseClient, request};
use support::{gateway, wait_for_metric};

const WAITING: &str = "sse_gateway_connects_waiting ";

fn open(addr: std::net::SocketAddr, request_id: &str) -> tokio::task::JoinHandle<SseClient> {
    let path = format!("/s?request_id={request_id}");
    tokio::spawn(async move { SseClient::open(addr, &path, &[]).await })
}

#[tokio::test]
async fn connects_beyond_the_limit_wait_in_a_bounded_fifo_queue_that_a_leaver_leaves() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(
        &backend,
        &[("MAX_CONCURRENT_CALLBACKS", "2"), ("MAX_QUEUED_CONNECTS", "1"), ("CALLBACK_TIMEOUT_MS", "30000")],
    )
    .await;
    let _a = open(gw.addr, "a");
    let _b = open(gw.addr, "b");
    let first = backend.expect("connect").await;
    let second = backend.expect("connect").await;
    // Two in flight: the third waits for a slot.
    let leaver = open(gw.addr, "leaver");
    wait_for_metric(&gw, WAITING, 1.0).await;
    // The queue is full: the fourth is refused at once.
    let r = request(gw.addr, "GET", "/s?request_id=refused", &[], b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("BACKEND_UNAVAILABLE")));
    wait_for_metric(&gw, "sse_gateway_streams_refused_total{reason=\"callbacks_busy\"}", 1.0).await;
    // The waiting client leaves: it leaves the queue.
    leaver.abort();
    wait_for_metric(&gw, WAITING, 0.0).await;
    let _next = open(gw.addr, "next");
    wait_for_metric(&gw, WAITING, 1.0).await;
    // A slot frees: the next call is the waiting client's, never the leaver's.
    first.answer(Reply::ok("{}"));
    let third = backend.expect("connect").await;
    assert!(third.body["request"]["url"].as_str().unwrap().ends_with("request_id=next"), "{}", third.body);
    wait_for_metric(&gw, WAITING, 0.0).await;
    second.answer(Reply::ok("{}"));
    third.answer(Reply::ok("{}"));
}
