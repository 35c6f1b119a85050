//! `MintTestUsers`: tokens without codes, for load tests.

use proto::{ErrorCode, PhoneNumber, RequestId, Response};
use ractor::ActorRef;
use subtle::ConstantTimeEq;
use tokio::sync::OwnedSemaphorePermit;

use super::auth_message;
use crate::actor::{SessionMsg, SessionState};

/// Counts a mint request's outcome.
fn count_mint(outcome: &'static str) {
    metrics::counter!("switchboard_admin_mint_total", "outcome" => outcome).increment(1);
}

/// The numbers `first` to `first + count - 1`, if they all start with
/// `prefix` (the test range).
fn test_numbers(first: &PhoneNumber, count: u32, prefix: &str) -> Option<Vec<PhoneNumber>> {
    let phones: Option<Vec<PhoneNumber>> = (0..u64::from(count)).map(|i| first.offset(i)).collect();
    phones.filter(|phones| phones.iter().all(|p| p.as_str().starts_with(prefix)))
}

/// `MintTestUsers`: tokens without codes, for load tests. Only with the
/// node's secret (a wrong one closes the connection), only for numbers in
/// the test range, and never for a number that has an account.
pub(crate) fn mint_test_users(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    id: RequestId,
    permit: OwnedSemaphorePermit,
    secret: &str,
    first: PhoneNumber,
    count: u32,
) {
    let Some(expected) = &state.ctx.config.admin_secret else {
        count_mint("disabled");
        state.responder.error(
            Some(id),
            ErrorCode::InvalidRequest,
            "minting test users is disabled (admin.mint_test_users in the node's config)",
        );
        return;
    };
    // Without an early exit: timing does not tell where they differ.
    if !bool::from(expected.as_bytes().ct_eq(secret.as_bytes())) {
        count_mint("wrong_secret");
        if let Some(suppressed) = crate::LOGS.allow("wrong_admin_secret") {
            tracing::warn!(peer = %state.peer, suppressed,
                "wrong admin secret; closing the connection (logged at most once per interval; \
                 see switchboard_admin_mint_total)");
        }
        state.refuse_and_close(myself, id, ErrorCode::InvalidToken, "wrong admin secret");
        return;
    }
    if count == 0 || count > proto::MAX_MINT_PER_REQUEST {
        count_mint("invalid");
        state.responder.error(
            Some(id),
            ErrorCode::InvalidRequest,
            format!("count must be 1 to {}", proto::MAX_MINT_PER_REQUEST),
        );
        return;
    }
    let prefix = &state.ctx.config.test_number_prefix;
    let Some(phones) = test_numbers(&first, count, prefix) else {
        count_mint("outside_test_range");
        if let Some(suppressed) = crate::LOGS.allow("mint_outside_test_range") {
            tracing::warn!(peer = %state.peer, %first, count, suppressed,
                "test users refused: outside the test range (logged at most once per interval)");
        }
        state.responder.error(
            Some(id),
            ErrorCode::InvalidRequest,
            format!(
                "test users are minted only for numbers starting with {prefix} \
                 (admin.test_number_prefix)"
            ),
        );
        return;
    };
    let minted = state.ctx.services.mint_test_users(phones);
    state.answer_later(id, permit, async move {
        match minted.await {
            Ok(issued) => {
                count_mint("minted");
                Ok(Response::TestUsers {
                    tokens: issued.into_iter().map(|t| t.token).collect(),
                })
            }
            Err(e) => {
                count_mint(if matches!(e, auth::AuthError::AccountExists(_)) {
                    "account_exists"
                } else {
                    "failed"
                });
                Err((e.error_code(), auth_message(&e)))
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_numbers_by_table() {
        /// First number, count, prefix; the last number and count minted.
        type Case<'a> = (&'a str, u32, &'a str, Option<(&'a str, usize)>);
        let cases: &[Case] = &[
            ("+15550000000", 3, "+15550", Some(("+15550000002", 3))),
            ("+15550999999", 1, "+15550", Some(("+15550999999", 1))),
            // Running past the end of the range.
            ("+15550999999", 2, "+15550", None),
            // Outside it.
            ("+15551000000", 1, "+15550", None),
            ("+447911123456", 1, "+15550", None),
            ("+99900000000", 250, "+999", Some(("+99900000249", 250))),
        ];
        for (first, count, prefix, want) in cases {
            let first = PhoneNumber::parse(first).expect("phone");
            let got = test_numbers(&first, *count, prefix);
            let got = got.as_ref().map(|p| (p[p.len() - 1].as_str(), p.len()));
            assert_eq!(got, *want, "{first} x{count} in {prefix}");
        }
    }
}
