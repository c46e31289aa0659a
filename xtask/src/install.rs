//! Installs what the VM runner needs, once: Debian packages (qemu, a static
//! busybox, kmod, python's venv), virtme-ng at a pinned version in a venv, and
//! Debian's stock kernel unpacked into the cache. A second run finds them all
//! and installs nothing. Nothing goes into the host's /boot.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// virtme-ng version the runner installs.
const VIRTME_NG_VERSION: &str = "1.42";
/// matplotlib, for the benchmarks' charts.
const MATPLOTLIB_VERSION: &str = "3.9.2";

/// Everything a VM run needs, found or installed.
#[derive(Debug)]
pub struct VmPrerequisites {
    /// The `vng` launcher.
    pub vng: PathBuf,
    /// The kernel image to boot.
    pub vmlinuz: PathBuf,
    /// The venv's bin directory (virtme-ng calls its sibling tools by name).
    pub venv_bin: PathBuf,
}

impl VmPrerequisites {
    /// PATH with the venv's bin directory first.
    pub fn path_with_venv(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.venv_bin.clone()];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(dirs).unwrap_or_default()
    }
}

/// The cache folder: `$DIRECTOR_LAB_CACHE`, else `$XDG_CACHE_HOME/director-lab`,
/// else `~/.cache/director-lab`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DIRECTOR_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("director-lab");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("director-lab")
}

/// Finds or installs everything a VM run needs.
pub fn vm_prerequisites() -> Result<VmPrerequisites> {
    debian_packages()?;
    let cache = cache_dir();
    fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache folder {}", cache.display()))?;
    let venv_bin = virtme_ng(&cache)?;
    let vmlinuz = kernel(&cache)?;
    Ok(VmPrerequisites {
        vng: venv_bin.join("vng"),
        vmlinuz,
        venv_bin,
    })
}

/// Debian packages, each with a file that shows it is there.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/usr/share/doc/busybox-static"),
    ("kmod", "/usr/sbin/depmod"),
    ("python3-venv", ""),
    ("time", "/usr/bin/time"),
];

fn debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for (package, file) in PACKAGES {
        let present = if file.is_empty() {
            python_has_venv()
        } else {
            Path::new(file).exists()
        };
        if !present {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

fn python_has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs Debian packages, updating the package lists once if needed.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing {list}: install them with your distribution's package manager (automatic installs need Debian or Ubuntu)");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("missing {list}: run `sudo apt-get install {list}` (or run this as root)");
    }
    eprintln!("xtask: installing {list} (apt-get)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let out = install().context("running apt-get")?;
    if out.status.success() {
        return Ok(());
    }
    apt_update()?;
    let out = install().context("running apt-get")?;
    if !out.status.success() {
        bail!("apt-get install {list} failed: {}", last_line(&out.stderr));
    }
    Ok(())
}

fn apt_update() -> Result<()> {
    eprintln!("xtask: updating the package lists (apt-get update)");
    let out = Command::new("apt-get")
        .args(["update", "-q"])
        .stdin(Stdio::null())
        .output()
        .context("running apt-get update")?;
    if !out.status.success() {
        bail!("apt-get update failed: {}", last_line(&out.stderr));
    }
    Ok(())
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

/// virtme-ng in a venv of its own, at the pinned version.
fn virtme_ng(cache: &Path) -> Result<PathBuf> {
    let requirement = format!("virtme-ng=={VIRTME_NG_VERSION}");
    pip_venv(
        cache,
        &format!("venv-virtme-ng-{VIRTME_NG_VERSION}"),
        &requirement,
        "vng",
    )
}

/// The Python of a venv with matplotlib, for the benchmarks' charts.
pub fn bench_python() -> Result<PathBuf> {
    let requirement = format!("matplotlib=={MATPLOTLIB_VERSION}");
    let bin = pip_venv(
        &cache_dir(),
        &format!("venv-bench-{MATPLOTLIB_VERSION}"),
        &requirement,
        "python3",
    )?;
    Ok(bin.join("python3"))
}

/// A venv `name` under `cache` with `requirement` installed from PyPI; its
/// bin folder. A marker written after pip succeeded tells a finished venv
/// from an interrupted one; `probe` is a file its bin folder must hold.
fn pip_venv(cache: &Path, name: &str, requirement: &str, probe: &str) -> Result<PathBuf> {
    let venv = cache.join(name);
    let bin = venv.join("bin");
    let done = venv.join(".complete");
    if done.exists() && bin.join(probe).is_file() {
        return Ok(bin);
    }
    eprintln!("xtask: installing {requirement} into {}", venv.display());
    let _ = fs::remove_dir_all(&venv);
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .stdin(Stdio::null())
        .output()
        .context("running python3 -m venv (is python3 installed?)")?;
    if !out.status.success() {
        bail!("could not create a Python venv: {}", last_line(&out.stderr));
    }
    let out = Command::new(bin.join("pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(requirement)
        .stdin(Stdio::null())
        .output()
        .context("running pip")?;
    if !out.status.success() || !bin.join(probe).is_file() {
        let _ = fs::remove_dir_all(&venv);
        bail!(
            "could not install {requirement} from PyPI: {}",
            last_line(&out.stderr)
        );
    }
    fs::write(&done, requirement).with_context(|| format!("writing {}", done.display()))?;
    Ok(bin)
}

/// The name of the kernel package `linux-image-amd64` depends on now.
fn kernel_package() -> Result<String> {
    let query = || -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
                .map(str::to_string)
        })
    };
    if !Path::new("/usr/bin/apt-cache").exists() {
        bail!("the VM kernel comes from Debian's linux-image-amd64 and needs apt (Debian or Ubuntu); on other systems run with --host on a kernel that has IPVS");
    }
    if let Some(p) = query() {
        return Ok(p);
    }
    apt_update()?;
    query().context(
        "apt knows no linux-image-amd64 package: add Debian's main archive to the apt sources",
    )
}

/// Debian's stock kernel, unpacked into the cache; returns its vmlinuz.
fn kernel(cache: &Path) -> Result<PathBuf> {
    let package = kernel_package()?;
    let dir = cache.join("kernel").join(&package);
    let done = dir.join(".complete");
    if !done.exists() {
        unpack_kernel(&package, &dir)?;
        fs::write(&done, &package).with_context(|| format!("writing {}", done.display()))?;
    }
    let version = fs::read_dir(dir.join("root/lib/modules"))
        .with_context(|| format!("reading {}/root/lib/modules", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{} holds no modules", dir.display()))?;
    link_modules(&dir.join("root/lib/modules").join(&version), &version)?;
    let vmlinuz = dir.join("root/boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!(
            "{} is missing from the unpacked kernel package",
            vmlinuz.display()
        );
    }
    Ok(vmlinuz)
}

fn unpack_kernel(package: &str, dir: &Path) -> Result<()> {
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    eprintln!("xtask: downloading {package} (apt-get download)");
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&partial)
            .stdin(Stdio::null())
            .output()
    };
    let mut out = download().context("running apt-get download")?;
    if !out.status.success() {
        apt_update()?;
        out = download().context("running apt-get download")?;
    }
    if !out.status.success() {
        bail!(
            "apt-get download {package} failed: {}",
            last_line(&out.stderr)
        );
    }
    let deb = fs::read_dir(&partial)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let root = partial.join("root");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .context("running dpkg-deb (is dpkg installed?)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -x {} failed: {}",
            deb.display(),
            last_line(&out.stderr)
        );
    }
    let version = fs::read_dir(root.join("lib/modules"))
        .context("the kernel package has no lib/modules")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the kernel package has no module folder")?;
    let out = Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(&version)
        .output()
        .context("running depmod (apt-get install kmod)")?;
    if !out.status.success() {
        bail!("depmod for {version} failed: {}", last_line(&out.stderr));
    }
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir).with_context(|| format!("moving the kernel to {}", dir.display()))?;
    Ok(())
}

/// virtme-ng loads the guest's modules from /lib/modules/VERSION of the shared
/// root file system: point that at the unpacked modules (a symlink; an
/// installed kernel of the same version is left alone).
fn link_modules(modules: &Path, version: &str) -> Result<()> {
    let link = Path::new("/lib/modules").join(version);
    match fs::read_link(&link) {
        Ok(current) if current == modules => return Ok(()),
        Ok(_) => {
            fs::remove_file(&link)
                .with_context(|| format!("replacing the symlink {}", link.display()))?;
        }
        Err(_) if link.exists() => return Ok(()),
        Err(_) => {}
    }
    fs::create_dir_all("/lib/modules").context("creating /lib/modules (run as root)")?;
    symlink(modules, &link).with_context(|| format!("linking {} (run as root)", link.display()))?;
    Ok(())
}
