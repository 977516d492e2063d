//! Wiring: the one place that builds every service from [`HubConfig`],
//! composes their routes, and serves them, either inside the in-process
//! gateway (`Gateway::builder(..).app(..)`, streams at `/api/sse/stream`) or, with
//! `SSE_GATEWAY_URL` set, as a plain backend behind an external gateway
//! (`POST /api/sse/callback`, events over HTTP).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use sse_backend::broadcaster::Broadcaster;
use sse_backend::in_process::{InProcessBroadcaster, InProcessHook};
use sse_backend::lifecycle::{Lifecycle, LifecycleEvent};
use sse_backend::subscriptions::Subscriptions;
use sse_backend::tasks::TaskService;
use sse_backend::version::VersionService;
use sse_backend::{CallbackHandler, ConnectionManager, HttpBroadcaster, IdentityResolver};
use sse_gateway::{AppBody, AppService, Gateway, GatewayHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HubConfig;
use crate::device_logs::DeviceLogs;
use crate::dnsmasq::{ConfigReadError, read_config};
use crate::internal::{InternalAccess, Rotation, guard, version_router};
use crate::leases::{LeaseService, now_secs};
use crate::metrics::HubMetrics;

/// The path streams open on.
pub const STREAM_PATH: &str = "/api/sse/stream";

const DASHBOARD: &str = include_str!("dashboard.html");
/// The dashboard's stream worker: the one stream all its tabs share.
const DASHBOARD_WORKER: &str = include_str!("dashboard-worker.js");
/// Where the page loads the worker from.
const DASHBOARD_WORKER_PATH: &str = "/dashboard-worker.js";
/// Replaced in the page by the worker's URL: a URL per worker version, so a
/// page of a newer hub never talks to an older worker still serving old tabs.
const WORKER_URL_PLACEHOLDER: &str = "__DASHBOARD_WORKER_URL__";

/// Why the hub cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The demo data directory cannot be created. (The OS error is part of
    /// the message, not a `source`, so a chain print shows it once.)
    #[error("cannot create the data directory {path}: {error}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The dnsmasq configuration cannot be read.
    #[error(transparent)]
    Dnsmasq(#[from] ConfigReadError),
    /// The listener has no address.
    #[error("listener address: {0}")]
    Listener(std::io::Error),
}

/// A running hub.
pub struct RunningHub {
    /// Where it listens.
    pub addr: SocketAddr,
    lifecycle: Lifecycle,
    stop: CancellationToken,
    gateway_shutdown: Option<CancellationToken>,
    server: JoinHandle<()>,
}

impl RunningHub {
    /// Graceful shutdown: refuse new tasks, cancel the live ones (their
    /// streams hear `task_cancelled`), stop the background loops, drain the
    /// streams (up to the gateway's shutdown deadline).
    pub async fn shutdown(self) {
        self.lifecycle.shutdown().await;
        self.stop.cancel();
        if let Some(g) = &self.gateway_shutdown {
            g.cancel();
        }
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "server task ended abnormally");
        }
    }
}

/// `http://HOST:PORT` (`https://` with TLS) to reach a listener at `addr`
/// from this machine: an unspecified address (`0.0.0.0`, `::`) becomes loopback.
pub fn local_url(addr: SocketAddr, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("{scheme}://127.0.0.1:{}", a.port()),
        SocketAddr::V4(a) => format!("{scheme}://{a}"),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("{scheme}://[::1]:{}", a.port()),
        SocketAddr::V6(a) => format!("{scheme}://[{}]:{}", a.ip(), a.port()),
    }
}

/// An axum router as the gateway's embedded application.
pub fn app_service(router: axum::Router) -> AppService {
    Arc::new(move |req: http::Request<hyper::body::Incoming>| {
        let router = router.clone();
        Box::pin(async move {
            let req = req.map(axum::body::Body::new);
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            resp.map(|b| -> AppBody { b.map_err(Into::into).boxed_unsync() })
        })
    })
}

/// FNV-1a of `text`: a short, stable version tag (not a security measure).
fn content_tag(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// The page, with the worker's versioned URL filled in.
fn dashboard_page() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        let url = format!("{DASHBOARD_WORKER_PATH}?v={}", content_tag(DASHBOARD_WORKER));
        DASHBOARD.replace(WORKER_URL_PLACEHOLDER, &url)
    })
}

async fn dashboard() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], dashboard_page())
        .into_response()
}

async fn dashboard_worker() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], DASHBOARD_WORKER)
        .into_response()
}

async fn version_file(path: PathBuf) -> Response {
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the version file");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// Builds everything and starts serving on `listener`.
pub async fn start(cfg: HubConfig, listener: TcpListener) -> Result<RunningHub, StartError> {
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    let oidc = cfg.oidc.clone();
    if cfg.dnsmasq_config.is_none() {
        let created = crate::demo_data::ensure(&cfg.data_dir, now_secs())
            .map_err(|error| StartError::DataDir { path: cfg.data_dir.clone(), error })?;
        if !created.is_empty() {
            tracing::info!(dir = %cfg.data_dir.display(), files = ?created, "created demo data");
        }
    }
    let dnsmasq = read_config(&cfg.dnsmasq_config_path())?;
    let mqtt = cfg.mqtt.clone();

    let mut registry = Registry::default();
    let backend_metrics = sse_backend::Metrics::register(&mut registry);
    let metrics = HubMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    let in_process = cfg.external_gateway.is_none();
    let deferred = Arc::new(InProcessBroadcaster::<GatewayHandle>::deferred());
    let broadcaster: Arc<dyn Broadcaster> = match &cfg.external_gateway {
        None => deferred.clone(),
        Some(b) => Arc::new(HttpBroadcaster::new(b.clone())),
    };
    let manager = ConnectionManager::new(broadcaster, backend_metrics.clone());
    let identity = Arc::new(IdentityResolver::new(oidc));
    let callback = Arc::new(CallbackHandler::new(cfg.callback.clone(), manager.clone(), identity.clone()));
    let tasks = TaskService::new(cfg.tasks.clone(), manager.clone());
    tasks.start_cleanup();
    let self_url = local_url(addr, cfg.tls.is_some());
    let version = VersionService::new(cfg.version(&self_url), manager.clone());
    let subscriptions = Subscriptions::new(manager.clone());
    let logs = DeviceLogs::new(subscriptions.clone(), identity.clone(), metrics.clone());
    let rotation = Rotation::new(manager.clone(), metrics.clone());
    let leases = LeaseService::new(dnsmasq, manager.clone(), metrics.clone(), cfg.lease_snapshot_threshold);
    leases.load_initial().await;
    tracing::info!(file = %leases.lease_file().display(), leases = leases.leases().len(), "lease file loaded");

    let lifecycle = Lifecycle::new(cfg.graceful_shutdown_timeout, backend_metrics);
    lifecycle.manage_services(&tasks, &version, &subscriptions);
    // A stop ends the demo tasks (their streams hear task_cancelled) rather
    // than waiting up to the graceful timeout for them.
    lifecycle.cancel_tasks_on_shutdown(&tasks);
    let r = rotation.clone();
    lifecycle.register_listener(move |e| {
        if e == LifecycleEvent::PrepareShutdown {
            r.prepare_shutdown();
        }
    });
    lifecycle.fire_startup();

    let stop = CancellationToken::new();
    let poll = (cfg.lease_poll_seconds > 0).then(|| Duration::from_secs(cfg.lease_poll_seconds));
    leases.start(poll, stop.clone());
    if let Some(path) = cfg.frontend_version_file.clone() {
        crate::version_file::start(path, version.clone(), stop.clone());
    }
    if let Some(m) = mqtt {
        tokio::spawn(crate::mqtt::run(m, logs.clone(), metrics.clone(), stop.clone()));
    }

    let metrics_route = {
        let registry = Arc::clone(&registry);
        get(move || {
            let registry = Arc::clone(&registry);
            async move {
                (
                    [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    sse_backend::metrics::encode(&registry),
                )
            }
        })
    };
    let mut router = axum::Router::new()
        .route("/", get(dashboard))
        .route(DASHBOARD_WORKER_PATH, get(dashboard_worker))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/internal/metrics", metrics_route.clone())
        .merge(leases.router())
        .merge(crate::demo_tasks::router(tasks.clone(), identity.clone()))
        .merge(logs.router())
        .merge(rotation.router())
        .merge(version_router(version.clone()));
    if let Some(path) = cfg.frontend_version_file.clone() {
        router = router.route("/version.json", get(move || version_file(path.clone())));
    }
    if !in_process {
        let gateway_url = cfg.external_gateway.as_ref().map(|g| g.gateway_url.clone());
        router = router
            .route("/metrics", metrics_route)
            .merge(Arc::clone(&callback).router())
            .merge(lifecycle.health_router(gateway_url, String::new()));
    }
    let router =
        router.layer(axum::middleware::from_fn_with_state(InternalAccess::new(cfg.internal_api_secret.clone()), guard));

    let (server, gateway_shutdown) = if in_process {
        let amqp = cfg.amqp.clone();
        let gw_config = sse_gateway::Config {
            listen: addr,
            heartbeat_interval: Duration::from_secs(cfg.heartbeat_interval_seconds),
            stream_queue_bytes: cfg.stream_queue_bytes,
            internal_api_secret: cfg.internal_api_secret.clone(),
            tls: cfg.tls.clone(),
            resume_ttl: amqp.as_ref().map_or(Duration::ZERO, |a| a.queue_ttl),
            instance_id: amqp
                .as_ref()
                .map_or_else(|| sse_gateway::Config::default().instance_id, |a| a.instance_id.clone()),
            amqp,
            // A failed connect tells the browser to come back rather than
            // giving it a status EventSource treats as final; every stream's
            // retry: is jittered so a restart's reconnects spread out.
            retry_on_backend_failure: true,
            open_retry_jitter: Some((1_000, 5_000)),
            history: Duration::from_secs(cfg.history_seconds),
            ..sse_gateway::Config::default()
        };
        let gateway = Gateway::builder(gw_config)
            .hook(InProcessHook::new(callback))
            .app(STREAM_PATH, app_service(router))
            .build();
        deferred.attach(gateway.handle());
        let token = gateway.shutdown_token();
        (tokio::spawn(gateway.serve(listener, None)), Some(token))
    } else {
        let done = stop.clone();
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, service).with_graceful_shutdown(done.cancelled_owned()).await {
                tracing::error!(error = %e, "server failed");
            }
        });
        (server, None)
    };
    Ok(RunningHub { addr, lifecycle, stop, gateway_shutdown, server })
}

#[cfg(test)]
mod tests {
    use super::{WORKER_URL_PLACEHOLDER, content_tag, dashboard_page, local_url};

    #[test]
    fn the_page_names_the_worker_by_a_url_that_changes_with_its_content() {
        let page = dashboard_page();
        assert!(!page.contains(WORKER_URL_PLACEHOLDER));
        assert!(page.contains(&format!("/dashboard-worker.js?v={}", content_tag(super::DASHBOARD_WORKER))));
        assert_ne!(content_tag("a"), content_tag("b"));
        assert_eq!(content_tag("a").len(), 16);
    }

    #[test]
    fn local_url_turns_an_unspecified_address_into_loopback() {
        let url = |s: &str| local_url(s.parse().unwrap(), false);
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080");
        assert_eq!(url("192.168.1.2:80"), "http://192.168.1.2:80");
        assert_eq!(url("[fe80::1]:80"), "http://[fe80::1]:80");
        assert_eq!(local_url("0.0.0.0:8443".parse().unwrap(), true), "https://127.0.0.1:8443");
    }
}
