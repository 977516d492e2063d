//! The gateway as a library inside an application: one stream path, the
//! application's routes beside it, and the in-process event path.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sse_gateway::{
    Accepted, AppBody, AppService, ClientRequest, Config, ConnectHook, DisconnectReason, Gateway, HookFuture, OutEvent,
    Refusal,
};
use sse_testkit::{SseClient, request};
use uuid::Uuid;

struct AcceptAll;

impl ConnectHook for AcceptAll {
    fn connect<'a>(&'a self, _: Uuid, r: &'a ClientRequest) -> HookFuture<'a, Result<Accepted, Refusal>> {
        let rid = r.url.split("request_id=").nth(1).map(str::to_owned);
        Box::pin(async move {
            Ok(Accepted {
                bindings: rid.iter().map(|r| format!("connection.{r}")).collect(),
                request_id: rid,
                expires_at: None,
            })
        })
    }
    fn disconnect<'a>(
        &'a self,
        _: Uuid,
        _: DisconnectReason,
        _: &'a ClientRequest,
    ) -> HookFuture<'a, Result<(), Refusal>> {
        Box::pin(async { Ok(()) })
    }
}

fn app() -> AppService {
    Arc::new(|req: http::Request<hyper::body::Incoming>| {
        let peer = req.extensions().get::<std::net::SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_default();
        let body = format!("app:{}:{}", req.uri().path(), peer);
        Box::pin(async move {
            let body: AppBody = Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed_unsync();
            http::Response::new(body)
        }) as HookFuture<'static, http::Response<AppBody>>
    })
}

#[tokio::test]
async fn embedded_gateway_serves_one_stream_path_and_hands_the_rest_to_the_app() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hook: Arc<dyn ConnectHook> = Arc::new(AcceptAll);
    let gateway = Gateway::builder(Config::default()).hook(hook).app("/api/sse/stream", app()).build();
    let handle = gateway.handle();
    let stop = gateway.shutdown_token();
    let served = tokio::spawn(gateway.serve(listener, None));

    for path in ["/", "/dashboard", "/internal/rotation-nudge", "/api/sse/streamx"] {
        let r = request(addr, "GET", path, &[], b"").await;
        assert_eq!((r.status, String::from_utf8_lossy(&r.body).to_string()), (200, format!("app:{path}:127.0.0.1")));
    }
    let r = request(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}), "gateway routes stay the gateway's");

    let mut c = SseClient::open(addr, "/api/sse/stream?request_id=e1", &[]).await;
    assert_eq!(c.next_event().await.event_type, "ready");
    assert_eq!(handle.open_streams(), 1);
    let matched = handle.publish("connection.e1", Some(OutEvent { name: Some("hi"), data: "1" }), false).unwrap();
    assert_eq!(matched, 1);
    assert_eq!(c.next_event().await.data, r#"{"type":"hi","payload":1}"#);
    assert!(handle.publish("connection.e1", Some(OutEvent { name: Some("a\nb"), data: "1" }), false).is_err());

    stop.cancel();
    sse_testkit::within("the gateway to stop", served).await.unwrap();
}
