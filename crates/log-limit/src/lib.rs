//! Log lines that a hostile or broken client or peer could repeat at will
//! (refused connections, wrong secrets, undeliverable pushes, dropped
//! frames) are written at most once per interval per cause, with how many
//! were left out since; counters carry the rest.
//!
//! ```
//! static LOGS: log_limit::LogLimiter = log_limit::LogLimiter::new();
//! if let Some(suppressed) = LOGS.allow("wrong_secret") {
//!     eprintln!("a wrong secret ({suppressed} more since the last line)");
//! }
//! ```
//!
//! Hand-written, not `tracing-throttle`: that layer throttles by an event's
//! whole signature, field values included, and these lines carry the
//! peer's address, so each attacker address would get its own budget.

#![warn(missing_docs, unreachable_pub)]

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One line per cause per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Says whether a line of some cause may be logged now: at most once per
/// [`LOG_INTERVAL`] per cause, with how many went unlogged since. Usable
/// as a `static` (the map is made at the first call).
#[derive(Debug)]
pub struct LogLimiter {
    last: Mutex<Option<HashMap<&'static str, (Instant, u64)>>>,
}

impl LogLimiter {
    /// Nothing logged yet.
    pub const fn new() -> Self {
        Self {
            last: Mutex::new(None),
        }
    }

    /// `Some(suppressed since the last line)` if `cause` may be logged now.
    pub fn allow(&self, cause: &'static str) -> Option<u64> {
        self.allow_at(cause, Instant::now())
    }

    /// [`LogLimiter::allow`] at `now`.
    pub fn allow_at(&self, cause: &'static str, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map is still usable.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get_or_insert_with(HashMap::new).entry(cause) {
            Entry::Vacant(v) => {
                v.insert((now, 0));
                Some(0)
            }
            Entry::Occupied(mut o) => {
                let (at, suppressed) = o.get_mut();
                if now.saturating_duration_since(*at) >= LOG_INTERVAL {
                    let was = *suppressed;
                    *at = now;
                    *suppressed = 0;
                    Some(was)
                } else {
                    *suppressed += 1;
                    None
                }
            }
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_with_the_count_left_out() {
        let logs = LogLimiter::new();
        let t0 = Instant::now();
        assert_eq!(logs.allow_at("a", t0), Some(0));
        assert_eq!(logs.allow_at("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(logs.allow_at("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(logs.allow_at("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(logs.allow_at("a", t0 + LOG_INTERVAL), Some(2));
        assert_eq!(logs.allow_at("a", t0 + LOG_INTERVAL), None);
    }

    #[test]
    fn a_clock_that_steps_back_holds_lines_back_instead_of_panicking() {
        let logs = LogLimiter::new();
        let t0 = Instant::now() + LOG_INTERVAL;
        assert_eq!(logs.allow_at("a", t0), Some(0));
        assert_eq!(logs.allow_at("a", t0 - Duration::from_secs(5)), None);
    }
}
