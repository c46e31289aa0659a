//! Bringing the lab up and down.
//!
//! A lab is a set of network namespaces: one per host (named after the host,
//! with an optional prefix so tests can run labs side by side) and one more,
//! `<prefix>lan`, that holds the bridge every host's `eth0` is plugged into.
//! Nothing is created in the caller's own namespace.
//!
//! The lab's state (which hosts it has, the PIDs of the processes it started)
//! lives in a JSON file under the state directory, so `lab up`, `lab exec` and
//! `lab down` can be separate commands. [`LabGuard`] tears the lab down when it
//! is dropped, also while a test panics.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::topology::{self, Host, Role};

/// Default directory of lab state files.
pub const DEFAULT_STATE_DIR: &str = "/run/director-lab";
/// Environment variable naming a directory the lab's logs are copied to
/// before it goes down.
pub const KEEP_LOGS_ENV: &str = "DIRECTOR_LAB_KEEP_LOGS";
/// The per-host log files, by suffix (`<prefix><host><suffix>`).
const LOG_SUFFIXES: [&str; 4] = [
    "-director.log",
    "-labnet.log",
    "-keepalived.log",
    "-kube-double.log",
];
/// How many lines of each director's log a failed test prints.
const FAILURE_LOG_LINES: usize = 60;
/// Environment variable that overrides [`DEFAULT_STATE_DIR`].
pub const STATE_DIR_ENV: &str = "DIRECTOR_LAB_STATE_DIR";
/// Environment variable naming the `labnet` binary.
pub const LABNET_ENV: &str = "DIRECTOR_LABNET";
/// Environment variable naming the `kube-double` binary.
pub const KUBE_DOUBLE_ENV: &str = "DIRECTOR_KUBE_DOUBLE";
/// The port of the lab's Kubernetes API server on `api`.
pub const API_PORT: u16 = 6443;
/// Name of the bridge inside the LAN namespace.
const BRIDGE: &str = "br0";
/// How long a started node server has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong with the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root for network namespaces.
    #[error("the lab needs root (it creates network namespaces): run it as root")]
    NotRoot,
    /// A tool the lab runs is not installed.
    #[error("`{tool}` is missing: {hint}")]
    MissingTool {
        /// The missing program.
        tool: String,
        /// How to get it.
        hint: String,
    },
    /// A lab with this prefix is already up.
    #[error("a lab is already up ({what}); run `cargo xtask lab down` first")]
    AlreadyUp {
        /// What was found.
        what: String,
    },
    /// No lab with this prefix is up.
    #[error("no lab is up (no state file {0}); start one with `cargo xtask lab up`")]
    NotUp(PathBuf),
    /// The lab has no host of that name.
    #[error("the lab has no host `{0}` (hosts: {1})")]
    NoSuchHost(String, String),
    /// A node-host operation named a host that is not one of the lab's node
    /// hosts.
    #[error(
        "`{host}` is not a node host of this lab; node hosts (NodePort stand-ins) are {nodes}"
    )]
    NotANode {
        /// The name given.
        host: String,
        /// The lab's node hosts.
        nodes: String,
    },
    /// A lab size is out of range.
    #[error("invalid lab size: {0}")]
    BadSpec(String),
    /// A command the lab ran failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A process the lab started did not become ready.
    #[error("the {what} of {host} did not start within {secs} s; its log: {log}")]
    ServerNotReady {
        /// The host.
        host: String,
        /// The process (`nodeport-server`, `director`).
        what: String,
        /// How long it had.
        secs: u64,
        /// Its log file.
        log: PathBuf,
    },
    /// Reading or writing a lab file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state file is not what the lab writes.
    #[error("the lab state file {path} is damaged: {source}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// A lab tool printed something it should not have.
    #[error("could not read the output of `{command}`: {source}")]
    BadOutput {
        /// The command.
        command: String,
        /// Why its output does not parse.
        source: serde_json::Error,
    },
    /// Tearing down left some things behind.
    #[error("tearing the lab down left things behind: {0}")]
    Teardown(String),
    /// Something awaited did not happen in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
}

/// Shape of a lab: how many hosts of each kind, and where it keeps state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabSpec {
    /// Prefix of every namespace name ("" for the lab of `cargo xtask lab`).
    pub prefix: String,
    /// Number of directors, `d1..dN`.
    pub directors: u8,
    /// Number of node hosts, `n1..nM`.
    pub nodes: u8,
    /// Whether the witness `w1` exists.
    pub witness: bool,
    /// The timing the directors' configs get.
    #[serde(default)]
    pub timing: crate::configs::TimingProfile,
    /// Whether the Kubernetes API server `api` exists and the directors
    /// serve its LoadBalancer Services.
    #[serde(default)]
    pub kube: bool,
}

impl LabSpec {
    /// A lab with `directors` directors, `nodes` nodes, a client and no witness.
    pub fn new(directors: u8, nodes: u8) -> Self {
        LabSpec {
            prefix: String::new(),
            directors,
            nodes,
            witness: false,
            timing: Default::default(),
            kube: false,
        }
    }

    /// The same lab with (or without) the Kubernetes API server `api`.
    pub fn with_kube(mut self, kube: bool) -> Self {
        self.kube = kube;
        self
    }

    /// The same lab with the directors' timing set to `timing`.
    pub fn with_timing(mut self, timing: crate::configs::TimingProfile) -> Self {
        self.timing = timing;
        self
    }

    /// The same lab with namespace names prefixed by `prefix`.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// The same lab with (or without) the witness.
    pub fn with_witness(mut self, witness: bool) -> Self {
        self.witness = witness;
        self
    }

    fn validate(&self) -> Result<(), LabError> {
        if !(1..=topology::MAX_DIRECTORS).contains(&self.directors) {
            return Err(LabError::BadSpec(format!(
                "--directors must be 1..={}, got {}",
                topology::MAX_DIRECTORS,
                self.directors
            )));
        }
        if !(1..=topology::MAX_NODES).contains(&self.nodes) {
            return Err(LabError::BadSpec(format!(
                "--nodes must be 1..={}, got {}",
                topology::MAX_NODES,
                self.nodes
            )));
        }
        let ok = self
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok || self.prefix.len() > 16 {
            return Err(LabError::BadSpec(format!(
                "prefix {:?} must be at most 16 of [A-Za-z0-9_-]",
                self.prefix
            )));
        }
        Ok(())
    }

    /// Every host of the lab, directors first, then witness, nodes, client.
    pub fn hosts(&self) -> Vec<Host> {
        let mut hosts: Vec<Host> = (1..=self.directors).map(Host::director).collect();
        if self.witness {
            hosts.push(Host::witness());
        }
        hosts.extend((1..=self.nodes).map(Host::node));
        hosts.push(Host::client());
        if self.kube {
            hosts.push(Host::api());
        }
        hosts
    }

    /// The namespace of a host.
    pub fn netns(&self, host: &Host) -> String {
        format!("{}{}", self.prefix, host.name())
    }

    /// The namespace that holds the LAN bridge.
    pub fn lan_netns(&self) -> String {
        format!("{}lan", self.prefix)
    }
}

/// What the state file records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabState {
    spec: LabSpec,
    /// Processes the lab started, by host name.
    processes: BTreeMap<String, Vec<Process>>,
}

/// A process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Process {
    pid: i32,
    /// What it is, for status and for checking the PID before signalling it.
    what: String,
    /// The program's file name, as in /proc/PID/comm.
    comm: String,
}

/// One row of `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// Host name.
    pub host: String,
    /// Its role.
    pub role: Role,
    /// Its namespace.
    pub netns: String,
    /// IPv4 address.
    pub ipv4: String,
    /// IPv6 address.
    pub ipv6: String,
    /// MAC address of eth0.
    pub mac: String,
    /// Whether the namespace exists.
    pub present: bool,
    /// Whether its link to the LAN is up (false after a cut).
    pub link_up: bool,
    /// Processes the lab runs there, as "what (pid N, running|gone)".
    pub processes: Vec<String>,
}

/// Where lab files live and which `labnet` binary serves the nodes.
#[derive(Debug, Clone)]
pub struct LabEnv {
    /// Directory of state files and server logs.
    pub state_dir: PathBuf,
    /// The `labnet` binary.
    pub labnet: PathBuf,
    /// The `director` binary: when set, `up` writes a config per director
    /// (and the witness) and starts `director run` there.
    pub director: Option<PathBuf>,
    /// The `kube-double` binary (the API server of `lab up --kube`).
    pub kube_double: PathBuf,
}

impl LabEnv {
    /// From the environment: [`STATE_DIR_ENV`] and [`LABNET_ENV`], else the
    /// defaults (the `labnet` next to the running executable, or one directory
    /// up from it, as for test binaries under `target/debug/deps`).
    pub fn from_env() -> Self {
        let state_dir = std::env::var_os(STATE_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let labnet = std::env::var_os(LABNET_ENV)
            .map(PathBuf::from)
            .or_else(find_labnet_near_exe)
            .unwrap_or_else(|| PathBuf::from("labnet"));
        let kube_double = std::env::var_os(KUBE_DOUBLE_ENV)
            .map(PathBuf::from)
            .or_else(|| workspace_binary("kube-double"))
            .unwrap_or_else(|| PathBuf::from("kube-double"));
        LabEnv {
            state_dir,
            labnet,
            director: None,
            kube_double,
        }
    }
}

fn find_labnet_near_exe() -> Option<PathBuf> {
    workspace_binary("labnet")
}

/// A binary of the workspace next to the running executable, or one
/// directory up from it (test binaries live in `target/debug/deps`).
pub fn workspace_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// A lab that is up. Dropping it leaves it up; see [`LabGuard`].
#[derive(Debug)]
pub struct Lab {
    env: LabEnv,
    state: LabState,
}

impl Lab {
    /// Brings a lab up: namespaces, the bridged LAN, addresses, and the
    /// NodePort servers on every node. Refuses if a lab with the same prefix
    /// (or any of its namespaces) already exists. On failure everything made so
    /// far is torn down again.
    pub fn up(spec: LabSpec, env: LabEnv) -> Result<Lab, LabError> {
        spec.validate()?;
        preflight(&env)?;
        let state_path = state_path(&env.state_dir, &spec.prefix);
        if state_path.exists() {
            return Err(LabError::AlreadyUp {
                what: format!("state file {}", state_path.display()),
            });
        }
        let mut names: Vec<String> = spec.hosts().iter().map(|h| spec.netns(h)).collect();
        names.push(spec.lan_netns());
        let taken: Vec<&String> = names.iter().filter(|n| netns_exists(n)).collect();
        if !taken.is_empty() {
            let list: Vec<&str> = taken.iter().map(|s| s.as_str()).collect();
            return Err(LabError::AlreadyUp {
                what: format!("network namespaces exist: {}", list.join(", ")),
            });
        }
        fs::create_dir_all(&env.state_dir).map_err(|source| LabError::Io {
            op: "creating",
            path: env.state_dir.clone(),
            source,
        })?;
        let mut lab = Lab {
            env,
            state: LabState {
                spec,
                processes: BTreeMap::new(),
            },
        };
        // Written before anything is made, so that `down` can clean up after a
        // half-finished `up` too.
        lab.save()?;
        match lab.build() {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = lab.teardown();
                Err(e)
            }
        }
    }

    /// The lab that is up with this prefix, from its state file.
    pub fn open(prefix: &str, env: LabEnv) -> Result<Lab, LabError> {
        let path = state_path(&env.state_dir, prefix);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LabError::NotUp(path)),
            Err(source) => {
                return Err(LabError::Io {
                    op: "reading",
                    path,
                    source,
                })
            }
        };
        let state: LabState =
            serde_json::from_str(&text).map_err(|source| LabError::BadState { path, source })?;
        Ok(Lab { env, state })
    }

    /// The lab's shape.
    pub fn spec(&self) -> &LabSpec {
        &self.state.spec
    }

    /// Where the lab keeps its state and logs.
    pub fn env(&self) -> &LabEnv {
        &self.env
    }

    /// The host of that name, if the lab has it.
    pub fn host(&self, name: &str) -> Result<Host, LabError> {
        let hosts = self.state.spec.hosts();
        Host::parse(name)
            .filter(|h| hosts.contains(h))
            .ok_or_else(|| {
                let all: Vec<String> = hosts.iter().map(Host::name).collect();
                LabError::NoSuchHost(name.to_string(), all.join(" "))
            })
    }

    /// A `Command` that runs `program` inside host `name`'s namespace.
    pub fn command(&self, name: &str, program: &str) -> Result<Command, LabError> {
        let host = self.host(name)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.state.spec.netns(&host), program]);
        Ok(cmd)
    }

    /// Runs a command in a host and returns its stdout; fails if it fails.
    pub fn exec(&self, name: &str, argv: &[&str]) -> Result<String, LabError> {
        let (program, args) = argv.split_first().ok_or_else(|| LabError::Command {
            command: String::new(),
            status: "not run".into(),
            stderr: "empty command".into(),
        })?;
        let mut cmd = self.command(name, program)?;
        cmd.args(args);
        output_of(cmd, &format!("[{name}] {}", argv.join(" ")))
    }

    /// Runs a command in a host with the caller's stdin, stdout and stderr.
    pub fn exec_inherit(&self, name: &str, argv: &[String]) -> Result<ExitStatus, LabError> {
        let (program, args) = argv.split_first().ok_or_else(|| LabError::Command {
            command: String::new(),
            status: "not run".into(),
            stderr: "empty command".into(),
        })?;
        let mut cmd = self.command(name, program)?;
        cmd.args(args);
        cmd.status().map_err(|source| LabError::Io {
            op: "running",
            path: PathBuf::from(program),
            source,
        })
    }

    /// The status of every host.
    pub fn status(&self) -> Vec<HostStatus> {
        let spec = &self.state.spec;
        let lan = spec.lan_netns();
        spec.hosts()
            .iter()
            .map(|h| {
                let netns = spec.netns(h);
                let present = netns_exists(&netns);
                let link_up = present
                    && run(&["ip", "-n", &lan, "-o", "link", "show", &h.name()])
                        .map(|out| out.contains("state UP") || out.contains(",UP"))
                        .unwrap_or(false);
                let processes = self
                    .state
                    .processes
                    .get(&h.name())
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let alive = process_matches(p);
                                format!(
                                    "{} (pid {}, {})",
                                    p.what,
                                    p.pid,
                                    if alive { "running" } else { "gone" }
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                HostStatus {
                    host: h.name(),
                    role: h.role,
                    netns,
                    ipv4: h.ipv4().to_string(),
                    ipv6: h.ipv6().to_string(),
                    mac: h.mac_string(),
                    present,
                    link_up,
                    processes,
                }
            })
            .collect()
    }

    /// Tears the lab down: stops the processes it started (by PID, after
    /// checking the PID is still theirs), deletes its namespaces and its state
    /// file. Goes on past errors and reports them all at the end.
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        let mut problems = Vec::new();
        for procs in self.state.processes.values() {
            for p in procs {
                if let Err(e) = stop_process(p) {
                    problems.push(e);
                }
            }
        }
        self.state.processes.clear();
        self.keep_logs(false);
        let spec = &self.state.spec;
        let mut names: Vec<String> = spec.hosts().iter().map(|h| spec.netns(h)).collect();
        names.push(spec.lan_netns());
        for name in names {
            if netns_exists(&name) {
                if let Err(e) = run(&["ip", "netns", "delete", &name]) {
                    problems.push(e.to_string());
                }
            }
        }
        // Per-host files: server logs and ready markers, director configs,
        // logs and data.
        for h in spec.hosts() {
            let base = format!("{}{}", spec.prefix, h.name());
            for suffix in LOG_SUFFIXES.into_iter().chain([
                "-labnet.ready",
                "-healthz.fail",
                ".yaml",
                "-keepalived.conf",
                "-keepalived.pid",
                "-keepalived.vrrp.pid",
                "-state.json",
                "-nodes.json",
                ".kubeconfig",
            ]) {
                let _ = fs::remove_file(self.env.state_dir.join(format!("{base}{suffix}")));
            }
            let _ = fs::remove_dir_all(self.env.state_dir.join(&base));
        }
        let path = state_path(&self.env.state_dir, &spec.prefix);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                problems.push(format!("removing {}: {e}", path.display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown(problems.join("; ")))
        }
    }

    fn save(&self) -> Result<(), LabError> {
        let path = state_path(&self.env.state_dir, &self.state.spec.prefix);
        let text =
            serde_json::to_string_pretty(&self.state).map_err(|source| LabError::BadState {
                path: path.clone(),
                source,
            })?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).map_err(|source| LabError::Io {
            op: "writing",
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| LabError::Io {
            op: "renaming",
            path,
            source,
        })
    }

    fn build(&mut self) -> Result<(), LabError> {
        let spec = self.state.spec.clone();
        let lan = spec.lan_netns();
        run(&["ip", "netns", "add", &lan])?;
        run(&["ip", "-n", &lan, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "-n",
            &lan,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        run(&["ip", "-n", &lan, "link", "set", BRIDGE, "up"])?;
        for host in spec.hosts() {
            self.build_host(&spec, &host)?;
        }
        for host in spec.hosts().iter().filter(|h| h.role == Role::Node) {
            // Every node starts healthy, whatever an earlier lab left.
            self.set_node_healthz(&host.name(), true)?;
            self.start_node_server(&spec, host)?;
        }
        if spec.kube {
            self.start_api()?;
        }
        if self.env.director.is_some() {
            let voters: Vec<Host> = spec
                .hosts()
                .into_iter()
                .filter(|h| matches!(h.role, Role::Director | Role::Witness))
                .collect();
            if !(2..=3).contains(&voters.len()) {
                return Err(LabError::BadSpec(format!(
                    "directors run with 2 or 3 voters (directors plus witness), not {}",
                    voters.len()
                )));
            }
            for host in &voters {
                self.start_director(host)?;
            }
        }
        self.save()
    }

    fn build_host(&self, spec: &LabSpec, host: &Host) -> Result<(), LabError> {
        let lan = spec.lan_netns();
        let ns = spec.netns(host);
        let port = host.name();
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ])?;
        run(&[
            "ip", "-n", &lan, "link", "set", &port, "master", BRIDGE, "up",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            "address",
            &host.mac_string(),
        ])?;
        let v4 = format!("{}/{}", host.ipv4(), topology::LAN_V4_PREFIX_LEN);
        let v6 = format!("{}/{}", host.ipv6(), topology::LAN_V6_PREFIX_LEN);
        run(&["ip", "-n", &ns, "addr", "add", &v4, "dev", "eth0"])?;
        run(&["ip", "-n", &ns, "addr", "add", &v6, "dev", "eth0", "nodad"])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// The config file of a director host.
    pub fn director_config_path(&self, host: &Host) -> PathBuf {
        self.env
            .state_dir
            .join(format!("{}{}.yaml", self.state.spec.prefix, host.name()))
    }

    /// The admin socket of a director host.
    pub fn admin_socket(&self, host: &Host) -> PathBuf {
        self.env
            .state_dir
            .join(format!("{}{}", self.state.spec.prefix, host.name()))
            .join("admin.sock")
    }

    /// Whether the lab's director process of `name` runs.
    pub fn director_running(&self, name: &str) -> bool {
        self.state.processes.get(name).is_some_and(|ps| {
            ps.iter()
                .any(|p| p.what == "director" && process_matches(p))
        })
    }

    /// Writes the host's config and starts `director run` in it (no-op if it
    /// runs already).
    pub fn start_director(&mut self, host: &Host) -> Result<(), LabError> {
        let Some(director) = self.env.director.clone() else {
            return Err(LabError::MissingTool {
                tool: "director".into(),
                hint: "this lab was brought up without the director binary".into(),
            });
        };
        let name = host.name();
        if self.director_running(&name) {
            return Ok(());
        }
        let spec = self.state.spec.clone();
        let data_dir = self.env.state_dir.join(format!("{}{name}", spec.prefix));
        let mut config = crate::configs::director_config(&spec, host, &data_dir);
        if spec.kube {
            config.push_str(&crate::configs::kubernetes_section(&self.kubeconfig_path()));
        }
        let path = self.director_config_path(host);
        fs::write(&path, config).map_err(|source| LabError::Io {
            op: "writing",
            path: path.clone(),
            source,
        })?;
        let socket = self.admin_socket(host);
        let _ = fs::remove_file(&socket);
        let args = vec!["run".into(), "--config".into(), path.into_os_string()];
        self.spawn_tracked(host, &director, &args, "director", "director", &socket)
    }

    /// Starts `director run` on every host of `configs` at once, each with
    /// its config text (written to [`Lab::director_config_path`]) instead of
    /// the lab's own, and waits until every admin socket exists, at most
    /// `ready_timeout` in all. For generated configs, such as the scale
    /// benchmark's thousands of services, which take a while to load.
    /// `director` becomes the lab's director binary; a later
    /// [`Lab::start_host`] writes the lab's own config again.
    pub fn start_directors_with_configs(
        &mut self,
        director: &Path,
        configs: &[(Host, String)],
        ready_timeout: Duration,
    ) -> Result<(), LabError> {
        self.env.director = Some(director.to_path_buf());
        let mut started = Vec::new();
        for (host, config) in configs {
            let name = host.name();
            self.host(&name)?;
            if self.director_running(&name) {
                return Err(LabError::AlreadyUp {
                    what: format!("the director of {name} runs already"),
                });
            }
            let path = self.director_config_path(host);
            fs::write(&path, config).map_err(|source| LabError::Io {
                op: "writing",
                path: path.clone(),
                source,
            })?;
            let socket = self.admin_socket(host);
            let _ = fs::remove_file(&socket);
            let args = vec!["run".into(), "--config".into(), path.into_os_string()];
            let log = self.spawn(host, director, &args, "director", "director")?;
            started.push((name, socket, log));
        }
        let start = Instant::now();
        for (name, socket, log) in started {
            let left = ready_timeout.saturating_sub(start.elapsed());
            wait_ready(&name, "director", &socket, &log, left, ready_timeout)?;
        }
        Ok(())
    }

    /// The PID of the host's running director, if the lab started one and it
    /// still runs.
    pub fn director_pid(&self, name: &str) -> Option<i32> {
        self.state.processes.get(name).and_then(|ps| {
            ps.iter()
                .find(|p| p.what == "director" && process_matches(p))
                .map(|p| p.pid)
        })
    }

    /// Writes `config` for the host and starts keepalived (VRRP only) with it,
    /// in the foreground, as the comparison peer of the failover benchmark.
    pub fn start_keepalived(&mut self, host: &Host, config: &str) -> Result<(), LabError> {
        let keepalived = which("keepalived").ok_or_else(|| LabError::MissingTool {
            tool: "keepalived".into(),
            hint: "apt-get install keepalived".into(),
        })?;
        let name = host.name();
        let base = self
            .env
            .state_dir
            .join(format!("{}{name}-keepalived", self.state.spec.prefix));
        let conf = base.with_extension("conf");
        fs::write(&conf, config).map_err(|source| LabError::Io {
            op: "writing",
            path: conf.clone(),
            source,
        })?;
        let pid = base.with_extension("pid");
        let vrrp_pid = base.with_extension("vrrp.pid");
        let _ = fs::remove_file(&pid);
        let _ = fs::remove_file(&vrrp_pid);
        let args: Vec<std::ffi::OsString> = vec![
            "--vrrp".into(),
            "--dont-fork".into(),
            "--log-console".into(),
            "--no-syslog".into(),
            "--use-file".into(),
            conf.into_os_string(),
            "--pid".into(),
            pid.into_os_string(),
            "--vrrp_pid".into(),
            vrrp_pid.clone().into_os_string(),
        ];
        self.spawn_tracked(
            host,
            &keepalived,
            &args,
            "keepalived",
            "keepalived",
            &vrrp_pid,
        )
    }

    /// SIGKILLs the host's director (or keepalived) process group: process
    /// death; host and link stay up.
    pub fn crash(&mut self, name: &str) -> Result<(), LabError> {
        self.host(name)?;
        let procs = self.state.processes.get(name).cloned().unwrap_or_default();
        for p in procs
            .iter()
            .filter(|p| p.what == "director" || p.what == "keepalived")
        {
            if process_matches(p) {
                // The whole group: keepalived's VRRP child dies with it.
                kill(Pid::from_raw(-p.pid), Signal::SIGKILL).map_err(|e| {
                    LabError::Teardown(format!("killing {} of {name} (pid {}): {e}", p.what, p.pid))
                })?;
                let start = Instant::now();
                while process_matches(p) && start.elapsed() < Duration::from_secs(5) {
                    let _ = nix::sys::wait::waitpid(
                        Pid::from_raw(p.pid),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                    );
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        Ok(())
    }

    /// Sends `signal` to the host's director process (SIGHUP: reload).
    pub fn signal_director(&self, name: &str, signal: Signal) -> Result<(), LabError> {
        self.host(name)?;
        let procs = self.state.processes.get(name).cloned().unwrap_or_default();
        for p in procs.iter().filter(|p| p.what == "director") {
            if process_matches(p) {
                kill(Pid::from_raw(p.pid), signal).map_err(|e| {
                    LabError::Teardown(format!(
                        "signalling the director of {name} (pid {}): {e}",
                        p.pid
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Copies every log of the lab to the directory `DIRECTOR_LAB_KEEP_LOGS`
    /// names, if set (the lab does so as it goes down), and with `failed`
    /// prints the end of each director's log, so that a failed test says
    /// what the directors did.
    pub fn keep_logs(&self, failed: bool) {
        let spec = &self.state.spec;
        let keep = std::env::var_os(KEEP_LOGS_ENV).map(PathBuf::from);
        if let Some(dir) = &keep {
            let _ = fs::create_dir_all(dir);
        }
        for h in spec.hosts() {
            let base = format!("{}{}", spec.prefix, h.name());
            for suffix in LOG_SUFFIXES {
                let name = format!("{base}{suffix}");
                let from = self.env.state_dir.join(&name);
                if let Some(dir) = &keep {
                    let _ = fs::copy(&from, dir.join(&name));
                }
                if failed && suffix == "-director.log" {
                    if let Ok(text) = fs::read_to_string(&from) {
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = &lines[lines.len().saturating_sub(FAILURE_LOG_LINES)..];
                        eprintln!("--- the last {} lines of {name} ---", tail.len());
                        for l in tail {
                            eprintln!("{l}");
                        }
                    }
                }
            }
        }
    }

    /// The log file of the host's director.
    pub fn director_log(&self, host: &Host) -> PathBuf {
        self.env.state_dir.join(format!(
            "{}{}-director.log",
            self.state.spec.prefix,
            host.name()
        ))
    }

    /// Stops the host's director the way an operator does: SIGTERM (it
    /// drains first), SIGKILL only if it is still running after `grace`.
    pub fn terminate(&mut self, name: &str, grace: Duration) -> Result<(), LabError> {
        self.host(name)?;
        let procs = self.state.processes.get(name).cloned().unwrap_or_default();
        for p in procs.iter().filter(|p| p.what == "director") {
            stop_process_within(p, grace).map_err(LabError::Teardown)?;
        }
        Ok(())
    }

    /// Host death: cuts the host's link to the LAN and SIGKILLs its director.
    pub fn kill_host(&mut self, name: &str) -> Result<(), LabError> {
        self.set_link(name, false)?;
        self.crash(name)
    }

    /// Restores the host's link and starts its director if it has one and it
    /// is not running.
    pub fn start_host(&mut self, name: &str) -> Result<(), LabError> {
        let host = self.host(name)?;
        self.set_link(name, true)?;
        if self.env.director.is_some() && matches!(host.role, Role::Director | Role::Witness) {
            self.start_director(&host)?;
        }
        Ok(())
    }

    /// Brings the host's port on the LAN bridge up or down.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), LabError> {
        let host = self.host(name)?;
        let lan = self.state.spec.lan_netns();
        run(&[
            "ip",
            "-n",
            &lan,
            "link",
            "set",
            &host.name(),
            if up { "up" } else { "down" },
        ])?;
        Ok(())
    }

    /// Drops traffic from `a` to `b` (and from `b` to `a` unless `one_way`)
    /// with nftables in the receiving host.
    pub fn partition(&self, a: &str, b: &str, one_way: bool) -> Result<(), LabError> {
        let (ha, hb) = (self.host(a)?, self.host(b)?);
        self.drop_from(&ha, &hb)?;
        if !one_way {
            self.drop_from(&hb, &ha)?;
        }
        Ok(())
    }

    fn drop_from(&self, from: &Host, to: &Host) -> Result<(), LabError> {
        let to_name = to.name();
        let _ = self.exec(&to_name, &["nft", "add", "table", "inet", "labpart"]);
        let _ = self.exec(
            &to_name,
            &[
                "nft", "add", "chain", "inet", "labpart", "input", "{", "type", "filter", "hook",
                "input", "priority", "-10", ";", "}",
            ],
        );
        let v4 = from.ipv4().to_string();
        let v6 = from.ipv6().to_string();
        self.exec(
            &to_name,
            &[
                "nft", "add", "rule", "inet", "labpart", "input", "ip", "saddr", &v4, "drop",
            ],
        )?;
        self.exec(
            &to_name,
            &[
                "nft", "add", "rule", "inet", "labpart", "input", "ip6", "saddr", &v6, "drop",
            ],
        )?;
        Ok(())
    }

    /// Cuts `target` off from `others` both ways at one instant: a single
    /// nft transaction on `target` drops what it receives from them and what
    /// it sends to them (as a dead host looks to them), where
    /// [`LabGuard::partition`] adds one host pair after another.
    pub fn isolate(&self, target: &str, others: &[&str]) -> Result<(), LabError> {
        let mut script = String::from(
            "add table inet labpart; \
             add chain inet labpart input { type filter hook input priority -10 ; }; \
             add chain inet labpart output { type filter hook output priority -10 ; };",
        );
        for o in others {
            let h = self.host(o)?;
            let (v4, v6) = (h.ipv4(), h.ipv6());
            script.push_str(&format!(
                " add rule inet labpart input ip saddr {v4} drop; \
                 add rule inet labpart input ip6 saddr {v6} drop; \
                 add rule inet labpart output ip daddr {v4} drop; \
                 add rule inet labpart output ip6 daddr {v6} drop;"
            ));
        }
        self.exec(target, &["nft", &script])?;
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<(), LabError> {
        for h in self.state.spec.hosts() {
            let _ = self.exec(&h.name(), &["nft", "delete", "table", "inet", "labpart"]);
        }
        Ok(())
    }

    /// The node host of that name, or an error naming the lab's node hosts.
    fn node_host(&self, name: &str) -> Result<Host, LabError> {
        let nodes: Vec<Host> = self
            .state
            .spec
            .hosts()
            .into_iter()
            .filter(|h| h.role == Role::Node)
            .collect();
        Host::parse(name)
            .filter(|h| nodes.contains(h))
            .ok_or_else(|| LabError::NotANode {
                host: name.to_string(),
                nodes: nodes.iter().map(Host::name).collect::<Vec<_>>().join(" "),
            })
    }

    /// Whether the node host's `labnet serve` (its NodePorts and health
    /// endpoint) runs.
    pub fn node_running(&self, name: &str) -> bool {
        self.state.processes.get(name).is_some_and(|ps| {
            ps.iter()
                .any(|p| p.what == "nodeport-server" && process_matches(p))
        })
    }

    /// Stops the node host's `labnet serve` (SIGTERM, by its tracked PID):
    /// its NodePorts (TCP 30080 and 30081, UDP 30080) and its health
    /// endpoint (TCP 10256) go away, so connections to them are refused.
    /// The host, its link and its health setting stay. An error if `name`
    /// is not a node host of the lab.
    pub fn stop_node(&mut self, name: &str) -> Result<(), LabError> {
        self.node_host(name)?;
        let procs = self.state.processes.get(name).cloned().unwrap_or_default();
        for p in procs.iter().filter(|p| p.what == "nodeport-server") {
            stop_process(p).map_err(LabError::Teardown)?;
        }
        if let Some(ps) = self.state.processes.get_mut(name) {
            ps.retain(|p| p.what != "nodeport-server");
        }
        self.save()
    }

    /// Starts the node host's `labnet serve` again and waits until every
    /// port is bound; a no-op if it runs. Its health is what
    /// [`Lab::set_node_healthz`] last set (a restart does not reset it).
    pub fn start_node(&mut self, name: &str) -> Result<(), LabError> {
        let host = self.node_host(name)?;
        if self.node_running(name) {
            return Ok(());
        }
        let spec = self.state.spec.clone();
        self.start_node_server(&spec, &host)
    }

    /// Makes the node host's health endpoint (`GET /healthz` on TCP 10256)
    /// answer `200 OK` (`healthy`) or `503 Service Unavailable`, from the
    /// next request on, by removing or creating its fail file; works whether
    /// or not the node's server runs.
    pub fn set_node_healthz(&self, name: &str, healthy: bool) -> Result<(), LabError> {
        let host = self.node_host(name)?;
        let path = self.healthz_fail_path(&host);
        let result = if healthy {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        } else {
            fs::write(&path, b"")
        };
        result.map_err(|source| LabError::Io {
            op: if healthy { "removing" } else { "writing" },
            path,
            source,
        })
    }

    /// The file whose existence makes the node's `/healthz` answer 503.
    fn healthz_fail_path(&self, host: &Host) -> PathBuf {
        self.env.state_dir.join(format!(
            "{}{}-healthz.fail",
            self.state.spec.prefix,
            host.name()
        ))
    }

    /// The kubeconfig the API server `api` writes (server
    /// `https://10.10.0.5:6443`, reachable from every lab host).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.env
            .state_dir
            .join(format!("{}api.kubeconfig", self.state.spec.prefix))
    }

    /// Whether the lab's API server runs.
    pub fn api_running(&self) -> bool {
        self.state.processes.get("api").is_some_and(|ps| {
            ps.iter()
                .any(|p| p.what == "api-server" && process_matches(p))
        })
    }

    /// Starts the Kubernetes API server on `api` (no-op if it runs), with
    /// the objects it kept when it was stopped, and the node hosts
    /// registered as Ready Nodes the first time.
    pub fn start_api(&mut self) -> Result<(), LabError> {
        self.start_api_with(&[])
    }

    /// Starts the API server with a fresh store (its saved objects
    /// dropped) holding the Nodes and `objects`; for benchmarks that need
    /// many objects at once. Stops it first if it runs.
    pub fn restart_api_with(&mut self, objects: &[serde_json::Value]) -> Result<(), LabError> {
        self.stop_api()?;
        let spec = self.state.spec.clone();
        let state = self
            .env
            .state_dir
            .join(format!("{}api-state.json", spec.prefix));
        let _ = fs::remove_file(&state);
        self.start_api_with(objects)
    }

    fn start_api_with(&mut self, objects: &[serde_json::Value]) -> Result<(), LabError> {
        let host = self.host("api")?;
        if self.api_running() {
            return Ok(());
        }
        let spec = self.state.spec.clone();
        let base = self.env.state_dir.join(format!("{}api", spec.prefix));
        let state = base.with_file_name(format!("{}api-state.json", spec.prefix));
        let seed = base.with_file_name(format!("{}api-nodes.json", spec.prefix));
        let mut nodes: Vec<serde_json::Value> = spec
            .hosts()
            .iter()
            .filter(|h| h.role == Role::Node)
            .map(crate::configs::node_object)
            .collect();
        nodes.extend(objects.iter().cloned());
        let text = serde_json::to_string_pretty(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": nodes}),
        )
        .unwrap_or_default();
        fs::write(&seed, text).map_err(|source| LabError::Io {
            op: "writing",
            path: seed.clone(),
            source,
        })?;
        let kubeconfig = self.kubeconfig_path();
        let _ = fs::remove_file(&kubeconfig);
        let listen4 = format!("{}:{API_PORT}", host.ipv4());
        let listen6 = format!("[{}]:{API_PORT}", host.ipv6());
        let mut args: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--listen".into(),
            listen4.into(),
            "--listen".into(),
            listen6.into(),
            "--server-host".into(),
            host.ipv4().to_string().into(),
            "--kubeconfig-out".into(),
            kubeconfig.clone().into_os_string(),
            "--state".into(),
            state.clone().into_os_string(),
        ];
        if !state.exists() {
            args.push("--seed".into());
            args.push(seed.into_os_string());
        }
        let program = self.env.kube_double.clone();
        self.spawn_tracked(
            &host,
            &program,
            &args,
            "api-server",
            "kube-double",
            &kubeconfig,
        )
    }

    /// Stops the API server (SIGTERM); its objects are kept for
    /// [`Lab::start_api`].
    pub fn stop_api(&mut self) -> Result<(), LabError> {
        self.host("api")?;
        let procs = self.state.processes.get("api").cloned().unwrap_or_default();
        for p in procs.iter().filter(|p| p.what == "api-server") {
            stop_process_within(p, Duration::from_secs(5)).map_err(LabError::Teardown)?;
        }
        if let Some(ps) = self.state.processes.get_mut("api") {
            ps.retain(|p| p.what != "api-server");
        }
        self.save()
    }

    /// Runs the real `kubectl` against the lab's API server, from the host
    /// `api`, with the lab's kubeconfig.
    pub fn kubectl_command(&self, args: &[String]) -> Result<Command, LabError> {
        self.host("api")?;
        let kubectl = which("kubectl").ok_or_else(|| LabError::MissingTool {
            tool: "kubectl".into(),
            hint: "install kubectl (1.27 or newer)".into(),
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.state.spec.netns(&Host::api())])
            .arg(kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(args);
        Ok(cmd)
    }

    /// `kubectl ARGS` against the lab's API server; its stdout, or an error
    /// with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, LabError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self
            .kubectl_command(&args)?
            .output()
            .map_err(|source| LabError::Io {
                op: "running",
                path: PathBuf::from("kubectl"),
                source,
            })?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_node_server(&mut self, spec: &LabSpec, host: &Host) -> Result<(), LabError> {
        let name = host.name();
        let ready = self
            .env
            .state_dir
            .join(format!("{}{name}-labnet.ready", spec.prefix));
        let _ = fs::remove_file(&ready);
        let labnet = self.env.labnet.clone();
        let args = vec![
            "serve".into(),
            "--name".into(),
            name.into(),
            "--healthz-fail-file".into(),
            self.healthz_fail_path(host).into_os_string(),
            "--ready-file".into(),
            ready.clone().into_os_string(),
        ];
        self.spawn_tracked(host, &labnet, &args, "nodeport-server", "labnet", &ready)
    }

    /// Starts `program ARGS` in the host's namespace (see [`Lab::spawn`]) and
    /// waits until `ready` exists.
    fn spawn_tracked(
        &mut self,
        host: &Host,
        program: &Path,
        args: &[std::ffi::OsString],
        what: &str,
        comm: &str,
        ready: &Path,
    ) -> Result<(), LabError> {
        let log = self.spawn(host, program, args, what, comm)?;
        wait_ready(
            &host.name(),
            what,
            ready,
            &log,
            READY_TIMEOUT,
            READY_TIMEOUT,
        )
    }

    /// Starts `program ARGS` in the host's namespace, its output appended to
    /// `<prefix><host>-<comm>.log`, and tracks it by PID as `what` (replacing
    /// an earlier `what` of that host); its log file.
    fn spawn(
        &mut self,
        host: &Host,
        program: &Path,
        args: &[std::ffi::OsString],
        what: &str,
        comm: &str,
    ) -> Result<PathBuf, LabError> {
        let name = host.name();
        let spec = &self.state.spec;
        let log = self
            .env
            .state_dir
            .join(format!("{}{name}-{comm}.log", spec.prefix));
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| LabError::Io {
                op: "opening",
                path: log.clone(),
                source,
            })?;
        let log_err = log_file.try_clone().map_err(|source| LabError::Io {
            op: "duplicating",
            path: log.clone(),
            source,
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &spec.netns(host)])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|source| LabError::Io {
            op: "starting",
            path: program.to_path_buf(),
            source,
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // Not waited for here: `ip netns exec` replaced itself by the program
        // under the same PID, which the state file now tracks.
        drop(child);
        let entry = self.state.processes.entry(name).or_default();
        entry.retain(|p| p.what != what);
        entry.push(Process {
            pid,
            what: what.into(),
            comm: comm.into(),
        });
        self.save()?;
        Ok(log)
    }
}

/// Waits until `ready` exists, at most `limit`; the error names the host's
/// process, its log and `nominal`, the time it was given.
fn wait_ready(
    host: &str,
    what: &str,
    ready: &Path,
    log: &Path,
    limit: Duration,
    nominal: Duration,
) -> Result<(), LabError> {
    let start = Instant::now();
    while !ready.exists() {
        if start.elapsed() > limit {
            return Err(LabError::ServerNotReady {
                host: host.to_string(),
                what: what.into(),
                secs: nominal.as_secs(),
                log: log.to_path_buf(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A lab that is torn down when dropped (also while panicking). For tests.
#[derive(Debug)]
pub struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    /// Brings a lab up; see [`Lab::up`].
    pub fn up(spec: LabSpec, env: LabEnv) -> Result<LabGuard, LabError> {
        Ok(LabGuard {
            lab: Some(Lab::up(spec, env)?),
        })
    }

    /// Tears the lab down now and reports what went wrong.
    pub fn down(mut self) -> Result<(), LabError> {
        match self.lab.take() {
            Some(lab) => lab.down(),
            None => Ok(()),
        }
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        // Only `down` takes the lab out, and it consumes the guard.
        match &self.lab {
            Some(lab) => lab,
            None => unreachable!("a LabGuard always holds its lab until dropped"),
        }
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        match &mut self.lab {
            Some(lab) => lab,
            None => unreachable!("a LabGuard always holds its lab until dropped"),
        }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take() {
            if std::thread::panicking() {
                lab.keep_logs(true);
            }
            if let Err(e) = lab.down() {
                eprintln!("lab teardown: {e}");
            }
        }
    }
}

fn state_path(dir: &Path, prefix: &str) -> PathBuf {
    let stem = if prefix.is_empty() { "lab" } else { prefix };
    dir.join(format!("{stem}.json"))
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Checks what the lab needs before it touches anything.
fn preflight(env: &LabEnv) -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    require_tool("ip", "install iproute2 (apt-get install iproute2)")?;
    if !env.labnet.is_file() {
        return Err(LabError::MissingTool {
            tool: env.labnet.display().to_string(),
            hint: format!(
                "build it with `cargo build -p director-tests --bin labnet` or set {LABNET_ENV}"
            ),
        });
    }
    Ok(())
}

/// Fails with a one-line message when `tool` is not on PATH.
pub fn require_tool(tool: &str, hint: &str) -> Result<(), LabError> {
    if which(tool).is_some() {
        Ok(())
    } else {
        Err(LabError::MissingTool {
            tool: tool.to_string(),
            hint: hint.to_string(),
        })
    }
}

/// The first file named `tool` on PATH (and in the sbin directories, which a
/// non-login root shell may lack).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a command to completion; its stdout, or an error naming it.
pub fn run(argv: &[&str]) -> Result<String, LabError> {
    let (program, args) = argv.split_first().ok_or_else(|| LabError::Command {
        command: String::new(),
        status: "not run".into(),
        stderr: "empty command".into(),
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    output_of(cmd, &argv.join(" "))
}

fn output_of(mut cmd: Command, shown: &str) -> Result<String, LabError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            command: shown.to_string(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: shown.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether the PID still runs the program the lab started.
fn process_matches(p: &Process) -> bool {
    let comm = fs::read_to_string(format!("/proc/{}/comm", p.pid)).unwrap_or_default();
    let stat = fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default();
    // A zombie (state Z) has exited already.
    let zombie = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        .unwrap_or(false);
    comm.trim() == p.comm && !zombie
}

/// SIGTERM, then SIGKILL after two seconds; only if the PID is still ours.
/// When the process is this process's child it is also reaped.
fn stop_process(p: &Process) -> Result<(), String> {
    stop_process_within(p, Duration::from_secs(2))
}

/// SIGTERM, then SIGKILL after `grace`.
fn stop_process_within(p: &Process, grace: Duration) -> Result<(), String> {
    use nix::errno::Errno;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    if !process_matches(p) {
        // Already gone; reap it if it was our child.
        let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
        return Ok(());
    }
    let pid = Pid::from_raw(p.pid);
    kill(pid, Signal::SIGTERM)
        .map_err(|e| format!("signalling {} (pid {}): {e}", p.what, p.pid))?;
    let start = Instant::now();
    let mut killed = false;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return Ok(()),
            // Not our child: done once it no longer runs.
            Err(Errno::ECHILD) => {
                if !process_matches(p) {
                    return Ok(());
                }
            }
            Err(e) => return Err(format!("waiting for {} (pid {}): {e}", p.what, p.pid)),
        }
        let waited = start.elapsed();
        if waited > grace && !killed {
            kill(pid, Signal::SIGKILL)
                .map_err(|e| format!("killing {} (pid {}): {e}", p.what, p.pid))?;
            killed = true;
        }
        if waited > grace + Duration::from_secs(3) {
            return Err(format!("{} (pid {}) survived SIGKILL", p.what, p.pid));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab that was never brought up: only its files, in `dir`.
    fn paper_lab(dir: &Path) -> Lab {
        Lab {
            env: LabEnv {
                state_dir: dir.to_path_buf(),
                labnet: PathBuf::from("labnet"),
                director: None,
                kube_double: PathBuf::from("kube-double"),
            },
            state: LabState {
                spec: LabSpec::new(3, 2).with_prefix("t-"),
                processes: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn node_commands_take_only_the_labs_node_hosts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut lab = paper_lab(dir.path());
        for bad in ["d1", "client", "n3", "x", "n01"] {
            let e = lab.stop_node(bad).expect_err(bad).to_string();
            assert_eq!(
                e,
                format!("`{bad}` is not a node host of this lab; node hosts (NodePort stand-ins) are n1 n2")
            );
            assert!(lab.start_node(bad).is_err(), "{bad}");
            assert!(lab.set_node_healthz(bad, false).is_err(), "{bad}");
            assert!(!lab.node_running(bad), "{bad}");
        }
        assert!(!lab.node_running("n1"));
    }

    #[test]
    fn a_failing_node_is_a_file_in_the_state_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lab = paper_lab(dir.path());
        let fail = dir.path().join("t-n2-healthz.fail");
        lab.set_node_healthz("n2", false).expect("fail");
        assert!(fail.is_file());
        lab.set_node_healthz("n2", false).expect("fail twice");
        lab.set_node_healthz("n2", true).expect("ok");
        assert!(!fail.exists());
        lab.set_node_healthz("n2", true).expect("ok twice");
    }
}
