//! The owner's stream of writes to its island partner, the partner's copy
//! (streamed writes and full copies), and the order in which the owner's
//! writes complete.

use super::*;

/// Whether `from` may feed this node's copy at `epoch`.
pub(super) fn accepts_copy_from(state: &FragmentState, from: &str, epoch: u64) -> bool {
    state.core.is_none()
        && state.cluster.as_ref().is_some_and(|c| {
            let owner = c.ownership.owner();
            owner.node == from && epoch >= owner.epoch
        })
}

pub(super) fn apply_replica(
    state: &FragmentState,
    from: &str,
    epoch: u64,
    rseq: u64,
    ops: Vec<WriteOp>,
) {
    if !accepts_copy_from(state, from, epoch) {
        send(state, from, FragmentWire::Replicated { rseq, ok: false });
        return;
    }
    let reply = replica_reply(state, from);
    let writes = FragmentWrites {
        fragment: state.id,
        ops,
        divergent: false,
    };
    state
        .store
        .submit_grouped::<MailboxWrites>(writes, move |result| reply(rseq, result.is_ok()));
}

pub(super) fn apply_snapshot(
    state: &FragmentState,
    from: &str,
    epoch: u64,
    first: bool,
    last: bool,
    rseq: u64,
    chunk: replica::SnapshotChunk,
) {
    if !accepts_copy_from(state, from, epoch) {
        if last {
            send(state, from, FragmentWire::Replicated { rseq, ok: false });
        }
        return;
    }
    let fragment = state.id;
    let reply = replica_reply(state, from);
    state.store.submit(
        move |txn| import_chunk(txn, fragment, first, last, &chunk),
        move |result| {
            // A failed chunk fails the copy at once; the last one completes it.
            if last || result.is_err() {
                reply(rseq, result.is_ok());
            }
        },
    );
}

/// Answers the primary from the writer thread once a copy is durable.
pub(super) fn replica_reply(
    state: &FragmentState,
    to: &str,
) -> impl FnOnce(u64, bool) + Send + 'static {
    let handle = state.cluster.as_ref().map(|c| c.link.handle.clone());
    let (fragment, to) = (state.id, to.to_owned());
    move |rseq, ok| {
        let Some(handle) = handle else { return };
        match remote::encode(fragment, FragmentWire::Replicated { rseq, ok }) {
            Ok(bytes) => {
                let _ = handle.send(&to, Body::Data(bytes));
            }
            Err(e) => tracing::error!(fragment, error = %e, "cannot encode a replica ack"),
        }
    }
}

/// Streams a write to the partner, if it is being fed. Under the
/// `replicated` policy the write's commit then also waits for the partner.
pub(crate) fn replicate(state: &mut FragmentState, tag: u64, ops: &[WriteOp]) -> Copied {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Copied::NoPartner;
    };
    let copied = stream_to_partner(cluster, id, ops);
    let awaited = copied.0 == Copied::Streamed && cluster.link.policy == AckPolicy::Replicated;
    if awaited && let Some(rseq) = copied.1 {
        cluster.by_rseq.insert(rseq, tag);
    }
    cluster.waiting.insert(
        tag,
        Waiting {
            local: None,
            remote: if awaited { None } else { Some(Ok(())) },
            ops: if awaited { ops.to_vec() } else { Vec::new() },
            since: awaited.then(std::time::Instant::now),
        },
    );
    copied.0
}

/// Sends a write to the partner if it is being fed; its stream position.
pub(super) fn stream_to_partner(
    cluster: &mut Clustered,
    id: FragmentId,
    ops: &[WriteOp],
) -> (Copied, Option<u64>) {
    if cluster.ownership.partner().is_none() {
        return (Copied::NoPartner, None);
    }
    let partner = match cluster.partner_up() {
        Some(partner) if cluster.copy != PartnerCopy::Absent => partner.to_owned(),
        _ => return (Copied::Missing, None),
    };
    let rseq = cluster.next_rseq;
    cluster.next_rseq += 1;
    let epoch = cluster.ownership.owner().epoch;
    let wire = FragmentWire::Replicate {
        epoch,
        rseq,
        ops: ops.to_vec(),
    };
    if !send_via(cluster, id, &partner, wire) {
        // The link is gone: membership will report the partner down, and
        // the partner catches up by a full copy when it returns.
        cluster.copy = PartnerCopy::Absent;
        return (Copied::Missing, None);
    }
    (Copied::Streamed, Some(rseq))
}

/// The local commit of `tag` finished.
pub(crate) fn local_commit(
    state: &mut FragmentState,
    tag: u64,
    outcome: Result<(), String>,
) -> Vec<CoreAction> {
    if let Some(cluster) = state.cluster.as_mut()
        && let Some(waiting) = cluster.waiting.get_mut(&tag)
    {
        waiting.local = Some(outcome);
        return finish_ready(state);
    }
    match state.core.as_mut() {
        Some(core) => core.committed(&state.reads, tag, outcome),
        None => Vec::new(),
    }
}

pub(super) fn replicated(
    state: &mut FragmentState,
    from: &str,
    rseq: u64,
    ok: bool,
) -> Vec<CoreAction> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Vec::new();
    };
    if cluster.ownership.partner() != Some(from) {
        return Vec::new();
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
                state
                    .store
                    .submit(move |txn| clear_divergent(txn, id, divergent_upto), |_| {});
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
    finish_ready(state)
}

/// Completes, oldest first, the writes whose local commit and partner copy
/// are both in, stopping at the first that is not.
pub(super) fn finish_ready(state: &mut FragmentState) -> Vec<CoreAction> {
    let (Some(cluster), Some(core)) = (state.cluster.as_mut(), state.core.as_mut()) else {
        return Vec::new();
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
        actions.extend(core.committed(&state.reads, tag, outcome));
    }
    actions
}

/// The partner is gone: its pending copies no longer hold writes back. The
/// writes it may not have got are logged as divergent first (before they
/// are acknowledged), so that they survive into a catch-up or a merge.
pub(super) async fn partner_lost(
    state: &mut FragmentState,
) -> Result<Vec<CoreAction>, FragmentError> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    cluster.copy = PartnerCopy::Absent;
    let tags: Vec<u64> = std::mem::take(&mut cluster.by_rseq).into_values().collect();
    let mut unconfirmed = Vec::new();
    for tag in &tags {
        if let Some(waiting) = cluster.waiting.get_mut(tag) {
            unconfirmed.extend(std::mem::take(&mut waiting.ops));
        }
    }
    if !unconfirmed.is_empty() {
        state
            .store
            .write(move |txn| log_divergent(txn, id, &unconfirmed))
            .await
            .map_err(crate::store::storage)?;
    }
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    for tag in tags {
        if let Some(waiting) = cluster.waiting.get_mut(&tag) {
            waiting.remote = Some(Ok(()));
        }
    }
    Ok(finish_ready(state))
}

/// Sends the partner a full copy of the fragment, then streams every write.
pub(super) async fn start_copy(state: &mut FragmentState) {
    let id = state.id;
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    if cluster.link.policy != AckPolicy::Replicated && cluster.ownership.partner().is_none() {
        return;
    }
    if cluster.copy != PartnerCopy::Absent || state.core.is_none() {
        return;
    }
    let Some(partner) = cluster.partner_up().map(str::to_owned) else {
        return;
    };
    // Writes handed to the writer before now must be in the copy.
    if let Err(e) = state.store.flush().await {
        tracing::warn!(fragment = id, error = %e, "flush before copy failed");
        return;
    }
    let divergent_upto = match load_divergent(&state.store, id) {
        Ok((upto, _)) => upto,
        Err(e) => {
            tracing::warn!(fragment = id, error = %e, "cannot read the divergent log");
            return;
        }
    };
    let chunks = match export_fragment(&state.store, id) {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(fragment = id, error = %e, "cannot read the fragment to copy");
            return;
        }
    };
    let Some(cluster) = state.cluster.as_mut() else {
        return;
    };
    let rseq = cluster.next_rseq;
    cluster.next_rseq += 1;
    let epoch = cluster.ownership.owner().epoch;
    let count = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let wire = FragmentWire::snapshot((epoch, i == 0, i + 1 == count, rseq), chunk);
        if !send_via(cluster, id, &partner, wire) {
            return;
        }
    }
    tracing::info!(fragment = id, partner = %partner, chunks = count, "copying to partner");
    cluster.copy = PartnerCopy::CatchingUp {
        until: rseq,
        divergent_upto,
    };
}
