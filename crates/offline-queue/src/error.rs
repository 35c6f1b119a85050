//! Errors of the mailbox fragments.

/// A mailbox operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum FragmentError {
    /// The write could not be made durable; the sender should retry.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The fragment actor is not running (restarting or shutting down).
    #[error("mailbox fragment {0} is unavailable")]
    Unavailable(u16),
    /// A payload above the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The sender's earlier message (that this one must follow) is not
    /// stored: the sender resends that one first.
    #[error("the sender's earlier message is not stored yet")]
    EarlierMessageMissing,
    /// The request cannot be served as asked (e.g. a read receipt for
    /// messages that were never delivered to the reader).
    #[error("{0}")]
    InvalidRequest(String),
    /// The recipient's mailbox holds too much undelivered mail (from this
    /// sender, or in all); retry once some is delivered.
    #[error("the recipient's mailbox is full ({0:?} cap); retry later")]
    MailboxFull(crate::usage::Full),
    /// The node that stores the mailbox refuses new messages for now: its
    /// disk is nearly full, or its store has failed (it is leaving the
    /// cluster so that a partner takes its mailboxes over). Retry later.
    #[error("{0}")]
    Refused(String),
    /// The session's token was revoked (a newer verification or a logout
    /// of its account): it may not attach.
    #[error("the token was revoked")]
    TokenRevoked,
    /// A group request was refused.
    #[error("{0}")]
    Group(crate::group::GroupError),
    /// The group holds too many messages not yet fanned out; retry later.
    #[error("the group has too many messages in transit; retry later")]
    GroupBacklog,
}

impl FragmentError {
    /// What a client is told: the error's own text, except for a storage
    /// failure, whose details (paths, I/O errors) only the node's log gets.
    pub fn client_message(&self) -> String {
        match self {
            FragmentError::Storage(_) => "a storage error on the node; retry later".to_owned(),
            other => other.to_string(),
        }
    }

    /// The wire error code for a client.
    pub fn error_code(&self) -> proto::ErrorCode {
        match self {
            FragmentError::Storage(_) => proto::ErrorCode::Internal,
            FragmentError::Unavailable(_) => proto::ErrorCode::Unavailable {
                retry_after_ms: 1000,
            },
            FragmentError::PayloadTooLarge { .. } => proto::ErrorCode::PayloadTooLarge,
            FragmentError::EarlierMessageMissing => proto::ErrorCode::EarlierMessageMissing,
            FragmentError::InvalidRequest(_) => proto::ErrorCode::InvalidRequest,
            // Rate-limited, not a new code: clients in the field know it and
            // retry later, which is right for a mailbox that drains.
            FragmentError::MailboxFull(_) => proto::ErrorCode::RateLimited {
                retry_after_ms: 60_000,
            },
            FragmentError::Refused(_) => proto::ErrorCode::Unavailable {
                retry_after_ms: 2000,
            },
            FragmentError::TokenRevoked => proto::ErrorCode::InvalidToken,
            FragmentError::Group(e) => e.error_code(),
            FragmentError::GroupBacklog => proto::ErrorCode::RateLimited {
                retry_after_ms: 5_000,
            },
        }
    }
}

/// A result with [`FragmentError`].
pub type Result<T, E = FragmentError> = std::result::Result<T, E>;
