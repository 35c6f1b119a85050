//! Figures: latency summaries, plain-text histograms, process memory.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) count: u64,
}

/// A histogram of microseconds, 1 µs to 1 hour at 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        count: h.len(),
    }
}

/// One line: `name  p50 … max (n)`.
pub(crate) fn latency_line(name: &str, p: &Percentiles) -> String {
    format!(
        "{name:<9} p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2}  (n={})",
        p.p50, p.p90, p.p99, p.p999, p.max, p.count
    )
}

/// A plain-text histogram over logarithmic buckets, for the terminal and docs.
pub(crate) fn text_histogram(name: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{name}: no samples\n");
    }
    let bounds_us: [u64; 14] = [
        100,
        250,
        500,
        1_000,
        2_500,
        5_000,
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        u64::MAX,
    ];
    let mut out = format!("{name} latency (ms):\n");
    let mut low = 0u64;
    let total = h.len().max(1);
    for high in bounds_us {
        let count = h.count_between(low, high.saturating_sub(1).max(low));
        if count > 0 {
            let bar = "#".repeat(((count * 50) / total).max(1) as usize);
            let label = if high == u64::MAX {
                format!(">= {:>7.1}", low as f64 / 1000.0)
            } else {
                format!("< {:>8.1}", high as f64 / 1000.0)
            };
            out.push_str(&format!("  {label} {count:>9} {bar}\n"));
        }
        low = high;
    }
    out
}

/// Resident memory of process `pid` in bytes, from /proc.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Least-squares slope of `(x, y)` points (bytes per connection).
pub(crate) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    (var > 0.0).then(|| cov / var)
}

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json(path: &std::path::Path, value: &impl Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let points = [(0.0, 100.0), (10.0, 200.0), (20.0, 300.0)];
        assert_eq!(slope(&points), Some(10.0));
        assert_eq!(slope(&points[..1]), None);
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).expect("record");
        }
        let p = percentiles(&h);
        assert!((p.p50 - 5.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 10.0).abs() < 0.1, "{p:?}");
        assert!(text_histogram("x", &h).contains("#"));
    }

    #[test]
    fn reads_our_own_rss() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
