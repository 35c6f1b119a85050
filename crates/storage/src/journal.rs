//! The write-ahead journal in front of redb.
//!
//! A durable redb commit rewrites every page from each touched leaf to the
//! root and syncs them: ~225 page writes per group commit at load, most of
//! them for mailbox entries deleted a few seconds later. With a journal the
//! writer makes a batch of [`Journaled`] changes durable by appending their
//! encoded form to a [`SegmentLog`] (one write, one `fdatasync`) and commits
//! the redb transaction with [`Durability::None`]: redb keeps its pages in
//! memory, readers see the change, and nothing of it reaches the file. Every
//! `checkpoint_interval` (or `checkpoint_bytes` of journal) one durable redb
//! commit writes what the pages hold then, recording the last journal
//! sequence it covers; the journal segments before it are dropped. A
//! message stored and deleted between two checkpoints costs its journal
//! bytes and nothing in the B-tree file.
//!
//! Order within a batch: the changes are applied in an open transaction,
//! then appended and synced, then the transaction is committed. Readers
//! therefore never see a change before it is durable, a change that fails
//! to apply is never journaled, and a journal append that fails aborts the
//! transaction (and breaks the store, as a failed redb commit does).
//!
//! Opening replays, in one durable transaction, every journal entry with a
//! sequence above the checkpoint's: after a crash redb holds the last
//! checkpoint, and the journal the batches acknowledged since. A batch with
//! a change that is not journaled (a closure) is committed durably, like a
//! checkpoint, so the order of journaled and other changes is kept.
//!
//! Entry format: `[batch sequence: u64 LE][kind tag: u8][encoded item]`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

use crate::log::{LogError, LogOptions, SegmentLog};
use crate::stage::Stages;
use crate::{ApplyGroup, Result, StorageError};

/// `"checkpoint"` → the last journal sequence the durable state holds.
const JOURNAL_TABLE: TableDefinition<&str, u64> = TableDefinition::new("journal");
const CHECKPOINT_KEY: &str = "checkpoint";
const ENTRY_HEADER: usize = 9;

/// A group of changes that can be journaled: encoded for the journal and
/// decoded again when a restart replays it. The encoding is a stored
/// format: keep it readable by later releases.
pub trait Journaled: ApplyGroup {
    /// The kind's tag in the journal; unique among a store's kinds, never
    /// reused for another kind.
    const TAG: u8;
    /// Appends `item`'s stored form to `out`.
    fn encode(item: &Self::Item, out: &mut Vec<u8>) -> Result<()>;
    /// Reads an item back.
    fn decode(bytes: &[u8]) -> Result<Self::Item>;
}

/// How a restart replays one kind of journaled change.
#[derive(Clone, Copy)]
pub struct Replayer {
    tag: u8,
    name: &'static str,
    replay: fn(&WriteTransaction, &[&[u8]]) -> Result<()>,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("tag", &self.tag)
            .field("name", &self.name)
            .finish()
    }
}

impl Replayer {
    /// The replayer of kind `G`.
    pub fn of<G: Journaled>() -> Self {
        Self {
            tag: G::TAG,
            name: std::any::type_name::<G>(),
            replay: replay_run::<G>,
        }
    }
}

fn replay_run<G: Journaled>(txn: &WriteTransaction, entries: &[&[u8]]) -> Result<()> {
    let items = entries
        .iter()
        .map(|bytes| G::decode(bytes))
        .collect::<Result<Vec<_>>>()?;
    G::apply_group(txn, items)
}

/// Where and how often the journal is written.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The journal's directory (its own, beside the database file).
    pub dir: PathBuf,
    /// The longest time between durable redb commits while changes come in.
    pub checkpoint_interval: Duration,
    /// How long rows stay staged in memory (see [`crate::stage`]) before a
    /// journaled batch writes them into redb with its own changes: rows
    /// deleted sooner (most mailbox entries) never touch a B-tree, and
    /// the rest go in batches in key order, small enough that writing
    /// them never holds the writer long (a checkpoint only writes what
    /// the last interval staged).
    pub stage_interval: Duration,
    /// Journal bytes after which a checkpoint is due, whatever the time.
    pub checkpoint_bytes: u64,
    /// Journal segment size.
    pub segment_bytes: u64,
    /// Every journaled kind the store's users submit.
    pub replayers: Vec<Replayer>,
    /// Whether new batches go through the journal. Without, opening only
    /// replays what an earlier run left (so that turning the journal off
    /// loses nothing) and every commit is a durable redb commit.
    pub journal_new_writes: bool,
}

impl JournalOptions {
    /// Options with the defaults and `replayers`.
    pub fn new(dir: PathBuf, replayers: Vec<Replayer>) -> Self {
        Self {
            dir,
            checkpoint_interval: Duration::from_secs(5),
            stage_interval: Duration::from_millis(200),
            checkpoint_bytes: 32 * 1024 * 1024,
            segment_bytes: 16 * 1024 * 1024,
            replayers,
            journal_new_writes: true,
        }
    }
}

/// What opening the journal found, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalRecovery {
    /// The sequence the database's durable state held.
    pub checkpoint: u64,
    /// Batches replayed on top of it.
    pub batches: u64,
    /// Entries replayed.
    pub entries: u64,
}

/// The writer thread's journal.
pub(crate) struct Journal {
    log: SegmentLog,
    options: JournalOptions,
    /// The last batch sequence appended.
    seq: u64,
    /// The last sequence a durable commit holds.
    checkpointed: u64,
    bytes_since_checkpoint: u64,
    last_checkpoint: Instant,
    /// When the stages were last written into redb.
    last_stage_flush: Instant,
    max_commit_bytes: u64,
    scratch: Vec<u8>,
}

fn log_error(e: LogError) -> StorageError {
    match e {
        LogError::Io { .. } | LogError::Broken => StorageError::Io(e.to_string()),
        LogError::Corrupt { .. } => StorageError::Corrupt(e.to_string()),
        other => StorageError::Engine(other.to_string()),
    }
}

impl Journal {
    /// Opens the journal and replays into `db` what its durable state lacks.
    pub(crate) fn open(db: &Database, options: JournalOptions) -> Result<(Self, JournalRecovery)> {
        let checkpoint = read_checkpoint(db)?;
        let mut pending: Vec<(u64, u8, Vec<u8>)> = Vec::new();
        let mut damage = None;
        let mut last_seq = checkpoint;
        let log_options = LogOptions {
            segment_bytes: options.segment_bytes,
            ..LogOptions::default()
        };
        let max_commit_bytes = u64::from(log_options.max_commit_bytes);
        let (mut log, _) = SegmentLog::open(&options.dir, log_options, |_, entry| {
            let Some((header, item)) = entry.split_at_checked(ENTRY_HEADER) else {
                damage.get_or_insert_with(|| "a journal entry shorter than its header".to_owned());
                return;
            };
            let mut seq = [0; 8];
            seq.copy_from_slice(&header[..8]);
            let seq = u64::from_le_bytes(seq);
            last_seq = last_seq.max(seq);
            if seq > checkpoint {
                pending.push((seq, header[8], item.to_vec()));
            }
        })
        .map_err(log_error)?;
        if let Some(damage) = damage {
            return Err(StorageError::Corrupt(damage));
        }
        let recovery = JournalRecovery {
            checkpoint,
            batches: count_batches(&pending),
            entries: pending.len() as u64,
        };
        if !pending.is_empty() {
            replay(db, &options.replayers, &pending, last_seq)?;
        }
        log.remove_segments_before(log.active_segment())
            .map_err(log_error)?;
        let journal = Self {
            log,
            options,
            seq: last_seq,
            checkpointed: last_seq,
            bytes_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_stage_flush: Instant::now(),
            max_commit_bytes,
            scratch: Vec::new(),
        };
        Ok((journal, recovery))
    }

    /// Appends one batch's entries and syncs them; `entries` are (tag,
    /// encoded item).
    pub(crate) fn append_batch(&mut self, entries: &[(u8, Vec<u8>)]) -> Result<()> {
        let seq = self.seq + 1;
        for (tag, item) in entries {
            self.scratch.clear();
            self.scratch.extend_from_slice(&seq.to_le_bytes());
            self.scratch.push(*tag);
            self.scratch.extend_from_slice(item);
            self.log.append(&self.scratch).map_err(log_error)?;
        }
        let info = self.log.commit().map_err(log_error)?;
        self.seq = seq;
        self.bytes_since_checkpoint += info.bytes;
        Ok(())
    }

    /// Whether `entries` fit in one journal commit.
    pub(crate) fn fits(&self, entries: &[(u8, Vec<u8>)]) -> bool {
        let bytes: usize = entries
            .iter()
            .map(|(_, item)| item.len() + ENTRY_HEADER + 4)
            .sum();
        bytes as u64 <= self.options.checkpoint_bytes.min(self.max_commit_bytes)
    }

    /// Records in `txn` (about to be committed durably) that it holds every
    /// batch appended so far.
    pub(crate) fn mark_checkpoint(&self, txn: &WriteTransaction) -> Result<()> {
        txn.open_table(JOURNAL_TABLE)?
            .insert(CHECKPOINT_KEY, self.seq)?;
        Ok(())
    }

    /// Notes that a durable commit holding every appended batch succeeded:
    /// the journal before it can go.
    pub(crate) fn checkpointed(&mut self) {
        self.checkpointed = self.seq;
        self.bytes_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        // Segments left behind cost only disk until the next checkpoint
        // tries again; the commit they cover is durable either way.
        if let Err(e) = self.log.remove_segments_before(self.log.active_segment()) {
            tracing::warn!(error = %e, "cannot drop checkpointed journal segments");
        }
    }

    /// Whether the next journaled batch should write the stages into redb.
    pub(crate) fn stage_flush_due(&self) -> bool {
        self.last_stage_flush.elapsed() >= self.options.stage_interval
    }

    /// The stages were written into redb (by a batch or a checkpoint).
    pub(crate) fn stage_flushed(&mut self) {
        self.last_stage_flush = Instant::now();
    }

    /// Makes the next checkpoint due an interval from now (after one
    /// could not be taken).
    pub(crate) fn postpone(&mut self) {
        self.last_checkpoint = Instant::now();
    }

    /// Whether batches are held only by the journal.
    pub(crate) fn has_unchecked(&self) -> bool {
        self.seq > self.checkpointed
    }

    /// Whether a checkpoint is due now.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.has_unchecked()
            && (self.last_checkpoint.elapsed() >= self.options.checkpoint_interval
                || self.bytes_since_checkpoint >= self.options.checkpoint_bytes)
    }

    /// How long until a checkpoint is due by time (if anything waits).
    pub(crate) fn until_checkpoint(&self) -> Option<Duration> {
        self.has_unchecked().then(|| {
            self.options
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint.elapsed())
        })
    }

    /// Commits a durable transaction that holds every appended batch:
    /// what the stages hold is written into it, and they are emptied once
    /// it is durable. Until then a reader may find a staged entry in both
    /// places, which reads tolerate (nothing is deleted in between).
    pub(crate) fn checkpoint(&mut self, db: &Database, stages: &Stages) -> Result<()> {
        let txn = db.begin_write()?;
        stages.flush(&txn)?;
        self.mark_checkpoint(&txn)?;
        txn.commit()?;
        {
            let _exclusive = stages.exclusive();
            stages.flushed();
        }
        self.stage_flushed();
        self.checkpointed();
        Ok(())
    }
}

/// Applies a non-durable commit's setting to `txn`.
pub(crate) fn set_non_durable(txn: &mut WriteTransaction) -> Result<()> {
    txn.set_durability(Durability::None)
        .map_err(|e| StorageError::Engine(e.to_string()))
}

fn read_checkpoint(db: &Database) -> Result<u64> {
    // Written through a write transaction: the table may not exist yet.
    let txn = db.begin_write()?;
    let checkpoint = {
        let table = txn.open_table(JOURNAL_TABLE)?;
        table.get(CHECKPOINT_KEY)?.map(|v| v.value()).unwrap_or(0)
    };
    txn.abort()?;
    Ok(checkpoint)
}

fn count_batches(pending: &[(u64, u8, Vec<u8>)]) -> u64 {
    let mut batches = 0;
    let mut last = None;
    for (seq, _, _) in pending {
        if last != Some(*seq) {
            batches += 1;
            last = Some(*seq);
        }
    }
    batches
}

/// Applies `pending` (in journal order) in one durable transaction that
/// also records `last_seq` as its checkpoint.
fn replay(
    db: &Database,
    replayers: &[Replayer],
    pending: &[(u64, u8, Vec<u8>)],
    last_seq: u64,
) -> Result<()> {
    let txn = db.begin_write()?;
    let mut start = 0;
    while start < pending.len() {
        // A run of one kind in one batch, as the writer applied it.
        let (seq, tag, _) = &pending[start];
        let run = pending[start..]
            .iter()
            .take_while(|(s, t, _)| s == seq && t == tag)
            .count();
        let replayer = replayers.iter().find(|r| r.tag == *tag).ok_or_else(|| {
            StorageError::Corrupt(format!(
                "the journal holds changes of kind {tag}, which this build does not know \
                 (written by a newer release?); start that release to replay them"
            ))
        })?;
        let entries: Vec<&[u8]> = pending[start..start + run]
            .iter()
            .map(|(_, _, item)| item.as_slice())
            .collect();
        (replayer.replay)(&txn, &entries).map_err(|e| {
            StorageError::Corrupt(format!(
                "replaying journal batch {seq} ({}): {e}",
                replayer.name
            ))
        })?;
        start += run;
    }
    txn.open_table(JOURNAL_TABLE)?
        .insert(CHECKPOINT_KEY, last_seq)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests;
