//! The auth actor: the shell around the code book.
//!
//! The actor owns the [`CodeBook`] (pending codes are per node, in memory: a
//! restart forgets them and users request new ones). It reads the clock,
//! draws codes, and hands the slow parts off so its mailbox keeps moving:
//! provider calls run on Tokio's blocking pool and reply from there, token
//! writes complete through the store's group-commit callback.

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use proto::PhoneNumber;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::codes::{CodeBook, CodePolicy, Requester};
use crate::limits::{CodeLimiter, Limit, LogEvery};
use crate::pin::{LockPolicy, LockStatus};
use crate::provider::{CodeProvider, ProviderError};
use crate::tokens::{IssuedToken, TokenBook};
use crate::{AuthConfig, AuthError, now_ms};

/// How often expired codes are dropped from memory.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often a refusal by one limit is logged at most (counters carry the
/// rest: `switchboard_auth_codes_total`, `switchboard_auth_verifies_total`).
const REFUSAL_LOG_EVERY_MS: u64 = 10_000;

/// One log gate per limit that refuses in the actor.
static REFUSAL_LOGS: [LogEvery; 4] = [
    LogEvery::new(REFUSAL_LOG_EVERY_MS),
    LogEvery::new(REFUSAL_LOG_EVERY_MS),
    LogEvery::new(REFUSAL_LOG_EVERY_MS),
    LogEvery::new(REFUSAL_LOG_EVERY_MS),
];

fn log_refusal(what: &str, limit: Limit, source: Option<IpAddr>, now: u64) {
    let gate = match limit {
        Limit::Address => &REFUSAL_LOGS[0],
        Limit::Subnet => &REFUSAL_LOGS[1],
        Limit::Node => &REFUSAL_LOGS[2],
        _ => &REFUSAL_LOGS[3],
    };
    if gate.ready(now) {
        tracing::warn!(
            limit = limit.as_str(),
            ?source,
            "{what} refused by a rate limit \
            (logged at most every {} s per limit; see the metrics)",
            REFUSAL_LOG_EVERY_MS / 1000
        );
    }
}

/// Counts a code request's outcome.
fn count_code(outcome: &'static str) {
    metrics::counter!("switchboard_auth_codes_total", "outcome" => outcome).increment(1);
}

/// Counts a verify attempt's outcome.
fn count_verify(outcome: &'static str) {
    metrics::counter!("switchboard_auth_verifies_total", "outcome" => outcome).increment(1);
}

/// A code was generated and handed to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeSent {
    /// How long the code stays valid.
    pub expires_in_secs: u32,
}

/// Messages of the [`AuthActor`].
pub enum AuthMsg {
    /// Generate a code for `phone` and hand it to the provider. Answers once
    /// the provider took it; on a provider failure the code is forgotten (so
    /// the user may retry at once) and the answer is [`AuthError::Provider`].
    RequestCode {
        /// The number to verify.
        phone: PhoneNumber,
        /// The client's address (None: a caller inside the node).
        source: Option<IpAddr>,
        /// The outcome.
        reply: RpcReplyPort<Result<CodeSent, AuthError>>,
    },
    /// Check `code` against the pending code of `phone`; on a match, issue a
    /// token and answer once it is durable. A matching code is consumed even
    /// if the token write then fails (the answer is [`AuthError::Storage`]
    /// and the user requests a new code).
    Verify {
        /// The number the code was sent to.
        phone: PhoneNumber,
        /// The digits the user typed.
        code: String,
        /// The registration-lock PIN, needed while the number has a lock.
        pin: Option<String>,
        /// The client's address (None: a caller inside the node).
        source: Option<IpAddr>,
        /// The token, or why not.
        reply: RpcReplyPort<Result<IssuedToken, AuthError>>,
    },
    /// Internal, from a PIN check on the blocking pool: whether the PIN
    /// given with a right code for a locked number matched.
    PinChecked {
        /// The number.
        phone: PhoneNumber,
        /// The code, consumed now if the PIN matched and it is still pending.
        code: String,
        /// Who tried it.
        source: Option<IpAddr>,
        /// Whether the PIN matched.
        matched: bool,
        /// The answer to the verify.
        reply: RpcReplyPort<Result<IssuedToken, AuthError>>,
    },
    /// Internal, from a delivery task: the provider failed, forget `code` if
    /// it is still pending for `phone`.
    DeliveryFailed {
        /// Whose code.
        phone: PhoneNumber,
        /// The code that did not go out.
        code: String,
    },
    /// Internal, from the prune timer: drop expired codes.
    Prune,
}

// Local only: replies are ports, so this type never crosses nodes.
impl ractor::Message for AuthMsg {}

/// The auth actor. Spawn it with [`crate::spawn_auth`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthActor;

/// What [`AuthActor`] starts from (built by [`crate::spawn_auth`]).
pub struct AuthArgs {
    pub(crate) config: AuthConfig,
    pub(crate) tokens: TokenBook,
    pub(crate) provider: Arc<dyn CodeProvider>,
}

/// The state of a running [`AuthActor`].
pub struct AuthState {
    codes: CodeBook,
    /// When a registration lock holds and how many wrong PINs it allows.
    lock_policy: LockPolicy,
    /// Limits across numbers: per source, subnet, node and country.
    limiter: CodeLimiter,
    tokens: TokenBook,
    provider: Arc<dyn CodeProvider>,
    /// Bounds the provider calls in flight, so a hung provider cannot eat the
    /// blocking pool: beyond it requests are answered `Unavailable`.
    deliveries: Arc<Semaphore>,
    prune_timer: Option<JoinHandle<()>>,
}

impl Actor for AuthActor {
    type Msg = AuthMsg;
    type State = AuthState;
    type Arguments = AuthArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let policy = policy(&args.config);
        let prune_timer = Some(myself.send_interval(PRUNE_EVERY, || AuthMsg::Prune));
        tracing::info!(provider = args.provider.name(), "auth service started");
        Ok(AuthState {
            codes: CodeBook::new(policy),
            lock_policy: LockPolicy {
                lapse_ms: args
                    .config
                    .registration_lock_lapse_days
                    .saturating_mul(86_400_000),
                max_failures_per_day: args.config.max_pin_attempts_per_day,
            },
            limiter: CodeLimiter::new(args.config.limits.clone(), now_ms()),
            tokens: args.tokens,
            provider: args.provider,
            deliveries: Arc::new(Semaphore::new(args.config.max_deliveries_in_flight.max(1))),
            prune_timer,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.prune_timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Every error here is the client's or a dependency's: it is answered,
        // and the actor goes on. Nothing in this handler needs a restart.
        match message {
            AuthMsg::RequestCode {
                phone,
                source,
                reply,
            } => {
                request_code(&myself, state, phone, source, reply);
            }
            AuthMsg::Verify {
                phone,
                code,
                pin,
                source,
                reply,
            } => verify(&myself, state, phone, code, pin, source, reply),
            AuthMsg::PinChecked {
                phone,
                code,
                source,
                matched,
                reply,
            } => pin_checked(state, phone, code, source, matched, reply),
            AuthMsg::DeliveryFailed { phone, code } => {
                state.codes.cancel(&phone, &code);
            }
            AuthMsg::Prune => {
                let now = now_ms();
                let dropped = state.codes.prune(now);
                if dropped > 0 {
                    tracing::debug!(dropped, remaining = state.codes.len(), "pruned codes");
                }
                let buckets = state.limiter.prune(now);
                metrics::gauge!("switchboard_auth_limit_buckets").set(buckets as f64);
            }
        }
        Ok(())
    }
}

/// A verify attempt: the limits across numbers, then the code (counted
/// against its requester), then, for a number with a registration lock,
/// the PIN on the blocking pool (answered through [`AuthMsg::PinChecked`]).
fn verify(
    myself: &ActorRef<AuthMsg>,
    state: &mut AuthState,
    phone: PhoneNumber,
    code: String,
    pin: Option<String>,
    source: Option<IpAddr>,
    reply: RpcReplyPort<Result<IssuedToken, AuthError>>,
) {
    let now = now_ms();
    if let Err(refusal) = state.limiter.verify_attempt(source, now) {
        log_refusal("verify attempt", refusal.limit, source, now);
        let e = AuthError::Limited {
            limit: refusal.limit,
            retry_after_ms: refusal.retry_after_ms,
        };
        count_verify(e.outcome());
        let _ = reply.send(Err(e));
        return;
    }
    // A read transaction, usually on cached pages.
    let account = match state.tokens.account_state(&phone) {
        Ok(account) => account,
        Err(e) => {
            count_verify(e.outcome());
            let _ = reply.send(Err(e));
            return;
        }
    };
    let status = state.lock_policy.status(
        account.lock.as_ref(),
        account.last_active_ms,
        &account.pin_failures_ms,
        now,
    );
    let by = Requester::of(source);
    let LockStatus::Locked { attempts_left } = status else {
        match state.codes.verify(&phone, &code, by, now, true) {
            Ok(()) => issue(state, &phone, now, reply),
            Err(e) => {
                let e = AuthError::from(e);
                count_verify(e.outcome());
                let _ = reply.send(Err(e));
            }
        }
        return;
    };
    // Locked: the code first (not consumed), so that only a holder of the
    // SMS code may try PINs.
    if let Err(e) = state.codes.verify(&phone, &code, by, now, false) {
        let e = AuthError::from(e);
        count_verify(e.outcome());
        let _ = reply.send(Err(e));
        return;
    }
    let (Some(pin), Some(lock)) = (pin, account.lock) else {
        count_verify("pin_required");
        let _ = reply.send(Err(AuthError::RegistrationLocked { attempts_left }));
        return;
    };
    if attempts_left == 0 {
        count_verify("pin_attempts_used_up");
        let _ = reply.send(Err(AuthError::RegistrationLocked { attempts_left }));
        return;
    }
    let myself = myself.clone();
    tokio::task::spawn_blocking(move || {
        let matched = lock.matches(&pin);
        let _ = myself.cast(AuthMsg::PinChecked {
            phone,
            code,
            source,
            matched,
            reply,
        });
    });
}

/// The PIN of a locked number was checked: a match consumes the code (if
/// still pending) and issues a token; a miss is recorded.
fn pin_checked(
    state: &mut AuthState,
    phone: PhoneNumber,
    code: String,
    source: Option<IpAddr>,
    matched: bool,
    reply: RpcReplyPort<Result<IssuedToken, AuthError>>,
) {
    let now = now_ms();
    if !matched {
        count_verify("wrong_pin");
        if PIN_LOG.ready(now) {
            tracing::warn!(
                ?source,
                "a wrong registration-lock PIN \
                (logged at most every 10 s; see switchboard_auth_verifies_total)"
            );
        }
        let max = state.lock_policy.max_failures_per_day;
        state.tokens.record_pin_failure(&phone, now, move |result| {
            let _ = reply.send(result.and_then(|failures| {
                let failures = u32::try_from(failures).unwrap_or(u32::MAX);
                Err(AuthError::RegistrationLocked {
                    attempts_left: max.saturating_sub(failures),
                })
            }));
        });
        return;
    }
    match state
        .codes
        .verify(&phone, &code, Requester::of(source), now, true)
    {
        Ok(()) => issue(state, &phone, now, reply),
        Err(e) => {
            let e = AuthError::from(e);
            count_verify(e.outcome());
            let _ = reply.send(Err(e));
        }
    }
}

/// Issues a token for a verified `phone` (revoking its earlier ones) and
/// answers once it is durable.
fn issue(
    state: &AuthState,
    phone: &PhoneNumber,
    now: u64,
    reply: RpcReplyPort<Result<IssuedToken, AuthError>>,
) {
    tracing::debug!(%phone, "code verified");
    state.tokens.issue_with(phone, now, move |result| {
        match &result {
            Ok(_) => count_verify("verified"),
            Err(e) => {
                count_verify(e.outcome());
                tracing::error!(error = %e, "cannot store a new token");
            }
        }
        let _ = reply.send(result);
    });
}

/// Wrong PINs are logged at most every 10 s.
static PIN_LOG: LogEvery = LogEvery::new(REFUSAL_LOG_EVERY_MS);

fn policy(config: &AuthConfig) -> CodePolicy {
    CodePolicy {
        ttl_ms: config.code_ttl_secs.saturating_mul(1_000),
        max_attempts: config.max_code_attempts,
        resend_interval_ms: config.resend_interval_secs.saturating_mul(1_000),
        max_codes_per_hour: config.max_codes_per_hour,
        max_total_attempts: config.max_code_attempts_total,
        burn_cooldown_ms: config.burned_code_cooldown_secs.saturating_mul(1_000),
    }
}

fn request_code(
    myself: &ActorRef<AuthMsg>,
    state: &mut AuthState,
    phone: PhoneNumber,
    source: Option<IpAddr>,
    reply: RpcReplyPort<Result<CodeSent, AuthError>>,
) {
    let now = now_ms();
    // The limits across numbers first: a flood is refused before it costs
    // a delivery slot.
    if let Err(refusal) = state.limiter.check_code(source, &phone, now) {
        log_refusal("code request", refusal.limit, source, now);
        let e = AuthError::Limited {
            limit: refusal.limit,
            retry_after_ms: refusal.retry_after_ms,
        };
        count_code(e.outcome());
        let _ = reply.send(Err(e));
        return;
    }
    let Ok(permit) = Arc::clone(&state.deliveries).try_acquire_owned() else {
        tracing::warn!("too many verification codes in flight to the provider");
        count_code("unavailable");
        let _ = reply.send(Err(AuthError::unavailable(
            "too many verification codes in flight",
        )));
        return;
    };
    let code = new_code(&mut rand::rng());
    let issued = match state.codes.request(&phone, code.clone(), now) {
        Ok(issued) => issued,
        Err(e) => {
            let e = AuthError::from(e);
            count_code(e.outcome());
            let _ = reply.send(Err(e));
            return;
        }
    };
    // Counted as sent from here, even if the provider then fails: a flood
    // of failing deliveries must not get around the limits.
    state.limiter.issued(source, &phone, now);
    let expires_in_secs =
        u32::try_from(issued.expires_at_ms.saturating_sub(now) / 1_000).unwrap_or(u32::MAX);
    let provider = Arc::clone(&state.provider);
    let myself = myself.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let delivered =
            std::panic::catch_unwind(AssertUnwindSafe(|| provider.deliver(&phone, &code)))
                .unwrap_or_else(|_| Err(ProviderError::Other("the provider panicked".into())));
        let answer = match delivered {
            Ok(()) => {
                count_code("sent");
                Ok(CodeSent { expires_in_secs })
            }
            Err(e) => {
                count_code("provider_failed");
                tracing::warn!(provider = provider.name(), error = %e, "code delivery failed");
                // Forget the code before answering: the mailbox is FIFO, so a
                // retry sent after this answer finds no resend wait.
                let _ = myself.cast(AuthMsg::DeliveryFailed { phone, code });
                Err(AuthError::Provider(e))
            }
        };
        let _ = reply.send(answer);
    });
}

/// Six uniform random digits, leading zeros kept.
fn new_code(rng: &mut impl Rng) -> String {
    format!("{:06}", rng.random_range(0..1_000_000u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        let mut rng = rand::rng();
        let mut saw_leading_zero = false;
        for _ in 0..10_000 {
            let code = new_code(&mut rng);
            assert_eq!(code.len(), 6, "{code}");
            assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
            saw_leading_zero |= code.starts_with('0');
        }
        // P(no leading zero in 10k draws) = 0.9^10000: never.
        assert!(saw_leading_zero);
    }
}
