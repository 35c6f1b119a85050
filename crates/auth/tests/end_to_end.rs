//! The auth service end to end: a real store in a temp dir, a real file
//! provider, the mailbox fragment that keeps the account records, the
//! actor, and the handle's public API.
//!
//! Fragment actors are registered by name (`fragment-0`), one per process:
//! the tests take turns ([`Accounts::start`] holds a lock until dropped).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use auth::{
    AuthConfig, AuthError, AuthHandle, CodeProvider, FileProvider, ProviderError, spawn_auth,
};
use offline_queue::{
    FragmentActor, FragmentArgs, FragmentConfig, FragmentDirectory, FragmentMsg, fragment_name,
};
use proto::{ErrorCode, PhoneNumber};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use router::Placement;
use storage::{Store, StoreOptions};

use test_support::phone;

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("node.redb")
}

fn open_store(dir: &tempfile::TempDir) -> Store {
    Store::open(&db_path(dir), StoreOptions::default()).expect("open store")
}

fn codes_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("codes").join("verification-codes.log")
}

/// The last code the file provider wrote for `phone`.
fn last_code(file: &Path, phone: &PhoneNumber) -> String {
    test_support::code_for(file, phone)
}

/// A code that is not `code`.
fn wrong_code(code: &str) -> String {
    let n: u32 = code.parse().expect("digits");
    format!("{:06}", (n + 1) % 1_000_000)
}

/// The account records: one mailbox fragment over the test's store,
/// stopped when dropped.
struct Accounts {
    accounts: auth::Accounts,
    fragment: ActorRef<FragmentMsg>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

static FRAGMENT_TURN: std::sync::LazyLock<Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Mutex::new(())));

impl Accounts {
    async fn start(store: &Store) -> Self {
        let turn = Arc::clone(&FRAGMENT_TURN).lock_owned().await;
        // The previous test's fragment may still be stopping.
        while ractor::registry::where_is(fragment_name(0)).is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let placement = Placement::new(1).expect("placement");
        let args = FragmentArgs {
            id: 0,
            placement,
            config: FragmentConfig::default(),
            store: store.clone(),
            on_start: None,
            cluster: None,
        };
        let (fragment, _) = Actor::spawn(Some(fragment_name(0)), FragmentActor, args)
            .await
            .expect("spawn fragment");
        let directory = FragmentDirectory::new(placement);
        Self {
            accounts: auth::Accounts::new(directory, Duration::from_secs(5)),
            fragment,
            _turn: turn,
        }
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.fragment.stop(None);
    }
}

async fn start(
    dir: &tempfile::TempDir,
    store: Store,
) -> (AuthHandle, ractor::concurrency::JoinHandle<()>, Accounts) {
    let provider = Arc::new(FileProvider::new(codes_file(dir)));
    start_with(store, provider).await
}

/// Like [`start`], with another provider.
async fn start_with(
    store: Store,
    provider: Arc<dyn CodeProvider>,
) -> (AuthHandle, ractor::concurrency::JoinHandle<()>, Accounts) {
    let accounts = Accounts::start(&store).await;
    let (auth, join) = spawn_auth(
        AuthConfig::default(),
        store,
        accounts.accounts.clone(),
        provider,
        None,
    )
    .await
    .expect("spawn auth");
    (auth, join, accounts)
}

#[tokio::test]
async fn request_verify_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, _join, _accounts) = start(&dir, open_store(&dir)).await;
    let alice = phone("+15551234567");

    let sent = auth.request_code(alice.clone()).await.expect("code sent");
    assert_eq!(sent.expires_in_secs, 600);
    let code = last_code(&codes_file(&dir), &alice);
    assert_eq!(code.len(), 6);

    let issued = auth
        .verify(alice.clone(), code.clone())
        .await
        .expect("verified");
    assert_eq!(issued.token.len(), 64);
    assert_eq!(auth.login(&issued.token).await.expect("login"), alice);
    // The number has an account now: minting refuses to take it over.
    assert!(matches!(
        auth.mint_test_users(std::slice::from_ref(&alice)).await,
        Err(AuthError::AccountExists(_))
    ));

    // The code is consumed.
    let again = auth.verify(alice.clone(), code).await;
    assert!(matches!(again, Err(AuthError::CodeExpired)), "{again:?}");
}

#[tokio::test]
async fn five_wrong_codes_then_too_many_attempts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, _join, _accounts) = start(&dir, open_store(&dir)).await;
    let bob = phone("+447911123456");
    auth.request_code(bob.clone()).await.expect("code sent");
    let code = last_code(&codes_file(&dir), &bob);
    let wrong = wrong_code(&code);
    for left in (0..5).rev() {
        let answer = auth.verify(bob.clone(), wrong.clone()).await;
        assert!(
            matches!(answer, Err(AuthError::InvalidCode { attempts_left }) if attempts_left == left),
            "{answer:?}"
        );
    }
    let locked = auth.verify(bob.clone(), code).await;
    assert!(
        matches!(locked, Err(AuthError::TooManyAttempts)),
        "{locked:?}"
    );
    assert_eq!(
        locked.expect_err("locked").error_code(),
        ErrorCode::TooManyAttempts
    );
}

#[tokio::test]
async fn a_second_code_too_soon_is_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, _join, _accounts) = start(&dir, open_store(&dir)).await;
    let carol = phone("+15557654321");
    auth.request_code(carol.clone()).await.expect("first");
    let second = auth.request_code(carol.clone()).await;
    match second {
        Err(AuthError::RateLimited { retry_after_ms }) => {
            assert!(
                retry_after_ms > 0 && retry_after_ms <= 30_000,
                "{retry_after_ms}"
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Another phone is not limited by carol's requests.
    auth.request_code(phone("+15557654322"))
        .await
        .expect("other phone");
}

/// Reopens the store at `dir` once every handle of the last one is gone.
async fn reopen(dir: &tempfile::TempDir) -> Store {
    for _ in 0..200 {
        match Store::open(&db_path(dir), StoreOptions::default()) {
            Ok(store) => return store,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("the store stayed locked");
}

#[tokio::test]
async fn a_pending_code_and_its_wrong_tries_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bob = phone("+15551230000");
    let code = {
        let (auth, join, accounts) = start(&dir, open_store(&dir)).await;
        auth.request_code(bob.clone()).await.expect("code sent");
        let code = last_code(&codes_file(&dir), &bob);
        let wrong = auth.verify(bob.clone(), wrong_code(&code)).await;
        assert!(matches!(
            wrong,
            Err(AuthError::InvalidCode { attempts_left: 4 })
        ));
        auth.actor().expect("running").stop(None);
        join.await.expect("actor stopped");
        drop(accounts);
        code
    };
    let (auth, _join, _accounts) = start(&dir, reopen(&dir).await).await;
    // The wrong try still counts, and the resend wait still holds.
    let wrong = auth.verify(bob.clone(), wrong_code(&code)).await;
    assert!(
        matches!(wrong, Err(AuthError::InvalidCode { attempts_left: 3 })),
        "{wrong:?}"
    );
    assert!(matches!(
        auth.request_code(bob.clone()).await,
        Err(AuthError::RateLimited { .. })
    ));
    let issued = auth
        .verify(bob.clone(), code)
        .await
        .expect("verified after restart");
    assert_eq!(auth.login(&issued.token).await.expect("login"), bob);
}

#[tokio::test]
async fn token_survives_a_store_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = phone("+15551234567");
    let token = {
        let store = open_store(&dir);
        let (auth, join, _accounts) = start(&dir, store).await;
        auth.request_code(alice.clone()).await.expect("code sent");
        let code = last_code(&codes_file(&dir), &alice);
        let issued = auth.verify(alice.clone(), code).await.expect("verified");
        auth.actor().expect("running").stop(None);
        join.await.expect("actor stopped");
        issued.token
    };
    // Every handle is gone; the writer thread lets go of the file shortly.
    let (auth, _join, _accounts) = start(&dir, reopen(&dir).await).await;
    assert_eq!(auth.login(&token).await.expect("login after reopen"), alice);
}

#[tokio::test]
async fn malformed_or_unknown_tokens_are_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, _join, _accounts) = start(&dir, open_store(&dir)).await;
    for token in [
        "",
        "not a token",
        "ZZZZ",
        &"x".repeat(64),
        &"a".repeat(64),
        &"a".repeat(1_000_000),
    ] {
        let answer = auth.login(token).await;
        assert!(matches!(answer, Err(AuthError::InvalidToken)), "{answer:?}");
        assert_eq!(
            answer.expect_err("invalid").error_code(),
            ErrorCode::InvalidToken
        );
    }
}

#[tokio::test]
async fn admin_issues_tokens_without_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, _join, _accounts) = start(&dir, open_store(&dir)).await;
    let users: Vec<PhoneNumber> = (0..50).map(|i| phone(&format!("+1555900{i:04}"))).collect();
    for user in &users {
        let issued = auth.issue_token(user).await.expect("issue");
        assert_eq!(&auth.login(&issued.token).await.expect("login"), user);
    }
    // Each has an account now: minting refuses to take one over.
    assert!(matches!(
        auth.mint_test_users(&users[..1]).await,
        Err(AuthError::AccountExists(_))
    ));
}

/// Fails the first `failures` deliveries, then writes to a file.
struct Flaky {
    failures: AtomicU32,
    file: FileProvider,
}

impl CodeProvider for Flaky {
    fn deliver(&self, phone: &PhoneNumber, code: &str) -> Result<(), ProviderError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ProviderError::Status(503));
        }
        self.file.deliver(phone, code)
    }

    fn name(&self) -> &'static str {
        "flaky"
    }
}

#[tokio::test]
async fn provider_failure_forgets_the_code_so_a_retry_works_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Arc::new(Flaky {
        failures: AtomicU32::new(1),
        file: FileProvider::new(codes_file(&dir)),
    });
    let (auth, _join, _accounts) = start_with(open_store(&dir), provider).await;
    let dave = phone("+15550001111");
    let failed = auth.request_code(dave.clone()).await;
    assert!(
        matches!(
            &failed,
            Err(AuthError::Provider(ProviderError::Status(503)))
        ),
        "{failed:?}"
    );
    assert_eq!(
        failed.expect_err("failed").error_code(),
        ErrorCode::ProviderFailed
    );
    // No resend wait: the failed code never counted.
    auth.request_code(dave.clone())
        .await
        .expect("retry at once");
    let code = last_code(&codes_file(&dir), &dave);
    let issued = auth.verify(dave.clone(), code).await.expect("verified");
    assert_eq!(auth.login(&issued.token).await.expect("login"), dave);
}

/// Blocks deliveries to one phone until released; others go to a file.
struct Gate {
    slow: PhoneNumber,
    release: Mutex<mpsc::Receiver<()>>,
    file: FileProvider,
}

impl CodeProvider for Gate {
    fn deliver(&self, phone: &PhoneNumber, code: &str) -> Result<(), ProviderError> {
        if *phone == self.slow {
            let release = self.release.lock().expect("lock");
            release
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| ProviderError::Other("never released".into()))?;
        }
        self.file.deliver(phone, code)
    }

    fn name(&self) -> &'static str {
        "gate"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_does_not_stall_the_actor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = phone("+15550002222");
    let fast = phone("+15550003333");
    let (release, released) = mpsc::channel();
    let provider = Arc::new(Gate {
        slow: slow.clone(),
        release: Mutex::new(released),
        file: FileProvider::new(codes_file(&dir)),
    });
    let (auth, _join, _accounts) = start_with(open_store(&dir), provider).await;

    let slow_request = {
        let auth = auth.clone();
        let slow = slow.clone();
        tokio::spawn(async move { auth.request_code(slow).await })
    };
    // Let the slow request reach the provider.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!slow_request.is_finished());

    // Meanwhile another user gets a code, verifies and logs in.
    tokio::time::timeout(Duration::from_secs(5), async {
        auth.request_code(fast.clone()).await.expect("fast code");
        let code = last_code(&codes_file(&dir), &fast);
        let issued = auth.verify(fast.clone(), code).await.expect("verified");
        assert_eq!(auth.login(&issued.token).await.expect("login"), fast);
    })
    .await
    .expect("the actor was not stalled by the slow provider");
    assert!(!slow_request.is_finished());

    release.send(()).expect("release");
    slow_request
        .await
        .expect("join")
        .expect("slow code sent in the end");
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = AuthConfig {
        max_code_attempts: 0,
        ..AuthConfig::default()
    };
    let provider = Arc::new(FileProvider::new(codes_file(&dir)));
    let store = open_store(&dir);
    let accounts = Accounts::start(&store).await;
    let result = spawn_auth(cfg, store, accounts.accounts.clone(), provider, None).await;
    assert!(matches!(result, Err(AuthError::InvalidConfig(_))));
}

#[tokio::test]
async fn a_stopped_service_answers_unavailable_but_login_still_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (auth, join, _accounts) = start(&dir, open_store(&dir)).await;
    let erin = phone("+15550004444");
    let issued = auth.issue_token(&erin).await.expect("issue");
    auth.actor().expect("running").stop(None);
    join.await.expect("stopped");
    let answer = auth.request_code(erin.clone()).await;
    assert!(
        matches!(answer, Err(AuthError::Unavailable { .. })),
        "{answer:?}"
    );
    assert!(matches!(
        answer.expect_err("down").error_code(),
        ErrorCode::Unavailable { .. }
    ));
    assert_eq!(auth.login(&issued.token).await.expect("login"), erin);
}

/// A supervisor that records its children's events.
struct Supervisor;

struct Nothing;
impl ractor::Message for Nothing {}

impl Actor for Supervisor {
    type Msg = Nothing;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

#[tokio::test]
async fn spawned_under_a_supervisor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (supervisor, supervisor_join) = Actor::spawn(None, Supervisor, ())
        .await
        .expect("supervisor");
    let provider = Arc::new(FileProvider::new(codes_file(&dir)));
    let store = open_store(&dir);
    let accounts = Accounts::start(&store).await;
    let (auth, join) = spawn_auth(
        AuthConfig::default(),
        store,
        accounts.accounts.clone(),
        provider,
        Some(supervisor.get_cell()),
    )
    .await
    .expect("spawn linked");
    assert_eq!(supervisor.get_children().len(), 1);
    auth.request_code(phone("+15550005555"))
        .await
        .expect("works when linked");
    supervisor
        .stop_children_and_wait(None, Some(Duration::from_secs(5)))
        .await;
    join.await.expect("child stopped");
    supervisor.stop(None);
    supervisor_join.await.expect("supervisor stopped");
}
