//! Phone-number registration: verification codes through pluggable
//! providers, then tokens.
//!
//! A user proves a phone number by receiving a six-digit code
//! ([`AuthHandle::request_code`]) and sending it back
//! ([`AuthHandle::verify`]), which yields a 256-bit bearer token. Every later
//! connection presents the token ([`AuthHandle::login`]) and is the phone
//! number from then on.
//!
//! # Layout
//! - `codes`: the pure core. Pending codes, wrong tries, resend interval and
//!   hourly cap as a state machine over `now_ms`; no clock, randomness or I/O.
//! - [`limits`]: the pure limits across numbers: token buckets per
//!   connection, source address, /24 or /64, node and country calling code,
//!   for code requests (SMS pumping) and verify attempts (guessing).
//! - `account` ([`Accounts`]): everything kept per number (the pending code
//!   and its counters, the token generation, the registration lock) in the
//!   number's account record, which its mailbox fragment stores and
//!   replicates; changed by compare-and-set, so every node's auth service
//!   shares it.
//! - [`tokens`](TokenBook): signing and checking tokens; without a token key,
//!   their SHA-256 in the node's [`storage::Store`]. Logins check tokens
//!   directly (a read transaction at most), not through the actor, so a
//!   reconnect storm is not serialised on one mailbox.
//! - [`provider`](CodeProvider): how a code leaves the node
//!   ([`WebhookProvider`], or [`FileProvider`] for development).
//! - `actor`: [`AuthActor`], the shell: the limits across numbers, random
//!   codes, and a task per request for record updates, provider calls and
//!   PIN hashes.
//! - `error`: [`AuthError`] and its wire [`proto::ErrorCode`].
//! - `pin`: registration-lock PINs (PBKDF2 hashes) and the pure decision
//!   whether a lock holds.
//!
//! # Revocation
//! Every token carries its account's generation; a verification or a
//! logout raises it in the record, logins refuse lower ones, and the
//! number's fragment refuses and closes sessions of lower ones.
//!
//! # Not here
//! Sessions (which call this crate for the `RequestCode`, `Verify` and
//! `Login` requests), devices and multi-device keys. The limits across
//! numbers are node-local on purpose: each node counts its own traffic.

#![warn(missing_docs, unreachable_pub)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::PhoneNumber;
use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, MessagingErr};
use serde::{Deserialize, Serialize};
use storage::Store;

mod account;
mod actor;
mod codes;
mod error;
pub mod limits;
mod pin;
mod provider;
mod tokens;

pub use account::Accounts;
pub use actor::{AuthActor, AuthArgs, AuthMsg, AuthState, CodeSent};
pub use error::{AuthError, Result};
pub use limits::{BucketConfig, Limit, LimitsConfig, TokenBucket};
pub use provider::{
    CodeProvider, DEFAULT_CODES_FILE, FileProvider, ProviderConfig, ProviderError, WebhookProvider,
    build_provider,
};
pub use tokens::{Authenticated, IssuedToken, TokenBook};

/// Logins refresh an account's last activity at most this often (a write),
/// and only while it has a registration lock (the only reader).
const TOUCH_EVERY_MS: u64 = 3_600_000;

/// Least time the handle waits for the actor.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the auth service (`[auth]` in the node's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// How long a verification code stays valid.
    pub code_ttl_secs: u64,
    /// Wrong codes allowed per code from one requester (source address,
    /// IPv6 /64); its next try is refused.
    pub max_code_attempts: u32,
    /// Wrong codes allowed per code from all requesters together; the try
    /// that reaches it burns the code.
    pub max_code_attempts_total: u32,
    /// Wait after a burned code before a new one can be requested (doubled
    /// with each burn of the number in a day, at most an hour).
    pub burned_code_cooldown_secs: u64,
    /// A registration lock lapses once the account has not logged in for
    /// this many days.
    pub registration_lock_lapse_days: u64,
    /// Wrong registration-lock PINs allowed per number in a day.
    pub max_pin_attempts_per_day: u32,
    /// PBKDF2-HMAC-SHA256 iterations for a new PIN's hash (each PIN keeps
    /// the count it was hashed with).
    pub pin_kdf_iterations: u32,
    /// Least time between two codes for one phone.
    pub resend_interval_secs: u64,
    /// Most codes for one phone in any hour.
    pub max_codes_per_hour: u32,
    /// How long a token stays valid.
    pub token_ttl_days: u64,
    /// Most provider calls in flight at once; beyond it code requests are
    /// answered `Unavailable`, so a hung provider cannot exhaust threads.
    pub max_deliveries_in_flight: usize,
    /// Where codes go.
    pub provider: ProviderConfig,
    /// Signs tokens so that every node holding the same key accepts them
    /// (required in a cluster; at least 32 characters; keep it secret).
    pub token_key: Option<String>,
    /// Limits across numbers (`[auth.limits]`): code requests and verify
    /// attempts per connection, source, node and country.
    pub limits: LimitsConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            code_ttl_secs: 600,
            max_code_attempts: 5,
            max_code_attempts_total: 15,
            burned_code_cooldown_secs: 60,
            registration_lock_lapse_days: 7,
            max_pin_attempts_per_day: 5,
            pin_kdf_iterations: 600_000,
            resend_interval_secs: 30,
            max_codes_per_hour: 5,
            token_ttl_days: 90,
            max_deliveries_in_flight: 64,
            provider: ProviderConfig::default(),
            token_key: None,
            limits: LimitsConfig::default(),
        }
    }
}

impl AuthConfig {
    /// Rejects settings that would lock every user out or never expire.
    pub fn validate(&self) -> Result<()> {
        let checks: [(bool, &str); 9] = [
            (
                self.max_code_attempts_total >= self.max_code_attempts,
                "max_code_attempts_total must be at least max_code_attempts",
            ),
            (
                self.registration_lock_lapse_days > 0,
                "registration_lock_lapse_days must be at least 1",
            ),
            (
                self.max_pin_attempts_per_day > 0,
                "max_pin_attempts_per_day must be at least 1",
            ),
            (
                self.pin_kdf_iterations >= 10_000,
                "pin_kdf_iterations must be at least 10000",
            ),
            (self.code_ttl_secs > 0, "code_ttl_secs must be at least 1"),
            (
                self.max_code_attempts > 0,
                "max_code_attempts must be at least 1",
            ),
            (
                self.max_codes_per_hour > 0,
                "max_codes_per_hour must be at least 1",
            ),
            (self.token_ttl_days > 0, "token_ttl_days must be at least 1"),
            (
                self.max_deliveries_in_flight > 0,
                "max_deliveries_in_flight must be at least 1",
            ),
        ];
        if self.token_key.as_ref().is_some_and(|k| k.len() < 32) {
            return Err(AuthError::InvalidConfig(
                "token_key must be at least 32 characters".into(),
            ));
        }
        if let Some(problem) = self.limits.problem() {
            return Err(AuthError::InvalidConfig(problem));
        }
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(AuthError::InvalidConfig((*why).to_owned())),
            None => Ok(()),
        }
    }

    /// The token book these settings describe.
    fn token_book(&self, store: Store) -> TokenBook {
        TokenBook::new(store, self.token_ttl())
            .with_key(self.token_key.as_deref().map(str::as_bytes))
    }

    /// The token lifetime.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_days.saturating_mul(86_400))
    }

    /// How long the handle waits for the actor: at least 10 s, and longer
    /// than the webhook's own timeout.
    fn call_timeout(&self) -> Duration {
        match &self.provider {
            ProviderConfig::Webhook { timeout_ms, .. } => {
                CALL_TIMEOUT.max(Duration::from_millis(timeout_ms.saturating_add(2_000)))
            }
            ProviderConfig::File { .. } => CALL_TIMEOUT,
        }
    }
}

/// The way into a running auth service. Cheap to clone.
#[derive(Clone)]
pub struct AuthHandle {
    actor: Option<ActorRef<AuthMsg>>,
    /// The registered name, when the actor runs under a supervisor that may
    /// restart it: calls then go to whichever instance runs now.
    name: Option<String>,
    tokens: TokenBook,
    accounts: Accounts,
    call_timeout: Duration,
    limits: LimitsConfig,
    pin_kdf_iterations: u32,
}

impl AuthHandle {
    /// A handle to the auth actor registered as `name` (started elsewhere,
    /// e.g. by a supervisor), with its own token book over `store`.
    pub fn named(name: &str, cfg: &AuthConfig, store: Store, accounts: Accounts) -> Self {
        Self {
            actor: None,
            name: Some(name.to_owned()),
            tokens: cfg.token_book(store),
            accounts,
            call_timeout: cfg.call_timeout(),
            limits: cfg.limits.clone(),
            pin_kdf_iterations: cfg.pin_kdf_iterations,
        }
    }

    fn current(&self) -> std::result::Result<ActorRef<AuthMsg>, AuthError> {
        self.name
            .as_ref()
            .and_then(|name| ractor::registry::where_is(name.clone()))
            .map(ActorRef::from)
            .or_else(|| self.actor.clone())
            .ok_or_else(|| AuthError::unavailable("the auth service is not running"))
    }

    /// Sends a new code to `phone`, for a caller inside the node (only the
    /// node-wide and country limits apply).
    pub async fn request_code(&self, phone: PhoneNumber) -> Result<CodeSent> {
        self.request_code_from(phone, None).await
    }

    /// Sends a new code to `phone`, asked by a client at `source` (whose
    /// address and subnet limits apply).
    pub async fn request_code_from(
        &self,
        phone: PhoneNumber,
        source: Option<IpAddr>,
    ) -> Result<CodeSent> {
        let answer = self
            .current()?
            .call(
                |reply| AuthMsg::RequestCode {
                    phone,
                    source,
                    reply,
                },
                Some(self.call_timeout),
            )
            .await;
        flatten(answer)
    }

    /// Trades the code sent to `phone` for a token (a caller inside the
    /// node).
    pub async fn verify(&self, phone: PhoneNumber, code: String) -> Result<IssuedToken> {
        self.verify_from(phone, code, None).await
    }

    /// Trades the code sent to `phone` for a token, for a client at
    /// `source` (whose address and subnet limits on attempts apply).
    pub async fn verify_from(
        &self,
        phone: PhoneNumber,
        code: String,
        source: Option<IpAddr>,
    ) -> Result<IssuedToken> {
        self.verify_with_pin_from(phone, code, None, source).await
    }

    /// Like [`AuthHandle::verify_from`], with the registration-lock PIN of
    /// the number (needed while it has a lock).
    pub async fn verify_with_pin_from(
        &self,
        phone: PhoneNumber,
        code: String,
        pin: Option<String>,
        source: Option<IpAddr>,
    ) -> Result<IssuedToken> {
        let answer = self
            .current()?
            .call(
                |reply| AuthMsg::Verify {
                    phone,
                    code,
                    pin,
                    source,
                    reply,
                },
                Some(self.call_timeout),
            )
            .await;
        flatten(answer)
    }

    /// A connection's bucket for code requests, full at `now_ms`.
    pub fn connection_code_bucket(&self, now_ms: u64) -> TokenBucket {
        TokenBucket::new(self.limits.codes_per_connection, now_ms)
    }

    /// A connection's bucket for verify attempts, full at `now_ms`.
    pub fn connection_verify_bucket(&self, now_ms: u64) -> TokenBucket {
        TokenBucket::new(self.limits.verifies_per_connection, now_ms)
    }

    /// Mints a token for each of `phones` without a code (test users), all
    /// or none: [`AuthError::AccountExists`] if any of them has an account
    /// (its record, cluster-wide), so that minting never takes over a
    /// user's number. The caller also keeps minting to a range of numbers
    /// no subscriber can have.
    pub async fn mint_test_users(&self, phones: &[PhoneNumber]) -> Result<Vec<IssuedToken>> {
        let records = futures::future::join_all(phones.iter().map(|p| self.accounts.read(p))).await;
        for (phone, record) in phones.iter().zip(records) {
            let record = record?;
            if record.account.created_at_ms.is_some() || record.generation > 0 {
                return Err(AuthError::AccountExists(phone.clone()));
            }
        }
        // Issued concurrently, so they share group commits.
        futures::future::join_all(phones.iter().map(|p| self.issue_token(p)))
            .await
            .into_iter()
            .collect()
    }

    /// The phone a token belongs to (see [`AuthHandle::authenticate`]).
    pub async fn login(&self, token: &str) -> Result<PhoneNumber> {
        self.authenticate(token).await.map(|a| a.phone)
    }

    /// The phone and generation of a token that is valid and not revoked.
    /// The signature (or the stored token) is checked on the blocking pool
    /// (a read may touch the disk), never through the actor; the
    /// generation against the number's account record, through its
    /// fragment, wherever that is (the fragment checks again at attach).
    /// Notes the login for the registration lock's lapse (a write at most
    /// hourly, only with a lock).
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated> {
        let tokens = self.tokens.clone();
        let token = token.to_owned();
        let found = tokio::task::spawn_blocking(move || tokens.authenticate(&token, now_ms()))
            .await
            .unwrap_or_else(|e| Err(AuthError::unavailable(format!("login task failed: {e}"))))?;
        let loaded = self.accounts.read(&found.phone).await?;
        if found.generation < loaded.generation {
            metrics::counter!("switchboard_auth_logins_total", "outcome" => "revoked").increment(1);
            return Err(AuthError::InvalidToken);
        }
        let now = now_ms();
        let account = &loaded.account;
        if account.lock.is_some() && account.last_active_ms.saturating_add(TOUCH_EVERY_MS) <= now {
            self.note_login(&found.phone, now);
        }
        Ok(found)
    }

    /// Notes a login of `phone` at `now`, for its registration lock's
    /// lapse, in the background (a lost note costs at most an hour).
    fn note_login(&self, phone: &PhoneNumber, now: u64) {
        let (accounts, phone) = (self.accounts.clone(), phone.clone());
        tokio::spawn(async move {
            let noted = accounts
                .update(&phone, |loaded| {
                    let account = &mut loaded.account;
                    account.last_active_ms = account.last_active_ms.max(now);
                })
                .await;
            if let Err(e) = noted {
                tracing::debug!(%phone, error = %e, "login not noted for the registration lock");
            }
        });
    }

    /// Logs `phone` out everywhere: every token issued so far stops
    /// working (one account is one device today; see
    /// `docs/security/tokens.md`). Returns the account's new generation,
    /// once durable; the number's fragment closes the sessions of older
    /// tokens, on any node.
    pub async fn logout(&self, phone: &PhoneNumber) -> Result<u64> {
        let now = now_ms();
        self.accounts
            .update(phone, |loaded| {
                loaded.generation = loaded.generation.saturating_add(1);
                loaded.account.last_active_ms = now;
                loaded.generation
            })
            .await
    }

    /// What an operator may see of `phone`'s account (no code, no PIN).
    pub async fn account_summary(&self, phone: &PhoneNumber) -> Result<AccountSummary> {
        let loaded = self.accounts.read(phone).await?;
        Ok(AccountSummary {
            registered_at_ms: loaded.account.created_at_ms,
            last_active_ms: loaded.account.last_active_ms,
            token_generation: loaded.generation,
            registration_lock: loaded.account.lock.is_some(),
        })
    }

    /// Sets (`Some`) or clears `phone`'s registration-lock PIN. The PIN is
    /// hashed on the blocking pool (slow on purpose).
    pub async fn set_registration_lock(
        &self,
        phone: &PhoneNumber,
        pin: Option<String>,
    ) -> Result<()> {
        let lock = match pin {
            None => None,
            Some(pin) => {
                if let Some(problem) = pin::pin_problem(&pin) {
                    return Err(AuthError::InvalidPin(problem));
                }
                let iterations = self.pin_kdf_iterations;
                let lock = tokio::task::spawn_blocking(move || {
                    pin::PinLock::new(&pin, iterations, now_ms())
                })
                .await
                .map_err(|e| AuthError::unavailable(format!("PIN hashing failed: {e}")))?;
                Some(lock)
            }
        };
        let now = now_ms();
        self.accounts
            .update(phone, |loaded| {
                let account = &mut loaded.account;
                account.lock = lock.clone();
                account.last_active_ms = now;
                account.pin_failures_ms.clear();
            })
            .await
    }

    /// Mints a token for `phone` without a code (admin tools, test users).
    /// Revokes its earlier tokens, like a verification.
    pub async fn issue_token(&self, phone: &PhoneNumber) -> Result<IssuedToken> {
        let now = now_ms();
        let generation = self
            .accounts
            .update(phone, |loaded| actor::verified(loaded, now))
            .await?;
        self.tokens.issue(phone, generation, now).await
    }

    /// The token book, for admin tools.
    pub fn tokens(&self) -> &TokenBook {
        &self.tokens
    }

    /// The actor running now, to link or stop it.
    pub fn actor(&self) -> Option<ActorRef<AuthMsg>> {
        self.current().ok()
    }
}

fn flatten<T>(
    answer: std::result::Result<CallResult<Result<T>>, MessagingErr<AuthMsg>>,
) -> Result<T> {
    match answer {
        Ok(CallResult::Success(result)) => result,
        Ok(CallResult::Timeout) => Err(AuthError::unavailable("the auth service timed out")),
        Ok(CallResult::SenderError) => Err(AuthError::unavailable(
            "the auth service dropped the request",
        )),
        Err(_) => Err(AuthError::unavailable("the auth service is not running")),
    }
}

/// Starts the auth actor (linked to `supervisor` if given) and returns its
/// handle and the actor's join handle.
pub async fn spawn_auth(
    cfg: AuthConfig,
    store: Store,
    accounts: Accounts,
    provider: Arc<dyn CodeProvider>,
    supervisor: Option<ActorCell>,
) -> Result<(AuthHandle, JoinHandle<()>)> {
    spawn_named_auth(cfg, store, accounts, provider, supervisor, None).await
}

/// Like [`spawn_auth`], registering the actor under `name` so that the
/// handle follows restarts by a supervisor.
pub async fn spawn_named_auth(
    cfg: AuthConfig,
    store: Store,
    accounts: Accounts,
    provider: Arc<dyn CodeProvider>,
    supervisor: Option<ActorCell>,
    name: Option<String>,
) -> Result<(AuthHandle, JoinHandle<()>)> {
    cfg.validate()?;
    let tokens = cfg.token_book(store);
    let call_timeout = cfg.call_timeout();
    let args_limits = cfg.limits.clone();
    let pin_kdf_iterations = cfg.pin_kdf_iterations;
    let args = AuthArgs {
        config: cfg,
        tokens: tokens.clone(),
        accounts: accounts.clone(),
        provider,
    };
    let spawned = match supervisor {
        Some(supervisor) => Actor::spawn_linked(name.clone(), AuthActor, args, supervisor).await,
        None => Actor::spawn(name.clone(), AuthActor, args).await,
    };
    let (actor, join) =
        spawned.map_err(|e| AuthError::unavailable(format!("cannot start the auth actor: {e}")))?;
    Ok((
        AuthHandle {
            actor: Some(actor),
            name,
            tokens,
            accounts,
            call_timeout,
            limits: args_limits,
            pin_kdf_iterations,
        },
        join,
    ))
}

pub(crate) use proto::clock::now_ms;

#[cfg(test)]
mod tests;

/// An account as an operator sees it: when, and which token generation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountSummary {
    /// When the number was first verified (or minted), if ever.
    pub registered_at_ms: Option<u64>,
    /// The last verification or login the account recorded.
    pub last_active_ms: u64,
    /// Tokens of a lower generation are revoked.
    pub token_generation: u64,
    /// Whether a registration-lock PIN is set.
    pub registration_lock: bool,
}
