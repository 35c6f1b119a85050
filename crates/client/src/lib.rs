//! The Switchboard client library: TLS connection to a node, registration,
//! login, sending and receiving, with automatic reconnect and resend.
//!
//! Used by the `switchboard` CLI, the load generator and the end-to-end tests.
//! It speaks the frames of the `proto` crate and nothing else; it holds no
//! storage (an app that must survive restarts keeps its own).
//!
//! # Layout
//! - [`ClientConfig`], and [`request_code`] / [`verify`]: the unauthenticated
//!   calls that turn a phone number into a token (this file).
//! - [`client`]: [`Client`], the authenticated handle, and [`Events`], what the
//!   node pushes. A supervisor task owns the connection, reconnects with
//!   backoff, logs in again and resends unacknowledged sends.
//! - [`connection`]: one TLS connection: hello, request/answer correlation,
//!   pushes, heartbeat.
//! - [`tls`]: which certificates to trust.
//! - Pure parts, tested without sockets: [`backoff`] (delays with jitter),
//!   [`dedupe`] (recently seen ids), [`outbox`] (the resend queue), [`sent`]
//!   (who recent sends went to, to check receipts).
//! - [`error`]: [`ClientError`] and [`DisconnectReason`].
//!
//! # Delivery semantics
//! A [`Client::send`] resolves once, with the node's ack, however many
//! reconnects it takes: the send stays queued and goes out again with the
//! same `client_msg_id`, which the node stores once. Incoming messages are
//! at-least-once from the node; the client hides redeliveries of ids it has
//! shown. The app acknowledges with [`Client::ack`] after it has shown or
//! stored a message; until then the node keeps it and redelivers it after
//! the next login.

#![warn(missing_docs, unreachable_pub)]

pub mod backoff;
pub mod client;
pub mod connection;
pub mod dedupe;
pub mod error;
pub mod outbox;
pub mod sent;
pub mod tls;

use std::path::Path;
use std::time::Duration;

pub use backoff::Backoff;
pub use client::{Client, Event, Events, SendAck};
pub use connection::{Connection, Pushes, Welcome};
pub use error::{ClientError, DisconnectReason, Result};
pub use proto::{
    GroupChange, GroupCommand, GroupId, GroupRole, MessageId, PhoneNumber, Position,
    PresenceStatus, ReceiptKind, TimestampMs, Visibility,
};
pub use tls::Tls;

use proto::{Request, Response};

/// The default request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The default server name checked in the node's certificate.
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Node addresses ("host:port"), tried in order; a reconnect moves on to
    /// the next one.
    pub servers: Vec<String>,
    /// PEM text of the CA (or the node's self-signed certificate) to trust.
    pub ca_pem: Vec<u8>,
    /// The name the node's certificate must carry.
    pub server_name: String,
    /// Names this client in the hello, for the node's logs.
    pub agent: String,
    /// How long to wait for a connection's welcome, or an answer.
    pub request_timeout: Duration,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
}

impl ClientConfig {
    /// A configuration with the defaults: server name
    /// [`DEFAULT_SERVER_NAME`], [`DEFAULT_REQUEST_TIMEOUT`], default backoff.
    pub fn new(servers: Vec<String>, ca_pem: Vec<u8>) -> Self {
        Self {
            servers,
            ca_pem,
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            agent: concat!("switchboard-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff: Backoff::default(),
        }
    }

    /// Reads the CA PEM file at `path` (for [`ClientConfig::ca_pem`]).
    pub fn read_ca_file(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path)
            .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))
    }

    /// Checks the configuration and builds its TLS settings.
    pub fn validate(&self) -> Result<Tls> {
        if self.servers.is_empty() {
            return Err(ClientError::Config("no server address given".to_owned()));
        }
        if self.request_timeout.is_zero() {
            return Err(ClientError::Config(
                "the request timeout must be positive".to_owned(),
            ));
        }
        Tls::new(&self.ca_pem, &self.server_name)
    }
}

/// Asks the node to send a verification code to `phone`; returns how many
/// seconds the code stays valid.
pub async fn request_code(cfg: &ClientConfig, phone: &PhoneNumber) -> Result<u32> {
    let request = Request::RequestCode {
        phone: phone.clone(),
    };
    match unauthenticated(cfg, request).await? {
        Response::CodeSent { expires_in_secs } => Ok(expires_in_secs),
        other => Err(ClientError::Protocol(format!(
            "expected CodeSent, got {other:?}"
        ))),
    }
}

/// Trades the code sent to `phone` for a token; returns the token and when it
/// expires (milliseconds since the Unix epoch).
pub async fn verify(
    cfg: &ClientConfig,
    phone: &PhoneNumber,
    code: &str,
) -> Result<(String, TimestampMs)> {
    let request = Request::Verify {
        phone: phone.clone(),
        code: code.to_owned(),
    };
    verified(unauthenticated(cfg, request).await?)
}

/// The token of a `Verified` answer.
fn verified(response: Response) -> Result<(String, TimestampMs)> {
    match response {
        Response::Verified {
            token,
            expires_at_ms,
        } => Ok((token, expires_at_ms)),
        other => Err(ClientError::Protocol(format!(
            "expected Verified, got {other:?}"
        ))),
    }
}

/// [`verify`] for a number with a registration lock: the code and the
/// account's PIN. A wrong PIN fails with
/// [`proto::ErrorCode::RegistrationLocked`] (counted: a few per day).
pub async fn verify_with_pin(
    cfg: &ClientConfig,
    phone: &PhoneNumber,
    code: &str,
    pin: &str,
) -> Result<(String, TimestampMs)> {
    let request = Request::VerifyWithPin {
        phone: phone.clone(),
        code: code.to_owned(),
        pin: pin.to_owned(),
    };
    verified(unauthenticated(cfg, request).await?)
}

/// One request on a fresh connection, trying the servers in order until one
/// answers. A refusal by a node is final; a connection failure moves on.
async fn unauthenticated(cfg: &ClientConfig, request: Request) -> Result<Response> {
    let tls = cfg.validate()?;
    let mut last = None;
    for server in &cfg.servers {
        let (conn, _pushes) =
            match Connection::connect(server, &tls, &cfg.agent, cfg.request_timeout).await {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::debug!(server, "{e}");
                    last = Some(e);
                    continue;
                }
            };
        let answer = conn.request(request.clone()).await;
        conn.close();
        match answer {
            Err(e @ (ClientError::ConnectionLost(_) | ClientError::Timeout)) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Config("no server address given".to_owned())))
}
