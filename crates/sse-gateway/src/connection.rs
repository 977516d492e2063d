//! One accepted TCP connection: read its first request head, then either
//! serve a stream on the raw socket (`raw_stream`) or hand the connection,
//! with the bytes already read, to hyper (`api`).
//!
//! Only the common case takes the raw path: an HTTP/1.1 `GET` without a body
//! for a stream path on the public listener. Everything else (the internal
//! API, health, `HEAD`, HTTP/1.0, requests with bodies, and every later
//! request on a kept-alive connection) is hyper's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::Shared;
use crate::connect::{self, Decision};
use crate::error::ApiError;
use crate::hook::ClientRequest;
use crate::raw_stream;

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The public port: streams, `/internal/send`, health.
    Public,
    /// The loopback internal port: the internal API and metrics, no streams.
    Internal,
}

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection to its end.
pub(crate) async fn serve(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr, listener: Listener) {
    let mut buf = Vec::with_capacity(1024);
    // Boxed: the timer and read state are freed once the head is in, instead
    // of staying in the task for the stream's whole life.
    let reading =
        Box::pin(tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp, &mut buf, shared.config.max_header_bytes)));
    let first = match reading.await {
        Err(_) | Ok(Head::Closed) => return,
        Ok(Head::TooLarge) => {
            let e = ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                format!("Request head exceeds {} bytes", shared.config.max_header_bytes),
            );
            return write_error_and_close(&mut tcp, &e).await;
        }
        Ok(Head::Invalid) => {
            let e = ApiError::bad_request("BAD_REQUEST", "Malformed HTTP request");
            return write_error_and_close(&mut tcp, &e).await;
        }
        Ok(Head::Complete(head)) => head,
    };
    if listener == Listener::Public && first.is_raw_stream(&shared) {
        drop(buf);
        let request = first.request;
        Box::pin(raw(shared, tcp, request)).await;
    } else {
        Box::pin(crate::api::serve_hyper(shared, tcp, peer, Bytes::from(buf), listener)).await;
    }
}

async fn raw(shared: Arc<Shared>, mut tcp: TcpStream, request: ClientRequest) {
    let decision = match connect::start(&shared, request, None) {
        Err(decision) => decision,
        Ok(rx) => {
            tokio::select! {
                d = rx => match d {
                    Ok(d) => d,
                    Err(_) => Decision::Error(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "connect task failed")),
                },
                // Dropping the receiver tells the connect task the client left.
                () = client_gone(&tcp) => return,
            }
        }
    };
    match decision {
        Decision::Stream(handle) => raw_stream::serve(tcp, handle, &shared.metrics).await,
        Decision::InStream(frame) => raw_stream::write_in_stream(&mut tcp, &frame, &shared.metrics).await,
        Decision::Error(e) => write_error_and_close(&mut tcp, &e).await,
    }
}

/// Resolves when the peer closes (anything it sends meanwhile is discarded).
async fn client_gone(tcp: &TcpStream) {
    loop {
        if tcp.readable().await.is_err() || peer_closed(tcp) {
            return;
        }
    }
}

/// Reads what is there without blocking; true on EOF or a socket error.
pub(crate) fn peer_closed(tcp: &TcpStream) -> bool {
    let mut sink = [0u8; 256];
    loop {
        match tcp.try_read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

async fn write_error_and_close(tcp: &mut TcpStream, e: &ApiError) {
    let body = e.body();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\
         access-control-allow-origin: *\r\naccess-control-allow-methods: GET, POST, OPTIONS\r\n\
         access-control-allow-headers: Content-Type, Cache-Control\r\nconnection: close\r\n\r\n",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(&body).await;
    let _ = tcp.shutdown().await;
    linger(tcp).await;
}

/// Reads and discards what the client is still sending (briefly, bounded)
/// before the socket is dropped: closing with unread input makes the kernel
/// send a reset, which can destroy the answer before the client reads it.
async fn linger(tcp: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    // On the heap: a stack buffer here would enlarge every connection task.
    let mut sink = vec![0u8; 4096];
    let mut budget: usize = 256 * 1024;
    let drain = async {
        while budget > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

struct FirstRequest {
    method_get: bool,
    http11: bool,
    has_body: bool,
    request: ClientRequest,
}

impl FirstRequest {
    fn is_raw_stream(&self, shared: &Shared) -> bool {
        self.method_get && self.http11 && !self.has_body && shared.is_stream_path(&self.request.url)
    }
}

/// True for the gateway's own routes (health, metrics, the internal API).
pub(crate) fn is_gateway_route(url: &str) -> bool {
    let path = url.split('?').next().unwrap_or("");
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/internal" | "/internal/send" | "/internal/publish")
        || path.starts_with("/internal/")
}

enum Head {
    Complete(FirstRequest),
    Closed,
    TooLarge,
    Invalid,
}

/// Reads until the request head is complete. Kept free of large locals: its
/// state is part of every connection task for the task's whole life.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>, max: usize) -> Head {
    loop {
        if let Some(head) = parse_head(buf) {
            return head;
        }
        if buf.len() >= max {
            return Head::TooLarge;
        }
        if tcp.readable().await.is_err() {
            return Head::Closed;
        }
        buf.reserve(1024.min(max - buf.len()).max(1));
        let spare = buf.capacity() - buf.len();
        let start = buf.len();
        buf.resize(start + spare, 0);
        match tcp.try_read(&mut buf[start..]) {
            Ok(0) => return Head::Closed,
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
            Err(_) => return Head::Closed,
        }
    }
}

/// Parses a complete head (`None`: more bytes needed). The 100-header array
/// lives on this synchronous frame only, never in a task.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let url = req.path.unwrap_or("/").to_owned();
            let has_body = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            });
            let request = ClientRequest::from_raw(url, req.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
            Some(Head::Complete(FirstRequest {
                method_get: req.method == Some("GET"),
                http11: req.version == Some(1),
                has_body,
                request,
            }))
        }
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::TooLarge),
        Err(_) => Some(Head::Invalid),
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

    #[tokio::test]
    async fn a_connection_task_is_small() {
        // Every open stream keeps its connection task (and this future) alive,
        // so its size is paid once per stream.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let gw = crate::Gateway::new(crate::Config::default(), None);
        let fut = serve(std::sync::Arc::clone(&gw.shared), server, peer, Listener::Public);
        let size = std::mem::size_of_val(&fut);
        // 4.7 KiB before the head parser's header array and the linger buffer
        // were moved off the task; keep it well under 1 KiB.
        assert!(size <= 1024, "connection future is {size} bytes");
        drop(fut);
        let (server, _) = {
            let _c2 = TcpStream::connect(addr).await.unwrap();
            listener.accept().await.unwrap()
        };
        let request = ClientRequest { url: "/".into(), headers: vec![] };
        let stream_phase = raw(std::sync::Arc::clone(&gw.shared), server, request);
        let size = std::mem::size_of_val(&stream_phase);
        assert!(size <= 1024, "stream future is {size} bytes");
        drop((stream_phase, client));
    }

    #[test]
    fn gateway_routes_are_recognised() {
        for p in ["/healthz", "/readyz?x", "/metrics", "/internal", "/internal/send", "/internal/x?y"] {
            assert!(is_gateway_route(p), "{p}");
        }
        for p in ["/", "/api/sse/stream?request_id=1", "/healthzz", "/internalx"] {
            assert!(!is_gateway_route(p), "{p}");
        }
    }
}
