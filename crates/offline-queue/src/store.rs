//! The mailbox tables in the node's redb database.
//!
//! Every key starts with the fragment, so a fragment's data is one contiguous
//! range (a later replica catch-up copies exactly that range). One table per
//! kind, not per fragment: a group commit then rewrites the few B-trees it
//! touches instead of hundreds (measured in `docs/benchmarks.md`).
//! - `mbox`: `(fragment, owner, entry id) → postcard(EntryBody)`; a range
//!   over one owner yields its mailbox oldest first.
//! - `dedupe`: `(fragment, recipient, sender, client_msg_id) → (msg id,
//!   stored at)`; kept past delivery, for the retention window, so that a late
//!   resend is still recognised.
//! - `mbox` also holds, under the owner's *delivered key* (the owner
//!   followed by `/`, which sorts right after the owner's own entries and
//!   before any other number), a [`DeliveredMark`] for each message
//!   deleted from the owner's mailbox (acknowledged, or expired): its
//!   sender and store time, written beside the deletion (for a short
//!   mailbox the same B-tree leaf), kept for the dedupe retention. A read receipt is accepted only
//!   for messages that are in the reader's mailbox or marked delivered to
//!   it from that sender ([`MailboxRead::senders`]).
//! - `fragment_seq`: `fragment → next sequence`, the id high-water mark. It
//!   only rises, and every write raises it past the ids it stores: a node
//!   that takes a fragment over starts its ids above it, so a mark that fell
//!   back (a copy from a partner that had not seen this node's ids, a merge
//!   of a partner's ids) would give out ids already in use.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::{GroupChange, MessageId, PhoneNumber, TimestampMs};
use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use router::FragmentId;
use storage::{StorageError, Store};

use crate::account::AccountRecord;
use crate::entry::GroupItem;
use crate::entry::{
    DeliveredMark, SHARED_OWNER, SharedItem, group_position, group_ref, item_membership_change,
    membership_change, message_sender, seq_of_message_id, stored_head,
};
use crate::group::{GroupId, GroupRecord, Position};
use crate::group_store;
use crate::group_ticks::Unticked;
use crate::staged::{DedupeKey, EntryKey, LAST_OWNER, MailboxStage, Row, merge_mbox, merge_sorted};
use crate::usage::MailboxUsage;
use crate::{Entry, EntryBody, FragmentError};

pub(crate) const SEQ_TABLE: TableDefinition<u16, u64> = TableDefinition::new("fragment_seq");

pub(crate) const MBOX_TABLE: TableDefinition<(u16, &str, u64), &[u8]> =
    TableDefinition::new("mbox");
pub(crate) const DEDUPE_TABLE: TableDefinition<(u16, &str, &str, u64), (u64, u64)> =
    TableDefinition::new("dedupe");
/// `(fragment, user) → postcard(AccountRecord)` (see [`crate::account`]).
pub(crate) const ACCOUNT_TABLE: TableDefinition<(u16, &str), &[u8]> =
    TableDefinition::new("fragment_account");

/// A durable change to a fragment's tables. Also what a primary streams to
/// its secondary, so it is serialisable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteOp {
    /// Store a message and its dedupe key.
    PutMessage {
        /// The mailbox owner.
        recipient: PhoneNumber,
        /// The sender (dedupe key part).
        sender: PhoneNumber,
        /// The sender's id (dedupe key part).
        client_msg_id: u64,
        /// The assigned id.
        id: MessageId,
        /// When it was stored.
        server_ts: TimestampMs,
        /// Serialised [`EntryBody`].
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Store a receipt entry.
    PutReceipt {
        /// The mailbox owner (the original sender).
        owner: PhoneNumber,
        /// The assigned id.
        id: MessageId,
        /// Serialised [`EntryBody`].
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Delete delivered entries (a message leaves a [`DeliveredMark`]).
    Delete {
        /// The mailbox owner.
        owner: PhoneNumber,
        /// Entry ids.
        ids: Vec<MessageId>,
    },
    /// Raise the sequence high-water mark (never lowers it).
    NextSeq(u64),
    /// Forget dedupe keys and delivered marks stored before `before_ms`,
    /// at most `max` of each.
    SweepDedupe {
        /// Cut-off time.
        before_ms: TimestampMs,
        /// Bound on the work done in one commit.
        max: usize,
    },
    /// Replace a user's account record (appended last: divergent logs of
    /// earlier releases still decode).
    PutAccount {
        /// The user.
        user: PhoneNumber,
        /// The new record.
        record: AccountRecord,
    },
    /// Replace a group's record (at its home fragment).
    PutGroup {
        /// The new record.
        record: GroupRecord,
    },
    /// Log `item` at `position` of `group`, with the dedupe key of the
    /// send it came from, if any.
    LogGroup {
        /// The group.
        group: GroupId,
        /// Its place in the log (an id of this fragment).
        position: Position,
        /// What is logged.
        item: GroupItem,
        /// `(sender, client_msg_id)` of a message.
        dedupe: Option<(PhoneNumber, u64)>,
    },
    /// Fan-out of `group` has handed `positions` (the last `through`) to
    /// every destination: drop them from the log.
    GroupFannedOut {
        /// The group.
        group: GroupId,
        /// The batch's last position.
        through: Position,
        /// The batch's items.
        positions: Vec<Position>,
    },
    /// Forget a group every member has left.
    DeleteGroup {
        /// The group.
        group: GroupId,
    },
    /// Store a group's fanned-out items in members' mailboxes here, and
    /// raise the group's inbox mark to `through`.
    PutGroupEntries {
        /// The group.
        group: GroupId,
        /// The last position of the batch.
        through: Position,
        /// `(member, entry id, serialised EntryBody)`.
        entries: Vec<(PhoneNumber, MessageId, serde_bytes::ByteBuf)>,
    },
    /// Raise members' cursors of `group` (at its home).
    GroupCursors {
        /// The group.
        group: GroupId,
        /// `(member, delivered, read)`.
        cursors: Vec<(PhoneNumber, Position, Position)>,
    },
    /// Fan-out of `group` passed `(from, to]` (one era) without this
    /// fragment's owner: what a former owner stored there is merged.
    GroupGap {
        /// The group.
        group: GroupId,
        /// This fragment's mark when the gap was seen.
        from: Position,
        /// How far fan-out had gone.
        to: Position,
    },
    /// A merge stored a former owner's items at these positions of
    /// `group`'s gaps: they leave the gaps.
    GroupGapFilled {
        /// The group.
        group: GroupId,
        /// The positions.
        positions: Vec<Position>,
    },
    /// Ticks of `group`'s messages were settled (at its home).
    GroupTicked {
        /// The group.
        group: GroupId,
        /// Messages now delivered to all.
        delivered: Vec<Position>,
        /// Messages that need nothing more.
        done: Vec<Position>,
    },
    /// [`WriteOp::PutGroupEntries`] with each item once: stored once in
    /// this fragment ([`SharedItem`]) and referenced from each member's
    /// mailbox ([`EntryBody::GroupRef`]); raises the inbox mark to
    /// `through`.
    PutGroupShared {
        /// The group.
        group: GroupId,
        /// The last position of the batch.
        through: Position,
        /// `(position, serialised GroupItem)`.
        items: Vec<(Position, serde_bytes::ByteBuf)>,
        /// `(member, entry id, position)`.
        entries: Vec<(PhoneNumber, MessageId, Position)>,
    },
}

/// Applies `ops` of `fragment` inside a group-commit transaction.
pub fn apply_ops(
    txn: &WriteTransaction,
    fragment: FragmentId,
    ops: &[WriteOp],
) -> Result<(), StorageError> {
    let mut tables = MailboxTables::open(txn)?;
    tables.apply(fragment, ops)?;
    tables.finish()
}

/// The mailbox tables, opened once in a write transaction for the ops of
/// any number of fragments (opening and closing them costs about as much
/// as a small change's inserts). [`MailboxTables::finish`] writes the id
/// marks the ops need, one write per fragment.
pub(crate) struct MailboxTables<'txn> {
    txn: &'txn WriteTransaction,
    mbox: Table<'txn, (u16, &'static str, u64), &'static [u8]>,
    dedupe: Table<'txn, (u16, &'static str, &'static str, u64), (u64, u64)>,
    /// Per fragment, the mark its ops need: past every id they store and
    /// every `NextSeq`.
    marks: BTreeMap<FragmentId, u64>,
    /// Where new entries go while the journal alone holds them (a
    /// journaled batch); `None`: straight into `mbox`.
    stage: Option<Arc<MailboxStage>>,
}

impl<'txn> MailboxTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            txn,
            mbox: txn.open_table(MBOX_TABLE)?,
            dedupe: txn.open_table(DEDUPE_TABLE)?,
            marks: BTreeMap::new(),
            stage: None,
        })
    }

    /// The tables, with new entries staged in `stage` (see [`crate::staged`]).
    pub(crate) fn open_staged(
        txn: &'txn WriteTransaction,
        stage: Arc<MailboxStage>,
    ) -> Result<Self, StorageError> {
        let mut tables = Self::open(txn)?;
        tables.stage = Some(stage);
        Ok(tables)
    }

    /// Stores a row of `mbox` (an entry, or under a delivered key a
    /// mark): staged, or in the table.
    fn put_entry(
        &mut self,
        fragment: FragmentId,
        owner: &str,
        id: MessageId,
        body: &[u8],
    ) -> Result<(), StorageError> {
        match &self.stage {
            Some(stage) => stage
                .entries
                .put((fragment, owner.to_owned(), id), body.to_vec()),
            None => {
                self.mbox.insert((fragment, owner, id), body)?;
            }
        }
        Ok(())
    }

    /// Stores a dedupe key: staged, or in the table.
    fn put_dedupe(
        &mut self,
        fragment: FragmentId,
        recipient: &str,
        sender: &str,
        client_msg_id: u64,
        stored: (MessageId, TimestampMs),
    ) -> Result<(), StorageError> {
        match &self.stage {
            Some(stage) => stage.dedupe.put(
                (
                    fragment,
                    recipient.to_owned(),
                    sender.to_owned(),
                    client_msg_id,
                ),
                stored,
            ),
            None => {
                self.dedupe
                    .insert((fragment, recipient, sender, client_msg_id), stored)?;
            }
        }
        Ok(())
    }

    /// Deletes an entry and returns the sender and store time of the
    /// message it held (`None`: a receipt, a group entry, or no such
    /// entry). A group reference lets go of its shared item.
    fn remove_entry(
        &mut self,
        fragment: FragmentId,
        owner: &PhoneNumber,
        id: MessageId,
    ) -> Result<Option<(PhoneNumber, TimestampMs)>, StorageError> {
        let Some(body) = self.take_row(fragment, owner.as_str(), id)? else {
            return Ok(None);
        };
        if let Some((_, position)) = group_ref(&body) {
            self.release_shared(fragment, position, owner)?;
        }
        Ok(message_sender(&body))
    }

    /// Takes a row of `mbox` out, staged or stored; its bytes.
    fn take_row(
        &mut self,
        fragment: FragmentId,
        owner: &str,
        id: MessageId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let staged = self
            .stage
            .as_ref()
            .and_then(|stage| stage.entries.take(&(fragment, owner.to_owned(), id)));
        // Also out of `mbox`: an entry put again (a copy's ops replayed
        // over it) can be in both. A missing key costs a lookup, no write.
        let stored = self
            .mbox
            .remove((fragment, owner, id))?
            .map(|old| old.value().to_vec());
        Ok(staged.or(stored))
    }

    /// A row of `mbox` as this batch left it (staged first).
    fn row(
        &self,
        fragment: FragmentId,
        owner: &str,
        id: MessageId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(stage) = &self.stage
            && let Some(row) = stage.entries.writer_get(&(fragment, owner.to_owned(), id))
        {
            return Ok(Some(row));
        }
        Ok(self
            .mbox
            .get((fragment, owner, id))?
            .map(|value| value.value().to_vec()))
    }

    /// Stores a group entry in `owner`'s mailbox, and what it does to the
    /// owner's membership of the group, if anything.
    fn put_member_entry(
        &mut self,
        fragment: FragmentId,
        owner: &PhoneNumber,
        id: MessageId,
        body: &[u8],
        membership: Option<(GroupId, bool)>,
    ) -> Result<(), StorageError> {
        self.raise(fragment, seq_of_message_id(id).saturating_add(1));
        self.put_entry(fragment, owner.as_str(), id, body)?;
        if let Some((group, joined)) = membership {
            group_store::note_membership(self.txn, fragment, owner.as_str(), group, joined)?;
        }
        Ok(())
    }

    /// Stores `item` at `position` once for `members` (joining those a
    /// repeat of the batch already listed: applying it twice is applying
    /// it once).
    fn put_shared(
        &mut self,
        fragment: FragmentId,
        group: GroupId,
        position: Position,
        item: &GroupItem,
        members: Vec<PhoneNumber>,
    ) -> Result<(), StorageError> {
        let mut shared = SharedItem {
            group,
            waiting: Vec::new(),
            item: item.clone(),
        };
        if let Some(row) = self.row(fragment, SHARED_OWNER, position)?
            && let Ok(stored) = SharedItem::from_bytes(&row)
        {
            shared.waiting = stored.waiting;
        }
        for member in members {
            if !shared.waiting.contains(&member) {
                shared.waiting.push(member);
            }
        }
        if shared.waiting.is_empty() {
            // No one here to keep it for.
            return Ok(());
        }
        self.put_entry(fragment, SHARED_OWNER, position, &shared.to_bytes())
    }

    /// `owner` no longer refers to the item at `position`: gone with its
    /// last member.
    fn release_shared(
        &mut self,
        fragment: FragmentId,
        position: Position,
        owner: &PhoneNumber,
    ) -> Result<(), StorageError> {
        let Some(row) = self.row(fragment, SHARED_OWNER, position)? else {
            return Ok(());
        };
        let Ok(mut shared) = SharedItem::from_bytes(&row) else {
            self.take_row(fragment, SHARED_OWNER, position)?;
            return Ok(());
        };
        shared.waiting.retain(|member| member != owner);
        if shared.waiting.is_empty() {
            self.take_row(fragment, SHARED_OWNER, position)?;
            return Ok(());
        }
        self.put_entry(fragment, SHARED_OWNER, position, &shared.to_bytes())
    }

    fn raise(&mut self, fragment: FragmentId, next: u64) {
        let mark = self.marks.entry(fragment).or_insert(next);
        *mark = (*mark).max(next);
    }

    /// Applies `ops` of `fragment`.
    pub(crate) fn apply(
        &mut self,
        fragment: FragmentId,
        ops: &[WriteOp],
    ) -> Result<(), StorageError> {
        for op in ops {
            match op {
                WriteOp::PutMessage {
                    recipient,
                    sender,
                    client_msg_id,
                    id,
                    server_ts,
                    body,
                } => {
                    self.raise(fragment, seq_of_message_id(*id).saturating_add(1));
                    self.put_entry(fragment, recipient.as_str(), *id, body)?;
                    self.put_dedupe(
                        fragment,
                        recipient.as_str(),
                        sender.as_str(),
                        *client_msg_id,
                        (*id, *server_ts),
                    )?;
                }
                WriteOp::PutReceipt { owner, id, body } => {
                    self.raise(fragment, seq_of_message_id(*id).saturating_add(1));
                    self.put_entry(fragment, owner.as_str(), *id, body)?;
                }
                WriteOp::Delete { owner, ids } => {
                    let delivered = delivered_key(owner);
                    for id in ids {
                        let mark = self
                            .remove_entry(fragment, owner, *id)?
                            .map(|(from, stored_at)| DeliveredMark { from, stored_at });
                        if let Some(mark) = mark {
                            self.put_entry(fragment, &delivered, *id, &mark.to_bytes())?;
                        }
                    }
                }
                WriteOp::NextSeq(next) => self.raise(fragment, *next),
                WriteOp::SweepDedupe { before_ms, max } => {
                    self.sweep_dedupe(fragment, *before_ms, *max)?;
                    self.sweep_delivered_marks(fragment, *before_ms, *max)?;
                }
                WriteOp::PutAccount { user, record } => {
                    self.txn
                        .open_table(ACCOUNT_TABLE)?
                        .insert((fragment, user.as_str()), record.to_bytes().as_slice())?;
                }
                WriteOp::PutGroup { record } => {
                    self.raise(fragment, seq_of_message_id(record.id).saturating_add(1));
                    group_store::put_record(self.txn, fragment, record)?;
                }
                WriteOp::LogGroup {
                    group,
                    position,
                    item,
                    dedupe,
                } => {
                    self.raise(fragment, seq_of_message_id(*position).saturating_add(1));
                    group_store::put_log(self.txn, fragment, *group, *position, item)?;
                    if let GroupItem::Message {
                        from, server_ts, ..
                    } = item
                    {
                        let unticked = Unticked {
                            sender: from.clone(),
                            ts: *server_ts,
                            delivered: false,
                        };
                        group_store::put_unticked(
                            self.txn, fragment, *group, *position, &unticked,
                        )?;
                    }
                    if let Some((sender, client_msg_id)) = dedupe {
                        let key = match item {
                            GroupItem::Change {
                                change: GroupChange::Created { .. },
                                ..
                            } => group_store::GROUP_CREATE_KEY.to_owned(),
                            _ => group_store::group_dedupe_key(*group),
                        };
                        self.put_dedupe(
                            fragment,
                            &key,
                            sender.as_str(),
                            *client_msg_id,
                            (*position, item.ts()),
                        )?;
                    }
                }
                WriteOp::GroupFannedOut {
                    group,
                    through,
                    positions,
                } => {
                    group_store::fanned_out(self.txn, fragment, *group, *through, positions)?;
                }
                WriteOp::DeleteGroup { group } => {
                    group_store::delete_group(self.txn, fragment, *group)?;
                }
                WriteOp::PutGroupEntries {
                    group,
                    through,
                    entries,
                } => {
                    for (owner, id, body) in entries {
                        let membership = membership_change(owner, body);
                        self.put_member_entry(fragment, owner, *id, body, membership)?;
                        // The batch may hold items of an older era (a new
                        // owner resending its predecessor's log).
                        if let Some(position) = group_position(body)
                            && group_store::era_of(position) != group_store::era_of(*through)
                        {
                            group_store::raise_inbox(self.txn, fragment, *group, position)?;
                        }
                    }
                    group_store::raise_inbox(self.txn, fragment, *group, *through)?;
                }
                WriteOp::PutGroupShared {
                    group,
                    through,
                    items,
                    entries,
                } => {
                    for (position, item) in items {
                        // The batch may hold items of an older era (a new
                        // owner resending its predecessor's log).
                        if group_store::era_of(*position) != group_store::era_of(*through) {
                            group_store::raise_inbox(self.txn, fragment, *group, *position)?;
                        }
                        let Ok(item) = GroupItem::from_bytes(item) else {
                            tracing::error!(
                                fragment,
                                group,
                                position,
                                "skipping an unreadable group item"
                            );
                            continue;
                        };
                        let here: Vec<&(PhoneNumber, MessageId, Position)> =
                            entries.iter().filter(|(_, _, p)| p == position).collect();
                        // One recipient here: the item in its entry (shared,
                        // it would be two rows for one).
                        let body = match here.as_slice() {
                            [_] => EntryBody::Group {
                                group: *group,
                                position: *position,
                                item: item.clone(),
                            },
                            _ => {
                                let members = here.iter().map(|(m, _, _)| m.clone()).collect();
                                self.put_shared(fragment, *group, *position, &item, members)?;
                                EntryBody::GroupRef {
                                    group: *group,
                                    position: *position,
                                    ts: item.ts(),
                                }
                            }
                        }
                        .to_bytes();
                        for (owner, id, _) in here {
                            let membership = item_membership_change(owner, *group, &item);
                            self.put_member_entry(fragment, owner, *id, &body, membership)?;
                        }
                    }
                    group_store::raise_inbox(self.txn, fragment, *group, *through)?;
                }
                WriteOp::GroupGap { group, from, to } => {
                    group_store::put_gap(self.txn, fragment, *group, *from, *to)?;
                    group_store::raise_inbox(self.txn, fragment, *group, *to)?;
                }
                WriteOp::GroupGapFilled { group, positions } => {
                    group_store::fill_gaps(self.txn, fragment, *group, positions)?;
                }
                WriteOp::GroupCursors { group, cursors } => {
                    group_store::raise_cursors(self.txn, fragment, *group, cursors)?;
                }
                WriteOp::GroupTicked {
                    group,
                    delivered,
                    done,
                } => {
                    group_store::ticked(self.txn, fragment, *group, delivered, done)?;
                }
            }
        }
        Ok(())
    }

    /// Removes up to `max` dedupe keys of `fragment` stored before
    /// `before_ms`, the first in key order (staged ones too: the result
    /// must not depend on when checkpoints came, so that both copies of a
    /// fragment sweep the same keys).
    fn sweep_dedupe(
        &mut self,
        fragment: FragmentId,
        before_ms: TimestampMs,
        max: usize,
    ) -> Result<(), StorageError> {
        let staged = self.stage.as_ref().map_or_else(Vec::new, |stage| {
            stage.dedupe.writer_range(
                (fragment, String::new(), String::new(), 0)
                    ..=(
                        fragment,
                        LAST_OWNER.to_owned(),
                        LAST_OWNER.to_owned(),
                        u64::MAX,
                    ),
            )
        });
        let mut expired: Vec<DedupeKey> = Vec::new();
        merge_sorted(
            staged,
            self.dedupe
                .range((fragment, "", "", 0)..)?
                .map(|item| item.map_err(StorageError::from)),
            |(key, _), (stored, _)| {
                let (f, r, s, c) = stored.value();
                (key.0, key.1.as_str(), key.2.as_str(), key.3).cmp(&(f, r, s, c))
            },
            |row| {
                let (key, at) = match row {
                    Row::Staged((key, (_, at))) => (key.clone(), *at),
                    Row::Stored((key, value)) => {
                        let (f, r, s, c) = key.value();
                        if f != fragment {
                            return false;
                        }
                        ((f, r.to_owned(), s.to_owned(), c), value.value().1)
                    }
                };
                if at < before_ms {
                    expired.push(key);
                }
                expired.is_empty() || expired.len() < max
            },
        )?;
        for key in &expired {
            if let Some(stage) = &self.stage {
                stage.dedupe.take(key);
            }
            let (f, r, s, c) = key;
            self.dedupe.remove((*f, r.as_str(), s.as_str(), *c))?;
        }
        Ok(())
    }

    /// Removes up to `max` delivered marks of `fragment` stored before
    /// `before_ms` (as [`Self::sweep_dedupe`]).
    fn sweep_delivered_marks(
        &mut self,
        fragment: FragmentId,
        before_ms: TimestampMs,
        max: usize,
    ) -> Result<(), StorageError> {
        let staged = self.stage.as_ref().map_or_else(Vec::new, |stage| {
            stage.entries.writer_range(
                (fragment, String::new(), 0)..=(fragment, LAST_OWNER.to_owned(), MessageId::MAX),
            )
        });
        let mut expired: Vec<EntryKey> = Vec::new();
        merge_mbox(
            staged,
            self.mbox
                .range((fragment, "", 0)..)?
                .map(|item| item.map_err(StorageError::from)),
            |f, owner, id, bytes| {
                if f != fragment {
                    return false;
                }
                if !owner.ends_with(DELIVERED_SUFFIX) {
                    return true;
                }
                let stale =
                    DeliveredMark::from_bytes(bytes).is_none_or(|mark| mark.stored_at < before_ms);
                if stale {
                    expired.push((f, owner.to_owned(), id));
                }
                expired.is_empty() || expired.len() < max
            },
        )?;
        for key in &expired {
            if let Some(stage) = &self.stage {
                stage.entries.take(key);
            }
            self.mbox.remove((key.0, key.1.as_str(), key.2))?;
        }
        Ok(())
    }

    /// Raises the id marks the applied ops need.
    pub(crate) fn finish(self) -> Result<(), StorageError> {
        let Self {
            txn,
            mbox,
            dedupe,
            marks,
            stage: _,
        } = self;
        drop((mbox, dedupe));
        if marks.is_empty() {
            return Ok(());
        }
        let mut seq = txn.open_table(SEQ_TABLE)?;
        for (fragment, next) in marks {
            raise_mark(&mut seq, fragment, next)?;
        }
        Ok(())
    }
}

/// Raises the id high-water mark of `fragment` to `next` unless it is
/// higher already (see the module docs for why it never falls).
pub(crate) fn raise_next_seq(
    txn: &WriteTransaction,
    fragment: FragmentId,
    next: u64,
) -> Result<(), StorageError> {
    raise_mark(&mut txn.open_table(SEQ_TABLE)?, fragment, next)
}

fn raise_mark(
    seq: &mut Table<'_, u16, u64>,
    fragment: FragmentId,
    next: u64,
) -> Result<(), StorageError> {
    let current = seq.get(fragment)?.map(|v| v.value());
    if current.is_none_or(|current| current < next) {
        seq.insert(fragment, next)?;
    }
    Ok(())
}

/// What follows an owner in its delivered key (see the module docs): `/`
/// sorts between the owner and any longer number that starts with it.
const DELIVERED_SUFFIX: char = '/';

/// The `mbox` owner key under which `owner`'s delivered marks are kept.
fn delivered_key(owner: &PhoneNumber) -> String {
    format!("{owner}{DELIVERED_SUFFIX}")
}

/// The reads a fragment core needs (an in-memory impl serves its tests).
pub trait MailboxRead {
    /// The stored id and time of a message with this dedupe key.
    fn dedupe(
        &self,
        recipient: &PhoneNumber,
        sender: &PhoneNumber,
        client_msg_id: u64,
    ) -> Result<Option<(MessageId, TimestampMs)>, FragmentError>;
    /// Up to `limit` entries of `owner` with ids above `after`, oldest first.
    fn page(
        &self,
        owner: &PhoneNumber,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Entry>, FragmentError>;
    /// One entry of `owner`.
    fn entry(&self, owner: &PhoneNumber, id: MessageId)
    -> Result<Option<EntryBody>, FragmentError>;
    /// For each of `ids`, the sender of that message to `owner` if it is
    /// in `owner`'s mailbox or was delivered to `owner` (and its mark not
    /// yet swept); `None` for receipts and unknown ids.
    fn senders(
        &self,
        owner: &PhoneNumber,
        ids: &[MessageId],
    ) -> Result<Vec<Option<PhoneNumber>>, FragmentError>;
    /// The undelivered mail of every user of the fragment, by sender.
    fn usage(&self) -> Result<MailboxUsage, FragmentError>;
    /// `user`'s account record (version 0 if none).
    fn account(&self, user: &PhoneNumber) -> Result<AccountRecord, FragmentError>;
    /// Entries stored before `before_ms`, looking at up to `max_scan`
    /// entries after `resume` (from the start if `None`).
    fn expired(
        &self,
        resume: Option<&(PhoneNumber, MessageId)>,
        before_ms: TimestampMs,
        max_scan: usize,
    ) -> Result<ExpiryScan, FragmentError>;
}

/// An entry past its time in the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredEntry {
    /// The mailbox owner.
    pub owner: PhoneNumber,
    /// The entry.
    pub id: MessageId,
    /// A message's sender (`None`: a receipt).
    pub sender: Option<PhoneNumber>,
    /// A message's payload bytes.
    pub payload_len: u64,
}

/// One step of a scan for expired entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExpiryScan {
    /// What is past its time.
    pub expired: Vec<ExpiredEntry>,
    /// Where the next step goes on (`None`: the fragment was scanned to
    /// its end; start again from the beginning).
    pub resume: Option<(PhoneNumber, MessageId)>,
}

/// [`MailboxRead`] over the node's database (and its staged entries, see
/// [`crate::staged`]).
#[derive(Clone)]
pub struct RedbMailbox {
    store: Store,
    fragment: FragmentId,
    stage: Arc<MailboxStage>,
}

pub(crate) fn storage(e: impl std::fmt::Display) -> FragmentError {
    FragmentError::Storage(e.to_string())
}

impl RedbMailbox {
    /// `body` as a mailbox shows it: a group reference with the item it
    /// points to (`None`, logged, if that is missing or unreadable: the
    /// rest of the mailbox goes on).
    fn resolve(
        &self,
        table: Option<&MboxReadTable>,
        id: MessageId,
        body: EntryBody,
    ) -> Result<Option<EntryBody>, FragmentError> {
        let EntryBody::GroupRef {
            group, position, ..
        } = body
        else {
            return Ok(Some(body));
        };
        let key = (self.fragment, SHARED_OWNER.to_owned(), position);
        let row = match self.stage.entries.get(&key) {
            Some(row) => Some(row),
            None => match table {
                Some(table) => table
                    .get((self.fragment, SHARED_OWNER, position))
                    .map_err(storage)?
                    .map(|value| value.value().to_vec()),
                None => None,
            },
        };
        match row.map(|row| SharedItem::from_bytes(&row)) {
            Some(Ok(shared)) => Ok(Some(EntryBody::Group {
                group,
                position,
                item: shared.item,
            })),
            _ => {
                tracing::error!(
                    fragment = self.fragment,
                    id,
                    group,
                    position,
                    "skipping a group entry whose item is missing or unreadable"
                );
                Ok(None)
            }
        }
    }

    /// Live entries of the fragment from `start` on (delivered marks and
    /// unreadable rows skipped), with their heads, until `visit` says stop.
    fn scan_entries(
        &self,
        start: Option<&(PhoneNumber, MessageId)>,
        mut visit: impl FnMut(PhoneNumber, MessageId, crate::entry::StoredHead) -> bool,
    ) -> Result<(), FragmentError> {
        let _view = self.store.view();
        let read = self.store.db().begin_read().map_err(storage)?;
        let from = start.map(|(owner, id)| (owner.as_str(), id.saturating_add(1)));
        let staged = self.stage.fragment_entries(self.fragment, from);
        let table = match read.open_table(MBOX_TABLE) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        };
        let first = from.unwrap_or(("", 0));
        let stored = match &table {
            Some(table) => Some(
                table
                    .range(
                        (self.fragment, first.0, first.1)..=(self.fragment, LAST_OWNER, u64::MAX),
                    )
                    .map_err(storage)?,
            ),
            None => None,
        };
        merge_mbox(
            staged,
            stored
                .into_iter()
                .flatten()
                .map(|item| item.map_err(storage)),
            |_, owner, id, bytes| {
                // Delivered marks are not entries.
                if owner.ends_with(DELIVERED_SUFFIX) {
                    return true;
                }
                let (Ok(owner), Some(head)) = (PhoneNumber::parse(owner), stored_head(bytes))
                else {
                    return true;
                };
                visit(owner, id, head)
            },
        )
    }

    /// The tables of `fragment` in `store`.
    pub fn new(store: Store, fragment: FragmentId) -> Self {
        let stage = store.stage::<MailboxStage>();
        Self {
            store,
            fragment,
            stage,
        }
    }

    /// The node's database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The fragment it reads.
    pub fn fragment(&self) -> FragmentId {
        self.fragment
    }

    /// The persisted next sequence of this fragment (1 for a new fragment).
    pub fn next_seq(&self) -> Result<u64, FragmentError> {
        let read = self.store.db().begin_read().map_err(storage)?;
        match read.open_table(SEQ_TABLE) {
            Ok(table) => Ok(table
                .get(self.fragment)
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(1)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(1),
            Err(e) => Err(storage(e)),
        }
    }
}

/// The `mbox` table in a read transaction.
type MboxReadTable = redb::ReadOnlyTable<(u16, &'static str, u64), &'static [u8]>;

impl RedbMailbox {
    /// A dedupe key's stored id and time; `recipient` is a number or a
    /// group's key ([`crate::group_store`]). Staged keys first.
    pub(crate) fn dedupe_key(
        &self,
        recipient: &str,
        sender: &PhoneNumber,
        client_msg_id: u64,
    ) -> Result<Option<(MessageId, TimestampMs)>, FragmentError> {
        let _view = self.store.view();
        let staged = self.stage.dedupe.get(&(
            self.fragment,
            recipient.to_owned(),
            sender.as_str().to_owned(),
            client_msg_id,
        ));
        if staged.is_some() {
            return Ok(staged);
        }
        let read = self.store.db().begin_read().map_err(storage)?;
        let table = match read.open_table(DEDUPE_TABLE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        Ok(table
            .get((self.fragment, recipient, sender.as_str(), client_msg_id))
            .map_err(storage)?
            .map(|v| v.value()))
    }

    /// The sender of message `id` to `owner`: from its entry, or once
    /// delivered from its mark; staged first (see [`MailboxRead::senders`]).
    fn sender(
        &self,
        table: Option<&MboxReadTable>,
        owner: &PhoneNumber,
        delivered: &str,
        id: MessageId,
    ) -> Result<Option<PhoneNumber>, FragmentError> {
        let staged = |owner: &str| {
            self.stage
                .entries
                .get(&(self.fragment, owner.to_owned(), id))
        };
        let stored = |owner: &str| -> Result<Option<Vec<u8>>, FragmentError> {
            let Some(table) = table else {
                return Ok(None);
            };
            Ok(table
                .get((self.fragment, owner, id))
                .map_err(storage)?
                .map(|value| value.value().to_vec()))
        };
        let live = match staged(owner.as_str()) {
            Some(body) => Some(body),
            None => stored(owner.as_str())?,
        };
        if let Some(body) = live {
            return Ok(message_sender(&body).map(|(from, _)| from));
        }
        let mark = match staged(delivered) {
            Some(mark) => Some(mark),
            None => stored(delivered)?,
        };
        Ok(mark
            .and_then(|mark| DeliveredMark::from_bytes(&mark))
            .map(|mark| mark.from))
    }
}

impl MailboxRead for RedbMailbox {
    fn account(&self, user: &PhoneNumber) -> Result<AccountRecord, FragmentError> {
        let read = self.store.db().begin_read().map_err(storage)?;
        let table = match read.open_table(ACCOUNT_TABLE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(AccountRecord::default()),
            Err(e) => return Err(storage(e)),
        };
        match table.get((self.fragment, user.as_str())).map_err(storage)? {
            Some(bytes) => AccountRecord::from_bytes(bytes.value())
                .ok_or_else(|| storage(format!("unreadable account record of {user}"))),
            None => Ok(AccountRecord::default()),
        }
    }

    fn dedupe(
        &self,
        recipient: &PhoneNumber,
        sender: &PhoneNumber,
        client_msg_id: u64,
    ) -> Result<Option<(MessageId, TimestampMs)>, FragmentError> {
        self.dedupe_key(recipient.as_str(), sender, client_msg_id)
    }

    fn page(
        &self,
        owner: &PhoneNumber,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Entry>, FragmentError> {
        let _view = self.store.view();
        let read = self.store.db().begin_read().map_err(storage)?;
        let start = after.map_or(0, |a| a.saturating_add(1));
        let staged = self
            .stage
            .owner_entries(self.fragment, owner.as_str(), start);
        let table = match read.open_table(MBOX_TABLE) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        };
        let stored = match &table {
            Some(table) => Some(
                table
                    .range(
                        (self.fragment, owner.as_str(), start)
                            ..=(self.fragment, owner.as_str(), u64::MAX),
                    )
                    .map_err(storage)?,
            ),
            None => None,
        };
        let mut entries = Vec::new();
        let mut failed = None;
        merge_mbox(
            staged,
            stored
                .into_iter()
                .flatten()
                .map(|item| item.map_err(storage)),
            |_, _, id, bytes| {
                match EntryBody::from_bytes(bytes) {
                    Ok(body) => match self.resolve(table.as_ref(), id, body) {
                        Ok(Some(body)) => entries.push(Entry { id, body }),
                        Ok(None) => {}
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    },
                    // One unreadable entry must not block the rest of the mailbox.
                    Err(e) => tracing::error!(fragment = self.fragment, id, error = %e,
                        "skipping a corrupt mailbox entry"),
                }
                entries.len() < limit
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(entries)
    }

    fn entry(
        &self,
        owner: &PhoneNumber,
        id: MessageId,
    ) -> Result<Option<EntryBody>, FragmentError> {
        let _view = self.store.view();
        let read = self.store.db().begin_read().map_err(storage)?;
        let table = match read.open_table(MBOX_TABLE) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        };
        let decode = |bytes: &[u8]| {
            let body = EntryBody::from_bytes(bytes)
                .map_err(|e| FragmentError::Storage(format!("corrupt entry {id}: {e}")))?;
            self.resolve(table.as_ref(), id, body)
        };
        if let Some(body) = self
            .stage
            .entries
            .get(&(self.fragment, owner.as_str().to_owned(), id))
        {
            return decode(&body);
        }
        let Some(table) = &table else {
            return Ok(None);
        };
        match table
            .get((self.fragment, owner.as_str(), id))
            .map_err(storage)?
        {
            Some(value) => decode(value.value()),
            None => Ok(None),
        }
    }

    fn senders(
        &self,
        owner: &PhoneNumber,
        ids: &[MessageId],
    ) -> Result<Vec<Option<PhoneNumber>>, FragmentError> {
        let _view = self.store.view();
        let read = self.store.db().begin_read().map_err(storage)?;
        let table = match read.open_table(MBOX_TABLE) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        };
        let delivered = delivered_key(owner);
        let mut senders = Vec::with_capacity(ids.len());
        for &id in ids {
            senders.push(self.sender(table.as_ref(), owner, &delivered, id)?);
        }
        Ok(senders)
    }

    fn usage(&self) -> Result<MailboxUsage, FragmentError> {
        let mut usage = MailboxUsage::default();
        self.scan_entries(None, |owner, _, head| {
            if let Some(sender) = head.sender {
                usage.add(&owner, &sender, head.payload_len);
            }
            true
        })?;
        Ok(usage)
    }

    fn expired(
        &self,
        resume: Option<&(PhoneNumber, MessageId)>,
        before_ms: TimestampMs,
        max_scan: usize,
    ) -> Result<ExpiryScan, FragmentError> {
        let mut scan = ExpiryScan::default();
        let mut seen = 0;
        self.scan_entries(resume, |owner, id, head| {
            seen += 1;
            if head.at < before_ms {
                scan.expired.push(ExpiredEntry {
                    owner: owner.clone(),
                    id,
                    sender: head.sender,
                    payload_len: head.payload_len,
                });
            }
            if seen >= max_scan {
                scan.resume = Some((owner, id));
                return false;
            }
            true
        })?;
        Ok(scan)
    }
}

const LAYOUT_TABLE: TableDefinition<&str, u64> = TableDefinition::new("mailbox_layout");

/// The version of the data directory's format this build writes: raised by
/// a release that changes what is stored in a way an older build would
/// misread (after migrating older data at start).
pub const DATA_FORMAT: u64 = 1;

/// Records [`DATA_FORMAT`] in a new data directory (and in one written
/// before versions were recorded, whose format is 1), and refuses data
/// written by a newer build: an older node would misread it. Returns the
/// version that was recorded before.
pub async fn ensure_data_format(store: &Store) -> Result<u64, FragmentError> {
    check_data_format(store, DATA_FORMAT).await
}

/// [`ensure_data_format`] for a build that writes `this_build`.
pub async fn check_data_format(store: &Store, this_build: u64) -> Result<u64, FragmentError> {
    let recorded = store
        .write(move |txn| {
            let mut table = txn.open_table(LAYOUT_TABLE)?;
            let recorded = table.get("format")?.map_or(1, |v| v.value());
            if recorded <= this_build {
                table.insert("format", this_build)?;
            }
            Ok(recorded)
        })
        .await
        .map_err(storage)?;
    if recorded > this_build {
        return Err(FragmentError::Storage(format!(
            "this data directory holds data format {recorded}, written by a newer \
             Switchboard; this build reads formats up to {this_build}: run the newer \
             build, or restore a backup taken by this one"
        )));
    }
    Ok(recorded)
}

/// Records the fragment count on first start and refuses a different one
/// later: placement depends on it, so changing it would strand every mailbox.
pub async fn ensure_fragment_count(store: &Store, fragments: u16) -> Result<(), FragmentError> {
    let recorded = store
        .write(move |txn| {
            let mut table = txn.open_table(LAYOUT_TABLE)?;
            let existing = table.get("fragments")?.map(|v| v.value());
            if existing.is_none() {
                table.insert("fragments", u64::from(fragments))?;
            }
            Ok(existing)
        })
        .await
        .map_err(storage)?;
    match recorded {
        Some(n) if n != u64::from(fragments) => Err(FragmentError::Storage(format!(
            "this data directory was created with {n} fragments, not {fragments}; \
             the fragment count cannot change"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::numbered as phone;

    fn message(to: u64, from: u64, id: MessageId, at: TimestampMs) -> WriteOp {
        let body = EntryBody::Message {
            from: phone(from),
            client_msg_id: id,
            server_ts: at,
            payload: b"x".to_vec(),
        };
        WriteOp::PutMessage {
            recipient: phone(to),
            sender: phone(from),
            client_msg_id: id,
            id,
            server_ts: at,
            body: body.to_bytes(),
        }
    }

    async fn apply(store: &Store, ops: Vec<WriteOp>) {
        store
            .write(move |txn| apply_ops(txn, 3, &ops))
            .await
            .expect("write");
    }

    /// A deleted message leaves a mark naming its sender; the mark is not
    /// an entry of the mailbox (nor of a number that extends the owner's),
    /// answers `senders` like the live entry did, and is swept with the
    /// dedupe keys of its time.
    #[tokio::test]
    async fn a_delivered_message_leaves_a_mark_until_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("m.redb"), Default::default()).expect("open");
        let reads = RedbMailbox::new(store.clone(), 3);
        let longer = PhoneNumber::parse("+155500000010").expect("phone");
        apply(
            &store,
            vec![
                message(1, 2, 10, 100),
                message(1, 2, 11, 200),
                WriteOp::PutMessage {
                    recipient: longer.clone(),
                    sender: phone(2),
                    client_msg_id: 1,
                    id: 12,
                    server_ts: 100,
                    body: EntryBody::Message {
                        from: phone(2),
                        client_msg_id: 1,
                        server_ts: 100,
                        payload: Vec::new(),
                    }
                    .to_bytes(),
                },
            ],
        )
        .await;
        let before = reads
            .senders(&phone(1), &[10, 11, 12, 99])
            .expect("senders");
        assert_eq!(before, vec![Some(phone(2)), Some(phone(2)), None, None]);

        apply(
            &store,
            vec![WriteOp::Delete {
                owner: phone(1),
                ids: vec![10, 11],
            }],
        )
        .await;
        assert!(reads.page(&phone(1), None, 10).expect("page").is_empty());
        assert_eq!(reads.page(&longer, None, 10).expect("page").len(), 1);
        assert_eq!(
            reads.senders(&phone(1), &[10, 11, 12]).expect("senders"),
            vec![Some(phone(2)), Some(phone(2)), None]
        );

        apply(
            &store,
            vec![WriteOp::SweepDedupe {
                before_ms: 150,
                max: 100,
            }],
        )
        .await;
        assert_eq!(
            reads.senders(&phone(1), &[10, 11]).expect("senders"),
            vec![None, Some(phone(2))],
            "the older mark is swept"
        );
        assert_eq!(reads.page(&longer, None, 10).expect("page").len(), 1);
    }
}
