//! Per-connection send pacing: a token bucket. Pure (time is passed in).
//!
//! Over its rate a client is slowed, not refused: the session waits before
//! taking its next frame, which stops reading from the socket, so TCP pushes
//! back on the client. Refusing instead would make clients retry, and a
//! retried send could overtake later ones.

use std::time::Duration;

/// A token bucket of `burst` tokens refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl Pacer {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, burst: f64, now_ms: u64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate_per_sec.max(0.001),
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms`; returns how long to wait first (zero when
    /// within the rate). The token is spent either way.
    pub fn take(&mut self, now_ms: u64) -> Duration {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_by_table() {
        // 10 per second, burst of 3.
        let mut p = Pacer::new(10.0, 3.0, 0);
        let steps: &[(u64, u64)] = &[
            (0, 0),   // burst
            (0, 0),   // burst
            (0, 0),   // burst
            (0, 100), // one token short: wait 100 ms
            (0, 200), // two short
            (500, 0), // 500 ms refilled 5 tokens: back to 3 - 2 owed
            (500, 0),
            (500, 0),
            (500, 100),
        ];
        for (i, (now, wait_ms)) in steps.iter().enumerate() {
            let wait = p.take(*now);
            assert_eq!(wait.as_millis() as u64, *wait_ms, "step {i} at {now} ms");
        }
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let mut p = Pacer::new(1.0, 2.0, 0);
        for _ in 0..2 {
            assert_eq!(p.take(1_000_000), Duration::ZERO);
        }
        assert!(p.take(1_000_000) > Duration::ZERO);
    }
}
