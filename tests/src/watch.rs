//! An independent observer of who holds a VIP, for the partition tests and the
//! failover benchmark. It does not ask the directors: it looks.
//!
//! - In every director's namespace, `labnet route-watch` samples the kernel's
//!   local routes (`/proc/net/fib_trie`) every few milliseconds and reports each
//!   change of "this host has the VIP as a local address".
//! - In the client's namespace, `labnet arp-watch` broadcasts an ARP request
//!   for the VIP every few milliseconds and reports every reply with the MAC
//!   that sent it.
//! - In the client's namespace, `labnet ping` sends an ICMP echo to the VIP
//!   every 10 ms and reports every reply (the client-visible outage).
//!
//! All report CLOCK_MONOTONIC nanoseconds, which every namespace of one
//! kernel shares, so the streams line up. The tools print one line per event
//! and flush it, and the observer stops them with SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::lab::{Lab, LabError};

/// The current CLOCK_MONOTONIC time in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Whether `/proc/net/fib_trie` text holds `vip` as a local /32 (or /128) route
/// of the local table: a `|-- VIP` leaf followed by a `/32 host LOCAL` line.
pub fn fib_trie_has_local(text: &str, vip: IpAddr) -> bool {
    let leaf = format!("|-- {vip}");
    let mut in_leaf = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("|--") || t.starts_with("+--") {
            in_leaf = t == leaf;
            continue;
        }
        if in_leaf && t.starts_with('/') && t.ends_with("LOCAL") {
            return true;
        }
    }
    false
}

/// One running tool whose output lines are collected.
#[derive(Debug)]
pub(crate) struct Tool {
    label: String,
    child: Child,
    lines: JoinHandle<Vec<String>>,
}

impl Tool {
    /// Starts `labnet ARGS` in `host`.
    pub(crate) fn start(
        lab: &Lab,
        host: &str,
        args: &[String],
        label: &str,
    ) -> Result<Tool, LabError> {
        let labnet = lab.env().labnet.clone();
        let mut cmd = lab.command(host, &labnet.to_string_lossy())?;
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|source| LabError::Io {
            op: "starting",
            path: labnet.clone(),
            source,
        })?;
        let out = child.stdout.take();
        let lines = std::thread::spawn(move || match out {
            Some(out) => BufReader::new(out).lines().map_while(Result::ok).collect(),
            None => Vec::new(),
        });
        Ok(Tool {
            label: label.to_string(),
            child,
            lines,
        })
    }

    /// Stops it (SIGTERM); its label and every line it printed.
    pub(crate) fn stop(mut self) -> (String, Vec<String>) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = self.child.wait();
        (self.label, self.lines.join().unwrap_or_default())
    }
}

/// Parses `KIND T_NS REST...` lines of one kind into (t, rest).
pub(crate) fn events<'a>(lines: &'a [String], kind: &str) -> Vec<(u64, Vec<&'a str>)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != kind {
                return None;
            }
            let t = w.next()?.parse().ok()?;
            Some((t, w.collect()))
        })
        .collect()
}

/// Watches who holds a VIP: route samplers in the given director hosts and an
/// ARP prober in the client.
#[derive(Debug)]
pub struct OwnerWatch {
    tools: Vec<Tool>,
    started: u64,
}

/// What an [`OwnerWatch`] saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// When the watch started and stopped (monotonic ns).
    pub span: (u64, u64),
    /// Per director host: intervals (first sample held, last sample held).
    pub held: BTreeMap<String, Vec<(u64, u64)>>,
    /// ARP probes: (time sent, the MACs of the replies that arrived before
    /// the next probe, in the order they arrived).
    pub probes: Vec<(u64, Vec<String>)>,
}

impl OwnerWatch {
    /// Starts watching `vip` from `directors` and the client, sampling every
    /// `interval_ms`.
    pub fn start(
        lab: &Lab,
        vip: IpAddr,
        directors: &[String],
        interval_ms: u64,
    ) -> Result<OwnerWatch, LabError> {
        let mut tools = Vec::new();
        let common = |cmd: &str| {
            vec![
                cmd.to_string(),
                vip.to_string(),
                "--interval-ms".into(),
                interval_ms.to_string(),
            ]
        };
        for d in directors {
            tools.push(Tool::start(lab, d, &common("route-watch"), d)?);
        }
        tools.push(Tool::start(lab, "client", &common("arp-watch"), "client")?);
        // Give the samplers a moment to take their first sample.
        std::thread::sleep(std::time::Duration::from_millis(200));
        Ok(OwnerWatch {
            tools,
            started: monotonic_ns(),
        })
    }

    /// Stops every tool and returns what they saw.
    pub fn stop(self) -> Observed {
        let end = monotonic_ns();
        let mut seen = Observed {
            span: (self.started, end),
            ..Default::default()
        };
        for tool in self.tools {
            let (label, lines) = tool.stop();
            if label == "client" {
                let sent = events(&lines, "probe");
                let replies = events(&lines, "reply");
                for (i, (t, _)) in sent.iter().enumerate() {
                    let next = sent.get(i + 1).map(|(n, _)| *n).unwrap_or(u64::MAX);
                    let macs = replies
                        .iter()
                        .filter(|(r, _)| r >= t && *r < next)
                        .filter_map(|(_, w)| w.first().map(|m| m.to_string()))
                        .collect();
                    seen.probes.push((*t, macs));
                }
            } else {
                seen.held
                    .insert(label, held_intervals(&events(&lines, "sample"), end));
            }
        }
        seen
    }
}

/// From `sample T 0|1 T_PREV` change events (T_PREV: the sample before,
/// which still saw the old state), the intervals during which the samples saw
/// the VIP held; a run still open at the end lasts until `end`.
fn held_intervals(samples: &[(u64, Vec<&str>)], end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut since: Option<u64> = None;
    for (t, w) in samples {
        let held = w.first() == Some(&"1");
        let prev = w.get(1).and_then(|p| p.parse().ok()).unwrap_or(*t);
        match (since, held) {
            (None, true) => since = Some(*t),
            (Some(s), false) => {
                out.push((s, prev.max(s)));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        out.push((s, end.max(s)));
    }
    out
}

impl Observed {
    /// Milliseconds during which two or more directors held the VIP at once,
    /// as the route samplers saw it.
    pub fn two_holders_ms(&self) -> f64 {
        // Sweep over interval edges.
        let mut edges: Vec<(u64, i32)> = Vec::new();
        for iv in self.held.values() {
            for (a, b) in iv {
                edges.push((*a, 1));
                edges.push((*b, -1));
            }
        }
        edges.sort_by_key(|(t, d)| (*t, -*d));
        let (mut depth, mut since, mut total) = (0i32, 0u64, 0u64);
        for (t, d) in edges {
            if depth >= 2 {
                total += t - since;
            }
            depth += d;
            since = t;
        }
        total as f64 / 1e6
    }

    /// The ARP probe windows in which the client saw two owners answer. A
    /// client follows the latest reply, so one change of MAC inside a window,
    /// away from the MAC that answered before it, is a handover (the old
    /// owner's last reply and the new owner's first may arrive together when
    /// a process is scheduled late). Two owners show as the answers going
    /// back: a window whose replies change MAC more than once, or change back
    /// to the MAC that answered before the window.
    pub fn double_answers(&self) -> Vec<(u64, Vec<String>)> {
        let mut out = Vec::new();
        let mut prev: Option<&String> = None;
        for (t, macs) in &self.probes {
            let mut seq: Vec<&String> = Vec::new();
            for m in macs {
                if seq.last() != Some(&m) {
                    seq.push(m);
                }
            }
            let double = match seq.as_slice() {
                [] | [_] => false,
                [first, second] => Some(*first) != prev && Some(*second) == prev,
                _ => true,
            };
            if double {
                out.push((*t, macs.clone()));
            }
            if let Some(last) = seq.last() {
                prev = Some(*last);
            }
        }
        out
    }

    /// Milliseconds covered by the probe windows of [`Self::double_answers`]
    /// (each until the next probe).
    pub fn double_answer_ms(&self) -> f64 {
        let doubles: BTreeSet<u64> = self.double_answers().iter().map(|(t, _)| *t).collect();
        let mut total = 0u64;
        for (i, (t, _)) in self.probes.iter().enumerate() {
            if doubles.contains(t) {
                let next = self
                    .probes
                    .get(i + 1)
                    .map(|(n, _)| *n)
                    .unwrap_or(self.span.1);
                total += next.saturating_sub(*t);
            }
        }
        total as f64 / 1e6
    }

    /// How many probe windows were answered by exactly one MAC.
    pub fn answered_by_one(&self) -> usize {
        self.probes
            .iter()
            .filter(|(_, m)| {
                let distinct: BTreeSet<&String> = m.iter().collect();
                distinct.len() == 1
            })
            .count()
    }

    /// Every MAC that answered any probe.
    pub fn answering_macs(&self) -> BTreeSet<String> {
        self.probes.iter().flat_map(|(_, m)| m.clone()).collect()
    }

    /// Total two-owner time in milliseconds: the larger of what the route
    /// samplers and the ARP prober saw.
    pub fn two_owner_ms(&self) -> f64 {
        self.two_holders_ms().max(self.double_answer_ms())
    }

    /// A one-paragraph account, for assertion messages and reports.
    pub fn summary(&self) -> String {
        let answered = self.probes.iter().filter(|(_, m)| !m.is_empty()).count();
        format!(
            "{:.0} ms watched; route holders: {:?}; ARP probes {} ({} answered, {} with two owners answering: {:?}); two owners {:.1} ms",
            (self.span.1.saturating_sub(self.span.0)) as f64 / 1e6,
            self.held
                .iter()
                .map(|(h, iv)| (h.clone(), iv.len()))
                .collect::<Vec<_>>(),
            self.probes.len(),
            answered,
            self.double_answers().len(),
            self.answering_macs(),
            self.two_owner_ms()
        )
    }
}

/// A client probing the VIP with ICMP echo every `interval_ms`.
#[derive(Debug)]
pub struct Pinger {
    tool: Tool,
}

impl Pinger {
    /// Starts `labnet ping` in the client.
    pub fn start(lab: &Lab, vip: IpAddr, interval_ms: u64) -> Result<Pinger, LabError> {
        let args = vec![
            "ping".into(),
            vip.to_string(),
            "--interval-ms".into(),
            interval_ms.to_string(),
        ];
        Ok(Pinger {
            tool: Tool::start(lab, "client", &args, "client")?,
        })
    }

    /// Stops it; the reply times (monotonic ns).
    pub fn stop(self) -> Vec<u64> {
        let (_, lines) = self.tool.stop();
        events(&lines, "reply")
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }
}

/// The longest gap between consecutive replies after `from` (ns), in
/// milliseconds: the client-visible outage of a failover at `from`. The gap
/// that spans `from` counts too.
pub fn outage_ms(replies: &[u64], from: u64) -> Option<f64> {
    let mut best: Option<u64> = None;
    for w in replies.windows(2) {
        if w[1] >= from {
            let gap = w[1] - w[0];
            best = Some(best.map_or(gap, |b| b.max(gap)));
        }
    }
    best.map(|g| g as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.10.0.0/24 2 0 2
        |-- 10.10.0.0
           /24 link UNICAST
        |-- 10.10.0.200
           /32 link UNICAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.10.0.0/24 2 0 2
        |-- 10.10.0.11
           /32 host LOCAL
        |-- 10.10.0.201
           /32 host LOCAL
";

    #[test]
    fn fib_trie_local_routes() {
        assert!(fib_trie_has_local(TRIE, "10.10.0.201".parse().unwrap()));
        assert!(fib_trie_has_local(TRIE, "10.10.0.11".parse().unwrap()));
        assert!(
            !fib_trie_has_local(TRIE, "10.10.0.200".parse().unwrap()),
            "a unicast route is not a local address"
        );
        assert!(!fib_trie_has_local(TRIE, "10.10.0.2".parse().unwrap()));
    }

    fn samples(v: &[(u64, u8, u64)]) -> Vec<String> {
        v.iter()
            .map(|(t, h, p)| format!("sample {t} {h} {p}"))
            .collect()
    }

    #[test]
    fn overlapping_holders_count_and_handovers_do_not() {
        let ms = 1_000_000;
        // d1 held from 0 until its sample at 10 ms; d2 from 25 ms to the end.
        let a = samples(&[(0, 1, 0), (20 * ms, 0, 10 * ms)]);
        let b = samples(&[(5 * ms, 0, 0), (25 * ms, 1, 15 * ms)]);
        let mut o = Observed::default();
        o.held
            .insert("d1".into(), held_intervals(&events(&a, "sample"), 40 * ms));
        o.held
            .insert("d2".into(), held_intervals(&events(&b, "sample"), 40 * ms));
        assert_eq!(o.held["d1"], vec![(0, 10 * ms)]);
        assert_eq!(o.held["d2"], vec![(25 * ms, 40 * ms)]);
        assert_eq!(o.two_holders_ms(), 0.0);
        // Both hold from 1 ms to 3 ms.
        let c = samples(&[(0, 1, 0), (4 * ms, 0, 3 * ms)]);
        let d = samples(&[(ms, 1, 0)]);
        o.held
            .insert("d1".into(), held_intervals(&events(&c, "sample"), 9 * ms));
        o.held
            .insert("d2".into(), held_intervals(&events(&d, "sample"), 9 * ms));
        assert_eq!(o.two_holders_ms(), 2.0);
    }

    #[test]
    fn a_handover_is_not_two_owners_but_answers_going_back_are() {
        let w = |macs: &[&str]| macs.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let ms = 1_000_000;
        let mut o = Observed {
            span: (0, 30 * ms),
            ..Default::default()
        };
        // A answers, then A's last and B's first reply share a window, then B.
        o.probes = vec![
            (0, w(&["a"])),
            (10 * ms, w(&["a", "b"])),
            (20 * ms, w(&["b"])),
        ];
        assert!(o.double_answers().is_empty());
        assert_eq!(o.double_answer_ms(), 0.0);
        // B then A again inside one window, after A: two owners.
        o.probes = vec![
            (0, w(&["a"])),
            (10 * ms, w(&["b", "a"])),
            (20 * ms, w(&["a"])),
        ];
        assert_eq!(o.double_answers().len(), 1);
        assert_eq!(o.double_answer_ms(), 10.0);
        // Split brain: both answer every probe, in any order.
        o.probes = vec![
            (0, w(&["a", "b"])),
            (10 * ms, w(&["a", "b"])),
            (20 * ms, w(&["b", "a", "b"])),
        ];
        assert_eq!(o.double_answers().len(), 2, "{:?}", o.double_answers());
        assert_eq!(o.answered_by_one(), 0);
    }

    #[test]
    fn an_outage_is_the_longest_gap_after_the_failure() {
        let ms = 1_000_000;
        let replies = [0, 10 * ms, 20 * ms, 520 * ms, 530 * ms];
        assert_eq!(outage_ms(&replies, 25 * ms), Some(500.0));
        assert_eq!(outage_ms(&replies, 600 * ms), None);
        assert_eq!(outage_ms(&replies, 0), Some(500.0));
    }
}
