//! Accept loops, the heartbeat ticker and the shutdown drain.
//!
//! Every connection runs in its own task (tracked, so the drain knows when
//! every stream has been dropped and every disconnect callback spawned).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::connection;
use crate::events::Event;
use crate::hook::{ConnectHook, DisconnectReason, Refusal};
use crate::retry::RetryHint;
use crate::routes::Listener;
use crate::shared::Shared;

/// Accept backlog of every listener: the default (128) overflows when
/// thousands of clients reconnect at once (after a drain or a deploy), and
/// each overflowed client waits for a SYN retry (1 s, then 3 s).
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a listener with a deep accept backlog (use it for the public and
/// the internal listener alike).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

pub(crate) async fn serve(shared: Arc<Shared>, public: TcpListener, internal: Option<TcpListener>) {
    let connections = shared.connections.clone();
    let writers: Vec<_> = (0..shared.router.writers().len())
        .map(|i| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.router.writers().run(i, shared.metrics.writer_counters()).await })
        })
        .collect();
    let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&shared)));
    let broker = shared
        .amqp
        .clone()
        .map(|a| tokio::spawn(a.run(Arc::clone(&shared.router), Arc::clone(&shared.metrics), shared.shutdown.clone())));
    let holds = (!shared.config.resume_ttl.is_zero()).then(|| tokio::spawn(expire_holds_loop(Arc::clone(&shared))));
    let expiries = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { shared.expiries.run(&shared.router, &shared.metrics).await })
    };
    let stalls = (!shared.config.stream_stall.is_zero()).then(|| tokio::spawn(stall_loop(Arc::clone(&shared))));
    let history = shared.router.has_history().then(|| tokio::spawn(history_loop(Arc::clone(&shared))));
    let roster = match (&shared.hook, shared.config.roster_interval.is_zero()) {
        (Some(hook), false) => Some(tokio::spawn(roster_loop(Arc::clone(&shared), Arc::clone(hook)))),
        _ => None,
    };
    let internal_loop =
        internal.map(|l| tokio::spawn(accept_loop(Arc::clone(&shared), l, Listener::Internal, connections.clone())));
    accept_loop(Arc::clone(&shared), public, Listener::Public, connections.clone()).await;
    heartbeat.abort();
    expiries.abort();
    for task in [holds, roster, stalls, history].into_iter().flatten() {
        task.abort();
    }
    drain(&shared, &connections).await;
    if let Some(b) = broker {
        // The run loop sees the shutdown token and closes the connection.
        let _ = tokio::time::timeout(Duration::from_secs(2), b).await;
    }
    if let Some(task) = internal_loop {
        task.abort();
    }
    for task in writers {
        task.abort();
    }
    info!("shutdown complete");
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, kind: Listener, connections: TaskTracker) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(connection::serve(Arc::clone(&shared), tcp, peer, kind));
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Stop accepting (done by the caller), end every stream with a jittered
/// `retry:` hint, wait for connections until the deadline, cut the rest, then
/// wait (bounded) for the disconnect callbacks.
async fn drain(shared: &Arc<Shared>, connections: &TaskTracker) {
    let deadline = Instant::now() + shared.config.shutdown_timeout;
    let streams = shared.router.start_draining();
    info!(streams = streams.len(), "shutting down: draining streams");
    for q in &streams {
        q.close(Some(RetryHint::Draining.frame()), DisconnectReason::ServerClosed);
    }
    drop(streams);
    connections.close();
    if tokio::time::timeout_at(deadline, connections.wait()).await.is_err() {
        warn!("connections still open at the shutdown deadline; cutting them");
        shared.cut.cancel();
        for q in shared.router.open_streams() {
            q.cut();
        }
        if tokio::time::timeout(Duration::from_secs(1), connections.wait()).await.is_err() {
            warn!("connection tasks did not stop after being cut");
        }
    }
    shared.tracker.close();
    // Disconnect callbacks (and their retries, flushed now) get until the
    // shutdown deadline, and at least one callback timeout after the streams.
    let callbacks_deadline = deadline.max(Instant::now() + shared.config.callback_timeout + Duration::from_secs(1));
    if tokio::time::timeout_at(callbacks_deadline, shared.tracker.wait()).await.is_err() {
        warn!(
            unfinished = shared.disconnects.unfinished(),
            waiting_for_retry = shared.disconnects.waiting(),
            "some disconnect callbacks did not finish before exit; the backend may never hear them"
        );
    }
}

/// Stalled streams closed per second at most. Closing one costs a reset, a
/// disconnect callback and a log line; thousands that stalled together are
/// closed over a few seconds instead of in one burst that would delay every
/// healthy stream's events.
const STALL_CLOSES_PER_SECOND: usize = 1000;

/// How often the stall sweep runs (or every `STREAM_STALL_SECONDS`, if shorter).
const STALL_SWEEP: Duration = Duration::from_millis(250);

/// Ends streams whose sockets took nothing for `STREAM_STALL_SECONDS` while
/// data waited: a sweep every 250 ms over the open streams (a lock each),
/// closing at most [`STALL_CLOSES_PER_SECOND`] a second; the rest stay
/// stalled and are closed by the next sweeps.
async fn stall_loop(shared: Arc<Shared>) {
    let limit = shared.config.stream_stall;
    let period = STALL_SWEEP.min(limit);
    let per_sweep = (STALL_CLOSES_PER_SECOND as f64 * period.as_secs_f64()).ceil().max(1.0) as usize;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (token, peer, queue) in shared.router.stalled(std::time::Instant::now(), limit).into_iter().take(per_sweep)
        {
            queue.stall();
            shared.metrics.emit(Event::StreamStalled { token, peer, waited: limit });
        }
    }
}

/// Evicts expired history once a second (appends evict too, but a quiet
/// history must still age out) and publishes its size.
async fn history_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(stats) = shared.router.sweep_history(std::time::Instant::now()) {
            shared.metrics.emit(Event::HistorySwept(stats));
        }
    }
}

/// Posts this instance's tokens to the backend every roster interval.
async fn roster_loop(shared: Arc<Shared>, hook: Arc<dyn ConnectHook>) {
    let period = shared.config.roster_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused_before = false;
    loop {
        tick.tick().await;
        let tokens = shared.router.tokens();
        let slot = shared.callbacks.slot().await;
        let result = hook.roster(&shared.config.instance_id, &tokens, period).await;
        drop(slot);
        let refusal = matches!(&result, Err(Refusal::Status(s)) if (400..500).contains(s));
        let first_refusal = refusal && !refused_before;
        refused_before |= refusal;
        shared.metrics.emit(Event::RosterPosted {
            result: result.as_ref().copied(),
            tokens: tokens.len(),
            first_refusal,
        });
    }
}

async fn expire_holds_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let released = shared.router.expire_holds(std::time::Instant::now());
        crate::connect::release_keys(&shared, released);
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let period = shared.config.heartbeat_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = Bytes::from_static(sse_wire::encode::HEARTBEAT);
    loop {
        tick.tick().await;
        let pushed = shared.router.push_all(&heartbeat);
        if pushed.overflowed > 0 {
            shared
                .metrics
                .emit(Event::SlowConsumersClosed { count: pushed.overflowed, first: pushed.first_overflowed });
        }
    }
}
