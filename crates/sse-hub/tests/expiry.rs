//! Black-box: credential expiry in the real `sse-hub` binary (in-process
//! gateway, OIDC on with the fixture JWKS in `tests/fixtures`). A stream
//! opened with a bearer JWT ends at the token's `exp`: `auth_expired`, one
//! `retry:` hint, then the end of the body; a stream without a token stays.
//! Waits on timers have explicit deadlines.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sse_wire::Frame;
use support::{Hub, wait_for};

/// `HEARTBEAT_INTERVAL_SECONDS` of the hub in these tests.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Scheduling slack on top of a protocol bound (a loaded 2-core machine).
const SLACK: Duration = Duration::from_secs(3);
/// How early a timer may fire against the wall clock (clock conversions).
const EARLY: Duration = Duration::from_millis(50);

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "hub";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OIDC_ENABLED", "true"),
        ("OIDC_ISSUER_URL", ISSUER),
        ("OIDC_AUDIENCE", AUDIENCE),
        ("OIDC_JWKS_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json")),
        ("HEARTBEAT_INTERVAL_SECONDS", "1"),
    ]
}

/// A JWT for `sub` expiring at `exp`, signed by the fixture JWKS's key.
fn jwt(sub: &str, exp: u64) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt-test-key.pem")).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".to_owned());
    let claims = json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": exp});
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock")
}

/// Polls the hub's `sse_gateway_active_connections` until it is `n`.
async fn active_connections(hub: &Hub, n: f64, deadline: Instant) {
    loop {
        let got = hub.metric("sse_gateway_active_connections ").await;
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "active connections {got}, expected {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bearer_stream_ends_with_auth_expired_at_the_token_exp_and_a_stream_without_a_token_stays() {
    let hub = Hub::start(&[], &env()).await;
    let exp = since_epoch().as_secs() + 3;
    let bearer = format!("Bearer {}", jwt("alice", exp));
    let (mut expiring, _) = hub.open_with("alice", &[("Authorization", bearer.as_bytes())]).await;
    let (mut anonymous, _) = hub.open("anon").await;
    active_connections(&hub, 2.0, Instant::now() + SLACK).await;

    // Heartbeats keep coming, so the wait for auth_expired needs its own deadline.
    let until_exp = Duration::from_secs(exp).saturating_sub(since_epoch());
    let expired = tokio::time::timeout(until_exp + SLACK, async {
        loop {
            match expiring.next_frame().await {
                Frame::Comment(_) => continue,
                Frame::Event(e) => return e,
                Frame::Retry(ms) => panic!("retry hint {ms} before auth_expired"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no auth_expired within {SLACK:?} after exp {exp}"));
    let at = since_epoch();
    assert_eq!((expired.event_type.as_str(), expired.data.as_str()), ("auth_expired", "{}"), "{expired:?}");
    assert!(at + EARLY >= Duration::from_secs(exp), "not before exp {exp}: {at:?}");

    let rest = expiring.read_to_end().await;
    assert!(expiring.ended_cleanly(), "the hub ended the stream (terminating chunk): {rest:?}");
    let retry: Vec<u64> = rest.iter().filter_map(|f| if let Frame::Retry(ms) = f { Some(*ms) } else { None }).collect();
    assert!(matches!(retry.as_slice(), [ms] if (1000..=5000).contains(ms)), "one retry hint of 1-5 s: {rest:?}");
    assert!(rest.iter().all(|f| !matches!(f, Frame::Event(_))), "nothing after auth_expired: {rest:?}");
    // The toolkit heard of the disconnect; the other stream is still counted.
    active_connections(&hub, 1.0, Instant::now() + SLACK).await;

    // The stream without a credential is open past exp: it gets an event sent
    // now, and the heartbeat after it.
    let r = hub.post("/internal/notify-lease-change", &json!({})).await;
    assert_eq!(r.status, 200);
    let (_, skipped) = wait_for(&mut anonymous, "data_changed").await;
    assert!(skipped.is_empty(), "nothing else on the anonymous stream: {skipped:?}");
    match anonymous.next_frame_within(HEARTBEAT + SLACK).await {
        Frame::Comment(c) => assert_eq!(c, "heartbeat"),
        other => panic!("expected a heartbeat after data_changed, got {other:?}"),
    }
}
