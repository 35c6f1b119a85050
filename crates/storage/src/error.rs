//! Errors of the storage layer.

/// A storage failure: the change was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database could not be opened or created.
    #[error("cannot open the database at {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// What redb reported.
        reason: String,
    },
    /// A transaction, table or commit failed inside redb.
    #[error("storage engine: {0}")]
    Engine(String),
    /// A stored value could not be decoded (corruption or a format change).
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// The writer thread has stopped (the node is shutting down).
    #[error("the storage writer has stopped")]
    Closed,
}

/// A result with [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

macro_rules! engine_error {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StorageError {
            fn from(e: $ty) -> Self {
                StorageError::Engine(e.to_string())
            }
        }
    )*};
}

engine_error!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
