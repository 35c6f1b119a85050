//! Figures: latency summaries, plain-text histograms, process memory and CPU time.

use std::collections::BTreeMap;

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

/// CPU time (user + system) process `pid` has used, in seconds, from
/// /proc. Linux reports it in USER_HZ ticks, which is 100 on every
/// architecture it runs on (the kernel scales its internal HZ to it).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of process `pid` by thread name (threads of one name added
/// up: the node's `tokio-rt-worker`s and its `storage-writer`).
pub(crate) fn thread_cpu_seconds(pid: u32) -> Option<BTreeMap<String, f64>> {
    let mut by_name = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        // A thread may end between the listing and the reads: skip it.
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        if let Some(cpu) = stat_cpu_seconds(&stat) {
            *by_name.entry(name.trim().to_owned()).or_insert(0.0) += cpu;
        }
    }
    Some(by_name)
}

/// Bytes process `pid` has caused to be written to storage (`write_bytes`
/// of /proc/PID/io: what reached the block layer, page-cache writes that
/// were later flushed included).
pub(crate) fn disk_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// Context switches (voluntary and not) of every live thread of `pid`: a
/// thread that parks for want of work and wakes again is one voluntary
/// switch, so this counts the node's wake-ups.
pub(crate) fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// utime + stime of a /proc `stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields are counted
    // from after its closing parenthesis, where field 3 (state) begins.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU time of one phase of a run, total and per acknowledged message:
/// the node's (its pid given) and this generator's.
#[derive(Debug, Serialize)]
pub(crate) struct CpuUse {
    seconds: f64,
    server_s: Option<f64>,
    /// The node's share by thread name.
    server_threads_s: BTreeMap<String, f64>,
    generator_s: Option<f64>,
    /// The node's CPU per counted message (a delivered copy, for groups).
    pub(crate) server_us_per_message: Option<f64>,
    generator_us_per_message: Option<f64>,
    /// Bytes the node wrote to disk per message.
    server_disk_bytes_per_message: Option<f64>,
    /// The node's context switches per message, all threads.
    server_context_switches_per_message: Option<f64>,
}

/// CPU seconds of the node (if its pid is known) and of this process.
pub(crate) struct CpuSample {
    server: Option<f64>,
    server_threads: BTreeMap<String, f64>,
    generator: Option<f64>,
    server_disk_bytes: Option<u64>,
    server_context_switches: Option<u64>,
}

impl CpuSample {
    pub(crate) fn now(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(cpu_seconds),
            server_threads: server_pid.and_then(thread_cpu_seconds).unwrap_or_default(),
            generator: cpu_seconds(std::process::id()),
            server_disk_bytes: server_pid.and_then(disk_write_bytes),
            server_context_switches: server_pid.and_then(context_switches),
        }
    }
}

impl CpuUse {
    pub(crate) fn between(
        before: &CpuSample,
        after: &CpuSample,
        seconds: f64,
        messages: u64,
    ) -> Self {
        let used = |b: Option<f64>, a: Option<f64>| Some(a? - b?);
        let per_message = |cpu: Option<f64>| cpu.map(|c| c * 1e6 / messages.max(1) as f64);
        let counted = |b: Option<u64>, a: Option<u64>| {
            Some(a?.saturating_sub(b?) as f64 / messages.max(1) as f64)
        };
        let server_s = used(before.server, after.server);
        let generator_s = used(before.generator, after.generator);
        // Threads that started during the run count from zero.
        let server_threads_s = after
            .server_threads
            .iter()
            .map(|(name, cpu)| {
                let earlier = before.server_threads.get(name).copied().unwrap_or(0.0);
                (name.clone(), cpu - earlier)
            })
            .filter(|(_, cpu)| *cpu > 0.0)
            .collect();
        Self {
            seconds,
            server_s,
            server_threads_s,
            generator_s,
            server_us_per_message: per_message(server_s),
            generator_us_per_message: per_message(generator_s),
            server_disk_bytes_per_message: counted(
                before.server_disk_bytes,
                after.server_disk_bytes,
            ),
            server_context_switches_per_message: counted(
                before.server_context_switches,
                after.server_context_switches,
            ),
        }
    }

    /// One line for the summary.
    pub(crate) fn line(&self) -> String {
        let cores = |cpu: f64| cpu / self.seconds.max(1e-9);
        let part = |name: &str, cpu: Option<f64>, per: Option<f64>| match (cpu, per) {
            (Some(cpu), Some(per)) => format!("{name} {per:.1} µs/msg ({:.2} cores)", cores(cpu)),
            _ => format!("{name} unknown"),
        };
        let threads: Vec<String> = self
            .server_threads_s
            .iter()
            .map(|(name, cpu)| format!("{name} {:.2}", cores(*cpu)))
            .collect();
        let threads = if threads.is_empty() {
            String::new()
        } else {
            format!(" [{}]", threads.join(", "))
        };
        let node_io = match (
            self.server_disk_bytes_per_message,
            self.server_context_switches_per_message,
        ) {
            (Some(bytes), Some(switches)) => {
                format!(" · node disk {bytes:.0} B/msg, {switches:.1} context switches/msg")
            }
            _ => String::new(),
        };
        format!(
            "cpu: {}{threads} · {} over {:.1} s of sending and delivery{node_io}",
            part("node", self.server_s, self.server_us_per_message),
            part("generator", self.generator_s, self.generator_us_per_message),
            self.seconds
        )
    }
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
/// A copy of a histogram shared between tasks (an empty one if its lock
/// was poisoned).
pub(crate) fn snapshot(h: &std::sync::Mutex<Histogram<u64>>) -> Histogram<u64> {
    h.lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_histogram())
}

/// Writes the report as JSON if asked, and fails the run if the delivery
/// check found anything lost, duplicated or out of order.
pub(crate) fn finish(
    json: Option<&std::path::Path>,
    report: &impl Serialize,
    (lost, duplicated, out_of_order): (u64, u64, u64),
) -> anyhow::Result<()> {
    if let Some(path) = json {
        write_json(path, report)?;
    }
    anyhow::ensure!(
        lost == 0 && duplicated == 0 && out_of_order == 0,
        "delivery check failed: {lost} lost, {duplicated} duplicated, {out_of_order} out of order"
    );
    Ok(())
}

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

    #[test]
    fn reads_our_own_cpu_time_and_it_grows() {
        let before = cpu_seconds(std::process::id()).expect("cpu time");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_seconds(std::process::id()).expect("cpu time");
        assert!(after > before, "{before} -> {after}");
        let threads = thread_cpu_seconds(std::process::id()).expect("threads");
        assert!(threads.values().sum::<f64>() > 0.0, "{threads:?}");
        assert!(context_switches(std::process::id()).is_some());
    }

    #[test]
    fn reads_what_we_write_to_disk() {
        // Beside the sources, not in /tmp: a tmpfs /tmp writes nothing to disk.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
        let before = disk_write_bytes(std::process::id()).expect("write_bytes");
        let file = dir.path().join("written");
        std::fs::write(&file, vec![7u8; 1 << 20]).expect("write");
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .expect("sync");
        let after = disk_write_bytes(std::process::id()).expect("write_bytes");
        assert!(after >= before + (1 << 20), "{before} -> {after}");
    }

    #[test]
    fn cpu_use_is_the_difference_per_message_and_per_thread() {
        let sample = |server: f64, writer: f64, generator: f64| CpuSample {
            server: Some(server),
            server_threads: [("storage-writer".to_owned(), writer)].into(),
            generator: Some(generator),
            server_disk_bytes: Some((server * 1e6) as u64),
            server_context_switches: Some((writer * 1e4) as u64),
        };
        let mut after = sample(12.0, 3.0, 5.0);
        after
            .server_threads
            .insert("tokio-rt-worker".to_owned(), 1.5);
        let cpu = CpuUse::between(&sample(10.0, 2.5, 4.0), &after, 4.0, 20_000);
        assert_eq!(cpu.server_us_per_message, Some(100.0));
        assert_eq!(cpu.generator_us_per_message, Some(50.0));
        assert_eq!(cpu.server_disk_bytes_per_message, Some(100.0));
        assert_eq!(cpu.server_context_switches_per_message, Some(0.25));
        assert!(
            cpu.line()
                .contains("node disk 100 B/msg, 0.2 context switches/msg")
        );
        // A thread that started during the run counts from zero.
        assert_eq!(
            cpu.server_threads_s.into_iter().collect::<Vec<_>>(),
            [
                ("storage-writer".to_owned(), 0.5),
                ("tokio-rt-worker".to_owned(), 1.5)
            ]
        );
        let unknown = CpuSample {
            server: None,
            server_threads: BTreeMap::new(),
            generator: Some(1.0),
            server_disk_bytes: None,
            server_context_switches: None,
        };
        let cpu = CpuUse::between(&unknown, &unknown, 1.0, 10);
        assert_eq!(cpu.server_us_per_message, None);
        assert!(cpu.line().contains("node unknown"), "{}", cpu.line());
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(stat_cpu_seconds(stat), Some(3.0));
        assert_eq!(stat_cpu_seconds("garbage"), None);
    }
}
