//! What a secondary needs besides the primary's stream of [`WriteOp`]s: a
//! copy of a whole fragment to catch up from (its key range in each table),
//! and the fragment's owner and epoch, kept on disk so that a restarted node
//! never believes an older owner than the one it last knew.
//!
//! [`WriteOp`]: crate::store::WriteOp

use redb::{ReadableDatabase, TableDefinition, WriteTransaction};
use router::{FragmentId, Owner};
use serde::{Deserialize, Serialize};
use storage::{StorageError, Store};

use crate::FragmentError;
use crate::store::{DEDUPE_TABLE, MBOX_TABLE, SEQ_TABLE, storage};

const OWNER_TABLE: TableDefinition<u16, (u64, &str)> = TableDefinition::new("fragment_owner");

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
}

impl SnapshotChunk {
    fn rows(&self) -> usize {
        self.mbox.len() + self.dedupe.len()
    }
}

/// Reads fragment `f` whole, in chunks, from one read transaction (a
/// consistent copy: writes made after it reach the secondary as ops).
pub fn export_fragment(store: &Store, f: FragmentId) -> Result<Vec<SnapshotChunk>, FragmentError> {
    let read = store.db().begin_read().map_err(storage)?;
    let mut chunks = vec![SnapshotChunk::default()];
    let push = |chunks: &mut Vec<SnapshotChunk>| {
        if chunks
            .last()
            .is_some_and(|c| c.rows() >= SNAPSHOT_CHUNK_ROWS)
        {
            chunks.push(SnapshotChunk::default());
        }
    };
    match read.open_table(MBOX_TABLE) {
        Ok(table) => {
            for item in table
                .range((f, "", 0)..=(f, "\u{10FFFF}", u64::MAX))
                .map_err(storage)?
            {
                let (key, value) = item.map_err(storage)?;
                let (_, owner, id) = key.value();
                push(&mut chunks);
                if let Some(chunk) = chunks.last_mut() {
                    let body = serde_bytes::ByteBuf::from(value.value().to_vec());
                    chunk.mbox.push((owner.to_owned(), id, body));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    match read.open_table(DEDUPE_TABLE) {
        Ok(table) => {
            for item in table
                .range((f, "", "", 0)..=(f, "\u{10FFFF}", "\u{10FFFF}", u64::MAX))
                .map_err(storage)?
            {
                let (key, value) = item.map_err(storage)?;
                let (_, recipient, sender, cid) = key.value();
                let (id, ts) = value.value();
                push(&mut chunks);
                if let Some(chunk) = chunks.last_mut() {
                    chunk
                        .dedupe
                        .push((recipient.to_owned(), sender.to_owned(), cid, id, ts));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
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
/// never acknowledged, which must not come back).
pub fn import_chunk(
    txn: &WriteTransaction,
    f: FragmentId,
    first: bool,
    chunk: &SnapshotChunk,
) -> Result<(), StorageError> {
    let mut mbox = txn.open_table(MBOX_TABLE)?;
    let mut dedupe = txn.open_table(DEDUPE_TABLE)?;
    let mut seq = txn.open_table(SEQ_TABLE)?;
    if first {
        mbox.retain_in((f, "", 0)..=(f, "\u{10FFFF}", u64::MAX), |_, _| false)?;
        dedupe.retain_in(
            (f, "", "", 0)..=(f, "\u{10FFFF}", "\u{10FFFF}", u64::MAX),
            |_, _| false,
        )?;
        seq.remove(f)?;
    }
    for (owner, id, body) in &chunk.mbox {
        mbox.insert((f, owner.as_str(), *id), body.as_slice())?;
    }
    for (recipient, sender, cid, id, ts) in &chunk.dedupe {
        dedupe.insert((f, recipient.as_str(), sender.as_str(), *cid), (*id, *ts))?;
    }
    if let Some(next) = chunk.next_seq {
        seq.insert(f, next)?;
    }
    Ok(())
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
        .write(move |txn| {
            txn.open_table(OWNER_TABLE)?
                .insert(f, (owner.epoch, owner.node.as_str()))?;
            Ok(())
        })
        .await
        .map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{WriteOp, apply_ops};
    use proto::PhoneNumber;

    fn phone(n: u32) -> PhoneNumber {
        PhoneNumber::parse(&format!("+1555{n:07}")).expect("phone")
    }

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
        for (i, chunk) in chunks.into_iter().enumerate() {
            target
                .write(move |txn| import_chunk(txn, 3, i == 0, &chunk))
                .await
                .expect("import");
        }
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
}
