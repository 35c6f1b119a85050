//! The resend queue: sends that the node has not acknowledged yet.
//!
//! A send enters when the app calls it and leaves when its
//! [`proto::Response::ServerAck`] arrives (or it fails for good). After a
//! reconnect every entry still here is sent again, in the original order and
//! with its original `client_msg_id`, so the node stores it once and answers
//! the same ack. Each send names the one before it to the same recipient
//! that is still waiting ([`Outgoing::after`]): the node stores it only
//! after that one, so a refusal in the middle of a pipeline cannot reorder
//! a conversation. Pure: the waiter `T` is whatever the caller wants to wake.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proto::{GroupId, PhoneNumber};

/// Where a send goes: a user, or a group (which keeps the same order and
/// dedupe rules per sender).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A user.
    User(PhoneNumber),
    /// A group.
    Group(GroupId),
}

impl From<PhoneNumber> for Target {
    fn from(user: PhoneNumber) -> Self {
        Target::User(user)
    }
}

/// One unacknowledged send.
#[derive(Debug)]
pub struct Entry<T> {
    /// The recipient.
    pub to: Target,
    /// The dedupe key, fixed for the life of the entry.
    pub client_msg_id: u64,
    /// The bytes.
    pub payload: Vec<u8>,
    /// Who waits for the ack.
    pub waiter: T,
}

/// What to put on the wire for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient.
    pub to: Target,
    /// The dedupe key.
    pub client_msg_id: u64,
    /// The previous waiting send to the same recipient, which the node
    /// must store first.
    pub after: Option<u64>,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// Unacknowledged sends in the order they were made.
///
/// Keyed by a sequence number in order of [`Outbox::push`]; the entries not on
/// the wire are a separate ordered set, so taking them costs what they are,
/// not what the whole queue is.
#[derive(Debug)]
pub struct Outbox<T> {
    entries: BTreeMap<u64, Entry<T>>,
    unsent: BTreeSet<u64>,
    seq_of: HashMap<u64, u64>,
    /// The waiting sends of each recipient.
    by_recipient: HashMap<Target, BTreeSet<u64>>,
    next_seq: u64,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            unsent: BTreeSet::new(),
            seq_of: HashMap::new(),
            by_recipient: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl<T> Outbox<T> {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `client_msg_id` is waiting here.
    pub fn contains(&self, client_msg_id: u64) -> bool {
        self.seq_of.contains_key(&client_msg_id)
    }

    /// Queues a send behind the others. Returns `false` (and queues nothing)
    /// if `client_msg_id` is already waiting.
    pub fn push(
        &mut self,
        to: impl Into<Target>,
        client_msg_id: u64,
        payload: Vec<u8>,
        waiter: T,
    ) -> bool {
        if self.contains(client_msg_id) {
            return false;
        }
        let to = to.into();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(client_msg_id, seq);
        self.by_recipient.entry(to.clone()).or_default().insert(seq);
        self.unsent.insert(seq);
        self.entries.insert(
            seq,
            Entry {
                to,
                client_msg_id,
                payload,
                waiter,
            },
        );
        true
    }

    /// The entries not on the wire now, oldest first, marked as on the wire.
    pub fn take_unsent(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.unsent)
            .into_iter()
            .filter_map(|seq| Some((seq, self.entries.get(&seq)?)))
            .map(|(seq, e)| Outgoing {
                to: e.to.clone(),
                client_msg_id: e.client_msg_id,
                after: self
                    .by_recipient
                    .get(&e.to)
                    .and_then(|seqs| seqs.range(..seq).next_back())
                    .and_then(|earlier| self.entries.get(earlier))
                    .map(|earlier| earlier.client_msg_id),
                payload: e.payload.clone(),
            })
            .collect()
    }

    /// The send of `client_msg_id` got no answer (timeout, retryable error):
    /// it goes out again with the next [`Outbox::take_unsent`].
    pub fn mark_unsent(&mut self, client_msg_id: u64) {
        if let Some(seq) = self.seq_of.get(&client_msg_id) {
            self.unsent.insert(*seq);
        }
    }

    /// The connection dropped: everything goes out again after the next login.
    pub fn mark_all_unsent(&mut self) {
        self.unsent = self.entries.keys().copied().collect();
    }

    /// Removes `client_msg_id` (acknowledged, or failed for good).
    pub fn complete(&mut self, client_msg_id: u64) -> Option<Entry<T>> {
        let seq = self.seq_of.remove(&client_msg_id)?;
        self.unsent.remove(&seq);
        let entry = self.entries.remove(&seq)?;
        if let Some(seqs) = self.by_recipient.get_mut(&entry.to) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_recipient.remove(&entry.to);
            }
        }
        Some(entry)
    }

    /// Removes everything, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Entry<T>> + use<T> {
        self.seq_of.clear();
        self.unsent.clear();
        self.by_recipient.clear();
        std::mem::take(&mut self.entries).into_values()
    }

    /// Number of waiting sends.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no send is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone() -> PhoneNumber {
        PhoneNumber::parse("+15550001111").expect("valid")
    }

    fn ids(out: &[Outgoing]) -> Vec<u64> {
        out.iter().map(|o| o.client_msg_id).collect()
    }

    #[test]
    fn sends_go_out_once_in_order() {
        let mut outbox = Outbox::new();
        for id in [30, 10, 20] {
            assert!(outbox.push(phone(), id, vec![id as u8], ()));
        }
        let first = outbox.take_unsent();
        assert_eq!(ids(&first), [30, 10, 20]);
        assert_eq!(first[1].payload, [10]);
        assert!(outbox.take_unsent().is_empty(), "all on the wire");
        outbox.push(phone(), 40, vec![], ());
        assert_eq!(ids(&outbox.take_unsent()), [40]);
    }

    #[test]
    fn reconnect_resends_unacked_in_original_order() {
        let mut outbox = Outbox::new();
        for id in 1..=5 {
            outbox.push(phone(), id, vec![], ());
        }
        outbox.take_unsent();
        assert!(outbox.complete(2).is_some());
        assert!(outbox.complete(4).is_some());
        outbox.mark_all_unsent();
        assert_eq!(ids(&outbox.take_unsent()), [1, 3, 5]);
        assert_eq!(outbox.len(), 3);
    }

    #[test]
    fn a_single_entry_can_be_retried() {
        let mut outbox = Outbox::new();
        for id in 1..=3 {
            outbox.push(phone(), id, vec![], ());
        }
        outbox.take_unsent();
        outbox.mark_unsent(2);
        outbox.mark_unsent(99); // unknown: ignored
        assert_eq!(ids(&outbox.take_unsent()), [2]);
    }

    #[test]
    fn duplicate_ids_are_refused_and_acks_resolve_once() {
        let mut outbox = Outbox::new();
        assert!(outbox.push(phone(), 7, vec![1], "first"));
        assert!(!outbox.push(phone(), 7, vec![2], "second"));
        let entry = outbox.complete(7).expect("waiting");
        assert_eq!(entry.waiter, "first");
        assert!(outbox.complete(7).is_none(), "a second ack finds nothing");
        assert!(outbox.is_empty());
        // The id may be used again once it left.
        assert!(outbox.push(phone(), 7, vec![3], "third"));
    }

    #[test]
    fn each_send_names_the_waiting_one_before_it_to_the_same_recipient() {
        let other = PhoneNumber::parse("+15550002222").expect("valid");
        let mut outbox = Outbox::new();
        outbox.push(phone(), 1, vec![], ());
        outbox.push(other.clone(), 2, vec![], ());
        outbox.push(phone(), 3, vec![], ());
        outbox.push(phone(), 4, vec![], ());
        let after = |out: &[Outgoing]| out.iter().map(|o| o.after).collect::<Vec<_>>();
        assert_eq!(after(&outbox.take_unsent()), [None, None, Some(1), Some(3)]);
        // 1 acked, 3 refused: 3 goes again with nothing before it, and 4
        // (refused too, since 3 was missing) after 3.
        outbox.complete(1);
        outbox.mark_unsent(3);
        outbox.mark_unsent(4);
        let again = outbox.take_unsent();
        assert_eq!(ids(&again), [3, 4]);
        assert_eq!(after(&again), [None, Some(3)]);
        outbox.complete(3);
        outbox.complete(4);
        outbox.push(phone(), 5, vec![], ());
        assert_eq!(after(&outbox.take_unsent()), [None]);
    }

    #[test]
    fn drain_empties_in_order() {
        let mut outbox = Outbox::new();
        for id in [3, 1, 2] {
            outbox.push(phone(), id, vec![], id);
        }
        let drained: Vec<_> = outbox.drain().map(|e| e.waiter).collect();
        assert_eq!(drained, [3, 1, 2]);
        assert!(outbox.is_empty());
        assert!(!outbox.contains(1));
    }
}
