//! The pure core of membership: which peers are up, which to dial, when to
//! give up on a silent one. Time comes in as arguments so that the rules are
//! tested without clocks or sockets; the actor in `membership.rs` carries
//! out the actions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::HeartbeatConfig;

/// First redial delay after a failure; doubles up to the configured cap.
const FIRST_REDIAL: Duration = Duration::from_millis(100);

/// Something the membership actor must do or announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a link to this peer.
    Dial {
        /// Peer name.
        name: String,
        /// Its cluster address.
        addr: SocketAddr,
    },
    /// Send a heartbeat.
    Ping {
        /// Peer name.
        name: String,
    },
    /// Send this node's cluster layout (see [`crate::Layout`]): at link-up,
    /// in answer to the peer's, and each heartbeat until the peer's
    /// arrives.
    Hello {
        /// Peer name.
        name: String,
    },
    /// Close the link to a peer gone silent, so that it is dialed afresh
    /// (ractor_cluster never notices a silent peer by itself).
    DropLink {
        /// Peer name.
        name: String,
    },
    /// The peer is up: announce it.
    Up {
        /// Peer name.
        name: String,
    },
    /// The peer is down: announce it.
    Down {
        /// Peer name.
        name: String,
        /// Why.
        reason: DownReason,
    },
}

/// Why a peer was declared down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Nothing heard for longer than the heartbeat timeout.
    Silent,
    /// Its link closed.
    LinkClosed,
    /// Its cluster layout differs from this node's.
    LayoutDiffers,
}

/// Whether a peer's cluster layout is known to equal this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayoutCheck {
    /// Not heard on this link yet.
    Unknown,
    /// Equal: the peer may come up.
    Agreed,
    /// Different: the peer never comes up until a link brings an equal one.
    Refused,
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    /// Links are opened by the node with the smaller name only, so two
    /// nodes never race two links to each other.
    we_dial: bool,
    up: bool,
    /// The link in use, by an id the shell gives each link (its node
    /// session's): a second link to the peer, or an old one, closing must
    /// not count as this one's closing.
    link: Option<u64>,
    dialing: bool,
    layout: LayoutCheck,
    /// When the current link became ready: a peer that sends no layout for
    /// a heartbeat timeout after is a node of an older release.
    linked_at: Option<Instant>,
    last_heard: Option<Instant>,
    next_dial: Instant,
    backoff: Duration,
}

/// Every peer's state as this node sees it.
#[derive(Debug)]
pub struct PeerTable {
    peers: BTreeMap<String, Peer>,
    down_after: Duration,
    max_redial: Duration,
}

impl PeerTable {
    /// Peers of node `this`, none of them up yet.
    pub fn new<'a>(
        this: &str,
        peers: impl IntoIterator<Item = (&'a str, SocketAddr)>,
        heartbeat: &HeartbeatConfig,
        now: Instant,
    ) -> Self {
        let peers = peers
            .into_iter()
            .filter(|(name, _)| *name != this)
            .map(|(name, addr)| {
                let peer = Peer {
                    addr,
                    we_dial: this < name,
                    up: false,
                    link: None,
                    dialing: false,
                    layout: LayoutCheck::Unknown,
                    linked_at: None,
                    last_heard: None,
                    next_dial: now,
                    backoff: FIRST_REDIAL,
                };
                (name.to_owned(), peer)
            })
            .collect();
        Self {
            peers,
            down_after: heartbeat.down_after(),
            max_redial: heartbeat.max_redial(),
        }
    }

    /// One heartbeat period: silent peers go down, lost links are redialed,
    /// linked peers are pinged.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (name, peer) in &mut self.peers {
            let silent = peer
                .last_heard
                .is_none_or(|heard| now.saturating_duration_since(heard) > self.down_after);
            if peer.up && silent {
                peer.up = false;
                actions.push(Action::Down {
                    name: name.clone(),
                    reason: DownReason::Silent,
                });
            }
            if peer.link.is_some() && silent && peer.last_heard.is_some() {
                actions.push(Action::DropLink { name: name.clone() });
                peer.last_heard = None;
            }
            if peer.we_dial && peer.link.is_none() && !peer.dialing && now >= peer.next_dial {
                peer.dialing = true;
                actions.push(Action::Dial {
                    name: name.clone(),
                    addr: peer.addr,
                });
            }
            if peer.link.is_some() {
                if peer.layout == LayoutCheck::Unknown {
                    actions.push(Action::Hello { name: name.clone() });
                }
                actions.push(Action::Ping { name: name.clone() });
            }
            // A peer linked and heard for a heartbeat timeout that never
            // sent its layout runs a release from before the layout check:
            // it is counted without one, so that a rolling upgrade goes on.
            let legacy = peer.layout == LayoutCheck::Unknown
                && !silent
                && peer
                    .linked_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= self.down_after);
            if peer.link.is_some() && legacy && !peer.up {
                peer.up = true;
                actions.push(Action::Up { name: name.clone() });
            }
        }
        actions
    }

    /// A dial ended. On failure the next one waits longer (doubling, capped,
    /// scaled by `jitter` in 0.5..=1.0 so that restarted nodes spread out).
    /// On success the link is still being set up (authentication, then
    /// ready): no second dial for a heartbeat timeout, since two links to one
    /// peer make ractor_cluster close one as a duplicate.
    pub fn dial_finished(&mut self, name: &str, ok: bool, now: Instant, jitter: f64) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        peer.dialing = false;
        if ok {
            peer.next_dial = peer.next_dial.max(now + self.down_after);
        } else {
            peer.next_dial = now + peer.backoff.mul_f64(jitter.clamp(0.5, 1.0));
            peer.backoff = (peer.backoff * 2).min(self.max_redial);
        }
    }

    /// Link `link` to the peer is authenticated and ready, and is the link
    /// in use from now on; counts as hearing the peer. The peer comes up
    /// once its layout is found equal to this node's.
    pub fn link_ready(&mut self, name: &str, link: u64, now: Instant) -> Vec<Action> {
        match self.peers.get_mut(name) {
            Some(peer) => {
                peer.link = Some(link);
                peer.dialing = false;
                peer.backoff = FIRST_REDIAL;
                peer.layout = LayoutCheck::Unknown;
                peer.linked_at = Some(now);
            }
            None => return Vec::new(),
        }
        let mut actions = vec![Action::Hello {
            name: name.to_owned(),
        }];
        actions.extend(self.heard(name, now));
        actions
    }

    /// The peer's layout arrived: equal (`agreed`) or not. An equal one
    /// brings the peer up and is answered with this node's (the peer may
    /// still wait for it); a different one closes the link, and the peer
    /// stays down.
    pub fn layout(&mut self, name: &str, agreed: bool, now: Instant) -> Vec<Action> {
        let Some(peer) = self.peers.get_mut(name) else {
            return Vec::new();
        };
        if peer.link.is_none() {
            return Vec::new();
        }
        if !agreed {
            peer.layout = LayoutCheck::Refused;
            let mut actions = vec![Action::DropLink {
                name: name.to_owned(),
            }];
            if peer.up {
                peer.up = false;
                actions.push(Action::Down {
                    name: name.to_owned(),
                    reason: DownReason::LayoutDiffers,
                });
            }
            return actions;
        }
        let mut actions = Vec::new();
        if peer.layout != LayoutCheck::Agreed {
            peer.layout = LayoutCheck::Agreed;
            actions.push(Action::Hello {
                name: name.to_owned(),
            });
        }
        actions.extend(self.heard(name, now));
        actions
    }

    /// Whether `link` is the link in use to the peer.
    pub fn is_link(&self, name: &str, link: u64) -> bool {
        self.peers.get(name).is_some_and(|p| p.link == Some(link))
    }

    /// The link in use to the peer, if any.
    pub fn link_of(&self, name: &str) -> Option<u64> {
        self.peers.get(name).and_then(|p| p.link)
    }

    /// Link `link` to the peer closed. Only the link in use counts: a
    /// duplicate link (ractor_cluster closes the second of two links to
    /// one peer) or an old one closing late leaves the link in use up.
    pub fn link_closed(&mut self, name: &str, link: u64, now: Instant, jitter: f64) -> Vec<Action> {
        let Some(peer) = self.peers.get_mut(name) else {
            return Vec::new();
        };
        if peer.link != Some(link) {
            return Vec::new();
        }
        peer.link = None;
        peer.linked_at = None;
        peer.last_heard = None;
        peer.next_dial = now + peer.backoff.mul_f64(jitter.clamp(0.5, 1.0));
        if peer.up {
            peer.up = false;
            return vec![Action::Down {
                name: name.to_owned(),
                reason: DownReason::LinkClosed,
            }];
        }
        Vec::new()
    }

    /// Something arrived from the peer. Without a link in use it proves
    /// nothing (the last messages of a closed link, or the first of one not
    /// ready yet): counting it would make the table believe in a link that
    /// nothing closes or redials.
    pub fn heard(&mut self, name: &str, now: Instant) -> Vec<Action> {
        let Some(peer) = self.peers.get_mut(name) else {
            return Vec::new();
        };
        if peer.link.is_none() {
            return Vec::new();
        }
        peer.last_heard = Some(now);
        if !peer.up && peer.layout == LayoutCheck::Agreed {
            peer.up = true;
            return vec![Action::Up {
                name: name.to_owned(),
            }];
        }
        Vec::new()
    }

    /// Whether a name belongs to a configured peer.
    pub fn knows(&self, name: &str) -> bool {
        self.peers.contains_key(name)
    }

    /// Names of all configured peers.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.peers.keys().map(String::as_str)
    }

    /// Names of the peers that are up.
    pub fn up(&self) -> impl Iterator<Item = &str> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 6222))
    }

    fn table(this: &str, now: Instant) -> PeerTable {
        let peers = [("n1", addr(1)), ("n2", addr(2)), ("n3", addr(3))];
        PeerTable::new(this, peers, &HeartbeatConfig::default(), now)
    }

    fn dials(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Dial { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_smaller_name_dials() {
        let now = Instant::now();
        assert_eq!(dials(&table("n1", now).tick(now)), ["n2", "n3"]);
        assert_eq!(dials(&table("n2", now).tick(now)), ["n3"]);
        assert!(dials(&table("n3", now).tick(now)).is_empty());
    }

    #[test]
    fn a_dial_in_flight_is_not_repeated() {
        let now = Instant::now();
        let mut t = table("n2", now);
        assert_eq!(dials(&t.tick(now)), ["n3"]);
        assert!(dials(&t.tick(now + Duration::from_secs(5))).is_empty());
    }

    #[test]
    fn a_dial_handed_over_is_not_repeated_while_its_link_comes_up() {
        let now = Instant::now();
        let mut t = table("n2", now);
        assert_eq!(dials(&t.tick(now)), ["n3"]);
        t.dial_finished("n3", true, now, 1.0);
        assert!(dials(&t.tick(now + Duration::from_millis(400))).is_empty());
        // A link that never became ready is dialed again.
        assert_eq!(dials(&t.tick(now + Duration::from_millis(1_100))), ["n3"]);
    }

    #[test]
    fn failed_dials_back_off_up_to_the_cap() {
        let start = Instant::now();
        let mut t = table("n2", start);
        let mut now = start;
        let mut waits = Vec::new();
        assert_eq!(dials(&t.tick(now)), ["n3"]);
        let mut last_dial = now;
        for _ in 0..8 {
            t.dial_finished("n3", false, now, 1.0);
            // Advance in 10 ms steps until the next dial happens.
            while dials(&t.tick(now)).is_empty() {
                now += Duration::from_millis(10);
            }
            waits.push(now - last_dial);
            last_dial = now;
        }
        assert!(waits[0] <= Duration::from_millis(110), "{waits:?}");
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(
            *waits.last().expect("waits") <= Duration::from_millis(2_010),
            "{waits:?}"
        );
    }

    /// A link made ready and the peer's equal layout received.
    fn link_agreed(t: &mut PeerTable, name: &str, now: Instant) {
        t.link_ready(name, 1, now);
        t.layout(name, true, now);
    }

    #[test]
    fn a_ready_link_brings_the_peer_up_once_its_layout_agrees_and_pings_it() {
        let now = Instant::now();
        let mut t = table("n1", now);
        let hello = Action::Hello { name: "n2".into() };
        assert_eq!(t.link_ready("n2", 1, now), std::slice::from_ref(&hello));
        assert!(t.up().next().is_none(), "not before its layout is known");
        // Asked again each heartbeat until it arrives.
        assert!(t.tick(now).contains(&hello));
        assert_eq!(
            t.layout("n2", true, now),
            [hello.clone(), Action::Up { name: "n2".into() }]
        );
        assert!(t.layout("n2", true, now).is_empty(), "answered once");
        assert!(t.heard("n2", now).is_empty());
        let tick = t.tick(now);
        assert!(tick.contains(&Action::Ping { name: "n2".into() }));
        assert!(!tick.contains(&hello));
        assert_eq!(t.up().collect::<Vec<_>>(), ["n2"]);
    }

    #[test]
    fn a_peer_with_another_layout_is_dropped_and_never_comes_up() {
        let now = Instant::now();
        let mut t = table("n1", now);
        t.link_ready("n2", 1, now);
        assert_eq!(
            t.layout("n2", false, now),
            [Action::DropLink { name: "n2".into() }]
        );
        // Its pings do not bring it up, nor does the time that would count
        // a silent older release.
        assert!(t.heard("n2", now).is_empty());
        let later = now + Duration::from_millis(1_500);
        t.heard("n2", later);
        assert!(!t.tick(later).iter().any(|a| matches!(a, Action::Up { .. })));
        assert!(t.up().next().is_none());
        // A new link starts the check afresh.
        t.link_closed("n2", 1, later, 1.0);
        link_agreed(&mut t, "n2", later);
        assert_eq!(t.up().collect::<Vec<_>>(), ["n2"]);
    }

    #[test]
    fn a_peer_that_sends_no_layout_is_counted_after_a_heartbeat_timeout() {
        // A node of the release before the layout check: a rolling upgrade
        // must not lose it.
        let now = Instant::now();
        let mut t = table("n1", now);
        t.link_ready("n2", 1, now);
        let mut at = now;
        while at + Duration::from_millis(200) < now + Duration::from_millis(1_000) {
            at += Duration::from_millis(200);
            t.heard("n2", at);
            assert!(!t.tick(at).iter().any(|a| matches!(a, Action::Up { .. })));
        }
        at += Duration::from_millis(200);
        t.heard("n2", at);
        assert!(t.tick(at).contains(&Action::Up { name: "n2".into() }));
    }

    #[test]
    fn a_silent_peer_goes_down_and_its_link_is_dropped() {
        let now = Instant::now();
        let mut t = table("n1", now);
        link_agreed(&mut t, "n2", now);
        let later = now + Duration::from_millis(900);
        assert!(
            !t.tick(later)
                .iter()
                .any(|a| matches!(a, Action::Down { .. }))
        );
        let late = now + Duration::from_millis(1_001);
        let actions = t.tick(late);
        assert!(actions.contains(&Action::Down {
            name: "n2".into(),
            reason: DownReason::Silent
        }));
        assert!(actions.contains(&Action::DropLink { name: "n2".into() }));
        // Dropped once, not on every later tick.
        let again = t.tick(late + Duration::from_millis(200));
        assert!(!again.contains(&Action::DropLink { name: "n2".into() }));
    }

    #[test]
    fn a_closed_link_is_down_at_once_and_redialed() {
        let now = Instant::now();
        let mut t = table("n1", now);
        t.tick(now);
        link_agreed(&mut t, "n2", now);
        let closed = t.link_closed("n2", 1, now, 1.0);
        assert_eq!(
            closed,
            [Action::Down {
                name: "n2".into(),
                reason: DownReason::LinkClosed
            }]
        );
        assert!(t.up().next().is_none());
        let redial = t.tick(now + Duration::from_millis(150));
        assert!(dials(&redial).contains(&"n2"));
    }

    /// 633b122: ractor_cluster closes the second of two links to one peer;
    /// that closing once dropped the link in use from the table, the peer
    /// went down with its link alive, and a healed partition stayed split.
    #[test]
    fn a_duplicate_link_closing_leaves_the_link_in_use_up() {
        let now = Instant::now();
        let mut t = table("n1", now);
        link_agreed(&mut t, "n2", now);
        assert!(t.link_closed("n2", 2, now, 1.0).is_empty());
        assert!(t.is_link("n2", 1));
        assert_eq!(t.up().collect::<Vec<_>>(), ["n2"]);
        // And its pings go on counting.
        let later = now + Duration::from_millis(900);
        t.heard("n2", later);
        let tick = t.tick(now + Duration::from_millis(1_500));
        assert!(!tick.iter().any(|a| matches!(a, Action::Down { .. })));
    }

    #[test]
    fn messages_without_a_link_in_use_prove_nothing() {
        let now = Instant::now();
        let mut t = table("n1", now);
        link_agreed(&mut t, "n2", now);
        t.link_closed("n2", 1, now, 1.0);
        assert!(t.heard("n2", now).is_empty());
        assert_eq!(t.link_of("n2"), None);
        let redial = t.tick(now + Duration::from_millis(150));
        assert!(
            dials(&redial).contains(&"n2"),
            "redialed, not believed linked"
        );
    }

    #[test]
    fn strangers_are_ignored() {
        let now = Instant::now();
        let mut t = table("n1", now);
        assert!(t.heard("n9", now).is_empty());
        assert!(t.link_ready("n1", 1, now).is_empty(), "itself is no peer");
        assert!(t.layout("n9", true, now).is_empty());
        assert!(!t.knows("n9"));
    }
}
