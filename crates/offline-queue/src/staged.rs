//! Mailbox rows kept in memory while only the journal holds them.
//!
//! Most messages are delivered seconds after they are stored. With the
//! storage journal, a journaled batch stores its new rows here instead of
//! in redb: mailbox entries (messages, receipts), delivered marks and
//! dedupe keys. Deleting a row that is here takes it out again. Neither
//! touches a B-tree; the first journaled batch after the stage interval
//! (200 ms), a checkpoint or a durable commit writes the rows still here
//! into their tables ([`storage::Stage::flush`]), in key order. Accounts
//! and id marks still go to redb.
//!
//! [`crate::store::RedbMailbox`] and the replica's export read this and
//! redb together (see [`merge_sorted`]), under the store's view lock; the
//! writer's sweeps read its own view of it ([`StagedTable::writer_range`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeBounds;
use std::sync::{Mutex, PoisonError, RwLock};

use proto::MessageId;
use router::FragmentId;
use storage::redb::WriteTransaction;

use crate::store::{DEDUPE_TABLE, MBOX_TABLE};

/// `(fragment, owner, entry id)`, ordered as the `mbox` table orders them
/// (a delivered mark's owner ends in `/`).
pub(crate) type EntryKey = (FragmentId, String, MessageId);

/// `(fragment, recipient, sender, client id)`, as in the `dedupe` table.
pub(crate) type DedupeKey = (FragmentId, String, String, u64);

/// The highest owner string (for ranges to the end of a fragment).
pub(crate) const LAST_OWNER: &str = "\u{10FFFF}";

/// A node's staged mailbox rows (one per store, see [`storage::Store::stage`]).
#[derive(Default)]
pub struct MailboxStage {
    /// Rows of `mbox`: entries and delivered marks.
    pub(crate) entries: StagedTable<EntryKey, Vec<u8>>,
    /// Rows of `dedupe`: `(message id, stored at)`.
    pub(crate) dedupe: StagedTable<DedupeKey, (u64, u64)>,
}

impl MailboxStage {
    /// Rows staged now (for metrics).
    pub fn len(&self) -> usize {
        self.entries.len() + self.dedupe.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Staged rows of `mbox` in fragment `f`, from `(owner, id)` on.
    pub(crate) fn fragment_entries(
        &self,
        f: FragmentId,
        from: Option<(&str, MessageId)>,
    ) -> Vec<(EntryKey, Vec<u8>)> {
        let start = from.map_or((f, String::new(), 0), |(owner, id)| {
            (f, owner.to_owned(), id)
        });
        self.entries
            .range(start..=(f, LAST_OWNER.to_owned(), MessageId::MAX))
    }

    /// Staged entries of `owner` in fragment `f` with ids from `from` on.
    pub(crate) fn owner_entries(
        &self,
        f: FragmentId,
        owner: &str,
        from: MessageId,
    ) -> Vec<(EntryKey, Vec<u8>)> {
        self.entries
            .range((f, owner.to_owned(), from)..=(f, owner.to_owned(), MessageId::MAX))
    }

    /// Staged dedupe keys of fragment `f`.
    pub(crate) fn fragment_dedupe(&self, f: FragmentId) -> Vec<(DedupeKey, (u64, u64))> {
        self.dedupe.range(
            (f, String::new(), String::new(), 0)
                ..=(f, LAST_OWNER.to_owned(), LAST_OWNER.to_owned(), u64::MAX),
        )
    }
}

impl storage::Stage for MailboxStage {
    fn is_empty(&self) -> bool {
        self.entries.holds_nothing() && self.dedupe.holds_nothing()
    }

    fn flush(&self, txn: &WriteTransaction) -> storage::Result<()> {
        {
            let rows = self.entries.published();
            if !rows.is_empty() {
                let mut mbox = txn.open_table(MBOX_TABLE)?;
                for ((f, owner, id), body) in rows.iter() {
                    mbox.insert((*f, owner.as_str(), *id), body.as_slice())?;
                }
            }
        }
        let rows = self.dedupe.published();
        if !rows.is_empty() {
            let mut dedupe = txn.open_table(DEDUPE_TABLE)?;
            for ((f, recipient, sender, cid), value) in rows.iter() {
                dedupe.insert((*f, recipient.as_str(), sender.as_str(), *cid), *value)?;
            }
        }
        Ok(())
    }

    fn flushed(&self) {
        self.entries.clear();
        self.dedupe.clear();
    }

    fn publish(&self) {
        self.entries.publish();
        self.dedupe.publish();
    }

    fn discard(&self) {
        self.entries.discard();
        self.dedupe.discard();
    }
}

/// One table's staged rows: published ones (durable in the journal, seen
/// by readers) and the pending changes of the batch being committed.
pub(crate) struct StagedTable<K, V> {
    published: RwLock<BTreeMap<K, V>>,
    pending: Mutex<Pending<K, V>>,
}

/// Applied to the published rows in this order: removes, then puts.
struct Pending<K, V> {
    puts: BTreeMap<K, V>,
    removes: BTreeSet<K>,
}

impl<K, V> Default for StagedTable<K, V> {
    fn default() -> Self {
        Self {
            published: RwLock::new(BTreeMap::new()),
            pending: Mutex::new(Pending {
                puts: BTreeMap::new(),
                removes: BTreeSet::new(),
            }),
        }
    }
}

impl<K: Ord + Clone, V: Clone> StagedTable<K, V> {
    fn published(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<K, V>> {
        self.published
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending<K, V>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stages a row (the writer, applying a journaled batch).
    pub(crate) fn put(&self, key: K, value: V) {
        self.pending().puts.insert(key, value);
    }

    /// Takes a row out (the writer, applying a deletion): its value, or
    /// `None` if it is not staged (then it is in redb, if anywhere).
    pub(crate) fn take(&self, key: &K) -> Option<V> {
        let mut pending = self.pending();
        let put = pending.puts.remove(key);
        // Published too if it was put again in this batch: both go.
        let published = if pending.removes.contains(key) {
            None
        } else {
            self.published().get(key).cloned()
        };
        if published.is_some() {
            pending.removes.insert(key.clone());
        }
        put.or(published)
    }

    /// The writer's view of `range`: published rows with this batch's
    /// changes applied, in key order.
    pub(crate) fn writer_range(&self, range: impl RangeBounds<K> + Clone) -> Vec<(K, V)> {
        let pending = self.pending();
        let mut rows: BTreeMap<K, V> = self
            .published()
            .range(range.clone())
            .filter(|(k, _)| !pending.removes.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.extend(
            pending
                .puts
                .range(range)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        rows.into_iter().collect()
    }

    /// The writer's view of one row (see [`Self::writer_range`]).
    pub(crate) fn writer_get(&self, key: &K) -> Option<V> {
        let pending = self.pending();
        if let Some(value) = pending.puts.get(key) {
            return Some(value.clone());
        }
        if pending.removes.contains(key) {
            return None;
        }
        self.published().get(key).cloned()
    }

    /// A published row (readers).
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.published().get(key).cloned()
    }

    /// Published rows in `range` (readers), in key order.
    pub(crate) fn range(&self, range: impl RangeBounds<K>) -> Vec<(K, V)> {
        self.published()
            .range(range)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn len(&self) -> usize {
        self.published().len()
    }

    fn holds_nothing(&self) -> bool {
        let pending = self.pending();
        pending.puts.is_empty() && pending.removes.is_empty() && self.published().is_empty()
    }

    fn clear(&self) {
        self.published
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn publish(&self) {
        let (puts, removes) = {
            let mut pending = self.pending();
            (
                std::mem::take(&mut pending.puts),
                std::mem::take(&mut pending.removes),
            )
        };
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
        let mut pending = self.pending();
        pending.puts.clear();
        pending.removes.clear();
    }
}

/// A row met by [`merge_sorted`]: staged, or read from redb.
pub(crate) enum Row<'a, S, T> {
    /// From the stage.
    Staged(&'a S),
    /// From the redb range.
    Stored(&'a T),
}

/// Visits, in key order, the union of `staged` (sorted) and `stored` (a
/// redb range in the same order; `compare` orders a staged row against a
/// stored one) until `visit` says stop. A key in both (a row put again by
/// a replayed copy, or written by a checkpoint that has not emptied the
/// stage yet) is visited once, staged.
pub(crate) fn merge_sorted<S, T, E>(
    staged: Vec<S>,
    stored: impl Iterator<Item = Result<T, E>>,
    compare: impl Fn(&S, &T) -> Ordering,
    mut visit: impl FnMut(Row<'_, S, T>) -> bool,
) -> Result<(), E> {
    let mut staged = staged.into_iter().peekable();
    for item in stored {
        let row = item?;
        // Staged rows up to this one; sorted and unique, so only the last
        // of them can equal it.
        let mut duplicate = false;
        while let Some(first) = staged.next_if(|s| compare(s, &row) != Ordering::Greater) {
            duplicate = compare(&first, &row) == Ordering::Equal;
            if !visit(Row::Staged(&first)) {
                return Ok(());
            }
        }
        if !duplicate && !visit(Row::Stored(&row)) {
            return Ok(());
        }
    }
    for row in staged {
        if !visit(Row::Staged(&row)) {
            break;
        }
    }
    Ok(())
}

/// A row of the `mbox` table as a redb range yields it.
type MboxRow<'a> = (
    redb::AccessGuard<'a, (u16, &'static str, u64)>,
    redb::AccessGuard<'a, &'static [u8]>,
);

/// [`merge_sorted`] of staged `mbox` rows and a range of the table,
/// visiting each row's fragment, owner, id and bytes.
pub(crate) fn merge_mbox<'a, E>(
    staged: Vec<(EntryKey, Vec<u8>)>,
    stored: impl Iterator<Item = Result<MboxRow<'a>, E>>,
    mut visit: impl FnMut(FragmentId, &str, MessageId, &[u8]) -> bool,
) -> Result<(), E> {
    merge_sorted(
        staged,
        stored,
        |((f, owner, id), _), (key, _)| {
            let (stored_f, stored_owner, stored_id) = key.value();
            (*f, owner.as_str(), *id).cmp(&(stored_f, stored_owner, stored_id))
        },
        |row| match row {
            Row::Staged(((f, owner, id), body)) => visit(*f, owner, *id, body),
            Row::Stored((key, value)) => {
                let (f, owner, id) = key.value();
                visit(f, owner, id, value.value())
            }
        },
    )
}

#[cfg(test)]
mod tests;
