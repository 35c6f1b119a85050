//! The segment log (`storage::log`) on a real file in a temporary directory.
//!
//! - `log/commit/{1,16,256}x200B`: append that many 200-byte entries and
//!   commit them: one write and one `fdatasync` per iteration, so the figure
//!   is bound by the disk's sync latency; throughput is in entries.
//! - `log/append_200B`: appending one entry to the pending commit, with a
//!   commit of the 4,096 pending entries every 4,096 appends (its write and
//!   sync amortized over them).
//! - `log/recover/{N}_entries`: opening a log of N 200-byte entries in
//!   commits of 64, replaying every entry: what a node's restart pays per
//!   live megabyte, apart from the index its user builds.
//!
//! Run: `cargo bench -p storage --bench log`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storage::log::{LogOptions, SegmentLog};

const ENTRY: [u8; 200] = [0x42; 200];

fn open(dir: &std::path::Path) -> SegmentLog {
    SegmentLog::open(dir, LogOptions::default(), |_, _| {})
        .expect("open the log")
        .0
}

fn commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("log/commit");
    for entries in [1u64, 16, 256] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path());
        group.throughput(Throughput::Elements(entries));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{entries}x200B")),
            |b| {
                b.iter(|| {
                    for _ in 0..entries {
                        log.append(&ENTRY).expect("append");
                    }
                    black_box(log.commit().expect("commit"));
                })
            },
        );
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path());
    c.bench_function("log/append_200B", |b| {
        b.iter(|| {
            black_box(log.append(&ENTRY).expect("append"));
            if log.pending_entries() >= 4096 {
                log.commit().expect("commit");
            }
        })
    });
}

fn recover(c: &mut Criterion) {
    let mut group = c.benchmark_group("log/recover");
    for entries in [10_000u64, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path());
        for i in 0..entries {
            log.append(&ENTRY).expect("append");
            if i % 64 == 63 {
                log.commit().expect("commit");
            }
        }
        log.commit().expect("commit");
        drop(log);
        group.throughput(Throughput::Elements(entries));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{entries}_entries")),
            |b| {
                b.iter(|| {
                    let mut replayed = 0u64;
                    let (log, recovery) =
                        SegmentLog::open(dir.path(), LogOptions::default(), |_, entry| {
                            replayed += entry.len() as u64
                        })
                        .expect("open");
                    assert_eq!(recovery.entries, entries);
                    black_box((log, replayed))
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = commit, append, recover
}
criterion_main!(benches);
