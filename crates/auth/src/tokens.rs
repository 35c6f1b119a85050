//! Login tokens and accounts, persisted in the node's [`Store`].
//!
//! A token is 32 random bytes, given to the client as 64 lowercase hex
//! characters. The node keeps only the SHA-256 of the bytes, so a copy of the
//! database does not hold working tokens. Tables:
//!
//! - `auth_tokens`: SHA-256 of the token (32 bytes) → postcard of
//!   `{phone, issued_at_ms, expires_at_ms}`.
//! - `auth_accounts`: phone → when it was first verified (ms since the epoch).
//!
//! Writes go through the store's group commit; lookups are plain read
//! transactions from any thread, so logins never queue behind an actor.
//!
//! With a token key (`auth.token_key`, the same on every node of a
//! cluster) tokens are signed instead: `s1.<hex payload>.<hex HMAC-SHA256>`,
//! the payload holding the expiry, 16 random bytes and the phone. Any node
//! with the key checks them without a lookup, so a client that fails over
//! to another node logs in there with the same token. Stored tokens issued
//! before a key was set keep working on the node that issued them.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use proto::PhoneNumber;
use rand::Rng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{StorageError, Store};

use crate::{AuthError, Result};

/// Token hash → [`TokenRecord`] (postcard).
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("auth_tokens");
/// Phone (E.164) → first verification time in ms.
const ACCOUNTS: TableDefinition<&str, u64> = TableDefinition::new("auth_accounts");

/// Raw token length in bytes (256 bits).
const TOKEN_BYTES: usize = 32;

/// Prefix of signed tokens (and their format version).
const SIGNED_PREFIX: &str = "s1.";

/// Random bytes in a signed token, so that two tokens never repeat.
const SIGNED_NONCE_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// What is stored under a token's hash.
#[derive(Debug, Serialize, Deserialize)]
struct TokenRecord {
    phone: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
}

/// A token just issued: give it to the client, it is not stored anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer token, 64 lowercase hex characters.
    pub token: String,
    /// When it stops working (ms since the epoch).
    pub expires_at_ms: u64,
}

impl fmt::Debug for IssuedToken {
    /// Keeps the token out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// Issues and checks tokens. Cheap to clone; every clone shares the store.
#[derive(Clone)]
pub struct TokenBook {
    store: Store,
    ttl_ms: u64,
    /// Signs tokens when set (see the module docs).
    key: Option<std::sync::Arc<[u8]>>,
}

impl fmt::Debug for TokenBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBook")
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl TokenBook {
    /// Tokens in `store`, each valid for `ttl` after issue.
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            key: None,
        }
    }

    /// Signs new tokens with `key` (and accepts tokens signed with it).
    pub fn with_key(mut self, key: Option<&[u8]>) -> Self {
        self.key = key.map(Into::into);
        self
    }

    fn mac(key: &[u8]) -> Result<HmacSha256> {
        HmacSha256::new_from_slice(key)
            .map_err(|e| AuthError::InvalidConfig(format!("auth.token_key: {e}")))
    }

    fn signed_token(key: &[u8], phone: &PhoneNumber, expires_at_ms: u64) -> Result<String> {
        let mut payload = expires_at_ms.to_be_bytes().to_vec();
        let mut nonce = [0u8; SIGNED_NONCE_BYTES];
        rand::rng().fill(&mut nonce);
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(phone.as_str().as_bytes());
        let mut mac = Self::mac(key)?;
        mac.update(SIGNED_PREFIX.as_bytes());
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        Ok(format!(
            "{SIGNED_PREFIX}{}.{}",
            hex::encode(&payload),
            hex::encode(tag)
        ))
    }

    fn check_signed(key: &[u8], token: &str, now_ms: u64) -> Result<PhoneNumber> {
        let rest = token
            .strip_prefix(SIGNED_PREFIX)
            .ok_or(AuthError::InvalidToken)?;
        let (payload_hex, tag_hex) = rest.split_once('.').ok_or(AuthError::InvalidToken)?;
        let payload = hex::decode(payload_hex).map_err(|_| AuthError::InvalidToken)?;
        let tag = hex::decode(tag_hex).map_err(|_| AuthError::InvalidToken)?;
        let mut mac = Self::mac(key)?;
        mac.update(SIGNED_PREFIX.as_bytes());
        mac.update(&payload);
        // Constant-time comparison.
        mac.verify_slice(&tag)
            .map_err(|_| AuthError::InvalidToken)?;
        let (expiry, rest) = payload.split_at_checked(8).ok_or(AuthError::InvalidToken)?;
        let expires_at_ms =
            u64::from_be_bytes(expiry.try_into().map_err(|_| AuthError::InvalidToken)?);
        if now_ms >= expires_at_ms {
            return Err(AuthError::InvalidToken);
        }
        let phone = rest
            .get(SIGNED_NONCE_BYTES..)
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or(AuthError::InvalidToken)?;
        PhoneNumber::parse(phone).map_err(|_| AuthError::InvalidToken)
    }

    /// Mints a token for `phone` (recording the account if new) and waits
    /// until it is durable. Needs no code: for the verify path and for admin
    /// tools that create test users.
    pub async fn issue_token(&self, phone: &PhoneNumber, now_ms: u64) -> Result<IssuedToken> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.issue_with(phone, now_ms, move |result| {
            let _ = tx.send(result);
        });
        rx.await
            .unwrap_or(Err(AuthError::Storage(StorageError::Closed)))
    }

    /// Mints a token for `phone` and calls `done` once it is durable. `done`
    /// runs on the storage writer thread: it must only hand the result on
    /// (e.g. send a reply). Never blocks the caller.
    pub fn issue_with<C>(&self, phone: &PhoneNumber, now_ms: u64, done: C)
    where
        C: FnOnce(Result<IssuedToken>) + Send + 'static,
    {
        let expires_at_ms = now_ms.saturating_add(self.ttl_ms);
        if let Some(key) = &self.key {
            let issued = Self::signed_token(key, phone, expires_at_ms).map(|token| IssuedToken {
                token,
                expires_at_ms,
            });
            let issued = match issued {
                Ok(issued) => issued,
                Err(e) => return done(Err(e)),
            };
            let account = phone.as_str().to_owned();
            self.store.submit(
                move |txn| record_account(txn, &account, now_ms),
                move |outcome| done(outcome.map(|()| issued).map_err(AuthError::from)),
            );
            return;
        }
        let mut raw = [0u8; TOKEN_BYTES];
        // ThreadRng is a CSPRNG (ChaCha, seeded and reseeded from the OS).
        rand::rng().fill(&mut raw);
        let hash = token_hash(&raw);
        let record = TokenRecord {
            phone: phone.as_str().to_owned(),
            issued_at_ms: now_ms,
            expires_at_ms,
        };
        let value = match postcard::to_stdvec(&record) {
            Ok(value) => value,
            Err(e) => {
                done(Err(AuthError::Storage(StorageError::Corrupt(format!(
                    "cannot encode a token record: {e}"
                )))));
                return;
            }
        };
        let issued = IssuedToken {
            token: hex::encode(raw),
            expires_at_ms,
        };
        let account = record.phone;
        self.store.submit(
            move |txn| {
                txn.open_table(TOKENS)?
                    .insert(hash.as_slice(), value.as_slice())?;
                record_account(txn, &account, now_ms)
            },
            move |outcome| done(outcome.map(|()| issued).map_err(AuthError::from)),
        );
    }

    /// The phone `token` belongs to, if the token is well formed, known and
    /// not expired at `now_ms`; [`AuthError::InvalidToken`] otherwise. Runs a
    /// read transaction (blocking, usually on cached pages).
    pub fn lookup(&self, token: &str, now_ms: u64) -> Result<PhoneNumber> {
        if token.starts_with(SIGNED_PREFIX) {
            return match &self.key {
                Some(key) => Self::check_signed(key, token, now_ms),
                None => Err(AuthError::InvalidToken),
            };
        }
        let raw = parse_token(token).ok_or(AuthError::InvalidToken)?;
        let hash = token_hash(&raw);
        let read = self.store.db().begin_read().map_err(engine)?;
        let table = match read.open_table(TOKENS) {
            Ok(table) => table,
            // No token was ever issued on this database.
            Err(TableError::TableDoesNotExist(_)) => return Err(AuthError::InvalidToken),
            Err(e) => return Err(engine(e)),
        };
        let Some(value) = table.get(hash.as_slice()).map_err(engine)? else {
            return Err(AuthError::InvalidToken);
        };
        let record: TokenRecord = postcard::from_bytes(value.value())
            .map_err(|e| corrupt(format!("token record: {e}")))?;
        if now_ms >= record.expires_at_ms {
            return Err(AuthError::InvalidToken);
        }
        PhoneNumber::parse(&record.phone).map_err(|e| corrupt(format!("token record phone: {e}")))
    }

    /// When `phone` was first verified, if ever.
    pub fn account_created_at(&self, phone: &PhoneNumber) -> Result<Option<u64>> {
        let read = self.store.db().begin_read().map_err(engine)?;
        let table = match read.open_table(ACCOUNTS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(engine(e)),
        };
        let created = table.get(phone.as_str()).map_err(engine)?;
        Ok(created.map(|v| v.value()))
    }
}

/// Records `phone`'s first verification, once.
fn record_account(
    txn: &redb::WriteTransaction,
    phone: &str,
    now_ms: u64,
) -> std::result::Result<(), StorageError> {
    let mut accounts = txn.open_table(ACCOUNTS)?;
    if accounts.get(phone)?.is_none() {
        accounts.insert(phone, now_ms)?;
    }
    Ok(())
}

/// The raw bytes of a well-formed token: exactly 64 hex digits.
fn parse_token(token: &str) -> Option<[u8; TOKEN_BYTES]> {
    let mut raw = [0u8; TOKEN_BYTES];
    if token.len() != TOKEN_BYTES * 2 {
        return None;
    }
    hex::decode_to_slice(token, &mut raw).ok()?;
    Some(raw)
}

fn token_hash(raw: &[u8; TOKEN_BYTES]) -> [u8; 32] {
    Sha256::digest(raw).into()
}

fn engine(e: impl Into<StorageError>) -> AuthError {
    AuthError::Storage(e.into())
}

fn corrupt(reason: String) -> AuthError {
    AuthError::Storage(StorageError::Corrupt(reason))
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata;
    use storage::StoreOptions;

    use super::*;

    const DAY_MS: u64 = 86_400_000;

    fn phone(s: &str) -> PhoneNumber {
        PhoneNumber::parse(s).expect("valid phone")
    }

    fn book(dir: &tempfile::TempDir) -> TokenBook {
        let store =
            Store::open(&dir.path().join("db.redb"), StoreOptions::default()).expect("open");
        TokenBook::new(store, Duration::from_millis(90 * DAY_MS))
    }

    #[tokio::test]
    async fn issue_then_lookup_until_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(&dir);
        let alice = phone("+15551234567");
        let issued = book.issue_token(&alice, 1_000).await.expect("issue");
        assert_eq!(issued.token.len(), 64);
        assert!(
            issued
                .token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(issued.expires_at_ms, 1_000 + 90 * DAY_MS);
        assert_eq!(book.lookup(&issued.token, 1_000).expect("valid"), alice);
        assert_eq!(
            book.lookup(&issued.token, issued.expires_at_ms - 1)
                .expect("valid until the end"),
            alice
        );
        assert!(matches!(
            book.lookup(&issued.token, issued.expires_at_ms),
            Err(AuthError::InvalidToken)
        ));
        assert!(!format!("{issued:?}").contains(&issued.token));
    }

    #[tokio::test]
    async fn malformed_and_unknown_tokens_are_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(&dir);
        let junk = [
            "",
            "abc",
            "zz",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            &"é".repeat(32),
            &"0".repeat(10_000),
        ];
        // Before any token exists (no table yet) and after.
        for token in junk.iter().chain([&"0".repeat(64).as_str()]) {
            assert!(
                matches!(book.lookup(token, 0), Err(AuthError::InvalidToken)),
                "{token:?}"
            );
        }
        let issued = book
            .issue_token(&phone("+15551234567"), 0)
            .await
            .expect("issue");
        for token in junk.iter().chain([&"0".repeat(64).as_str()]) {
            assert!(
                matches!(book.lookup(token, 0), Err(AuthError::InvalidToken)),
                "{token:?}"
            );
        }
        // Flip the last hex digit: a different, unknown token.
        let mut other = issued.token.clone();
        let last = if other.ends_with('0') { "1" } else { "0" };
        other.replace_range(63.., last);
        assert!(matches!(
            book.lookup(&other, 0),
            Err(AuthError::InvalidToken)
        ));
    }

    #[tokio::test]
    async fn only_the_hash_is_stored_and_accounts_are_recorded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(&dir);
        let alice = phone("+15551234567");
        assert_eq!(book.account_created_at(&alice).expect("read"), None);
        let first = book.issue_token(&alice, 5).await.expect("issue");
        let second = book.issue_token(&alice, 9).await.expect("issue");
        assert_ne!(first.token, second.token);
        assert_eq!(book.account_created_at(&alice).expect("read"), Some(5));

        let read = book.store.db().begin_read().expect("read");
        let table = read.open_table(TOKENS).expect("table");
        assert_eq!(table.len().expect("len"), 2);
        let raw = parse_token(&first.token).expect("well formed");
        assert!(
            table
                .get(token_hash(&raw).as_slice())
                .expect("get")
                .is_some()
        );
        for entry in table.iter().expect("iter") {
            let (key, value) = entry.expect("entry");
            for token in [&first.token, &second.token] {
                let raw = parse_token(token).expect("well formed");
                assert_ne!(key.value(), raw.as_slice(), "raw token stored as key");
                let value = value.value();
                assert!(
                    !value.windows(raw.len()).any(|w| w == raw.as_slice()),
                    "raw token in value"
                );
                assert!(
                    !value.windows(token.len()).any(|w| w == token.as_bytes()),
                    "hex token in value"
                );
            }
        }
    }

    #[tokio::test]
    async fn bulk_issue_for_test_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(&dir);
        let mut waits = Vec::new();
        for i in 0..200u32 {
            let book = book.clone();
            waits.push(tokio::spawn(async move {
                let p = phone(&format!("+1555{i:07}"));
                let issued = book.issue_token(&p, 0).await.expect("issue");
                (p, issued)
            }));
        }
        for wait in waits {
            let (p, issued) = wait.await.expect("join");
            assert_eq!(book.lookup(&issued.token, 1).expect("lookup"), p);
        }
    }

    #[test]
    fn corrupt_record_is_a_storage_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(&dir);
        let raw = [7u8; TOKEN_BYTES];
        let hash = token_hash(&raw);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(book.store.write(move |txn| {
            txn.open_table(TOKENS)?
                .insert(hash.as_slice(), [0xffu8, 0xff, 0xff].as_slice())?;
            Ok(())
        }))
        .expect("write");
        let err = book.lookup(&hex::encode(raw), 0).expect_err("corrupt");
        assert!(
            matches!(err, AuthError::Storage(StorageError::Corrupt(_))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn signed_tokens_work_on_every_node_with_the_key_and_nowhere_else() {
        let key = b"a cluster-wide key of 32 bytes!!";
        let (dir_a, dir_b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let node_a = book(&dir_a).with_key(Some(key));
        let node_b = book(&dir_b).with_key(Some(key));
        let alice = phone("+15550001234");
        let issued = node_a.issue_token(&alice, 1_000).await.expect("issued");
        assert!(issued.token.starts_with(SIGNED_PREFIX));
        assert_eq!(node_a.lookup(&issued.token, 2_000).expect("a"), alice);
        assert_eq!(node_b.lookup(&issued.token, 2_000).expect("b"), alice);
        assert!(
            node_a
                .account_created_at(&alice)
                .expect("account")
                .is_some()
        );

        // Expired, tampered, forged with another key, or without a key: refused.
        let expired = issued.expires_at_ms;
        assert!(matches!(
            node_b.lookup(&issued.token, expired),
            Err(AuthError::InvalidToken)
        ));
        let mut tampered = issued.token.clone().into_bytes();
        let flip = SIGNED_PREFIX.len() + 20;
        tampered[flip] = if tampered[flip] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(matches!(
            node_b.lookup(&tampered, 2_000),
            Err(AuthError::InvalidToken)
        ));
        let other = book(&tempfile::tempdir().expect("c"))
            .with_key(Some(b"another key of thirty-two bytes!"));
        assert!(matches!(
            other.lookup(&issued.token, 2_000),
            Err(AuthError::InvalidToken)
        ));
        let keyless = book(&tempfile::tempdir().expect("d"));
        assert!(matches!(
            keyless.lookup(&issued.token, 2_000),
            Err(AuthError::InvalidToken)
        ));
        for garbage in ["s1.", "s1.zz.zz", "s1.00.", "s1..00"] {
            assert!(matches!(
                node_a.lookup(garbage, 2_000),
                Err(AuthError::InvalidToken)
            ));
        }
    }
}
