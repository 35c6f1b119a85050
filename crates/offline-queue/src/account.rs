//! Account records: what the auth service keeps per phone number (pending
//! codes and their counters, the token generation, the registration lock),
//! stored with the number's mailbox fragment and replicated with it.
//!
//! The fragment does not read the body (the auth crate owns its format); it
//! keeps one record per user, changes it only by compare-and-set on its
//! `version`, so that auth services on several nodes never lose each other's
//! updates, and reads the `generation` itself: a session logging in with a
//! token of an older generation is refused at attach, and a session already
//! attached is closed when the generation rises past its token's.
//!
//! Merging after a partition keeps, of two divergent records, the one with
//! the higher `(generation, version)`: a revocation is never undone, and
//! within one generation the record changed more often wins (the other
//! side's pending code may be lost; its user asks again).

use serde::{Deserialize, Serialize};

/// One user's account record. Version 0 is "no record".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Raised by every write: a write names the version it read.
    pub version: u64,
    /// Tokens of a lower generation are revoked.
    pub generation: u64,
    /// The auth service's data, opaque here.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl AccountRecord {
    /// Whether this record should replace `other` when two copies meet (a
    /// merge after a partition).
    pub fn supersedes(&self, other: &AccountRecord) -> bool {
        (self.generation, self.version) > (other.generation, other.version)
    }

    /// The encoded record (postcard), as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of two integers and bytes always encodes.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// A stored record; `None` if unreadable.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A compare-and-set of a user's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountWrite {
    /// The version the writer read; the write is refused if it changed.
    pub expected_version: u64,
    /// The new generation; never below the current one.
    pub generation: u64,
    /// The new body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The answer to an account read or write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountReply {
    /// The record as it is now (a read).
    Current(AccountRecord),
    /// The write is durable (under the node's ack policy); the record now.
    Written(AccountRecord),
    /// The version had changed: nothing written; the record now.
    Conflict(AccountRecord),
}

/// The largest body a fragment stores: records are a few hundred bytes
/// (a code, its counters, a PIN hash); this bounds what a bug could store.
pub const MAX_ACCOUNT_BODY: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_higher_generation_wins_a_merge_then_a_higher_version() {
        let record = |generation, version| AccountRecord {
            version,
            generation,
            body: vec![],
        };
        assert!(record(2, 1).supersedes(&record(1, 9)));
        assert!(record(1, 3).supersedes(&record(1, 2)));
        assert!(!record(1, 2).supersedes(&record(1, 2)));
        assert!(!record(1, 9).supersedes(&record(2, 1)));
    }

    #[test]
    fn records_round_trip_and_garbage_is_none() {
        let record = AccountRecord {
            version: 7,
            generation: 3,
            body: b"opaque".to_vec(),
        };
        assert_eq!(AccountRecord::from_bytes(&record.to_bytes()), Some(record));
        assert_eq!(AccountRecord::from_bytes(&[0xff, 0xff, 0xff]), None);
    }
}
