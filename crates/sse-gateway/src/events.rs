//! Every notable occurrence of the gateway as one type: [`Event`]. Emitting
//! one writes its log line (once, at its level) and moves its counters, with
//! label values from the enums here; no other module logs an occurrence and
//! counts it by hand, and no label value is written anywhere else.

use std::time::Duration;

use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::ErrorCode;
use crate::history::{GapCause, HistoryStats};
use crate::hook::{DisconnectReason, Refusal};
use crate::metrics::Metrics;

/// Why a stream request was answered with a `retry:` hint without asking the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefuseReason {
    MaxConnections,
    BrokerUnavailable,
    Draining,
    /// `MAX_QUEUED_CONNECTS` connects already wait for a callback slot.
    CallbacksBusy,
    /// The connect callback got no answer or a 5xx (`RETRY_ON_BACKEND_FAILURE`).
    BackendUnavailable,
    BackendTimeout,
    BackendError,
}

impl RefuseReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::Draining => "draining",
            Self::CallbacksBusy => "callbacks_busy",
            Self::BackendUnavailable => "backend_unavailable",
            Self::BackendTimeout => "backend_timeout",
            Self::BackendError => "backend_error",
        }
    }
}

/// Where an event entered the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ingress {
    Send,
    Publish,
    Amqp,
    InProcess,
}

impl Ingress {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Publish => "publish",
            Self::Amqp => "amqp",
            Self::InProcess => "in_process",
        }
    }
}

/// An internal API endpoint with its own request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Send,
    Publish,
    Streams,
    Close,
    History,
}

impl Endpoint {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Publish => "publish",
            Self::Streams => "streams",
            Self::Close => "close",
            Self::History => "history",
        }
    }
}

/// Why a disconnect callback was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// `DISCONNECT_RETRY_SECONDS` passed.
    Window,
    /// Too many retries were already waiting.
    TooMany,
}

impl GiveUp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Window => "window",
            Self::TooMany => "too_many",
        }
    }
}

/// The `outcome` label of a connect callback.
pub(crate) fn connect_outcome(result: Result<(), &Refusal>) -> &'static str {
    match result {
        Ok(()) => "accepted",
        Err(Refusal::Rejected { .. }) => "rejected",
        Err(Refusal::Status(_)) => "status",
        Err(Refusal::Timeout) => "timeout",
        Err(Refusal::Unavailable(_)) => "unavailable",
    }
}

/// Something that happened; [`Metrics::emit`] logs and counts it.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    StreamOpened {
        token: Uuid,
        request_id: Option<&'a str>,
    },
    StreamEnded {
        token: Uuid,
        reason: DisconnectReason,
    },
    StreamRefused {
        reason: RefuseReason,
        max_connections: usize,
    },
    /// The backend answered (or failed) a connect callback.
    ConnectAnswered {
        token: Uuid,
        result: Result<(), &'a Refusal>,
        elapsed: Duration,
    },
    /// A connect callback answered after its client was told it timed out;
    /// an accept then gets its disconnect callback (reason `error`).
    LateConnectAnswer {
        token: Uuid,
        accepted: bool,
    },
    /// The client left while its connect callback ran (the backend hears a disconnect).
    ClientLeftDuringConnect {
        token: Uuid,
    },
    /// The broker could not bind the new stream's keys; it ends with `error`.
    RoutingSetupFailed {
        token: Uuid,
        error: &'a dyn std::error::Error,
    },
    /// A disconnect callback attempt (1 = the first) finished.
    DisconnectAnswered {
        token: Uuid,
        result: Result<(), &'a Refusal>,
        elapsed: Duration,
        attempt: u32,
    },
    /// A failed disconnect callback will be tried again after `delay`.
    DisconnectRetryScheduled {
        token: Uuid,
        attempt: u32,
        delay: Duration,
    },
    /// Disconnect callbacks waiting for a retry now.
    DisconnectRetriesWaiting {
        count: usize,
    },
    /// A disconnect callback failed for good: the backend never heard it.
    DisconnectGivenUp {
        token: Uuid,
        why: GiveUp,
        attempts: u32,
    },
    /// A roster went to the backend (or failed).
    RosterPosted {
        result: Result<(), &'a Refusal>,
        tokens: usize,
        first_refusal: bool,
    },
    /// Streams closed through `/internal/close` on this instance.
    AdminClosed {
        matched: usize,
    },
    /// A stream ended because its credentials expired.
    CredentialsExpired {
        token: Uuid,
    },
    /// An event was accepted through `ingress` and queued on `streams` streams.
    Published {
        ingress: Ingress,
        streams: usize,
    },
    /// Connects waiting for a callback slot now.
    ConnectsWaiting {
        count: usize,
    },
    /// A client left while its connect waited for a callback slot (the backend never heard of it).
    ClientLeftWhileQueued {
        token: Uuid,
    },
    /// A stream's socket took nothing for `STREAM_STALL_SECONDS` while data waited.
    StreamStalled {
        token: Uuid,
        peer: Option<std::net::SocketAddr>,
        waited: Duration,
    },
    /// Streams closed because their clients did not read fast enough; the
    /// first of them (token and peer) is named in the log.
    SlowConsumersClosed {
        count: usize,
        first: Option<(Uuid, Option<std::net::SocketAddr>)>,
    },
    /// Events kept for a request_id expected back, or a hold dropped (its events lost).
    Held {
        key: &'a str,
        held: usize,
        dropped: usize,
    },
    ApiAnswered {
        endpoint: Endpoint,
        status: u16,
        elapsed: Duration,
    },
    ErrorAnswered {
        code: ErrorCode,
    },
    BrokerConnected {
        queue: &'a str,
        exchange: &'a str,
    },
    BrokerLost {
        shutting_down: bool,
    },
    BrokerMessageDelivered,
    /// A stream resumed from its `Last-Event-ID`: `events` were replayed.
    Resumed {
        token: Uuid,
        events: usize,
    },
    /// A `gap` was written to `streams` streams (one resuming `token`, or
    /// every live stream after the broker lost events).
    GapSignalled {
        token: Option<Uuid>,
        cause: GapCause,
        streams: usize,
    },
    /// The history's size after its periodic eviction.
    HistorySwept(HistoryStats),
    BrokerMessageRejected {
        key: &'a str,
        reason: &'a str,
    },
}

impl Metrics {
    /// Logs `event` once and counts it.
    pub(crate) fn emit(&self, event: Event<'_>) {
        match event {
            Event::StreamOpened { token, request_id } => {
                self.active.inc();
                self.connections.get_or_create(&[("action", "connect")]).inc();
                debug!(%token, request_id = request_id.unwrap_or(""), "stream opened");
            }
            Event::StreamEnded { token, reason } => {
                self.active.dec();
                self.connections.get_or_create(&[("action", "disconnect")]).inc();
                self.disconnects.get_or_create(&[("reason", reason.as_str())]).inc();
                debug!(%token, reason = reason.as_str(), "stream ended");
            }
            Event::StreamRefused { reason, max_connections } => {
                self.refused.get_or_create(&[("reason", reason.as_str())]).inc();
                match reason {
                    RefuseReason::MaxConnections => {
                        warn!(max = max_connections, "stream refused: MAX_CONNECTIONS reached")
                    }
                    RefuseReason::BrokerUnavailable => debug!("stream refused: RabbitMQ is disconnected"),
                    RefuseReason::Draining => debug!("stream refused: shutting down"),
                    RefuseReason::CallbacksBusy => warn!("stream refused: MAX_QUEUED_CONNECTS connects already wait"),
                    RefuseReason::BackendUnavailable | RefuseReason::BackendTimeout | RefuseReason::BackendError => {
                        debug!(reason = reason.as_str(), "connect callback failed: client told to retry")
                    }
                }
            }
            Event::ConnectAnswered { token, result, elapsed } => {
                self.callback("connect", connect_outcome(result), elapsed);
                match result {
                    Ok(()) => {}
                    Err(Refusal::Rejected { status, .. }) => info!(%token, status, "backend rejected the stream"),
                    Err(Refusal::Status(status)) => {
                        warn!(%token, status, "backend answered the connect callback with an error status")
                    }
                    Err(Refusal::Timeout) => warn!(%token, "connect callback timed out"),
                    Err(Refusal::Unavailable(e)) => warn!(%token, error = %e, "backend unavailable"),
                }
            }
            Event::LateConnectAnswer { token, accepted } => {
                let outcome = if accepted { "accepted" } else { "refused" };
                self.late_connects.get_or_create(&[("outcome", outcome)]).inc();
                if accepted {
                    info!(%token, "the backend accepted a stream after its callback timed out; sending its disconnect");
                }
            }
            Event::ClientLeftDuringConnect { token } => info!(%token, "client left during the connect callback"),
            Event::RoutingSetupFailed { token, error } => {
                self.error_answers(ErrorCode::RoutingSetupFailed);
                warn!(%token, error = %error, "routing setup failed; closing the stream");
            }
            Event::DisconnectAnswered { token, result, elapsed, attempt } => match result {
                Ok(()) => {
                    self.callback("disconnect", "ok", elapsed);
                    if attempt > 1 {
                        self.disconnect_retries.get_or_create(&[("outcome", "delivered")]).inc();
                        info!(%token, attempt, "disconnect callback delivered after retrying");
                    }
                }
                Err(e) => {
                    self.callback("disconnect", "failed", elapsed);
                    if attempt == 1 {
                        warn!(%token, error = %e, "disconnect callback failed");
                    } else {
                        debug!(%token, attempt, error = %e, "disconnect callback retry failed");
                    }
                }
            },
            Event::DisconnectRetryScheduled { token, attempt, delay } => {
                self.disconnect_retries.get_or_create(&[("outcome", "retry")]).inc();
                debug!(%token, attempt, ?delay, "disconnect callback will be retried");
            }
            Event::DisconnectRetriesWaiting { count } => {
                self.disconnect_retries_waiting.set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            Event::DisconnectGivenUp { token, why, attempts } => {
                self.disconnect_retries.get_or_create(&[("outcome", why.as_str())]).inc();
                warn!(%token, attempts, why = why.as_str(), "gave up a disconnect callback; the backend never heard it");
            }
            Event::RosterPosted { result, tokens, first_refusal } => {
                let outcome = match result {
                    Ok(()) => "ok",
                    Err(Refusal::Status(s)) if (400..500).contains(s) => "unsupported",
                    Err(_) => "failed",
                };
                self.rosters.get_or_create(&[("outcome", outcome)]).inc();
                match result {
                    Ok(()) => debug!(tokens, "roster sent"),
                    Err(Refusal::Status(s)) if (400..500).contains(s) => {
                        if first_refusal {
                            warn!(
                                status = s,
                                "the backend refused a roster: it does not support rosters (logged once)"
                            );
                        }
                    }
                    Err(e) => warn!(error = %e, "roster callback failed"),
                }
            }
            Event::AdminClosed { matched } => {
                self.admin_closed.inc_by(matched as u64);
                info!(matched, "streams closed by /internal/close");
            }
            Event::CredentialsExpired { token } => {
                self.expired.inc();
                debug!(%token, "credentials expired; stream ended");
            }
            Event::Published { ingress, streams } => {
                self.published.get_or_create(&[("ingress", ingress.as_str())]).inc();
                self.delivered.inc_by(streams as u64);
            }
            Event::ConnectsWaiting { count } => {
                self.connects_waiting.set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            Event::ClientLeftWhileQueued { token } => debug!(%token, "client left while its connect waited for a slot"),
            Event::StreamStalled { token, peer, waited } => {
                self.overflows.get_or_create(&[("reason", "stalled")]).inc();
                let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                warn!(%token, peer, ?waited, "closed a stalled stream: its client took no byte while data waited");
            }
            Event::SlowConsumersClosed { count, first } => {
                self.overflows.get_or_create(&[("reason", "slow_consumer")]).inc_by(count as u64);
                // Warn: a dropped stream loses events; it must never go unnoticed.
                let (token, peer) = first.map_or((String::new(), String::new()), |(t, p)| {
                    (t.to_string(), p.map(|p| p.to_string()).unwrap_or_default())
                });
                warn!(
                    count,
                    token = %token,
                    peer = %peer,
                    "closed streams whose clients did not keep up (STREAM_QUEUE_BYTES overflowed); token and peer of the first"
                );
            }
            Event::Held { key, held, dropped } => {
                self.held.inc_by(held as u64);
                self.hold_dropped.inc_by(dropped as u64);
                if dropped > 0 {
                    warn!(key, "hold outgrew STREAM_QUEUE_BYTES and was dropped; its events are lost");
                } else {
                    debug!(key, "event held for a returning client");
                }
            }
            Event::ApiAnswered { endpoint, status, elapsed } => {
                let label = match status {
                    200 => "200",
                    400 => "400",
                    401 => "401",
                    403 => "403",
                    404 => "404",
                    413 => "413",
                    429 => "429",
                    500 => "500",
                    503 => "503",
                    _ => "other",
                };
                self.api.get_or_create(&[("endpoint", endpoint.as_str()), ("status", label)]).inc();
                self.api_seconds.get_or_create(&[("endpoint", endpoint.as_str())]).observe(elapsed.as_secs_f64());
            }
            Event::ErrorAnswered { code } => self.error_answers(code),
            Event::BrokerConnected { queue, exchange } => {
                self.broker_up.set(1);
                self.broker_connects.inc();
                info!(queue, exchange, "connected to RabbitMQ");
            }
            Event::BrokerLost { shutting_down } => {
                self.broker_up.set(0);
                if !shutting_down {
                    warn!("lost the RabbitMQ connection; new streams are refused until it is back");
                }
            }
            Event::BrokerMessageDelivered => {
                self.broker_messages.get_or_create(&[("outcome", "delivered")]).inc();
            }
            Event::Resumed { token, events } => {
                self.replayed.inc_by(events as u64);
                debug!(%token, events, "stream resumed from Last-Event-ID");
            }
            Event::GapSignalled { token, cause, streams } => {
                self.gaps.get_or_create(&[("cause", cause.as_str())]).inc_by(streams as u64);
                match token {
                    Some(token) => info!(%token, cause = cause.as_str(), "resume not covered by the history: gap"),
                    None => warn!(streams, cause = cause.as_str(), "events were lost: gap written to every stream"),
                }
            }
            Event::HistorySwept(stats) => {
                self.history_events.set(i64::try_from(stats.events).unwrap_or(i64::MAX));
                self.history_bytes.set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
                self.history_age.set(i64::try_from(stats.oldest.as_secs()).unwrap_or(i64::MAX));
                self.history_evicted.inc_by(stats.evicted as u64);
            }
            Event::BrokerMessageRejected { key, reason } => {
                self.broker_messages.get_or_create(&[("outcome", "rejected")]).inc();
                warn!(key, reason, "rejected an AMQP message");
            }
        }
    }

    fn callback(&self, action: &'static str, outcome: &'static str, elapsed: Duration) {
        self.callbacks.get_or_create(&[("action", action), ("outcome", outcome)]).inc();
        self.callback_seconds.get_or_create(&[("action", action)]).observe(elapsed.as_secs_f64());
    }

    fn error_answers(&self, code: ErrorCode) {
        self.errors.get_or_create(&[("fault", code.fault().as_str()), ("code", code.as_str())]).inc();
    }
}
