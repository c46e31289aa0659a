//! `cargo xtask vm`: run a command as root under a real kernel with IPVS.
//!
//! The kernel is Debian's stock amd64 kernel (the current dependency of
//! `linux-image-amd64`), unpacked into a cache folder and booted under qemu
//! with software emulation (TCG) by virtme-ng, which shares the host's root
//! file system with the guest. The checkout, its target directory and the
//! cargo home are writable in the guest; everything else is read-only.
//!
//! virtme-ng's exit code and console are not reliable carriers of the
//! command's result, so the runner writes a small script into a results folder
//! inside the target directory; the guest runs it and leaves the command's
//! stdout, stderr and exit code there, and the host streams them out.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::install;

/// How to run the command.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Guest memory, as qemu's `-m` takes it.
    pub memory: String,
    /// Guest vCPUs.
    pub cpus: u32,
    /// Seconds before a hung guest is ended.
    pub timeout: Duration,
    /// Run on the host instead of in a VM.
    pub host: bool,
}

/// Where the command runs, and the exit code it gave.
#[derive(Debug)]
pub struct VmOutcome {
    /// The command's exit code (or 128 + signal).
    pub code: i32,
    /// Whether it ran in a VM (false: on the host, which has IPVS).
    pub in_vm: bool,
}

/// Whether the host kernel has IPVS (built in, or as a module that loads).
pub fn host_has_ipvs() -> bool {
    if Path::new("/proc/net/ip_vs").exists() {
        return true;
    }
    let loaded = Command::new("modprobe")
        .args(["-q", "ip_vs"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    loaded && Path::new("/proc/net/ip_vs").exists()
}

/// Runs `argv` as root with IPVS available: on the host when asked or when
/// the host kernel has IPVS, otherwise in the VM.
pub fn run(root: &Path, opts: &VmOptions, argv: &[String]) -> Result<VmOutcome> {
    if argv.is_empty() {
        bail!("no command given: use `cargo xtask vm -- CMD [ARGS...]`");
    }
    let host_ipvs = host_has_ipvs();
    if opts.host && !host_ipvs {
        bail!("--host needs IPVS in the host kernel, and `modprobe ip_vs` does not give it here (no /proc/net/ip_vs): drop --host to run in the VM");
    }
    if host_ipvs {
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(root)
            .status()
            .with_context(|| format!("running {}", argv[0]))?;
        return Ok(VmOutcome {
            code: exit_code(status),
            in_vm: false,
        });
    }
    let prereq = install::vm_prerequisites()?;
    prebuild(root)?;
    run_in_vm(root, opts, argv, &prereq)
}

/// Builds the lab's tools on the host, where cargo is fast, so that
/// `cargo xtask lab ...` in the guest finds them ready.
fn prebuild(root: &Path) -> Result<()> {
    crate::build::cargo(
        root,
        &[
            "build",
            "--quiet",
            "-p",
            "xtask",
            "-p",
            "director-tests",
            "--bins",
        ],
    )
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn run_in_vm(
    root: &Path,
    opts: &VmOptions,
    argv: &[String],
    prereq: &install::VmPrerequisites,
) -> Result<VmOutcome> {
    let target = target_dir(root);
    let results = target
        .join("vm")
        .join(format!("run-{}-{}", std::process::id(), unix_millis()));
    fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let script = results.join("run.sh");
    fs::write(&script, guest_script(root, &results, argv))
        .with_context(|| format!("writing {}", script.display()))?;
    write_cargo_shim(root, &results)?;

    let mut rw_dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    if !target.starts_with(root) {
        rw_dirs.push(target.clone());
    }
    if let Some(cargo_home) = cargo_home() {
        if cargo_home.is_dir() && !cargo_home.starts_with(root) {
            rw_dirs.push(cargo_home);
        }
    }

    let console_path = results.join("console.log");
    let console = fs::File::create(&console_path)
        .with_context(|| format!("creating {}", console_path.display()))?;
    let mut cmd = Command::new(&prereq.vng);
    cmd.arg("--run")
        .arg(&prereq.vmlinuz)
        .args(["--disable-kvm", "--user", "root", "--verbose"])
        .args(["--cpus", &opts.cpus.to_string(), "--memory", &opts.memory]);
    for dir in &rw_dirs {
        cmd.arg("--rwdir").arg(dir);
    }
    cmd.arg("--exec")
        .arg(format!("sh {}", shell_quote(&script.to_string_lossy())))
        .current_dir(root)
        .env("PATH", prereq.path_with_venv())
        .stdin(Stdio::null())
        .stdout(
            console
                .try_clone()
                .context("duplicating the console log handle")?,
        )
        .stderr(console);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", prereq.vng.display()))?;
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));

    let mut out = Follower::new(results.join("stdout"));
    let mut err = Follower::new(results.join("stderr"));
    let start = Instant::now();
    let timed_out = loop {
        out.pump(&mut std::io::stdout());
        err.pump(&mut std::io::stderr());
        // vng has been seen to exit while its qemu (same process group)
        // ran on with the command: the VM is over when the group is empty.
        if child.try_wait().context("waiting for the VM")?.is_some() && killpg(pgid, None).is_err()
        {
            break false;
        }
        if start.elapsed() > opts.timeout {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            break true;
        }
        thread::sleep(Duration::from_millis(100));
    };
    out.pump(&mut std::io::stdout());
    err.pump(&mut std::io::stderr());

    if timed_out {
        bail!(
            "the VM did not finish within {} s and was stopped (raise --timeout); console log: {}",
            opts.timeout.as_secs(),
            console_path.display()
        );
    }
    let rc_path = results.join("rc");
    match fs::read_to_string(&rc_path) {
        Ok(text) => {
            let code: i32 = text.trim().parse().with_context(|| {
                format!(
                    "{} holds {:?}, not an exit code",
                    rc_path.display(),
                    text.trim()
                )
            })?;
            Ok(VmOutcome { code, in_vm: true })
        }
        Err(_) => {
            let console = fs::read_to_string(&console_path).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(25).collect();
            eprintln!(
                "--- last lines of the VM console ({}) ---",
                console_path.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            bail!(
                "the VM ended without reporting the command's exit code (it did not boot or the command was killed); console log: {}",
                console_path.display()
            )
        }
    }
}

/// The script the guest runs: the host's environment that matters, the
/// checkout as working directory, and the results written where the host
/// reads them.
fn guest_script(root: &Path, results: &Path, argv: &[String]) -> String {
    let mut s = String::from("#!/bin/sh\n# written by `cargo xtask vm`; run inside the guest\n");
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "CI",
    ] {
        if let Some(value) = std::env::var_os(var) {
            s.push_str(&format!(
                "export {var}={}\n",
                shell_quote(&value.to_string_lossy())
            ));
        }
    }
    // The cargo shim first (see `write_cargo_shim`), then the sbin
    // directories: root's tools (ip, modprobe, ipvsadm, nft).
    s.push_str(&format!(
        "export PATH={}:/usr/sbin:/sbin:\"$PATH\"\n",
        shell_quote(&results.join("bin").to_string_lossy())
    ));
    s.push_str("export DIRECTOR_IN_VM=1\n");
    let r = |name: &str| shell_quote(&results.join(name).to_string_lossy());
    s.push_str(&format!(
        "cd {} || exit 70\n",
        shell_quote(&root.to_string_lossy())
    ));
    let cmd: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    s.push_str(&format!(
        "{} </dev/null >{} 2>{}\n",
        cmd.join(" "),
        r("stdout"),
        r("stderr")
    ));
    s.push_str(&format!("echo $? >{}\n", r("rc.tmp")));
    s.push_str(&format!("mv {} {}\n", r("rc.tmp"), r("rc")));
    s.push_str("sync\n");
    s
}

/// Under software emulation every cargo start costs 15 to 20 s, even with
/// nothing to build. The host has just built the xtask binary (and the lab's
/// tools, see `prebuild`), so in the guest `cargo xtask ...` runs that binary
/// directly; every other cargo command goes to the real cargo.
fn write_cargo_shim(root: &Path, results: &Path) -> Result<()> {
    let bin = results.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let real_cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let xtask = target_dir(root).join("debug").join("xtask");
    let shim = format!(
        "#!/bin/sh\n# written by `cargo xtask vm`: `cargo xtask` runs the xtask built on the host\nif [ \"$1\" = xtask ] && [ -x {x} ]; then shift; exec {x} \"$@\"; fi\nexec {c} \"$@\"\n",
        x = shell_quote(&xtask.to_string_lossy()),
        c = shell_quote(&real_cargo.to_string_lossy()),
    );
    let path = bin.join("cargo");
    fs::write(&path, shim).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))?;
    Ok(())
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The workspace's target directory.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Copies what is appended to a file to a writer.
struct Follower {
    path: PathBuf,
    offset: u64,
}

impl Follower {
    fn new(path: PathBuf) -> Self {
        Follower { path, offset: 0 }
    }

    fn pump(&mut self, to: &mut dyn Write) {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.offset += n as u64;
            let _ = to.write_all(&buf);
            let _ = to.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc/d-e.f"), "abc/d-e.f");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn script_runs_the_command_in_the_checkout_and_records_its_code() {
        let s = guest_script(
            Path::new("/src/repo"),
            Path::new("/src/repo/target/vm/r"),
            &["sh".into(), "-c".into(), "exit 3".into()],
        );
        assert!(s.contains("cd /src/repo || exit 70\n"));
        assert!(s.contains(
            "sh -c 'exit 3' </dev/null >/src/repo/target/vm/r/stdout 2>/src/repo/target/vm/r/stderr\n"
        ));
        assert!(s.contains("echo $? >/src/repo/target/vm/r/rc.tmp\n"));
    }
}
