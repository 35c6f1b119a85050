//! Changes of owner: taking the matching role after a change, stepping
//! down, and handing a fragment back to its preferred owner.

use super::*;

/// After the view of the owner changed (or resolved after a restart):
/// persist it, tell the peers, and take the matching role.
pub(super) async fn settle(
    state: &mut FragmentState,
    changed: Option<Owner>,
    reattach: bool,
) -> Result<Vec<CoreAction>, ActorProcessingErr> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_ref() else {
        return Ok(Vec::new());
    };
    if let Some(owner) = &changed {
        if cluster.ownership.partner().is_some() {
            save_owner(&state.store, id, owner.clone()).await?;
        }
        for peer in &cluster.up {
            let wire = FragmentWire::Owner {
                owner: owner.clone(),
                reply: false,
            };
            send_via(cluster, id, peer, wire);
        }
    }
    let role = cluster.ownership.role();
    let mut actions = Vec::new();
    match (role, state.core.is_some()) {
        (Role::Primary, false) => {
            let mut core = if changed.is_some() {
                state.new_core_after_takeover()?
            } else {
                state.new_core()?
            };
            let sessions = state
                .cluster
                .as_mut()
                .map(|c| std::mem::take(&mut c.local_sessions))
                .unwrap_or_default();
            for (user, endpoint) in sessions {
                let (session_id, generation) = (endpoint.session_id, endpoint.token_generation);
                let endpoint = Attached::Local(endpoint);
                match core.attach(&state.reads, user, session_id, generation, endpoint) {
                    Ok(more) => actions.extend(more),
                    Err(e) => tracing::warn!(fragment = id, error = %e, "attach at promotion"),
                }
            }
            state.set_core(Some(core));
            tracing::info!(fragment = id, "serving as primary");
            start_copy(state).await;
        }
        (Role::Primary, true) => {}
        (_, true) => {
            // Another node owns it now (a newer epoch elsewhere).
            demote(state);
        }
        (_, false) => {
            if changed.is_some() || reattach {
                reattach_all(state);
            }
        }
    }
    send_merge(state)?;
    actions.extend(resend_held(state));
    Ok(actions)
}

/// Stops serving: sessions of this node re-attach through the new owner;
/// those of other nodes do so when they hear of it.
pub(super) fn demote(state: &mut FragmentState) {
    let id = state.id;
    let Some(mut core) = state.set_core(None) else {
        return;
    };
    if let Some(cluster) = state.cluster.as_mut() {
        cluster.copy = PartnerCopy::Absent;
        cluster.by_rseq.clear();
        // Writes still waiting are not acknowledged: their senders retry
        // with the same ids, which the new owner deduplicates.
        cluster.waiting.clear();
        for (user, _, endpoint) in core.take_attached() {
            if let Attached::Local(endpoint) = endpoint {
                cluster.local_sessions.insert(user, endpoint);
            }
        }
    }
    tracing::info!(fragment = id, "no longer serving");
    reattach_all(state);
}

/// A fragment held for its preferred owner goes back once that node has a
/// full copy: new requests are held, writes in flight finish, then the
/// owner changes with a new epoch. Returns the held requests once the
/// hand-back is done (or abandoned), for the caller to route in order.
pub(crate) async fn maybe_hand_back(
    myself: &ActorRef<FragmentMsg>,
    state: &mut FragmentState,
) -> Result<Vec<FragmentMsg>, ActorProcessingErr> {
    let id = state.id;
    let (Some(cluster), Some(core)) = (state.cluster.as_mut(), state.core.as_ref()) else {
        return Ok(Vec::new());
    };
    if !cluster.handing_back {
        let ready = cluster.copy == PartnerCopy::Streaming
            && cluster
                .ownership
                .holds_for_partner(&cluster.link.islands, id);
        if !ready {
            return Ok(Vec::new());
        }
        tracing::info!(
            fragment = id,
            "partner caught up; draining to hand the fragment back"
        );
        cluster.handing_back = true;
        cluster.handing_since = Some(std::time::Instant::now());
    }
    if core.counts().pending_commits > 0 || !cluster.waiting.is_empty() {
        let too_long = cluster
            .handing_since
            .is_some_and(|t| t.elapsed() > HAND_BACK_TIMEOUT);
        if !too_long {
            return Ok(Vec::new());
        }
        tracing::warn!(fragment = id, "hand-back did not drain in time; serving on");
        cluster.handing_back = false;
        cluster.handing_since = None;
        return Ok(std::mem::take(&mut cluster.deferred));
    }
    if cluster.partner_up().is_some()
        && let Some(owner) = cluster.ownership.hand_to_partner()
    {
        tracing::info!(fragment = id, to = %owner.node, epoch = owner.epoch,
            "handing the fragment back");
        let actions = settle(state, Some(owner), false).await?;
        perform(myself, state, actions);
    }
    let Some(cluster) = state.cluster.as_mut() else {
        return Ok(Vec::new());
    };
    cluster.handing_back = false;
    cluster.handing_since = None;
    Ok(std::mem::take(&mut cluster.deferred))
}
