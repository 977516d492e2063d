//! Serves an SSE stream directly on its TCP socket, without hyper.
//!
//! Why not hyper here: an idle stream must cost a few KiB at most, and a hyper
//! HTTP/1 connection keeps an 8 KiB read buffer plus its write buffers for as
//! long as it lives. A stream needs none of that: after the request head, the
//! socket only ever carries our chunks out and, inbound, the client's EOF. So
//! the first request on a connection is read by `connection`; when it is a
//! plain `GET` of a stream path it comes here.
//!
//! The writer takes the frames queued since its last write (shared `Bytes`,
//! never copied) and writes them as one HTTP chunk with one vectored write:
//! `<size>\r\n`, the frames, `\r\n`. It watches the socket for the client's
//! EOF at the same time, and the queue for an overflow or a shutdown cut while
//! a write is blocked. After a clean end it writes the terminating chunk and
//! closes the connection.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::stream::StreamHandle;

/// Most frames written in one chunk (the iovec array lives on the stack).
pub(crate) const MAX_FRAMES: usize = 62;

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: text/event-stream\r\n\
cache-control: no-cache\r\n\
connection: keep-alive\r\n\
x-accel-buffering: no\r\n\
access-control-allow-origin: *\r\n\
access-control-allow-methods: GET, POST, OPTIONS\r\n\
access-control-allow-headers: Content-Type, Cache-Control\r\n\
transfer-encoding: chunked\r\n\r\n";

/// Writes a whole in-stream answer (headers, one frame, end) and closes.
pub(crate) async fn write_in_stream(tcp: &mut TcpStream, frame: &[u8], metrics: &Metrics) {
    let mut out = Vec::with_capacity(SSE_HEAD.len() + frame.len() + 16);
    out.extend_from_slice(SSE_HEAD);
    out.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
    out.extend_from_slice(frame);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    if tcp.write_all(&out).await.is_ok() {
        metrics.bytes_written(out.len());
        let _ = tcp.shutdown().await;
    }
}

/// Serves an accepted stream until it ends; dropping `handle` reports the end.
pub(crate) async fn serve(mut tcp: TcpStream, handle: StreamHandle, metrics: &Metrics) {
    if tcp.write_all(SSE_HEAD).await.is_err() {
        return;
    }
    metrics.bytes_written(SSE_HEAD.len());
    // From here on, every write to the socket happens under the queue's lock:
    // by a publisher writing straight through when nothing is pending, or by
    // this task draining what queued up meanwhile.
    let sink = Arc::new(RawSink { tcp, bytes: metrics.bytes_counter() });
    handle.queue().attach_sink(Arc::clone(&sink));
    poll_fn(|cx| handle.queue().poll_raw(&sink, cx)).await;
    // Dropping the handle detaches the sink (the queue is finished) and reports the end.
    drop(handle);
}

/// The socket of a raw stream, shared by its writer task and direct publishers.
#[derive(Debug)]
pub(crate) struct RawSink {
    pub(crate) tcp: TcpStream,
    pub(crate) bytes: prometheus_client::metrics::counter::Counter,
}

impl RawSink {
    /// Writes as much of `out` as the socket takes now; `Ok(true)` once all of it is out.
    pub(crate) fn write(&self, out: &mut Outgoing) -> io::Result<bool> {
        while !out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_FRAMES + 2];
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
}

/// The bytes of the chunk being written: size line, frames, trailer.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    head: [u8; 18],
    head_pos: usize,
    head_len: usize,
    pub(crate) frames: Vec<Bytes>,
    next: usize,
    tail: &'static [u8],
    pub(crate) terminated: bool,
}

impl Outgoing {
    pub(crate) fn is_empty(&self) -> bool {
        self.head_pos == self.head_len && self.next == self.frames.len() && self.tail.is_empty()
    }

    pub(crate) fn start_chunk(&mut self) {
        let size: usize = self.frames.iter().map(Bytes::len).sum();
        // `<size in hex>\r\n`, without allocating (this runs per delivery).
        let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            let nibble = (size >> (4 * (digits - 1 - i))) & 0xf;
            self.head[i] = b"0123456789abcdef"[nibble];
        }
        self.head[digits] = b'\r';
        self.head[digits + 1] = b'\n';
        self.head_pos = 0;
        self.head_len = digits + 2;
        self.next = 0;
        self.tail = b"\r\n";
    }

    pub(crate) fn start_terminator(&mut self) {
        self.frames.clear();
        self.next = 0;
        self.head_pos = 0;
        self.head_len = 0;
        self.tail = b"0\r\n\r\n";
        self.terminated = true;
    }

    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if self.head_pos < self.head_len {
            slices[n] = IoSlice::new(&self.head[self.head_pos..self.head_len]);
            n += 1;
        }
        for f in &self.frames[self.next..] {
            slices[n] = IoSlice::new(f);
            n += 1;
        }
        if !self.tail.is_empty() {
            slices[n] = IoSlice::new(self.tail);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut n: usize) {
        let head_left = self.head_len - self.head_pos;
        let step = n.min(head_left);
        self.head_pos += step;
        n -= step;
        while n > 0 && self.next < self.frames.len() {
            let f = &mut self.frames[self.next];
            if n >= f.len() {
                n -= f.len();
                self.next += 1;
            } else {
                f.advance(n);
                n = 0;
            }
        }
        let step = n.min(self.tail.len());
        self.tail = &self.tail[step..];
        if self.is_empty() {
            self.frames.clear();
            self.next = 0;
            // Idle streams should not keep a large batch's capacity.
            if self.frames.capacity() > 8 {
                self.frames = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(out: &Outgoing) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_FRAMES + 2];
        let n = out.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn a_batch_is_one_chunk_and_partial_writes_resume_exactly() {
        let mut out =
            Outgoing { frames: vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")], ..Default::default() };
        out.start_chunk();
        let all = written(&out);
        assert_eq!(all, b"8\r\nabcdefgh\r\n");
        for cut in 1..all.len() {
            let mut o = Outgoing {
                frames: vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")],
                ..Default::default()
            };
            o.start_chunk();
            o.advance(cut);
            assert_eq!(written(&o), &all[cut..], "after writing {cut} bytes");
            o.advance(all.len() - cut);
            assert!(o.is_empty());
        }
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        for size in [1usize, 9, 10, 15, 16, 255, 4096, 65535, 1 << 20] {
            let mut out = Outgoing { frames: vec![Bytes::from(vec![b'x'; size])], ..Default::default() };
            out.start_chunk();
            assert_eq!(&out.head[..out.head_len], format!("{size:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn terminator_is_the_last_chunk() {
        let mut out = Outgoing::default();
        out.start_terminator();
        assert_eq!(written(&out), b"0\r\n\r\n");
        out.advance(5);
        assert!(out.is_empty() && out.terminated);
    }
}
