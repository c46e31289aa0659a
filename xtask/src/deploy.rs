//! `cargo xtask test-deploy`: the Ansible role against three real Debian 12
//! hosts.
//!
//! Three VMs (Debian's kernel, systemd, sshd; booted under qemu with software
//! emulation) share one virtual LAN, a bridge in a network namespace of the
//! test (`dplan`), with a client address (10.30.0.100) on the bridge and a
//! web server behind the VIP in a namespace of its own (`dplan-web`,
//! 10.30.0.101:8080). Each VM has a second NIC on qemu's user-mode network
//! that forwards 127.0.0.1:22N1.. in `dplan` to its SSH. Ansible runs in
//! `dplan` too:
//!
//! 1. `site.yml`, then `site.yml` again: the second run changes nothing.
//! 2. On every VM `systemctl is-active director` and `director status`: one
//!    leader, the lease held, the service programmed, one owner of the VIP;
//!    the client gets an answer from the VIP.
//! 3. `vagrant/scenarios/failover.sh`: the owner's VM is powered off, another
//!    director takes the VIP, the client is answered again. The VM is booted
//!    again and waited for until it is back in the group.
//! 4. `vagrant/scenarios/upgrade.sh` with a second build of the binary
//!    (another `DIRECTOR_BUILD_ID`) while the client asks the VIP every
//!    100 ms: no failed request; every VM then runs the new build, and no
//!    director's journal shows a lapsed ownership lease (the upgrade
//!    restarts the Raft leader too).
//!
//! The disk image is built once (`deploy/image.sh`: debootstrap, the kernel,
//! what the role would otherwise download) into the cache folder, in a
//! folder named after the hash of that script, so a changed recipe builds a
//! new one; each run boots copy-on-write overlays of it. Everything the test
//! started (the VMs, the web server) is ended and its namespaces deleted when
//! it finishes, whether or not it passed.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::install;

/// The image recipe; its hash names the cache folder.
const IMAGE_SCRIPT: &str = include_str!("deploy/image.sh");
/// The namespace with the LAN's bridge, the client and Ansible.
const NS: &str = "dplan";
/// The namespace of the web server behind the VIP.
const WEB_NS: &str = "dplan-web";
/// The LAN (a /24): directors at .11.., the client at .100, the web server at
/// .101, the VIP at .200.
const LAN: &str = "10.30.0";
const VIP: &str = "10.30.0.200";
const WEB_PORT: u16 = 8080;
/// Build ids of the two binaries: the installed one and the upgrade.
const BUILD_A: &str = "test-deploy-a";
const BUILD_B: &str = "test-deploy-b";

/// How to run the test.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Guest memory per VM (qemu's `-m`).
    pub memory: String,
    /// vCPUs per VM.
    pub cpus: u32,
    /// Hold this file's lock (flock) while cargo builds.
    pub cargo_lock: Option<PathBuf>,
    /// Hold this file's lock while the VMs run.
    pub vm_lock: Option<PathBuf>,
    /// Leave the VMs and namespaces up at the end (for a look around; the
    /// next run ends them, or `ip netns pids dplan` lists what to end).
    pub keep: bool,
}

/// One director VM.
#[derive(Debug)]
struct VmSpec {
    name: String,
    index: u8,
}

impl VmSpec {
    fn address(&self) -> String {
        format!("{LAN}.{}", 10 + self.index)
    }
    fn ssh_port(&self) -> u16 {
        2210 + u16::from(self.index)
    }
    fn tap(&self) -> String {
        format!("dptap{}", self.index)
    }
}

/// Everything the test started; ended on drop.
struct Guard {
    vms: Vec<Option<Child>>,
    web: Option<Child>,
    keep: bool,
}

impl Guard {
    fn end_vm(&mut self, i: usize) {
        if let Some(mut child) = self.vms.get_mut(i).and_then(Option::take) {
            end_child(&mut child);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("test-deploy: --keep: the VMs and the namespaces {NS}, {WEB_NS} stay up");
            return;
        }
        for i in 0..self.vms.len() {
            self.end_vm(i);
        }
        if let Some(mut web) = self.web.take() {
            end_child(&mut web);
        }
        delete_namespaces();
    }
}

/// SIGTERM, then SIGKILL after 5 s; reaps the child.
fn end_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Ends what an earlier run left in the test's namespaces (one with
/// `--keep`, or one that was interrupted): every process in them is the
/// test's own.
fn end_leftovers() {
    let mut pids = Vec::new();
    for ns in [NS, WEB_NS] {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output()
        {
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    if !pids.is_empty() {
        eprintln!(
            "test-deploy: ending {} processes an earlier run left in {NS} and {WEB_NS}",
            pids.len()
        );
    }
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        if !pids.is_empty() {
            thread::sleep(Duration::from_secs(3));
        }
    }
    delete_namespaces();
}

fn delete_namespaces() {
    for ns in [WEB_NS, NS] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// A lock file held while this value lives (flock, released on close).
struct Lock(#[allow(dead_code, reason = "held for its lock")] Option<nix::fcntl::Flock<File>>);

fn lock(path: Option<&Path>, what: &str) -> Result<Lock> {
    let Some(path) = path else {
        return Ok(Lock(None));
    };
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    let file = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => return Ok(Lock(Some(held))),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
        Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
    };
    eprintln!(
        "test-deploy: waiting for {} ({what}: another run holds it)",
        path.display()
    );
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(Lock(Some(held)))
}

/// The phases' wall times, printed at the end.
#[derive(Default)]
struct Times(Vec<(String, Duration)>);

impl Times {
    fn add(&mut self, what: &str, since: Instant) {
        let took = since.elapsed();
        eprintln!("test-deploy: {what}: {:.1} s", took.as_secs_f64());
        self.0.push((what.to_string(), took));
    }
    fn report(&self) -> String {
        let mut out = String::new();
        for (what, took) in &self.0 {
            let _ = writeln!(out, "  {what:<48} {:>7.1} s", took.as_secs_f64());
        }
        out
    }
}

/// Runs the whole test; the exit code is 0 when every step passed.
pub fn run(root: &Path, opts: &DeployOptions) -> Result<i32> {
    let total = Instant::now();
    let mut times = Times::default();
    prerequisites()?;

    let run_dir = crate::vm::target_dir(root).join("test-deploy");
    let t = Instant::now();
    let (bin_a, bin_b) = {
        let _lock = lock(opts.cargo_lock.as_deref(), "cargo")?;
        build_binaries(root, &run_dir)?
    };
    times.add("build the two director binaries", t);

    let t = Instant::now();
    let image = image(&install::cache_dir())?;
    times.add("disk image (cached after the first run)", t);

    let result = {
        let _lock = lock(opts.vm_lock.as_deref(), "VMs")?;
        let vm_start = Instant::now();
        let r = with_vms(root, opts, &run_dir, &image, &bin_a, &bin_b, &mut times);
        times.add("everything with the VMs up", vm_start);
        r
    };
    times.add("total", total);
    eprintln!("test-deploy: wall times\n{}", times.report());
    let _ = fs::write(run_dir.join("times.txt"), times.report());
    match result {
        Ok(()) => {
            eprintln!("test-deploy: passed");
            Ok(0)
        }
        Err(e) => {
            eprintln!(
                "test-deploy: FAILED: {e:#}\n(logs: {}; the consoles are vm-*.console)",
                run_dir.display()
            );
            Ok(1)
        }
    }
}

/// Tools the test runs, each with the Debian package that has it.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/debootstrap", "debootstrap"),
    ("/usr/bin/qemu-img", "qemu-utils"),
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/bin/ansible-playbook", "ansible"),
    ("/usr/bin/curl", "curl"),
    ("/usr/bin/ssh", "openssh-client"),
    ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
];

fn prerequisites() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("test-deploy needs root (network namespaces, debootstrap)");
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        install::apt_install(&missing)?;
    }
    Ok(())
}

/// Builds the director twice (release), with `DIRECTOR_BUILD_ID` a and b,
/// and copies each out of the target directory.
fn build_binaries(root: &Path, run_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let built = crate::vm::target_dir(root).join("release").join("director");
    let mut out = Vec::new();
    for id in [BUILD_A, BUILD_B] {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--release", "-p", "director"])
            .env("DIRECTOR_BUILD_ID", id)
            .current_dir(root)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p director failed ({status})");
        }
        let copy = run_dir.join(format!("director-{id}"));
        fs::copy(&built, &copy)
            .with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
        out.push(copy);
    }
    let b = out.pop().context("two builds")?;
    let a = out.pop().context("two builds")?;
    Ok((a, b))
}

/// The cached disk image and what boots it.
#[derive(Debug)]
struct Image {
    dir: PathBuf,
}

impl Image {
    fn raw(&self) -> PathBuf {
        self.dir.join("image.raw")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
}

/// FNV-1a, 64 bits: a stable name for the recipe's cache folder.
fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn image(cache: &Path) -> Result<Image> {
    let dir = cache.join(format!(
        "deploy-image-{:016x}",
        fnv64(IMAGE_SCRIPT.as_bytes())
    ));
    let done = dir.join("done");
    if done.exists() {
        return Ok(Image { dir });
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("image.sh");
    fs::write(&script, IMAGE_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let mirror = debian_mirror();
    eprintln!(
        "test-deploy: building the Debian 12 image into {} (debootstrap from {mirror}; a few minutes, once)",
        dir.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .arg(&mirror)
        .status()
        .context("running the image recipe")?;
    if !status.success() {
        bail!(
            "building the image failed ({status}); see {}",
            dir.display()
        );
    }
    fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
    Ok(Image { dir })
}

/// The Debian mirror apt already uses (its first `deb` source), else
/// deb.debian.org.
fn debian_mirror() -> String {
    let mut texts = Vec::new();
    for file in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        if let Ok(text) = fs::read_to_string(file) {
            texts.push(text);
        }
    }
    for text in &texts {
        for line in text.lines() {
            let line = line.trim();
            let url = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace()
                    .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            } else {
                None
            };
            if let Some(url) = url {
                if !url.contains("security") {
                    return url.trim_end_matches('/').to_string();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_string()
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run_ok(Command::new("ip").args(args))
}

/// The LAN: a bridge in `dplan` with the client's address, a tap per VM,
/// and the web server's namespace on a veth.
fn network(vms: &[VmSpec]) -> Result<()> {
    delete_namespaces();
    ip(&["netns", "add", NS])?;
    ip(&["-n", NS, "link", "set", "lo", "up"])?;
    ip(&["-n", NS, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        NS,
        "addr",
        "add",
        &format!("{LAN}.100/24"),
        "dev",
        "br0",
    ])?;
    ip(&["-n", NS, "link", "set", "br0", "up"])?;
    for vm in vms {
        let tap = vm.tap();
        ip(&["-n", NS, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&["-n", NS, "link", "set", &tap, "master", "br0", "up"])?;
    }
    ip(&["netns", "add", WEB_NS])?;
    ip(&["-n", WEB_NS, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", NS, "link", "add", "dpweb", "type", "veth", "peer", "name", "eth0", "netns", WEB_NS,
    ])?;
    ip(&["-n", NS, "link", "set", "dpweb", "master", "br0", "up"])?;
    ip(&[
        "-n",
        WEB_NS,
        "addr",
        "add",
        &format!("{LAN}.101/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", WEB_NS, "link", "set", "eth0", "up"])?;
    Ok(())
}

fn in_ns(program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NS, program]);
    cmd
}

/// The web server behind the VIP (python's http.server) in `dplan-web`.
fn start_web(run_dir: &Path) -> Result<Child> {
    let www = run_dir.join("www");
    fs::create_dir_all(&www)?;
    fs::write(
        www.join("index.html"),
        "served by the web server behind the VIP\n",
    )?;
    let log = File::create(run_dir.join("web.log"))?;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            WEB_NS,
            "/usr/bin/python3",
            "-m",
            "http.server",
        ])
        .args([
            "--bind",
            &format!("{LAN}.101"),
            "--directory",
            &www.to_string_lossy(),
            &WEB_PORT.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the web server")
}

fn start_vm(
    opts: &DeployOptions,
    run_dir: &Path,
    image: &Image,
    vm: &VmSpec,
    fresh: bool,
) -> Result<Child> {
    let overlay = run_dir.join(format!("vm-{}.qcow2", vm.name));
    if fresh {
        let _ = fs::remove_file(&overlay);
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(image.raw())
                .arg(&overlay),
        )?;
    }
    let console = run_dir.join(format!("vm-{}.console", vm.name));
    let log = File::options()
        .create(true)
        .append(true)
        .open(run_dir.join(format!("vm-{}.qemu.log", vm.name)))?;
    let append = format!(
        "console=ttyS0 root=/dev/vda rw net.ifnames=0 systemd.hostname={} lab.addr={}/24",
        vm.name,
        vm.address()
    );
    let mut cmd = in_ns("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args(["-smp", &opts.cpus.to_string(), "-m", &opts.memory])
    .arg("-kernel")
    .arg(image.dir.join("vmlinuz"))
    .arg("-initrd")
    .arg(image.dir.join("initrd.img"))
    .args(["-append", &append])
    .arg("-drive")
    .arg(format!(
        "file={},if=virtio,format=qcow2",
        overlay.to_string_lossy()
    ))
    .args([
        "-netdev",
        &format!("tap,id=lan,ifname={},script=no,downscript=no", vm.tap()),
        "-device",
        &format!(
            "virtio-net-pci,netdev=lan,mac=52:54:00:30:00:{:02x}",
            10 + vm.index
        ),
        "-netdev",
        &format!("user,id=ssh,hostfwd=tcp:127.0.0.1:{}-:22", vm.ssh_port()),
        "-device",
        "virtio-net-pci,netdev=ssh",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.to_string_lossy()))
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    cmd.spawn()
        .with_context(|| format!("starting qemu for {}", vm.name))
}

/// ssh to a VM from inside `dplan`.
fn ssh(image: &Image, vm: &VmSpec, command: &str) -> Command {
    let mut cmd = in_ns("ssh");
    cmd.arg("-i")
        .arg(image.key())
        .args([
            "-p",
            &vm.ssh_port().to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "BatchMode=yes",
            "root@127.0.0.1",
            command,
        ])
        .stdin(Stdio::null());
    cmd
}

/// Runs a command on a VM; its stdout, or an error with its stderr.
fn ssh_output(image: &Image, vm: &VmSpec, command: &str) -> Result<String> {
    let out = ssh(image, vm, command)
        .output()
        .with_context(|| format!("ssh to {}", vm.name))?;
    if !out.status.success() {
        bail!(
            "{} on {}: {} ({})",
            command,
            vm.name,
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_ssh(image: &Image, vm: &VmSpec, child: &mut Child, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the VM {} ended before SSH answered ({status})", vm.name);
        }
        if ssh_output(
            image,
            vm,
            "systemctl is-system-running --wait >/dev/null; true",
        )
        .is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "{} did not answer on SSH within {} s",
                vm.name,
                limit.as_secs()
            );
        }
        thread::sleep(Duration::from_secs(3));
    }
}

fn write_inventory(run_dir: &Path, image: &Image, vms: &[VmSpec], bin_a: &Path) -> Result<PathBuf> {
    let inv = run_dir.join("inventory");
    let _ = fs::remove_dir_all(&inv);
    fs::create_dir_all(inv.join("group_vars"))?;
    let mut hosts = String::new();
    hosts.push_str(
        "---\n# Written by `cargo xtask test-deploy`: three director VMs reached over\n\
         # SSH through qemu's port forwards (in the namespace dplan), and the\n\
         # client: the namespace itself.\n\
         all:\n  vars:\n",
    );
    let _ = writeln!(hosts, "    demo_vip_url: http://{VIP}/");
    hosts.push_str("  children:\n    directors:\n      vars:\n        ansible_user: root\n        ansible_host: 127.0.0.1\n");
    let _ = writeln!(
        hosts,
        "        ansible_ssh_private_key_file: {}",
        image.key().display()
    );
    hosts.push_str("        ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR\n      hosts:\n");
    for vm in vms {
        let _ = writeln!(
            hosts,
            "        {}:\n          ansible_port: {}\n          director_id: {}\n          director_address: {}",
            vm.name,
            vm.ssh_port(),
            vm.index,
            vm.address()
        );
    }
    hosts.push_str("    clients:\n      hosts:\n        client:\n          ansible_connection: local\n          ansible_python_interpreter: /usr/bin/python3\n");
    fs::write(inv.join("hosts.yml"), hosts)?;

    let group = format!(
        "---\n# Written by `cargo xtask test-deploy`.\n\
         director_binary_local_path: {bin}\n\
         director_interface: eth0\n\
         # Relaxed for VMs under software emulation; the upgrade restarts the\n\
         # Raft leader, and a successor is elected about 1.6 s after it went\n\
         # silent, well inside the holders' leases (docs/fencing.md).\n\
         director_timing:\n  heartbeat_ms: 150\n  election_min_ms: 1000\n  election_max_ms: 1500\n  lease_ms: 3000\n  margin_ms: 300\n  renew_ms: 300\n\
         director_announce:\n  count: 5\n  interval_ms: 200\n  refresh_s: 0\n\
         director_pools:\n  - name: lan\n    addresses: [\"{LAN}.200-{LAN}.209\"]\n\
         director_defaults:\n  scheduler: rr\n  forwarding: nat\n\
         director_services:\n  - name: web\n    vip: {VIP}\n    ports:\n      - {{port: 80, protocol: tcp}}\n    backends: [\"{LAN}.101:{WEB_PORT}\"]\n",
        bin = bin_a.display()
    );
    fs::write(inv.join("group_vars").join("directors.yml"), group)?;
    Ok(inv.join("hosts.yml"))
}

/// Environment of every Ansible command of the test.
fn ansible_env(cmd: &mut Command, root: &Path, run_dir: &Path) {
    cmd.env("ANSIBLE_CONFIG", root.join("deploy/ansible/ansible.cfg"))
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", run_dir.join("cp"))
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_NOCOLOR", "1");
}

/// Runs a command in `dplan`, its output teed to the terminal and to a log
/// file; returns the output.
fn run_logged(mut cmd: Command, log: &Path) -> Result<(bool, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut text = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait()?;
    fs::write(log, &text).with_context(|| format!("writing {}", log.display()))?;
    Ok((status.success(), text))
}

fn playbook(
    root: &Path,
    run_dir: &Path,
    inventory: &Path,
    book: &str,
    log: &str,
) -> Result<String> {
    let mut cmd = in_ns("ansible-playbook");
    cmd.arg("-i").arg(inventory).arg(book);
    cmd.current_dir(root.join("deploy/ansible"));
    ansible_env(&mut cmd, root, run_dir);
    let (ok, out) = run_logged(cmd, &run_dir.join(log))?;
    if !ok {
        bail!(
            "ansible-playbook {book} failed (log {})",
            run_dir.join(log).display()
        );
    }
    Ok(out)
}

/// `changed=N` of each host in a play recap.
fn recap_changed(out: &str) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    let mut in_recap = false;
    for line in out.lines() {
        if line.starts_with("PLAY RECAP") {
            in_recap = true;
            continue;
        }
        if !in_recap {
            continue;
        }
        let Some((host, rest)) = line.split_once(':') else {
            continue;
        };
        for field in rest.split_whitespace() {
            if let Some(n) = field.strip_prefix("changed=") {
                if let Ok(n) = n.parse() {
                    seen.push((host.trim().to_string(), n));
                }
            }
        }
    }
    seen
}

fn scenario(
    root: &Path,
    run_dir: &Path,
    inventory: &Path,
    script: &str,
    args: &[String],
) -> Result<()> {
    let mut cmd = in_ns("bash");
    cmd.arg(root.join("vagrant/scenarios").join(script))
        .arg("-i")
        .arg(inventory)
        .args(args);
    ansible_env(&mut cmd, root, run_dir);
    let log = run_dir.join(script.replace(".sh", ".log"));
    let (ok, _) = run_logged(cmd, &log)?;
    if !ok {
        bail!("{script} failed (log {})", log.display());
    }
    Ok(())
}

/// What one director's `director status -o json` says that the test checks.
#[derive(Debug)]
struct Seen {
    leader: Option<u64>,
    lease_held: bool,
    programmed: bool,
    owner: Option<String>,
    held_here: bool,
    errors: Vec<String>,
}

fn status(image: &Image, vm: &VmSpec) -> Result<Seen> {
    let text = ssh_output(image, vm, "director status -o json")?;
    let st: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("status of {}", vm.name))?;
    let vip = st["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["vip"] == VIP));
    let services = st["services"].as_array();
    Ok(Seen {
        leader: st["cluster"]["leader"].as_u64(),
        lease_held: st["lease"]["held"].as_bool().unwrap_or(false),
        programmed: services.is_some_and(|s| {
            !s.is_empty() && s.iter().all(|s| s["programmed"].as_bool() == Some(true))
        }),
        owner: vip.and_then(|v| v["owner_name"].as_str().map(str::to_string)),
        held_here: vip.is_some_and(|v| v["held_here"].as_bool() == Some(true)),
        errors: st["reconcilers"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|r| !r["last_error"].is_null())
                    .map(|r| r.to_string())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Every VM: the unit active, one leader, lease held, service programmed,
/// exactly one holder of the VIP, which all name as its owner.
fn check_healthy(image: &Image, vms: &[VmSpec]) -> Result<String> {
    let mut seen = Vec::new();
    for vm in vms {
        let active = ssh_output(image, vm, "systemctl is-active director").unwrap_or_default();
        if active.trim() != "active" {
            bail!(
                "systemctl is-active director on {}: {}",
                vm.name,
                active.trim()
            );
        }
        seen.push(status(image, vm)?);
    }
    let leaders: Vec<Option<u64>> = seen.iter().map(|s| s.leader).collect();
    if leaders.iter().any(Option::is_none) || leaders.windows(2).any(|w| w[0] != w[1]) {
        bail!("the directors do not agree on a leader: {leaders:?}");
    }
    let holders: Vec<&str> = vms
        .iter()
        .zip(&seen)
        .filter(|(_, s)| s.held_here)
        .map(|(vm, _)| vm.name.as_str())
        .collect();
    if holders.len() != 1 {
        bail!("{VIP} is held by {holders:?}, not by exactly one director");
    }
    for (vm, s) in vms.iter().zip(&seen) {
        if !s.lease_held || !s.programmed || !s.errors.is_empty() {
            bail!("{} is not healthy: {s:?}", vm.name);
        }
        if s.owner.as_deref() != Some(holders[0]) {
            bail!(
                "{} names {:?} as the VIP's owner, {} holds it",
                vm.name,
                s.owner,
                holders[0]
            );
        }
    }
    Ok(holders[0].to_string())
}

fn wait_healthy(image: &Image, vms: &[VmSpec], limit: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        match check_healthy(image, vms) {
            Ok(owner) => return Ok(owner),
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(_) => thread::sleep(Duration::from_secs(3)),
        }
    }
}

fn curl_vip() -> Result<String> {
    let out = in_ns("curl")
        .args(["-fsS", "--max-time", "2", &format!("http://{VIP}/")])
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl http://{VIP}/: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_vip(limit: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        match curl_vip() {
            Ok(body) => return Ok(body),
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(_) => thread::sleep(Duration::from_secs(1)),
        }
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "the test's steps in order, each short"
)]
fn with_vms(
    root: &Path,
    opts: &DeployOptions,
    run_dir: &Path,
    image: &Image,
    bin_a: &Path,
    bin_b: &Path,
    times: &mut Times,
) -> Result<()> {
    let vms: Vec<VmSpec> = (1..=3)
        .map(|index| VmSpec {
            name: format!("d{index}"),
            index,
        })
        .collect();
    for vm in &vms {
        let _ = fs::remove_file(run_dir.join(format!("vm-{}.console", vm.name)));
        let _ = fs::remove_file(run_dir.join(format!("vm-{}.qemu.log", vm.name)));
    }
    let _ = fs::remove_dir_all(run_dir.join("cp"));
    fs::create_dir_all(run_dir.join("cp"))?;
    fs::set_permissions(run_dir.join("cp"), fs::Permissions::from_mode(0o700))?;

    let mut guard = Guard {
        vms: Vec::new(),
        web: None,
        keep: opts.keep,
    };
    end_leftovers();
    network(&vms)?;
    guard.web = Some(start_web(run_dir)?);

    let t = Instant::now();
    for vm in &vms {
        guard
            .vms
            .push(Some(start_vm(opts, run_dir, image, vm, true)?));
    }
    for (i, vm) in vms.iter().enumerate() {
        let child = guard.vms[i].as_mut().context("VM started")?;
        wait_ssh(image, vm, child, Duration::from_secs(600))?;
    }
    times.add("boot three VMs until SSH answers", t);

    let inventory = write_inventory(run_dir, image, &vms, bin_a)?;

    let t = Instant::now();
    playbook(root, run_dir, &inventory, "site.yml", "site-1.log")?;
    times.add("site.yml, first run", t);

    let t = Instant::now();
    let out = playbook(root, run_dir, &inventory, "site.yml", "site-2.log")?;
    times.add("site.yml, second run", t);
    let changed = recap_changed(&out);
    if changed.len() != vms.len() || changed.iter().any(|(_, n)| *n != 0) {
        bail!("the second site.yml changed something: {changed:?}");
    }
    eprintln!("test-deploy: the second site.yml changed nothing: {changed:?}");

    let t = Instant::now();
    let owner = wait_healthy(image, &vms, Duration::from_secs(60))?;
    for vm in &vms {
        let text = ssh_output(image, vm, "director status")?;
        println!("--- director status on {}\n{}", vm.name, text.trim_end());
    }
    let body = wait_vip(Duration::from_secs(30))?;
    eprintln!("test-deploy: healthy on all three; {VIP} held by {owner}; the client got: {body}");
    times.add("health checks and the VIP from the client", t);

    let t = Instant::now();
    scenario(root, run_dir, &inventory, "failover.sh", &[])?;
    times.add("failover.sh (owner powered off)", t);

    // The powered-off VM's qemu has exited; boot it again.
    let t = Instant::now();
    let mut off = None;
    let wait_off = Instant::now();
    while off.is_none() && wait_off.elapsed() < Duration::from_secs(60) {
        for (i, child) in guard.vms.iter_mut().enumerate() {
            if let Some(c) = child {
                if c.try_wait()?.is_some() {
                    off = Some(i);
                }
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    let off = off.context("no VM powered off after failover.sh")?;
    let vm = &vms[off];
    eprintln!("test-deploy: {} is off; booting it again", vm.name);
    guard.vms[off] = Some(start_vm(opts, run_dir, image, vm, false)?);
    let child = guard.vms[off].as_mut().context("VM started")?;
    wait_ssh(image, vm, child, Duration::from_secs(600))?;
    let owner = wait_healthy(image, &vms, Duration::from_secs(300))?;
    eprintln!(
        "test-deploy: {} is back in the group; {VIP} held by {owner}",
        vm.name
    );
    times.add("the powered-off VM booted and back in the group", t);

    let t = Instant::now();
    // Each VM's clock before the upgrade, for its journal afterwards.
    let since: Vec<String> = vms
        .iter()
        .map(|vm| ssh_output(image, vm, "date +%s").map(|s| s.trim().to_string()))
        .collect::<Result<_>>()?;
    scenario(
        root,
        run_dir,
        &inventory,
        "upgrade.sh",
        &[
            "-e".to_string(),
            format!("director_binary_local_path={}", bin_b.display()),
        ],
    )?;
    times.add("upgrade.sh (upgrade.yml under a client loop)", t);
    for vm in &vms {
        let version = ssh_output(image, vm, "director --version")?;
        if !version.contains(BUILD_B) {
            bail!(
                "{} runs {} after the upgrade, not {BUILD_B}",
                vm.name,
                version.trim()
            );
        }
        eprintln!("test-deploy: {} runs {}", vm.name, version.trim());
    }
    // The upgrade restarts the Raft leader too: the directors still running
    // elect a successor before their ownership leases end, so none lapses
    // (docs/fencing.md, "Losing the leader").
    let mut lapsed = Vec::new();
    for (vm, since) in vms.iter().zip(&since) {
        let journal = ssh_output(
            image,
            vm,
            &format!("journalctl -u director --since @{since} -o short-precise --no-pager -q"),
        )?;
        let lines: Vec<&str> = journal.lines().filter(|l| !l.trim().is_empty()).collect();
        // Every director was restarted by the upgrade and logged: an empty
        // journal means this check read nothing.
        if lines.is_empty() {
            bail!(
                "{}: no director log in the journal since the upgrade began",
                vm.name
            );
        }
        eprintln!(
            "test-deploy: {}: {} journal lines since the upgrade began",
            vm.name,
            lines.len()
        );
        for line in lines {
            if line.contains("asking for votes") || line.contains("ownership lease lapsed") {
                eprintln!("test-deploy: {}: {}", vm.name, line.trim());
            }
            if line.contains("ownership lease lapsed") {
                lapsed.push(format!("{}: {}", vm.name, line.trim()));
            }
        }
    }
    if !lapsed.is_empty() {
        bail!(
            "an ownership lease lapsed during the rolling upgrade:\n{}",
            lapsed.join("\n")
        );
    }
    wait_healthy(image, &vms, Duration::from_secs(60))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recap_counts_changes_per_host() {
        let out = "PLAY [x]\n\nPLAY RECAP *****\n\
                   d1                         : ok=50   changed=0    unreachable=0    failed=0    skipped=9    rescued=0    ignored=0\n\
                   d2                         : ok=48   changed=3    unreachable=0    failed=0\n";
        assert_eq!(
            recap_changed(out),
            vec![("d1".to_string(), 0), ("d2".to_string(), 3)]
        );
    }

    #[test]
    fn image_key_follows_the_recipe() {
        assert_ne!(fnv64(b"a"), fnv64(b"b"));
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
    }
}
