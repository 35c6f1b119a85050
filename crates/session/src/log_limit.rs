//! Log lines that a hostile or broken client could repeat at will (refused
//! connections, wrong secrets, undeliverable pushes) are written at most
//! once per interval per cause; counters carry the rest.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// One line per cause per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

static LAST_LOGGED: LazyLock<Mutex<HashMap<&'static str, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether a line for `cause` may be written now (and, if so, notes it).
pub fn allow(cause: &'static str) -> bool {
    allow_at(&LAST_LOGGED, cause, Instant::now())
}

fn allow_at(
    last: &Mutex<HashMap<&'static str, Instant>>,
    cause: &'static str,
    now: Instant,
) -> bool {
    // A poisoned lock only means another thread panicked mid-insert; the
    // map is still usable.
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    match last.get(cause) {
        Some(at) if now.saturating_duration_since(*at) < LOG_INTERVAL => false,
        _ => {
            last.insert(cause, now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval() {
        let last = Mutex::new(HashMap::new());
        let t0 = Instant::now();
        assert!(allow_at(&last, "a", t0));
        assert!(!allow_at(&last, "a", t0 + Duration::from_secs(1)));
        assert!(allow_at(&last, "b", t0 + Duration::from_secs(1)));
        assert!(allow_at(&last, "a", t0 + LOG_INTERVAL));
    }
}
