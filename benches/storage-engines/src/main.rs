//! Mailbox-workload benchmark: redb 4.x vs fjall 3.x.
//!
//! Models the store-and-forward path of the Switchboard server:
//! * append 200-byte messages keyed `(recipient, seq)` with fsync'd group commits
//!   (batch sizes 1, 16, 256),
//! * read one recipient's queue (range scan of ~20 messages),
//! * point-get in a dedupe table keyed `(recipient, sender, client_msg_id)`,
//! * delete acked messages by key in fsync'd batches of 16 and 256,
//! * on-disk size after 200,000 appends, after deleting everything, and after
//!   an explicit compaction.
//!
//! Every write commit is durable before it returns:
//! * redb: `WriteTransaction::set_durability(Durability::Immediate)` (redb fdatasyncs),
//! * fjall: `OwnedWriteBatch::durability(Some(PersistMode::SyncAll))` (journal fsync).
//!
//! Usage: `cargo run --release [-- redb|fjall]` (default: both).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const USERS: u64 = 10_000;
const PER_USER: u64 = 20;
const TOTAL: u64 = USERS * PER_USER; // 200,000 messages
const PAYLOAD: usize = 200;
const CACHE_BYTES: u64 = 128 * 1024 * 1024;

const B1_MAX_MSGS: u64 = 20_000;
const B16_MAX_MSGS: u64 = 100_000;
const PHASE_CAP: Duration = Duration::from_secs(8);
const READ_CAP: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Table {
    Messages,
    Dedupe,
}

/// The operations of the mailbox path, implemented once per engine.
trait Engine {
    /// One atomic, fsync'd commit of `puts` and `dels` into `table`.
    fn commit(&mut self, table: Table, puts: &[(Vec<u8>, Vec<u8>)], dels: &[Vec<u8>]) -> Res<()>;
    /// Range scan `[start, end)` of the messages table; returns (count, payload bytes).
    fn scan(&self, start: &[u8], end: &[u8]) -> Res<(usize, usize)>;
    /// Point get in the dedupe table.
    fn get_dedupe(&self, key: &[u8]) -> Res<Option<u64>>;
    /// Explicit space reclamation (redb `compact`, fjall flush + major compaction).
    fn compact(&mut self) -> Res<()>;
}

// ---------------------------------------------------------------- redb

mod redb_engine {
    use super::{Engine, Res, Table};
    use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
    use std::path::Path;

    const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
    const DEDUPE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedupe");

    pub struct Redb {
        db: redb::Database,
    }

    impl Redb {
        pub fn open(dir: &Path) -> Res<Self> {
            std::fs::create_dir_all(dir)?;
            let db = redb::Database::builder()
                .set_cache_size(super::CACHE_BYTES as usize)
                .create(dir.join("mailbox.redb"))?;
            // Create both tables up front so readers never see "table does not exist".
            let tx = db.begin_write()?;
            tx.open_table(MESSAGES)?;
            tx.open_table(DEDUPE)?;
            tx.commit()?;
            Ok(Self { db })
        }
    }

    impl Engine for Redb {
        fn commit(
            &mut self,
            table: Table,
            puts: &[(Vec<u8>, Vec<u8>)],
            dels: &[Vec<u8>],
        ) -> Res<()> {
            let mut tx = self.db.begin_write()?;
            // Immediate is redb's default; set it explicitly to document the guarantee.
            tx.set_durability(Durability::Immediate)?;
            {
                let mut t = tx.open_table(match table {
                    Table::Messages => MESSAGES,
                    Table::Dedupe => DEDUPE,
                })?;
                for (k, v) in puts {
                    t.insert(k.as_slice(), v.as_slice())?;
                }
                for k in dels {
                    t.remove(k.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        }

        fn scan(&self, start: &[u8], end: &[u8]) -> Res<(usize, usize)> {
            let rx = self.db.begin_read()?;
            let t = rx.open_table(MESSAGES)?;
            let (mut n, mut bytes) = (0, 0);
            // Call the trait method explicitly: `ReadOnlyTable` also has inherent
            // `range`/`get` in redb 4 (removed in redb 5).
            for item in ReadableTable::range::<&[u8]>(&t, start..end)? {
                let (_k, v) = item?;
                n += 1;
                bytes += v.value().len();
            }
            Ok((n, bytes))
        }

        fn get_dedupe(&self, key: &[u8]) -> Res<Option<u64>> {
            let rx = self.db.begin_read()?;
            let t = rx.open_table(DEDUPE)?;
            Ok(ReadableTable::get(&t, key)?.map(|g| super::be_u64(g.value())))
        }

        fn compact(&mut self) -> Res<()> {
            while self.db.compact()? {}
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- fjall

mod fjall_engine {
    use super::{Engine, Res, Table};
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
    use std::path::Path;

    pub struct Fjall {
        db: Database,
        messages: Keyspace,
        dedupe: Keyspace,
    }

    impl Fjall {
        pub fn open(dir: &Path) -> Res<Self> {
            let db = Database::builder(dir)
                .cache_size(super::CACHE_BYTES)
                .open()?;
            let messages = db.keyspace("messages", KeyspaceCreateOptions::default)?;
            let dedupe = db.keyspace("dedupe", KeyspaceCreateOptions::default)?;
            Ok(Self {
                db,
                messages,
                dedupe,
            })
        }
    }

    impl Engine for Fjall {
        fn commit(
            &mut self,
            table: Table,
            puts: &[(Vec<u8>, Vec<u8>)],
            dels: &[Vec<u8>],
        ) -> Res<()> {
            let ks = match table {
                Table::Messages => &self.messages,
                Table::Dedupe => &self.dedupe,
            };
            // `Database::batch()` defaults to PersistMode::Buffer (OS buffers only,
            // NOT durable): the durability must be raised explicitly.
            let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
            for (k, v) in puts {
                b.insert(ks, k.as_slice(), v.as_slice());
            }
            for k in dels {
                b.remove(ks, k.as_slice());
            }
            b.commit()?;
            Ok(())
        }

        fn scan(&self, start: &[u8], end: &[u8]) -> Res<(usize, usize)> {
            let (mut n, mut bytes) = (0, 0);
            for guard in self.messages.range(start..end) {
                let (_k, v) = guard.into_inner()?;
                n += 1;
                bytes += v.len();
            }
            Ok((n, bytes))
        }

        fn get_dedupe(&self, key: &[u8]) -> Res<Option<u64>> {
            Ok(self.dedupe.get(key)?.map(|v| super::be_u64(&v)))
        }

        fn compact(&mut self) -> Res<()> {
            // Both are #[doc(hidden)] in fjall 3.1: flush the memtables to table
            // files, then merge all tables so tombstones and shadowed data drop out.
            for ks in [&self.messages, &self.dedupe] {
                ks.rotate_memtable_and_wait()?;
            }
            for ks in [&self.messages, &self.dedupe] {
                ks.major_compact()?;
            }
            self.db.persist(PersistMode::SyncAll)?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- workload

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Recipient like "+15550001234".
fn user(u: u64) -> String {
    format!("+1555{u:07}")
}

/// Message key: recipient bytes, 0x00, seq as u64 big-endian (sorts by user, then seq).
fn msg_key(u: u64, seq: u64) -> Vec<u8> {
    let mut k = user(u).into_bytes();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Scan bounds `[user\0, user\x01)` covering exactly one recipient's queue.
fn queue_bounds(u: u64) -> (Vec<u8>, Vec<u8>) {
    let mut s = user(u).into_bytes();
    let mut e = s.clone();
    s.push(0);
    e.push(1);
    (s, e)
}

/// Dedupe key: recipient \0 sender \0 client_msg_id (u64 BE).
fn dedupe_key(recipient: u64, sender: u64, client_msg_id: u64) -> Vec<u8> {
    let mut k = user(recipient).into_bytes();
    k.push(0);
    k.extend_from_slice(user(sender).as_bytes());
    k.push(0);
    k.extend_from_slice(&client_msg_id.to_be_bytes());
    k
}

/// Message `i` of the global stream goes to user `i % USERS` with seq `i / USERS`,
/// so a group commit touches many different mailboxes (as a busy server would).
fn message(i: u64) -> (Vec<u8>, Vec<u8>) {
    let mut v = vec![0u8; PAYLOAD];
    v[..8].copy_from_slice(&i.to_be_bytes());
    for (j, b) in v.iter_mut().enumerate().skip(8) {
        *b = (i as usize).wrapping_mul(31).wrapping_add(j * 7) as u8;
    }
    (msg_key(i % USERS, i / USERS), v)
}

/// Dedupe entry for message `i` (the sender is derived from `i`).
fn dedupe_entry(i: u64) -> Vec<u8> {
    dedupe_key(i % USERS, (i * 7919) % USERS, i)
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[derive(Default, Clone)]
struct Rate {
    ops: u64,
    commits: u64,
    secs: f64,
}
impl Rate {
    fn ops_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn commits_s(&self) -> f64 {
        self.commits as f64 / self.secs
    }
}

#[derive(Default, Clone)]
struct Results {
    append: Vec<(usize, Rate)>,
    append_256: Rate,
    scan: Rate,
    get: Rate,
    delete: Vec<(usize, Rate)>,
    size_appended: (u64, u64),
    size_deleted: (u64, u64),
    size_compacted: (u64, u64),
    size_reopened: (u64, u64),
    compact_secs: f64,
}

/// (allocated bytes as `du` counts them, apparent bytes) of everything under `p`.
fn dir_size(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut alloc = 0;
    let mut apparent = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                let (a, b) = dir_size(&e.path());
                alloc += a;
                apparent += b;
            } else {
                alloc += md.blocks() * 512;
                apparent += md.len();
            }
        }
    }
    (alloc, apparent)
}

/// Append messages `0..` in commits of `batch` until `max_msgs` or `cap` is reached.
fn append_phase<E: Engine>(e: &mut E, batch: usize, max_msgs: u64, cap: Duration) -> Res<Rate> {
    let mut r = Rate::default();
    let start = Instant::now();
    let mut i = 0;
    while i < max_msgs && start.elapsed() < cap {
        let puts: Vec<_> = (i..(i + batch as u64).min(max_msgs)).map(message).collect();
        i += puts.len() as u64;
        e.commit(Table::Messages, &puts, &[])?;
        r.ops += puts.len() as u64;
        r.commits += 1;
    }
    r.secs = start.elapsed().as_secs_f64();
    Ok(r)
}

fn delete_phase<E: Engine>(
    e: &mut E,
    keys: &mut std::vec::IntoIter<Vec<u8>>,
    batch: usize,
    max_deletes: u64,
    cap: Duration,
) -> Res<Rate> {
    let mut r = Rate::default();
    let start = Instant::now();
    while r.ops < max_deletes && start.elapsed() < cap {
        let n = (max_deletes - r.ops).min(batch as u64) as usize;
        let dels: Vec<_> = keys.by_ref().take(n).collect();
        if dels.is_empty() {
            break;
        }
        e.commit(Table::Messages, &[], &dels)?;
        r.ops += dels.len() as u64;
        r.commits += 1;
    }
    r.secs = start.elapsed().as_secs_f64();
    Ok(r)
}

fn run<E: Engine>(name: &str, root: &Path, open: impl Fn(&Path) -> Res<E>) -> Res<Results> {
    let mut res = Results::default();
    let log = |s: String| eprintln!("[{name}] {s}");

    // 1. Append throughput at batch sizes 1 and 16 (fresh database each, time-capped).
    for (batch, max) in [(1usize, B1_MAX_MSGS), (16, B16_MAX_MSGS)] {
        let dir = root.join(format!("{name}-append-b{batch}"));
        let mut e = open(&dir)?;
        let r = append_phase(&mut e, batch, max, PHASE_CAP)?;
        log(format!(
            "append b={batch}: {} msgs in {:.2}s -> {:.0} msg/s, {:.0} commits/s",
            r.ops,
            r.secs,
            r.ops_s(),
            r.commits_s()
        ));
        res.append.push((batch, r));
        drop(e);
        std::fs::remove_dir_all(&dir)?;
    }

    // 1b. Main data set: 200,000 messages (10,000 users x 20) at batch 256.
    let dir = root.join(format!("{name}-main"));
    let mut e = open(&dir)?;
    let r = append_phase(&mut e, 256, TOTAL, Duration::from_secs(120))?;
    assert_eq!(r.ops, TOTAL, "main append did not finish");
    log(format!(
        "append b=256: {} msgs in {:.2}s -> {:.0} msg/s, {:.0} commits/s",
        r.ops,
        r.secs,
        r.ops_s(),
        r.commits_s()
    ));
    res.append.push((256, r.clone()));
    res.append_256 = r;
    res.size_appended = dir_size(&dir);
    log(format!(
        "size after {TOTAL} appends: {:.1} MiB (apparent {:.1} MiB)",
        mib(res.size_appended.0),
        mib(res.size_appended.1)
    ));

    // 2. Read a user's queue: range scan of one recipient's ~20 messages.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut r = Rate::default();
    let start = Instant::now();
    while start.elapsed() < READ_CAP {
        for _ in 0..1000 {
            let (s, end) = queue_bounds(rng.next() % USERS);
            let (n, bytes) = e.scan(&s, &end)?;
            assert_eq!(n as u64, PER_USER);
            black_box(bytes);
            r.ops += 1;
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    log(format!("scan: {} scans -> {:.0} scans/s", r.ops, r.ops_s()));
    res.scan = r;

    // Dedupe table: one entry per message (setup, batch 256, fsync'd, not reported).
    let t = Instant::now();
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(256) {
        let puts: Vec<_> = chunk
            .iter()
            .map(|&i| (dedupe_entry(i), (i / USERS).to_be_bytes().to_vec()))
            .collect();
        e.commit(Table::Dedupe, &puts, &[])?;
    }
    log(format!(
        "dedupe setup: {TOTAL} entries in {:.2}s",
        t.elapsed().as_secs_f64()
    ));

    // Dedupe point gets: 3 of 4 lookups hit an existing key, 1 of 4 misses.
    let mut r = Rate::default();
    let mut hits = 0u64;
    let start = Instant::now();
    while start.elapsed() < READ_CAP {
        for j in 0..1000u64 {
            let i = rng.next() % TOTAL;
            let key = if j % 4 == 3 {
                dedupe_key(i % USERS, (i * 7919 + 1) % USERS, i) // wrong sender: miss
            } else {
                dedupe_entry(i)
            };
            if let Some(seq) = e.get_dedupe(&key)? {
                assert_eq!(seq, i / USERS);
                hits += 1;
            }
            r.ops += 1;
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    assert_eq!(hits, r.ops / 4 * 3);
    log(format!(
        "dedupe get: {} gets -> {:.0} gets/s",
        r.ops,
        r.ops_s()
    ));
    res.get = r;

    // 3. Delete acked messages, recipient by recipient (as after delivering a queue):
    //    batch 16 for the first half (time-capped), then batch 256 for everything left.
    let all_keys: Vec<Vec<u8>> = (0..USERS)
        .flat_map(|u| (0..PER_USER).map(move |s| msg_key(u, s)))
        .collect();
    let mut keys = all_keys.into_iter();
    for (batch, max, cap) in [
        (16usize, TOTAL / 2, PHASE_CAP),
        (256, TOTAL, Duration::from_secs(120)),
    ] {
        let r = delete_phase(&mut e, &mut keys, batch, max, cap)?;
        log(format!(
            "delete b={batch}: {} deletes in {:.2}s -> {:.0} deletes/s, {:.0} commits/s",
            r.ops,
            r.secs,
            r.ops_s(),
            r.commits_s()
        ));
        res.delete.push((batch, r));
    }
    let (s, end) = (vec![0u8], vec![0xFFu8]);
    assert_eq!(e.scan(&s, &end)?.0, 0, "messages left after deleting all");

    // Expire the dedupe window too, so the database is logically empty (setup, not reported).
    let ded: Vec<Vec<u8>> = (0..TOTAL).map(dedupe_entry).collect();
    for chunk in ded.chunks(256) {
        e.commit(Table::Dedupe, &[], chunk)?;
    }

    // 4. Space after deleting everything, then after explicit compaction.
    res.size_deleted = dir_size(&dir);
    log(format!(
        "size after deleting all: {:.1} MiB (apparent {:.1} MiB)",
        mib(res.size_deleted.0),
        mib(res.size_deleted.1)
    ));
    let t = Instant::now();
    e.compact()?;
    res.compact_secs = t.elapsed().as_secs_f64();
    res.size_compacted = dir_size(&dir);
    if std::env::var_os("BENCH_LIST_FILES").is_some() {
        list_files(&dir);
    }
    log(format!(
        "size after compaction ({:.2}s): {:.1} MiB (apparent {:.1} MiB)",
        res.compact_secs,
        mib(res.size_compacted.0),
        mib(res.size_compacted.1)
    ));
    drop(e);
    let e = open(&dir)?;
    res.size_reopened = dir_size(&dir);
    log(format!(
        "size after close + reopen: {:.1} MiB (apparent {:.1} MiB)",
        mib(res.size_reopened.0),
        mib(res.size_reopened.1)
    ));
    if std::env::var_os("BENCH_LIST_FILES").is_some() {
        list_files(&dir);
    }
    drop(e);
    std::fs::remove_dir_all(&dir)?;
    Ok(res)
}

fn list_files(p: &Path) {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            list_files(&e.path());
        } else {
            eprintln!(
                "  {:>12} {:>12} {}",
                md.blocks() * 512,
                md.len(),
                e.path().display()
            );
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// "du (apparent)" in MiB; two decimals below 1 MiB so near-empty files do not print as 0.0.
fn sz((alloc, apparent): (u64, u64)) -> String {
    let f = |b: u64| {
        let m = mib(b);
        if m < 1.0 {
            format!("{m:.2}")
        } else {
            format!("{m:.1}")
        }
    };
    format!("{} ({})", f(alloc), f(apparent))
}

fn fmt_n(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(results: &[(&str, Results)]) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let col = |f: &dyn Fn(&Results) -> String| results.iter().map(|(_, r)| f(r)).collect();
    for idx in 0..3 {
        let batch = results[0].1.append[idx].0;
        rows.push((
            format!("append b={batch}: msgs/s (commits/s)"),
            col(&|r| {
                let a = &r.append[idx].1;
                format!("{} ({})", fmt_n(a.ops_s()), fmt_n(a.commits_s()))
            }),
        ));
    }
    rows.push((
        "read queue (range scan, 20 msgs): scans/s".into(),
        col(&|r| fmt_n(r.scan.ops_s())),
    ));
    rows.push((
        "dedupe point get (75% hits): gets/s".into(),
        col(&|r| fmt_n(r.get.ops_s())),
    ));
    for idx in 0..2 {
        let batch = results[0].1.delete[idx].0;
        rows.push((
            format!("delete acked b={batch}: deletes/s (commits/s)"),
            col(&|r| {
                let d = &r.delete[idx].1;
                format!("{} ({})", fmt_n(d.ops_s()), fmt_n(d.commits_s()))
            }),
        ));
    }
    rows.push((
        "disk after 200k appends: MiB du (apparent)".into(),
        col(&|r| sz(r.size_appended)),
    ));
    rows.push((
        "disk after deleting all: MiB du (apparent)".into(),
        col(&|r| sz(r.size_deleted)),
    ));
    rows.push((
        "disk after explicit compaction: MiB du (apparent)".into(),
        col(&|r| sz(r.size_compacted)),
    ));
    rows.push((
        "disk after compaction + close/reopen: MiB du (apparent)".into(),
        col(&|r| sz(r.size_reopened)),
    ));
    rows.push((
        "explicit compaction time: s".into(),
        col(&|r| format!("{:.2}", r.compact_secs)),
    ));

    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let wc: Vec<usize> = (0..results.len())
        .map(|c| {
            rows.iter()
                .map(|r| r.1[c].len())
                .chain([results[c].0.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut header = format!("{:<w0$}", "metric");
    for (c, (name, _)) in results.iter().enumerate() {
        header.push_str(&format!(" | {:>w$}", name, w = wc[c]));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (label, cells) in rows {
        let mut line = format!("{label:<w0$}");
        for (c, cell) in cells.iter().enumerate() {
            line.push_str(&format!(" | {:>w$}", cell, w = wc[c]));
        }
        println!("{line}");
    }
}

fn main() -> Res<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "both".into());
    let tmp = tempfile::Builder::new()
        .prefix("engine-bench-")
        .tempdir_in("/tmp")?;
    let root: PathBuf = tmp.path().to_path_buf();
    eprintln!("data dir: {}", root.display());
    let t = Instant::now();

    let mut results = Vec::new();
    if which == "both" || which == "redb" {
        results.push(("redb 4", run("redb", &root, redb_engine::Redb::open)?));
    }
    if which == "both" || which == "fjall" {
        results.push(("fjall 3", run("fjall", &root, fjall_engine::Fjall::open)?));
    }
    if results.is_empty() {
        return Err(format!("unknown engine {which:?}: use redb, fjall or nothing").into());
    }

    println!();
    println!(
        "mailbox workload: {USERS} users x {PER_USER} msgs = {TOTAL} msgs of {PAYLOAD} B; \
         every commit fsync'd; b=1 capped at {B1_MAX_MSGS} msgs, b=16 at {B16_MAX_MSGS} msgs, \
         each of those and delete b=16 (max 100000) capped at {}s",
        PHASE_CAP.as_secs()
    );
    print_table(&results);
    eprintln!("total run time: {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}
