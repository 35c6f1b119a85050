//! Changes of owner: membership changes, taking the matching role after a
//! change, taking over from a lost primary, stepping down, and handing a
//! fragment back to its preferred owner.

use super::*;

impl<T: Clone, L: Caller> ReplicaCore<T, L> {
    /// After the view of the owner changed (or resolved after a restart):
    /// persist it, tell the peers, and take the matching role.
    pub(super) fn settle(
        &mut self,
        now: TimestampMs,
        changed: Option<Owner>,
        reattach: bool,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Ok(());
        };
        if let Some(owner) = &changed {
            if cluster.ownership.partner().is_some() {
                out.push(Action::SaveOwner(owner.clone()));
            }
            for peer in &cluster.up {
                out.push(Action::Send {
                    to: peer.clone(),
                    wire: FragmentWire::Owner {
                        owner: owner.clone(),
                        reply: false,
                    },
                });
            }
        }
        let role = cluster.ownership.role();
        match (role, self.core.is_some()) {
            (Role::Primary, false) => {
                // The copy this node serves from must be on disk whole
                // first: writes of the former owner still in the writer's
                // queue would land behind the new core's back (never
                // pushed, yet found by dedupe, so a sender's later message
                // would overtake them). `promote` goes on once they are.
                if self.promoting.is_none() {
                    self.promoting = Some(changed.is_some());
                    out.push(Action::Flush);
                }
                return Ok(());
            }
            (Role::Primary, true) => {}
            // Another node owns it now (a newer epoch elsewhere).
            (_, true) => self.demote(out),
            (_, false) => {
                if changed.is_some() || reattach {
                    self.reattach_all(out);
                }
            }
        }
        self.send_merge(now, reads, out)?;
        self.resend_held(now, reads, out)
    }

    /// The writes handed over before a promotion are durable: serve from
    /// the disk as it is now (see `settle`).
    pub(super) fn promote(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        let Some(takeover) = self.promoting.take() else {
            return Ok(());
        };
        let primary = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.ownership.role() == Role::Primary);
        if !primary || self.core.is_some() {
            return Ok(());
        }
        let mut core = self.new_core(reads, takeover)?;
        let sessions = self
            .cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.local_sessions))
            .unwrap_or_default();
        let mut actions = Vec::new();
        for (user, endpoint) in sessions {
            let (session_id, generation) = (endpoint.session_id, endpoint.token_generation);
            let endpoint = Attached::Local(endpoint);
            match core.attach(reads, user, session_id, generation, endpoint) {
                Ok(more) => actions.extend(more),
                Err(e) => tracing::warn!(fragment = id, error = %e, "attach at promotion"),
            }
        }
        self.set_core(Some(core));
        tracing::info!(fragment = id, "serving as primary");
        if let Some(cluster) = self.cluster.as_mut() {
            // Taken over (logged), or handed over by an owner that drained
            // its commits first.
            cluster.uncommitted.clear();
        }
        if !takeover && let Some(cluster) = self.cluster.as_ref() {
            // Serving after a restart's wait: forwarders may have sent
            // attaches here while this node still waited, and had them
            // refused. Said by the owner itself, this makes them attach
            // again.
            for peer in &cluster.up {
                out.push(Action::Send {
                    to: peer.clone(),
                    wire: FragmentWire::Owner {
                        owner: cluster.ownership.owner().clone(),
                        reply: false,
                    },
                });
            }
        }
        self.absorb(now, actions, reads, out)?;
        self.start_copy(out);
        self.send_merge(now, reads, out)?;
        self.resend_held(now, reads, out)
    }

    /// Stops serving: sessions of this node re-attach through the new
    /// owner; those of other nodes do so when they hear of it.
    fn demote(&mut self, out: &mut Out<T, L>) {
        let id = self.id;
        let Some(mut core) = self.set_core(None) else {
            return;
        };
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.copy = PartnerCopy::Absent;
            cluster.by_rseq.clear();
            // Writes still waiting are not acknowledged: their senders retry
            // with the same ids, which the new owner deduplicates. But they
            // are in this node's rows, and if this node serves again before
            // its partner copies to it, a retry here would find them and be
            // acknowledged (a destination's group batch confirmed) while
            // the partner, which may take over later, never had them: they
            // go to the divergent log, to be merged wherever the fragment
            // is served next (in tag order, the order they were written).
            let unconfirmed: Vec<WriteOp> = std::mem::take(&mut cluster.waiting)
                .into_values()
                .flat_map(|waiting| waiting.ops)
                .collect();
            if !unconfirmed.is_empty() {
                out.push(Action::LogDivergent(unconfirmed));
                cluster.merge_more = true;
            }
            for (user, _, endpoint) in core.take_attached() {
                if let Attached::Local(endpoint) = endpoint {
                    cluster.local_sessions.insert(user, endpoint);
                }
            }
        }
        tracing::info!(fragment = id, "no longer serving");
        self.reattach_all(out);
    }

    /// The owner (this node's partner) is down: take the fragment over with
    /// a new epoch, if this node sees enough of the cluster.
    fn take_over_if_quorate(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        let Some(cluster) = self.cluster.as_ref() else {
            return Ok(());
        };
        let Some(partner) = cluster.ownership.partner().map(str::to_owned) else {
            return Ok(());
        };
        if cluster.up.contains(&partner) || cluster.ownership.owner().node != partner {
            return Ok(());
        }
        if !cluster.may_take_over(&partner, now) {
            tracing::debug!(fragment = id, lost = %partner,
                "primary lost, but this node does not see enough of the cluster (yet) to take over");
            return Ok(());
        }
        if cluster.copying || reads.copy_incomplete()? {
            // Serving from part of a copy would lose what the rest held;
            // the fragment waits for its owner instead (checked again
            // every second).
            tracing::warn!(fragment = id, lost = %partner,
                "primary lost in the middle of copying the fragment here; waiting for it");
            return Ok(());
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        let promoted = cluster.ownership.partner_down();
        if let Some(owner) = &promoted {
            tracing::warn!(fragment = id, epoch = owner.epoch, lost = %partner,
                "primary lost; this node takes the fragment over");
            metrics::counter!("switchboard_fragment_failovers_total").increment(1);
            // Durable before anything is served: a resend of one of them
            // is acknowledged from the dedupe index.
            let uncommitted = cluster.uncommitted.take();
            if !uncommitted.is_empty() {
                tracing::info!(
                    fragment = id,
                    writes = uncommitted.len(),
                    "logging the lost primary's writes it may not have committed"
                );
                out.push(Action::LogDivergent(uncommitted));
            }
        }
        self.settle(now, promoted, false, reads, out)
    }

    /// Once a second: a partner that left a write unconfirmed for too long
    /// is treated as lost for this fragment (see
    /// [`PARTNER_ANSWER_TIMEOUT_MS`]); a node that held back from taking
    /// over a lost primary looks again; an unanswered merge offer is made
    /// again.
    pub(super) fn tick(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        if self.cluster.is_none() {
            return Ok(());
        }
        if self.core.is_none() {
            self.take_over_if_quorate(now, reads, out)?;
            let offered = self
                .cluster
                .as_ref()
                .is_some_and(|c| c.merge_offer.is_some() || c.merge_more);
            if self.core.is_none() && offered {
                self.send_merge(now, reads, out)?;
            }
            return Ok(());
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.tell_committed(true, out);
        }
        let stalled = self.cluster.as_ref().is_some_and(|c| {
            c.waiting.values().any(|w| {
                w.remote.is_none()
                    && w.since
                        .is_some_and(|t| now.saturating_sub(t) > PARTNER_ANSWER_TIMEOUT_MS)
            })
        });
        if !stalled {
            return Ok(());
        }
        tracing::warn!(
            fragment = id,
            "the partner left a write unconfirmed; copying afresh"
        );
        metrics::counter!("switchboard_fragment_partner_timeouts_total").increment(1);
        self.partner_lost(now, reads, out)?;
        self.start_copy(out);
        Ok(())
    }

    pub(super) fn peer_up(
        &mut self,
        now: TimestampMs,
        peer: String,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        cluster.up.insert(peer.clone());
        cluster.note_sight(now);
        let is_partner = cluster.ownership.partner() == Some(peer.as_str());
        if cluster.ownership.partner().is_some() {
            out.push(Action::Send {
                to: peer.clone(),
                wire: FragmentWire::Owner {
                    owner: cluster.ownership.owner().clone(),
                    reply: is_partner,
                },
            });
        }
        if self.core.is_some() {
            if is_partner {
                self.start_copy(out);
            }
            return Ok(());
        }
        if !is_partner {
            // With more of the cluster in sight, a node that held back may
            // now take over from a partner that is still down.
            self.take_over_if_quorate(now, reads, out)?;
            if self.core.is_some() {
                return Ok(());
            }
        }
        let owner_is_back = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.ownership.owner().node == peer);
        if owner_is_back {
            self.reattach_all(out);
            // An offer sent before the link came back may have been lost
            // with the old link: offer again now.
            if let Some(cluster) = self.cluster.as_mut()
                && cluster
                    .merge_offer
                    .as_ref()
                    .is_some_and(|(to, _, _)| *to == peer)
            {
                cluster.merge_offer = None;
            }
            self.send_merge(now, reads, out)?;
            self.resend_held(now, reads, out)?;
        }
        Ok(())
    }

    pub(super) fn peer_down(
        &mut self,
        now: TimestampMs,
        peer: String,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        cluster.up.remove(&peer);
        cluster.note_sight(now);
        // Requests forwarded there stay held: they go to the next owner (or
        // to this one when it returns) ahead of later ones; a caller that
        // gives up waiting drops its own.
        for held in cluster.forwarded.values_mut() {
            if held.owner == peer {
                held.owner.clear();
            }
        }
        let is_partner = cluster.ownership.partner() == Some(peer.as_str());
        if let Some(core) = self.core.as_mut() {
            // Sessions of that node are gone with it.
            let gone: Vec<(PhoneNumber, u64)> = core
                .attached()
                .filter_map(|(user, session_id, _, endpoint)| match endpoint {
                    Attached::Remote { node, .. } if *node == peer => {
                        Some((user.clone(), session_id))
                    }
                    _ => None,
                })
                .collect();
            for (user, session_id) in gone {
                core.detach(&user, session_id);
            }
        }
        if is_partner {
            self.partner_lost(now, reads, out)?;
            self.take_over_if_quorate(now, reads, out)?;
        }
        Ok(())
    }

    /// A peer says who owns the fragment (`reply`: it wants this node's view
    /// back).
    pub(super) fn owner_said(
        &mut self,
        now: TimestampMs,
        from: String,
        owner: Owner,
        reply: bool,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        let was_waiting = cluster.ownership.role() == Role::Waiting;
        // The owner announcing itself is known to serve now: attaches sent
        // on an earlier word (another node's relay) may have reached it
        // before it knew, and were refused.
        let from_owner = owner.node == from;
        let changed = cluster.ownership.observe(&from, owner);
        let owner_spoke = from_owner && cluster.ownership.owner().node == from;
        let resolved = was_waiting && cluster.ownership.role() != Role::Waiting;
        if resolved {
            tracing::info!(fragment = id, peer = %from, "ownership known; role settled");
        }
        if reply {
            out.push(Action::Send {
                to: from.clone(),
                wire: FragmentWire::Owner {
                    owner: cluster.ownership.owner().clone(),
                    reply: false,
                },
            });
        }
        self.settle(now, changed, resolved || owner_spoke, reads, out)?;
        // The partner's fragment (re)started and may have missed a copy in
        // flight: start it afresh.
        let from_partner = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.ownership.partner() == Some(from.as_str()));
        if reply && from_partner && self.core.is_some() {
            self.partner_lost(now, reads, out)?;
            self.start_copy(out);
        }
        Ok(())
    }

    /// A fragment held for its preferred owner goes back once that node has
    /// a full copy: new requests are held, writes in flight finish, then
    /// the owner changes with a new epoch, and the held requests are routed
    /// in order (forwarded to the new owner).
    pub(super) fn maybe_hand_back(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let id = self.id;
        let (Some(cluster), Some(core)) = (self.cluster.as_mut(), self.core.as_ref()) else {
            return Ok(());
        };
        if cluster.handing_since.is_none() {
            let ready = cluster.copy == PartnerCopy::Streaming
                && cluster.ownership.holds_for_partner(&cluster.islands, id);
            if !ready {
                return Ok(());
            }
            tracing::info!(
                fragment = id,
                "partner caught up; draining to hand the fragment back"
            );
            cluster.handing_since = Some(now);
        }
        if core.counts().pending_commits > 0 || !cluster.waiting.is_empty() {
            let too_long = cluster
                .handing_since
                .is_some_and(|t| now.saturating_sub(t) > HAND_BACK_TIMEOUT_MS);
            if !too_long {
                return Ok(());
            }
            tracing::warn!(fragment = id, "hand-back did not drain in time; serving on");
            cluster.handing_since = None;
            return self.route_held(now, reads, out);
        }
        if cluster.partner_up().is_some()
            && let Some(owner) = cluster.ownership.hand_to_partner()
        {
            tracing::info!(fragment = id, to = %owner.node, epoch = owner.epoch,
                "handing the fragment back");
            self.settle(now, Some(owner), false, reads, out)?;
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.handing_since = None;
        }
        self.route_held(now, reads, out)
    }

    /// Routes the requests held during a hand-back, in order.
    fn route_held(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        while let Some(held) = self.held.pop_front() {
            match held {
                Held::Local(request) => self.local(now, request, reads, out)?,
                Held::Peer { from, wire } => self.peer(now, from, wire, reads, out)?,
            }
        }
        Ok(())
    }
}
