//! openraft's storage conformance suite against the redb store: the log,
//! vote, committed id, state machine and snapshots behave as openraft needs.

use consensus::store::{self, LogStore, StateMachineStore};
use consensus::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| {
            openraft::StorageIOError::write(openraft::AnyError::error(e.to_string()))
        })?;
        let db = store::open(&dir.path().join("raft.redb"))?;
        Ok((dir, LogStore::new(db.clone()), StateMachineStore::new(db)?))
    }
}

#[test]
fn the_redb_store_passes_openrafts_conformance_suite() {
    if let Err(e) = Suite::test_all(RedbBuilder) {
        panic!("conformance suite: {e}");
    }
}
