//! HTTPS for black-box tests: a self-signed certificate made at test time
//! ([`TestCert`], PEM files for `TLS_CERT_FILE`/`TLS_KEY_FILE`), and a hyper
//! client connection over rustls that trusts it ([`HttpsConnection`]),
//! speaking HTTP/2 or HTTP/1.1 as ALPN decides; over HTTP/2 every request is
//! a stream multiplexed on the one connection. SSE bodies are parsed by
//! `sse-wire` ([`TlsSseStream`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use sse_wire::{Frame, Parser};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::{HttpResponse, within};

/// A self-signed certificate for `127.0.0.1` and `localhost`, and its key,
/// as PEM files in a temporary directory (removed on drop).
pub struct TestCert {
    dir: PathBuf,
    /// The PEM certificate (`TLS_CERT_FILE`).
    pub cert_file: PathBuf,
    /// The PEM private key, PKCS#8 (`TLS_KEY_FILE`).
    pub key_file: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    /// Generates a fresh key pair and certificate.
    pub fn generate() -> TestCert {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).expect("generate a self-signed certificate");
        let dir = std::env::temp_dir().join(format!("sse-test-cert-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert.pem");
        std::fs::write(&key_file, signing_key.serialize_pem()).expect("write key.pem");
        TestCert { dir, cert_file, key_file, der: cert.der().clone() }
    }

    /// The files as the gateway's and the hub's settings.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("TLS_CERT_FILE", self.cert_file.to_string_lossy().into_owned()),
            ("TLS_KEY_FILE", self.key_file.to_string_lossy().into_owned()),
        ]
    }

    /// The certificate in DER form (for a client's trust store).
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1`, like a browser.
    H2,
    /// `http/1.1` only.
    Http11,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection to a server whose certificate is a [`TestCert`].
pub struct HttpsConnection {
    sender: Sender,
    addr: SocketAddr,
    alpn: Option<Vec<u8>>,
    driver: JoinHandle<()>,
}

impl Drop for HttpsConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpsConnection {
    /// Connects, completes the handshake (checking the certificate against
    /// `cert` for the name `localhost`) and starts the protocol ALPN chose.
    pub async fn connect(addr: SocketAddr, cert: &TestCert, alpn: Alpn) -> HttpsConnection {
        within("an HTTPS connection", Self::try_connect(addr, cert, alpn))
            .await
            .unwrap_or_else(|e| panic!("HTTPS connection to {addr}: {e}"))
    }

    /// Like [`HttpsConnection::connect`], returning the failure (a refused handshake).
    pub async fn try_connect(addr: SocketAddr, cert: &TestCert, alpn: Alpn) -> std::io::Result<HttpsConnection> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).map_err(std::io::Error::other)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = match alpn {
            Alpn::H2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http11 => vec![b"http/1.1".to_vec()],
        };
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let (sender, driver) = if negotiated.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(std::io::Error::other)?;
            (Sender::H2(sender), tokio::spawn(async move { drop(conn.await) }))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            (Sender::H1(sender), tokio::spawn(async move { drop(conn.await) }))
        };
        Ok(HttpsConnection { sender, addr, alpn: negotiated, driver })
    }

    /// The protocol ALPN chose (`h2`, `http/1.1`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// Sends a request and returns the response with its body unread. Over
    /// HTTP/2 each call is a new stream on this connection; over HTTP/1.1
    /// the previous response must be finished first.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Response<Incoming> {
        let mut req = Request::builder().method(method);
        req = match &self.sender {
            // HTTP/2 carries the authority in the URI (`:authority`), HTTP/1.1 in Host.
            Sender::H2(_) => req.uri(format!("https://localhost:{}{path}", self.addr.port())),
            Sender::H1(_) => req.uri(path).header("host", format!("localhost:{}", self.addr.port())),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).expect("request");
        let sent = async {
            match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    let mut s = s.clone();
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        };
        within(&format!("the answer to {method} {path}"), sent)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} over TLS: {e}"))
    }

    /// A whole request: status, headers and complete body.
    pub async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        let resp = self.send(method, path, headers, body).await;
        let status = resp.status();
        let headers = header_list(resp.headers());
        let body = within(&format!("the body of {method} {path}"), resp.into_body().collect())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} body: {e}"))
            .to_bytes()
            .to_vec();
        HttpResponse { status: status.as_u16(), reason: status.canonical_reason().unwrap_or("").into(), headers, body }
    }

    /// Opens `GET path` as an event stream and returns it once its head is in.
    pub async fn sse(&mut self, path: &str) -> TlsSseStream {
        let resp = self.send("GET", path, &[("accept", "text/event-stream")], b"").await;
        let (parts, body) = resp.into_parts();
        TlsSseStream {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
            parser: Parser::new(),
            frames: VecDeque::new(),
            raw: Vec::new(),
            ended: false,
            error: None,
        }
    }
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

/// An event stream over an [`HttpsConnection`]. Dropping it cancels the
/// request (HTTP/2: a `RST_STREAM` for this stream only).
pub struct TlsSseStream {
    /// Response status.
    pub status: u16,
    /// Response version (`HTTP/2.0` over h2).
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    frames: VecDeque<Frame>,
    raw: Vec<u8>,
    ended: bool,
    error: Option<String>,
}

impl TlsSseStream {
    /// Why the body broke (a reset stream or connection), once it has.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Header names and values, as [`HttpResponse::headers`].
    pub fn header_list(&self) -> Vec<(String, String)> {
        header_list(&self.headers)
    }

    async fn read_more(&mut self) -> bool {
        while !self.ended {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.raw.extend_from_slice(&data);
                        let frames = self.parser.feed(&data);
                        self.frames.extend(frames);
                        return true;
                    }
                }
                Some(Err(e)) => {
                    self.error = Some(e.to_string());
                    self.ended = true;
                }
                None => self.ended = true,
            }
        }
        false
    }

    /// The next frame if one arrives within `limit`, else `None`; panics if
    /// the stream ends first.
    pub async fn frame_within(&mut self, limit: std::time::Duration) -> Option<Frame> {
        let read = async {
            loop {
                if let Some(f) = self.frames.pop_front() {
                    return f;
                }
                if !self.read_more().await {
                    panic!("stream ended; body so far: {:?}", String::from_utf8_lossy(&self.raw));
                }
            }
        };
        tokio::time::timeout(limit, read).await.ok()
    }

    /// The next frame (event, comment or retry), within [`crate::WAIT`].
    pub async fn next_frame(&mut self) -> Frame {
        match self.frame_within(crate::WAIT).await {
            Some(f) => f,
            None => {
                panic!("no SSE frame within {:?}; body so far: {:?}", crate::WAIT, String::from_utf8_lossy(&self.raw))
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

    /// Reads until the body ends; returns the frames not yet taken.
    pub async fn read_to_end(&mut self) -> Vec<Frame> {
        within("the stream to end", async { while self.read_more().await {} }).await;
        self.frames.drain(..).collect()
    }

    /// Every body byte received so far.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}
