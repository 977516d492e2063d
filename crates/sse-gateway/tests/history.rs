//! Black-box tests of resumable streams in HTTP mode (`HISTORY_SECONDS`,
//! ext.): `id:` on every event and on `ready`, replay after `Last-Event-ID`
//! before `ready`, `gap` when the history cannot cover it, and nothing of
//! it when history is off. The AMQP-mode (cluster) tests are in `amqp_history.rs`.

mod support;

use serde_json::{Value, json};
use sse_testkit::{Backend, SseClient};
use sse_wire::ParsedEvent;
use support::{DEFAULT_BINDINGS, event, gateway, metric, payload, publish, send, stream, wait_for_metric};

const HISTORY: (&str, &str) = ("HISTORY_SECONDS", "60");

/// Opens a stream for `request_id` that resumes from `last_event_id`.
async fn resume(
    gw: &sse_testkit::Process,
    backend: &Backend,
    request_id: &str,
    last_event_id: &str,
) -> (SseClient, String, Vec<ParsedEvent>, ParsedEvent) {
    support::open_resuming(gw, backend, &format!("/s?request_id={request_id}"), Some(last_event_id)).await
}

/// The epoch part of this gateway's cursors (from a fresh stream's `ready`).
async fn ready_epoch(gw: &sse_testkit::Process, backend: &Backend) -> String {
    let mut c = SseClient::open(gw.addr, "/s?request_id=probe", &[]).await;
    backend.expect("connect").await;
    let id = c.next_event().await.last_event_id;
    c.close().await;
    backend.expect("disconnect").await;
    id.split_once('-').expect("a cursor").0.to_owned()
}

fn datas(events: &[ParsedEvent]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

#[tokio::test]
async fn every_event_and_ready_carry_an_id_that_grows() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    let mut client = SseClient::open(gw.addr, "/s?request_id=r1", &[]).await;
    let token = backend.expect("connect").await.token();
    let ready = client.next_event().await;
    assert_eq!(ready.event_type, "ready");
    assert!(!ready.last_event_id.is_empty(), "ready carries the position it went live at");
    publish(&gw, json!({"key": "broadcast", "event": event("a", "1")})).await;
    send(gw.addr, json!({"token": token, "event": event("b", "2")})).await;
    publish(&gw, json!({"key": "connection.r1", "event": event("c", "3")})).await;
    let mut ids = vec![ready.last_event_id.clone()];
    for name in ["a", "b", "c"] {
        let e = client.next_event().await;
        assert_eq!(e.data, payload(name, &((name.as_bytes()[0] - b'a' + 1).to_string())));
        assert_ne!(ids.last(), Some(&e.last_event_id), "a new id on every event");
        ids.push(e.last_event_id);
    }
    let raw = String::from_utf8_lossy(client.raw()).into_owned();
    assert_eq!(raw.matches("\nid: ").count() + usize::from(raw.starts_with("id: ")), 4, "{raw}");
}

#[tokio::test]
async fn a_reconnect_gets_exactly_its_missed_events_in_order_before_ready_then_live_ones() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    let (mut client, token) = stream(&gw, &backend, "/s?request_id=r1").await;
    publish(&gw, json!({"key": "broadcast", "event": event("seen", "0")})).await;
    let seen = client.next_event().await;
    assert_eq!(seen.data, payload("seen", "0"));
    // Missed while "the network blips": a send to the token, its connection
    // key, broadcast, and another client's key (which it must not get).
    send(gw.addr, json!({"token": token, "event": event("sent", "1")})).await;
    client.close().await;
    backend.expect("disconnect").await;
    publish(&gw, json!({"key": "broadcast", "event": event("missed", "2")})).await;
    publish(&gw, json!({"key": "connection.r2", "event": event("other", "x")})).await;
    publish(&gw, json!({"key": "connection.r1", "event": event("missed", "3")})).await;
    let (mut again, _, before, ready) = resume(&gw, &backend, "r1", &seen.last_event_id).await;
    assert_eq!(datas(&before), vec![payload("sent", "1"), payload("missed", "2"), payload("missed", "3")]);
    assert_eq!(ready.last_event_id, before[2].last_event_id, "ready goes live where the replay ends");
    publish(&gw, json!({"key": "broadcast", "event": event("live", "4")})).await;
    assert_eq!(again.next_event().await.data, payload("live", "4"));
    wait_for_metric(&gw, "sse_gateway_history_replayed_events_total ", 3.0).await;
}

#[tokio::test]
async fn resuming_from_ready_gets_everything_published_since_and_nothing_twice() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    let mut client = SseClient::open(gw.addr, "/s?request_id=r1", &[]).await;
    backend.expect("connect").await;
    let ready = client.next_event().await;
    client.close().await;
    backend.expect("disconnect").await;
    for i in 0..50 {
        publish(&gw, json!({"key": "broadcast", "event": event("n", &i.to_string())})).await;
    }
    let (again, _, before, ready2) = resume(&gw, &backend, "r1", &ready.last_event_id).await;
    let want: Vec<String> = (0..50).map(|i| payload("n", &i.to_string())).collect();
    assert_eq!(datas(&before), want);
    // Resuming from the new ready replays nothing.
    again.close().await;
    backend.expect("disconnect").await;
    let (_, _, before, _) = resume(&gw, &backend, "r1", &ready2.last_event_id).await;
    assert!(before.is_empty(), "nothing since ready: {before:?}");
}

#[tokio::test]
async fn an_unknown_or_malformed_id_gets_a_gap_before_ready_then_live_events() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    publish(&gw, json!({"key": "broadcast", "event": event("before", "0")})).await;
    let ahead = format!("{}-999999", ready_epoch(&gw, &backend).await);
    for bad in ["garbage", "ffff-1", "1-", ahead.as_str()] {
        let (mut client, _, before, _) = resume(&gw, &backend, "r1", bad).await;
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0].event_type, "gap");
        let data: Value = serde_json::from_str(&before[0].data).unwrap();
        assert_eq!(data["last_event_id"], bad);
        assert_eq!(data["cause"], "unknown");
        publish(&gw, json!({"key": "broadcast", "event": event("live", "1")})).await;
        assert_eq!(client.next_event().await.data, payload("live", "1"));
        client.close().await;
        backend.expect("disconnect").await;
    }
    wait_for_metric(&gw, "sse_gateway_history_gaps_total{cause=\"unknown\"} ", 4.0).await;
}

#[tokio::test]
async fn an_id_from_before_a_restart_gets_a_gap() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    let (mut client, _) = stream(&gw, &backend, "/s?request_id=r1").await;
    publish(&gw, json!({"key": "broadcast", "event": event("a", "1")})).await;
    let last = client.next_event().await.last_event_id;
    drop(client);
    drop(gw);
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    let (_, _, before, _) = resume(&gw, &backend, "r1", &last).await;
    assert_eq!(before.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), vec!["gap"]);
}

#[tokio::test]
async fn an_id_older_than_the_retention_gets_a_gap() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, ("HISTORY_SECONDS", "1")]).await;
    let mut client = SseClient::open(gw.addr, "/s?request_id=r1", &[]).await;
    backend.expect("connect").await;
    let ready = client.next_event().await;
    publish(&gw, json!({"key": "broadcast", "event": event("a", "1")})).await;
    assert_eq!(client.next_event().await.data, payload("a", "1"));
    // The sweep evicts it once it is older than a second.
    wait_for_metric(&gw, "sse_gateway_history_evicted_events_total ", 1.0).await;
    let (_, _, before, _) = resume(&gw, &backend, "r2", &ready.last_event_id).await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].event_type, "gap");
    assert_eq!(serde_json::from_str::<Value>(&before[0].data).unwrap()["cause"], "expired");
}

#[tokio::test]
async fn a_history_over_its_byte_bound_drops_the_oldest_and_a_resume_before_them_gets_a_gap() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY, ("HISTORY_MAX_BYTES", "2000")]).await;
    let mut client = SseClient::open(gw.addr, "/s?request_id=r1", &[]).await;
    backend.expect("connect").await;
    let ready = client.next_event().await;
    for i in 0..100 {
        publish(&gw, json!({"key": "broadcast", "event": event("n", &i.to_string())})).await;
    }
    let mut last = String::new();
    for _ in 0..98 {
        last = client.next_event().await.last_event_id;
    }
    let (_, _, before, _) = resume(&gw, &backend, "r2", &ready.last_event_id).await;
    assert_eq!(before.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), vec!["gap"]);
    let (_, _, before, _) = resume(&gw, &backend, "r3", &last).await;
    assert_eq!(datas(&before), vec![payload("n", "98"), payload("n", "99")], "recent events are still kept");
}

#[tokio::test]
async fn the_last_event_id_query_parameter_works_like_the_header() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    let mut client = SseClient::open(gw.addr, "/s?request_id=r1", &[]).await;
    backend.expect("connect").await;
    let ready = client.next_event().await;
    publish(&gw, json!({"key": "broadcast", "event": event("a", "1")})).await;
    let path = format!("/s?request_id=r2&lastEventId={}", ready.last_event_id);
    let mut again = SseClient::open(gw.addr, &path, &[]).await;
    backend.expect("connect").await;
    assert_eq!(again.next_event().await.data, payload("a", "1"));
    assert_eq!(again.next_event().await.event_type, "ready");
}

#[tokio::test]
async fn a_fresh_connect_gets_no_replay_and_no_gap() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    publish(&gw, json!({"key": "broadcast", "event": event("old", "1")})).await;
    let (mut client, _) = stream(&gw, &backend, "/s?request_id=r1").await;
    publish(&gw, json!({"key": "broadcast", "event": event("new", "2")})).await;
    assert_eq!(client.next_event().await.data, payload("new", "2"));
    assert_eq!(metric(&gw, "sse_gateway_history_replayed_events_total ").await, 0.0);
}

#[tokio::test]
async fn without_history_there_are_no_ids_and_last_event_id_is_ignored() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    publish(&gw, json!({"key": "broadcast", "event": event("old", "1")})).await;
    let mut client = SseClient::open(gw.addr, "/s?request_id=r1", &[("Last-Event-ID", b"1-1")]).await;
    backend.expect("connect").await;
    let ready = client.next_event().await;
    assert_eq!((ready.event_type.as_str(), ready.last_event_id.as_str()), ("ready", ""));
    publish(&gw, json!({"key": "broadcast", "event": event("new", "2")})).await;
    assert_eq!(client.next_event().await.data, payload("new", "2"));
    assert_eq!(client.raw(), format!("event: ready\ndata:\n\ndata: {}\n\n", payload("new", "2")).as_bytes());
}

#[tokio::test]
async fn a_snapshot_position_from_the_internal_api_resumes_exactly_after_it() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &[DEFAULT_BINDINGS, HISTORY]).await;
    publish(&gw, json!({"key": "broadcast", "event": event("before", "0")})).await;
    // The backend reads the position, then takes its snapshot.
    let r = sse_testkit::request(gw.internal_addr(), "GET", "/internal/history", &[], b"").await;
    assert_eq!(r.status, 200);
    let position = r.json()["id"].as_str().expect("an id with history on").to_owned();
    publish(&gw, json!({"key": "broadcast", "event": event("after", "1")})).await;
    let path = format!("/s?request_id=r1&lastEventId={position}");
    let mut client = SseClient::open(gw.addr, &path, &[]).await;
    backend.expect("connect").await;
    assert_eq!(client.next_event().await.data, payload("after", "1"), "only what came after the snapshot");
    assert_eq!(client.next_event().await.event_type, "ready");
    // Off: null; and the public port needs the secret like the rest of the internal API.
    let off = gateway(&backend, &[DEFAULT_BINDINGS]).await;
    let r = sse_testkit::request(off.internal_addr(), "GET", "/internal/history", &[], b"").await;
    assert_eq!(r.json(), json!({"id": null}));
    let r = sse_testkit::request(off.addr, "GET", "/internal/history", &[], b"").await;
    assert_eq!(r.status, 403);
}
