//! Serves an SSE stream directly on its TCP socket, without hyper, and
//! writes the raw path's other answers (in-stream answers, early errors).
//!
//! Why not hyper here: an idle stream must cost a few KiB at most, and a hyper
//! HTTP/1 connection keeps an 8 KiB read buffer plus its write buffers for as
//! long as it lives. A stream needs none of that: after the request head, the
//! socket only ever carries our chunks out and, inbound, the client's EOF. So
//! the first request on a connection is read by `connection`; when it is a
//! plain `GET` of a stream path it comes here.
//!
//! [`RawSink`] is the socket as the queue's [`Sink`]: the queue hands it the
//! frames queued since the last write (shared `Bytes`, never copied) as one
//! HTTP chunk, written with one vectored write. The writer task watches the
//! socket for the client's EOF at the same time, and the queue for an
//! overflow or a shutdown cut while a write is blocked. After a clean end it
//! writes the terminating chunk and closes the connection.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::chunk::{Chunk, MAX_SLICES};
use crate::error::ApiError;
use crate::events::Event;
use crate::headers;
use crate::metrics::Metrics;
use crate::queue::{Flushed, Sink, StreamHandle, StreamQueue};

/// Writes a whole in-stream answer (headers, one frame, end) and closes.
pub(crate) async fn write_in_stream(tcp: &mut TcpStream, frame: &[u8], metrics: &Metrics) {
    let head = headers::sse_head();
    let mut out = Vec::with_capacity(head.len() + frame.len() + 16);
    out.extend_from_slice(head);
    out.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
    out.extend_from_slice(frame);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    if tcp.write_all(&out).await.is_ok() {
        metrics.bytes_written(out.len());
        let _ = tcp.shutdown().await;
    }
}

/// Writes a JSON error answer, closes, and lingers so the client reads it.
pub(crate) async fn write_error_and_close(tcp: &mut TcpStream, e: &ApiError, metrics: &Metrics) {
    metrics.emit(Event::ErrorAnswered { code: e.code });
    let body = e.body();
    let head = headers::error_head(e.status(), body.len());
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(&body).await;
    let _ = tcp.shutdown().await;
    linger(tcp).await;
}

/// Reads and discards what the client is still sending (briefly, bounded)
/// before the socket is dropped: closing with unread input makes the kernel
/// send a reset, which can destroy the answer before the client reads it.
async fn linger(tcp: &mut TcpStream) {
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

/// Serves an accepted stream until it ends; dropping `handle` reports the end.
/// `sndbuf` caps the socket's kernel send buffer.
pub(crate) async fn serve(tcp: TcpStream, handle: StreamHandle, metrics: &Metrics, sndbuf: Option<usize>) {
    if let Some(bytes) = sndbuf {
        // A client that stops reading then holds this much kernel memory, not megabytes.
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(bytes);
    }
    // Every write to the socket happens under the queue's lock: by a
    // publisher writing straight through when nothing is pending, by a
    // writer shard, or by this task draining what queued up meanwhile. The
    // response head goes out with the first chunk (`ready`): one write.
    let sink = Arc::new(RawSink { tcp, bytes: metrics.bytes_counter() });
    handle.queue().attach_sink_after(Arc::clone(&sink) as Arc<dyn Sink>, headers::sse_head());
    let stop = poll_fn(|cx| poll_raw(handle.queue(), &sink, cx)).await;
    if stop == Flushed::Abandoned {
        // Overflowed, stalled or cut: reset instead of a graceful close, so the
        // unread bytes do not linger in kernel memory.
        let _ = socket2::SockRef::from(&sink.tcp).set_linger(Some(Duration::ZERO));
    }
    // Dropping the handle detaches the sink (the queue is finished) and reports the end.
    drop(handle);
}

/// The raw stream's writer: until the client leaves or the queue's flush
/// stops (ended, failed, abandoned).
fn poll_raw(queue: &StreamQueue, sink: &RawSink, cx: &mut Context<'_>) -> Poll<Flushed> {
    // The client sends nothing after its request; readable means EOF (or junk to discard).
    if let Poll::Ready(r) = sink.tcp.poll_read_ready(cx)
        && (r.is_err() || peer_closed(&sink.tcp))
    {
        return Poll::Ready(Flushed::Failed);
    }
    queue.poll_flush(sink, cx)
}

/// Resolves when the peer closes (anything it sends meanwhile is discarded).
pub(crate) async fn client_gone(tcp: &TcpStream) {
    loop {
        if tcp.readable().await.is_err() || peer_closed(tcp) {
            return;
        }
    }
}

/// Reads what is there without blocking; true on EOF or a socket error.
fn peer_closed(tcp: &TcpStream) -> bool {
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

/// The socket of a raw stream, shared by its writer task and direct publishers.
#[derive(Debug)]
pub(crate) struct RawSink {
    tcp: TcpStream,
    bytes: Counter,
}

impl Sink for RawSink {
    fn write(&self, out: &mut Chunk) -> io::Result<bool> {
        while !out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = out.slices(&mut slices);
            match self.tcp.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.bytes.inc_by(written as u64);
                    out.advance(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }
}
