//! Journaled changes kept in memory instead of redb for a while.
//!
//! Most mailbox entries are deleted within seconds of being stored. With
//! the journal, such an entry's insert and delete still cost two B-tree
//! changes in redb's pages (and the pages' share of each commit), though
//! neither ever reaches the database file. A [`Stage`] lets a journaled
//! kind keep part of a batch's effect in memory instead: the batch is
//! durable in the journal, the stage holds what redb lacks, and readers
//! look at both. The first journaled batch after the journal's
//! `stage_interval`, a checkpoint and any durable redb commit first write
//! what the stage holds into their transaction and empty the stage once
//! that commit is done; an entry deleted before then never touches redb.
//!
//! Visibility: what a batch stages is *pending* until the batch is in the
//! journal; it is published together with the batch's redb commit under the
//! view lock ([`Stages::view`]), which readers hold while they look at a
//! stage and a redb read transaction, so that a reader sees all of a batch
//! or none of it, and never a change a crash could lose.

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::WriteTransaction;

use crate::Result;

/// In-memory state of a journaled kind (see the module docs). The writer
/// thread is its only writer; readers read it under [`Stages::view`].
pub trait Stage: Send + Sync + 'static {
    /// Whether it holds nothing, published or pending.
    fn is_empty(&self) -> bool;
    /// Writes everything published into `txn`, which is about to be
    /// committed durably.
    fn flush(&self, txn: &WriteTransaction) -> Result<()>;
    /// The commit `flush` wrote into is durable: forget what it wrote.
    fn flushed(&self);
    /// The batch that staged the pending changes is durable: publish them.
    fn publish(&self);
    /// The batch that staged the pending changes failed: drop them.
    fn discard(&self);
}

struct Registered {
    type_id: TypeId,
    any: Arc<dyn Any + Send + Sync>,
    stage: Arc<dyn Stage>,
}

/// A store's stages, one per type, and the view lock.
#[derive(Default)]
pub struct Stages {
    view: RwLock<()>,
    list: Mutex<Vec<Registered>>,
}

impl Stages {
    /// The stage of type `S`, created on first use.
    pub fn get<S: Stage + Default>(&self) -> Arc<S> {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let found = list
            .iter()
            .find(|r| r.type_id == TypeId::of::<S>())
            .and_then(|r| Arc::clone(&r.any).downcast::<S>().ok());
        if let Some(stage) = found {
            return stage;
        }
        let stage = Arc::new(S::default());
        list.push(Registered {
            type_id: TypeId::of::<S>(),
            any: Arc::clone(&stage) as Arc<dyn Any + Send + Sync>,
            stage: Arc::clone(&stage) as Arc<dyn Stage>,
        });
        stage
    }

    /// Held while reading a stage together with a redb read transaction
    /// (begun after taking it): the writer publishes a batch and commits
    /// it to redb under the exclusive side, so the reader sees both or
    /// neither.
    pub fn view(&self) -> RwLockReadGuard<'_, ()> {
        self.view.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `f` on every stage, holding the list (no allocation: this
    /// runs for every batch).
    fn each<E>(&self, mut f: impl FnMut(&dyn Stage) -> Result<(), E>) -> Result<(), E> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().try_for_each(|r| f(r.stage.as_ref()))
    }

    /// Whether any stage holds something.
    pub(crate) fn any_held(&self) -> bool {
        self.each(|stage| if stage.is_empty() { Ok(()) } else { Err(()) })
            .is_err()
    }

    pub(crate) fn flush(&self, txn: &WriteTransaction) -> Result<()> {
        self.each(|stage| stage.flush(txn))
    }

    pub(crate) fn flushed(&self) {
        let _ = self.each::<()>(|stage| {
            stage.flushed();
            Ok(())
        });
    }

    pub(crate) fn publish(&self) {
        let _ = self.each::<()>(|stage| {
            stage.publish();
            Ok(())
        });
    }

    pub(crate) fn discard(&self) {
        let _ = self.each::<()>(|stage| {
            stage.discard();
            Ok(())
        });
    }
}
