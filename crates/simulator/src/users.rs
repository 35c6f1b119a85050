//! Simulated users: each connects to a node, sends its messages to the next
//! user through the client's real resend queue, and acks what it is pushed.
//! What each recipient sees is checked as it arrives: each message once,
//! each sender's in order.

use std::collections::{BTreeMap, BTreeSet};

use client::outbox::{self, Outbox};
use ledger::{Arrival, Stream};
use offline_queue::entry::GroupItem;
use offline_queue::fragment::{GroupAnswer, GroupRequest};
use offline_queue::group::GroupId;
use offline_queue::replica_core::{Answer, LocalRequest};
use offline_queue::{EntryBody, FragmentError, NewMessage, Push, fragment_of_message_id};
use proto::{MessageId, PhoneNumber};
use rand::Rng;
use router::{FragmentId, Placement};

use crate::world::{Ev, World};

/// A session's push handle: the user and which of its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) user: usize,
    pub(crate) session: u64,
}

/// Who waits for an answer on a node.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// A user's send of `client_msg_id` in session `session`.
    Send {
        user: usize,
        session: u64,
        client_msg_id: u64,
    },
    /// A user's attach.
    Attach { user: usize, session: u64 },
    /// A group sender's creation of its group.
    CreateGroup { user: usize },
    /// A group sender's send of `client_msg_id`.
    SendGroup {
        user: usize,
        session: u64,
        client_msg_id: u64,
    },
    /// A request of another node passed on to a third fragment (a read
    /// receipt): answered over the link to `node`.
    Remote {
        node: String,
        req: u64,
        fragment: FragmentId,
    },
}

/// Sends in flight at once per user (the real client pipelines too).
const WINDOW: usize = 4;

/// A send unanswered by then is sent again.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

struct User {
    phone: PhoneNumber,
    to: usize,
    /// A group sender sends to a group of every user, not to `to`.
    group: Option<GroupSender>,
    /// `(node, session, attached)`.
    session: Option<(usize, u64, bool)>,
    attach_deadline: u64,
    next_session: u64,
    outbox: Outbox<()>,
    next_cid: u64,
    in_flight: BTreeMap<u64, u64>,
    acked: BTreeSet<u64>,
    /// Per sender: client id → the server id it was first delivered with.
    received: BTreeMap<usize, BTreeMap<u64, MessageId>>,
    /// Per sender: the order client ids arrived in (the shared delivery check).
    arrivals: BTreeMap<usize, Stream>,
    wake_at: Option<u64>,
}

/// A group sender's group, once created.
#[derive(Debug, Default)]
struct GroupSender {
    group: Option<GroupId>,
    /// A create is out (since when).
    creating: Option<u64>,
}

/// Each sender numbers its messages from this client id.
const FIRST_CLIENT_ID: u64 = 1;

pub(crate) struct Users {
    users: Vec<User>,
    /// Messages pushed again under a second id, hidden by the client.
    pub(crate) second_copies: u64,
    /// Messages that arrived after a later one of their sender because an
    /// owner acked them alone before its partner took over.
    pub(crate) reordered_by_splits: u64,
    messages: u64,
    by_phone: BTreeMap<PhoneNumber, usize>,
    placement: Placement,
}

impl Users {
    /// `count` users; the first `group_senders` of them send to a group of
    /// everyone instead of to the next user.
    pub(crate) fn new(
        count: usize,
        group_senders: usize,
        messages: u64,
        placement: &Placement,
    ) -> Self {
        let users: Vec<User> = (0..count)
            .map(|i| User {
                group: (i < group_senders).then(GroupSender::default),
                phone: PhoneNumber::parse(&format!("+1555{:07}", 100 + i)).unwrap_or_else(|_| {
                    // Cannot happen: the pattern is a valid number.
                    PhoneNumber::parse("+15550000000").expect("a valid number")
                }),
                to: (i + 1) % count,
                session: None,
                attach_deadline: 0,
                next_session: 0,
                outbox: Outbox::new(),
                next_cid: FIRST_CLIENT_ID,
                in_flight: BTreeMap::new(),
                acked: BTreeSet::new(),
                received: BTreeMap::new(),
                arrivals: BTreeMap::new(),
                wake_at: None,
            })
            .collect();
        let by_phone = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.phone.clone(), i))
            .collect();
        Self {
            users,
            second_copies: 0,
            reordered_by_splits: 0,
            messages,
            by_phone,
            placement: *placement,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    pub(crate) fn phone(&self, user: usize) -> PhoneNumber {
        self.users[user].phone.clone()
    }

    pub(crate) fn acked(&self) -> u64 {
        self.users.iter().map(|u| u.acked.len() as u64).sum()
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.users
            .iter()
            .map(|u| u.received.values().map(|m| m.len() as u64).sum::<u64>())
            .sum()
    }

    /// Every message sent, acknowledged and delivered.
    pub(crate) fn all_done(&self) -> bool {
        (0..self.users.len()).all(|i| self.unfinished_sender(i).is_none())
    }

    /// Who should receive sender `i`'s messages.
    fn recipients_of(&self, i: usize) -> Vec<usize> {
        match self.users[i].group {
            Some(_) => (0..self.users.len()).filter(|r| *r != i).collect(),
            None => vec![self.users[i].to],
        }
    }

    /// What sender `i` still lacks: acks, or deliveries at a recipient.
    fn unfinished_sender(&self, i: usize) -> Option<String> {
        let u = &self.users[i];
        let short: Vec<String> = self
            .recipients_of(i)
            .into_iter()
            .filter_map(|r| {
                let got = self.users[r].received.get(&i).map_or(0, |m| m.len());
                (got as u64 != self.messages).then(|| format!("{got} at {r}"))
            })
            .collect();
        if u.acked.len() as u64 == self.messages && short.is_empty() {
            return None;
        }
        let to = match &u.group {
            Some(g) => format!("group {:?}", g.group),
            None => u.to.to_string(),
        };
        Some(format!(
            "user {i} -> {to}: {} acked, delivered {} of {} ({})",
            u.acked.len(),
            if short.is_empty() {
                "all".into()
            } else {
                short.join(", ")
            },
            self.messages,
            match u.session {
                Some((n, s, attached)) => format!("session {s} on node {n}, attached {attached}"),
                None => "not connected".into(),
            }
        ))
    }

    pub(crate) fn unfinished(&self) -> String {
        (0..self.users.len())
            .filter_map(|i| self.unfinished_sender(i))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Node `n` died: its sessions are gone. Returns their users, who
    /// connect again.
    pub(crate) fn node_lost(&mut self, n: usize) -> Vec<usize> {
        let mut lost = Vec::new();
        for (i, user) in self.users.iter_mut().enumerate() {
            if user.session.is_some_and(|(node, _, _)| node == n) {
                user.session = None;
                user.in_flight.clear();
                user.outbox.mark_all_unsent();
                lost.push(i);
            }
        }
        lost
    }

    fn fragment_of(&self, user: usize) -> FragmentId {
        self.placement.fragment_of(&self.users[user].phone)
    }
}

impl World {
    /// Wakes user `u` at `delay` from now (once; an earlier wake wins).
    pub(crate) fn wake(&mut self, u: usize, delay: u64) {
        let at = self.now + delay;
        let user = &mut self.users.users[u];
        if user.wake_at.is_some_and(|t| t <= at && t >= self.now) {
            return;
        }
        user.wake_at = Some(at);
        self.at(delay, Ev::Client(u));
    }

    pub(crate) fn client_wake(&mut self, u: usize) -> Result<(), String> {
        if self.users.users[u].wake_at.is_some_and(|t| t > self.now) {
            return Ok(());
        }
        self.users.users[u].wake_at = None;
        let Some((node, session, attached)) = self.users.users[u].session else {
            return self.connect(u);
        };
        // Phones sleep: now and then a user goes offline for a while, so
        // that mailboxes hold messages across failovers and copies.
        if attached && self.faulty() && self.rng.random_bool(0.01) {
            let asleep = self.rng.random_range(2_000..15_000);
            self.note(format!("user {u} goes offline for {asleep} ms"));
            self.users.users[u].session = None;
            self.users.users[u].in_flight.clear();
            self.users.users[u].outbox.mark_all_unsent();
            self.detach(u, node, session);
            self.wake(u, asleep);
            return Ok(());
        }
        if !attached {
            if self.now >= self.users.users[u].attach_deadline {
                self.users.users[u].session = None;
                self.detach(u, node, session);
                let back = self.rng.random_range(200..1_000);
                self.wake(u, back);
            } else {
                self.wake(u, 200);
            }
            return Ok(());
        }
        // Sends unanswered for too long go out again.
        let now = self.now;
        let user = &mut self.users.users[u];
        let late: Vec<u64> = user
            .in_flight
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(cid, _)| *cid)
            .collect();
        for cid in late {
            user.in_flight.remove(&cid);
            user.outbox.mark_unsent(cid);
        }
        let messages = self.users.messages;
        let to_user = user.to;
        let to = match &mut user.group {
            None => Some(outbox::Target::User(
                self.users.users[to_user].phone.clone(),
            )),
            Some(GroupSender {
                group: Some(group), ..
            }) => Some(outbox::Target::Group(*group)),
            Some(sender) => {
                // No group yet: create it (again, if the answer is late:
                // a group whose answer was lost is left unused).
                if sender
                    .creating
                    .is_none_or(|at| at + REQUEST_TIMEOUT_MS <= now)
                {
                    sender.creating = Some(now);
                    self.create_group(u, node);
                }
                None
            }
        };
        let user = &mut self.users.users[u];
        if let Some(to) = to
            && user.outbox.len() < WINDOW
            && user.next_cid <= messages
        {
            let cid = user.next_cid;
            user.next_cid += 1;
            let payload = cid.to_be_bytes().to_vec();
            user.outbox.push(to, cid, payload, ());
        }
        let from = self.users.users[u].phone.clone();
        let sends = self.users.users[u].outbox.take_unsent();
        for send in sends {
            self.users.users[u]
                .in_flight
                .insert(send.client_msg_id, now + REQUEST_TIMEOUT_MS);
            let to = match send.to {
                outbox::Target::User(to) => to,
                outbox::Target::Group(group) => {
                    let request = GroupRequest::Send {
                        group,
                        from: from.clone(),
                        client_msg_id: send.client_msg_id,
                        after: send.after,
                        payload: send.payload,
                    };
                    let reply = Reply::SendGroup {
                        user: u,
                        session,
                        client_msg_id: send.client_msg_id,
                    };
                    let fragment = fragment_of_message_id(group);
                    self.request(u, node, fragment, LocalRequest::Group { request, reply });
                    continue;
                }
            };
            let fragment = self.users.placement.fragment_of(&to);
            let message = NewMessage {
                to,
                from: from.clone(),
                client_msg_id: send.client_msg_id,
                after: send.after,
                payload: send.payload,
            };
            let reply = Reply::Send {
                user: u,
                session,
                client_msg_id: send.client_msg_id,
            };
            self.request(u, node, fragment, LocalRequest::Append { message, reply });
        }
        let user = &self.users.users[u];
        if !user.outbox.is_empty() || user.next_cid <= self.users.messages {
            let next = self.rng.random_range(30..300);
            self.wake(u, next);
        }
        Ok(())
    }

    /// Group sender `u` creates a group of every other user.
    fn create_group(&mut self, u: usize, node: usize) {
        let members = (0..self.users.len())
            .filter(|m| *m != u)
            .map(|m| self.phone(m))
            .collect();
        let request = GroupRequest::Create {
            creator: self.phone(u),
            name: format!("sim {u}"),
            members,
        };
        let reply = Reply::CreateGroup { user: u };
        let fragment = self.users.fragment_of(u);
        self.note(format!("user {u} creates its group"));
        self.request(u, node, fragment, LocalRequest::Group { request, reply });
    }

    /// Connects user `u` to a running node and attaches there.
    fn connect(&mut self, u: usize) -> Result<(), String> {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].alive)
            .collect();
        if alive.is_empty() {
            self.wake(u, 500);
            return Ok(());
        }
        let node = alive[self.rng.random_range(0..alive.len())];
        let user = &mut self.users.users[u];
        user.next_session += 1;
        // Session ids grow over the user's life, as the node gives them.
        let session = (self.now << 16) | user.next_session;
        user.session = Some((node, session, false));
        user.attach_deadline = self.now + REQUEST_TIMEOUT_MS;
        user.in_flight.clear();
        user.outbox.mark_all_unsent();
        let endpoint = self.endpoint(u, session);
        let request = LocalRequest::Attach {
            user: self.phone(u),
            endpoint,
            reply: Reply::Attach { user: u, session },
        };
        let fragment = self.users.fragment_of(u);
        self.request(u, node, fragment, request);
        self.wake(u, 500);
        Ok(())
    }

    fn detach(&mut self, u: usize, node: usize, session: u64) {
        if !self.nodes[node].alive {
            return;
        }
        let fragment = self.users.fragment_of(u);
        let user = self.phone(u);
        let request = LocalRequest::Detach {
            user,
            session_id: session,
        };
        self.request(u, node, fragment, request);
    }

    /// User `u`'s client sends `request` for `fragment` to `node` (this
    /// life of it), after the connection's delay.
    fn request(
        &mut self,
        u: usize,
        node: usize,
        fragment: FragmentId,
        request: LocalRequest<Target, Reply>,
    ) {
        let life = self.nodes[node].life;
        let delay = self.client_delay(true, u, node);
        self.at(
            delay,
            Ev::Request {
                node,
                life,
                fragment,
                request,
            },
        );
    }

    pub(crate) fn client_answer(&mut self, reply: Reply, answer: Answer) -> Result<(), String> {
        match (reply, answer) {
            (Reply::Attach { user: u, session }, Answer::Attached(result)) => {
                self.note(format!("user {u} session {session} attach: {result:?}"));
                let user = &mut self.users.users[u];
                let Some((node, current, _)) = user.session else {
                    return Ok(());
                };
                if current != session {
                    return Ok(());
                }
                match result {
                    Ok(()) => {
                        user.session = Some((node, session, true));
                        self.wake(u, 0);
                    }
                    Err(_) => {
                        user.session = None;
                        let back = self.rng.random_range(300..1_500);
                        self.wake(u, back);
                    }
                }
            }
            (Reply::CreateGroup { user: u, .. }, Answer::Group(result)) => {
                self.note(format!("user {u} group created: {result:?}"));
                if let Some(sender) = &mut self.users.users[u].group {
                    sender.creating = None;
                    if let Ok(GroupAnswer::Created { group }) = result
                        && sender.group.is_none()
                    {
                        sender.group = Some(group);
                    }
                }
                self.wake(u, 1);
            }
            (
                Reply::SendGroup {
                    user,
                    session,
                    client_msg_id,
                },
                Answer::Group(result),
            ) => {
                let stored = result.and_then(|answer| match answer {
                    GroupAnswer::Sent(stored) => Ok(stored),
                    other => Err(FragmentError::InvalidRequest(format!(
                        "a group send answered {other:?}"
                    ))),
                });
                let reply = Reply::Send {
                    user,
                    session,
                    client_msg_id,
                };
                return self.client_answer(reply, Answer::Stored(stored));
            }
            (
                Reply::Send {
                    user: u,
                    session,
                    client_msg_id,
                },
                Answer::Stored(result),
            ) => match result {
                Ok(_) => {
                    let user = &mut self.users.users[u];
                    user.in_flight.remove(&client_msg_id);
                    if user.outbox.complete(client_msg_id).is_some() {
                        user.acked.insert(client_msg_id);
                        self.note(format!("user {u} message {client_msg_id} acked"));
                    }
                    self.wake(u, 1);
                }
                Err(e) => {
                    self.note(format!("user {u} message {client_msg_id} refused: {e}"));
                    let user = &mut self.users.users[u];
                    let current = user.session.is_some_and(|(_, s, _)| s == session);
                    if current && user.in_flight.remove(&client_msg_id).is_some() {
                        user.outbox.mark_unsent(client_msg_id);
                        let back = match e {
                            FragmentError::EarlierMessageMissing => 5,
                            _ => self.rng.random_range(100..600),
                        };
                        self.wake(u, back);
                    }
                }
            },
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn client_push(
        &mut self,
        target: crate::users::Target,
        push: Push,
    ) -> Result<(), String> {
        let u = target.user;
        let Some((node, session, _)) = self.users.users[u].session else {
            return Ok(());
        };
        if session != target.session {
            return Ok(());
        }
        let entries = match push {
            Push::Entries(entries) => entries,
            Push::Replaced | Push::Revoked => {
                self.note(format!("user {u} session {session}: {push:?}"));
                self.users.users[u].session = None;
                let back = self.rng.random_range(200..1_000);
                self.wake(u, back);
                return Ok(());
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            ids.push(entry.id);
            let (from, client_msg_id, group) = match entry.body {
                EntryBody::Message {
                    from,
                    client_msg_id,
                    ..
                } => (from, client_msg_id, None),
                EntryBody::Group {
                    group,
                    item:
                        GroupItem::Message {
                            from,
                            client_msg_id,
                            ..
                        },
                    ..
                } => (from, client_msg_id, Some(group)),
                // Receipts, group changes and ticks: acked.
                _ => continue,
            };
            let Some(&sender) = self.users.by_phone.get(&from) else {
                return Err(format!("user {u} got a message from a stranger {from}"));
            };
            let expected = self.users.users[sender].group.as_ref().map(|g| g.group);
            if let (Some(group), Some(expected)) = (group, expected)
                && Some(group) != expected
            {
                return Err(format!(
                    "user {u} got {from}'s message in group {group:#x}, not {expected:?}"
                ));
            }
            if group.is_some() != expected.is_some() {
                return Err(format!("user {u} got {from}'s message by the wrong route"));
            }
            self.received(u, sender, client_msg_id, entry.id, group.is_some())?;
        }
        let fragment = self.users.fragment_of(u);
        let user = self.phone(u);
        self.request(u, node, fragment, LocalRequest::Ack { user, ids });
        Ok(())
    }

    /// User `u` is pushed `sender`'s message `cid` as `id`: shown once (a
    /// second id for it is a duplicate), and in the sender's order.
    fn received(
        &mut self,
        u: usize,
        sender: usize,
        cid: u64,
        id: MessageId,
        by_group: bool,
    ) -> Result<(), String> {
        let seen = self.users.users[u].received.entry(sender).or_default();
        match seen.get(&cid) {
            Some(first) if *first == id => return Ok(()),
            // Stored twice under two ids (two owners overlapped: a frozen
            // owner thawing, or a cut between partners that both see the
            // rest). The real client hides the second copy by its sender
            // and client id and acks it; counted.
            Some(first) => {
                let first = *first;
                self.users.second_copies += 1;
                self.note(format!(
                    "user {u} hides user {sender}'s message {cid} as {id:#x} (shown as {first:#x})"
                ));
                return Ok(());
            }
            None => {}
        }
        // A message acked by an owner whose partner did not have it (the
        // divergent log) reaches the recipient only once that owner's
        // writes are merged: if the partner took over meanwhile, the
        // sender's later messages come first. The documented exception
        // of a split (docs/architecture.md, "What is guaranteed"):
        // counted, not failed; the end still checks that it arrives.
        let from = self.users.users[sender].phone.clone();
        // A group message may have been stored alone at the group's home
        // (whoever gets it) or in the recipient's mailbox.
        let to = self.users.users[u].phone.clone();
        let split = |c: u64| {
            self.checks.acked_alone(&from, Some(&to), c)
                || (by_group && self.checks.acked_alone(&from, None, c))
        };
        let arrivals = self.users.users[u].arrivals.entry(sender).or_default();
        match arrivals.arrive(FIRST_CLIENT_ID, cid) {
            Arrival::Next | Arrival::Again => {}
            Arrival::Late { after } => {
                if !split(cid) {
                    return Err(format!(
                        "out of order: user {u} got user {sender}'s message {cid} after {after}"
                    ));
                }
                self.users.reordered_by_splits += 1;
            }
            Arrival::Skipped { from } => {
                if !(from..cid).all(split) {
                    return Err(format!(
                        "gap: user {u} got user {sender}'s message {cid} before {}",
                        cid - 1
                    ));
                }
                self.users.reordered_by_splits += 1;
            }
        }
        let seen = self.users.users[u].received.entry(sender).or_default();
        seen.insert(cid, id);
        self.note(format!(
            "user {u} got user {sender}'s message {cid} as {id:#x}"
        ));
        Ok(())
    }
}
