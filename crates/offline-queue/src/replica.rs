//! What a secondary needs besides the primary's stream of [`WriteOp`]s: a
//! copy of a whole fragment to catch up from (its key range in each table),
//! and the fragment's owner and epoch, kept on disk so that a restarted node
//! never believes an older owner than the one it last knew. And what a
//! primary keeps of writes its partner never got (the divergent log), to
//! merge them into a newer owner after a partition heals.
//!
//! [`WriteOp`]: crate::store::WriteOp

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use router::{FragmentId, Owner};
use serde::{Deserialize, Serialize};
use storage::{StorageError, Store};

use crate::FragmentError;
use crate::entry::{SHARED_OWNER, seq_of_message_id};
use crate::group_store::{GroupRow, erase_groups, export_groups, import_groups};
use crate::staged::{LAST_OWNER, MailboxStage, Row, merge_mbox, merge_sorted};
use crate::store::{
    ACCOUNT_TABLE, DEDUPE_TABLE, MBOX_TABLE, SEQ_TABLE, WriteOp, raise_next_seq, storage,
};

const OWNER_TABLE: TableDefinition<u16, (u64, &str)> = TableDefinition::new("fragment_owner");

/// Writes a primary committed without its partner's copy: `(fragment, n)`
/// → postcard(`Vec<WriteOp>`). Kept until the partner holds them (a full
/// copy) or a newer owner has merged them (after a partition).
const DIVERGENT_TABLE: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("divergent");

/// Fragments whose copy from the owner is under way: the first chunk
/// erased what this node held and the last has not arrived. Such a node
/// holds only part of the fragment and must not take it over (it would
/// serve without writes its owner had acknowledged). Kept across restarts.
const COPYING_TABLE: TableDefinition<u16, u8> = TableDefinition::new("fragment_copying");

/// Sequence numbers are given out in blocks of this size: a node that
/// takes a fragment over starts in a fresh block, so that its new ids never
/// collide with ids the old owner gave out without copying them (it may
/// have gone on serving behind a partition).
pub const TAKEOVER_SEQ_GAP: u64 = 1 << 32;

/// Where a node that takes a fragment over starts its sequence: the next
/// block after `current`, in the half of that block that belongs to its
/// place in the island (`member` 0 or 1). Two partners that each take the
/// fragment over from the same copy at once (each thought the other dead)
/// thus never give out the same id.
pub fn takeover_seq(current: u64, member: usize) -> u64 {
    let block = (current / TAKEOVER_SEQ_GAP).saturating_add(1);
    let half = (member.min(1) as u64) * (TAKEOVER_SEQ_GAP / 2);
    block.saturating_mul(TAKEOVER_SEQ_GAP).saturating_add(half)
}

/// Rows per snapshot chunk: keeps each cluster message far below
/// ractor_cluster's 16 MiB frame limit for payloads up to 64 KiB.
pub const SNAPSHOT_CHUNK_ROWS: usize = 128;

/// Part of a fragment copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// `(owner, id, entry bytes)`.
    pub mbox: Vec<(String, u64, serde_bytes::ByteBuf)>,
    /// `(recipient, sender, client id, msg id, stored at)`.
    pub dedupe: Vec<(String, String, u64, u64, u64)>,
    /// The sequence high-water mark (in the last chunk).
    pub next_seq: Option<u64>,
    /// `(user, postcard(AccountRecord))`. Not in this struct's wire form,
    /// which nodes of the previous release read: a chunk with accounts
    /// travels as `FragmentWire::SnapshotWithAccounts`.
    #[serde(skip)]
    pub accounts: Vec<(String, serde_bytes::ByteBuf)>,
    /// The fragment's group rows. Not in this struct's wire form either: a
    /// chunk with groups travels as `FragmentWire::SnapshotWithGroups`.
    #[serde(skip)]
    pub groups: Vec<GroupRow>,
}

impl SnapshotChunk {
    fn rows(&self) -> usize {
        self.mbox.len() + self.dedupe.len() + self.accounts.len() + self.groups.len()
    }
}

/// Reads fragment `f` whole, in chunks, from one read transaction (a
/// consistent copy: writes made after it reach the secondary as ops).
pub fn export_fragment(store: &Store, f: FragmentId) -> Result<Vec<SnapshotChunk>, FragmentError> {
    export_fragment_in(store, f, SNAPSHOT_CHUNK_ROWS)
}

/// [`export_fragment`] in chunks of `rows` rows (the simulator uses small
/// ones, so that copies take many steps).
pub fn export_fragment_in(
    store: &Store,
    f: FragmentId,
    rows: usize,
) -> Result<Vec<SnapshotChunk>, FragmentError> {
    // Staged rows are part of the fragment too (see `crate::staged`).
    let _view = store.view();
    let read = store.db().begin_read().map_err(storage)?;
    let stage = store.stage::<MailboxStage>();
    let mut chunks = vec![SnapshotChunk::default()];
    let push = |chunks: &mut Vec<SnapshotChunk>| {
        if chunks.last().is_some_and(|c| c.rows() >= rows.max(1)) {
            chunks.push(SnapshotChunk::default());
        }
    };
    let mbox = match read.open_table(MBOX_TABLE) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(storage(e)),
    };
    let stored = match &mbox {
        Some(table) => Some(
            table
                .range((f, "", 0)..=(f, LAST_OWNER, u64::MAX))
                .map_err(storage)?,
        ),
        None => None,
    };
    merge_mbox(
        stage.fragment_entries(f, None),
        stored
            .into_iter()
            .flatten()
            .map(|item| item.map_err(storage)),
        |_, owner, id, body| {
            push(&mut chunks);
            if let Some(chunk) = chunks.last_mut() {
                let body = serde_bytes::ByteBuf::from(body.to_vec());
                chunk.mbox.push((owner.to_owned(), id, body));
            }
            true
        },
    )?;
    let dedupe = match read.open_table(DEDUPE_TABLE) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(storage(e)),
    };
    let stored = match &dedupe {
        Some(table) => Some(
            table
                .range((f, "", "", 0)..=(f, LAST_OWNER, LAST_OWNER, u64::MAX))
                .map_err(storage)?,
        ),
        None => None,
    };
    merge_sorted(
        stage.fragment_dedupe(f),
        stored
            .into_iter()
            .flatten()
            .map(|item| item.map_err(storage)),
        |((_, r, s, c), _), (key, _)| {
            let (_, stored_r, stored_s, stored_c) = key.value();
            (r.as_str(), s.as_str(), *c).cmp(&(stored_r, stored_s, stored_c))
        },
        |row| {
            let (recipient, sender, cid, (id, ts)) = match &row {
                Row::Staged(((_, r, s, c), value)) => (r.clone(), s.clone(), *c, *value),
                Row::Stored((key, value)) => {
                    let (_, r, s, c) = key.value();
                    (r.to_owned(), s.to_owned(), c, value.value())
                }
            };
            push(&mut chunks);
            if let Some(chunk) = chunks.last_mut() {
                chunk.dedupe.push((recipient, sender, cid, id, ts));
            }
            true
        },
    )?;
    match read.open_table(ACCOUNT_TABLE) {
        Ok(table) => {
            for item in table.range((f, "")..=(f, "\u{10FFFF}")).map_err(storage)? {
                let (key, value) = item.map_err(storage)?;
                let (_, user) = key.value();
                push(&mut chunks);
                if let Some(chunk) = chunks.last_mut() {
                    let record = serde_bytes::ByteBuf::from(value.value().to_vec());
                    chunk.accounts.push((user.to_owned(), record));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    export_groups(&read, f, |row| {
        push(&mut chunks);
        if let Some(chunk) = chunks.last_mut() {
            chunk.groups.push(row);
        }
    })?;
    let next_seq = match read.open_table(SEQ_TABLE) {
        Ok(table) => table.get(f).map_err(storage)?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(storage(e)),
    };
    if let Some(last) = chunks.last_mut() {
        last.next_seq = next_seq;
    }
    Ok(chunks)
}

/// Applies one chunk of a copy of fragment `f`; the first chunk first
/// erases whatever this node held of `f` (it may hold writes the primary
/// never acknowledged, which must not come back). The id high-water mark is
/// not erased but raised: ids this node gave out while it owned the fragment
/// may be missing from the copy, and must never be given out again.
/// Between the first chunk and the last, the fragment counts as being
/// copied ([`copy_incomplete`]).
pub fn import_chunk(
    txn: &WriteTransaction,
    f: FragmentId,
    first: bool,
    last: bool,
    chunk: &SnapshotChunk,
) -> Result<(), StorageError> {
    let mut mbox = txn.open_table(MBOX_TABLE)?;
    let mut dedupe = txn.open_table(DEDUPE_TABLE)?;
    let mut accounts = txn.open_table(ACCOUNT_TABLE)?;
    if first {
        erase_groups(txn, f)?;
        accounts.retain_in((f, "")..=(f, "\u{10FFFF}"), |_, _| false)?;
        mbox.retain_in((f, "", 0)..=(f, "\u{10FFFF}", u64::MAX), |_, _| false)?;
        dedupe.retain_in(
            (f, "", "", 0)..=(f, "\u{10FFFF}", "\u{10FFFF}", u64::MAX),
            |_, _| false,
        )?;
    }
    if first || last {
        let mut copying = txn.open_table(COPYING_TABLE)?;
        if last {
            copying.remove(f)?;
        } else {
            copying.insert(f, 1)?;
        }
    }
    let mut next_seq = chunk.next_seq.unwrap_or(0);
    for (owner, id, body) in &chunk.mbox {
        // A shared group item's id is a position: the home's id, not one
        // of this fragment's.
        if owner != SHARED_OWNER {
            next_seq = next_seq.max(seq_of_message_id(*id).saturating_add(1));
        }
        mbox.insert((f, owner.as_str(), *id), body.as_slice())?;
    }
    for (recipient, sender, cid, id, ts) in &chunk.dedupe {
        dedupe.insert((f, recipient.as_str(), sender.as_str(), *cid), (*id, *ts))?;
    }
    for (user, record) in &chunk.accounts {
        accounts.insert((f, user.as_str()), record.as_slice())?;
    }
    import_groups(txn, f, &chunk.groups)?;
    if next_seq > 0 {
        raise_next_seq(txn, f, next_seq)?;
    }
    Ok(())
}

/// Whether this node is in the middle of receiving a copy of `f` (see
/// [`import_chunk`]): its rows of `f` are then only part of the fragment.
pub fn copy_incomplete(store: &Store, f: FragmentId) -> Result<bool, FragmentError> {
    let read = store.db().begin_read().map_err(storage)?;
    match read.open_table(COPYING_TABLE) {
        Ok(table) => Ok(table.get(f).map_err(storage)?.is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(storage(e)),
    }
}

/// The owner of `f` this node last stored, if any.
pub fn load_owner(store: &Store, f: FragmentId) -> Result<Option<Owner>, FragmentError> {
    let read = store.db().begin_read().map_err(storage)?;
    match read.open_table(OWNER_TABLE) {
        Ok(table) => Ok(table.get(f).map_err(storage)?.map(|v| {
            let (epoch, node) = v.value();
            Owner {
                epoch,
                node: node.to_owned(),
            }
        })),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage(e)),
    }
}

/// Stores the owner of `f` (durably, before this node acts on it).
pub async fn save_owner(store: &Store, f: FragmentId, owner: Owner) -> Result<(), FragmentError> {
    store
        .write(move |txn| store_owner(txn, f, &owner))
        .await
        .map_err(storage)
}

/// Stores the owner of `f` in the caller's transaction.
pub fn store_owner(
    txn: &WriteTransaction,
    f: FragmentId,
    owner: &Owner,
) -> Result<(), StorageError> {
    txn.open_table(OWNER_TABLE)?
        .insert(f, (owner.epoch, owner.node.as_str()))?;
    Ok(())
}

/// Appends writes to the divergent log of `f` (in the caller's transaction).
pub fn log_divergent(
    txn: &WriteTransaction,
    f: FragmentId,
    ops: &[WriteOp],
) -> Result<(), StorageError> {
    log_divergent_all(txn, [(f, ops)])
}

/// Appends each fragment's writes to its divergent log, in order, with the
/// table opened once (a run of grouped writes while a partner is away).
pub(crate) fn log_divergent_all<'a>(
    txn: &WriteTransaction,
    writes: impl IntoIterator<Item = (FragmentId, &'a [WriteOp])>,
) -> Result<(), StorageError> {
    let mut table = None;
    for (f, ops) in writes {
        let bytes = postcard::to_stdvec(ops)
            .map_err(|e| StorageError::Corrupt(format!("cannot encode divergent writes: {e}")))?;
        let table = match &mut table {
            Some(table) => table,
            None => table.insert(txn.open_table(DIVERGENT_TABLE)?),
        };
        let next = table
            .range((f, 0)..=(f, u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(1, |(key, _)| key.value().1 + 1);
        table.insert((f, next), bytes.as_slice())?;
    }
    Ok(())
}

/// The divergent log of `f`: its last key and every write in it, in order.
pub fn load_divergent(store: &Store, f: FragmentId) -> Result<(u64, Vec<WriteOp>), FragmentError> {
    let read = store.db().begin_read().map_err(storage)?;
    let table = match read.open_table(DIVERGENT_TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, Vec::new())),
        Err(e) => return Err(storage(e)),
    };
    let mut last = 0;
    let mut ops = Vec::new();
    for item in table.range((f, 0)..=(f, u64::MAX)).map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        last = key.value().1;
        let batch: Vec<WriteOp> = postcard::from_bytes(value.value())
            .map_err(|e| FragmentError::Storage(format!("corrupt divergent writes: {e}")))?;
        ops.extend(batch);
    }
    Ok((last, ops))
}

/// The last key of the divergent log of `f` (0 if it is empty).
pub fn divergent_last(store: &Store, f: FragmentId) -> Result<u64, FragmentError> {
    let read = store.db().begin_read().map_err(storage)?;
    let table = match read.open_table(DIVERGENT_TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(storage(e)),
    };
    let last = table
        .range((f, 0)..=(f, u64::MAX))
        .map_err(storage)?
        .next_back()
        .transpose()
        .map_err(storage)?
        .map_or(0, |(key, _)| key.value().1);
    Ok(last)
}

/// The divergent log of `f` in chunks of about `max_ops` writes (a logged
/// batch is never split), each with the last key it holds: merged one
/// cluster message at a time, far below the link's frame limit.
pub fn divergent_chunks(
    store: &Store,
    f: FragmentId,
    max_ops: usize,
) -> Result<Vec<(u64, Vec<WriteOp>)>, FragmentError> {
    let read = store.db().begin_read().map_err(storage)?;
    let table = match read.open_table(DIVERGENT_TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(e)),
    };
    let mut chunks: Vec<(u64, Vec<WriteOp>)> = Vec::new();
    for item in table.range((f, 0)..=(f, u64::MAX)).map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let batch: Vec<WriteOp> = postcard::from_bytes(value.value())
            .map_err(|e| FragmentError::Storage(format!("corrupt divergent writes: {e}")))?;
        match chunks.last_mut() {
            Some((upto, ops)) if ops.len() < max_ops => {
                *upto = key.value().1;
                ops.extend(batch);
            }
            _ => chunks.push((key.value().1, batch)),
        }
    }
    Ok(chunks)
}

/// Drops the divergent log of `f` up to and including key `upto`.
pub fn clear_divergent(
    txn: &WriteTransaction,
    f: FragmentId,
    upto: u64,
) -> Result<(), StorageError> {
    txn.open_table(DIVERGENT_TABLE)?
        .retain_in((f, 0)..=(f, upto), |_, _| false)?;
    Ok(())
}

impl crate::replica_core::ReplicaRead for crate::store::RedbMailbox {
    fn next_seq(&self) -> Result<u64, FragmentError> {
        crate::store::RedbMailbox::next_seq(self)
    }

    fn copy_incomplete(&self) -> Result<bool, FragmentError> {
        copy_incomplete(self.store(), self.fragment())
    }

    fn divergent_chunks(&self, max_ops: usize) -> Result<Vec<(u64, Vec<WriteOp>)>, FragmentError> {
        divergent_chunks(self.store(), self.fragment(), max_ops)
    }

    fn divergent_last(&self) -> Result<u64, FragmentError> {
        divergent_last(self.store(), self.fragment())
    }

    fn refusal(&self) -> Option<FragmentError> {
        crate::actor::refusal(self.store())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote;
    use crate::store::apply_ops;

    use test_support::numbered as phone;

    async fn fill(store: &Store, f: FragmentId, messages: u64) {
        let ops: Vec<WriteOp> = (0..messages)
            .map(|i| WriteOp::PutMessage {
                recipient: phone(1),
                sender: phone(2),
                client_msg_id: i,
                id: 1000 + i,
                server_ts: 5,
                body: vec![f as u8; 3],
            })
            .chain([WriteOp::NextSeq(1000 + messages)])
            .collect();
        store
            .write(move |txn| apply_ops(txn, f, &ops))
            .await
            .expect("write");
    }

    #[tokio::test]
    async fn writes_logged_together_keep_their_order_per_fragment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("a.redb"), Default::default()).expect("open");
        let one = vec![WriteOp::NextSeq(1)];
        let two = vec![WriteOp::NextSeq(2)];
        let other = vec![WriteOp::NextSeq(9)];
        let (a, b, c) = (one.clone(), two.clone(), other.clone());
        store
            .write(move |txn| log_divergent_all(txn, [(3, &a[..]), (4, &c[..]), (3, &b[..])]))
            .await
            .expect("write");
        let (last, ops) = load_divergent(&store, 3).expect("log");
        assert_eq!((last, ops), (2, [one, two].concat()));
        assert_eq!(load_divergent(&store, 4).expect("log").1, other);
    }

    #[tokio::test]
    async fn a_copied_fragment_equals_its_source_and_replaces_stale_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Store::open(&dir.path().join("a.redb"), Default::default()).expect("open");
        let target = Store::open(&dir.path().join("b.redb"), Default::default()).expect("open");
        fill(&source, 3, 300).await;
        fill(&source, 4, 5).await;
        // The target holds stale rows of fragment 3 and unrelated ones of 4.
        fill(&target, 3, 1).await;
        target
            .write(|txn| {
                apply_ops(
                    txn,
                    3,
                    &[WriteOp::PutReceipt {
                        owner: phone(9),
                        id: 99,
                        body: vec![1],
                    }],
                )
            })
            .await
            .expect("stale");
        fill(&target, 4, 2).await;

        let chunks = export_fragment(&source, 3).expect("export");
        assert!(chunks.len() >= 4, "600 rows make several chunks");
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            target
                .write(move |txn| import_chunk(txn, 3, i == 0, i == last, &chunk))
                .await
                .expect("import");
            // Partly copied until the last chunk is in.
            assert_eq!(copy_incomplete(&target, 3).expect("read"), i != last);
        }
        assert!(!copy_incomplete(&target, 4).expect("read"));
        let again = export_fragment(&target, 3).expect("export");
        let merged = |chunks: Vec<SnapshotChunk>| {
            let mut all = SnapshotChunk::default();
            for c in chunks {
                all.mbox.extend(c.mbox);
                all.dedupe.extend(c.dedupe);
                all.next_seq = c.next_seq.or(all.next_seq);
            }
            all
        };
        assert_eq!(
            merged(again),
            merged(export_fragment(&source, 3).expect("export"))
        );
        // Fragment 4 of the target is untouched.
        assert_eq!(
            merged(export_fragment(&target, 4).expect("export"))
                .mbox
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_copy_carries_account_records_and_drops_stale_ones() {
        use crate::account::AccountRecord;
        use crate::store::{MailboxRead, RedbMailbox};
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Store::open(&dir.path().join("a.redb"), Default::default()).expect("open");
        let target = Store::open(&dir.path().join("b.redb"), Default::default()).expect("open");
        let record = |generation, body: &[u8]| AccountRecord {
            version: 1,
            generation,
            body: body.to_vec(),
        };
        let put = |store: &Store, user: u32, record: AccountRecord| {
            let store = store.clone();
            async move {
                store
                    .write(move |txn| {
                        apply_ops(
                            txn,
                            3,
                            &[WriteOp::PutAccount {
                                user: phone(u64::from(user)),
                                record,
                            }],
                        )
                    })
                    .await
                    .expect("put account")
            }
        };
        for user in 0..200 {
            put(&source, user, record(u64::from(user), b"codes")).await;
        }
        // The target holds a record the source does not (it must go).
        put(&target, 9_999, record(1, b"stale")).await;
        let chunks = export_fragment(&source, 3).expect("export");
        assert!(chunks.len() >= 2, "200 records make two chunks");
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            // Through the wire form, which carries the records separately.
            let wire = remote::FragmentWire::snapshot((1, i == 0, i == last, 1), chunk);
            let bytes = remote::encode(3, wire).expect("encode");
            let (_, chunk) = remote::decode(&bytes)
                .expect("decode")
                .wire
                .into_snapshot()
                .expect("a copy chunk");
            target
                .write(move |txn| import_chunk(txn, 3, i == 0, i == last, &chunk))
                .await
                .expect("import");
        }
        let copy = RedbMailbox::new(target.clone(), 3);
        assert_eq!(
            copy.account(&phone(150)).expect("read"),
            record(150, b"codes")
        );
        assert_eq!(
            copy.account(&phone(9_999)).expect("read"),
            AccountRecord::default()
        );
    }

    #[tokio::test]
    async fn the_owner_is_stored_per_fragment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("o.redb"), Default::default()).expect("open");
        assert_eq!(load_owner(&store, 7).expect("load"), None);
        for epoch in [3, 4] {
            let owner = Owner {
                epoch,
                node: format!("n{epoch}"),
            };
            save_owner(&store, 7, owner).await.expect("save");
        }
        let owner = load_owner(&store, 7).expect("load").expect("stored");
        assert_eq!((owner.epoch, owner.node.as_str()), (4, "n4"));
        assert_eq!(load_owner(&store, 8).expect("load"), None);
    }

    #[tokio::test]
    async fn the_divergent_log_keeps_order_and_clears_up_to_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("d.redb"), Default::default()).expect("open");
        assert_eq!(load_divergent(&store, 2).expect("load"), (0, Vec::new()));
        for n in 1..=3u64 {
            let ops = vec![WriteOp::NextSeq(n)];
            store
                .write(move |txn| log_divergent(txn, 2, &ops))
                .await
                .expect("log");
        }
        let other = vec![WriteOp::NextSeq(99)];
        store
            .write(move |txn| log_divergent(txn, 3, &other))
            .await
            .expect("log");
        let (last, ops) = load_divergent(&store, 2).expect("load");
        assert_eq!(last, 3);
        assert_eq!(ops, (1..=3).map(WriteOp::NextSeq).collect::<Vec<_>>());
        store
            .write(|txn| clear_divergent(txn, 2, 2))
            .await
            .expect("clear");
        assert_eq!(
            load_divergent(&store, 2).expect("load"),
            (3, vec![WriteOp::NextSeq(3)])
        );
        assert_eq!(load_divergent(&store, 3).expect("load").1.len(), 1);
        for n in 4..=9u64 {
            let ops = vec![WriteOp::NextSeq(n), WriteOp::NextSeq(n)];
            store
                .write(move |txn| log_divergent(txn, 2, &ops))
                .await
                .expect("log");
        }
        let chunks = divergent_chunks(&store, 2, 4).expect("chunks");
        let keys: Vec<u64> = chunks.iter().map(|(k, _)| *k).collect();
        let sizes: Vec<usize> = chunks.iter().map(|(_, ops)| ops.len()).collect();
        assert_eq!((keys, sizes), (vec![5, 7, 9], vec![5, 4, 4]));
    }

    /// The mark a take-over would start from, as the fragment actor reads it.
    fn stored_next_seq(store: &Store, f: FragmentId) -> u64 {
        crate::store::RedbMailbox::new(store.clone(), f)
            .next_seq()
            .expect("next seq")
    }

    #[tokio::test]
    async fn the_id_mark_covers_every_stored_id_and_never_falls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("m.redb"), Default::default()).expect("open");
        // Merged writes carry ids and no NextSeq: the mark rises past them.
        let merged = vec![WriteOp::PutMessage {
            recipient: phone(1),
            sender: phone(2),
            client_msg_id: 7,
            id: crate::entry::compose_message_id(5, 3 * TAKEOVER_SEQ_GAP + 41),
            server_ts: 5,
            body: vec![1],
        }];
        store
            .write(move |txn| apply_ops(txn, 5, &merged))
            .await
            .expect("merge");
        assert_eq!(stored_next_seq(&store, 5), 3 * TAKEOVER_SEQ_GAP + 42);
        // An older NextSeq (a running core behind the merge) does not lower it.
        store
            .write(|txn| apply_ops(txn, 5, &[WriteOp::NextSeq(12)]))
            .await
            .expect("older mark");
        assert_eq!(stored_next_seq(&store, 5), 3 * TAKEOVER_SEQ_GAP + 42);
    }

    /// Seen in the container tests: a node gave out ids as owner, its partner
    /// (which had not merged them yet) copied it a lower mark, and the node's
    /// next take-over started in the same block again: two messages shared
    /// an id and one overwrote the other.
    #[tokio::test]
    async fn a_copy_from_a_partner_with_a_lower_mark_keeps_this_nodes_ids_unused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partner = Store::open(&dir.path().join("p.redb"), Default::default()).expect("open");
        let this = Store::open(&dir.path().join("t.redb"), Default::default()).expect("open");
        fill(&partner, 3, 2).await;
        let given_out = takeover_seq(stored_next_seq(&this, 3), 0) + 10;
        this.write(move |txn| apply_ops(txn, 3, &[WriteOp::NextSeq(given_out)]))
            .await
            .expect("owner's ids");
        let chunks = export_fragment(&partner, 3).expect("export");
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            this.write(move |txn| import_chunk(txn, 3, i == 0, i == last, &chunk))
                .await
                .expect("import");
        }
        assert_eq!(stored_next_seq(&this, 3), given_out);
        assert!(takeover_seq(stored_next_seq(&this, 3), 0) > given_out);
    }

    #[test]
    fn partners_taking_over_from_one_copy_get_disjoint_ids() {
        for current in [1, 119, TAKEOVER_SEQ_GAP - 1, TAKEOVER_SEQ_GAP + 119] {
            let first = takeover_seq(current, 0);
            let second = takeover_seq(current, 1);
            assert!(first > current && second > current);
            // Each has half a block to itself.
            assert_eq!(second - first, TAKEOVER_SEQ_GAP / 2);
            // A later take-over by either starts past both halves.
            assert!(takeover_seq(second + 10, 0) >= second + TAKEOVER_SEQ_GAP / 2);
            assert!(takeover_seq(first + 10, 1) >= second + TAKEOVER_SEQ_GAP);
        }
    }
}
