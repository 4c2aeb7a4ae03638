//! The store of a native layer that still serves express sessions until they are regenerated.

use std::sync::Arc;

use async_trait::async_trait;

use crate::id::StoreKey;
use crate::record::{Record, SaveMode, Timestamp};
use crate::store::{IndexEntry, IndexMember, Store, StoreError};

/// Sends calls on express sessions (whose keys are their ids, see
/// [`StoreKey::unhashed`]) to the express store, and every other call to the native one.
pub(crate) struct UpgradeStore {
    native: Arc<dyn Store>,
    express: Arc<dyn Store>,
}

impl UpgradeStore {
    pub(crate) fn new(native: Arc<dyn Store>, express: Arc<dyn Store>) -> Self {
        Self { native, express }
    }

    fn store_of(&self, key: &StoreKey) -> &dyn Store {
        if key.unhashed_id().is_some() {
            &*self.express
        } else {
            &*self.native
        }
    }
}

#[async_trait]
impl Store for UpgradeStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.store_of(key).load(key).await
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<bool, StoreError> {
        self.store_of(key).create(key, record).await
    }

    async fn save(
        &self,
        key: &StoreKey,
        record: &Record,
        mode: SaveMode,
    ) -> Result<bool, StoreError> {
        self.store_of(key).save(key, record, mode).await
    }

    async fn touch(&self, key: &StoreKey, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.store_of(key).touch(key, expires_at).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.store_of(key).delete(key).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(self.native.purge_expired().await? + self.express.purge_expired().await?)
    }

    // Indexes live in the native store, for sessions of both kinds: a member is loaded
    // through `load`, which finds it in its own store.
    fn supports_index(&self) -> bool {
        self.native.supports_index()
    }

    async fn index_add(
        &self,
        entry: &IndexEntry,
        key: &StoreKey,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.native.index_add(entry, key, until).await
    }

    async fn index_remove(&self, entry: &IndexEntry, key: &StoreKey) -> Result<(), StoreError> {
        self.native.index_remove(entry, key).await
    }

    async fn index_members(&self, entry: &IndexEntry) -> Result<Vec<IndexMember>, StoreError> {
        self.native.index_members(entry).await
    }
}
