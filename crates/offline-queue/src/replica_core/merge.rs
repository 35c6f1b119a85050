//! Writes a former owner made apart from the current one (behind a
//! partition), offered and merged when the cluster is whole again.

use super::*;

use crate::account::AccountRecord;
use proto::MessageId;

use crate::entry::{GroupItem, group_position, seq_of_message_id};
use crate::group::Position;
use crate::group_store::era_of;

impl<T: Clone, L: Caller> ReplicaCore<T, L> {
    /// A node that no longer owns the fragment but holds writes its partner
    /// never got (it served behind a partition) offers them to the owner.
    /// One offer at a time: the owner merges and copies the fragment afresh
    /// for each, which is too much work to repeat at every change of view.
    pub(super) fn send_merge(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        if self.core.is_some() {
            return Ok(());
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        if cluster.ownership.partner().is_none() {
            return Ok(());
        }
        let Some(owner) = cluster.reachable_owner() else {
            return Ok(());
        };
        let pending = cluster
            .merge_offer
            .as_ref()
            .is_some_and(|(to, _, at)| *to == owner && now.saturating_sub(*at) < MERGE_RETRY_MS);
        if pending {
            return Ok(());
        }
        let chunks = reads.divergent_chunks(MERGE_CHUNK_OPS)?;
        if chunks.is_empty() {
            cluster.merge_more = false;
            return Ok(());
        }
        let writes: usize = chunks.iter().map(|(_, ops)| ops.len()).sum();
        tracing::warn!(fragment = self.id, to = %owner, writes,
            "offering writes made apart from the owner for merging");
        let count = chunks.len();
        let last_upto = chunks.last().map_or(0, |(upto, _)| *upto);
        // Outstanding until the owner's MergeDone, even if the link drops
        // the offer: `tick` offers again after MERGE_RETRY_MS, and the
        // owner's link coming back offers again at once.
        cluster.merge_offer = Some((owner.clone(), last_upto, now));
        for (i, (upto, ops)) in chunks.into_iter().enumerate() {
            out.push(Action::Send {
                to: owner.clone(),
                wire: FragmentWire::Merge {
                    upto,
                    ops,
                    last: i + 1 == count,
                },
            });
        }
        Ok(())
    }

    /// Merges a former owner's divergent writes: messages not already here
    /// (by their dedupe key: the sender may have resent them here),
    /// receipts, deletions. They are written durably first
    /// ([`Action::ApplyMerge`]); [`ReplicaCore::merged`] goes on after.
    pub(super) fn merge(
        &mut self,
        from: &str,
        upto: u64,
        ops: Vec<WriteOp>,
        last: bool,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let Some(core) = self.core.as_ref() else {
            // Not the owner (any more): the sender offers them again once it
            // knows the owner.
            return Ok(());
        };
        // The ids of messages stored on both sides, from the offer's
        // earlier chunks (a message and its deletion may be in two).
        let mut aliases = self
            .cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.merge_aliases))
            .unwrap_or_default();
        let mut new_groups = self
            .cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.merge_new_groups))
            .unwrap_or_default();
        // Every id the former owner gave out, kept here or not, to messages
        // and receipts alike (a copy it still holds must never share an id
        // with a new entry: a client that saw a receipt under an id takes a
        // message under the same id for one it already has).
        let highest = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::PutMessage { id, .. } | WriteOp::PutReceipt { id, .. } => {
                    Some(seq_of_message_id(*id))
                }
                WriteOp::PutGroupEntries { entries, .. } => entries
                    .iter()
                    .map(|(_, id, _)| seq_of_message_id(*id))
                    .max(),
                WriteOp::PutGroupShared { entries, .. } => entries
                    .iter()
                    .map(|(_, id, _)| seq_of_message_id(*id))
                    .max(),
                WriteOp::LogGroup { position, .. } => Some(seq_of_message_id(*position)),
                WriteOp::PutGroup { record } => Some(seq_of_message_id(record.id)),
                _ => None,
            })
            .max();
        let mut keep = Vec::new();
        let mut touched = BTreeSet::new();
        let mut accounts = Vec::new();
        for op in ops {
            match &op {
                WriteOp::PutMessage {
                    recipient,
                    sender,
                    client_msg_id,
                    id,
                    ..
                } => match reads.dedupe(recipient, sender, *client_msg_id)? {
                    None => {
                        touched.insert(recipient.clone());
                        keep.push(op);
                    }
                    // Both sides stored this message, under two ids (the
                    // sender resent it to the other side of a cut). The
                    // recipient may have seen the former owner's copy: if
                    // the former owner deleted it (the recipient acked
                    // it), this owner's copy goes too.
                    Some((here, _)) if here != *id => {
                        aliases.insert(*id, here);
                    }
                    Some(_) => {}
                },
                WriteOp::Delete { owner, ids } => {
                    let mut ids = ids.clone();
                    let also: Vec<MessageId> =
                        ids.iter().filter_map(|i| aliases.get(i).copied()).collect();
                    if !also.is_empty() {
                        touched.insert(owner.clone());
                        ids.extend(also);
                    }
                    keep.push(WriteOp::Delete {
                        owner: owner.clone(),
                        ids,
                    });
                }
                WriteOp::PutReceipt { owner, .. } => {
                    touched.insert(owner.clone());
                    keep.push(op);
                }
                // Of two divergent records the higher (generation, version)
                // stays: a revocation made on either side is never undone.
                // Compared with what the core last wrote (maybe not yet
                // committed, and committed before this merge's write), and
                // stored above both versions, so that a writer holding an
                // older version can never match it.
                WriteOp::PutAccount { user, record } => {
                    let current = core.account(reads, user)?;
                    if record.supersedes(&current) {
                        let record = AccountRecord {
                            version: record.version.max(current.version).saturating_add(1),
                            ..record.clone()
                        };
                        accounts.push(user.clone());
                        keep.push(WriteOp::PutAccount {
                            user: user.clone(),
                            record,
                        });
                    }
                }
                // Group items the former owner stored in its members'
                // mailboxes: those above this owner's inbox mark of the
                // group are new here (the group's fan-out goes on from
                // its own mark and skips what the mark covers), and so are
                // those in a gap (batches the home passed on the former
                // owner's confirmation, which this owner never got); the
                // rest this owner stored itself. A gap's positions merged
                // are taken out of it, so a repeated merge keeps nothing
                // twice.
                WriteOp::PutGroupEntries {
                    group,
                    through,
                    entries,
                } => {
                    let mut entries_here = Vec::new();
                    let mut filled = BTreeSet::new();
                    for entry in entries {
                        let Some(position) = group_position(&entry.2) else {
                            continue;
                        };
                        if let Some(in_gap) = merged_position(reads, *group, position)? {
                            if in_gap {
                                filled.insert(position);
                            }
                            entries_here.push(entry.clone());
                        }
                    }
                    touched.extend(entries_here.iter().map(|(owner, _, _)| owner.clone()));
                    keep.push(WriteOp::PutGroupEntries {
                        group: *group,
                        through: *through,
                        entries: entries_here,
                    });
                    if !filled.is_empty() {
                        keep.push(WriteOp::GroupGapFilled {
                            group: *group,
                            positions: filled.into_iter().collect(),
                        });
                    }
                }
                // The same, with each item once.
                WriteOp::PutGroupShared {
                    group,
                    through,
                    items,
                    entries,
                } => {
                    let mut kept = BTreeSet::new();
                    let mut filled = BTreeSet::new();
                    for (position, _) in items {
                        if let Some(in_gap) = merged_position(reads, *group, *position)? {
                            if in_gap {
                                filled.insert(*position);
                            }
                            kept.insert(*position);
                        }
                    }
                    let entries: Vec<_> = entries
                        .iter()
                        .filter(|(_, _, position)| kept.contains(position))
                        .cloned()
                        .collect();
                    touched.extend(entries.iter().map(|(owner, _, _)| owner.clone()));
                    keep.push(WriteOp::PutGroupShared {
                        group: *group,
                        through: *through,
                        items: items
                            .iter()
                            .filter(|(position, _)| kept.contains(position))
                            .cloned()
                            .collect(),
                        entries,
                    });
                    if !filled.is_empty() {
                        keep.push(WriteOp::GroupGapFilled {
                            group: *group,
                            positions: filled.into_iter().collect(),
                        });
                    }
                }
                // A message the former owner logged for a group at home
                // here, unless the sender resent it here meanwhile (its
                // dedupe key): kept at its position, in the former
                // owner's era, and fanned out once durable (`merged`);
                // destinations keep a mark per era, so neither owner's
                // positions hide the other's.
                WriteOp::LogGroup {
                    group,
                    item: GroupItem::Message { .. },
                    dedupe: Some((sender, client_msg_id)),
                    ..
                } => {
                    if reads
                        .group_dedupe(*group, sender, *client_msg_id)?
                        .is_none()
                    {
                        keep.push(op);
                    }
                }
                // A group created apart from this owner (no record here):
                // its record, changes and end come along.
                WriteOp::PutGroup { record } => {
                    let made_apart =
                        new_groups.contains(&record.id) || reads.group(record.id)?.is_none();
                    if made_apart {
                        new_groups.insert(record.id);
                        keep.push(op);
                    } else {
                        not_merged(self.id, from);
                    }
                }
                WriteOp::LogGroup { group, .. } | WriteOp::DeleteGroup { group } => {
                    if new_groups.contains(group) {
                        keep.push(op);
                    } else {
                        not_merged(self.id, from);
                    }
                }
                // The former owner's fan-out marks: this owner fans out
                // what its log holds; destinations' era marks drop what
                // they have.
                WriteOp::GroupFannedOut { .. } => {}
                // Cursors only rise, so both sides' agree in any order;
                // this owner settles the ticks again from them (the former
                // owner's settled ticks and the receipts it logged are
                // not merged).
                WriteOp::GroupCursors { .. } => keep.push(op),
                // The former owner's gaps: its own business (this owner
                // records those it sees).
                WriteOp::GroupGap { .. } | WriteOp::GroupGapFilled { .. } => {}
                WriteOp::GroupTicked { group, .. } if new_groups.contains(group) => keep.push(op),
                WriteOp::GroupTicked { .. } => {}
                // This owner's sequence is already past the former owner's,
                // and sweeping is its own business.
                WriteOp::NextSeq(_) | WriteOp::SweepDedupe { .. } => {}
            }
        }
        tracing::warn!(
            fragment = self.id,
            from,
            merged = keep.len(),
            "merging writes made apart from this owner"
        );
        metrics::counter!("switchboard_fragment_merged_writes_total").increment(keep.len() as u64);
        if !last && let Some(cluster) = self.cluster.as_mut() {
            cluster.merge_aliases = aliases;
            cluster.merge_new_groups = new_groups;
        }
        // Messages stored from now on get ids above the merged ones (the
        // former owner may have taken over into a higher half-block than
        // this owner's): pushes go out in id order. Above them means a
        // fresh half-block of this owner's, not the next id of the former
        // owner's: that owner may have given out more ids there than its
        // divergent log holds (writes streamed here but lost with a copy
        // cut short, which a client may have been pushed).
        let member = self.island_member();
        if let (Some(seq), Some(core)) = (highest, self.core.as_mut())
            && seq >= core.next_seq()
        {
            core.raise_next_seq(takeover_seq(seq, member));
        }
        out.push(Action::ApplyMerge {
            from: from.to_owned(),
            upto,
            ops: keep,
            touched,
            accounts,
            last,
        });
        Ok(())
    }

    /// A merge is durable: confirm it, push what it brought to online
    /// users, and (after the offer's last chunk) give the partner a fresh
    /// copy that includes it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn merged(
        &mut self,
        now: TimestampMs,
        from: String,
        upto: u64,
        touched: BTreeSet<PhoneNumber>,
        accounts: Vec<PhoneNumber>,
        last: bool,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        out.push(Action::Send {
            to: from,
            wire: FragmentWire::MergeDone { upto },
        });
        let Some(core) = self.core.as_mut() else {
            return Ok(());
        };
        let mut actions = Vec::new();
        // The writes before the merge are committed too (the writer keeps
        // order): the disk has the merged records, whatever the core still
        // holds as unsettled.
        for user in &accounts {
            actions.extend(core.account_merged(reads, user)?);
        }
        // Group messages the merge logged: fanned out from the disk's log.
        actions.extend(core.reload_groups(reads)?);
        let online: Vec<_> = core
            .attached()
            .filter(|(user, _, _, _)| touched.contains(*user))
            .map(|(user, session_id, generation, endpoint)| {
                (user.clone(), session_id, generation, endpoint.clone())
            })
            .collect();
        for (user, session_id, generation, endpoint) in online {
            match core.attach(reads, user, session_id, generation, endpoint.clone()) {
                Ok(more) => actions.extend(more),
                // The merged record revoked this session's token.
                Err(FragmentError::TokenRevoked) => {
                    actions.push(fragment::Action::Revoked { endpoint })
                }
                Err(e) => return Err(e),
            }
        }
        self.absorb(now, actions, reads, out)?;
        if last {
            self.partner_lost(now, reads, out)?;
            self.start_copy(out);
        }
        Ok(())
    }

    /// The owner merged this node's divergent writes up to `upto`.
    pub(super) fn merge_done(&mut self, from: &str, upto: u64, out: &mut Out<T, L>) {
        tracing::info!(fragment = self.id, peer = %from, "divergent writes merged");
        if let Some(cluster) = self.cluster.as_mut() {
            // Merged, whatever the clearing below still has to commit.
            cluster.merged_upto = cluster.merged_upto.max(upto);
            if cluster
                .merge_offer
                .as_ref()
                .is_some_and(|(_, last, _)| upto >= *last)
            {
                cluster.merge_offer = None;
            }
        }
        out.push(Action::ClearDivergent { upto });
    }
}

/// A change of a group's record or membership that a former owner made
/// apart from this one, for a group this owner has too: the owner's record
/// stands (two records changed apart do not combine safely).
fn not_merged(fragment: FragmentId, from: &str) {
    metrics::counter!("switchboard_group_writes_not_merged_total").increment(1);
    tracing::warn!(
        fragment,
        from,
        "a group change made apart from this owner is not merged; the owner's record stands"
    );
}

/// Whether a former owner's group item at `position` is merged here:
/// `Some(false)` above this owner's mark, `Some(true)` in one of its gaps
/// (to be filled), `None` if this owner stored it itself.
fn merged_position(
    reads: &impl ReplicaRead,
    group: GroupId,
    position: Position,
) -> Result<Option<bool>, FragmentError> {
    if position > reads.group_inbox(group, era_of(position))? {
        Ok(Some(false))
    } else if reads.in_group_gap(group, position)? {
        Ok(Some(true))
    } else {
        Ok(None)
    }
}
