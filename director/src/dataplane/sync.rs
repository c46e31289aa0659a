//! The connection-sync reconciler: the kernel's IPVS sync daemons
//! (`ipvsadm --start-daemon`), a master and a backup on every data
//! director. The master multicasts the connections this director forwards
//! (only the VIPs' owner has any); the backup learns the other directors'
//! into this director's IPVS connection table. When a VIP moves, its new
//! owner already knows the open connections and forwards their next
//! packets to the same backends (docs/forwarding.md says which modes keep
//! a connection through a move).
//!
//! The daemons are the kernel's: they keep running when director stops
//! (a restart picks them up as they are), so a drain or an upgrade never
//! interrupts the sync.

use std::net::IpAddr;
use std::sync::Arc;

use ipvs_sys::{IpvsHandle, SyncDaemon, SyncState};

use super::driver::{Desired, OpError, Reconciler};
use crate::config::{ConfigCell, SyncDaemons};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOp {
    /// Stop the daemon of this role.
    Stop(SyncState),
    /// Start this daemon.
    Start(SyncDaemon),
}

/// The daemons as compared: what director sets of each (the kernel reports
/// more), master first.
pub type Daemons = Vec<SyncDaemon>;

/// The daemons `sync` asks for on `interface` (the director's own unless
/// `sync.interface` names another).
pub fn desired(sync: &SyncDaemons, interface: &str) -> Daemons {
    if !sync.enabled {
        return Vec::new();
    }
    let interface = sync.interface.clone().unwrap_or_else(|| interface.into());
    [SyncState::Master, SyncState::Backup]
        .into_iter()
        .map(|state| SyncDaemon {
            state,
            interface: interface.clone(),
            sync_id: u32::from(sync.sync_id),
            max_len: None,
            group: Some(sync.group),
            port: Some(sync.port),
            ttl: Some(sync.ttl),
        })
        .collect()
}

/// What of a daemon the plan compares: role, interface, ID, group, port,
/// TTL (an older kernel that reports no group, port or TTL is taken to run
/// the defaults).
fn key(d: &SyncDaemon) -> (u32, &str, u32, Option<IpAddr>, Option<u16>, Option<u8>) {
    let defaults = SyncDaemons::default();
    (
        d.state.number(),
        &d.interface,
        d.sync_id,
        Some(d.group.unwrap_or(defaults.group)),
        Some(d.port.unwrap_or(defaults.port)),
        Some(d.ttl.unwrap_or(defaults.ttl)),
    )
}

/// The changes that make `observed` run as `desired`: a daemon that
/// differs is stopped and started again (the kernel cannot edit one).
pub fn plan(desired: &Daemons, observed: &Daemons) -> Vec<SyncOp> {
    let mut ops = Vec::new();
    for state in [SyncState::Master, SyncState::Backup] {
        let want = desired.iter().find(|d| d.state == state);
        let have = observed.iter().find(|d| d.state == state);
        match (want, have) {
            (Some(w), Some(h)) if key(w) == key(h) => {}
            (Some(w), Some(_)) => {
                ops.push(SyncOp::Stop(state));
                ops.push(SyncOp::Start(w.clone()));
            }
            (Some(w), None) => ops.push(SyncOp::Start(w.clone())),
            (None, Some(_)) => ops.push(SyncOp::Stop(state)),
            (None, None) => {}
        }
    }
    ops
}

/// The sync reconciler.
#[derive(Debug)]
pub struct Sync {
    config: Arc<ConfigCell>,
    handle: IpvsHandle,
}

impl Sync {
    /// A reconciler running the daemons through `handle`.
    pub fn new(config: Arc<ConfigCell>, handle: IpvsHandle) -> Self {
        Sync { config, handle }
    }
}

fn role(state: SyncState) -> &'static str {
    match state {
        SyncState::Master => "master",
        SyncState::Backup => "backup",
    }
}

impl Reconciler for Sync {
    type State = Daemons;
    type Op = SyncOp;

    fn name(&self) -> &'static str {
        "sync"
    }

    fn desired(&mut self) -> Desired<Daemons> {
        let config = self.config.get();
        Desired::steady(desired(&config.sync, &config.interface))
    }

    fn plan(&self, desired: &Daemons, observed: &Daemons) -> Vec<SyncOp> {
        plan(desired, observed)
    }

    async fn observe(&mut self) -> Result<Daemons, OpError> {
        let mut d = self
            .handle
            .sync_daemons()
            .await
            .map_err(|e| OpError::new("listing", "the IPVS sync daemons", e))?;
        d.sort_by_key(|x| x.state.number());
        Ok(d)
    }

    async fn apply(&mut self, ops: Vec<SyncOp>) -> Result<(), OpError> {
        for op in ops {
            match &op {
                SyncOp::Stop(state) => self.handle.stop_sync_daemon(*state).await.map_err(|e| {
                    OpError::new("stopping", format!("the {} sync daemon", role(*state)), e)
                })?,
                SyncOp::Start(d) => {
                    self.handle.start_sync_daemon(d).await.map_err(|e| {
                        OpError::new(
                            "starting",
                            format!(
                                "the {} sync daemon on {} (sync ID {})",
                                role(d.state),
                                d.interface,
                                d.sync_id
                            ),
                            e,
                        )
                    })?;
                    tracing::info!(
                        role = role(d.state),
                        interface = %d.interface,
                        sync_id = d.sync_id,
                        "IPVS connection sync running"
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_daemons_run_and_a_change_restarts_only_the_changed_one() {
        let cfg = SyncDaemons::default();
        let want = desired(&cfg, "eth0");
        assert_eq!(want.len(), 2);
        assert_eq!(want[0].state, SyncState::Master);
        assert_eq!(want[1].interface, "eth0");
        // Nothing running: both start.
        let ops = plan(&want, &Vec::new());
        assert_eq!(ops.len(), 2, "{ops:?}");
        // Running as wanted, as an older kernel reports them (no group):
        // nothing.
        let mut kernel = want.clone();
        kernel[1].group = None;
        kernel[1].ttl = None;
        assert_eq!(plan(&want, &kernel), Vec::new());
        // Another sync ID on the backup: it alone restarts.
        kernel[1].sync_id = 7;
        let ops = plan(&want, &kernel);
        assert_eq!(
            ops,
            vec![
                SyncOp::Stop(SyncState::Backup),
                SyncOp::Start(want[1].clone())
            ]
        );
        // Turned off: both stop.
        let off = SyncDaemons {
            enabled: false,
            ..cfg
        };
        assert_eq!(
            plan(&desired(&off, "eth0"), &want),
            vec![
                SyncOp::Stop(SyncState::Master),
                SyncOp::Stop(SyncState::Backup)
            ]
        );
        // Its own interface.
        let other = SyncDaemons {
            interface: Some("sync0".into()),
            ..SyncDaemons::default()
        };
        assert!(desired(&other, "eth0")
            .iter()
            .all(|d| d.interface == "sync0"));
    }
}
