#!/usr/bin/env python3
"""IPVS programming benchmark: director vs ipvsadm, side by side in one run.

Run by `cargo xtask bench ipvs` (in the VM when the host kernel has no IPVS).
Every measurement runs in a fresh network namespace; each command is timed as a
whole process (start, parse, kernel calls, exit), RUNS times, and the median is
reported with the ratio director/ipvsadm.

1. full apply of SERVICES services x DESTS destinations to an empty table:
   `ipvsadm -R < rules` vs `director ipvs apply table.yaml` (up to 256 changes
   in one netlink datagram, and with --window 1, one request at a time as
   ipvsadm does);
2. one destination's weight changed in that table: director's plan must be one
   kernel call;
3. dump of the whole table: `ipvsadm -Ln` vs `director ipvs show`;
4. peak resident memory of each process (getrusage of the child);
5. director's own report of how long its kernel calls took in each full apply
   ("applied N of N change(s) in T ms").
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

NS = "ipvs-bench"


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def netns_fresh():
    subprocess.run(f"ip netns del {NS}", shell=True, capture_output=True)
    sh(f"ip netns add {NS}")
    sh(f"ip -n {NS} link set lo up")
    sh(f"ip -n {NS} link add lan0 type dummy")
    sh(f"ip -n {NS} addr add 10.10.0.1/24 dev lan0")
    sh(f"ip -n {NS} link set lan0 up")


def measure(cmd, stdin=None, stdout=subprocess.DEVNULL):
    """Runs cmd in the bench namespace under GNU time: (wall seconds, peak
    resident KiB of the command itself, from wait4)."""
    full = ["/usr/bin/time", "-f", "BENCH %e %M %x", "ip", "netns", "exec", NS] + cmd
    p = subprocess.run(full, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True)
    last = [l for l in p.stderr.splitlines() if l.startswith("BENCH ")][-1]
    _, secs, kib, code = last.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {p.stderr}")
    return float(secs), int(kib)


def rules_text(services, dests):
    lines = []
    for i in range(services):
        vip = f"10.{20 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        lines.append(f"-A -t {vip}:80 -s rr")
        for d in range(dests):
            lines.append(f"-a -t {vip}:80 -r 10.10.0.{21 + d}:30080 -m -w 1")
    return "\n".join(lines) + "\n"


def yaml_text(services, dests, bump=None):
    out = ["services:"]
    for i in range(services):
        vip = f"10.{20 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        out.append(f"- {{protocol: tcp, address: {vip}, port: 80, scheduler: rr, destinations: [")
        ds = []
        for d in range(dests):
            w = 2 if bump == (i, d) else 1
            ds.append(f"{{address: 10.10.0.{21 + d}, port: 30080, forward: masquerade, weight: {w}}}")
        out.append("  " + ", ".join(ds) + "]}")
    return "\n".join(out) + "\n"


def saved():
    return sorted(sh(f"ip netns exec {NS} ipvsadm -Sn").splitlines())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--director", required=True)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--dests", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="write results here too")
    a = ap.parse_args()

    sh("modprobe ip_vs && modprobe ip_vs_rr")
    tmp = tempfile.mkdtemp(prefix="ipvs-bench-")
    rules = os.path.join(tmp, "rules")
    table = os.path.join(tmp, "table.yaml")
    bumped = os.path.join(tmp, "bumped.yaml")
    with open(rules, "w") as f:
        f.write(rules_text(a.services, a.dests))
    with open(table, "w") as f:
        f.write(yaml_text(a.services, a.dests))
    with open(bumped, "w") as f:
        f.write(yaml_text(a.services, a.dests, bump=(a.services // 2, 1)))

    res = {k: [] for k in ["ipvsadm_restore", "director_apply", "director_apply_w1",
                           "ipvsadm_list", "director_show", "director_weight"]}
    mem = {k: 0 for k in res}
    reference = None
    weight_report = ""
    apply_reports = []
    for run in range(a.runs):
        # 1. full apply, both ways, each from an empty table.
        netns_fresh()
        with open(rules) as f:
            t, m = measure(["ipvsadm", "-R"], stdin=f)
        res["ipvsadm_restore"].append(t); mem["ipvsadm_restore"] = max(mem["ipvsadm_restore"], m)
        reference = saved()
        # 3. dump (on the full table ipvsadm made).
        t, m = measure(["ipvsadm", "-Ln"])
        res["ipvsadm_list"].append(t); mem["ipvsadm_list"] = max(mem["ipvsadm_list"], m)
        t, m = measure([a.director, "ipvs", "show"])
        res["director_show"].append(t); mem["director_show"] = max(mem["director_show"], m)

        netns_fresh()
        out = os.path.join(tmp, "apply.out")
        with open(out, "w") as f:
            t, m = measure([a.director, "ipvs", "apply", table], stdout=f)
        res["director_apply"].append(t); mem["director_apply"] = max(mem["director_apply"], m)
        apply_reports.append(open(out).read().strip())
        if saved() != reference:
            raise SystemExit("director's table differs from ipvsadm's")
        # 2. one weight changed.
        out = os.path.join(tmp, "weight.out")
        with open(out, "w") as f:
            t, m = measure([a.director, "ipvs", "apply", bumped], stdout=f)
        res["director_weight"].append(t); mem["director_weight"] = max(mem["director_weight"], m)
        weight_report = open(out).read().strip()
        if not weight_report.startswith("applied 1 of 1 change(s)"):
            raise SystemExit(f"a weight change took more than one kernel call: {weight_report}")

        netns_fresh()
        t, m = measure([a.director, "ipvs", "apply", "--window", "1", table])
        res["director_apply_w1"].append(t); mem["director_apply_w1"] = max(mem["director_apply_w1"], m)
    subprocess.run(f"ip netns del {NS}", shell=True)

    med = {k: statistics.median(v) for k, v in res.items()}
    rows = [
        ("full apply (empty table)", "ipvsadm -R", med["ipvsadm_restore"], "director ipvs apply", med["director_apply"]),
        ("full apply, one request at a time", "ipvsadm -R", med["ipvsadm_restore"], "director ipvs apply --window 1", med["director_apply_w1"]),
        ("dump whole table", "ipvsadm -Ln", med["ipvsadm_list"], "director ipvs show", med["director_show"]),
    ]
    print(f"IPVS benchmark: {a.services} services x {a.dests} destinations, median of {a.runs} runs, kernel {os.uname().release}")
    print(f"| task | ipvsadm | s | director | s | ratio director/ipvsadm |")
    print(f"|---|---|---|---|---|---|")
    for task, c1, t1, c2, t2 in rows:
        print(f"| {task} | `{c1}` | {t1:.2f} | `{c2}` | {t2:.2f} | {t2 / t1:.2f} |")
    print(f"| one weight changed | | | `director ipvs apply` | {med['director_weight']:.2f} | ({weight_report.splitlines()[0]}) |")
    print()
    print("director apply's kernel calls: " + "; ".join(apply_reports))
    print("peak RSS (KiB): " + ", ".join(f"{k} {v}" for k, v in mem.items()))
    print("all runs (s): " + json.dumps({k: [round(x, 3) for x in v] for k, v in res.items()}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"services": a.services, "dests": a.dests, "runs": res, "median": med,
                       "peak_rss_kib": mem, "weight_change": weight_report,
                       "apply_reports": apply_reports}, f, indent=2)


if __name__ == "__main__":
    main()
