//! The embedding API: build a [`Gateway`], serve it, and reach its event
//! path in-process through a [`GatewayHandle`].

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::AppService;
use crate::command;
use crate::config::Config;
use crate::deliver::{self, DeliveryError, SendStatus};
use crate::events::Ingress;
use crate::hook::ConnectHook;
use crate::shared::Shared;

/// A gateway ready to serve. Built with [`Gateway::builder`]; [`Gateway::serve`] runs it.
pub struct Gateway {
    shared: Arc<Shared>,
}

/// Collects what a [`Gateway`] is made of.
pub struct GatewayBuilder {
    config: Config,
    hook: Option<Arc<dyn ConnectHook>>,
    app: Option<(String, AppService)>,
}

impl GatewayBuilder {
    /// The connect hook that decides about streams and hears their end.
    /// Without one the gateway is not configured: every stream request is
    /// answered 503, as SSEGateway does without `CALLBACK_URL`.
    pub fn hook(mut self, hook: Arc<dyn ConnectHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Embeds the gateway in an application: streams open only on exactly
    /// `stream_path` (query ignored, e.g. `/api/sse/stream`), and every public
    /// request the gateway does not serve itself (`/healthz`, `/readyz`,
    /// `/metrics`, `/internal/send`, `/internal/publish`) goes to `app`.
    pub fn app(mut self, stream_path: impl Into<String>, app: AppService) -> Self {
        self.app = Some((stream_path.into(), app));
        self
    }

    /// The gateway.
    pub fn build(self) -> Gateway {
        Gateway { shared: Arc::new(Shared::new(self.config, self.hook, self.app)) }
    }
}

impl Gateway {
    /// Starts building a gateway with `config`.
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder { config, hook: None, app: None }
    }

    /// In-process access to the event path.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle { shared: Arc::clone(&self.shared) }
    }

    /// Cancelling this token starts a graceful shutdown (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Serves streams and the public API on `public`, and the internal API on
    /// `internal` (if any), until the shutdown token fires; then drains: stops
    /// accepting, ends every stream with a jittered `retry:` hint and a
    /// `server_closed` disconnect callback, and returns within the configured
    /// shutdown timeout plus one callback timeout. Bind the listeners with
    /// [`crate::listen`] for a backlog that takes a reconnect storm.
    pub async fn serve(self, public: TcpListener, internal: Option<TcpListener>) {
        crate::server::serve(self.shared, public, internal).await;
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// An application event to deliver in-process: named events use the
/// `{type,payload}` envelope, unnamed ones are plain data lines.
#[derive(Debug, Clone, Copy)]
pub struct OutEvent<'a> {
    /// Event name (`type` in the envelope); `None` or empty for an unnamed event.
    pub name: Option<&'a str>,
    /// The data, normally JSON text.
    pub data: &'a str,
}

/// In-process access to a running gateway's event path (the third ingress,
/// beside `/internal/send` and `/internal/publish`). Cheap to clone.
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
}

fn encode(event: Option<OutEvent<'_>>) -> Result<Option<Bytes>, DeliveryError> {
    event
        .map(|e| command::encode_event(e.name, e.data).map_err(|err| DeliveryError::InvalidEvent(err.message)))
        .transpose()
}

impl GatewayHandle {
    /// Sends to one token, exactly like `/internal/send`.
    ///
    /// With RabbitMQ and history, an event for an open stream goes through
    /// the cluster's history stream in a task of its own (this call does not
    /// wait for the broker): `Ok` means it was handed over; a publish the
    /// broker then refuses is logged and counted
    /// (`sse_gateway_error_answers{code="BROKER_UNAVAILABLE"}`).
    pub fn send(&self, token: &str, event: Option<OutEvent<'_>>, close: bool) -> Result<SendStatus, DeliveryError> {
        let shared = &self.shared;
        let frame = encode(event)?;
        if let (Some(amqp), Some(frame)) = (shared.amqp.as_ref().filter(|a| a.has_history()), &frame)
            && let Some(t) = deliver::parse_token(token)
            && let Some(key) = shared.router.send_key(t)
        {
            self.through_broker(amqp, key, frame.clone(), Some(t), close)?;
            return Ok(SendStatus::Ok);
        }
        deliver::send(&shared.router, &shared.metrics, token, frame, close)
    }

    /// Publishes to every stream bound to `key` (encoded once); returns how many matched.
    pub fn publish(&self, key: &str, event: Option<OutEvent<'_>>, close: bool) -> Result<usize, DeliveryError> {
        if !crate::keys::is_valid_key(key) {
            return Err(DeliveryError::InvalidEvent(format!("invalid routing key {key:?}")));
        }
        let frame = encode(event)?;
        let shared = &self.shared;
        if let Some(amqp) = shared.amqp.as_ref().filter(|a| a.has_history()) {
            self.through_broker(amqp, key.to_owned(), frame.unwrap_or_default(), None, close)?;
            return Ok(shared.router.bound(key));
        }
        Ok(deliver::publish(&shared.router, &shared.metrics, Ingress::InProcess, key, frame.as_ref(), close))
    }

    /// Hands an event to the broker in a task (RabbitMQ mode with history),
    /// in the order of the calls (see `amqp::Turn`).
    fn through_broker(
        &self,
        amqp: &Arc<crate::amqp::Amqp>,
        key: String,
        frame: Bytes,
        token: Option<uuid::Uuid>,
        close: bool,
    ) -> Result<(), DeliveryError> {
        if !amqp.is_connected() {
            return Err(DeliveryError::BrokerUnavailable);
        }
        let mut turn = amqp.take_turn();
        let (amqp, shared) = (Arc::clone(amqp), Arc::clone(&self.shared));
        self.shared.tracker.spawn(async move {
            turn.wait().await;
            if let Err(e) = amqp.publish_frame(&key, &frame, token, close, turn).await {
                tracing::warn!(key, error = %e, "an in-process event could not be published to RabbitMQ; it is lost");
                shared
                    .metrics
                    .emit(crate::events::Event::ErrorAnswered { code: crate::error::ErrorCode::BrokerUnavailable });
            }
        });
        Ok(())
    }

    /// The cursor of the latest event (`None` with history off): read it
    /// before taking a snapshot and hand it to the client, whose stream
    /// opened with `lastEventId=<it>` then gets every event after it.
    pub fn history_position(&self) -> Option<String> {
        self.shared.router.history_position()
    }

    /// Number of open streams.
    pub fn open_streams(&self) -> usize {
        self.shared.router.counts().1
    }
}
