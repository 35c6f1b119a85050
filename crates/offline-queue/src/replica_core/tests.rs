//! The core driven by hand through the cases the simulator found, each as
//! one readable schedule (the simulator finds them again only on the
//! schedules of its day).

use std::collections::BTreeSet;

use router::{Islands, Owner, Placement};
use storage::Store;
use test_support::numbered as phone;

use super::*;
use crate::store::RedbMailbox;

#[test]
fn a_majority_is_of_the_other_nodes() {
    // Four nodes: this one and one more peer are a majority of the
    // three others (a cut-off node alone is not).
    assert!(!sees_majority(4, 0));
    assert!(sees_majority(4, 1));
    // Six nodes: three of the five.
    assert!(!sees_majority(6, 1));
    assert!(sees_majority(6, 2));
    // Two nodes: a lone partner always may (it cannot tell a crash
    // from a cut, and merges afterwards).
    assert!(sees_majority(2, 0));
}

/// Who waits for an answer: never gone.
#[derive(Debug)]
struct Waiter;

impl Caller for Waiter {
    fn gone(&self) -> bool {
        false
    }
}

type TestCore = ReplicaCore<u32, Waiter>;

const FRAGMENT: FragmentId = 0;

/// Fragment 0 on `this` of four nodes in two islands, `n1` owning it at
/// epoch 1 and every other node up.
fn core_on(this: &str, reads: &RedbMailbox) -> TestCore {
    let islands = Islands::new(vec![
        ["n1".to_owned(), "n2".to_owned()],
        ["n3".to_owned(), "n4".to_owned()],
    ]);
    let up: BTreeSet<String> = ["n1", "n2", "n3", "n4"]
        .into_iter()
        .filter(|n| *n != this)
        .map(str::to_owned)
        .collect();
    let setup = ClusterSetup {
        this: this.to_owned(),
        islands,
        policy: AckPolicy::Replicated,
        nodes: 4,
        relink_ms: 0,
        owner: Some(Owner {
            epoch: 1,
            node: "n1".to_owned(),
        }),
        up,
    };
    let placement = Placement::new(1).expect("placement");
    ReplicaCore::new(
        FRAGMENT,
        placement,
        FragmentConfig::default(),
        Some(setup),
        0,
        reads,
    )
    .expect("core")
}

/// `n2`'s core once its partner `n1` said it owns the fragment.
fn partner_of_n1(reads: &RedbMailbox) -> TestCore {
    let mut partner = core_on("n2", reads);
    partner
        .step(
            1,
            from_n1(FragmentWire::Owner {
                owner: Owner {
                    epoch: 1,
                    node: "n1".to_owned(),
                },
                reply: false,
            }),
            reads,
        )
        .expect("owner");
    partner
}

fn reads() -> RedbMailbox {
    let store = Store::in_memory(Default::default()).expect("store");
    RedbMailbox::new(store, FRAGMENT)
}

fn lately(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|n| (*n).to_owned()).collect()
}

fn put(client_msg_id: u64) -> WriteOp {
    WriteOp::PutMessage {
        recipient: phone(2),
        sender: phone(1),
        client_msg_id,
        id: 100 + client_msg_id,
        server_ts: 5,
        body: vec![1, 2, 3],
    }
}

fn from_n1(wire: FragmentWire) -> Event<u32, Waiter> {
    Event::Peer {
        from: "n1".to_owned(),
        wire,
    }
}

/// `n1` streams write `rseq` (message `rseq`) at epoch 1.
fn streamed(partner: &mut TestCore, rseq: u64, reads: &RedbMailbox) -> Out<u32, Waiter> {
    let wire = FragmentWire::Replicate {
        epoch: 1,
        rseq,
        ops: vec![put(rseq)],
    };
    partner.step(10, from_n1(wire), reads).expect("replicate")
}

/// `n1` is reported down, `n3` and `n4` heard lately.
fn n1_goes_down(partner: &mut TestCore, reads: &RedbMailbox) -> Out<u32, Waiter> {
    let event = Event::PeerDown {
        peer: "n1".to_owned(),
        lately: lately(&["n3", "n4"]),
    };
    partner.step(2_000, event, reads).expect("peer down")
}

fn logged(out: &[Action<u32, Waiter>]) -> Vec<WriteOp> {
    out.iter()
        .filter_map(|a| match a {
            Action::LogDivergent(ops) => Some(ops.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The actions' names, for failure messages.
fn kinds(out: &[Action<u32, Waiter>]) -> String {
    let names: Vec<&str> = out
        .iter()
        .map(|a| match a {
            Action::Answer { .. } => "answer",
            Action::Deliver { .. } => "deliver",
            Action::Send { wire, .. } => wire.kind(),
            Action::Persist { .. } => "persist",
            Action::ApplyReplica { .. } => "apply-replica",
            Action::ImportChunk { .. } => "import-chunk",
            Action::SaveOwner(_) => "save-owner",
            Action::LogDivergent(_) => "log-divergent",
            Action::ClearDivergent { .. } => "clear-divergent",
            Action::Flush => "flush",
            Action::TakeSnapshot => "take-snapshot",
            Action::ApplyMerge { .. } => "apply-merge",
            Action::ReceiptElsewhere { .. } => "receipt-elsewhere",
            Action::DeleteAckedElsewhere { .. } => "delete-acked-elsewhere",
            Action::GroupElsewhere { .. } => "group-elsewhere",
        })
        .collect();
    names.join(", ")
}

fn sent(out: &[Action<u32, Waiter>]) -> Vec<FragmentWire> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { wire, .. } => Some(wire.clone()),
            _ => None,
        })
        .collect()
}

/// Found with two-row copy chunks: the owner streamed a write and died
/// before its own commit of it; its partner took over and acked the
/// sender's resend from its dedupe index, then died before copying back;
/// the former owner served again without the write. The partner now logs
/// the streamed writes the owner has not said it committed as divergent
/// when it takes over, so they reach the former owner in a merge.
#[test]
fn a_take_over_logs_the_streamed_writes_the_owner_never_said_it_committed() {
    let reads = reads();
    let mut partner = partner_of_n1(&reads);
    for rseq in 1..=3 {
        let out = streamed(&mut partner, rseq, &reads);
        assert!(
            out.iter().any(|a| matches!(a, Action::ApplyReplica { .. })),
            "the stream is applied: {}",
            kinds(&out)
        );
    }
    partner
        .step(
            20,
            from_n1(FragmentWire::Committed { epoch: 1, upto: 2 }),
            &reads,
        )
        .expect("step");
    let out = n1_goes_down(&mut partner, &reads);
    assert_eq!(logged(&out), vec![put(3)], "{}", kinds(&out));
    let log_at = out
        .iter()
        .position(|a| matches!(a, Action::LogDivergent(_)));
    let flush_at = out.iter().position(|a| matches!(a, Action::Flush));
    assert!(
        log_at < flush_at && flush_at.is_some(),
        "logged before the take-over serves anything: {}",
        kinds(&out)
    );
}

#[test]
fn a_copy_from_the_owner_holds_what_was_streamed_before_it() {
    let reads = reads();
    let mut partner = partner_of_n1(&reads);
    streamed(&mut partner, 1, &reads);
    let copy = FragmentWire::snapshot((1, true, true, 2), SnapshotChunk::default());
    partner.step(20, from_n1(copy), &reads).expect("step");
    let out = n1_goes_down(&mut partner, &reads);
    assert!(logged(&out).is_empty(), "{}", kinds(&out));
    assert!(
        out.iter().any(|a| matches!(a, Action::Flush)),
        "{}",
        kinds(&out)
    );
}

/// Seed 10221: a request forwarded to the owner goes again when the owner
/// serves at a new epoch, even on the same node (it dropped what it had
/// not answered when it stopped serving).
#[test]
fn a_held_request_goes_again_to_an_owner_serving_at_a_new_epoch() {
    let reads = reads();
    let mut other = core_on("n3", &reads);
    let appends = |out: &Out<u32, Waiter>| {
        out.iter()
            .filter(|a| {
                matches!(a, Action::Send { to, wire: FragmentWire::Append { .. } } if to == "n1")
            })
            .count()
    };
    let message = NewMessage {
        to: phone(2),
        from: phone(1),
        client_msg_id: 1,
        after: None,
        payload: vec![7],
    };
    let request = Event::Local(LocalRequest::Append {
        message,
        reply: Waiter,
    });
    let out = other.step(10, request, &reads).expect("append");
    assert_eq!(appends(&out), 1, "forwarded: {}", kinds(&out));
    let n1_owns_at = |epoch| FragmentWire::Owner {
        owner: Owner {
            epoch,
            node: "n1".to_owned(),
        },
        reply: false,
    };
    let out = other
        .step(20, from_n1(n1_owns_at(1)), &reads)
        .expect("owner");
    assert_eq!(appends(&out), 0, "the same owner: held: {}", kinds(&out));
    let out = other
        .step(30, from_n1(n1_owns_at(3)), &reads)
        .expect("owner");
    assert_eq!(appends(&out), 1, "a new epoch: sent again: {}", kinds(&out));
}

/// Seed 1276: a copy's first chunk handed to the disk but not yet written
/// (the store does not mark the copy yet) already holds a take-over back;
/// once the last chunk is handed over too, the take-over goes ahead (its
/// flush lands the chunks first).
#[test]
fn no_take_over_while_a_copys_chunks_wait_for_the_disk() {
    let reads = reads();
    let mut partner = partner_of_n1(&reads);
    let first = FragmentWire::snapshot((1, true, false, 2), SnapshotChunk::default());
    let out = partner.step(20, from_n1(first), &reads).expect("step");
    assert!(
        out.iter().any(|a| matches!(a, Action::ImportChunk { .. })),
        "{}",
        kinds(&out)
    );
    // The import is not applied to `reads`: it waits in the writer's queue.
    let out = n1_goes_down(&mut partner, &reads);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::Flush | Action::SaveOwner(_))),
        "no take-over from part of a copy: {}",
        kinds(&out)
    );
    let last = FragmentWire::snapshot((1, false, true, 2), SnapshotChunk::default());
    partner.step(2_100, from_n1(last), &reads).expect("step");
    let tick = Event::Tick {
        lately: lately(&["n3", "n4"]),
    };
    let out = partner.step(3_100, tick, &reads).expect("tick");
    assert!(
        out.iter().any(|a| matches!(a, Action::Flush)),
        "the whole copy is handed over: the take-over goes ahead: {}",
        kinds(&out)
    );
}

/// The owner side: how far its own commits reach goes to the partner
/// every [`COMMITTED_EVERY`] writes and at a tick.
#[test]
fn the_owner_tells_its_partner_how_far_its_commits_reach() {
    let reads = reads();
    let mut owner = core_on("n1", &reads);
    let mut out = owner.step(0, Event::Start, &reads).expect("start");
    out.extend(
        owner
            .step(
                1,
                Event::Peer {
                    from: "n2".to_owned(),
                    wire: FragmentWire::Owner {
                        owner: Owner {
                            epoch: 1,
                            node: "n1".to_owned(),
                        },
                        reply: false,
                    },
                },
                &reads,
            )
            .expect("owner"),
    );
    assert!(
        out.iter().any(|a| matches!(a, Action::Flush)),
        "{}",
        kinds(&out)
    );
    let out = owner.step(2, Event::Flushed, &reads).expect("flushed");
    assert!(
        out.iter().any(|a| matches!(a, Action::TakeSnapshot)),
        "serving, it copies to its partner: {}",
        kinds(&out)
    );
    owner
        .step(
            3,
            Event::Snapshot {
                chunks: vec![SnapshotChunk::default()],
                divergent_upto: 0,
            },
            &reads,
        )
        .expect("snapshot");
    let committed = |wires: Vec<FragmentWire>| {
        wires
            .into_iter()
            .filter_map(|w| match w {
                FragmentWire::Committed { epoch, upto } => Some((epoch, upto)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut told = Vec::new();
    let mut last_rseq = 0;
    for i in 1..=COMMITTED_EVERY + 1 {
        let message = NewMessage {
            to: phone(2),
            from: phone(1),
            client_msg_id: i,
            after: None,
            payload: vec![7],
        };
        let out = owner
            .step(
                10 + i,
                Event::Local(LocalRequest::Append {
                    message,
                    reply: Waiter,
                }),
                &reads,
            )
            .expect("append");
        let mut tags = Vec::new();
        for action in &out {
            match action {
                Action::Persist {
                    generation, tag, ..
                } => tags.push((*generation, *tag)),
                Action::Send {
                    wire: FragmentWire::Replicate { rseq, .. },
                    ..
                } => last_rseq = *rseq,
                _ => {}
            }
        }
        assert_eq!(tags.len(), 1, "one write per message: {}", kinds(&out));
        for (generation, tag) in tags {
            let out = owner
                .step(
                    10 + i,
                    Event::Committed {
                        generation,
                        tag,
                        outcome: Ok(()),
                    },
                    &reads,
                )
                .expect("committed");
            told.extend(committed(sent(&out)));
        }
    }
    assert_eq!(told.len(), 1, "told once in {} writes", COMMITTED_EVERY + 1);
    assert!(told[0].1 >= COMMITTED_EVERY && told[0].1 < last_rseq);
    let out = owner
        .step(
            1_000,
            Event::Tick {
                lately: lately(&["n2", "n3", "n4"]),
            },
            &reads,
        )
        .expect("tick");
    assert_eq!(committed(sent(&out)), vec![(1, last_rseq)]);
    let out = owner
        .step(
            2_000,
            Event::Tick {
                lately: lately(&["n2", "n3", "n4"]),
            },
            &reads,
        )
        .expect("tick");
    assert!(
        committed(sent(&out)).is_empty(),
        "told once: {}",
        kinds(&out)
    );
}

/// The partner keeps a bounded number and size of unconfirmed writes (an
/// owner of the previous release confirms none).
#[test]
fn a_partner_keeps_a_bounded_number_of_unconfirmed_writes() {
    let mut stream = UncommittedStream::default();
    let total = MAX_UNCOMMITTED_BATCHES as u64 + 10;
    for rseq in 1..=total {
        stream.streamed(FRAGMENT, 1, rseq, &[put(rseq)]);
    }
    let kept = stream.take();
    assert_eq!(kept.len(), MAX_UNCOMMITTED_BATCHES);
    assert_eq!(kept.first(), Some(&put(11)));
    assert!(stream.take().is_empty());
    // Large writes: bounded by their bytes too.
    let large = |rseq: u64| WriteOp::PutMessage {
        recipient: phone(2),
        sender: phone(1),
        client_msg_id: rseq,
        id: 100 + rseq,
        server_ts: 5,
        body: vec![0; 64 << 10],
    };
    for rseq in 1..=200 {
        stream.streamed(FRAGMENT, 1, rseq, &[large(rseq)]);
    }
    let kept = stream.take();
    assert_eq!(kept.len(), MAX_UNCOMMITTED_BYTES / (64 << 10));
    assert_eq!(kept.last(), Some(&large(200)));
    // A newer epoch's stream starts afresh; an older epoch's word is void.
    stream.streamed(FRAGMENT, 1, 1, &[put(1)]);
    stream.streamed(FRAGMENT, 2, 1, &[put(2)]);
    stream.committed(1, 5);
    assert_eq!(stream.take(), vec![put(2)]);
}
