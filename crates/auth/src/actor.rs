//! The auth actor: the limits across numbers, and a task per request.
//!
//! The actor holds what only this node counts (the token buckets per
//! source, subnet, node and country) and draws codes. Everything kept per
//! number (the pending code and its counters, the generation, the lock)
//! is in the number's account record (`account`), changed by each
//! request's task, so the actor's mailbox never waits on a fragment or a
//! provider: provider calls and PIN hashes run on Tokio's blocking pool.

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use proto::PhoneNumber;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::account::{Accounts, Loaded};
use crate::codes::{CodeError, CodePolicy, Requester};
use crate::limits::{CodeLimiter, Refusal};
use crate::pin::{DAY_MS, LockPolicy, LockStatus, PinLock};
use crate::provider::{CodeProvider, ProviderError};
use crate::tokens::{IssuedToken, TokenBook};
use crate::{AuthConfig, AuthError, now_ms};
use log_limit::LogLimiter;

/// How often idle limit buckets are dropped from memory.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Refusals and wrong PINs, logged at most once per interval per cause
/// (counters carry the rest: `switchboard_auth_codes_total`,
/// `switchboard_auth_verifies_total`).
static LOGS: LogLimiter = LogLimiter::new();

/// The error for a request `refusal` turned away (`what` it was, from
/// `source`), logged at most once per interval per limit.
fn refused(what: &str, refusal: Refusal, source: Option<IpAddr>) -> AuthError {
    let Refusal {
        limit,
        retry_after_ms,
    } = refusal;
    if let Some(suppressed) = LOGS.allow(limit.as_str()) {
        tracing::warn!(
            limit = limit.as_str(),
            ?source,
            suppressed,
            "{what} refused by a rate limit \
            (logged at most every {} s per limit; see the metrics)",
            log_limit::LOG_INTERVAL.as_secs()
        );
    }
    AuthError::Limited {
        limit,
        retry_after_ms,
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
    /// token (revoking the number's earlier ones) and answer once durable.
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
    /// Internal, from the prune timer: drop idle limit buckets.
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
    pub(crate) accounts: Accounts,
    pub(crate) provider: Arc<dyn CodeProvider>,
}

/// What a request's task needs (cheap to clone).
#[derive(Clone)]
struct Service {
    codes: CodePolicy,
    /// When a registration lock holds and how many wrong PINs it allows.
    lock_policy: LockPolicy,
    tokens: TokenBook,
    accounts: Accounts,
    provider: Arc<dyn CodeProvider>,
}

/// The state of a running [`AuthActor`].
pub struct AuthState {
    service: Service,
    /// Limits across numbers: per source, subnet, node and country
    /// (node-local: they count this node's traffic).
    limiter: CodeLimiter,
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
        let prune_timer = Some(myself.send_interval(PRUNE_EVERY, || AuthMsg::Prune));
        tracing::info!(provider = args.provider.name(), "auth service started");
        Ok(AuthState {
            service: Service {
                codes: policy(&args.config),
                lock_policy: lock_policy(&args.config),
                tokens: args.tokens,
                accounts: args.accounts,
                provider: args.provider,
            },
            limiter: CodeLimiter::new(args.config.limits.clone(), now_ms()),
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
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Every error here is the client's or a dependency's: it is answered,
        // and the actor goes on. Nothing in this handler needs a restart.
        // The limits are checked here, in order; the account record is read
        // and written by a task per request, so that a fragment on another
        // node never holds this mailbox up.
        match message {
            AuthMsg::RequestCode {
                phone,
                source,
                reply,
            } => request_code(state, phone, source, reply),
            AuthMsg::Verify {
                phone,
                code,
                pin,
                source,
                reply,
            } => {
                let now = now_ms();
                if let Err(refusal) = state.limiter.verify_attempt(source, now) {
                    let e = refused("verify attempt", refusal, source);
                    count_verify(e.outcome());
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                let service = state.service.clone();
                tokio::spawn(async move {
                    let answer = service.verify(phone, code, pin, source).await;
                    if let Err(e) = &answer {
                        count_verify(e.outcome());
                    }
                    let _ = reply.send(answer);
                });
            }
            AuthMsg::Prune => {
                let buckets = state.limiter.prune(now_ms());
                metrics::gauge!("switchboard_auth_limit_buckets").set(buckets as f64);
            }
        }
        Ok(())
    }
}

/// What the first look at a verify found.
enum FirstCheck {
    /// Verified (no lock): the account's new generation.
    Verified(u64),
    /// The code was wrong, expired or tried too often.
    Refused(CodeError),
    /// The code is right and the number locked: the PIN decides.
    Locked { attempts_left: u32, lock: PinLock },
}

/// A number just proved: its earlier tokens are revoked (the generation
/// rises), it was active now, and its wrong PINs are forgotten.
pub(crate) fn verified(loaded: &mut Loaded, now: u64) -> u64 {
    loaded.generation = loaded.generation.saturating_add(1);
    let account = &mut loaded.account;
    account.last_active_ms = now;
    account.pin_failures_ms.clear();
    account.created_at_ms.get_or_insert(now);
    loaded.generation
}

impl Service {
    /// A verify attempt within the limits: the code (counted against its
    /// requester), then, for a number with a registration lock, the PIN on
    /// the blocking pool. Every step's counters are stored in the record.
    async fn verify(
        &self,
        phone: PhoneNumber,
        code: String,
        pin: Option<String>,
        source: Option<IpAddr>,
    ) -> Result<IssuedToken, AuthError> {
        let now = now_ms();
        let by = Requester::of(source);
        let (codes, lock_policy) = (self.codes, self.lock_policy);
        let pin_given = pin.is_some();
        let first = self
            .accounts
            .update(&phone, |loaded| {
                let account = &loaded.account;
                let status = lock_policy.status(
                    account.lock.as_ref(),
                    account.last_active_ms,
                    &account.pin_failures_ms,
                    now,
                );
                let lock = account.lock.clone();
                match (status, lock) {
                    (LockStatus::Locked { attempts_left }, Some(lock)) => {
                        // The code first (not consumed), so that only a
                        // holder of the SMS code may try PINs.
                        if let Err(e) = loaded.account.codes.verify(&codes, &code, by, now, false) {
                            return FirstCheck::Refused(e);
                        }
                        if pin_given && attempts_left > 0 {
                            // The try counts as wrong before the slow hash,
                            // so that tries made at once all see it; a match
                            // clears it with the others (`verified`).
                            let failures = &mut loaded.account.pin_failures_ms;
                            failures.retain(|&t| t.saturating_add(DAY_MS) > now);
                            failures.push(now);
                        }
                        FirstCheck::Locked {
                            attempts_left,
                            lock,
                        }
                    }
                    _ => match loaded.account.codes.verify(&codes, &code, by, now, true) {
                        Ok(()) => FirstCheck::Verified(verified(loaded, now)),
                        Err(e) => FirstCheck::Refused(e),
                    },
                }
            })
            .await?;
        let generation = match first {
            FirstCheck::Verified(generation) => generation,
            FirstCheck::Refused(e) => return Err(e.into()),
            FirstCheck::Locked {
                attempts_left,
                lock,
            } => {
                let Some(pin) = pin else {
                    count_verify("pin_required");
                    return Err(AuthError::RegistrationLocked { attempts_left });
                };
                if attempts_left == 0 {
                    count_verify("pin_attempts_used_up");
                    return Err(AuthError::RegistrationLocked { attempts_left });
                }
                let matched = tokio::task::spawn_blocking(move || lock.matches(&pin))
                    .await
                    .map_err(|e| AuthError::unavailable(format!("PIN check failed: {e}")))?;
                if !matched {
                    count_verify("wrong_pin");
                    if let Some(suppressed) = LOGS.allow("wrong_pin") {
                        tracing::warn!(
                            ?source,
                            suppressed,
                            "a wrong registration-lock PIN (logged at most every {} s; \
                            see switchboard_auth_verifies_total)",
                            log_limit::LOG_INTERVAL.as_secs()
                        );
                    }
                    return Err(AuthError::RegistrationLocked {
                        attempts_left: attempts_left - 1,
                    });
                }
                self.accounts
                    .update(&phone, |loaded| {
                        loaded
                            .account
                            .codes
                            .verify(&codes, &code, by, now, true)
                            .map(|()| verified(loaded, now))
                    })
                    .await??
            }
        };
        tracing::debug!(%phone, generation, "code verified");
        let issued = self.tokens.issue(&phone, generation, now).await;
        match &issued {
            Ok(_) => count_verify("verified"),
            Err(e) => tracing::error!(error = %e, "cannot store a new token"),
        }
        issued
    }

    /// Stores `code` as `phone`'s pending code (within the number's own
    /// limits) and hands it to the provider.
    async fn send_code(&self, phone: PhoneNumber, code: String) -> Result<CodeSent, AuthError> {
        let now = now_ms();
        let codes = self.codes;
        let issued = self
            .accounts
            .update(&phone, |loaded| {
                loaded.account.codes.request(&codes, code.clone(), now)
            })
            .await??;
        let expires_in_secs =
            u32::try_from(issued.expires_at_ms.saturating_sub(now) / 1_000).unwrap_or(u32::MAX);
        let provider = Arc::clone(&self.provider);
        let (to, sent) = (phone.clone(), code.clone());
        let delivered = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| provider.deliver(&to, &sent)))
                .unwrap_or_else(|_| Err(ProviderError::Other("the provider panicked".into())))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ProviderError::Other(format!(
                "the delivery task failed: {e}"
            )))
        });
        match delivered {
            Ok(()) => {
                count_code("sent");
                Ok(CodeSent { expires_in_secs })
            }
            Err(e) => {
                count_code("provider_failed");
                tracing::warn!(provider = self.provider.name(), error = %e, "code delivery failed");
                // Forget the code before answering, so that a retry sent
                // after this answer finds no resend wait.
                if let Err(forget) = self
                    .accounts
                    .update(&phone, |loaded| loaded.account.codes.cancel(&code))
                    .await
                {
                    tracing::warn!(error = %forget, "cannot forget a code that was not sent");
                }
                Err(AuthError::Provider(e))
            }
        }
    }
}

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

fn lock_policy(config: &AuthConfig) -> LockPolicy {
    LockPolicy {
        lapse_ms: config
            .registration_lock_lapse_days
            .saturating_mul(86_400_000),
        max_failures_per_day: config.max_pin_attempts_per_day,
    }
}

fn request_code(
    state: &mut AuthState,
    phone: PhoneNumber,
    source: Option<IpAddr>,
    reply: RpcReplyPort<Result<CodeSent, AuthError>>,
) {
    let now = now_ms();
    // The limits across numbers first: a flood is refused before it costs
    // a delivery slot.
    if let Err(refusal) = state.limiter.check_code(source, &phone, now) {
        let e = refused("code request", refusal, source);
        count_code(e.outcome());
        let _ = reply.send(Err(e));
        return;
    }
    // Taken now, before the number's own limits are read from its record:
    // requests in flight at once must not all pass on the same tokens. So
    // a request the number's limits then refuse, or whose delivery fails,
    // still counts (a flood of those must not get around the limits).
    state.limiter.issued(source, &phone, now);
    let Ok(permit) = Arc::clone(&state.deliveries).try_acquire_owned() else {
        tracing::warn!("too many verification codes in flight to the provider");
        count_code("unavailable");
        let _ = reply.send(Err(AuthError::unavailable(
            "too many verification codes in flight",
        )));
        return;
    };
    let code = new_code(&mut rand::rng());
    let service = state.service.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let answer = service.send_code(phone, code).await;
        if let Err(e) = &answer
            && !matches!(e, AuthError::Provider(_))
        {
            count_code(e.outcome());
        }
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
