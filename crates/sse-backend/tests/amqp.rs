//! The AMQP broadcaster against a real RabbitMQ (`SSE_TEST_AMQP_URL`) and two
//! real `sse-gateway` instances consuming from it.

use std::sync::Arc;

use sse_backend::amqp::{AmqpBroadcaster, AmqpConfig};
use sse_backend::broadcaster::{Broadcaster, Event, HttpBroadcaster, HttpBroadcasterConfig, PublishOutcome};
use sse_testkit::{Backend, Process, SseClient, amqp_url};

async fn gateway(bin: &str, backend: &Backend, prefix: &str, instance: &str) -> Process {
    let cb = backend.callback_url();
    let url = amqp_url();
    let env = [
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("CALLBACK_URL", cb.as_str()),
        ("DEFAULT_BINDINGS", "broadcast,connection.{request_id}"),
        ("RABBITMQ_URL", url.as_str()),
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
    let gw1 = gateway(bin, &backend, &prefix, "one").await;
    let gw2 = gateway(bin, &backend, &prefix, "two").await;
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
