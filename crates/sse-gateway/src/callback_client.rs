//! The HTTP/1.1 client of the backend callbacks: `POST` a JSON body to
//! `CALLBACK_URL` over a kept-alive TCP connection and read the answer whole.
//!
//! Why not hyper-util's pooled client: every stream costs a connect and a
//! disconnect callback, and there each request went from the calling task to
//! the connection's own task and back (a channel, a pool lock, two wake-ups),
//! with a `Request`, a `HeaderMap` and a response built around a body of a
//! few hundred bytes. Here the calling task writes the request in one write
//! and reads the answer itself (issue 12; profile in docs/PERFORMANCE.md).
//!
//! What it speaks, and what it does not: `http://` URLs only, as before (an
//! `https://` one fails every call); the request bytes hyper wrote
//! (`content-type`, `host`, `content-length`, lower case, in that order);
//! answers framed by `content-length`, by chunked encoding or by the end of
//! the connection; 1xx answers are skipped. A connection is reused only after
//! a complete answer that keeps it alive (HTTP/1.1 without `connection:
//! close`, HTTP/1.0 with `connection: keep-alive`) and nothing after it.
//!
//! Idle connections wait in a last-in-first-out list. There is no cap of its
//! own: every callback holds one of the gateway's callback slots (`pacing`)
//! while it runs, so there are never more connections than slots. Nothing
//! watches an idle connection (hyper's connection task did): one the backend
//! closed is seen and dropped when it is next taken, and those idle for
//! longer than [`IDLE_TIMEOUT`] are closed at the next callback, so a
//! gateway with no callbacks at all may keep a few closed ones open.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a connection may stay idle before it is closed (hyper's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest answer head read; a larger one fails the call.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in an answer head.
const MAX_HEADERS: usize = 100;

/// Why a call got no answer (the caller treats each as "backend unavailable").
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The URL is not `http://host[:port]/...`.
    #[error("invalid callback URL: only http:// with a host is supported")]
    NotHttp,
    /// The TCP connection could not be made.
    #[error("tcp connect error: {0}")]
    Connect(io::Error),
    /// Writing the request or reading the answer head failed.
    #[error("connection error: {0}")]
    Io(io::Error),
    /// The backend closed the connection before sending any byte of an answer.
    #[error("connection closed before any answer")]
    Closed,
    /// The answer head is not HTTP/1.x, or is too large.
    #[error("invalid answer: {0}")]
    Invalid(&'static str),
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    /// The reason phrase when it is not the status's standard one (as hyper
    /// reports it).
    pub(crate) phrase: Option<String>,
    /// Empty when the body was larger than the caller's limit or did not
    /// arrive whole.
    pub(crate) body: Bytes,
}

struct Idle {
    tcp: TcpStream,
    since: Instant,
}

/// One callback URL's connections.
pub(crate) struct CallbackClient {
    /// Host and port to connect to; `None` when the URL is not usable.
    addr: Option<(String, u16)>,
    /// The request up to the content length's digits.
    head: Vec<u8>,
    idle: Mutex<Vec<Idle>>,
}

impl CallbackClient {
    pub(crate) fn new(url: &http::Uri) -> Self {
        let host = url.host().filter(|h| !h.is_empty() && url.scheme_str() == Some("http"));
        let addr = host.map(|h| {
            // `[::1]` in a URL, `::1` for the resolver.
            let bare = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h);
            (bare.to_owned(), url.port_u16().unwrap_or(80))
        });
        let target = url.path_and_query().map_or("/", |p| p.as_str());
        let target = if target.is_empty() { "/" } else { target };
        let host_header = match (host, url.port_u16()) {
            (Some(h), Some(port)) if port != 80 => format!("{h}:{port}"),
            (Some(h), _) => h.to_owned(),
            (None, _) => String::new(),
        };
        let head = format!(
            "POST {target} HTTP/1.1\r\ncontent-type: application/json\r\nhost: {host_header}\r\ncontent-length: "
        )
        .into_bytes();
        Self { addr, head, idle: Mutex::new(Vec::new()) }
    }

    /// Posts `body` and reads the answer; a body over `limit` bytes reads as empty.
    pub(crate) async fn post_json(&self, body: &[u8], limit: usize) -> Result<Answer, CallError> {
        let Some((host, port)) = &self.addr else { return Err(CallError::NotHttp) };
        let mut request = Vec::with_capacity(self.head.len() + 24 + body.len());
        request.extend_from_slice(&self.head);
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        if let Some(tcp) = self.take_idle() {
            match self.call(tcp, &request, limit).await {
                // The backend closed the kept-alive connection as the request
                // went out (its idle timeout): no byte came back, so it did
                // not take the request. Once more on a new connection, as
                // hyper's pool did.
                Err(CallError::Closed | CallError::Io(_)) => {}
                done => return done,
            }
        }
        self.call(connect(host, *port).await?, &request, limit).await
    }

    async fn call(&self, mut tcp: TcpStream, request: &[u8], limit: usize) -> Result<Answer, CallError> {
        tcp.write_all(request).await.map_err(CallError::Io)?;
        let (answer, reusable) = read_answer(&mut tcp, limit).await?;
        if reusable {
            self.put_idle(tcp);
        }
        Ok(answer)
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut dropped = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let Some(conn) = idle.pop() else { break None };
                if conn.since.elapsed() >= IDLE_TIMEOUT {
                    // The rest are older still.
                    dropped.push(conn);
                    dropped.append(&mut idle);
                    break None;
                }
                if still_open(&conn.tcp) {
                    break Some(conn.tcp);
                }
                dropped.push(conn);
            }
        };
        // Closed outside the lock.
        drop(dropped);
        found
    }

    fn put_idle(&self, tcp: TcpStream) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let stale = idle.iter().take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT).count();
            let expired = idle.drain(..stale).collect();
            idle.push(Idle { tcp, since: now });
            expired
        };
        drop(expired);
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, CallError> {
    let tcp = TcpStream::connect((host, port)).await.map_err(CallError::Connect)?;
    // One write per request, but no reason to let Nagle hold any of it.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// False when the backend closed the idle connection (or sent something
/// unasked). Costs no system call while the socket has not been readable.
fn still_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed answer head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    len: usize,
    status: u16,
    phrase: Option<String>,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a complete answer head at the start of `buf` (`None`: more bytes needed).
fn parse_head(buf: &[u8]) -> Result<Option<Head>, CallError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(CallError::Invalid("too many headers")),
        Err(_) => return Err(CallError::Invalid("not an HTTP/1.x answer head")),
    };
    let status = res.code.unwrap_or(0);
    let canonical = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
    let phrase = res.reason.filter(|r| Some(*r) != canonical).map(str::to_owned);
    let http11 = res.version == Some(1);
    let (mut close, mut keep) = (false, false);
    let (mut chunked, mut has_te, mut length) = (false, false, None::<u64>);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            // Only the last coding decides whether the body is chunked.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"").trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(CallError::Invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(CallError::Invalid("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    let framing = match (status, has_te, chunked, length) {
        (100..=199 | 204 | 304, ..) => Framing::Empty,
        (_, true, true, _) => Framing::Chunked,
        (_, true, false, _) => Framing::UntilClose,
        (_, false, _, Some(n)) => Framing::Length(n),
        (_, false, _, None) => Framing::UntilClose,
    };
    let keep_alive = framing != Framing::UntilClose && if http11 { !close } else { keep };
    Ok(Some(Head { len, status, phrase, framing, keep_alive }))
}

/// Reads more bytes into `buf`; `Ok(0)` at the end of the connection.
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(4096);
    tcp.read_buf(buf).await
}

/// Reads one answer (after any 1xx ones); true when the connection can
/// carry the next request.
async fn read_answer(tcp: &mut TcpStream, limit: usize) -> Result<(Answer, bool), CallError> {
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        match parse_head(&buf)? {
            Some(head) if (100..200).contains(&head.status) => {
                if head.status == 101 {
                    return Err(CallError::Invalid("unexpected 101 Switching Protocols"));
                }
                buf.drain(..head.len);
            }
            Some(head) => break head,
            None if buf.len() >= MAX_HEAD_BYTES => return Err(CallError::Invalid("answer head too large")),
            None => {
                if read_more(tcp, &mut buf).await.map_err(CallError::Io)? == 0 {
                    return Err(if buf.is_empty() {
                        CallError::Closed
                    } else {
                        CallError::Invalid("answer cut short")
                    });
                }
            }
        }
    };
    let status = http::StatusCode::from_u16(head.status).map_err(|_| CallError::Invalid("bad status"))?;
    buf.drain(..head.len);
    // A body that fails to arrive whole or is over the limit reads as empty,
    // and the connection is not reused.
    let (body, complete) = match head.framing {
        Framing::Empty => (Some(Bytes::new()), buf.is_empty()),
        Framing::Length(n) => read_length(tcp, buf, n, limit).await,
        Framing::Chunked => read_chunked(tcp, buf, limit).await,
        Framing::UntilClose => (read_until_close(tcp, buf, limit).await, false),
    };
    let reusable = head.keep_alive && complete && body.is_some();
    Ok((Answer { status, phrase: head.phrase, body: body.unwrap_or_default() }, reusable))
}

/// A `content-length` body; the flag: nothing followed it.
async fn read_length(tcp: &mut TcpStream, mut buf: Vec<u8>, n: u64, limit: usize) -> (Option<Bytes>, bool) {
    let Some(n) = usize::try_from(n).ok().filter(|n| *n <= limit) else { return (None, false) };
    while buf.len() < n {
        match read_more(tcp, &mut buf).await {
            Ok(0) | Err(_) => return (None, false),
            Ok(_) => {}
        }
    }
    let complete = buf.len() == n;
    buf.truncate(n);
    (Some(Bytes::from(buf)), complete)
}

async fn read_until_close(tcp: &mut TcpStream, mut buf: Vec<u8>, limit: usize) -> Option<Bytes> {
    loop {
        if buf.len() > limit {
            return None;
        }
        match read_more(tcp, &mut buf).await {
            Ok(0) => return Some(Bytes::from(buf)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Index just past the next CRLF at or after `from`, reading as needed.
async fn line_end(tcp: &mut TcpStream, buf: &mut Vec<u8>, from: usize) -> Option<usize> {
    let mut searched = from;
    loop {
        if let Some(i) = buf[searched..].windows(2).position(|w| w == b"\r\n") {
            return Some(searched + i + 2);
        }
        // Chunk-size and trailer lines are short; a runaway one is an error.
        if buf.len() - from > MAX_HEAD_BYTES {
            return None;
        }
        searched = buf.len().saturating_sub(1).max(from);
        match read_more(tcp, buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A chunked body (extensions and trailers skipped); the flag: nothing followed it.
async fn read_chunked(tcp: &mut TcpStream, mut buf: Vec<u8>, limit: usize) -> (Option<Bytes>, bool) {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(end) = line_end(tcp, &mut buf, pos).await else { return (None, false) };
        let Some(size) = chunk_size(&buf[pos..end - 2]) else { return (None, false) };
        pos = end;
        if size == 0 {
            // Trailer lines up to the empty one.
            loop {
                let Some(end) = line_end(tcp, &mut buf, pos).await else { return (None, false) };
                let empty = end - pos == 2;
                pos = end;
                if empty {
                    return (Some(Bytes::from(body)), pos == buf.len());
                }
            }
        }
        let Some(size) = usize::try_from(size).ok().filter(|s| body.len() + s <= limit) else { return (None, false) };
        while buf.len() < pos + size + 2 {
            match read_more(tcp, &mut buf).await {
                Ok(0) | Err(_) => return (None, false),
                Ok(_) => {}
            }
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return (None, false);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// The size of a chunk-size line (hex, then optional `;extensions`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|b| *b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn heads_are_framed_like_http_1_1_says() {
        let head = |raw: &str| parse_head(raw.as_bytes()).expect("valid").expect("complete");
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!((h.status, h.framing, h.keep_alive, h.phrase, h.len), (200, Framing::Length(2), true, None, 38));
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), false));
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0 closes unless told otherwise");
        assert!(head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n").keep_alive);
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Empty);
        assert_eq!(head("HTTP/1.1 401 Token expired\r\n\r\n").phrase.as_deref(), Some("Token expired"));
        assert_eq!(head("HTTP/1.1 401 \r\n\r\n").phrase.as_deref(), Some(""), "as hyper: not the standard phrase");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").expect("partial is fine").is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert_eq!((chunk_size(b"1a;x=y"), chunk_size(b""), chunk_size(b"zz")), (Some(26), None, None));
    }

    /// A backend that answers each request read on a connection with the
    /// next of `answers` (`<hang up>`: close the connection instead of
    /// reading the next request; `<read and hang up>`: read it, then close
    /// without an answer), and reports every request (connection
    /// number, bytes).
    async fn scripted(
        answers: Vec<&'static str>,
    ) -> (http::Uri, tokio::sync::mpsc::UnboundedReceiver<(usize, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/cb?k=v", listener.local_addr().expect("addr")).parse().expect("uri");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            let mut conn_no = 0;
            while let Ok((mut tcp, _)) = listener.accept().await {
                conn_no += 1;
                loop {
                    if answers.as_slice().first() == Some(&"<hang up>") {
                        answers.next();
                        break;
                    }
                    let mut buf = vec![0u8; 4096];
                    let Ok(n) = tcp.read(&mut buf).await else { break };
                    if n == 0 {
                        break;
                    }
                    let _ = tx.send((conn_no, buf[..n].to_vec()));
                    let Some(answer) = answers.next() else { return };
                    if answer == "<read and hang up>" {
                        break;
                    }
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn requests_are_hypers_bytes_and_keep_alive_answers_reuse_the_connection() {
        let (url, mut seen) = scripted(vec![
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
            "HTTP/1.1 403 Not you\r\ntransfer-encoding: chunked\r\n\r\n3;e=1\r\n{\"a\r\n2\r\n\":\r\n2\r\n1}\r\n0\r\nx-t: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\nuntil the end",
            "<hang up>",
        ])
        .await;
        let client = CallbackClient::new(&url);
        let a = client.post_json(b"{\"x\":1}", 1024).await.expect("answer");
        assert_eq!((a.status.as_u16(), a.phrase, &a.body[..]), (200, None, &b"{}"[..]));
        let (conn, req) = seen.recv().await.expect("request");
        let port = url.port_u16().expect("port");
        let expected = format!(
            "POST /cb?k=v HTTP/1.1\r\ncontent-type: application/json\r\nhost: 127.0.0.1:{port}\r\n\
             content-length: 7\r\n\r\n{{\"x\":1}}"
        );
        assert_eq!((conn, String::from_utf8_lossy(&req).into_owned()), (1, expected));
        let a = client.post_json(b"{}", 1024).await.expect("answer");
        assert_eq!((a.status.as_u16(), a.phrase.as_deref(), &a.body[..]), (403, Some("Not you"), &b"{\"a\":1}"[..]));
        assert_eq!(seen.recv().await.expect("request").0, 1, "kept alive");
        client.post_json(b"{}", 1024).await.expect("answer");
        assert_eq!(seen.recv().await.expect("request").0, 1, "still the first connection");
        let a = client.post_json(b"{}", 1024).await.expect("answer");
        assert_eq!(seen.recv().await.expect("request").0, 2, "the close was honoured");
        assert_eq!(&a.body[..], b"until the end");
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_while_idle_is_not_used() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (url, mut seen) = scripted(vec![ok, "<hang up>", ok]).await;
        let client = CallbackClient::new(&url);
        client.post_json(b"{}", 1024).await.expect("answer");
        assert_eq!(seen.recv().await.expect("request").0, 1);
        // Wait until the backend's close has reached the idle connection.
        let idle = client.idle.lock().expect("lock").pop().expect("kept alive");
        idle.tcp.readable().await.expect("readable");
        client.idle.lock().expect("lock").push(idle);
        let a = client.post_json(b"{}", 1024).await.expect("answer on a new connection");
        assert_eq!(a.status.as_u16(), 200);
        assert_eq!(seen.recv().await.expect("request").0, 2);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_closed_as_the_request_goes_out_is_retried_once_on_a_new_one() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (url, mut seen) = scripted(vec![ok, "<read and hang up>", ok, "<read and hang up>"]).await;
        let client = CallbackClient::new(&url);
        client.post_json(b"{}", 1024).await.expect("answer");
        assert_eq!(seen.recv().await.expect("request").0, 1);
        let a = client.post_json(b"{}", 1024).await.expect("answer after one retry");
        assert_eq!(a.status.as_u16(), 200);
        assert_eq!(seen.recv().await.expect("request").0, 1, "sent on the kept-alive connection first");
        assert_eq!(seen.recv().await.expect("request").0, 2, "then once on a new connection");
        // A new connection that gets no answer is not retried.
        client.idle.lock().expect("lock").clear();
        assert!(matches!(client.post_json(b"{}", 1024).await, Err(CallError::Closed)));
        assert_eq!(seen.recv().await.expect("request").0, 3);
        assert!(seen.try_recv().is_err(), "sent once");
    }

    #[tokio::test]
    async fn too_large_or_broken_bodies_read_as_empty() {
        let (url, _seen) = scripted(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let client = CallbackClient::new(&url);
        let a = client.post_json(b"{}", 1024).await.expect("answer");
        assert_eq!((a.status.as_u16(), a.body.len()), (200, 0));
        let a = client.post_json(b"{}", 1024).await.expect("answer on a new connection");
        assert_eq!((a.status.as_u16(), a.body.len()), (200, 0));
        assert!(client.idle.lock().expect("lock").is_empty(), "neither connection is kept");
    }

    #[tokio::test]
    async fn no_backend_and_non_http_urls_are_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url: http::Uri = format!("http://{}/cb", listener.local_addr().expect("addr")).parse().expect("uri");
        drop(listener);
        let err = CallbackClient::new(&url).post_json(b"{}", 10).await.expect_err("nobody listens");
        assert!(matches!(err, CallError::Connect(_)), "{err}");
        let https: http::Uri = "https://127.0.0.1:1/cb".parse().expect("uri");
        assert!(matches!(CallbackClient::new(&https).post_json(b"{}", 10).await, Err(CallError::NotHttp)));
    }
}
