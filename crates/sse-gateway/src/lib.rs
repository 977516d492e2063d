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
//! * **Event path**: `/internal/send` (or an in-process call) is validated,
//!   encoded once by `sse-wire`, and handed by the [`Router`] to the stream's
//!   bounded [`StreamQueue`].
//!
//! Architecture invariant: this crate knows nothing about tasks, leases or
//! devices; it moves opaque events to streams.

pub mod command;
pub mod config;
pub mod error;
pub mod hook;
pub mod metrics;
pub mod router;
mod server;
pub mod stream;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Cli, Config, ConfigError};
pub use hook::{Accepted, ClientRequest, ConnectHook, DisconnectReason, HttpCallbackHook, Refusal};
pub use router::Router;
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
    /// Parent of every connection's abort token; fired at the shutdown deadline.
    pub(crate) cut: CancellationToken,
}

/// A gateway ready to serve. Cheap to build; [`Gateway::serve`] runs it.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A gateway with the given configuration and connect hook (`None`: not
    /// configured, every SSE request is answered 503 as SSEGateway does).
    pub fn new(config: Config, hook: Option<Arc<dyn ConnectHook>>) -> Self {
        let router = Router::new(config.stream_queue_bytes);
        Self {
            shared: Arc::new(Shared {
                config,
                router,
                hook,
                metrics: metrics::Metrics::default(),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                cut: CancellationToken::new(),
            }),
        }
    }

    /// Cancelling this token starts a graceful shutdown (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Serves on `listener` until the shutdown token fires, then drains:
    /// stops accepting, ends every stream with a jittered `retry:` hint and a
    /// `server_closed` disconnect callback, and returns within the configured
    /// shutdown timeout plus one callback timeout.
    pub async fn serve(self, listener: TcpListener) {
        server::serve(self.shared, listener).await;
    }
}
