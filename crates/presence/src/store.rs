//! Presence settings in the node's store: one row per user who set any.
//!
//! The settings are node-local, like accounts and tokens: the node a client
//! is connected to stores what that client sets, and reads it back when the
//! user logs in there. Other nodes learn a user's settings from the node the
//! user is online at (see [`crate::remote`]) and keep them in memory only.

use proto::PhoneNumber;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};
use storage::{StorageError, Store};

use crate::error::Result;
use crate::policy::Policy;

/// Phone (E.164) → [`Policy`] (postcard).
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("presence_policies");

/// Reads and writes presence settings through the node's [`Store`].
#[derive(Clone)]
pub struct PolicyStore {
    store: Store,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore").finish_non_exhaustive()
    }
}

fn decode(bytes: &[u8]) -> Result<Policy, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("presence policy: {e}")))
}

impl PolicyStore {
    /// Settings kept in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// `user`'s settings on this node (the defaults if none were stored).
    pub fn load(&self, user: &PhoneNumber) -> Result<Policy> {
        let read = self
            .store
            .db()
            .begin_read()
            .map_err(|e| StorageError::Engine(e.to_string()))?;
        let table = match read.open_table(POLICIES) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Policy::default()),
            Err(e) => return Err(StorageError::Engine(e.to_string()).into()),
        };
        let row = table
            .get(user.as_str())
            .map_err(|e| StorageError::Engine(e.to_string()))?;
        match row {
            Some(bytes) => Ok(decode(bytes.value())?),
            None => Ok(Policy::default()),
        }
    }

    /// Applies `change` to `user`'s settings in one write transaction,
    /// raises their version and returns them once durable. The version is
    /// at least `now_ms`, so that across nodes (each with its own row for
    /// the user) the latest change wins.
    pub async fn update(
        &self,
        user: &PhoneNumber,
        now_ms: u64,
        change: impl FnOnce(&mut Policy) + Send + 'static,
    ) -> Result<Policy> {
        let key = user.as_str().to_owned();
        let policy = self
            .store
            .write(move |txn| {
                let mut table = txn.open_table(POLICIES)?;
                let mut policy = match table.get(key.as_str())? {
                    Some(bytes) => decode(bytes.value())?,
                    None => Policy::default(),
                };
                change(&mut policy);
                policy.version = policy.version.saturating_add(1).max(now_ms);
                let bytes = postcard::to_stdvec(&policy).map_err(|e| {
                    StorageError::Corrupt(format!("cannot encode a presence policy: {e}"))
                })?;
                table.insert(key.as_str(), bytes.as_slice())?;
                Ok(policy)
            })
            .await?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Visibility;
    use storage::StoreOptions;

    #[tokio::test]
    async fn settings_are_read_back_and_versions_grow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        let alice = PhoneNumber::parse("+15550000001").expect("phone");
        let bob = PhoneNumber::parse("+15550000002").expect("phone");
        let store = PolicyStore::new(Store::open(&path, StoreOptions::default()).expect("open"));
        {
            assert_eq!(store.load(&alice).expect("load"), Policy::default());
            let contacts = [bob.clone()].into_iter().collect();
            let first = store
                .update(&alice, 1000, move |p| p.contacts = contacts)
                .await
                .expect("update");
            assert_eq!(first.version, 1000);
            let second = store
                .update(&alice, 10, |p| p.visibility = Visibility::Nobody)
                .await
                .expect("update");
            assert_eq!(second.version, 1001, "a clock going back still raises it");
            assert!(second.contacts.contains(&bob), "a change keeps the rest");
        }
        let loaded = store.load(&alice).expect("load");
        assert_eq!(loaded.visibility, Visibility::Nobody);
        assert_eq!(loaded.version, 1001);
        assert_eq!(store.load(&bob).expect("load"), Policy::default());
    }
}
