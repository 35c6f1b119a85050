use std::collections::BTreeMap;

use proto::{GroupCommand, PhoneNumber, ReceiptKind};
use test_support::{Rng, numbered as phone};

use super::*;

const LIMIT: u32 = 8;

fn group_of(n: u64) -> GroupRecord {
    let others = (1..n).map(phone).collect();
    let (record, _) =
        GroupRecord::create(1, 10, phone(0), "g".to_owned(), others, LIMIT, 0).expect("create");
    record
}

#[test]
fn a_message_is_delivered_then_read_once_every_other_member_is_there() {
    let record = group_of(3);
    let mut ticks = Ticks::default();
    ticks.logged(20, phone(0), 5);
    assert!(ticks.settle(&record, 0, 100).is_empty(), "nobody has it");
    ticks.advance(&phone(1), 20, 0);
    assert!(
        ticks.settle(&record, 0, 100).is_empty(),
        "one of two has it"
    );
    assert_eq!(
        ticks.advance(&phone(2), 25, 0),
        Some(Cursor {
            delivered: 25,
            read: 0
        })
    );
    let settled = ticks.settle(&record, 0, 100);
    assert_eq!(settled.now_delivered, vec![20]);
    assert_eq!(
        settled.receipts,
        BTreeMap::from([((phone(0), ReceiptKind::Delivered), vec![20])])
    );
    assert!(ticks.settle(&record, 0, 100).is_empty(), "settled once");
    ticks.advance(&phone(1), 0, 20);
    ticks.advance(&phone(2), 0, 30);
    let settled = ticks.settle(&record, 0, 100);
    assert_eq!(settled.done, vec![20]);
    assert_eq!(
        settled.receipts,
        BTreeMap::from([((phone(0), ReceiptKind::Read), vec![20])])
    );
    assert_eq!(ticks.unticked(), 0);
}

#[test]
fn cursors_only_move_forward_and_a_read_implies_delivery() {
    let mut ticks = Ticks::default();
    assert_eq!(
        ticks.advance(&phone(1), 0, 40),
        Some(Cursor {
            delivered: 40,
            read: 40
        })
    );
    assert_eq!(
        ticks.advance(&phone(1), 30, 30),
        None,
        "an older update changes nothing"
    );
    assert_eq!(
        ticks.advance(&phone(1), 50, 0),
        Some(Cursor {
            delivered: 50,
            read: 40
        })
    );
}

#[test]
fn the_sender_and_members_added_later_or_gone_do_not_hold_ticks_back() {
    let mut record = group_of(3);
    let mut ticks = Ticks::default();
    ticks.logged(20, phone(1), 5);
    // Phone 3 joins after the message; phone 2 leaves without reading it.
    record
        .apply(&phone(0), GroupCommand::Add(vec![phone(3)]), 30, LIMIT)
        .expect("add");
    ticks.advance(&phone(0), 0, 30);
    assert!(
        ticks.settle(&record, 0, 100).is_empty(),
        "phone 2 has not read it"
    );
    record
        .apply(&phone(0), GroupCommand::Remove(vec![phone(2)]), 40, LIMIT)
        .expect("remove");
    ticks.members_changed();
    let settled = ticks.settle(&record, 0, 100);
    assert_eq!(
        settled.receipts,
        BTreeMap::from([((phone(1), ReceiptKind::Read), vec![20])])
    );
}

#[test]
fn expired_and_overflowing_messages_are_given_up() {
    let record = group_of(2);
    let mut ticks = Ticks::default();
    for (position, ts) in [(20, 1), (21, 100), (22, 100), (23, 100)] {
        ticks.logged(position, phone(0), ts);
    }
    let settled = ticks.settle(&record, 50, 2);
    assert_eq!(
        settled.done,
        vec![20, 21],
        "20 expired, 21 over the bound of 2"
    );
    assert_eq!(settled.given_up, 2);
    assert!(settled.receipts.is_empty());
    assert_eq!(ticks.unticked(), 2);
}

#[test]
fn message_info_names_each_counted_member_with_its_state() {
    let record = group_of(4);
    let mut ticks = Ticks::default();
    ticks.logged(20, phone(0), 5);
    ticks.advance(&phone(1), 20, 0);
    ticks.advance(&phone(2), 20, 20);
    let (sender, members) = ticks.info(&record, 20).expect("unticked");
    assert_eq!(sender, phone(0));
    assert_eq!(
        members,
        vec![
            (phone(1), Some(ReceiptKind::Delivered)),
            (phone(2), Some(ReceiptKind::Read)),
            (phone(3), None),
        ]
    );
    assert_eq!(ticks.info(&record, 21), None, "not a message");
}

/// Random groups, messages, cursor moves and membership changes: every
/// settle agrees with the definition checked member by member, and each
/// message gets each receipt at most once, a read never before its
/// delivered unless both come together.
#[test]
fn settling_agrees_with_a_member_by_member_check() {
    for seed in 0..300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut record = group_of(2 + rng.below(5));
        let mut ticks = Ticks::default();
        let mut position: Position = 10;
        let mut senders: BTreeMap<Position, PhoneNumber> = BTreeMap::new();
        let mut told: BTreeMap<(Position, ReceiptKind), u32> = BTreeMap::new();
        for _ in 0..60 {
            position += 1;
            let members: Vec<PhoneNumber> = record.current().map(|m| m.phone.clone()).collect();
            let someone = members[rng.below(members.len() as u64) as usize].clone();
            match rng.below(10) {
                0..=3 => {
                    ticks.logged(position, someone.clone(), 0);
                    senders.insert(position, someone);
                }
                4..=6 => {
                    let delivered = position - rng.below(4);
                    let read = if rng.below(2) == 0 {
                        delivered - rng.below(3)
                    } else {
                        0
                    };
                    ticks.advance(&someone, delivered, read);
                }
                7 => {
                    let new = phone(10 + position);
                    if record
                        .apply(&phone(0), GroupCommand::Add(vec![new]), position, LIMIT)
                        .is_ok()
                    {
                        ticks.members_changed();
                    }
                }
                8 if someone != phone(0) => {
                    record
                        .apply(&someone, GroupCommand::Leave, position, LIMIT)
                        .expect("leave");
                    ticks.members_changed();
                }
                _ => {}
            }
            let before = ticks.clone();
            let settled = ticks.settle(&record, 0, usize::MAX);
            for ((sender, kind), positions) in &settled.receipts {
                for p in positions {
                    assert_eq!(senders.get(p), Some(sender), "seed {seed}");
                    *told.entry((*p, *kind)).or_default() += 1;
                }
            }
            // The definition, member by member, on the state before.
            for (p, message) in &before.unticked {
                let reached = |kind: ReceiptKind| {
                    record.current().all(|m| {
                        let cursor = before.cursors.get(&m.phone).copied().unwrap_or_default();
                        let at = match kind {
                            ReceiptKind::Delivered => cursor.delivered.max(cursor.read),
                            ReceiptKind::Read => cursor.read,
                        };
                        m.phone == message.sender
                            || m.since().is_none_or(|since| since > *p)
                            || at >= *p
                    })
                };
                let read_now = settled
                    .receipts
                    .get(&(message.sender.clone(), ReceiptKind::Read))
                    .is_some_and(|ps| ps.contains(p));
                let delivered_now = settled.now_delivered.contains(p);
                assert_eq!(read_now, reached(ReceiptKind::Read), "seed {seed} read {p}");
                let expect_delivered =
                    !read_now && !message.delivered && reached(ReceiptKind::Delivered);
                assert_eq!(delivered_now, expect_delivered, "seed {seed} delivered {p}");
            }
        }
        assert!(
            told.values().all(|n| *n == 1),
            "seed {seed}: a receipt told twice"
        );
    }
}
