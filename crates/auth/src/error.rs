//! Errors of the auth service, and their wire codes.

use proto::{ErrorCode, PhoneNumber};
use storage::StorageError;

use crate::limits::Limit;
use crate::provider::ProviderError;

/// How long a client is told to wait when the service is unavailable.
const UNAVAILABLE_RETRY_MS: u32 = 1_000;

/// Why an auth request failed.
///
/// Every variant but [`AuthError::Storage`], [`AuthError::Unavailable`] and
/// [`AuthError::InvalidConfig`] is the client's doing and is answered, never
/// logged as a node failure. [`AuthError::error_code`] gives the wire code.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A code was requested too soon after the last one, or too many were
    /// requested in the last hour.
    #[error("too many verification codes requested; retry in {retry_after_ms} ms")]
    RateLimited {
        /// When a new request can succeed.
        retry_after_ms: u64,
    },
    /// A limit across numbers refused the request (the source's, the
    /// node's or the country's; see [`crate::LimitsConfig`]).
    #[error("too many requests ({} limit); retry in {retry_after_ms} ms", limit.as_str())]
    Limited {
        /// Which limit.
        limit: Limit,
        /// When a new request can pass it.
        retry_after_ms: u64,
    },
    /// An account exists for the number: test users are never minted over
    /// one.
    #[error("an account exists for {0}; test users are minted only for new numbers")]
    AccountExists(PhoneNumber),
    /// The code did not match the pending one.
    #[error("wrong verification code ({attempts_left} tries left)")]
    InvalidCode {
        /// Wrong tries still allowed before the code is locked.
        attempts_left: u32,
    },
    /// No code is pending for the number: it expired, was used, or was never
    /// requested.
    #[error("no verification code is pending for this number; request a new one")]
    CodeExpired,
    /// The pending code took too many wrong tries and is locked until it
    /// expires or a new one is requested.
    #[error("too many wrong verification codes; request a new one")]
    TooManyAttempts,
    /// The token is malformed, unknown, expired or revoked.
    #[error("the token is unknown, expired or revoked")]
    InvalidToken,
    /// The code was right but the number has a registration lock and the
    /// PIN was missing or wrong (the code stays pending).
    #[error(
        "this number has a registration lock: verify with its PIN ({attempts_left} wrong PINs left today)"
    )]
    RegistrationLocked {
        /// Wrong PINs still allowed today.
        attempts_left: u32,
    },
    /// A PIN that cannot be set (too short, too long).
    #[error("{0}")]
    InvalidPin(&'static str),
    /// The code could not be handed to its provider; the code was forgotten,
    /// so a new one can be requested at once.
    #[error("the verification code could not be sent: {0}")]
    Provider(ProviderError),
    /// The token store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The auth service cannot answer now (stopped, overloaded or timed out).
    #[error("the auth service is unavailable: {reason}")]
    Unavailable {
        /// What went wrong, for logs.
        reason: String,
    },
    /// The configuration makes no sense (see [`crate::AuthConfig::validate`]).
    #[error("invalid auth configuration: {0}")]
    InvalidConfig(String),
}

impl AuthError {
    /// The machine-readable code sent to the client.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AuthError::RateLimited { retry_after_ms } => ErrorCode::RateLimited {
                retry_after_ms: u32::try_from(*retry_after_ms).unwrap_or(u32::MAX),
            },
            AuthError::Limited { retry_after_ms, .. } => ErrorCode::RateLimited {
                retry_after_ms: u32::try_from(*retry_after_ms).unwrap_or(u32::MAX),
            },
            AuthError::AccountExists(_) => ErrorCode::InvalidRequest,
            AuthError::InvalidCode { .. } => ErrorCode::InvalidCode,
            AuthError::CodeExpired => ErrorCode::CodeExpired,
            AuthError::TooManyAttempts => ErrorCode::TooManyAttempts,
            AuthError::InvalidToken => ErrorCode::InvalidToken,
            AuthError::RegistrationLocked { attempts_left } => ErrorCode::RegistrationLocked {
                attempts_left: *attempts_left,
            },
            AuthError::InvalidPin(_) => ErrorCode::InvalidRequest,
            AuthError::Provider(_) => ErrorCode::ProviderFailed,
            AuthError::Storage(_) | AuthError::InvalidConfig(_) => ErrorCode::Internal,
            AuthError::Unavailable { .. } => ErrorCode::Unavailable {
                retry_after_ms: UNAVAILABLE_RETRY_MS,
            },
        }
    }

    /// What a client is told: the error's own text, except where that
    /// would show the node's insides (file paths, I/O errors, a provider's
    /// answer), which only the node's log gets.
    pub fn client_message(&self) -> String {
        match self {
            AuthError::Storage(_) => "a storage error on the node; retry later".to_owned(),
            AuthError::Unavailable { .. } => "the auth service is unavailable; retry".to_owned(),
            AuthError::Provider(_) => {
                "the verification code could not be sent; retry later".to_owned()
            }
            AuthError::InvalidConfig(_) => "the node cannot serve this request".to_owned(),
            other => other.to_string(),
        }
    }

    /// Whether [`AuthError::client_message`] leaves out the details.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            AuthError::Storage(_)
                | AuthError::Unavailable { .. }
                | AuthError::Provider(_)
                | AuthError::InvalidConfig(_)
        )
    }

    /// The limit that refused the request, if a limit did.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            AuthError::RateLimited { .. } => Some(Limit::Phone),
            AuthError::Limited { limit, .. } => Some(*limit),
            _ => None,
        }
    }

    /// The label of this outcome in the `switchboard_auth_*_total` metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            AuthError::RateLimited { .. } => "rate_limited_phone",
            AuthError::Limited { limit, .. } => match limit {
                Limit::Phone => "rate_limited_phone",
                Limit::Connection => "rate_limited_connection",
                Limit::Address => "rate_limited_address",
                Limit::Subnet => "rate_limited_subnet",
                Limit::Node => "rate_limited_node",
                Limit::Country => "rate_limited_country",
            },
            AuthError::AccountExists(_) => "account_exists",
            AuthError::InvalidCode { .. } => "wrong_code",
            AuthError::CodeExpired => "no_code",
            AuthError::TooManyAttempts => "too_many_attempts",
            AuthError::InvalidToken => "invalid_token",
            AuthError::RegistrationLocked { .. } => "registration_locked",
            AuthError::InvalidPin(_) => "invalid_pin",
            AuthError::Provider(_) => "provider_failed",
            AuthError::Storage(_) => "storage_failed",
            AuthError::Unavailable { .. } => "unavailable",
            AuthError::InvalidConfig(_) => "invalid_config",
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        AuthError::Unavailable {
            reason: reason.into(),
        }
    }
}

/// A result with [`AuthError`].
pub type Result<T, E = AuthError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_wire_codes() {
        let cases: Vec<(AuthError, ErrorCode)> = vec![
            (
                AuthError::RateLimited {
                    retry_after_ms: 1_500,
                },
                ErrorCode::RateLimited {
                    retry_after_ms: 1_500,
                },
            ),
            (
                AuthError::RateLimited {
                    retry_after_ms: u64::MAX,
                },
                ErrorCode::RateLimited {
                    retry_after_ms: u32::MAX,
                },
            ),
            (
                AuthError::InvalidCode { attempts_left: 2 },
                ErrorCode::InvalidCode,
            ),
            (
                AuthError::Limited {
                    limit: Limit::Subnet,
                    retry_after_ms: 7,
                },
                ErrorCode::RateLimited { retry_after_ms: 7 },
            ),
            (
                AuthError::AccountExists(PhoneNumber::parse("+15550000001").expect("phone")),
                ErrorCode::InvalidRequest,
            ),
            (AuthError::CodeExpired, ErrorCode::CodeExpired),
            (AuthError::TooManyAttempts, ErrorCode::TooManyAttempts),
            (AuthError::InvalidToken, ErrorCode::InvalidToken),
            (
                AuthError::Provider(ProviderError::Status(500)),
                ErrorCode::ProviderFailed,
            ),
            (
                AuthError::Storage(StorageError::Closed),
                ErrorCode::Internal,
            ),
            (
                AuthError::unavailable("stopped"),
                ErrorCode::Unavailable {
                    retry_after_ms: UNAVAILABLE_RETRY_MS,
                },
            ),
            (AuthError::InvalidConfig("x".into()), ErrorCode::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(error.error_code(), code, "{error}");
        }
    }
}
