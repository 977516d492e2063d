//! Black-box tests of what a client gets when the backend fails its connect
//! callback, with `RETRY_ON_BACKEND_FAILURE` (extension): a 200 stream with
//! a `retry:` hint and an end, never a status that makes `EventSource` give
//! up; and the jittered `retry:` every stream gets before `ready` so a lost
//! gateway's clients do not all come back at once.

mod support;

use std::collections::BTreeSet;

use sse_testkit::{Backend, Reply, SseClient, request};
use sse_wire::Frame;
use support::{DEFAULT_BINDINGS, gateway, metric_value};

const RETRY_ON: (&str, &str) = ("RETRY_ON_BACKEND_FAILURE", "true");

/// A stream that the gateway answers with 200, one `retry:` and the end.
async fn told_to_retry(c: &mut SseClient) -> u64 {
    assert_eq!(c.head.status, 200, "EventSource must not give up");
    assert_eq!(c.head.header("content-type"), Some("text/event-stream"));
    let Frame::Retry(ms) = c.next_frame().await else { panic!("expected a retry: hint") };
    assert!(c.read_to_end().await.is_empty() && c.ended_cleanly());
    ms
}

async fn refused(gw: &sse_testkit::Process, reason: &str) -> f64 {
    metric_value(gw, &format!("sse_gateway_streams_refused_total{{reason=\"{reason}\"}}")).await.unwrap_or(0.0)
}

#[tokio::test]
async fn a_5xx_answer_becomes_a_retry_hint_not_a_fatal_status() {
    let backend = Backend::start_with(Reply::status(503)).await;
    let gw = gateway(&backend, &[RETRY_ON]).await;
    let mut c = SseClient::open(gw.addr, "/s?request_id=a", &[]).await;
    let ms = told_to_retry(&mut c).await;
    assert!((2_000..10_000).contains(&ms), "{ms}");
    assert_eq!(refused(&gw, "backend_error").await, 1.0);
}

#[tokio::test]
async fn a_callback_timeout_becomes_a_retry_hint() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(&backend, &[RETRY_ON, ("CALLBACK_TIMEOUT_MS", "300")]).await;
    let opening = tokio::spawn({
        let addr = gw.addr;
        async move { SseClient::open(addr, "/s?request_id=slow", &[]).await }
    });
    let call = backend.expect("connect").await;
    let mut c = opening.await.expect("open");
    told_to_retry(&mut c).await;
    assert_eq!(refused(&gw, "backend_timeout").await, 1.0);
    call.answer(Reply::ok("{}"));
}

#[tokio::test]
async fn an_unreachable_backend_becomes_a_retry_hint() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[RETRY_ON]).await;
    // Its port stays reserved, refusing connections.
    let _down = backend.shutdown().await;
    let mut c = SseClient::open(gw.addr, "/s", &[]).await;
    told_to_retry(&mut c).await;
    assert_eq!(refused(&gw, "backend_unavailable").await, 1.0);
}

#[tokio::test]
async fn a_4xx_is_still_the_contract_s_in_stream_rejection() {
    let backend = Backend::start_with(Reply::status(401)).await;
    let gw = gateway(&backend, &[RETRY_ON]).await;
    let mut c = SseClient::open(gw.addr, "/s", &[]).await;
    assert_eq!(c.head.status, 200);
    assert_eq!(c.next_event().await.event_type, "rejected");
}

#[tokio::test]
async fn without_the_option_the_contract_statuses_stay() {
    let backend = Backend::start_with(Reply::status(503)).await;
    let gw = gateway(&backend, &[]).await;
    let r = request(gw.addr, "GET", "/s", &[], b"").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "BACKEND_ERROR");
}

#[tokio::test]
async fn every_stream_gets_a_jittered_retry_before_ready_when_on() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, ("RETRY_JITTER_MS", "1000-5000")]).await;
    let mut seen = BTreeSet::new();
    let mut open = Vec::new();
    for i in 0..12 {
        let mut c = SseClient::open(gw.addr, &format!("/s?request_id=j{i}"), &[]).await;
        backend.expect("connect").await;
        let Frame::Retry(ms) = c.next_frame().await else { panic!("expected retry: before ready") };
        assert!((1_000..5_000).contains(&ms), "{ms}");
        assert_eq!(c.next_event().await.event_type, "ready");
        seen.insert(ms);
        open.push(c);
    }
    assert!(seen.len() > 1, "the hint varies across streams: {seen:?}");
}

#[tokio::test]
async fn a_connect_accepted_after_its_timeout_gets_its_disconnect_callback() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(&backend, &[("CALLBACK_TIMEOUT_MS", "300")]).await;
    let addr = gw.addr;
    let pending = tokio::spawn(async move { request(addr, "GET", "/s?request_id=late", &[], b"").await });
    let call = backend.expect("connect").await;
    let token = call.token();
    assert_eq!(pending.await.expect("request").status, 504, "the client is answered at the timeout");
    // The backend accepts after all: it must not keep that token forever.
    call.answer(Reply::ok("{}"));
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (token, Some("error")));
    support::wait_for_metric(&gw, "sse_gateway_late_connect_answers_total{outcome=\"accepted\"}", 1.0).await;
}

#[tokio::test]
async fn a_connect_refused_after_its_timeout_needs_no_disconnect() {
    let backend = Backend::start().await;
    backend.manual();
    let gw = gateway(&backend, &[("CALLBACK_TIMEOUT_MS", "300")]).await;
    let addr = gw.addr;
    let pending = tokio::spawn(async move { request(addr, "GET", "/s", &[], b"").await });
    let call = backend.expect("connect").await;
    assert_eq!(pending.await.expect("request").status, 504);
    call.answer(Reply::status(403));
    support::wait_for_metric(&gw, "sse_gateway_late_connect_answers_total{outcome=\"refused\"}", 1.0).await;
    assert!(backend.drain().await.iter().all(|c| c.action() != "disconnect"), "nothing to take back");
}
