//! `director ipvs show|apply` against the real kernel, cross-checked with
//! `ipvsadm`, in a lab director's namespace. `cargo xtask test` runs them in
//! the VM; a plain `cargo test` skips them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on what it cannot set up"
)]

use std::process::Output;

use lab::{LabEnv, LabGuard, LabSpec};

fn env() -> LabEnv {
    let mut env = LabEnv::from_env();
    env.labnet = env!("CARGO_BIN_EXE_labnet").into();
    env
}

fn director() -> String {
    lab::lab::workspace_binary("director")
        .expect("the director binary (cargo build -p director)")
        .to_string_lossy()
        .into_owned()
}

/// Runs `director ARGS` in d1; its output whatever the exit code.
fn run(lab: &LabGuard, args: &[&str]) -> Output {
    let mut cmd = lab.command("d1", &director()).unwrap();
    cmd.args(args);
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(lab: &LabGuard, name: &str, text: &str) -> String {
    let path = lab
        .env()
        .state_dir
        .join(format!("{}{name}", lab.spec().prefix));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const RULES: &str = "\
-A -t 10.10.0.200:80 -s rr
-a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m -w 1
-a -t 10.10.0.200:80 -r 10.10.0.22:30080 -m -w 0
-A -u 10.10.0.201:53 -s sh -b sh-fallback,sh-port -p 300 -M 255.255.255.0
-a -u 10.10.0.201:53 -r 10.10.0.21:53 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-A -t [fd10:10::200]:443 -s mh -b mh-port -p 60
-a -t [fd10:10::200]:443 -r [fd10:10::21]:443 -g -w 2 -x 100 -y 10
-A -f 7 -s wlc
-a -f 7 -r 10.10.0.22:0 -g -w 5
-A --sctp-service 10.10.0.202:3868 -s lc
";

fn program(lab: &LabGuard) {
    lab.exec("d1", &["modprobe", "ip_vs"]).unwrap();
    let rules = write(lab, "rules", RULES);
    lab.exec("d1", &["sh", "-c", &format!("ipvsadm -R < {rules}")])
        .unwrap();
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn show_yaml_round_trips_through_flush_and_apply() {
    let lab = LabGuard::up(LabSpec::new(1, 2).with_prefix("k-ipvs1-"), env()).unwrap();
    program(&lab);
    let before = lab.exec("d1", &["ipvsadm", "-Ln", "--exact"]).unwrap();
    let shown = run(&lab, &["ipvs", "show", "-o", "yaml"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let file = write(&lab, "table.yaml", &stdout(&shown));

    lab.exec("d1", &["ipvsadm", "-C"]).unwrap();
    let applied = run(&lab, &["ipvs", "apply", &file]);
    assert_eq!(
        applied.status.code(),
        Some(0),
        "{}{}",
        stdout(&applied),
        stderr(&applied)
    );
    assert!(
        stdout(&applied).contains("applied 10 of 10 change(s)"),
        "{}",
        stdout(&applied)
    );
    let after = lab.exec("d1", &["ipvsadm", "-Ln", "--exact"]).unwrap();
    assert_eq!(after, before);

    // Applying the same file again changes nothing, and a dry run agrees.
    let again = run(&lab, &["ipvs", "apply", &file]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stdout(&again).contains("nothing to do"),
        "{}",
        stdout(&again)
    );
    let dry = run(&lab, &["ipvs", "apply", "--dry-run", &file]);
    assert_eq!(dry.status.code(), Some(0), "{}", stdout(&dry));

    // JSON carries the same table.
    let json = run(&lab, &["ipvs", "show", "-o", "json", "--stats"]);
    let jfile = write(&lab, "table.json", &stdout(&json));
    let jdry = run(&lab, &["ipvs", "apply", "--dry-run", &jfile]);
    assert_eq!(
        jdry.status.code(),
        Some(0),
        "{}{}",
        stdout(&jdry),
        stderr(&jdry)
    );
    lab.down().unwrap();
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn show_table_lists_what_ipvsadm_lists() {
    let lab = LabGuard::up(LabSpec::new(1, 2).with_prefix("k-ipvs2-"), env()).unwrap();
    program(&lab);
    let ours = stdout(&run(&lab, &["ipvs", "show"]));
    let theirs = lab.exec("d1", &["ipvsadm", "-Ln"]).unwrap();
    let trim = |s: &str| {
        s.lines()
            .map(|l| l.trim_end().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        trim(&ours),
        trim(&theirs),
        "ours:\n{ours}\nipvsadm:\n{theirs}"
    );
    lab.down().unwrap();
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn dry_run_reports_drift_and_a_weight_change_is_one_edit() {
    let lab = LabGuard::up(LabSpec::new(1, 2).with_prefix("k-ipvs3-"), env()).unwrap();
    program(&lab);
    let file = "\
services:
- protocol: tcp
  address: 10.10.0.200
  port: 80
  scheduler: rr
  destinations:
  - {address: 10.10.0.21, port: 30080, forward: masquerade, weight: 1}
  - {address: 10.10.0.22, port: 30080, forward: masquerade, weight: 4}
";
    let path = write(&lab, "web.yaml", file);
    let dry = run(&lab, &["ipvs", "apply", "--dry-run", &path]);
    assert_eq!(dry.status.code(), Some(2), "{}", stdout(&dry));
    assert!(
        stdout(&dry).starts_with("1 change(s) would be made:"),
        "{}",
        stdout(&dry)
    );
    assert!(stdout(&dry).contains("edit destination of TCP 10.10.0.200:80: 10.10.0.22:30080 Masq weight 0 -> 10.10.0.22:30080 Masq weight 4"), "{}", stdout(&dry));
    let rules_before = lab.exec("d1", &["ipvsadm", "-Sn"]).unwrap();
    assert!(rules_before.contains("-r 10.10.0.22:30080 -m -w 0"));

    let applied = run(&lab, &["ipvs", "apply", &path]);
    assert!(
        stdout(&applied).contains("applied 1 of 1 change(s)"),
        "{}",
        stdout(&applied)
    );
    let rules = lab.exec("d1", &["ipvsadm", "-Sn"]).unwrap();
    assert!(rules.contains("-r 10.10.0.22:30080 -m -w 4"), "{rules}");
    // The services the file does not name are untouched...
    assert!(rules.contains("-A -f 7 -s wlc"), "{rules}");
    // ...unless --prune.
    let pruned = run(&lab, &["ipvs", "apply", "--prune", &path]);
    assert!(
        stdout(&pruned).contains("applied 4 of 4 change(s)"),
        "{}",
        stdout(&pruned)
    );
    let rules = lab.exec("d1", &["ipvsadm", "-Sn"]).unwrap();
    assert_eq!(
        rules.lines().filter(|l| l.starts_with("-A")).count(),
        1,
        "{rules}"
    );
    lab.down().unwrap();
}

#[test]
#[ignore = "needs a kernel with IPVS: run by `cargo xtask test` (in the VM)"]
fn a_bad_file_exits_64_and_leaves_the_kernel_untouched() {
    let lab = LabGuard::up(LabSpec::new(1, 2).with_prefix("k-ipvs4-"), env()).unwrap();
    program(&lab);
    let before = lab.exec("d1", &["ipvsadm", "-Sn"]).unwrap();
    let path = write(
        &lab,
        "bad.yaml",
        "services:\n- protocol: tcp\n  address: 10.10.0.250\n  port: 80\n  scheduler: rr\n- protocol: tcp\n  address: 10.10.0.251\n  port: 80000\n  scheduler: nope\n",
    );
    let out = run(&lab, &["ipvs", "apply", "--prune", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{path}:8:9: services[1].port: 80000 is out of range 0..=65535"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:9:14: services[1].scheduler: unknown scheduler \"nope\""
        )),
        "{err}"
    );
    assert_eq!(lab.exec("d1", &["ipvsadm", "-Sn"]).unwrap(), before);

    // A kernel refusal names the operation and exits 1.
    let path = write(
        &lab,
        "refused.yaml",
        "services:\n- protocol: tcp\n  address: 10.10.0.250\n  port: 80\n  scheduler: rr\n  destinations:\n  - {address: 224.0.0.1, port: 80}\n",
    );
    let out = run(&lab, &["ipvs", "apply", &path]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("failed: adding destination 224.0.0.1:80 of TCP 10.10.0.250:80: invalid argument (errno 22)"), "{}", stdout(&out));
    lab.down().unwrap();
}
