use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorRef, call_t};

use super::*;

/// A child that counts its starts and panics on request.
struct Crashy;

enum CrashyMsg {
    Panic,
    Stop,
    Ping(RpcReplyPort<u32>),
    /// Handled once the notify fires: holds up the messages behind it.
    Hold(Arc<tokio::sync::Notify>),
    Nothing,
}
impl ractor::Message for CrashyMsg {}

impl Actor for Crashy {
    type Msg = CrashyMsg;
    type State = u32;
    type Arguments = Arc<AtomicU32>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        starts: Arc<AtomicU32>,
    ) -> Result<u32, ActorProcessingErr> {
        Ok(starts.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: CrashyMsg,
        state: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CrashyMsg::Panic => panic!("injected fault"),
            CrashyMsg::Stop => myself.stop(None),
            CrashyMsg::Ping(reply) => {
                let _ = reply.send(*state);
            }
            CrashyMsg::Hold(release) => release.notified().await,
            CrashyMsg::Nothing => {}
        }
        Ok(())
    }
}

fn crashy_spec(name: &'static str, restart: Restart, starts: Arc<AtomicU32>) -> ChildSpec {
    ChildSpec::new(name, restart, move |sup| {
        let starts = starts.clone();
        async move {
            let (actor, _) =
                Actor::spawn_linked(Some(name.to_owned()), Crashy, starts, sup).await?;
            Ok(actor.get_cell())
        }
    })
}

fn named(name: &str) -> ActorRef<CrashyMsg> {
    ractor::registry::where_is(name)
        .expect("child registered")
        .into()
}

async fn wait_for_restart(name: &str, generation: u32) -> ActorRef<CrashyMsg> {
    for _ in 0..200 {
        if let Some(cell) = ractor::registry::where_is(name) {
            let actor: ActorRef<CrashyMsg> = cell.into();
            if let Ok(g) = call_t!(actor, CrashyMsg::Ping, 200)
                && g >= generation
            {
                return actor;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} was not restarted to generation {generation}");
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let a_starts = Arc::new(AtomicU32::new(0));
    let b_starts = Arc::new(AtomicU32::new(0));
    let (sup, handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            children: vec![
                crashy_spec("ofo-a", Restart::Permanent, a_starts.clone()),
                crashy_spec("ofo-b", Restart::Permanent, b_starts.clone()),
            ],
            intensity: Intensity::default(),
            concurrent_shutdown: false,
        },
    )
    .await
    .expect("spawn");

    named("ofo-a").send_message(CrashyMsg::Panic).expect("send");
    let a = wait_for_restart("ofo-a", 2).await;
    assert_eq!(call_t!(a, CrashyMsg::Ping, 500).expect("ping"), 2);
    assert_eq!(b_starts.load(Ordering::SeqCst), 1, "sibling untouched");
    let counts = call_t!(sup, SupervisorMsg::RestartCounts, 500).expect("counts");
    assert_eq!(counts.get("ofo-a"), Some(&1));
    assert_eq!(counts.get("ofo-b"), None);

    sup.stop(None);
    handle.await.expect("supervisor ends");
    assert!(ractor::registry::where_is("ofo-a").is_none());
    assert!(ractor::registry::where_is("ofo-b").is_none());
}

#[tokio::test]
async fn temporary_children_are_forgotten_and_transient_ones_restart_only_on_failure() {
    let t_starts = Arc::new(AtomicU32::new(0));
    let tr_starts = Arc::new(AtomicU32::new(0));
    let (sup, handle) = Actor::spawn(None, Supervisor, SupervisorArgs::default())
        .await
        .expect("spawn");
    call_t!(
        sup,
        SupervisorMsg::StartChild,
        500,
        crashy_spec("tmp-t", Restart::Temporary, t_starts.clone())
    )
    .expect("call")
    .expect("start");
    call_t!(
        sup,
        SupervisorMsg::StartChild,
        500,
        crashy_spec("tmp-tr", Restart::Transient, tr_starts.clone())
    )
    .expect("call")
    .expect("start");

    named("tmp-t").send_message(CrashyMsg::Panic).expect("send");
    named("tmp-tr")
        .send_message(CrashyMsg::Panic)
        .expect("send");
    wait_for_restart("tmp-tr", 2).await;
    named("tmp-tr").send_message(CrashyMsg::Stop).expect("send");
    for _ in 0..100 {
        if call_t!(sup, SupervisorMsg::Children, 500)
            .expect("children")
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        call_t!(sup, SupervisorMsg::Children, 500)
            .expect("children")
            .is_empty()
    );
    assert_eq!(
        t_starts.load(Ordering::SeqCst),
        1,
        "temporary not restarted"
    );
    assert_eq!(
        tr_starts.load(Ordering::SeqCst),
        2,
        "transient restarted once"
    );
    sup.stop(None);
    handle.await.expect("ends");
}

#[tokio::test]
async fn exceeding_the_intensity_fails_the_supervisor() {
    let starts = Arc::new(AtomicU32::new(0));
    let (sup, handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            children: vec![crashy_spec("int-a", Restart::Permanent, starts.clone())],
            intensity: Intensity {
                max_restarts: 2,
                within: Duration::from_secs(60),
            },
            concurrent_shutdown: true,
        },
    )
    .await
    .expect("spawn");
    for generation in 2..=3 {
        named("int-a").send_message(CrashyMsg::Panic).expect("send");
        wait_for_restart("int-a", generation).await;
    }
    named("int-a").send_message(CrashyMsg::Panic).expect("send");
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("supervisor gave up")
        .expect("join");
    assert_eq!(sup.get_status(), ractor::ActorStatus::Stopped);
    assert_eq!(starts.load(Ordering::SeqCst), 3);
}

/// A terminated child stops for good, even a permanent one, while stopping
/// a permanent child any other way restarts it.
#[tokio::test]
async fn a_terminated_permanent_child_is_not_restarted() {
    let starts = Arc::new(AtomicU32::new(0));
    let other_starts = Arc::new(AtomicU32::new(0));
    let (sup, handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            children: vec![
                crashy_spec("term-a", Restart::Permanent, starts.clone()),
                crashy_spec("term-b", Restart::Permanent, other_starts.clone()),
            ],
            intensity: Intensity::default(),
            concurrent_shutdown: false,
        },
    )
    .await
    .expect("spawn");

    named("term-b").send_message(CrashyMsg::Stop).expect("send");
    wait_for_restart("term-b", 2).await;

    let found = call_t!(sup, SupervisorMsg::TerminateChild, 2000, "term-a".into()).expect("call");
    assert!(found);
    assert!(
        ractor::registry::where_is("term-a").is_none(),
        "stopped on reply"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ractor::registry::where_is("term-a").is_none(),
        "not restarted"
    );
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    let children = call_t!(sup, SupervisorMsg::Children, 500).expect("children");
    assert_eq!(children.len(), 1);
    let again = call_t!(sup, SupervisorMsg::TerminateChild, 2000, "term-a".into()).expect("call");
    assert!(!again, "no such child any more");

    sup.stop(None);
    handle.await.expect("supervisor ends");
}

/// Polls the supervisor's queue-length sample until it is `want`.
async fn wait_for_queue_lengths(sup: &ActorRef<SupervisorMsg>, want: &[usize]) {
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = call_t!(sup, SupervisorMsg::QueueLengths, 500).expect("queue lengths");
        seen.sort_unstable();
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("queue lengths {seen:?}, expected {want:?}");
}

#[tokio::test]
async fn queue_lengths_count_the_messages_each_child_has_not_taken() {
    let (sup, handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            children: vec![
                crashy_spec("queue-busy", Restart::Permanent, Arc::default()),
                crashy_spec("queue-idle", Restart::Permanent, Arc::default()),
            ],
            intensity: Intensity::default(),
            concurrent_shutdown: false,
        },
    )
    .await
    .expect("spawn");
    wait_for_queue_lengths(&sup, &[0, 0]).await;

    let busy = named("queue-busy");
    let release = Arc::new(tokio::sync::Notify::new());
    busy.send_message(CrashyMsg::Hold(release.clone()))
        .expect("send");
    for _ in 0..4 {
        busy.send_message(CrashyMsg::Nothing).expect("send");
    }
    // The held message is being handled, the four behind it wait.
    wait_for_queue_lengths(&sup, &[0, 4]).await;
    assert_eq!(busy.get_cell().queued_messages(), 4);

    release.notify_one();
    wait_for_queue_lengths(&sup, &[0, 0]).await;

    sup.stop(None);
    handle.await.expect("supervisor ends");
}
