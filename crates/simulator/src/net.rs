//! The virtual network between nodes: one link per pair, FIFO in each
//! direction, cut directions that hold messages back until they heal or
//! the link closes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use offline_queue::remote::FragmentWire;
use router::FragmentId;

/// What crosses a link.
#[derive(Debug, Clone)]
pub(crate) enum NetMsg {
    Ping,
    Pong,
    Hello,
    /// The sender closed the link (a FIN or RST).
    Closed,
    Fragment {
        fragment: FragmentId,
        wire: FragmentWire,
    },
}

/// One message on its way.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) link: u64,
    pub(crate) msg: NetMsg,
}

/// Links and cuts.
#[derive(Debug, Default)]
pub(crate) struct Net {
    /// Each node's current link id to each peer (its own view).
    pub(crate) links: BTreeMap<(usize, usize), u64>,
    next_link: u64,
    /// Directions that deliver nothing now.
    pub(crate) cut: BTreeSet<(usize, usize)>,
    /// Links whose data in flight is lost (the sender's host died); only
    /// their closing still arrives.
    pub(crate) severed: BTreeSet<u64>,
    /// Messages held back on a cut direction, in order.
    held: BTreeMap<(usize, usize), VecDeque<InFlight>>,
    /// The time the last message of each direction is due: later ones are
    /// never due earlier (FIFO).
    last_due: BTreeMap<(usize, usize), u64>,
}

impl Net {
    /// An id for a link being set up.
    pub(crate) fn next_link_id(&mut self) -> u64 {
        self.next_link += 1;
        self.next_link
    }

    /// Link `id` between `a` and `b` is ready: the one messages go over.
    pub(crate) fn open(&mut self, a: usize, b: usize, id: u64) {
        self.links.insert((a, b), id);
        self.links.insert((b, a), id);
    }

    /// `node`'s current link to `peer`.
    pub(crate) fn link(&self, node: usize, peer: usize) -> Option<u64> {
        self.links.get(&(node, peer)).copied()
    }

    /// `node` forgets its link to `peer`.
    pub(crate) fn forget(&mut self, node: usize, peer: usize) {
        self.links.remove(&(node, peer));
    }

    /// Sends over `from`'s current link to `to` (nothing without one):
    /// returns the message and when it is due, or holds it back on a cut.
    pub(crate) fn send(
        &mut self,
        now: u64,
        delay: u64,
        from: usize,
        to: usize,
        msg: NetMsg,
    ) -> Option<(u64, InFlight)> {
        let link = self.link(from, to)?;
        let flight = InFlight {
            from,
            to,
            link,
            msg,
        };
        if self.cut.contains(&(from, to)) {
            self.held.entry((from, to)).or_default().push_back(flight);
            return None;
        }
        Some((self.due(now, delay, from, to), flight))
    }

    fn due(&mut self, now: u64, delay: u64, from: usize, to: usize) -> u64 {
        let last = self.last_due.entry((from, to)).or_insert(0);
        *last = (*last).max(now + delay);
        *last
    }

    /// Heals the direction: what it held goes out, in order.
    pub(crate) fn heal(
        &mut self,
        now: u64,
        delay: u64,
        from: usize,
        to: usize,
    ) -> Vec<(u64, InFlight)> {
        self.cut.remove(&(from, to));
        let held = self.held.remove(&(from, to)).unwrap_or_default();
        held.into_iter()
            .map(|flight| (self.due(now, delay, from, to), flight))
            .collect()
    }

    /// Whether messages from `a` reach `b` and back now.
    pub(crate) fn open_both_ways(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a))
    }
}
