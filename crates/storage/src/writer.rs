//! The group-commit writer thread.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use redb::{Database, WriteTransaction};

use crate::{Result, StorageError};

/// Tuning of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most changes applied in one transaction.
    pub max_batch: usize,
    /// Page cache size in bytes (redb's own cache; hot mailboxes are also kept
    /// in the fragments' memory).
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            cache_bytes: 64 * 1024 * 1024,
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
}

/// One change: applied inside the shared transaction, then told the outcome.
trait Change: Send {
    fn apply(&mut self, txn: &WriteTransaction) -> Result<()>;
    fn complete(self: Box<Self>, outcome: Result<()>);
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
    changes: mpsc::Sender<Box<dyn Change>>,
    stats: Arc<WriterStats>,
}

impl Store {
    /// Opens (or creates) the database file and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(|e| StorageError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let db = Arc::new(db);
        let stats = Arc::new(WriterStats::default());
        let (changes, receiver) = mpsc::channel();
        let writer_db = Arc::clone(&db);
        let writer_stats = Arc::clone(&stats);
        thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || run_writer(&writer_db, &receiver, options.max_batch, &writer_stats))
            .map_err(|e| StorageError::Engine(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { db, changes, stats })
    }

    /// The database, for read transactions.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
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
        let change = Box::new(TypedChange {
            apply: Some(apply),
            output: None,
            done: Some(done),
        });
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
}

fn run_writer(
    db: &Database,
    receiver: &mpsc::Receiver<Box<dyn Change>>,
    max_batch: usize,
    stats: &WriterStats,
) {
    let mut batch: Vec<Box<dyn Change>> = Vec::with_capacity(max_batch);
    // Blocks for the first change, then takes whatever else is already waiting:
    // the batch grows by itself while a commit is in flight.
    while let Ok(first) = receiver.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        stats
            .queued
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        let began = std::time::Instant::now();
        let outcome = commit_batch(db, &mut batch);
        let took = began.elapsed();
        stats
            .busy_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        tracing::trace!(
            changes = batch.len(),
            micros = took.as_micros() as u64,
            "group commit"
        );
        match &outcome {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .changes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, changes = batch.len(), "group commit failed");
            }
        }
        for change in batch.drain(..) {
            change.complete(outcome.clone());
        }
    }
    tracing::debug!("storage writer stopped: all stores dropped");
}

/// Applies every change in one transaction and commits it durably. A change
/// that fails aborts the whole transaction: changes only fail when the engine
/// does, and then none of them can be trusted to be durable.
fn commit_batch(db: &Database, batch: &mut [Box<dyn Change>]) -> Result<()> {
    let txn = db.begin_write()?;
    for change in batch.iter_mut() {
        if let Err(e) = change.apply(&txn) {
            if let Err(abort) = txn.abort() {
                tracing::warn!(error = %abort, "abort after a failed change also failed");
            }
            return Err(e);
        }
    }
    txn.commit()?;
    Ok(())
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
