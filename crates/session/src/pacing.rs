//! Per-connection pacing: a token bucket. Pure (time is passed in).
//!
//! Over its rate a client is slowed, not refused: the session waits before
//! taking its next frame, which stops reading from the socket, so TCP pushes
//! back on the client. Refusing instead would make clients retry, and a
//! retried send could overtake later ones. Presence requests are refused
//! over their rate instead ([`Pacer::try_take`]): they carry no order, and
//! a flood of them must not hold the connection's other requests back.

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

impl Pacer {
    /// Takes one token at `now_ms` if there is one; otherwise takes nothing
    /// and returns how long until there is. For requests that are refused
    /// over the rate rather than slowed (a refused request costs nothing,
    /// so retrying on time works).
    pub fn try_take(&mut self, now_ms: u64) -> Result<(), Duration> {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
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

    #[test]
    fn try_take_refuses_without_spending() {
        // 2 per second, burst of 2.
        let mut p = Pacer::new(2.0, 2.0, 0);
        let steps: &[(u64, Option<u64>)] = &[
            (0, None),        // burst
            (0, None),        // burst
            (0, Some(500)),   // empty: one token in 500 ms
            (0, Some(500)),   // refusals spend nothing
            (250, Some(250)), // half refilled
            (500, None),      // one token
            (500, Some(500)),
        ];
        for (i, (now, refused_ms)) in steps.iter().enumerate() {
            let got = p.try_take(*now).err().map(|d| d.as_millis() as u64);
            assert_eq!(got, *refused_ms, "step {i} at {now} ms");
        }
    }
}
