//! Embedded crash-safe storage for a node, with group commit.
//!
//! A node keeps all its durable state (mailboxes, dedupe keys, accounts and
//! tokens) in one [redb](https://docs.rs/redb) file. redb allows one write
//! transaction at a time and each durable commit costs an fsync, so every
//! writer in the node hands its change to one writer thread: the thread takes
//! all changes waiting at that moment, applies them in one transaction and
//! commits once. Concurrent writers therefore share one fsync (group commit),
//! and durability does not cap throughput. Reads use redb read transactions
//! directly from any thread.
//!
//! A change is a closure over the write transaction; its completion is a
//! callback (to post a message back to an actor) or an awaited future.
//! Callbacks run on the writer thread and must not block. Small changes of
//! one kind (the mailbox fragments' writes) can name an [`ApplyGroup`]: the
//! writer applies a run of them that follow each other in its queue with one
//! call, so their tables are opened once per run instead of once per change.
//!
//! A write that fails on an I/O error (a full disk, a failing device)
//! breaks the store for the rest of the process: redb refuses every later
//! write with `PreviousIo` until the database is closed and opened again,
//! which it cannot be while any handle lives. [`Store::broken`] tells the
//! node, which leaves its cluster and exits so that its supervisor restarts
//! it (redb then recovers the last durable commit).
//!
//! The choice of redb over fjall is recorded in `docs/benchmarks.md`.

mod error;
pub mod journal;
pub mod log;
pub mod stage;
mod writer;

pub use error::{Result, StorageError};
pub use journal::{JournalOptions, JournalRecovery, Journaled, Replayer};
pub use redb;
pub use stage::{Stage, Stages};
pub use writer::{ApplyGroup, Refusal, Store, StoreOptions, WriterStats};
