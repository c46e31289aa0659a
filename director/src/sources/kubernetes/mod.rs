//! The Kubernetes source: `type: LoadBalancer` Services of director's class.
//!
//! Every director watches Services, Nodes and EndpointSlices (kube-rs
//! watchers with backoff, each into a reflector store), so a newly elected
//! leader has the cluster's view at hand. The leader turns the view into
//! wanted services ([`translate`]) and is the only director that writes to
//! the API ([`writer`]): status, the finalizer and Events.
//!
//! The API server being away changes nothing: the stores keep the last
//! objects they saw, a store that never finished its first list is "not
//! ready" and then the leader neither adds nor removes a Kubernetes
//! service, and the data path runs from the replicated state alone.

mod digest;
pub mod translate;
pub mod writer;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use translate::{translate, View};

use crate::config::Kubernetes;

/// Why the API client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig file could not be read or parsed.
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        source: kube::config::KubeconfigError,
    },
    /// The client could not be built from it (TLS material, server URL).
    #[error("building the Kubernetes client from {path}: {source}")]
    Client {
        /// The file.
        path: String,
        /// What went wrong.
        source: kube::Error,
    },
}

/// Builds the API client from the `kubernetes:` section.
pub async fn connect(k: &Kubernetes) -> Result<Client, ConnectError> {
    let path = k.kubeconfig.display().to_string();
    let file = Kubeconfig::read_from(&k.kubeconfig).map_err(|source| ConnectError::Kubeconfig {
        path: path.clone(),
        source,
    })?;
    let options = KubeConfigOptions {
        context: k.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|source| ConnectError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
    Client::try_from(config).map_err(|source| ConnectError::Client { path, source })
}

/// Whether the API server answers, as the watches see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiHealth {
    /// The last watch request succeeded.
    pub reachable: bool,
    /// Since when it has been as it is.
    pub since: SystemTime,
    /// The last error, while unreachable.
    pub error: Option<String>,
}

/// The watches and what they hold.
pub struct Source {
    client: Client,
    services: Store<Service>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    /// One flag per watch: its first list is complete.
    listed: [AtomicBool; 3],
    changes: watch::Sender<u64>,
    health: Mutex<ApiHealth>,
}

impl Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("services", &self.services.len())
            .field("nodes", &self.nodes.len())
            .field("slices", &self.slices.len())
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Starts the three watches; they run until `stop`.
    pub fn start(
        client: Client,
        stop: watch::Receiver<bool>,
    ) -> (Arc<Source>, Vec<JoinHandle<()>>) {
        let (services, services_w) = reflector::store::<Service>();
        let (nodes, nodes_w) = reflector::store::<Node>();
        let (slices, slices_w) = reflector::store::<EndpointSlice>();
        let source = Arc::new(Source {
            client: client.clone(),
            services,
            nodes,
            slices,
            listed: Default::default(),
            changes: watch::channel(0).0,
            health: Mutex::new(ApiHealth {
                reachable: false,
                since: SystemTime::now(),
                error: Some("not contacted yet".into()),
            }),
        });
        let tasks = vec![
            tokio::spawn(source.clone().drive(
                "services",
                0,
                Api::<Service>::all(client.clone()),
                services_w,
                digest::service,
                stop.clone(),
            )),
            tokio::spawn(source.clone().drive(
                "nodes",
                1,
                Api::<Node>::all(client.clone()),
                nodes_w,
                digest::node,
                stop.clone(),
            )),
            tokio::spawn(source.clone().drive(
                "endpointslices",
                2,
                Api::<EndpointSlice>::all(client),
                slices_w,
                digest::slice,
                stop,
            )),
        ];
        (source, tasks)
    }

    /// Runs one watch into its store until `stop`.
    async fn drive<K>(
        self: Arc<Self>,
        what: &'static str,
        index: usize,
        api: Api<K>,
        writer: reflector::store::Writer<K>,
        relevant: fn(&K) -> u64,
        mut stop: watch::Receiver<bool>,
    ) where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut last_error: Option<String> = None;
        // What the translation reads of each object, digested: a change
        // that touches nothing of it (a status the leader wrote, a node's
        // heartbeat, a resourceVersion) wakes nobody.
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut listing: HashMap<String, u64> = HashMap::new();
        let key = |o: &K| {
            let m = o.meta();
            m.uid.clone().unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    m.namespace.as_deref().unwrap_or(""),
                    m.name.as_deref().unwrap_or("")
                )
            })
        };
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = stop.changed() => return,
            };
            match item {
                None => return,
                Some(Ok(event)) => {
                    if last_error.take().is_some() {
                        tracing::info!(watch = what, "Kubernetes watch recovered");
                    }
                    self.set_health(None);
                    match event {
                        watcher::Event::Init => listing.clear(),
                        watcher::Event::InitApply(o) => {
                            listing.insert(key(&o), relevant(&o));
                        }
                        watcher::Event::InitDone => {
                            if !self.listed[index].swap(true, Ordering::SeqCst) {
                                tracing::info!(watch = what, "Kubernetes objects listed");
                            }
                            seen = std::mem::take(&mut listing);
                            self.changes.send_modify(|n| *n += 1);
                        }
                        watcher::Event::Apply(o) => {
                            let d = relevant(&o);
                            if seen.insert(key(&o), d) != Some(d) {
                                self.changes.send_modify(|n| *n += 1);
                            }
                        }
                        watcher::Event::Delete(o) => {
                            seen.remove(&key(&o));
                            self.changes.send_modify(|n| *n += 1);
                        }
                    }
                }
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    // The server no longer has the version the watch resumed
                    // from: the watcher lists again. The server answers.
                    tracing::debug!(watch = what, "watch expired; listing again");
                    self.set_health(None);
                }
                Some(Err(e)) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(watch = what, error = %text, "Kubernetes watch failed; retrying with backoff, nothing is removed meanwhile");
                        last_error = Some(text.clone());
                    }
                    self.set_health(Some(text));
                }
            }
        }
    }

    fn set_health(&self, error: Option<String>) {
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        let reachable = error.is_none();
        if h.reachable != reachable {
            h.since = SystemTime::now();
        }
        h.reachable = reachable;
        h.error = error;
    }

    /// The API client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Whether every watch has completed its first list: only then may the
    /// view's absences be taken as deletions.
    pub fn ready(&self) -> bool {
        self.listed.iter().all(|l| l.load(Ordering::SeqCst))
    }

    /// What the watches hold now.
    pub fn view(&self) -> View {
        View {
            services: self.services.state(),
            nodes: self.nodes.state(),
            slices: self.slices.state(),
        }
    }

    /// Wakes up on every change the watches see.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether the API server answers.
    pub fn health(&self) -> ApiHealth {
        match self.health.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
