//! Restart intensity: how many restarts a supervisor allows in a window.

use std::collections::VecDeque;
use std::time::Duration;

/// At most `max_restarts` restarts within `within` (OTP's intensity and period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed in the window.
    pub max_restarts: u32,
    /// The sliding window.
    pub within: Duration,
}

impl Default for Intensity {
    /// OTP's default: 1 restart in 5 seconds is too strict for connection-facing
    /// services, so allow 10 in 10 seconds.
    fn default() -> Self {
        Self {
            max_restarts: 10,
            within: Duration::from_secs(10),
        }
    }
}

/// Remembers recent restarts and says whether one more is allowed.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    intensity: Intensity,
    recent_ms: VecDeque<u64>,
}

impl RestartBudget {
    /// An empty budget.
    pub fn new(intensity: Intensity) -> Self {
        Self {
            intensity,
            recent_ms: VecDeque::new(),
        }
    }

    /// Records a restart wanted at `now_ms`; `false` means the intensity is
    /// exceeded and the supervisor must give up.
    pub fn try_restart(&mut self, now_ms: u64) -> bool {
        let window = self.intensity.within.as_millis() as u64;
        while let Some(&oldest) = self.recent_ms.front() {
            if now_ms.saturating_sub(oldest) >= window {
                self.recent_ms.pop_front();
            } else {
                break;
            }
        }
        if self.recent_ms.len() as u32 >= self.intensity.max_restarts {
            return false;
        }
        self.recent_ms.push_back(now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_by_table() {
        // (time of a wanted restart, allowed?) for 3 restarts per 1000 ms.
        let steps: &[(u64, bool)] = &[
            (0, true),
            (100, true),
            (200, true),
            (300, false),  // a 4th inside the window
            (999, false),  // still inside
            (1000, true),  // the restart at 0 has left the window
            (1050, false), // 100, 200, 1000 in window
            (1100, true),  // 100 has left
            (5000, true),
        ];
        let mut budget = RestartBudget::new(Intensity {
            max_restarts: 3,
            within: Duration::from_millis(1000),
        });
        for (now, allowed) in steps {
            assert_eq!(budget.try_restart(*now), *allowed, "at {now} ms");
        }
    }

    #[test]
    fn zero_intensity_never_restarts() {
        let mut budget = RestartBudget::new(Intensity {
            max_restarts: 0,
            within: Duration::from_secs(1),
        });
        assert!(!budget.try_restart(0));
    }
}
