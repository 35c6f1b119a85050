//! Mailbox-workload benchmark: redb 4.x vs fjall 3.x vs Switchboard's segment log.
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
//! * the mix of one 1:1 message with its three ticks ([`mix_phase`]): store the
//!   message and its dedupe key, later delete it and store two receipts in the
//!   sender's mailbox, later delete those; CPU, bytes written and commits per
//!   message, at 1 and 16 messages per commit, after a warm-up.
//!
//! The segment log (`storage::log`) is an engine here as its user would run
//! it: entries are table puts and deletes, an in-memory ordered index per
//! table points at the live values, reads go to the file, and when a segment
//! fills the live entries of older segments are copied forward and those
//! segments deleted.
//!
//! Usage: `cargo run --release [-- redb|fjall|log|mix]` (default: all engines;
//! `mix` runs only the mix phase, for every engine).

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
    /// One atomic, fsync'd commit of changes to both tables.
    fn commit_changes(&mut self, changes: &[Change]) -> Res<()>;
}

/// A put (`Some` value) or delete (`None`) of a key in a table.
type Change = (Table, Vec<u8>, Option<Vec<u8>>);

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

        fn commit_changes(&mut self, changes: &[super::Change]) -> Res<()> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            {
                let mut messages = tx.open_table(MESSAGES)?;
                let mut dedupe = tx.open_table(DEDUPE)?;
                for (table, key, value) in changes {
                    let t = match table {
                        Table::Messages => &mut messages,
                        Table::Dedupe => &mut dedupe,
                    };
                    match value {
                        Some(value) => {
                            t.insert(key.as_slice(), value.as_slice())?;
                        }
                        None => {
                            t.remove(key.as_slice())?;
                        }
                    }
                }
            }
            tx.commit()?;
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

        fn commit_changes(&mut self, changes: &[super::Change]) -> Res<()> {
            let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
            for (table, key, value) in changes {
                let ks = match table {
                    Table::Messages => &self.messages,
                    Table::Dedupe => &self.dedupe,
                };
                match value {
                    Some(value) => b.insert(ks, key.as_slice(), value.as_slice()),
                    None => b.remove(ks, key.as_slice()),
                }
            }
            b.commit()?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- segment log

mod log_engine {
    use super::{Change, Engine, Res, Table};
    use std::collections::BTreeMap;
    use std::path::Path;
    use storage::log::{LogOptions, LogReader, Position, SegmentLog};

    /// Where a live value is.
    #[derive(Clone, Copy)]
    struct Slot {
        /// The entry (table, key, value) in the log.
        entry: Position,
        entry_len: u32,
        /// The value's bytes inside it.
        value_offset: u32,
        value_len: u32,
    }

    /// A table put or delete as a log entry:
    /// `[table: u8][op: u8 (1 put, 0 delete)][key len: u16 LE][key][value]`.
    fn encode(table: Table, key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
        let mut entry = Vec::with_capacity(4 + key.len() + value.map_or(0, <[u8]>::len));
        entry.push(table as u8);
        entry.push(u8::from(value.is_some()));
        entry.extend_from_slice(&(key.len() as u16).to_le_bytes());
        entry.extend_from_slice(key);
        entry.extend_from_slice(value.unwrap_or_default());
        entry
    }

    pub struct Log {
        log: SegmentLog,
        reader: LogReader,
        index: [BTreeMap<Vec<u8>, Slot>; 2],
    }

    impl Log {
        pub fn open(dir: &Path) -> Res<Self> {
            let mut index: [BTreeMap<Vec<u8>, Slot>; 2] = Default::default();
            // Smaller segments than a node's 64 MiB, so that the mix reaches
            // the steady state (new segments are recycled spares) in its
            // warm-up.
            let options = LogOptions {
                segment_bytes: 4 * 1024 * 1024,
                ..LogOptions::default()
            };
            let (log, _) = SegmentLog::open(dir, options, |position, entry| {
                let table = usize::from(entry[0] != 0);
                let key_len = u16::from_le_bytes([entry[2], entry[3]]) as usize;
                let key = entry[4..4 + key_len].to_vec();
                if entry[1] == 1 {
                    let value_offset = (4 + key_len) as u32;
                    let slot = Slot {
                        entry: position,
                        entry_len: entry.len() as u32,
                        value_offset,
                        value_len: entry.len() as u32 - value_offset,
                    };
                    index[table].insert(key, slot);
                } else {
                    index[table].remove(&key);
                }
            })?;
            let reader = log.reader();
            Ok(Self { log, reader, index })
        }

        fn value(&self, slot: &Slot) -> Res<Vec<u8>> {
            let position = Position {
                segment: slot.entry.segment,
                offset: slot.entry.offset + u64::from(slot.value_offset),
            };
            Ok(self.reader.read(position, slot.value_len)?)
        }

        /// Copies the live entries of every segment before the active one
        /// forward, then deletes those segments. A delete needs no copy: the
        /// put it cancels goes with its segment or was copied without it.
        fn copy_forward(&mut self) -> Res<()> {
            let active = self.log.active_segment();
            let mut moved = Vec::new();
            for (table, index) in self.index.iter().enumerate() {
                for (key, slot) in index.iter().filter(|(_, s)| s.entry.segment < active) {
                    let entry = self.reader.read(slot.entry, slot.entry_len)?;
                    moved.push((table, key.clone(), *slot, entry));
                }
            }
            for (table, key, slot, entry) in moved {
                let position = self.log.append(&entry)?;
                self.index[table].insert(
                    key,
                    Slot {
                        entry: position,
                        ..slot
                    },
                );
            }
            self.log.commit()?;
            self.log.remove_segments_before(active)?;
            Ok(())
        }

        /// After a commit: once the active segment is past its size, start a
        /// new one and empty the old ones.
        fn after_commit(&mut self, segment_before: u64) -> Res<()> {
            if self.log.active_segment() != segment_before {
                self.copy_forward()?;
            }
            Ok(())
        }
    }

    impl Engine for Log {
        fn commit(
            &mut self,
            table: Table,
            puts: &[(Vec<u8>, Vec<u8>)],
            dels: &[Vec<u8>],
        ) -> Res<()> {
            let changes: Vec<Change> = puts
                .iter()
                .map(|(k, v)| (table, k.clone(), Some(v.clone())))
                .chain(dels.iter().map(|k| (table, k.clone(), None)))
                .collect();
            self.commit_changes(&changes)
        }

        fn commit_changes(&mut self, changes: &[Change]) -> Res<()> {
            let segment_before = self.log.active_segment();
            let mut updates = Vec::with_capacity(changes.len());
            for (table, key, value) in changes {
                let entry = encode(*table, key, value.as_deref());
                let position = self.log.append(&entry)?;
                let slot = value.as_ref().map(|v| Slot {
                    entry: position,
                    entry_len: entry.len() as u32,
                    value_offset: (4 + key.len()) as u32,
                    value_len: v.len() as u32,
                });
                updates.push((*table as usize, key, slot));
            }
            self.log.commit()?;
            // Readers see a change only once it is durable.
            for (table, key, slot) in updates {
                match slot {
                    Some(slot) => {
                        self.index[table].insert(key.clone(), slot);
                    }
                    None => {
                        self.index[table].remove(key);
                    }
                }
            }
            self.after_commit(segment_before)
        }

        fn scan(&self, start: &[u8], end: &[u8]) -> Res<(usize, usize)> {
            let (mut n, mut bytes) = (0, 0);
            for (_, slot) in self.index[0].range(start.to_vec()..end.to_vec()) {
                n += 1;
                bytes += self.value(slot)?.len();
            }
            Ok((n, bytes))
        }

        fn get_dedupe(&self, key: &[u8]) -> Res<Option<u64>> {
            match self.index[1].get(key) {
                Some(slot) => Ok(Some(super::be_u64(&self.value(slot)?))),
                None => Ok(None),
            }
        }

        fn compact(&mut self) -> Res<()> {
            self.log.rotate()?;
            self.copy_forward()
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

/// Messages between a message's store and its delivery, and again between
/// the receipts' store and their deletion (at 3,000 msg/s, about a third of
/// a second each).
const MIX_LAG: u64 = 1_000;
const MIX_RECEIPT: usize = 40;

/// One run of the mix at one batch size.
#[derive(Default, Clone)]
struct Mix {
    dedupe: Option<Dedupe>,
    batch: usize,
    msgs: u64,
    commits: u64,
    secs: f64,
    cpu_secs: f64,
    bytes_written: u64,
}

/// CPU seconds (user + system, every thread) of this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes this process has caused to be written to storage so far.
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A receipt of `kind` (0 delivered, 1 read) for message `i`, in the sender's mailbox.
fn receipt_key(i: u64, kind: u64) -> Vec<u8> {
    msg_key((i * 7919) % USERS, (1 << 63) | (i * 2 + kind))
}

/// How the mix remembers what it stored, for dedupe.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dedupe {
    /// A key per message, kept (as the node's redb `dedupe` table keeps
    /// them for 7 days).
    PerMessage,
    /// A high-water mark per (recipient, sender), overwritten by each
    /// message: each recipient hears from 8 senders.
    HighWaterMark,
}

impl Dedupe {
    fn label(self) -> &'static str {
        match self {
            Dedupe::PerMessage => "key per message",
            Dedupe::HighWaterMark => "mark per sender",
        }
    }
}

/// The changes message `i` brings in the steady state of the mix: its own
/// store and dedupe record, the delivery of message `i - LAG` (its deletion
/// and two receipts to its sender) and the deletion of the receipts of
/// message `i - 2 LAG`.
fn mix_changes(i: u64, dedupe: Dedupe, out: &mut Vec<Change>) {
    let (key, payload) = message(i);
    out.push((Table::Messages, key, Some(payload)));
    let dedupe_key = match dedupe {
        Dedupe::PerMessage => dedupe_entry(i),
        Dedupe::HighWaterMark => {
            let recipient = i % USERS;
            mark_key(recipient, (recipient + 1 + i % 8) % USERS)
        }
    };
    out.push((
        Table::Dedupe,
        dedupe_key,
        Some((i / USERS).to_be_bytes().to_vec()),
    ));
    if let Some(j) = i.checked_sub(MIX_LAG) {
        out.push((Table::Messages, message(j).0, None));
        for kind in 0..2 {
            out.push((
                Table::Messages,
                receipt_key(j, kind),
                Some(vec![kind as u8; MIX_RECEIPT]),
            ));
        }
    }
    if let Some(k) = i.checked_sub(2 * MIX_LAG) {
        for kind in 0..2 {
            out.push((Table::Messages, receipt_key(k, kind), None));
        }
    }
}

/// The record of a (recipient, sender) high-water mark.
fn mark_key(recipient: u64, sender: u64) -> Vec<u8> {
    dedupe_key(recipient, sender, 0)
}

/// Messages of the mix run, 64 per commit, before the measured part: the
/// engines reach their steady state (receipts being deleted, the log's
/// spare segments in use).
const MIX_WARM_UP: u64 = 30_000;

/// The mix at `batch` messages per commit, until `max_msgs` or `cap`, after
/// the warm-up.
fn mix_phase<E: Engine>(
    e: &mut E,
    dedupe: Dedupe,
    batch: usize,
    max_msgs: u64,
    cap: Duration,
) -> Res<Mix> {
    let mut changes = Vec::new();
    for first in (0..MIX_WARM_UP).step_by(64) {
        changes.clear();
        for i in first..first + 64 {
            mix_changes(i, dedupe, &mut changes);
        }
        e.commit_changes(&changes)?;
    }
    let mut mix = Mix {
        batch,
        dedupe: Some(dedupe),
        ..Mix::default()
    };
    let (cpu, written, start) = (cpu_secs(), bytes_written(), Instant::now());
    while mix.msgs < max_msgs && start.elapsed() < cap {
        changes.clear();
        for i in MIX_WARM_UP + mix.msgs..MIX_WARM_UP + mix.msgs + batch as u64 {
            mix_changes(i, dedupe, &mut changes);
        }
        e.commit_changes(&changes)?;
        mix.msgs += batch as u64;
        mix.commits += 1;
    }
    mix.secs = start.elapsed().as_secs_f64();
    mix.cpu_secs = cpu_secs() - cpu;
    mix.bytes_written = bytes_written() - written;
    Ok(mix)
}

fn mix<E: Engine>(name: &str, root: &Path, open: impl Fn(&Path) -> Res<E>) -> Res<Vec<Mix>> {
    let mut runs = Vec::new();
    let kinds = [Dedupe::PerMessage, Dedupe::HighWaterMark];
    for (dedupe, (batch, max)) in kinds
        .into_iter()
        .flat_map(|d| [(1usize, 20_000u64), (16, 200_000)].map(|b| (d, b)))
    {
        let dir = root.join(format!("{name}-mix-b{batch}"));
        let mut e = open(&dir)?;
        let run = mix_phase(&mut e, dedupe, batch, max, Duration::from_secs(10))?;
        eprintln!(
            "[{name}] mix ({}) b={batch}: {} msgs in {:.2}s, {:.1} µs CPU and {:.0} B written per msg",
            dedupe.label(),
            run.msgs,
            run.secs,
            run.cpu_secs / run.msgs as f64 * 1e6,
            run.bytes_written as f64 / run.msgs as f64
        );
        runs.push(run);
        drop(e);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(runs)
}

fn print_mix(results: &[(&str, Vec<Mix>)]) {
    println!();
    println!(
        "the mix of a 1:1 message with three ticks (store + dedupe key; delete + 2 receipts \
         {MIX_LAG} msgs later; delete receipts {MIX_LAG} msgs after that), every commit fsync'd, \
         after a warm-up of {MIX_WARM_UP} msgs"
    );
    println!("engine | dedupe | msgs/commit | msgs/s | commits/s | CPU µs/msg | bytes written/msg");
    for (name, runs) in results {
        for run in runs {
            println!(
                "{name} | {} | {} | {} | {} | {:.1} | {:.0}",
                run.dedupe.map_or("", Dedupe::label),
                run.batch,
                fmt_n(run.msgs as f64 / run.secs),
                fmt_n(run.commits as f64 / run.secs),
                run.cpu_secs / run.msgs as f64 * 1e6,
                run.bytes_written as f64 / run.msgs as f64
            );
        }
    }
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
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let tmp = tempfile::Builder::new()
        .prefix("engine-bench-")
        .tempdir_in("/tmp")?;
    let root: PathBuf = tmp.path().to_path_buf();
    eprintln!("data dir: {}", root.display());
    let t = Instant::now();

    let mut results = Vec::new();
    let all = which == "all";
    if which == "mix" {
        let mixes = vec![
            ("redb 4", mix("redb", &root, redb_engine::Redb::open)?),
            ("fjall 3", mix("fjall", &root, fjall_engine::Fjall::open)?),
            ("segment log", mix("log", &root, log_engine::Log::open)?),
        ];
        print_mix(&mixes);
        return Ok(());
    }
    if all || which == "redb" {
        results.push(("redb 4", run("redb", &root, redb_engine::Redb::open)?));
    }
    if all || which == "fjall" {
        results.push(("fjall 3", run("fjall", &root, fjall_engine::Fjall::open)?));
    }
    if all || which == "log" {
        results.push(("segment log", run("log", &root, log_engine::Log::open)?));
    }
    if results.is_empty() {
        return Err(
            format!("unknown engine {which:?}: use redb, fjall, log, mix or nothing").into(),
        );
    }

    let mixes = if all {
        vec![
            ("redb 4", mix("redb", &root, redb_engine::Redb::open)?),
            ("fjall 3", mix("fjall", &root, fjall_engine::Fjall::open)?),
            ("segment log", mix("log", &root, log_engine::Log::open)?),
        ]
    } else {
        Vec::new()
    };
    println!();
    println!(
        "mailbox workload: {USERS} users x {PER_USER} msgs = {TOTAL} msgs of {PAYLOAD} B; \
         every commit fsync'd; b=1 capped at {B1_MAX_MSGS} msgs, b=16 at {B16_MAX_MSGS} msgs, \
         each of those and delete b=16 (max 100000) capped at {}s",
        PHASE_CAP.as_secs()
    );
    print_table(&results);
    if !mixes.is_empty() {
        print_mix(&mixes);
    }
    eprintln!("total run time: {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}
