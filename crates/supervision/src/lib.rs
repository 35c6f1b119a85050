//! An OTP-style supervisor for ractor actors.
//!
//! ractor links children to a supervisor but has no restart strategy of its
//! own: a supervisor is told when a child fails and does nothing unless it
//! restarts it. This crate is that missing piece, in the manner of Erlang/OTP:
//!
//! - [`ChildSpec`]: an id, a [`Restart`] type and a start function.
//! - [`Supervisor`]: one-for-one — a failed child is restarted alone, and no
//!   other child notices. Restarts are limited by an [`Intensity`] (at most
//!   `max_restarts` within `within`); past it the supervisor fails too, so the
//!   fault escalates to its own supervisor, as in OTP.
//! - Children start in order and stop in reverse order, each awaited, so a
//!   service that others depend on (e.g. storage-backed fragments) outlives them.
//!
//! The restart bookkeeping is a pure type ([`RestartBudget`]) with the clock
//! passed in; the actor around it does the spawning.

mod budget;
mod supervisor;

pub use budget::{Intensity, RestartBudget};
pub use supervisor::{ChildSpec, Restart, StartFn, Supervisor, SupervisorArgs, SupervisorMsg};
