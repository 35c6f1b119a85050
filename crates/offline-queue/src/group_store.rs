//! The group tables in the node's redb database. Like the mailbox tables,
//! every key starts with the fragment, so a fragment's groups are one range
//! of each table and are copied, replicated and merged with it.
//!
//! At a group's home fragment:
//! - `group_record`: `(fragment, group) → postcard(GroupRecord)`.
//! - `group_log`: `(fragment, group, position) → postcard(GroupItem)`: what
//!   is logged and not yet fanned out to every member's fragment; deleted
//!   once fan-out has passed it, so the log holds what is in transit.
//! - `group_fanout`: `(fragment, group) → position` fan-out has handed
//!   to every destination fragment (everything up to it, included).
//! - `group_gap`: `(fragment, group, from) → to`: stretches of positions
//!   fan-out passed while another owner of this fragment confirmed them
//!   (seen when a batch starts above this fragment's mark); a merge of
//!   that owner's writes keeps their items there. The newest
//!   [`MAX_GAPS`] per group are kept.
//!
//! At a group's home:
//! - `group_cursor`: `(fragment, group, member) → (delivered, read)`: how
//!   far each member has received and read the group
//!   ([`crate::group_ticks`]); only ever raised.
//! - `group_unticked`: `(fragment, group, position) → postcard(Unticked)`:
//!   messages not yet read by every member, whose ticks are still to come.
//! - a group send's dedupe key is a row of the mailbox `dedupe` table,
//!   under the recipient key [`group_dedupe_key`], swept with the others.
//!
//! At every fragment holding a member:
//! - the group's items, once each, in the `mbox` table under the owner
//!   [`crate::entry::SHARED_OWNER`], referenced from members' mailboxes
//!   (see [`crate::entry::SharedItem`]).
//! - `group_member_of`: `(fragment, user, group) → ()`: the groups a user
//!   of this fragment is in, kept by the fanned-out changes that add or
//!   remove the user as they are stored in its mailbox (so it is
//!   replicated and copied with the mailbox, and needs no other write).
//! - `group_inbox`: `(fragment, group, era) → position` up to which this
//!   fragment has stored the group's items of that era in its members'
//!   mailboxes: fan-out sends positions in order and resends after a
//!   failure, and what is at or below the mark is not stored again. An
//!   *era* is the half-block of ids a home's owner gives out from
//!   ([`era_of`]): a node that takes the home over starts a fresh one, so
//!   two owners at once (both sides of a partition) never share a mark,
//!   and neither's positions hide the other's.

use proto::{PhoneNumber, TimestampMs};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use router::FragmentId;
use storage::StorageError;

use crate::FragmentError;
use crate::entry::GroupItem;
use crate::group::{GroupId, GroupRecord, Position};
use crate::group_ticks::{Cursor, Ticks, Unticked};
use crate::store::{RedbMailbox, storage};

pub(crate) const GROUP_RECORD_TABLE: TableDefinition<(u16, u64), &[u8]> =
    TableDefinition::new("group_record");
pub(crate) const GROUP_LOG_TABLE: TableDefinition<(u16, u64, u64), &[u8]> =
    TableDefinition::new("group_log");
pub(crate) const GROUP_FANOUT_TABLE: TableDefinition<(u16, u64), u64> =
    TableDefinition::new("group_fanout");
pub(crate) const GROUP_INBOX_TABLE: TableDefinition<(u16, u64, u64), u64> =
    TableDefinition::new("group_inbox");
pub(crate) const GROUP_GAP_TABLE: TableDefinition<(u16, u64, u64), u64> =
    TableDefinition::new("group_gap");

/// Gaps kept per group (each is a take-over or a cut that overlapped a
/// fan-out; more are rare, and the oldest matter least).
pub const MAX_GAPS: usize = 16;

pub(crate) const GROUP_CURSOR_TABLE: TableDefinition<(u16, u64, &str), (u64, u64)> =
    TableDefinition::new("group_cursor");
pub(crate) const GROUP_UNTICKED_TABLE: TableDefinition<(u16, u64, u64), &[u8]> =
    TableDefinition::new("group_unticked");

/// The era of a position: the half-block of sequence numbers it comes
/// from (see `replica::takeover_seq`: every owner that takes a fragment
/// over, or serves it again after a restart, starts a fresh half-block).
pub fn era_of(position: Position) -> u64 {
    crate::entry::seq_of_message_id(position) / (crate::replica::TAKEOVER_SEQ_GAP / 2)
}

/// The position just below the first of `position`'s era.
pub(crate) fn below_era(position: Position) -> Position {
    let first = crate::entry::compose_message_id(
        crate::entry::fragment_of_message_id(position),
        era_of(position) * (crate::replica::TAKEOVER_SEQ_GAP / 2),
    );
    first.saturating_sub(1)
}
pub(crate) const GROUP_MEMBER_OF_TABLE: TableDefinition<(u16, &str, u64), ()> =
    TableDefinition::new("group_member_of");

/// `user` joined (`true`) or left `group`, as a stored change says.
pub(crate) fn note_membership(
    txn: &WriteTransaction,
    fragment: FragmentId,
    user: &str,
    group: GroupId,
    joined: bool,
) -> Result<(), StorageError> {
    let mut table = txn.open_table(GROUP_MEMBER_OF_TABLE)?;
    if joined {
        table.insert((fragment, user, group), ())?;
    } else {
        table.remove((fragment, user, group))?;
    }
    Ok(())
}

/// The `dedupe` table's recipient key for sends to `group`: `#` sorts
/// before the `+` of every phone number, so a fragment's group keys are
/// one range, swept with the rest.
pub(crate) fn group_dedupe_key(group: GroupId) -> String {
    format!("#{group:016x}")
}

/// The `dedupe` table's recipient key for creations with a create id
/// (`Request::CreateGroupOnce`): by creator and create id → the group.
/// Of the group keys' range, and never one of them (they are longer).
pub(crate) const GROUP_CREATE_KEY: &str = "#new";

impl GroupRecord {
    /// The encoded record (postcard), as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// A stored record; `None` if unreadable.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Stores `record` (the group's whole row).
pub(crate) fn put_record(
    txn: &WriteTransaction,
    fragment: FragmentId,
    record: &GroupRecord,
) -> Result<(), StorageError> {
    txn.open_table(GROUP_RECORD_TABLE)?
        .insert((fragment, record.id), record.to_bytes().as_slice())?;
    Ok(())
}

/// Forgets a group that every member has left, with what is left of it.
pub(crate) fn delete_group(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
) -> Result<(), StorageError> {
    txn.open_table(GROUP_RECORD_TABLE)?
        .remove((fragment, group))?;
    txn.open_table(GROUP_FANOUT_TABLE)?
        .remove((fragment, group))?;
    txn.open_table(GROUP_LOG_TABLE)?.retain_in(
        (fragment, group, 0)..=(fragment, group, u64::MAX),
        |_, _| false,
    )?;
    txn.open_table(GROUP_UNTICKED_TABLE)?.retain_in(
        (fragment, group, 0)..=(fragment, group, u64::MAX),
        |_, _| false,
    )?;
    txn.open_table(GROUP_CURSOR_TABLE)?.retain_in(
        (fragment, group, "")..=(fragment, group, "\u{10FFFF}"),
        |_, _| false,
    )?;
    Ok(())
}

/// Records the gap `(from, to]` of `group`, dropping the oldest beyond
/// [`MAX_GAPS`].
pub(crate) fn put_gap(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    from: Position,
    to: Position,
) -> Result<(), StorageError> {
    let mut table = txn.open_table(GROUP_GAP_TABLE)?;
    table.insert((fragment, group, from), to)?;
    let mut starts = Vec::new();
    for row in table.range((fragment, group, 0)..=(fragment, group, u64::MAX))? {
        starts.push(row?.0.value().2);
    }
    for start in starts.iter().take(starts.len().saturating_sub(MAX_GAPS)) {
        tracing::warn!(fragment, group, from = start, "dropping an old fan-out gap");
        table.remove((fragment, group, *start))?;
    }
    Ok(())
}

/// Takes `positions` out of `group`'s gaps (split around each).
pub(crate) fn fill_gaps(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    positions: &[Position],
) -> Result<(), StorageError> {
    let mut table = txn.open_table(GROUP_GAP_TABLE)?;
    for position in positions {
        let below = table
            .range((fragment, group, 0)..(fragment, group, *position))?
            .next_back()
            .transpose()?
            .map(|(key, to)| (key.value().2, to.value()));
        let Some((from, to)) = below.filter(|(_, to)| position <= to) else {
            continue;
        };
        table.remove((fragment, group, from))?;
        if position.saturating_sub(1) > from {
            table.insert((fragment, group, from), position - 1)?;
        }
        if to > *position {
            table.insert((fragment, group, *position), to)?;
        }
    }
    Ok(())
}

/// A message logged at `position` waits for its ticks.
pub(crate) fn put_unticked(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    position: Position,
    unticked: &Unticked,
) -> Result<(), StorageError> {
    txn.open_table(GROUP_UNTICKED_TABLE)?
        .insert((fragment, group, position), unticked.to_bytes().as_slice())?;
    Ok(())
}

/// Raises members' cursors (never lowers one: updates made apart, or
/// out of order, agree whatever their order).
pub(crate) fn raise_cursors(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    cursors: &[(PhoneNumber, Position, Position)],
) -> Result<(), StorageError> {
    let mut table = txn.open_table(GROUP_CURSOR_TABLE)?;
    for (member, delivered, read) in cursors {
        let key = (fragment, group, member.as_str());
        let (was_delivered, was_read) = table.get(key)?.map_or((0, 0), |v| v.value());
        table.insert(key, (was_delivered.max(*delivered), was_read.max(*read)))?;
    }
    Ok(())
}

/// Ticks were settled: `delivered` messages were told delivered to all,
/// `done` ones need nothing more.
pub(crate) fn ticked(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    delivered: &[Position],
    done: &[Position],
) -> Result<(), StorageError> {
    let mut table = txn.open_table(GROUP_UNTICKED_TABLE)?;
    for position in delivered {
        let key = (fragment, group, *position);
        let row = table
            .get(key)?
            .and_then(|v| Unticked::from_bytes(v.value()));
        if let Some(mut row) = row {
            row.delivered = true;
            table.insert(key, row.to_bytes().as_slice())?;
        }
    }
    for position in done {
        table.remove((fragment, group, *position))?;
    }
    Ok(())
}

/// Logs `item` at `position` of `group`.
pub(crate) fn put_log(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    position: Position,
    item: &GroupItem,
) -> Result<(), StorageError> {
    txn.open_table(GROUP_LOG_TABLE)?
        .insert((fragment, group, position), item.to_bytes().as_slice())?;
    Ok(())
}

/// Fan-out of `group` has passed `through`: its log up to there goes.
pub(crate) fn fanned_out(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    through: Position,
    positions: &[Position],
) -> Result<(), StorageError> {
    let mut marks = txn.open_table(GROUP_FANOUT_TABLE)?;
    let current = marks.get((fragment, group))?.map(|v| v.value());
    if current.is_none_or(|current| current < through) {
        marks.insert((fragment, group), through)?;
    }
    let mut log = txn.open_table(GROUP_LOG_TABLE)?;
    for position in positions {
        log.remove((fragment, group, *position))?;
    }
    Ok(())
}

/// This fragment has stored `group`'s items of the era of `through` up
/// to `through`.
pub(crate) fn raise_inbox(
    txn: &WriteTransaction,
    fragment: FragmentId,
    group: GroupId,
    through: Position,
) -> Result<(), StorageError> {
    let mut marks = txn.open_table(GROUP_INBOX_TABLE)?;
    let key = (fragment, group, era_of(through));
    let current = marks.get(key)?.map(|v| v.value());
    if current.is_none_or(|current| current < through) {
        marks.insert(key, through)?;
    }
    Ok(())
}

/// The group reads a fragment core needs.
pub trait GroupRead {
    /// The record of `group`, if this fragment holds it.
    fn group(&self, group: GroupId) -> Result<Option<GroupRecord>, FragmentError>;
    /// The log of `group` above `after`, oldest first, at most `limit`.
    fn group_log(
        &self,
        group: GroupId,
        after: Position,
        limit: usize,
    ) -> Result<Vec<(Position, GroupItem)>, FragmentError>;
    /// How far fan-out of `group` has gone (0: nothing yet).
    fn group_fanned_out(&self, group: GroupId) -> Result<Position, FragmentError>;
    /// Groups of this fragment with a log still to fan out.
    fn groups_with_log(&self) -> Result<Vec<GroupId>, FragmentError>;
    /// Up to where this fragment has stored `group`'s items of `era` (0:
    /// nothing).
    fn group_inbox(&self, group: GroupId, era: u64) -> Result<Position, FragmentError>;
    /// The groups `user` (of this fragment) is in.
    fn groups_of(&self, user: &PhoneNumber) -> Result<Vec<GroupId>, FragmentError>;
    /// Whether `position` of `group` lies in a gap this fragment recorded.
    fn in_group_gap(&self, group: GroupId, position: Position) -> Result<bool, FragmentError>;
    /// `group`'s member cursors and unticked messages.
    fn group_ticks(&self, group: GroupId) -> Result<Ticks, FragmentError>;
    /// The position and time of `sender`'s send `client_msg_id` to `group`.
    fn group_dedupe(
        &self,
        group: GroupId,
        sender: &PhoneNumber,
        client_msg_id: u64,
    ) -> Result<Option<(Position, TimestampMs)>, FragmentError>;
    /// The group `creator` created with `create_id`, if its key is kept.
    fn group_created(
        &self,
        creator: &PhoneNumber,
        create_id: u64,
    ) -> Result<Option<GroupId>, FragmentError>;
}

/// Opens `table` in `read`; `None` if it was never written.
fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, FragmentError> {
    match read.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage(e)),
    }
}

impl GroupRead for RedbMailbox {
    fn in_group_gap(&self, group: GroupId, position: Position) -> Result<bool, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let Some(table) = open(&read, GROUP_GAP_TABLE)? else {
            return Ok(false);
        };
        let f = self.fragment();
        // The last gap starting below `position` is the only one that
        // can hold it (gaps of one group do not overlap).
        let below = table
            .range((f, group, 0)..(f, group, position))
            .map_err(storage)?
            .next_back();
        match below {
            Some(row) => {
                let (_, to) = row.map_err(storage)?;
                Ok(position <= to.value())
            }
            None => Ok(false),
        }
    }

    fn group_ticks(&self, group: GroupId) -> Result<Ticks, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let f = self.fragment();
        let mut cursors = Vec::new();
        if let Some(table) = open(&read, GROUP_CURSOR_TABLE)? {
            for row in table
                .range((f, group, "")..=(f, group, "\u{10FFFF}"))
                .map_err(storage)?
            {
                let (key, value) = row.map_err(storage)?;
                let (delivered, read) = value.value();
                // A member's number was checked when it joined; a row that
                // does not parse names no member and counts for no one.
                if let Ok(member) = PhoneNumber::parse(key.value().2) {
                    cursors.push((member, Cursor { delivered, read }));
                }
            }
        }
        let mut unticked = Vec::new();
        if let Some(table) = open(&read, GROUP_UNTICKED_TABLE)? {
            for row in table
                .range((f, group, 0)..=(f, group, u64::MAX))
                .map_err(storage)?
            {
                let (key, value) = row.map_err(storage)?;
                let message = Unticked::from_bytes(value.value()).ok_or_else(|| {
                    storage(format!("unreadable unticked message of group {group:x}"))
                })?;
                unticked.push((key.value().2, message));
            }
        }
        Ok(Ticks::load(cursors, unticked))
    }

    fn group(&self, group: GroupId) -> Result<Option<GroupRecord>, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let Some(table) = open(&read, GROUP_RECORD_TABLE)? else {
            return Ok(None);
        };
        match table.get((self.fragment(), group)).map_err(storage)? {
            Some(bytes) => GroupRecord::from_bytes(bytes.value())
                .map(Some)
                .ok_or_else(|| storage(format!("unreadable record of group {group:x}"))),
            None => Ok(None),
        }
    }

    fn group_log(
        &self,
        group: GroupId,
        after: Position,
        limit: usize,
    ) -> Result<Vec<(Position, GroupItem)>, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let Some(table) = open(&read, GROUP_LOG_TABLE)? else {
            return Ok(Vec::new());
        };
        let f = self.fragment();
        let mut log = Vec::new();
        for row in table
            .range((f, group, after.saturating_add(1))..=(f, group, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (key, value) = row.map_err(storage)?;
            let item = GroupItem::from_bytes(value.value())
                .map_err(|e| storage(format!("unreadable log entry of group {group:x}: {e}")))?;
            log.push((key.value().2, item));
        }
        Ok(log)
    }

    fn group_fanned_out(&self, group: GroupId) -> Result<Position, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let Some(table) = open(&read, GROUP_FANOUT_TABLE)? else {
            return Ok(0);
        };
        Ok(table
            .get((self.fragment(), group))
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    fn groups_with_log(&self) -> Result<Vec<GroupId>, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let Some(table) = open(&read, GROUP_LOG_TABLE)? else {
            return Ok(Vec::new());
        };
        let f = self.fragment();
        let mut groups = Vec::new();
        let mut next = 0;
        // One lookup per group, not a walk over every logged item.
        while let Some(row) = table
            .range((f, next, 0)..=(f, u64::MAX, u64::MAX))
            .map_err(storage)?
            .next()
        {
            let group = row.map_err(storage)?.0.value().1;
            groups.push(group);
            let Some(after) = group.checked_add(1) else {
                break;
            };
            next = after;
        }
        Ok(groups)
    }

    fn group_inbox(&self, group: GroupId, era: u64) -> Result<Position, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let Some(table) = open(&read, GROUP_INBOX_TABLE)? else {
            return Ok(0);
        };
        Ok(table
            .get((self.fragment(), group, era))
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    fn group_dedupe(
        &self,
        group: GroupId,
        sender: &PhoneNumber,
        client_msg_id: u64,
    ) -> Result<Option<(Position, TimestampMs)>, FragmentError> {
        self.dedupe_key(&group_dedupe_key(group), sender, client_msg_id)
    }

    fn group_created(
        &self,
        creator: &PhoneNumber,
        create_id: u64,
    ) -> Result<Option<GroupId>, FragmentError> {
        // A creation is logged at the group's first position: its id.
        Ok(self
            .dedupe_key(GROUP_CREATE_KEY, creator, create_id)?
            .map(|(group, _)| group))
    }

    fn groups_of(&self, user: &PhoneNumber) -> Result<Vec<GroupId>, FragmentError> {
        let read = self.store().db().begin_read().map_err(storage)?;
        let Some(table) = open(&read, GROUP_MEMBER_OF_TABLE)? else {
            return Ok(Vec::new());
        };
        let f = self.fragment();
        let user = user.as_str();
        table
            .range((f, user, 0)..=(f, user, u64::MAX))
            .map_err(storage)?
            .map(|row| row.map(|(key, _)| key.value().2).map_err(storage))
            .collect()
    }
}

/// A row of the group tables in a copy of a fragment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupRow {
    /// `group_record`: the group and its encoded record.
    Record(GroupId, serde_bytes::ByteBuf),
    /// `group_log`: the group, the position and the encoded item.
    Log(GroupId, Position, serde_bytes::ByteBuf),
    /// `group_fanout`: the group and its mark.
    Fanout(GroupId, Position),
    /// `group_inbox`: the group, the era and its mark.
    Inbox(GroupId, u64, Position),
    /// `group_member_of`: a user and a group it is in.
    MemberOf(String, GroupId),
    /// `group_cursor`: the group, a member, delivered and read.
    Cursor(GroupId, String, Position, Position),
    /// `group_unticked`: the group, the position and the encoded row.
    Unticked(GroupId, Position, serde_bytes::ByteBuf),
    /// `group_gap`: the group, from and to.
    Gap(GroupId, Position, Position),
}

/// Every group row of fragment `f` in `read`, table by table, in key order.
pub(crate) fn export_groups(
    read: &redb::ReadTransaction,
    f: FragmentId,
    mut visit: impl FnMut(GroupRow),
) -> Result<(), FragmentError> {
    if let Some(table) = open(read, GROUP_RECORD_TABLE)? {
        for row in table.range((f, 0)..=(f, u64::MAX)).map_err(storage)? {
            let (key, value) = row.map_err(storage)?;
            let bytes = serde_bytes::ByteBuf::from(value.value().to_vec());
            visit(GroupRow::Record(key.value().1, bytes));
        }
    }
    if let Some(table) = open(read, GROUP_LOG_TABLE)? {
        for row in table
            .range((f, 0, 0)..=(f, u64::MAX, u64::MAX))
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let (_, group, position) = key.value();
            let bytes = serde_bytes::ByteBuf::from(value.value().to_vec());
            visit(GroupRow::Log(group, position, bytes));
        }
    }
    if let Some(table) = open(read, GROUP_MEMBER_OF_TABLE)? {
        for row in table
            .range((f, "", 0)..=(f, "\u{10FFFF}", u64::MAX))
            .map_err(storage)?
        {
            let (key, _) = row.map_err(storage)?;
            let (_, user, group) = key.value();
            visit(GroupRow::MemberOf(user.to_owned(), group));
        }
    }
    if let Some(table) = open(read, GROUP_FANOUT_TABLE)? {
        for row in table.range((f, 0)..=(f, u64::MAX)).map_err(storage)? {
            let (key, value) = row.map_err(storage)?;
            visit(GroupRow::Fanout(key.value().1, value.value()));
        }
    }
    if let Some(table) = open(read, GROUP_INBOX_TABLE)? {
        for row in table
            .range((f, 0, 0)..=(f, u64::MAX, u64::MAX))
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let (_, group, era) = key.value();
            visit(GroupRow::Inbox(group, era, value.value()));
        }
    }
    if let Some(table) = open(read, GROUP_CURSOR_TABLE)? {
        for row in table
            .range((f, 0, "")..=(f, u64::MAX, "\u{10FFFF}"))
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let (_, group, member) = key.value();
            let (delivered, read) = value.value();
            visit(GroupRow::Cursor(group, member.to_owned(), delivered, read));
        }
    }
    if let Some(table) = open(read, GROUP_GAP_TABLE)? {
        for row in table
            .range((f, 0, 0)..=(f, u64::MAX, u64::MAX))
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let (_, group, from) = key.value();
            visit(GroupRow::Gap(group, from, value.value()));
        }
    }
    if let Some(table) = open(read, GROUP_UNTICKED_TABLE)? {
        for row in table
            .range((f, 0, 0)..=(f, u64::MAX, u64::MAX))
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let (_, group, position) = key.value();
            let bytes = serde_bytes::ByteBuf::from(value.value().to_vec());
            visit(GroupRow::Unticked(group, position, bytes));
        }
    }
    Ok(())
}

/// Erases fragment `f`'s group rows (the first chunk of a copy).
pub(crate) fn erase_groups(txn: &WriteTransaction, f: FragmentId) -> Result<(), StorageError> {
    txn.open_table(GROUP_RECORD_TABLE)?
        .retain_in((f, 0)..=(f, u64::MAX), |_, _| false)?;
    txn.open_table(GROUP_LOG_TABLE)?
        .retain_in((f, 0, 0)..=(f, u64::MAX, u64::MAX), |_, _| false)?;
    txn.open_table(GROUP_FANOUT_TABLE)?
        .retain_in((f, 0)..=(f, u64::MAX), |_, _| false)?;
    txn.open_table(GROUP_INBOX_TABLE)?
        .retain_in((f, 0, 0)..=(f, u64::MAX, u64::MAX), |_, _| false)?;
    txn.open_table(GROUP_MEMBER_OF_TABLE)?
        .retain_in((f, "", 0)..=(f, "\u{10FFFF}", u64::MAX), |_, _| false)?;
    txn.open_table(GROUP_CURSOR_TABLE)?
        .retain_in((f, 0, "")..=(f, u64::MAX, "\u{10FFFF}"), |_, _| false)?;
    txn.open_table(GROUP_UNTICKED_TABLE)?
        .retain_in((f, 0, 0)..=(f, u64::MAX, u64::MAX), |_, _| false)?;
    txn.open_table(GROUP_GAP_TABLE)?
        .retain_in((f, 0, 0)..=(f, u64::MAX, u64::MAX), |_, _| false)?;
    Ok(())
}

/// Stores a copy's group rows of fragment `f`.
pub(crate) fn import_groups(
    txn: &WriteTransaction,
    f: FragmentId,
    rows: &[GroupRow],
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut records = txn.open_table(GROUP_RECORD_TABLE)?;
    let mut log = txn.open_table(GROUP_LOG_TABLE)?;
    let mut fanout = txn.open_table(GROUP_FANOUT_TABLE)?;
    let mut inbox = txn.open_table(GROUP_INBOX_TABLE)?;
    let mut member_of = txn.open_table(GROUP_MEMBER_OF_TABLE)?;
    let mut cursors = txn.open_table(GROUP_CURSOR_TABLE)?;
    let mut unticked = txn.open_table(GROUP_UNTICKED_TABLE)?;
    let mut gaps = txn.open_table(GROUP_GAP_TABLE)?;
    for row in rows {
        match row {
            GroupRow::Record(group, bytes) => {
                records.insert((f, *group), bytes.as_slice())?;
            }
            GroupRow::Log(group, position, bytes) => {
                log.insert((f, *group, *position), bytes.as_slice())?;
            }
            GroupRow::Fanout(group, mark) => {
                fanout.insert((f, *group), *mark)?;
            }
            GroupRow::Inbox(group, era, mark) => {
                inbox.insert((f, *group, *era), *mark)?;
            }
            GroupRow::MemberOf(user, group) => {
                member_of.insert((f, user.as_str(), *group), ())?;
            }
            GroupRow::Cursor(group, member, delivered, read) => {
                cursors.insert((f, *group, member.as_str()), (*delivered, *read))?;
            }
            GroupRow::Unticked(group, position, bytes) => {
                unticked.insert((f, *group, *position), bytes.as_slice())?;
            }
            GroupRow::Gap(group, from, to) => {
                gaps.insert((f, *group, *from), *to)?;
            }
        }
    }
    Ok(())
}
