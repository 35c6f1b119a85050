//! The delivery check shared by the load generator (`bench messages`,
//! `bench steady`), the demo, the cluster tests and the simulator: every
//! message its sender saw acknowledged arrived at its recipient, once, and
//! in the sender's order.
//!
//! Messages are named by a sequence number per (sender, recipient) pair,
//! which the sender gives in order (in its payload, or as its client id).
//! [`Stream`] judges one pair's arrivals as they come; [`Ledger`] keeps
//! both sides of many pairs and gives the final [`Check`].

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// How one arrival relates to the ones before it on its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Right after the previous one (or the first of the stream).
    Next,
    /// Later than expected: the ones from `from` up to just before it have
    /// not arrived (they may have been refused, or may come late).
    Skipped {
        /// The first missing sequence number.
        from: u64,
    },
    /// Arrived after `after`, a later message of the same sender.
    Late {
        /// The highest sequence number that arrived before it.
        after: u64,
    },
    /// Arrived before.
    Again,
}

/// One recipient's arrivals from one sender.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    seen: BTreeSet<u64>,
    duplicated: Vec<u64>,
    /// (the highest seen before, the late one)
    late: Vec<(u64, u64)>,
}

impl Stream {
    /// Records `seq`'s arrival; sequences start at `first`.
    pub fn arrive(&mut self, first: u64, seq: u64) -> Arrival {
        let arrival = self.judge(first, seq);
        match arrival {
            Arrival::Again => self.duplicated.push(seq),
            Arrival::Late { after } => {
                self.late.push((after, seq));
                self.seen.insert(seq);
            }
            Arrival::Next | Arrival::Skipped { .. } => {
                self.seen.insert(seq);
            }
        }
        arrival
    }

    /// What `seq`'s arrival would be, without recording it.
    pub fn judge(&self, first: u64, seq: u64) -> Arrival {
        if self.seen.contains(&seq) {
            return Arrival::Again;
        }
        match self.seen.last() {
            Some(&highest) if highest > seq => Arrival::Late { after: highest },
            Some(&highest) if highest + 1 == seq => Arrival::Next,
            Some(&highest) => Arrival::Skipped { from: highest + 1 },
            None if seq == first => Arrival::Next,
            None => Arrival::Skipped { from: first },
        }
    }

    /// Whether `seq` arrived.
    pub fn has(&self, seq: u64) -> bool {
        self.seen.contains(&seq)
    }

    /// How many distinct messages arrived.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none arrived.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Both sides of many pairs: what each sender saw acknowledged and what
/// each recipient got. `P` names a pair (sender, recipient).
#[derive(Debug, Clone)]
pub struct Ledger<P> {
    first: u64,
    pairs: HashMap<P, PairLog>,
}

#[derive(Debug, Clone, Default)]
struct PairLog {
    acked: BTreeSet<u64>,
    arrived: Stream,
}

impl<P: Hash + Eq + Clone + Ord> Ledger<P> {
    /// An empty ledger whose pairs number their messages from `first`.
    pub fn new(first: u64) -> Self {
        Self {
            first,
            pairs: HashMap::new(),
        }
    }

    /// The sender of `pair` saw `seq` acknowledged.
    pub fn acked(&mut self, pair: P, seq: u64) {
        self.pairs.entry(pair).or_default().acked.insert(seq);
    }

    /// The recipient of `pair` got `seq`.
    pub fn arrived(&mut self, pair: P, seq: u64) -> Arrival {
        let first = self.first;
        self.pairs
            .entry(pair)
            .or_default()
            .arrived
            .arrive(first, seq)
    }

    /// Messages acknowledged, over all pairs.
    pub fn acked_count(&self) -> u64 {
        self.pairs.values().map(|p| p.acked.len() as u64).sum()
    }

    /// Distinct messages arrived, over all pairs.
    pub fn arrived_count(&self) -> u64 {
        self.pairs.values().map(|p| p.arrived.len() as u64).sum()
    }

    /// Whether every acknowledged message arrived (to know when to stop
    /// waiting).
    pub fn all_arrived(&self) -> bool {
        self.pairs
            .values()
            .all(|p| p.acked.iter().all(|seq| p.arrived.has(*seq)))
    }

    /// Adds `other`'s records. Each pair's arrivals are to be recorded by
    /// one ledger (its recipient's): those of `other` are taken as they are
    /// for pairs this one has no arrivals of, else added in sequence order.
    pub fn absorb(&mut self, other: Ledger<P>) {
        for (pair, log) in other.pairs {
            let mine = self.pairs.entry(pair).or_default();
            mine.acked.extend(log.acked);
            if mine.arrived.is_empty() {
                mine.arrived = log.arrived;
            } else {
                for seq in log.arrived.seen {
                    mine.arrived.arrive(self.first, seq);
                }
                mine.arrived.duplicated.extend(log.arrived.duplicated);
                mine.arrived.late.extend(log.arrived.late);
            }
        }
    }

    /// The faults found, each list in pair then sequence order.
    pub fn check(&self) -> Check<P> {
        let mut pairs: Vec<_> = self.pairs.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let mut check = Check {
            acked: self.acked_count(),
            arrived: self.arrived_count(),
            lost: Vec::new(),
            duplicated: Vec::new(),
            late: Vec::new(),
        };
        for (pair, log) in pairs {
            check.lost.extend(
                log.acked
                    .iter()
                    .filter(|seq| !log.arrived.has(**seq))
                    .map(|seq| (pair.clone(), *seq)),
            );
            check.duplicated.extend(
                log.arrived
                    .duplicated
                    .iter()
                    .map(|seq| (pair.clone(), *seq)),
            );
            check.late.extend(
                log.arrived
                    .late
                    .iter()
                    .map(|(after, seq)| (pair.clone(), *after, *seq)),
            );
        }
        check
    }
}

/// What [`Ledger::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check<P> {
    /// Messages acknowledged to their senders.
    pub acked: u64,
    /// Distinct messages that arrived.
    pub arrived: u64,
    /// Acknowledged but never arrived: (pair, seq).
    pub lost: Vec<(P, u64)>,
    /// Arrived more than once: (pair, seq), once per extra arrival.
    pub duplicated: Vec<(P, u64)>,
    /// Arrived after a later message of its sender: (pair, the later one, seq).
    pub late: Vec<(P, u64, u64)>,
}

impl<P> Check<P> {
    /// No message lost, duplicated or out of order.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.late.is_empty()
    }

    /// One line: "acked A · arrived B · lost L · duplicated D · out of order O".
    pub fn summary(&self) -> String {
        format!(
            "acked {} · arrived {} · lost {} · duplicated {} · out of order {}",
            self.acked,
            self.arrived,
            self.lost.len(),
            self.duplicated.len(),
            self.late.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_by_table() {
        // (arrivals so far, the next, what it is), sequences from 1.
        let cases: &[(&[u64], u64, Arrival)] = &[
            (&[], 1, Arrival::Next),
            (&[], 3, Arrival::Skipped { from: 1 }),
            (&[1, 2], 3, Arrival::Next),
            (&[1, 2], 5, Arrival::Skipped { from: 3 }),
            (&[1, 4], 2, Arrival::Late { after: 4 }),
            (&[1, 4], 4, Arrival::Again),
            (&[1, 4], 1, Arrival::Again),
        ];
        for (before, seq, expected) in cases {
            let mut stream = Stream::default();
            for s in *before {
                stream.arrive(1, *s);
            }
            assert_eq!(stream.judge(1, *seq), *expected, "{before:?} then {seq}");
            assert_eq!(stream.arrive(1, *seq), *expected, "{before:?} then {seq}");
        }
    }

    #[test]
    fn a_clean_run_has_no_faults() {
        let mut ledger = Ledger::new(0);
        for seq in 0..3 {
            ledger.acked(("a", "b"), seq);
        }
        assert!(!ledger.all_arrived());
        // One arrived whose ack its sender never saw: fine.
        for seq in 0..4 {
            ledger.arrived(("a", "b"), seq);
        }
        assert!(ledger.all_arrived());
        let check = ledger.check();
        assert!(check.is_clean(), "{check:?}");
        assert_eq!((check.acked, check.arrived), (3, 4));
    }

    #[test]
    fn each_kind_of_fault_is_named() {
        let mut ledger = Ledger::new(0);
        for seq in 0..5 {
            ledger.acked(("a", "b"), seq);
        }
        for seq in [0, 2, 1, 2, 4] {
            ledger.arrived(("a", "b"), seq);
        }
        let check = ledger.check();
        assert_eq!(check.lost, vec![(("a", "b"), 3)]);
        assert_eq!(check.duplicated, vec![(("a", "b"), 2)]);
        assert_eq!(check.late, vec![(("a", "b"), 2, 1)]);
        assert!(!check.is_clean());
    }

    #[test]
    fn ledgers_of_senders_and_recipients_add_up() {
        let (mut senders, mut recipient) = (Ledger::new(1), Ledger::new(1));
        for seq in 1..=3 {
            senders.acked((1, 2), seq);
            senders.acked((3, 2), seq);
            recipient.arrived((1, 2), seq);
        }
        recipient.arrived((3, 2), 1);
        senders.absorb(recipient);
        let check = senders.check();
        assert_eq!(check.lost, vec![((3, 2), 2), ((3, 2), 3)]);
        assert!(check.duplicated.is_empty() && check.late.is_empty());
    }
}
