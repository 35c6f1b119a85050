//! Who may hold a connection: one count shared by every listener of a node
//! (TLS and WebSocket), with separate caps for connections that have not
//! logged in yet (*guests*) and per source address.
//!
//! Guests cost the node without proving anything, so they get a smaller
//! share than logged-in users, and no source may hold more than its share
//! of either: one host cannot take every slot, and a flood of unfinished
//! handshakes cannot keep real users from logging in. A source is an IPv4
//! address or an IPv6 /64 (one host usually holds a whole /64). Carrier NAT
//! puts many phones behind one address, so the per-source defaults are
//! generous; see `docs/security.md`.
//!
//! [`Admission::admit`] hands out a [`Ticket`] that gives its slots back
//! when dropped; [`Ticket::logged_in`] moves it from the guest counts to the
//! member counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections of every kind, on every listener.
    pub max_connections: usize,
    /// Connections not logged in yet.
    pub max_guests: usize,
    /// Connections of every kind from one source.
    pub max_per_source: usize,
    /// Guests from one source.
    pub max_guests_per_source: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_guests: 10_000,
            max_per_source: 10_000,
            max_guests_per_source: 1_000,
        }
    }
}

/// Why a connection was refused (the metric's `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection slot of the node is taken.
    NodeFull,
    /// Every guest slot of the node is taken.
    GuestsFull,
    /// The source holds its share of connections.
    SourceFull,
    /// The source holds its share of guests.
    SourceGuestsFull,
}

impl Refusal {
    /// The metric label.
    pub fn cause(self) -> &'static str {
        match self {
            Refusal::NodeFull => "node_full",
            Refusal::GuestsFull => "guests_full",
            Refusal::SourceFull => "source_full",
            Refusal::SourceGuestsFull => "source_guests_full",
        }
    }
}

/// The source a connection counts against (see [`proto::source_of`]).
pub use proto::source_of;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    connections: usize,
    guests: usize,
}

#[derive(Debug, Default)]
struct Held {
    total: Counts,
    by_source: HashMap<IpAddr, Counts>,
}

impl Held {
    fn admit(&mut self, limits: &AdmissionLimits, source: IpAddr) -> Result<(), Refusal> {
        let here = self.by_source.get(&source).copied().unwrap_or_default();
        if self.total.connections >= limits.max_connections {
            return Err(Refusal::NodeFull);
        }
        if self.total.guests >= limits.max_guests {
            return Err(Refusal::GuestsFull);
        }
        if here.connections >= limits.max_per_source {
            return Err(Refusal::SourceFull);
        }
        if here.guests >= limits.max_guests_per_source {
            return Err(Refusal::SourceGuestsFull);
        }
        for counts in [&mut self.total, self.by_source.entry(source).or_default()] {
            counts.connections += 1;
            counts.guests += 1;
        }
        Ok(())
    }

    fn logged_in(&mut self, source: IpAddr) {
        self.total.guests = self.total.guests.saturating_sub(1);
        if let Some(here) = self.by_source.get_mut(&source) {
            here.guests = here.guests.saturating_sub(1);
        }
    }

    fn release(&mut self, source: IpAddr, guest: bool) {
        let take = |counts: &mut Counts| {
            counts.connections = counts.connections.saturating_sub(1);
            if guest {
                counts.guests = counts.guests.saturating_sub(1);
            }
        };
        take(&mut self.total);
        if let Some(here) = self.by_source.get_mut(&source) {
            take(here);
            if here.connections == 0 {
                self.by_source.remove(&source);
            }
        }
    }
}

/// The node's connection counts, shared by its listeners.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    held: Mutex<Held>,
}

impl Admission {
    /// Counts for a node with these caps.
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            held: Mutex::new(Held::default()),
        })
    }

    /// The caps.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Counting never panics while holding the lock; a poisoned lock
        // still holds consistent counts.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A guest's ticket for a connection from `peer`, or why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let source = source_of(peer);
        self.held().admit(&self.limits, source)?;
        Ok(Ticket {
            admission: Arc::clone(self),
            source,
            guest: true,
        })
    }

    /// (connections, guests) held now.
    pub fn held_now(&self) -> (usize, usize) {
        let held = self.held();
        (held.total.connections, held.total.guests)
    }
}

/// One connection's slots, given back on drop.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    guest: bool,
}

impl Ticket {
    /// The connection logged in: it no longer counts as a guest.
    pub fn logged_in(&mut self) {
        if self.guest {
            self.guest = false;
            self.admission.held().logged_in(self.source);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.held().release(self.source, self.guest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Each step: admit from a source (true) or log in / drop ticket `n`.
    #[test]
    fn caps_by_table() {
        let admission = Admission::new(AdmissionLimits {
            max_connections: 5,
            max_guests: 3,
            max_per_source: 3,
            max_guests_per_source: 2,
        });
        let mut tickets = Vec::new();
        let admit = |tickets: &mut Vec<Ticket>, from: &str| {
            admission.admit(ip(from)).map(|t| tickets.push(t))
        };
        assert_eq!(admit(&mut tickets, "1.1.1.1"), Ok(()));
        assert_eq!(admit(&mut tickets, "1.1.1.1"), Ok(()));
        assert_eq!(
            admit(&mut tickets, "1.1.1.1"),
            Err(Refusal::SourceGuestsFull)
        );
        assert_eq!(admit(&mut tickets, "2.2.2.2"), Ok(()));
        assert_eq!(admit(&mut tickets, "3.3.3.3"), Err(Refusal::GuestsFull));
        // Logging in frees guest slots, not connection slots.
        tickets[0].logged_in();
        tickets[1].logged_in();
        assert_eq!(admission.held_now(), (3, 1));
        assert_eq!(admit(&mut tickets, "1.1.1.1"), Ok(()));
        assert_eq!(admit(&mut tickets, "1.1.1.1"), Err(Refusal::SourceFull));
        assert_eq!(admit(&mut tickets, "4.4.4.4"), Ok(()));
        assert_eq!(admit(&mut tickets, "5.5.5.5"), Err(Refusal::NodeFull));
        // Dropping gives everything back.
        tickets.clear();
        assert_eq!(admission.held_now(), (0, 0));
        assert!(admission.held().by_source.is_empty());
    }
}
