//! One probe of one backend: TCP connect, HTTP(S) GET, UDP datagram. Each
//! is bounded by the check's timeout by its caller and says why it failed.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use consensus::domain::{Probe, StatusRange};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The most of an HTTP answer read for its status line.
const STATUS_LINE_MAX: usize = 1024;

/// Probes `target` as `probe` says, within `timeout`; Err names what
/// failed.
pub async fn run(probe: &Probe, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    // A UDP check that needs no reply passes on silence: it waits for an
    // ICMP error a while (a LAN answers far sooner), within the timeout.
    let silence = UDP_SILENCE.min(timeout / 2);
    match tokio::time::timeout(timeout, once(probe, target, silence)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn once(probe: &Probe, target: SocketAddr, silence: Duration) -> Result<(), String> {
    match probe {
        Probe::Tcp { .. } => TcpStream::connect(target)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
        Probe::Http {
            path,
            host,
            expect,
            tls,
            ..
        } => {
            let stream = TcpStream::connect(target)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let host = match host {
                Some(h) => h.clone(),
                None => match target {
                    SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                    SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                },
            };
            let code = if *tls {
                // SNI: the Host header's name when it is one, else none.
                let sni = host_name(&host)
                    .and_then(|h| rustls::pki_types::ServerName::try_from(h.to_string()).ok());
                let name =
                    sni.unwrap_or(rustls::pki_types::ServerName::IpAddress(target.ip().into()));
                let stream = tokio_rustls::TlsConnector::from(tls_config())
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                get(stream, path, &host).await?
            } else {
                get(stream, path, &host).await?
            };
            if expect.iter().any(|r| r.contains(code)) {
                Ok(())
            } else {
                Err(format!("HTTP {code}, expected {}", ranges(expect)))
            }
        }
        Probe::Udp {
            send, expect_reply, ..
        } => {
            let local: SocketAddr = if target.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(local)
                .await
                .map_err(|e| format!("bind: {e}"))?;
            sock.connect(target)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            sock.send(send.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 512];
            // An ICMP error shows as a refused receive.
            match tokio::time::timeout(silence, sock.recv(&mut buf)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Err("ICMP port unreachable".into())
                }
                Ok(Err(e)) => Err(format!("receive: {e}")),
                Err(_) if *expect_reply => {
                    // Wait on for the reply until the caller's timeout.
                    match sock.recv(&mut buf).await {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            Err("ICMP port unreachable".into())
                        }
                        Err(e) => Err(format!("receive: {e}")),
                    }
                }
                Err(_) => Ok(()),
            }
        }
    }
}

/// How long a UDP probe without `expect_reply` waits for an ICMP error
/// before it passes (at most half its timeout).
pub const UDP_SILENCE: Duration = Duration::from_millis(300);

/// Sends a GET for `path` and reads the status code.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
    host: &str,
) -> Result<u16, String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: director-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(code) = status_code(&buf)? {
            let _ = s.shutdown().await;
            return Ok(code);
        }
        if buf.len() >= STATUS_LINE_MAX {
            return Err("no HTTP status line in the first 1024 bytes".into());
        }
        match s.read(&mut chunk).await {
            Ok(0) => {
                return Err(if buf.is_empty() {
                    "connection closed without an answer".into()
                } else {
                    "connection closed inside the status line".into()
                })
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}

/// The status code of a complete status line at the start of `buf`; None
/// while the line is incomplete.
pub fn status_code(buf: &[u8]) -> Result<Option<u16>, String> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..end]);
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: {:?}", truncate(&line)));
    }
    match code.parse::<u16>() {
        Ok(c) if (100..=599).contains(&c) => Ok(Some(c)),
        _ => Err(format!("bad status line: {:?}", truncate(&line))),
    }
}

/// The DNS name of a Host header (`example.com:8443` -> `example.com`);
/// None for an address.
fn host_name(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) && !n.contains(':') => n,
        _ => host,
    };
    (name.parse::<std::net::IpAddr>().is_err() && !name.is_empty()).then_some(name)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn ranges(expect: &[StatusRange]) -> String {
    expect
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The client configuration of HTTPS checks: any certificate is accepted
/// (a node's health endpoint is usually self-signed; the check asks whether
/// it answers, not who it is).
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => Arc::new(c),
                // The ring provider supports the default versions; this
                // arm is never taken, and an HTTPS check would then fail
                // its handshake with an error naming it.
                Err(e) => {
                    tracing::error!(error = %e, "HTTPS health checks cannot be configured");
                    Arc::new(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                }
            }
        })
        .clone()
}

/// Accepts every server certificate; signatures are still checked against
/// the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn sni_comes_from_a_host_name_only() {
        assert_eq!(host_name("example.com:8443"), Some("example.com"));
        assert_eq!(host_name("example.com"), Some("example.com"));
        assert_eq!(host_name("10.0.0.1:443"), None);
        assert_eq!(host_name("[fd00::1]:443"), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n"), Ok(Some(503)));
        assert_eq!(status_code(b"HTTP/1.1 20"), Ok(None));
        assert!(status_code(b"SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .contains("not an HTTP/1 answer"));
        assert!(status_code(b"HTTP/1.1 abc\r\n")
            .unwrap_err()
            .contains("bad status line"));
    }

    /// A one-shot HTTP server on loopback answering `status`.
    async fn server(status: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        addr
    }

    const T: Duration = Duration::from_secs(2);

    fn http(expect: &[(u16, u16)]) -> Probe {
        Probe::Http {
            port: None,
            path: "/healthz".into(),
            host: None,
            expect: expect
                .iter()
                .map(|(from, to)| StatusRange {
                    from: *from,
                    to: *to,
                })
                .collect(),
            tls: false,
        }
    }

    #[tokio::test]
    async fn probes_against_real_sockets() {
        let ok = server("200 OK").await;
        let down = server("503 Service Unavailable").await;
        assert_eq!(run(&http(&[(200, 399)]), ok, T).await, Ok(()));
        assert_eq!(
            run(&http(&[(200, 399)]), down, T).await,
            Err("HTTP 503, expected 200-399".into())
        );
        assert_eq!(run(&http(&[(503, 503)]), down, T).await, Ok(()));
        assert_eq!(run(&Probe::Tcp { port: None }, ok, T).await, Ok(()));
        // A port nobody listens on: refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = run(&Probe::Tcp { port: None }, closed, T)
            .await
            .unwrap_err();
        assert!(e.starts_with("connect:"), "{e}");
        // UDP: an echo passes, a closed port is an ICMP error.
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            if let Ok((n, from)) = echo.recv_from(&mut b) {
                let _ = echo.send_to(&b[..n], from);
            }
        });
        let udp = |expect_reply| Probe::Udp {
            port: None,
            send: "ping".into(),
            expect_reply,
        };
        assert_eq!(run(&udp(true), echo_addr, T).await, Ok(()));
        let gone = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        assert_eq!(
            run(&udp(false), gone, T).await,
            Err("ICMP port unreachable".into())
        );
        // Silence passes without expect_reply, fails with it.
        let mute = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mute_addr = mute.local_addr().unwrap();
        let short = Duration::from_millis(200);
        assert_eq!(run(&udp(false), mute_addr, short).await, Ok(()));
        assert_eq!(
            run(&udp(true), mute_addr, short).await,
            Err("no answer within 200 ms".into())
        );
        drop(mute);
    }
}
