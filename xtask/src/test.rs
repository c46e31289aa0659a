//! `cargo xtask test`: what CI runs, stage by stage, with the time of each.
//!
//! 1. `cargo fmt --check`
//! 2. `cargo clippy --workspace --all-targets -D warnings`
//! 3. `vagrant validate --ignore-provider` in `vagrant/` (the Vagrant lab's
//!    Vagrantfile, checked without a box or a provider)
//! 4. unit tests (`cargo test --workspace`; tests that need root or IPVS are
//!    `#[ignore]`d there and run by the stages below)
//! 5. host-namespace tests (root, the host kernel)
//! 6. kernel tests: built on the host, then run in ONE VM boot (or directly
//!    when the host kernel has IPVS)
//! 7. the rollout test (`cargo xtask test-deploy`): the Ansible role against
//!    three Debian 12 VMs; `--no-deploy` leaves it out

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{build_lab_binaries, build_tests, cargo};
use crate::vm::{self, shell_quote, VmOptions};

/// Test binaries of the host-namespace stage: (package, test target).
const NETNS_TESTS: &[(&str, &str)] = &[
    ("director-tests", "netns"),
    ("director-tests", "raft"),
    ("director-tests", "upgrade"),
    ("director-tests", "kube"),
];
/// Test binaries of the kernel stage: (package, test target).
const KERNEL_TESTS: &[(&str, &str)] = &[
    ("ipvs-sys", "kernel"),
    ("director-tests", "kernel"),
    ("director-tests", "ipvs"),
];

struct Stages {
    done: Vec<(&'static str, Duration)>,
}

impl Stages {
    fn run(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        eprintln!("==> {name}");
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        self.done.push((name, took));
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.report();
                Err(e.context(format!("stage `{name}` failed")))
            }
        }
    }

    fn report(&self) {
        eprintln!("stage times:");
        for (name, took) in &self.done {
            eprintln!("  {name:<28} {:>7.1} s", took.as_secs_f64());
        }
    }
}

/// Checks the Vagrant lab's Vagrantfile (`vagrant/`) as `vagrant validate
/// --ignore-provider` does: it loads, names the files its provisioning runs,
/// and its settings are valid. Needs no box, no provider and no network.
fn vagrant_validate(root: &Path) -> Result<()> {
    let status = Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(root.join("vagrant"))
        // No version check against HashiCorp's servers.
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("`vagrant validate --ignore-provider` in vagrant/ failed ({s})"),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "`vagrant` is not installed; it checks the Vagrant lab \
             (Debian: apt-get install --no-install-recommends vagrant)"
        ),
        Err(e) => Err(e).context("running vagrant validate --ignore-provider in vagrant/"),
    }
}

/// Runs every stage; the exit code.
pub fn run(root: &Path, opts: &VmOptions, no_vm: bool, no_deploy: bool) -> Result<i32> {
    let mut stages = Stages { done: Vec::new() };
    stages.run("fmt", || cargo(root, &["fmt", "--all", "--", "--check"]))?;
    stages.run("clippy", || {
        cargo(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ],
        )
    })?;
    stages.run("vagrant validate", || vagrant_validate(root))?;
    stages.run("unit tests", || {
        cargo(root, &["test", "--workspace", "--quiet"])
    })?;
    stages.run("host-namespace tests", || {
        if !nix::unistd::geteuid().is_root() {
            bail!("the host-namespace tests need root (network namespaces): run as root");
        }
        // The tests start `director` and `labnet` processes.
        build_lab_binaries(root, false)?;
        for bin in build_tests(root, NETNS_TESTS, false)? {
            let status = Command::new(&bin)
                .args(["--ignored", "--test-threads=1"])
                .current_dir(root)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                bail!("{} failed ({status})", bin.display());
            }
        }
        Ok(())
    })?;
    if no_vm {
        stages.report();
        return Ok(0);
    }
    let mut kernel_bins = Vec::new();
    stages.run("build kernel tests", || {
        build_lab_binaries(root, false)?;
        kernel_bins = build_tests(root, KERNEL_TESTS, false)?;
        Ok(())
    })?;
    stages.run("kernel tests (one VM boot)", || {
        // Every binary runs, even after a failure; the script fails at the end.
        let mut script = String::from("failed=0\n");
        for b in &kernel_bins {
            script.push_str(&format!(
                "{} --ignored --test-threads=1 || failed=1\n",
                shell_quote(&b.to_string_lossy())
            ));
        }
        script.push_str("exit $failed\n");
        let argv = vec!["sh".to_string(), "-c".to_string(), script];
        let outcome = vm::run(root, opts, &argv)?;
        if outcome.code != 0 {
            bail!(
                "kernel tests failed (exit code {}, {})",
                outcome.code,
                if outcome.in_vm {
                    "in the VM"
                } else {
                    "on the host"
                }
            );
        }
        Ok(())
    })?;
    if !no_deploy {
        stages.run("rollout test (three Debian VMs)", || {
            let options = crate::deploy::DeployOptions {
                memory: "768M".into(),
                cpus: 1,
                cargo_lock: None,
                vm_lock: None,
                keep: false,
            };
            match crate::deploy::run(root, &options)? {
                0 => Ok(()),
                code => bail!("the rollout test failed (exit code {code})"),
            }
        })?;
    }
    stages.report();
    Ok(0)
}
