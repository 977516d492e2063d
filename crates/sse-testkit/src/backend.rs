//! A scriptable callback backend: a real HTTP server on 127.0.0.1:0.
//!
//! Every request body is recorded as JSON. Disconnect callbacks (and anything
//! else that is not `action: connect`) are answered 200 `{}` at once, or with
//! the reply set by [`Backend::answer_disconnects`] (e.g. a slow one). Connect
//! callbacks are answered with the current automatic [`Reply`], or, in manual
//! mode, handed to the test, which answers when it chooses.
//!
//! [`Backend::throttle`] turns it into a backend of limited capacity (a few
//! workers, each call taking a while), and it counts the callbacks it holds
//! open at once ([`Backend::peak_in_flight`]), so a test can see what a storm
//! looks like from the backend's side.
//!
//! Dropping the backend (or [`Backend::shutdown`]) closes its listener *and*
//! every connection it accepted, so a client's pooled keep-alive connection
//! fails like one to a server that went down. [`Backend::shutdown`] keeps the
//! port reserved (bound, not listening: connections are refused) for
//! [`Backend::restart`], so nothing else can take it meanwhile.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, mpsc, oneshot};

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

/// What every request goes through before it is answered: the throttle, if
/// any, and the count of requests held open.
#[derive(Default)]
struct Load {
    /// `workers` at a time, each held for `per_call`.
    throttle: Mutex<Option<(Arc<Semaphore>, Duration)>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// One request held open (received, not yet answered); counted until dropped.
struct Held<'a>(&'a Load);

impl Load {
    fn hold(&self) -> Held<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Held(self)
    }

    /// Waits for a worker and keeps it for the call's time (no-op unthrottled).
    async fn serve_slowly(&self) {
        let throttle = self.throttle.lock().unwrap().clone();
        if let Some((workers, per_call)) = throttle {
            let _worker = workers.acquire_owned().await;
            tokio::time::sleep(per_call).await;
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The running backend. Dropping it stops the server and its connections.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    others: Arc<Mutex<Reply>>,
    load: Arc<Load>,
    calls: tokio::sync::Mutex<mpsc::UnboundedReceiver<Call>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it
        // aborts them too.
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
        let socket = reusable_socket();
        socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind backend");
        Self::serve_on(socket.listen(1024).expect("listen"), reply)
    }

    fn serve_on(listener: TcpListener, reply: Reply) -> Backend {
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(Mutex::new(Mode::Auto(reply)));
        let others = Arc::new(Mutex::new(Reply::ok("{}")));
        let load = Arc::new(Load::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task_mode = Arc::clone(&mode);
        let task_others = Arc::clone(&others);
        let task_load = Arc::clone(&load);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let tcp = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let mode = Arc::clone(&task_mode);
                let others = Arc::clone(&task_others);
                let load = Arc::clone(&task_load);
                let tx = tx.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (mode, others, load, tx) =
                            (Arc::clone(&mode), Arc::clone(&others), Arc::clone(&load), tx.clone());
                        async move {
                            let _held = load.hold();
                            Ok::<_, Infallible>(serve(req, mode, others, &load, tx).await)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
                while connections.try_join_next().is_some() {}
            }
            drop(listener);
            connections.shutdown().await;
        });
        Backend { addr, mode, others, load, calls: tokio::sync::Mutex::new(rx), stop: Some(stop), task }
    }

    /// Stops the server: closes the listener and every accepted connection,
    /// and returns once they are closed (a backend that went down). The port
    /// stays reserved in the returned [`DownBackend`].
    pub async fn shutdown(mut self) -> DownBackend {
        // Bound before the listener closes (both sockets allow port reuse), so
        // the port is never free; bound without listening, it refuses connections.
        let reserved = reusable_socket();
        reserved.bind(self.addr).unwrap_or_else(|e| panic!("reserve {}: {e}", self.addr));
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = within("the backend to shut down", &mut self.task).await;
        DownBackend { socket: reserved }
    }

    /// From now on, disconnect callbacks (and any other non-connect request)
    /// are answered with `reply` instead of 200 `{}` at once; they are still
    /// recorded when they arrive.
    pub fn answer_disconnects(&self, reply: Reply) {
        *self.others.lock().unwrap() = reply;
    }

    /// From now on, the backend has `workers` workers and every callback
    /// (connect or not) keeps one busy for `per_call` before its answer (and
    /// any [`Reply::delay`]): a backend that handles `workers / per_call`
    /// callbacks a second. Callbacks beyond the workers wait in line, held
    /// open, as they would at a real backend; they are recorded on arrival.
    pub fn throttle(&self, workers: usize, per_call: Duration) {
        *self.load.throttle.lock().unwrap() = Some((Arc::new(Semaphore::new(workers.max(1))), per_call));
    }

    /// The most callbacks held open at once so far (received and not yet
    /// answered, whether waiting for a worker or being served): what the
    /// gateway had in flight to this backend at its peak.
    pub fn peak_in_flight(&self) -> usize {
        self.load.peak.load(Ordering::SeqCst)
    }

    /// Callbacks held open now.
    pub fn in_flight(&self) -> usize {
        self.load.in_flight.load(Ordering::SeqCst)
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

/// A loopback socket that may share its port with another such socket (so a
/// stopped backend can hold its port while the old listener closes).
fn reusable_socket() -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket
}

/// A backend that went down ([`Backend::shutdown`]): its port is held but
/// refuses connections until [`DownBackend::restart`].
pub struct DownBackend {
    socket: TcpSocket,
}

impl DownBackend {
    /// The backend comes back on the same address, answering every connect
    /// with 200 `{}` (a fresh backend: nothing recorded, automatic mode).
    pub fn restart(self) -> Backend {
        Backend::serve_on(self.socket.listen(1024).expect("listen again"), Reply::ok("{}"))
    }
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    mode: Arc<Mutex<Mode>>,
    others: Arc<Mutex<Reply>>,
    load: &Load,
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
        others.lock().unwrap().clone()
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
    load.serve_slowly().await;
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
