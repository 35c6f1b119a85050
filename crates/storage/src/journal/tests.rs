//! The journal against real files and a real crash: a child process (this
//! test binary, re-run on one ignored test) writes, prints what was
//! acknowledged, and aborts without running a destructor; the parent
//! reopens what it left.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{JournalOptions, Journaled, Replayer};
use crate::{ApplyGroup, Result, StorageError, Store, StoreOptions};

const ROWS: TableDefinition<u64, u64> = TableDefinition::new("rows");

/// A journaled kind: each item inserts one row.
enum Rows {}

impl ApplyGroup for Rows {
    type Item = (u64, u64);
    fn apply_group(txn: &WriteTransaction, items: Vec<(u64, u64)>) -> Result<()> {
        let mut table = txn.open_table(ROWS)?;
        for (key, value) in items {
            table.insert(key, value)?;
        }
        Ok(())
    }
}

impl Journaled for Rows {
    const TAG: u8 = 7;
    fn encode(item: &(u64, u64), out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&item.0.to_le_bytes());
        out.extend_from_slice(&item.1.to_le_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<(u64, u64)> {
        let field = |range: std::ops::Range<usize>| -> Result<u64> {
            let bytes = bytes
                .get(range)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .ok_or_else(|| StorageError::Corrupt("short row".into()))?;
            Ok(u64::from_le_bytes(bytes))
        };
        Ok((field(0..8)?, field(8..16)?))
    }
}

fn options(dir: &Path, checkpoint_interval: Duration, replayers: Vec<Replayer>) -> StoreOptions {
    StoreOptions {
        journal: Some(JournalOptions {
            checkpoint_interval,
            ..JournalOptions::new(dir.join("journal"), replayers)
        }),
        ..StoreOptions::default()
    }
}

/// The options a restart of the crashed child uses: the journal with the
/// child's kind.
fn with_rows(dir: &Path) -> StoreOptions {
    options(dir, Duration::from_secs(1), vec![Replayer::of::<Rows>()])
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("db.redb")
}

/// Opens the store, retrying while a dropped one's writer still holds
/// the file (redb refuses a second open).
fn reopen(dir: &Path, options: StoreOptions) -> Result<Store> {
    let mut last = None;
    for _ in 0..200 {
        match Store::open(&db_path(dir), options.clone()) {
            Ok(store) => return Ok(store),
            Err(e @ StorageError::Open { .. }) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(StorageError::Closed))
}

fn rows(store: &Store) -> Vec<(u64, u64)> {
    let read = store.db().begin_read().expect("read");
    match read.open_table(ROWS) {
        Ok(table) => table
            .iter()
            .expect("iter")
            .map(|row| {
                let (k, v) = row.expect("row");
                (k.value(), v.value())
            })
            .collect(),
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => panic!("open rows: {e}"),
    }
}

async fn put(store: &Store, key: u64) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.submit_journaled::<Rows>((key, key * 10), move |result| {
        let _ = tx.send(result);
    });
    rx.await.unwrap_or(Err(StorageError::Closed))
}

async fn put_direct(store: &Store, key: u64) -> Result<()> {
    store
        .write(move |txn| {
            txn.open_table(ROWS)?.insert(key, key * 10)?;
            Ok(())
        })
        .await
}

const CHILD_DIR: &str = "JOURNAL_CRASH_DIR";

/// Not a test on its own: the body of the crashing child process.
/// Writes rows 1..=20 journaled, row 21 through a durable closure, rows
/// 22..=40 journaled, printing each acknowledgement, then aborts.
#[tokio::test]
#[ignore = "run by crash_after_acks_loses_nothing in a child process"]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = Store::open(
        &db_path(&dir),
        options(
            &dir,
            Duration::from_secs(3600),
            vec![Replayer::of::<Rows>()],
        ),
    )
    .expect("open");
    for key in 1..=40 {
        let written = if key == 21 {
            put_direct(&store, key).await
        } else {
            put(&store, key).await
        };
        written.expect("write");
        println!("acked {key}");
    }
    std::process::abort();
}

/// Runs [`crash_child`] in a child process on `dir` and returns the keys it
/// saw acknowledged.
fn run_crashing_child(dir: &Path) -> Vec<u64> {
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args([
            "--exact",
            "journal::tests::crash_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut child = child;
    let stdout = child.stdout.take().expect("stdout");
    let acked = BufReader::new(stdout)
        .lines()
        .map_while(std::result::Result::ok)
        .filter_map(|line| line.strip_prefix("acked ")?.trim().parse().ok())
        .collect();
    let status = child.wait().expect("wait child");
    assert!(!status.success(), "the child must die by abort, not exit");
    acked
}

#[tokio::test]
async fn crash_after_acks_loses_nothing_and_replays_only_what_the_checkpoint_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acked = run_crashing_child(dir.path());
    assert_eq!(
        acked,
        (1..=40).collect::<Vec<_>>(),
        "the child ran to its end"
    );

    // The database file alone holds the last durable commit: the closure's
    // (rows 1..=21, with 1..=20 made durable by it as a checkpoint).
    {
        let bare = reopen(dir.path(), StoreOptions::default()).expect("open without journal");
        let bare_rows = rows(&bare);
        assert_eq!(
            bare_rows.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            (1..=21).collect::<Vec<_>>(),
            "journaled commits after the checkpoint never reached the database file"
        );
    }

    // A build that does not know the journal's kind refuses to open.
    let refused = reopen(
        dir.path(),
        options(dir.path(), Duration::from_secs(1), vec![]),
    );
    match refused {
        Err(StorageError::Corrupt(reason)) => assert!(reason.contains("kind 7"), "{reason}"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("opened a journal it cannot replay"),
    }

    let store = reopen(dir.path(), with_rows(dir.path())).expect("reopen with the journal");
    let recovery = store.journal_recovery().expect("journal");
    assert_eq!(recovery.entries, 19, "rows 22..=40, each its own batch");
    assert_eq!(recovery.batches, 19);
    let expected: Vec<(u64, u64)> = (1..=40).map(|k| (k, k * 10)).collect();
    assert_eq!(rows(&store), expected);

    // The replay was made durable: a clean stop and a reopen replay nothing.
    put(&store, 41).await.expect("write after replay");
    drop(store);
    let store = reopen(dir.path(), with_rows(dir.path())).expect("reopen after a clean stop");
    assert_eq!(store.journal_recovery().expect("journal").entries, 0);
    assert_eq!(rows(&store).len(), 41);
}

#[tokio::test]
async fn a_torn_journal_tail_is_ignored_and_what_was_acknowledged_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acked = run_crashing_child(dir.path());
    assert_eq!(acked.len(), 40);
    // A commit cut short by the crash: a length that promises more than
    // follows.
    let journal = dir.path().join("journal");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&journal)
        .expect("journal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment");
    let mut bytes = std::fs::read(last).expect("read segment");
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(last, bytes).expect("tear");

    let store = reopen(dir.path(), with_rows(dir.path())).expect("reopen");
    assert_eq!(rows(&store).len(), 40);
    put(&store, 41)
        .await
        .expect("the next commit overwrites the torn one");
    assert_eq!(rows(&store).len(), 41);
}

#[tokio::test]
async fn checkpoints_come_on_time_and_drop_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(
        dir.path(),
        Duration::from_millis(50),
        vec![Replayer::of::<Rows>()],
    );
    if let Some(journal) = opts.journal.as_mut() {
        // Small segments, so that the rows span several.
        journal.segment_bytes = 256;
    }
    let store = Store::open(&db_path(dir.path()), opts).expect("open");
    for key in 1..=50 {
        put(&store, key).await.expect("write");
    }
    let stats = store.stats();
    assert_eq!(
        stats
            .journaled_commits
            .load(std::sync::atomic::Ordering::Relaxed),
        50
    );
    let segments = || {
        std::fs::read_dir(dir.path().join("journal"))
            .expect("journal dir")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|ext| ext == "seg"))
            })
            .count()
    };
    // An idle writer checkpoints once the interval has passed. On a slow
    // machine one may also come between the writes (it leaves the later
    // segments): wait for the one after the last write.
    let mut waited = 0;
    while (stats.checkpoints.load(std::sync::atomic::Ordering::Relaxed) == 0 || segments() > 1)
        && waited < 500
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert!(stats.checkpoints.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let segments = segments();
    assert_eq!(
        segments, 1,
        "only the active segment is left after a checkpoint"
    );
    // A clean stop leaves everything in the database file itself.
    drop(store);
    let bare = reopen(dir.path(), StoreOptions::default()).expect("open without journal");
    assert_eq!(rows(&bare).len(), 50);
}

#[tokio::test]
async fn a_journal_turned_off_is_still_replayed_and_then_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(run_crashing_child(dir.path()).len(), 40);
    let mut off = with_rows(dir.path());
    if let Some(journal) = off.journal.as_mut() {
        journal.journal_new_writes = false;
    }
    let store = reopen(dir.path(), off.clone()).expect("reopen with the journal off");
    assert_eq!(store.journal_recovery().expect("replayed").entries, 19);
    assert_eq!(rows(&store).len(), 40);
    put(&store, 41).await.expect("write without the journal");
    let stats = store.stats();
    assert_eq!(
        stats
            .journaled_commits
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "new batches are durable redb commits"
    );
    drop(store);
    // Nothing is replayed twice, and what was written without the journal
    // is in the database file.
    let store = reopen(dir.path(), off).expect("reopen again");
    assert_eq!(store.journal_recovery().expect("opened").entries, 0);
    assert_eq!(rows(&store).len(), 41);
}
