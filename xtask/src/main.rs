//! `cargo xtask`: the project's developer commands.
//!
//! - `vm -- CMD...`: run CMD as root under a real kernel with IPVS.
//! - `lab up|down|exec|status|node ...`: the namespace lab.
//! - `test`: every check CI runs, with one VM boot for all kernel tests.
//! - `bench raft|ipvs|failover|scale|kube`: benchmarks (they measure and report).
//! - `demo`: the lab with IPVS carrying traffic, end to end.
//! - `test-deploy`: the Ansible role against three Debian 12 VMs.

mod build;
mod deploy;
mod install;
mod test;
mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lab::{Lab, LabEnv, LabSpec};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Developer commands of director")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a command as root under a real kernel with IPVS (a VM unless the
    /// host kernel has IPVS), print its output and exit with its exit code.
    Vm {
        #[command(flatten)]
        vm: VmArgs,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// The namespace lab: a bridged LAN of directors, nodes and a client.
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
    /// fmt, clippy, the Vagrant lab's `vagrant validate`, unit tests,
    /// host-namespace tests, one VM boot that runs every kernel test, then
    /// the rollout test (`test-deploy`).
    Test {
        #[command(flatten)]
        vm: VmArgs,
        /// Stop after the host stages (no VM).
        #[arg(long)]
        no_vm: bool,
        /// Leave out the last stage, the Ansible role against three Debian
        /// VMs (`test-deploy`, about 17 minutes).
        #[arg(long)]
        no_deploy: bool,
    },
    /// Benchmarks (they measure and report; they assert nothing about speed).
    Bench {
        #[command(subcommand)]
        bench: BenchCmd,
    },
    /// Bring up the lab, program IPVS in a director, send traffic through the
    /// VIP and show where it went; then clean up.
    Demo {
        #[command(flatten)]
        vm: VmArgs,
        /// Run the demo here, in this kernel (used inside the VM).
        #[arg(long, hide = true)]
        inside: bool,
    },
    /// The Ansible role against three Debian 12 VMs on one virtual LAN:
    /// site.yml twice (the second changes nothing), the group healthy, the
    /// VIP answering a client, the owner's VM powered off (failover.sh), a
    /// rolling upgrade under a client loop (upgrade.sh). Needs root; builds
    /// the VM image into the cache folder on first use.
    TestDeploy {
        /// Guest memory per VM (qemu -m syntax).
        #[arg(long, default_value = "768M")]
        memory: String,
        /// vCPUs per VM.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Hold this file's lock (flock) while cargo builds (for machines
        /// where builds take turns).
        #[arg(long)]
        cargo_lock: Option<PathBuf>,
        /// Hold this file's lock while the VMs run (for machines where VM
        /// runs take turns).
        #[arg(long)]
        vm_lock: Option<PathBuf>,
        /// Leave the VMs and namespaces up at the end (the next run ends
        /// them).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Raft: commit latency p50/p99 and leader failover (kill -9 until a new
    /// leader has committed), default and tight timing, `labraft` processes
    /// in the lab's namespaces on the host kernel (needs root).
    Raft {
        /// Sequential commits measured per timing.
        #[arg(long, default_value_t = 500)]
        commits: u32,
        /// Leader failovers measured per timing.
        #[arg(long, default_value_t = 10)]
        failovers: u32,
    },
    /// Programming IPVS: director vs ipvsadm side by side (full apply, one
    /// weight change, dump, peak memory), in one VM run.
    Ipvs {
        #[command(flatten)]
        vm: VmArgs,
        /// Number of virtual services.
        #[arg(long, default_value_t = 10_000)]
        services: u32,
        /// Destinations per service.
        #[arg(long, default_value_t = 4)]
        dests: u32,
        /// Runs per measurement (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Failover: director (default and tuned timing) vs keepalived (VRRP,
    /// default and tuned) side by side in one VM run: client-visible outage on
    /// owner host death, and two-owner time under a one-way partition. Writes
    /// target/bench-failover.json and docs/benchmarks-failover.png.
    Failover {
        #[command(flatten)]
        vm: VmArgs,
        /// Owner host deaths per system.
        #[arg(long, default_value_t = 10)]
        runs: u32,
        /// Length of the one-way partition, seconds.
        #[arg(long, default_value_t = 10)]
        partition_s: u32,
        /// Only these systems (keepalived-default, keepalived-tuned,
        /// director-default, director-tuned), comma-separated.
        #[arg(long)]
        only: Option<String>,
        /// Before each director run, make the VIP's owner the Raft leader
        /// (the leader is killed and restarted until the owner is elected),
        /// so that each kill takes the leader with the owner.
        #[arg(long)]
        owner_leads: bool,
    },
    /// Scale: three directors (release build) in the lab, all given the same
    /// generated config of N static services x 4 backends: time until every
    /// kernel holds the same table, idle CPU and memory, and one backend
    /// changed by SIGHUP (time until all three kernels show it, kernel
    /// operations per director). One VM run; writes target/bench-scale.json.
    Scale {
        #[command(flatten)]
        vm: VmArgs,
        /// Numbers of services, comma-separated; each is one lab run.
        #[arg(long, default_value = "1000,10000")]
        services: String,
        /// Seconds the directors are watched at rest after converging.
        #[arg(long, default_value_t = 60)]
        idle_s: u64,
        /// Seconds allowed from start until the three kernels agree.
        #[arg(long, default_value_t = 900)]
        converge_timeout_s: u64,
        /// Seconds allowed for the change to show in all three kernels.
        #[arg(long, default_value_t = 60)]
        change_timeout_s: u64,
    },
    /// Kubernetes: three directors (release build) and the lab's API
    /// server; N LoadBalancer Services created at once; per Service the time
    /// until its status shows an address and until every director's kernel
    /// holds it (p50/p99/max), API requests per Service, and the directors'
    /// memory holding them. One VM run; writes target/bench-kube.json.
    Kube {
        #[command(flatten)]
        vm: VmArgs,
        /// Numbers of Services, comma-separated; each is one lab run.
        #[arg(long, default_value = "1000,10000")]
        services: String,
        /// Seconds each run may take.
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
    },
}

#[derive(Debug, Clone, Args)]
struct VmArgs {
    /// Guest memory (qemu -m syntax).
    #[arg(long, default_value = "2G")]
    memory: String,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Seconds before a hung guest is stopped.
    #[arg(long, default_value_t = 2400)]
    timeout: u64,
    /// Run directly on the host (its kernel must have IPVS); automatic when
    /// `modprobe ip_vs` works here.
    #[arg(long)]
    host: bool,
}

impl VmArgs {
    fn options(&self) -> vm::VmOptions {
        vm::VmOptions {
            memory: self.memory.clone(),
            cpus: self.cpus,
            timeout: Duration::from_secs(self.timeout),
            host: self.host,
        }
    }
}

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Create the lab's namespaces and LAN and start the node servers.
    Up {
        /// Number of directors (d1..dN).
        #[arg(long, default_value_t = 3)]
        directors: u8,
        /// Number of node hosts (n1..nM).
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        /// Add the witness w1.
        #[arg(long)]
        witness: bool,
        /// Do not start `director run` on the directors (network only).
        #[arg(long)]
        no_directors: bool,
        /// Also start the Kubernetes API server on host `api` (10.10.0.5:6443),
        /// register the node hosts as Nodes, and have the directors serve its
        /// LoadBalancer Services.
        #[arg(long)]
        kube: bool,
    },
    /// Run the real kubectl against the lab's API server (`lab up --kube`).
    Kubectl {
        /// kubectl's arguments (after `--`).
        #[arg(required = true, last = true)]
        args: Vec<String>,
    },
    /// Take the lab's API server away (`stop`) or bring it back (`start`,
    /// with every object it had).
    Api {
        /// stop or start.
        #[arg(value_parser = ["stop", "start"])]
        action: String,
    },
    /// A node host's NodePort stand-in (`labnet serve`): stop it, start it,
    /// or make its kube-proxy health endpoint (`/healthz` on TCP 10256) fail.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// Host death: cut HOST's link and SIGKILL its director.
    Kill {
        /// d1, d2, ...
        host: String,
    },
    /// Process death: SIGKILL HOST's director; host and link stay up.
    Crash {
        /// d1, d2, ...
        host: String,
    },
    /// Restore HOST's link and start its director.
    Start {
        /// d1, d2, ...
        host: String,
    },
    /// Drop traffic between A and B (both ways, or A to B only).
    Partition {
        /// Sender side.
        a: String,
        /// Receiver side.
        b: String,
        /// Drop only what A sends to B.
        #[arg(long)]
        one_way: bool,
    },
    /// Remove every partition.
    Heal,
    /// Watch who holds a VIP for a while (every director's local routes and
    /// the ARP answers the client gets, every 10 ms) and report; exit 1 if
    /// two directors held it or answered for it at once.
    Watch {
        /// The VIP.
        #[arg(long, default_value = "10.10.0.200")]
        vip: std::net::IpAddr,
        /// How long to watch, seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Stop the lab's processes and delete its namespaces.
    Down,
    /// Run a command inside a lab host.
    Exec {
        /// d1, n2, client, w1, ...
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// List the lab's hosts, addresses and processes.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Stop HOST's NodePort servers and health endpoint: connections to
    /// TCP 30080, 30081 and 10256 are refused; host and link stay up.
    Stop {
        /// n1, n2, ...
        host: String,
    },
    /// Start HOST's NodePort servers and health endpoint again (no-op if
    /// they run).
    Start {
        /// n1, n2, ...
        host: String,
    },
    /// Make HOST's `/healthz` answer 503 (`fail`) or 200 (`ok`) from the
    /// next request on.
    Healthz {
        /// fail or ok.
        #[arg(value_parser = ["fail", "ok"])]
        state: String,
        /// n1, n2, ...
        host: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    let root = workspace_root();
    match cli.command {
        Cmd::Vm { vm, command } => Ok(vm::run(&root, &vm.options(), &command)?.code),
        Cmd::Lab { command } => lab_command(&root, command),
        Cmd::Test {
            vm,
            no_vm,
            no_deploy,
        } => test::run(&root, &vm.options(), no_vm, no_deploy),
        Cmd::Bench {
            bench: BenchCmd::Raft { commits, failovers },
        } => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args([
                    "test",
                    "--quiet",
                    "--release",
                    "-p",
                    "director-tests",
                    "--test",
                    "raft_bench",
                ])
                .args(["--", "--ignored", "--nocapture", "--test-threads=1"])
                .env("RAFT_BENCH_COMMITS", commits.to_string())
                .env("RAFT_BENCH_FAILOVERS", failovers.to_string())
                .current_dir(&root)
                .status()
                .context("running the Raft benchmark")?;
            Ok(status.code().unwrap_or(1))
        }
        Cmd::Bench {
            bench:
                BenchCmd::Ipvs {
                    vm,
                    services,
                    dests,
                    runs,
                },
        } => {
            build::cargo(&root, &["build", "--quiet", "--release", "-p", "director"])?;
            let director = vm::target_dir(&root).join("release").join("director");
            let out = vm::target_dir(&root).join("bench-ipvs.json");
            let argv: Vec<String> = vec![
                "python3".into(),
                "tests/bench/ipvs_bench.py".into(),
                "--director".into(),
                director.to_string_lossy().into_owned(),
                "--services".into(),
                services.to_string(),
                "--dests".into(),
                dests.to_string(),
                "--runs".into(),
                runs.to_string(),
                "--json".into(),
                out.to_string_lossy().into_owned(),
            ];
            Ok(vm::run(&root, &vm.options(), &argv)?.code)
        }
        Cmd::Bench {
            bench:
                BenchCmd::Failover {
                    vm,
                    runs,
                    partition_s,
                    only,
                    owner_leads,
                },
        } => bench_failover(&root, &vm, runs, partition_s, only, owner_leads),
        Cmd::Bench {
            bench:
                BenchCmd::Scale {
                    vm,
                    services,
                    idle_s,
                    converge_timeout_s,
                    change_timeout_s,
                },
        } => bench_scale(
            &root,
            &vm,
            &ScaleLimits {
                services,
                idle_s,
                converge_timeout_s,
                change_timeout_s,
            },
        ),
        Cmd::Bench {
            bench:
                BenchCmd::Kube {
                    vm,
                    services,
                    timeout_s,
                },
        } => bench_kube(&root, &vm, &services, timeout_s),
        Cmd::TestDeploy {
            memory,
            cpus,
            cargo_lock,
            vm_lock,
            keep,
        } => deploy::run(
            &root,
            &deploy::DeployOptions {
                memory,
                cpus,
                cargo_lock,
                vm_lock,
                keep,
            },
        ),
        Cmd::Demo { vm, inside } => {
            if inside {
                demo_inside(&root)
            } else {
                demo(&root, &vm.options())
            }
        }
    }
}

fn bench_failover(
    root: &Path,
    vm: &VmArgs,
    runs: u32,
    partition_s: u32,
    only: Option<String>,
    owner_leads: bool,
) -> Result<i32> {
    if lab::lab::which("keepalived").is_none() {
        install::apt_install(&["keepalived"])?;
    }
    build::build_lab_binaries(root, true)?;
    let bench = build::build_tests(root, &[("director-tests", "failover_bench")], true)?;
    let exe = bench
        .first()
        .context("cargo built no failover benchmark")?
        .to_string_lossy()
        .into_owned();
    let out = vm::target_dir(root).join("bench-failover.json");
    let _ = std::fs::remove_file(&out);
    let mut argv: Vec<String> = vec![
        "env".into(),
        format!("FAILOVER_RUNS={runs}"),
        format!("FAILOVER_PARTITION_S={partition_s}"),
        format!("FAILOVER_OUT={}", out.display()),
    ];
    if let Some(only) = only {
        argv.push(format!("FAILOVER_ONLY={only}"));
    }
    if owner_leads {
        argv.push("FAILOVER_OWNER_LEADS=1".into());
    }
    argv.extend([
        exe,
        "--ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]);
    let code = vm::run(root, &vm.options(), &argv)?.code;
    if code != 0 || !out.is_file() {
        return Ok(if code == 0 { 1 } else { code });
    }
    let python = install::bench_python()?;
    let chart = root.join("docs").join("benchmarks-failover.png");
    let status = std::process::Command::new(python)
        .arg(root.join("tests/bench/failover_chart.py"))
        .arg(&out)
        .arg(&chart)
        .status()
        .context("drawing the failover chart")?;
    Ok(status.code().unwrap_or(1))
}

/// What `bench scale` measures, and how long each phase may take.
#[derive(Debug)]
struct ScaleLimits {
    services: String,
    idle_s: u64,
    converge_timeout_s: u64,
    change_timeout_s: u64,
}

/// Seconds a director has to open its admin socket (it loads the whole
/// generated config first).
const SCALE_READY_TIMEOUT_S: u64 = 300;

/// A benchmark test target run in one VM boot: builds the lab's binaries
/// and the target (release), raises the VM's timeout to `needed`, and runs
/// it with `env` (NAME=VALUE) and `out_var` naming `target/OUT`; the exit
/// code.
fn bench_in_vm(
    root: &Path,
    vm: &VmArgs,
    target: &str,
    env: Vec<String>,
    (out_var, out_name): (&str, &str),
    needed: Duration,
) -> Result<i32> {
    // The guest runs the host's tools: ipvsadm lists the tables, genl
    // (iproute2) names the IPVS family for the nlmon watch.
    if lab::lab::which("ipvsadm").is_none() {
        install::apt_install(&["ipvsadm"])?;
    }
    build::build_lab_binaries(root, true)?;
    let bench = build::build_tests(root, &[("director-tests", target)], true)?;
    let exe = bench
        .first()
        .with_context(|| format!("cargo built no {target}"))?
        .to_string_lossy()
        .into_owned();
    let out = vm::target_dir(root).join(out_name);
    let _ = std::fs::remove_file(&out);
    let mut opts = vm.options();
    if opts.timeout < needed {
        eprintln!(
            "xtask: the VM timeout is raised to {} s to cover every phase's limit",
            needed.as_secs()
        );
        opts.timeout = needed;
    }
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env);
    argv.extend([
        format!("{out_var}={}", out.display()),
        exe,
        "--ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]);
    let code = vm::run(root, &opts, &argv)?.code;
    if out.is_file() {
        println!("results: {}", out.display());
    }
    Ok(code)
}

/// `bench kube`: the Kubernetes benchmark in one VM run.
fn bench_kube(root: &Path, vm: &VmArgs, services: &str, timeout_s: u64) -> Result<i32> {
    let counts = services.split(',').filter(|s| !s.trim().is_empty()).count() as u64;
    bench_in_vm(
        root,
        vm,
        "kube_bench",
        vec![
            format!("KUBE_SERVICES={services}"),
            format!("KUBE_TIMEOUT_S={timeout_s}"),
            format!("KUBE_REVISION={}", revision(root)),
        ],
        ("KUBE_OUT", "bench-kube.json"),
        Duration::from_secs(120 + (timeout_s + 300) * counts.max(1)),
    )
}

fn bench_scale(root: &Path, vm: &VmArgs, limits: &ScaleLimits) -> Result<i32> {
    let counts: Vec<u32> = limits
        .services
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--services {:?}: comma-separated numbers", limits.services))?;
    if counts.is_empty() || counts.contains(&0) {
        anyhow::bail!("--services: at least one number, none of them 0");
    }
    // Every phase has its own limit inside; the VM's must cover them all.
    let per_run = SCALE_READY_TIMEOUT_S
        + limits.converge_timeout_s
        + limits.idle_s
        + limits.change_timeout_s
        + 180;
    bench_in_vm(
        root,
        vm,
        "scale_bench",
        vec![
            format!("SCALE_SERVICES={}", limits.services),
            format!("SCALE_IDLE_S={}", limits.idle_s),
            format!("SCALE_READY_TIMEOUT_S={SCALE_READY_TIMEOUT_S}"),
            format!("SCALE_CONVERGE_TIMEOUT_S={}", limits.converge_timeout_s),
            format!("SCALE_CHANGE_TIMEOUT_S={}", limits.change_timeout_s),
            format!("SCALE_REVISION={}", revision(root)),
        ],
        ("SCALE_OUT", "bench-scale.json"),
        Duration::from_secs(120 + per_run * counts.len() as u64),
    )
}

/// The checkout's commit, with `-dirty` when it has uncommitted changes.
fn revision(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{commit}-dirty"),
        _ => commit,
    }
}

/// The checkout: the parent of this crate's folder.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The lab's environment, with the workspace's own `labnet` (built if needed).
fn lab_env(root: &Path, build: bool) -> Result<LabEnv> {
    // In the VM the runner has built it on the host already (cargo is slow
    // under emulation).
    if build && std::env::var_os("DIRECTOR_IN_VM").is_none() {
        build::cargo(
            root,
            &[
                "build",
                "--quiet",
                "-p",
                "director-tests",
                "--bin",
                "labnet",
            ],
        )?;
    }
    let mut env = LabEnv::from_env();
    if std::env::var_os(lab::lab::LABNET_ENV).is_none() {
        env.labnet = vm::target_dir(root).join("debug").join("labnet");
    }
    if std::env::var_os(lab::lab::KUBE_DOUBLE_ENV).is_none() {
        env.kube_double = vm::target_dir(root).join("debug").join("kube-double");
    }
    Ok(env)
}

fn lab_command(root: &Path, command: LabCmd) -> Result<i32> {
    match command {
        LabCmd::Up {
            directors,
            nodes,
            witness,
            no_directors,
            kube,
        } => {
            let mut env = lab_env(root, true)?;
            if kube && std::env::var_os("DIRECTOR_IN_VM").is_none() {
                build::cargo(root, &["build", "--quiet", "-p", "kube-double"])?;
            }
            if !no_directors {
                if std::env::var_os("DIRECTOR_IN_VM").is_none() {
                    build::cargo(root, &["build", "--quiet", "-p", "director"])?;
                }
                env.director = Some(vm::target_dir(root).join("debug").join("director"));
            }
            let spec = LabSpec::new(directors, nodes)
                .with_witness(witness)
                .with_kube(kube);
            let lab = Lab::up(spec, env)?;
            print_status(&lab, false)?;
            Ok(0)
        }
        LabCmd::Kubectl { args } => {
            let lab = Lab::open("", lab_env(root, false)?)?;
            let status = lab
                .kubectl_command(&args)?
                .status()
                .context("running kubectl")?;
            Ok(status.code().unwrap_or(1))
        }
        LabCmd::Api { action } => {
            let mut lab = Lab::open("", lab_env(root, false)?)?;
            if action == "stop" {
                lab.stop_api()?;
                println!("api: the Kubernetes API server is stopped");
            } else {
                lab.start_api()?;
                println!("api: the Kubernetes API server runs at https://10.10.0.5:6443");
            }
            Ok(0)
        }
        LabCmd::Node { command } => {
            let mut lab = Lab::open("", lab_env(root, false)?)?;
            let healthz = lab::topology::KUBE_PROXY_HEALTHZ;
            match command {
                NodeCmd::Stop { host } => {
                    lab.stop_node(&host)?;
                    println!("{host}: NodePort servers and health endpoint stopped");
                }
                NodeCmd::Start { host } => {
                    lab.start_node(&host)?;
                    println!(
                        "{host}: NodePort servers running (tcp/{} tcp/{} udp/{}), health endpoint on tcp/{healthz}",
                        lab::topology::NODEPORT_HTTP,
                        lab::topology::NODEPORT_TCP,
                        lab::topology::NODEPORT_UDP
                    );
                }
                NodeCmd::Healthz { state, host } => {
                    let healthy = state == "ok";
                    lab.set_node_healthz(&host, healthy)?;
                    if healthy {
                        println!("{host}: /healthz on tcp/{healthz} answers 200 OK");
                    } else {
                        println!(
                            "{host}: /healthz on tcp/{healthz} answers 503 Service Unavailable"
                        );
                    }
                }
            }
            Ok(0)
        }
        LabCmd::Down => {
            let lab = Lab::open("", lab_env(root, false)?)?;
            lab.down()?;
            println!("lab is down");
            Ok(0)
        }
        LabCmd::Exec { host, command } => {
            let lab = Lab::open("", lab_env(root, false)?)?;
            let status = lab.exec_inherit(&host, &command)?;
            Ok(status.code().unwrap_or(1))
        }
        LabCmd::Status { json } => {
            let lab = Lab::open("", lab_env(root, false)?)?;
            print_status(&lab, json)?;
            Ok(0)
        }
        LabCmd::Kill { host } => {
            let mut lab = Lab::open("", lab_env(root, false)?)?;
            lab.kill_host(&host)?;
            println!("{host}: link cut, director killed");
            Ok(0)
        }
        LabCmd::Crash { host } => {
            let mut lab = Lab::open("", lab_env(root, false)?)?;
            lab.crash(&host)?;
            println!("{host}: director killed (SIGKILL); host and link up");
            Ok(0)
        }
        LabCmd::Start { host } => {
            let mut env = lab_env(root, false)?;
            env.director = Some(vm::target_dir(root).join("debug").join("director"));
            let mut lab = Lab::open("", env)?;
            lab.start_host(&host)?;
            println!("{host}: link up, director running");
            Ok(0)
        }
        LabCmd::Partition { a, b, one_way } => {
            let lab = Lab::open("", lab_env(root, false)?)?;
            lab.partition(&a, &b, one_way)?;
            println!(
                "dropping {a} -> {b}{}",
                if one_way { "" } else { " and back" }
            );
            Ok(0)
        }
        LabCmd::Heal => {
            let lab = Lab::open("", lab_env(root, false)?)?;
            lab.heal()?;
            println!("partitions removed");
            Ok(0)
        }
        LabCmd::Watch { vip, seconds } => {
            let lab = Lab::open("", lab_env(root, true)?)?;
            let directors: Vec<String> = lab
                .spec()
                .hosts()
                .iter()
                .filter(|h| h.role == lab::Role::Director)
                .map(lab::Host::name)
                .collect();
            println!(
                "watching {vip} from {} and the client for {seconds} s",
                directors.join(", ")
            );
            let watch = lab::watch::OwnerWatch::start(&lab, vip, &directors, 10)?;
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            let seen = watch.stop();
            println!("{}", seen.summary());
            let two = seen.two_owner_ms();
            if two > 0.0 {
                println!("TWO OWNERS for {two:.1} ms");
                Ok(1)
            } else {
                println!("never two owners");
                Ok(0)
            }
        }
    }
}

fn print_status(lab: &Lab, json: bool) -> Result<()> {
    let rows = lab.status();
    let first = lab::topology::vip_v4(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let last = lab::topology::vip_v4(lab::topology::VIP_COUNT - 1)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let first6 = lab::topology::vip_v6(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let last6 = lab::topology::vip_v6(lab::topology::VIP_COUNT - 1)
        .map(|a| a.to_string())
        .unwrap_or_default();
    if json {
        let value = serde_json::json!({
            "hosts": rows,
            "lan": { "ipv4": lab::topology::LAN_V4, "ipv6": lab::topology::LAN_V6 },
            "vip_range": { "ipv4": [first, last], "ipv6": [first6, last6] },
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).context("printing JSON")?
        );
        return Ok(());
    }
    println!(
        "{:<8} {:<9} {:<10} {:<13} {:<14} {:<18} {:<5} PROCESSES",
        "HOST", "ROLE", "NETNS", "IPV4", "IPV6", "MAC", "LINK"
    );
    for r in rows {
        let link = match (r.present, r.link_up) {
            (false, _) => "gone",
            (true, true) => "up",
            (true, false) => "down",
        };
        let procs = if r.processes.is_empty() {
            "-".to_string()
        } else {
            r.processes.join(", ")
        };
        println!(
            "{:<8} {:<9} {:<10} {:<13} {:<14} {:<18} {:<5} {}",
            r.host,
            r.role.to_string(),
            r.netns,
            r.ipv4,
            r.ipv6,
            r.mac,
            link,
            procs
        );
    }
    println!(
        "LAN {} {}; VIP range {first}-{last}, {first6}-{last6}",
        lab::topology::LAN_V4,
        lab::topology::LAN_V6
    );
    print_vips(lab);
    Ok(())
}

/// VIP owners as a running director sees them.
fn print_vips(lab: &Lab) {
    let director = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("director")))
        .filter(|p| p.is_file());
    let Some(director) = director else { return };
    for h in lab.spec().hosts() {
        if h.role != lab::Role::Director || !lab.director_running(&h.name()) {
            continue;
        }
        let Ok(out) = std::process::Command::new(&director)
            .args(["status", "-o", "json", "--socket"])
            .arg(lab.admin_socket(&h))
            .output()
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            continue;
        };
        println!(
            "VIPs as {} sees them (leader {}):",
            h.name(),
            v["cluster"]["leader_name"].as_str().unwrap_or("-")
        );
        println!("  {:<16} {:<14} {:<6} EPOCH", "VIP", "SERVICE", "OWNER");
        for x in v["vips"].as_array().into_iter().flatten() {
            println!(
                "  {:<16} {:<14} {:<6} {}",
                x["vip"].as_str().unwrap_or("-"),
                x["service"].as_str().unwrap_or("-"),
                x["owner_name"].as_str().unwrap_or("-"),
                x["epoch"]
                    .as_u64()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
        return;
    }
}

fn demo(root: &Path, opts: &vm::VmOptions) -> Result<i32> {
    build::cargo(root, &["build", "--quiet", "-p", "director"])?;
    build::cargo(
        root,
        &[
            "build",
            "--quiet",
            "-p",
            "director-tests",
            "--bin",
            "labnet",
        ],
    )?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let argv = vec![
        exe.to_string_lossy().into_owned(),
        "demo".into(),
        "--inside".into(),
    ];
    let outcome = vm::run(root, opts, &argv)?;
    Ok(outcome.code)
}

fn demo_inside(root: &Path) -> Result<i32> {
    use lab::scenario::http_tally;
    use lab::{Host, LabGuard};
    use std::time::{Duration, Instant};
    let mut env = lab_env(root, false)?;
    let director = vm::target_dir(root).join("debug").join("director");
    env.director = Some(director.clone());
    // The daemon's own default timing, as a production director runs (the
    // lab's other commands and the VM tests use a relaxed one).
    let spec = LabSpec::new(3, 2)
        .with_prefix("demo-")
        .with_timing(lab::configs::TimingProfile::Default);
    println!(
        "== bringing up the lab: directors d1 d2 d3 running `director run`, nodes n1 n2, a client"
    );
    println!(
        "   timing: the daemon's defaults (heartbeat 40 ms, election 100..200 ms, ownership lease 300 ms)"
    );
    let mut lab = LabGuard::up(spec, env)?;
    let vip = lab::topology::vip_v4(0).context("the lab's VIP range is empty")?;
    let target = format!("{vip}:80");
    let all: Vec<Host> = (1..=3).map(Host::director).collect();
    let status = |lab: &LabGuard, h: &Host, format: &str| -> Option<String> {
        let out = std::process::Command::new(&director)
            .args(["status", "-o", format, "--socket"])
            .arg(lab.admin_socket(h))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let owner_of = |lab: &LabGuard, hosts: &[Host]| -> Option<String> {
        let mut owners = hosts.iter().map(|h| {
            let v: serde_json::Value = serde_json::from_str(&status(lab, h, "json")?).ok()?;
            v["vips"]
                .as_array()?
                .iter()
                .find(|x| x["vip"] == vip.to_string())?["owner_name"]
                .as_str()
                .map(str::to_string)
        });
        let first = owners.next()??;
        owners
            .all(|o| o.as_deref() == Some(first.as_str()))
            .then_some(first)
    };
    let wait = |what: &str, f: &mut dyn FnMut() -> Option<String>| -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if start.elapsed() > Duration::from_secs(90) {
                anyhow::bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the directors to agree on an owner", &mut || {
        owner_of(&lab, &all)
    })?;
    println!("== `director status` on d1");
    print!("{}", status(&lab, &all[0], "table").unwrap_or_default());
    let show = |t: &lab::scenario::HttpTally| {
        let served: Vec<String> = t.served.iter().map(|(n, c)| format!("{n}: {c}")).collect();
        println!("   {} (failed: {})", served.join(", "), t.failed);
    };
    println!("== 20 HTTP requests from client to {target}");
    let first = wait("the VIP to answer", &mut || {
        let t = http_tally(&lab, "client", &target, 1).ok()?;
        (t.failed == 0).then(String::new)
    });
    first?;
    let before = http_tally(&lab, "client", &target, 20)?;
    show(&before);
    let owner = wait("the directors to agree on an owner", &mut || {
        owner_of(&lab, &all)
    })?;
    println!("== killing {owner}'s host, the VIP's owner (link cut, director SIGKILLed)");
    lab.kill_host(&owner)?;
    let killed = Instant::now();
    let survivors: Vec<Host> = all.iter().filter(|h| h.name() != owner).cloned().collect();
    wait("traffic through the VIP again", &mut || {
        let t = http_tally(&lab, "client", &target, 1).ok()?;
        (t.failed == 0).then(String::new)
    })?;
    println!("   the VIP answered again {:.2} s after the kill (one probe at a time, under this machine's emulation)", killed.elapsed().as_secs_f64());
    let next = wait("a new owner", &mut || {
        owner_of(&lab, &survivors).filter(|o| *o != owner)
    })?;
    println!(
        "== `director status` on {} (new owner {next})",
        survivors[0].name()
    );
    print!(
        "{}",
        status(&lab, &survivors[0], "table").unwrap_or_default()
    );
    println!("== 20 HTTP requests from client to {target}");
    let after = http_tally(&lab, "client", &target, 20)?;
    show(&after);
    println!("== tearing the lab down");
    lab.down()?;
    Ok(
        if before.failed == 0 && after.failed == 0 && before.served.len() == 2 {
            0
        } else {
            1
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The `lab node` commands of docs/lab.md, which tests and people use.
    #[test]
    fn lab_node_commands_parse() {
        let node = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Cmd::Lab {
                command: LabCmd::Node { command },
            }) => command,
            other => panic!("{args:?} parsed as {other:?}"),
        };
        assert!(matches!(
            node(&["lab", "node", "stop", "n1"]),
            NodeCmd::Stop { host } if host == "n1"
        ));
        assert!(matches!(
            node(&["lab", "node", "start", "n2"]),
            NodeCmd::Start { host } if host == "n2"
        ));
        assert!(matches!(
            node(&["lab", "node", "healthz", "fail", "n1"]),
            NodeCmd::Healthz { state, host } if state == "fail" && host == "n1"
        ));
        assert!(matches!(
            node(&["lab", "node", "healthz", "ok", "n1"]),
            NodeCmd::Healthz { state, host } if state == "ok" && host == "n1"
        ));
        for bad in [
            &["lab", "node", "healthz", "broken", "n1"][..],
            &["lab", "node", "healthz", "n1"],
            &["lab", "node", "stop"],
            &["lab", "node", "restart", "n1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
