//! The AMQP broadcaster against a real RabbitMQ (`SSE_TEST_AMQP_URL`, or a
//! private node that the test stops and restarts) and real `sse-gateway`
//! instances consuming from it.

use std::sync::Arc;
use std::time::Duration;

use sse_backend::amqp::{AmqpBroadcaster, AmqpConfig};
use sse_backend::broadcaster::{Broadcaster, Event, HttpBroadcaster, HttpBroadcasterConfig, PublishOutcome};
use sse_testkit::{Backend, Process, RabbitNode, SseClient, amqp_url};
use sse_wire::Frame;

async fn gateway(bin: &str, backend: &Backend, url: &str, prefix: &str, instance: &str) -> Process {
    let cb = backend.callback_url();
    let env = [
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("CALLBACK_URL", cb.as_str()),
        ("DEFAULT_BINDINGS", "broadcast,connection.{request_id}"),
        ("RABBITMQ_URL", url),
        ("RABBITMQ_ENV_PREFIX", prefix),
        ("RABBITMQ_ENV_AUTO_DELETE", "true"),
        ("RABBITMQ_INSTANCE_ID", instance),
    ];
    let gw = Process::spawn(bin, &[], &env).await;
    gw.wait_for_log("connected to RabbitMQ").await;
    gw
}

#[tokio::test]
async fn amqp_broadcaster_reaches_streams_on_every_instance_and_reports_unroutable_keys() {
    let bin = sse_testkit::workspace_bin("sse-gateway");
    let bin = bin.to_str().expect("utf-8 path");
    let prefix = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let backend = Backend::start().await;
    let url = amqp_url();
    let gw1 = gateway(bin, &backend, &url, &prefix, "one").await;
    let gw2 = gateway(bin, &backend, &url, &prefix, "two").await;
    let mut clients = Vec::new();
    for (gw, rid) in [(&gw1, "a"), (&gw2, "b")] {
        let mut c = SseClient::open(gw.addr, &format!("/s?request_id={rid}"), &[]).await;
        backend.expect("connect").await;
        assert_eq!(c.next_event().await.event_type, "ready");
        clients.push(c);
    }
    let sends: Arc<dyn Broadcaster> =
        Arc::new(HttpBroadcaster::new(HttpBroadcasterConfig::new(format!("http://{}", gw1.addr))));
    let amqp =
        AmqpBroadcaster::new(AmqpConfig { url: amqp_url(), env_prefix: prefix.clone(), auto_delete: true }, sends);
    let ev = Event { name: "news".into(), data: "{\"n\":1}".into() };
    assert_eq!(amqp.publish("broadcast", &ev).await, Ok(PublishOutcome::Matched(1)));
    for c in &mut clients {
        assert_eq!(c.next_event().await.data, r#"{"type":"news","payload":{"n":1}}"#);
    }
    let only_b = Event { name: "dm".into(), data: "2".into() };
    assert_eq!(amqp.publish("connection.b", &only_b).await, Ok(PublishOutcome::Matched(1)));
    assert_eq!(clients[1].next_event().await.data, r#"{"type":"dm","payload":2}"#);
    assert_eq!(
        amqp.publish("connection.nobody", &only_b).await,
        Ok(PublishOutcome::Matched(0)),
        "a key no instance is bound to comes back as unroutable"
    );
    assert!(amqp.publishes());
}

/// How long after the broker is back the gateway may take to reconnect: its
/// backoff doubles from 1 s up to 30 s, plus the attempt on a loaded machine.
const GATEWAY_RECONNECT_WAIT: Duration = Duration::from_secs(30 + 30);

#[tokio::test]
async fn amqp_broadcaster_reports_a_dropped_broker_and_publishes_again_once_it_is_back() {
    let bin = sse_testkit::workspace_bin("sse-gateway");
    let node = RabbitNode::start().await;
    let url = node.url();
    let prefix = format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let backend = Backend::start().await;
    let gw = gateway(bin.to_str().expect("utf-8 path"), &backend, &url, &prefix, "one").await;
    let mut c = SseClient::open(gw.addr, "/s?request_id=a", &[]).await;
    backend.expect("connect").await;
    assert_eq!(c.next_event().await.event_type, "ready");
    let sends: Arc<dyn Broadcaster> =
        Arc::new(HttpBroadcaster::new(HttpBroadcasterConfig::new(format!("http://{}", gw.addr))));
    let amqp = AmqpBroadcaster::new(AmqpConfig { url: url.clone(), env_prefix: prefix, auto_delete: true }, sends);
    let ev = |n: u32| Event { name: "news".into(), data: n.to_string() };
    assert_eq!(amqp.publish("broadcast", &ev(1)).await, Ok(PublishOutcome::Matched(1)));
    assert_eq!(c.next_event().await.data, r#"{"type":"news","payload":1}"#);

    node.stop().await;
    let down = sse_testkit::within("a publish while the broker is down", amqp.publish("broadcast", &ev(2))).await;
    assert!(matches!(down, Err(sse_backend::broadcaster::BroadcastError::Unreachable(_))), "{down:?}");

    node.boot().await;
    // The gateway re-binds its queue and says `ready` again on the stream;
    // from then on the broker routes `broadcast` to it again.
    let deadline = tokio::time::Instant::now() + GATEWAY_RECONNECT_WAIT;
    loop {
        match c.next_frame_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Frame::Event(e) if e.event_type == "ready" => break,
            Frame::Comment(_) => {}
            other => panic!("while waiting for the gateway to reconnect: unexpected {other:?}"),
        }
    }
    assert_eq!(amqp.publish("broadcast", &ev(3)).await, Ok(PublishOutcome::Matched(1)), "the broadcaster reconnected");
    assert_eq!(c.next_event().await.data, r#"{"type":"news","payload":3}"#, "nothing from the failed publish");
}
