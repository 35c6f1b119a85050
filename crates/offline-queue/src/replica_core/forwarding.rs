//! A node that does not own the fragment: requests go to the owner, pushes
//! come back to this node's sessions, and requests held across a failover
//! go to the next owner first.

use super::*;

impl<T: Clone, L: Caller> ReplicaCore<T, L> {
    /// A request of this node's on a node that does not serve the fragment:
    /// forward it to the owner, or refuse it while the owner is unknown or
    /// down.
    pub(super) fn forward(&mut self, request: LocalRequest<T, L>, out: &mut Out<T, L>) {
        let id = self.id;
        let Some(cluster) = self.cluster.as_mut() else {
            // A node alone always serves; nothing can reach here.
            return;
        };
        let owner = cluster.reachable_owner();
        let unavailable = || Answer::Stored(Err(FragmentError::Unavailable(id)));
        match request {
            LocalRequest::Append { message, reply } => match owner {
                Some(owner) => {
                    let req = cluster.new_req();
                    cluster.send_held(req, owner, FragmentWire::append(req, message), reply, out);
                }
                None => out.push(Action::Answer {
                    to: reply,
                    answer: unavailable(),
                }),
            },
            LocalRequest::StoreReceipt { request, reply } => match (owner, reply) {
                (Some(owner), Some(reply)) => {
                    let req = cluster.new_req();
                    let wire = FragmentWire::StoreReceipt {
                        req: Some(req),
                        request,
                    };
                    cluster.send_held(req, owner, wire, reply, out);
                }
                (Some(owner), None) => out.push(Action::Send {
                    to: owner,
                    wire: FragmentWire::StoreReceipt { req: None, request },
                }),
                (None, Some(reply)) => out.push(Action::Answer {
                    to: reply,
                    answer: unavailable(),
                }),
                (None, None) => {}
            },
            LocalRequest::Attach {
                user,
                endpoint,
                reply,
            } => {
                let Some(owner) = owner else {
                    // A node that is rejoining, or whose owner for this user
                    // is down and not yet replaced, sheds the login: the
                    // client retries after a while, here or at another node.
                    out.push(Action::Answer {
                        to: reply,
                        answer: Answer::Attached(Err(FragmentError::Unavailable(id))),
                    });
                    return;
                };
                let session_id = endpoint.session_id;
                let generation = endpoint.token_generation;
                if let Some(old) = cluster.local_sessions.insert(user.clone(), endpoint)
                    && old.session_id != session_id
                {
                    out.push(Action::Deliver {
                        endpoint: old,
                        push: Push::Replaced,
                    });
                }
                tracing::debug!(fragment = id, %user, session_id, %owner, "attach forwarded");
                out.push(Action::Send {
                    to: owner,
                    wire: FragmentWire::AttachAt {
                        user,
                        session_id,
                        generation,
                    },
                });
                // Attached here; pushes come once the owner has it (and
                // every change of owner re-attaches the sessions held here).
                out.push(Action::Answer {
                    to: reply,
                    answer: Answer::Attached(Ok(())),
                });
            }
            LocalRequest::Detach { user, session_id } => {
                if cluster
                    .local_sessions
                    .get(&user)
                    .is_some_and(|e| e.session_id == session_id)
                {
                    cluster.local_sessions.remove(&user);
                }
                if let Some(owner) = owner {
                    out.push(Action::Send {
                        to: owner,
                        wire: FragmentWire::Detach { user, session_id },
                    });
                }
            }
            LocalRequest::ReadAccount { user, reply } => match owner {
                Some(owner) => {
                    let req = cluster.new_req();
                    let wire = FragmentWire::AccountRead { req, user };
                    cluster.send_held(req, owner, wire, reply, out);
                }
                None => out.push(Action::Answer {
                    to: reply,
                    answer: Answer::Account(Err(FragmentError::Unavailable(id))),
                }),
            },
            LocalRequest::WriteAccount { user, write, reply } => match owner {
                Some(owner) => {
                    let req = cluster.new_req();
                    let wire = FragmentWire::AccountWrite { req, user, write };
                    cluster.send_held(req, owner, wire, reply, out);
                }
                None => out.push(Action::Answer {
                    to: reply,
                    answer: Answer::Account(Err(FragmentError::Unavailable(id))),
                }),
            },
            // With the owner out of reach an ack is dropped: the entries
            // stay and are pushed (and acked) again once the session
            // re-attaches.
            LocalRequest::Ack { user, ids } => {
                if let Some(owner) = owner {
                    out.push(Action::Send {
                        to: owner,
                        wire: FragmentWire::Ack { user, ids },
                    });
                }
            }
            LocalRequest::DeleteAcked { owner: user, ids } => {
                if let Some(owner) = owner {
                    out.push(Action::Send {
                        to: owner,
                        wire: FragmentWire::DeleteAcked { owner: user, ids },
                    });
                }
            }
            LocalRequest::Group { request, reply } => match owner {
                Some(owner) => {
                    let req = cluster.new_req();
                    let wire = FragmentWire::Group { req, request };
                    cluster.send_held(req, owner, wire, reply, out);
                }
                None => out.push(Action::Answer {
                    to: reply,
                    answer: Answer::Group(Err(FragmentError::Unavailable(id))),
                }),
            },
            // Out of reach, a batch or its confirmation is dropped: the
            // group's home sends the batch again.
            LocalRequest::Note(note) => {
                if let Some(owner) = owner {
                    let wire = match note {
                        GroupNote::FanOut { home, fanout } => FragmentWire::FanOut { home, fanout },
                        GroupNote::FannedOut {
                            group,
                            through,
                            from,
                        } => FragmentWire::FannedOut {
                            group,
                            through,
                            from,
                        },
                        note => FragmentWire::Note(note),
                    };
                    out.push(Action::Send { to: owner, wire });
                }
            }
        }
    }

    /// Sends held requests (those whose owner died or changed) to the
    /// current owner, oldest first, or serves them here if this node is
    /// the owner now.
    pub(super) fn resend_held(
        &mut self,
        now: TimestampMs,
        reads: &impl ReplicaRead,
        out: &mut Out<T, L>,
    ) -> Result<(), FragmentError> {
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        if self.core.is_some() {
            for (_, held) in std::mem::take(&mut cluster.forwarded) {
                let Forwarded { wire, reply, .. } = held;
                // Answered here as the request of this node it was.
                let Some((request, _)) = Request::<T>::from_wire::<L>(String::new(), wire) else {
                    continue;
                };
                self.serve(now, request, Some(Waiter::Local(reply)), reads, out)?;
            }
            return Ok(());
        }
        let Some(owner) = cluster.reachable_owner() else {
            return Ok(());
        };
        let epoch = cluster.ownership.owner().epoch;
        for held in cluster.forwarded.values_mut() {
            if held.owner != owner || held.epoch != epoch {
                held.owner = owner.clone();
                held.epoch = epoch;
                out.push(Action::Send {
                    to: owner.clone(),
                    wire: held.wire.clone(),
                });
            }
        }
        Ok(())
    }

    /// Re-attaches this node's sessions at the current owner.
    pub(super) fn reattach_all(&self, out: &mut Out<T, L>) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let Some(owner) = cluster.reachable_owner() else {
            return;
        };
        for (user, endpoint) in &cluster.local_sessions {
            tracing::debug!(fragment = self.id, %user, session_id = endpoint.session_id, %owner,
                "re-attach forwarded");
            out.push(Action::Send {
                to: owner.clone(),
                wire: FragmentWire::AttachAt {
                    user: user.clone(),
                    session_id: endpoint.session_id,
                    generation: endpoint.token_generation,
                },
            });
        }
    }
}

impl<T, L: Caller> Replication<T, L> {
    /// Sends request `req` to `owner` and keeps it until answered. A
    /// request whose caller stopped waiting is dropped now and then.
    fn send_held(
        &mut self,
        req: u64,
        owner: String,
        wire: FragmentWire,
        reply: L,
        out: &mut Out<T, L>,
    ) {
        out.push(Action::Send {
            to: owner.clone(),
            wire: wire.clone(),
        });
        let epoch = self.ownership.owner().epoch;
        self.forwarded.insert(
            req,
            Forwarded {
                owner,
                epoch,
                wire,
                reply,
            },
        );
        if self.forwarded.len().is_power_of_two() && self.forwarded.len() >= 1024 {
            self.forwarded.retain(|_, f| !f.reply.gone());
        }
    }
}
