//! MQTT ingest of device logs (docs/BACKEND.md, Device logs): one MQTT v5
//! client, a persistent
//! session (clean start off, session expiry 1 h), the log topic subscribed at
//! QoS 1 after every connect (so a reconnect re-subscribes), each message
//! handed to [`DeviceLogs::ingest`]. Reconnects with a capped backoff.
//!
//! Owns the broker connection only; what a message means is
//! [`crate::device_logs`]'s business.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

use crate::device_logs::DeviceLogs;
use crate::metrics::HubMetrics;

/// Broker settings.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (plain TCP; 1883 by default).
    pub url: String,
    /// Topic of the NDJSON log messages.
    pub topic: String,
    /// Client id (persistent session key).
    pub client_id: String,
    /// Optional credentials.
    pub username: Option<String>,
    /// Optional credentials.
    pub password: Option<String>,
}

/// A broker URL this build cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttUrlError {
    /// Not `mqtt://host[:port]`.
    #[error("invalid MQTT URL {0:?}: expected mqtt://host[:port] (mqtts:// needs a TLS build, not this one)")]
    Invalid(String),
}

/// `mqtt://host[:port]` to `(host, port)`.
pub fn parse_url(url: &str) -> Result<(String, u16), MqttUrlError> {
    let bad = || MqttUrlError::Invalid(url.to_owned());
    let rest = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")).ok_or_else(bad)?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>().map_err(|_| bad())?),
        _ => (hostport, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Runs the client until `stop` fires.
pub async fn run(config: MqttConfig, logs: DeviceLogs, metrics: HubMetrics, stop: CancellationToken) {
    let (host, port) = match parse_url(&config.url) {
        Ok(hp) => hp,
        Err(e) => {
            tracing::error!(error = %e, "MQTT ingest disabled");
            return;
        }
    };
    let mut options = MqttOptions::new(config.client_id.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(3600));
    if let (Some(u), Some(p)) = (&config.username, &config.password) {
        options.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut backoff = Duration::from_millis(500);
    loop {
        let polled = tokio::select! {
            () = stop.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(500);
                metrics.mqtt_connected.set(1);
                tracing::info!(url = %config.url, topic = %config.topic, "connected to the MQTT broker");
                // Queued in the client; sent by the next polls.
                if let Err(e) = client.try_subscribe(config.topic.clone(), QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "cannot subscribe to the log topic");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                tracing::info!(topic = %config.topic, "subscribed to the log topic");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let o = logs.ingest(&p.payload).await;
                tracing::debug!(accepted = o.accepted, rejected = o.rejected, delivered = o.delivered, "log message");
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected.set(0);
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    let _ = client.try_disconnect();
    metrics.mqtt_connected.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(parse_url("mqtt://127.0.0.1:1883"), Ok(("127.0.0.1".into(), 1883)));
        assert_eq!(parse_url("mqtt://broker"), Ok(("broker".into(), 1883)));
        assert_eq!(parse_url("mqtt://u:p@broker:1884/"), Ok(("broker".into(), 1884)));
        assert!(parse_url("mqtts://broker").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
        assert!(parse_url("mqtt://h:notaport").is_err());
    }
}
