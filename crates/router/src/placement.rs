//! user → fragment by a stable hash.

use proto::PhoneNumber;

/// A mailbox fragment's number, `0..fragments`.
pub type FragmentId = u16;

/// Why a placement cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Zero fragments.
    #[error("the fragment count must be at least 1")]
    NoFragments,
}

/// Maps users to fragments. Pure and cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    fragments: u16,
}

impl Placement {
    /// A placement over `fragments` fragments.
    pub fn new(fragments: u16) -> Result<Self, PlacementError> {
        if fragments == 0 {
            return Err(PlacementError::NoFragments);
        }
        Ok(Self { fragments })
    }

    /// How many fragments there are.
    pub fn fragments(&self) -> u16 {
        self.fragments
    }

    /// The fragment that owns `user`. xxh3 is specified and seeded with a
    /// constant here, so the answer is the same on every node, build and version.
    pub fn fragment_of(&self, user: &PhoneNumber) -> FragmentId {
        let hash = xxhash_rust::xxh3::xxh3_64(user.as_str().as_bytes());
        (hash % u64::from(self.fragments)) as FragmentId
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::phone;

    #[test]
    fn placement_is_stable_across_builds() {
        // Pinned values: if these change, existing clusters would lose their data.
        let p = Placement::new(256).expect("placement");
        assert_eq!(p.fragment_of(&phone("+15550000001")), 110);
        assert_eq!(p.fragment_of(&phone("+447911123456")), 162);
    }

    #[test]
    fn users_spread_over_fragments() {
        let p = Placement::new(16).expect("placement");
        let mut counts = [0u32; 16];
        for i in 0..16_000u64 {
            let user = phone(&format!("+1555{i:07}"));
            counts[p.fragment_of(&user) as usize] += 1;
        }
        for (fragment, count) in counts.iter().enumerate() {
            assert!(
                (700..1300).contains(count),
                "fragment {fragment} has {count} of 16000"
            );
        }
    }

    #[test]
    fn zero_fragments_is_refused() {
        assert_eq!(Placement::new(0), Err(PlacementError::NoFragments));
    }
}
