//! `sse-gateway`: terminates Server-Sent-Events streams for a backend.
//!
//! Two paths and nothing else (see `docs/ARCHITECTURE.md`):
//!
//! * **Connect path**: a client opens an SSE request on any path; the gateway
//!   registers a random token as pending, asks the [`ConnectHook`] (the HTTP
//!   callback of SSEGateway, or an in-process backend), and applies the answer:
//!   an open stream with buffered events then `ready`, an in-stream `rejected`
//!   event, or an HTTP error. When an open stream ends the hook hears
//!   `disconnect` exactly once, with the reason.
//! * **Event path**: `/internal/send`, `/internal/publish` or an in-process
//!   [`GatewayHandle`] call is validated, encoded once by `sse-wire`, and
//!   handed by the [`Router`] (by token or routing key) to each stream's
//!   bounded [`StreamQueue`], as clones of one shared buffer.
//!
//! Architecture invariant: this crate knows nothing about tasks, leases or
//! devices; it moves opaque events to streams.

pub mod amqp;
mod api;
pub mod command;
pub mod config;
mod connect;
mod connection;
mod deliver;
mod keys;
pub mod error;
pub mod hook;
pub mod metrics;
mod raw_stream;
pub mod router;
mod server;
pub mod stream;

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AmqpConfig, Config, ConfigError, SETTINGS, Setting};
pub use deliver::{DeliveryError, SendStatus};
pub use hook::{Accepted, ClientRequest, ConnectHook, DisconnectReason, HttpCallbackHook, Refusal};
pub use router::Router;
pub use server::listen;
pub use stream::StreamQueue;

/// State shared by every connection of one gateway.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: Router,
    pub(crate) hook: Option<Arc<dyn ConnectHook>>,
    pub(crate) metrics: metrics::Metrics,
    /// Connect tasks and disconnect callbacks; shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Fired to start a graceful shutdown.
    pub(crate) shutdown: CancellationToken,
    /// Parent of every hyper connection's abort token; fired at the shutdown deadline.
    pub(crate) cut: CancellationToken,
    /// The RabbitMQ ingress, when configured.
    pub(crate) amqp: Option<Arc<amqp::Amqp>>,
    /// An embedding application: the one stream path, and who serves the rest.
    pub(crate) app: std::sync::OnceLock<(String, AppService)>,
}

impl Shared {
    /// True when a request for `url` opens a stream: the embedding app's
    /// stream path if there is one, else every path but the gateway's own.
    pub(crate) fn is_stream_path(&self, url: &str) -> bool {
        match self.app.get() {
            Some((path, _)) => url.split('?').next() == Some(path.as_str()),
            None => !connection::is_gateway_route(url),
        }
    }
}

/// The response body type of an embedding application.
pub type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An embedding application: serves every request that is neither a gateway
/// route nor the stream path. The client's address is in the request's
/// extensions as a `std::net::SocketAddr`.
pub type AppService = Arc<
    dyn Fn(http::Request<hyper::body::Incoming>) -> hook::HookFuture<'static, http::Response<AppBody>> + Send + Sync,
>;

/// A `retry:` hint with a random value in `min_ms..max_ms`, so clients told to
/// come back later do not all come back at once.
pub(crate) fn retry_hint(min_ms: u64, max_ms: u64) -> Bytes {
    let span = max_ms.saturating_sub(min_ms).max(1);
    let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u64;
    sse_wire::encode::retry(min_ms + jitter)
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
    pub fn send(&self, token: &str, event: Option<OutEvent<'_>>, close: bool) -> Result<SendStatus, DeliveryError> {
        deliver::send(&self.shared, token, encode(event)?, close)
    }

    /// Publishes to every stream bound to `key` (encoded once); returns how many matched.
    pub fn publish(&self, key: &str, event: Option<OutEvent<'_>>, close: bool) -> Result<usize, DeliveryError> {
        if !keys::is_valid_key(key) {
            return Err(DeliveryError::InvalidEvent(format!("invalid routing key {key:?}")));
        }
        let frame = encode(event)?;
        Ok(deliver::publish(&self.shared, "in_process", key, frame.as_ref(), close))
    }

    /// Number of open streams.
    pub fn open_streams(&self) -> usize {
        self.shared.router.counts().1
    }
}

/// A gateway ready to serve. Cheap to build; [`Gateway::serve`] runs it.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A gateway with the given configuration and connect hook (`None`: not
    /// configured, every SSE request is answered 503 as SSEGateway does).
    pub fn new(config: Config, hook: Option<Arc<dyn ConnectHook>>) -> Self {
        let router = Router::new(config.stream_queue_bytes, config.max_connections, config.resume_ttl);
        let amqp = config.amqp.clone().map(amqp::Amqp::new);
        Self {
            shared: Arc::new(Shared {
                config,
                router,
                hook,
                metrics: metrics::Metrics::default(),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                cut: CancellationToken::new(),
                app: std::sync::OnceLock::new(),
                amqp,
            }),
        }
    }

    /// Embeds the gateway in an application: streams open only on exactly
    /// `stream_path` (query ignored, e.g. `/api/sse/stream`); every request
    /// that is not a gateway route (`/healthz`, `/readyz`, `/metrics`,
    /// `/internal/send`, `/internal/publish`) goes to `app`. Call before `serve`;
    /// a second call is ignored.
    pub fn with_app(self, stream_path: &str, app: AppService) -> Self {
        let _ = self.shared.app.set((stream_path.to_owned(), app));
        self
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
    /// shutdown timeout plus one callback timeout.
    pub async fn serve(self, public: TcpListener, internal: Option<TcpListener>) {
        server::serve(self.shared, public, internal).await;
    }
}
