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
    /// The disk failed under the database (ENOSPC, EIO, ...). redb refuses
    /// every later write of this process once one has failed (its
    /// `PreviousIo`), so the store is broken until the node restarts.
    #[error("the disk failed under the database: {0}")]
    Io(String),
}

/// A result with [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

macro_rules! engine_error {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StorageError {
            fn from(e: $ty) -> Self {
                let text = e.to_string();
                match redb::Error::from(e) {
                    redb::Error::Io(_) | redb::Error::PreviousIo => StorageError::Io(text),
                    _ => StorageError::Engine(text),
                }
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
