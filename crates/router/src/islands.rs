//! fragment → island → owner, and who owns a fragment now.
//!
//! Islands are pairs of nodes. Fragment `f` lives on island
//! `f % islands`; inside it the first node is the preferred primary for half
//! of the island's fragments and the second for the other half. Ownership
//! changes only with a higher epoch: a secondary that loses its primary
//! promotes itself with `epoch + 1`, and a node that restarts serves nothing
//! until it has heard its partner's view, since the partner may have promoted
//! itself and acknowledged writes while this node was away.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::FragmentId;

/// The island pairs of a cluster. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Islands {
    pairs: Arc<[[String; 2]]>,
}

impl Islands {
    /// Islands from config (validated elsewhere: distinct, known nodes).
    pub fn new(pairs: Vec<[String; 2]>) -> Self {
        Self {
            pairs: pairs.into(),
        }
    }

    /// `(preferred primary, preferred secondary)` of fragment `f`, or `None`
    /// when there are no islands (a single node owns everything).
    pub fn members(&self, f: FragmentId) -> Option<(&str, &str)> {
        let count = self.pairs.len();
        if count == 0 {
            return None;
        }
        let [a, b] = &self.pairs[usize::from(f) % count];
        // Alternate inside the island so each member is preferred for half.
        if (usize::from(f) / count).is_multiple_of(2) {
            Some((a, b))
        } else {
            Some((b, a))
        }
    }
}

/// Who owns a fragment, since which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Grows with every change of owner; a higher epoch always wins.
    pub epoch: u64,
    /// The owning node.
    pub node: String,
}

/// What this node does for a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves the fragment's reads and writes.
    Primary,
    /// Holds a replica fed by the primary; forwards requests to it.
    Secondary,
    /// Holds nothing; forwards requests to the owner.
    Forward,
    /// An island member back from a restart: serves and forwards nothing
    /// until its partner has told it who owns the fragment.
    Waiting,
}

/// One fragment's ownership as one node sees it. Pure: the fragment actor
/// feeds it what it hears and persists what it returns.
#[derive(Debug, Clone)]
pub struct FragmentOwnership {
    this: String,
    /// The other member of this node's island for the fragment, if this
    /// node is a member.
    partner: Option<String>,
    /// No islands at all: this node owns everything.
    alone: bool,
    current: Owner,
    /// Heard the partner's view since this node started.
    synced: bool,
}

impl FragmentOwnership {
    /// The view of node `this` at start: `persisted` if it stored one, else
    /// the preferred primary at epoch 1 (island members) or 0 (others, so
    /// that any announcement replaces the guess).
    pub fn new(this: &str, islands: &Islands, f: FragmentId, persisted: Option<Owner>) -> Self {
        let Some((preferred, secondary)) = islands.members(f) else {
            return Self {
                this: this.to_owned(),
                partner: None,
                alone: true,
                current: Owner {
                    epoch: 1,
                    node: this.to_owned(),
                },
                synced: true,
            };
        };
        let partner = if this == preferred {
            Some(secondary.to_owned())
        } else if this == secondary {
            Some(preferred.to_owned())
        } else {
            None
        };
        let initial_epoch = if partner.is_some() { 1 } else { 0 };
        let current = persisted.unwrap_or(Owner {
            epoch: initial_epoch,
            node: preferred.to_owned(),
        });
        Self {
            this: this.to_owned(),
            synced: partner.is_none(),
            partner,
            alone: false,
            current,
        }
    }

    /// The owner as known now.
    pub fn owner(&self) -> &Owner {
        &self.current
    }

    /// The island partner, if this node is in the fragment's island.
    pub fn partner(&self) -> Option<&str> {
        self.partner.as_deref()
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        if self.alone {
            return Role::Primary;
        }
        match &self.partner {
            None => Role::Forward,
            Some(_) if !self.synced => Role::Waiting,
            Some(_) if self.current.node == self.this => Role::Primary,
            Some(_) => Role::Secondary,
        }
    }

    /// `from` says `owner` owns the fragment. Returns the new owner if it
    /// changed (to be persisted), so a higher epoch always wins.
    pub fn observe(&mut self, from: &str, owner: Owner) -> Option<Owner> {
        if self.partner.as_deref() == Some(from) {
            self.synced = true;
        }
        if owner.epoch > self.current.epoch {
            self.current = owner;
            return Some(self.current.clone());
        }
        None
    }

    /// The partner is down. A synced secondary whose primary it was
    /// promotes itself: returns the new owner to persist and announce.
    pub fn partner_down(&mut self) -> Option<Owner> {
        let partner = self.partner.as_deref()?;
        if self.synced && self.current.node == partner {
            self.current = Owner {
                epoch: self.current.epoch + 1,
                node: self.this.clone(),
            };
            return Some(self.current.clone());
        }
        None
    }

    /// Gives ownership to the partner (a hand-back after it caught up).
    /// Returns the new owner to persist and announce, if this node owned it.
    pub fn hand_to_partner(&mut self) -> Option<Owner> {
        let partner = self.partner.clone()?;
        if self.current.node != self.this {
            return None;
        }
        self.current = Owner {
            epoch: self.current.epoch + 1,
            node: partner,
        };
        Some(self.current.clone())
    }

    /// Whether this node owns the fragment without being its preferred
    /// primary (it took over in a failover and should hand it back).
    pub fn holds_for_partner(&self, islands: &Islands, f: FragmentId) -> bool {
        self.current.node == self.this
            && islands
                .members(f)
                .is_some_and(|(preferred, _)| preferred != self.this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn islands() -> Islands {
        Islands::new(vec![["n1".into(), "n2".into()], ["n3".into(), "n4".into()]])
    }

    #[test]
    fn fragments_spread_over_islands_and_alternate_inside_them() {
        let i = islands();
        assert_eq!(i.members(0), Some(("n1", "n2")));
        assert_eq!(i.members(1), Some(("n3", "n4")));
        assert_eq!(i.members(2), Some(("n2", "n1")));
        assert_eq!(i.members(3), Some(("n4", "n3")));
        let preferred_n1 = (0..256).filter(|f| i.members(*f).map(|m| m.0) == Some("n1"));
        assert_eq!(preferred_n1.count(), 64);
        assert_eq!(Islands::new(vec![]).members(5), None);
    }

    #[test]
    fn a_lone_node_owns_everything() {
        let o = FragmentOwnership::new("solo", &Islands::new(vec![]), 3, None);
        assert_eq!(o.role(), Role::Primary);
    }

    #[test]
    fn island_members_wait_for_their_partner_then_take_their_roles() {
        let i = islands();
        let mut primary = FragmentOwnership::new("n1", &i, 0, None);
        let mut secondary = FragmentOwnership::new("n2", &i, 0, None);
        assert_eq!(primary.role(), Role::Waiting);
        assert_eq!(secondary.role(), Role::Waiting);
        assert_eq!(primary.observe("n2", secondary.owner().clone()), None);
        assert_eq!(secondary.observe("n1", primary.owner().clone()), None);
        assert_eq!(primary.role(), Role::Primary);
        assert_eq!(secondary.role(), Role::Secondary);
        // Someone outside the island does not unblock a member.
        let mut other = FragmentOwnership::new("n1", &i, 0, None);
        other.observe(
            "n3",
            Owner {
                epoch: 1,
                node: "n1".into(),
            },
        );
        assert_eq!(other.role(), Role::Waiting);
    }

    #[test]
    fn other_nodes_forward_and_follow_announcements() {
        let i = islands();
        let mut o = FragmentOwnership::new("n3", &i, 0, None);
        assert_eq!(o.role(), Role::Forward);
        assert_eq!(o.owner().node, "n1");
        let promoted = Owner {
            epoch: 2,
            node: "n2".into(),
        };
        assert_eq!(o.observe("n2", promoted.clone()), Some(promoted));
        assert_eq!(o.owner().node, "n2");
        // A stale announcement changes nothing.
        assert_eq!(
            o.observe(
                "n1",
                Owner {
                    epoch: 1,
                    node: "n1".into()
                }
            ),
            None
        );
        assert_eq!(o.owner().node, "n2");
    }

    #[test]
    fn a_synced_secondary_promotes_itself_with_a_higher_epoch() {
        let i = islands();
        let mut secondary = FragmentOwnership::new("n2", &i, 0, None);
        // Not yet synced: a restarted node may be stale and must not promote.
        assert_eq!(secondary.partner_down(), None);
        secondary.observe(
            "n1",
            Owner {
                epoch: 1,
                node: "n1".into(),
            },
        );
        let promoted = secondary.partner_down().expect("promotes");
        assert_eq!(
            promoted,
            Owner {
                epoch: 2,
                node: "n2".into()
            }
        );
        assert_eq!(secondary.role(), Role::Primary);
        assert!(secondary.holds_for_partner(&i, 0));
        // The primary losing its secondary keeps the fragment.
        assert_eq!(secondary.partner_down(), None);
    }

    #[test]
    fn a_restarted_primary_learns_it_was_replaced_and_gets_the_fragment_back() {
        let i = islands();
        // n1 restarts with its persisted view (epoch 1, itself).
        let mut n1 = FragmentOwnership::new(
            "n1",
            &i,
            0,
            Some(Owner {
                epoch: 1,
                node: "n1".into(),
            }),
        );
        assert_eq!(n1.role(), Role::Waiting);
        let mut n2 = FragmentOwnership::new(
            "n2",
            &i,
            0,
            Some(Owner {
                epoch: 2,
                node: "n2".into(),
            }),
        );
        n2.observe("n1", n1.owner().clone());
        n1.observe("n2", n2.owner().clone());
        assert_eq!(n1.role(), Role::Secondary);
        assert_eq!(n2.role(), Role::Primary);
        let back = n2.hand_to_partner().expect("hands back");
        assert_eq!(
            back,
            Owner {
                epoch: 3,
                node: "n1".into()
            }
        );
        assert_eq!(
            n1.observe("n2", back),
            Some(Owner {
                epoch: 3,
                node: "n1".into()
            })
        );
        assert_eq!(n1.role(), Role::Primary);
        assert_eq!(n2.role(), Role::Secondary);
        assert!(!n1.holds_for_partner(&i, 0));
    }
}
