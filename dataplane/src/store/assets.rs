//! The `assets` keyspace: the asset registry's records (`crate::assets::record`), written in one
//! fsynced batch per decision, read back whole at start.

use fjall::PersistMode;

use super::{Store, StoreError};
use crate::assets::record::{self, Op, Record};

impl Store {
    /// Writes one decision's records in one batch and fsyncs: when this returns `Ok`, they
    /// survive a crash, and the registry may apply the decision and answer.
    ///
    /// # Errors
    /// [`StoreError::Engine`]; then nothing may be applied or answered.
    pub fn commit_assets(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut writes = self.db.batch();
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    writes.insert(&self.assets, key.as_slice(), value.as_slice())
                }
                Op::Remove(key) => writes.remove(&self.assets, key.as_slice()),
            }
        }
        writes.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Every asset record, in key order (registered assets, live allocations, tombstones).
    ///
    /// # Errors
    /// [`StoreError::Engine`], or [`StoreError::Corrupted`] for a record that does not decode.
    pub fn asset_records(&self) -> Result<Vec<Record>, StoreError> {
        let mut records = Vec::new();
        for item in self.assets.iter() {
            let (key, value) = item.into_inner()?;
            let decoded = record::decode(&key, &value).map_err(|e| StoreError::Corrupted {
                keyspace: "assets",
                reason: e.to_string(),
            })?;
            records.push(decoded);
        }
        Ok(records)
    }
}
