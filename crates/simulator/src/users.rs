//! Simulated users: each connects to a node, sends its messages to the next
//! user through the client's real resend queue, and acks what it is pushed.
//! What each recipient sees is checked as it arrives: each message once,
//! each sender's in order.

use std::collections::{BTreeMap, BTreeSet};

use client::outbox::{self, Outbox};
use ledger::{Arrival, Stream};
use offline_queue::replica_core::{Answer, LocalRequest};
use offline_queue::{EntryBody, FragmentError, NewMessage, Push};
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
    pub(crate) fn new(count: usize, messages: u64, placement: &Placement) -> Self {
        let users: Vec<User> = (0..count)
            .map(|i| User {
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
        self.users.iter().enumerate().all(|(i, u)| {
            u.acked.len() as u64 == self.messages && {
                let to = &self.users[u.to];
                to.received.get(&i).map_or(0, |m| m.len()) as u64 == self.messages
            }
        })
    }

    pub(crate) fn unfinished(&self) -> String {
        let mut parts = Vec::new();
        for (i, u) in self.users.iter().enumerate() {
            let received = self.users[u.to].received.get(&i).map_or(0, |m| m.len());
            if u.acked.len() as u64 != self.messages || received as u64 != self.messages {
                parts.push(format!(
                    "user {i} -> {}: {} acked, {} delivered of {} ({})",
                    u.to,
                    u.acked.len(),
                    received,
                    self.messages,
                    match u.session {
                        Some((n, s, attached)) =>
                            format!("session {s} on node {n}, attached {attached}"),
                        None => "not connected".into(),
                    }
                ));
            }
        }
        parts.join("; ")
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
        if user.outbox.len() < WINDOW && user.next_cid <= messages {
            let cid = user.next_cid;
            user.next_cid += 1;
            let to = self.users.users[to_user].phone.clone();
            let payload = cid.to_be_bytes().to_vec();
            self.users.users[u].outbox.push(to, cid, payload, ());
        }
        let from = self.users.users[u].phone.clone();
        let sends = self.users.users[u].outbox.take_unsent();
        for send in sends {
            // The simulated users send 1:1 only.
            let outbox::Target::User(to) = send.to else {
                continue;
            };
            self.users.users[u]
                .in_flight
                .insert(send.client_msg_id, now + REQUEST_TIMEOUT_MS);
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
            if let EntryBody::Message {
                from,
                client_msg_id,
                ..
            } = entry.body
            {
                let Some(&sender) = self.users.by_phone.get(&from) else {
                    return Err(format!("user {u} got a message from a stranger {from}"));
                };
                self.received(u, sender, client_msg_id, entry.id)?;
            }
        }
        let fragment = self.users.fragment_of(u);
        let user = self.phone(u);
        self.request(u, node, fragment, LocalRequest::Ack { user, ids });
        Ok(())
    }

    /// User `u` is pushed `sender`'s message `cid` as `id`: shown once (a
    /// second id for it is a duplicate), and in the sender's order.
    fn received(&mut self, u: usize, sender: usize, cid: u64, id: MessageId) -> Result<(), String> {
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
        let to = self.users.users[u].phone.clone();
        let split = |c: u64| self.checks.acked_alone(&from, &to, c);
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
