//! The pure core of a mailbox fragment.
//!
//! A [`FragmentCore`] takes events (a send, an attach, an ack, a commit
//! outcome) with the current time and returns [`Action`]s: writes to persist,
//! entries to push, replies to send, receipts for other fragments. It reads the
//! disk through [`MailboxRead`] but never writes it, and does no I/O of its
//! own, so tests drive it with an in-memory store and read its outbox.
//!
//! Ordering: appends are persisted in the order they arrive and their commits
//! complete in that order; an online user is pushed entries in id order, at
//! most `window` unacknowledged at a time, from memory, paging older backlog in
//! from disk. Resends are recognised by `(recipient, sender, client_msg_id)`,
//! also while the first copy is still being committed.

use std::collections::{BTreeMap, HashMap, HashSet};

use proto::{MessageId, PhoneNumber, ReceiptKind, TimestampMs};
use router::{FragmentId, Placement};

use crate::account::{AccountRecord, AccountReply, AccountWrite, MAX_ACCOUNT_BODY};
use crate::store::{MailboxRead, WriteOp};
use crate::usage::{Full, MailboxLimits, MailboxUsage};
use crate::{Entry, EntryBody, FragmentError, compose_message_id, fragment_of_message_id};

/// Most message ids one stored receipt names: a receipt for more is stored
/// as several entries, so that each one's frame (about 10 bytes an id)
/// stays far below the smallest frame limit a node accepts (4 KiB).
pub const RECEIPT_IDS_PER_ENTRY: usize = 256;

/// Tuning of a fragment.
#[derive(Debug, Clone)]
pub struct FragmentConfig {
    /// Most entries pushed to a device and not yet acknowledged.
    pub window: usize,
    /// Entries read from disk at a time for a backlog.
    pub page: usize,
    /// Largest message payload accepted.
    pub max_payload: usize,
    /// How long a dedupe key outlives its message's arrival.
    pub dedupe_retention_ms: u64,
    /// Caps on undelivered mail per mailbox and per sender in it.
    pub mailbox: MailboxLimits,
    /// How long an entry waits undelivered before it is dropped.
    pub undelivered_ttl_ms: u64,
    /// Groups' limits.
    pub groups: GroupLimits,
}

impl Default for FragmentConfig {
    fn default() -> Self {
        Self {
            window: 256,
            page: 512,
            max_payload: 60 * 1024,
            dedupe_retention_ms: 7 * 24 * 3600 * 1000,
            mailbox: MailboxLimits::default(),
            undelivered_ttl_ms: 30 * 24 * 3600 * 1000,
            groups: GroupLimits::default(),
        }
    }
}

/// The one-tick answer to a send (or the id of a stored receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    /// The assigned (or, for a resend, the original) id.
    pub msg_id: MessageId,
    /// When it was stored.
    pub server_ts: TimestampMs,
}

/// A receipt to store in the mailbox of `owner` (the original sender).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiptRequest {
    /// Who gets the receipt.
    pub owner: PhoneNumber,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// Who received or read.
    pub by: PhoneNumber,
    /// The owner's messages concerned.
    pub msg_ids: Vec<MessageId>,
    /// When.
    pub ts: TimestampMs,
    /// Once stored, tell this fragment to delete these acked entries.
    pub then_delete: Option<(FragmentId, PhoneNumber, Vec<MessageId>)>,
}

/// A message to store (see [`FragmentCore::append`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The recipient, a user of this fragment.
    pub to: PhoneNumber,
    /// The authenticated sender.
    pub from: PhoneNumber,
    /// The sender's dedupe id.
    pub client_msg_id: u64,
    /// The sender's previous message to `to`, if it must be stored first.
    pub after: Option<u64>,
    /// Opaque bytes.
    pub payload: Vec<u8>,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Action<E, R> {
    /// Apply these ops in a group commit, then report [`FragmentCore::committed`]
    /// with `tag`.
    Persist {
        /// Correlates the outcome.
        tag: u64,
        /// The writes.
        ops: Vec<WriteOp>,
    },
    /// Push entries to an attached endpoint, in this order.
    Push {
        /// Where.
        endpoint: E,
        /// What.
        entries: Vec<Entry>,
    },
    /// This endpoint was replaced by a newer attach of the same user.
    Replaced {
        /// The old endpoint.
        endpoint: E,
    },
    /// The token this endpoint logged in with was revoked (its account's
    /// generation rose past it): it gets nothing more and must close.
    Revoked {
        /// The endpoint.
        endpoint: E,
    },
    /// Answer an account read or write.
    AccountReply {
        /// Who waits.
        to: R,
        /// The answer.
        result: Result<AccountReply, FragmentError>,
    },
    /// Answer a waiter.
    Reply {
        /// Who waits.
        to: R,
        /// The answer.
        result: Result<Stored, FragmentError>,
    },
    /// Store a receipt in the fragment that owns its recipient.
    StoreReceipt {
        /// The owner's fragment (may be this one).
        fragment: FragmentId,
        /// The receipt.
        request: ReceiptRequest,
        /// Answer once it is stored (a read receipt passed on).
        waiter: Option<R>,
    },
    /// Answer a group request.
    GroupReply {
        /// Who waits.
        to: R,
        /// The answer.
        result: Result<GroupAnswer, FragmentError>,
    },
    /// Tell another fragment (maybe this one) about a group: a batch of
    /// its log for members there, a batch's confirmation, members'
    /// cursors or theirs. It takes it with [`FragmentCore::group_note`];
    /// a lost note is sent again by whoever waits for its answer.
    Note {
        /// The destination.
        fragment: FragmentId,
        /// What it is told.
        note: GroupNote,
    },
    /// A receipt was stored: the acked entries may now be deleted there.
    DeleteAcked {
        /// The fragment holding them.
        fragment: FragmentId,
        /// Their owner.
        owner: PhoneNumber,
        /// Their ids.
        ids: Vec<MessageId>,
    },
}

type DedupeKey = (PhoneNumber, PhoneNumber, u64);

enum Commit<R> {
    Append {
        key: DedupeKey,
        entry: Entry,
        waiters: Vec<R>,
    },
    Receipt {
        owner: PhoneNumber,
        entry: Entry,
        then_delete: Option<(FragmentId, PhoneNumber, Vec<MessageId>)>,
        waiter: Option<R>,
    },
    Delete {
        ids: Vec<MessageId>,
    },
    Housekeeping,
    Account {
        user: PhoneNumber,
        record: AccountRecord,
        waiter: R,
    },
    Group(GroupCommit<R>),
}

struct Online<E> {
    session_id: u64,
    /// The generation of the token the session logged in with (`None`:
    /// an endpoint without a token, such as a bot).
    generation: Option<u64>,
    endpoint: E,
    /// Loaded, unacknowledged entries.
    queue: BTreeMap<MessageId, EntryBody>,
    /// Entries below this id have been pushed to the current endpoint.
    next_push: MessageId,
    /// Pushed and not yet acknowledged.
    in_flight: usize,
    /// Entries beyond `loaded_until` may wait on disk.
    more_on_disk: bool,
    loaded_until: Option<MessageId>,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounts {
    /// Users attached right now.
    pub online: usize,
    /// Writes waiting for their commit.
    pub pending_commits: usize,
    /// Entries held in memory for online users.
    pub cached_entries: usize,
}

/// The state of one fragment. `E` is an endpoint handle, `R` a reply handle.
pub struct FragmentCore<E, R> {
    id: FragmentId,
    placement: Placement,
    config: FragmentConfig,
    next_seq: u64,
    next_tag: u64,
    online: HashMap<PhoneNumber, Online<E>>,
    commits: HashMap<u64, Commit<R>>,
    pending_appends: HashMap<DedupeKey, u64>,
    pending_ids: HashSet<MessageId>,
    /// Acked entries whose receipt or deletion is not yet durable.
    acked: HashSet<MessageId>,
    /// Undelivered messages per recipient and sender, for the caps.
    usage: MailboxUsage,
    /// Where the next expiry scan goes on.
    expiry_resume: Option<(PhoneNumber, MessageId)>,
    /// Account records written and not yet committed, with their commit's
    /// tag: reads and compare-and-sets see them before the disk does.
    unsettled_accounts: HashMap<PhoneNumber, (AccountRecord, u64)>,
    /// Groups at home here, and marks of group items being stored here.
    groups: Groups,
}

/// Entries an expiry step looks at (bounded work per sweep).
const EXPIRY_SCAN: usize = 20_000;

impl<E: Clone, R> FragmentCore<E, R> {
    /// A core for fragment `id`, continuing from the persisted `next_seq`.
    pub fn new(
        id: FragmentId,
        placement: Placement,
        config: FragmentConfig,
        next_seq: u64,
    ) -> Self {
        Self {
            id,
            placement,
            config,
            next_seq: next_seq.max(1),
            next_tag: 0,
            online: HashMap::new(),
            commits: HashMap::new(),
            pending_appends: HashMap::new(),
            pending_ids: HashSet::new(),
            acked: HashSet::new(),
            usage: MailboxUsage::default(),
            expiry_resume: None,
            unsettled_accounts: HashMap::new(),
            groups: Groups::default(),
        }
    }

    /// The same core, counting the undelivered mail already stored
    /// ([`MailboxRead::usage`]).
    pub fn with_usage(mut self, usage: MailboxUsage) -> Self {
        self.usage = usage;
        self
    }

    /// Counts for metrics.
    pub fn counts(&self) -> CoreCounts {
        CoreCounts {
            online: self.online.len(),
            pending_commits: self.commits.len(),
            cached_entries: self.online.values().map(|o| o.queue.len()).sum(),
        }
    }

    /// What an operator may see of `user`'s mailbox: undelivered entries
    /// and their bytes, and the attached session's id and endpoint.
    pub fn mailbox_of(&self, user: &PhoneNumber) -> (u32, u64, Option<(u64, &E)>) {
        let (entries, bytes) = self.usage.held(user);
        let session = self
            .online
            .get(user)
            .map(|online| (online.session_id, &online.endpoint));
        (entries, bytes, session)
    }

    /// The sequence number the next id gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Gives out ids from `at_least` on, if that is higher: a merge stored
    /// ids a former owner gave out, and a new message must sort after
    /// them (pushes go out in id order, and `next_push` only moves up).
    pub fn raise_next_seq(&mut self, at_least: u64) {
        self.next_seq = self.next_seq.max(at_least);
    }

    fn next_id(&mut self) -> MessageId {
        let id = compose_message_id(self.id, self.next_seq);
        self.next_seq += 1;
        id
    }

    fn persist(&mut self, commit: Commit<R>, ops: Vec<WriteOp>, out: &mut Vec<Action<E, R>>) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.commits.insert(tag, commit);
        out.push(Action::Persist { tag, ops });
    }

    /// A message for a user of this fragment. With `after`, it is refused
    /// ([`FragmentError::EarlierMessageMissing`]) unless the sender's
    /// message `after` to the same user is stored or being stored here:
    /// a sender's pipelined messages are stored in order even when an
    /// earlier one was refused somewhere and is being resent.
    pub fn append(
        &mut self,
        reads: &impl MailboxRead,
        message: NewMessage,
        now: TimestampMs,
        reply: R,
    ) -> Vec<Action<E, R>> {
        let NewMessage {
            to,
            from,
            client_msg_id,
            after,
            payload,
        } = message;
        let mut out = Vec::new();
        if payload.len() > self.config.max_payload {
            out.push(Action::Reply {
                to: reply,
                result: Err(FragmentError::PayloadTooLarge {
                    len: payload.len(),
                    max: self.config.max_payload,
                }),
            });
            return out;
        }
        let key = (to, from, client_msg_id);
        // A resend while the first copy is being committed waits for that commit.
        if let Some(tag) = self.pending_appends.get(&key)
            && let Some(Commit::Append { waiters, .. }) = self.commits.get_mut(tag)
        {
            waiters.push(reply);
            return out;
        }
        match reads.dedupe(&key.0, &key.1, client_msg_id) {
            Ok(Some((msg_id, server_ts))) => {
                out.push(Action::Reply {
                    to: reply,
                    result: Ok(Stored { msg_id, server_ts }),
                });
                return out;
            }
            Ok(None) => {}
            Err(e) => {
                out.push(Action::Reply {
                    to: reply,
                    result: Err(e),
                });
                return out;
            }
        }
        if let Some(earlier) = after {
            // Being committed counts (commits complete in order), and is the
            // usual case for a pipelining sender: the table is read only
            // when the earlier message is not in flight here.
            let earlier_key = (key.0.clone(), key.1.clone(), earlier);
            let present = if self.pending_appends.contains_key(&earlier_key) {
                Ok(true)
            } else {
                reads
                    .dedupe(&key.0, &key.1, earlier)
                    .map(|found| found.is_some())
            };
            let refusal = match present {
                Ok(true) => None,
                Ok(false) => Some(FragmentError::EarlierMessageMissing),
                Err(e) => Some(e),
            };
            if let Some(error) = refusal {
                out.push(Action::Reply {
                    to: reply,
                    result: Err(error),
                });
                return out;
            }
        }
        let bytes = payload.len() as u64;
        if let Err(full) = self
            .usage
            .check(&self.config.mailbox, &key.0, &key.1, bytes)
        {
            let which = match full {
                Full::Sender => "sender",
                Full::Mailbox => "mailbox",
            };
            metrics::counter!("switchboard_sends_refused_mailbox_full_total", "cap" => which)
                .increment(1);
            out.push(Action::Reply {
                to: reply,
                result: Err(FragmentError::MailboxFull(full)),
            });
            return out;
        }
        self.usage.add(&key.0, &key.1, bytes);
        let id = self.next_id();
        let body = EntryBody::Message {
            from: key.1.clone(),
            client_msg_id,
            server_ts: now,
            payload,
        };
        let ops = vec![
            WriteOp::PutMessage {
                recipient: key.0.clone(),
                sender: key.1.clone(),
                client_msg_id,
                id,
                server_ts: now,
                body: body.to_bytes(),
            },
            WriteOp::NextSeq(self.next_seq),
        ];
        self.pending_ids.insert(id);
        let tag = self.next_tag;
        self.pending_appends.insert(key.clone(), tag);
        self.persist(
            Commit::Append {
                key,
                entry: Entry { id, body },
                waiters: vec![reply],
            },
            ops,
            &mut out,
        );
        out
    }

    /// `user` is now reachable at `endpoint`; replaces an older endpoint and
    /// pushes the mailbox from its oldest unacknowledged entry.
    ///
    /// Session ids grow with the time a session started, so an attach from
    /// an *older* session than the one attached (a node re-attaching a
    /// session its client has already left, after a partition healed)
    /// does not displace the newer one: that endpoint is told it was
    /// replaced instead.
    ///
    /// A session that logged in with a token (`generation` set) below the
    /// account's generation is refused ([`FragmentError::TokenRevoked`]):
    /// this fragment sees every login of its users, on every node.
    pub fn attach(
        &mut self,
        reads: &impl MailboxRead,
        user: PhoneNumber,
        session_id: u64,
        generation: Option<u64>,
        endpoint: E,
    ) -> Result<Vec<Action<E, R>>, FragmentError> {
        let mut out = Vec::new();
        if let Some(generation) = generation
            && generation < self.account(reads, &user)?.generation
        {
            return Err(FragmentError::TokenRevoked);
        }
        if self
            .online
            .get(&user)
            .is_some_and(|current| current.session_id > session_id)
        {
            out.push(Action::Replaced { endpoint });
            return Ok(out);
        }
        let first_page = self.load_page(reads, &user, None)?;
        let more_on_disk = first_page.len() >= self.config.page;
        let loaded_until = first_page.last().map(|e| e.id);
        let queue: BTreeMap<_, _> = first_page
            .into_iter()
            .filter(|e| !self.pending_ids.contains(&e.id) && !self.acked.contains(&e.id))
            .map(|e| (e.id, e.body))
            .collect();
        let online = Online {
            session_id,
            generation,
            endpoint,
            queue,
            next_push: 0,
            in_flight: 0,
            more_on_disk,
            loaded_until,
        };
        if let Some(old) = self.online.insert(user.clone(), online)
            && old.session_id != session_id
        {
            out.push(Action::Replaced {
                endpoint: old.endpoint,
            });
        }
        self.pump(reads, &user, &mut out);
        Ok(out)
    }

    /// The endpoint of `session_id` is gone; later entries wait on disk.
    pub fn detach(&mut self, user: &PhoneNumber, session_id: u64) {
        if self
            .online
            .get(user)
            .is_some_and(|o| o.session_id == session_id)
        {
            self.online.remove(user);
        }
    }

    /// Who is attached: user, session id, token generation, endpoint.
    pub fn attached(&self) -> impl Iterator<Item = (&PhoneNumber, u64, Option<u64>, &E)> {
        self.online
            .iter()
            .map(|(user, online)| (user, online.session_id, online.generation, &online.endpoint))
    }

    /// `user`'s account record, as last written (committed or not).
    pub fn account(
        &self,
        reads: &impl MailboxRead,
        user: &PhoneNumber,
    ) -> Result<AccountRecord, FragmentError> {
        match self.unsettled_accounts.get(user) {
            Some((record, _)) => Ok(record.clone()),
            None => reads.account(user),
        }
    }

    /// `user`'s record was replaced on disk behind the core (a merge, after
    /// every earlier write committed): reads go to the disk again, and an
    /// attached session of a token the merged record revokes is closed.
    pub fn account_merged(
        &mut self,
        reads: &impl MailboxRead,
        user: &PhoneNumber,
    ) -> Result<Vec<Action<E, R>>, FragmentError> {
        self.unsettled_accounts.remove(user);
        let generation = reads.account(user)?.generation;
        let mut out = Vec::new();
        self.revoke_below(user, generation, &mut out);
        Ok(out)
    }

    /// Closes `user`'s attached session if its token is below `generation`.
    fn revoke_below(&mut self, user: &PhoneNumber, generation: u64, out: &mut Vec<Action<E, R>>) {
        if self
            .online
            .get(user)
            .is_some_and(|online| online.generation.is_some_and(|g| g < generation))
            && let Some(online) = self.online.remove(user)
        {
            out.push(Action::Revoked {
                endpoint: online.endpoint,
            });
        }
    }

    /// Replaces `user`'s account record if it is still at
    /// `write.expected_version`; answered once durable. A generation above
    /// the attached session's token closes that session at once.
    pub fn write_account(
        &mut self,
        reads: &impl MailboxRead,
        user: PhoneNumber,
        write: AccountWrite,
        waiter: R,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let current = match self.account(reads, &user) {
            Ok(current) => current,
            Err(e) => {
                out.push(Action::AccountReply {
                    to: waiter,
                    result: Err(e),
                });
                return out;
            }
        };
        let refusal = if write.body.len() > MAX_ACCOUNT_BODY {
            Some(format!(
                "an account record of {} bytes exceeds {MAX_ACCOUNT_BODY}",
                write.body.len()
            ))
        } else if write.generation < current.generation {
            Some("an account's generation never falls".to_owned())
        } else {
            None
        };
        if let Some(refusal) = refusal {
            out.push(Action::AccountReply {
                to: waiter,
                result: Err(FragmentError::InvalidRequest(refusal)),
            });
            return out;
        }
        if write.expected_version != current.version {
            out.push(Action::AccountReply {
                to: waiter,
                result: Ok(AccountReply::Conflict(current)),
            });
            return out;
        }
        let record = AccountRecord {
            version: current.version.saturating_add(1),
            generation: write.generation,
            body: write.body,
        };
        self.revoke_below(&user, record.generation, &mut out);
        let ops = vec![WriteOp::PutAccount {
            user: user.clone(),
            record: record.clone(),
        }];
        let tag = self.next_tag;
        self.unsettled_accounts
            .insert(user.clone(), (record.clone(), tag));
        self.persist(
            Commit::Account {
                user,
                record,
                waiter,
            },
            ops,
            &mut out,
        );
        out
    }

    /// Detaches everyone and returns who was attached (a fragment handed
    /// to another node gives its sessions to the new owner).
    pub fn take_attached(&mut self) -> Vec<(PhoneNumber, u64, E)> {
        self.online
            .drain()
            .map(|(user, online)| (user, online.session_id, online.endpoint))
            .collect()
    }

    /// Whether `user` is attached here now.
    pub fn is_online(&self, user: &PhoneNumber) -> bool {
        self.online.contains_key(user)
    }

    fn load_page(
        &self,
        reads: &impl MailboxRead,
        user: &PhoneNumber,
        after: Option<MessageId>,
    ) -> Result<Vec<Entry>, FragmentError> {
        reads.page(user, after, self.config.page)
    }

    /// Pushes entries to `user` until the window is full or nothing is left.
    fn pump(&mut self, reads: &impl MailboxRead, user: &PhoneNumber, out: &mut Vec<Action<E, R>>) {
        let window = self.config.window;
        let page_size = self.config.page;
        let mut batch = Vec::new();
        loop {
            let Some(online) = self.online.get_mut(user) else {
                return;
            };
            if online.in_flight >= window {
                break;
            }
            let next = online
                .queue
                .range(online.next_push..)
                .next()
                .map(|(id, body)| Entry {
                    id: *id,
                    body: body.clone(),
                });
            if let Some(entry) = next {
                online.next_push = entry.id + 1;
                online.in_flight += 1;
                batch.push(entry);
                continue;
            }
            if !online.more_on_disk {
                break;
            }
            let after = online.loaded_until;
            let page = match reads.page(user, after, page_size) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(fragment = self.id, %user, error = %e, "cannot load backlog");
                    break;
                }
            };
            let Some(online) = self.online.get_mut(user) else {
                return;
            };
            online.more_on_disk = page.len() >= page_size;
            if let Some(last) = page.last() {
                online.loaded_until = Some(last.id);
            }
            for entry in page {
                if !self.pending_ids.contains(&entry.id) && !self.acked.contains(&entry.id) {
                    online.queue.insert(entry.id, entry.body);
                }
            }
        }
        if !batch.is_empty()
            && let Some(online) = self.online.get(user)
        {
            out.push(Action::Push {
                endpoint: online.endpoint.clone(),
                entries: batch,
            });
        }
    }

    /// `user`'s device acknowledged entries `ids`. Only entries pushed to
    /// the attached device and not yet acknowledged count; any other id
    /// (repeated, never pushed, or from a device no longer attached) is
    /// ignored without a disk read: its entry, if any, is pushed again at
    /// the next attach and acknowledged then.
    pub fn ack(
        &mut self,
        reads: &impl MailboxRead,
        user: &PhoneNumber,
        ids: &[MessageId],
        now: TimestampMs,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let Some(online) = self.online.get_mut(user) else {
            metrics::counter!("switchboard_acks_ignored_total").increment(ids.len() as u64);
            return out;
        };
        let mut receipts: BTreeMap<PhoneNumber, Vec<MessageId>> = BTreeMap::new();
        let mut deletions = Vec::new();
        let mut groups_delivered = Vec::new();
        let mut ignored = 0u64;
        for &id in ids {
            let in_window = id < online.next_push;
            let Some(body) = in_window.then(|| online.queue.remove(&id)).flatten() else {
                ignored += 1;
                continue;
            };
            online.in_flight = online.in_flight.saturating_sub(1);
            self.acked.insert(id);
            match body {
                EntryBody::Message { from, payload, .. } => {
                    self.usage.remove(user, &from, payload.len() as u64);
                    receipts.entry(from).or_default().push(id);
                }
                EntryBody::Group {
                    group,
                    position,
                    item,
                } => {
                    if item.is_for_members() {
                        groups_delivered.push((group, position));
                    }
                    deletions.push(id);
                }
                // Resolved by the readers: never queued (deleted like the rest).
                EntryBody::Receipt { .. } | EntryBody::GroupRef { .. } => deletions.push(id),
            }
        }
        for (group, position) in groups_delivered {
            self.note_delivered(group, user, position);
        }
        if ignored > 0 {
            metrics::counter!("switchboard_acks_ignored_total").increment(ignored);
        }
        for (sender, msg_ids) in receipts {
            out.push(Action::StoreReceipt {
                waiter: None,
                fragment: self.placement.fragment_of(&sender),
                request: ReceiptRequest {
                    owner: sender,
                    kind: ReceiptKind::Delivered,
                    by: user.clone(),
                    msg_ids: msg_ids.clone(),
                    ts: now,
                    then_delete: Some((self.id, user.clone(), msg_ids)),
                },
            });
        }
        if !deletions.is_empty() {
            self.delete(user.clone(), deletions, &mut out);
        }
        self.pump(reads, user, &mut out);
        out
    }

    fn delete(&mut self, owner: PhoneNumber, ids: Vec<MessageId>, out: &mut Vec<Action<E, R>>) {
        let ops = vec![WriteOp::Delete {
            owner,
            ids: ids.clone(),
        }];
        self.persist(Commit::Delete { ids }, ops, out);
    }

    /// The receipt for these acked entries could not be stored: let them be
    /// delivered again at the next attach.
    pub fn forget_acked(&mut self, ids: &[MessageId]) {
        for id in ids {
            self.acked.remove(id);
        }
    }

    /// Another fragment stored the receipt for these acked entries: delete them.
    pub fn delete_acked(&mut self, owner: PhoneNumber, ids: Vec<MessageId>) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        self.delete(owner, ids, &mut out);
        out
    }

    /// Store a receipt for `request.owner`. One for a user of another
    /// fragment is passed on there: read receipts come through the reader's
    /// own fragment, behind the reader's earlier acks, so that a message's
    /// `Delivered` receipt (which this fragment sends on an ack) reaches its
    /// sender before its `Read`. That fragment first checks the read
    /// ([`FragmentCore::check_read`]): a reader can mark read only messages
    /// that the sender sent it. A receipt naming many messages is stored as
    /// entries of at most [`RECEIPT_IDS_PER_ENTRY`] ids.
    pub fn store_receipt(
        &mut self,
        reads: &impl MailboxRead,
        mut request: ReceiptRequest,
        waiter: Option<R>,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        if request.kind == ReceiptKind::Read && self.placement.fragment_of(&request.by) == self.id {
            match self.check_read(reads, &request) {
                Ok(ids) => request.msg_ids = ids,
                Err(e) => {
                    if let Some(to) = waiter {
                        out.push(Action::Reply { to, result: Err(e) });
                    }
                    return out;
                }
            }
        }
        let owners_fragment = self.placement.fragment_of(&request.owner);
        if owners_fragment != self.id {
            out.push(Action::StoreReceipt {
                fragment: owners_fragment,
                request,
                waiter,
            });
            return out;
        }
        let ReceiptRequest {
            owner,
            kind,
            by,
            msg_ids,
            ts,
            then_delete,
        } = request;
        let chunks: Vec<Vec<MessageId>> = msg_ids
            .chunks(RECEIPT_IDS_PER_ENTRY)
            .map(<[MessageId]>::to_vec)
            .collect();
        let last = chunks.len().saturating_sub(1);
        let mut waiter = waiter;
        for (i, msg_ids) in chunks.into_iter().enumerate() {
            // Each entry deletes the acked entries it names once it is
            // durable; the waiter is answered with the last (commits
            // complete in order).
            let then_delete = then_delete.as_ref().map(|(fragment, acked_owner, _)| {
                (*fragment, acked_owner.clone(), msg_ids.clone())
            });
            let id = self.next_id();
            let body = EntryBody::Receipt {
                kind,
                by: by.clone(),
                msg_ids,
                ts,
            };
            let ops = vec![
                WriteOp::PutReceipt {
                    owner: owner.clone(),
                    id,
                    body: body.to_bytes(),
                },
                WriteOp::NextSeq(self.next_seq),
            ];
            self.pending_ids.insert(id);
            self.persist(
                Commit::Receipt {
                    owner: owner.clone(),
                    entry: Entry { id, body },
                    then_delete,
                    waiter: if i == last { waiter.take() } else { None },
                },
                ops,
                &mut out,
            );
        }
        out
    }

    /// The ids of `read` (a read receipt by a user of this fragment) that
    /// name messages `read.owner` sent to the reader: in the reader's
    /// mailbox now, or delivered to it (see `store`'s delivered marks).
    /// Others are dropped; none left, too many, or none at all is an error.
    fn check_read(
        &self,
        reads: &impl MailboxRead,
        read: &ReceiptRequest,
    ) -> Result<Vec<MessageId>, FragmentError> {
        if read.msg_ids.is_empty() || read.msg_ids.len() > proto::MAX_IDS_PER_ACK {
            return Err(FragmentError::InvalidRequest(format!(
                "a read receipt names 1 to {} messages",
                proto::MAX_IDS_PER_ACK
            )));
        }
        let mut ids = read.msg_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        // Messages to the reader were numbered by the reader's fragment, and
        // one being committed cannot have reached the reader yet.
        ids.retain(|id| fragment_of_message_id(*id) == self.id && !self.pending_ids.contains(id));
        let asked = ids.len();
        let senders = reads.senders(&read.by, &ids)?;
        let ids: Vec<MessageId> = ids
            .into_iter()
            .zip(senders)
            .filter(|(_, sender)| sender.as_ref() == Some(&read.owner))
            .map(|(id, _)| id)
            .collect();
        let refused = asked - ids.len();
        if refused > 0 {
            metrics::counter!("switchboard_read_receipt_ids_refused_total")
                .increment(refused as u64);
        }
        if ids.is_empty() {
            return Err(FragmentError::InvalidRequest(
                "none of these messages was delivered to you from that sender".into(),
            ));
        }
        Ok(ids)
    }

    /// Forget dedupe keys past the retention window (bounded work per call).
    pub fn sweep(&mut self, now: TimestampMs) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let before_ms = now.saturating_sub(self.config.dedupe_retention_ms);
        self.persist(
            Commit::Housekeeping,
            vec![WriteOp::SweepDedupe {
                before_ms,
                max: 10_000,
            }],
            &mut out,
        );
        out
    }

    /// Drops entries that waited undelivered longer than the configured
    /// time, looking at a bounded part of the fragment per call (it goes on
    /// where the last call stopped). Entries pushed and not yet acked are
    /// left to their device.
    pub fn expire(&mut self, reads: &impl MailboxRead, now: TimestampMs) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let before_ms = now.saturating_sub(self.config.undelivered_ttl_ms);
        let scan = match reads.expired(self.expiry_resume.as_ref(), before_ms, EXPIRY_SCAN) {
            Ok(scan) => scan,
            Err(e) => {
                tracing::warn!(fragment = self.id, error = %e, "expiry scan failed");
                return out;
            }
        };
        self.expiry_resume = scan.resume;
        let mut by_owner: BTreeMap<PhoneNumber, Vec<MessageId>> = BTreeMap::new();
        for entry in scan.expired {
            if self.acked.contains(&entry.id) || self.pending_ids.contains(&entry.id) {
                continue;
            }
            if let Some(online) = self.online.get_mut(&entry.owner) {
                if entry.id < online.next_push && online.queue.contains_key(&entry.id) {
                    continue;
                }
                online.queue.remove(&entry.id);
            }
            if let Some(sender) = &entry.sender {
                self.usage.remove(&entry.owner, sender, entry.payload_len);
            }
            self.acked.insert(entry.id);
            by_owner.entry(entry.owner).or_default().push(entry.id);
        }
        for (owner, ids) in by_owner {
            metrics::counter!("switchboard_entries_expired_total").increment(ids.len() as u64);
            self.delete(owner, ids, &mut out);
        }
        out
    }

    /// The commit of `tag` finished with `outcome`.
    pub fn committed(
        &mut self,
        reads: &impl MailboxRead,
        tag: u64,
        outcome: Result<(), String>,
    ) -> Vec<Action<E, R>> {
        let mut out = Vec::new();
        let Some(commit) = self.commits.remove(&tag) else {
            return out;
        };
        match commit {
            Commit::Append {
                key,
                entry,
                waiters,
            } => {
                self.pending_appends.remove(&key);
                self.pending_ids.remove(&entry.id);
                if outcome.is_err()
                    && let EntryBody::Message { payload, .. } = &entry.body
                {
                    self.usage.remove(&key.0, &key.1, payload.len() as u64);
                }
                let result = match &outcome {
                    Ok(()) => Ok(Stored {
                        msg_id: entry.id,
                        server_ts: entry.body.ts(),
                    }),
                    Err(e) => Err(FragmentError::Storage(e.clone())),
                };
                for to in waiters {
                    out.push(Action::Reply {
                        to,
                        result: result.clone(),
                    });
                }
                if outcome.is_ok() {
                    self.deliver(reads, &key.0, entry, &mut out);
                }
            }
            Commit::Account {
                user,
                record,
                waiter,
            } => {
                if self
                    .unsettled_accounts
                    .get(&user)
                    .is_some_and(|(_, pending)| *pending == tag)
                {
                    self.unsettled_accounts.remove(&user);
                }
                out.push(Action::AccountReply {
                    to: waiter,
                    result: outcome
                        .map(|()| AccountReply::Written(record))
                        .map_err(FragmentError::Storage),
                });
            }
            Commit::Receipt {
                owner,
                entry,
                then_delete,
                waiter,
            } => {
                self.pending_ids.remove(&entry.id);
                let ts = entry.body.ts();
                let result = outcome
                    .as_ref()
                    .map(|()| Stored {
                        msg_id: entry.id,
                        server_ts: ts,
                    })
                    .map_err(|e| FragmentError::Storage(e.clone()));
                if let Some(to) = waiter {
                    out.push(Action::Reply {
                        to,
                        result: result.clone(),
                    });
                }
                if outcome.is_ok() {
                    if let Some((fragment, acked_owner, ids)) = then_delete {
                        out.push(Action::DeleteAcked {
                            fragment,
                            owner: acked_owner,
                            ids,
                        });
                    }
                    self.deliver(reads, &owner, entry, &mut out);
                }
            }
            Commit::Delete { ids } => {
                // On failure the entries stay on disk and are delivered again
                // at the next attach; the client drops them by id.
                for id in ids {
                    self.acked.remove(&id);
                }
                if let Err(e) = outcome {
                    tracing::warn!(fragment = self.id, error = %e, "deleting acked entries failed");
                }
            }
            Commit::Group(commit) => self.group_committed(reads, commit, outcome, &mut out),
            Commit::Housekeeping => {
                if let Err(e) = outcome {
                    tracing::warn!(fragment = self.id, error = %e, "dedupe sweep failed");
                }
            }
        }
        out
    }

    /// A committed entry for `owner`: queue it for push if they are attached.
    fn deliver(
        &mut self,
        reads: &impl MailboxRead,
        owner: &PhoneNumber,
        entry: Entry,
        out: &mut Vec<Action<E, R>>,
    ) {
        let Some(online) = self.online.get_mut(owner) else {
            return;
        };
        // Beyond the loaded range it is on disk and will be paged in in order.
        let loaded = !online.more_on_disk || online.loaded_until.is_some_and(|l| entry.id <= l);
        if loaded {
            online.queue.insert(entry.id, entry.body);
        }
        self.pump(reads, owner, out);
    }
}

mod groups;

pub use groups::{
    FANOUT_BATCH, FANOUT_RETRY_TICKS, FanOut, FanOutItem, GroupAnswer, GroupLimits, GroupNote,
    GroupRequest,
};
use groups::{GroupCommit, Groups};

#[cfg(test)]
mod tests;
