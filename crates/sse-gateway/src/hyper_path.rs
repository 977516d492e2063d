//! Everything hyper serves: the internal API, health, metrics, `OPTIONS`,
//! an embedding application's requests, and the streams that do not take the
//! raw path (`HEAD`, HTTP/1.0, later requests on a kept-alive connection).
//!
//! Routing is `routes::resolve`; the answers themselves come from `api`;
//! this module owns the hyper glue: the connection, body limits, response
//! headers and the response body types.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::api;
use crate::connect::{self, Decision};
use crate::error::{ApiError, ErrorCode};
use crate::events::{Endpoint, Event};
use crate::headers;
use crate::hook::ClientRequest;
use crate::queue::{Batch, StreamHandle};
use crate::routes::{self, Listener, Route};
use crate::shared::Shared;

type Resp = Response<ResponseBody>;

/// Oversized bodies up to this size are read and discarded before the 413.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// How long a client may take to send a request head on a kept-alive connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves a connection with hyper; `prefix` holds the bytes already read.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    prefix: Bytes,
    listener: Listener,
) {
    // Cuts the connection when one of its streams overflows, or at the shutdown deadline.
    let abort = shared.cut.child_token();
    let svc_shared = Arc::clone(&shared);
    let svc_abort = abort.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer);
        let shared = Arc::clone(&svc_shared);
        let abort = svc_abort.clone();
        async move { Ok::<_, Infallible>(handle(shared, abort, listener, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(shared.config.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(Rewind::new(prefix, tcp)), svc);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            // Finish the response in flight, then close instead of keeping alive.
            _ = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = abort.cancelled() => {
                debug!("connection aborted");
                break;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, abort: CancellationToken, listener: Listener, req: Request<Incoming>) -> Resp {
    let route = routes::resolve(req.method(), req.uri().path(), listener, shared.app_stream_path());
    if route == Route::App
        && let Some((_, app)) = &shared.app
    {
        return app(req).await.map(ResponseBody::App);
    }
    let mut resp = dispatch(&shared, abort, listener, route, req).await;
    headers::apply(resp.headers_mut(), &headers::CORS);
    resp
}

async fn dispatch(
    shared: &Arc<Shared>,
    abort: CancellationToken,
    listener: Listener,
    route: Route,
    req: Request<Incoming>,
) -> Resp {
    let authorization = || req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match route {
        Route::Preflight => status_only(StatusCode::NO_CONTENT),
        Route::Health => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        Route::Ready => {
            let (status, body) = api::readiness(shared);
            json(status, &body)
        }
        Route::Metrics => match api::authorize(shared, listener, authorization()) {
            Ok(()) => text(shared.metrics.render()),
            Err(e) => error(shared, &e),
        },
        Route::Send => {
            let started = Instant::now();
            let result = match read_body(shared, req).await {
                Ok(body) => api::send(shared, &body).await,
                Err(e) => Err(e),
            };
            answered(shared, Endpoint::Send, started, result)
        }
        Route::Publish => {
            let started = Instant::now();
            let result = match api::authorize(shared, listener, authorization()) {
                Err(e) => Err(e),
                Ok(()) => match read_body(shared, req).await {
                    Ok(body) => api::publish(shared, &body).await,
                    Err(e) => Err(e),
                },
            };
            answered(shared, Endpoint::Publish, started, result)
        }
        Route::Streams => {
            let started = Instant::now();
            let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let result =
                api::authorize(shared, listener, authorization()).and_then(|()| api::streams(shared, path_and_query));
            answered(shared, Endpoint::Streams, started, result)
        }
        Route::History => {
            let started = Instant::now();
            let result = api::authorize(shared, listener, authorization()).map(|()| api::history(shared));
            answered(shared, Endpoint::History, started, result)
        }
        Route::Close => {
            let started = Instant::now();
            let result = match api::authorize(shared, listener, authorization()) {
                Err(e) => Err(e),
                Ok(()) => match read_body(shared, req).await {
                    Ok(body) => api::close(shared, &body).await,
                    Err(e) => Err(e),
                },
            };
            answered(shared, Endpoint::Close, started, result)
        }
        Route::Stream => stream(shared, abort, req).await,
        Route::App | Route::NotFound | Route::NotOnInternal | Route::MethodNotAllowed => {
            error(shared, &api::unserved(route, req.method(), req.uri().path()))
        }
    }
}

fn answered(
    shared: &Shared,
    endpoint: Endpoint,
    started: Instant,
    result: Result<serde_json::Value, ApiError>,
) -> Resp {
    let resp = match result {
        Ok(body) => json(StatusCode::OK, &body),
        Err(e) => error(shared, &e),
    };
    shared.metrics.emit(Event::ApiAnswered { endpoint, status: resp.status().as_u16(), elapsed: started.elapsed() });
    resp
}

fn status_only(status: StatusCode) -> Resp {
    let mut r = Response::new(ResponseBody::Full(None));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(ResponseBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(headers::JSON));
    r
}

fn text(body: String) -> Resp {
    let mut r = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(headers::OPENMETRICS));
    r
}

fn error(shared: &Shared, e: &ApiError) -> Resp {
    shared.metrics.emit(Event::ErrorAnswered { code: e.code });
    let mut r = Response::new(ResponseBody::Full(Some(e.body())));
    *r.status_mut() = e.status();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(headers::JSON));
    r
}

fn sse(body: ResponseBody) -> Resp {
    let mut r = Response::new(body);
    headers::apply(r.headers_mut(), &headers::SSE);
    r
}

async fn stream(shared: &Arc<Shared>, abort: CancellationToken, req: Request<Incoming>) -> Resp {
    let url = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = ClientRequest::from_parts(url, req.headers());
    let peer = req.extensions().get::<std::net::SocketAddr>().copied();
    drop(req);
    let decision = match connect::start(shared, request, peer, Some(abort)) {
        Err(d) => d,
        Ok(rx) => match rx.await {
            Ok(d) => d,
            Err(_) => return error(shared, &ApiError::new(ErrorCode::InternalError, "connect task failed")),
        },
    };
    match decision {
        Decision::Stream(handle) => sse(ResponseBody::Stream(SseBody::new(handle))),
        Decision::InStream(frame) => sse(ResponseBody::Chunked(Some(frame))),
        Decision::Error(e) => error(shared, &e),
    }
}

async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = shared.config.max_body_bytes;
    let too_large = || ApiError::new(ErrorCode::PayloadTooLarge, format!("Request body exceeds {limit} bytes"));
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Read (and discard) a moderately oversized body before answering, so
        // the client is not reset mid-upload and actually sees the 413.
        if declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            let mut body = req.into_body();
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limit).collect().await.map_err(|e| {
        if e.is::<LengthLimitError>() {
            too_large()
        } else {
            ApiError::new(ErrorCode::InvalidBody, "Could not read the request body")
        }
    })?;
    Ok(body.to_bytes())
}

/// The response body of a stream served through hyper.
pub(crate) struct SseBody {
    handle: StreamHandle,
    batch: Vec<Bytes>,
}

impl SseBody {
    /// A body draining the handle's queue.
    pub(crate) fn new(handle: StreamHandle) -> Self {
        Self { handle, batch: Vec::new() }
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.batch.is_empty() {
            match this.handle.queue().take_batch(&mut this.batch, 64, cx.waker()) {
                Batch::Frames => this.batch.reverse(),
                Batch::Empty => return Poll::Pending,
                Batch::End(_) | Batch::Abandon => return Poll::Ready(None),
            }
        }
        Poll::Ready(this.batch.pop().map(|b| Ok(Frame::data(b))))
    }
}

/// Every response body the hyper-served surface produces.
pub(crate) enum ResponseBody {
    /// An embedding application's answer.
    App(crate::AppBody),
    /// A complete body with a known length (JSON answers).
    Full(Option<Bytes>),
    /// A complete body sent chunked, like a stream that ends at once (in-stream answers).
    Chunked(Option<Bytes>),
    /// A live SSE stream.
    Stream(SseBody),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(b) | ResponseBody::Chunked(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(s) => Pin::new(s).poll_frame(cx).map(|f| f.map(|r| r.map_err(|e| match e {}))),
            ResponseBody::App(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(None) | ResponseBody::Chunked(None) => true,
            ResponseBody::App(b) => b.is_end_stream(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::App(b) => b.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// A socket whose first bytes were already read: hyper sees them again first.
pub(crate) struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub(crate) fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
