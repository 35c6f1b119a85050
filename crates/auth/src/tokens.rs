//! Login tokens.
//!
//! A token is 32 random bytes, given to the client as 64 lowercase hex
//! characters. The node keeps only the SHA-256 of the bytes, so a copy of the
//! database does not hold working tokens. Table:
//!
//! - `auth_tokens`: SHA-256 of the token (32 bytes) → postcard of
//!   `{phone, issued_at_ms, expires_at_ms, generation}`.
//!
//! Revocation: every token carries the generation of its account at issue.
//! The generation lives in the number's account record (see `account`),
//! with its mailbox fragment, which refuses to attach a session of a lower
//! generation and closes one attached when the generation rises: a login
//! with a revoked token fails on every node.
//!
//! Writes go through the store's group commit; lookups are plain read
//! transactions from any thread, so logins never queue behind an actor.
//!
//! With a token key (`auth.token_key`, the same on every node of a
//! cluster) tokens are signed instead: `s2.<hex payload>.<hex HMAC-SHA256>`,
//! the payload holding the expiry, the generation, 16 random bytes and the
//! phone. Any node with the key checks their signature without a lookup, so
//! a client that fails over to another node logs in there with the same
//! token. `s1.` tokens (from before generations) count as generation 0, as
//! do stored tokens without one. Stored tokens issued before a key was set
//! keep working on the node that issued them.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use proto::PhoneNumber;
use rand::Rng;
use redb::{ReadableDatabase, TableDefinition, TableError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{StorageError, Store};

use crate::{AuthError, Result};

/// Token hash → [`TokenRecord`] (postcard).
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("auth_tokens");
/// Raw token length in bytes (256 bits).
const TOKEN_BYTES: usize = 32;

/// Prefix of signed tokens (and their format version): with a generation.
const SIGNED_PREFIX: &str = "s2.";
/// Signed tokens from before generations (generation 0).
const SIGNED_PREFIX_V1: &str = "s1.";

/// Random bytes in a signed token, so that two tokens never repeat.
const SIGNED_NONCE_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// What is stored under a token's hash.
#[derive(Debug, Serialize, Deserialize)]
struct TokenRecord {
    phone: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
    /// The account's generation at issue (absent in records written
    /// before generations: decoded as [`TokenRecordV1`], generation 0).
    generation: u64,
}

/// A token record from before generations.
#[derive(Debug, Deserialize)]
struct TokenRecordV1 {
    phone: String,
    #[allow(dead_code)]
    issued_at_ms: u64,
    expires_at_ms: u64,
}

impl TokenRecord {
    fn decode(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes::<TokenRecord>(bytes)
            .or_else(|_| {
                postcard::from_bytes::<TokenRecordV1>(bytes).map(|v1| TokenRecord {
                    phone: v1.phone,
                    issued_at_ms: v1.issued_at_ms,
                    expires_at_ms: v1.expires_at_ms,
                    generation: 0,
                })
            })
            .map_err(|e| corrupt(format!("token record: {e}")))
    }
}

/// A token that passed a login: whose, and of which generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The account.
    pub phone: PhoneNumber,
    /// The account's generation when the token was issued; a revocation
    /// raises the account's past it.
    pub generation: u64,
}

/// A token just issued: give it to the client, it is not stored anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer token, 64 lowercase hex characters.
    pub token: String,
    /// When it stops working (ms since the epoch).
    pub expires_at_ms: u64,
    /// The account's generation it was issued in: sessions of earlier
    /// tokens of the account are to be closed.
    pub generation: u64,
}

impl fmt::Debug for IssuedToken {
    /// Keeps the token out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("generation", &self.generation)
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

    fn signed_token(
        key: &[u8],
        phone: &PhoneNumber,
        generation: u64,
        expires_at_ms: u64,
    ) -> Result<String> {
        let mut payload = expires_at_ms.to_be_bytes().to_vec();
        payload.extend_from_slice(&generation.to_be_bytes());
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

    /// The phone and generation of a signed token, if its signature holds
    /// and it has not expired at `now_ms`.
    fn check_signed(key: &[u8], token: &str, now_ms: u64) -> Result<(PhoneNumber, u64)> {
        let (prefix, rest) = if let Some(rest) = token.strip_prefix(SIGNED_PREFIX) {
            (SIGNED_PREFIX, rest)
        } else if let Some(rest) = token.strip_prefix(SIGNED_PREFIX_V1) {
            (SIGNED_PREFIX_V1, rest)
        } else {
            return Err(AuthError::InvalidToken);
        };
        let (payload_hex, tag_hex) = rest.split_once('.').ok_or(AuthError::InvalidToken)?;
        let payload = hex::decode(payload_hex).map_err(|_| AuthError::InvalidToken)?;
        let tag = hex::decode(tag_hex).map_err(|_| AuthError::InvalidToken)?;
        let mut mac = Self::mac(key)?;
        mac.update(prefix.as_bytes());
        mac.update(&payload);
        // Constant-time comparison.
        mac.verify_slice(&tag)
            .map_err(|_| AuthError::InvalidToken)?;
        let take_u64 = |bytes: &[u8]| -> Result<u64> {
            Ok(u64::from_be_bytes(
                bytes.try_into().map_err(|_| AuthError::InvalidToken)?,
            ))
        };
        let (expiry, rest) = payload.split_at_checked(8).ok_or(AuthError::InvalidToken)?;
        let expires_at_ms = take_u64(expiry)?;
        let (generation, rest) = if prefix == SIGNED_PREFIX {
            let (generation, rest) = rest.split_at_checked(8).ok_or(AuthError::InvalidToken)?;
            (take_u64(generation)?, rest)
        } else {
            (0, rest)
        };
        if now_ms >= expires_at_ms {
            return Err(AuthError::InvalidToken);
        }
        let phone = rest
            .get(SIGNED_NONCE_BYTES..)
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or(AuthError::InvalidToken)?;
        let phone = PhoneNumber::parse(phone).map_err(|_| AuthError::InvalidToken)?;
        Ok((phone, generation))
    }

    /// Mints a token for `phone` of the account's `generation` (already
    /// raised in its record), durable when returned: a signed token needs
    /// no write; a stored one waits for its group commit.
    pub async fn issue(
        &self,
        phone: &PhoneNumber,
        generation: u64,
        now_ms: u64,
    ) -> Result<IssuedToken> {
        let expires_at_ms = now_ms.saturating_add(self.ttl_ms);
        if let Some(key) = &self.key {
            let token = Self::signed_token(key, phone, generation, expires_at_ms)?;
            return Ok(IssuedToken {
                token,
                expires_at_ms,
                generation,
            });
        }
        let mut raw = [0u8; TOKEN_BYTES];
        // ThreadRng is a CSPRNG (ChaCha, seeded and reseeded from the OS).
        rand::rng().fill(&mut raw);
        let record = TokenRecord {
            phone: phone.as_str().to_owned(),
            issued_at_ms: now_ms,
            expires_at_ms,
            generation,
        };
        let value = postcard::to_stdvec(&record)
            .map_err(|e| corrupt(format!("cannot encode a token record: {e}")))?;
        let hash = token_hash(&raw);
        self.store
            .write(move |txn| {
                txn.open_table(TOKENS)?
                    .insert(hash.as_slice(), value.as_slice())?;
                Ok(())
            })
            .await?;
        Ok(IssuedToken {
            token: hex::encode(raw),
            expires_at_ms,
            generation,
        })
    }

    /// The phone `token` belongs to (see [`TokenBook::authenticate`]).
    pub fn lookup(&self, token: &str, now_ms: u64) -> Result<PhoneNumber> {
        self.authenticate(token, now_ms).map(|a| a.phone)
    }

    /// The phone and generation of `token`, if the token is well formed,
    /// known and not expired at `now_ms`; [`AuthError::InvalidToken`]
    /// otherwise. Whether its generation is revoked is the fragment's to
    /// say at attach. Runs a read transaction for a stored token (blocking,
    /// usually on cached pages).
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Authenticated> {
        let signed = token.starts_with(SIGNED_PREFIX) || token.starts_with(SIGNED_PREFIX_V1);
        let (phone, generation) = if signed {
            match &self.key {
                Some(key) => Self::check_signed(key, token, now_ms)?,
                None => return Err(AuthError::InvalidToken),
            }
        } else {
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
            let record = TokenRecord::decode(value.value())?;
            if now_ms >= record.expires_at_ms {
                return Err(AuthError::InvalidToken);
            }
            let phone = PhoneNumber::parse(&record.phone)
                .map_err(|e| corrupt(format!("token record phone: {e}")))?;
            (phone, record.generation)
        };
        Ok(Authenticated { phone, generation })
    }
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

    use redb::ReadableTable;

    use super::*;

    const DAY_MS: u64 = 86_400_000;

    use test_support::phone;

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
        let issued = book.issue(&alice, 1, 1_000).await.expect("issue");
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
            .issue(&phone("+15551234567"), 1, 0)
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
    async fn only_the_hash_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(&dir);
        let alice = phone("+15551234567");
        let first = book.issue(&alice, 1, 5).await.expect("issue");
        let second = book.issue(&alice, 1, 9).await.expect("issue");
        assert_ne!(first.token, second.token);

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
                let issued = book.issue(&p, 1, 0).await.expect("issue");
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
        let issued = node_a.issue(&alice, 1, 1_000).await.expect("issued");
        assert!(issued.token.starts_with(SIGNED_PREFIX));
        assert_eq!(node_a.lookup(&issued.token, 2_000).expect("a"), alice);
        assert_eq!(node_b.lookup(&issued.token, 2_000).expect("b"), alice);

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
