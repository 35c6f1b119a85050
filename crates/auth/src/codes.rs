//! Pending verification codes: a pure state machine.
//!
//! No clock, no randomness, no I/O: the caller passes `now_ms` and the freshly
//! generated code, and reads the outcome. The tests below are tables over time.
//!
//! Per phone ([`PhoneCodes`]) at most one pending code and the times codes
//! were issued in the last hour (for the resend interval and the hourly cap).
//! Requesting a new code replaces the pending one. It is part of the
//! number's account record, kept and replicated with its mailbox fragment
//! (see `account`), so any node can verify a code another node sent, and a
//! restart forgets nothing. Each change forgets what can no longer matter.
//!
//! Wrong tries are counted per requester (the source address; an IPv6 /64
//! counts as one), so that a stranger's guesses never use up the tries of
//! the number's owner: each source gets `max_attempts` wrong tries per
//! code. All sources together get `max_total_attempts`, which bounds
//! guessing from many addresses; when they are used up the code is burned
//! (forgotten, and its issue time no longer counts toward the hourly cap),
//! and a new code can be requested after a short cooldown that doubles with
//! each burn in a day (capped at an hour), so that burning codes cannot
//! turn into unbounded guessing either.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::AuthError;

/// The window of the hourly cap.
pub(crate) const HOUR_MS: u64 = 3_600_000;

/// The limits the book enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodePolicy {
    /// How long a code stays valid.
    pub(crate) ttl_ms: u64,
    /// Wrong tries allowed per code; the next try after these is refused.
    pub(crate) max_attempts: u32,
    /// Least time between two codes for one phone.
    pub(crate) resend_interval_ms: u64,
    /// Most codes for one phone in any hour.
    pub(crate) max_codes_per_hour: u32,
    /// Wrong tries allowed per code from all sources together; the try that
    /// reaches it burns the code.
    pub(crate) max_total_attempts: u32,
    /// Wait after a burned code before a new one (doubled per burn in a
    /// day, at most an hour).
    pub(crate) burn_cooldown_ms: u64,
}

/// A day: burns older than this no longer lengthen the cooldown.
const DAY_MS: u64 = 86_400_000;

/// Who tried a code: its source address, an IPv6 /64 as one (a host
/// usually holds a whole /64), or a caller inside the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum Requester {
    /// A caller inside the node (no address).
    Internal,
    /// An IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl Requester {
    pub(crate) fn of(source: Option<IpAddr>) -> Self {
        match source.map(proto::source_of) {
            None => Requester::Internal,
            Some(IpAddr::V4(v4)) => Requester::V4(u32::from(v4)),
            Some(IpAddr::V6(v6)) => Requester::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Why a request or a verification failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeError {
    /// Too soon or too many; a request can succeed after `retry_after_ms`.
    RateLimited { retry_after_ms: u64 },
    /// Wrong code; `attempts_left` more wrong tries are allowed.
    InvalidCode { attempts_left: u32 },
    /// Nothing pending: expired, used, cancelled or never requested.
    NonePending,
    /// This requester used up its wrong tries on the pending code, or the
    /// code was burned by too many wrong tries in all.
    TooManyAttempts,
}

impl From<CodeError> for AuthError {
    fn from(e: CodeError) -> Self {
        match e {
            CodeError::RateLimited { retry_after_ms } => AuthError::RateLimited { retry_after_ms },
            CodeError::InvalidCode { attempts_left } => AuthError::InvalidCode { attempts_left },
            CodeError::NonePending => AuthError::CodeExpired,
            CodeError::TooManyAttempts => AuthError::TooManyAttempts,
        }
    }
}

/// A code that was accepted into the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Issued {
    /// When the code stops verifying.
    pub(crate) expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    code: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
    /// Wrong tries by requester (at most `max_total_attempts` entries).
    wrong_by: HashMap<Requester, u32>,
    /// Wrong tries from everyone.
    wrong_total: u32,
}

/// One phone's pending code and counters: part of its account record, so
/// kept and replicated with the number's mailbox fragment.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PhoneCodes {
    pending: Option<Pending>,
    /// When codes were issued within the last hour, oldest first.
    issued_ms: VecDeque<u64>,
    /// Codes burned within a day of the last burn.
    burns: u32,
    /// When the last code was burned.
    burned_at_ms: Option<u64>,
}

impl PhoneCodes {
    /// Forgets what can no longer matter at `now_ms`.
    pub(crate) fn forget_old(&mut self, now_ms: u64) {
        while self
            .issued_ms
            .front()
            .is_some_and(|&t| t.saturating_add(HOUR_MS) <= now_ms)
        {
            self.issued_ms.pop_front();
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.expires_at_ms <= now_ms)
        {
            self.pending = None;
        }
        if self
            .burned_at_ms
            .is_some_and(|t| t.saturating_add(DAY_MS) <= now_ms)
        {
            self.burned_at_ms = None;
            self.burns = 0;
        }
    }

    /// Whether nothing is kept (after [`PhoneCodes::forget_old`]).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_none() && self.issued_ms.is_empty() && self.burned_at_ms.is_none()
    }

    /// Forgets the pending code and its issue time (it no longer counts
    /// toward the hourly cap, so the owner is not locked out for an hour).
    fn drop_pending(&mut self) {
        if let Some(pending) = self.pending.take()
            && let Some(at) = self
                .issued_ms
                .iter()
                .rposition(|&t| t == pending.issued_at_ms)
        {
            self.issued_ms.remove(at);
        }
    }

    /// When a new code may be requested after the last burn.
    fn burn_ready_at(&self, policy: &CodePolicy) -> Option<u64> {
        let at = self.burned_at_ms?;
        let doublings = self.burns.saturating_sub(1).min(20);
        let cooldown = policy
            .burn_cooldown_ms
            .saturating_mul(1u64 << doublings)
            .min(HOUR_MS);
        Some(at.saturating_add(cooldown))
    }

    /// Makes `code` the pending code unless the rate limits refuse.
    /// A code pending before is replaced (and with it its wrong tries).
    pub(crate) fn request(
        &mut self,
        policy: &CodePolicy,
        code: String,
        now_ms: u64,
    ) -> Result<Issued, CodeError> {
        self.forget_old(now_ms);
        if let Some(ready_at) = self.burn_ready_at(policy)
            && now_ms < ready_at
        {
            return Err(CodeError::RateLimited {
                retry_after_ms: ready_at - now_ms,
            });
        }
        if let Some(&last) = self.issued_ms.back() {
            let ready_at = last.saturating_add(policy.resend_interval_ms);
            if now_ms < ready_at {
                return Err(CodeError::RateLimited {
                    retry_after_ms: ready_at - now_ms,
                });
            }
        }
        if self.issued_ms.len() >= policy.max_codes_per_hour as usize {
            // The oldest issue leaves the window first.
            let ready_at = self
                .issued_ms
                .front()
                .map_or(now_ms.saturating_add(HOUR_MS), |&t| {
                    t.saturating_add(HOUR_MS)
                });
            return Err(CodeError::RateLimited {
                retry_after_ms: ready_at.saturating_sub(now_ms).max(1),
            });
        }
        let expires_at_ms = now_ms.saturating_add(policy.ttl_ms);
        self.issued_ms.push_back(now_ms);
        self.pending = Some(Pending {
            code,
            issued_at_ms: now_ms,
            expires_at_ms,
            wrong_by: HashMap::new(),
            wrong_total: 0,
        });
        Ok(Issued { expires_at_ms })
    }

    /// Checks `code`, tried by `by`, against the pending code. A match
    /// consumes the code if `consume` (a registration lock checks the code
    /// first and consumes it only once the PIN is right); a miss uses up
    /// one of `by`'s tries and one of the code's total.
    pub(crate) fn verify(
        &mut self,
        policy: &CodePolicy,
        code: &str,
        by: Requester,
        now_ms: u64,
        consume: bool,
    ) -> Result<(), CodeError> {
        self.forget_old(now_ms);
        let Some(pending) = self.pending.as_mut() else {
            return Err(CodeError::NonePending);
        };
        let tries = pending.wrong_by.get(&by).copied().unwrap_or(0);
        if tries >= policy.max_attempts {
            return Err(CodeError::TooManyAttempts);
        }
        // Without an early exit: the time taken does not tell how many
        // leading digits matched.
        if bool::from(pending.code.as_bytes().ct_eq(code.as_bytes())) {
            if consume {
                self.pending = None;
            }
            return Ok(());
        }
        let tries = tries + 1;
        pending.wrong_by.insert(by, tries);
        pending.wrong_total += 1;
        if pending.wrong_total >= policy.max_total_attempts {
            self.drop_pending();
            self.burns += 1;
            self.burned_at_ms = Some(now_ms);
            return Err(CodeError::TooManyAttempts);
        }
        Err(CodeError::InvalidCode {
            attempts_left: policy.max_attempts - tries,
        })
    }

    /// Forgets `code` if it is still the pending code, together with its
    /// issue time, so that a new code can be requested at once (the code
    /// never reached the user). Returns whether it was pending.
    pub(crate) fn cancel(&mut self, code: &str) -> bool {
        if self.pending.as_ref().is_none_or(|p| p.code != code) {
            return false;
        }
        self.drop_pending();
        true
    }
}

#[cfg(test)]
mod tests {
    use proto::PhoneNumber;

    use super::*;

    const POLICY: CodePolicy = CodePolicy {
        ttl_ms: 600_000,
        max_attempts: 5,
        resend_interval_ms: 30_000,
        max_codes_per_hour: 5,
        max_total_attempts: 12,
        burn_cooldown_ms: 60_000,
    };

    use test_support::phone;

    /// One step of a table: an input at a time, and the expected outcome.
    #[derive(Debug)]
    enum Step {
        /// Request `code` for `phone` at `now`.
        Request(&'static str, &'static str, u64, Result<(), CodeError>),
        /// Verify `code` for `phone` at `now` (from inside the node).
        Verify(&'static str, &'static str, u64, Result<(), CodeError>),
        /// Verify `code` for `phone` from IPv4 address `.0`'s last octet.
        VerifyFrom(&'static str, &'static str, u8, u64, Result<(), CodeError>),
        /// Cancel `code` for `phone`; was it pending?
        Cancel(&'static str, &'static str, bool),
        /// Prune at `now`; how many phones remain.
        Prune(u64, usize),
        /// Twelve wrong tries from twelve addresses at `now`: the code burns.
        Burn(&'static str, u64),
    }
    use Step::*;

    const A: &str = "+15550000001";
    const B: &str = "+15550000002";

    fn limited(retry_after_ms: u64) -> Result<(), CodeError> {
        Err(CodeError::RateLimited { retry_after_ms })
    }

    fn wrong(attempts_left: u32) -> Result<(), CodeError> {
        Err(CodeError::InvalidCode { attempts_left })
    }

    /// The codes of every phone a table touches.
    #[derive(Default)]
    struct Book(HashMap<PhoneNumber, PhoneCodes>);

    impl Book {
        fn request(
            &mut self,
            p: &PhoneNumber,
            code: String,
            now: u64,
        ) -> Result<Issued, CodeError> {
            self.0
                .entry(p.clone())
                .or_default()
                .request(&POLICY, code, now)
        }
        fn verify(
            &mut self,
            p: &PhoneNumber,
            code: &str,
            by: Requester,
            now: u64,
            consume: bool,
        ) -> Result<(), CodeError> {
            self.0
                .entry(p.clone())
                .or_default()
                .verify(&POLICY, code, by, now, consume)
        }
        fn cancel(&mut self, p: &PhoneNumber, code: &str) -> bool {
            self.0.get_mut(p).is_some_and(|codes| codes.cancel(code))
        }
        /// What a record would still hold at `now`: phones with something.
        fn prune(&mut self, now: u64) {
            self.0.retain(|_, codes| {
                codes.forget_old(now);
                !codes.is_empty()
            });
        }
        fn len(&self) -> usize {
            self.0.len()
        }
    }

    fn run(name: &str, steps: &[Step]) {
        let mut book = Book::default();
        for (i, step) in steps.iter().enumerate() {
            match step {
                Request(p, code, now, want) => {
                    let got = book
                        .request(&phone(p), (*code).to_owned(), *now)
                        .map(|issued| {
                            assert_eq!(issued.expires_at_ms, now + POLICY.ttl_ms);
                        });
                    assert_eq!(&got, want, "{name}: step {i}: {step:?}");
                }
                Verify(p, code, now, want) => {
                    let got = book.verify(&phone(p), code, Requester::Internal, *now, true);
                    assert_eq!(&got, want, "{name}: step {i}: {step:?}");
                }
                VerifyFrom(p, code, octet, now, want) => {
                    let by = Requester::of(Some(IpAddr::from([10, 0, 0, *octet])));
                    let got = book.verify(&phone(p), code, by, *now, true);
                    assert_eq!(&got, want, "{name}: step {i}: {step:?}");
                }
                Cancel(p, code, want) => {
                    assert_eq!(
                        book.cancel(&phone(p), code),
                        *want,
                        "{name}: step {i}: {step:?}"
                    );
                }
                Burn(p, now) => {
                    for octet in 0..POLICY.max_total_attempts {
                        let by = Requester::of(Some(IpAddr::from([10, 1, 0, octet as u8])));
                        let got = book.verify(&phone(p), "x", by, *now, true);
                        assert!(
                            got.is_err() && got != Err(CodeError::NonePending),
                            "{name}: step {i}: {got:?}"
                        );
                    }
                    assert_eq!(
                        book.verify(&phone(p), "x", Requester::Internal, *now, true),
                        Err(CodeError::NonePending),
                        "{name}: step {i}: burned"
                    );
                }
                Prune(now, remaining) => {
                    book.prune(*now);
                    assert_eq!(book.len(), *remaining, "{name}: step {i}: {step:?}");
                }
            }
        }
    }

    #[test]
    fn tables() {
        let tables: &[(&str, &[Step])] = &[
            (
                "right code verifies once, then is consumed",
                &[
                    Request(A, "123456", 0, Ok(())),
                    Verify(A, "123456", 1_000, Ok(())),
                    Verify(A, "123456", 2_000, Err(CodeError::NonePending)),
                ],
            ),
            (
                "leading zeros are part of the code",
                &[
                    Request(A, "000042", 0, Ok(())),
                    Verify(A, "42", 1, wrong(4)),
                    Verify(A, "000042", 2, Ok(())),
                ],
            ),
            (
                "never requested",
                &[Verify(A, "123456", 0, Err(CodeError::NonePending))],
            ),
            (
                "expiry: valid until the last millisecond",
                &[
                    Request(A, "123456", 0, Ok(())),
                    Verify(A, "123456", 600_000, Err(CodeError::NonePending)),
                ],
            ),
            (
                "expiry: one millisecond before is fine",
                &[
                    Request(A, "123456", 0, Ok(())),
                    Verify(A, "123456", 599_999, Ok(())),
                ],
            ),
            (
                "five wrong tries, then locked even for the right code",
                &[
                    Request(A, "123456", 0, Ok(())),
                    Verify(A, "000000", 1, wrong(4)),
                    Verify(A, "000001", 2, wrong(3)),
                    Verify(A, "000002", 3, wrong(2)),
                    Verify(A, "000003", 4, wrong(1)),
                    Verify(A, "000004", 5, wrong(0)),
                    Verify(A, "123456", 6, Err(CodeError::TooManyAttempts)),
                    Verify(A, "000005", 7, Err(CodeError::TooManyAttempts)),
                    // The lock ends with the code.
                    Verify(A, "123456", 600_000, Err(CodeError::NonePending)),
                ],
            ),
            (
                "a new code resets the tries and replaces the old code",
                &[
                    Request(A, "111111", 0, Ok(())),
                    Verify(A, "000000", 1, wrong(4)),
                    Verify(A, "000000", 2, wrong(3)),
                    Request(A, "222222", 30_000, Ok(())),
                    Verify(A, "111111", 30_001, wrong(4)),
                    Verify(A, "222222", 30_002, Ok(())),
                ],
            ),
            (
                "junk counts as a wrong try",
                &[
                    Request(A, "123456", 0, Ok(())),
                    Verify(A, "", 1, wrong(4)),
                    Verify(A, "1234567", 2, wrong(3)),
                    Verify(A, "12345a", 3, wrong(2)),
                    Verify(A, "123456", 4, Ok(())),
                ],
            ),
            (
                "resend interval",
                &[
                    Request(A, "111111", 0, Ok(())),
                    Request(A, "222222", 1, limited(29_999)),
                    Request(A, "222222", 29_999, limited(1)),
                    Request(A, "222222", 30_000, Ok(())),
                    // The refused requests did not replace the code.
                    Verify(A, "222222", 30_001, Ok(())),
                ],
            ),
            (
                "hourly cap: the sixth code waits for the first to leave the window",
                &[
                    Request(A, "000001", 0, Ok(())),
                    Request(A, "000002", 30_000, Ok(())),
                    Request(A, "000003", 60_000, Ok(())),
                    Request(A, "000004", 90_000, Ok(())),
                    Request(A, "000005", 120_000, Ok(())),
                    Request(A, "000006", 150_000, limited(HOUR_MS - 150_000)),
                    Request(A, "000006", HOUR_MS - 1, limited(1)),
                    Request(A, "000006", HOUR_MS, Ok(())),
                    // The window slides: the next slot frees when the second
                    // code is an hour old.
                    Request(A, "000007", HOUR_MS + 30_000, Ok(())),
                    Request(A, "000008", HOUR_MS + 60_000, Ok(())),
                    Request(A, "000009", HOUR_MS + 90_000, Ok(())),
                    Request(A, "000010", HOUR_MS + 120_000, Ok(())),
                    Request(A, "000011", HOUR_MS + 150_000, limited(HOUR_MS - 150_000)),
                ],
            ),
            (
                "a verified code still counts toward the hourly cap",
                &[
                    Request(A, "000001", 0, Ok(())),
                    Verify(A, "000001", 1, Ok(())),
                    Request(A, "000002", 30_000, Ok(())),
                    Request(A, "000003", 60_000, Ok(())),
                    Request(A, "000004", 90_000, Ok(())),
                    Request(A, "000005", 120_000, Ok(())),
                    Request(A, "000006", 150_000, limited(HOUR_MS - 150_000)),
                ],
            ),
            (
                "one phone's code does not verify another, nor use its tries",
                &[
                    Request(A, "123456", 0, Ok(())),
                    Verify(B, "123456", 1, Err(CodeError::NonePending)),
                    Request(B, "654321", 2, Ok(())),
                    Verify(B, "123456", 3, wrong(4)),
                    Verify(A, "123456", 4, Ok(())),
                    Verify(B, "654321", 5, Ok(())),
                ],
            ),
            (
                "rate limits are per phone",
                &[
                    Request(A, "111111", 0, Ok(())),
                    Request(B, "222222", 1, Ok(())),
                    Request(A, "333333", 2, limited(29_998)),
                ],
            ),
            (
                "cancel forgets the code and its issue time",
                &[
                    Request(A, "111111", 0, Ok(())),
                    Cancel(A, "999999", false),
                    Cancel(B, "111111", false),
                    Cancel(A, "111111", true),
                    Cancel(A, "111111", false),
                    Verify(A, "111111", 1, Err(CodeError::NonePending)),
                    Prune(1, 0),
                    // No resend wait after a cancelled code.
                    Request(A, "222222", 2, Ok(())),
                    Verify(A, "222222", 3, Ok(())),
                ],
            ),
            (
                "cancel keeps earlier issue times",
                &[
                    Request(A, "000001", 0, Ok(())),
                    Request(A, "000002", 30_000, Ok(())),
                    Request(A, "000003", 60_000, Ok(())),
                    Request(A, "000004", 90_000, Ok(())),
                    Request(A, "000005", 120_000, Ok(())),
                    Cancel(A, "000005", true),
                    // The resend wait now runs from the code before.
                    Request(A, "000006", 120_001, Ok(())),
                    Request(A, "000007", 150_001, limited(HOUR_MS - 150_001)),
                ],
            ),
            (
                "prune drops expired codes, then phones an hour quiet",
                &[
                    Request(A, "111111", 0, Ok(())),
                    Request(B, "222222", 100_000, Ok(())),
                    Prune(599_999, 2),
                    // A's code expired but its issue time still counts.
                    Prune(600_000, 2),
                    Verify(A, "111111", 600_000, Err(CodeError::NonePending)),
                    Prune(HOUR_MS, 1),
                    Prune(HOUR_MS + 100_000, 0),
                ],
            ),
            (
                "a stranger's wrong tries leave the owner's own",
                &[
                    Request(A, "123456", 0, Ok(())),
                    VerifyFrom(A, "000000", 66, 1, wrong(4)),
                    VerifyFrom(A, "000001", 66, 2, wrong(3)),
                    VerifyFrom(A, "000002", 66, 3, wrong(2)),
                    VerifyFrom(A, "000003", 66, 4, wrong(1)),
                    VerifyFrom(A, "000004", 66, 5, wrong(0)),
                    VerifyFrom(A, "123456", 66, 6, Err(CodeError::TooManyAttempts)),
                    VerifyFrom(A, "000005", 67, 7, wrong(4)),
                    VerifyFrom(A, "123455", 1, 8, wrong(4)),
                    VerifyFrom(A, "123456", 1, 9, Ok(())),
                ],
            ),
            (
                "all sources together burn the code; a new one after a cooldown",
                &[
                    Request(A, "123456", 0, Ok(())),
                    VerifyFrom(A, "000001", 10, 1, wrong(4)),
                    VerifyFrom(A, "000002", 10, 2, wrong(3)),
                    VerifyFrom(A, "000003", 10, 3, wrong(2)),
                    VerifyFrom(A, "000004", 10, 4, wrong(1)),
                    VerifyFrom(A, "000005", 11, 5, wrong(4)),
                    VerifyFrom(A, "000006", 11, 6, wrong(3)),
                    VerifyFrom(A, "000007", 11, 7, wrong(2)),
                    VerifyFrom(A, "000008", 11, 8, wrong(1)),
                    VerifyFrom(A, "000009", 12, 9, wrong(4)),
                    VerifyFrom(A, "000010", 12, 10, wrong(3)),
                    VerifyFrom(A, "000011", 12, 11, wrong(2)),
                    // The twelfth wrong try in all burns the code.
                    VerifyFrom(A, "000012", 12, 12, Err(CodeError::TooManyAttempts)),
                    VerifyFrom(A, "123456", 1, 13, Err(CodeError::NonePending)),
                    Request(A, "222222", 59_999, limited(13)),
                    Request(A, "222222", 60_012, Ok(())),
                    VerifyFrom(A, "222222", 1, 60_013, Ok(())),
                ],
            ),
            (
                "burned codes do not fill the hourly cap; the cooldown doubles",
                &[
                    Request(A, "111111", 0, Ok(())),
                    Burn(A, 1),
                    Request(A, "222222", 60_001, Ok(())),
                    Burn(A, 60_002),
                    Request(A, "333333", 180_001, limited(1)),
                    Request(A, "333333", 180_002, Ok(())),
                    Burn(A, 180_003),
                    Request(A, "444444", 420_002, limited(1)),
                    Request(A, "444444", 420_003, Ok(())),
                    VerifyFrom(A, "444444", 1, 420_004, Ok(())),
                ],
            ),
            (
                "prune keeps a live code",
                &[
                    Request(A, "111111", 0, Ok(())),
                    Prune(1_000, 1),
                    Verify(A, "111111", 2_000, Ok(())),
                ],
            ),
        ];
        for (name, steps) in tables {
            run(name, steps);
        }
    }

    #[test]
    fn codes_survive_a_round_trip_through_the_record_encoding() {
        let mut codes = PhoneCodes::default();
        codes
            .request(&POLICY, "123456".into(), 1_000)
            .expect("code");
        let by = Requester::of(Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(
            codes.verify(&POLICY, "000000", by, 2_000, true),
            Err(CodeError::InvalidCode { attempts_left: 4 })
        );
        let bytes = postcard::to_stdvec(&codes).expect("encode");
        let mut back: PhoneCodes = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, codes);
        // The wrong try counted before the trip still counts after it.
        assert_eq!(
            back.verify(&POLICY, "000000", by, 3_000, true),
            Err(CodeError::InvalidCode { attempts_left: 3 })
        );
        assert_eq!(back.verify(&POLICY, "123456", by, 4_000, true), Ok(()));
    }
}
