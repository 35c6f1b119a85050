//! Registration-lock PINs: hashing and the pure lock decision.
//!
//! A PIN is stored as PBKDF2-HMAC-SHA256 over a random 16-byte salt with
//! the iteration count it was hashed with (`auth.pin_kdf_iterations` at the
//! time), so that a copy of the database costs an attacker that much work
//! per guess and the count can be raised later without breaking old PINs.
//! Hashing is slow on purpose: callers run it on the blocking pool.
//!
//! [`LockPolicy::status`] is the decision, without clock or I/O: whether a
//! lock holds (it lapses after the account was inactive for the lapse time)
//! and how many wrong PINs are left today.

use std::num::NonZeroU32;

use ring::pbkdf2;
use serde::{Deserialize, Serialize};

/// Shortest PIN accepted.
pub(crate) const MIN_PIN_CHARS: usize = 4;
/// Longest PIN accepted (bytes), so that hashing cost does not grow with input.
pub(crate) const MAX_PIN_BYTES: usize = 64;
/// A day: wrong PINs older than this no longer count.
pub(crate) const DAY_MS: u64 = 86_400_000;

const SALT_BYTES: usize = 16;

/// A PIN's stored form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PinLock {
    salt: [u8; SALT_BYTES],
    iterations: u32,
    hash: [u8; 32],
    /// When the PIN was set (ms since the epoch).
    pub(crate) set_at_ms: u64,
}

impl PinLock {
    /// Hashes `pin` with a fresh salt. Slow (`iterations` rounds).
    pub(crate) fn new(pin: &str, iterations: u32, set_at_ms: u64) -> Self {
        let mut salt = [0u8; SALT_BYTES];
        rand::Rng::fill(&mut rand::rng(), &mut salt);
        let iterations = iterations.max(1);
        let mut hash = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN),
            &salt,
            pin.as_bytes(),
            &mut hash,
        );
        Self {
            salt,
            iterations,
            hash,
            set_at_ms,
        }
    }

    /// Whether `pin` is this lock's PIN (constant time). Slow.
    pub(crate) fn matches(&self, pin: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(self.iterations).unwrap_or(NonZeroU32::MIN),
            &self.salt,
            pin.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// Whether `pin` is acceptable as a new PIN: 4 to 64 bytes, at least 4
/// characters, no control characters.
pub(crate) fn pin_problem(pin: &str) -> Option<&'static str> {
    if pin.chars().count() < MIN_PIN_CHARS {
        Some("a registration-lock PIN has at least 4 characters")
    } else if pin.len() > MAX_PIN_BYTES {
        Some("a registration-lock PIN has at most 64 bytes")
    } else if pin.chars().any(char::is_control) {
        Some("a registration-lock PIN has no control characters")
    } else {
        None
    }
}

/// How locks lapse and how many wrong PINs are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockPolicy {
    /// A lock lapses once the account was inactive this long.
    pub(crate) lapse_ms: u64,
    /// Wrong PINs allowed in any day.
    pub(crate) max_failures_per_day: u32,
}

/// What a verification of a number must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockStatus {
    /// No lock, or it lapsed: the code alone verifies.
    Open,
    /// The PIN is needed; `attempts_left` wrong ones are allowed today.
    Locked {
        /// Wrong PINs still allowed today (0: none).
        attempts_left: u32,
    },
}

impl LockPolicy {
    /// The lock status at `now_ms` of an account with `lock`, last active
    /// at `last_active_ms`, with wrong PINs at `failures_ms`.
    pub(crate) fn status(
        &self,
        lock: Option<&PinLock>,
        last_active_ms: u64,
        failures_ms: &[u64],
        now_ms: u64,
    ) -> LockStatus {
        if lock.is_none() || last_active_ms.saturating_add(self.lapse_ms) <= now_ms {
            return LockStatus::Open;
        }
        let recent = failures_ms
            .iter()
            .filter(|&&t| t.saturating_add(DAY_MS) > now_ms)
            .count();
        let recent = u32::try_from(recent).unwrap_or(u32::MAX);
        LockStatus::Locked {
            attempts_left: self.max_failures_per_day.saturating_sub(recent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LockPolicy = LockPolicy {
        lapse_ms: 7 * DAY_MS,
        max_failures_per_day: 5,
    };

    #[test]
    fn pins_hash_and_match() {
        let lock = PinLock::new("2468", 1_000, 5);
        assert!(lock.matches("2468"));
        for wrong in ["2469", "", "24680", "246"] {
            assert!(!lock.matches(wrong), "{wrong}");
        }
        // A fresh salt each time: the same PIN hashes differently.
        assert_ne!(lock.hash, PinLock::new("2468", 1_000, 5).hash);
        let stored = postcard::to_stdvec(&lock).expect("encode");
        assert!(
            !stored.windows(4).any(|w| w == b"2468"),
            "PIN stored in clear"
        );
    }

    #[test]
    fn pin_problems_by_table() {
        let cases: &[(&str, bool)] = &[
            ("1234", true),
            ("123", false),
            ("", false),
            ("pass word", true),
            ("ééé", false),
            ("éééé", true),
            (&"9".repeat(64), true),
            (&"9".repeat(65), false),
            ("12\n34", false),
        ];
        for (pin, ok) in cases {
            assert_eq!(pin_problem(pin).is_none(), *ok, "{pin:?}");
        }
    }

    #[test]
    fn status_by_table() {
        let lock = PinLock::new("2468", 1_000, 0);
        let day = DAY_MS;
        // (lock?, last active, failures, now, expected)
        let cases: &[(bool, u64, &[u64], u64, LockStatus)] = &[
            (false, 0, &[], 1, LockStatus::Open),
            (true, 0, &[], 1, LockStatus::Locked { attempts_left: 5 }),
            (
                true,
                0,
                &[],
                7 * day - 1,
                LockStatus::Locked { attempts_left: 5 },
            ),
            // Seven days without activity: lapsed.
            (true, 0, &[], 7 * day, LockStatus::Open),
            (
                true,
                3 * day,
                &[],
                7 * day,
                LockStatus::Locked { attempts_left: 5 },
            ),
            (
                true,
                0,
                &[10, 20],
                30,
                LockStatus::Locked { attempts_left: 3 },
            ),
            (
                true,
                0,
                &[1, 2, 3, 4, 5],
                6,
                LockStatus::Locked { attempts_left: 0 },
            ),
            (
                true,
                0,
                &[1, 2, 3, 4, 5, 6],
                7,
                LockStatus::Locked { attempts_left: 0 },
            ),
            // Failures older than a day no longer count.
            (
                true,
                day,
                &[1, 2, day + 5],
                day + 2,
                LockStatus::Locked { attempts_left: 4 },
            ),
        ];
        for (i, (locked, active, failures, now, want)) in cases.iter().enumerate() {
            let got = POLICY.status(locked.then_some(&lock), *active, failures, *now);
            assert_eq!(got, *want, "case {i}");
        }
    }
}
