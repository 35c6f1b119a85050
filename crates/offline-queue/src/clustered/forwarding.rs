//! A node that does not own the fragment: requests go to the owner, pushes
//! come back to this node's sessions, and requests held across a failover
//! go to the next owner first.

use super::*;

/// A request on a node that does not serve the fragment: forward it to the
/// owner, or refuse it while the owner is unknown or down.
pub(crate) fn forward(state: &mut FragmentState, message: FragmentMsg) {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        // A single node always serves; nothing can reach here.
        return;
    };
    let owner = cluster.ownership.owner().node.clone();
    let reachable = cluster.ownership.role() != Role::Waiting && cluster.up.contains(&owner);
    match message {
        FragmentMsg::Append { message, reply } => {
            if !reachable {
                let _ = reply.send(Err(FragmentError::Unavailable(id)));
                return;
            }
            let req = cluster.new_req();
            let wire = FragmentWire::append(req, message);
            if send_via(cluster, id, &owner, wire.clone()) {
                cluster.remember(req, owner, wire, LocalReply::Stored(reply));
            } else {
                let _ = reply.send(Err(FragmentError::Unavailable(id)));
            }
        }
        FragmentMsg::StoreReceipt { request, reply } => {
            let req = reply.as_ref().map(|_| cluster.new_req());
            let wire = FragmentWire::StoreReceipt { req, request };
            let sent = reachable && send_via(cluster, id, &owner, wire.clone());
            match (reply, req) {
                (Some(reply), Some(req)) if sent => {
                    cluster.remember(req, owner, wire, LocalReply::Stored(reply))
                }
                (Some(reply), _) => {
                    let _ = reply.send(Err(FragmentError::Unavailable(id)));
                }
                (None, _) => {}
            }
        }
        FragmentMsg::Attach {
            user,
            endpoint,
            reply,
        } => {
            if !reachable {
                // A node that is rejoining, or whose owner for this user is
                // down and not yet replaced, sheds the login: the client
                // retries after a while, here or at another node.
                let _ = reply.send(Err(FragmentError::Unavailable(id)));
                return;
            }
            let session_id = endpoint.session_id;
            let generation = endpoint.token_generation;
            if let Some(old) = cluster.local_sessions.insert(user.clone(), endpoint)
                && old.session_id != session_id
            {
                let _ = old.target.send_message(Push::Replaced);
            }
            tracing::debug!(fragment = id, %user, session_id, %owner, "attach forwarded");
            send_via(
                cluster,
                id,
                &owner,
                FragmentWire::AttachAt {
                    user,
                    session_id,
                    generation,
                },
            );
            // Attached here; pushes come once the owner has it (and every
            // change of owner re-attaches the sessions held here).
            let _ = reply.send(Ok(()));
        }
        FragmentMsg::Detach { user, session_id } => {
            if cluster
                .local_sessions
                .get(&user)
                .is_some_and(|e| e.session_id == session_id)
            {
                cluster.local_sessions.remove(&user);
            }
            if reachable {
                send_via(
                    cluster,
                    id,
                    &owner,
                    FragmentWire::Detach { user, session_id },
                );
            }
        }
        FragmentMsg::ReadAccount { user, reply } => {
            let req = cluster.new_req();
            let wire = FragmentWire::AccountRead { req, user };
            let reply = LocalReply::Account(reply);
            if reachable && send_via(cluster, id, &owner, wire.clone()) {
                cluster.remember(req, owner, wire, reply);
            } else {
                reply.unavailable(id);
            }
        }
        FragmentMsg::WriteAccount { user, write, reply } => {
            let req = cluster.new_req();
            let wire = FragmentWire::AccountWrite { req, user, write };
            let reply = LocalReply::Account(reply);
            if reachable && send_via(cluster, id, &owner, wire.clone()) {
                cluster.remember(req, owner, wire, reply);
            } else {
                reply.unavailable(id);
            }
        }
        FragmentMsg::Ack { user, ids } if reachable => {
            send_via(cluster, id, &owner, FragmentWire::Ack { user, ids });
        }
        FragmentMsg::DeleteAcked { owner: user, ids } if reachable => {
            let wire = FragmentWire::DeleteAcked { owner: user, ids };
            send_via(cluster, id, &owner, wire);
        }
        // With the owner out of reach an ack is dropped: the entries stay
        // and are pushed (and acked) again once the session re-attaches.
        _ => {}
    }
}

/// Sends held requests (those whose owner died or changed) to the current
/// owner, oldest first, or serves them here if this node is the owner now.
pub(super) fn resend_held(state: &mut FragmentState) -> Vec<CoreAction> {
    let id = state.id;
    let Some(cluster) = state.cluster.as_mut() else {
        return Vec::new();
    };
    if let Some(core) = state.core.as_mut() {
        let mut actions = Vec::new();
        for (_, held) in std::mem::take(&mut cluster.forwarded) {
            let Forwarded { wire, reply, .. } = held;
            match wire {
                FragmentWire::Append { .. } | FragmentWire::AppendAfter { .. } => {
                    if let Some((_, message)) = wire.into_append() {
                        let waiter = Waiter::Local(reply);
                        let (reads, store) = (&state.reads, &state.store);
                        actions.extend(crate::actor::append(core, reads, store, message, waiter));
                    }
                }
                FragmentWire::StoreReceipt { request, .. } => {
                    let waiter = Some(Waiter::Local(reply));
                    actions.extend(core.store_receipt(&state.reads, request, waiter));
                }
                FragmentWire::AccountRead { user, .. } => {
                    if let LocalReply::Account(port) = reply {
                        let _ =
                            port.send(core.account(&state.reads, &user).map(AccountReply::Current));
                    }
                }
                FragmentWire::AccountWrite { user, write, .. } => {
                    let waiter = Waiter::Local(reply);
                    actions.extend(core.write_account(&state.reads, user, write, waiter));
                }
                _ => reply.unavailable(id),
            }
        }
        return actions;
    }
    let owner = cluster.ownership.owner().node.clone();
    if cluster.ownership.role() == Role::Waiting || !cluster.up.contains(&owner) {
        return Vec::new();
    }
    let stale: Vec<u64> = cluster
        .forwarded
        .iter()
        .filter(|(_, held)| held.owner != owner)
        .map(|(req, _)| *req)
        .collect();
    for req in stale {
        let Some(wire) = cluster.forwarded.get(&req).map(|held| held.wire.clone()) else {
            continue;
        };
        if send_via(cluster, id, &owner, wire)
            && let Some(held) = cluster.forwarded.get_mut(&req)
        {
            held.owner = owner.clone();
        }
    }
    Vec::new()
}

/// Re-attaches this node's sessions at the current owner.
pub(super) fn reattach_all(state: &FragmentState) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    let owner = &cluster.ownership.owner().node;
    if cluster.ownership.role() == Role::Waiting || !cluster.up.contains(owner) {
        return;
    }
    for (user, endpoint) in &cluster.local_sessions {
        tracing::debug!(fragment = state.id, %user, session_id = endpoint.session_id, %owner,
            "re-attach forwarded");
        let wire = FragmentWire::AttachAt {
            user: user.clone(),
            session_id: endpoint.session_id,
            generation: endpoint.token_generation,
        };
        send_via(cluster, state.id, owner, wire);
    }
}
