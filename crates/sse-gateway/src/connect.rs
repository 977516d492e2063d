//! The connect path, independent of how the stream is transported: register
//! the token, ask the hook, and turn its answer into a [`Decision`].
//!
//! The hook runs in its own tracked task. The caller (raw socket or hyper)
//! awaits the decision; if the client leaves first, the caller drops the
//! receiver, and the task still learns the answer: an accepted stream then
//! reports `client_closed`, because the backend must hear the end of what it
//! accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::events::{Event, RefuseReason};
use crate::hook::{Accepted, ClientRequest, ConnectHook, DisconnectReason, Refusal};
use crate::queue::{EndHook, StreamHandle, StreamQueue};
use crate::retry::RetryHint;
use crate::router::{NewStream, Opened, Refused, Resumed};
use crate::shared::Shared;

/// What the client gets.
pub(crate) enum Decision {
    /// An open stream; its queue holds the buffered events and `ready` (or the end).
    Stream(StreamHandle),
    /// 200 with SSE headers, this one frame, then the end (in-stream rejection or retry hint).
    InStream(Bytes),
    /// An HTTP error answer.
    Error(ApiError),
}

/// Starts the connect path. Returns the decision at once when no hook is
/// needed, or a receiver for the hook's.
pub(crate) fn start(
    shared: &Arc<Shared>,
    request: ClientRequest,
    peer: Option<SocketAddr>,
    abort: Option<CancellationToken>,
) -> Result<oneshot::Receiver<Decision>, Decision> {
    let Some(hook) = shared.hook.clone() else {
        return Err(Decision::Error(ApiError::new(ErrorCode::ServiceNotConfigured, "CALLBACK_URL is not configured")));
    };
    let refuse = |reason: RefuseReason, hint: RetryHint| {
        shared.metrics.emit(Event::StreamRefused { reason, max_connections: shared.config.max_connections });
        Err(Decision::InStream(hint.frame()))
    };
    if shared.amqp.as_ref().is_some_and(|a| !a.is_connected()) {
        return refuse(RefuseReason::BrokerUnavailable, RetryHint::BrokerDown);
    }
    let token = Uuid::new_v4();
    match shared.router.register_pending(token) {
        Ok(()) => {}
        Err(Refused::Full) => return refuse(RefuseReason::MaxConnections, RetryHint::MaxConnections),
        Err(Refused::Draining) => return refuse(RefuseReason::Draining, RetryHint::Draining),
    }
    let Some(place) = shared.callbacks.enqueue() else {
        shared.router.remove(token);
        if shared.config.retry_on_backend_failure {
            return refuse(RefuseReason::CallbacksBusy, RetryHint::BackendFailure);
        }
        shared.metrics.emit(Event::StreamRefused {
            reason: RefuseReason::CallbacksBusy,
            max_connections: shared.config.max_connections,
        });
        return Err(Decision::Error(ApiError::new(
            ErrorCode::BackendUnavailable,
            "Too many connect callbacks are waiting for the backend",
        )));
    };
    shared.metrics.emit(Event::ConnectsWaiting { count: shared.callbacks.waiting() });
    let (mut tx, rx) = oneshot::channel();
    let task_shared = Arc::clone(shared);
    shared.tracker.spawn(async move {
        // Wait (FIFO) for a callback slot; a client that leaves meanwhile leaves the queue.
        let slot = tokio::select! {
            slot = task_shared.callbacks.slot() => slot,
            () = tx.closed() => {
                drop(place);
                task_shared.metrics.emit(Event::ConnectsWaiting { count: task_shared.callbacks.waiting() });
                task_shared.router.remove(token);
                task_shared.metrics.emit(Event::ClientLeftWhileQueued { token });
                return;
            }
        };
        drop(place);
        task_shared.metrics.emit(Event::ConnectsWaiting { count: task_shared.callbacks.waiting() });
        let request = Arc::new(request);
        let started = Instant::now();
        let mut tx = Some(tx);
        // Ok(answer in time) or Err(whether a late answer accepted).
        let in_time = {
            let mut call = hook.connect(token, &request);
            match tokio::time::timeout(task_shared.config.callback_timeout, &mut call).await {
                Ok(result) => Ok(result),
                Err(_) => {
                    // The client is answered now; the call goes on (bounded by
                    // the hook), so a late accept is not left behind as a phantom.
                    task_shared.router.remove(token);
                    let timeout = Refusal::Timeout;
                    let elapsed = started.elapsed();
                    task_shared.metrics.emit(Event::ConnectAnswered { token, result: Err(&timeout), elapsed });
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(refused(&task_shared, timeout));
                    }
                    Err(call.await.is_ok())
                }
            }
        };
        // The backend has answered (in time or late): its slot is free.
        drop(slot);
        let result = match in_time {
            Ok(result) => result,
            Err(accepted) => {
                task_shared.metrics.emit(Event::LateConnectAnswer { token, accepted });
                if accepted {
                    spawn_disconnect(&task_shared, hook, token, DisconnectReason::Error, request);
                }
                return;
            }
        };
        // Answered in time, so the client has not been answered yet.
        let Some(tx) = tx else { return };
        let elapsed = started.elapsed();
        task_shared.metrics.emit(Event::ConnectAnswered { token, result: result.as_ref().map(|_| ()), elapsed });
        let decision = match result {
            Ok(accepted) => {
                if tx.is_closed() {
                    task_shared.router.remove(token);
                    task_shared.metrics.emit(Event::ClientLeftDuringConnect { token });
                    spawn_disconnect(&task_shared, hook, token, DisconnectReason::ClientClosed, request);
                    return;
                }
                open(&task_shared, hook, token, request, accepted, peer, abort).await
            }
            Err(refusal) => {
                task_shared.router.remove(token);
                refused(&task_shared, refusal)
            }
        };
        // If the client left just now, the decision (and its stream handle)
        // is dropped here, which reports `client_closed` for an opened stream.
        let _ = tx.send(decision);
    });
    Ok(rx)
}

async fn open(
    shared: &Arc<Shared>,
    hook: Arc<dyn ConnectHook>,
    token: Uuid,
    request: Arc<ClientRequest>,
    accepted: Accepted,
    peer: Option<SocketAddr>,
    abort: Option<CancellationToken>,
) -> Decision {
    let keys = crate::keys::bindings(&shared.config.default_bindings, &accepted, &request.url);
    let request_id = accepted.request_id.clone().or_else(|| crate::keys::query_param(&request.url, "request_id"));
    // With a broker, the keys must be bound before `ready`; if that fails the
    // stream opens, gets what was buffered, and ends with `error`.
    let mut ready = Some(ready_frame(shared.config.open_retry_jitter));
    if let Some(amqp) = &shared.amqp
        && let Err(e) = amqp.acquire(&keys).await
    {
        shared.metrics.emit(Event::RoutingSetupFailed { token, error: &e });
        ready = None;
    }
    let acquired = ready.is_some() && shared.amqp.is_some();
    let last_event_id = resume_from(shared, &request).await;
    let queue = StreamQueue::new(token, request, shared.config.stream_queue_bytes, abort);
    let new = NewStream {
        keys: keys.clone(),
        request_id: request_id.as_deref(),
        peer,
        ready,
        last_event_id: last_event_id.as_deref(),
    };
    let (opened, taken_hold, resumed) = shared.router.open(&queue, new, || RetryHint::Draining.frame());
    match resumed {
        Resumed::Fresh => {}
        Resumed::Replayed(events) => shared.metrics.emit(Event::Resumed { token, events }),
        Resumed::Gap(cause) => shared.metrics.emit(Event::GapSignalled { token: Some(token), cause, streams: 1 }),
    }
    let mut release: Vec<Box<str>> = taken_hold.into_iter().collect();
    if opened != Opened::Live && acquired {
        // The stream was never indexed, so its end will not give these back.
        release.extend(keys.iter().map(|k| Box::from(k.as_str())));
    }
    release_keys(shared, release);
    if opened == Opened::Gone {
        spawn_disconnect(shared, hook, token, DisconnectReason::ServerClosed, Arc::clone(queue.request()));
        return Decision::Error(ApiError::new(ErrorCode::ShuttingDown, "The stream was closed"));
    }
    shared.metrics.emit(Event::StreamOpened { token, request_id: accepted.request_id.as_deref() });
    if let Some(at) = accepted.expires_at
        && opened == Opened::Live
    {
        shared.expiries.schedule(token, at);
    }
    Decision::Stream(StreamHandle::new(queue, end_hook(shared, hook)))
}

/// How long a resume waits for this instance to catch up with a cursor
/// another instance wrote (AMQP: consumers of the stream run a little
/// apart); after it, the client gets a `gap`.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// The client's `Last-Event-ID` (header, else the `lastEventId` query
/// parameter) when history is on; with a broker, first waits (bounded) until
/// this instance has consumed as far as that cursor.
async fn resume_from(shared: &Shared, request: &ClientRequest) -> Option<String> {
    if !shared.router.has_history() {
        return None;
    }
    let id = request
        .headers
        .iter()
        .find(|(k, _)| k == crate::headers::LAST_EVENT_ID)
        .map(|(_, v)| v.clone())
        .or_else(|| crate::keys::query_param(&request.url, "lastEventId"))?;
    // Only a cluster has other instances ahead of this one; alone, a cursor
    // ahead of the history is unknown at once.
    if shared.amqp.is_some()
        && let Some(wanted) = shared.router.ahead_of_history(&id)
    {
        let mut position = shared.router.watch_position();
        let _ = tokio::time::timeout(CATCH_UP, position.wait_for(|p| *p >= wanted)).await;
    }
    Some(id)
}

/// `ready`, after a jittered `retry:` when that is on: a gateway lost at
/// once then sees its clients come back spread over the range.
fn ready_frame(jitter: Option<(u64, u64)>) -> Bytes {
    match jitter {
        None => Bytes::from_static(sse_wire::encode::READY),
        Some((min, max)) => {
            let retry = crate::retry::jittered(min, max);
            let mut b = bytes::BytesMut::with_capacity(retry.len() + sse_wire::encode::READY.len());
            b.extend_from_slice(&retry);
            b.extend_from_slice(sse_wire::encode::READY);
            b.freeze()
        }
    }
}

/// The client's answer for a refused connect (already logged and counted).
fn refused(shared: &Shared, refusal: Refusal) -> Decision {
    if shared.config.retry_on_backend_failure && refusal.is_transient() {
        // EventSource gives up for good on any non-200: tell it to come back instead.
        let reason = match refusal {
            Refusal::Timeout => RefuseReason::BackendTimeout,
            Refusal::Unavailable(_) => RefuseReason::BackendUnavailable,
            _ => RefuseReason::BackendError,
        };
        shared.metrics.emit(Event::StreamRefused { reason, max_connections: shared.config.max_connections });
        return Decision::InStream(RetryHint::BackendFailure.frame());
    }
    match refusal {
        Refusal::Rejected { status, message } => Decision::InStream(sse_wire::encode::rejected(status, &message)),
        Refusal::Status(code) => {
            Decision::Error(ApiError::new(ErrorCode::BackendError(code), format!("Backend returned {code}")))
        }
        Refusal::Timeout => Decision::Error(ApiError::new(ErrorCode::GatewayTimeout, "Backend callback timed out")),
        Refusal::Unavailable(_) => Decision::Error(ApiError::new(ErrorCode::BackendUnavailable, "Backend unavailable")),
    }
}

fn end_hook(shared: &Arc<Shared>, hook: Arc<dyn ConnectHook>) -> EndHook {
    let shared = Arc::clone(shared);
    Box::new(move |queue: &Arc<StreamQueue>, reason| {
        let released = shared.router.end_stream(queue, reason);
        release_keys(&shared, released);
        shared.expiries.cancel(queue.token());
        shared.metrics.emit(Event::StreamEnded { token: queue.token(), reason });
        spawn_disconnect(&shared, hook, queue.token(), reason, Arc::clone(queue.request()));
    })
}

/// Gives routing keys back to the broker binder (no-op in HTTP mode).
pub(crate) fn release_keys(shared: &Arc<Shared>, keys: Vec<Box<str>>) {
    let Some(amqp) = shared.amqp.clone() else { return };
    if keys.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    shared.tracker.spawn_on(async move { amqp.release(keys).await }, &rt);
}

/// Sends (and if need be retries) the disconnect callback of `token` in a tracked task.
fn spawn_disconnect(
    shared: &Arc<Shared>,
    hook: Arc<dyn ConnectHook>,
    token: Uuid,
    reason: DisconnectReason,
    request: Arc<ClientRequest>,
) {
    // Handles can be dropped while the runtime itself shuts down; then there
    // is nobody left to send the callback.
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let task_shared = Arc::clone(shared);
    shared
        .tracker
        .spawn_on(async move { task_shared.disconnects.deliver(hook.as_ref(), token, reason, &request).await }, &rt);
}
