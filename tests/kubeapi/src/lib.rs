//! A Kubernetes API-server double.
//!
//! An HTTPS server that speaks the Kubernetes HTTP/JSON protocol well enough for the
//! real clients (kube-rs, kubectl) to use it unchanged: discovery, CRUD with the
//! apiserver's status-subresource, optimistic-concurrency and finalizer rules, paged
//! lists, watches with bookmarks and 410 expiry, Service defaulting and validation,
//! events.k8s.io Events with a core/v1 view. Objects are stored schemaless as JSON.
//!
//! Tests start one with [`Double::start`], point a client at [`Double::kubeconfig`],
//! seed objects with [`Double::create`], and switch failures on with
//! [`Double::set_fault`]. The `kube-double` binary serves the same for the lab.

pub mod ops;
pub mod patch;
pub mod resources;
pub mod rules;
pub mod selector;
mod server;
pub mod status;
pub mod store;
pub mod table;
mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::status::ApiError;
use crate::store::Store;

/// Failures starting or controlling a double.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding a listen address failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Making the certificates failed.
    #[error("making certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Building the TLS configuration failed.
    #[error("configuring TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Reading or writing the state file failed.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file does not hold a saved state.
    #[error("state file {path}: {message}")]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing the kubeconfig failed.
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A seeded object was refused.
    #[error("seeding an object: {} {}", .0.code, .0.message)]
    Seed(ApiError),
    /// No listen address was given.
    #[error("no listen address")]
    NoListener,
}

impl Error {
    /// Whether trying again may succeed (a port in use may be freed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Bind { .. })
    }
}

/// How the double misbehaves, switched per test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fault {
    /// Answer normally.
    #[default]
    Normal,
    /// Accept connections and requests but answer none until the fault changes; open
    /// watches send nothing meanwhile.
    Hang,
    /// Delay every response by this long.
    Slow(Duration),
    /// Answer every API request with 500 InternalError.
    Error500,
    /// One-shot: end every open watch with a 410 Expired ERROR event and forget the
    /// change history (resumed watches get 410 and clients relist); then behave normally.
    Expire,
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// `normal`, `hang`, `slow:MS`, `error500`, `expire`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Fault::Normal),
            "hang" => Ok(Fault::Hang),
            "error500" => Ok(Fault::Error500),
            "expire" => Ok(Fault::Expire),
            other => {
                let ms = other
                    .strip_prefix("slow:")
                    .or_else(|| {
                        other
                            .strip_prefix("slow(")
                            .and_then(|r| r.strip_suffix(')'))
                    })
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .ok_or_else(|| {
                        format!("unknown fault {other:?}: normal, hang, slow:MS, error500, expire")
                    })?;
                Ok(Fault::Slow(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Normal => write!(f, "normal"),
            Fault::Hang => write!(f, "hang"),
            Fault::Slow(d) => write!(f, "slow:{}", d.as_millis()),
            Fault::Error500 => write!(f, "error500"),
            Fault::Expire => write!(f, "expire"),
        }
    }
}

/// Request counters by verb and resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// `"VERB RESOURCE"` (e.g. `"list services"`, `"patch services/status"`,
    /// `"create events.events.k8s.io"`) to the number of such requests.
    pub requests: BTreeMap<String, u64>,
}

impl Stats {
    /// Requests with this verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`) on this resource (`services`, `services/status`, ...).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.requests
            .get(&format!("{verb} {resource}"))
            .copied()
            .unwrap_or(0)
    }

    /// Every API request counted.
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// How to start a double.
#[derive(Debug, Clone)]
pub struct Options {
    /// Addresses to listen on (port 0: any free port).
    pub listen: Vec<SocketAddr>,
    /// The bearer token every request must carry; empty: a random one (or the saved one).
    pub token: String,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_every: Duration,
    /// How many changes the watch history keeps.
    pub history: usize,
    /// Where to save every object after every write, and load them from at start.
    pub state_file: Option<PathBuf>,
    /// Where to write the kubeconfig; `None`: a file in the temporary directory, removed
    /// at shutdown.
    pub kubeconfig: Option<PathBuf>,
    /// The host written into the kubeconfig's server URL; `None`: the first listen IP.
    pub server_host: Option<String>,
    /// Objects created at start, before the kubeconfig is written, when no
    /// saved state is loaded.
    pub seed: Vec<Value>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            token: String::new(),
            bookmark_every: Duration::from_secs(60),
            history: 1000,
            state_file: None,
            kubeconfig: None,
            server_host: None,
            seed: Vec::new(),
        }
    }
}

/// Shared state of a running double.
#[derive(Debug)]
pub(crate) struct State {
    store: Mutex<Store>,
    /// The latest resourceVersion, for watches to wake on.
    changed: watch::Sender<u64>,
    /// Bumped by [`Fault::Expire`].
    expired: watch::Sender<u64>,
    fault: watch::Sender<Fault>,
    stats: Mutex<Stats>,
    token: String,
    bookmark_every: Duration,
    state_file: Option<PathBuf>,
    ca_key_pem: String,
    server_address: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// Run a write on the store; when it changed anything, save and wake the watches.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = lock(&self.store);
        let before = store.counter();
        let result = f(&mut store);
        if store.counter() != before {
            // Saved by the saver task, at most every SAVE_EVERY (a write
            // does not wait for the whole store to be written out).
            self.changed.send_replace(store.counter());
        }
        result
    }

    /// Run a read on the store.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    fn save(&self, store: &Store) {
        if let Some((path, saved)) = self.snapshot(store) {
            write_state(&path, &saved);
        }
    }

    /// What the state file is to hold (every stored object, the token and
    /// the CA key), and where; `None` without a state file. Taken under the
    /// store's lock; [`write_state`] serializes and writes it after.
    fn snapshot(&self, store: &Store) -> Option<(PathBuf, Value)> {
        let path = self.state_file.clone()?;
        let mut saved = store.to_saved();
        if let Some(map) = saved.as_object_mut() {
            map.insert("token".into(), json!(self.token));
            map.insert("caKey".into(), json!(self.ca_key_pem));
        }
        Some((path, saved))
    }

    pub(crate) fn set_fault(&self, fault: Fault) {
        tracing::info!(%fault, "fault");
        if fault == Fault::Expire {
            lock(&self.store).expire_history();
            self.expired.send_modify(|n| *n += 1);
            self.fault.send_replace(Fault::Normal);
        } else {
            self.fault.send_replace(fault);
        }
    }

    pub(crate) fn count(&self, verb: &str, resource: &str) {
        *lock(&self.stats)
            .requests
            .entry(format!("{verb} {resource}"))
            .or_insert(0) += 1;
    }
}

/// Writes `saved` to `path` (through a temporary file and a rename).
fn write_state(path: &Path, saved: &Value) {
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(saved)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "saving state failed");
    }
}

/// How often, at most, the state file is written while objects change.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// The longest wait between two writes of the state file while objects
/// change.
const SAVE_AT_MOST_EVERY: Duration = Duration::from_secs(5);

/// Writes the state file after changes, and once more at shutdown. The
/// objects are copied under the store's lock; serializing and writing them
/// happen outside it, on a blocking thread. The wait between two writes is
/// [`SAVE_EVERY`], or ten times as long as the last save took (at most
/// [`SAVE_AT_MOST_EVERY`]), so that a big store spends at most about a tenth
/// of the time being saved.
async fn saver(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut changed = state.changed.subscribe();
    let mut saved = *changed.borrow_and_update();
    let mut wait = SAVE_EVERY;
    loop {
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() {
                    break;
                }
                // A shutdown does not wait for the pause between saves.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
            _ = shutdown.changed() => break,
        }
        let now = *changed.borrow_and_update();
        if now != saved {
            let started = std::time::Instant::now();
            if let Some((path, snapshot)) = state.read(|store| state.snapshot(store)) {
                let written =
                    tokio::task::spawn_blocking(move || write_state(&path, &snapshot)).await;
                if let Err(e) = written {
                    tracing::error!(error = %e, "saving state failed");
                }
            }
            wait = (started.elapsed() * 10).clamp(SAVE_EVERY, SAVE_AT_MOST_EVERY);
            saved = now;
        }
    }
    state.read(|store| state.save(store));
}

/// A running double.
#[derive(Debug)]
pub struct Double {
    state: Arc<State>,
    addrs: Vec<SocketAddr>,
    url: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    remove_kubeconfig: bool,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn load_saved(path: &Path) -> Result<Option<Value>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::StateFormat {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::State {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn kubeconfig_text(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: kube-double\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: kube-double\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: kube-double\n  context:\n    cluster: kube-double\n    user: kube-double\n    namespace: default\n\
         current-context: kube-double\n\
         preferences: {{}}\n"
    )
}

impl Double {
    /// Start serving: make the certificates, load the saved state, bind every listen
    /// address, write the kubeconfig.
    pub async fn start(opts: Options) -> Result<Double, Error> {
        if opts.listen.is_empty() {
            return Err(Error::NoListener);
        }
        let saved = match &opts.state_file {
            Some(path) => load_saved(path)?,
            None => None,
        };
        let saved_text = |key: &str| {
            saved
                .as_ref()
                .and_then(|s| s.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let token = if opts.token.is_empty() {
            saved_text("token").unwrap_or_else(random_token)
        } else {
            opts.token.clone()
        };

        let mut listeners = Vec::new();
        for addr in &opts.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: *addr,
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
            listeners.push((listener, local));
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
        let first = addrs[0];
        let host = opts
            .server_host
            .clone()
            .unwrap_or_else(|| first.ip().to_string());
        let host_in_url = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{host}]"),
            _ => host.clone(),
        };
        let url = format!("https://{host_in_url}:{}", first.port());

        let mut ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        ips.push(IpAddr::from([127, 0, 0, 1]));
        ips.sort();
        ips.dedup();
        let mut names = vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
        ];
        if !names.contains(&host) {
            names.push(host.clone());
        }
        let certs = tls::make(saved_text("caKey").as_deref(), &ips, &names)?;

        let mut store = Store::new(opts.history);
        match &saved {
            Some(saved) => store
                .load_saved(saved)
                .map_err(|message| Error::StateFormat {
                    path: opts.state_file.clone().unwrap_or_default(),
                    message,
                })?,
            None => {
                for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                    ops::create(
                        &mut store,
                        &resources::NAMESPACES,
                        None,
                        json!({"metadata": {"name": ns}}),
                        ops::Origin::Seed,
                    )
                    .map_err(Error::Seed)?;
                }
                // The seed objects are in before the kubeconfig is written:
                // a client that waits for the kubeconfig finds them all.
                for object in &opts.seed {
                    create_in(&mut store, object.clone()).map_err(Error::Seed)?;
                }
            }
        }
        let counter = store.counter();
        let state = Arc::new(State {
            store: Mutex::new(store),
            changed: watch::Sender::new(counter),
            expired: watch::Sender::new(0),
            fault: watch::Sender::new(Fault::Normal),
            stats: Mutex::new(Stats::default()),
            token: token.clone(),
            bookmark_every: opts.bookmark_every,
            state_file: opts.state_file.clone(),
            ca_key_pem: certs.ca_key_pem.clone(),
            server_address: format!("{host_in_url}:{}", first.port()),
        });
        state.read(|store| state.save(store));

        let kubeconfig_yaml = kubeconfig_text(&url, &certs.ca_pem, &token);
        let (kubeconfig_path, remove_kubeconfig) = match &opts.kubeconfig {
            Some(path) => (path.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "kube-double-{}-{}.kubeconfig",
                    std::process::id(),
                    first.port()
                )),
                true,
            ),
        };
        let tmp = kubeconfig_path.with_extension("tmp");
        std::fs::write(&tmp, &kubeconfig_yaml)
            .and_then(|()| std::fs::rename(&tmp, &kubeconfig_path))
            .map_err(|source| Error::Kubeconfig {
                path: kubeconfig_path.clone(),
                source,
            })?;

        let (shutdown, _) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server.clone());
        let mut tasks = Vec::new();
        if state.state_file.is_some() {
            tasks.push(tokio::spawn(saver(state.clone(), shutdown.subscribe())));
        }
        for (listener, local) in listeners {
            tracing::info!(addr = %local, "listening");
            tasks.push(tokio::spawn(server::serve(
                listener,
                acceptor.clone(),
                state.clone(),
                shutdown.subscribe(),
            )));
        }
        Ok(Double {
            state,
            addrs,
            url,
            kubeconfig_path,
            kubeconfig_yaml,
            remove_kubeconfig,
            shutdown,
            tasks,
        })
    }

    /// The server URL written into the kubeconfig (`https://HOST:PORT`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The bound listen addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The kubeconfig's text (YAML).
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.state.token
    }

    /// Switch a fault on (or back to [`Fault::Normal`]).
    pub fn set_fault(&self, fault: Fault) {
        self.state.set_fault(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.state.fault.borrow()
    }

    /// Request counters so far.
    pub fn stats(&self) -> Stats {
        lock(&self.state.stats).clone()
    }

    /// Store an object as the API would create it (defaults, allocation, validation,
    /// a watch event), but keeping any `status` given. The object's `apiVersion` and
    /// `kind` pick the resource; a namespaced object without a namespace goes to
    /// `default`. Returns the stored object.
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        self.state.write(|store| create_in(store, object))
    }

    /// One stored object, by its resource's `apiVersion` and `kind`.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let rt = resources::by_kind(api_version, kind)?;
        self.state
            .read(|store| store.get(rt, namespace, name).cloned())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.read(Store::counter)
    }

    /// Stop listening and drop every open connection (watches included).
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if self.remove_kubeconfig {
            let _ = std::fs::remove_file(&self.kubeconfig_path);
        }
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if self.remove_kubeconfig {
            let _ = std::fs::remove_file(&self.kubeconfig_path);
        }
    }
}

/// Creates a seed object in `store`, its resource found by `apiVersion` and
/// `kind`.
fn create_in(store: &mut Store, object: Value) -> Result<Value, ApiError> {
    let (api_version, kind) = resources::api_version_and_kind(&object);
    let rt = resources::by_kind(api_version, kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "no resource for apiVersion {api_version:?} kind {kind:?}"
        ))
    })?;
    ops::create(store, rt, None, object, ops::Origin::Seed)
}
