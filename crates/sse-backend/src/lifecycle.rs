//! Application lifecycle (docs/BACKEND.md, Lifecycle): `startup`, `prepare-shutdown`,
//! `shutdown`, `after-shutdown`; shutdown waiters sharing one graceful
//! timeout; readiness that turns 503 once shutdown began.
//!
//! Listeners are sync and isolated (a panic is logged, the rest still run).
//! Waiters run one after the other, each bounded by the time left; when none
//! is left the rest are skipped. [`Lifecycle::health_router`] serves
//! `/health/healthz`, `/health/readyz` and `/health/drain`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::BoxFuture;
use crate::metrics::Metrics;
use crate::observer::{call_isolated, run_isolated};
use crate::version::bearer_matches;

/// A lifecycle stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The application started.
    Startup,
    /// Shutdown began: refuse new work.
    PrepareShutdown,
    /// Waiters are done: release resources.
    Shutdown,
    /// Last call.
    AfterShutdown,
}

type Listener = Arc<dyn Fn(LifecycleEvent) + Send + Sync>;
/// A waiter gets the time left and says whether it finished in time.
type Waiter = Arc<dyn Fn(Duration) -> BoxFuture<'static, bool> + Send + Sync>;

struct Inner {
    graceful_timeout: Duration,
    listeners: Mutex<Vec<Listener>>,
    waiters: Mutex<Vec<(String, Waiter)>>,
    started: AtomicBool,
    shutting_down: AtomicBool,
    metrics: Metrics,
    done: tokio::sync::Notify,
    finished: AtomicBool,
}

/// The coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

impl Lifecycle {
    /// A coordinator with a total shutdown budget (`GRACEFUL_SHUTDOWN_TIMEOUT`, 600 s).
    pub fn new(graceful_timeout: Duration, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                graceful_timeout,
                listeners: Mutex::default(),
                waiters: Mutex::default(),
                started: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                metrics,
                done: tokio::sync::Notify::new(),
                finished: AtomicBool::new(false),
            }),
        }
    }

    fn listeners(&self) -> MutexGuard<'_, Vec<Listener>> {
        self.inner.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a listener of every stage.
    pub fn register_listener(&self, f: impl Fn(LifecycleEvent) + Send + Sync + 'static) {
        self.listeners().push(Arc::new(f));
    }

    /// Adds a shutdown waiter.
    pub fn register_waiter<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let w: Waiter = Arc::new(move |left| Box::pin(f(left)));
        self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_owned(), w));
    }

    /// Wires the toolkit's services into the phases: prepare-shutdown makes
    /// each refuse new work, shutdown stops tasks and version fetches, and the
    /// shutdown waits (within the graceful timeout) for running tasks.
    pub fn manage_services(
        &self,
        tasks: &crate::tasks::TaskService,
        version: &crate::version::VersionService,
        subscriptions: &crate::subscriptions::Subscriptions,
    ) {
        let (t, v, s) = (tasks.clone(), version.clone(), subscriptions.clone());
        self.register_listener(move |e| match e {
            LifecycleEvent::PrepareShutdown => {
                t.prepare_shutdown();
                v.prepare_shutdown();
                s.prepare_shutdown();
            }
            LifecycleEvent::Shutdown => {
                t.shutdown();
                v.shutdown();
            }
            _ => {}
        });
        let t = tasks.clone();
        self.register_waiter("tasks", move |left| {
            let t = t.clone();
            async move { t.wait_idle(left).await }
        });
    }

    /// Opt-in, after [`Lifecycle::manage_services`]: at prepare-shutdown,
    /// cancel every pending and running task (each stream hears
    /// `task_cancelled`) instead of waiting up to the graceful timeout for
    /// them; the tasks waiter then only waits until those events are sent.
    /// For servers whose tasks are not worth finishing (demos, previews).
    pub fn cancel_tasks_on_shutdown(&self, tasks: &crate::tasks::TaskService) {
        let t = tasks.clone();
        self.register_listener(move |e| {
            if e == LifecycleEvent::PrepareShutdown {
                let n = t.cancel_all();
                if n > 0 {
                    tracing::info!(tasks = n, "shutdown: cancelled the live tasks");
                }
            }
        });
    }

    fn fire(&self, event: LifecycleEvent) {
        let list = self.listeners().clone();
        for l in list {
            call_isolated("lifecycle", || l(event));
        }
    }

    /// Fires `startup` once; later calls do nothing.
    pub fn fire_startup(&self) {
        if !self.inner.started.swap(true, Ordering::SeqCst) {
            self.fire(LifecycleEvent::Startup);
        }
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Runs the shutdown sequence once; a second call returns at once.
    pub async fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.metrics.shutting_down.set(1);
        self.fire(LifecycleEvent::PrepareShutdown);
        // tokio's clock, so tests can pause time.
        let started = tokio::time::Instant::now();
        let waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, w) in waiters {
            let left = self.inner.graceful_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                tracing::warn!(waiter = %name, "no shutdown time left; skipped");
                continue;
            }
            let ready = Arc::new(AtomicBool::new(false));
            let r = Arc::clone(&ready);
            let run = run_isolated("shutdown waiter", || async move {
                let ok = tokio::time::timeout(left, w(left)).await.unwrap_or(false);
                r.store(ok, Ordering::SeqCst);
            });
            run.await;
            if !ready.load(Ordering::SeqCst) {
                tracing::warn!(waiter = %name, "shutdown waiter not ready");
            }
        }
        self.inner.metrics.graceful_shutdown_duration.observe(started.elapsed().as_secs_f64());
        self.fire(LifecycleEvent::Shutdown);
        self.fire(LifecycleEvent::AfterShutdown);
        self.inner.finished.store(true, Ordering::SeqCst);
        self.inner.done.notify_waiters();
    }

    /// Resolves once a shutdown has run to the end.
    pub async fn finished(&self) {
        loop {
            let n = self.inner.done.notified();
            if self.inner.finished.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }

    /// `/health/healthz` (200), `/health/readyz` (503 once shutting down, else
    /// the gateway's `/readyz` when `gateway_url` is set), `/health/drain`
    /// (`Authorization: Bearer <drain_key>` starts shutdown; 401 otherwise).
    pub fn health_router(&self, gateway_url: Option<String>, drain_key: String) -> axum::Router {
        use axum::routing::get;
        let state =
            Arc::new(Health { lifecycle: self.clone(), gateway_url, drain_key, client: reqwest::Client::new() });
        axum::Router::new()
            .route("/health/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/health/readyz", get(readyz))
            .route("/health/drain", get(drain))
            .with_state(state)
    }
}

struct Health {
    lifecycle: Lifecycle,
    gateway_url: Option<String>,
    drain_key: String,
    client: reqwest::Client,
}

async fn readyz(State(h): State<Arc<Health>>) -> Response {
    if h.lifecycle.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "shutting down", "ready": false})))
            .into_response();
    }
    let Some(url) = &h.gateway_url else {
        return Json(json!({"status": "ready", "ready": true})).into_response();
    };
    let probe = h.client.get(format!("{}/readyz", url.trim_end_matches('/'))).timeout(Duration::from_secs(2)).send();
    let check = match probe.await {
        Ok(r) if r.status().is_success() => json!({"reachable": true, "ok": true}),
        Ok(r) => json!({"reachable": true, "status_code": r.status().as_u16(), "ok": false}),
        Err(e) => json!({"reachable": false, "error": e.to_string(), "ok": false}),
    };
    if check["ok"] == true {
        Json(json!({"status": "ready", "ready": true, "checks": {"sse_gateway": check}})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "ready": false, "checks": {"sse_gateway": check}})),
        )
            .into_response()
    }
}

async fn drain(State(h): State<Arc<Health>>, headers: HeaderMap) -> Response {
    if !bearer_matches(&headers, &h.drain_key) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "Unauthorized"}))).into_response();
    }
    let lc = h.lifecycle.clone();
    tokio::spawn(async move { lc.shutdown().await });
    Json(json!({"status": "draining"})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(lc: &Lifecycle) -> Arc<Mutex<Vec<String>>> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        lc.register_listener(move |e| l.lock().unwrap().push(format!("{e:?}")));
        log
    }

    #[tokio::test]
    async fn lifecycle_event_order_and_multiple_listeners() {
        let lc = Lifecycle::new(Duration::from_secs(5), Metrics::default());
        let a = recorder(&lc);
        let b = recorder(&lc);
        lc.fire_startup();
        lc.shutdown().await;
        let expected = vec!["Startup", "PrepareShutdown", "Shutdown", "AfterShutdown"];
        assert_eq!(*a.lock().unwrap(), expected);
        assert_eq!(*b.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn lifecycle_startup_idempotent_and_second_shutdown_is_a_noop() {
        let lc = Lifecycle::new(Duration::from_secs(5), Metrics::default());
        let log = recorder(&lc);
        lc.fire_startup();
        lc.fire_startup();
        lc.shutdown().await;
        lc.shutdown().await;
        assert_eq!(log.lock().unwrap().len(), 4);
        assert!(lc.is_shutting_down());
    }

    #[tokio::test]
    async fn lifecycle_waiters_sequential_with_shrinking_timeout() {
        tokio::time::pause();
        let lc = Lifecycle::new(Duration::from_secs(10), Metrics::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        for (name, sleep) in [("a", 4u64), ("b", 30), ("c", 1)] {
            let s = Arc::clone(&seen);
            lc.register_waiter(name, move |left| {
                let s = Arc::clone(&s);
                async move {
                    s.lock().unwrap().push((name, left.as_secs_f64().round() as u64));
                    tokio::time::sleep(Duration::from_secs(sleep)).await;
                    true
                }
            });
        }
        lc.shutdown().await;
        assert_eq!(*seen.lock().unwrap(), vec![("a", 10), ("b", 6)], "b used the rest; c was skipped");
    }

    #[tokio::test]
    async fn cancel_tasks_on_shutdown_ends_a_never_ending_task_instead_of_waiting_for_it() {
        let (rec, cm) = crate::testing::Recorder::manager();
        cm.on_connect("r1", "t1", "/", None, None).await;
        let tasks = crate::tasks::TaskService::new(crate::tasks::TaskConfig::default(), cm.clone());
        let version = crate::version::VersionService::new(crate::version::VersionConfig::default(), cm.clone());
        let subs = crate::subscriptions::Subscriptions::new(cm);
        let lc = Lifecycle::new(Duration::from_secs(600), Metrics::default());
        lc.manage_services(&tasks, &version, &subs);
        lc.cancel_tasks_on_shutdown(&tasks);
        let info = tasks
            .start_task(
                crate::tasks::task_fn(|ctx| async move {
                    ctx.cancelled().await;
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        // Bounded well below the graceful timeout: without the option this waits 600 s.
        tokio::time::timeout(Duration::from_secs(5), lc.shutdown()).await.expect("shutdown did not wait for the task");
        let cancelled = rec.events().iter().any(|(_, e)| {
            serde_json::from_str::<serde_json::Value>(&e.data)
                .is_ok_and(|v| v["task_id"] == info.task_id.as_str() && v["event_type"] == "task_cancelled")
        });
        assert!(cancelled, "task_cancelled was sent before shutdown returned");
    }

    #[tokio::test]
    async fn lifecycle_listener_and_waiter_exceptions_are_isolated() {
        let lc = Lifecycle::new(Duration::from_secs(5), Metrics::default());
        lc.register_listener(|_| panic!("listener boom"));
        let log = recorder(&lc);
        lc.register_waiter("panics", |_| async { panic!("waiter boom") });
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        lc.register_waiter("ok", move |_| {
            let r = Arc::clone(&r);
            async move {
                r.store(true, Ordering::SeqCst);
                false
            }
        });
        lc.shutdown().await;
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
