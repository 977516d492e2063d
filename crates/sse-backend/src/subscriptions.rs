//! Identity-checked subscriptions of connections to topics (the device-logs
//! model; docs/BACKEND.md, Subscriptions), and `forward(topic, ...)` sending one targeted event
//! per subscriber.
//!
//! Owns `request_id -> topics` and `topic -> request_ids`. A subscribe or
//! unsubscribe needs a live connection with a bound subject, equal to the
//! caller's when the caller is known. A disconnect (and, by decision D1, a
//! replacement or gateway 404) drops every subscription of that `request_id`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::broadcaster::Event;
use crate::connections::ConnectionManager;

/// A refused subscribe or unsubscribe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// 403: not connected, or no subject bound.
    #[error("No identity binding for this SSE connection")]
    NoIdentity,
    /// 403: bound subject differs from the caller.
    #[error("Identity mismatch for SSE connection")]
    Mismatch,
    /// 404: unsubscribe of a pair that does not exist.
    #[error("Subscription {0} was not found")]
    NotFound(String),
}

impl IntoResponse for SubscriptionError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "RECORD_NOT_FOUND"),
            _ => (StatusCode::FORBIDDEN, "AUTHORIZATION_FAILED"),
        };
        let msg = self.to_string();
        (status, Json(json!({"error": msg, "details": {"message": msg}, "code": code}))).into_response()
    }
}

#[derive(Default)]
struct State {
    by_request: BTreeMap<String, BTreeSet<String>>,
    by_topic: BTreeMap<String, BTreeSet<String>>,
}

struct Inner {
    manager: ConnectionManager,
    state: Mutex<State>,
    shutting_down: AtomicBool,
}

/// The subscription table. Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

impl Subscriptions {
    /// Creates the table and registers its disconnect observer on `manager`.
    pub fn new(manager: ConnectionManager) -> Self {
        let inner = Arc::new(Inner {
            manager: manager.clone(),
            state: Mutex::default(),
            shutting_down: AtomicBool::new(false),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        manager.register_on_disconnect(move |rid| {
            let weak = weak.clone();
            async move {
                if let Some(inner) = weak.upgrade() {
                    Subscriptions { inner }.drop_request(&rid);
                }
            }
        });
        Self { inner }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, request_id: &str, caller: Option<&str>) -> Result<(), SubscriptionError> {
        let bound = self.inner.manager.connection_info(request_id).and_then(|c| c.subject);
        match (bound, caller) {
            (None, _) => Err(SubscriptionError::NoIdentity),
            (Some(_), None) => Ok(()),
            (Some(b), Some(c)) if b == c => Ok(()),
            _ => Err(SubscriptionError::Mismatch),
        }
    }

    /// Subscribes (idempotent).
    pub fn subscribe(&self, request_id: &str, topic: &str, caller: Option<&str>) -> Result<(), SubscriptionError> {
        self.check(request_id, caller)?;
        let mut st = self.state();
        st.by_request.entry(request_id.to_owned()).or_default().insert(topic.to_owned());
        st.by_topic.entry(topic.to_owned()).or_default().insert(request_id.to_owned());
        Ok(())
    }

    /// Unsubscribes; `NotFound` when the pair does not exist.
    pub fn unsubscribe(&self, request_id: &str, topic: &str, caller: Option<&str>) -> Result<(), SubscriptionError> {
        self.check(request_id, caller)?;
        let mut st = self.state();
        let had = st.by_request.get_mut(request_id).is_some_and(|s| s.remove(topic));
        if !had {
            return Err(SubscriptionError::NotFound(topic.to_owned()));
        }
        if st.by_request.get(request_id).is_some_and(BTreeSet::is_empty) {
            st.by_request.remove(request_id);
        }
        if let Some(set) = st.by_topic.get_mut(topic) {
            set.remove(request_id);
            if set.is_empty() {
                st.by_topic.remove(topic);
            }
        }
        Ok(())
    }

    /// Drops every subscription of `request_id` (unknown ids are fine).
    pub fn drop_request(&self, request_id: &str) {
        let mut st = self.state();
        let Some(topics) = st.by_request.remove(request_id) else { return };
        for t in topics {
            if let Some(set) = st.by_topic.get_mut(&t) {
                set.remove(request_id);
                if set.is_empty() {
                    st.by_topic.remove(&t);
                }
            }
        }
    }

    /// Sends `payload` as `event_name` to each subscriber of `topic`, one
    /// targeted event each; returns how many were delivered. No-op while
    /// shutting down.
    pub async fn forward(&self, topic: &str, event_name: &str, payload: &Value, service: &str) -> usize {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return 0;
        }
        let subscribers: Vec<String> =
            self.state().by_topic.get(topic).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let event = Event::json(event_name, payload);
        let mut delivered = 0;
        for rid in subscribers {
            if self.inner.manager.send_to(&rid, &event, service).await {
                delivered += 1;
            }
        }
        delivered
    }

    /// `(topic, sorted request_ids)` for one topic or all.
    pub fn subscriptions(&self, topic: Option<&str>) -> Vec<(String, Vec<String>)> {
        let st = self.state();
        st.by_topic
            .iter()
            .filter(|(t, _)| topic.is_none_or(|f| f == t.as_str()))
            .map(|(t, rids)| (t.clone(), rids.iter().cloned().collect()))
            .collect()
    }

    /// Total `(request_id, topic)` pairs.
    pub fn count(&self) -> usize {
        self.state().by_request.values().map(BTreeSet::len).sum()
    }

    /// PREPARE_SHUTDOWN: clear everything, stop forwarding (subscribing still works).
    pub fn prepare_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        *self.state() = State::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::testing::Recorder;

    async fn setup() -> (Arc<Recorder>, ConnectionManager, Subscriptions) {
        let (rec, cm) = Recorder::manager();
        let subs = Subscriptions::new(cm.clone());
        cm.on_connect("r1", "t1", "/", Some(&Identity::new("alice", None)), None).await;
        cm.on_connect("r2", "t2", "/", Some(&Identity::new("bob", None)), None).await;
        cm.on_connect("r3", "t3", "/", None, None).await;
        (rec, cm, subs)
    }

    #[tokio::test]
    async fn iot_log_stream_subscribe_ok_idempotent_multi_device_multi_connection() {
        let (_rec, _cm, s) = setup().await;
        s.subscribe("r1", "dev.a", None).unwrap();
        s.subscribe("r1", "dev.a", None).unwrap();
        s.subscribe("r1", "dev.b", Some("alice")).unwrap();
        s.subscribe("r2", "dev.a", Some("bob")).unwrap();
        assert_eq!(s.count(), 3);
        assert_eq!(s.subscriptions(Some("dev.a")), vec![("dev.a".into(), vec!["r1".into(), "r2".into()])]);
    }

    #[tokio::test]
    async fn iot_log_stream_no_binding_or_wrong_subject_is_403_matching_subject_ok() {
        let (_rec, _cm, s) = setup().await;
        assert_eq!(s.subscribe("r3", "dev.a", None), Err(SubscriptionError::NoIdentity));
        assert_eq!(s.subscribe("nope", "dev.a", None), Err(SubscriptionError::NoIdentity));
        assert_eq!(s.subscribe("r1", "dev.a", Some("bob")), Err(SubscriptionError::Mismatch));
        assert!(s.subscribe("r1", "dev.a", Some("alice")).is_ok());
        assert_eq!(SubscriptionError::Mismatch.into_response().status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn iot_log_stream_unsubscribe_ok_missing_is_404_and_keeps_others() {
        let (_rec, _cm, s) = setup().await;
        s.subscribe("r1", "dev.a", None).unwrap();
        s.subscribe("r1", "dev.b", None).unwrap();
        assert!(s.unsubscribe("r1", "dev.a", None).is_ok());
        assert_eq!(s.unsubscribe("r1", "dev.a", None), Err(SubscriptionError::NotFound("dev.a".into())));
        assert_eq!(SubscriptionError::NotFound("x".into()).into_response().status(), StatusCode::NOT_FOUND);
        assert_eq!(s.subscriptions(None), vec![("dev.b".into(), vec!["r1".into()])]);
    }

    #[tokio::test]
    async fn iot_forwarding_reaches_subscribers_only_and_no_subscriptions_send_nothing() {
        let (rec, _cm, s) = setup().await;
        assert_eq!(s.forward("dev.a", "device-logs", &json!({"logs": []}), "device-logs").await, 0);
        assert!(rec.calls().is_empty());
        s.subscribe("r1", "dev.a", None).unwrap();
        s.subscribe("r2", "dev.a", None).unwrap();
        s.subscribe("r2", "dev.b", None).unwrap();
        assert_eq!(s.forward("dev.a", "device-logs", &json!({"n": 1}), "device-logs").await, 2);
        let mut t = rec.targets();
        t.sort();
        assert_eq!(t, vec!["t1", "t2"]);
    }

    #[tokio::test]
    async fn iot_disconnect_cleanup_removes_all_of_that_id_keeps_others_unknown_id_safe() {
        let (_rec, cm, s) = setup().await;
        s.subscribe("r1", "dev.a", None).unwrap();
        s.subscribe("r1", "dev.b", None).unwrap();
        s.subscribe("r2", "dev.a", None).unwrap();
        cm.on_disconnect("t1").await;
        assert_eq!(s.subscriptions(None), vec![("dev.a".into(), vec!["r2".into()])]);
        s.drop_request("unknown");
        // decision D1: a replacement clears them too
        cm.on_connect("r2", "t2b", "/", Some(&Identity::new("bob", None)), None).await;
        assert_eq!(s.count(), 0);
    }

    #[tokio::test]
    async fn iot_shutdown_prepare_clears_state_forwarding_stops_and_subscribing_still_works() {
        let (rec, _cm, s) = setup().await;
        s.subscribe("r1", "dev.a", None).unwrap();
        s.prepare_shutdown();
        assert_eq!(s.count(), 0);
        s.subscribe("r1", "dev.a", None).unwrap();
        assert_eq!(s.forward("dev.a", "device-logs", &json!({}), "device-logs").await, 0);
        assert!(rec.calls().is_empty());
    }
}
