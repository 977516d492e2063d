//! One accepted TCP connection: read its first request head, then either
//! serve a stream on the raw socket (`raw_stream`) or hand the connection,
//! with the bytes already read, to hyper (`hyper_path`).
//!
//! Only the common case takes the raw path: an HTTP/1.1 `GET` without a body
//! for a stream path on the public listener. Everything else (the internal
//! API, health, `HEAD`, HTTP/1.0, requests with bodies, and every later
//! request on a kept-alive connection) is hyper's. So is every connection to
//! a public listener with TLS: after the handshake, hyper speaks the
//! protocol ALPN chose (h2, else HTTP/1.1) over the TLS stream.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::net::TcpStream;

use crate::connect::{self, Decision};
use crate::error::{ApiError, ErrorCode};
use crate::hook::ClientRequest;
use crate::hyper_path::Rewind;
use crate::protocols::Protocol;
use crate::raw_stream;
use crate::routes::{self, Listener, Route};
use crate::shared::Shared;

/// How long a client may take to send its request head (or, with TLS, to
/// finish the handshake).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection to its end.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, listener: Listener) {
    if listener == Listener::Public && shared.config.tls.is_some() {
        // Boxed, like every later phase: the plain path's task stays small.
        return Box::pin(serve_tls(shared, tcp, peer)).await;
    }
    serve_plain(shared, tcp, peer, listener).await;
}

async fn serve_plain(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr, listener: Listener) {
    let mut buf = Vec::with_capacity(1024);
    // Boxed: the timer and read state are freed once the head is in, instead
    // of staying in the task for the stream's whole life.
    let reading =
        Box::pin(tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp, &mut buf, shared.config.max_header_bytes)));
    let first = match reading.await {
        Err(_) | Ok(Head::Closed) => return,
        Ok(Head::TooLarge) => {
            let e = ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!("Request head exceeds {} bytes", shared.config.max_header_bytes),
            );
            return raw_stream::write_error_and_close(&mut tcp, &e, &shared.metrics).await;
        }
        Ok(Head::Invalid) => {
            let e = ApiError::new(ErrorCode::BadRequest, "Malformed HTTP request");
            return raw_stream::write_error_and_close(&mut tcp, &e, &shared.metrics).await;
        }
        Ok(Head::Complete(head)) => head,
    };
    if listener == Listener::Public && first.is_raw_stream(&shared) {
        drop(buf);
        let request = first.request;
        Box::pin(raw(shared, tcp, peer, request)).await;
    } else {
        let fd = tcp.as_raw_fd();
        let io = Rewind::new(Bytes::from(buf), tcp);
        Box::pin(crate::hyper_path::serve(shared, io, fd, peer, listener, Protocol::Http1)).await;
    }
}

/// A connection to the public listener with TLS: handshake, then hyper.
async fn serve_tls(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let Some(tls) = &shared.config.tls else { return };
    if let Some(bytes) = shared.config.stream_sndbuf {
        // As for raw streams: a client that stops reading holds this much kernel memory.
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(bytes);
    }
    let fd = tcp.as_raw_fd();
    let (io, h2) = match tokio::time::timeout(HEAD_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let protocol = if h2 { Protocol::Http2 } else { Protocol::Http1 };
    crate::hyper_path::serve(Arc::clone(&shared), io, fd, peer, Listener::Public, protocol).await;
}

async fn raw(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr, request: ClientRequest) {
    let decision = match connect::start(&shared, request, Some(peer), None) {
        Err(decision) => decision,
        Ok(rx) => {
            tokio::select! {
                d = rx => match d {
                    Ok(d) => d,
                    Err(_) => Decision::Error(ApiError::new(ErrorCode::InternalError, "connect task failed")),
                },
                // Dropping the receiver tells the connect task the client left.
                () = raw_stream::client_gone(&tcp) => return,
            }
        }
    };
    match decision {
        // A task of its own, so the connection task (the head parsing and
        // connect decision, about 1.3 KiB with this future) is freed: an
        // open stream costs only its writer's small task for its whole life.
        Decision::Stream(handle) => {
            let sndbuf = shared.config.stream_sndbuf;
            let streams = shared.connections.clone();
            streams.spawn(async move { raw_stream::serve(tcp, handle, &shared.metrics, sndbuf).await });
        }
        Decision::InStream(frame) => raw_stream::write_in_stream(&mut tcp, &frame, &shared.metrics).await,
        Decision::Error(e) => raw_stream::write_error_and_close(&mut tcp, &e, &shared.metrics).await,
    }
}

struct FirstRequest {
    method_get: bool,
    http11: bool,
    has_body: bool,
    request: ClientRequest,
}

impl FirstRequest {
    /// The common case: an HTTP/1.1 `GET` without a body of a stream path.
    fn is_raw_stream(&self, shared: &Shared) -> bool {
        let path = self.request.url.split('?').next().unwrap_or("");
        self.method_get
            && self.http11
            && !self.has_body
            && routes::resolve(&Method::GET, path, Listener::Public, shared.app_stream_path()) == Route::Stream
    }
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
        let gw = crate::Gateway::builder(crate::Config::default()).build();
        let fut = serve(std::sync::Arc::clone(gw.shared()), server, peer, Listener::Public);
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
        let stream_phase = raw(std::sync::Arc::clone(gw.shared()), server, peer, request);
        let size = std::mem::size_of_val(&stream_phase);
        assert!(size <= 1024, "stream future is {size} bytes");
        drop((stream_phase, client));
        // What an open stream keeps for its whole life: the writer task's future.
        let (server, _) = {
            let _c3 = TcpStream::connect(addr).await.unwrap();
            listener.accept().await.unwrap()
        };
        let request = std::sync::Arc::new(ClientRequest { url: "/".into(), headers: vec![] });
        let queue = crate::queue::StreamQueue::new(uuid::Uuid::new_v4(), request, 1024, None);
        let handle = crate::queue::StreamHandle::new(queue, Box::new(|_, _| {}));
        let metrics = crate::metrics::Metrics::default();
        let writer = raw_stream::serve(server, handle, &metrics, None);
        let size = std::mem::size_of_val(&writer);
        assert!(size <= 192, "stream writer future is {size} bytes");
    }
}
