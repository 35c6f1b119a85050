//! The client's error type.

use std::fmt;

use proto::{CloseReason, ErrorCode};

/// A `Result` with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration cannot work (no servers, no usable CA, bad server name).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A TCP connection or TLS handshake to `server` failed.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The address tried.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The node did not answer the hello as the protocol says.
    #[error("handshake with the node failed: {0}")]
    Handshake(String),
    /// The node refused the request.
    #[error("the node refused the request: {code:?}: {message}")]
    Server {
        /// Machine-readable kind.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// No answer within the request timeout.
    #[error("no answer from the node within the request timeout")]
    Timeout,
    /// The connection closed before the answer came.
    #[error("connection lost: {0}")]
    ConnectionLost(DisconnectReason),
    /// A frame to send exceeds the node's limit; nothing was sent.
    #[error("frame of {len} bytes exceeds the node's limit of {max} bytes")]
    FrameTooLarge {
        /// Encoded length of the refused frame (at least `max + 1`).
        len: usize,
        /// The node's `max_frame_bytes`.
        max: u32,
    },
    /// The node answered with a frame or response that makes no sense here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was closed, or stopped for good (see [`DisconnectReason`]).
    #[error("client stopped: {0}")]
    Stopped(DisconnectReason),
}

impl ClientError {
    /// The node's error code, if the node refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The node announced it would close ([`proto::ServerFrame::Closing`]).
    Closing {
        /// Why.
        reason: CloseReason,
        /// When the node suggests to reconnect.
        retry_after_ms: u32,
    },
    /// The node reported a connection-level error and closed.
    ServerError {
        /// Machine-readable kind.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// The node closed the stream without a word.
    Eof,
    /// Reading or writing the socket failed.
    Io(String),
    /// The node sent bytes that are not a frame (or too large a frame).
    Protocol(String),
    /// A ping (or another request) got no answer in time.
    Timeout,
    /// Login on a new connection failed for good (e.g. the token expired).
    LoginRefused {
        /// Machine-readable kind.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// This side closed the connection.
    Local,
}

impl DisconnectReason {
    /// The delay the node asked for before reconnecting, if any.
    pub fn retry_after_ms(&self) -> Option<u32> {
        match self {
            DisconnectReason::Closing { retry_after_ms, .. } => Some(*retry_after_ms),
            DisconnectReason::ServerError {
                code:
                    ErrorCode::Unavailable { retry_after_ms }
                    | ErrorCode::RateLimited { retry_after_ms },
                ..
            } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// Whether reconnecting cannot help: another login replaced this one, the
    /// user logged out, the token was refused or revoked, or this side closed.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            DisconnectReason::Closing {
                reason: CloseReason::Replaced | CloseReason::LoggedOut | CloseReason::TokenRevoked,
                ..
            } | DisconnectReason::LoginRefused { .. }
                | DisconnectReason::Local
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Closing {
                reason: CloseReason::Replaced,
                ..
            } => f.write_str("another login of the same user replaced this connection"),
            DisconnectReason::Closing {
                reason,
                retry_after_ms,
            } => write!(
                f,
                "the node closed the connection ({reason:?}, retry after {retry_after_ms} ms)"
            ),
            DisconnectReason::ServerError { code, message } => {
                write!(f, "the node reported {code:?}: {message}")
            }
            DisconnectReason::Eof => f.write_str("the node closed the connection"),
            DisconnectReason::Io(e) => write!(f, "I/O error: {e}"),
            DisconnectReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DisconnectReason::Timeout => f.write_str("the node stopped answering"),
            DisconnectReason::LoginRefused { code, message } => {
                write!(f, "login refused ({code:?}): {message}")
            }
            DisconnectReason::Local => f.write_str("closed by this client"),
        }
    }
}
