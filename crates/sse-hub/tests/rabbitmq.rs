//! The hub's in-process gateway also consumes from RabbitMQ when configured
//! (real broker: `SSE_TEST_AMQP_URL`, set by scripts/test; fails without it).

mod support;

use support::{Hub, envelope};

#[tokio::test]
async fn events_published_to_rabbitmq_reach_hub_streams() {
    let url = sse_testkit::amqp_url();
    let prefix = format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let hub = Hub::start(
        &["--rabbitmq-url", &url, "--rabbitmq-env-prefix", &prefix, "--rabbitmq-env-auto-delete", "true"],
        &[],
    )
    .await;
    hub.process.wait_for_log("connected to RabbitMQ").await;
    let (mut stream, _) = hub.open("rabbit-reader").await;
    let publisher = sse_testkit::AmqpPublisher::connect(&url, &format!("{prefix}.sse.events")).await;
    publisher.publish("connection.rabbit-reader", "from_broker", "{\"n\":1}").await;
    publisher.publish("broadcast", "from_broker", "{\"n\":2}").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let (name, payload) = envelope(&stream.next_event().await);
        if name == "from_broker" {
            got.push(payload["n"].as_i64().unwrap_or_default());
        }
    }
    assert_eq!(got, vec![1, 2]);
}
