//! A scriptable callback backend: a real HTTP server on 127.0.0.1:0.
//!
//! Every request body is recorded as JSON. Disconnect callbacks (and anything
//! else that is not `action: connect`) are answered 200 `{}` at once. Connect
//! callbacks are answered with the current automatic [`Reply`], or, in manual
//! mode, handed to the test, which answers when it chooses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::within;

/// An answer to a connect callback.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Reason phrase to send instead of the standard one.
    pub reason: Option<String>,
    /// Response body.
    pub body: String,
    /// Wait this long before answering (to simulate a slow backend).
    pub delay: Duration,
}

impl Reply {
    /// 200 with this body.
    pub fn ok(body: &str) -> Self {
        Self { status: 200, reason: None, body: body.to_owned(), delay: Duration::ZERO }
    }
    /// Any status with an empty body.
    pub fn status(status: u16) -> Self {
        Self { status, reason: None, body: String::new(), delay: Duration::ZERO }
    }
}

/// One recorded callback.
#[derive(Debug)]
pub struct Call {
    /// The JSON body the gateway posted.
    pub body: Value,
    /// The body exactly as posted (to check key order).
    pub raw: String,
    /// The raw request target (path and query) the gateway posted to.
    pub target: String,
    reply: Option<oneshot::Sender<Reply>>,
}

impl Call {
    /// `body.action`.
    pub fn action(&self) -> &str {
        self.body["action"].as_str().unwrap_or("")
    }
    /// `body.token`.
    pub fn token(&self) -> String {
        self.body["token"].as_str().unwrap_or("").to_owned()
    }
    /// Answers a manual connect callback.
    pub fn answer(mut self, reply: Reply) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(reply);
        }
    }
}

enum Mode {
    Auto(Reply),
    Manual,
}

/// The running backend. Dropping it stops the server.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    calls: tokio::sync::Mutex<mpsc::UnboundedReceiver<Call>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend answering every connect with 200 `{}`.
    pub async fn start() -> Backend {
        Self::start_with(Reply::ok("{}")).await
    }

    /// Starts a backend answering every connect with `reply`.
    pub async fn start_with(reply: Reply) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(Mutex::new(Mode::Auto(reply)));
        let (tx, rx) = mpsc::unbounded_channel();
        let task_mode = Arc::clone(&mode);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let mode = Arc::clone(&task_mode);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let mode = Arc::clone(&mode);
                        let tx = tx.clone();
                        async move { Ok::<_, Infallible>(serve(req, mode, tx).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Backend { addr, mode, calls: tokio::sync::Mutex::new(rx), task }
    }

    /// The callback URL (with a query, as backends use `?secret=`).
    pub fn callback_url(&self) -> String {
        format!("http://{}/api/sse/callback?secret=s3cret", self.addr)
    }

    /// From now on, connect callbacks wait for the test to [`Call::answer`] them.
    pub fn manual(&self) {
        *self.mode.lock().unwrap() = Mode::Manual;
    }

    /// From now on, connect callbacks are answered with `reply`.
    pub fn auto(&self, reply: Reply) {
        *self.mode.lock().unwrap() = Mode::Auto(reply);
    }

    /// The next recorded callback (bounded wait).
    pub async fn next_call(&self) -> Call {
        let mut rx = self.calls.lock().await;
        within("a callback at the backend", rx.recv()).await.expect("backend stopped")
    }

    /// The next callback, which must have the given action.
    pub async fn expect(&self, action: &str) -> Call {
        let call = self.next_call().await;
        assert_eq!(call.action(), action, "unexpected callback: {}", call.body);
        call
    }

    /// Every callback recorded and not yet taken (no waiting).
    pub async fn drain(&self) -> Vec<Call> {
        let mut rx = self.calls.lock().await;
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c);
        }
        out
    }
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    mode: Arc<Mutex<Mode>>,
    tx: mpsc::UnboundedSender<Call>,
) -> hyper::Response<Full<Bytes>> {
    let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let is_connect = body["action"] == "connect";
    let auto = match &*mode.lock().unwrap() {
        Mode::Auto(r) => Some(r.clone()),
        Mode::Manual => None,
    };
    let reply = if !is_connect {
        let _ = tx.send(Call { body, raw: raw.clone(), target, reply: None });
        Reply::ok("{}")
    } else if let Some(r) = auto {
        let _ = tx.send(Call { body, raw: raw.clone(), target, reply: None });
        r
    } else {
        let (rtx, rrx) = oneshot::channel();
        let _ = tx.send(Call { body, raw, target, reply: Some(rtx) });
        match rrx.await {
            Ok(r) => r,
            Err(_) => Reply::status(500),
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = hyper::Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).expect("valid status");
    if let Some(reason) = reply.reason {
        resp.extensions_mut().insert(hyper::ext::ReasonPhrase::try_from(reason.into_bytes()).expect("reason"));
    }
    resp
}
