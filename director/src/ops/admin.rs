//! The admin socket: a Unix socket (root-only by default), one JSON request
//! per line and one JSON reply per line. The wire format is an interface:
//! `{"op":"status"}`, `{"op":"drain","timeout_ms":N}`, `{"op":"undrain"}`;
//! an error reply is `{"error":"..."}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::drain::DrainReport;
use super::status::{self, Status};
pub use super::Daemon;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// This director's view (`director status`).
    Status,
    /// Move this director's VIPs away and wait (`director drain`).
    Drain {
        /// How long to wait for the VIPs to move.
        #[serde(default = "default_drain_ms")]
        timeout_ms: u64,
    },
    /// Back in service (`director undrain`).
    Undrain,
}

fn default_drain_ms() -> u64 {
    30_000
}

/// The daemon's reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// The status document.
    Status(Box<Status>),
    /// A drain's or undrain's outcome.
    Drain(DrainReport),
    /// The request failed.
    Error {
        /// Why.
        error: String,
    },
}

/// Answers one request line.
pub async fn answer(d: &Daemon, line: &str) -> Response {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return Response::Error {
                error: format!("unknown request {line:?}: {e}"),
            }
        }
    };
    match req {
        Request::Status => Response::Status(Box::new(status::build(d).await)),
        Request::Drain { timeout_ms } => {
            match d.drainer.drain(Duration::from_millis(timeout_ms)).await {
                Ok(r) => Response::Drain(r),
                Err(e) => Response::Error {
                    error: e.to_string(),
                },
            }
        }
        Request::Undrain => match d.drainer.undrain().await {
            Ok(r) => Response::Drain(r),
            Err(e) => Response::Error {
                error: e.to_string(),
            },
        },
    }
}

/// Why the admin socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the socket failed.
    #[error("admin socket {}: {source}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Serves the admin socket at `path` until `stop` is set.
pub async fn serve(
    d: Daemon,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| ServeError::Bind {
        path: path.clone(),
        source,
    })?;
    // Root-only by default.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return Ok(()),
        };
        let d = d.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = answer(&d, &line).await;
                let mut text = serde_json::to_string(&reply)
                    .unwrap_or_else(|e| format!("{{\"error\":\"encoding the reply: {e}\"}}"));
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("director is not running here (no answer on the admin socket {}: {source})", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The caller may not open the socket.
    #[error("permission denied on the admin socket {}: it is root's (mode 0600); run this as root", path.display())]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
    },
    /// Talking on the socket failed.
    #[error("admin socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The reply is not what was asked for.
    #[error("admin socket {}: bad reply: {source}", path.display())]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Daemon(String),
}

/// Sends `req` to the daemon at `socket`; its reply as `T`.
pub async fn request<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: socket.to_path_buf(),
            },
            _ => ClientError::NotRunning {
                path: socket.to_path_buf(),
                source,
            },
        })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(req).map_err(|source| ClientError::BadReply {
        path: socket.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write.write_all(text.as_bytes()).await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    let bad = |source| ClientError::BadReply {
        path: socket.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(&line).map_err(bad)?;
    if let Some(e) = value.get("error") {
        return Err(ClientError::Daemon(
            e.as_str().map_or_else(|| e.to_string(), str::to_string),
        ));
    }
    serde_json::from_value(value).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format earlier clients and scripts speak.
    #[test]
    fn requests_keep_their_wire_format() {
        let parse = |s: &str| serde_json::from_str::<Request>(s).unwrap();
        assert_eq!(parse(r#"{"op":"status"}"#), Request::Status);
        assert_eq!(
            parse(r#"{"op":"drain","timeout_ms":5000}"#),
            Request::Drain { timeout_ms: 5000 }
        );
        assert_eq!(
            parse(r#"{"op":"drain"}"#),
            Request::Drain { timeout_ms: 30_000 }
        );
        assert_eq!(parse(r#"{"op":"undrain"}"#), Request::Undrain);
        assert_eq!(
            serde_json::to_string(&Request::Drain { timeout_ms: 7 }).unwrap(),
            r#"{"op":"drain","timeout_ms":7}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        let e = serde_json::to_string(&Response::Error { error: "no".into() }).unwrap();
        assert_eq!(e, r#"{"error":"no"}"#);
    }
}
