//! Reconnect delays: exponential backoff with full random jitter.
//!
//! Pure: the random source is passed in, so tests pin it with a seed. The
//! delay before attempt `n` (0-based) is uniform in `[0, min(max, initial·2ⁿ)]`
//! ("full jitter", which spreads a herd of clients that lost the same node),
//! and never shorter than the `retry_after_ms` the node asked for.

use std::time::Duration;

use rand::Rng;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling, however many attempts failed.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling for attempt `attempt` (0-based): `min(max, initial·2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before attempt `attempt`: uniform in `[0, ceiling]`, at least
    /// `retry_after` when the node asked for one.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.random_range(0..=ceiling_ms));
        match retry_after {
            Some(at_least) => jittered.max(at_least),
            None => jittered,
        }
    }
}

/// A [`Backoff`] with its attempt counter.
#[derive(Debug, Clone)]
pub struct BackoffState {
    backoff: Backoff,
    attempt: u32,
}

impl BackoffState {
    /// Starts at attempt 0.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let delay = self.backoff.delay(self.attempt, retry_after, rng);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Attempts counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a successful login: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn ceiling_doubles_up_to_the_max() {
        let b = Backoff::default();
        let table = [
            (0, 200),
            (1, 400),
            (2, 800),
            (3, 1_600),
            (7, 25_600),
            (8, 30_000),
            (31, 30_000),
            (32, 30_000),
            (u32::MAX, 30_000),
        ];
        for (attempt, ms) in table {
            assert_eq!(b.ceiling(attempt), MS(ms), "attempt {attempt}");
        }
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_spread() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let ceiling = b.ceiling(attempt);
            let delays: Vec<_> = (0..200).map(|_| b.delay(attempt, None, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: some delays in the lower half, some in the upper half.
            assert!(delays.iter().any(|d| *d < ceiling / 2), "attempt {attempt}");
            assert!(delays.iter().any(|d| *d > ceiling / 2), "attempt {attempt}");
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let b = Backoff::default();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut state = BackoffState::new(b);
            (0..10)
                .map(|_| state.next_delay(None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(b.delay(0, Some(MS(5_000)), &mut rng) >= MS(5_000));
        }
        // A floor below the jitter changes nothing about the ceiling.
        for _ in 0..100 {
            assert!(b.delay(3, Some(MS(1)), &mut rng) <= MS(1_600));
        }
    }

    #[test]
    fn state_counts_and_resets() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut state = BackoffState::new(Backoff {
            initial: MS(10),
            max: MS(100),
        });
        for _ in 0..5 {
            state.next_delay(None, &mut rng);
        }
        assert_eq!(state.attempt(), 5);
        state.reset();
        assert_eq!(state.attempt(), 0);
        assert!(state.next_delay(None, &mut rng) <= MS(10));
    }

    #[test]
    fn zero_initial_means_immediate() {
        let b = Backoff {
            initial: Duration::ZERO,
            max: MS(100),
        };
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(b.delay(5, None, &mut rng), Duration::ZERO);
    }
}
