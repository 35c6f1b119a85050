//! Writes a former owner made apart from the current one (behind a
//! partition), offered and merged when the cluster is whole again.

use super::*;

/// Writes per merge message: far below the link's 16 MiB frame limit even
/// at the largest payloads.
pub(super) const MERGE_CHUNK_OPS: usize = 128;

/// A node that no longer owns the fragment but holds writes its partner
/// never got (it served behind a partition) offers them to the owner.
/// One offer at a time: the owner merges and copies the fragment afresh
/// for each, which is too much work to repeat at every change of view.
pub(super) fn send_merge(state: &mut FragmentState) -> Result<(), FragmentError> {
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(());
    };
    let owner = cluster.ownership.owner().node.clone();
    if state.core.is_some()
        || cluster.ownership.role() == Role::Waiting
        || cluster.ownership.partner().is_none()
        || !cluster.up.contains(&owner)
    {
        return Ok(());
    }
    let pending = cluster
        .merge_offer
        .as_ref()
        .is_some_and(|(to, _, at)| *to == owner && at.elapsed() < MERGE_RETRY);
    if pending {
        return Ok(());
    }
    let chunks = divergent_chunks(&state.store, state.id, MERGE_CHUNK_OPS)?;
    if chunks.is_empty() {
        return Ok(());
    }
    let writes: usize = chunks.iter().map(|(_, ops)| ops.len()).sum();
    tracing::warn!(fragment = state.id, to = %owner, writes,
        "offering writes made apart from the owner for merging");
    let count = chunks.len();
    let last_upto = chunks.last().map_or(0, |(upto, _)| *upto);
    // Outstanding until the owner's MergeDone, even if a send fails here or
    // the link drops the offer: `check_partner` offers again after
    // MERGE_RETRY, and the owner's link coming back offers again at once.
    cluster.merge_offer = Some((owner.clone(), last_upto, std::time::Instant::now()));
    for (i, (upto, ops)) in chunks.into_iter().enumerate() {
        let last = i + 1 == count;
        if !send_via(
            cluster,
            state.id,
            &owner,
            FragmentWire::Merge { upto, ops, last },
        ) {
            return Ok(());
        }
    }
    Ok(())
}

/// Merges a former owner's divergent writes: messages not already here
/// (by their dedupe key: the sender may have resent them here), receipts,
/// deletions. Online users of the touched mailboxes get them pushed at
/// once, and the partner gets a fresh copy that includes them.
pub(super) async fn merge(
    state: &mut FragmentState,
    from: &str,
    upto: u64,
    ops: Vec<WriteOp>,
    last: bool,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    if state.core.is_none() {
        // Not the owner (any more): the sender offers them again once it
        // knows the owner.
        return Ok(Vec::new());
    }
    let mut keep = Vec::new();
    let mut touched = BTreeSet::new();
    let mut merged_accounts = Vec::new();
    for op in ops {
        match &op {
            WriteOp::PutMessage {
                recipient,
                sender,
                client_msg_id,
                ..
            } => {
                if state
                    .reads
                    .dedupe(recipient, sender, *client_msg_id)?
                    .is_none()
                {
                    touched.insert(recipient.clone());
                    keep.push(op);
                }
            }
            WriteOp::PutReceipt { owner, .. } => {
                touched.insert(owner.clone());
                keep.push(op);
            }
            WriteOp::Delete { .. } => keep.push(op),
            // Of two divergent records the higher (generation, version)
            // stays: a revocation made on either side is never undone.
            // Compared with what the core last wrote (maybe not yet
            // committed, and committed before this merge's write), and
            // stored above both versions, so that a writer holding an
            // older version can never match it.
            WriteOp::PutAccount { user, record } => {
                let current = match state.core.as_ref() {
                    Some(core) => core.account(&state.reads, user)?,
                    None => state.reads.account(user)?,
                };
                if record.supersedes(&current) {
                    let record = AccountRecord {
                        version: record.version.max(current.version).saturating_add(1),
                        ..record.clone()
                    };
                    merged_accounts.push(user.clone());
                    keep.push(WriteOp::PutAccount {
                        user: user.clone(),
                        record,
                    });
                }
            }
            // This owner's sequence is already past the former owner's,
            // and sweeping is its own business.
            WriteOp::NextSeq(_) | WriteOp::SweepDedupe { .. } => {}
        }
    }
    let merged = keep.len();
    state
        .store
        .write(move |txn| apply_ops(txn, id, &keep))
        .await?;
    tracing::warn!(
        fragment = id,
        from,
        merged,
        "merged writes made apart from this owner"
    );
    metrics::counter!("switchboard_fragment_merged_writes_total").increment(merged as u64);
    send(state, from, FragmentWire::MergeDone { upto });
    let mut actions = Vec::new();
    if let Some(core) = state.core.as_mut() {
        // The writes before this one are committed too (the writer keeps
        // order): the disk has the merged records, whatever the core still
        // holds as unsettled.
        for user in &merged_accounts {
            actions.extend(core.account_merged(&state.reads, user)?);
        }
        let online: Vec<_> = core
            .attached()
            .filter(|(user, _, _, _)| touched.contains(*user))
            .map(|(user, session_id, generation, endpoint)| {
                (user.clone(), session_id, generation, endpoint.clone())
            })
            .collect();
        for (user, session_id, generation, endpoint) in online {
            match core.attach(&state.reads, user, session_id, generation, endpoint.clone()) {
                Ok(more) => actions.extend(more),
                // The merged record revoked this session's token.
                Err(FragmentError::TokenRevoked) => {
                    actions.push(crate::fragment::Action::Revoked { endpoint })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if last {
        actions.extend(partner_lost(state).await?);
        start_copy(state).await;
    }
    Ok(actions)
}
