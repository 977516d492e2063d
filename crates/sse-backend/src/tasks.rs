//! Background tasks with live progress (docs/BACKEND.md, Tasks; decision D4).
//!
//! A [`Task`] runs on a bounded pool (`max_workers`), gets a [`Progress`]
//! handle and a cooperative cancellation flag ([`TaskContext`]), and is
//! bounded by `timeout`. Every task emits `task_event`s, in order:
//! `task_started`, `progress_update`*, then exactly one of `task_completed`,
//! `task_failed` (errors, panics, timeouts) or `task_cancelled`. A task
//! cancelled while queued never runs (its only event is `task_cancelled`).
//! Events are broadcast with the caller's subject as filter (docs/BACKEND.md,
//! Connection manager).
//!
//! Ordering without holding a lock across a send: state transitions push their
//! event into the task's unbounded event queue *under* the table lock (a
//! non-blocking push), so queue order is transition order; one pump task per
//! task sends the queue in order, outside any lock, and stops after the
//! terminal event. Progress events are bounded by permits (a task emitting
//! faster than the gateway takes them waits).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::BoxFuture;
use crate::broadcaster::Event;
use crate::clock::now_iso;
use crate::connections::ConnectionManager;

/// Settings (`TASK_MAX_WORKERS`, `TASK_TIMEOUT_SECONDS`, `TASK_CLEANUP_INTERVAL_SECONDS`).
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Tasks running at once; more wait in the queue.
    pub max_workers: usize,
    /// A running task is cancelled and failed after this long.
    pub timeout: Duration,
    /// Finished tasks are forgotten this long after they ended (checked this often).
    pub cleanup_interval: Duration,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self { max_workers: 4, timeout: Duration::from_secs(300), cleanup_interval: Duration::from_secs(600) }
    }
}

/// Task state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Queued.
    Pending,
    /// Running.
    Running,
    /// Returned normally.
    Completed,
    /// Returned an error, panicked or timed out.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl TaskStatus {
    /// Completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// What `GET /api/tasks/{id}/status` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    /// UUID v4.
    pub task_id: String,
    /// The caller, if known (the event filter).
    pub subject: Option<String>,
    /// State.
    pub status: TaskStatus,
    /// ISO-8601 UTC, when the task was accepted.
    pub start_time: String,
    /// ISO-8601 UTC, when it ended.
    pub end_time: Option<String>,
    /// The result object of a completed task.
    pub result: Option<Value>,
    /// The error of a failed task.
    pub error: Option<String>,
}

/// A task's failure, shown as `data.error` of `task_failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskFailure(pub String);

/// Work with progress. `run` should poll [`TaskContext::is_cancelled`] in long
/// CPU loops; at await points a cancelled or timed-out task is dropped.
pub trait Task: Send + 'static {
    /// Runs the task; `Ok(Some(obj))` is the `task_completed` data.
    fn run(self: Box<Self>, ctx: TaskContext) -> BoxFuture<'static, Result<Option<Value>, TaskFailure>>;
}

struct FnTask<F>(F);

impl<F, Fut> Task for FnTask<F>
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<Value>, TaskFailure>> + Send + 'static,
{
    fn run(self: Box<Self>, ctx: TaskContext) -> BoxFuture<'static, Result<Option<Value>, TaskFailure>> {
        Box::pin((self.0)(ctx))
    }
}

/// A task from an async closure.
pub fn task_fn<F, Fut>(f: F) -> Box<dyn Task>
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<Value>, TaskFailure>> + Send + 'static,
{
    Box::new(FnTask(f))
}

/// Queued events in flight per task before progress calls wait.
const PROGRESS_PERMITS: usize = 64;

struct Emitted {
    payload: Value,
    terminal: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The ordered event queue of one task.
#[derive(Clone)]
struct Emitter {
    task_id: String,
    tx: mpsc::UnboundedSender<Emitted>,
    permits: Arc<Semaphore>,
}

fn task_event(task_id: &str, event_type: &str, data: Value) -> Value {
    json!({"event_type": event_type, "task_id": task_id, "timestamp": now_iso(), "data": data})
}

impl Emitter {
    /// Non-blocking push (used under the table lock for transitions).
    fn push(&self, event_type: &str, data: Value, terminal: bool) {
        let payload = task_event(&self.task_id, event_type, data);
        // A closed queue means the terminal event was already sent.
        let _ = self.tx.send(Emitted { payload, terminal, _permit: None });
    }

    async fn progress(&self, text: &str, value: f64) {
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else { return };
        let payload = task_event(&self.task_id, "progress_update", json!({"text": text, "value": value}));
        let _ = self.tx.send(Emitted { payload, terminal: false, _permit: Some(permit) });
    }
}

#[derive(Default)]
struct ProgressState {
    text: String,
    value: f64,
}

/// Progress reporting for one task; sub-handles map values into a sub-range.
#[derive(Clone)]
pub struct Progress {
    emitter: Emitter,
    state: Arc<Mutex<ProgressState>>,
    start: f64,
    end: f64,
}

impl Progress {
    fn map(&self, v: f64) -> f64 {
        self.start + (self.end - self.start) * v
    }

    async fn emit(&self, text: Option<&str>, value: Option<f64>) {
        let (text, value) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = text {
                st.text = t.to_owned();
            }
            let v = value.unwrap_or(st.value);
            // Remember the maximum, but emit what was given (may go backwards).
            st.value = st.value.max(v);
            (st.text.clone(), v)
        };
        self.emitter.progress(&text, value).await;
    }

    /// Text with the last value.
    pub async fn send_text(&self, text: &str) {
        self.emit(Some(text), None).await;
    }

    /// Value (mapped into this handle's range) with the last text.
    pub async fn send_value(&self, value: f64) {
        self.emit(None, Some(self.map(value))).await;
    }

    /// Both.
    pub async fn send(&self, text: &str, value: f64) {
        self.emit(Some(text), Some(self.map(value))).await;
    }

    /// A handle whose 0..1 maps onto `start..end` of this one.
    pub fn sub(&self, start: f64, end: f64) -> Progress {
        Progress {
            emitter: self.emitter.clone(),
            state: Arc::clone(&self.state),
            start: self.map(start),
            end: self.map(end),
        }
    }
}

/// What a running task gets.
pub struct TaskContext {
    /// The task's id.
    pub task_id: String,
    progress: Progress,
    cancel: CancellationToken,
}

impl TaskContext {
    /// The progress handle (0..1).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
    /// Whether the task was cancelled (or timed out).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// Resolves once the task is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}

/// A refused start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// 409 `INVALID_OPERATION` while shutting down.
    #[error("Cannot start task because service is shutting down")]
    ShuttingDown,
}

impl IntoResponse for TaskError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.to_string(),
            "details": {"message": "service is shutting down"},
            "code": "INVALID_OPERATION",
        });
        (StatusCode::CONFLICT, Json(body)).into_response()
    }
}

struct Entry {
    info: TaskInfo,
    cancel: CancellationToken,
    emitter: Emitter,
    ended_at: Option<Instant>,
}

impl Entry {
    /// Moves a live task to a terminal state and queues its event; false if
    /// it had already ended.
    fn finish(&mut self, status: TaskStatus, event_type: &str, data: Value) -> bool {
        if self.info.status.is_terminal() {
            return false;
        }
        self.info.status = status;
        self.info.end_time = Some(now_iso());
        self.ended_at = Some(Instant::now());
        self.emitter.push(event_type, data, true);
        true
    }
}

struct Inner {
    config: TaskConfig,
    manager: ConnectionManager,
    tasks: Mutex<HashMap<String, Entry>>,
    workers: Arc<Semaphore>,
    shutting_down: AtomicBool,
    /// Number of tasks whose terminal event is not sent yet.
    active: watch::Sender<usize>,
    stop: CancellationToken,
}

/// The task runner. Cheap to clone.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

enum Outcome {
    Done(Option<Value>),
    Failed(String),
    TimedOut,
    Cancelled,
}

impl TaskService {
    /// A service broadcasting through `manager`. Call [`TaskService::start_cleanup`]
    /// from within a runtime to forget finished tasks periodically.
    pub fn new(config: TaskConfig, manager: ConnectionManager) -> Self {
        let workers = Arc::new(Semaphore::new(config.max_workers.max(1)));
        Self {
            inner: Arc::new(Inner {
                config,
                manager,
                tasks: Mutex::default(),
                workers,
                shutting_down: AtomicBool::new(false),
                active: watch::channel(0).0,
                stop: CancellationToken::new(),
            }),
        }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts a task (status `pending`); it runs when a worker is free.
    pub fn start_task(&self, task: Box<dyn Task>, caller_subject: Option<String>) -> Result<TaskInfo, TaskError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(TaskError::ShuttingDown);
        }
        let task_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let emitter = Emitter { task_id: task_id.clone(), tx, permits: Arc::new(Semaphore::new(PROGRESS_PERMITS)) };
        let cancel = CancellationToken::new();
        let info = TaskInfo {
            task_id: task_id.clone(),
            subject: caller_subject.clone(),
            status: TaskStatus::Pending,
            start_time: now_iso(),
            end_time: None,
            result: None,
            error: None,
        };
        self.inner.active.send_modify(|n| *n += 1);
        self.tasks().insert(
            task_id.clone(),
            Entry { info: info.clone(), cancel: cancel.clone(), emitter: emitter.clone(), ended_at: None },
        );
        tokio::spawn(pump(self.clone(), rx, caller_subject));
        let progress = Progress { emitter, state: Arc::default(), start: 0.0, end: 1.0 };
        let ctx = TaskContext { task_id: task_id.clone(), progress, cancel };
        tokio::spawn(self.clone().work(task, ctx));
        Ok(info)
    }

    async fn work(self, task: Box<dyn Task>, ctx: TaskContext) {
        let Ok(_permit) = Arc::clone(&self.inner.workers).acquire_owned().await else { return };
        let id = ctx.task_id.clone();
        let cancel = ctx.cancel.clone();
        {
            let mut tasks = self.tasks();
            let Some(e) = tasks.get_mut(&id) else { return };
            if e.info.status != TaskStatus::Pending {
                return; // cancelled while queued: never runs
            }
            e.info.status = TaskStatus::Running;
            e.emitter.push("task_started", Value::Null, false);
        }
        let run = AssertUnwindSafe(task.run(ctx)).catch_unwind();
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.inner.config.timeout, run) => match r {
                Ok(Ok(Ok(v))) => Outcome::Done(v),
                Ok(Ok(Err(f))) => Outcome::Failed(f.0),
                Ok(Err(p)) => Outcome::Failed(format!("task panicked: {}", crate::observer::panic_message(p.as_ref()))),
                Err(_) => Outcome::TimedOut,
            },
            () = cancel.cancelled() => Outcome::Cancelled,
        };
        cancel.cancel();
        let mut tasks = self.tasks();
        let Some(e) = tasks.get_mut(&id) else { return };
        match outcome {
            Outcome::Done(v) => {
                let data = v.clone().unwrap_or(Value::Null);
                if e.finish(TaskStatus::Completed, "task_completed", data) {
                    e.info.result = v;
                }
            }
            Outcome::Failed(msg) => {
                if e.finish(TaskStatus::Failed, "task_failed", json!({"error": msg})) {
                    e.info.error = Some(msg);
                }
            }
            Outcome::TimedOut => {
                let msg = format!("Task timed out after {} s", self.inner.config.timeout.as_secs_f64());
                if e.finish(TaskStatus::Failed, "task_failed", json!({"error": msg, "code": "TASK_TIMEOUT"})) {
                    e.info.error = Some(msg);
                }
            }
            Outcome::Cancelled => {} // cancel_task already moved it and queued task_cancelled
        }
    }

    /// The task's state, if known.
    pub fn get_task_status(&self, task_id: &str) -> Option<TaskInfo> {
        self.tasks().get(task_id).map(|e| e.info.clone())
    }

    /// Cancels a pending or running task (emits `task_cancelled`); false if
    /// unknown or already ended.
    pub fn cancel_task(&self, task_id: &str) -> bool {
        let mut tasks = self.tasks();
        let Some(e) = tasks.get_mut(task_id) else { return false };
        let done = e.finish(TaskStatus::Cancelled, "task_cancelled", Value::Null);
        if done {
            e.cancel.cancel();
        }
        done
    }

    /// Cancels every pending and running task (each emits `task_cancelled`
    /// with `data: {"reason":"shutdown"}`); returns how many. Used by
    /// [`crate::lifecycle::Lifecycle::cancel_tasks_on_shutdown`].
    pub fn cancel_all(&self) -> usize {
        let mut tasks = self.tasks();
        let mut n = 0;
        for e in tasks.values_mut() {
            if e.finish(TaskStatus::Cancelled, "task_cancelled", json!({"reason": "shutdown"})) {
                e.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    /// Forgets an ended task; false if unknown or still live.
    pub fn remove_completed_task(&self, task_id: &str) -> bool {
        let mut tasks = self.tasks();
        if tasks.get(task_id).is_some_and(|e| e.info.status.is_terminal()) {
            tasks.remove(task_id);
            true
        } else {
            false
        }
    }

    /// Forgets tasks that ended at least `cleanup_interval` before `now`;
    /// returns how many.
    pub fn cleanup_finished(&self, now: Instant) -> usize {
        let keep_for = self.inner.config.cleanup_interval;
        let mut tasks = self.tasks();
        let before = tasks.len();
        tasks.retain(|_, e| e.ended_at.is_none_or(|t| now.saturating_duration_since(t) < keep_for));
        before - tasks.len()
    }

    /// Spawns the periodic cleanup (stopped by [`TaskService::shutdown`]).
    pub fn start_cleanup(&self) {
        let svc = self.clone();
        let every = self.inner.config.cleanup_interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    () = svc.inner.stop.cancelled() => return,
                    _ = tick.tick() => { svc.cleanup_finished(Instant::now()); }
                }
            }
        });
    }

    /// Pending plus running tasks.
    pub fn live_count(&self) -> usize {
        self.tasks().values().filter(|e| !e.info.status.is_terminal()).count()
    }

    /// PREPARE_SHUTDOWN: refuse new tasks, record `active_tasks_at_shutdown`.
    pub fn prepare_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let live = i64::try_from(self.live_count()).unwrap_or(i64::MAX);
        self.inner.manager.metrics().active_tasks_at_shutdown.set(live);
    }

    /// Waits until every task has ended and its last event was sent; false on timeout.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.active.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await.is_ok_and(|r| r.is_ok())
    }

    /// SHUTDOWN: stop the cleanup, cancel what is left (no events), clear state.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        let mut tasks = self.tasks();
        for e in tasks.values() {
            e.cancel.cancel();
        }
        tasks.clear();
    }

    /// `GET /api/tasks/{id}/status`, `POST /api/tasks/{id}/cancel`, `DELETE /api/tasks/{id}`.
    pub fn router(&self) -> axum::Router {
        use axum::routing::{delete, get, post};
        axum::Router::new()
            .route("/api/tasks/{id}/status", get(status_route))
            .route("/api/tasks/{id}/cancel", post(cancel_route))
            .route("/api/tasks/{id}", delete(delete_route))
            .with_state(self.clone())
    }
}

/// Sends one task's events in order; ends after the terminal event.
async fn pump(svc: TaskService, mut rx: mpsc::UnboundedReceiver<Emitted>, subject: Option<String>) {
    while let Some(msg) = rx.recv().await {
        let event = Event::json("task_event", &msg.payload);
        svc.inner.manager.broadcast(&event, subject.as_deref(), "task").await;
        if msg.terminal {
            break;
        }
    }
    svc.inner.active.send_modify(|n| *n = n.saturating_sub(1));
}

async fn status_route(State(svc): State<TaskService>, Path(id): Path<String>) -> Response {
    match svc.get_task_status(&id) {
        Some(info) => Json(info).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "Task not found"}))).into_response(),
    }
}

async fn cancel_route(State(svc): State<TaskService>, Path(id): Path<String>) -> Response {
    if svc.cancel_task(&id) {
        Json(json!({"success": true, "message": "Task cancellation requested"})).into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"error": "Task not found or cannot be cancelled"}))).into_response()
    }
}

async fn delete_route(State(svc): State<TaskService>, Path(id): Path<String>) -> Response {
    if svc.remove_completed_task(&id) {
        Json(json!({"success": true, "message": "Task removed from registry"})).into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"error": "Task not found or not completed"}))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::testing::Recorder;

    fn types(events: &[(String, Event)], task_id: &str) -> Vec<String> {
        events
            .iter()
            .filter_map(|(_, e)| serde_json::from_str::<Value>(&e.data).ok())
            .filter(|v| v["task_id"] == task_id)
            .map(|v| v["event_type"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    fn payloads(events: &[(String, Event)], task_id: &str) -> Vec<Value> {
        events
            .iter()
            .filter_map(|(_, e)| serde_json::from_str::<Value>(&e.data).ok())
            .filter(|v| v["task_id"] == task_id)
            .collect()
    }

    async fn setup(config: TaskConfig) -> (Arc<Recorder>, TaskService) {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", None, None).await;
        (rec, TaskService::new(config, cm))
    }

    fn ended(n: usize) -> impl Fn(&[(String, Event)]) -> bool {
        move |ev: &[(String, Event)]| {
            ev.iter()
                .filter(|(_, e)| ["task_completed", "task_failed", "task_cancelled"].iter().any(|t| e.data.contains(t)))
                .count()
                >= n
        }
    }

    fn demo(steps: u32) -> Box<dyn Task> {
        task_fn(move |ctx| async move {
            for i in 1..=steps {
                ctx.progress().send(&format!("Step {i}/{steps}"), f64::from(i) / f64::from(steps)).await;
            }
            Ok(Some(json!({"status": "success"})))
        })
    }

    #[tokio::test]
    async fn task_service_start_returns_pending_and_completes_with_result() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        let info = svc.start_task(demo(2), None).unwrap();
        assert_eq!(info.status, TaskStatus::Pending);
        rec.wait_for("task end", ended(1)).await;
        assert!(svc.wait_idle(Duration::from_secs(5)).await);
        let done = svc.get_task_status(&info.task_id).unwrap();
        assert_eq!(done.status, TaskStatus::Completed);
        assert_eq!(done.result, Some(json!({"status": "success"})));
        assert!(done.end_time.as_deref().is_some_and(|t| t.ends_with('Z')));
    }

    #[tokio::test]
    async fn task_service_unknown_id_is_none_and_failing_task_is_failed_with_error_text() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        assert!(svc.get_task_status("nope").is_none());
        let info = svc.start_task(task_fn(|_| async { Err(TaskFailure("it broke".into())) }), None).unwrap();
        let ev = rec.wait_for("task end", ended(1)).await;
        assert!(svc.wait_idle(Duration::from_secs(5)).await);
        let failed = svc.get_task_status(&info.task_id).unwrap();
        assert_eq!((failed.status, failed.error.as_deref()), (TaskStatus::Failed, Some("it broke")));
        let last = payloads(&ev, &info.task_id).pop().unwrap();
        assert_eq!((last["event_type"].as_str(), &last["data"]), (Some("task_failed"), &json!({"error": "it broke"})));
    }

    #[tokio::test]
    async fn base_task_exception_propagation_panics_become_task_failed() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        let info = svc.start_task(task_fn(|_| async { panic!("kaboom") }), None).unwrap();
        rec.wait_for("task end", ended(1)).await;
        let failed = svc.get_task_status(&info.task_id).unwrap();
        assert_eq!(failed.status, TaskStatus::Failed);
        assert!(failed.error.unwrap().contains("kaboom"));
    }

    #[tokio::test]
    async fn task_service_cancel_running_is_cancelled_and_cancel_unknown_or_completed_is_false() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let info = svc
            .start_task(
                task_fn(|ctx| async move {
                    let _ = started_tx.send(());
                    ctx.cancelled().await;
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        started_rx.await.unwrap();
        assert!(svc.cancel_task(&info.task_id));
        let ev = rec.wait_for("cancel event", ended(1)).await;
        assert!(svc.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(svc.get_task_status(&info.task_id).unwrap().status, TaskStatus::Cancelled);
        assert_eq!(types(&ev, &info.task_id), vec!["task_started", "task_cancelled"], "D4: cancel emits an event");
        assert!(!svc.cancel_task(&info.task_id), "already ended");
        assert!(!svc.cancel_task("unknown"));
        let done = svc.start_task(demo(1), None).unwrap();
        rec.wait_for("second end", ended(2)).await;
        assert!(!svc.cancel_task(&done.task_id), "completed");
    }

    #[tokio::test]
    async fn cancel_all_cancels_running_and_queued_tasks_with_a_shutdown_reason() {
        let (rec, svc) = setup(TaskConfig { max_workers: 1, ..TaskConfig::default() }).await;
        let forever = || {
            task_fn(|ctx| async move {
                ctx.cancelled().await;
                Ok(None)
            })
        };
        let running = svc.start_task(forever(), None).unwrap();
        let queued = svc.start_task(forever(), None).unwrap();
        assert_eq!(svc.cancel_all(), 2);
        assert!(svc.wait_idle(Duration::from_secs(5)).await, "both terminal events sent");
        let ev = rec.events();
        for id in [&running.task_id, &queued.task_id] {
            let last = payloads(&ev, id).pop().unwrap();
            assert_eq!(last["event_type"], "task_cancelled");
            assert_eq!(last["data"], json!({"reason": "shutdown"}));
            assert_eq!(svc.get_task_status(id).unwrap().status, TaskStatus::Cancelled);
        }
        assert_eq!(svc.cancel_all(), 0, "nothing live is left");
    }

    #[tokio::test]
    async fn task_cancelled_while_queued_never_runs() {
        let (rec, svc) = setup(TaskConfig { max_workers: 1, ..TaskConfig::default() }).await;
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = Arc::clone(&gate);
        let blocker = svc
            .start_task(
                task_fn(move |_| async move {
                    g.notified().await;
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let queued = svc
            .start_task(
                task_fn(move |_| async move {
                    r.store(true, Ordering::SeqCst);
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        assert!(svc.cancel_task(&queued.task_id));
        gate.notify_one();
        rec.wait_for("both ended", ended(2)).await;
        assert!(svc.wait_idle(Duration::from_secs(5)).await);
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(types(&rec.events(), &queued.task_id), vec!["task_cancelled"]);
        assert_eq!(svc.get_task_status(&blocker.task_id).unwrap().status, TaskStatus::Completed);
    }

    #[tokio::test]
    async fn task_timeout_is_enforced_as_task_failed_with_timeout_error() {
        let (rec, svc) = setup(TaskConfig { timeout: Duration::from_millis(50), ..TaskConfig::default() }).await;
        let info = svc
            .start_task(
                task_fn(|ctx| async move {
                    ctx.cancelled().await;
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        let ev = rec.wait_for("timeout", ended(1)).await;
        let last = payloads(&ev, &info.task_id).pop().unwrap();
        assert_eq!(last["event_type"], "task_failed");
        assert_eq!(last["data"]["code"], "TASK_TIMEOUT");
        assert!(last["data"]["error"].as_str().unwrap().contains("timed out"));
        assert_eq!(svc.get_task_status(&info.task_id).unwrap().status, TaskStatus::Failed);
    }

    #[tokio::test]
    async fn task_service_remove_completed_is_gone_and_remove_running_is_false() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = Arc::clone(&gate);
        let running = svc
            .start_task(
                task_fn(move |_| async move {
                    g.notified().await;
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        assert!(!svc.remove_completed_task(&running.task_id));
        gate.notify_one();
        rec.wait_for("end", ended(1)).await;
        assert!(svc.remove_completed_task(&running.task_id));
        assert!(svc.get_task_status(&running.task_id).is_none());
    }

    #[tokio::test]
    async fn task_service_events_include_task_started_progress_update_task_completed_in_order() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        let info = svc.start_task(demo(3), None).unwrap();
        let ev = rec.wait_for("end", ended(1)).await;
        assert_eq!(
            types(&ev, &info.task_id),
            vec!["task_started", "progress_update", "progress_update", "progress_update", "task_completed"]
        );
        let p = payloads(&ev, &info.task_id);
        assert_eq!(p[0]["data"], Value::Null);
        assert_eq!(p[2]["data"], json!({"text": "Step 2/3", "value": 2.0 / 3.0}));
        assert_eq!(p[4]["data"], json!({"status": "success"}));
        assert!(p.iter().all(|v| v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 27)));
        assert!(ev.iter().all(|(_, e)| e.name == "task_event"));
    }

    #[tokio::test]
    async fn task_service_every_event_carries_target_subject_caller_or_broadcast() {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("ra", "ta", "/", Some(&Identity::new("alice", None)), None).await;
        cm.on_connect("rb", "tb", "/", Some(&Identity::new("bob", None)), None).await;
        let svc = TaskService::new(TaskConfig::default(), cm);
        svc.start_task(demo(1), Some("alice".into())).unwrap();
        let ev = rec.wait_for("end", ended(1)).await;
        assert!(ev.iter().all(|(t, _)| t == "ta"), "only alice's stream: {ev:?}");
        rec.clear();
        svc.start_task(demo(1), None).unwrap();
        let ev = rec.wait_for("end", ended(2)).await;
        assert!(ev.iter().any(|(t, _)| t == "tb") && ev.iter().any(|(t, _)| t == "ta"), "no caller: everyone");
    }

    #[tokio::test]
    async fn task_service_three_concurrent_tasks_all_complete_and_shutdown_clears_state() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        let ids: Vec<String> = (0..3).map(|_| svc.start_task(demo(2), None).unwrap().task_id).collect();
        rec.wait_for("three ends", ended(3)).await;
        assert!(svc.wait_idle(Duration::from_secs(5)).await);
        for id in &ids {
            assert_eq!(svc.get_task_status(id).unwrap().status, TaskStatus::Completed);
        }
        svc.prepare_shutdown();
        assert_eq!(svc.start_task(demo(1), None).err(), Some(TaskError::ShuttingDown));
        svc.shutdown();
        assert!(ids.iter().all(|id| svc.get_task_status(id).is_none()));
    }

    #[tokio::test]
    async fn task_service_cleanup_removes_only_tasks_finished_longer_than_the_interval_ago() {
        let (rec, svc) =
            setup(TaskConfig { cleanup_interval: Duration::from_secs(600), ..TaskConfig::default() }).await;
        let done = svc.start_task(demo(1), None).unwrap();
        rec.wait_for("end", ended(1)).await;
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = Arc::clone(&gate);
        let live = svc
            .start_task(
                task_fn(move |_| async move {
                    g.notified().await;
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        let now = Instant::now();
        assert_eq!(svc.cleanup_finished(now + Duration::from_secs(599)), 0);
        assert_eq!(svc.cleanup_finished(now + Duration::from_secs(601)), 1);
        assert!(svc.get_task_status(&done.task_id).is_none());
        assert!(svc.get_task_status(&live.task_id).is_some(), "live tasks are never cleaned");
        gate.notify_one();
    }

    #[tokio::test]
    async fn progress_handle_text_value_and_combined_calls_each_send_one_event_with_the_right_fields() {
        let (rec, svc) = setup(TaskConfig::default()).await;
        let info = svc
            .start_task(
                task_fn(|ctx| async move {
                    let p = ctx.progress();
                    p.send("a", 0.5).await;
                    p.send_text("b").await;
                    p.send_value(0.25).await; // backwards on the wire
                    p.send_text("c").await; // keeps the max value
                    let sub = p.sub(0.5, 1.0);
                    sub.send("half", 0.5).await;
                    Ok(None)
                }),
                None,
            )
            .unwrap();
        let ev = rec.wait_for("end", ended(1)).await;
        let data: Vec<Value> = payloads(&ev, &info.task_id)
            .into_iter()
            .filter(|v| v["event_type"] == "progress_update")
            .map(|v| v["data"].clone())
            .collect();
        assert_eq!(
            data,
            vec![
                json!({"text":"a","value":0.5}),
                json!({"text":"b","value":0.5}),
                json!({"text":"b","value":0.25}),
                json!({"text":"c","value":0.5}),
                json!({"text":"half","value":0.75}),
            ]
        );
    }

    #[tokio::test]
    async fn task_schemas_enum_string_values_and_json_dump_shapes() {
        assert_eq!(serde_json::to_value(TaskStatus::Cancelled).unwrap(), json!("cancelled"));
        let info = TaskInfo {
            task_id: "id".into(),
            subject: None,
            status: TaskStatus::Running,
            start_time: "2026-01-01T00:00:00.000000Z".into(),
            end_time: None,
            result: None,
            error: None,
        };
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            json!({"task_id":"id","subject":null,"status":"running","start_time":"2026-01-01T00:00:00.000000Z",
                   "end_time":null,"result":null,"error":null})
        );
        let resp = TaskError::ShuttingDown.into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
    }
}
