//! The group-commit writer thread.

use std::any::{Any, TypeId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use redb::{Database, WriteTransaction};

use crate::journal::{Journal, JournalOptions, JournalRecovery, Journaled, set_non_durable};
use crate::stage::{Stage, Stages};
use crate::{Result, StorageError};

/// Tuning of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most changes applied in one transaction.
    pub max_batch: usize,
    /// Page cache size in bytes (redb's own cache; hot mailboxes are also kept
    /// in the fragments' memory).
    pub cache_bytes: usize,
    /// The least time from the start of one commit to the start of the
    /// next. A commit has a fixed cost (redb rewrites the pages from each
    /// touched leaf to the root, then syncs), so commits that follow each
    /// other closely wait for more changes to share it; a change that
    /// arrives after a quiet spell is committed at once. Zero commits as
    /// soon as the previous commit ends.
    pub commit_interval: std::time::Duration,
    /// A write-ahead journal for [`Journaled`] changes (see
    /// [`crate::journal`]); without one every commit is a durable redb
    /// commit. Ignored by [`Store::in_memory`].
    pub journal: Option<JournalOptions>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            cache_bytes: 64 * 1024 * 1024,
            commit_interval: std::time::Duration::ZERO,
            journal: None,
        }
    }
}

/// Counters of the writer, for metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Changes applied.
    pub changes: AtomicU64,
    /// Changes waiting for the writer right now.
    pub queued: AtomicU64,
    /// Transactions that failed (every change in them failed).
    pub failed_commits: AtomicU64,
    /// Microseconds spent applying and committing, all transactions together.
    pub busy_micros: AtomicU64,
    /// Transactions made durable by the journal instead of redb.
    pub journaled_commits: AtomicU64,
    /// Durable redb commits that cover journaled transactions.
    pub checkpoints: AtomicU64,
}

/// Why the store refuses new data right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A write failed on an I/O error: nothing more can be made durable
    /// until the process restarts (see [`StorageError::Io`]).
    Broken,
    /// Free disk under the data directory is below the configured
    /// threshold (set by the node's sampler through [`Store::set_low_disk`]).
    LowDisk,
}

impl Refusal {
    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Broken => "store_broken",
            Refusal::LowDisk => "low_disk",
        }
    }
}

/// Whether the store can take writes, shared by every handle.
#[derive(Debug)]
struct Health {
    low_disk: AtomicBool,
    /// `Some(reason)` once a write failed on an I/O error; never cleared.
    broken: tokio::sync::watch::Sender<Option<String>>,
}

/// A kind of small change that is applied in runs: the writer hands every
/// item of consecutive [`Store::submit_grouped`] changes of one group to one
/// `apply_group` call, which can open its tables once for all of them (in
/// redb, opening a table and writing its root back on close costs about as
/// much as the inserts of a small change). Changes are still applied and
/// completed in submission order: a run ends at the first change of another
/// kind.
pub trait ApplyGroup: 'static {
    /// One change.
    type Item: Send + 'static;
    /// Applies `items`, in order, inside the group commit's transaction.
    fn apply_group(txn: &WriteTransaction, items: Vec<Self::Item>) -> Result<()>;

    /// Applies `items` of a batch that the journal makes durable: a kind
    /// may keep part of their effect in a [`Stage`](crate::Stage) of
    /// `stages` instead of `txn` (see [`crate::stage`]). By default as
    /// [`Self::apply_group`].
    fn apply_group_journaled(
        txn: &WriteTransaction,
        items: Vec<Self::Item>,
        stages: &Stages,
    ) -> Result<()> {
        let _ = stages;
        Self::apply_group(txn, items)
    }
}

/// One change: applied inside the shared transaction, then told the outcome.
trait Change: Send {
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()>;
    fn complete(self: Box<Self>, outcome: Result<()>);
    /// The group of a grouped change.
    fn group(&self) -> Option<TypeId> {
        None
    }
    /// Applies this change and `others` (changes of the same group) at
    /// once; `stages` when the batch is journaled.
    fn apply_run(
        &mut self,
        txn: &WriteTransaction,
        _others: &mut [Box<dyn Change>],
        _stages: Option<&Stages>,
    ) -> Result<()> {
        self.apply(txn)
    }
    /// A grouped change, for the first change of its run to take its item.
    fn as_grouped(&mut self) -> Option<&mut dyn Any> {
        None
    }
    /// Encodes the change for the journal: `None` if it is not journaled.
    fn journal_entry(&self) -> Option<Result<(u8, Vec<u8>)>> {
        None
    }
}

/// How a journaled group's item is written to the journal.
type Encoder<G> = (u8, fn(&<G as ApplyGroup>::Item, &mut Vec<u8>) -> Result<()>);

struct GroupedChange<G: ApplyGroup> {
    item: Option<G::Item>,
    journal: Option<Encoder<G>>,
    done: Option<Box<dyn FnOnce(Result<()>) + Send>>,
}

impl<G: ApplyGroup> Change for GroupedChange<G> {
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()> {
        self.apply_run(txn, &mut [], None)
    }

    fn complete(mut self: Box<Self>, outcome: Result<()>) {
        if let Some(done) = self.done.take() {
            done(outcome);
        }
    }

    fn group(&self) -> Option<TypeId> {
        Some(TypeId::of::<G>())
    }

    fn apply_run(
        &mut self,
        txn: &WriteTransaction,
        others: &mut [Box<dyn Change>],
        stages: Option<&Stages>,
    ) -> Result<()> {
        let mut items = Vec::with_capacity(1 + others.len());
        items.extend(self.item.take());
        for other in others {
            // Same group, so the same change type: the downcast cannot fail.
            let other = other
                .as_grouped()
                .and_then(|change| change.downcast_mut::<Self>());
            items.extend(other.and_then(|change| change.item.take()));
        }
        match stages {
            Some(stages) => G::apply_group_journaled(txn, items, stages),
            None => G::apply_group(txn, items),
        }
    }

    fn as_grouped(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn journal_entry(&self) -> Option<Result<(u8, Vec<u8>)>> {
        let (tag, encode) = self.journal?;
        let item = self.item.as_ref()?;
        let mut bytes = Vec::new();
        Some(encode(item, &mut bytes).map(|()| (tag, bytes)))
    }
}

struct TypedChange<F, R, C> {
    apply: Option<F>,
    output: Option<R>,
    done: Option<C>,
}

impl<F, R, C> Change for TypedChange<F, R, C>
where
    F: FnOnce(&WriteTransaction) -> Result<R> + Send,
    R: Send,
    C: FnOnce(Result<R>) + Send,
{
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()> {
        if let Some(apply) = self.apply.take() {
            self.output = Some(apply(txn)?);
        }
        Ok(())
    }

    fn complete(mut self: Box<Self>, outcome: Result<()>) {
        let result = outcome.and_then(|()| self.output.take().ok_or(StorageError::Closed));
        if let Some(done) = self.done.take() {
            done(result);
        }
    }
}

/// The node's database and its writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// The database file (`None` in memory).
    path: Option<Arc<PathBuf>>,
    recovery: Option<JournalRecovery>,
    changes: mpsc::Sender<Box<dyn Change>>,
    stats: Arc<WriterStats>,
    health: Arc<Health>,
    stages: Arc<Stages>,
}

impl Store {
    /// Opens (or creates) the database file, replays its journal if it has
    /// one, and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(|e| StorageError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let journal = match options.journal.clone() {
            Some(journal_options) => {
                let new_writes = journal_options.journal_new_writes;
                let dir = journal_options.dir.display().to_string();
                let (journal, recovery) = Journal::open(&db, journal_options)?;
                if recovery.entries > 0 {
                    tracing::info!(journal = %dir, checkpoint = recovery.checkpoint,
                        batches = recovery.batches, entries = recovery.entries,
                        "replayed the storage journal");
                }
                // Without new writes, opening only replayed what was left.
                let journal = new_writes.then_some(journal);
                Some((journal, recovery))
            }
            None => None,
        };
        let recovery = journal.as_ref().map(|(_, recovery)| *recovery);
        let journal = journal.and_then(|(journal, _)| journal);
        let mut store = Self::start(db, options, journal)?;
        store.recovery = recovery;
        store.path = Some(Arc::new(path.to_path_buf()));
        Ok(store)
    }

    /// What opening the journal replayed (`None` without a journal).
    pub fn journal_recovery(&self) -> Option<JournalRecovery> {
        self.recovery
    }

    /// A database held in memory, for tests and the simulator: its reads
    /// and its writer behave as a file's, and it is gone when the last
    /// clone is dropped.
    pub fn in_memory(options: StoreOptions) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StorageError::Open {
                path: "(memory)".to_owned(),
                reason: e.to_string(),
            })?;
        Self::start(db, options, None)
    }

    fn start(db: Database, options: StoreOptions, journal: Option<Journal>) -> Result<Self> {
        let db = Arc::new(db);
        let stats = Arc::new(WriterStats::default());
        let health = Arc::new(Health {
            low_disk: AtomicBool::new(false),
            broken: tokio::sync::watch::Sender::new(None),
        });
        let stages = Arc::new(Stages::default());
        let (changes, receiver) = mpsc::channel();
        let writer = Writer {
            db: Arc::clone(&db),
            stats: Arc::clone(&stats),
            health: Arc::clone(&health),
            stages: Arc::clone(&stages),
            max_batch: options.max_batch,
            commit_interval: options.commit_interval,
            journal,
        };
        thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || writer.run(&receiver))
            .map_err(|e| StorageError::Engine(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            db,
            path: None,
            recovery: None,
            changes,
            stats,
            health,
            stages,
        })
    }

    /// Why new data should be refused now, if it should: the store is
    /// broken, or the disk is nearly full.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.health.broken.borrow().is_some() {
            Some(Refusal::Broken)
        } else if self.health.low_disk.load(Ordering::Relaxed) {
            Some(Refusal::LowDisk)
        } else {
            None
        }
    }

    /// Whether a write has failed on an I/O error (for good, in this process).
    pub fn is_broken(&self) -> bool {
        self.health.broken.borrow().is_some()
    }

    /// Resolves with the I/O error once a write has failed on one (at once
    /// if one already has).
    pub async fn broken(&self) -> String {
        let mut watch = self.health.broken.subscribe();
        loop {
            if let Some(reason) = watch.borrow_and_update().clone() {
                return reason;
            }
            if watch.changed().await.is_err() {
                // Cannot happen while `self` holds the sender; never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Marks the disk as nearly full (or no longer): see [`Refusal::LowDisk`].
    pub fn set_low_disk(&self, low: bool) {
        self.health.low_disk.store(low, Ordering::Relaxed);
    }

    /// The database, for read transactions.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// The store's stage of type `S` (see [`crate::stage`]), created on
    /// first use.
    pub fn stage<S: Stage + Default>(&self) -> Arc<S> {
        self.stages.get::<S>()
    }

    /// Hold this while reading a stage together with a redb read
    /// transaction begun after taking it (see [`Stages::view`]).
    pub fn view(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.stages.view()
    }

    /// Queues `apply` for the next group commit and calls `done` with its
    /// output once the commit is durable (or with the error if it failed).
    /// `done` runs on the writer thread: it must only hand the result on.
    pub fn submit<F, R, C>(&self, apply: F, done: C)
    where
        F: FnOnce(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
        C: FnOnce(Result<R>) + Send + 'static,
    {
        self.send(Box::new(TypedChange {
            apply: Some(apply),
            output: None,
            done: Some(done),
        }));
    }

    /// Queues `item` of group `G` for the next group commit (applied in a run
    /// with the grouped changes next to it, see [`ApplyGroup`]) and calls
    /// `done` once the commit is durable (or with the error if it failed).
    /// `done` runs on the writer thread: it must only hand the result on.
    pub fn submit_grouped<G: ApplyGroup>(
        &self,
        item: G::Item,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        self.send_grouped::<G>(item, None, done);
    }

    /// As [`Self::submit_grouped`], for a kind the journal can hold: with a
    /// journal, a batch of only such changes is made durable by the journal
    /// (see [`crate::journal`]).
    pub fn submit_journaled<G: Journaled>(
        &self,
        item: G::Item,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        self.send_grouped::<G>(item, Some((G::TAG, G::encode)), done);
    }

    fn send_grouped<G: ApplyGroup>(
        &self,
        item: G::Item,
        journal: Option<Encoder<G>>,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        self.send(Box::new(GroupedChange::<G> {
            item: Some(item),
            journal,
            done: Some(Box::new(done)),
        }));
    }

    fn send(&self, change: Box<dyn Change>) {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(change)) = self.changes.send(change) {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            change.complete(Err(StorageError::Closed));
        }
    }

    /// Applies `apply` in the next group commit and waits until it is durable.
    pub async fn write<F, R>(&self, apply: F) -> Result<R>
    where
        F: FnOnce(&WriteTransaction) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(apply, move |result| {
            let _ = tx.send(result);
        });
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    /// Resolves once every change submitted before it is durable.
    pub async fn flush(&self) -> Result<()> {
        self.write(|_| Ok(())).await
    }

    /// Writes a consistent copy of the database to `target`, a new file
    /// (mode 0600, synced), while the store serves: a backup. Returns its
    /// size. The copy holds every change committed before it, staged rows
    /// included, and nothing after: it is made on the writer thread right
    /// after a durable commit, so commits wait while the file is copied
    /// (`copy_file_range`, a reflink where the filesystem has them).
    pub async fn snapshot_to(&self, target: PathBuf) -> Result<u64> {
        let source = self
            .path
            .clone()
            .ok_or_else(|| StorageError::Engine("a database in memory has no file".into()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Not journaled: the batch commits durably and writes what is
        // staged into the file first.
        self.submit(
            |_| Ok(()),
            move |committed: Result<()>| {
                let copied = committed.and_then(|()| copy_synced(&source, &target));
                let _ = tx.send(copied);
            },
        );
        rx.await.unwrap_or(Err(StorageError::Closed))
    }
}

/// The writer thread's side of a [`Store`].
struct Writer {
    db: Arc<Database>,
    stats: Arc<WriterStats>,
    health: Arc<Health>,
    stages: Arc<Stages>,
    max_batch: usize,
    commit_interval: std::time::Duration,
    journal: Option<Journal>,
}

impl Writer {
    /// The next change; while the journal holds batches that redb has not
    /// made durable, a checkpoint is taken when one is due, and when the
    /// last handle is gone (a clean stop leaves nothing to replay).
    fn next_change(
        &mut self,
        receiver: &mpsc::Receiver<Box<dyn Change>>,
    ) -> Option<Box<dyn Change>> {
        loop {
            let wait = self.journal.as_ref().and_then(Journal::until_checkpoint);
            let received = match wait {
                None => receiver
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(wait) => receiver.recv_timeout(wait),
            };
            match received {
                Ok(change) => return Some(change),
                Err(mpsc::RecvTimeoutError::Timeout) => self.checkpoint(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if self.journal.as_ref().is_some_and(Journal::has_unchecked) {
                        self.checkpoint();
                    }
                    return None;
                }
            }
        }
    }

    /// A durable redb commit covering the journal so far.
    fn checkpoint(&mut self) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if self.health.broken.borrow().is_some() {
            // Nothing more becomes durable in this process; the restart
            // replays the journal. Not due again at once: no busy loop.
            journal.postpone();
            return;
        }
        let began = std::time::Instant::now();
        match journal.checkpoint(&self.db, &self.stages) {
            Ok(()) => {
                let took = began.elapsed();
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .busy_micros
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                tracing::debug!(micros = took.as_micros() as u64, "storage checkpoint");
            }
            Err(StorageError::Io(reason)) => {
                tracing::error!(error = %reason,
                    "storage checkpoint failed on an I/O error: the store is broken until restart");
                self.health.broken.send_replace(Some(reason));
                journal.postpone();
            }
            Err(e) => {
                tracing::error!(error = %e, "storage checkpoint failed; retried after the interval");
                journal.postpone();
            }
        }
    }

    fn run(mut self, receiver: &mpsc::Receiver<Box<dyn Change>>) {
        let stats = Arc::clone(&self.stats);
        let mut batch: Vec<Box<dyn Change>> = Vec::with_capacity(self.max_batch);
        let mut last_start: Option<std::time::Instant> = None;
        // Blocks for the first change, then takes whatever else is already waiting:
        // the batch grows by itself while a commit is in flight.
        while let Some(first) = self.next_change(receiver) {
            batch.push(first);
            let not_before = last_start.map(|start| start + self.commit_interval);
            self.gather(receiver, &mut batch, not_before);
            last_start = Some(std::time::Instant::now());
            stats
                .queued
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            // Once broken, redb answers every write with `PreviousIo`: the
            // changes fail at once with the first error, which says why.
            let broken = self.health.broken.borrow().clone();
            if let Some(reason) = broken {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                for change in batch.drain(..) {
                    change.complete(Err(StorageError::Io(reason.clone())));
                }
                continue;
            }
            let began = std::time::Instant::now();
            let outcome = commit_batch(&self.db, &mut batch, self.journal.as_mut(), &self.stages);
            let took = began.elapsed();
            stats
                .busy_micros
                .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
            metrics::histogram!("switchboard_storage_commit_seconds").record(took.as_secs_f64());
            tracing::trace!(
                changes = batch.len(),
                micros = took.as_micros() as u64,
                "group commit"
            );
            match &outcome {
                Ok(kind) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats
                        .changes
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    match kind {
                        CommitKind::Journaled => {
                            stats.journaled_commits.fetch_add(1, Ordering::Relaxed);
                        }
                        CommitKind::Checkpoint => {
                            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                        }
                        CommitKind::Durable => {}
                    }
                }
                Err(StorageError::Io(reason)) => {
                    stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %reason, changes = batch.len(),
                        "group commit failed on an I/O error: the store is broken until restart");
                    self.health.broken.send_replace(Some(reason.clone()));
                }
                Err(e) => {
                    stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, changes = batch.len(), "group commit failed");
                }
            }
            let outcome = outcome.map(|_| ());
            for change in batch.drain(..) {
                change.complete(outcome.clone());
            }
            if self.journal.as_ref().is_some_and(Journal::checkpoint_due) {
                self.checkpoint();
            }
        }
        tracing::debug!("storage writer stopped: all stores dropped");
    }

    /// Adds what is waiting to `batch`; if that is before `not_before` (the
    /// commit interval after the previous commit's start), first sleeps
    /// until then, so that what arrives meanwhile costs no wake-up.
    fn gather(
        &self,
        receiver: &mpsc::Receiver<Box<dyn Change>>,
        batch: &mut Vec<Box<dyn Change>>,
        not_before: Option<std::time::Instant>,
    ) {
        if let Some(not_before) = not_before {
            let left = not_before.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                thread::sleep(left);
            }
        }
        while batch.len() < self.max_batch {
            match receiver.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
    }
}

/// How a batch was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitKind {
    /// A durable redb commit, without a journal.
    Durable,
    /// Appended to the journal, committed to redb without a sync.
    Journaled,
    /// A durable redb commit that also covers the journal so far.
    Checkpoint,
}

/// Applies every change in one transaction and makes it durable: through
/// the journal if there is one and every change can be journaled, else by
/// a durable redb commit. A change that fails aborts the whole transaction:
/// changes only fail when the engine does, and then none of them can be
/// trusted to be durable.
///
/// A journaled batch may stage changes in memory ([`crate::stage`]): they
/// are published with its redb commit. A durable commit first writes what
/// the stages hold into its transaction (the changes after it may delete
/// it) and empties them once it is durable.
fn commit_batch(
    db: &Database,
    batch: &mut [Box<dyn Change>],
    journal: Option<&mut Journal>,
    stages: &Stages,
) -> Result<CommitKind> {
    let entries = match &journal {
        Some(journal) => batch
            .iter()
            .map(|change| change.journal_entry())
            .collect::<Option<Result<Vec<_>>>>()
            .transpose()?
            // A batch too large for one journal commit is made durable by
            // redb instead.
            .filter(|entries| journal.fits(entries)),
        None => None,
    };
    let journaled = journal.is_some() && entries.is_some();
    let mut txn = db.begin_write()?;
    // A durable commit holds what is staged; a journaled batch does once
    // the stage interval has passed (before its own changes, which may
    // delete or replace what it writes).
    let flushing = if journaled {
        journal.as_ref().is_some_and(|j| j.stage_flush_due()) && stages.any_held()
    } else {
        stages.any_held()
    };
    let applied = if flushing { stages.flush(&txn) } else { Ok(()) }
        .and_then(|()| apply_batch(&txn, batch, journaled.then_some(stages)));
    if let Err(e) = applied {
        stages.discard();
        if let Err(abort) = txn.abort() {
            tracing::warn!(error = %abort, "abort after a failed change also failed");
        }
        return Err(e);
    }
    match (journal, entries) {
        (None, _) => {
            commit_durably(txn, stages, flushing)?;
            Ok(CommitKind::Durable)
        }
        (Some(journal), Some(entries)) => {
            // Synced before the commit: readers never see what a crash
            // could lose.
            if let Err(e) = journal.append_batch(&entries) {
                stages.discard();
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "abort after a failed journal append also failed");
                }
                return Err(e);
            }
            // The journal now holds the batch: if redb cannot commit it,
            // the two differ until a restart replays the journal, so the
            // store is broken (as by an I/O error) rather than going on.
            let exclusive = stages.exclusive();
            let committed = set_non_durable(&mut txn)
                .and_then(|()| txn.commit().map_err(StorageError::from))
                .map_err(|e| {
                    StorageError::Io(format!("the database refused a journaled batch: {e}"))
                });
            match committed {
                Ok(()) => {
                    // What was staged is in redb now; then this batch's
                    // rows are staged.
                    if flushing {
                        stages.flushed();
                    }
                    stages.publish();
                }
                Err(e) => {
                    stages.discard();
                    return Err(e);
                }
            }
            drop(exclusive);
            if flushing {
                journal.stage_flushed();
            }
            Ok(CommitKind::Journaled)
        }
        (Some(journal), None) => {
            let covers_journal = journal.has_unchecked();
            journal.mark_checkpoint(&txn)?;
            commit_durably(txn, stages, flushing)?;
            if flushing {
                journal.stage_flushed();
            }
            journal.checkpointed();
            Ok(if covers_journal {
                CommitKind::Checkpoint
            } else {
                CommitKind::Durable
            })
        }
    }
}

/// Commits `txn` durably; if it holds what the stages held (`flushed`),
/// empties them in the same exclusive view, so that no reader sees an entry
/// the batch deleted still staged.
fn commit_durably(txn: WriteTransaction, stages: &Stages, flushed: bool) -> Result<()> {
    if !flushed {
        txn.commit()?;
        return Ok(());
    }
    let _exclusive = stages.exclusive();
    txn.commit()?;
    stages.flushed();
    Ok(())
}

fn apply_batch(
    txn: &WriteTransaction,
    batch: &mut [Box<dyn Change>],
    stages: Option<&Stages>,
) -> Result<()> {
    let mut next = 0;
    while next < batch.len() {
        // A run of consecutive changes of one group is applied by its first.
        let group = batch[next].group();
        let run = batch[next + 1..]
            .iter()
            .take_while(|c| group.is_some() && c.group() == group)
            .count();
        let (first, rest) = batch[next..=next + run].split_at_mut(1);
        next += 1 + run;
        first[0].apply_run(txn, rest, stages)?;
    }
    Ok(())
}

/// Copies `source` to the new file `target` (0600) and syncs it and its
/// folder.
fn copy_synced(source: &Path, target: &Path) -> Result<u64> {
    let io = |what: &str, e: std::io::Error| {
        StorageError::Engine(format!("{what} {}: {e}", target.display()))
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options.open(target).map_err(|e| io("creating", e))?;
    let mut from = std::fs::File::open(source).map_err(|e| io("reading the database for", e))?;
    let bytes = std::io::copy(&mut from, &mut out).map_err(|e| io("writing", e))?;
    out.sync_all().map_err(|e| io("syncing", e))?;
    if let Some(parent) = target.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        dir.sync_all().map_err(|e| io("syncing the folder of", e))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    const TABLE: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("db.redb"), StoreOptions::default()).expect("open")
    }

    #[tokio::test]
    async fn a_snapshot_holds_a_prefix_of_the_commits_made_around_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let mut writes = Vec::new();
        for key in 0..100u64 {
            writes.push(insert(&store, key));
        }
        let target = dir.path().join("copy.redb");
        let snapshot = store.snapshot_to(target.clone());
        // Submitted with the snapshot in flight: the copy holds some of
        // these, in order, never one without those before it.
        for key in 100..200u64 {
            writes.push(insert(&store, key));
        }
        let bytes = snapshot.await.expect("snapshot");
        for write in writes {
            write.await.expect("sent").expect("write");
        }
        // Written once the snapshot is done: not in the copy.
        insert(&store, 1_000)
            .await
            .expect("sent")
            .expect("later write");
        assert_eq!(std::fs::metadata(&target).expect("copy").len(), bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target)
                .expect("copy")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A copy is never overwritten.
        assert!(store.snapshot_to(target.clone()).await.is_err());
        drop(store);
        let copy = Store::open(&target, StoreOptions::default()).expect("the copy opens");
        let read = copy.db().begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        let held = table.len().expect("len");
        assert!((100..=200).contains(&held), "{held}");
        for key in 0..held {
            assert_eq!(table.get(key).expect("get").map(|v| v.value()), Some(key));
        }
        assert!(table.get(1_000).expect("get").is_none());
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits_and_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let mut waits = Vec::new();
        for i in 0..500u64 {
            let store = store.clone();
            waits.push(tokio::spawn(async move {
                store
                    .write(move |txn| {
                        txn.open_table(TABLE)?.insert(i, i * 2)?;
                        Ok(i)
                    })
                    .await
            }));
        }
        for (i, wait) in waits.into_iter().enumerate() {
            assert_eq!(wait.await.expect("join").expect("write"), i as u64);
        }
        let commits = store.stats().commits.load(Ordering::Relaxed);
        assert!(commits <= 500, "at most one commit per change");
        let read = store.db().begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        assert_eq!(table.len().expect("len"), 500);
        assert_eq!(table.get(7).expect("get").map(|v| v.value()), Some(14));
    }

    /// Writes `key` and says when the commit is durable.
    fn insert(store: &Store, key: u64) -> tokio::sync::oneshot::Receiver<Result<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.submit(
            move |txn| {
                txn.open_table(TABLE)?.insert(key, key)?;
                Ok(())
            },
            move |result| {
                let _ = tx.send(result);
            },
        );
        rx
    }

    #[tokio::test]
    async fn changes_close_behind_a_commit_wait_for_the_interval_and_share_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            commit_interval: std::time::Duration::from_millis(600),
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("db.redb"), options).expect("open");
        insert(&store, 1).await.expect("answer").expect("first");
        // Without the interval each of these would be committed on its own:
        // the writer is idle when each arrives.
        let second = insert(&store, 2);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let third = insert(&store, 3);
        second.await.expect("answer").expect("second");
        third.await.expect("answer").expect("third");
        assert_eq!(store.stats().commits.load(Ordering::Relaxed), 2);
        assert_eq!(store.stats().changes.load(Ordering::Relaxed), 3);
    }

    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    /// A group whose runs insert their items and say so in a log; 13 fails.
    struct Logged;

    impl ApplyGroup for Logged {
        type Item = (u64, Log);
        fn apply_group(txn: &WriteTransaction, items: Vec<(u64, Log)>) -> Result<()> {
            let ids: Vec<u64> = items.iter().map(|(id, _)| *id).collect();
            if let Some((_, log)) = items.first() {
                log.lock().expect("log").push(format!("run {ids:?}"));
            }
            if ids.contains(&13) {
                return Err(StorageError::Corrupt("injected".into()));
            }
            let mut table = txn.open_table(TABLE)?;
            for id in ids {
                table.insert(id, id)?;
            }
            Ok(())
        }
    }

    /// Holds the writer inside a change until the returned sender is used,
    /// so that what is submitted meanwhile is taken as one batch.
    fn hold_writer(store: &Store, log: &Log) -> std::sync::mpsc::Sender<()> {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let log = Arc::clone(log);
        store.submit(
            move |_| -> Result<()> {
                let _ = started_tx.send(());
                let _ = gate_rx.recv();
                log.lock().expect("log").push("held".into());
                Ok(())
            },
            |_| {},
        );
        started_rx.recv().expect("the writer holds");
        gate_tx
    }

    #[tokio::test]
    async fn consecutive_grouped_changes_are_applied_as_one_run_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let log: Log = Arc::default();
        let release = hold_writer(&store, &log);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let grouped = |id: u64| {
            let tx = tx.clone();
            store.submit_grouped::<Logged>((id, Arc::clone(&log)), move |result| {
                let _ = tx.send((id, result.is_ok()));
            });
        };
        grouped(1);
        grouped(2);
        grouped(3);
        // A change of another kind ends the run: order is submission order.
        let direct_log = Arc::clone(&log);
        let direct_tx = tx.clone();
        store.submit(
            move |_| -> Result<()> {
                direct_log.lock().expect("log").push("direct".into());
                Ok(())
            },
            move |result| {
                let _ = direct_tx.send((0, result.is_ok()));
            },
        );
        grouped(4);
        grouped(5);
        let _ = release.send(());
        let mut completed = Vec::new();
        for _ in 0..6 {
            completed.push(rx.recv().await.expect("completion"));
        }
        assert_eq!(
            completed,
            [
                (1, true),
                (2, true),
                (3, true),
                (0, true),
                (4, true),
                (5, true)
            ]
        );
        assert_eq!(
            *log.lock().expect("log"),
            ["held", "run [1, 2, 3]", "direct", "run [4, 5]"]
        );
        let read = store.db().begin_read().expect("read");
        assert_eq!(
            read.open_table(TABLE).expect("table").len().expect("len"),
            5
        );
    }

    #[tokio::test]
    async fn a_failed_run_fails_every_change_of_its_transaction_and_the_store_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let log: Log = Arc::default();
        let release = hold_writer(&store, &log);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for id in [12, 13] {
            let tx = tx.clone();
            store.submit_grouped::<Logged>((id, Arc::clone(&log)), move |result| {
                let _ = tx.send(result.is_ok());
            });
        }
        let _ = release.send(());
        assert!(!rx.recv().await.expect("completion"));
        assert!(!rx.recv().await.expect("completion"));
        store
            .write(|txn| {
                txn.open_table(TABLE)?.insert(1, 1)?;
                Ok(())
            })
            .await
            .expect("later writes work");
    }

    #[tokio::test]
    async fn a_failed_change_fails_its_batch_and_the_store_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let failed = store
            .write(|_| -> Result<()> { Err(StorageError::Corrupt("injected".into())) })
            .await;
        assert!(failed.is_err());
        store
            .write(|txn| {
                txn.open_table(TABLE)?.insert(1, 1)?;
                Ok(())
            })
            .await
            .expect("later writes work");
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(&dir);
            store
                .write(|txn| {
                    txn.open_table(TABLE)?.insert(5, 50)?;
                    Ok(())
                })
                .await
                .expect("write");
        }
        // The writer thread exits once the last Store handle is gone; redb
        // refuses a second open while the first is alive, so retry briefly.
        let mut reopened = None;
        for _ in 0..100 {
            match Store::open(&dir.path().join("db.redb"), StoreOptions::default()) {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        let store = reopened.expect("reopen");
        let read = store.db().begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        assert_eq!(table.get(5).expect("get").map(|v| v.value()), Some(50));
    }
}
