//! hyper's connection settings for HTTP/1.1 and HTTP/2, made once per
//! gateway: one hyper-util auto builder per protocol (a TLS connection's
//! protocol is known from ALPN, so no version sniffing), and the executor
//! that spawns HTTP/2 stream tasks on a tracker. The HTTP/2 numbers are
//! what keeps an idle h2 stream small (`docs/PERFORMANCE.md`).

use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio_util::task::TaskTracker;

/// How long a client may take to send a request head on a kept-alive connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2: bytes of one stream's data that hyper may hold before it stops
/// taking frames from the stream's queue (hyper's default is 400 KiB). The
/// frames are shared buffers, so this bounds how far a stream runs ahead of
/// its socket, not a copy per stream; the queue bound and the stall sweep
/// act on what waits behind it.
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// HTTP/2: streams one connection may have open at once (a browser puts all
/// its tabs' streams to one origin on one connection). `MAX_CONNECTIONS`
/// still bounds the streams of the whole gateway.
const H2_MAX_CONCURRENT_STREAMS: u32 = 1000;

/// HTTP/2: how much a client may send before we read it, per stream and per
/// connection. Streams send nothing; request bodies are read at once, so the
/// protocol's 64 KiB default per stream is enough, and the connection window
/// lets several bodies arrive side by side.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The protocol a connection speaks (for TLS, what ALPN chose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Spawns the tasks hyper makes (one per HTTP/2 stream) on a tracker, so
/// the drain waits for every stream task, not only for its connection
/// (after the shutdown cut a stream task can outlive its connection briefly).
#[derive(Clone)]
pub(crate) struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// hyper's connection builders, one per protocol, configured once per gateway.
pub(crate) struct Protocols {
    http1: auto::Builder<Tracked>,
    http2: auto::Builder<Tracked>,
}

impl Protocols {
    /// Builders whose HTTP/2 stream tasks are spawned on `tasks`.
    pub(crate) fn new(max_header_bytes: usize, tasks: &TaskTracker) -> Self {
        let builder = || {
            let mut b = auto::Builder::new(Tracked(tasks.clone()));
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(max_header_bytes.max(8192));
            b.http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
                .max_send_buf_size(H2_MAX_SEND_BUF)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW);
            b
        };
        Self { http1: builder().http1_only(), http2: builder().http2_only() }
    }
}

impl Protocols {
    /// The builder for `protocol`.
    pub(crate) fn builder(&self, protocol: Protocol) -> &auto::Builder<Tracked> {
        match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
        }
    }
}
