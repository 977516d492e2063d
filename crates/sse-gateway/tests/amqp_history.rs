//! Black-box tests of resumable streams across a cluster (`HISTORY_SECONDS`
//! with `RABBITMQ_URL`): ids valid on every instance, replay on the other
//! instance, `gap`, a rolling restart losing nothing, a broker restart
//! losing no confirmed event. Real broker (`SSE_TEST_AMQP_URL`), or a node
//! of the test's own where the broker is restarted. Every test uses its own
//! exchange prefix and deletes its history stream at the end.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sse_testkit::{AmqpPublisher, Backend, Process, RabbitNode, amqp_url, send_json};
use sse_wire::{Frame, ParsedEvent};
use support::{
    DEFAULT_BINDINGS, event, metric, open_resuming as open, payload, wait_for_metric, wait_for_metric_at_least,
};

/// A unique exchange prefix whose history stream is deleted on drop.
struct Prefix(String);

impl Prefix {
    fn new() -> Self {
        Self(format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..10]))
    }

    fn exchange(&self) -> String {
        format!("{}.sse.events", self.0)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        // Streams are durable: a test must not leave one behind on the shared broker.
        let name = format!("{}.history", self.exchange());
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_queue", &name]).output();
    }
}

async fn gateway(backend: &Backend, url: &str, p: &Prefix, instance: &str, history: &str) -> Process {
    let env = [
        DEFAULT_BINDINGS,
        ("RABBITMQ_URL", url),
        ("RABBITMQ_ENV_PREFIX", p.0.as_str()),
        ("RABBITMQ_ENV_AUTO_DELETE", "true"),
        ("RABBITMQ_INSTANCE_ID", instance),
        ("HISTORY_SECONDS", history),
    ];
    let gw = support::gateway(backend, &env).await;
    gw.wait_for_log("connected to RabbitMQ").await;
    gw
}

fn datas(events: &[ParsedEvent]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

#[tokio::test]
async fn a_reconnect_to_the_other_instance_gets_exactly_its_missed_events_before_ready() {
    let url = amqp_url();
    let p = Prefix::new();
    let backend = Backend::start().await;
    let gw1 = gateway(&backend, &url, &p, "gw1", "60").await;
    let gw2 = gateway(&backend, &url, &p, "gw2", "60").await;
    let (mut client, token, _, ready) = open(&gw1, &backend, "/s?request_id=r1", None).await;
    assert!(!ready.last_event_id.is_empty(), "ready carries a cursor");
    let publisher = AmqpPublisher::connect(&url, &p.exchange()).await;
    publisher.publish("broadcast", "seen", "0").await;
    let seen = client.next_event().await;
    assert_eq!(seen.data, payload("seen", "0"));
    // Missed: a send to the token (through the stream), the backend's
    // publishes to its keys and to another client's, and an
    // /internal/publish on the other instance.
    let r = send_json(gw1.addr, "/internal/send", &json!({"token": token, "event": event("sent", "1")})).await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    client.close().await;
    backend.expect("disconnect").await;
    publisher.publish("broadcast", "missed", "2").await;
    publisher.publish("connection.r2", "other", "x").await;
    publisher.publish("connection.r1", "missed", "3").await;
    let r = send_json(
        gw2.internal_addr(),
        "/internal/publish",
        &json!({"key": "broadcast", "event": event("missed", "4")}),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"matched": 0})), "no stream on gw2 yet");
    let (mut again, _, before, ready2) = open(&gw2, &backend, "/s?request_id=r1", Some(&seen.last_event_id)).await;
    assert_eq!(
        datas(&before),
        vec![payload("sent", "1"), payload("missed", "2"), payload("missed", "3"), payload("missed", "4")],
        "exactly the missed events for its keys, in order"
    );
    assert_eq!(ready2.last_event_id, before[3].last_event_id);
    publisher.publish("broadcast", "live", "5").await;
    let live = again.next_event().await;
    assert_eq!(live.data, payload("live", "5"));
    // The same event has the same id on every instance. Each instance reads
    // the broker at its own pace, and a stream gw1 opens before it has read
    // "live" would get it as live: wait until gw1 has read what gw2 has.
    let read = "sse_gateway_rabbitmq_messages_total{outcome=\"delivered\"} ";
    wait_for_metric_at_least(&gw1, read, metric(&gw2, read).await).await;
    let (mut other, _, _, _) = open(&gw1, &backend, "/s?request_id=r3", None).await;
    publisher.publish("broadcast", "both", "6").await;
    let (a, b) = (again.next_event().await, other.next_event().await);
    assert_eq!((a.data.as_str(), a.last_event_id.as_str()), (b.data.as_str(), b.last_event_id.as_str()));
    wait_for_metric(&gw2, "sse_gateway_history_replayed_events_total ", 4.0).await;
}

#[tokio::test]
async fn a_fresh_connect_gets_nothing_old_and_bad_or_future_ids_get_a_gap() {
    let url = amqp_url();
    let p = Prefix::new();
    let backend = Backend::start().await;
    let gw = gateway(&backend, &url, &p, "gw1", "60").await;
    let publisher = AmqpPublisher::connect(&url, &p.exchange()).await;
    publisher.publish("broadcast", "old", "1").await;
    // Once this instance has read it, it is history for a new stream.
    wait_for_metric(&gw, "sse_gateway_rabbitmq_messages_total{outcome=\"delivered\"} ", 1.0).await;
    let (mut fresh, _, before, _) = open(&gw, &backend, "/s?request_id=r1", None).await;
    assert!(before.is_empty());
    publisher.publish("broadcast", "new", "2").await;
    assert_eq!(fresh.next_event().await.data, payload("new", "2"));
    // Another epoch, malformed, and a cursor far ahead of the stream (this
    // instance waits a little for it, then gives up).
    let far = format!("0-{}", u64::MAX / 2);
    for (bad, cause) in [("ffff-1", "unknown"), ("nonsense", "unknown"), (far.as_str(), "unknown")] {
        let (_, _, before, _) = open(&gw, &backend, "/s?request_id=r2", Some(bad)).await;
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0].event_type, "gap");
        let data: Value = serde_json::from_str(&before[0].data).unwrap();
        assert_eq!((data["last_event_id"].as_str(), data["cause"].as_str()), (Some(bad), Some(cause)));
    }
}

#[tokio::test]
async fn an_id_older_than_the_retention_gets_a_gap() {
    let url = amqp_url();
    let p = Prefix::new();
    let backend = Backend::start().await;
    let gw = gateway(&backend, &url, &p, "gw1", "1").await;
    let (mut client, _, _, ready) = open(&gw, &backend, "/s?request_id=r1", None).await;
    let publisher = AmqpPublisher::connect(&url, &p.exchange()).await;
    publisher.publish("broadcast", "a", "1").await;
    assert_eq!(client.next_event().await.data, payload("a", "1"));
    wait_for_metric(&gw, "sse_gateway_history_evicted_events_total ", 1.0).await;
    let (_, _, before, _) = open(&gw, &backend, "/s?request_id=r2", Some(&ready.last_event_id)).await;
    assert_eq!(before.len(), 1);
    assert_eq!(
        (before[0].event_type.as_str(), &serde_json::from_str::<Value>(&before[0].data).unwrap()["cause"]),
        ("gap", &json!("expired"))
    );
}

/// An EventSource-like client on the instance being drained follows the
/// stream's end (its `retry:` hint) and reconnects to the other instance
/// with its last id, while a backend publishes at a steady rate.
#[tokio::test]
async fn a_rolling_restart_loses_nothing_and_delivers_nothing_twice() {
    const N: usize = 150;
    let url = amqp_url();
    let p = Prefix::new();
    let backend = Backend::start().await;
    let mut gw1 = gateway(&backend, &url, &p, "gw1", "60").await;
    let gw2 = gateway(&backend, &url, &p, "gw2", "60").await;
    let (mut client, _, _, ready) = open(&gw1, &backend, "/s?request_id=r1", None).await;
    let exchange = p.exchange();
    let url2 = url.clone();
    // A steady publisher, with confirms, while gw1 drains.
    let publishing = tokio::spawn(async move {
        let publisher = AmqpPublisher::connect(&url2, &exchange).await;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..N {
            tick.tick().await;
            publisher.publish("broadcast", "n", &i.to_string()).await;
        }
    });
    let mut got: Vec<String> = Vec::new();
    let mut last_id = ready.last_event_id;
    // Some events arrive on gw1, then it is told to stop.
    while got.len() < 20 {
        let e = client.next_event().await;
        last_id = e.last_event_id.clone();
        got.push(e.data);
    }
    gw1.signal(libc::SIGTERM);
    let retry;
    loop {
        match client.frame_within(Duration::from_secs(15)).await {
            Some(Frame::Event(e)) => {
                last_id = e.last_event_id.clone();
                got.push(e.data);
            }
            Some(Frame::Retry(ms)) => {
                retry = Some(ms);
                break;
            }
            Some(Frame::Comment(_)) => {}
            None => panic!("the drain gave no retry hint"),
        }
    }
    assert!(retry.is_some());
    let rest = client.read_to_end().await;
    assert!(rest.iter().all(|f| !matches!(f, Frame::Event(_))), "nothing after the hint: {rest:?}");
    gw1.wait_exit().await;
    let (mut again, _, before, _) = open(&gw2, &backend, "/s?request_id=r1", Some(&last_id)).await;
    got.extend(before.into_iter().map(|e| e.data));
    while got.len() < N {
        got.push(again.next_event().await.data);
    }
    publishing.await.unwrap();
    let want: Vec<String> = (0..N).map(|i| payload("n", &i.to_string())).collect();
    assert_eq!(got, want, "every event exactly once, in order");
}

/// A publisher with confirms to a durable exchange (as in production:
/// bindings of the history stream survive a broker restart only on a
/// durable exchange); `mandatory`, so an unroutable event fails the test.
struct DurablePublisher {
    _conn: lapin::Connection,
    ch: lapin::Channel,
    exchange: String,
}

impl DurablePublisher {
    async fn connect(url: &str, exchange: &str) -> Self {
        use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, opts, Default::default())
            .await
            .expect("declare exchange");
        Self { _conn: conn, ch, exchange: exchange.to_owned() }
    }

    /// Publishes until the broker confirms the event as routed. Right after
    /// a restart the history stream may not take messages yet: the broker
    /// returns them (the publisher is told, nothing is lost silently), and
    /// this publisher tries again, bounded.
    async fn publish(&self, key: &str, name: &str, data: &str) {
        let body = json!({"event": name, "data": data}).to_string();
        let opts = lapin::options::BasicPublishOptions { mandatory: true, ..Default::default() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let confirm = self
                .ch
                .basic_publish(self.exchange.as_str().into(), key.into(), opts, body.as_bytes(), Default::default())
                .await
                .expect("publish")
                .await
                .expect("confirm");
            if matches!(confirm, lapin::Confirmation::Ack(None)) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never routed: {confirm:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_broker_restart_loses_no_confirmed_event_and_publishers_are_told_while_it_is_down() {
    let node = RabbitNode::start().await;
    let url = node.url();
    let p = Prefix::new();
    let backend = Backend::start().await;
    let env = [
        DEFAULT_BINDINGS,
        ("RABBITMQ_URL", url.as_str()),
        ("RABBITMQ_ENV_PREFIX", p.0.as_str()),
        ("RABBITMQ_INSTANCE_ID", "gw1"),
        ("HISTORY_SECONDS", "600"),
    ];
    let gw = support::gateway(&backend, &env).await;
    gw.wait_for_log("connected to RabbitMQ").await;
    let (mut client, _, _, _) = open(&gw, &backend, "/s?request_id=r1", None).await;
    let publisher = DurablePublisher::connect(&url, &p.exchange()).await;
    for i in 0..100 {
        publisher.publish("broadcast", "n", &i.to_string()).await;
    }
    drop(publisher);
    node.stop().await;
    gw.wait_for_log("lost the RabbitMQ connection").await;
    let r = send_json(gw.internal_addr(), "/internal/publish", &json!({"key": "broadcast", "event": event("x", "1")}))
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("BROKER_UNAVAILABLE")),
        "never a silent drop"
    );
    node.boot().await;
    // Confirmed while the gateway is (most likely) still waiting to reconnect.
    let publisher = DurablePublisher::connect(&url, &p.exchange()).await;
    for i in 100..200 {
        publisher.publish("broadcast", "n", &i.to_string()).await;
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < 200 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_frame_within(left).await {
            Frame::Event(e) if e.event_type == "gap" => panic!("the stream survived the restart; nothing may be lost"),
            Frame::Event(e) if e.event_type == "ready" => panic!("with history, no second ready"),
            Frame::Event(e) => got.push(e.data),
            _ => {}
        }
    }
    let want: Vec<String> = (0..200).map(|i| payload("n", &i.to_string())).collect();
    assert_eq!(got, want, "every confirmed event, once, in order");
}

#[tokio::test]
async fn an_admin_close_by_key_reaches_the_other_instance_through_the_history_stream() {
    let url = amqp_url();
    let p = Prefix::new();
    let backend = Backend::start().await;
    let gw1 = gateway(&backend, &url, &p, "gw1", "60").await;
    let gw2 = gateway(&backend, &url, &p, "gw2", "60").await;
    let (mut client, _, _, _) = open(&gw2, &backend, "/s?request_id=r1", None).await;
    let r = send_json(gw1.internal_addr(), "/internal/close", &json!({"key": "connection.r1", "retry_ms": 1000})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["matched"], 1);
    assert!(client.read_to_end().await.iter().any(|f| matches!(f, Frame::Retry(1000))));
}

#[tokio::test]
async fn a_forged_frame_message_is_rejected_and_the_stream_stays_intact() {
    let url = amqp_url();
    let p = Prefix::new();
    let backend = Backend::start().await;
    let gw = gateway(&backend, &url, &p, "gw1", "60").await;
    let (mut client, _, _, _) = open(&gw, &backend, "/s?request_id=r1", None).await;
    let publisher = AmqpPublisher::connect(&url, &p.exchange()).await;
    // Two events in one frame, a bare CR, no terminating blank line, not even SSE.
    for body in
        [&b"data: a\n\nevent: ready\ndata:\n\n"[..], b"data: a\rdata: b\n\n", b"data: a\n", b"{\"event\":\"x\"}"]
    {
        publisher.publish_typed("broadcast", "sse.frame", body).await;
    }
    // An unknown-looking backend message is judged as a backend message.
    publisher.publish_raw("broadcast", b"not json").await;
    publisher.publish("broadcast", "ok", "1").await;
    let next = client.next_event().await;
    assert_eq!(next.data, payload("ok", "1"), "nothing forged reached the stream");
    wait_for_metric(&gw, "sse_gateway_rabbitmq_messages_total{outcome=\"rejected\"} ", 5.0).await;
    let raw = String::from_utf8_lossy(client.raw()).into_owned();
    assert_eq!(raw.matches("event: ready").count(), 1, "no spoofed ready: {raw}");
}

/// Binds every stream to the key `k`.
struct BindK;

impl sse_gateway::ConnectHook for BindK {
    fn connect<'a>(
        &'a self,
        _: uuid::Uuid,
        _: &'a sse_gateway::ClientRequest,
    ) -> sse_gateway::HookFuture<'a, Result<sse_gateway::Accepted, sse_gateway::Refusal>> {
        Box::pin(async {
            Ok(sse_gateway::Accepted { bindings: vec!["k".to_owned()], request_id: None, expires_at: None })
        })
    }

    fn disconnect<'a>(
        &'a self,
        _: uuid::Uuid,
        _: sse_gateway::DisconnectReason,
        _: &'a sse_gateway::ClientRequest,
    ) -> sse_gateway::HookFuture<'a, Result<(), sse_gateway::Refusal>> {
        Box::pin(async { Ok(()) })
    }
}

/// In-process publishes go to the broker from one task each; on a runtime
/// with several workers they must still reach the stream in call order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_publishes_reach_the_stream_in_the_order_they_were_made() {
    const N: usize = 500;
    let p = Prefix::new();
    let url = amqp_url();
    let prefix = p.0.clone();
    let lookup = move |k: &str| match k {
        "RABBITMQ_URL" => Some(url.clone()),
        "RABBITMQ_ENV_PREFIX" => Some(prefix.clone()),
        "RABBITMQ_ENV_AUTO_DELETE" => Some("true".to_owned()),
        "RABBITMQ_INSTANCE_ID" => Some("order".to_owned()),
        "HISTORY_SECONDS" => Some("60".to_owned()),
        _ => None,
    };
    let (config, _) = sse_gateway::Config::from_lookup(lookup).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hook: std::sync::Arc<dyn sse_gateway::ConnectHook> = std::sync::Arc::new(BindK);
    let gateway = sse_gateway::Gateway::builder(config).hook(hook).build();
    let handle = gateway.handle();
    let stop = gateway.shutdown_token();
    let served = tokio::spawn(gateway.serve(listener, None));
    // Publishing is refused until the broker connection is live.
    sse_testkit::within("the gateway to reach RabbitMQ", async {
        while handle.publish("nobody", None, false).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut c = sse_testkit::SseClient::open(addr, "/s", &[]).await;
    assert_eq!(c.next_event().await.event_type, "ready");
    for i in 0..N {
        let data = i.to_string();
        let event = sse_gateway::OutEvent { name: Some("n"), data: &data };
        handle.publish("k", Some(event), false).expect("publish while connected");
    }
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        got.push(c.next_event().await.data);
    }
    let want: Vec<String> = (0..N).map(|i| format!(r#"{{"type":"n","payload":{i}}}"#)).collect();
    assert_eq!(got, want, "every event once, in the order it was published");
    stop.cancel();
    sse_testkit::within("the gateway to stop", served).await.expect("served");
}
