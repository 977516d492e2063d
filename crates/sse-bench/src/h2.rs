//! HTTP/2 over TLS for the h2 measurements: a pool of M client connections
//! (hyper over rustls, trusting one certificate) carrying N streams round
//! robin, each stream's body parsed by `sse-wire`; and `sse-bench cert`,
//! the self-signed certificate the gateway under test serves.
//!
//! Owns the TLS and h2 client side only; what a stream's events mean is
//! `fleet`'s. An h2 stream has no kernel receive timestamp of its own (the
//! connection's bytes are decrypted and demultiplexed first), so its
//! batches carry none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sse_wire::Parser;
use tokio::task::JoinHandle;

use crate::client::{Batch, Dialer, Endpoint};

/// Options that switch a scenario's streams to HTTP/2 over TLS.
#[derive(Debug, Clone, clap::Args)]
pub struct H2Args {
    /// Open the streams over this many HTTP/2 connections (round robin);
    /// the stream URL must be `https://`.
    #[arg(long)]
    pub h2_connections: Option<usize>,
    /// PEM certificate to trust for the `https://` URL (e.g. from `sse-bench cert`).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
}

impl H2Args {
    /// The pool for `endpoint`, when `--h2-connections` is given.
    pub async fn pool(&self, dialer: &Dialer, endpoint: &Endpoint) -> anyhow::Result<Option<Arc<H2Pool>>> {
        let Some(connections) = self.h2_connections else {
            if endpoint.https {
                bail!("an https:// stream URL needs --h2-connections");
            }
            return Ok(None);
        };
        let Some(ca) = &self.ca_cert else { bail!("--h2-connections needs --ca-cert") };
        if !endpoint.https {
            bail!("--h2-connections needs an https:// stream URL");
        }
        Ok(Some(H2Pool::connect(dialer, endpoint, connections.max(1), ca).await?))
    }
}

/// Options of `sse-bench cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Directory to write `cert.pem` and `key.pem` to (created if needed).
    #[arg(long)]
    pub dir: PathBuf,
}

/// Writes a self-signed certificate for `localhost` and `127.0.0.1`.
pub fn write_cert(args: &CertArgs) -> anyhow::Result<()> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let (cert_file, key_file) = (args.dir.join("cert.pem"), args.dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).with_context(|| format!("write {}", cert_file.display()))?;
    std::fs::write(&key_file, signing_key.serialize_pem()).with_context(|| format!("write {}", key_file.display()))?;
    println!("cert {}", cert_file.display());
    println!("key {}", key_file.display());
    Ok(())
}

/// M HTTP/2 connections to one server; streams are spread over them.
pub struct H2Pool {
    senders: Vec<http2::SendRequest<Empty<Bytes>>>,
    drivers: Vec<JoinHandle<()>>,
    next: AtomicUsize,
    authority: String,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("connections", &self.senders.len()).field("authority", &self.authority).finish()
    }
}

impl Drop for H2Pool {
    fn drop(&mut self) {
        for d in &self.drivers {
            d.abort();
        }
    }
}

impl H2Pool {
    /// Opens `connections` TLS connections that must negotiate `h2`.
    pub async fn connect(
        dialer: &Dialer,
        endpoint: &Endpoint,
        connections: usize,
        ca_cert: &Path,
    ) -> anyhow::Result<Arc<H2Pool>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_cert).with_context(|| format!("read {}", ca_cert.display()))? {
            roots.add(cert.with_context(|| format!("parse {}", ca_cert.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        // The certificate names localhost and 127.0.0.1; any loopback URL verifies against localhost.
        let name = ServerName::try_from("localhost")?;
        let (mut senders, mut drivers) = (Vec::new(), Vec::new());
        for _ in 0..connections {
            let tcp = dialer.connect(endpoint.addr).await.context("connect")?;
            let tls = connector.connect(name.clone(), tcp).await.context("TLS handshake")?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                bail!("the server did not negotiate h2");
            }
            let (sender, conn) =
                http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tls)).await.context("h2 handshake")?;
            drivers.push(tokio::spawn(async move { drop(conn.await) }));
            senders.push(sender);
        }
        Ok(Arc::new(H2Pool { senders, drivers, next: AtomicUsize::new(0), authority: endpoint.host.clone() }))
    }

    /// The number of connections.
    pub fn connections(&self) -> usize {
        self.senders.len()
    }

    /// Opens `GET path` on the next connection; anything but 200 is an error.
    pub async fn open(&self, path: &str) -> anyhow::Result<H2Stream> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let mut sender = self.senders[i].clone();
        let req = http::Request::get(format!("https://{}{path}", self.authority))
            .header("accept", "text/event-stream")
            .body(Empty::new())?;
        sender.ready().await.context("h2 connection")?;
        let resp = sender.send_request(req).await.context("h2 request")?;
        if resp.status() != 200 {
            bail!("stream answered HTTP {}", resp.status().as_u16());
        }
        Ok(H2Stream { body: resp.into_body(), parser: Parser::new() })
    }
}

/// One event stream on an h2 connection.
pub struct H2Stream {
    body: Incoming,
    parser: Parser,
}

impl H2Stream {
    /// The frames completed by the next data frame; `None` once the stream ended.
    pub async fn read(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e).context("h2 stream"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(Batch { frames: self.parser.feed(&data), arrived_us: None }));
                    }
                }
            }
        }
    }
}
