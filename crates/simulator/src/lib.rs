//! A seeded, deterministic simulator of a Switchboard cluster.
//!
//! It runs the real parts that decide things — each node's
//! [`offline_queue::replica_core::ReplicaCore`] per fragment, each node's
//! membership failure detector ([`cluster::peers::PeerTable`]), the
//! client's resend queue ([`client::outbox::Outbox`]) — on a virtual clock,
//! over a virtual network, with each node's data in a real redb database
//! held in memory. Everything else is modelled, from one seed:
//!
//! - **links**: one per pair of nodes, FIFO in each direction with a seeded
//!   delay; a cut direction holds its messages back (as a stalled TCP
//!   stream) until it heals or the link is closed, which loses them.
//! - **disks**: writes handed over wait in a queue and are committed as a
//!   group after a seeded latency; a crash loses the queue, never a commit.
//! - **clients**: senders with the real outbox (resend in order with the
//!   same ids, `SendAfter`), recipients that ack what they are pushed;
//!   the first user sends to a group of everyone instead (its home and its
//!   members' fragments fail over and merge like any data).
//! - **faults**: crash and restart, symmetric, one-way and staggered
//!   cuts, a frozen node, a slow or failing disk, clock jumps, slow links.
//!
//! After every step it checks that no two nodes serve a fragment at one
//! epoch, that a message id is never given to two messages, and that each
//! recipient gets each sender's messages once and in order. After the
//! faults it heals everything and checks that every acknowledged message
//! was delivered, every send was acknowledged, every divergent log drained
//! and no request is left waiting.
//!
//! `run(seed, &Options::default())` is one schedule; a failure carries the
//! seed and the trace of the last steps.

#![allow(missing_docs)]

mod checks;
mod net;
mod users;
mod world;

pub use world::{Failure, Options, Summary, run};
