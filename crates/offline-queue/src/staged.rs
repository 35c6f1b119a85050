//! Mailbox entries kept in memory while only the journal holds them.
//!
//! Most entries (messages, receipts) are deleted seconds after they are
//! stored. With the storage journal, a journaled batch stores its new
//! entries here instead of in redb's `mbox` table, and deleting an entry
//! that is here takes it out again: neither touches a B-tree. A checkpoint
//! writes the entries still here into `mbox` ([`storage::Stage::flush`]).
//! Dedupe keys, delivered marks, accounts and id marks still go to redb.
//!
//! [`crate::store::RedbMailbox`] and the replica's export read this and
//! redb together (see [`merge_sorted`]), under the store's view lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError, RwLock};

use proto::MessageId;
use router::FragmentId;
use storage::redb::WriteTransaction;

use crate::store::MBOX_TABLE;

/// `(fragment, owner, entry id)`, ordered as the `mbox` table orders them.
pub(crate) type EntryKey = (FragmentId, String, MessageId);

/// The highest owner string (for ranges to the end of a fragment).
const LAST_OWNER: &str = "\u{10FFFF}";

/// A node's staged mailbox entries (one per store, see [`storage::Store::stage`]).
#[derive(Default)]
pub struct MailboxStage {
    /// Durable in the journal, not yet in redb.
    published: RwLock<BTreeMap<EntryKey, Vec<u8>>>,
    /// Changes of the batch being committed.
    pending: Mutex<Pending>,
}

/// Applied to the published entries in this order: removes, then puts.
#[derive(Default)]
struct Pending {
    puts: BTreeMap<EntryKey, Vec<u8>>,
    removes: BTreeSet<EntryKey>,
}

impl MailboxStage {
    /// Stages a new entry (the writer, applying a journaled batch).
    pub(crate) fn put(&self, key: EntryKey, body: Vec<u8>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.puts.insert(key, body);
    }

    /// Takes a staged entry out (the writer, applying a deletion): its
    /// body, or `None` if it is not staged (then it is in redb, if
    /// anywhere).
    pub(crate) fn take(&self, key: &EntryKey) -> Option<Vec<u8>> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let put = pending.puts.remove(key);
        // Published too if it was put again in this batch: both go.
        let published = if pending.removes.contains(key) {
            None
        } else {
            self.published
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .cloned()
        };
        if published.is_some() {
            pending.removes.insert(key.clone());
        }
        put.or(published)
    }

    /// A published entry's body.
    pub(crate) fn get(&self, key: &EntryKey) -> Option<Vec<u8>> {
        self.published
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Published entries of `owner` in fragment `f` with ids from `from` on.
    pub(crate) fn owner_entries(
        &self,
        f: FragmentId,
        owner: &str,
        from: MessageId,
    ) -> Vec<(MessageId, Vec<u8>)> {
        let published = self
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let start = (f, owner.to_owned(), from);
        let end = (f, owner.to_owned(), MessageId::MAX);
        published
            .range(start..=end)
            .map(|((_, _, id), body)| (*id, body.clone()))
            .collect()
    }

    /// Published entries of fragment `f` from `(owner, id)` on (all of
    /// them without a start).
    pub(crate) fn fragment_entries(
        &self,
        f: FragmentId,
        from: Option<(&str, MessageId)>,
    ) -> Vec<((String, MessageId), Vec<u8>)> {
        let published = self
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let start = from.map_or((f, String::new(), 0), |(owner, id)| {
            (f, owner.to_owned(), id)
        });
        let end = (f, LAST_OWNER.to_owned(), MessageId::MAX);
        published
            .range(start..=end)
            .map(|((_, owner, id), body)| ((owner.clone(), *id), body.clone()))
            .collect()
    }

    /// Entries staged now (for metrics).
    pub fn len(&self) -> usize {
        self.published
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl storage::Stage for MailboxStage {
    fn is_empty(&self) -> bool {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.puts.is_empty() && pending.removes.is_empty() && MailboxStage::is_empty(self)
    }

    fn flush(&self, txn: &WriteTransaction) -> storage::Result<()> {
        let published = self
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if published.is_empty() {
            return Ok(());
        }
        let mut mbox = txn.open_table(MBOX_TABLE)?;
        for ((f, owner, id), body) in published.iter() {
            mbox.insert((*f, owner.as_str(), *id), body.as_slice())?;
        }
        Ok(())
    }

    fn flushed(&self) {
        self.published
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn publish(&self) {
        let Pending { puts, removes } =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let mut published = self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &removes {
            published.remove(key);
        }
        published.extend(puts);
    }

    fn discard(&self) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Pending::default();
    }
}

/// Visits, in key order, the union of `staged` (sorted) and `stored` (a
/// redb range in the same order) until `visit` says stop. A key in both
/// (staged, and written by a checkpoint that has not emptied the stage
/// yet) is visited once, with the staged value.
pub(crate) fn merge_sorted<K: Ord, V, E>(
    staged: Vec<(K, Vec<u8>)>,
    stored: impl Iterator<Item = Result<(K, V), E>>,
    bytes: impl for<'a> Fn(&'a V) -> &'a [u8],
    mut visit: impl FnMut(&K, &[u8]) -> bool,
) -> Result<(), E> {
    let mut staged = staged.into_iter().peekable();
    for item in stored {
        let (key, value) = item?;
        // Staged keys up to this one; sorted and unique, so only the last
        // of them can equal it.
        let mut duplicate = false;
        while let Some((first, body)) = staged.next_if(|(k, _)| *k <= key) {
            duplicate = first == key;
            if !visit(&first, &body) {
                return Ok(());
            }
        }
        if !duplicate && !visit(&key, bytes(&value)) {
            return Ok(());
        }
    }
    for (key, body) in staged {
        if !visit(&key, &body) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
