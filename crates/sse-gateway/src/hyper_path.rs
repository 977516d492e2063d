//! Everything hyper serves: the internal API, health, metrics, `OPTIONS`,
//! an embedding application's requests, the streams that do not take the
//! raw path (`HEAD`, HTTP/1.0, later requests on a kept-alive connection),
//! and every request of a TLS connection, HTTP/1.1 or HTTP/2 alike.
//!
//! Routing is `routes::resolve`; the answers themselves come from `api`;
//! this module owns the hyper glue: the connection (HTTP/1.1 or HTTP/2, with
//! its abort token), body limits, response headers and the response body
//! types.
//!
//! An HTTP/2 connection carries many streams, each a task of its own that
//! hyper spawns; they share the connection's abort token, so a slow consumer
//! cut or a stall ends every stream of that connection (a client that does
//! not read its socket stalls all of them anyway). The HTTP/2 settings keep
//! an idle stream small (`protocols`).

use std::convert::Infallible;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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
use crate::protocols::Protocol;
use crate::queue::{Batch, StreamHandle};
use crate::routes::{self, Listener, Route};
use crate::shared::Shared;

type Resp = Response<ResponseBody>;

/// Oversized bodies up to this size are read and discarded before the 413.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Serves a connection with hyper until it ends. `fd` is its TCP socket's,
/// for the reset when the connection is cut.
pub(crate) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    fd: RawFd,
    peer: std::net::SocketAddr,
    listener: Listener,
    protocol: Protocol,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Cuts the connection when one of its streams overflows or stalls, or at the shutdown deadline.
    let abort = shared.cut.child_token();
    let svc_shared = Arc::clone(&shared);
    let svc_abort = abort.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer);
        if req.version() == Version::HTTP_2 {
            with_host_from_authority(&mut req);
        }
        let shared = Arc::clone(&svc_shared);
        let abort = svc_abort.clone();
        // Boxed: hyper keeps this future in the stream's task (HTTP/2) or the
        // connection (HTTP/1) until the answer's head is out; as a box it is
        // freed then instead of sizing the task for the stream's whole life.
        Box::pin(async move { Ok::<_, Infallible>(handle(shared, abort, listener, req).await) })
    });
    let conn = shared.protocols.builder(protocol).serve_connection(TokioIo::new(io), svc);
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
                // Overflowed, stalled or cut: reset instead of a graceful
                // close, so unsent bytes do not linger in kernel memory.
                // SAFETY: the socket is owned by `conn`, alive until after this call.
                let socket = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
                break;
            }
        }
    }
}

/// HTTP/2 names the host in the `:authority` pseudo-header; the connect
/// callback and an embedding application see it as `host`, as over HTTP/1.1.
fn with_host_from_authority(req: &mut Request<Incoming>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(host) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
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

fn sse(body: ResponseBody, version: Version) -> Resp {
    let mut r = Response::new(body);
    headers::apply(r.headers_mut(), headers::sse_for(version));
    r
}

async fn stream(shared: &Arc<Shared>, abort: CancellationToken, req: Request<Incoming>) -> Resp {
    let url = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = ClientRequest::from_parts(url, req.headers());
    let peer = req.extensions().get::<std::net::SocketAddr>().copied();
    let version = req.version();
    drop(req);
    let decision = match connect::start(shared, request, peer, Some(abort)) {
        Err(d) => d,
        Ok(rx) => match rx.await {
            Ok(d) => d,
            Err(_) => return error(shared, &ApiError::new(ErrorCode::InternalError, "connect task failed")),
        },
    };
    match decision {
        Decision::Stream(handle) => sse(ResponseBody::Stream(SseBody::new(handle)), version),
        Decision::InStream(frame) => sse(ResponseBody::Chunked(Some(frame)), version),
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

/// Frames taken from a stream's queue at once.
const BATCH_FRAMES: usize = 64;

/// Largest body chunk made by joining queued frames: one HTTP/2 DATA frame
/// at the protocol's default frame size.
const JOINED_CHUNK: usize = 16 * 1024;

/// The response body of a stream served through hyper.
///
/// Frames that queued up while the connection was busy go out joined into
/// one chunk (one HTTP/2 DATA frame, one HTTP/1.1 chunk) of at most
/// [`JOINED_CHUNK`] bytes: a copy, but one frame and one TLS record instead
/// of one per event, and an HTTP/2 client counts (and may refuse, as the
/// `h2` crate does) many small DATA frames piling up unread. A lone frame
/// goes out as it is, shared with every other stream.
pub(crate) struct SseBody {
    handle: StreamHandle,
    /// Frames taken but not yet sent, in reverse order (empty, unallocated, when idle).
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
            match this.handle.queue().take_batch(&mut this.batch, BATCH_FRAMES, cx.waker()) {
                Batch::Frames => this.batch.reverse(),
                Batch::Empty => return Poll::Pending,
                Batch::End(_) | Batch::Abandon => return Poll::Ready(None),
            }
        }
        let chunk = join_next(&mut this.batch);
        if this.batch.is_empty() {
            // An idle stream keeps no batch allocation.
            this.batch = Vec::new();
        }
        Poll::Ready(chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Pops the next frame off `reversed`, joined with the ones after it while
/// the total stays within [`JOINED_CHUNK`].
fn join_next(reversed: &mut Vec<Bytes>) -> Option<Bytes> {
    let first = reversed.pop()?;
    let mut len = first.len();
    let joined = reversed.iter().rev().take_while(|b| {
        len += b.len();
        len <= JOINED_CHUNK
    });
    let n = joined.count();
    if n == 0 {
        return Some(first);
    }
    let rest = reversed.split_off(reversed.len() - n);
    let mut out = BytesMut::with_capacity(first.len() + rest.iter().map(Bytes::len).sum::<usize>());
    out.extend_from_slice(&first);
    for b in rest.iter().rev() {
        out.extend_from_slice(b);
    }
    Some(out.freeze())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_frames_are_joined_up_to_one_chunk_in_order() {
        let frame = |c: u8, n: usize| Bytes::from(vec![c; n]);
        let mut reversed = vec![frame(b'd', 12_000), frame(b'c', 6_000), frame(b'b', 100), frame(b'a', 100)];
        let first = join_next(&mut reversed).unwrap();
        assert_eq!(first.len(), 6_200, "a, b and c fit in one chunk; d does not");
        assert_eq!((&first[..100], &first[100..200], first[200]), (&[b'a'; 100][..], &[b'b'; 100][..], b'c'));
        assert_eq!(join_next(&mut reversed).unwrap(), frame(b'd', 12_000), "a lone frame goes out as it is");
        assert!(join_next(&mut reversed).is_none());
        let mut big = vec![frame(b'y', 10), frame(b'x', 40_000)];
        assert_eq!(join_next(&mut big).unwrap().len(), 40_000, "a frame larger than a chunk is not split");
        assert_eq!(join_next(&mut big).unwrap().len(), 10);
    }
}
