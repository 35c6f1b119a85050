//! Errors of node start-up and shutdown.

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unreadable or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The certificate or key could not be loaded or generated.
    #[error("TLS: {0}")]
    Tls(String),
    /// The data directory or database could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A service did not start.
    #[error("start-up: {0}")]
    Startup(String),
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A result with [`NodeError`].
pub type Result<T, E = NodeError> = std::result::Result<T, E>;
