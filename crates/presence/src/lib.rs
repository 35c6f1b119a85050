//! Presence: who is online, when others were last seen, and typing.
//!
//! Nothing here is stored: presence is rebuilt from the sessions that are
//! connected, and last-seen times live in memory for the node's lifetime.
//! Updates to watchers are batched (flushed on a short timer) and typing
//! indicators are rate-limited per sender, so a chatty client costs little.
//!
//! - [`core`]: the pure state machine (time in, pushes out).
//! - [`actor`]: the ractor actor around it; on a clustered node it also
//!   shares presence with the other nodes' presence actors ([`remote`]).

pub mod actor;
pub mod core;
pub mod remote;

pub use actor::{PresenceActor, PresenceArgs, PresenceMsg, PresencePush, dispatch};
pub use core::{PresenceConfig, PresenceCore};
