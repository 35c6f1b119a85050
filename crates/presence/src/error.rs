//! Errors of the presence service.

/// A presence setting could not be read or stored.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The node's store failed.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}

/// A result with [`PresenceError`].
pub type Result<T, E = PresenceError> = std::result::Result<T, E>;
