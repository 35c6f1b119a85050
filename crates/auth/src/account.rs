//! What the auth service keeps per phone number, and where: in the
//! number's account record, which its mailbox fragment stores and
//! replicates with the mailbox (`offline_queue::account`). Every node's
//! auth service reads and changes the same record, so a code sent by one
//! node verifies on another, a restart forgets nothing, and a revocation or
//! a registration lock holds cluster-wide.
//!
//! Changes are compare-and-set on the record's version ([`Accounts::update`]):
//! read, change a copy, write it if nobody wrote in between, otherwise
//! change the newer record again.

use std::time::Duration;

use offline_queue::{AccountRecord, AccountReply, AccountWrite, FragmentDirectory, FragmentMsg};
use proto::PhoneNumber;
use ractor::rpc::CallResult;
use serde::{Deserialize, Serialize};

use crate::AuthError;
use crate::codes::PhoneCodes;
use crate::pin::PinLock;

/// One number's state besides its tokens (the record's body).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    /// When the number was first verified (or minted), if ever.
    pub(crate) created_at_ms: Option<u64>,
    /// The last verification or login (refreshed at most hourly, and only
    /// while a lock is set): a lock lapses after a week without one.
    pub(crate) last_active_ms: u64,
    /// The registration-lock PIN, if set.
    pub(crate) lock: Option<PinLock>,
    /// When wrong PINs were tried, within the last day.
    pub(crate) pin_failures_ms: Vec<u64>,
    /// The pending code and its counters.
    pub(crate) codes: PhoneCodes,
}

/// An account as read, with the generation of its tokens: tokens of a
/// lower generation are revoked (the fragment refuses their sessions).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub(crate) generation: u64,
    pub(crate) account: Account,
}

impl Loaded {
    fn decode(record: &AccountRecord) -> Result<Self, AuthError> {
        let account = if record.body.is_empty() {
            Account::default()
        } else {
            postcard::from_bytes(&record.body).map_err(|e| {
                AuthError::Storage(storage::StorageError::Corrupt(format!(
                    "unreadable account record: {e}"
                )))
            })?
        };
        Ok(Self {
            generation: record.generation,
            account,
        })
    }
}

/// Compare-and-set attempts before giving up: each lost race means another
/// node changed the same number at the same moment, which is rare.
const MAX_UPDATE_TRIES: usize = 8;

/// The account records, reached through the mailbox fragments.
#[derive(Clone)]
pub struct Accounts {
    directory: FragmentDirectory,
    timeout: Duration,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Records in the fragments of `directory`; each request waits at most
    /// `timeout` for the fragment (which may be on another node).
    pub fn new(directory: FragmentDirectory, timeout: Duration) -> Self {
        Self { directory, timeout }
    }

    async fn call(
        &self,
        phone: &PhoneNumber,
        message: impl FnOnce(
            ractor::RpcReplyPort<Result<AccountReply, offline_queue::FragmentError>>,
        ) -> FragmentMsg,
    ) -> Result<AccountReply, AuthError> {
        let fragment = self
            .directory
            .for_user_when_ready(phone, self.timeout)
            .await
            .map_err(unavailable)?;
        match fragment.call(message, Some(self.timeout)).await {
            Ok(CallResult::Success(answer)) => answer.map_err(unavailable),
            Ok(CallResult::Timeout) => Err(AuthError::unavailable(
                "the number's mailbox fragment did not answer in time",
            )),
            Ok(CallResult::SenderError) | Err(_) => Err(AuthError::unavailable(
                "the number's mailbox fragment dropped the request",
            )),
        }
    }

    /// `phone`'s account (the default if it has none).
    pub(crate) async fn read(&self, phone: &PhoneNumber) -> Result<Loaded, AuthError> {
        let (_, loaded) = self.read_record(phone).await?;
        Ok(loaded)
    }

    async fn read_record(&self, phone: &PhoneNumber) -> Result<(u64, Loaded), AuthError> {
        let user = phone.clone();
        match self
            .call(phone, |reply| FragmentMsg::ReadAccount { user, reply })
            .await?
        {
            AccountReply::Current(record)
            | AccountReply::Written(record)
            | AccountReply::Conflict(record) => Ok((record.version, Loaded::decode(&record)?)),
        }
    }

    /// Applies `change` to `phone`'s account and stores the result if it
    /// changed anything; returns `change`'s answer once durable (or at once,
    /// if nothing changed). `change` may run more than once (on a lost
    /// race it runs again on the newer record), so it must only compute.
    pub(crate) async fn update<R>(
        &self,
        phone: &PhoneNumber,
        mut change: impl FnMut(&mut Loaded) -> R,
    ) -> Result<R, AuthError> {
        let (mut version, mut current) = self.read_record(phone).await?;
        for _ in 0..MAX_UPDATE_TRIES {
            let mut next = current.clone();
            let answer = change(&mut next);
            if next == current {
                return Ok(answer);
            }
            let body = postcard::to_stdvec(&next.account).map_err(|e| {
                AuthError::Storage(storage::StorageError::Corrupt(format!(
                    "cannot encode an account record: {e}"
                )))
            })?;
            let write = AccountWrite {
                expected_version: version,
                generation: next.generation,
                body,
            };
            let user = phone.clone();
            match self
                .call(phone, |reply| FragmentMsg::WriteAccount {
                    user,
                    write,
                    reply,
                })
                .await?
            {
                AccountReply::Written(_) => return Ok(answer),
                AccountReply::Conflict(record) | AccountReply::Current(record) => {
                    metrics::counter!("switchboard_auth_account_conflicts_total").increment(1);
                    version = record.version;
                    current = Loaded::decode(&record)?;
                }
            }
        }
        Err(AuthError::unavailable(
            "the number's account changed too often at once; retry",
        ))
    }
}

fn unavailable(e: offline_queue::FragmentError) -> AuthError {
    AuthError::unavailable(format!("account record: {e}"))
}
