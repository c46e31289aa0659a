//! `kube-double`: serve the Kubernetes API-server double, or switch a running one's fault.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use kube_double::{Double, Fault, Options};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A Kubernetes API-server double for the lab and the tests.
#[derive(Debug, Parser)]
#[command(name = "kube-double", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API over HTTPS until SIGINT or SIGTERM; logs go to stderr.
    Serve {
        /// Address to listen on, IP:PORT (repeatable; port 0 picks a free one).
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Where to write the kubeconfig (CA data, bearer token, server URL).
        #[arg(long)]
        kubeconfig_out: PathBuf,
        /// Host written into the kubeconfig's server URL (default: the first listen IP).
        #[arg(long)]
        server_host: Option<String>,
        /// Save every object here after every write, and load them at start.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Bearer token to require (default: the saved one, else a random one).
        #[arg(long)]
        token: Option<String>,
        /// Objects to create at start: JSON or YAML, one object, a list (`kind: List` or an
        /// array) or several YAML documents. Skipped when the state file already exists.
        #[arg(long)]
        seed: Vec<PathBuf>,
        /// Seconds between watch bookmarks.
        #[arg(long, default_value_t = 60)]
        bookmark_seconds: u64,
        /// Changes kept for resuming watches.
        #[arg(long, default_value_t = 1000)]
        history: usize,
    },
    /// Switch the fault of a running double: normal, hang, slow:MS, error500, expire.
    Fault {
        /// The kubeconfig the double wrote.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// normal | hang | slow:MS | error500 | expire
        mode: String,
    },
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            kubeconfig_out,
            server_host,
            state,
            token,
            seed,
            bookmark_seconds,
            history,
        } => {
            let opts = Options {
                listen,
                token: token.unwrap_or_default(),
                bookmark_every: Duration::from_secs(bookmark_seconds.max(1)),
                history,
                state_file: state,
                kubeconfig: Some(kubeconfig_out),
                server_host,
                seed: Vec::new(),
            };
            serve(opts, &seed).await
        }
        Command::Fault { kubeconfig, mode } => set_fault(&kubeconfig, &mode).await,
    };
    if let Err(e) = result {
        eprintln!("kube-double: {e:#}");
        std::process::exit(if e.is::<ConfigError>() { 64 } else { 1 });
    }
}

/// A mistake in the command line or its files: exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConfigError(String);

fn seed_objects(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let documents: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(v) => vec![v],
        Err(_) => serde_saphyr::from_multiple(&text)
            .map_err(|e| ConfigError(format!("{}: not JSON or YAML: {e}", path.display())))?,
    };
    let mut objects = Vec::new();
    for doc in documents {
        match doc {
            Value::Array(items) => objects.extend(items),
            Value::Object(ref map)
                if map
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                objects.extend(
                    map.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            Value::Null => {}
            other => objects.push(other),
        }
    }
    Ok(objects)
}

async fn serve(mut opts: Options, seeds: &[PathBuf]) -> anyhow::Result<()> {
    for path in seeds {
        opts.seed.extend(seed_objects(path)?);
    }
    // The seeds are created before the kubeconfig is written (only into a
    // fresh store: a saved state is loaded as it is).
    let double = Double::start(opts).await.map_err(|e| match e {
        kube_double::Error::Seed(e) => anyhow::Error::new(ConfigError(format!(
            "seed object refused: {} {}",
            e.code, e.message
        ))),
        other => other.into(),
    })?;
    tracing::info!(url = %double.url(), kubeconfig = %double.kubeconfig().display(), "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    double.shutdown().await;
    Ok(())
}

/// Server URL, CA PEM and token of the current context of a kubeconfig.
fn read_kubeconfig(path: &Path) -> anyhow::Result<(String, Vec<u8>, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Value = serde_saphyr::from_str(&text)
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    let current = config
        .get("current-context")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let named = |list: &str, name: &str, field: &str| -> Option<Value> {
        config
            .get(list)?
            .as_array()?
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
            .get(field)
            .cloned()
    };
    let context = named("contexts", current, "context")
        .ok_or_else(|| ConfigError("no current context".into()))?;
    let cluster_name = context
        .get("cluster")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let user_name = context
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let cluster = named("clusters", cluster_name, "cluster")
        .ok_or_else(|| ConfigError("no cluster".into()))?;
    let user = named("users", user_name, "user").ok_or_else(|| ConfigError("no user".into()))?;
    let server = cluster
        .get("server")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ca = cluster
        .get("certificate-authority-data")
        .and_then(Value::as_str)
        .ok_or_else(|| ConfigError("no certificate-authority-data".into()))?;
    let ca = base64::engine::general_purpose::STANDARD.decode(ca.trim())?;
    let token = user
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((server, ca, token))
}

async fn set_fault(kubeconfig: &Path, mode: &str) -> anyhow::Result<()> {
    mode.parse::<Fault>().map_err(ConfigError)?;
    let (server, ca_pem, token) = read_kubeconfig(kubeconfig)?;
    let authority = server
        .strip_prefix("https://")
        .ok_or_else(|| ConfigError(format!("server {server} is not https")))?
        .trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| ConfigError(format!("server {server} has no port")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port: u16 = port.parse()?;

    let mut roots = rustls::RootCertStore::empty();
    let mut reader = std::io::Cursor::new(ca_pem);
    for cert in rustls_pemfile_certs(&mut reader)? {
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.clone())?,
    };
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let mut tls = connector.connect(name, tcp).await?;
    let body = serde_json::json!({"mode": mode}).to_string();
    let request = format!(
        "POST /_double/fault HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.or_else(|e| {
        // A peer that closes without close_notify still sent the whole answer.
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        bail!("the double answered: {text}");
    }
    println!("{}", text.split("\r\n\r\n").nth(1).unwrap_or_default());
    Ok(())
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(
    reader: &mut std::io::Cursor<Vec<u8>>,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    let data = reader.get_ref().clone();
    rustls::pki_types::CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("reading the CA: {e:?}"))
}
