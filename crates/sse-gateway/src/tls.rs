//! TLS for the public listener (extension): the certificate chain and key
//! read from PEM files once at start, the rustls server configuration (ring
//! provider, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`), and the handshake.
//!
//! What is served over the TLS connection is `hyper_path`'s business; this
//! module only says which protocol the client chose. The files are read
//! once: a renewed certificate needs a restart (see docs/OPERATIONS.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// ALPN protocol ids offered, in the server's order of preference.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A certificate chain and its key, loaded and checked, ready to serve.
/// Two are equal when they were read from the same files.
#[derive(Clone)]
pub struct TlsConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
    server: Arc<ServerConfig>,
}

/// Why the certificate or key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        /// "certificate file" or "key file".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The file has no PEM section of the expected kind, or a broken one.
    #[error("{path} holds no usable PEM {what}: {reason}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// What the PEM reader found.
        reason: String,
    },
    /// rustls refused the pair (an unsupported key, or a key that does not
    /// belong to the certificate).
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("TlsConfig").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file && self.key_file == other.key_file
    }
}

impl Eq for TlsConfig {}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read { what, path: path.to_owned(), reason: e.to_string() })
}

impl TlsConfig {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1) and checks that they belong together.
    pub fn load(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Result<TlsConfig, TlsError> {
        let (cert_file, key_file) = (cert_file.into(), key_file.into());
        let pem_error = |what, path: &Path, reason: String| TlsError::Pem { what, path: path.to_owned(), reason };
        let certs = CertificateDer::pem_slice_iter(&read("certificate file", &cert_file)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("certificate", &cert_file, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem_error("certificate", &cert_file, "no CERTIFICATE section".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read("key file", &key_file)?)
            .map_err(|e| pem_error("private key", &key_file, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair_error =
            |e: rustls::Error| TlsError::Pair { cert: cert_file.clone(), key: key_file.clone(), reason: e.to_string() };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(pair_error)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(pair_error)?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(TlsConfig { cert_file, key_file, server: Arc::new(server) })
    }

    /// The certificate file it was read from.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// The key file it was read from.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Runs the server side of the handshake; true when the client chose `h2`.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> std::io::Result<(TlsStream<TcpStream>, bool)> {
        let tls = TlsAcceptor::from(Arc::clone(&self.server)).accept(tcp).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
        Ok((tls, h2))
    }
}
