//! Where benchmark events are published: the server's HTTP publish endpoint
//! (ours: `/internal/publish`; Nchan: `/pub/broadcast`), or a RabbitMQ
//! exchange with publisher confirms, always to the `broadcast` key.
//!
//! Owns the publishing connection; does not know what is measured.

use std::collections::BTreeMap;

use crate::client::{Dialer, Endpoint, HttpConn, Response};
use crate::target::{BROADCAST_KEY, EVENT_NAME, Target};

/// Counts a publish's answer: the response when the server accepted it
/// (2xx); otherwise `None`, with the failure tallied in `errors` by its text.
pub fn accepted(answer: anyhow::Result<Response>, errors: &mut BTreeMap<String, u64>) -> Option<Response> {
    match answer {
        Ok(resp) if (200..300).contains(&resp.status) => return Some(resp),
        Ok(resp) => {
            let body = String::from_utf8_lossy(&resp.body);
            *errors.entry(format!("publish: HTTP {}: {}", resp.status, body.trim())).or_default() += 1;
        }
        Err(e) => *errors.entry(format!("publish: {e:#}")).or_default() += 1,
    }
    None
}

/// A publishing connection (opened once, reused for every event).
pub enum Publisher {
    Http(HttpConn, Target),
    Amqp { channel: lapin::Channel, exchange: String, _conn: Box<lapin::Connection> },
}

impl Publisher {
    /// `url` is an `http://` publish URL, or `amqp://...` to publish to `exchange`.
    pub async fn connect(url: &str, exchange: &str, target: Target) -> anyhow::Result<Publisher> {
        if !url.starts_with("amqp://") {
            return Ok(Publisher::Http(HttpConn::new(Endpoint::parse(url)?), target));
        }
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
        Ok(Publisher::Amqp { channel, exchange: exchange.to_owned(), _conn: Box::new(conn) })
    }

    /// Publishes one payload and waits for its answer (HTTP) or the broker's
    /// confirm (AMQP); the answer mimics an HTTP one (status, body).
    pub async fn publish(&mut self, dialer: &Dialer, payload: &str) -> anyhow::Result<Response> {
        match self {
            Publisher::Http(conn, target) => conn.request_default(dialer, "POST", &target.publish_body(payload)).await,
            Publisher::Amqp { channel, exchange, .. } => {
                // Waits for the broker's confirm: the round trip is publish-to-broker.
                amqp_publish(channel, exchange, payload).await?.await?;
                Ok(Response { status: 200, body: Vec::new() })
            }
        }
    }

    /// Publishes every payload, in order, and fails unless each was
    /// accepted. HTTP: one request after the other on one keep-alive
    /// connection (the order is the server's order). AMQP: all on one
    /// channel, then every confirm (one channel keeps the order).
    pub async fn publish_all(&mut self, dialer: &Dialer, payloads: &[String]) -> anyhow::Result<()> {
        match self {
            Publisher::Http(..) => {
                for p in payloads {
                    let resp = self.publish(dialer, p).await?;
                    if !(200..300).contains(&resp.status) {
                        anyhow::bail!("publish answered HTTP {}: {}", resp.status, String::from_utf8_lossy(&resp.body));
                    }
                }
            }
            Publisher::Amqp { channel, exchange, .. } => {
                let mut confirms = Vec::with_capacity(payloads.len());
                for p in payloads {
                    confirms.push(amqp_publish(channel, exchange, p).await?);
                }
                for c in confirms {
                    if let lapin::Confirmation::Nack(_) = c.await? {
                        anyhow::bail!("RabbitMQ refused a publish (nack)");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sends one backend-style message (`{"event","data"}`) to `broadcast`;
/// the returned future resolves with the broker's confirm.
async fn amqp_publish(
    channel: &lapin::Channel,
    exchange: &str,
    payload: &str,
) -> anyhow::Result<lapin::PublisherConfirm> {
    let body = serde_json::json!({"event": EVENT_NAME, "data": payload}).to_string();
    Ok(channel
        .basic_publish(
            exchange.into(),
            BROADCAST_KEY.into(),
            lapin::options::BasicPublishOptions::default(),
            body.as_bytes(),
            lapin::BasicProperties::default(),
        )
        .await?)
}
