//! Raw HTTP/1.1 client connections over TCP, kept deliberately small: a load
//! generator holding 19,000 streams should spend its memory on sockets, not on
//! an HTTP stack.
//!
//! Owns: URL parsing (`http://IP:PORT/path`, loopback in practice), the
//! [`Dialer`] that spreads source addresses, [`HttpConn`] (sequential
//! request/response over one keep-alive connection) and [`SseStream`] (one
//! event stream: head, chunked decoding, SSE parsing by `sse-wire`, and the
//! kernel's receive timestamp of what each read returned).
//! It does not own what a stream's events mean (see `fleet`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use bytes::BufMut;
use sse_wire::{Dechunker, Frame, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest non-stream response body accepted (the token list is the big one).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Read size for streams: a few events per read under fan-out, little memory idle.
const STREAM_READ: usize = 4096;

/// A parsed `http://` (or `https://`, for `h2`) URL: where to connect and what to ask for.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://`: only the h2 client (`h2`) serves it.
    pub https: bool,
    /// The socket address from the URL's authority.
    pub addr: SocketAddr,
    /// The authority as written (sent as `Host`).
    pub host: String,
    /// Path and query; may contain `{i}` (see [`Endpoint::path_for`]).
    pub path: String,
}

impl Endpoint {
    /// Parses `http(s)://HOST:PORT/path?query`; HOST is an IP literal or `localhost`.
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => bail!("{url}: only http:// and https:// URLs are supported"),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        let addr = match authority.strip_prefix("localhost:") {
            Some(port) => {
                let port: u16 = port.parse().with_context(|| format!("{url}: bad port"))?;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            }
            None => authority
                .parse()
                .with_context(|| format!("{url}: the host must be an IP address with a port, e.g. 127.0.0.1:3000"))?,
        };
        Ok(Endpoint { https, addr, host: authority.to_owned(), path })
    }

    /// The same endpoint with another path (e.g. `/tokens` on a base URL).
    pub fn with_path(&self, path: &str) -> Endpoint {
        Endpoint { path: path.to_owned(), ..self.clone() }
    }

    /// The path with every `{i}` replaced by `i` (one distinct URL per stream).
    pub fn path_for(&self, i: u64) -> String {
        if self.path.contains("{i}") { self.path.replace("{i}", &i.to_string()) } else { self.path.clone() }
    }
}

/// Opens client sockets, binding loopback connections round robin to source
/// addresses 127.0.0.2–127.0.0.20 so tens of thousands of connections (and
/// their TIME_WAIT leftovers under churn) never exhaust one address's
/// ephemeral ports.
#[derive(Debug)]
pub struct Dialer {
    sources: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Default for Dialer {
    fn default() -> Self {
        Self { sources: (2..=20).map(|last| Ipv4Addr::new(127, 0, 0, last)).collect(), next: AtomicUsize::new(0) }
    }
}

impl Dialer {
    /// Connects to `addr` with `TCP_NODELAY` (requests are written in one go).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = match addr {
            SocketAddr::V4(v4) => {
                let socket = TcpSocket::new_v4()?;
                if v4.ip().is_loopback() {
                    let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
                    socket.bind(SocketAddr::new(IpAddr::V4(self.sources[i]), 0))?;
                }
                socket
            }
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

/// What the client needs from a response head.
#[derive(Debug)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// `Connection: close`.
    pub close: bool,
    /// `Content-Type: text/event-stream` (parameters allowed): what
    /// `EventSource` requires besides a 200.
    pub event_stream: bool,
}

/// Reads a response head; bytes after it stay in `buf`.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf).context("malformed response head")? {
            httparse::Status::Complete(n) => {
                let mut head = Head {
                    status: resp.code.unwrap_or(0),
                    chunked: false,
                    content_length: None,
                    close: false,
                    event_stream: false,
                };
                for h in resp.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        head.chunked = value.to_ascii_lowercase().contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        head.content_length = Some(value.trim().parse().context("bad Content-Length")?);
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        head.close = value.eq_ignore_ascii_case("close");
                    } else if h.name.eq_ignore_ascii_case("content-type") {
                        let essence = value.split(';').next().unwrap_or("").trim();
                        head.event_stream = essence.eq_ignore_ascii_case("text/event-stream");
                    }
                }
                buf.drain(..n);
                return Ok(head);
            }
            httparse::Status::Partial if buf.len() > MAX_HEAD => bail!("response head over {MAX_HEAD} bytes"),
            httparse::Status::Partial => {}
        }
        if read_some(tcp, buf, 4096).await? == 0 {
            bail!("connection closed before the response head");
        }
    }
}

/// Appends up to `max` bytes read from `tcp` to `buf`; 0 means EOF.
async fn read_some(tcp: &mut TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    // Into spare capacity: no zeroing of the buffer on every read.
    buf.reserve(max);
    let mut limited = (&mut *buf).limit(max);
    tcp.read_buf(&mut limited).await
}

fn request_bytes(method: &str, host: &str, path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}");
    if method != "GET" || !body.is_empty() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A complete response to a plain request.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The decoded body.
    pub body: Vec<u8>,
}

/// Sequential requests over one keep-alive connection, reconnecting after an
/// error or a `Connection: close`.
#[derive(Debug)]
pub struct HttpConn {
    endpoint: Endpoint,
    tcp: Option<TcpStream>,
    buf: Vec<u8>,
}

impl HttpConn {
    /// A connection to `endpoint`'s address (opened on first use).
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, tcp: None, buf: Vec::new() }
    }

    /// `method path` with `body`, waiting for the whole response. Any error
    /// drops the connection so the next request starts clean.
    pub async fn request(
        &mut self,
        dialer: &Dialer,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let result = self.exchange(dialer, method, path, body).await;
        if result.is_err() {
            self.tcp = None;
        }
        result
    }

    /// The endpoint's own path (see [`HttpConn::request`]).
    pub async fn request_default(&mut self, dialer: &Dialer, method: &str, body: &[u8]) -> anyhow::Result<Response> {
        let path = self.endpoint.path.clone();
        self.request(dialer, method, &path, body).await
    }

    async fn exchange(&mut self, dialer: &Dialer, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Response> {
        let mut tcp = match self.tcp.take() {
            Some(tcp) => tcp,
            None => dialer.connect(self.endpoint.addr).await.context("connect")?,
        };
        self.buf.clear();
        tcp.write_all(&request_bytes(method, &self.endpoint.host, path, "", body)).await.context("write request")?;
        let head = read_head(&mut tcp, &mut self.buf).await?;
        let mut body = Vec::new();
        let mut reusable = !head.close;
        if head.chunked {
            let mut dechunk = Dechunker::default();
            let mut pending = std::mem::take(&mut self.buf);
            loop {
                dechunk.feed(&pending, &mut body)?;
                if dechunk.is_done() {
                    break;
                }
                pending.clear();
                if read_some(&mut tcp, &mut pending, 16 * 1024).await? == 0 {
                    bail!("connection closed inside a chunked body");
                }
                if body.len() > MAX_BODY {
                    bail!("response body over {MAX_BODY} bytes");
                }
            }
        } else if let Some(len) = head.content_length {
            if len > MAX_BODY {
                bail!("response body of {len} bytes is over {MAX_BODY}");
            }
            while self.buf.len() < len {
                if read_some(&mut tcp, &mut self.buf, 16 * 1024).await? == 0 {
                    bail!("connection closed inside the response body");
                }
            }
            body = self.buf[..len].to_vec();
        } else {
            // Neither length nor chunks: the body runs to the end of the connection.
            (&mut tcp).take(MAX_BODY as u64).read_to_end(&mut self.buf).await.context("read body")?;
            body = std::mem::take(&mut self.buf);
            reusable = false;
        }
        if reusable {
            self.tcp = Some(tcp);
        }
        Ok(Response { status: head.status, body })
    }
}

/// What one read of a stream produced.
#[derive(Debug)]
pub struct Batch {
    /// Frames completed by the bytes read (possibly none).
    pub frames: Vec<Frame>,
    /// When the newest of those bytes reached this machine's TCP stack
    /// (kernel receive timestamp, microseconds since the UNIX epoch): the
    /// server's delivery time without the load generator's own queueing.
    pub arrived_us: Option<u64>,
}

/// What a stream request got: a 200 stream, or another answer's head.
pub enum Opening {
    Stream(Box<SseStream>),
    Refused(Head),
}

/// One event stream: the request is sent and the head checked by
/// [`SseStream::open`]; [`SseStream::read`] yields parsed frames.
pub struct SseStream {
    tcp: TcpStream,
    head_event_stream: bool,
    chunked: bool,
    dechunk: Dechunker,
    parser: Parser,
    /// Raw bytes read but not yet decoded (only the ones after the head).
    raw: Vec<u8>,
    body: Vec<u8>,
    ended: bool,
}

impl SseStream {
    /// Connects, sends `GET path`, and reads the head; anything but 200 is an error.
    pub async fn open(dialer: &Dialer, endpoint: &Endpoint, path: &str) -> anyhow::Result<SseStream> {
        Self::open_with(dialer, endpoint, path, "").await
    }

    /// Like [`SseStream::open`], with more request headers (`extra`: complete
    /// `Name: value\r\n` lines, e.g. a `Last-Event-ID`).
    pub async fn open_with(dialer: &Dialer, endpoint: &Endpoint, path: &str, extra: &str) -> anyhow::Result<SseStream> {
        match Self::try_open_with(dialer, endpoint, path, extra).await? {
            Opening::Stream(stream) => Ok(*stream),
            Opening::Refused(head) => bail!("stream answered HTTP {}", head.status),
        }
    }

    /// Like [`SseStream::open`], but an answer other than 200 is handed
    /// back (an `EventSource` client tells a fatal answer from a failed
    /// connection, the error here).
    pub async fn try_open(dialer: &Dialer, endpoint: &Endpoint, path: &str) -> anyhow::Result<Opening> {
        Self::try_open_with(dialer, endpoint, path, "").await
    }

    /// [`SseStream::try_open`] with more request headers (as [`SseStream::open_with`]).
    pub async fn try_open_with(
        dialer: &Dialer,
        endpoint: &Endpoint,
        path: &str,
        extra: &str,
    ) -> anyhow::Result<Opening> {
        if endpoint.https {
            bail!("https:// streams need HTTP/2 (--h2-connections)");
        }
        let mut tcp = dialer.connect(endpoint.addr).await.context("connect")?;
        enable_receive_timestamps(&tcp).context("SO_TIMESTAMPNS")?;
        let headers = format!("Accept: text/event-stream\r\n{extra}");
        let req = request_bytes("GET", &endpoint.host, path, &headers, b"");
        tcp.write_all(&req).await.context("write request")?;
        let mut raw = Vec::new();
        let head = read_head(&mut tcp, &mut raw).await?;
        if head.status != 200 {
            return Ok(Opening::Refused(head));
        }
        Ok(Opening::Stream(Box::new(SseStream {
            head_event_stream: head.event_stream,
            tcp,
            chunked: head.chunked,
            dechunk: Dechunker::default(),
            parser: Parser::new(),
            raw,
            body: Vec::new(),
            ended: false,
        })))
    }

    /// The answer's `Content-Type` was `text/event-stream`.
    pub fn is_event_stream(&self) -> bool {
        self.head_event_stream
    }

    /// The frames completed by the next read; `None` once the server ended
    /// the stream or closed the connection.
    pub async fn read(&mut self) -> anyhow::Result<Option<Batch>> {
        if self.ended {
            return Ok(None);
        }
        let mut arrived_us = None;
        if self.raw.is_empty() {
            let (n, at) = self.recv().await.context("read")?;
            if n == 0 {
                self.ended = true;
                return Ok(None);
            }
            arrived_us = at;
        }
        let bytes = std::mem::take(&mut self.raw);
        let frames = if self.chunked {
            self.body.clear();
            self.dechunk.feed(&bytes, &mut self.body)?;
            self.ended = self.dechunk.is_done();
            self.parser.feed(&self.body)
        } else {
            self.parser.feed(&bytes)
        };
        // Keep the read buffer's allocation for the next read.
        self.raw = bytes;
        self.raw.clear();
        Ok(Some(Batch { frames, arrived_us }))
    }

    /// The last `id:` the stream carried so far (the SSE "last event ID").
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    async fn recv(&mut self) -> io::Result<(usize, Option<u64>)> {
        let (tcp, raw) = (&self.tcp, &mut self.raw);
        loop {
            tcp.readable().await?;
            match tcp.try_io(Interest::READABLE, || recv_timestamped(tcp.as_raw_fd(), raw, STREAM_READ)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

/// Asks the kernel to stamp received data (`SCM_TIMESTAMPNS`, wall clock).
fn enable_receive_timestamps(tcp: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int of the given size from a live local.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One `recvmsg` of up to `max` bytes appended to `buf`; returns the count
/// and the receive timestamp of the newest segment read, if the kernel gave one.
fn recv_timestamped(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<(usize, Option<u64>)> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let mut iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len().min(max) };
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid (no name, no buffers yet).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n` spare bytes.
    unsafe { buf.set_len(buf.len() + n) };
    let mut arrived_us = None;
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
                let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
                arrived_us = Some(secs * 1_000_000 + nanos / 1000);
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((n, arrived_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_with_and_without_paths() {
        let e = Endpoint::parse("http://127.0.0.1:3000/stream?request_id=bench-{i}").expect("valid");
        assert_eq!(e.addr, "127.0.0.1:3000".parse().expect("addr"));
        assert_eq!(e.host, "127.0.0.1:3000");
        assert_eq!(e.path_for(7), "/stream?request_id=bench-7");
        assert_eq!(Endpoint::parse("http://localhost:80").expect("valid").path, "/");
        assert_eq!(Endpoint::parse("http://127.0.0.1:80?x=1").expect("valid").path, "/?x=1");
        assert!(Endpoint::parse("https://127.0.0.1:1/").expect("valid").https);
        assert!(!e.https);
        assert!(Endpoint::parse("ftp://127.0.0.1:1/").is_err());
        assert!(Endpoint::parse("http://example.com:80/").is_err());
    }

    #[test]
    fn requests_carry_length_only_when_needed() {
        let get = String::from_utf8(request_bytes("GET", "h:1", "/t", "", b"")).expect("utf8");
        assert_eq!(get, "GET /t HTTP/1.1\r\nHost: h:1\r\n\r\n");
        let post = String::from_utf8(request_bytes("POST", "h:1", "/p", "", b"{}")).expect("utf8");
        assert!(post.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
