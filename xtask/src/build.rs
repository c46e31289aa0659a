//! Building on the host with cargo: the lab's binaries and test executables.
//! Under emulation every cargo start costs 15 to 20 s, so everything the VM
//! runs is built here first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a cargo command in the checkout; fails naming it.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds the binaries the lab runs: `director`, `labnet`, `labraft`.
pub fn build_lab_binaries(root: &Path, release: bool) -> Result<()> {
    let mut args = vec!["build", "--quiet"];
    if release {
        args.push("--release");
    }
    args.extend([
        "-p",
        "director",
        "-p",
        "director-tests",
        "-p",
        "kube-double",
        "--bins",
    ]);
    cargo(root, &args)
}

/// Builds test targets without running them; their executables.
pub fn build_tests(root: &Path, targets: &[(&str, &str)], release: bool) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    for (package, test) in targets {
        cmd.args(["-p", package, "--test", test]);
    }
    let out = cmd
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_wanted = targets
            .iter()
            .any(|(_, t)| msg["target"]["name"] == *t && msg["target"]["kind"][0] == "test");
        if let (true, Some(exe)) = (is_wanted, msg["executable"].as_str()) {
            bins.push(PathBuf::from(exe));
        }
    }
    if bins.len() != targets.len() {
        bail!(
            "expected {} test binaries, cargo reported {}",
            targets.len(),
            bins.len()
        );
    }
    Ok(bins)
}
