//! Staging must not change what anyone reads: random mailbox writes go to
//! a store with the journal (rows staged, checkpoints and durable commits
//! at random points) and to one without (every row in redb), and every
//! read of both must agree (sweeps included), also after the journaled
//! store reopens. Group items stored once per fragment ride along: each
//! is kept exactly as long as a member's reference to it, in both.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::{MessageId, PhoneNumber, ReceiptKind};
use router::FragmentId;
use storage::{JournalOptions, Store, StoreOptions};

use crate::actor::{FragmentWrites, MailboxWrites, journal_replayer};
use crate::entry::{GroupItem, SHARED_OWNER, SharedItem, compose_message_id, group_ref};
use crate::replica::export_fragment_in;
use crate::staged::MailboxStage;
use crate::store::{MailboxRead, RedbMailbox, WriteOp};
use crate::{Entry, EntryBody};
use test_support::Rng;
use test_support::numbered as phone;

const FRAGMENTS: [FragmentId; 2] = [3, 4];
const USERS: u64 = 5;

/// What the generator knows is stored, to delete real entries.
#[derive(Default)]
struct Model {
    next_seq: BTreeMap<FragmentId, u64>,
    live: BTreeMap<(FragmentId, PhoneNumber), BTreeMap<MessageId, Vec<u8>>>,
    client_ids: u64,
    /// Positions of group items (ids of another fragment, the home's).
    positions: u64,
}

impl Model {
    fn new_id(&mut self, f: FragmentId) -> MessageId {
        let seq = self.next_seq.entry(f).or_insert(1);
        *seq += 1;
        compose_message_id(f, *seq)
    }

    fn ops(&mut self, rng: &mut Rng, f: FragmentId) -> Vec<WriteOp> {
        let mut ops = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let owner = phone(1 + rng.below(USERS));
            let ts = 1_000 + rng.below(1_000);
            match rng.below(12) {
                0..=3 => {
                    let sender = phone(1 + rng.below(USERS));
                    self.client_ids += 1;
                    let id = self.new_id(f);
                    let body = EntryBody::Message {
                        from: sender.clone(),
                        client_msg_id: self.client_ids,
                        server_ts: ts,
                        payload: vec![rng.below(255) as u8; rng.below(40) as usize],
                    }
                    .to_bytes();
                    self.live
                        .entry((f, owner.clone()))
                        .or_default()
                        .insert(id, body.clone());
                    ops.push(WriteOp::PutMessage {
                        recipient: owner,
                        sender,
                        client_msg_id: self.client_ids,
                        id,
                        server_ts: ts,
                        body,
                    });
                }
                4 => {
                    let id = self.new_id(f);
                    let body = EntryBody::Receipt {
                        kind: ReceiptKind::Delivered,
                        by: phone(1 + rng.below(USERS)),
                        msg_ids: vec![rng.next_u64()],
                        ts,
                    }
                    .to_bytes();
                    self.live
                        .entry((f, owner.clone()))
                        .or_default()
                        .insert(id, body.clone());
                    ops.push(WriteOp::PutReceipt { owner, id, body });
                }
                5..=7 => {
                    let live = self.live.entry((f, owner.clone())).or_default();
                    let mut ids: Vec<MessageId> =
                        live.keys().copied().filter(|_| rng.chance(60)).collect();
                    for id in &ids {
                        live.remove(id);
                    }
                    if rng.chance(20) {
                        // Unknown, or deleted already.
                        ids.push(compose_message_id(f, rng.below(50)));
                    }
                    ops.push(WriteOp::Delete { owner, ids });
                }
                8 => {
                    // The same entry put again (a copy's ops replayed over
                    // it; group references come again only with their
                    // batch, below).
                    let live = self.live.entry((f, owner.clone())).or_default();
                    if let Some((&id, body)) = live
                        .iter()
                        .filter(|(_, body)| group_ref(body).is_none())
                        .nth(rng.below(4) as usize)
                    {
                        ops.push(WriteOp::PutReceipt {
                            owner,
                            id,
                            body: body.clone(),
                        });
                    }
                }
                10 | 11 => {
                    // A group item for 1 to 3 members here, stored once;
                    // sometimes applied twice (a repeated batch).
                    self.positions += 1;
                    let position = compose_message_id(9, self.positions);
                    let item = GroupItem::Message {
                        from: phone(1 + rng.below(USERS)),
                        client_msg_id: self.positions,
                        server_ts: ts,
                        payload: vec![rng.below(255) as u8; rng.below(40) as usize],
                    };
                    let mut entries = Vec::new();
                    for member in 1..=USERS {
                        if entries.len() == 3 || !rng.chance(50) {
                            continue;
                        }
                        let id = self.new_id(f);
                        let reference = EntryBody::GroupRef {
                            group: 77,
                            position,
                            ts,
                        };
                        self.live
                            .entry((f, phone(member)))
                            .or_default()
                            .insert(id, reference.to_bytes());
                        entries.push((phone(member), id, position));
                    }
                    let op = WriteOp::PutGroupShared {
                        group: 77,
                        through: position,
                        items: vec![(position, serde_bytes::ByteBuf::from(item.to_bytes()))],
                        entries,
                    };
                    if rng.chance(20) {
                        ops.push(op.clone());
                    }
                    ops.push(op);
                }
                _ => ops.push(WriteOp::SweepDedupe {
                    before_ms: 1_000 + rng.below(600),
                    max: 1 + rng.below(5) as usize,
                }),
            }
        }
        ops
    }
}

/// How often a store writes staged rows into redb: checkpoint interval
/// and stage interval.
type Intervals = (Duration, Duration);

fn journaled_options(dir: &std::path::Path, (checkpoint, stage): Intervals) -> StoreOptions {
    let mut journal = JournalOptions::new(dir.join("journal"), vec![journal_replayer()]);
    journal.checkpoint_interval = checkpoint;
    journal.stage_interval = stage;
    StoreOptions {
        journal: Some(journal),
        ..StoreOptions::default()
    }
}

fn journaled(dir: &std::path::Path, intervals: Intervals) -> Store {
    Store::open(&dir.join("db.redb"), journaled_options(dir, intervals))
        .expect("open the journaled store")
}

/// Submits `items` to both stores at once (so that they share batches)
/// and waits for every completion.
async fn write_both(stores: [&Store; 2], items: Vec<(FragmentId, Vec<WriteOp>)>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiting = 0;
    for store in stores {
        for (fragment, ops) in &items {
            let tx = tx.clone();
            let writes = FragmentWrites {
                fragment: *fragment,
                ops: ops.clone(),
                divergent: false,
            };
            store.submit_journaled::<MailboxWrites>(writes, move |result| {
                let _ = tx.send(result.is_ok());
            });
            waiting += 1;
        }
    }
    for _ in 0..waiting {
        assert_eq!(rx.recv().await, Some(true), "a write failed");
    }
}

/// Everything a reader can see of fragment `f`.
fn reads(store: &Store, f: FragmentId, probe_ids: &[MessageId]) -> String {
    let mailbox = RedbMailbox::new(store.clone(), f);
    let mut seen = String::new();
    for user in 1..=USERS {
        let owner = phone(user);
        let page: Vec<Entry> = mailbox.page(&owner, None, 1_000).expect("page");
        // Paging from the middle, a few at a time, sees the same.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let part = mailbox.page(&owner, after, 2).expect("page");
            let Some(last) = part.last() else { break };
            after = Some(last.id);
            paged.extend(part);
        }
        assert_eq!(page, paged, "paging of {owner} in fragment {f}");
        seen += &format!("{owner} page {page:?}\n");
        let senders = mailbox.senders(&owner, probe_ids).expect("senders");
        seen += &format!("{owner} senders {senders:?}\n");
        for id in probe_ids {
            let entry = mailbox.entry(&owner, *id).expect("entry");
            if entry.is_some() {
                seen += &format!("{owner} entry {id} {entry:?}\n");
            }
        }
    }
    let all = mailbox.expired(None, u64::MAX, 100_000).expect("scan");
    seen += &format!("scan {:?}\n", all.expired);
    // The same scan in steps of 3 entries.
    let mut stepped = Vec::new();
    let mut resume = None;
    loop {
        let scan = mailbox.expired(resume.as_ref(), u64::MAX, 3).expect("scan");
        stepped.extend(scan.expired);
        match scan.resume {
            Some(next) => resume = Some(next),
            None => break,
        }
    }
    assert_eq!(all.expired, stepped, "a stepped scan of fragment {f}");
    let chunks = export_fragment_in(store, f, 7).expect("export");
    let mbox: Vec<_> = chunks.iter().flat_map(|c| c.mbox.clone()).collect();
    // A shared item waits for exactly the members whose references to it
    // are left, and is gone with the last.
    let mut referenced: BTreeMap<MessageId, Vec<PhoneNumber>> = BTreeMap::new();
    let mut shared: BTreeMap<MessageId, Vec<PhoneNumber>> = BTreeMap::new();
    for (owner, id, bytes) in &mbox {
        if owner == SHARED_OWNER {
            let mut waiting = SharedItem::from_bytes(bytes).expect("shared item").waiting;
            waiting.sort();
            shared.insert(*id, waiting);
        } else if let Some((_, position)) = group_ref(bytes) {
            let owner = PhoneNumber::parse(owner).expect("owner");
            referenced.entry(position).or_default().push(owner);
        }
    }
    for owners in referenced.values_mut() {
        owners.sort();
    }
    assert_eq!(shared, referenced, "shared items of fragment {f}");
    let dedupe: Vec<_> = chunks.iter().flat_map(|c| c.dedupe.clone()).collect();
    seen += &format!("export {mbox:?}\n{dedupe:?}\n");
    seen += &format!("next seq {:?}\n", mailbox.next_seq().expect("mark"));
    seen
}

fn assert_same(journaled: &Store, plain: &Store, probe_ids: &[MessageId], seed: u64, when: &str) {
    for f in FRAGMENTS {
        let staged = reads(journaled, f, probe_ids);
        let stored = reads(plain, f, probe_ids);
        assert!(
            staged == stored,
            "seed {seed}, {when}, fragment {f}: the journaled store reads\n{staged}\nthe plain one\n{stored}"
        );
    }
}

async fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let plain_dir = tempfile::tempdir().expect("tempdir");
    // Checkpoints after every batch; or staged rows written into redb
    // with every next batch; or only by durable commits.
    let hour = Duration::from_secs(3600);
    let interval = match rng.below(3) {
        0 => (Duration::ZERO, hour),
        1 => (hour, Duration::ZERO),
        _ => (hour, hour),
    };
    let journaled = journaled(dir.path(), interval);
    let plain = Store::open(&plain_dir.path().join("db.redb"), StoreOptions::default())
        .expect("open the plain store");
    let mut model = Model::default();
    let mut seen_staged = 0;
    for round in 0..40 {
        let items = (0..1 + rng.below(4))
            .map(|_| {
                let f = FRAGMENTS[rng.below(2) as usize];
                (f, model.ops(&mut rng, f))
            })
            .collect();
        write_both([&journaled, &plain], items).await;
        seen_staged = seen_staged.max(journaled.stage::<MailboxStage>().len());
        if rng.chance(15) {
            // A durable commit writes and empties the stage first.
            journaled.flush().await.expect("flush");
        }
        if round % 10 == 9 {
            let probe: Vec<MessageId> = (0..40)
                .flat_map(|seq| FRAGMENTS.map(|f| compose_message_id(f, seq)))
                .collect();
            assert_same(&journaled, &plain, &probe, seed, &format!("round {round}"));
        }
    }
    let probe: Vec<MessageId> = (0..60)
        .flat_map(|seq| FRAGMENTS.map(|f| compose_message_id(f, seq)))
        .collect();
    assert_same(&journaled, &plain, &probe, seed, "the end");
    if interval.0 > Duration::ZERO {
        assert!(seen_staged > 0, "seed {seed}: nothing was ever staged");
    }
    // A clean close checkpoints what is staged; the reopened store reads the same.
    drop(journaled);
    let reopened = reopen(dir.path(), interval).await;
    assert_same(&reopened, &plain, &probe, seed, "after reopening");
}

/// Opens the store again once the old writer thread has let go of the file.
async fn reopen(dir: &std::path::Path, intervals: Intervals) -> Store {
    for _ in 0..200 {
        match Store::open(&dir.join("db.redb"), journaled_options(dir, intervals)) {
            Ok(store) => return store,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("the journaled store did not reopen");
}

#[tokio::test]
async fn staged_entries_read_the_same_as_stored_ones() {
    for seed in 1..=16 {
        run(seed).await;
    }
}
