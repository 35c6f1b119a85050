//! The cluster crate's error type.

use thiserror::Error;

/// What can go wrong in cluster membership and on node links.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The `[cluster]` section is inconsistent.
    #[error("cluster config: {0}")]
    Config(String),
    /// Certificates or keys for node links.
    #[error("cluster TLS: {0}")]
    Tls(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An envelope that is not a frame.
    #[error("cluster wire: {0}")]
    Wire(String),
    /// A peer speaks a wire version this build does not.
    #[error("cluster wire version {theirs} not understood (this node speaks {ours})")]
    WireVersion {
        /// The peer's version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// An actor could not be started.
    #[error("cluster actor: {0}")]
    Spawn(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, ClusterError>;
