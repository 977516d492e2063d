//! DHCP leases live (docs/BACKEND.md, Leases; decision D6): the lease snapshot, its
//! change events and its routes.
//!
//! Owns the [`ChangeDetector`] over the lease file and the three triggers of
//! a re-read: the file watcher (`notify` on the file's directory, so a
//! replace-by-rename is seen), `POST /internal/notify-lease-change`, and a
//! slow poll as a fallback. An expiry timer sleeps until the next active
//! lease expires and re-evaluates the snapshot without reading, so
//! `lease_expired` fires once even when the file never changes. A failed or
//! garbled read keeps the previous snapshot, is logged and counted.
//!
//! Reloads and expiry checks are serialised by one async mutex (so events
//! leave in the order the snapshots were taken); the snapshot itself is
//! behind a std mutex held only for the diff, never across a send.
//!
//! Every lease event carries `seq`, the number of the lease state it leads
//! to: each change event adds one, and a reload that changes more than
//! `LEASE_SNAPSHOT_THRESHOLD` leases sends one `leases_snapshot` (the whole
//! list, one step) instead of one event per change. A stream opened with
//! `snapshot=leases` gets a `leases_snapshot` of the current state before
//! `ready`, and `POST /api/dhcp/leases/snapshot` sends one to a stream on
//! demand; both are taken under the same mutex as the changes, so a client
//! applies the deltas with a larger `seq` and drops the rest, and knows it
//! missed one when the `seq` jumps. `seq` starts at the process's start time
//! in microseconds (below 2^53, exact in JavaScript), so it only grows
//! across restarts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sse_backend::ConnectionManager;
use sse_backend::broadcaster::Event;
use sse_backend::change::{Change, ChangeDetector, Record};
use sse_backend::clock::now_iso;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dnsmasq::{DnsmasqConfig, Lease, parse_leases, pool_usage};
use crate::metrics::HubMetrics;

/// Longest sleep of the expiry timer when no lease expires sooner.
const MAX_EXPIRY_SLEEP: Duration = Duration::from_secs(60);
/// Quiet time after a file event before the file is read.
const FILE_EVENT_SETTLE: Duration = Duration::from_millis(100);
/// The event carrying the whole lease list.
pub const SNAPSHOT_EVENT: &str = "leases_snapshot";
/// The stream query parameter (`snapshot=leases`) asking for a
/// [`SNAPSHOT_EVENT`] before `ready`.
pub const SNAPSHOT_QUERY: &str = "snapshot=leases";

/// A re-read that did not replace the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read lease file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not a lease file.
    #[error("lease file {path} not used: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::dnsmasq::LeaseParseError,
    },
}

struct Inner {
    config: DnsmasqConfig,
    lease_file: PathBuf,
    manager: ConnectionManager,
    metrics: HubMetrics,
    /// `LEASE_SNAPSHOT_THRESHOLD`.
    snapshot_threshold: usize,
    detector: Mutex<ChangeDetector<Lease>>,
    /// `seq` of the last lease event sent (changed only under `order`).
    seq: AtomicU64,
    /// Serialises reloads and expiry checks (held across the sends on purpose:
    /// it orders events; nothing else waits on it).
    order: tokio::sync::Mutex<()>,
    /// Wakes the expiry timer after a snapshot changed.
    snapshot_changed: Notify,
    /// Set by the file watcher.
    file_changed: Arc<Notify>,
}

/// The lease service. Cheap to clone.
#[derive(Clone)]
pub struct LeaseService {
    inner: Arc<Inner>,
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn event_name(c: &Change<Lease>) -> &'static str {
    match c {
        Change::Added(_) => "lease_added",
        Change::Removed(_) => "lease_removed",
        Change::Updated(_) => "lease_updated",
        Change::Expired(_) => "lease_expired",
    }
}

/// True when a stream URL asks for the lease snapshot ([`SNAPSHOT_QUERY`]).
fn wants_snapshot(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv == SNAPSHOT_QUERY))
}

impl LeaseService {
    /// A service over `config` (whose lease file must be set); nothing is read
    /// yet. A reload changing more than `snapshot_threshold` leases sends one
    /// [`SNAPSHOT_EVENT`] instead of one event per change. Streams opened with
    /// [`SNAPSHOT_QUERY`] get a snapshot before `ready`.
    pub fn new(
        config: DnsmasqConfig,
        manager: ConnectionManager,
        metrics: HubMetrics,
        snapshot_threshold: usize,
    ) -> Self {
        let lease_file = config.lease_file.clone().unwrap_or_default();
        let svc = Self {
            inner: Arc::new(Inner {
                config,
                lease_file,
                manager: manager.clone(),
                metrics,
                snapshot_threshold,
                detector: Mutex::new(ChangeDetector::new()),
                seq: AtomicU64::new(seq_base()),
                order: tokio::sync::Mutex::new(()),
                snapshot_changed: Notify::new(),
                file_changed: Arc::new(Notify::new()),
            }),
        };
        // Weak: the manager owns the observer, the service owns the manager.
        let weak = Arc::downgrade(&svc.inner);
        manager.register_on_connect(move |rid| {
            let weak = weak.clone();
            async move {
                let Some(inner) = weak.upgrade() else { return };
                let svc = LeaseService { inner };
                let asked = svc.inner.manager.connection_info(&rid).is_some_and(|c| wants_snapshot(&c.url));
                if asked {
                    // The stream is not open yet: the gateway writes this before `ready`.
                    svc.send_snapshot(&rid).await;
                }
            }
        });
        svc
    }

    /// Sends a [`SNAPSHOT_EVENT`] of the current state (its `seq` is the last
    /// event's) to one stream; false when it is not connected or the send failed.
    pub async fn send_snapshot(&self, request_id: &str) -> bool {
        let _order = self.inner.order.lock().await;
        let event = self.snapshot_event(self.inner.seq.load(Ordering::SeqCst));
        self.inner.metrics.count_lease_event(SNAPSHOT_EVENT);
        self.inner.manager.send_to(request_id, &event, "dhcp").await
    }

    fn snapshot_event(&self, seq: u64) -> Event {
        let now = now_secs();
        let leases: Vec<Value> = self.detector().items().map(|l| l.to_json(now)).collect();
        let payload = json!({"event_type": SNAPSHOT_EVENT, "seq": seq, "leases": leases, "timestamp": now_iso()});
        Event::json(SNAPSHOT_EVENT, &payload)
    }

    /// The `seq` of the next event (call with `order` held).
    ///
    /// Numbers start at the process's start time in microseconds, so a later
    /// process's events always count higher: with RabbitMQ the gateway's
    /// history outlives a restart, and a page replayed the old process's
    /// lease events after the new process's snapshot drops them.
    fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn detector(&self) -> MutexGuard<'_, ChangeDetector<Lease>> {
        self.inner.detector.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease file path.
    pub fn lease_file(&self) -> &Path {
        &self.inner.lease_file
    }

    /// The current snapshot.
    pub fn leases(&self) -> Vec<Lease> {
        self.detector().items().cloned().collect()
    }

    /// Reads the file once at start-up without sending events (nobody is
    /// connected yet); a failure leaves the snapshot empty and is logged.
    pub async fn load_initial(&self) {
        let _order = self.inner.order.lock().await;
        match self.read().await {
            Ok(leases) => {
                self.detector().update(leases, now_secs());
            }
            Err(e) => self.read_failed(&e),
        }
    }

    async fn read(&self) -> Result<Vec<Lease>, ReloadError> {
        let path = &self.inner.lease_file;
        let bytes = tokio::fs::read(path).await.map_err(|source| ReloadError::Io { path: path.clone(), source })?;
        let parsed = parse_leases(&bytes, &self.inner.config)
            .map_err(|source| ReloadError::Parse { path: path.clone(), source })?;
        Ok(parsed.leases)
    }

    fn read_failed(&self, e: &ReloadError) {
        self.inner.metrics.lease_read_failures.inc();
        tracing::warn!(error = %e, "lease file read failed; keeping the previous snapshot");
    }

    /// Re-reads the lease file and sends one event per change, then
    /// `data_changed` when anything changed (or always, with
    /// `always_data_changed`, as the notify endpoint does). Returns the number
    /// of lease events; a failed read keeps the snapshot.
    pub async fn reload(&self, always_data_changed: bool) -> Result<usize, ReloadError> {
        let _order = self.inner.order.lock().await;
        let result = self.read().await;
        let changes = match &result {
            Ok(leases) => self.detector().update(leases.clone(), now_secs()),
            Err(e) => {
                self.read_failed(e);
                Vec::new()
            }
        };
        let n = changes.len();
        self.emit(changes, always_data_changed).await;
        if n > 0 {
            self.inner.snapshot_changed.notify_one();
        }
        result.map(|_| n)
    }

    /// Re-evaluates expiry at `now` without reading (the timer's job).
    pub async fn check_expiry(&self) -> usize {
        let _order = self.inner.order.lock().await;
        let changes = self.detector().reevaluate(now_secs());
        let n = changes.len();
        self.emit(changes, false).await;
        n
    }

    /// Sends `changes` (call with `order` held): one event each, or one
    /// snapshot when there are more than the threshold.
    async fn emit(&self, changes: Vec<Change<Lease>>, always_data_changed: bool) {
        let now = now_secs();
        let any = !changes.is_empty();
        if changes.len() > self.inner.snapshot_threshold {
            tracing::info!(
                changes = changes.len(),
                threshold = self.inner.snapshot_threshold,
                "many lease changes at once: sending one snapshot"
            );
            let event = self.snapshot_event(self.next_seq());
            self.inner.metrics.count_lease_event(SNAPSHOT_EVENT);
            self.inner.manager.broadcast(&event, None, "dhcp").await;
        } else {
            for change in changes {
                let name = event_name(&change);
                let lease = match &change {
                    Change::Added(l) | Change::Removed(l) | Change::Updated(l) | Change::Expired(l) => l,
                };
                let seq = self.next_seq();
                let payload =
                    json!({"event_type": name, "seq": seq, "lease": lease.to_json(now), "timestamp": now_iso()});
                self.inner.metrics.count_lease_event(name);
                self.inner.manager.broadcast(&Event::json(name, &payload), None, "dhcp").await;
            }
        }
        if any || always_data_changed {
            self.inner.metrics.count_lease_event("data_changed");
            let payload = json!({"event_type": "data_changed", "timestamp": now_iso()});
            self.inner.manager.broadcast(&Event::json("data_changed", &payload), None, "dhcp").await;
        }
    }

    /// When the next active, finite lease expires (epoch seconds).
    fn next_expiry(&self, now: i64) -> Option<i64> {
        self.detector().items().filter(|l| l.expiry != 0 && l.is_active(now)).map(|l| l.expiry).min()
    }

    /// Starts the watcher, the reload loop, the poll and the expiry timer;
    /// all stop when `stop` fires. A watcher that cannot start is logged and
    /// the poll remains.
    pub fn start(&self, poll_interval: Option<Duration>, stop: CancellationToken) {
        let watcher = self.watch();
        let svc = self.clone();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            let _watcher = watcher; // dropped (unwatched) when the loop ends
            let mut poll = poll_interval.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
            loop {
                let tick = async {
                    match poll.as_mut() {
                        Some(p) => {
                            p.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let from_file = tokio::select! {
                    () = stop2.cancelled() => return,
                    () = svc.inner.file_changed.notified() => true,
                    () = tick => false,
                };
                if from_file {
                    // An editor's truncate-then-write is two events; read once,
                    // after the burst, rather than the empty file in between.
                    tokio::time::sleep(FILE_EVENT_SETTLE).await;
                }
                let _ = svc.reload(false).await;
            }
        });
        let svc = self.clone();
        tokio::spawn(async move { svc.expiry_timer(stop).await });
    }

    async fn expiry_timer(self, stop: CancellationToken) {
        loop {
            let changed = self.inner.snapshot_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
            let wait = match self.next_expiry(now) {
                Some(at) => {
                    let at_ms = u128::try_from(at).unwrap_or(0) * 1000;
                    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(u64::MAX))
                        .min(MAX_EXPIRY_SLEEP)
                }
                None => MAX_EXPIRY_SLEEP,
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut changed => continue,
                () = tokio::time::sleep(wait) => {}
            }
            self.check_expiry().await;
        }
    }

    fn watch(&self) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let file = self.inner.lease_file.clone();
        let name = file.file_name().map(std::ffi::OsStr::to_os_string);
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let wake = Arc::clone(&self.inner.file_changed);
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if event.kind.is_access() {
                return;
            }
            if event.paths.iter().any(|p| p.file_name().map(std::ffi::OsStr::to_os_string) == name) {
                wake.notify_one();
            }
        };
        let started = notify::recommended_watcher(handler)
            .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w));
        match started {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the lease file; relying on the poll");
                None
            }
        }
    }

    /// `GET /api/dhcp/leases`, `/api/dhcp/pools`, `/api/dhcp/pools/usage`,
    /// `POST /api/dhcp/leases/snapshot`, `POST /internal/notify-lease-change`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/api/dhcp/leases", get(leases_route))
            .route("/api/dhcp/leases/snapshot", post(snapshot_route))
            .route("/api/dhcp/pools", get(pools_route))
            .route("/api/dhcp/pools/usage", get(usage_route))
            .route("/internal/notify-lease-change", post(notify_route))
            .with_state(self.clone())
    }
}

async fn leases_route(State(svc): State<LeaseService>) -> Json<Value> {
    let now = now_secs();
    Json(Value::Array(svc.leases().iter().map(|l| l.to_json(now)).collect()))
}

/// Body of `POST /api/dhcp/leases/snapshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    request_id: String,
}

/// `POST /api/dhcp/leases/snapshot {"request_id"}`: a [`SNAPSHOT_EVENT`] on
/// that stream (what a page does when it missed events) -> 202
/// `{"request_id","delivered":true}`; 404 when no such stream is open, 400
/// for a bad body.
async fn snapshot_route(State(svc): State<LeaseService>, body: Bytes) -> Response {
    let error = |status: StatusCode, message: String| (status, Json(json!({"error": message}))).into_response();
    let req: SnapshotRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("Invalid payload: {e}")),
    };
    if !svc.inner.manager.has_connection(&req.request_id) {
        return error(StatusCode::NOT_FOUND, format!("no open stream with request_id {:?}", req.request_id));
    }
    let delivered = svc.send_snapshot(&req.request_id).await;
    (StatusCode::ACCEPTED, Json(json!({"request_id": req.request_id, "delivered": delivered}))).into_response()
}

async fn pools_route(State(svc): State<LeaseService>) -> Json<Value> {
    Json(json!(svc.inner.config.pools))
}

async fn usage_route(State(svc): State<LeaseService>) -> Json<Value> {
    let now = now_secs();
    let leases = svc.leases();
    Json(Value::Array(svc.inner.config.pools.iter().map(|p| pool_usage(p, &leases, now)).collect()))
}

async fn notify_route(State(svc): State<LeaseService>) -> Json<Value> {
    let reloaded = svc.reload(true).await.is_ok();
    Json(json!({
        "status": "success",
        "message": "Lease change notification processed successfully",
        "reloaded": reloaded,
    }))
}

/// The first `seq` of this process: now in microseconds since the epoch.
fn seq_base() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_micros()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::wants_snapshot;

    #[test]
    fn only_the_exact_query_parameter_asks_for_the_snapshot() {
        assert!(wants_snapshot("/api/sse/stream?request_id=r1&snapshot=leases"));
        assert!(wants_snapshot("/api/sse/stream?snapshot=leases"));
        assert!(!wants_snapshot("/api/sse/stream?request_id=r1"));
        assert!(!wants_snapshot("/api/sse/stream?request_id=snapshot=leases"));
        assert!(!wants_snapshot("/snapshot=leases"));
        assert!(!wants_snapshot("/api/sse/stream?snapshot=leasesx"));
    }
}
