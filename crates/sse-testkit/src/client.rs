//! Raw HTTP/1.1 over TCP: byte-exact SSE streams and plain JSON requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::Value;
use sse_wire::{Dechunker, Frame, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::within;

/// A response head plus whatever body bytes arrived with it.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (complete for [`request`]; for streams, see [`SseClient`]).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<HttpResponse> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(buf) {
            let head = HttpResponse {
                status: resp.code.unwrap_or(0),
                reason: resp.reason.unwrap_or("").to_owned(),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
                body: Vec::new(),
            };
            buf.drain(..n);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    within(&format!("{method} {path}"), async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        // A server may answer (e.g. 413, 431) and stop reading before the
        // request is fully written; the answer is what the test checks.
        let _ = tcp.write_all(req.as_bytes()).await;
        let _ = tcp.write_all(body).await;
        let mut buf = Vec::new();
        let mut resp = read_head(&mut tcp, &mut buf).await.expect("response head");
        tcp.read_to_end(&mut buf).await.expect("read body");
        resp.body = if resp.header("transfer-encoding") == Some("chunked") {
            let mut body = Vec::new();
            Dechunker::default().feed(&buf, &mut body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            body
        } else {
            buf
        };
        resp
    })
    .await
}

/// POSTs a JSON value to `path`.
pub async fn send_json(addr: SocketAddr, path: &str, body: &Value) -> HttpResponse {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes()).await
}

/// Loopback source address `i` of 19 (127.0.0.2 to 127.0.0.20), for tests
/// that open thousands of connections: spread over several source
/// addresses, they (and their TIME_WAIT leftovers) cannot exhaust one
/// address's ephemeral ports, whatever else the test run has open.
pub fn loopback_source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 19) as u8)
}

/// Connects to `addr` from `source` (any port).
pub async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(addr).await
}

/// A client stream: the response head, then the decoded SSE body.
pub struct SseClient {
    tcp: TcpStream,
    /// The response head.
    pub head: HttpResponse,
    buf: Vec<u8>,
    dechunk: Dechunker,
    chunked: bool,
    parser: Parser,
    frames: std::collections::VecDeque<Frame>,
    raw: Vec<u8>,
    eof: bool,
}

impl SseClient {
    /// Opens `GET path` with extra headers and reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> SseClient {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self::open_on(tcp, addr, "GET", path, headers).await
    }

    /// Sends the request on an existing socket (e.g. one with a tiny receive buffer).
    pub async fn open_on(
        mut tcp: TcpStream,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> SseClient {
        Self::send_head(&mut tcp, addr, method, path, headers).await;
        let mut buf = Vec::new();
        let head = within("the response head", read_head(&mut tcp, &mut buf)).await.expect("response head");
        Self::with_head(tcp, head, &buf)
    }

    /// Like [`SseClient::open_on`] for a client that expects failures: `None`
    /// when the request cannot be written or the connection ends before a
    /// response head; no time bound (the caller bounds the whole).
    pub async fn try_open_on(mut tcp: TcpStream, addr: SocketAddr, path: &str) -> Option<SseClient> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let head = read_head(&mut tcp, &mut buf).await?;
        Some(Self::with_head(tcp, head, &buf))
    }

    fn with_head(tcp: TcpStream, head: HttpResponse, buf: &[u8]) -> SseClient {
        let chunked = head.header("transfer-encoding") == Some("chunked");
        let mut c = SseClient {
            tcp,
            head,
            buf: Vec::new(),
            dechunk: Dechunker::default(),
            chunked,
            parser: Parser::new(),
            frames: Default::default(),
            raw: Vec::new(),
            eof: false,
        };
        c.ingest(buf);
        c
    }

    /// Writes a request head without reading anything back.
    pub async fn send_head(tcp: &mut TcpStream, addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &[u8])]) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n").into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        tcp.write_all(&req).await.expect("write request");
    }

    fn ingest(&mut self, bytes: &[u8]) {
        let body = if self.chunked {
            let mut body = Vec::new();
            self.dechunk.feed(bytes, &mut body).unwrap_or_else(|e| panic!("stream body: {e}"));
            body
        } else {
            bytes.to_vec()
        };
        self.raw.extend_from_slice(&body);
        self.buf.extend_from_slice(&body);
        let frames = self.parser.feed(&body);
        self.frames.extend(frames);
    }

    async fn read_more(&mut self) -> bool {
        if self.eof || self.dechunk.is_done() {
            return false;
        }
        let mut chunk = [0u8; 16384];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.ingest(&chunk[..n]);
                true
            }
        }
    }

    /// The next frame (event, comment or retry); panics if the stream ends
    /// first or nothing arrives within [`crate::WAIT`].
    pub async fn next_frame(&mut self) -> Frame {
        self.next_frame_within(crate::WAIT).await
    }

    /// The next frame, waiting at most `limit`: for a wait the test bounds
    /// itself because it can legitimately take longer than [`crate::WAIT`]
    /// (a reconnect backoff). Panics if the stream ends or the limit passes.
    pub async fn next_frame_within(&mut self, limit: std::time::Duration) -> Frame {
        match self.frame_within(limit).await {
            Some(f) => f,
            None => panic!("no SSE frame within {limit:?}; body so far: {:?}", String::from_utf8_lossy(&self.raw)),
        }
    }

    /// The next frame if one arrives within `limit`, else `None` (for a test
    /// that watches a stream for a while); panics if the stream ends.
    pub async fn frame_within(&mut self, limit: std::time::Duration) -> Option<Frame> {
        // Cancelling the read is safe: bytes are taken out of the socket and
        // decoded in one step, after the read completed.
        let read = async {
            match self.frame_or_end().await {
                Some(f) => f,
                None => panic!("stream ended; body so far: {:?}", String::from_utf8_lossy(&self.raw)),
            }
        };
        tokio::time::timeout(limit, read).await.ok()
    }

    /// The next frame, or `None` once the stream ended (terminating chunk,
    /// close or reset); no time bound (the caller bounds the whole).
    pub async fn frame_or_end(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Some(f);
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    /// The next dispatched event, skipping comments and retry hints.
    pub async fn next_event(&mut self) -> sse_wire::ParsedEvent {
        loop {
            if let Frame::Event(e) = self.next_frame().await {
                return e;
            }
        }
    }

    /// Reads until the body ends (terminating chunk or EOF); returns the frames left.
    pub async fn read_to_end(&mut self) -> Vec<Frame> {
        within("the stream to end", async { while self.read_more().await {} }).await;
        self.frames.drain(..).collect()
    }

    /// True once the terminating chunk was read.
    pub fn ended_cleanly(&self) -> bool {
        self.dechunk.is_done()
    }

    /// Every decoded body byte received so far.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Closes the connection (the client goes away).
    pub async fn close(mut self) {
        let _ = self.tcp.shutdown().await;
    }
}
