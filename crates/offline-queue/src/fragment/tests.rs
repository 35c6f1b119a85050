//! Table-style tests of the core with an in-memory store and a harness that
//! commits persisted writes in order, like the writer thread does.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::*;
use crate::account::{AccountRecord, AccountReply, AccountWrite};
use crate::store::{ExpiredEntry, ExpiryScan};

/// An in-memory [`MailboxRead`] that applies [`WriteOp`]s.
#[derive(Default)]
struct MemMailbox {
    entries: RefCell<BTreeMap<(PhoneNumber, MessageId), EntryBody>>,
    dedupe: RefCell<HashMap<DedupeKey, (MessageId, TimestampMs)>>,
    /// Delivered marks: (owner, id) → sender, as `store` keeps them.
    delivered: RefCell<HashMap<(PhoneNumber, MessageId), PhoneNumber>>,
    accounts: RefCell<HashMap<PhoneNumber, AccountRecord>>,
}

impl MemMailbox {
    fn apply(&self, ops: &[WriteOp]) {
        for op in ops {
            match op {
                WriteOp::PutMessage {
                    recipient,
                    sender,
                    client_msg_id,
                    id,
                    server_ts,
                    body,
                } => {
                    let body = EntryBody::from_bytes(body).expect("body");
                    self.entries
                        .borrow_mut()
                        .insert((recipient.clone(), *id), body);
                    self.dedupe.borrow_mut().insert(
                        (recipient.clone(), sender.clone(), *client_msg_id),
                        (*id, *server_ts),
                    );
                }
                WriteOp::PutReceipt { owner, id, body } => {
                    let body = EntryBody::from_bytes(body).expect("body");
                    self.entries.borrow_mut().insert((owner.clone(), *id), body);
                }
                WriteOp::Delete { owner, ids } => {
                    for id in ids {
                        let removed = self.entries.borrow_mut().remove(&(owner.clone(), *id));
                        if let Some(EntryBody::Message { from, .. }) = removed {
                            self.delivered
                                .borrow_mut()
                                .insert((owner.clone(), *id), from);
                        }
                    }
                }
                WriteOp::PutAccount { user, record } => {
                    self.accounts
                        .borrow_mut()
                        .insert(user.clone(), record.clone());
                }
                WriteOp::NextSeq(_) | WriteOp::SweepDedupe { .. } => {}
                // Groups are tested over the real tables (`groups/tests.rs`).
                WriteOp::PutGroup { .. }
                | WriteOp::LogGroup { .. }
                | WriteOp::GroupFannedOut { .. }
                | WriteOp::DeleteGroup { .. }
                | WriteOp::PutGroupEntries { .. }
                | WriteOp::PutGroupShared { .. }
                | WriteOp::GroupCursors { .. }
                | WriteOp::GroupGap { .. }
                | WriteOp::GroupGapFilled { .. }
                | WriteOp::GroupTicked { .. } => {
                    unreachable!("these tests make no groups")
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.entries.borrow().len()
    }
}

impl MailboxRead for MemMailbox {
    fn account(&self, user: &PhoneNumber) -> Result<AccountRecord, FragmentError> {
        Ok(self
            .accounts
            .borrow()
            .get(user)
            .cloned()
            .unwrap_or_default())
    }

    fn dedupe(
        &self,
        recipient: &PhoneNumber,
        sender: &PhoneNumber,
        client_msg_id: u64,
    ) -> Result<Option<(MessageId, TimestampMs)>, FragmentError> {
        Ok(self
            .dedupe
            .borrow()
            .get(&(recipient.clone(), sender.clone(), client_msg_id))
            .copied())
    }

    fn page(
        &self,
        owner: &PhoneNumber,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Entry>, FragmentError> {
        let start = after.map_or(0, |a| a + 1);
        Ok(self
            .entries
            .borrow()
            .range((owner.clone(), start)..=(owner.clone(), u64::MAX))
            .take(limit)
            .map(|((_, id), body)| Entry {
                id: *id,
                body: body.clone(),
            })
            .collect())
    }

    fn entry(
        &self,
        owner: &PhoneNumber,
        id: MessageId,
    ) -> Result<Option<EntryBody>, FragmentError> {
        Ok(self.entries.borrow().get(&(owner.clone(), id)).cloned())
    }

    fn usage(&self) -> Result<MailboxUsage, FragmentError> {
        let mut usage = MailboxUsage::default();
        for ((owner, _), body) in self.entries.borrow().iter() {
            if let EntryBody::Message { from, payload, .. } = body {
                usage.add(owner, from, payload.len() as u64);
            }
        }
        Ok(usage)
    }

    fn expired(
        &self,
        resume: Option<&(PhoneNumber, MessageId)>,
        before_ms: TimestampMs,
        max_scan: usize,
    ) -> Result<ExpiryScan, FragmentError> {
        let entries = self.entries.borrow();
        let mut scan = ExpiryScan::default();
        let after = |key: &(PhoneNumber, MessageId)| resume.is_none_or(|r| key > r);
        for (seen, (key, body)) in entries.iter().filter(|(k, _)| after(k)).enumerate() {
            let (sender, at, payload_len) = match body {
                EntryBody::Message {
                    from,
                    server_ts,
                    payload,
                    ..
                } => (Some(from.clone()), *server_ts, payload.len() as u64),
                other => (None, other.ts(), 0),
            };
            if at < before_ms {
                scan.expired.push(ExpiredEntry {
                    owner: key.0.clone(),
                    id: key.1,
                    sender,
                    payload_len,
                });
            }
            if seen + 1 >= max_scan {
                scan.resume = Some(key.clone());
                break;
            }
        }
        Ok(scan)
    }

    fn senders(
        &self,
        owner: &PhoneNumber,
        ids: &[MessageId],
    ) -> Result<Vec<Option<PhoneNumber>>, FragmentError> {
        let entries = self.entries.borrow();
        let delivered = self.delivered.borrow();
        Ok(ids
            .iter()
            .map(|id| match entries.get(&(owner.clone(), *id)) {
                Some(EntryBody::Message { from, .. }) => Some(from.clone()),
                Some(
                    EntryBody::Receipt { .. }
                    | EntryBody::Group { .. }
                    | EntryBody::GroupRef { .. },
                ) => None,
                None => delivered.get(&(owner.clone(), *id)).cloned(),
            })
            .collect())
    }
}

type Core = FragmentCore<&'static str, u32>;

/// What the shell would have done, after committing every write in order.
#[derive(Default, Debug)]
struct Outbox {
    pushes: Vec<(&'static str, Vec<Entry>)>,
    replaced: Vec<&'static str>,
    revoked: Vec<&'static str>,
    replies: Vec<(u32, Result<Stored, FragmentError>)>,
    account_replies: Vec<(u32, Result<AccountReply, FragmentError>)>,
    receipts: Vec<(FragmentId, ReceiptRequest)>,
    deletes: Vec<(FragmentId, PhoneNumber, Vec<MessageId>)>,
}

impl Outbox {
    fn pushed_ids(&self) -> Vec<MessageId> {
        self.pushes
            .iter()
            .flat_map(|(_, entries)| entries.iter().map(|e| e.id))
            .collect()
    }
}

/// Runs actions; `commit` false leaves persists pending (returned).
fn run(
    core: &mut Core,
    mem: &MemMailbox,
    actions: Vec<Action<&'static str, u32>>,
    out: &mut Outbox,
) {
    let mut queue: std::collections::VecDeque<_> = actions.into();
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Persist { tag, ops } => {
                mem.apply(&ops);
                queue.extend(core.committed(mem, tag, Ok(())));
            }
            Action::Push { endpoint, entries } => out.pushes.push((endpoint, entries)),
            Action::Replaced { endpoint } => out.replaced.push(endpoint),
            Action::Revoked { endpoint } => out.revoked.push(endpoint),
            Action::AccountReply { to, result } => out.account_replies.push((to, result)),
            Action::Reply { to, result } => out.replies.push((to, result)),
            Action::StoreReceipt {
                fragment, request, ..
            } => out.receipts.push((fragment, request)),
            Action::GroupReply { .. } | Action::Note { .. } => {
                unreachable!("these tests make no groups")
            }
            Action::DeleteAcked {
                fragment,
                owner,
                ids,
            } => out.deletes.push((fragment, owner, ids)),
        }
    }
}

use test_support::numbered as phone;

/// A message with no ordering constraint.
fn msg(to: PhoneNumber, from: PhoneNumber, client_msg_id: u64, payload: Vec<u8>) -> NewMessage {
    NewMessage {
        to,
        from,
        client_msg_id,
        after: None,
        payload,
    }
}

/// Fragment 0 of a placement of one fragment: every user is its own.
fn core(window: usize, page: usize) -> Core {
    FragmentCore::new(
        0,
        Placement::new(1).expect("placement"),
        FragmentConfig {
            window,
            page,
            ..FragmentConfig::default()
        },
        1,
    )
}

#[test]
fn offline_message_is_acked_after_commit_and_pushed_at_attach() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let actions = c.append(&mem, msg(phone(2), phone(1), 10, b"hi".to_vec()), 1000, 1);
    assert!(
        matches!(actions.as_slice(), [Action::Persist { .. }]),
        "nothing is answered before the commit"
    );
    run(&mut c, &mem, actions, &mut out);
    let (to, result) = &out.replies[0];
    assert_eq!(*to, 1);
    let stored = result.clone().expect("stored");
    assert_eq!(stored.server_ts, 1000);
    assert!(out.pushes.is_empty(), "recipient offline");

    let actions = c.attach(&mem, phone(2), 77, None, "dev-b").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.pushed_ids(), vec![stored.msg_id]);
}

#[test]
fn resends_are_acked_with_the_first_id_and_stored_once() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    // Second copy arrives while the first is still being committed.
    let first = c.append(&mem, msg(phone(2), phone(1), 5, b"x".to_vec()), 1, 1);
    let second = c.append(&mem, msg(phone(2), phone(1), 5, b"x".to_vec()), 2, 2);
    assert!(second.is_empty(), "the resend waits for the first commit");
    run(&mut c, &mem, first, &mut out);
    // A third copy after the commit is answered from the dedupe table.
    let third = c.append(&mem, msg(phone(2), phone(1), 5, b"x".to_vec()), 3, 3);
    assert!(matches!(third.as_slice(), [Action::Reply { .. }]));
    run(&mut c, &mem, third, &mut out);
    let ids: Vec<_> = out
        .replies
        .iter()
        .map(|(_, r)| r.clone().expect("ok").msg_id)
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(mem.len(), 1);
    // The same client id from another sender is another message.
    let other = c.append(&mem, msg(phone(2), phone(9), 5, b"y".to_vec()), 4, 4);
    run(&mut c, &mem, other, &mut out);
    assert_eq!(mem.len(), 2);
}

#[test]
fn a_message_after_an_earlier_one_waits_for_it_to_be_stored() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let after = |cid: u64, earlier: u64| NewMessage {
        after: Some(earlier),
        ..msg(phone(2), phone(1), cid, vec![cid as u8])
    };
    // The earlier one was refused elsewhere and not yet resent: refused.
    let refused = c.append(&mem, after(2, 1), 1, 1);
    run(&mut c, &mem, refused, &mut out);
    assert_eq!(
        out.replies,
        vec![(1, Err(FragmentError::EarlierMessageMissing))]
    );
    assert_eq!(mem.len(), 0);
    // Being committed is enough (commits complete in order) ...
    let first = c.append(&mem, msg(phone(2), phone(1), 1, vec![1]), 2, 2);
    let second = c.append(&mem, after(2, 1), 3, 3);
    run(&mut c, &mem, first, &mut out);
    run(&mut c, &mem, second, &mut out);
    // ... and so is being stored; another sender's id 1 does not count.
    let third = c.append(&mem, after(3, 2), 4, 4);
    run(&mut c, &mem, third, &mut out);
    let stranger = NewMessage {
        after: Some(1),
        ..msg(phone(2), phone(9), 7, vec![7])
    };
    let strangers = c.append(&mem, stranger, 5, 5);
    run(&mut c, &mem, strangers, &mut out);
    let results: Vec<_> = out.replies[1..]
        .iter()
        .map(|(to, r)| (*to, r.is_ok()))
        .collect();
    assert_eq!(results, vec![(2, true), (3, true), (4, true), (5, false)]);
    let ids: Vec<_> = out.replies[1..4]
        .iter()
        .map(|(_, r)| r.clone().expect("stored").msg_id)
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "stored in order: {ids:?}"
    );
}

#[test]
fn online_pushes_keep_order_and_respect_the_window() {
    let mem = MemMailbox::default();
    let mut c = core(4, 8);
    let mut out = Outbox::default();
    let actions = c.attach(&mem, phone(2), 1, None, "dev").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    for i in 0..10u64 {
        let actions = c.append(&mem, msg(phone(2), phone(1), i, vec![i as u8]), i, i as u32);
        run(&mut c, &mem, actions, &mut out);
    }
    let pushed = out.pushed_ids();
    assert_eq!(pushed.len(), 4, "window of 4");
    // Acking two opens two slots.
    let actions = c.ack(&mem, &phone(2), &pushed[..2], 50);
    run(&mut c, &mem, actions, &mut out);
    let pushed = out.pushed_ids();
    assert_eq!(pushed.len(), 6);
    assert!(
        pushed.windows(2).all(|w| w[0] < w[1]),
        "in order: {pushed:?}"
    );
    let payloads: Vec<u8> = out
        .pushes
        .iter()
        .flat_map(|(_, es)| es.iter())
        .map(|e| match &e.body {
            EntryBody::Message { payload, .. } => payload[0],
            EntryBody::Receipt { .. } | EntryBody::Group { .. } | EntryBody::GroupRef { .. } => 255,
        })
        .collect();
    assert_eq!(payloads, vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn a_backlog_larger_than_a_page_is_delivered_whole_and_in_order() {
    let mem = MemMailbox::default();
    let mut c = core(8, 5);
    let mut out = Outbox::default();
    for i in 0..23u64 {
        let actions = c.append(&mem, msg(phone(2), phone(1), i, vec![i as u8]), i, 0);
        run(&mut c, &mem, actions, &mut out);
    }
    let actions = c.attach(&mem, phone(2), 1, None, "dev").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    // Live messages arrive while the backlog is still paged in.
    for i in 23..26u64 {
        let actions = c.append(&mem, msg(phone(2), phone(1), i, vec![i as u8]), i, 0);
        run(&mut c, &mem, actions, &mut out);
    }
    let mut acked = 0;
    while acked < out.pushed_ids().len() {
        let ids = out.pushed_ids()[acked..].to_vec();
        acked += ids.len();
        let actions = c.ack(&mem, &phone(2), &ids, 100);
        run(&mut c, &mem, actions, &mut out);
    }
    let pushed = out.pushed_ids();
    assert_eq!(pushed.len(), 26);
    assert!(pushed.windows(2).all(|w| w[0] < w[1]), "in order");
}

#[test]
fn acking_a_message_stores_a_receipt_for_its_sender_then_deletes_it() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let actions = c.append(&mem, msg(phone(2), phone(1), 1, b"m".to_vec()), 10, 0);
    run(&mut c, &mem, actions, &mut out);
    let actions = c.attach(&mem, phone(1), 1, None, "sender").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    let actions = c
        .attach(&mem, phone(2), 2, None, "recipient")
        .expect("attach");
    run(&mut c, &mem, actions, &mut out);
    let msg_id = out.pushed_ids()[0];

    let actions = c.ack(&mem, &phone(2), &[msg_id], 20);
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.receipts.len(), 1);
    assert_eq!(mem.len(), 1, "not deleted before the receipt is durable");
    let (fragment, request) = out.receipts.remove(0);
    assert_eq!(fragment, 0);
    assert_eq!(request.owner, phone(1));
    assert_eq!(request.msg_ids, vec![msg_id]);

    // The sender's fragment (here the same core) stores the receipt.
    let actions = c.store_receipt(&mem, request, None);
    run(&mut c, &mem, actions, &mut out);
    let (_, sender_push) = out
        .pushes
        .iter()
        .find(|(e, _)| *e == "sender")
        .cloned()
        .expect("receipt pushed to the online sender");
    assert!(matches!(
        &sender_push[0].body,
        EntryBody::Receipt { kind: ReceiptKind::Delivered, by, msg_ids, .. }
            if *by == phone(2) && *msg_ids == vec![msg_id]
    ));
    let (_, owner, ids) = out.deletes.remove(0);
    let actions = c.delete_acked(owner, ids);
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(mem.len(), 1, "only the receipt is left");

    // The sender acks the receipt: it is deleted without a receipt of its own.
    let receipt_id = sender_push[0].id;
    let actions = c.ack(&mem, &phone(1), &[receipt_id], 30);
    run(&mut c, &mem, actions, &mut out);
    assert!(out.receipts.is_empty());
    assert_eq!(mem.len(), 0);
}

/// A read receipt comes through the reader's fragment; one whose owner
/// lives in another fragment is passed on there with its waiter, behind the
/// Delivered receipts this fragment sent on earlier acks, and nothing is
/// stored here.
#[test]
fn a_receipt_for_another_fragments_user_is_passed_on_in_order() {
    let placement = Placement::new(2).expect("placement");
    let (reader, sender) = {
        let mut users = (1..).map(phone);
        let reader = users
            .find(|u| placement.fragment_of(u) == 0)
            .expect("a user of 0");
        let sender = users
            .find(|u| placement.fragment_of(u) == 1)
            .expect("a user of 1");
        (reader, sender)
    };
    let mut c: Core = FragmentCore::new(0, placement, FragmentConfig::default(), 1);
    let mem = MemMailbox::default();
    let mut out = Outbox::default();
    let actions = c
        .attach(&mem, reader.clone(), 1, None, "reader")
        .expect("attach");
    run(&mut c, &mem, actions, &mut out);
    let actions = c.append(
        &mem,
        msg(reader.clone(), sender.clone(), 1, b"x".to_vec()),
        10,
        7,
    );
    run(&mut c, &mem, actions, &mut out);
    let msg_id = out.pushed_ids()[0];

    let mut actions = c.ack(&mem, &reader, &[msg_id], 20);
    actions.extend(c.store_receipt(
        &mem,
        ReceiptRequest {
            owner: sender.clone(),
            kind: ReceiptKind::Read,
            by: reader.clone(),
            msg_ids: vec![msg_id],
            ts: 21,
            then_delete: None,
        },
        Some(8),
    ));
    let passed_on: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::StoreReceipt {
                fragment,
                request,
                waiter,
            } => Some((*fragment, request.kind, *waiter)),
            _ => None,
        })
        .collect();
    assert_eq!(
        passed_on,
        vec![
            (1, ReceiptKind::Delivered, None),
            (1, ReceiptKind::Read, Some(8))
        ]
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Persist { .. })),
        "nothing is stored for a user of another fragment"
    );
}

#[test]
fn a_new_attach_replaces_the_old_endpoint_and_redelivers_unacked() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let actions = c.append(&mem, msg(phone(2), phone(1), 1, b"m".to_vec()), 10, 0);
    run(&mut c, &mem, actions, &mut out);
    let actions = c.attach(&mem, phone(2), 1, None, "old").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    let actions = c.attach(&mem, phone(2), 2, None, "new").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.replaced, vec!["old"]);
    assert_eq!(out.pushes.len(), 2);
    assert_eq!(out.pushes[1].0, "new");
    // A late detach of the old session does not detach the new one.
    c.detach(&phone(2), 1);
    assert!(c.is_online(&phone(2)));
    c.detach(&phone(2), 2);
    assert!(!c.is_online(&phone(2)));
}

#[test]
fn an_older_session_does_not_displace_a_newer_one() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let actions = c.attach(&mem, phone(2), 20, None, "newer").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    let actions = c.attach(&mem, phone(2), 10, None, "stale").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.replaced, vec!["stale"]);
    let actions = c.append(&mem, msg(phone(2), phone(1), 1, b"m".to_vec()), 10, 0);
    run(&mut c, &mem, actions, &mut out);
    assert!(
        out.pushes.iter().all(|(to, _)| *to == "newer"),
        "{:?}",
        out.pushes
    );
    assert!(!out.pushes.is_empty());
}

#[test]
fn oversized_payloads_and_failed_commits_are_answered_with_errors() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let big = vec![0; FragmentConfig::default().max_payload + 1];
    let actions = c.append(&mem, msg(phone(2), phone(1), 1, big), 1, 1);
    run(&mut c, &mem, actions, &mut out);
    assert!(matches!(
        out.replies[0].1,
        Err(FragmentError::PayloadTooLarge { .. })
    ));

    let actions = c.append(&mem, msg(phone(2), phone(1), 2, b"x".to_vec()), 1, 2);
    let Some(Action::Persist { tag, .. }) = actions.into_iter().next() else {
        panic!("expected a persist");
    };
    let actions = c.committed(&mem, tag, Err("disk full".into()));
    run(&mut c, &mem, actions, &mut out);
    assert!(matches!(out.replies[1].1, Err(FragmentError::Storage(_))));
    // The failed key is not remembered as pending: a retry is stored.
    let actions = c.append(&mem, msg(phone(2), phone(1), 2, b"x".to_vec()), 1, 3);
    run(&mut c, &mem, actions, &mut out);
    assert!(out.replies[2].1.is_ok());
    assert_eq!(mem.len(), 1);
}

/// A read receipt by `by` for `owner`'s messages `ids`, as a session asks.
fn read(owner: PhoneNumber, by: PhoneNumber, ids: Vec<MessageId>) -> ReceiptRequest {
    ReceiptRequest {
        owner,
        kind: ReceiptKind::Read,
        by,
        msg_ids: ids,
        ts: 50,
        then_delete: None,
    }
}

/// The ids named by the receipts stored for `owner` so far.
fn receipt_ids(mem: &MemMailbox, owner: &PhoneNumber) -> Vec<Vec<MessageId>> {
    mem.entries
        .borrow()
        .iter()
        .filter(|((o, _), _)| o == owner)
        .filter_map(|(_, body)| match body {
            EntryBody::Receipt { msg_ids, .. } => Some(msg_ids.clone()),
            EntryBody::Message { .. } | EntryBody::Group { .. } | EntryBody::GroupRef { .. } => {
                None
            }
        })
        .collect()
}

/// Only messages that `owner` sent to the reader can be marked read: ids
/// of other senders, of other fragments, never given out, or still being
/// committed are dropped; a read with none left, with no ids or with too
/// many is refused. Checked while the message waits and after it was
/// delivered and deleted (its delivered mark).
#[test]
fn a_read_receipt_names_only_messages_the_sender_sent_the_reader() {
    let (reader, sender, other) = (phone(1), phone(2), phone(3));
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let actions = c.append(
        &mem,
        msg(reader.clone(), sender.clone(), 1, b"a".to_vec()),
        1,
        0,
    );
    run(&mut c, &mem, actions, &mut out);
    let actions = c.append(
        &mem,
        msg(reader.clone(), other.clone(), 1, b"b".to_vec()),
        2,
        0,
    );
    run(&mut c, &mem, actions, &mut out);
    let (from_sender, from_other) = (
        out.replies[0].1.clone().expect("stored").msg_id,
        out.replies[1].1.clone().expect("stored").msg_id,
    );
    let foreign_fragment = compose_message_id(9, 1);
    let never_given = compose_message_id(0, 1_000_000);

    // (ids asked, ids stored, or the refusal)
    type Case = (Vec<MessageId>, Result<Vec<MessageId>, ()>);
    let cases: Vec<Case> = vec![
        (vec![from_sender], Ok(vec![from_sender])),
        (vec![from_sender, from_sender], Ok(vec![from_sender])),
        (
            vec![from_other, foreign_fragment, never_given, from_sender],
            Ok(vec![from_sender]),
        ),
        (vec![from_other], Err(())),
        (vec![foreign_fragment, never_given], Err(())),
        (vec![], Err(())),
        (vec![from_sender; proto::MAX_IDS_PER_ACK + 1], Err(())),
    ];
    let check = |c: &mut Core, out: &mut Outbox, when: &str| {
        for (i, (ids, expected)) in cases.iter().enumerate() {
            mem.entries.borrow_mut().retain(|(o, _), _| *o != sender);
            out.replies.clear();
            let actions = c.store_receipt(
                &mem,
                read(sender.clone(), reader.clone(), ids.clone()),
                Some(7),
            );
            run(c, &mem, actions, out);
            let answer = out
                .replies
                .iter()
                .find(|(to, _)| *to == 7)
                .map(|(_, r)| r.clone());
            match expected {
                Ok(stored) => {
                    assert!(matches!(answer, Some(Ok(_))), "{when} case {i}: {answer:?}");
                    assert_eq!(
                        receipt_ids(&mem, &sender),
                        vec![stored.clone()],
                        "{when} case {i}"
                    );
                }
                Err(()) => {
                    assert!(
                        matches!(answer, Some(Err(FragmentError::InvalidRequest(_)))),
                        "{when} case {i}: {answer:?}"
                    );
                    assert!(
                        receipt_ids(&mem, &sender).is_empty(),
                        "{when} case {i}: nothing stored"
                    );
                }
            }
        }
    };
    check(&mut c, &mut out, "waiting");

    // Delivered and acknowledged: the entries are gone, their marks stay.
    let actions = c
        .attach(&mem, reader.clone(), 1, None, "reader")
        .expect("attach");
    run(&mut c, &mem, actions, &mut out);
    let actions = c.ack(&mem, &reader, &[from_sender, from_other], 3);
    run(&mut c, &mem, actions, &mut out);
    for (_, request) in std::mem::take(&mut out.receipts) {
        let actions = c.store_receipt(&mem, request, None);
        run(&mut c, &mem, actions, &mut out);
    }
    for (_, owner, ids) in std::mem::take(&mut out.deletes) {
        let actions = c.delete_acked(owner, ids);
        run(&mut c, &mem, actions, &mut out);
    }
    assert!(c.attached().count() == 1 && mem.entries.borrow().keys().all(|(o, _)| *o != reader));
    check(&mut c, &mut out, "delivered");
}

/// An ack counts only for entries pushed to the attached device and not
/// yet acknowledged: other ids are ignored without reading the disk, and
/// the entries stay (pushed again at the next attach).
#[test]
fn acks_outside_the_delivery_window_are_ignored() {
    let (user, sender) = (phone(1), phone(2));
    let mem = MemMailbox::default();
    let mut c = core(2, 16);
    let mut out = Outbox::default();
    for i in 0..3 {
        let actions = c.append(
            &mem,
            msg(user.clone(), sender.clone(), i, b"m".to_vec()),
            1,
            0,
        );
        run(&mut c, &mem, actions, &mut out);
    }
    let ids: Vec<MessageId> = out
        .replies
        .iter()
        .map(|(_, r)| r.clone().expect("ok").msg_id)
        .collect();

    // Not attached: nothing counts.
    let actions = c.ack(&mem, &user, &ids, 2);
    assert!(actions.is_empty());
    let actions = c
        .attach(&mem, user.clone(), 1, None, "dev")
        .expect("attach");
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.pushed_ids(), ids[..2].to_vec(), "a window of two");

    // The third was never pushed: only the first two count, once.
    let actions = c.ack(&mem, &user, &[ids[2], ids[0], ids[0], ids[1]], 3);
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.receipts.len(), 1);
    assert_eq!(out.receipts[0].1.msg_ids, ids[..2].to_vec());
    assert_eq!(out.pushed_ids(), ids, "the window moved on to the third");
}

/// A receipt naming more messages than one entry holds is stored as
/// several entries, each deleting only the acked entries it names once it
/// is durable, so every pushed receipt fits in a frame.
#[test]
fn a_large_receipt_is_stored_as_entries_that_each_fit_a_frame() {
    let (owner, by) = (phone(1), phone(2));
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let ids: Vec<MessageId> = (1..=600).map(|s| compose_message_id(0, s)).collect();
    let request = ReceiptRequest {
        owner: owner.clone(),
        kind: ReceiptKind::Delivered,
        by: by.clone(),
        msg_ids: ids.clone(),
        ts: 5,
        then_delete: Some((3, by.clone(), ids.clone())),
    };
    let actions = c.store_receipt(&mem, request, Some(4));
    run(&mut c, &mem, actions, &mut out);
    let stored = receipt_ids(&mem, &owner);
    assert_eq!(
        stored.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![256, 256, 88]
    );
    assert_eq!(stored.concat(), ids);
    let deleted: Vec<Vec<MessageId>> = out.deletes.iter().map(|(_, _, d)| d.clone()).collect();
    assert_eq!(deleted, stored, "each entry deletes what it names");
    assert_eq!(out.replies.len(), 1, "one answer, after the last entry");
    for entry in mem.entries.borrow().values() {
        let frame = proto::ServerFrame::Receipt {
            id: u64::MAX,
            kind: ReceiptKind::Delivered,
            by: by.clone(),
            msg_ids: match entry {
                EntryBody::Receipt { msg_ids, .. } => msg_ids.clone(),
                EntryBody::Message { .. }
                | EntryBody::Group { .. }
                | EntryBody::GroupRef { .. } => Vec::new(),
            },
            ts: u64::MAX,
        };
        let encoded = proto::encode_frame(&frame, 4096).expect("fits a 4 KiB frame");
        assert!(encoded.len() <= 4096);
    }
}

/// A sender may hold only its share of a recipient's mailbox, and the
/// mailbox only its cap: further sends are refused (rate-limited for the
/// client) until the recipient's device acks, and a failed write gives its
/// share back. The counts survive a restart of the core.
#[test]
fn a_mailbox_holds_only_so_much_from_one_sender_and_in_all() {
    let (to, flooder, friend, third) = (phone(1), phone(2), phone(3), phone(4));
    let mem = MemMailbox::default();
    let config = FragmentConfig {
        mailbox: MailboxLimits {
            max_entries: 5,
            max_bytes: 1_000,
            max_entries_per_sender: 3,
            max_bytes_per_sender: 1_000,
        },
        ..FragmentConfig::default()
    };
    let mut c: Core =
        FragmentCore::new(0, Placement::new(1).expect("placement"), config.clone(), 1);
    let mut out = Outbox::default();
    let send = |c: &mut Core, from: &PhoneNumber, cid: u64, out: &mut Outbox| {
        out.replies.clear();
        let actions = c.append(
            &mem,
            msg(to.clone(), from.clone(), cid, b"spam".to_vec()),
            1,
            9,
        );
        run(c, &mem, actions, out);
        out.replies[0].1.clone()
    };
    for cid in 0..3 {
        assert!(send(&mut c, &flooder, cid, &mut out).is_ok());
    }
    assert_eq!(
        send(&mut c, &flooder, 3, &mut out),
        Err(FragmentError::MailboxFull(Full::Sender))
    );
    assert!(
        send(&mut c, &friend, 1, &mut out).is_ok(),
        "a friend still gets through"
    );
    assert!(send(&mut c, &friend, 2, &mut out).is_ok());
    assert_eq!(
        send(&mut c, &third, 1, &mut out),
        Err(FragmentError::MailboxFull(Full::Mailbox))
    );

    // A restarted core counts what is stored.
    let mut c: Core = FragmentCore::new(0, Placement::new(1).expect("placement"), config, 100)
        .with_usage(mem.usage().expect("usage"));
    assert_eq!(
        send(&mut c, &flooder, 4, &mut out),
        Err(FragmentError::MailboxFull(Full::Sender))
    );
    // The recipient reads: the flooder's share comes back.
    let actions = c.attach(&mem, to.clone(), 1, None, "dev").expect("attach");
    run(&mut c, &mem, actions, &mut out);
    let ids = out.pushed_ids();
    let actions = c.ack(&mem, &to, &ids, 2);
    run(&mut c, &mem, actions, &mut out);
    assert!(send(&mut c, &flooder, 5, &mut out).is_ok());

    // A failed write gives its share back.
    out.replies.clear();
    let actions = c.append(&mem, msg(to.clone(), third.clone(), 7, b"x".to_vec()), 1, 9);
    let [Action::Persist { tag, .. }] = actions.as_slice() else {
        panic!("one write: {actions:?}");
    };
    let failed = c.committed(&mem, *tag, Err("disk".into()));
    run(&mut c, &mem, failed, &mut out);
    assert_eq!(c.usage.held(&to).0, 1, "only the flooder's new message");
}

/// Entries waiting longer than the time to live are dropped, a bounded
/// part of the fragment per call, except those pushed to a device and not
/// yet acked; the sender's share comes back.
#[test]
fn undelivered_entries_expire() {
    let (to, online, sender) = (phone(1), phone(2), phone(3));
    let mem = MemMailbox::default();
    let config = FragmentConfig {
        undelivered_ttl_ms: 1_000,
        ..FragmentConfig::default()
    };
    let mut c: Core = FragmentCore::new(0, Placement::new(1).expect("placement"), config, 1);
    let mut out = Outbox::default();
    for (i, at) in [10, 20, 5_000].into_iter().enumerate() {
        let actions = c.append(
            &mem,
            msg(to.clone(), sender.clone(), i as u64, b"m".to_vec()),
            at,
            0,
        );
        run(&mut c, &mem, actions, &mut out);
    }
    let actions = c.append(
        &mem,
        msg(online.clone(), sender.clone(), 9, b"m".to_vec()),
        10,
        0,
    );
    run(&mut c, &mem, actions, &mut out);
    let actions = c
        .attach(&mem, online.clone(), 1, None, "dev")
        .expect("attach");
    run(&mut c, &mem, actions, &mut out);

    // Three steps of the scan (it looks at up to EXPIRY_SCAN entries each).
    let actions = c.expire(&mem, 3_000);
    run(&mut c, &mem, actions, &mut out);
    let left: Vec<(PhoneNumber, u64)> = mem
        .entries
        .borrow()
        .iter()
        .map(|((owner, _), body)| (owner.clone(), body.ts()))
        .collect();
    assert_eq!(
        left,
        vec![(to.clone(), 5_000), (online.clone(), 10)],
        "the young one and the one pushed to a device stay"
    );
    assert_eq!(c.usage.held(&to), (1, 1));
    assert!(
        out.receipts.is_empty(),
        "no delivered receipt for an expired message"
    );
}

fn account_write(expected_version: u64, generation: u64, body: &[u8]) -> AccountWrite {
    AccountWrite {
        expected_version,
        generation,
        body: body.to_vec(),
    }
}

#[test]
fn account_records_change_only_from_the_version_read() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let user = phone(7);
    assert_eq!(
        c.account(&mem, &user).expect("read"),
        AccountRecord::default()
    );
    // Written from version 0, answered once committed.
    let actions = c.write_account(&mem, user.clone(), account_write(0, 0, b"a"), 1);
    assert!(matches!(actions.as_slice(), [Action::Persist { .. }]));
    run(&mut c, &mem, actions, &mut out);
    let written = AccountRecord {
        version: 1,
        generation: 0,
        body: b"a".to_vec(),
    };
    assert_eq!(
        out.account_replies,
        vec![(1, Ok(AccountReply::Written(written.clone())))]
    );
    // A writer that read version 0 too is told the record now.
    let actions = c.write_account(&mem, user.clone(), account_write(0, 0, b"b"), 2);
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(
        out.account_replies[1],
        (2, Ok(AccountReply::Conflict(written)))
    );
    // A generation never falls.
    let actions = c.write_account(&mem, user.clone(), account_write(1, 3, b"c"), 3);
    run(&mut c, &mem, actions, &mut out);
    let actions = c.write_account(&mem, user.clone(), account_write(2, 2, b"d"), 4);
    run(&mut c, &mem, actions, &mut out);
    assert!(matches!(
        out.account_replies[3],
        (4, Err(FragmentError::InvalidRequest(_)))
    ));
    // Oversized bodies are refused.
    let big = vec![0u8; crate::account::MAX_ACCOUNT_BODY + 1];
    let actions = c.write_account(&mem, user.clone(), account_write(2, 3, &big), 5);
    run(&mut c, &mem, actions, &mut out);
    assert!(matches!(
        out.account_replies[4],
        (5, Err(FragmentError::InvalidRequest(_)))
    ));
    assert_eq!(c.account(&mem, &user).expect("read").body, b"c".to_vec());
}

#[test]
fn an_uncommitted_account_write_is_seen_by_the_next_read_and_write() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let user = phone(7);
    let first = c.write_account(&mem, user.clone(), account_write(0, 1, b"a"), 1);
    let [Action::Persist { tag, .. }] = first.as_slice() else {
        panic!("{first:?}");
    };
    // Not on disk yet, but the core answers from what it wrote.
    assert_eq!(mem.account(&user).expect("read").version, 0);
    assert_eq!(c.account(&mem, &user).expect("read").version, 1);
    let second = c.write_account(&mem, user.clone(), account_write(0, 1, b"b"), 2);
    assert!(matches!(
        second.as_slice(),
        [Action::AccountReply {
            to: 2,
            result: Ok(AccountReply::Conflict(_))
        }]
    ));
    // A failed commit forgets the unsettled record: the disk is the truth.
    let outcome = c.committed(&mem, *tag, Err("disk on fire".into()));
    assert!(matches!(
        outcome.as_slice(),
        [Action::AccountReply {
            to: 1,
            result: Err(FragmentError::Storage(_))
        }]
    ));
    assert_eq!(c.account(&mem, &user).expect("read").version, 0);
}

#[test]
fn a_revoked_generation_refuses_attach_and_closes_the_attached_session() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let mut out = Outbox::default();
    let user = phone(7);
    let actions = c.write_account(&mem, user.clone(), account_write(0, 2, b""), 1);
    run(&mut c, &mem, actions, &mut out);
    // A token of generation 1 is refused; 2 and a bot (no token) attach.
    assert_eq!(
        c.attach(&mem, user.clone(), 1, Some(1), "old").err(),
        Some(FragmentError::TokenRevoked)
    );
    assert!(c.attach(&mem, user.clone(), 2, None, "bot").is_ok());
    assert!(c.attach(&mem, user.clone(), 3, Some(2), "current").is_ok());
    // Raising the generation closes the session of generation 2 at once.
    let actions = c.write_account(&mem, user.clone(), account_write(1, 3, b""), 2);
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.revoked, vec!["current"]);
    assert!(!c.is_online(&user));
    // A write that keeps the generation closes nobody.
    assert!(c.attach(&mem, user.clone(), 4, Some(3), "newest").is_ok());
    let actions = c.write_account(&mem, user.clone(), account_write(2, 3, b"x"), 3);
    run(&mut c, &mem, actions, &mut out);
    assert_eq!(out.revoked, vec!["current"]);
    assert!(c.is_online(&user));
}

#[test]
fn a_merged_record_replaces_an_unsettled_one_and_closes_revoked_sessions() {
    let mem = MemMailbox::default();
    let mut c = core(16, 16);
    let user = phone(7);
    assert!(c.attach(&mem, user.clone(), 1, Some(1), "dev").is_ok());
    // A write of generation 1 is still being committed...
    let pending = c.write_account(&mem, user.clone(), account_write(0, 1, b"here"), 1);
    assert!(matches!(pending.as_slice(), [Action::Persist { .. }]));
    // ...when a merge stores the other side's generation 2 behind it.
    let merged = AccountRecord {
        version: 2,
        generation: 2,
        body: b"there".to_vec(),
    };
    mem.apply(&[WriteOp::PutAccount {
        user: user.clone(),
        record: merged.clone(),
    }]);
    let actions = c.account_merged(&mem, &user).expect("merged");
    assert!(
        matches!(actions.as_slice(), [Action::Revoked { endpoint: "dev" }]),
        "{actions:?}"
    );
    assert_eq!(c.account(&mem, &user).expect("read"), merged);
    // A writer that read the unsettled version is refused.
    let stale = c.write_account(&mem, user.clone(), account_write(1, 2, b"late"), 2);
    assert!(matches!(
        stale.as_slice(),
        [Action::AccountReply {
            to: 2,
            result: Ok(AccountReply::Conflict(_))
        }]
    ));
}
