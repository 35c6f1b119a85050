//! Client connections: listeners and one supervised actor per connection.
//!
//! # Layout
//! - [`config`]: limits and timeouts of client connections.
//! - [`admission`]: the node's connection counts, shared by its listeners:
//!   caps for all, for guests (not logged in), and per source address.
//! - [`state`]: the pure phase machine — which frame is allowed when (hello
//!   first, only auth before login) and what moves a connection on.
//! - [`connection`]: the reader task that decodes a connection's frames.
//! - `read_chunk`: reading through a stack buffer, so idle connections hold
//!   no read buffer (used by the reader and by `tls`).
//! - `outbound`: the bounded queue of encoded frames from a session to its
//!   client, and the writer task that runs only while it holds frames.
//! - [`actor`]: the session actor that serves one connection: its messages,
//!   its state, closing and clean-up.
//! - `handlers`: the requests it serves, one module per family (accounts,
//!   messaging, presence, extensions, admin).
//! - [`services`]: what handlers ask of the node (mailboxes, accounts,
//!   presence, extensions), as one trait with the node's implementation.
//! - `responder`: frames to the client and what a full queue does.
//! - [`pacing`]: the per-connection send rate (a token bucket that slows,
//!   never refuses).
//! - [`listener`]: the TLS accept loop with a connection cap and a shutdown future.
//! - [`tls`]: the server side of TLS, buffering only bytes in flight.
//! - [`extension`]: how client frames reach extension actors.
//! - `websocket`: the same byte stream over WebSocket messages, for browsers.
//!
//! Bad input from a client closes that client's connection and nothing
//! else: errors are answered with an error frame, never raised to a supervisor.

pub mod actor;
pub mod admission;
pub mod config;
pub mod connection;
pub mod extension;
mod handlers;
pub mod listener;
mod outbound;
pub mod pacing;
mod read_chunk;
mod responder;
pub mod services;
pub mod state;
pub mod tls;
mod websocket;

pub use actor::{
    SessionActor, SessionArgs, SessionContext, SessionMsg, broadcast_to_sessions, live_sessions,
};
pub use config::{DEFAULT_TEST_NUMBER_PREFIX, SessionConfig};
pub use services::{NodeServices, Services};
pub use state::GuestStage;

/// What a client can make a session log at will (refusals, wrong secrets,
/// undeliverable pushes) is logged at most once per interval per cause.
pub(crate) static LOGS: log_limit::LogLimiter = log_limit::LogLimiter::new();
pub use extension::{ExtensionMsg, ExtensionPush, ExtensionRequest, extension_actor_name};
pub use listener::{ListenerError, Transport, serve};
