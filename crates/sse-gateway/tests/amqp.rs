//! Black-box tests of the RabbitMQ scale-out against a real broker
//! (`SSE_TEST_AMQP_URL`, started by `scripts/test`; without it these fail).
//! Every test uses its own exchange prefix, so runs never collide.

mod support;

use std::time::Duration;

use sse_testkit::{AmqpPublisher, Backend, Process, RabbitNode, Reply, SseClient, amqp_url, rabbitmqctl, request};
use sse_wire::Frame;
use support::{DEFAULT_BINDINGS, payload, stream};

fn prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A gateway consuming `<prefix>.sse.events` on `url` as instance `instance`.
async fn gateway(backend: &Backend, url: &str, prefix: &str, instance: &str, extra: &[(&str, &str)]) -> Process {
    let mut env = vec![
        DEFAULT_BINDINGS,
        ("RABBITMQ_URL", url),
        ("RABBITMQ_ENV_PREFIX", prefix),
        ("RABBITMQ_ENV_AUTO_DELETE", "true"),
        ("RABBITMQ_INSTANCE_ID", instance),
    ];
    env.extend_from_slice(extra);
    let gw = support::gateway(backend, &env).await;
    gw.wait_for_log("connected to RabbitMQ").await;
    gw
}

#[tokio::test]
async fn broadcast_reaches_every_stream_on_every_instance_exactly_once() {
    let url = amqp_url();
    let p = prefix();
    let backend = Backend::start().await;
    let gw1 = gateway(&backend, &url, &p, "gw1", &[]).await;
    let gw2 = gateway(&backend, &url, &p, "gw2", &[]).await;
    let mut clients = Vec::new();
    for (i, gw) in [&gw1, &gw1, &gw2, &gw2].into_iter().enumerate() {
        clients.push(stream(gw, &backend, &format!("/s?request_id=r{i}")).await.0);
    }
    let publisher = AmqpPublisher::connect(&url, &format!("{p}.sse.events")).await;
    publisher.publish("broadcast", "news", "1").await;
    publisher.publish("broadcast", "news", "2").await;
    for c in &mut clients {
        assert_eq!(c.next_event().await.data, payload("news", "1"));
        assert_eq!(c.next_event().await.data, payload("news", "2"), "no duplicate of the first");
    }
}

#[tokio::test]
async fn connection_key_reaches_only_that_stream() {
    let url = amqp_url();
    let p = prefix();
    let backend = Backend::start().await;
    let gw1 = gateway(&backend, &url, &p, "gw1", &[]).await;
    let gw2 = gateway(&backend, &url, &p, "gw2", &[]).await;
    let (mut a, _) = stream(&gw1, &backend, "/s?request_id=alpha").await;
    let (mut b, _) = stream(&gw2, &backend, "/s?request_id=beta").await;
    let publisher = AmqpPublisher::connect(&url, &format!("{p}.sse.events")).await;
    publisher.publish("connection.beta", "only", "\"b\"").await;
    publisher.publish("broadcast", "all", "0").await;
    assert_eq!(b.next_event().await.data, payload("only", "\"b\""));
    assert_eq!(b.next_event().await.data, payload("all", "0"));
    assert_eq!(a.next_event().await.data, payload("all", "0"), "alpha never saw beta's event");
}

#[tokio::test]
async fn subject_key_reaches_that_users_streams_on_both_instances() {
    let url = amqp_url();
    let p = prefix();
    let backend = Backend::start_with(Reply::ok(r#"{"bindings":["broadcast","subject.alice"]}"#)).await;
    let gw1 = gateway(&backend, &url, &p, "gw1", &[]).await;
    let gw2 = gateway(&backend, &url, &p, "gw2", &[]).await;
    let (mut alice1, _) = stream(&gw1, &backend, "/s").await;
    let (mut alice2, _) = stream(&gw2, &backend, "/s").await;
    backend.auto(Reply::ok(r#"{"bindings":["broadcast","subject.bob"]}"#));
    let (mut bob, _) = stream(&gw2, &backend, "/s").await;
    let publisher = AmqpPublisher::connect(&url, &format!("{p}.sse.events")).await;
    publisher.publish("subject.alice", "dm", "\"hi alice\"").await;
    publisher.publish("broadcast", "all", "0").await;
    assert_eq!(alice1.next_event().await.data, payload("dm", "\"hi alice\""));
    assert_eq!(alice2.next_event().await.data, payload("dm", "\"hi alice\""));
    assert_eq!(bob.next_event().await.data, payload("all", "0"), "bob skipped alice's event");
}

#[tokio::test]
async fn broker_holds_one_queue_per_instance_not_per_stream() {
    let url = amqp_url();
    let p = prefix();
    let backend = Backend::start().await;
    let gw1 = gateway(&backend, &url, &p, "gw1", &[]).await;
    let gw2 = gateway(&backend, &url, &p, "gw2", &[]).await;
    let mut keep = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        keep.push(stream(gw, &backend, &format!("/s?request_id=q{i}")).await.0);
    }
    let listing = rabbitmqctl(&["list_queues", "-q", "name"]);
    let mut ours: Vec<&str> = listing.lines().map(str::trim).filter(|l| l.starts_with(&p)).collect();
    ours.sort();
    assert_eq!(ours, vec![format!("{p}.sse.events.gw.gw1"), format!("{p}.sse.events.gw.gw2")], "{listing}");
    let bindings = rabbitmqctl(&["list_bindings", "-q", "destination_name", "routing_key"]);
    let gw1_keys: Vec<&str> = bindings.lines().filter(|l| l.starts_with(&format!("{p}.sse.events.gw.gw1"))).collect();
    // broadcast + connection.q0/q2/q4 (+ the default binding to the queue's own name).
    assert!(gw1_keys.iter().any(|l| l.ends_with("\tbroadcast")), "{bindings}");
    assert!(gw1_keys.iter().any(|l| l.ends_with("\tconnection.q4")), "{bindings}");
    assert!(!gw1_keys.iter().any(|l| l.ends_with("\tconnection.q1")), "{bindings}");
}

#[tokio::test]
async fn a_key_is_unbound_when_its_last_stream_leaves() {
    let url = amqp_url();
    let p = prefix();
    let backend = Backend::start().await;
    let gw =
        gateway(&backend, &url, &p, "gw1", &[("RESUME_TTL_MS", "0"), ("RUST_LOG", "info,sse_gateway::amqp=debug")])
            .await;
    let (c, _) = stream(&gw, &backend, "/s?request_id=gone").await;
    let queue = format!("{p}.sse.events.gw.gw1");
    let has = |key: &str| {
        rabbitmqctl(&["list_bindings", "-q", "destination_name", "routing_key"])
            .lines()
            .any(|l| l.starts_with(&queue) && l.ends_with(&format!("\t{key}")))
    };
    assert!(has("connection.gone"));
    c.close().await;
    backend.expect("disconnect").await;
    gw.wait_for_log("unbound routing key connection.gone").await;
    assert!(!has("connection.gone"), "the broker no longer routes connection.gone to this instance");
}

#[tokio::test]
async fn bad_messages_are_rejected_and_counted_and_good_ones_still_flow() {
    let url = amqp_url();
    let p = prefix();
    let backend = Backend::start().await;
    let gw = gateway(&backend, &url, &p, "gw1", &[]).await;
    let (mut c, _) = stream(&gw, &backend, "/s").await;
    let publisher = AmqpPublisher::connect(&url, &format!("{p}.sse.events")).await;
    publisher.publish_raw("broadcast", b"not json").await;
    publisher.publish_raw("broadcast", br#"{"event":1,"data":"x"}"#).await;
    publisher.publish_raw("broadcast", br#"{"event":"a\nb","data":"x"}"#).await;
    publisher.publish_raw("broadcast", br#"{"event_name":"ok","data":"1"}"#).await;
    assert_eq!(c.next_event().await.data, payload("ok", "1"));
    let m = request(gw.internal_addr(), "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("sse_gateway_rabbitmq_messages_total{outcome=\"rejected\"} 3"), "{text}");
    let listing = rabbitmqctl(&["list_queues", "-q", "name", "messages"]);
    let line = listing.lines().find(|l| l.starts_with(&p)).unwrap_or_default().to_owned();
    assert!(line.ends_with("\t0"), "rejected messages are not requeued: {listing}");
}

#[tokio::test]
async fn reconnect_with_the_same_request_id_within_the_ttl_receives_what_was_published_in_between() {
    let url = amqp_url();
    let p = prefix();
    let backend = Backend::start().await;
    let gw = gateway(
        &backend,
        &url,
        &p,
        "gw1",
        &[("RABBITMQ_QUEUE_TTL_MS", "60000"), ("RUST_LOG", "info,sse_gateway::events=debug")],
    )
    .await;
    let (c, _) = stream(&gw, &backend, "/s?request_id=phone").await;
    c.close().await;
    assert_eq!(backend.expect("disconnect").await.body["reason"], "client_closed");
    let publisher = AmqpPublisher::connect(&url, &format!("{p}.sse.events")).await;
    publisher.publish("connection.phone", "missed", "1").await;
    publisher.publish("connection.phone", "missed", "2").await;
    // Wait until the gateway consumed both (it logs each held event).
    gw.wait_for_logs("event held for a returning client", 2).await;
    let mut back = SseClient::open(gw.addr, "/s?request_id=phone", &[]).await;
    backend.expect("connect").await;
    assert_eq!(back.next_event().await.data, payload("missed", "1"));
    assert_eq!(back.next_event().await.data, payload("missed", "2"));
    assert_eq!(back.next_event().await.event_type, "ready", "held events come before ready");
    publisher.publish("connection.phone", "live", "3").await;
    assert_eq!(back.next_event().await.data, payload("live", "3"));
}

/// How long after the broker is back the gateway may take to reconnect: its
/// backoff doubles from 1 s up to 30 s, so the next attempt can be up to 30 s
/// away, plus the attempt itself on a loaded machine.
const RECONNECT_WAIT: Duration = Duration::from_secs(30 + 30);

#[tokio::test]
async fn broker_restart_refuses_new_streams_then_resends_ready_and_delivers_again() {
    let node = RabbitNode::start().await;
    let url = node.url();
    let p = prefix();
    let backend = Backend::start().await;
    let gw = gateway(&backend, &url, &p, "gw1", &[]).await;
    let (mut c, _) = stream(&gw, &backend, "/s?request_id=survivor").await;

    node.stop().await;
    gw.wait_for_log("lost the RabbitMQ connection").await;
    let ready = request(gw.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["rabbitmq"], "disconnected");
    let mut refused = SseClient::open(gw.addr, "/s", &[]).await;
    assert_eq!(refused.head.status, 200, "EventSource must not give up");
    assert!(matches!(refused.next_frame().await, Frame::Retry(_)));

    node.boot().await;
    let deadline = tokio::time::Instant::now() + RECONNECT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_frame_within(left).await {
            Frame::Event(e) if e.event_type == "ready" => break,
            Frame::Comment(_) => {}
            other => panic!("while waiting for the reconnect: unexpected {other:?}"),
        }
    }
    assert_eq!(request(gw.addr, "GET", "/readyz", &[], b"").await.status, 200);
    let publisher = AmqpPublisher::connect(&url, &format!("{p}.sse.events")).await;
    publisher.publish("connection.survivor", "after", "1").await;
    publisher.publish("broadcast", "after", "2").await;
    assert_eq!(c.next_event().await.data, payload("after", "1"));
    assert_eq!(c.next_event().await.data, payload("after", "2"));
}
