//! `director ipvs show|apply`: the kernel's IPVS table, read and written
//! declaratively.

pub mod file;
pub mod plan;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use ipvs_sys::{
    Change, Destination, IpvsError, IpvsHandle, Netmask, Service, ServiceFlags, ServiceKey,
};

use plan::Entry;

/// Exit code of a bad file or bad arguments (EX_USAGE... EX_DATAERR family).
pub const EXIT_BAD_INPUT: i32 = 64;
/// Exit code of `apply --dry-run` when the kernel differs from the file.
pub const EXIT_DRIFT: i32 = 2;

/// Output formats of `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Like `ipvsadm -Ln`.
    Table,
    /// JSON, the apply schema.
    Json,
    /// YAML, the apply schema.
    Yaml,
}

/// Connects to IPVS, loading the module once if the kernel has it as one.
pub async fn connect() -> Result<IpvsHandle> {
    match IpvsHandle::connect().await {
        Err(IpvsError::NotAvailable) => {
            let loaded = std::process::Command::new("modprobe")
                .args(["-q", "ip_vs"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !loaded {
                return Err(IpvsError::NotAvailable.into());
            }
            Ok(IpvsHandle::connect().await?)
        }
        other => Ok(other?),
    }
}

/// Sorts a table as `ipvsadm -Ln` does: services by fwmark, family,
/// protocol, address, port; destinations by family, address, port.
pub fn sort_like_ipvsadm(table: &mut [Entry]) {
    fn service_order(k: &ServiceKey) -> (u32, u16, u16, Vec<u8>, u16) {
        match k {
            ServiceKey::Addr {
                protocol,
                addr,
                port,
            } => (
                0,
                ipvs_sys::Family::of(addr).af(),
                protocol.number(),
                ip_bytes(addr),
                *port,
            ),
            ServiceKey::Fwmark { family, mark } => (*mark, family.af(), 0, Vec::new(), 0),
        }
    }
    table.sort_by_key(|e| service_order(&e.0.key));
    for (_, dests) in table.iter_mut() {
        dests.sort_by_key(|d| {
            (
                ipvs_sys::Family::of(&d.addr).af(),
                ip_bytes(&d.addr),
                d.port,
            )
        });
    }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `director ipvs show`.
pub async fn show(format: Format, stats: bool) -> Result<String> {
    let ipvs = connect().await?;
    let mut table = ipvs.table().await?;
    sort_like_ipvsadm(&mut table);
    Ok(match format {
        Format::Table => {
            let info = ipvs.info().await?;
            render_table(&info.to_string(), &table, stats)
        }
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&file::to_doc(&table, stats))?;
            s.push('\n');
            s
        }
        Format::Yaml => {
            serde_saphyr::to_string(&file::to_doc(&table, stats)).context("writing YAML")?
        }
    })
}

fn endpoint(addr: &IpAddr, port: u16) -> String {
    let mut s = String::new();
    write_endpoint(&mut s, addr, port);
    s
}

/// `ADDR:PORT` (`[ADDR]:PORT` for IPv6) at the end of `out`.
fn write_endpoint(out: &mut String, addr: &IpAddr, port: u16) {
    let _ = match addr {
        IpAddr::V4(a) => write!(out, "{a}:{port}"),
        IpAddr::V6(a) => write!(out, "[{a}]:{port}"),
    };
}

fn service_line(s: &Service) -> String {
    let mut line = match s.key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => format!(
            "{:<4} {} {}",
            protocol.to_string(),
            endpoint(&addr, port),
            s.scheduler
        ),
        ServiceKey::Fwmark { family, mark } => match family {
            ipvs_sys::Family::V4 => format!("FWM  {mark} {}", s.scheduler),
            ipvs_sys::Family::V6 => format!("FWM  {mark} IPv6 {}", s.scheduler),
        },
    };
    let (f1, f2) = match s.scheduler.as_str() {
        "sh" => ("sh-fallback", "sh-port"),
        "mh" => ("mh-fallback", "mh-port"),
        _ => ("flag-1", "flag-2"),
    };
    let named: Vec<&str> = [
        (ServiceFlags::SCHED1, f1),
        (ServiceFlags::SCHED2, f2),
        (ServiceFlags::SCHED3, "flag-3"),
    ]
    .iter()
    .filter(|(f, _)| s.flags.contains(*f))
    .map(|(_, n)| *n)
    .collect();
    if !named.is_empty() {
        let _ = write!(line, " ({})", named.join(","));
    }
    if s.flags.contains(ServiceFlags::PERSISTENT) {
        let _ = write!(line, " persistent {}", s.timeout);
        if s.netmask != Netmask::host(s.key.family()) {
            let _ = write!(line, " mask {}", s.netmask);
        }
        if let Some(pe) = &s.persistence_engine {
            let _ = write!(line, " pe {pe}");
        }
    }
    if s.flags.contains(ServiceFlags::ONE_PACKET) {
        line.push_str(" ops");
    }
    line
}

/// The table as `ipvsadm -Ln` (or `-Ln --stats`) prints it.
pub fn render_table(info: &str, table: &[Entry], stats: bool) -> String {
    let lines = table.len() + table.iter().map(|(_, d)| d.len()).sum::<usize>();
    let mut out = String::with_capacity(256 + lines * if stats { 80 } else { 64 });
    out.push_str(info);
    out.push('\n');
    // Reused for every address, rather than one allocation per line.
    let mut ep = String::with_capacity(64);
    if stats {
        out.push_str(
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n",
        );
        out.push_str("  -> RemoteAddress:Port\n");
    } else {
        out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
        out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    }
    for (s, dests) in table {
        if stats {
            let st = s.stats.as_deref().copied().unwrap_or_default();
            let key = match s.key {
                ServiceKey::Addr {
                    protocol,
                    addr,
                    port,
                } => {
                    format!("{:<4} {}", protocol.to_string(), endpoint(&addr, port))
                }
                ServiceKey::Fwmark { mark, .. } => format!("FWM  {mark}"),
            };
            let _ = writeln!(
                out,
                "{key:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
                st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes
            );
        } else {
            let _ = writeln!(out, "{}", service_line(s));
        }
        for d in dests {
            ep.clear();
            write_endpoint(&mut ep, &d.addr, d.port);
            if stats {
                let st = d.stats.as_deref().copied().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  -> {ep:<29} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes
                );
            } else {
                let c = d.counters.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  -> {ep:<28} {:<7} {:<6} {:<10} {}",
                    d.forward.ipvsadm_name(),
                    d.weight,
                    c.active,
                    c.inactive
                );
            }
        }
    }
    out
}

/// One change, for `--dry-run` and for reports.
pub fn describe(change: &Change, kernel: &[Entry]) -> String {
    let dest_text = |d: &Destination| {
        format!(
            "{} {} weight {}{}",
            endpoint(&d.addr, d.port),
            d.forward.ipvsadm_name(),
            d.weight,
            if d.upper_threshold + d.lower_threshold > 0 {
                format!(" thresholds {}/{}", d.upper_threshold, d.lower_threshold)
            } else {
                String::new()
            }
        )
    };
    match change {
        Change::AddService(s) => format!("add service {}", service_line(s)),
        Change::EditService(s) => {
            let old = kernel
                .iter()
                .find(|e| e.0.key == s.key)
                .map(|e| service_line(&e.0))
                .unwrap_or_default();
            format!("edit service {old} -> {}", service_line(s))
        }
        Change::DelService(k) => format!("delete service {k}"),
        Change::AddDest(k, d) => format!("add destination {} to {k}", dest_text(d)),
        Change::EditDest(k, d) => {
            let old = kernel
                .iter()
                .find(|e| e.0.key == *k)
                .and_then(|e| e.1.iter().find(|x| (x.addr, x.port) == (d.addr, d.port)))
                .map(dest_text)
                .unwrap_or_default();
            format!("edit destination of {k}: {old} -> {}", dest_text(d))
        }
        Change::DelDest(k, addr, port) => {
            format!("delete destination {} from {k}", endpoint(addr, *port))
        }
        other => format!("{other:?}"),
    }
}

/// The outcome of `director ipvs apply`.
#[derive(Debug)]
pub struct ApplyOutcome {
    /// Human report.
    pub report: String,
    /// Exit code: 0, 1 (a kernel call failed) or 2 (dry run found drift).
    pub code: i32,
}

/// Reads and validates an apply file; the errors name file, line and field.
pub fn read_file(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file::parse(&text).map_err(|errs| crate::problems::report(path, &errs))
}

/// `director ipvs apply`: plan against the kernel's table, then (unless a dry
/// run) execute the plan.
pub async fn apply(
    desired: &[Entry],
    dry_run: bool,
    prune: bool,
    window: usize,
) -> Result<ApplyOutcome> {
    let ipvs = connect().await?;
    let kernel = ipvs.table().await?;
    let ops = plan::plan(desired, &kernel, prune);
    let mut report = String::new();
    if ops.is_empty() {
        report.push_str("the kernel already matches; nothing to do\n");
        return Ok(ApplyOutcome { report, code: 0 });
    }
    if dry_run {
        let _ = writeln!(report, "{} change(s) would be made:", ops.len());
        for op in &ops {
            let _ = writeln!(report, "  {}", describe(op, &kernel));
        }
        return Ok(ApplyOutcome {
            report,
            code: EXIT_DRIFT,
        });
    }
    let start = Instant::now();
    let results = ipvs.execute(&ops, window).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    let _ = writeln!(
        report,
        "applied {} of {} change(s) in {:.1} ms",
        ops.len() - failed.len(),
        ops.len(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    for f in &failed {
        let _ = writeln!(report, "  failed: {f}");
    }
    Ok(ApplyOutcome {
        report,
        code: if failed.is_empty() { 0 } else { 1 },
    })
}
