//! Groups in the fragment core: a group's home fragment logs its changes
//! and messages and fans them out; every fragment stores what it is sent
//! in its members' mailboxes.
//!
//! At the home, a group request is checked against the record
//! ([`crate::group`]), given a position (an id of this fragment), and
//! logged; it is answered once the log entry is durable. Fan-out then
//! takes the committed entries in position order, a batch at a time:
//! each destination fragment gets one [`FanOut`] with the batch's items
//! and, per item, its members there. When every destination has
//! confirmed ([`GroupNote::FannedOut`]), the home records how far fan-out
//! went (the log up to there is dropped) and sends the next batch. A
//! destination that does not confirm within [`FANOUT_RETRY_TICKS`] is sent
//! the batch again; a destination stores an item only above its inbox
//! mark for the group, so a repeated batch is confirmed without storing
//! twice. After a restart or a take-over the home resumes from its
//! durable mark ([`FragmentCore::resume_groups`]).
//!
//! Ticks ([`crate::group_ticks`]): a member's fragment sends the home how
//! far its members have received each group, once a tick
//! ([`GroupNote::Delivered`]), until the home confirms it stored them;
//! read cursors come as requests from the reader. Once a tick the home
//! settles what the cursors allow and logs a receipt item per sender and
//! kind, fanned out to that sender like any other item.

use std::collections::{BTreeMap, BTreeSet};

use proto::{GroupCommand, GroupRole, MessageId, PhoneNumber, ReceiptKind, TimestampMs};
use router::FragmentId;
use serde::{Deserialize, Serialize};

use super::{Action, Commit, FragmentCore, Stored};
use crate::FragmentError;
use crate::entry::{Entry, EntryBody, GroupItem, fragment_of_message_id};
use crate::group::{GroupError, GroupId, GroupRecord, Position};
use crate::group_store::{GroupRead, below_era, era_of};
use crate::group_ticks::Ticks;
use crate::store::{MailboxRead, WriteOp};

/// Most log items one fan-out batch carries.
pub const FANOUT_BATCH: usize = 64;

/// A destination that has not confirmed a batch after this many ticks
/// (seconds) is sent it again (the batch or its answer may have been lost
/// with a link).
pub const FANOUT_RETRY_TICKS: u32 = 3;

/// Tuning of groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Most members of a group.
    pub max_members: u32,
    /// Most log items a group holds that fan-out has not passed: beyond
    /// it, sends to the group are refused for a while (a flooding member,
    /// or a destination out of reach, must not grow the log without
    /// bound).
    pub max_backlog: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            max_members: 1024,
            max_backlog: 10_000,
        }
    }
}

/// A group request, served at the group's home fragment (for a create:
/// the creator's fragment, which becomes the home).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRequest {
    /// Create a group.
    Create {
        /// Its admin.
        creator: PhoneNumber,
        /// Its name.
        name: String,
        /// The other members.
        members: Vec<PhoneNumber>,
    },
    /// Change a group.
    Change {
        /// The group.
        group: GroupId,
        /// The member asking.
        by: PhoneNumber,
        /// What to change.
        command: GroupCommand,
    },
    /// Read a group's name and members.
    Info {
        /// The group.
        group: GroupId,
        /// The member asking.
        by: PhoneNumber,
    },
    /// The groups `user` is in (served by the user's own fragment).
    List {
        /// The member asking.
        user: PhoneNumber,
    },
    /// Send a message to a group.
    Send {
        /// The group.
        group: GroupId,
        /// The member sending.
        from: PhoneNumber,
        /// The sender's dedupe id.
        client_msg_id: u64,
        /// The sender's previous send to the group that must be stored
        /// first.
        after: Option<u64>,
        /// Opaque bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A member has read the group up to `through`.
    Read {
        /// The group.
        group: GroupId,
        /// The member.
        by: PhoneNumber,
        /// The last position read.
        through: Position,
    },
    /// Who has received and read `by`'s message at `position`.
    MessageInfo {
        /// The group.
        group: GroupId,
        /// The message's sender, asking.
        by: PhoneNumber,
        /// The message.
        position: Position,
    },
    /// [`GroupRequest::Create`] that a repeat with the same `create_id`
    /// answers with the group the first one created (appended: the
    /// variants before it keep their wire form).
    CreateOnce {
        /// Its admin.
        creator: PhoneNumber,
        /// The creator's id for this creation.
        create_id: u64,
        /// Its name.
        name: String,
        /// The other members.
        members: Vec<PhoneNumber>,
    },
}

impl GroupRequest {
    /// The fragment that serves it: the group's home, or the creator's.
    pub fn home(&self, placement: &router::Placement) -> FragmentId {
        match self {
            GroupRequest::Create { creator, .. } | GroupRequest::CreateOnce { creator, .. } => {
                placement.fragment_of(creator)
            }
            GroupRequest::List { user } => placement.fragment_of(user),
            GroupRequest::Change { group, .. }
            | GroupRequest::Info { group, .. }
            | GroupRequest::Read { group, .. }
            | GroupRequest::MessageInfo { group, .. }
            | GroupRequest::Send { group, .. } => fragment_of_message_id(*group),
        }
    }
}

/// The answer to a [`GroupRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAnswer {
    /// The group exists, durably.
    Created {
        /// Its id.
        group: GroupId,
    },
    /// The change is durable.
    Changed,
    /// The group's name and members.
    Info {
        /// The group.
        group: GroupId,
        /// Its name.
        name: String,
        /// Members and roles, by number.
        members: Vec<(PhoneNumber, GroupRole)>,
    },
    /// The message is durable (one tick): its position and time.
    Sent(Stored),
    /// The groups a user is in, by id.
    Groups(Vec<GroupId>),
    /// Each counted member's state for a message (empty: none kept).
    MessageInfo {
        /// The group.
        group: GroupId,
        /// The message.
        position: Position,
        /// `None` sent, else delivered or read.
        members: Vec<(PhoneNumber, Option<ReceiptKind>)>,
    },
}

/// What one fragment tells another about a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupNote {
    /// A batch for the members of the receiving fragment.
    FanOut {
        /// The group's home.
        home: FragmentId,
        /// The batch.
        fanout: FanOut,
    },
    /// The sender stored a batch of a group at home in the receiver.
    FannedOut {
        /// The group.
        group: GroupId,
        /// The batch's last position.
        through: Position,
        /// The fragment that stored it.
        from: FragmentId,
    },
    /// To a group's home: members of fragment `from` have received the
    /// group up to these positions.
    Delivered {
        /// The group.
        group: GroupId,
        /// The members' fragment.
        from: FragmentId,
        /// `(member, position)`.
        cursors: Vec<(PhoneNumber, Position)>,
    },
    /// From a group's home: these cursors are stored (or were not needed).
    DeliveredStored {
        /// The group.
        group: GroupId,
        /// As sent.
        cursors: Vec<(PhoneNumber, Position)>,
    },
}

/// A batch of a group's log for the members in one fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOut {
    /// The group.
    pub group: GroupId,
    /// How far fan-out had gone before this batch (every destination
    /// confirmed up to here): a destination whose mark is below it missed
    /// batches that another owner of it confirmed, a *gap* it records so
    /// that a merge of that owner's writes keeps their items.
    pub after: Position,
    /// The last position of the batch (the destination confirms it).
    pub through: Position,
    /// The batch's items for this fragment, in position order.
    pub items: Vec<FanOutItem>,
}

/// One log item for some members of one fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOutItem {
    /// Its place in the group's log.
    pub position: Position,
    /// The members of the destination fragment who receive it.
    pub recipients: Vec<PhoneNumber>,
    /// What was logged.
    pub item: GroupItem,
}

/// A group at its home fragment, as last written (committed or not).
pub(super) struct Home {
    record: GroupRecord,
    /// Logged and not yet fanned out everywhere: item and whether its
    /// write is durable.
    log: BTreeMap<Position, (GroupItem, bool)>,
    /// Fan-out has passed everything up to here.
    fanned_out: Position,
    /// The batch out for confirmation.
    in_flight: Option<Batch>,
    /// Log writes handed to the writer and not yet committed.
    uncommitted: usize,
    /// Members' cursors and the messages whose ticks are to come.
    ticks: Ticks,
    /// Ticks since the group was last asked anything: an idle group
    /// leaves memory after [`IDLE_TICKS`] (its record is read again from
    /// disk at the next request, a cost worth keeping off busy groups).
    idle_ticks: u32,
}

/// Ticks (seconds) a group with nothing in hand stays in memory.
const IDLE_TICKS: u32 = 60;

struct Batch {
    through: Position,
    /// The log items it carries.
    positions: Vec<Position>,
    /// Destinations that have not confirmed, with what they were sent.
    waiting: BTreeMap<FragmentId, FanOut>,
    /// Ticks since it was sent (or sent again).
    ticks: u32,
}

/// The groups' part of a fragment core.
#[derive(Default)]
pub(super) struct Groups {
    /// Groups of this fragment with work in hand (loaded on first use,
    /// dropped when idle).
    homes: BTreeMap<GroupId, Home>,
    /// Sends being committed, by `(group, sender, client id)`: a resend
    /// waits for the first copy's commit.
    sending: BTreeMap<(GroupId, PhoneNumber, u64), u64>,
    /// Creations being committed, by `(creator, create id)`: a repeat
    /// waits for the first one's commit.
    creating: BTreeMap<(PhoneNumber, u64), u64>,
    /// Inbox marks of writes not yet committed here, per group and era.
    inbox: BTreeMap<(GroupId, u64), Position>,
    /// How far members here have received groups, not yet stored at the
    /// groups' homes.
    delivered: BTreeMap<GroupId, DeliveredOut>,
}

/// Members' delivered cursors of one group on their way to its home.
#[derive(Default)]
struct DeliveredOut {
    cursors: BTreeMap<PhoneNumber, Position>,
    /// Ticks since they were last sent (`None`: not sent yet).
    sent: Option<u32>,
}

/// What a group commit was for.
pub(super) enum GroupCommit<R> {
    /// A logged change or message at the home.
    Logged {
        group: GroupId,
        position: Position,
        /// A send's dedupe key.
        sending: Option<(PhoneNumber, u64)>,
        /// A creation's `(creator, create id)`.
        creating: Option<(PhoneNumber, u64)>,
        waiters: Vec<R>,
        answer: GroupAnswer,
    },
    /// Fan-out passed `through` (home housekeeping).
    FannedOut { group: GroupId },
    /// Members' cursors stored at the home: answer the reader, or
    /// confirm to the members' fragment.
    Cursors {
        group: GroupId,
        reply: Option<R>,
        confirm: Option<(FragmentId, Vec<(PhoneNumber, Position)>)>,
    },
    /// Ticks settled, and receipts logged at these positions.
    Ticked {
        group: GroupId,
        positions: Vec<Position>,
    },
    /// Items stored in members' mailboxes here.
    Stored {
        group: GroupId,
        home: FragmentId,
        /// The marks the write raises, per era.
        raised: BTreeMap<u64, Position>,
        entries: Vec<(PhoneNumber, Entry)>,
        /// Batches to confirm to the home once durable (a repeat of a
        /// batch still being stored joins it).
        confirm: Vec<Position>,
    },
}

impl<E: Clone, R> FragmentCore<E, R> {
    fn group_reply(to: R, result: Result<GroupAnswer, FragmentError>, out: &mut Vec<Action<E, R>>) {
        out.push(Action::GroupReply { to, result });
    }

    /// The home state of `group`, loaded from disk if needed. `None`: no
    /// such group here.
    fn home(
        &mut self,
        reads: &impl GroupRead,
        group: GroupId,
    ) -> Result<Option<&mut Home>, FragmentError> {
        if fragment_of_message_id(group) != self.id {
            return Ok(None);
        }
        if let std::collections::btree_map::Entry::Vacant(vacant) = self.groups.homes.entry(group) {
            let Some(record) = reads.group(group)? else {
                return Ok(None);
            };
            let fanned_out = reads.group_fanned_out(group)?;
            let log = reads
                // Everything the log holds is in transit: merged items may
                // sit below the mark.
                .group_log(group, 0, usize::MAX)?
                .into_iter()
                .map(|(position, item)| (position, (item, true)))
                .collect();
            let ticks = reads.group_ticks(group)?;
            vacant.insert(Home {
                record,
                log,
                fanned_out,
                in_flight: None,
                uncommitted: 0,
                ticks,
                idle_ticks: 0,
            });
        }
        let home = self.groups.homes.get_mut(&group);
        if let Some(home) = home {
            home.idle_ticks = 0;
            return Ok(Some(home));
        }
        Ok(None)
    }

    /// A group request at its home (see [`GroupRequest`]).
    pub fn group_request(
        &mut self,
        reads: &(impl MailboxRead + GroupRead),
        request: GroupRequest,
        now: TimestampMs,
        reply: R,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let result = match request {
            GroupRequest::Create {
                creator,
                name,
                members,
            } => self.create_group(reads, creator, None, name, members, now, reply, &mut out),
            GroupRequest::CreateOnce {
                creator,
                create_id,
                name,
                members,
            } => {
                let once = Some(create_id);
                self.create_group(reads, creator, once, name, members, now, reply, &mut out)
            }
            GroupRequest::Change { group, by, command } => {
                self.change_group(reads, group, by, command, now, reply, &mut out)
            }
            GroupRequest::Info { group, by } => {
                let info = self.home(reads, group).and_then(|home| {
                    let home = home.ok_or(GroupError::UnknownGroup)?;
                    home.record.may_send(&by)?;
                    Ok(GroupAnswer::Info {
                        group,
                        name: home.record.name.clone(),
                        members: home
                            .record
                            .current()
                            .map(|m| (m.phone.clone(), m.role))
                            .collect(),
                    })
                });
                Self::group_reply(reply, info, &mut out);
                Ok(())
            }
            GroupRequest::Read { group, by, through } => {
                self.read_group(reads, group, by, through, reply, &mut out)
            }
            GroupRequest::MessageInfo {
                group,
                by,
                position,
            } => {
                let info = self.home(reads, group).and_then(|home| {
                    let home = home.ok_or(GroupError::UnknownGroup)?;
                    home.record.may_send(&by)?;
                    let members = match home.ticks.info(&home.record, position) {
                        Some((sender, _)) if sender != by => {
                            return Err(FragmentError::InvalidRequest(
                                "message info is for the message's sender".into(),
                            ));
                        }
                        Some((_, members)) => members,
                        None => Vec::new(),
                    };
                    Ok(GroupAnswer::MessageInfo {
                        group,
                        position,
                        members,
                    })
                });
                Self::group_reply(reply, info, &mut out);
                Ok(())
            }
            GroupRequest::List { user } => {
                let listed = if self.placement.fragment_of(&user) == self.id {
                    reads.groups_of(&user).map(GroupAnswer::Groups)
                } else {
                    Err(FragmentError::InvalidRequest(
                        "a user's groups are listed by the user's fragment".into(),
                    ))
                };
                Self::group_reply(reply, listed, &mut out);
                Ok(())
            }
            GroupRequest::Send {
                group,
                from,
                client_msg_id,
                after,
                payload,
            } => self.send_to_group(
                reads,
                (group, from, client_msg_id),
                after,
                payload,
                now,
                reply,
                &mut out,
            ),
        };
        if let Err((reply, e)) = result {
            let cause = match &e {
                FragmentError::Group(GroupError::UnknownGroup) => "unknown_group",
                FragmentError::Group(GroupError::NotMember) => "not_member",
                FragmentError::Group(GroupError::NotAdmin) => "not_admin",
                FragmentError::Group(GroupError::Full { .. }) => "full",
                FragmentError::Group(_) => "invalid",
                FragmentError::GroupBacklog => "backlog",
                _ => "other",
            };
            metrics::counter!("switchboard_group_requests_refused_total", "cause" => cause)
                .increment(1);
            Self::group_reply(reply, Err(e), &mut out);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn create_group(
        &mut self,
        reads: &impl GroupRead,
        creator: PhoneNumber,
        create_id: Option<u64>,
        name: String,
        members: Vec<PhoneNumber>,
        now: TimestampMs,
        reply: R,
        out: &mut Vec<Action<E, R>>,
    ) -> Result<(), (R, FragmentError)> {
        if self.placement.fragment_of(&creator) != self.id {
            return Err((
                reply,
                FragmentError::InvalidRequest(
                    "a group is created at its creator's fragment".into(),
                ),
            ));
        }
        if let Some(create_id) = create_id {
            let key = (creator.clone(), create_id);
            // A repeat while the first is being committed waits for it.
            if let Some(tag) = self.groups.creating.get(&key)
                && let Some(Commit::Group(GroupCommit::Logged { waiters, .. })) =
                    self.commits.get_mut(tag)
            {
                waiters.push(reply);
                return Ok(());
            }
            match reads.group_created(&creator, create_id) {
                Ok(Some(group)) => {
                    Self::group_reply(reply, Ok(GroupAnswer::Created { group }), out);
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => return Err((reply, e)),
            }
        }
        let creating = create_id.map(|create_id| (creator.clone(), create_id));
        let id = self.next_id();
        let limit = self.config.groups.max_members;
        let (record, change) =
            match GroupRecord::create(id, id, creator.clone(), name, members, limit, now) {
                Ok(created) => created,
                Err(e) => return Err((reply, e.into())),
            };
        let item = GroupItem::Change {
            by: creator,
            change,
            ts: now,
        };
        let ops = vec![
            WriteOp::PutGroup {
                record: record.clone(),
            },
            WriteOp::LogGroup {
                group: id,
                position: id,
                item: item.clone(),
                // Stored under the creator's creations (the item is the
                // group's creation), not the group's sends.
                dedupe: creating.clone(),
            },
            WriteOp::NextSeq(self.next_seq),
        ];
        self.groups.homes.insert(
            id,
            Home {
                record,
                log: BTreeMap::from([(id, (item, false))]),
                fanned_out: 0,
                in_flight: None,
                uncommitted: 1,
                ticks: Ticks::default(),
                idle_ticks: 0,
            },
        );
        metrics::counter!("switchboard_groups_created_total").increment(1);
        if let Some(key) = &creating {
            self.groups.creating.insert(key.clone(), self.next_tag);
        }
        self.persist(
            Commit::Group(GroupCommit::Logged {
                group: id,
                position: id,
                sending: None,
                creating,
                waiters: vec![reply],
                answer: GroupAnswer::Created { group: id },
            }),
            ops,
            out,
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn change_group(
        &mut self,
        reads: &impl GroupRead,
        group: GroupId,
        by: PhoneNumber,
        command: GroupCommand,
        now: TimestampMs,
        reply: R,
        out: &mut Vec<Action<E, R>>,
    ) -> Result<(), (R, FragmentError)> {
        let position = compose_next(self.id, self.next_seq);
        let limit = self.config.groups.max_members;
        let applied = match self.home(reads, group) {
            Ok(Some(home)) => {
                let mut record = home.record.clone();
                record
                    .apply(&by, command, position, limit)
                    .map(|change| (record, change))
                    .map_err(FragmentError::from)
            }
            Ok(None) => Err(GroupError::UnknownGroup.into()),
            Err(e) => Err(e),
        };
        let (record, change) = match applied {
            Ok(applied) => applied,
            Err(e) => return Err((reply, e)),
        };
        let id = self.next_id();
        debug_assert_eq!(id, position);
        let item = GroupItem::Change {
            by,
            change,
            ts: now,
        };
        let ops = vec![
            WriteOp::PutGroup {
                record: record.clone(),
            },
            WriteOp::LogGroup {
                group,
                position,
                item: item.clone(),
                dedupe: None,
            },
            WriteOp::NextSeq(self.next_seq),
        ];
        if let Some(home) = self.groups.homes.get_mut(&group) {
            home.record = record;
            home.log.insert(position, (item, false));
            home.uncommitted += 1;
            home.ticks.members_changed();
        }
        self.persist(
            Commit::Group(GroupCommit::Logged {
                group,
                position,
                sending: None,
                creating: None,
                waiters: vec![reply],
                answer: GroupAnswer::Changed,
            }),
            ops,
            out,
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn send_to_group(
        &mut self,
        reads: &(impl MailboxRead + GroupRead),
        key: (GroupId, PhoneNumber, u64),
        after: Option<u64>,
        payload: Vec<u8>,
        now: TimestampMs,
        reply: R,
        out: &mut Vec<Action<E, R>>,
    ) -> Result<(), (R, FragmentError)> {
        let (group, from, client_msg_id) = key.clone();
        if payload.len() > self.config.max_payload {
            let e = FragmentError::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            };
            return Err((reply, e));
        }
        // A resend while the first copy is being committed waits for it.
        if let Some(tag) = self.groups.sending.get(&key)
            && let Some(Commit::Group(GroupCommit::Logged { waiters, .. })) =
                self.commits.get_mut(tag)
        {
            waiters.push(reply);
            return Ok(());
        }
        match reads.group_dedupe(group, &from, client_msg_id) {
            Ok(Some((msg_id, server_ts))) => {
                let answer = GroupAnswer::Sent(Stored { msg_id, server_ts });
                Self::group_reply(reply, Ok(answer), out);
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => return Err((reply, e)),
        }
        if let Some(earlier) = after {
            let present = if self
                .groups
                .sending
                .contains_key(&(group, from.clone(), earlier))
            {
                Ok(true)
            } else {
                reads
                    .group_dedupe(group, &from, earlier)
                    .map(|found| found.is_some())
            };
            match present {
                Ok(true) => {}
                Ok(false) => return Err((reply, FragmentError::EarlierMessageMissing)),
                Err(e) => return Err((reply, e)),
            }
        }
        let home = match self.home(reads, group) {
            Ok(Some(home)) => home,
            Ok(None) => return Err((reply, GroupError::UnknownGroup.into())),
            Err(e) => return Err((reply, e)),
        };
        if let Err(e) = home.record.may_send(&from) {
            return Err((reply, e.into()));
        }
        if home.log.len() >= self.config.groups.max_backlog {
            return Err((reply, FragmentError::GroupBacklog));
        }
        let position = self.next_id();
        let item = GroupItem::Message {
            from: from.clone(),
            client_msg_id,
            server_ts: now,
            payload,
        };
        let ops = vec![
            WriteOp::LogGroup {
                group,
                position,
                item: item.clone(),
                dedupe: Some((from.clone(), client_msg_id)),
            },
            WriteOp::NextSeq(self.next_seq),
        ];
        if let Some(home) = self.groups.homes.get_mut(&group) {
            home.log.insert(position, (item, false));
            home.uncommitted += 1;
            home.ticks.logged(position, from.clone(), now);
        }
        self.groups.sending.insert(key, self.next_tag);
        self.persist(
            Commit::Group(GroupCommit::Logged {
                group,
                position,
                sending: Some((from, client_msg_id)),
                creating: None,
                waiters: vec![reply],
                answer: GroupAnswer::Sent(Stored {
                    msg_id: position,
                    server_ts: now,
                }),
            }),
            ops,
            out,
        );
        Ok(())
    }

    /// A group write finished.
    pub(super) fn group_committed(
        &mut self,
        reads: &impl MailboxRead,
        commit: GroupCommit<R>,
        outcome: Result<(), String>,
        out: &mut Vec<Action<E, R>>,
    ) {
        match commit {
            GroupCommit::Logged {
                group,
                position,
                sending,
                creating,
                waiters,
                answer,
            } => {
                if let Some((from, client_msg_id)) = sending {
                    self.groups.sending.remove(&(group, from, client_msg_id));
                }
                if let Some(key) = creating {
                    self.groups.creating.remove(&key);
                }
                let result = match &outcome {
                    Ok(()) => Ok(answer),
                    Err(e) => Err(FragmentError::Storage(e.clone())),
                };
                for to in waiters {
                    Self::group_reply(to, result.clone(), out);
                }
                match outcome {
                    Ok(()) => {
                        if let Some(home) = self.groups.homes.get_mut(&group) {
                            home.uncommitted = home.uncommitted.saturating_sub(1);
                            if let Some((_, durable)) = home.log.get_mut(&position) {
                                *durable = true;
                            }
                        }
                        self.pump_fanout(group, out);
                    }
                    // What is in memory may be ahead of the disk now: read
                    // the group afresh next time.
                    Err(_) => {
                        self.groups.homes.remove(&group);
                    }
                }
            }
            GroupCommit::Cursors {
                group,
                reply,
                confirm,
            } => {
                match &outcome {
                    Ok(()) => {
                        if let Some(home) = self.groups.homes.get_mut(&group) {
                            home.uncommitted = home.uncommitted.saturating_sub(1);
                        }
                    }
                    Err(_) => {
                        self.groups.homes.remove(&group);
                    }
                }
                if let Some(to) = reply {
                    let result = outcome
                        .clone()
                        .map(|()| GroupAnswer::Changed)
                        .map_err(FragmentError::Storage);
                    Self::group_reply(to, result, out);
                }
                if let (Ok(()), Some((fragment, cursors))) = (&outcome, confirm) {
                    out.push(Action::Note {
                        fragment,
                        note: GroupNote::DeliveredStored { group, cursors },
                    });
                }
            }
            GroupCommit::Ticked { group, positions } => match outcome {
                Ok(()) => {
                    if let Some(home) = self.groups.homes.get_mut(&group) {
                        home.uncommitted = home.uncommitted.saturating_sub(1);
                        for position in positions {
                            if let Some((_, durable)) = home.log.get_mut(&position) {
                                *durable = true;
                            }
                        }
                    }
                    self.pump_fanout(group, out);
                }
                Err(e) => {
                    tracing::warn!(fragment = self.id, group, error = %e,
                        "storing a group's ticks failed; they are settled again");
                    self.groups.homes.remove(&group);
                }
            },
            GroupCommit::FannedOut { group } => {
                if let Err(e) = outcome {
                    tracing::warn!(fragment = self.id, group, error = %e,
                        "recording a group's fan-out failed; it is sent again");
                    self.groups.homes.remove(&group);
                }
            }
            GroupCommit::Stored {
                group,
                home,
                raised,
                entries,
                confirm,
            } => {
                for (era, mark) in raised {
                    if self.groups.inbox.get(&(group, era)) == Some(&mark) {
                        self.groups.inbox.remove(&(group, era));
                    }
                }
                if let Err(e) = outcome {
                    // Not confirmed: the home sends the batch again.
                    tracing::warn!(fragment = self.id, group, error = %e,
                        "storing a group's items failed");
                    for (_, entry) in &entries {
                        self.pending_ids.remove(&entry.id);
                    }
                    return;
                }
                for (owner, entry) in entries {
                    self.pending_ids.remove(&entry.id);
                    self.deliver(reads, &owner, entry, out);
                }
                for through in confirm {
                    out.push(Action::Note {
                        fragment: home,
                        note: GroupNote::FannedOut {
                            group,
                            through,
                            from: self.id,
                        },
                    });
                }
            }
        }
    }

    /// Sends `group`'s next batch if none is out for confirmation.
    fn pump_fanout(&mut self, group: GroupId, out: &mut Vec<Action<E, R>>) {
        let id = self.id;
        let placement = self.placement;
        loop {
            let Some(home) = self.groups.homes.get_mut(&group) else {
                return;
            };
            if home.in_flight.is_some() {
                return;
            }
            // Only durable items, and none after one that is not (order).
            let batch: Vec<(Position, GroupItem)> = home
                .log
                .iter()
                .take_while(|(_, (_, durable))| *durable)
                .take(FANOUT_BATCH)
                .map(|(position, (item, _))| (*position, item.clone()))
                .collect();
            let Some(through) = batch.last().map(|(position, _)| *position) else {
                return;
            };
            let positions: Vec<Position> = batch.iter().map(|(position, _)| *position).collect();
            // Every fragment of a member gets every batch (most carry
            // items for it anyway), so that a destination's marks move in
            // step with fan-out and a gap means another owner confirmed.
            let mut waiting: BTreeMap<FragmentId, FanOut> = home
                .record
                .members
                .iter()
                .map(|m| {
                    let fanout = FanOut {
                        group,
                        after: home.fanned_out,
                        through,
                        items: Vec::new(),
                    };
                    (placement.fragment_of(&m.phone), fanout)
                })
                .collect();
            for (position, item) in batch {
                let recipients = match &item {
                    GroupItem::Message { from, .. } => {
                        home.record.recipients_at(position, &placement, Some(from))
                    }
                    GroupItem::Change { .. } => {
                        home.record.recipients_at(position, &placement, None)
                    }
                    // Ticks go to their sender alone, while a member.
                    GroupItem::Receipt { to, .. } => home
                        .record
                        .member(to)
                        .filter(|m| m.since().is_some())
                        .map(|m| {
                            BTreeMap::from([(placement.fragment_of(to), vec![m.phone.clone()])])
                        })
                        .unwrap_or_default(),
                };
                for (fragment, recipients) in recipients {
                    waiting
                        .entry(fragment)
                        .or_insert_with(|| FanOut {
                            group,
                            after: home.fanned_out,
                            through,
                            items: Vec::new(),
                        })
                        .items
                        .push(FanOutItem {
                            position,
                            recipients,
                            item: item.clone(),
                        });
                }
            }
            if waiting.is_empty() {
                // No one to send these to (a group of one).
                self.passed(group, through, positions, out);
                continue;
            }
            for (fragment, fanout) in &waiting {
                out.push(Action::Note {
                    fragment: *fragment,
                    note: GroupNote::FanOut {
                        home: self.id,
                        fanout: fanout.clone(),
                    },
                });
            }
            metrics::counter!("switchboard_group_fanout_batches_total").increment(1);
            home.in_flight = Some(Batch {
                through,
                positions,
                waiting,
                ticks: 0,
            });
            tracing::trace!(fragment = id, group, through, "fan-out batch sent");
            return;
        }
    }

    /// Fan-out of `group` has passed `through`: record it, drop the log up
    /// to it, forget members whose removal it passed, and the group once
    /// everyone has left.
    fn passed(
        &mut self,
        group: GroupId,
        through: Position,
        positions: Vec<Position>,
        out: &mut Vec<Action<E, R>>,
    ) {
        let Some(home) = self.groups.homes.get_mut(&group) else {
            return;
        };
        home.fanned_out = home.fanned_out.max(through);
        // Exactly the batch's items: a merge may have logged older ones
        // meanwhile, which still go out.
        for position in &positions {
            home.log.remove(position);
        }
        let mut ops = vec![WriteOp::GroupFannedOut {
            group,
            through,
            positions,
        }];
        // Members' closed spans are needed until nothing older than their
        // end is left to fan out.
        let forget = home
            .log
            .keys()
            .next()
            .map_or(through, |first| through.min(first.saturating_sub(1)));
        let over = home.record.is_empty() && home.log.is_empty() && home.uncommitted == 0;
        if over {
            ops.push(WriteOp::DeleteGroup { group });
            self.groups.homes.remove(&group);
        } else if home.record.forget_through(forget) {
            ops.push(WriteOp::PutGroup {
                record: home.record.clone(),
            });
        }
        self.persist(Commit::Group(GroupCommit::FannedOut { group }), ops, out);
    }

    /// Fragment `from` has stored `group`'s batch up to `through`.
    pub fn group_fanned_out(
        &mut self,
        group: GroupId,
        through: Position,
        from: FragmentId,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let Some(home) = self.groups.homes.get_mut(&group) else {
            return out;
        };
        let done = match &mut home.in_flight {
            Some(batch) if batch.through == through => {
                batch.waiting.remove(&from);
                batch.waiting.is_empty()
            }
            // A late answer to a batch already passed.
            _ => false,
        };
        if done && let Some(batch) = home.in_flight.take() {
            self.passed(group, through, batch.positions, &mut out);
            self.pump_fanout(group, &mut out);
        }
        out
    }

    /// Once a second: batches not confirmed in time go out again, ticks
    /// are settled, members' cursors go to their groups' homes, and idle
    /// groups leave memory.
    pub fn group_tick(&mut self, now: TimestampMs) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        self.settle_ticks(now, &mut out);
        self.send_delivered(&mut out);
        for home in self.groups.homes.values_mut() {
            let Some(batch) = &mut home.in_flight else {
                continue;
            };
            batch.ticks += 1;
            if batch.ticks < FANOUT_RETRY_TICKS {
                continue;
            }
            batch.ticks = 0;
            for (fragment, fanout) in &batch.waiting {
                metrics::counter!("switchboard_group_fanout_resent_total").increment(1);
                out.push(Action::Note {
                    fragment: *fragment,
                    note: GroupNote::FanOut {
                        home: self.id,
                        fanout: fanout.clone(),
                    },
                });
            }
        }
        self.groups.homes.retain(|_, home| {
            let busy = home.in_flight.is_some() || !home.log.is_empty() || home.uncommitted > 0;
            home.idle_ticks = if busy { 0 } else { home.idle_ticks + 1 };
            home.idle_ticks <= IDLE_TICKS
        });
        out
    }

    /// The core starts serving: fan out what the log still holds.
    pub fn resume_groups(
        &mut self,
        reads: &impl GroupRead,
    ) -> Result<Vec<Action<E, R>>, FragmentError> {
        let mut out = Vec::new();
        for group in reads.groups_with_log()? {
            if self.home(reads, group)?.is_some() {
                self.pump_fanout(group, &mut out);
            }
        }
        Ok(out)
    }

    /// Writes were merged behind the core: every group's log is read
    /// again from the disk (what is in memory stays: it may be ahead of
    /// the disk), and fan-out goes on with what the merge added.
    pub fn reload_groups(
        &mut self,
        reads: &impl GroupRead,
    ) -> Result<Vec<Action<E, R>>, FragmentError> {
        let mut out = Vec::new();
        for group in reads.groups_with_log()? {
            if let Some(home) = self.groups.homes.get_mut(&group) {
                for (position, item) in reads.group_log(group, 0, usize::MAX)? {
                    home.log.entry(position).or_insert((item, true));
                }
                home.ticks.absorb(reads.group_ticks(group)?);
            } else if self.home(reads, group)?.is_none() {
                continue;
            }
            self.pump_fanout(group, &mut out);
        }
        Ok(out)
    }

    /// A batch of a group's log for members of this fragment: stores the
    /// items above the group's inbox mark and confirms the batch to the
    /// home once durable (at once if nothing is new).
    pub fn fan_in(
        &mut self,
        reads: &impl GroupRead,
        home: FragmentId,
        fanout: FanOut,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let FanOut {
            group,
            after,
            through,
            items,
        } = fanout;
        // This fragment's marks per era, stored or being stored.
        let mut marks: BTreeMap<u64, Position> = BTreeMap::new();
        let eras: std::collections::BTreeSet<u64> = items
            .iter()
            .map(|item| era_of(item.position))
            .chain([era_of(through), era_of(after)])
            .collect();
        for era in eras {
            let stored = match reads.group_inbox(group, era) {
                Ok(mark) => mark,
                Err(e) => {
                    tracing::warn!(fragment = self.id, group, error = %e,
                        "cannot read a group's inbox mark");
                    return out;
                }
            };
            let pending = self.groups.inbox.get(&(group, era)).copied().unwrap_or(0);
            marks.insert(era, stored.max(pending));
        }
        let is_new = |position: Position| {
            marks
                .get(&era_of(position))
                .is_none_or(|mark| position > *mark)
        };
        // Items below the mark that this fragment never stored: in a gap
        // (see below), merged at the home after later items passed.
        let mut in_gaps = BTreeSet::new();
        for item in &items {
            if is_new(item.position) {
                continue;
            }
            match reads.in_group_gap(group, item.position) {
                Ok(true) => {
                    in_gaps.insert(item.position);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(fragment = self.id, group, error = %e,
                        "cannot read a group's fan-out gaps");
                    return out;
                }
            }
        }
        let older_era = |position: Position| era_of(position) != era_of(through);
        let gap_work = !in_gaps.is_empty()
            || items
                .iter()
                .any(|item| older_era(item.position) && is_new(item.position));
        let storing = self.commits.values().any(
            |c| matches!(c, Commit::Group(GroupCommit::Stored { group: g, .. }) if *g == group),
        );
        if gap_work && storing {
            // Gaps are read from the disk: decided once the write in
            // flight is (the home sends the batch again).
            return out;
        }
        if !is_new(through) && in_gaps.is_empty() && items.iter().all(|item| !is_new(item.position))
        {
            // Stored already, or being stored: confirm once durable.
            let being_stored = self
                .groups
                .inbox
                .get(&(group, era_of(through)))
                .is_some_and(|pending| *pending >= through);
            if being_stored
                && let Some(Commit::Group(GroupCommit::Stored { confirm, .. })) =
                    self.commits.values_mut().find(|c| {
                        matches!(c, Commit::Group(GroupCommit::Stored { group: g, .. }) if *g == group)
                    })
            {
                confirm.push(through);
            } else {
                out.push(Action::Note {
                    fragment: home,
                    note: GroupNote::FannedOut {
                        group,
                        through,
                        from: self.id,
                    },
                });
            }
            return out;
        }
        // Batches up to `after` that this fragment's mark does not cover
        // were confirmed by another owner of it (one cut off from this
        // one, or not copied here yet): its writes, merged later, keep
        // their items in this gap.
        let gap = marks
            .get(&era_of(after))
            .copied()
            .filter(|mark| after > 0 && after > *mark)
            .map(|mark| (mark, after));
        let placement = self.placement;
        let id = self.id;
        let mut entries = Vec::new();
        // Each item once, whatever the number of its recipients here.
        let mut items_once = Vec::new();
        let mut references = Vec::new();
        // An item of an older era (a new owner of the home sending its
        // predecessor's log) raises that era's mark past positions this
        // fragment has not seen: the predecessor may have logged items
        // there alone, merged at the home later and fanned out below the
        // mark (simulator seed 555). They are recorded as gaps, and items
        // in gaps are stored when they come.
        let mut era_gaps = Vec::new();
        let mut era_marks = marks.clone();
        let mut filled = Vec::new();
        let mut raised: BTreeMap<u64, Position> = BTreeMap::from([(era_of(through), through)]);
        if let Some((_, after)) = gap {
            let raise = raised.entry(era_of(after)).or_insert(after);
            *raise = (*raise).max(after);
        }
        for FanOutItem {
            position,
            recipients,
            item,
        } in items
        {
            if in_gaps.contains(&position) {
                filled.push(position);
            } else if !is_new(position) {
                continue;
            } else {
                let raise = raised.entry(era_of(position)).or_insert(position);
                *raise = (*raise).max(position);
            }
            if older_era(position) && !in_gaps.contains(&position) {
                let era_mark = era_marks.entry(era_of(position)).or_insert(0);
                let from = (*era_mark).max(below_era(position));
                if position.saturating_sub(1) > from {
                    era_gaps.push((from, position - 1));
                }
                *era_mark = position;
            }
            let mut here = 0;
            for owner in recipients {
                // Only this fragment's users: a confused or hostile peer
                // cannot make it store mail for anyone else.
                if placement.fragment_of(&owner) != id {
                    continue;
                }
                let entry = Entry {
                    id: self.next_id(),
                    body: EntryBody::Group {
                        group,
                        position,
                        item: item.clone(),
                    },
                };
                references.push((owner.clone(), entry.id, position));
                entries.push((owner, entry));
                here += 1;
            }
            if here > 0 {
                items_once.push((position, serde_bytes::ByteBuf::from(item.to_bytes())));
            }
        }
        for (_, entry) in &entries {
            self.pending_ids.insert(entry.id);
        }
        let mut ops = vec![
            WriteOp::PutGroupShared {
                group,
                through,
                items: items_once,
                entries: references,
            },
            WriteOp::NextSeq(self.next_seq),
        ];
        if let Some((from, to)) = gap {
            metrics::counter!("switchboard_group_fanout_gaps_total").increment(1);
            ops.push(WriteOp::GroupGap { group, from, to });
        }
        for (from, to) in era_gaps {
            ops.push(WriteOp::GroupGap { group, from, to });
        }
        if !filled.is_empty() {
            metrics::counter!("switchboard_group_gap_items_stored_total")
                .increment(filled.len() as u64);
            ops.push(WriteOp::GroupGapFilled {
                group,
                positions: filled,
            });
        }
        for (era, mark) in &raised {
            self.groups.inbox.insert((group, *era), *mark);
        }
        self.persist(
            Commit::Group(GroupCommit::Stored {
                group,
                home,
                raised,
                entries,
                confirm: vec![through],
            }),
            ops,
            &mut out,
        );
        out
    }

    /// What another fragment (or this one) tells this one about a group.
    pub fn group_note(
        &mut self,
        reads: &(impl MailboxRead + GroupRead),
        note: GroupNote,
    ) -> Vec<Action<E, R>> {
        match note {
            GroupNote::FanOut { home, fanout } => self.fan_in(reads, home, fanout),
            GroupNote::FannedOut {
                group,
                through,
                from,
            } => self.group_fanned_out(group, through, from),
            GroupNote::Delivered {
                group,
                from,
                cursors,
            } => self.members_delivered(reads, group, from, cursors),
            GroupNote::DeliveredStored { group, cursors } => {
                self.delivered_stored(group, &cursors);
                Vec::new()
            }
        }
    }

    /// The last position this fragment has given out: no member can
    /// have received or read beyond it.
    fn last_position(&self) -> Position {
        compose_next(self.id, self.next_seq).saturating_sub(1)
    }

    /// `by` has read `group` up to `through` (answered once stored).
    fn read_group(
        &mut self,
        reads: &impl GroupRead,
        group: GroupId,
        by: PhoneNumber,
        through: Position,
        reply: R,
        out: &mut Vec<Action<E, R>>,
    ) -> Result<(), (R, FragmentError)> {
        if fragment_of_message_id(through) != self.id || through > self.last_position() {
            let e = FragmentError::InvalidRequest("no such position in this group".into());
            return Err((reply, e));
        }
        let home = match self.home(reads, group) {
            Ok(Some(home)) => home,
            Ok(None) => return Err((reply, GroupError::UnknownGroup.into())),
            Err(e) => return Err((reply, e)),
        };
        if let Err(e) = home.record.may_send(&by) {
            return Err((reply, e.into()));
        }
        let Some(cursor) = home.ticks.advance(&by, 0, through) else {
            Self::group_reply(reply, Ok(GroupAnswer::Changed), out);
            return Ok(());
        };
        home.uncommitted += 1;
        let ops = vec![WriteOp::GroupCursors {
            group,
            cursors: vec![(by, cursor.delivered, cursor.read)],
        }];
        let commit = GroupCommit::Cursors {
            group,
            reply: Some(reply),
            confirm: None,
        };
        self.persist(Commit::Group(commit), ops, out);
        Ok(())
    }

    /// Members of fragment `from` have received `group` up to `cursors`:
    /// stored, then confirmed. Cursors of non-members, or beyond what
    /// was logged, are ignored (a confused or hostile peer cannot tick
    /// for anyone).
    fn members_delivered(
        &mut self,
        reads: &impl GroupRead,
        group: GroupId,
        from: FragmentId,
        cursors: Vec<(PhoneNumber, Position)>,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let last = self.last_position();
        let placement = self.placement;
        let home = match self.home(reads, group) {
            Ok(Some(home)) => home,
            // Gone (every member left): nothing to tick.
            Ok(None) => {
                out.push(Action::Note {
                    fragment: from,
                    note: GroupNote::DeliveredStored { group, cursors },
                });
                return out;
            }
            // Not confirmed: the members' fragment sends them again.
            Err(e) => {
                tracing::warn!(fragment = self.id, group, error = %e,
                    "cannot load a group for its members' cursors");
                return out;
            }
        };
        let mut moved = Vec::new();
        for (member, position) in &cursors {
            let counts = placement.fragment_of(member) == from
                && *position <= last
                && home
                    .record
                    .member(member)
                    .is_some_and(|m| m.since().is_some());
            if counts && let Some(cursor) = home.ticks.advance(member, *position, 0) {
                moved.push((member.clone(), cursor.delivered, cursor.read));
            }
        }
        if moved.is_empty() {
            out.push(Action::Note {
                fragment: from,
                note: GroupNote::DeliveredStored { group, cursors },
            });
            return out;
        }
        home.uncommitted += 1;
        let ops = vec![WriteOp::GroupCursors {
            group,
            cursors: moved,
        }];
        let commit = GroupCommit::Cursors {
            group,
            reply: None,
            confirm: Some((from, cursors)),
        };
        self.persist(Commit::Group(commit), ops, &mut out);
        out
    }

    /// `user` of this fragment acknowledged `group`'s item at `position`:
    /// its delivered cursor goes to the group's home at the next tick.
    pub(super) fn note_delivered(
        &mut self,
        group: GroupId,
        user: &PhoneNumber,
        position: Position,
    ) {
        let out = self.groups.delivered.entry(group).or_default();
        let cursor = out.cursors.entry(user.clone()).or_default();
        *cursor = (*cursor).max(position);
    }

    /// The home stored these cursors: forget those not overtaken since.
    fn delivered_stored(&mut self, group: GroupId, cursors: &[(PhoneNumber, Position)]) {
        let Some(out) = self.groups.delivered.get_mut(&group) else {
            return;
        };
        for (member, position) in cursors {
            if out.cursors.get(member).is_some_and(|now| now <= position) {
                out.cursors.remove(member);
            }
        }
        out.sent = None;
        if out.cursors.is_empty() {
            self.groups.delivered.remove(&group);
        }
    }

    /// Once a tick: members' cursors go to their groups' homes (again, if
    /// unconfirmed for a while).
    fn send_delivered(&mut self, out: &mut Vec<Action<E, R>>) {
        for (group, waiting) in &mut self.groups.delivered {
            let due = match &mut waiting.sent {
                None => true,
                Some(ticks) => {
                    *ticks += 1;
                    *ticks >= FANOUT_RETRY_TICKS
                }
            };
            if !due {
                continue;
            }
            waiting.sent = Some(0);
            out.push(Action::Note {
                fragment: fragment_of_message_id(*group),
                note: GroupNote::Delivered {
                    group: *group,
                    from: self.id,
                    cursors: waiting
                        .cursors
                        .iter()
                        .map(|(member, position)| (member.clone(), *position))
                        .collect(),
                },
            });
        }
    }

    /// Once a tick: settles the ticks of groups whose cursors or members
    /// moved, and logs a receipt for each sender and kind (fanned out to
    /// the sender like any item).
    fn settle_ticks(&mut self, now: TimestampMs, out: &mut Vec<Action<E, R>>) {
        let expire_before = now.saturating_sub(self.config.undelivered_ttl_ms);
        let max_unticked = self.config.groups.max_backlog;
        let dirty: Vec<GroupId> = self
            .groups
            .homes
            .iter()
            .filter(|(_, home)| home.ticks.is_dirty())
            .map(|(group, _)| *group)
            .collect();
        for group in dirty {
            let Some(home) = self.groups.homes.get_mut(&group) else {
                continue;
            };
            let settled = home.ticks.settle(&home.record, expire_before, max_unticked);
            if settled.is_empty() {
                continue;
            }
            if settled.given_up > 0 {
                metrics::counter!("switchboard_group_ticks_given_up_total")
                    .increment(settled.given_up as u64);
            }
            let mut ops = vec![WriteOp::GroupTicked {
                group,
                delivered: settled.now_delivered,
                done: settled.done,
            }];
            let mut logged = Vec::new();
            for ((to, kind), positions) in settled.receipts {
                let label = match kind {
                    ReceiptKind::Delivered => "delivered",
                    ReceiptKind::Read => "read",
                };
                for chunk in positions.chunks(proto::MAX_IDS_PER_ACK) {
                    metrics::counter!("switchboard_group_receipts_total", "kind" => label)
                        .increment(1);
                    let position = self.next_id();
                    let item = GroupItem::Receipt {
                        to: to.clone(),
                        kind,
                        positions: chunk.to_vec(),
                        ts: now,
                    };
                    ops.push(WriteOp::LogGroup {
                        group,
                        position,
                        item: item.clone(),
                        dedupe: None,
                    });
                    logged.push((position, item));
                }
            }
            ops.push(WriteOp::NextSeq(self.next_seq));
            let Some(home) = self.groups.homes.get_mut(&group) else {
                continue;
            };
            home.uncommitted += 1;
            let positions = logged.iter().map(|(position, _)| *position).collect();
            for (position, item) in logged {
                home.log.insert(position, (item, false));
            }
            self.persist(
                Commit::Group(GroupCommit::Ticked { group, positions }),
                ops,
                out,
            );
        }
    }

    /// Groups with work in hand, for metrics.
    pub fn groups_in_memory(&self) -> usize {
        self.groups.homes.len()
    }
}

/// The id `next_id` gives out next.
fn compose_next(fragment: FragmentId, next_seq: u64) -> MessageId {
    crate::entry::compose_message_id(fragment, next_seq)
}

impl From<GroupError> for FragmentError {
    fn from(e: GroupError) -> Self {
        FragmentError::Group(e)
    }
}

#[cfg(test)]
mod tests;
