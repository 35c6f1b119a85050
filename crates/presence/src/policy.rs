//! Who may see whose presence: a pure rule and the settings it reads.
//!
//! A user's presence (online, last seen) and typing reach another user only
//! if the user's [`Policy`] allows that viewer: [`Visibility::Everyone`],
//! or [`Visibility::Contacts`] and the viewer is in the contact list the
//! user uploaded. A user whose policy is unknown here (never set, or not
//! heard of since the node started) is seen by no one but themselves, so
//! that a missing setting fails closed.

use std::collections::BTreeSet;

use proto::{PhoneNumber, Visibility};
use serde::{Deserialize, Serialize};

/// A user's presence settings, as stored and as shared between nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Who may see the user.
    pub visibility: Visibility,
    /// The contact list the user uploaded.
    pub contacts: BTreeSet<PhoneNumber>,
    /// Raised by every change, so that a late copy (from another node, or
    /// two sessions of the user racing) never replaces a newer one.
    pub version: u64,
}

/// Whether `viewer` may see `owner`'s presence and typing, given `owner`'s
/// policy (`None`: unknown here).
pub fn may_see(owner: &PhoneNumber, policy: Option<&Policy>, viewer: &PhoneNumber) -> bool {
    if owner == viewer {
        return true;
    }
    match policy {
        None => false,
        Some(policy) => match policy.visibility {
            Visibility::Everyone => true,
            Visibility::Contacts => policy.contacts.contains(viewer),
            Visibility::Nobody => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::numbered as phone;

    #[test]
    fn visibility_by_table() {
        let owner = phone(1);
        let contact = phone(2);
        let stranger = phone(3);
        let with = |visibility| Policy {
            visibility,
            contacts: [contact.clone()].into_iter().collect(),
            version: 1,
        };
        let (everyone, contacts, nobody) = (
            with(Visibility::Everyone),
            with(Visibility::Contacts),
            with(Visibility::Nobody),
        );
        let default = Policy::default();
        // (policy, viewer, may see)
        let cases: &[(Option<&Policy>, &PhoneNumber, bool)] = &[
            (Some(&everyone), &contact, true),
            (Some(&everyone), &stranger, true),
            (Some(&contacts), &contact, true),
            (Some(&contacts), &stranger, false),
            (Some(&nobody), &contact, false),
            (Some(&nobody), &stranger, false),
            // Never set: Contacts with no contacts.
            (Some(&default), &contact, false),
            // Unknown here: fails closed.
            (None, &contact, false),
            (None, &stranger, false),
            // Oneself, always.
            (Some(&nobody), &owner, true),
            (None, &owner, true),
        ];
        for (i, (policy, viewer, expected)) in cases.iter().enumerate() {
            assert_eq!(
                may_see(&owner, *policy, viewer),
                *expected,
                "case {i}: {viewer} under {policy:?}"
            );
        }
        assert_eq!(default.visibility, Visibility::Contacts);
    }
}
