//! Publishing through RabbitMQ: the scale-out path to any number of gateway
//! instances behind one topic exchange.
//!
//! [`AmqpBroadcaster::publish`] sends `{"event","data"}` to the exchange with
//! the routing key, `mandatory` set and publisher confirms on: it returns once
//! the broker has taken responsibility for the message, and reports a message
//! no gateway instance is bound for as `Matched(0)` (the broker returned it).
//! `Matched(1)` means "routed to at least one instance"; AMQP does not tell
//! how many streams it reached. Per-token sends and closes are not part of the
//! AMQP contract, so they go through the wrapped broadcaster (normally the
//! [`crate::HttpBroadcaster`] to the instance's `/internal/send`).

use std::sync::Arc;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::BoxFuture;
use crate::broadcaster::{BroadcastError, Broadcaster, Event, PublishOutcome, SendStatus};

/// Settings of [`AmqpBroadcaster`] (the gateway's names).
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `RABBITMQ_URL`.
    pub url: String,
    /// `RABBITMQ_ENV_PREFIX`: the exchange is `<prefix>.sse.events`, else `sse.events`.
    pub env_prefix: String,
    /// `RABBITMQ_ENV_AUTO_DELETE`: declare the exchange auto-delete, non-durable.
    pub auto_delete: bool,
}

impl AmqpConfig {
    /// The exchange name.
    pub fn exchange(&self) -> String {
        if self.env_prefix.is_empty() { "sse.events".to_owned() } else { format!("{}.sse.events", self.env_prefix) }
    }
}

/// Publishes over AMQP; sends by token through `sends`.
pub struct AmqpBroadcaster {
    config: AmqpConfig,
    exchange: String,
    link: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    sends: Arc<dyn Broadcaster>,
}

impl AmqpBroadcaster {
    /// A broadcaster publishing to the exchange of `config`; connects lazily
    /// (and again after the connection drops).
    pub fn new(config: AmqpConfig, sends: Arc<dyn Broadcaster>) -> Self {
        let exchange = config.exchange();
        Self { config, exchange, link: tokio::sync::Mutex::new(None), sends }
    }

    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut link = self.link.lock().await;
        if let Some((conn, ch)) = link.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let conn = Connection::connect(&self.config.url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        ch.exchange_declare(
            self.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: !self.config.auto_delete,
                auto_delete: self.config.auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        *link = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn publish_amqp(&self, key: &str, event: &Event) -> Result<PublishOutcome, BroadcastError> {
        let unreachable = |e: lapin::Error| BroadcastError::Unreachable(format!("RabbitMQ: {e}"));
        let body = serde_json::json!({"event": event.name, "data": event.data}).to_string();
        let ch = self.channel().await.map_err(unreachable)?;
        let confirm = ch
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body.as_bytes(),
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .map_err(unreachable)?
            .await
            .map_err(unreachable)?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(PublishOutcome::Matched(1)),
            Confirmation::Ack(Some(_returned)) => {
                tracing::debug!(key, "no gateway instance is bound to this key (message returned)");
                Ok(PublishOutcome::Matched(0))
            }
            Confirmation::Nack(_) => Err(BroadcastError::Unreachable("RabbitMQ refused the message (nack)".to_owned())),
        }
    }
}

impl Broadcaster for AmqpBroadcaster {
    fn send<'a>(
        &'a self,
        token: &'a str,
        event: Option<&'a Event>,
        close: bool,
    ) -> BoxFuture<'a, Result<SendStatus, BroadcastError>> {
        self.sends.send(token, event, close)
    }

    fn publish<'a>(&'a self, key: &'a str, event: &'a Event) -> BoxFuture<'a, Result<PublishOutcome, BroadcastError>> {
        Box::pin(self.publish_amqp(key, event))
    }

    fn publishes(&self) -> bool {
        true
    }
}
