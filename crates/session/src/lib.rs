//! Client connections: listeners and one supervised actor per connection.
//!
//! # Layout
//! - [`config`]: limits and timeouts of client connections.
//! - [`admission`]: the node's connection counts, shared by its listeners:
//!   caps for all, for guests (not logged in), and per source address.
//! - [`state`]: the pure protocol phase machine — which frame is allowed when
//!   (hello first, only auth before login).
//! - [`connection`]: the reader task that decodes a connection's frames.
//! - `read_chunk`: reading through a stack buffer, so idle connections hold
//!   no read buffer (used by the reader and by `tls`).
//! - `outbound`: the bounded queue of encoded frames from a session to its
//!   client, and the writer task that runs only while it holds frames.
//! - [`actor`]: the session actor that serves one authenticated user.
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
pub mod listener;
mod outbound;
pub mod pacing;
mod read_chunk;
pub mod state;
pub mod tls;
mod websocket;

pub use actor::{
    SessionActor, SessionArgs, SessionContext, SessionMsg, broadcast_to_sessions, live_sessions,
};
pub use config::{DEFAULT_TEST_NUMBER_PREFIX, SessionConfig};

/// What a client can make a session log at will (refusals, wrong secrets,
/// undeliverable pushes) is logged at most once per interval per cause.
pub(crate) static LOGS: log_limit::LogLimiter = log_limit::LogLimiter::new();
pub use extension::{ExtensionMsg, ExtensionPush, ExtensionRequest, extension_actor_name};
pub use listener::{ListenerError, Transport, serve};
