//! Durable Raft storage in one redb file per director: the log, the vote, the
//! committed id, the applied state machine and the current snapshot.
//!
//! Every write is a redb transaction committed with redb's default durability
//! (fsync before the commit returns), so what openraft was told is persisted
//! survives a crash: a restart recovers the term, the vote, the log and the
//! applied state.

#![expect(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError by value"
)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::{apply, ClusterState, NodeId, Response};
use crate::TypeConfig;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("machine");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_APPLIED: &str = "applied";
const KEY_SNAPSHOT: &str = "snapshot";
/// redb's page cache.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

type SError = StorageError<NodeId>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// Opens (or creates) the database of one director.
pub fn open(path: &Path) -> Result<Arc<Database>, SError> {
    // redb caches up to 1 GiB of pages by default; the log and the state
    // are read back rarely (a lagging follower, a restart), so a small
    // cache keeps a director's memory to what it uses.
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| StorageIOError::write(any(format!("opening {}: {e}", path.display()))))?;
    // Create the tables so that readers never meet a missing one.
    let txn = db
        .begin_write()
        .map_err(|e| StorageIOError::write(any(e)))?;
    {
        txn.open_table(LOGS)
            .map_err(|e| StorageIOError::write(any(e)))?;
        txn.open_table(META)
            .map_err(|e| StorageIOError::write(any(e)))?;
        txn.open_table(MACHINE)
            .map_err(|e| StorageIOError::write(any(e)))?;
    }
    txn.commit().map_err(|e| StorageIOError::write(any(e)))?;
    Ok(Arc::new(db))
}

fn get<T: for<'de> Deserialize<'de>>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let t = txn.open_table(table).map_err(|e| e.to_string())?;
    match t.get(key).map_err(|e| e.to_string())? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| format!("{key}: {e}")),
        None => Ok(None),
    }
}

fn put<T: Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut t = txn.open_table(table).map_err(|e| e.to_string())?;
        t.insert(key, bytes.as_slice()).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

/// The Raft log, vote and committed id.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// The log store in `db`.
    pub fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn range(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry<TypeConfig>>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = txn.open_table(LOGS).map_err(|e| e.to_string())?;
        let iter = match end {
            Bound::Included(e) => t.range(start..=e),
            Bound::Excluded(e) => t.range(start..e),
            Bound::Unbounded => t.range(start..),
        }
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(|e| e.to_string())?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn delete_range(&self, from: Bound<u64>, to: Bound<u64>) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            t.retain_in((from, to), |_, _| false)
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        self.range(start, range.end_bound().cloned())
            .map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let last_purged: Option<LogId<NodeId>> =
            get(&self.db, META, KEY_LAST_PURGED).map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last = {
            let txn = self
                .db
                .begin_read()
                .map_err(|e| StorageIOError::read_logs(any(e)))?;
            let t = txn
                .open_table(LOGS)
                .map_err(|e| StorageIOError::read_logs(any(e)))?;
            let last = t.last().map_err(|e| StorageIOError::read_logs(any(e)))?;
            match last {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = serde_json::from_slice(v.value())
                        .map_err(|e| StorageIOError::read_logs(any(e)))?;
                    Some(e.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        put(&self.db, META, KEY_VOTE, vote).map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        get(&self.db, META, KEY_VOTE).map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        put(&self.db, META, KEY_COMMITTED, &committed)
            .map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        get::<Option<LogId<NodeId>>>(&self.db, META, KEY_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(any(e)).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| -> Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut t = txn.open_table(LOGS).map_err(|e| e.to_string())?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
                    t.insert(entry.log_id.index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(StorageIOError::write_logs(any(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        self.delete_range(Bound::Included(log_id.index), Bound::Unbounded)
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        put(&self.db, META, KEY_LAST_PURGED, &log_id)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.delete_range(Bound::Unbounded, Bound::Included(log_id.index))
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

/// What the state machine has applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The last applied log id.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last applied membership.
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The cluster state.
    pub state: ClusterState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The applied state is written to disk at most this often. Between two
/// writes the log holds what was applied (openraft re-applies the committed
/// entries after the stored state at start), so a crash loses nothing; at
/// ten thousand services a write is megabytes, and every commit writing it
/// would cost more than the commit itself.
pub const PERSIST_EVERY: Duration = Duration::from_millis(1000);

/// When the applied state was last written, and whether a write is due.
#[derive(Debug, Default)]
struct Persisted {
    last: Option<std::time::Instant>,
    /// A delayed write is scheduled.
    scheduled: bool,
}

/// The replicated state machine, written to disk at most every
/// [`PERSIST_EVERY`] (and at shutdown and with every snapshot).
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    applied: Arc<Mutex<Applied>>,
    changes: watch::Sender<Arc<ClusterState>>,
    persisted: Arc<Mutex<Persisted>>,
    /// Held while a write is under way; the last log id written.
    written: Arc<Mutex<Option<LogId<NodeId>>>>,
}

impl StateMachineStore {
    /// The state machine in `db`, recovered from its last written state or
    /// its snapshot, whichever is newer (the log after it is re-applied).
    pub fn new(db: Arc<Database>) -> Result<Self, SError> {
        let mut applied: Applied = get(&db, MACHINE, KEY_APPLIED)
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?
            .unwrap_or_default();
        let snapshot: Option<StoredSnapshot> = get(&db, MACHINE, KEY_SNAPSHOT)
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
        if let Some(s) = snapshot {
            if s.meta.last_log_id > applied.last_applied {
                applied = serde_json::from_slice(&s.data)
                    .map_err(|e| StorageIOError::read_snapshot(Some(s.meta.signature()), any(e)))?;
            }
        }
        let (changes, _) = watch::channel(Arc::new(applied.state.clone()));
        Ok(StateMachineStore {
            db,
            applied: Arc::new(Mutex::new(applied)),
            changes,
            persisted: Arc::default(),
            written: Arc::default(),
        })
    }

    /// Writes the applied state now. The state machine is locked only to
    /// copy it (each service is shared, not copied): encoding megabytes and
    /// writing them never holds up the next apply. A copy older than what
    /// another write stored meanwhile is not written.
    pub fn flush(&self) -> Result<(), SError> {
        let copy = self.lock()?.clone();
        let mut written = self.written.lock().map_err(|_| {
            StorageIOError::write_state_machine(any("state machine write lock poisoned"))
        })?;
        if written.is_some() && copy.last_applied < *written {
            return Ok(());
        }
        put(&self.db, MACHINE, KEY_APPLIED, &copy)
            .map_err(|e| StorageIOError::write_state_machine(any(e)))?;
        *written = copy.last_applied;
        if let Ok(mut p) = self.persisted.lock() {
            p.last = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Writes the applied state now if the last write is old enough, or
    /// schedules one for when it is.
    fn persist_soon(&self) -> Result<(), SError> {
        let wait = {
            let Ok(mut p) = self.persisted.lock() else {
                return self.flush();
            };
            let due = p.last.map_or(Duration::ZERO, |t| {
                PERSIST_EVERY.saturating_sub(t.elapsed())
            });
            if due.is_zero() {
                None
            } else if p.scheduled {
                return Ok(());
            } else {
                p.scheduled = true;
                Some(due)
            }
        };
        match wait {
            // Off the runtime that applies: the write is megabytes at
            // ten thousand services.
            None => {
                let store = self.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.flush() {
                        tracing::warn!(error = %e, "writing the applied state failed; the log keeps it");
                    }
                });
                Ok(())
            }
            Some(due) => {
                // Weak: a store dropped meanwhile (shutdown) has flushed
                // already, and its database must close.
                let (db, applied, persisted) = (
                    Arc::downgrade(&self.db),
                    Arc::downgrade(&self.applied),
                    Arc::downgrade(&self.persisted),
                );
                let changes = self.changes.clone();
                let written = self.written.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(due).await;
                    let (Some(db), Some(applied), Some(persisted)) =
                        (db.upgrade(), applied.upgrade(), persisted.upgrade())
                    else {
                        return;
                    };
                    let store = StateMachineStore {
                        db,
                        applied,
                        changes,
                        persisted,
                        written,
                    };
                    if let Ok(mut p) = store.persisted.lock() {
                        p.scheduled = false;
                    }
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.flush() {
                            tracing::warn!(error = %e, "writing the applied state failed; the log keeps it");
                        }
                    })
                    .await;
                });
                Ok(())
            }
        }
    }

    /// The committed state as applied here.
    pub fn state(&self) -> Arc<ClusterState> {
        self.changes.borrow().clone()
    }

    /// A receiver that sees every newly applied state.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.changes.subscribe()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Applied>, SError> {
        self.applied.lock().map_err(|_| {
            StorageIOError::read_state_machine(any("state machine lock poisoned")).into()
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let (data, meta) = {
            let a = self.lock()?;
            let data =
                serde_json::to_vec(&*a).map_err(|e| StorageIOError::read_state_machine(any(e)))?;
            let id = match a.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
                None => format!("empty-{}", data.len()),
            };
            let meta = SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
                snapshot_id: id,
            };
            (data, meta)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        put(&self.db, MACHINE, KEY_SNAPSHOT, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SError,
    > {
        let a = self.lock()?;
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (responses, state) = {
            let mut a = self.lock()?;
            let mut responses = Vec::new();
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::Ok),
                    EntryPayload::Normal(cmd) => responses.push(apply(&mut a.state, cmd)),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        responses.push(Response::Ok);
                    }
                }
            }
            (responses, a.state.clone())
        };
        self.changes.send_replace(Arc::new(state));
        self.persist_soon()?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let data = snapshot.into_inner();
        let applied: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        put(&self.db, MACHINE, KEY_APPLIED, &applied)
            .map_err(|e| StorageIOError::write_state_machine(any(e)))?;
        put(
            &self.db,
            MACHINE,
            KEY_SNAPSHOT,
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        let state = applied.state.clone();
        *self.lock()? = applied;
        self.changes.send_replace(Arc::new(state));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let stored: Option<StoredSnapshot> = get(&self.db, MACHINE, KEY_SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
