//! `director`: the command line. It parses the arguments and calls the
//! library; everything else lives in `director::*`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand};
use director::ops::admin::{self, Request};
use director::ops::drain::DrainReport;
use director::ops::status::{self, Status};
use director::ops::systemd;
use director::{config, daemon, ipvs, logging};

/// jemalloc: the daemon returns the memory of its whole-state passes
/// (docs/architecture.md, "Memory").
#[global_allocator]
static ALLOCATOR: director::ops::memory::Allocator = director::ops::memory::Allocator {};

/// Highly available IPVS load balancer for bare-metal Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "director", version = version(), about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The version `--version` prints: the package's, followed by
/// `$DIRECTOR_BUILD_ID` in parentheses when that was set at build time (so
/// two builds of one commit can be told apart, as the rollout test does).
fn version() -> &'static str {
    match option_env!("DIRECTOR_BUILD_ID") {
        Some(id) if !id.is_empty() => {
            Box::leak(format!("{} ({id})", env!("CARGO_PKG_VERSION")).into_boxed_str())
        }
        _ => env!("CARGO_PKG_VERSION"),
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the daemon: join the Raft group, program IPVS, serve the admin
    /// socket. SIGHUP reloads the configuration (a bad file is refused and
    /// the running one stays); SIGTERM hands the VIPs over and stops it.
    /// Under systemd ($NOTIFY_SOCKET: Type=notify) it reports readiness, a
    /// status line, reloads and the stop, and pings the watchdog
    /// (WatchdogSec=).
    Run {
        /// The configuration file.
        #[arg(long, default_value = "/etc/director/director.yaml")]
        config: PathBuf,
        /// Log filter in RUST_LOG syntax (`info`, `debug`,
        /// `info,director::dataplane=debug`); default: $RUST_LOG, else
        /// `info,openraft=off`.
        #[arg(long)]
        log_level: Option<String>,
        /// Log lines as human text or one JSON object per line.
        #[arg(long, value_enum, default_value = "text")]
        log_format: logging::LogFormat,
    },
    /// Show this director's view: the cluster, VIP owners, virtual services.
    Status {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        format: status::Format,
        /// The admin socket (default: the one in /etc/director/director.yaml,
        /// else /run/director/admin.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The configuration file naming the admin socket.
        #[arg(long, default_value = "/etc/director/director.yaml")]
        config: PathBuf,
    },
    /// Move this director's VIPs to the others and wait until they own them:
    /// new TCP connections are turned away first and the open ones may
    /// finish (`drain.connection_wait_ms`); the director then holds no VIP
    /// until `director undrain` or a restart.
    /// Exit 0 when drained, 1 when it could not (it keeps its VIPs then).
    Drain {
        /// Seconds to wait for the VIPs to move.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// The admin socket (default: the one in the configuration file).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The configuration file naming the admin socket.
        #[arg(long, default_value = "/etc/director/director.yaml")]
        config: PathBuf,
    },
    /// Put a drained director back in service (it may own VIPs again).
    Undrain {
        /// The admin socket (default: the one in the configuration file).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The configuration file naming the admin socket.
        #[arg(long, default_value = "/etc/director/director.yaml")]
        config: PathBuf,
    },
    /// Work with the configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Read and write the kernel's IPVS table (this network namespace).
    Ipvs {
        #[command(subcommand)]
        command: IpvsCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Validate FILE without running anything: prints every problem as
    /// FILE:LINE:COLUMN: FIELD: PROBLEM and exits 64, or a summary and 0.
    Check {
        /// The configuration file (default /etc/director/director.yaml).
        #[arg(default_value = "/etc/director/director.yaml")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum IpvsCmd {
    /// Print the kernel's IPVS table: a table close to `ipvsadm -Ln`, or the
    /// JSON/YAML document that `director ipvs apply` reads.
    Show {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        format: ipvs::Format,
        /// Include traffic counters (and connection counts in JSON/YAML).
        #[arg(long)]
        stats: bool,
    },
    /// Make the kernel's table match FILE with the fewest kernel calls.
    ///
    /// Services in FILE get exactly FILE's settings and destinations (edited in
    /// place where the kernel allows). Services not in FILE are left alone
    /// unless --prune. Exit codes: 0 done (or nothing to do), 1 a kernel call
    /// failed, 2 --dry-run found differences, 64 FILE is invalid (and nothing
    /// was touched).
    Apply {
        /// A document in the schema `director ipvs show -o yaml` prints (YAML or JSON).
        file: PathBuf,
        /// Print the plan and change nothing; exit 2 if there is anything to do.
        #[arg(long)]
        dry_run: bool,
        /// Also delete services that FILE does not name.
        #[arg(long)]
        prune: bool,
        /// How many kernel requests to keep in flight on the netlink socket
        /// (1: one at a time, as ipvsadm does).
        #[arg(long, default_value_t = ipvs_sys::DEFAULT_WINDOW, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
        window: usize,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                ipvs::EXIT_BAD_INPUT
            } else {
                0
            };
            let _ = e.print();
            return exit(code);
        }
    };
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return exit(1);
        }
    };
    let code = runtime.block_on(run(cli));
    exit(code)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) -> i32 {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            1
        }
    }
}

/// The admin socket: as given, else the configuration's, else the default.
fn admin_socket(socket: Option<PathBuf>, config: &std::path::Path) -> PathBuf {
    socket.unwrap_or_else(|| {
        config::load(config)
            .map(|c| c.admin_socket)
            .unwrap_or_else(|_| PathBuf::from("/run/director/admin.sock"))
    })
}

/// Sends `req` to the daemon; prints `show(reply)` and exits 0, or prints
/// the error and exits 1.
async fn admin_request(
    socket: &std::path::Path,
    req: &Request,
    show: impl Fn(&DrainReport) -> String,
) -> i32 {
    match admin::request::<DrainReport>(socket, req).await {
        Ok(r) => out(&show(&r)),
        Err(e @ admin::ClientError::Daemon(_)) => {
            eprintln!("error: {e}");
            1
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn run(cli: Cli) -> i32 {
    match cli.command {
        Cmd::Run {
            config,
            log_level,
            log_format,
        } => {
            if let Err(e) = logging::init(log_level.as_deref(), log_format) {
                eprintln!("{e}");
                return ipvs::EXIT_BAD_INPUT;
            }
            let path = config;
            let config = match config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ipvs::EXIT_BAD_INPUT;
                }
            };
            let notifier = std::sync::Arc::new(systemd::Notifier::from_env());
            match daemon::run(config, &path, notifier).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e}");
                    1
                }
            }
        }
        Cmd::Status {
            format,
            socket,
            config,
        } => {
            let socket = admin_socket(socket, &config);
            match admin::request::<Status>(&socket, &Request::Status).await {
                Ok(v) => out(&status::render(&v, format)),
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
        Cmd::Drain {
            timeout,
            socket,
            config,
        } => {
            let req = Request::Drain {
                timeout_ms: timeout.saturating_mul(1000),
            };
            admin_request(&admin_socket(socket, &config), &req, |r| {
                let moved: Vec<String> = r
                    .moved
                    .iter()
                    .map(|m| format!("{} -> {}", m.vip, m.owner.as_deref().unwrap_or("nobody")))
                    .collect();
                if moved.is_empty() {
                    "drained (it owned no VIP)\n".to_string()
                } else {
                    let c = r.connections.unwrap_or_default();
                    let synced = if c.handed_over > 0 {
                        format!(", {} handed over by the connection sync", c.handed_over)
                    } else {
                        String::new()
                    };
                    format!(
                        "drained: {} (open connections: {} cut after waiting {} ms{synced})\n",
                        moved.join(", "),
                        c.left,
                        c.waited_ms
                    )
                }
            })
            .await
        }
        Cmd::Undrain { socket, config } => {
            admin_request(&admin_socket(socket, &config), &Request::Undrain, |_| {
                "back in service\n".to_string()
            })
            .await
        }
        Cmd::Config {
            command: ConfigCmd::Check { file },
        } => match config::load(&file) {
            Ok(c) => out(&format!(
                "{}: valid: director {} of {} peers, {} pool(s), {} static service(s), transport {}\n",
                file.display(),
                c.id,
                c.peers.len(),
                c.pools.len(),
                c.services.len(),
                if c.tls.is_some() { "mutual TLS" } else { "plaintext (insecure: true)" }
            )),
            Err(e) => {
                eprintln!("{e}");
                ipvs::EXIT_BAD_INPUT
            }
        },
        Cmd::Ipvs { command } => match command {
            IpvsCmd::Show { format, stats } => match ipvs::show(format, stats).await {
                Ok(text) => out(&text),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            },
            IpvsCmd::Apply {
                file,
                dry_run,
                prune,
                window,
            } => {
                let desired = match ipvs::read_file(&file) {
                    Ok(d) => d,
                    Err(msg) => {
                        eprintln!("{msg}");
                        return ipvs::EXIT_BAD_INPUT;
                    }
                };
                match ipvs::apply(&desired, dry_run, prune, window).await {
                    Ok(outcome) => match out(&outcome.report) {
                        0 => outcome.code,
                        failed => failed,
                    },
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        1
                    }
                }
            }
        },
    }
}
