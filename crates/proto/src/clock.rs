//! The one wall clock of the services: milliseconds since the Unix epoch,
//! the unit of every timestamp in frames and on disk. Pure cores take the
//! time as an argument instead; only shells call this.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::TimestampMs;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> TimestampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
