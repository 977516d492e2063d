//! The connection table: `request_id` <-> gateway token, one live stream per
//! `request_id`, identities, observers, and the three ways to address streams
//! (targeted, broadcast, per subject).
//!
//! Owns the only copy of that state, behind one `std` mutex that guards map
//! updates only: every gateway call and every observer call happens after the
//! lock is released, on a snapshot. Decisions D1-D3 of docs/BACKEND.md: the
//! active-connections gauge is set from the map size (no drift); a
//! replacement or a gateway 404 ends the old connection exactly like a
//! disconnect (disconnect observers run once, identity goes); identity is
//! bound before connect observers run; broadcasts and per-subject sends are
//! one publish when the broadcaster can, else concurrent per-token sends with
//! a bound.
//!
//! It also keeps the roster state of each gateway instance (docs/BACKEND.md,
//! Roster): which instance holds each token, and when each instance last
//! sent its roster. A roster or an instance's silence ends connections
//! through the same path as a disconnect callback; the silence check is a
//! background task started by the first roster, holding only a weak
//! reference to the table.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::BoxFuture;
use crate::broadcaster::{Broadcaster, Event, PublishOutcome, SendStatus};
use crate::identity::{Identity, LOCAL_USER};
use crate::metrics::Metrics;
use crate::observer::run_isolated;

/// An observer of connects or disconnects, called with the `request_id`.
pub type Observer = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// What the table knows about one live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The browser-chosen id.
    pub request_id: String,
    /// The gateway token of the live stream.
    pub token: String,
    /// The forwarded URL of the stream request.
    pub url: String,
    /// Bound subject, if any.
    pub subject: Option<String>,
    /// Bound role, if any.
    pub role: Option<String>,
    /// The gateway instance holding the stream, from the connect callback
    /// (`None`: a gateway without rosters; never roster-managed).
    pub instance: Option<String>,
    /// The client resumes a stream it had (it sent `Last-Event-ID`): with
    /// the gateway's history on, it gets what it missed replayed (or a
    /// `gap`, after which it refetches), so connect observers should not
    /// repeat what they sent it before.
    pub resumed: bool,
}

/// Why a connection left the table other than by replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The gateway's disconnect callback.
    Callback,
    /// The gateway answered 404 to a send: it no longer holds the stream.
    GatewayNotFound,
    /// `instance_lost`: the stream's gateway instance left it out of its
    /// roster, or sent no roster for 3 of its intervals.
    InstanceLost,
}

impl DisconnectCause {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Callback => "disconnect_callback",
            Self::GatewayNotFound => "gateway_not_found",
            Self::InstanceLost => "instance_lost",
        }
    }
}

/// A gateway instance that sends rosters: how often, when it last did.
struct InstanceRoster {
    interval: Duration,
    last: tokio::time::Instant,
    /// Rosters received so far from this instance.
    received: u64,
}

impl InstanceRoster {
    /// When the instance is presumed dead (3 intervals of silence); `None`
    /// when that lies beyond what the clock can represent.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.interval.checked_mul(SILENT_INTERVALS).and_then(|d| self.last.checked_add(d))
    }
}

/// An instance silent for this many of its roster intervals is presumed dead.
const SILENT_INTERVALS: u32 = 3;

#[derive(Default)]
struct State {
    by_request: HashMap<String, ConnectionInfo>,
    by_token: HashMap<String, String>,
    /// For tokens with an instance: how many rosters that instance had sent
    /// when the token connected. A roster only ends tokens registered before
    /// the previous roster of their instance arrived, so a roster taken
    /// before a connect but delivered after it never ends that stream.
    roster_epoch: HashMap<String, u64>,
    instances: HashMap<String, InstanceRoster>,
}

impl State {
    /// Removes the mapping of `token` if it is the live stream of its id;
    /// returns that id.
    fn remove_if_current(&mut self, token: &str) -> Option<String> {
        self.roster_epoch.remove(token);
        let rid = self.by_token.remove(token)?;
        if self.by_request.get(&rid).is_some_and(|c| c.token == token) {
            self.by_request.remove(&rid);
            Some(rid)
        } else {
            None
        }
    }
}

/// A validated roster (`{"action":"roster",...}`) from one gateway instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// The sending instance.
    pub instance: String,
    /// Every token the instance holds (open or connecting).
    pub tokens: Vec<String>,
    /// Seconds between two rosters of this instance (at least 1).
    pub interval: Duration,
}

#[derive(Default)]
struct Observers {
    connect: Vec<Observer>,
    disconnect: Vec<Observer>,
}

struct Inner {
    state: Mutex<State>,
    observers: Mutex<Observers>,
    broadcaster: Arc<dyn Broadcaster>,
    metrics: Metrics,
    fanout_limit: usize,
    /// Woken on every roster so the silence watch recomputes its deadline.
    roster_changed: Arc<tokio::sync::Notify>,
    watch_started: AtomicBool,
}

/// The connection table. Cheap to clone; clones share the table.
#[derive(Clone)]
pub struct ConnectionManager {
    inner: Arc<Inner>,
}

/// Per-token sends in flight at once in the fallback fan-out.
pub const DEFAULT_FANOUT_LIMIT: usize = 32;

impl ConnectionManager {
    /// A manager sending through `broadcaster`.
    pub fn new(broadcaster: Arc<dyn Broadcaster>, metrics: Metrics) -> Self {
        Self::with_fanout_limit(broadcaster, metrics, DEFAULT_FANOUT_LIMIT)
    }

    /// Same, with a bound on concurrent per-token sends (at least 1).
    pub fn with_fanout_limit(broadcaster: Arc<dyn Broadcaster>, metrics: Metrics, limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                observers: Mutex::default(),
                broadcaster,
                metrics,
                fanout_limit: limit.max(1),
                roster_changed: Arc::new(tokio::sync::Notify::new()),
                watch_started: AtomicBool::new(false),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the maps half-updated (every update is
        // a few infallible map operations), so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observers(&self) -> MutexGuard<'_, Observers> {
        self.inner.observers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connect observer (never removed).
    pub fn register_on_connect<F, Fut>(&self, f: F)
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.observers().connect.push(Arc::new(move |rid| Box::pin(f(rid))));
    }

    /// Adds a disconnect observer (never removed).
    pub fn register_on_disconnect<F, Fut>(&self, f: F)
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.observers().disconnect.push(Arc::new(move |rid| Box::pin(f(rid))));
    }

    /// The metrics handles this manager updates.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers a new stream for `request_id` with its identity (bound
    /// first) and the gateway `instance` holding it (if the gateway named
    /// one), replacing and closing any previous stream of that id, then runs
    /// the disconnect observers for the replaced one and the connect observers
    /// for the new one, in that order, outside the lock.
    pub async fn on_connect(
        &self,
        request_id: &str,
        token: &str,
        url: &str,
        identity: Option<&Identity>,
        instance: Option<&str>,
    ) {
        self.on_connect_resuming(request_id, token, url, identity, instance, false).await;
    }

    /// [`ConnectionManager::on_connect`] for a stream that may resume
    /// (`resumed`: the client sent `Last-Event-ID`; see
    /// [`ConnectionInfo::resumed`]).
    pub async fn on_connect_resuming(
        &self,
        request_id: &str,
        token: &str,
        url: &str,
        identity: Option<&Identity>,
        instance: Option<&str>,
        resumed: bool,
    ) {
        let info = ConnectionInfo {
            request_id: request_id.to_owned(),
            token: token.to_owned(),
            url: url.to_owned(),
            subject: identity.map(|i| i.subject.clone()),
            role: identity.and_then(|i| i.role.clone()),
            instance: instance.map(str::to_owned),
            resumed,
        };
        let (replaced, live) = {
            let mut st = self.state();
            let replaced = st.by_request.insert(request_id.to_owned(), info);
            if let Some(old) = &replaced {
                st.by_token.remove(&old.token);
                st.roster_epoch.remove(&old.token);
            }
            st.by_token.insert(token.to_owned(), request_id.to_owned());
            if let Some(i) = instance {
                let epoch = st.instances.get(i).map_or(0, |r| r.received);
                st.roster_epoch.insert(token.to_owned(), epoch);
            }
            (replaced, st.by_request.len())
        };
        let m = &self.inner.metrics;
        m.count_connection("connect");
        m.active_connections.set(gauge(live));
        if identity.is_some() {
            m.count_identity(true);
        }
        if let Some(old) = replaced {
            self.close_replaced(&old.token).await;
            m.count_connection("disconnect");
            self.run_observers(false, request_id).await;
        }
        self.run_observers(true, request_id).await;
    }

    async fn close_replaced(&self, token: &str) {
        match self.inner.broadcaster.send(token, None, true).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(token, error = %e, "closing the replaced stream failed (ignored)"),
        }
    }

    /// The stream `token` ended. Unknown or replaced tokens are ignored.
    pub async fn on_disconnect(&self, token: &str) {
        self.end(&[token.to_owned()], DisconnectCause::Callback).await;
    }

    /// Ends the connections of `tokens` that are still the live stream of
    /// their id: the one path of every disconnect (callback, gateway 404,
    /// `instance_lost`). Counts and gauge first, then the disconnect
    /// observers of each, outside the lock. Returns how many ended.
    async fn end(&self, tokens: &[String], cause: DisconnectCause) -> usize {
        let (ended, live) = {
            let mut st = self.state();
            let ended: Vec<String> = tokens.iter().filter_map(|t| st.remove_if_current(t)).collect();
            (ended, st.by_request.len())
        };
        if ended.is_empty() {
            return 0;
        }
        let m = &self.inner.metrics;
        for rid in &ended {
            m.count_connection("disconnect");
            if cause == DisconnectCause::InstanceLost {
                m.instance_lost.inc();
                tracing::info!(request_id = %rid, reason = cause.as_str(), "connection ended");
            }
        }
        m.active_connections.set(gauge(live));
        for rid in &ended {
            self.run_observers(false, rid).await;
        }
        ended.len()
    }

    /// A roster from a gateway instance: ends (as `instance_lost`) each of
    /// that instance's connections the roster does not list, if it was
    /// registered before the instance's previous roster arrived (see
    /// `roster_epoch`). Never adds. Returns how many ended. The first roster
    /// also starts the silence watch ([`Self::expire_silent_instances`]).
    pub async fn on_roster(&self, roster: &Roster) -> usize {
        self.inner.metrics.rosters_received.inc();
        let listed: HashSet<&str> = roster.tokens.iter().map(String::as_str).collect();
        let lost: Vec<String> = {
            let mut st = self.state();
            let now = tokio::time::Instant::now();
            let previous = {
                let r = st.instances.entry(roster.instance.clone()).or_insert(InstanceRoster {
                    interval: roster.interval,
                    last: now,
                    received: 0,
                });
                let previous = r.received;
                r.interval = roster.interval;
                r.last = now;
                r.received += 1;
                previous
            };
            st.by_request
                .values()
                .filter(|c| c.instance.as_deref() == Some(roster.instance.as_str()))
                .filter(|c| !listed.contains(c.token.as_str()))
                .filter(|c| st.roster_epoch.get(&c.token).is_some_and(|e| *e < previous))
                .map(|c| c.token.clone())
                .collect()
        };
        self.inner.roster_changed.notify_one();
        self.start_silence_watch();
        if !lost.is_empty() {
            tracing::info!(instance = %roster.instance, count = lost.len(), "roster left out live connections");
        }
        self.end(&lost, DisconnectCause::InstanceLost).await
    }

    /// Ends (as `instance_lost`) every connection of each instance whose last
    /// roster is 3 of its intervals old at `now`, and forgets that instance.
    /// Returns how many connections ended and the next deadline of the
    /// instances left.
    pub async fn expire_silent_instances(&self, now: tokio::time::Instant) -> (usize, Option<tokio::time::Instant>) {
        let (lost, next) = {
            let mut st = self.state();
            let dead: Vec<String> = st
                .instances
                .iter()
                .filter(|(_, r)| r.deadline().is_some_and(|d| d <= now))
                .map(|(i, _)| i.clone())
                .collect();
            for i in &dead {
                st.instances.remove(i);
                tracing::warn!(instance = %i, "no roster for 3 intervals; the instance is presumed dead");
            }
            let lost: Vec<String> = st
                .by_request
                .values()
                .filter(|c| c.instance.as_ref().is_some_and(|i| dead.contains(i)))
                .map(|c| c.token.clone())
                .collect();
            (lost, st.instances.values().filter_map(InstanceRoster::deadline).min())
        };
        (self.end(&lost, DisconnectCause::InstanceLost).await, next)
    }

    /// Starts, once, the task that expires silent instances. It sleeps until
    /// the earliest deadline (or the next roster) and ends with the manager.
    fn start_silence_watch(&self) {
        if self.inner.watch_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let changed = Arc::clone(&self.inner.roster_changed);
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(inner) = weak.upgrade() else { return };
                    let cm = ConnectionManager { inner };
                    cm.expire_silent_instances(tokio::time::Instant::now()).await.1
                };
                match next {
                    Some(deadline) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(deadline) => {}
                            () = changed.notified() => {}
                        }
                    }
                    None => changed.notified().await,
                }
            }
        });
    }

    async fn run_observers(&self, connect: bool, request_id: &str) {
        let list = {
            let obs = self.observers();
            if connect { obs.connect.clone() } else { obs.disconnect.clone() }
        };
        let what = if connect { "connect" } else { "disconnect" };
        for o in list {
            let rid = request_id.to_owned();
            run_isolated(what, || o(rid)).await;
        }
    }

    /// Whether `request_id` has a live stream.
    pub fn has_connection(&self, request_id: &str) -> bool {
        self.state().by_request.contains_key(request_id)
    }

    /// The live connection of `request_id`.
    pub fn connection_info(&self, request_id: &str) -> Option<ConnectionInfo> {
        self.state().by_request.get(request_id).cloned()
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.state().by_request.len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Binds (or rebinds) a subject to a live connection; false (counted as
    /// `failed`) when `request_id` is not connected.
    pub fn bind_identity(&self, request_id: &str, identity: &Identity) -> bool {
        let bound = {
            let mut st = self.state();
            match st.by_request.get_mut(request_id) {
                Some(c) => {
                    c.subject = Some(identity.subject.clone());
                    c.role = identity.role.clone();
                    true
                }
                None => false,
            }
        };
        if !bound {
            tracing::warn!(request_id, "identity binding for an unknown connection");
        }
        self.inner.metrics.count_identity(bound);
        bound
    }

    /// The live connection whose stream is `token`, if any.
    pub fn connection_by_token(&self, token: &str) -> Option<ConnectionInfo> {
        let st = self.state();
        st.by_token.get(token).and_then(|rid| st.by_request.get(rid)).filter(|c| c.token == token).cloned()
    }

    /// Sends to one `request_id`. False when it is not connected (no gateway
    /// call), when the gateway no longer knows the stream (the connection is
    /// then ended like a disconnect), or on any send error.
    pub async fn send_to(&self, request_id: &str, event: &Event, service: &str) -> bool {
        let Some(token) = self.state().by_request.get(request_id).map(|c| c.token.clone()) else {
            tracing::warn!(request_id, event = %event.name, "no connection for targeted send");
            return false;
        };
        self.send_token(&token, event, service).await
    }

    async fn send_token(&self, token: &str, event: &Event, service: &str) -> bool {
        let started = Instant::now();
        let result = self.inner.broadcaster.send(token, Some(event), false).await;
        let ok = matches!(result, Ok(SendStatus::Ok | SendStatus::Buffered));
        self.inner.metrics.count_sent(service, ok, started.elapsed().as_secs_f64());
        match result {
            Ok(SendStatus::Ok | SendStatus::Buffered) => {}
            Ok(SendStatus::NotFound) => {
                tracing::info!(token, "gateway no longer knows the stream; ending its connection");
                self.end(&[token.to_owned()], DisconnectCause::GatewayNotFound).await;
            }
            Err(e) => tracing::warn!(token, event = %event.name, error = %e, "send failed"),
        }
        ok
    }

    /// Sends to every connection (`subject: None`) or to the connections bound
    /// to `subject` plus every [`LOCAL_USER`] connection (unbound connections
    /// are left out). False when nothing matched or nothing was delivered.
    ///
    /// With no connection at all, a broadcaster that publishes still gets
    /// the event (for `broadcast`, or `subject.<subject>` and
    /// `subject.local-user`): a gateway keeping history records it, so a
    /// client that was away (a network blip, a rolling restart) gets it
    /// replayed when it resumes rather than silently missing it.
    pub async fn broadcast(&self, event: &Event, subject: Option<&str>, service: &str) -> bool {
        let (tokens, has_subject, has_local_user) = {
            let st = self.state();
            let tokens: Vec<String> = st
                .by_request
                .values()
                .filter(|c| match subject {
                    None => true,
                    Some(s) => c.subject.as_deref().is_some_and(|b| b == s || b == LOCAL_USER),
                })
                .map(|c| c.token.clone())
                .collect();
            let bound_to = |x: &str| st.by_request.values().any(|c| c.subject.as_deref() == Some(x));
            (tokens, subject.is_some_and(bound_to), bound_to(LOCAL_USER))
        };
        let nobody = tokens.is_empty();
        if self.inner.broadcaster.publishes() {
            let mut keys = Vec::with_capacity(2);
            match subject {
                None => keys.push("broadcast".to_owned()),
                // Only keys some live connection is bound to: with OIDC off
                // (everyone `local-user`) or on (nobody is) this is one call.
                // With nobody connected, both (for the history).
                Some(s) => {
                    if has_subject || nobody {
                        keys.push(format!("subject.{s}"));
                    }
                    if (has_local_user || nobody) && s != LOCAL_USER {
                        keys.push(format!("subject.{LOCAL_USER}"));
                    }
                }
            }
            if let Some(delivered) = self.publish_keys(&keys, event, service).await {
                return delivered;
            }
        }
        if nobody {
            return false;
        }
        self.fan_out(tokens, event, service).await
    }

    /// One publish per key; `None` when the broadcaster cannot publish.
    async fn publish_keys(&self, keys: &[String], event: &Event, service: &str) -> Option<bool> {
        let mut matched = 0usize;
        for key in keys {
            let started = Instant::now();
            let result = self.inner.broadcaster.publish(key, event).await;
            if result == Ok(PublishOutcome::Unsupported) {
                return None;
            }
            self.inner.metrics.count_sent(service, result.is_ok(), started.elapsed().as_secs_f64());
            match result {
                Ok(PublishOutcome::Matched(n)) => matched += n,
                Ok(PublishOutcome::Unsupported) => {}
                Err(e) => tracing::warn!(key, event = %event.name, error = %e, "publish failed"),
            }
        }
        Some(matched > 0)
    }

    async fn fan_out(&self, tokens: Vec<String>, event: &Event, service: &str) -> bool {
        let results: Vec<bool> = futures_util::stream::iter(tokens)
            .map(|t| async move { self.send_token(&t, event, service).await })
            .buffer_unordered(self.inner.fanout_limit)
            .collect()
            .await;
        results.into_iter().any(|ok| ok)
    }

    /// Routing keys a connection is reachable by, for the connect answer.
    pub fn bindings(info: &ConnectionInfo) -> Vec<String> {
        let mut keys = vec!["broadcast".to_owned(), format!("connection.{}", info.request_id)];
        if let Some(s) = &info.subject {
            keys.push(format!("subject.{s}"));
        }
        if let Some(r) = &info.role {
            keys.push(format!("role.{r}"));
        }
        keys
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Call, Recorder};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ev() -> Event {
        Event::json("task_event", &serde_json::json!({"x": 1}))
    }

    fn id(s: &str) -> Identity {
        Identity::new(s.to_owned(), None)
    }

    #[tokio::test]
    async fn conn_manager_new_connect_stores_forward_and_reverse_maps() {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/s?request_id=r1", None, None).await;
        let info = cm.connection_info("r1").unwrap();
        assert_eq!((info.token.as_str(), info.url.as_str()), ("t1", "/s?request_id=r1"));
        assert_eq!(cm.state().by_token.get("t1").map(String::as_str), Some("r1"));
        assert!(rec.calls().is_empty(), "a first connect sends nothing");
        assert_eq!(cm.metrics().active_connections.get(), 1);
    }

    #[tokio::test]
    async fn conn_manager_connect_notifies_every_observer_with_the_request_id() {
        let (_rec, cm) = Recorder::manager();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for n in 0..3 {
            let seen = Arc::clone(&seen);
            cm.register_on_connect(move |rid| {
                let seen = Arc::clone(&seen);
                async move { seen.lock().unwrap().push(format!("{n}:{rid}")) }
            });
        }
        cm.on_connect("r1", "t1", "/", None, None).await;
        assert_eq!(*seen.lock().unwrap(), vec!["0:r1", "1:r1", "2:r1"]);
    }

    #[tokio::test]
    async fn conn_manager_a_throwing_connect_observer_does_not_block_others_or_the_registration() {
        let (_rec, cm) = Recorder::manager();
        let ran = Arc::new(AtomicUsize::new(0));
        cm.register_on_connect(|_| async { panic!("observer failure") });
        #[allow(unreachable_code)]
        cm.register_on_connect(|_| -> std::future::Ready<()> { panic!("fails before its future") });
        let r = Arc::clone(&ran);
        cm.register_on_connect(move |_| {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        cm.on_connect("r1", "t1", "/", None, None).await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(cm.has_connection("r1"));
    }

    #[tokio::test]
    async fn conn_manager_broadcast_posts_once_per_connection_and_returns_true() {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", None, None).await;
        cm.on_connect("r2", "t2", "/", None, None).await;
        assert!(cm.broadcast(&ev(), None, "task").await);
        let mut tokens: Vec<String> = rec.calls().iter().map(|c| c.target().to_owned()).collect();
        tokens.sort();
        assert_eq!(tokens, vec!["t1", "t2"]);
    }

    #[tokio::test]
    async fn conn_manager_broadcast_with_no_connections_returns_false() {
        let (rec, cm) = Recorder::manager();
        assert!(!cm.broadcast(&ev(), None, "task").await);
        assert!(rec.calls().is_empty());
    }

    #[tokio::test]
    async fn with_no_connection_a_publishing_broadcaster_still_gets_broadcasts_for_the_history() {
        let (rec, cm) = Recorder::manager();
        rec.set_publishes(true);
        // (What they return is what the gateway matched: the recorder says 1.)
        cm.broadcast(&ev(), None, "dhcp").await;
        cm.broadcast(&ev(), Some("alice"), "task").await;
        cm.broadcast(&ev(), Some(LOCAL_USER), "task").await;
        assert_eq!(
            rec.calls(),
            vec![
                Call::Publish("broadcast".into()),
                Call::Publish("subject.alice".into()),
                Call::Publish("subject.local-user".into()),
                Call::Publish("subject.local-user".into()),
            ],
            "published to the keys a resuming client may be bound to"
        );
    }

    #[tokio::test]
    async fn conn_manager_subject_filtered_broadcast_reaches_only_that_subjects_token() {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", Some(&id("alice")), None).await;
        cm.on_connect("r2", "t2", "/", Some(&id("bob")), None).await;
        cm.on_connect("r3", "t3", "/", None, None).await;
        assert!(cm.broadcast(&ev(), Some("alice"), "task").await);
        assert_eq!(rec.targets(), vec!["t1"]);
    }

    #[tokio::test]
    async fn conn_manager_local_user_connections_receive_every_subject_filtered_broadcast() {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", Some(&id("alice")), None).await;
        cm.on_connect("r2", "t2", "/", Some(&Identity::local_user()), None).await;
        assert!(cm.broadcast(&ev(), Some("alice"), "task").await);
        let mut t = rec.targets();
        t.sort();
        assert_eq!(t, vec!["t1", "t2"]);
    }

    #[tokio::test]
    async fn conn_manager_no_subject_reaches_all_connections_and_no_subject_match_is_false_without_post() {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", Some(&id("alice")), None).await;
        cm.on_connect("r2", "t2", "/", None, None).await;
        assert!(cm.broadcast(&ev(), None, "task").await);
        assert_eq!(rec.targets().len(), 2, "unbound connections get unfiltered broadcasts");
        rec.clear();
        assert!(!cm.broadcast(&ev(), Some("carol"), "task").await);
        assert!(rec.calls().is_empty());
    }

    #[tokio::test]
    async fn conn_manager_replacement_closes_the_old_token_and_runs_disconnect_observers_once() {
        let (rec, cm) = Recorder::manager();
        let gone = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&gone);
        cm.register_on_disconnect(move |rid| {
            let g = Arc::clone(&g);
            async move { g.lock().unwrap().push(rid) }
        });
        cm.on_connect("r1", "t1", "/", Some(&id("alice")), None).await;
        cm.on_connect("r1", "t2", "/", None, None).await;
        assert_eq!(rec.calls(), vec![Call::Close("t1".into())]);
        assert_eq!(*gone.lock().unwrap(), vec!["r1"], "decision D1: replacement ends the old connection");
        assert_eq!(cm.connection_info("r1").unwrap().subject, None, "old subject does not carry over");
        assert_eq!(cm.metrics().active_connections.get(), 1, "no gauge drift on replacement");
        // the stale disconnect of the old token is ignored
        cm.on_disconnect("t1").await;
        assert!(cm.has_connection("r1"));
        assert_eq!(gone.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn conn_manager_replacement_close_failure_is_ignored() {
        let (rec, cm) = Recorder::manager();
        rec.fail_all(true);
        cm.on_connect("r1", "t1", "/", None, None).await;
        cm.on_connect("r1", "t2", "/", None, None).await;
        assert_eq!(cm.connection_info("r1").unwrap().token, "t2");
    }

    #[tokio::test]
    async fn conn_manager_gateway_404_removes_mapping_and_runs_disconnect_observers_once() {
        let (rec, cm) = Recorder::manager();
        let gone = Arc::new(AtomicUsize::new(0));
        let g = Arc::clone(&gone);
        cm.register_on_disconnect(move |_| {
            let g = Arc::clone(&g);
            async move {
                g.fetch_add(1, Ordering::SeqCst);
            }
        });
        cm.on_connect("r1", "t1", "/", Some(&id("alice")), None).await;
        rec.not_found("t1");
        assert!(!cm.send_to("r1", &ev(), "task").await);
        assert!(!cm.has_connection("r1"));
        assert_eq!(gone.load(Ordering::SeqCst), 1);
        assert_eq!(cm.metrics().active_connections.get(), 0, "no gauge drift on 404 cleanup");
        cm.on_disconnect("t1").await;
        assert_eq!(gone.load(Ordering::SeqCst), 1, "the later disconnect callback runs nothing again");
    }

    #[tokio::test]
    async fn conn_manager_non_200_and_network_errors_return_false() {
        let (rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", None, None).await;
        rec.fail_all(true);
        assert!(!cm.send_to("r1", &ev(), "task").await);
        assert!(!cm.broadcast(&ev(), None, "task").await);
        assert!(cm.has_connection("r1"), "errors other than 404 keep the mapping");
        assert!(!cm.send_to("unknown", &ev(), "task").await);
    }

    #[tokio::test]
    async fn conn_manager_concurrent_connects_with_one_id_leave_exactly_one_mapping() {
        let (_rec, cm) = Recorder::manager();
        let mut joins = Vec::new();
        for n in 0..20 {
            let cm = cm.clone();
            joins.push(tokio::spawn(async move { cm.on_connect("r1", &format!("t{n}"), "/", None, None).await }));
        }
        for j in joins {
            j.await.unwrap();
        }
        let st = cm.state();
        assert_eq!(st.by_request.len(), 1);
        assert_eq!(st.by_token.len(), 1);
        let live = &st.by_request["r1"].token;
        assert_eq!(st.by_token.get(live).map(String::as_str), Some("r1"));
        drop(st);
        assert_eq!(cm.metrics().active_connections.get(), 1);
    }

    #[tokio::test]
    async fn iot_conn_manager_disconnect_observers_fire_on_valid_disconnect_not_for_unknown_or_replaced_all_fire_isolated()
     {
        let (_rec, cm) = Recorder::manager();
        let hits = Arc::new(AtomicUsize::new(0));
        cm.register_on_disconnect(|_| async { panic!("boom") });
        for _ in 0..2 {
            let h = Arc::clone(&hits);
            cm.register_on_disconnect(move |_| {
                let h = Arc::clone(&h);
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        cm.on_connect("r1", "t1", "/", None, None).await;
        cm.on_disconnect("unknown").await;
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        cm.on_disconnect("t1").await;
        assert_eq!(hits.load(Ordering::SeqCst), 2, "every observer ran despite the panicking one");
    }

    #[tokio::test]
    async fn iot_conn_manager_disconnect_removes_maps_and_identity_connect_observers_unaffected() {
        let (_rec, cm) = Recorder::manager();
        let connects = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&connects);
        cm.register_on_connect(move |_| {
            let c = Arc::clone(&c);
            async move {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        cm.on_connect("r1", "t1", "/", Some(&id("alice")), None).await;
        cm.on_disconnect("t1").await;
        assert!(cm.connection_info("r1").is_none());
        assert!(cm.state().by_token.is_empty());
        assert_eq!(connects.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn iot_identity_bind_stores_subject_bind_without_connection_is_noop_info_and_rebind() {
        let (_rec, cm) = Recorder::manager();
        assert!(cm.connection_info("r1").is_none(), "not connected -> none");
        assert!(!cm.bind_identity("r1", &id("alice")), "bind without connection is a no-op");
        cm.on_connect("r1", "t1", "/", None, None).await;
        assert_eq!(cm.connection_info("r1").unwrap().subject, None, "info without identity has no subject");
        assert!(cm.bind_identity("r1", &id("alice")));
        assert_eq!(cm.connection_info("r1").unwrap().subject.as_deref(), Some("alice"));
        assert!(cm.bind_identity("r1", &id("bob")));
        assert_eq!(cm.connection_info("r1").unwrap().subject.as_deref(), Some("bob"), "rebind overwrites");
    }

    #[tokio::test]
    async fn broadcast_and_subject_sends_are_one_publish_when_the_broadcaster_publishes() {
        let (rec, cm) = Recorder::manager();
        rec.set_publishes(true);
        cm.on_connect("r1", "t1", "/", Some(&id("alice")), None).await;
        cm.on_connect("r2", "t2", "/", Some(&id("bob")), None).await;
        assert!(cm.broadcast(&ev(), None, "task").await);
        assert!(cm.broadcast(&ev(), Some("alice"), "task").await);
        assert_eq!(rec.calls(), vec![Call::Publish("broadcast".into()), Call::Publish("subject.alice".into())]);
        rec.clear();
        cm.on_connect("r3", "t3", "/", Some(&Identity::local_user()), None).await;
        assert!(cm.broadcast(&ev(), Some("alice"), "task").await);
        assert_eq!(
            rec.calls(),
            vec![Call::Publish("subject.alice".into()), Call::Publish("subject.local-user".into())],
            "local-user streams also get subject sends (two keys only in a mixed table)"
        );
        rec.clear();
        assert!(cm.broadcast(&ev(), Some("carol"), "task").await);
        assert_eq!(rec.calls(), vec![Call::Publish("subject.local-user".into())], "no key nobody is bound to");
    }

    #[tokio::test]
    async fn fallback_fan_out_runs_concurrently_with_a_bound() {
        let rec = Recorder::new();
        rec.set_delay(std::time::Duration::from_millis(20));
        let cm = ConnectionManager::with_fanout_limit(rec.clone(), Metrics::default(), 4);
        for n in 0..12 {
            cm.on_connect(&format!("r{n}"), &format!("t{n}"), "/", None, None).await;
        }
        assert!(cm.broadcast(&ev(), None, "task").await);
        assert_eq!(rec.calls().len(), 12);
        assert_eq!(rec.max_in_flight(), 4);
    }

    fn roster(instance: &str, tokens: &[&str], interval_seconds: u64) -> Roster {
        Roster {
            instance: instance.to_owned(),
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            interval: Duration::from_secs(interval_seconds),
        }
    }

    /// Records the `request_id` of every disconnect observer call.
    fn disconnects(cm: &ConnectionManager) -> Arc<Mutex<Vec<String>>> {
        let gone = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&gone);
        cm.register_on_disconnect(move |rid| {
            let g = Arc::clone(&g);
            async move { g.lock().unwrap().push(rid) }
        });
        gone
    }

    #[tokio::test]
    async fn roster_ends_unlisted_connections_of_its_instance_only_and_never_adds() {
        let (_rec, cm) = Recorder::manager();
        let gone = disconnects(&cm);
        cm.on_connect("r1", "t1", "/", None, Some("gw-1")).await;
        cm.on_connect("r2", "t2", "/", None, Some("gw-1")).await;
        cm.on_connect("r3", "t3", "/", None, Some("gw-2")).await;
        cm.on_connect("r4", "t4", "/", None, None).await;
        assert_eq!(cm.connection_info("r1").unwrap().instance.as_deref(), Some("gw-1"));
        assert_eq!(cm.on_roster(&roster("gw-1", &["t1", "t2", "tx"], 30)).await, 0);
        assert_eq!(cm.on_roster(&roster("gw-1", &["t1", "tx"], 30)).await, 1);
        assert_eq!(*gone.lock().unwrap(), vec!["r2"], "observers ran for the lost connection");
        assert!(cm.has_connection("r1") && cm.has_connection("r3") && cm.has_connection("r4"));
        assert!(!cm.has_connection("r2"));
        assert_eq!(cm.len(), 3, "the unknown token tx was not added");
        let m = cm.metrics();
        assert_eq!(m.active_connections.get(), 3, "gauge follows the table");
        assert_eq!((m.rosters_received.get(), m.instance_lost.get()), (2, 1));
        assert_eq!(m.connections.get_or_create(&crate::metrics::ActionLabel { action: "disconnect".into() }).get(), 1);
        // The later disconnect callback of the lost token changes nothing.
        cm.on_disconnect("t2").await;
        assert_eq!(gone.lock().unwrap().len(), 1);
        // Another instance's roster never touches gw-1's connections, nor ones without an instance.
        cm.on_roster(&roster("gw-2", &[], 30)).await;
        cm.on_roster(&roster("gw-2", &[], 30)).await;
        assert!(cm.has_connection("r1") && cm.has_connection("r4") && !cm.has_connection("r3"));
    }

    #[tokio::test]
    async fn roster_spares_connections_registered_after_the_previous_roster_of_their_instance() {
        // A roster taken before a connect may arrive after it: it must not end that stream.
        let (_rec, cm) = Recorder::manager();
        cm.on_roster(&roster("gw-1", &[], 30)).await;
        cm.on_connect("r1", "t1", "/", None, Some("gw-1")).await;
        cm.on_roster(&roster("gw-1", &[], 30)).await;
        assert!(cm.has_connection("r1"), "registered after the previous roster: spared once");
        cm.on_roster(&roster("gw-1", &[], 30)).await;
        assert!(!cm.has_connection("r1"), "left out again: ended");
        assert_eq!(cm.metrics().instance_lost.get(), 1);
    }

    #[tokio::test]
    async fn roster_lost_connection_goes_with_its_replacement_state_and_a_replacement_is_not_ended() {
        let (_rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", None, Some("gw-1")).await;
        cm.on_roster(&roster("gw-1", &["t1"], 30)).await;
        // The browser reconnected through another instance: the old token is replaced.
        cm.on_connect("r1", "t2", "/", None, Some("gw-2")).await;
        assert_eq!(cm.on_roster(&roster("gw-1", &[], 30)).await, 0, "gw-1 holds nothing of r1 any more");
        assert_eq!(cm.connection_info("r1").unwrap().token, "t2");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_instance_loses_every_connection_after_three_intervals() {
        let (_rec, cm) = Recorder::manager();
        let gone = disconnects(&cm);
        let start = tokio::time::Instant::now();
        cm.on_connect("r1", "t1", "/", None, Some("gw-1")).await;
        cm.on_connect("r2", "t2", "/", None, Some("gw-1")).await;
        cm.on_connect("r3", "t3", "/", None, Some("gw-quiet")).await;
        cm.on_roster(&roster("gw-1", &["t1", "t2"], 1)).await;
        tokio::time::sleep_until(start + Duration::from_millis(2900)).await;
        assert_eq!(cm.len(), 3, "2.9 s of silence is not yet 3 intervals");
        // A roster resets the clock.
        cm.on_roster(&roster("gw-1", &["t1", "t2"], 1)).await;
        tokio::time::sleep_until(start + Duration::from_millis(5800)).await;
        assert_eq!(cm.len(), 3, "2.9 s since the last roster");
        tokio::time::sleep_until(start + Duration::from_millis(5950)).await;
        let mut lost = gone.lock().unwrap().clone();
        lost.sort();
        assert_eq!(lost, vec!["r1", "r2"], "both gw-1 connections ended at 2.9 + 3 s");
        assert!(cm.has_connection("r3"), "an instance that never sent a roster is never presumed dead");
        assert_eq!(cm.metrics().instance_lost.get(), 2);
        assert_eq!(cm.metrics().active_connections.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_watch_follows_a_new_instance_with_a_shorter_interval() {
        let (_rec, cm) = Recorder::manager();
        let start = tokio::time::Instant::now();
        cm.on_connect("r1", "t1", "/", None, Some("gw-slow")).await;
        cm.on_connect("r2", "t2", "/", None, Some("gw-fast")).await;
        cm.on_roster(&roster("gw-slow", &["t1"], 60)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        cm.on_roster(&roster("gw-fast", &["t2"], 1)).await;
        tokio::time::sleep_until(start + Duration::from_millis(3100)).await;
        assert!(!cm.has_connection("r2"), "gw-fast's deadline woke the watch");
        assert!(cm.has_connection("r1"));
        tokio::time::sleep_until(start + Duration::from_secs(181)).await;
        assert!(!cm.has_connection("r1"), "gw-slow ends after 3 x 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_presumed_dead_instance_that_comes_back_is_tracked_afresh() {
        let (_rec, cm) = Recorder::manager();
        cm.on_connect("r1", "t1", "/", None, Some("gw-1")).await;
        cm.on_roster(&roster("gw-1", &["t1"], 1)).await;
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(cm.is_empty());
        cm.on_connect("r2", "t2", "/", None, Some("gw-1")).await;
        cm.on_roster(&roster("gw-1", &["t2"], 1)).await;
        assert!(cm.has_connection("r2"), "the new roster keeps what it lists");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(!cm.has_connection("r2"), "and silence ends it again");
    }

    #[test]
    fn bindings_name_broadcast_connection_subject_and_role() {
        let info = ConnectionInfo {
            request_id: "r1".into(),
            token: "t".into(),
            url: "/".into(),
            subject: Some("alice".into()),
            role: Some("admin".into()),
            instance: None,
            resumed: false,
        };
        assert_eq!(
            ConnectionManager::bindings(&info),
            vec!["broadcast", "connection.r1", "subject.alice", "role.admin"]
        );
    }
}
