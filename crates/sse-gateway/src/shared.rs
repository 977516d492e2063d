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
use crate::disconnect::Disconnects;
use crate::expiry::Expiries;
use crate::history::{AMQP_EPOCH, History};
use crate::hook::ConnectHook;
use crate::metrics::Metrics;
use crate::pacing::Pacing;
use crate::protocols::Protocols;
use crate::router::Router;

/// State shared by every connection of one gateway.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: Arc<Router>,
    pub(crate) hook: Option<Arc<dyn ConnectHook>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Connect tasks, disconnect callbacks and HTTP/2 stream tasks; shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Client connections, and the raw streams that leave their connection
    /// task; the drain waits for them before it cuts.
    pub(crate) connections: TaskTracker,
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
    /// Disconnect callback delivery (retries).
    pub(crate) disconnects: Disconnects,
    /// Slots for backend callbacks in flight, and the connects waiting for one.
    pub(crate) callbacks: Arc<Pacing>,
    /// hyper's HTTP/1 and HTTP/2 connection settings.
    pub(crate) protocols: Protocols,
}

impl Shared {
    pub(crate) fn new(config: Config, hook: Option<Arc<dyn ConnectHook>>, app: Option<(String, AppService)>) -> Self {
        let history = (!config.history.is_zero()).then(|| {
            let epoch = if config.amqp.is_some() { AMQP_EPOCH } else { History::local_epoch() };
            History::new(epoch, config.history, config.history_max_bytes)
        });
        let router =
            Arc::new(Router::new(config.stream_queue_bytes, config.max_connections, config.resume_ttl, history));
        let amqp = config.amqp.clone().map(|a| Amqp::new(a, config.history));
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let callbacks = Arc::new(Pacing::new(config.max_concurrent_callbacks, config.max_queued_connects));
        let disconnects =
            Disconnects::new(config.disconnect_retry, Arc::clone(&metrics), shutdown.clone(), Arc::clone(&callbacks));
        let tracker = TaskTracker::new();
        Self {
            protocols: Protocols::new(config.max_header_bytes, &tracker),
            config,
            router,
            hook,
            metrics,
            tracker,
            connections: TaskTracker::new(),
            shutdown,
            cut: CancellationToken::new(),
            amqp,
            app,
            expiries: Expiries::default(),
            disconnects,
            callbacks,
        }
    }

    /// The embedding application's stream path, if there is an application.
    pub(crate) fn app_stream_path(&self) -> Option<&str> {
        self.app.as_ref().map(|(path, _)| path.as_str())
    }
}
