//! The toolkit inside the gateway's process: a real `sse_gateway::Gateway`
//! served on 127.0.0.1:0 in this test, whose connect hook is
//! [`InProcessHook`] and whose handle feeds [`InProcessBroadcaster`]; real SSE
//! clients over TCP. Same behaviours as the HTTP path, and broadcasts and
//! per-subject sends are one in-process publish (docs/BACKEND.md, decision D2).

use std::sync::Arc;

use serde_json::{Value, json};
use sse_backend::broadcaster::Event;
use sse_backend::callback::{CallbackConfig, CallbackHandler};
use sse_backend::identity::IdentityResolver;
use sse_backend::in_process::{InProcessBroadcaster, InProcessHook};
use sse_backend::version::{VersionConfig, VersionService};
use sse_backend::{ConnectionManager, Metrics};
use sse_gateway::{Config, Gateway, GatewayHandle};
use sse_testkit::SseClient;

struct Setup {
    addr: std::net::SocketAddr,
    manager: ConnectionManager,
    version: VersionService,
    shutdown: tokio_util::sync::CancellationToken,
}

async fn start() -> Setup {
    let broadcaster = Arc::new(InProcessBroadcaster::<GatewayHandle>::deferred());
    let manager = ConnectionManager::new(broadcaster.clone(), Metrics::default());
    let version = VersionService::new(VersionConfig::default(), manager.clone());
    let handler = Arc::new(CallbackHandler::new(
        CallbackConfig::default(),
        manager.clone(),
        Arc::new(IdentityResolver::disabled()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Config { listen: addr, ..Config::default() };
    let gateway = Gateway::builder(config).hook(InProcessHook::new(handler)).build();
    assert!(broadcaster.attach(gateway.handle()));
    let shutdown = gateway.shutdown_token();
    tokio::spawn(gateway.serve(listener, None));
    Setup { addr, manager, version, shutdown }
}

fn envelope(e: &sse_wire::ParsedEvent) -> (String, Value) {
    let v: Value = serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("envelope {:?}: {err}", e.data));
    (v["type"].as_str().unwrap_or_default().to_owned(), v["payload"].clone())
}

async fn open(s: &Setup, rid: &str) -> SseClient {
    let mut c = SseClient::open(s.addr, &format!("/api/sse/stream?request_id={rid}"), &[]).await;
    assert_eq!(c.head.status, 200);
    let (name, payload) = envelope(&c.next_event().await);
    assert_eq!(name, "version", "version notice before ready, in-process too");
    assert_eq!(payload["version"], "unknown");
    assert_eq!(c.next_event().await.event_type, "ready");
    c
}

#[tokio::test]
async fn in_process_hook_and_broadcaster_deliver_targeted_broadcast_and_subject_sends() {
    let s = start().await;
    let mut a = open(&s, "ra").await;
    let mut b = open(&s, "rb").await;
    assert!(s.manager.send_to("ra", &Event::json("only-a", &json!({"x": 1})), "demo").await);
    assert_eq!(envelope(&a.next_event().await), ("only-a".to_owned(), json!({"x": 1})));
    assert!(s.manager.broadcast(&Event::json("all", &json!({})), None, "demo").await);
    assert_eq!(envelope(&a.next_event().await).0, "all");
    assert_eq!(envelope(&b.next_event().await).0, "all");
    // OIDC off: every stream is local-user, bound by the routing answer.
    assert!(s.manager.broadcast(&Event::json("subj", &json!({})), Some("alice"), "task").await);
    assert_eq!(envelope(&a.next_event().await).0, "subj");
    assert_eq!(envelope(&b.next_event().await).0, "subj");
    assert!(s.version.push("ra", "v9", None).await);
    assert_eq!(envelope(&b.next_event().await), ("version".to_owned(), json!({"version": "v9"})));
    s.shutdown.cancel();
}

#[tokio::test]
async fn in_process_replacement_closes_the_old_stream() {
    let s = start().await;
    let mut old = open(&s, "same").await;
    let mut new = open(&s, "same").await;
    old.read_to_end().await;
    assert!(old.ended_cleanly());
    assert!(s.manager.send_to("same", &Event::json("hi", &json!({})), "demo").await);
    assert_eq!(envelope(&new.next_event().await).0, "hi");
    assert_eq!(s.manager.len(), 1);
    s.shutdown.cancel();
}
