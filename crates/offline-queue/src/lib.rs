//! Mailbox fragments: durable store-and-forward.
//!
//! Users are spread over a fixed number of fragments ([`router::Placement`]).
//! Each fragment is one actor and the single serialisation point for its users:
//! it holds their undelivered messages and receipts, assigns message ids, drops
//! resends by their `(sender, client_msg_id)` key, knows where each online user
//! is attached, and pushes entries to it in order, a bounded window at a time.
//! An entry stays until the user's device acknowledges it; acknowledging a
//! message stores a `Delivered` receipt for its sender first, then deletes it.
//!
//! # Layout
//! - [`entry`]: what a mailbox holds ([`Entry`], [`EntryBody`]) and message ids.
//! - [`fragment`]: the pure core — events and `now` in, [`fragment::Action`]s
//!   out; no actor, clock or disk writes.
//! - [`store`]: the fragment's redb tables and the reads the core needs.
//! - [`staged`]: new entries kept in memory while only the storage journal
//!   holds them (most are deleted before a checkpoint would write them).
//! - [`group`]: a group's record and the rules that change it (members,
//!   roles, who receives each position of its log); [`group_store`]: its
//!   tables; [`group_ticks`]: the delivered and read ticks of its messages.
//! - [`account`]: per-user account records of the auth service, kept
//!   and replicated with the user's mailbox, changed by compare-and-set.
//! - [`usage`]: undelivered mail per recipient and sender, for the
//!   mailbox caps.
//! - [`replica_core`]: the pure core of one fragment on one node in a
//!   cluster (ownership, forwarding, the partner's copy, failover, merges):
//!   events in, actions out, around the fragment core.
//! - [`replica`]: what the partner's copy needs on disk (copies, the owner
//!   record, the divergent log).
//! - [`actor`]: the thin shell that runs a replica core as a ractor actor,
//!   sends its writes to the group-commit writer and performs its actions.
//!
//! Durability: a message is acknowledged to its sender (one tick) only after
//! its write is committed with fsync; writes of all fragments share commits.

pub mod account;
pub mod actor;
pub mod entry;
mod error;
pub mod fragment;
pub mod group;
pub mod group_store;
pub mod group_ticks;
pub mod remote;
pub mod replica;
pub mod replica_core;
pub mod staged;
pub mod store;
pub mod usage;

pub use account::{AccountRecord, AccountReply, AccountWrite};
pub use actor::{
    Endpoint, FragmentActor, FragmentArgs, FragmentCluster, FragmentDirectory, FragmentMsg,
    FragmentStats, dispatch, fragment_name, journal_replayer,
};
pub use entry::{Entry, EntryBody, compose_message_id, fragment_of_message_id};
pub use error::{FragmentError, Result};
pub use fragment::{FragmentConfig, NewMessage, Stored};
pub use replica_core::Push;
