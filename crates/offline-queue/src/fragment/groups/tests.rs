//! Groups across fragment cores over the real tables: a world of a few
//! fragments on one in-memory store, whose writes commit in order per
//! fragment (a crash loses the ones not committed), whose fan-out
//! messages travel through a network that may lose or repeat them, and
//! whose members are online and ack what they get. Every member must see
//! exactly the group's items it should, once each and in order.

use std::collections::{BTreeMap, VecDeque};

use proto::{GroupChange, GroupCommand, PhoneNumber, ReceiptKind};
use router::{FragmentId, Placement};
use storage::Store;
use test_support::{Rng, numbered as phone};

use super::*;
use crate::FragmentError;
use crate::fragment::{Action, FragmentConfig, FragmentCore};
use crate::store::{RedbMailbox, apply_ops};

const FRAGMENTS: u16 = 4;
const USERS: u64 = 8;

type Core = FragmentCore<PhoneNumber, u32>;

/// What a member saw of a group, in order: a message by (sender, client
/// id) or a change by (who, what).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(PhoneNumber, u64),
    Change(PhoneNumber, GroupChange),
}

struct World {
    store: Store,
    placement: Placement,
    cores: Vec<Core>,
    /// Writes handed to the writer and not yet committed, per fragment.
    pending: Vec<VecDeque<(u64, Vec<WriteOp>)>>,
    net: VecDeque<(FragmentId, GroupNote)>,
    answers: BTreeMap<u32, Result<GroupAnswer, FragmentError>>,
    /// Per member, what it was pushed, as a client keeps it: an entry
    /// pushed again under the same id (its ack was lost) only once.
    seen: BTreeMap<PhoneNumber, Vec<(GroupId, Position, Seen)>>,
    seen_ids: std::collections::BTreeSet<(PhoneNumber, MessageId)>,
    /// Per sender, the group receipts it was pushed: group, kind and
    /// positions.
    receipts: BTreeMap<PhoneNumber, Vec<(GroupId, ReceiptKind, Vec<Position>)>>,
    next_reply: u32,
}

impl World {
    fn new() -> Self {
        let store = Store::in_memory(Default::default()).expect("store");
        let placement = Placement::new(FRAGMENTS).expect("placement");
        let mut world = Self {
            store,
            placement,
            cores: Vec::new(),
            pending: (0..FRAGMENTS).map(|_| VecDeque::new()).collect(),
            net: VecDeque::new(),
            answers: BTreeMap::new(),
            seen: BTreeMap::new(),
            seen_ids: Default::default(),
            receipts: BTreeMap::new(),
            next_reply: 0,
        };
        for f in 0..FRAGMENTS {
            let core = world.fresh_core(f);
            world.cores.push(core);
        }
        for n in 0..USERS {
            let user = phone(n);
            let f = placement.fragment_of(&user);
            let reads = world.reads(f);
            let actions = world.cores[usize::from(f)]
                .attach(&reads, user.clone(), 1, None, user.clone())
                .expect("attach");
            world.run(f, actions);
        }
        world
    }

    fn reads(&self, f: FragmentId) -> RedbMailbox {
        RedbMailbox::new(self.store.clone(), f)
    }

    fn fresh_core(&self, f: FragmentId) -> Core {
        let next_seq = self.reads(f).next_seq().expect("mark");
        let config = FragmentConfig {
            groups: GroupLimits {
                max_members: 6,
                max_backlog: 200,
            },
            ..FragmentConfig::default()
        };
        FragmentCore::new(f, self.placement, config, next_seq)
    }

    /// Carries out fragment `f`'s actions.
    fn run(&mut self, f: FragmentId, actions: Vec<Action<PhoneNumber, u32>>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Persist { tag, ops } => self.pending[usize::from(f)].push_back((tag, ops)),
                Action::GroupReply { to, result } => {
                    self.answers.insert(to, result);
                }
                Action::Note { fragment, note } => self.net.push_back((fragment, note)),
                Action::Push { endpoint, entries } => {
                    let ids: Vec<MessageId> = entries.iter().map(|e| e.id).collect();
                    for entry in entries {
                        if !self.seen_ids.insert((endpoint.clone(), entry.id)) {
                            continue;
                        }
                        if let EntryBody::Group {
                            group,
                            position,
                            item,
                        } = entry.body
                        {
                            let seen = match item {
                                GroupItem::Message {
                                    from,
                                    client_msg_id,
                                    ..
                                } => Seen::Message(from, client_msg_id),
                                GroupItem::Change { by, change, .. } => Seen::Change(by, change),
                                GroupItem::Receipt {
                                    kind, positions, ..
                                } => {
                                    self.receipts
                                        .entry(endpoint.clone())
                                        .or_default()
                                        .push((group, kind, positions));
                                    continue;
                                }
                            };
                            self.seen
                                .entry(endpoint.clone())
                                .or_default()
                                .push((group, position, seen));
                        }
                    }
                    let reads = self.reads(f);
                    queue.extend(self.cores[usize::from(f)].ack(&reads, &endpoint, &ids, 1));
                }
                other => panic!("unexpected action {}", kind(&other)),
            }
        }
    }

    /// Commits fragment `f`'s oldest pending write.
    fn commit_one(&mut self, f: FragmentId) -> bool {
        let Some((tag, ops)) = self.pending[usize::from(f)].pop_front() else {
            return false;
        };
        let txn = self.store.db().begin_write().expect("txn");
        apply_ops(&txn, f, &ops).expect("apply");
        txn.commit().expect("commit");
        let reads = self.reads(f);
        let actions = self.cores[usize::from(f)].committed(&reads, tag, Ok(()));
        self.run(f, actions);
        true
    }

    /// Fragment `f` restarts: what was not committed is lost, and a new
    /// core starts from the disk (its members attach again).
    fn crash(&mut self, f: FragmentId) {
        self.pending[usize::from(f)].clear();
        self.cores[usize::from(f)] = self.fresh_core(f);
        let reads = self.reads(f);
        let mut actions = self.cores[usize::from(f)]
            .resume_groups(&reads)
            .expect("resume");
        for n in 0..USERS {
            let user = phone(n);
            if self.placement.fragment_of(&user) == f {
                actions.extend(
                    self.cores[usize::from(f)]
                        .attach(&reads, user.clone(), 1, None, user.clone())
                        .expect("attach"),
                );
            }
        }
        self.run(f, actions);
    }

    /// Delivers the oldest message in transit (`lose`: drop it instead;
    /// `repeat`: deliver it and keep a copy for later).
    fn deliver_one(&mut self, lose: bool, repeat: bool) -> bool {
        let Some((to, note)) = self.net.pop_front() else {
            return false;
        };
        if lose {
            return true;
        }
        if repeat {
            self.net.push_back((to, note.clone()));
        }
        let reads = self.reads(to);
        let core = &mut self.cores[usize::from(to)];
        let actions = core.group_note(&reads, note);
        self.run(to, actions);
        true
    }

    fn tick(&mut self) {
        for f in 0..FRAGMENTS {
            let actions = self.cores[usize::from(f)].group_tick(1);
            self.run(f, actions);
        }
    }

    /// Hands `request` to its home and returns the reply id.
    fn ask(&mut self, request: GroupRequest) -> u32 {
        let f = request.home(&self.placement);
        self.next_reply += 1;
        let reply = self.next_reply;
        let reads = self.reads(f);
        let actions = self.cores[usize::from(f)].group_request(&reads, request, 1, reply);
        self.run(f, actions);
        reply
    }

    /// Commits everything, delivers everything, ticks until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            for f in 0..FRAGMENTS {
                while self.commit_one(f) {
                    moved = true;
                }
            }
            while self.deliver_one(false, false) {
                moved = true;
            }
            if !moved {
                for _ in 0..FANOUT_RETRY_TICKS {
                    self.tick();
                }
                if self.net.is_empty() && self.pending.iter().all(VecDeque::is_empty) {
                    return;
                }
            }
        }
        panic!("the world does not settle");
    }

    fn answer(&mut self, reply: u32) -> Option<Result<GroupAnswer, FragmentError>> {
        self.answers.remove(&reply)
    }

    /// What `user` saw of `group`, checking that positions only grew.
    fn seen_by(&self, user: &PhoneNumber, group: GroupId) -> Vec<Seen> {
        let all: Vec<&(GroupId, Position, Seen)> = self
            .seen
            .get(user)
            .map(|all| all.iter().filter(|(g, _, _)| *g == group).collect())
            .unwrap_or_default();
        assert!(
            all.windows(2).all(|pair| pair[0].1 < pair[1].1),
            "{user} saw positions out of order or twice: {all:?}"
        );
        all.into_iter().map(|(_, _, seen)| seen.clone()).collect()
    }

    /// Rows of the group tables left for `group` at its home.
    fn log_left(&self, group: GroupId) -> usize {
        let f = fragment_of_message_id(group);
        self.reads(f)
            .group_log(group, 0, usize::MAX)
            .expect("log")
            .len()
    }
}

fn kind(action: &Action<PhoneNumber, u32>) -> &'static str {
    match action {
        Action::Replaced { .. } => "replaced",
        Action::Revoked { .. } => "revoked",
        Action::AccountReply { .. } => "account-reply",
        Action::Reply { .. } => "reply",
        Action::StoreReceipt { .. } => "store-receipt",
        Action::DeleteAcked { .. } => "delete-acked",
        _ => "other",
    }
}

fn create(world: &mut World, creator: u64, others: &[u64]) -> GroupId {
    let reply = world.ask(GroupRequest::Create {
        creator: phone(creator),
        name: "friends".into(),
        members: others.iter().map(|n| phone(*n)).collect(),
    });
    world.settle();
    match world.answer(reply) {
        Some(Ok(GroupAnswer::Created { group })) => group,
        other => panic!("create answered {other:?}"),
    }
}

fn send(world: &mut World, group: GroupId, from: u64, client_msg_id: u64) -> u32 {
    world.ask(GroupRequest::Send {
        group,
        from: phone(from),
        client_msg_id,
        after: None,
        payload: vec![1, 2, 3],
    })
}

fn change(world: &mut World, group: GroupId, by: u64, command: GroupCommand) -> u32 {
    world.ask(GroupRequest::Change {
        group,
        by: phone(by),
        command,
    })
}

#[test]
fn a_group_message_reaches_every_other_member_once_in_every_fragment() {
    let mut world = World::new();
    let group = create(&mut world, 0, &[1, 2, 3, 4, 5]);
    assert_eq!(
        fragment_of_message_id(group),
        world.placement.fragment_of(&phone(0))
    );
    let reply = send(&mut world, group, 2, 1);
    world.settle();
    assert_copies_read_the_same(&world.store, group, 0);
    assert!(matches!(
        world.answer(reply),
        Some(Ok(GroupAnswer::Sent(_)))
    ));
    let created = Seen::Change(
        phone(0),
        GroupChange::Created {
            name: "friends".into(),
            members: (0..6).map(phone).collect(),
        },
    );
    for n in 0..6 {
        let mut expected = vec![created.clone()];
        if n != 2 {
            expected.push(Seen::Message(phone(2), 1));
        }
        assert_eq!(world.seen_by(&phone(n), group), expected, "member {n}");
    }
    assert!(world.seen_by(&phone(6), group).is_empty(), "not a member");
    assert_eq!(
        world.log_left(group),
        0,
        "the log holds only what is in transit"
    );
    let fragments: std::collections::BTreeSet<_> = (0..6)
        .map(|n| world.placement.fragment_of(&phone(n)))
        .collect();
    assert!(fragments.len() > 1, "members in several fragments");
}

#[test]
fn a_sender_is_told_delivered_then_read_and_message_info_shows_each_member() {
    let mut world = World::new();
    let group = create(&mut world, 0, &[1, 2, 3]);
    let first = send(&mut world, group, 1, 1);
    let second = send(&mut world, group, 1, 2);
    world.settle();
    let position = |world: &mut World, reply| match world.answer(reply) {
        Some(Ok(GroupAnswer::Sent(stored))) => stored.msg_id,
        other => panic!("send answered {other:?}"),
    };
    let (first, second) = (position(&mut world, first), position(&mut world, second));
    let told = |world: &World| world.receipts.get(&phone(1)).cloned().unwrap_or_default();
    assert_eq!(
        told(&world),
        vec![(group, ReceiptKind::Delivered, vec![first, second])],
        "every member acked both: one receipt for both"
    );
    let info = |world: &mut World, by: u64, position| {
        let reply = world.ask(GroupRequest::MessageInfo {
            group,
            by: phone(by),
            position,
        });
        world.answer(reply)
    };
    let delivered = Some(ReceiptKind::Delivered);
    assert_eq!(
        info(&mut world, 1, first),
        Some(Ok(GroupAnswer::MessageInfo {
            group,
            position: first,
            members: vec![
                (phone(0), delivered),
                (phone(2), delivered),
                (phone(3), delivered)
            ],
        }))
    );
    assert!(
        matches!(
            info(&mut world, 2, first),
            Some(Err(FragmentError::InvalidRequest(_)))
        ),
        "only the sender asks"
    );
    // Two of three read the first; the third reads both.
    for (by, through) in [(0, first), (2, first), (3, second)] {
        let reply = world.ask(GroupRequest::Read {
            group,
            by: phone(by),
            through,
        });
        world.settle();
        assert_eq!(world.answer(reply), Some(Ok(GroupAnswer::Changed)));
    }
    assert_eq!(
        told(&world)[1..],
        [(group, ReceiptKind::Read, vec![first])],
        "read by all: the first only"
    );
    assert_eq!(
        info(&mut world, 1, second),
        Some(Ok(GroupAnswer::MessageInfo {
            group,
            position: second,
            members: vec![
                (phone(0), delivered),
                (phone(2), delivered),
                (phone(3), Some(ReceiptKind::Read)),
            ],
        }))
    );
    let done = info(&mut world, 1, first);
    assert!(
        matches!(done, Some(Ok(GroupAnswer::MessageInfo { ref members, .. })) if members.is_empty()),
        "nothing kept once read by all: {done:?}"
    );
    // Reading beyond what was logged, or as an outsider, is refused.
    let beyond = world.ask(GroupRequest::Read {
        group,
        by: phone(0),
        through: second + 1_000,
    });
    let outsider = world.ask(GroupRequest::Read {
        group,
        by: phone(6),
        through: second,
    });
    world.settle();
    assert!(matches!(
        world.answer(beyond),
        Some(Err(FragmentError::InvalidRequest(_)))
    ));
    assert_eq!(
        world.answer(outsider),
        Some(Err(FragmentError::Group(GroupError::NotMember)))
    );
}

#[test]
fn a_resent_group_message_is_stored_once_and_answered_with_its_first_position() {
    let mut world = World::new();
    let group = create(&mut world, 0, &[1]);
    let first = send(&mut world, group, 0, 7);
    let again_in_flight = send(&mut world, group, 0, 7);
    world.settle();
    let later = send(&mut world, group, 0, 7);
    world.settle();
    let positions: Vec<_> = [first, again_in_flight, later]
        .into_iter()
        .map(|r| match world.answer(r) {
            Some(Ok(GroupAnswer::Sent(stored))) => stored.msg_id,
            other => panic!("send answered {other:?}"),
        })
        .collect();
    assert!(
        positions.iter().all(|p| *p == positions[0]),
        "{positions:?}"
    );
    assert_eq!(
        world.seen_by(&phone(1), group).len(),
        2,
        "the creation and one message"
    );
}

#[test]
fn members_see_from_their_addition_through_their_removal() {
    let mut world = World::new();
    let group = create(&mut world, 0, &[1]);
    send(&mut world, group, 1, 1);
    change(&mut world, group, 0, GroupCommand::Add(vec![phone(2)]));
    send(&mut world, group, 1, 2);
    change(&mut world, group, 0, GroupCommand::Remove(vec![phone(1)]));
    send(&mut world, group, 0, 3);
    let refused = send(&mut world, group, 1, 4);
    world.settle();
    assert_eq!(
        world.answer(refused),
        Some(Err(FragmentError::Group(GroupError::NotMember)))
    );
    assert_eq!(
        world.seen_by(&phone(2), group),
        vec![
            Seen::Change(
                phone(0),
                GroupChange::Added {
                    members: vec![phone(2)]
                }
            ),
            Seen::Message(phone(1), 2),
            Seen::Change(
                phone(0),
                GroupChange::Removed {
                    members: vec![phone(1)]
                }
            ),
            Seen::Message(phone(0), 3),
        ]
    );
    let removed = world.seen_by(&phone(1), group);
    assert_eq!(
        removed.len(),
        3,
        "created, added, removed; not its own: {removed:?}"
    );
    assert!(matches!(
        removed.last(),
        Some(Seen::Change(_, GroupChange::Removed { .. }))
    ));
}

#[test]
fn requests_for_unknown_groups_and_from_outsiders_get_typed_errors() {
    let mut world = World::new();
    let group = create(&mut world, 0, &[1]);
    let cases = [
        (send(&mut world, group + 1, 0, 1), GroupError::UnknownGroup),
        (send(&mut world, group, 5, 1), GroupError::NotMember),
        (
            change(&mut world, group, 1, GroupCommand::Add(vec![phone(3)])),
            GroupError::NotAdmin,
        ),
        (
            change(
                &mut world,
                group,
                0,
                GroupCommand::Add((2..8).map(phone).collect()),
            ),
            GroupError::Full { limit: 6 },
        ),
        (
            world.ask(GroupRequest::Info {
                group,
                by: phone(7),
            }),
            GroupError::NotMember,
        ),
    ];
    world.settle();
    for (reply, expected) in cases {
        assert_eq!(
            world.answer(reply),
            Some(Err(FragmentError::Group(expected)))
        );
    }
    let info = world.ask(GroupRequest::Info {
        group,
        by: phone(1),
    });
    assert_eq!(
        world.answer(info),
        Some(Ok(GroupAnswer::Info {
            group,
            name: "friends".into(),
            members: vec![(phone(0), GroupRole::Admin), (phone(1), GroupRole::Member)],
        }))
    );
}

/// A member of fragment `f` and a group at another fragment `home`, for
/// feeding `f` batches by hand; `era` is the ids of one half-block.
struct Era {
    member: PhoneNumber,
    f: FragmentId,
    home: FragmentId,
    group: GroupId,
    era: u64,
}

impl Era {
    fn of(world: &World) -> Self {
        let member = phone(1);
        let f = world.placement.fragment_of(&member);
        let home = (f + 1) % FRAGMENTS;
        Era {
            member,
            f,
            home,
            group: crate::entry::compose_message_id(home, 5),
            era: crate::replica::TAKEOVER_SEQ_GAP / 2,
        }
    }
}

/// Hands `f` each batch from `home` and commits what it writes.
fn fan_in_all(
    world: &mut World,
    f: FragmentId,
    home: FragmentId,
    batches: impl IntoIterator<Item = FanOut>,
) {
    for fanout in batches {
        let reads = world.reads(f);
        let actions = world.cores[usize::from(f)].fan_in(&reads, home, fanout);
        world.run(f, actions);
        while world.commit_one(f) {}
    }
}

/// What `member` was shown of `group`, in order.
fn seen_in(world: &World, member: &PhoneNumber, group: GroupId) -> Vec<Seen> {
    world.seen[member]
        .iter()
        .filter(|(g, _, _)| *g == group)
        .map(|(_, _, seen)| seen.clone())
        .collect()
}

/// Two owners of a home at once (both sides of a partition) give out
/// positions from different eras: a destination keeps a mark per era, so
/// the higher era's batch does not hide the lower one's, and a repeat of
/// either is still stored once.
#[test]
fn a_destination_keeps_a_mark_per_era() {
    let mut world = World::new();
    let Era {
        member,
        f,
        home,
        group,
        era,
    } = Era::of(&world);
    let batch = |seq: u64, cid: u64| FanOut {
        group,
        after: 0,
        through: crate::entry::compose_message_id(home, seq),
        items: vec![FanOutItem {
            position: crate::entry::compose_message_id(home, seq),
            recipients: vec![member.clone()],
            item: GroupItem::Message {
                from: phone(0),
                client_msg_id: cid,
                server_ts: 1,
                payload: vec![],
            },
        }],
    };
    // The newer owner's item first, then the older owner's, then both again.
    let batches = [(2 * era + 7, 1), (6, 2), (2 * era + 7, 1), (6, 2)];
    fan_in_all(
        &mut world,
        f,
        home,
        batches.map(|(seq, cid)| batch(seq, cid)),
    );
    // In the order they came (two owners at once is the partition case,
    // where order across the two sides is not kept).
    let seen = seen_in(&world, &member, group);
    assert_eq!(
        seen,
        vec![Seen::Message(phone(0), 1), Seen::Message(phone(0), 2)],
        "each era's item once"
    );
    let confirmations = world
        .net
        .iter()
        .filter(|(to, note)| *to == home && matches!(note, GroupNote::FannedOut { .. }))
        .count();
    assert_eq!(confirmations, 4, "every batch confirmed, repeats too");
}

/// Seed 555: a home's new owner sends its predecessor's item at 10 (older
/// era) with its own newer ones; the predecessor had logged 8 and 9
/// alone, merged at the home later and sent below the destination's mark
/// of that era. The jump from 6 to 10 is recorded as a gap, so 8 and 9 are
/// stored when they come, once, and a repeat of their batch is not.
#[test]
fn items_merged_below_an_older_eras_mark_are_stored_from_its_gap() {
    let mut world = World::new();
    let Era {
        member,
        f,
        home,
        group,
        era,
    } = Era::of(&world);
    let at = |seq: u64| crate::entry::compose_message_id(home, seq);
    let item = |seq: u64| FanOutItem {
        position: at(seq),
        recipients: vec![member.clone()],
        item: GroupItem::Message {
            from: phone(0),
            client_msg_id: seq,
            server_ts: 1,
            payload: vec![],
        },
    };
    let batch = |after: u64, through: u64, seqs: &[u64]| FanOut {
        group,
        after: if after == 0 { 0 } else { at(after) },
        through: at(through),
        items: seqs.iter().map(|s| item(*s)).collect(),
    };
    let batches = [
        batch(0, era + 6, &[era + 6]),
        // The new owner (a higher era) with the predecessor's 10.
        batch(era + 6, 2 * era + 1, &[era + 10, 2 * era + 1]),
        // The merged 8 and 9, after the new owner's items; then again.
        batch(2 * era + 1, era + 9, &[era + 8, era + 9]),
        batch(2 * era + 1, era + 9, &[era + 8, era + 9]),
    ];
    fan_in_all(&mut world, f, home, batches);
    let seen = seen_in(&world, &member, group);
    let expected: Vec<Seen> = [era + 6, era + 10, 2 * era + 1, era + 8, era + 9]
        .iter()
        .map(|seq| Seen::Message(phone(0), *seq))
        .collect();
    assert_eq!(seen, expected, "every item once");
}

/// A merge logs a message a former owner took apart from this one, at its
/// position in the former owner's (older, lower) era, while a batch of
/// newer items is out: it is still fanned out once the batch is through,
/// since a batch takes from the log exactly the items it carried.
#[test]
fn a_merged_older_message_is_fanned_out_after_the_batch_in_flight() {
    let mut world = World::new();
    let home = world.placement.fragment_of(&phone(0));
    let group = create(&mut world, 0, &[1]);
    // This owner then serves in the second era (as after a take-over);
    // the former owner went on in the first.
    let era = crate::replica::TAKEOVER_SEQ_GAP / 2;
    let txn = world.store.db().begin_write().expect("txn");
    apply_ops(&txn, home, &[WriteOp::NextSeq(era + 100)]).expect("apply");
    txn.commit().expect("commit");
    world.crash(home);
    send(&mut world, group, 0, 1);
    while world.commit_one(home) {}
    assert!(!world.net.is_empty(), "a batch is out");
    // The merge's write, then the core reads the log again.
    let merged = WriteOp::LogGroup {
        group,
        position: group + 50,
        item: GroupItem::Message {
            from: phone(0),
            client_msg_id: 99,
            server_ts: 1,
            payload: vec![],
        },
        dedupe: Some((phone(0), 99)),
    };
    let txn = world.store.db().begin_write().expect("txn");
    apply_ops(&txn, home, &[merged]).expect("apply");
    txn.commit().expect("commit");
    let reads = world.reads(home);
    let actions = world.cores[usize::from(home)]
        .reload_groups(&reads)
        .expect("reload");
    world.run(home, actions);
    world.settle();
    let seen: Vec<Seen> = world.seen[&phone(1)]
        .iter()
        .filter(|(g, _, _)| *g == group)
        .map(|(_, _, seen)| seen.clone())
        .collect();
    assert_eq!(
        seen.len(),
        3,
        "created, the message, the merged one: {seen:?}"
    );
    assert_eq!(seen[2], Seen::Message(phone(0), 99));
    assert_eq!(world.log_left(group), 0);
}

/// A group whose fan-out cannot get through (a destination out of reach)
/// holds at most its backlog in transit: further sends are refused until
/// fan-out catches up, and then everything arrives.
#[test]
fn a_group_whose_fan_out_is_stuck_refuses_sends_beyond_its_backlog() {
    let mut world = World::new();
    let group = create(&mut world, 0, &[1]);
    let mut replies = Vec::new();
    for cid in 1..=210 {
        replies.push(send(&mut world, group, 0, cid));
        let home = fragment_of_message_id(group);
        while world.commit_one(home) {}
        // Every batch is lost on its way.
        while world.deliver_one(true, false) {}
    }
    let refused = replies
        .iter()
        .filter(|r| matches!(world.answers.get(r), Some(Err(FragmentError::GroupBacklog))))
        .count();
    assert_eq!(refused, 10, "200 in transit, the rest refused");
    world.settle();
    let seen = world.seen_by(&phone(1), group);
    assert_eq!(
        seen.len(),
        1 + 200,
        "the creation and every accepted message"
    );
}

/// The last member leaving ends the group: its rows go once fan-out has
/// passed the leave, and the id is unknown from then on.
#[test]
fn a_group_everyone_left_is_forgotten() {
    let mut world = World::new();
    let group = create(&mut world, 0, &[1]);
    change(&mut world, group, 0, GroupCommand::Leave);
    change(&mut world, group, 1, GroupCommand::Leave);
    world.settle();
    let f = fragment_of_message_id(group);
    assert_eq!(world.reads(f).group(group).expect("read"), None);
    let reply = send(&mut world, group, 1, 1);
    assert_eq!(
        world.answer(reply),
        Some(Err(FragmentError::Group(GroupError::UnknownGroup)))
    );
}

/// The membership model the random test checks against: who is in the
/// group after each acknowledged item, kept apart from `GroupRecord`.
#[derive(Default)]
struct Model {
    members: std::collections::BTreeSet<PhoneNumber>,
    /// When each member joined (the order of acknowledged items).
    joined: BTreeMap<PhoneNumber, usize>,
    items: usize,
    admins: std::collections::BTreeSet<PhoneNumber>,
    /// Per member, what it must see, in order.
    expected: BTreeMap<PhoneNumber, Vec<Seen>>,
    /// Acknowledged messages: position → sender.
    sent: BTreeMap<Position, PhoneNumber>,
    /// Members who ever left or were removed.
    ever_left: std::collections::BTreeSet<PhoneNumber>,
}

impl Model {
    fn log(&mut self, item: Seen, before: &std::collections::BTreeSet<PhoneNumber>) {
        self.items += 1;
        let after = self.members.clone();
        let sender = match &item {
            Seen::Message(from, _) => Some(from.clone()),
            Seen::Change(..) => None,
        };
        // Members before or after a change see it (the removed and the
        // added both); a message goes to the members but its sender.
        for member in before.union(&after) {
            if Some(member) != sender.as_ref() {
                self.expected
                    .entry(member.clone())
                    .or_default()
                    .push(item.clone());
            }
        }
    }
}

/// Random sends and changes while the network loses and repeats fan-out
/// messages and fragments crash, losing their uncommitted writes; then
/// everything heals. Every member must have seen exactly what the model
/// says, in order, once.
#[test]
fn random_histories_with_loss_repeats_and_crashes_deliver_exactly_once_in_order() {
    for seed in 0..60 {
        random_history(seed);
    }
}

fn random_history(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut world = World::new();
    let group = create(&mut world, 0, &[1, 2]);
    let mut model = Model {
        members: (0..3).map(phone).collect(),
        joined: (0..3).map(|n| (phone(n), 0)).collect(),
        ..Model::default()
    };
    model.admins.insert(phone(0));
    let created = Seen::Change(
        phone(0),
        GroupChange::Created {
            name: "friends".into(),
            members: (0..3).map(phone).collect(),
        },
    );
    let none = std::collections::BTreeSet::new();
    model.log(created, &none);
    let home = fragment_of_message_id(group);
    // Requests whose answer is awaited: reply id → what it did.
    let mut asked = Asked::new();
    let mut client_id = 0;
    let mut crashed = false;
    for _ in 0..120 {
        match rng.below(10) {
            0..=3 => {
                let from = rng.below(USERS);
                client_id += 1;
                let reply = send(&mut world, group, from, client_id);
                asked.push_back((reply, Seen::Message(phone(from), client_id), None));
            }
            4 => {
                let by = rng.below(USERS);
                let who = phone(rng.below(USERS));
                let command = match rng.below(5) {
                    0 | 1 => GroupCommand::Add(vec![who]),
                    2 => GroupCommand::Remove(vec![who]),
                    3 => GroupCommand::Promote(who),
                    _ => GroupCommand::Leave,
                };
                let reply = change(&mut world, group, by, command.clone());
                let placeholder = Seen::Change(
                    phone(by),
                    GroupChange::Renamed {
                        name: String::new(),
                    },
                );
                asked.push_back((reply, placeholder, Some(command)));
            }
            5 | 6 => {
                let f = rng.below(u64::from(FRAGMENTS)) as FragmentId;
                world.commit_one(f);
            }
            7 => {
                let lose = rng.chance(15);
                let repeat = rng.chance(15);
                world.deliver_one(lose, repeat);
            }
            8 => {
                world.tick();
                // A member reads up to the latest acknowledged message.
                if let Some(through) = model.sent.keys().next_back().copied() {
                    world.ask(GroupRequest::Read {
                        group,
                        by: phone(rng.below(USERS)),
                        through,
                    });
                }
            }
            _ => {
                if rng.chance(10) {
                    let f = rng.below(u64::from(FRAGMENTS)) as FragmentId;
                    crashed = true;
                    world.crash(f);
                    if f == home {
                        // Their writes were lost: never answered.
                        asked.retain(|(reply, _, _)| world.answers.contains_key(reply));
                    }
                }
            }
        }
        absorb_answers(&mut world, &mut asked, &mut model);
    }
    // In the middle of things too: logs and marks not yet settled.
    assert_copies_read_the_same(&world.store, group, seed);
    world.settle();
    absorb_answers(&mut world, &mut asked, &mut model);
    assert!(asked.is_empty(), "seed {seed}: every request answered");
    for n in 0..USERS {
        let user = phone(n);
        let expected = model.expected.get(&user).cloned().unwrap_or_default();
        assert_eq!(
            world.seen_by(&user, group),
            expected,
            "seed {seed}: member {n}"
        );
        let f = world.placement.fragment_of(&user);
        let listed = world.reads(f).groups_of(&user).expect("list");
        let member = model.members.contains(&user);
        let expected = if member { vec![group] } else { vec![] };
        assert_eq!(listed, expected, "seed {seed}: {n}'s groups");
    }
    assert_copies_read_the_same(&world.store, group, seed);
    assert_ticks(&world, &model, crashed, seed);
}

/// Each sender is told each tick of its messages at most once, only of
/// its own messages; and, unless a crash lost members' latest cursors
/// (made good only by their next acknowledgement), every message of a
/// sender who never left is ticked once everyone acknowledged it.
fn assert_ticks(world: &World, model: &Model, crashed: bool, seed: u64) {
    let mut told = std::collections::BTreeSet::new();
    for (sender, receipts) in &world.receipts {
        for (_, kind, positions) in receipts {
            for position in positions {
                assert_eq!(
                    model.sent.get(position),
                    Some(sender),
                    "seed {seed}: {sender} told of {position:x}, not its message"
                );
                assert!(
                    told.insert((*position, *kind)),
                    "seed {seed}: {kind:?} of {position:x} told twice"
                );
            }
        }
    }
    if crashed {
        return;
    }
    for (position, sender) in &model.sent {
        if model.ever_left.contains(sender) || !model.members.contains(sender) {
            continue;
        }
        let ticked = told.contains(&(*position, ReceiptKind::Delivered))
            || told.contains(&(*position, ReceiptKind::Read));
        assert!(ticked, "seed {seed}: {position:x} by {sender} never ticked");
    }
}

/// A copy of every fragment (export, then import into another store)
/// reads the same groups: records, logs, marks and members' lists.
fn assert_copies_read_the_same(store: &Store, group: GroupId, seed: u64) {
    let copy = Store::in_memory(Default::default()).expect("store");
    for f in 0..FRAGMENTS {
        let chunks = crate::replica::export_fragment_in(store, f, 3).expect("export");
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let txn = copy.db().begin_write().expect("txn");
            crate::replica::import_chunk(&txn, f, i == 0, i == last, chunk).expect("import");
            txn.commit().expect("commit");
        }
        let a = RedbMailbox::new(store.clone(), f);
        let b = RedbMailbox::new(copy.clone(), f);
        let read = |m: &RedbMailbox| {
            let lists: Vec<_> = (0..USERS)
                .map(|n| m.groups_of(&phone(n)).expect("list"))
                .collect();
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                m.group(group).expect("record"),
                m.group_ticks(group).expect("ticks"),
                m.group_log(group, 0, usize::MAX).expect("log"),
                m.group_fanned_out(group).expect("fanned out"),
                (0..4)
                    .map(|era| m.group_inbox(group, era).expect("inbox"))
                    .collect::<Vec<_>>(),
                m.groups_with_log().expect("groups"),
                lists
            )
        };
        assert_eq!(read(&a), read(&b), "seed {seed}: fragment {f}");
    }
}

type Asked = VecDeque<(u32, Seen, Option<GroupCommand>)>;

/// Answers come in commit order: applies them to the model in the order
/// the requests were made, as far as they are answered.
fn absorb_answers(world: &mut World, asked: &mut Asked, model: &mut Model) {
    while let Some((reply, _, _)) = asked.front() {
        let Some(answer) = world.answers.remove(reply) else {
            return;
        };
        let Some((_, seen, command)) = asked.pop_front() else {
            return;
        };
        let Ok(answer) = answer else {
            continue;
        };
        if let (GroupAnswer::Sent(stored), Seen::Message(from, _)) = (&answer, &seen) {
            model.sent.insert(stored.msg_id, from.clone());
        }
        let before = model.members.clone();
        let item = match (seen, command) {
            (Seen::Change(by, _), Some(command)) => {
                let change = apply_to_model(model, &by, command);
                Seen::Change(by, change)
            }
            (seen, _) => seen,
        };
        model.log(item, &before);
    }
}

/// What an acknowledged command did, as the group logs it.
fn apply_to_model(model: &mut Model, by: &PhoneNumber, command: GroupCommand) -> GroupChange {
    match command {
        GroupCommand::Add(members) => {
            for member in &members {
                model.members.insert(member.clone());
                model.joined.insert(member.clone(), model.items);
            }
            GroupChange::Added { members }
        }
        GroupCommand::Remove(members) => {
            for member in &members {
                model.ever_left.insert(member.clone());
                model.members.remove(member);
                model.admins.remove(member);
            }
            GroupChange::Removed { members }
        }
        GroupCommand::Promote(member) => {
            model.admins.insert(member.clone());
            GroupChange::Promoted { member }
        }
        GroupCommand::Leave => {
            model.ever_left.insert(by.clone());
            model.members.remove(by);
            model.admins.remove(by);
            let new_admin = if model.admins.is_empty() {
                let heir = model
                    .members
                    .iter()
                    .min_by_key(|m| (model.joined.get(*m).copied().unwrap_or(0), (*m).clone()))
                    .cloned();
                if let Some(heir) = &heir {
                    model.admins.insert(heir.clone());
                }
                heir
            } else {
                None
            };
            GroupChange::Left { new_admin }
        }
        other => panic!("not generated: {other:?}"),
    }
}
