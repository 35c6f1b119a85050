//! The owner's stream of writes to its island partner, the partner's copy
//! (streamed writes and full copies), and the order in which the owner's
//! writes complete.

use super::*;

impl<T: Clone, L: Caller> ReplicaCore<T, L> {
    /// Whether `from` may feed this node's copy at `epoch`.
    fn accepts_copy_from(&self, from: &str, epoch: u64) -> bool {
        self.core.is_none()
            && self.cluster.as_ref().is_some_and(|c| {
                let owner = c.ownership.owner();
                owner.node == from && epoch >= owner.epoch
            })
    }

    pub(super) fn apply_replica(
        &mut self,
        from: &str,
        epoch: u64,
        rseq: u64,
        ops: Vec<WriteOp>,
        out: &mut Out<T, L>,
    ) {
        if !self.accepts_copy_from(from, epoch) {
            out.push(Action::Send {
                to: from.to_owned(),
                wire: FragmentWire::Replicated { rseq, ok: false },
            });
            return;
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.uncommitted.streamed(self.id, epoch, rseq, &ops);
        }
        out.push(Action::ApplyReplica {
            from: from.to_owned(),
            rseq,
            ops,
        });
    }

    /// A chunk of the owner's copy. Refused whole while this node holds
    /// divergent writes the owner has not confirmed merging: the copy's
    /// first chunk would erase them from this node's rows, and if the owner
    /// then died before merging them, this node would take over without
    /// them (and clear its divergent log once its partner caught up from
    /// it: lost). The owner copies again after the merge.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_snapshot(
        &mut self,
        from: &str,
        epoch: u64,
        first: bool,
        last: bool,
        rseq: u64,
        chunk: SnapshotChunk,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let refuse = |out: &mut Out<T, L>| {
            if last {
                out.push(Action::Send {
                    to: from.to_owned(),
                    wire: FragmentWire::Replicated { rseq, ok: false },
                });
            }
        };
        if !self.accepts_copy_from(from, epoch) {
            refuse(out);
            return Ok(());
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        if first {
            let unmerged = reads.divergent_last()? > cluster.merged_upto;
            cluster.refused_copy = unmerged.then_some(rseq);
        }
        if cluster.refused_copy == Some(rseq) {
            tracing::info!(
                fragment = self.id,
                from,
                "copy refused: this node's divergent writes are not merged yet"
            );
            refuse(out);
            return Ok(());
        }
        if first {
            // The copy is of the owner's disk: it holds what came before.
            cluster.uncommitted.clear();
        }
        if first || last {
            cluster.copying = !last;
        }
        out.push(Action::ImportChunk {
            from: from.to_owned(),
            rseq,
            first,
            last,
            chunk,
        });
        Ok(())
    }

    /// The owner's commits hold every write it streamed up to `upto`.
    pub(super) fn owner_committed(&mut self, from: &str, epoch: u64, upto: u64) {
        if !self.accepts_copy_from(from, epoch) {
            return;
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.uncommitted.committed(epoch, upto);
        }
    }

    /// Streams a write to the partner, if it is being fed. Under the
    /// `replicated` policy the write's completion then also waits for the
    /// partner.
    pub(super) fn replicate(
        &mut self,
        now: TimestampMs,
        tag: u64,
        ops: &[WriteOp],
        out: &mut Out<T, L>,
    ) -> Copied {
        let Some(cluster) = self.cluster.as_mut() else {
            return Copied::NoPartner;
        };
        let (copied, rseq) = cluster.stream_to_partner(ops, out);
        let awaited = copied == Copied::Streamed && cluster.policy == AckPolicy::Replicated;
        if awaited && let Some(rseq) = rseq {
            cluster.by_rseq.insert(rseq, tag);
        }
        cluster.waiting.insert(
            tag,
            Waiting {
                local: None,
                remote: if awaited { None } else { Some(Ok(())) },
                ops: if awaited { ops.to_vec() } else { Vec::new() },
                since: awaited.then_some(now),
                rseq,
            },
        );
        copied
    }

    /// The local commit of `tag` finished.
    pub(super) fn local_commit(
        &mut self,
        now: TimestampMs,
        tag: u64,
        outcome: Result<(), String>,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        if let Some(cluster) = self.cluster.as_mut()
            && let Some(waiting) = cluster.waiting.get_mut(&tag)
        {
            let committed = waiting.rseq.filter(|_| outcome.is_ok());
            waiting.local = Some(outcome);
            if let Some(rseq) = committed {
                cluster.committed_rseq = cluster.committed_rseq.max(rseq);
                cluster.tell_committed(false, out);
            }
            return self.finish_ready(now, reads, out);
        }
        let Some(core) = self.core.as_mut() else {
            return Ok(());
        };
        let actions = core.committed(reads, tag, outcome);
        self.absorb(now, actions, reads, out)
    }

    pub(super) fn replicated(
        &mut self,
        now: TimestampMs,
        from: &str,
        rseq: u64,
        ok: bool,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        if cluster.ownership.partner() != Some(from) {
            return Ok(());
        }
        if let PartnerCopy::CatchingUp {
            until,
            divergent_upto,
        } = cluster.copy
            && rseq >= until
        {
            if ok {
                tracing::info!(fragment = id, partner = from, "partner caught up");
                cluster.copy = PartnerCopy::Streaming;
                // The copy holds every divergent write logged before it.
                if divergent_upto > 0 {
                    out.push(Action::ClearDivergent {
                        upto: divergent_upto,
                    });
                }
            } else {
                tracing::warn!(fragment = id, partner = from, "partner refused the copy");
                cluster.copy = PartnerCopy::Absent;
            }
        }
        let done: Vec<u64> = cluster.by_rseq.range(..=rseq).map(|(r, _)| *r).collect();
        for r in done {
            if let Some(tag) = cluster.by_rseq.remove(&r)
                && let Some(waiting) = cluster.waiting.get_mut(&tag)
            {
                waiting.remote = Some(if ok {
                    Ok(())
                } else {
                    Err("the secondary refused the write (a newer owner exists)".into())
                });
            }
        }
        self.finish_ready(now, reads, out)
    }

    /// Completes, oldest first, the writes whose local commit and partner
    /// copy are both in, stopping at the first that is not.
    pub(super) fn finish_ready(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let (Some(cluster), Some(core)) = (self.cluster.as_mut(), self.core.as_mut()) else {
            return Ok(());
        };
        let mut actions = Vec::new();
        while let Some(entry) = cluster.waiting.first_entry() {
            let waiting = entry.get();
            if waiting.local.is_none() || waiting.remote.is_none() {
                break;
            }
            let (tag, waiting) = entry.remove_entry();
            let outcome = match (waiting.local, waiting.remote) {
                (Some(local), Some(remote)) => local.and(remote),
                _ => continue,
            };
            actions.extend(core.committed(reads, tag, outcome));
        }
        self.absorb(now, actions, reads, out)
    }

    /// The partner is gone: its pending copies no longer hold writes back.
    /// The writes it may not have got are logged as divergent first
    /// (durably, before they are acknowledged), so that they survive into
    /// a catch-up or a merge.
    pub(super) fn partner_lost(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        cluster.copy = PartnerCopy::Absent;
        let tags: Vec<u64> = std::mem::take(&mut cluster.by_rseq).into_values().collect();
        let mut unconfirmed = Vec::new();
        for tag in &tags {
            if let Some(waiting) = cluster.waiting.get_mut(tag) {
                unconfirmed.extend(std::mem::take(&mut waiting.ops));
                waiting.remote = Some(Ok(()));
            }
        }
        if !unconfirmed.is_empty() {
            out.push(Action::LogDivergent(unconfirmed));
        }
        self.finish_ready(now, reads, out)
    }

    /// Sends the partner a full copy of the fragment, then streams every
    /// write: asks the shell for the copy ([`Action::TakeSnapshot`]), and
    /// sends it when it comes ([`Event::Snapshot`]).
    pub(super) fn start_copy(&mut self, out: &mut Out<T, L>) {
        if self.core.is_none() {
            return;
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if cluster.policy != AckPolicy::Replicated && cluster.ownership.partner().is_none() {
            return;
        }
        if cluster.copy != PartnerCopy::Absent || cluster.partner_up().is_none() {
            return;
        }
        // The copy's stream position comes before any write made after it
        // was asked for: those are streamed after its chunks.
        let rseq = cluster.next_rseq;
        cluster.next_rseq += 1;
        cluster.copy = PartnerCopy::Snapshotting { rseq };
        out.push(Action::TakeSnapshot);
    }

    /// The copy asked for is read: send it.
    pub(super) fn snapshot_taken(
        &mut self,
        chunks: Vec<SnapshotChunk>,
        divergent_upto: u64,
        out: &mut Out<T, L>,
    ) {
        let id = self.id;
        let serving = self.core.is_some();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let PartnerCopy::Snapshotting { rseq } = cluster.copy else {
            return;
        };
        let Some(partner) = cluster.partner_up().map(str::to_owned).filter(|_| serving) else {
            cluster.copy = PartnerCopy::Absent;
            return;
        };
        let epoch = cluster.ownership.owner().epoch;
        let count = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let wire = FragmentWire::snapshot((epoch, i == 0, i + 1 == count, rseq), chunk);
            out.push(Action::Send {
                to: partner.clone(),
                wire,
            });
        }
        tracing::info!(fragment = id, partner = %partner, chunks = count, "copying to partner");
        cluster.copy = PartnerCopy::CatchingUp {
            until: rseq,
            divergent_upto,
        };
    }
}

impl<T, L> Replication<T, L> {
    /// Tells the partner how far this owner's commits reach, once they
    /// reach [`COMMITTED_EVERY`] writes further than last told (or further
    /// at all, with `now`).
    pub(super) fn tell_committed(&mut self, now: bool, out: &mut Out<T, L>) {
        let due = if now { 1 } else { COMMITTED_EVERY };
        if self.committed_rseq < self.told_committed.saturating_add(due)
            || self.copy == PartnerCopy::Absent
        {
            return;
        }
        let Some(partner) = self.partner_up().map(str::to_owned) else {
            return;
        };
        self.told_committed = self.committed_rseq;
        out.push(Action::Send {
            to: partner,
            wire: FragmentWire::Committed {
                epoch: self.ownership.owner().epoch,
                upto: self.committed_rseq,
            },
        });
    }

    /// Sends a write to the partner if it is being fed; its stream
    /// position.
    fn stream_to_partner(&mut self, ops: &[WriteOp], out: &mut Out<T, L>) -> (Copied, Option<u64>) {
        if self.ownership.partner().is_none() {
            return (Copied::NoPartner, None);
        }
        let partner = match self.partner_up() {
            Some(partner) if self.copy != PartnerCopy::Absent => partner.to_owned(),
            _ => return (Copied::Missing, None),
        };
        let rseq = self.next_rseq;
        self.next_rseq += 1;
        let epoch = self.ownership.owner().epoch;
        out.push(Action::Send {
            to: partner,
            wire: FragmentWire::Replicate {
                epoch,
                rseq,
                ops: ops.to_vec(),
            },
        });
        (Copied::Streamed, Some(rseq))
    }
}

/// A partner's streamed writes that its owner has not yet said it
/// committed itself. The owner streams a write while its own commit is
/// still under way: if it dies before that commit, the write may be on
/// this node's disk alone, and a sender's resend is then acknowledged here
/// from the dedupe index. Logged as divergent when this node takes over,
/// they survive this node's death too: the former owner, serving again,
/// merges them.
#[derive(Debug, Default)]
pub(super) struct UncommittedStream {
    epoch: u64,
    batches: VecDeque<(u64, Vec<WriteOp>)>,
    /// The entry bodies' bytes in `batches`.
    bytes: usize,
}

impl UncommittedStream {
    pub(super) fn streamed(
        &mut self,
        fragment: FragmentId,
        epoch: u64,
        rseq: u64,
        ops: &[WriteOp],
    ) {
        if epoch != self.epoch {
            self.clear();
            self.epoch = epoch;
        }
        self.batches.push_back((rseq, ops.to_vec()));
        self.bytes += body_bytes(ops);
        while self.batches.len() > MAX_UNCOMMITTED_BATCHES || self.bytes > MAX_UNCOMMITTED_BYTES {
            self.pop_oldest();
            tracing::debug!(
                fragment,
                "the owner confirms no commits; forgetting the oldest write"
            );
            metrics::counter!("switchboard_fragment_uncommitted_dropped_total").increment(1);
        }
    }

    pub(super) fn committed(&mut self, epoch: u64, upto: u64) {
        if epoch != self.epoch {
            return;
        }
        while self.batches.front().is_some_and(|(rseq, _)| *rseq <= upto) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, ops)) = self.batches.pop_front() {
            self.bytes = self.bytes.saturating_sub(body_bytes(&ops));
        }
    }

    pub(super) fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// Every write kept, in stream order, leaving none.
    pub(super) fn take(&mut self) -> Vec<WriteOp> {
        self.bytes = 0;
        std::mem::take(&mut self.batches)
            .into_iter()
            .flat_map(|(_, ops)| ops)
            .collect()
    }
}

/// What a batch's entries weigh (their bodies: the rest is small).
fn body_bytes(ops: &[WriteOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            WriteOp::PutMessage { body, .. } | WriteOp::PutReceipt { body, .. } => body.len(),
            _ => 0,
        })
        .sum()
}
