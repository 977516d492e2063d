//! Test support for unit tests: a [`Broadcaster`] that records calls and
//! answers as the test says; JWTs signed with the fixture key and a resolver
//! that trusts it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::BoxFuture;
use crate::broadcaster::{BroadcastError, Broadcaster, Event, PublishOutcome, SendStatus};
use crate::connections::ConnectionManager;
use crate::identity::{IdentityResolver, JwksSource, OidcConfig};
use crate::metrics::Metrics;

/// Issuer and audience [`oidc_resolver`] expects.
pub const ISSUER: &str = "https://issuer.test/realms/x";
pub const AUDIENCE: &str = "my-app";

/// A JWT with `claims`, signed RS256 by the fixture key under `kid`
/// (`test-key-1` is the fixture JWKS's key).
pub fn sign(claims: serde_json::Value, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../tests/fixtures/jwt-test-key.pem")).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Valid claims for [`oidc_resolver`]: `sub`, `exp` = now + `exp_offset`
/// seconds, and `role` = `admin`.
pub fn claims(sub: &str, exp_offset: i64) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    serde_json::json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + exp_offset, "role": "admin"})
}

/// A resolver validating against the fixture JWKS, role claim `role`.
pub fn oidc_resolver() -> IdentityResolver {
    let mut cfg = OidcConfig::new(ISSUER, AUDIENCE);
    cfg.jwks = JwksSource::File(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json").into());
    cfg.role_claim = Some("role".into());
    IdentityResolver::new(Some(cfg))
}

/// One recorded gateway call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Send(String, Event),
    Close(String),
    Publish(String),
}

impl Call {
    pub fn target(&self) -> &str {
        match self {
            Call::Send(t, _) | Call::Close(t) | Call::Publish(t) => t,
        }
    }
}

#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<Call>>,
    events: Mutex<Vec<(String, Event)>>,
    not_found: Mutex<HashSet<String>>,
    fail: AtomicBool,
    panic: AtomicBool,
    publishes: AtomicBool,
    delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn manager() -> (Arc<Self>, ConnectionManager) {
        let rec = Self::new();
        let cm = ConnectionManager::new(rec.clone(), Metrics::default());
        (rec, cm)
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    /// Targets of event sends.
    pub fn targets(&self) -> Vec<String> {
        self.calls().iter().filter(|c| matches!(c, Call::Send(..))).map(|c| c.target().to_owned()).collect()
    }
    /// Every event sent or published, with its target.
    pub fn events(&self) -> Vec<(String, Event)> {
        self.events.lock().unwrap().clone()
    }
    /// Waits (bounded) until `pred` holds for the recorded events.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[(String, Event)]) -> bool) -> Vec<(String, Event)> {
        let fut = async {
            loop {
                let notified = self.notify.notified();
                let ev = self.events();
                if pred(&ev) {
                    return ev;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out waiting for {what}; events: {:#?}", self.events()),
        }
    }
    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
        self.events.lock().unwrap().clear();
    }
    pub fn not_found(&self, token: &str) {
        self.not_found.lock().unwrap().insert(token.to_owned());
    }
    pub fn fail_all(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }
    pub fn panic_on_send(&self, on: bool) {
        self.panic.store(on, Ordering::SeqCst);
    }
    pub fn set_publishes(&self, on: bool) {
        self.publishes.store(on, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
    fn record(&self, call: Call, event: Option<&Event>) {
        if let Some(e) = event {
            self.events.lock().unwrap().push((call.target().to_owned(), e.clone()));
        }
        self.calls.lock().unwrap().push(call);
        self.notify.notify_waiters();
    }
}

impl Broadcaster for Recorder {
    fn send<'a>(
        &'a self,
        token: &'a str,
        event: Option<&'a Event>,
        close: bool,
    ) -> BoxFuture<'a, Result<SendStatus, BroadcastError>> {
        Box::pin(async move {
            assert!(!self.panic.load(Ordering::SeqCst), "broadcaster panics");
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            match event {
                Some(e) => self.record(Call::Send(token.to_owned(), e.clone()), Some(e)),
                None if close => self.record(Call::Close(token.to_owned()), None),
                None => {}
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(BroadcastError::Status { status: 500, body: String::new() });
            }
            if self.not_found.lock().unwrap().contains(token) {
                return Ok(SendStatus::NotFound);
            }
            Ok(SendStatus::Ok)
        })
    }

    fn publish<'a>(&'a self, key: &'a str, event: &'a Event) -> BoxFuture<'a, Result<PublishOutcome, BroadcastError>> {
        Box::pin(async move {
            self.record(Call::Publish(key.to_owned()), Some(event));
            Ok(PublishOutcome::Matched(1))
        })
    }

    fn publishes(&self) -> bool {
        self.publishes.load(Ordering::SeqCst)
    }
}
