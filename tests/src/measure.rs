//! What a benchmark reads about a running director, from outside it: its
//! kernel's IPVS table, its CPU time and memory, the IPVS changes it asks the
//! kernel for, and counters from its Prometheus endpoint.
//!
//! - The IPVS table of a director's namespace is read from
//!   kernel over netlink from a thread that lives in that namespace
//!   ([`NetnsIpvs`]), so it can be polled while thousands of services
//!   converge without starting a process; `ipvsadm -Sn` gives the same table
//!   in ipvsadm's own words. Not from `/proc/PID/net/ip_vs`: with services in
//!   several namespaces, the kernel's listing (6.1) skips services whenever
//!   it is read in more than one `read` call (a page each), because it
//!   resumes at a position counted over every namespace's services and looks
//!   it up among this namespace's only.
//! - CPU time is `utime + stime` of `/proc/PID/stat` (every thread of the
//!   process), memory `VmRSS` and `VmHWM` of `/proc/PID/status`.
//! - [`IpvsOpsWatch`] sees every IPVS change any process of a namespace sends
//!   to the kernel, on an nlmon device (`labnet ipvs-ops`): it needs neither
//!   the daemon's cooperation nor ptrace.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddrV4};

use ipvs_sys::{Destination, IpvsHandle, Service, ServiceKey};

use std::time::{Duration, Instant};

use crate::lab::{run, Lab, LabError};
use crate::watch::{events, Tool};

/// A process's CPU time and memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// `utime + stime` of every thread, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Of `rss_kib`: anonymous memory (`RssAnon`: heap and stacks) and
    /// file-backed pages (`RssFile`: the program and its libraries), KiB.
    pub rss_anon_kib: u64,
    /// See `rss_anon_kib`.
    pub rss_file_kib: u64,
    /// Threads (`Threads`).
    pub threads: u64,
}

/// Reads [`ProcessSample`] of `pid`; None when it is gone.
pub fn process_sample(pid: i32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcessSample {
        cpu_ticks: cpu_ticks(&stat)?,
        rss_kib: status_kib(&status, "VmRSS")?,
        peak_rss_kib: status_kib(&status, "VmHWM")?,
        rss_anon_kib: status_kib(&status, "RssAnon").unwrap_or_default(),
        rss_file_kib: status_kib(&status, "RssFile").unwrap_or_default(),
        threads: status_value(&status, "Threads").unwrap_or_default(),
    })
}

/// Clock ticks per second of `utime`/`stime` (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// CPU used between two samples, in percent of one CPU over `elapsed`.
pub fn cpu_percent(before: &ProcessSample, after: &ProcessSample, elapsed: Duration) -> f64 {
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    100.0 * ticks / clock_ticks_per_second() as f64 / secs
}

/// `utime + stime` from the text of `/proc/PID/stat` (fields 14 and 15; the
/// command name in field 2 may hold spaces and parentheses, so fields are
/// counted after its closing parenthesis).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   N kB` line of `/proc/PID/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status_value(status, key)
}

/// The number of a `/proc/PID/status` line (its first word after the
/// colon), such as `Threads`.
pub fn status_value(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// An IPVS table as `/proc/net/ip_vs` shows it, without the connection
/// counters: one entry per virtual service (`S` plus its line: protocol,
/// address:port in hex, scheduler, flags) and per destination (`D` plus its
/// service's protocol and address, its own address, forwarding and weight).
/// Two tables are equal when the kernels hold the same services and
/// destinations with the same settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsTable {
    entries: BTreeSet<String>,
    services: usize,
    destinations: usize,
}

impl IpvsTable {
    /// Parses the text of `/proc/net/ip_vs`.
    pub fn parse(text: &str) -> IpvsTable {
        let mut t = IpvsTable::default();
        let mut service = String::new();
        for line in text.lines() {
            if let Some(dest) = line.trim_start().strip_prefix("->") {
                let f: Vec<&str> = dest.split_whitespace().collect();
                // The header line `-> RemoteAddress:Port Forward Weight ...`.
                if f.first() == Some(&"RemoteAddress:Port") || f.len() < 3 {
                    continue;
                }
                t.entries
                    .insert(format!("D {service} {} {} {}", f[0], f[1], f[2]));
                t.destinations += 1;
            } else if ["TCP ", "UDP ", "SCTP ", "FWM "]
                .iter()
                .any(|p| line.starts_with(p))
            {
                let f: Vec<&str> = line.split_whitespace().collect();
                service = f.iter().take(2).copied().collect::<Vec<_>>().join(" ");
                t.entries.insert(format!("S {}", f.join(" ")));
                t.services += 1;
            }
        }
        t
    }

    /// The table as read over netlink, in the same words as [`parse`]
    /// (addresses as `/proc/net/ip_vs` writes them).
    ///
    /// [`parse`]: IpvsTable::parse
    pub fn from_dump(table: &[(Service, Vec<Destination>)]) -> IpvsTable {
        let mut t = IpvsTable::default();
        for (s, dests) in table {
            let service = key_words(&s.key);
            t.entries.insert(format!(
                "S {service} {} flags {:?} timeout {} netmask {:?}",
                s.scheduler, s.flags, s.timeout, s.netmask
            ));
            t.services += 1;
            for d in dests {
                t.entries.insert(format!(
                    "D {service} {} {:?} {}",
                    dest_words(d),
                    d.forward,
                    d.weight
                ));
                t.destinations += 1;
            }
        }
        t
    }

    /// Number of virtual services.
    pub fn services(&self) -> usize {
        self.services
    }

    /// Number of destinations, over all services.
    pub fn destinations(&self) -> usize {
        self.destinations
    }
}

/// A service key as `/proc/net/ip_vs` writes it (`TCP 0A0A00C8:0050`).
fn key_words(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => format!(
            "{} {}",
            protocol_word(*protocol),
            addr_port_hex(*addr, *port)
        ),
        ServiceKey::Fwmark { mark, .. } => format!("FWM {mark:08X}"),
    }
}

fn protocol_word(p: ipvs_sys::Protocol) -> &'static str {
    match p {
        ipvs_sys::Protocol::Tcp => "TCP",
        ipvs_sys::Protocol::Udp => "UDP",
        ipvs_sys::Protocol::Sctp => "SCTP",
        _ => "OTHER",
    }
}

fn addr_port_hex(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => ip_vs_hex(SocketAddrV4::new(a, port)),
        IpAddr::V6(a) => format!("[{a}]:{port:04X}"),
    }
}

/// A destination's address as `/proc/net/ip_vs` writes it.
pub fn dest_words(d: &Destination) -> String {
    addr_port_hex(d.addr, d.port)
}

/// A destination as (address as `/proc/net/ip_vs` writes it, forwarding,
/// weight).
pub type DestWords = (String, String, u32);

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &IpvsHandle) + Send>;

/// An IPVS netlink client inside the network namespace of a process: a
/// thread that entered the namespace, with its own runtime and sockets
/// (a netlink socket belongs to the namespace it was opened in). Requests
/// run on that thread, one at a time.
#[derive(Debug)]
pub struct NetnsIpvs {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetnsIpvs {
    /// Enters the network namespace of `pid` on a new thread and connects.
    pub fn open(pid: i32) -> Result<NetnsIpvs, String> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (ready, opened) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let setup = || -> Result<(tokio::runtime::Runtime, IpvsHandle), String> {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                    .map_err(|e| format!("opening the network namespace of {pid}: {e}"))?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the network namespace of {pid}: {e}"))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("a runtime: {e}"))?;
                let handle = rt
                    .block_on(IpvsHandle::connect())
                    .map_err(|e| format!("IPVS in the namespace of {pid}: {e}"))?;
                Ok((rt, handle))
            };
            match setup() {
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
                Ok((rt, handle)) => {
                    let _ = ready.send(Ok(()));
                    for job in queue {
                        job(&rt, &handle);
                    }
                }
            }
        });
        opened
            .recv()
            .map_err(|_| format!("the IPVS thread for {pid} ended"))??;
        Ok(NetnsIpvs {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &IpvsHandle) -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .as_ref()
            .ok_or("closed")?
            .send(Box::new(move |rt, h| {
                let _ = tx.send(f(rt, h));
            }))
            .map_err(|_| "the IPVS thread ended".to_string())?;
        rx.recv().map_err(|_| "the IPVS thread ended".to_string())
    }

    /// How many virtual services the kernel holds (one service dump).
    pub fn service_count(&self) -> Result<usize, String> {
        self.run(|rt, h| rt.block_on(h.services()).map(|s| s.len()))?
            .map_err(|e| e.to_string())
    }

    /// The key of every virtual service the kernel holds (one service dump).
    pub fn service_keys(&self) -> Result<Vec<ServiceKey>, String> {
        self.run(|rt, h| {
            rt.block_on(h.services())
                .map(|s| s.into_iter().map(|s| s.key).collect())
        })?
        .map_err(|e| e.to_string())
    }

    /// The whole table (a service dump and a destination dump per service).
    pub fn table(&self) -> Result<IpvsTable, String> {
        self.run(|rt, h| rt.block_on(h.table()))?
            .map(|t| IpvsTable::from_dump(&t))
            .map_err(|e| e.to_string())
    }

    /// The destinations of one service as (address as `/proc/net/ip_vs`
    /// writes it, forwarding, weight); None when the service is not there.
    pub fn destinations(&self, key: ServiceKey) -> Result<Option<Vec<DestWords>>, String> {
        self.run(move |rt, h| rt.block_on(h.destinations(&key)))?
            .map(|d| {
                Some(
                    d.iter()
                        .map(|d| {
                            (
                                dest_words(d),
                                format!("{:?}", d.forward),
                                u32::try_from(d.weight).unwrap_or(0),
                            )
                        })
                        .collect(),
                )
            })
            .or_else(|e| {
                if e.kind() == Some(ipvs_sys::ErrorKind::NoSuchService) {
                    Ok(None)
                } else {
                    Err(e.to_string())
                }
            })
    }
}

impl Drop for NetnsIpvs {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An IPv4 `ADDR:PORT` as `/proc/net/ip_vs` writes it (`0A0A00C8:0050`).
pub fn ip_vs_hex(addr: SocketAddrV4) -> String {
    format!("{:08X}:{:04X}", u32::from(*addr.ip()), addr.port())
}

/// The destinations of one virtual service in the text of `/proc/net/ip_vs`,
/// as (address:port in hex, forwarding, weight); None when the service is
/// not there. `protocol` is `TCP`, `UDP` or `SCTP`; `service` its address
/// in hex ([`ip_vs_hex`]).
pub fn ip_vs_destinations(
    text: &str,
    protocol: &str,
    service: &str,
) -> Option<Vec<(String, String, u32)>> {
    let mut lines = text.lines();
    lines.find(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some(protocol) && f.next() == Some(service)
    })?;
    let mut dests = Vec::new();
    for line in lines {
        let Some(rest) = line.trim_start().strip_prefix("->") else {
            break;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(addr), Some(fwd), Some(weight)) = (f.first(), f.get(1), f.get(2)) {
            dests.push((
                addr.to_string(),
                fwd.to_string(),
                weight.parse().unwrap_or(0),
            ));
        }
    }
    Some(dests)
}

/// `ipvsadm -Sn` in a lab host, its lines sorted (ipvsadm lists services in
/// the kernel's hash order, which differs between kernels' histories).
pub fn ipvsadm_saved_sorted(lab: &Lab, host: &str) -> Result<Vec<String>, LabError> {
    let text = lab.exec(host, &["ipvsadm", "-Sn"])?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    Ok(lines)
}

/// The sum of every sample of counter `name` whose labels include each of
/// `labels` (`key`, `value`), in Prometheus' text format; None when no sample
/// matches (the daemon does not export it).
pub fn prometheus_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let wanted = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|p| p.trim() == format!("{k}=\"{v}\""))
        });
        if !wanted {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

/// The kernel's generic-netlink family id of IPVS (`genl ctrl get name
/// IPVS`); the `ip_vs` module must be loaded (a running director loads it).
pub fn ipvs_family_id() -> Result<u16, LabError> {
    let text = run(&["genl", "ctrl", "get", "name", "IPVS"])?;
    parse_family_id(&text).ok_or_else(|| LabError::Command {
        command: "genl ctrl get name IPVS".into(),
        status: "exit status: 0".into(),
        stderr: format!("no `ID: 0x..` in its output: {text:?}"),
    })
}

fn parse_family_id(text: &str) -> Option<u16> {
    let rest = text.split("ID: 0x").nth(1)?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u16::from_str_radix(&hex, 16).ok()
}

/// The IPVS changes every process of one lab host asks its kernel for, seen
/// on an nlmon device made for the purpose (`labnet ipvs-ops`); dumps and
/// other reads are not counted.
#[derive(Debug)]
pub struct IpvsOpsWatch {
    host: String,
    tool: Tool,
}

/// The nlmon device [`IpvsOpsWatch`] adds to a host.
const NLMON: &str = "nlmon0";

impl IpvsOpsWatch {
    /// Adds the nlmon device to `host` and starts the watch; returns once
    /// it sees every message (the kernel module `nlmon` must be available).
    pub fn start(lab: &Lab, host: &str, family_id: u16) -> Result<IpvsOpsWatch, LabError> {
        lab.exec(host, &["ip", "link", "add", NLMON, "type", "nlmon"])?;
        lab.exec(host, &["ip", "link", "set", NLMON, "up"])?;
        let ready = lab
            .env()
            .state_dir
            .join(format!("{}{host}-ipvs-ops.ready", lab.spec().prefix));
        let _ = std::fs::remove_file(&ready);
        let args = vec![
            "ipvs-ops".to_string(),
            "--family-id".into(),
            family_id.to_string(),
            "--ready-file".into(),
            ready.to_string_lossy().into_owned(),
        ];
        let tool = Tool::start(lab, host, &args, host)?;
        let watch = IpvsOpsWatch {
            host: host.to_string(),
            tool,
        };
        let start = Instant::now();
        while !ready.exists() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = watch.stop(lab);
                return Err(LabError::Timeout {
                    what: format!("labnet ipvs-ops to start in {host}"),
                    secs: 30,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&ready);
        Ok(watch)
    }

    /// Stops the watch and removes the device; every change seen, as
    /// (CLOCK_MONOTONIC ns, IPVS command name).
    pub fn stop(self, lab: &Lab) -> Vec<(u64, String)> {
        let (_, lines) = self.tool.stop();
        let _ = lab.exec(&self.host, &["ip", "link", "del", NLMON]);
        events(&lines, "op")
            .into_iter()
            .map(|(t, rest)| (t, rest.join(" ")))
            .collect()
    }
}

/// A number from the environment, or `default` when unset or not a number
/// (benchmark settings).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_command_name() {
        // /proc/PID/stat of a process named "a) b" (a name may hold both).
        let stat = "4242 (a) b) S 1 4242 4242 0 -1 4194560 1205 0 0 0 317 45 0 0 20 0 9 0 1234 1000 100 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(362));
        assert_eq!(cpu_ticks("4242 (x"), None);
    }

    #[test]
    fn status_lines_in_kib() {
        let status = "Name:\tdirector\nVmHWM:\t   41236 kB\nVmRSS:\t   30412 kB\nThreads:\t9\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(41236));
        assert_eq!(status_kib(status, "VmRSS"), Some(30412));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_value(status, "Threads"), Some(9));
    }

    #[test]
    fn cpu_percent_is_of_one_cpu() {
        let a = ProcessSample {
            cpu_ticks: 100,
            rss_kib: 0,
            peak_rss_kib: 0,
            rss_anon_kib: 0,
            rss_file_kib: 0,
            threads: 1,
        };
        let b = ProcessSample {
            cpu_ticks: 100 + clock_ticks_per_second(),
            ..a
        };
        let p = cpu_percent(&a, &b, Duration::from_secs(50));
        assert!((p - 2.0).abs() < 1e-9, "{p}");
    }

    /// `/proc/net/ip_vs` (Debian's kernel 6.1) after
    /// `ipvsadm -A -t 10.10.0.200:80 -s rr`,
    /// `ipvsadm -a -t 10.10.0.200:80 -r 10.10.0.21:30080 -m`,
    /// `ipvsadm -a -t 10.10.0.200:80 -r 10.10.0.22:30080 -m -w 2` and
    /// `ipvsadm -A -u 10.10.0.201:53 -s wlc -p 300` (the timeout in jiffies).
    const IP_VS: &str = "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
UDP  0A0A00C9:0035 wlc  persistent 75000 FFFFFFFF
TCP  0A0A00C8:0050 rr  
  -> 0A0A0016:7580      Masq    2      0          0         
  -> 0A0A0015:7580      Masq    1      0          0         
";

    #[test]
    fn ipvs_tables_compare_settings_not_counters() {
        let t = IpvsTable::parse(IP_VS);
        assert_eq!((t.services(), t.destinations()), (2, 2));
        let busy = IP_VS.replace("Masq    1      0          0", "Masq    1      3          7");
        assert_eq!(IpvsTable::parse(&busy), t, "counters do not matter");
        let reweighted = IP_VS.replace("Masq    2", "Masq    3");
        assert_ne!(IpvsTable::parse(&reweighted), t, "a weight does");
        let persistent = IP_VS.replace("persistent 75000", "persistent 90000");
        assert_ne!(IpvsTable::parse(&persistent), t, "so do the flags");
    }

    #[test]
    fn one_service_and_its_destinations() {
        let web = ip_vs_hex("10.10.0.200:80".parse().unwrap());
        assert_eq!(web, "0A0A00C8:0050");
        assert_eq!(
            ip_vs_destinations(IP_VS, "TCP", &web),
            Some(vec![
                ("0A0A0016:7580".into(), "Masq".into(), 2),
                ("0A0A0015:7580".into(), "Masq".into(), 1),
            ])
        );
        assert_eq!(
            ip_vs_destinations(IP_VS, "UDP", "0A0A00C9:0035"),
            Some(vec![])
        );
        assert_eq!(ip_vs_destinations(IP_VS, "UDP", &web), None);
    }

    #[test]
    fn prometheus_counters_are_summed_over_matching_labels() {
        let text = "# TYPE director_reconcile_operations_total counter
director_reconcile_operations_total{reconciler=\"ipvs\",op=\"add_dest\"} 40000
director_reconcile_operations_total{reconciler=\"ipvs\",op=\"edit_dest\"} 1
director_reconcile_operations_total{reconciler=\"routes\",op=\"add\"} 40
director_reconcile_operations_totalx 5
director_leader 1
";
        let ipvs = [("reconciler", "ipvs")];
        assert_eq!(
            prometheus_sum(text, "director_reconcile_operations_total", &ipvs),
            Some(40001.0)
        );
        assert_eq!(
            prometheus_sum(text, "director_reconcile_operations_total", &[]),
            Some(40041.0)
        );
        assert_eq!(prometheus_sum(text, "director_leader", &[]), Some(1.0));
        assert_eq!(prometheus_sum(text, "director_ipvs_ops", &ipvs), None);
    }

    #[test]
    fn the_family_id_is_read_from_genl() {
        // `genl ctrl get name IPVS` with ip_vs loaded.
        let text = "\nName: IPVS\n\tID: 0x1c  Version: 0x1  header size: 0  max attribs: 6 \n\n\tcommands supported: \n";
        assert_eq!(parse_family_id(text), Some(0x1c));
        assert_eq!(parse_family_id("Name: IPVS\n"), None);
    }
}
