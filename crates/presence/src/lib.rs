//! Presence: who is online, when others were last seen, and typing.
//!
//! Presence is rebuilt from the sessions that are connected, and last-seen
//! times live in memory for the node's lifetime. Who may see whom is each
//! user's [`policy::Policy`] (everyone, contacts, nobody; contacts by
//! default), stored in the node's redb ([`store`]).
//! Updates to watchers are batched (flushed on a short timer) and typing
//! indicators are rate-limited per sender, so a chatty client costs little.
//!
//! - [`policy`]: the pure visibility rule.
//! - [`store`]: the settings in the node's store.
//! - [`core`]: the pure state machine (time in, pushes out).
//! - [`actor`]: the ractor actor around it; on a clustered node it also
//!   shares presence with the other nodes' presence actors ([`remote`]).

pub mod actor;
pub mod core;
pub mod error;
pub mod policy;
pub mod remote;
pub mod store;

pub use actor::{PresenceActor, PresenceArgs, PresenceMsg, PresencePush, dispatch};
pub use core::{PresenceConfig, PresenceCore};
pub use error::{PresenceError, Result};
pub use policy::{Policy, may_see};
pub use store::PolicyStore;
