//! The state every connection of one gateway shares, behind one `Arc`.
//!
//! Each piece has one owner and one lock rule: the router and the stream
//! queues guard themselves (see `router` and `queue`); the rest is
//! immutable after start or internally synchronised.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::Amqp;
use crate::app::AppService;
use crate::config::Config;
use crate::disconnect::Waiting;
use crate::expiry::Expiries;
use crate::hook::ConnectHook;
use crate::metrics::Metrics;
use crate::router::Router;

/// State shared by every connection of one gateway.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: Arc<Router>,
    pub(crate) hook: Option<Arc<dyn ConnectHook>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Connect tasks and disconnect callbacks; shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Fired to start a graceful shutdown.
    pub(crate) shutdown: CancellationToken,
    /// Parent of every hyper connection's abort token; fired at the shutdown deadline.
    pub(crate) cut: CancellationToken,
    /// The RabbitMQ ingress, when configured.
    pub(crate) amqp: Option<Arc<Amqp>>,
    /// An embedding application: its stream path, and the service for the rest.
    pub(crate) app: Option<(String, AppService)>,
    /// Streams with a credential expiry.
    pub(crate) expiries: Expiries,
    /// Disconnect callbacks waiting for a retry.
    pub(crate) disconnects_waiting: Waiting,
}

impl Shared {
    pub(crate) fn new(config: Config, hook: Option<Arc<dyn ConnectHook>>, app: Option<(String, AppService)>) -> Self {
        let router = Arc::new(Router::new(config.stream_queue_bytes, config.max_connections, config.resume_ttl));
        let amqp = config.amqp.clone().map(Amqp::new);
        Self {
            config,
            router,
            hook,
            metrics: Arc::new(Metrics::default()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            cut: CancellationToken::new(),
            amqp,
            app,
            expiries: Expiries::default(),
            disconnects_waiting: Waiting::default(),
        }
    }

    /// The embedding application's stream path, if there is an application.
    pub(crate) fn app_stream_path(&self) -> Option<&str> {
        self.app.as_ref().map(|(path, _)| path.as_str())
    }
}
