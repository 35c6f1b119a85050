//! A Switchboard node: configuration, start-up and the supervision tree.
//!
//! ```text
//! root (one-for-one)
//! ├── auth          registration codes and tokens
//! ├── presence      online / last seen / typing
//! ├── fragments     supervisor of the mailbox fragment actors (one per fragment)
//! ├── extensions    supervisor of the actors added through the builder
//! ├── sessions      supervisor of one temporary actor per client connection
//! └── listener      the TLS accept loop
//! ```
//!
//! Children start top to bottom and stop bottom to top, so the listener stops
//! taking connections first and the fragments, which flush to disk, stop after
//! every session is gone.
//!
//! # Layout
//! - [`config`]: the one checked [`NodeConfig`], from TOML and `SWITCHBOARD_*`.
//! - [`tls`]: the node's certificate (configured, or generated on first run).
//! - [`builder`]: [`NodeBuilder`], which registers the services and any
//!   extension actors, and the running [`Node`].
//! - [`listener`]: the listener actor.
//! - [`datadir`]: the data directory's permissions (0700, files 0600).
//! - `health`: `/healthz` and `/readyz`, and the free-disk watch.
//! - `telemetry`: the metrics listener (metrics and the two probes).
//! - [`queues`]: queue lengths of the actors, for metrics and status.
//! - [`admin`]: the admin channel (a Unix socket) behind `switchboard admin`.
//!
//! # A broken store
//! A write that fails on an I/O error breaks the store for the rest of the
//! process (see the `storage` crate). The node then refuses new messages,
//! answers 503 on both probes, leaves its cluster (closes every link, no
//! more heartbeats, so partners take its fragments over at once) and
//! [`Node::failed`] resolves a moment later: the binary exits non-zero for
//! its supervisor to restart it on a database redb recovers at open.

mod accept;
pub mod admin;
pub mod builder;
pub mod config;
pub mod datadir;
mod error;
mod health;
pub mod listener;
mod metric_help;
pub mod queues;
mod telemetry;
pub mod tls;

pub use builder::{ExtensionContext, Node, NodeBuilder};
pub use config::NodeConfig;
pub use error::{NodeError, Result};
pub use session::{ExtensionMsg, ExtensionPush, ExtensionRequest};
