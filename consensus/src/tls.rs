//! Mutual TLS for the Raft transport (rustls with the ring provider): every
//! director presents a certificate signed by the cluster's CA and accepts
//! only peers that do the same. Plaintext only when the configuration says
//! `insecure: true`, with a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Certificate material, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs every director's certificate.
    pub ca: PathBuf,
    /// This director's certificate (chain).
    pub cert: PathBuf,
    /// This director's private key.
    pub key: PathBuf,
}

/// How the transport is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Mutual TLS.
    Mutual(TlsFiles),
    /// Plaintext (`insecure: true` in the configuration).
    Insecure,
}

/// A byte stream the transport can frame: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// The loaded TLS state of one node.
#[derive(Clone)]
pub struct Tls {
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mutual", &self.acceptor.is_some())
            .finish()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading the {what} {}: {e}", path.display()))
}

impl Tls {
    /// Loads the certificates (or, for `Insecure`, warns once).
    pub fn load(security: &Security) -> Result<Tls, String> {
        let files = match security {
            Security::Insecure => {
                eprintln!(
                    "WARNING: the Raft transport runs without TLS (insecure: true): any host that reaches it can join the cluster's traffic"
                );
                return Ok(Tls {
                    acceptor: None,
                    connector: None,
                });
            }
            Security::Mutual(files) => files,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let ca_pem = read(&files.ca, "CA certificate")?;
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", files.ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificate in it", files.ca.display()));
        }
        let roots = Arc::new(roots);
        let cert_pem = read(&files.cert, "certificate")?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate in it", files.cert.display()));
        }
        let key_pem = read(&files.key, "private key")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{}: {e}", files.key.display()))?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        Ok(Tls {
            acceptor: Some(TlsAcceptor::from(Arc::new(server))),
            connector: Some(TlsConnector::from(Arc::new(client))),
        })
    }

    /// The server side of a new connection.
    pub async fn accept(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Box<dyn Io>> {
        match &self.acceptor {
            Some(a) => Ok(Box::new(a.accept(tcp).await?)),
            None => Ok(Box::new(tcp)),
        }
    }

    /// The client side of a new connection to `addr` (`host:port`); the
    /// peer's certificate must name the host (an IP address or DNS name).
    pub async fn connect(&self, addr: &str) -> std::io::Result<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match &self.connector {
            Some(c) => {
                let host = addr
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                    .unwrap_or(addr);
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| std::io::Error::other(format!("peer name {host}: {e}")))?;
                Ok(Box::new(c.connect(name, tcp).await?))
            }
            None => Ok(Box::new(tcp)),
        }
    }
}
