use std::collections::BTreeMap;

use proto::PhoneNumber;
use router::Placement;
use test_support::{Rng, numbered as phone};

use super::*;

const LIMIT: u32 = 5;

fn group(others: &[u64]) -> GroupRecord {
    let others = others.iter().map(|n| phone(*n)).collect();
    let (record, _) = GroupRecord::create(1, 10, phone(0), "friends".to_owned(), others, LIMIT, 0)
        .expect("create");
    record
}

fn everyone_at(record: &GroupRecord, position: Position) -> Vec<PhoneNumber> {
    let placement = Placement::new(1).expect("placement");
    record
        .recipients_at(position, &placement, None)
        .into_values()
        .flatten()
        .collect()
}

#[test]
fn the_creator_is_the_admin_and_everyone_else_a_member() {
    let (record, change) = GroupRecord::create(
        7,
        10,
        phone(5),
        "team".to_owned(),
        vec![phone(2), phone(9)],
        LIMIT,
        123,
    )
    .expect("create");
    assert_eq!(
        change,
        GroupChange::Created {
            name: "team".to_owned(),
            members: vec![phone(5), phone(2), phone(9)],
        }
    );
    assert_eq!(record.member(&phone(5)).map(|m| m.role), Some(Role::Admin));
    assert_eq!(record.member(&phone(2)).map(|m| m.role), Some(Role::Member));
    assert_eq!(record.size(), 3);
    let numbers: Vec<_> = record.members.iter().map(|m| m.phone.clone()).collect();
    assert_eq!(numbers, vec![phone(2), phone(5), phone(9)], "kept sorted");
}

#[test]
fn creating_refuses_bad_names_lists_and_sizes() {
    let create = |name: &str, others: Vec<PhoneNumber>| {
        GroupRecord::create(1, 10, phone(0), name.to_owned(), others, LIMIT, 0).map(|_| ())
    };
    let too_long = "x".repeat(MAX_GROUP_NAME_BYTES + 1);
    let cases: Vec<(&str, Vec<PhoneNumber>, GroupError)> = vec![
        ("", vec![], GroupError::InvalidName),
        (&too_long, vec![], GroupError::InvalidName),
        ("a\nb", vec![], GroupError::InvalidName),
        ("ok", vec![phone(0)], GroupError::AlreadyMember(phone(0))),
        (
            "ok",
            vec![phone(1), phone(1)],
            GroupError::Invalid(format!("{} is listed twice", phone(1))),
        ),
        (
            "ok",
            (1..=LIMIT as u64).map(phone).collect(),
            GroupError::Full { limit: LIMIT },
        ),
    ];
    for (name, others, expected) in cases {
        assert_eq!(
            create(name, others.clone()),
            Err(expected),
            "{name:?} {others:?}"
        );
    }
    assert_eq!(create("alone", vec![]), Ok(()), "a group of one is fine");
    assert_eq!(
        create(
            &"x".repeat(MAX_GROUP_NAME_BYTES),
            (1..LIMIT as u64).map(phone).collect()
        ),
        Ok(()),
        "at the limits"
    );
}

#[test]
fn only_members_act_and_only_admins_change_the_group() {
    use GroupCommand::*;
    let mut record = group(&[1, 2]);
    let untouched = record.clone();
    let cases: Vec<(u64, GroupCommand, GroupError)> = vec![
        (9, Leave, GroupError::NotMember),
        (9, Add(vec![phone(3)]), GroupError::NotMember),
        (1, Add(vec![phone(3)]), GroupError::NotAdmin),
        (1, Remove(vec![phone(2)]), GroupError::NotAdmin),
        (1, Promote(phone(1)), GroupError::NotAdmin),
        (1, Rename("mine".to_owned()), GroupError::NotAdmin),
        (0, Add(vec![phone(1)]), GroupError::AlreadyMember(phone(1))),
        (
            0,
            Add(vec![]),
            GroupError::Invalid("the list of members is empty".to_owned()),
        ),
        (
            0,
            Add((3..6).map(phone).collect()),
            GroupError::Full { limit: LIMIT },
        ),
        (
            0,
            Remove(vec![phone(7)]),
            GroupError::NoSuchMember(phone(7)),
        ),
        (
            0,
            Remove(vec![phone(0)]),
            GroupError::Invalid("an admin leaves instead of removing itself".to_owned()),
        ),
        (0, Promote(phone(7)), GroupError::NoSuchMember(phone(7))),
        (
            0,
            Demote(phone(0)),
            GroupError::Invalid("a group keeps at least one admin".to_owned()),
        ),
        (0, Rename(String::new()), GroupError::InvalidName),
    ];
    for (by, command, expected) in cases {
        assert_eq!(
            record.apply(&phone(by), command.clone(), 20, LIMIT),
            Err(expected),
            "{by} {command:?}"
        );
        assert_eq!(record, untouched, "a refusal changes nothing");
    }
    assert_eq!(record.may_send(&phone(9)), Err(GroupError::NotMember));
    assert_eq!(record.may_send(&phone(1)), Ok(()));
    assert_eq!(
        record.apply(&phone(0), Add(vec![phone(3), phone(4)]), 20, LIMIT),
        Ok(GroupChange::Added {
            members: vec![phone(3), phone(4)]
        }),
        "up to the limit"
    );
    assert_eq!(record.changed_at, 20);
}

#[test]
fn the_last_admin_leaving_hands_the_group_to_the_longest_standing_member() {
    use GroupCommand::*;
    let mut record = group(&[4]);
    record
        .apply(&phone(0), Add(vec![phone(2)]), 20, LIMIT)
        .expect("add");
    assert_eq!(
        record.apply(&phone(0), Leave, 30, LIMIT),
        Ok(GroupChange::Left {
            new_admin: Some(phone(4))
        }),
        "4 was there since the start, 2 came later"
    );
    assert_eq!(record.member(&phone(4)).map(|m| m.role), Some(Role::Admin));
    assert_eq!(record.may_send(&phone(0)), Err(GroupError::NotMember));
    record
        .apply(&phone(4), Promote(phone(2)), 40, LIMIT)
        .expect("promote");
    assert_eq!(
        record.apply(&phone(4), Leave, 50, LIMIT),
        Ok(GroupChange::Left { new_admin: None }),
        "another admin is left"
    );
    assert_eq!(
        record.apply(&phone(2), Leave, 60, LIMIT),
        Ok(GroupChange::Left { new_admin: None })
    );
    assert!(record.is_empty());
}

#[test]
fn members_receive_from_their_addition_through_their_removal() {
    use GroupCommand::*;
    let mut record = group(&[1]);
    record
        .apply(&phone(0), Add(vec![phone(2)]), 20, LIMIT)
        .expect("add");
    record
        .apply(&phone(0), Remove(vec![phone(1)]), 30, LIMIT)
        .expect("remove");
    record
        .apply(&phone(0), Add(vec![phone(1)]), 50, LIMIT)
        .expect("add again");
    assert_eq!(everyone_at(&record, 10), vec![phone(0), phone(1)]);
    assert_eq!(everyone_at(&record, 19), vec![phone(0), phone(1)]);
    assert_eq!(everyone_at(&record, 20), vec![phone(0), phone(1), phone(2)]);
    assert_eq!(
        everyone_at(&record, 30),
        vec![phone(0), phone(1), phone(2)],
        "the removed member gets its removal"
    );
    assert_eq!(everyone_at(&record, 40), vec![phone(0), phone(2)]);
    assert_eq!(everyone_at(&record, 50), vec![phone(0), phone(1), phone(2)]);

    let placement = Placement::new(1).expect("placement");
    let without_sender: Vec<_> = record
        .recipients_at(40, &placement, Some(&phone(0)))
        .into_values()
        .flatten()
        .collect();
    assert_eq!(
        without_sender,
        vec![phone(2)],
        "a sender is not sent its own"
    );

    assert!(
        !record.forget_through(29),
        "fan-out not past the removal yet"
    );
    assert_eq!(everyone_at(&record, 30), vec![phone(0), phone(1), phone(2)]);
    assert!(record.forget_through(30));
    assert_eq!(
        record.member(&phone(1)).map(|m| m.spans.clone()),
        Some(vec![Span {
            since: 50,
            until: None
        }]),
        "only the current span is left"
    );
}

#[test]
fn recipients_are_grouped_by_the_fragment_of_their_mailbox() {
    let record = group(&(1..LIMIT as u64).collect::<Vec<_>>());
    let placement = Placement::new(3).expect("placement");
    let by_fragment = record.recipients_at(10, &placement, None);
    for (fragment, phones) in &by_fragment {
        assert!(phones.windows(2).all(|pair| pair[0] < pair[1]));
        for phone in phones {
            assert_eq!(placement.fragment_of(phone), *fragment);
        }
    }
    assert_eq!(
        by_fragment.values().map(Vec::len).sum::<usize>(),
        LIMIT as usize
    );
}

/// What a random history of changes must keep: who receives a position is
/// decided when it is logged and never changes while fan-out lags behind
/// (later changes and forgetting what fan-out has passed do not touch it),
/// and it agrees with a model that knows only each number's joins and
/// removals. A refused command changes nothing.
#[test]
fn recipients_of_a_position_never_change_under_later_changes() {
    for seed in 0..300 {
        check_history(seed);
    }
}

fn check_history(seed: u64) {
    use GroupCommand::*;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let numbers = 8;
    let pick = |rng: &mut Rng| phone(rng.below(numbers));
    let mut position = 100;
    let mut record = group(&[1, 2]);
    // number -> (position, joined?) in order; the model's truth.
    let mut history: BTreeMap<PhoneNumber, Vec<(Position, bool)>> = BTreeMap::new();
    for n in 0..3 {
        history.entry(phone(n)).or_default().push((10, true));
    }
    let model_at = |history: &BTreeMap<PhoneNumber, Vec<(Position, bool)>>, p: Position| {
        let mut who: Vec<PhoneNumber> = history
            .iter()
            .filter(|(_, events)| {
                let last = events.iter().rev().find(|(at, _)| *at <= p);
                matches!(last, Some((_, true))) || matches!(last, Some((at, false)) if *at == p)
            })
            .map(|(phone, _)| phone.clone())
            .collect();
        who.sort();
        who
    };
    let mut expected: BTreeMap<Position, Vec<PhoneNumber>> = BTreeMap::new();
    expected.insert(10, everyone_at(&record, 10));
    let mut done = 0;
    for _ in 0..60 {
        position += 1 + rng.below(3);
        let by = if rng.chance(80) {
            // Mostly someone who may act.
            record
                .current()
                .nth(rng.below(record.size() as u64) as usize)
                .map(|m| m.phone.clone())
                .unwrap_or_else(|| pick(&mut rng))
        } else {
            pick(&mut rng)
        };
        let command = match rng.below(7) {
            0 => Add((0..1 + rng.below(2)).map(|_| pick(&mut rng)).collect()),
            1 => Remove(vec![pick(&mut rng)]),
            2 => Promote(pick(&mut rng)),
            3 => Demote(pick(&mut rng)),
            4 => Rename(format!("name {position}")),
            5 => Leave,
            _ => {
                // A message: logged only if `by` may send.
                if record.may_send(&by).is_ok() {
                    expected.insert(position, everyone_at(&record, position));
                }
                continue;
            }
        };
        let before = record.clone();
        match record.apply(&by, command.clone(), position, LIMIT) {
            Ok(change) => {
                let (joined, left): (Vec<PhoneNumber>, Vec<PhoneNumber>) = match &change {
                    GroupChange::Added { members } => (members.clone(), vec![]),
                    GroupChange::Removed { members } => (vec![], members.clone()),
                    GroupChange::Left { .. } => (vec![], vec![by.clone()]),
                    _ => (vec![], vec![]),
                };
                for phone in joined {
                    history.entry(phone).or_default().push((position, true));
                }
                for phone in left {
                    history.entry(phone).or_default().push((position, false));
                }
                assert!(record.size() <= LIMIT as usize, "seed {seed}");
                assert!(
                    record.is_empty() || record.current().any(|m| m.role == Role::Admin),
                    "seed {seed}: a group with members has an admin"
                );
                expected.insert(position, everyone_at(&record, position));
            }
            Err(_) => assert_eq!(record, before, "seed {seed}: {command:?} refused"),
        }
        if rng.chance(20) {
            done = rng.below(position - done) + done;
            record.forget_through(done);
            expected.retain(|p, _| *p > done);
        }
        for (p, who) in &expected {
            assert_eq!(&everyone_at(&record, *p), who, "seed {seed}: position {p}");
            assert_eq!(&model_at(&history, *p), who, "seed {seed}: model at {p}");
        }
    }
}
