//! The pure presence state machine.

use std::collections::{HashMap, HashSet};

use proto::{PhoneNumber, PresenceStatus, TimestampMs};

use crate::policy::{Policy, may_see};

/// Limits of the presence service.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Typing events a sender may send per window; more are dropped.
    pub typing_per_window: u32,
    /// The typing rate window.
    pub typing_window_ms: u64,
    /// Most users one subscriber may watch.
    pub max_watched: usize,
    /// Most contacts one user may upload.
    pub max_contacts: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            typing_per_window: 20,
            typing_window_ms: 10_000,
            max_watched: 1000,
            max_contacts: 2000,
        }
    }
}

/// One update for one receiver.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Update {
    /// `user`'s presence.
    Presence {
        /// Whose.
        user: PhoneNumber,
        /// Online or last seen.
        status: PresenceStatus,
    },
    /// `from` is typing (or stopped).
    Typing {
        /// Who types.
        from: PhoneNumber,
        /// Started or stopped.
        active: bool,
    },
}

struct Online<T> {
    session_id: u64,
    target: T,
}

/// Presence state. `T` is the handle pushes go to.
pub struct PresenceCore<T> {
    config: PresenceConfig,
    online: HashMap<PhoneNumber, Online<T>>,
    last_seen: HashMap<PhoneNumber, TimestampMs>,
    watchers: HashMap<PhoneNumber, HashSet<PhoneNumber>>,
    watching: HashMap<PhoneNumber, Vec<PhoneNumber>>,
    typing_budget: HashMap<PhoneNumber, (TimestampMs, u32)>,
    pending: HashMap<PhoneNumber, Vec<Update>>,
    /// Watchers newly allowed to see users: they get the users' states as
    /// of the next flush (unless a change of the same user is queued for
    /// them by then), so that settings and a login arriving together from
    /// another node show one `Online`, not a transient `Offline` first.
    pending_states: HashMap<PhoneNumber, Vec<PhoneNumber>>,
    /// Who may see whom: the settings of users online here or elsewhere
    /// (kept after they leave, for their last seen).
    policies: HashMap<PhoneNumber, Policy>,
}

impl<T: Clone> PresenceCore<T> {
    /// Empty state.
    pub fn new(config: PresenceConfig) -> Self {
        Self {
            config,
            online: HashMap::new(),
            last_seen: HashMap::new(),
            watchers: HashMap::new(),
            watching: HashMap::new(),
            typing_budget: HashMap::new(),
            pending: HashMap::new(),
            pending_states: HashMap::new(),
            policies: HashMap::new(),
        }
    }

    /// Users online now.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// `user`'s status as this node knows it, ignoring who may see it.
    pub fn status_of(&self, user: &PhoneNumber) -> PresenceStatus {
        if self.online.contains_key(user) {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline {
                last_seen_ms: self.last_seen.get(user).copied(),
            }
        }
    }

    /// Whether `viewer` may see `owner` now.
    pub fn may_see(&self, owner: &PhoneNumber, viewer: &PhoneNumber) -> bool {
        may_see(owner, self.policies.get(owner), viewer)
    }

    /// `user`'s settings, if known here.
    pub fn policy_of(&self, user: &PhoneNumber) -> Option<&Policy> {
        self.policies.get(user)
    }

    /// `user`'s settings are now `policy` (unless a newer version is known).
    /// Watchers it newly allows get `user`'s current state; those it no
    /// longer allows get nothing more. Returns whether it was applied.
    pub fn set_policy(&mut self, user: PhoneNumber, policy: Policy) -> bool {
        if self
            .policies
            .get(&user)
            .is_some_and(|known| known.version >= policy.version)
        {
            return false;
        }
        let before = self.policies.insert(user.clone(), policy);
        if let Some(watchers) = self.watchers.get(&user) {
            for watcher in watchers {
                let was = may_see(&user, before.as_ref(), watcher);
                let is = may_see(&user, self.policies.get(&user), watcher);
                if is && !was && self.online.contains_key(watcher) {
                    self.pending_states
                        .entry(watcher.clone())
                        .or_default()
                        .push(user.clone());
                }
            }
        }
        true
    }

    fn notify_watchers(&mut self, user: &PhoneNumber) {
        let status = self.status_of(user);
        let Some(watchers) = self.watchers.get(user) else {
            return;
        };
        let policy = self.policies.get(user);
        for watcher in watchers {
            if self.online.contains_key(watcher) && may_see(user, policy, watcher) {
                self.pending
                    .entry(watcher.clone())
                    .or_default()
                    .push(Update::Presence {
                        user: user.clone(),
                        status,
                    });
            }
        }
    }

    /// `user` connected with session `session_id`. Session ids grow with
    /// time: news of an older session (from another node, late) does not
    /// replace a newer one.
    pub fn online(&mut self, user: PhoneNumber, session_id: u64, target: T) {
        if self
            .online
            .get(&user)
            .is_some_and(|current| current.session_id > session_id)
        {
            return;
        }
        let was_online = self
            .online
            .insert(user.clone(), Online { session_id, target })
            .is_some();
        if !was_online {
            self.notify_watchers(&user);
        }
    }

    /// Session `session_id` of `user` ended at `now`.
    pub fn offline(&mut self, user: &PhoneNumber, session_id: u64, now: TimestampMs) {
        if self
            .online
            .get(user)
            .is_none_or(|o| o.session_id != session_id)
        {
            return; // a newer session of the same user is still connected
        }
        self.online.remove(user);
        self.last_seen.insert(user.clone(), now);
        self.pending.remove(user);
        self.pending_states.remove(user);
        self.typing_budget.remove(user);
        // Its subscriptions end with its session.
        if let Some(watched) = self.watching.remove(user) {
            for w in watched {
                if let Some(set) = self.watchers.get_mut(&w) {
                    set.remove(user);
                    if set.is_empty() {
                        self.watchers.remove(&w);
                    }
                }
            }
        }
        self.notify_watchers(user);
    }

    /// `subscriber` now watches `users` (replacing its earlier list); the
    /// current states of those it may see are queued for it. The others are
    /// watched too, silently: if their settings come to allow the
    /// subscriber, it hears of them from then on.
    pub fn subscribe(&mut self, subscriber: PhoneNumber, mut users: Vec<PhoneNumber>) {
        users.truncate(self.config.max_watched);
        users.sort();
        users.dedup();
        if let Some(old) = self.watching.remove(&subscriber) {
            for w in old {
                if let Some(set) = self.watchers.get_mut(&w) {
                    set.remove(&subscriber);
                    if set.is_empty() {
                        self.watchers.remove(&w);
                    }
                }
            }
        }
        let mut current = Vec::with_capacity(users.len());
        for user in &users {
            self.watchers
                .entry(user.clone())
                .or_default()
                .insert(subscriber.clone());
            if !self.may_see(user, &subscriber) {
                continue;
            }
            current.push(Update::Presence {
                user: user.clone(),
                status: self.status_of(user),
            });
        }
        self.watching.insert(subscriber.clone(), users);
        if !current.is_empty() {
            self.pending.entry(subscriber).or_default().extend(current);
        }
    }

    /// `from` types to `to`: relayed at the next flush if `to` is online,
    /// may see `from` (else typing would tell `from` is online) and `from`
    /// is within its rate. Returns whether it was accepted.
    pub fn typing(
        &mut self,
        from: PhoneNumber,
        to: PhoneNumber,
        active: bool,
        now: TimestampMs,
    ) -> bool {
        let budget = self.typing_budget.entry(from.clone()).or_insert((now, 0));
        if now.saturating_sub(budget.0) >= self.config.typing_window_ms {
            *budget = (now, 0);
        }
        if budget.1 >= self.config.typing_per_window {
            return false;
        }
        budget.1 += 1;
        if !self.online.contains_key(&to) || !self.may_see(&from, &to) {
            return false;
        }
        self.pending
            .entry(to)
            .or_default()
            .push(Update::Typing { from, active });
        true
    }

    /// Users online through a target `matches` accepts, with their sessions
    /// (e.g. everyone online at a node that went down).
    pub fn online_where(&self, matches: impl Fn(&T) -> bool) -> Vec<(PhoneNumber, u64)> {
        self.online
            .iter()
            .filter(|(_, o)| matches(&o.target))
            .map(|(user, o)| (user.clone(), o.session_id))
            .collect()
    }

    /// Where `user` gets its updates, if online.
    pub fn target_of(&self, user: &PhoneNumber) -> Option<&T> {
        self.online.get(user).map(|o| &o.target)
    }

    /// Takes every queued update with its receiver and push handle.
    pub fn flush_by_user(&mut self) -> Vec<(PhoneNumber, T, Vec<Update>)> {
        for (watcher, users) in std::mem::take(&mut self.pending_states) {
            for user in users {
                let queued = self.pending.get(&watcher).is_some_and(|updates| {
                    updates
                        .iter()
                        .any(|u| matches!(u, Update::Presence { user: u, .. } if *u == user))
                });
                if queued || !self.may_see(&user, &watcher) {
                    continue;
                }
                let status = self.status_of(&user);
                self.pending
                    .entry(watcher.clone())
                    .or_default()
                    .push(Update::Presence { user, status });
            }
        }
        let pending = std::mem::take(&mut self.pending);
        pending
            .into_iter()
            .filter_map(|(receiver, updates)| {
                let target = self.online.get(&receiver)?.target.clone();
                Some((receiver, target, updates))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_support::numbered as phone;

    /// A policy that shows its owner to `viewers` only.
    fn shown_to(viewers: &[PhoneNumber], version: u64) -> Policy {
        Policy {
            visibility: proto::Visibility::Contacts,
            contacts: viewers.iter().cloned().collect(),
            version,
        }
    }

    /// Every queued update by the receiver's push handle, in handle order.
    fn flushed(core: &mut PresenceCore<u32>) -> Vec<(u32, Vec<Update>)> {
        let mut out: Vec<_> = core
            .flush_by_user()
            .into_iter()
            .map(|(_, target, updates)| (target, updates))
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out
    }

    #[test]
    fn watchers_see_online_then_last_seen() {
        let mut core = PresenceCore::new(PresenceConfig::default());
        core.set_policy(phone(2), shown_to(&[phone(1)], 1));
        core.online(phone(1), 10, 1);
        core.subscribe(phone(1), vec![phone(2)]);
        assert_eq!(
            flushed(&mut core),
            vec![(
                1,
                vec![Update::Presence {
                    user: phone(2),
                    status: PresenceStatus::Offline { last_seen_ms: None }
                }]
            )]
        );
        core.online(phone(2), 20, 2);
        core.offline(&phone(2), 20, 5000);
        assert_eq!(
            flushed(&mut core),
            vec![(
                1,
                vec![
                    Update::Presence {
                        user: phone(2),
                        status: PresenceStatus::Online
                    },
                    Update::Presence {
                        user: phone(2),
                        status: PresenceStatus::Offline {
                            last_seen_ms: Some(5000)
                        }
                    }
                ]
            )]
        );
    }

    #[test]
    fn a_stale_session_going_offline_does_not_hide_a_newer_one() {
        let mut core = PresenceCore::new(PresenceConfig::default());
        core.online(phone(2), 1, 2);
        core.online(phone(2), 2, 3);
        core.offline(&phone(2), 1, 100);
        assert_eq!(core.online_count(), 1);
    }

    #[test]
    fn typing_is_relayed_to_online_peers_within_the_rate() {
        let mut core = PresenceCore::new(PresenceConfig {
            typing_per_window: 2,
            typing_window_ms: 1000,
            max_watched: 10,
            max_contacts: 10,
        });
        core.set_policy(phone(1), shown_to(&[phone(2), phone(3)], 1));
        core.online(phone(2), 1, 2);
        assert!(core.typing(phone(1), phone(2), true, 0));
        assert!(core.typing(phone(1), phone(2), false, 10));
        assert!(!core.typing(phone(1), phone(2), true, 20), "over the rate");
        assert!(core.typing(phone(1), phone(2), true, 1000), "new window");
        assert!(!core.typing(phone(1), phone(3), true, 1001), "offline peer");
        let out = flushed(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), 3);
    }

    #[test]
    fn subscriptions_end_with_the_subscribers_session() {
        let mut core = PresenceCore::new(PresenceConfig::default());
        core.online(phone(1), 1, 1);
        core.subscribe(phone(1), vec![phone(2), phone(3)]);
        core.offline(&phone(1), 1, 10);
        assert!(core.watchers.is_empty());
        assert!(core.flush_by_user().is_empty());
    }

    #[test]
    fn only_allowed_watchers_hear_of_a_user() {
        let (victim, contact, stranger) = (phone(1), phone(2), phone(3));
        let mut core = PresenceCore::new(PresenceConfig::default());
        core.set_policy(victim.clone(), shown_to(std::slice::from_ref(&contact), 1));
        core.online(contact.clone(), 1, 2);
        core.online(stranger.clone(), 2, 3);
        core.subscribe(contact.clone(), vec![victim.clone()]);
        core.subscribe(stranger.clone(), vec![victim.clone()]);
        core.online(victim.clone(), 3, 1);
        let seen = |out: &[(u32, Vec<Update>)], target: u32| {
            out.iter()
                .filter(|(t, _)| *t == target)
                .flat_map(|(_, u)| u.iter())
                .any(|u| matches!(u, Update::Presence { user, .. } if *user == victim))
        };
        let out = flushed(&mut core);
        assert!(seen(&out, 2), "the contact sees the victim: {out:?}");
        assert!(!seen(&out, 3), "the stranger hears nothing: {out:?}");
        // Typing to a stranger is dropped too (it would show the victim online).
        assert!(!core.typing(victim.clone(), stranger.clone(), true, 0));
        assert!(core.typing(victim.clone(), contact.clone(), true, 0));
        let _ = flushed(&mut core);

        // Nobody: even the contact hears nothing more.
        let nobody = Policy {
            visibility: proto::Visibility::Nobody,
            ..shown_to(std::slice::from_ref(&contact), 2)
        };
        assert!(core.set_policy(victim.clone(), nobody));
        core.offline(&victim, 3, 500);
        core.online(victim.clone(), 4, 1);
        assert!(!core.typing(victim.clone(), contact.clone(), true, 1));
        let out = flushed(&mut core);
        assert!(!seen(&out, 2) && !seen(&out, 3), "{out:?}");

        // A late, older copy of the settings changes nothing.
        assert!(!core.set_policy(victim.clone(), shown_to(std::slice::from_ref(&stranger), 1)));
        // Everyone: watchers newly allowed get the current state at once.
        let everyone = Policy {
            visibility: proto::Visibility::Everyone,
            ..shown_to(&[], 3)
        };
        assert!(core.set_policy(victim.clone(), everyone));
        let out = flushed(&mut core);
        assert!(seen(&out, 2) && seen(&out, 3), "{out:?}");
    }

    #[test]
    fn unknown_settings_fail_closed() {
        let mut core = PresenceCore::new(PresenceConfig::default());
        core.online(phone(2), 1, 2);
        core.subscribe(phone(2), vec![phone(1), phone(2)]);
        core.online(phone(1), 2, 1);
        let out = flushed(&mut core);
        // Only its own state, never phone(1)'s.
        assert_eq!(
            out,
            vec![(
                2,
                vec![Update::Presence {
                    user: phone(2),
                    status: PresenceStatus::Online
                }]
            )]
        );
    }

    #[test]
    fn settings_and_a_login_together_show_one_online() {
        let mut core = PresenceCore::new(PresenceConfig::default());
        core.online(phone(2), 1, 2);
        core.subscribe(phone(2), vec![phone(1)]);
        assert!(flushed(&mut core).is_empty(), "not allowed yet");
        // As from another node: the settings, then the login.
        core.set_policy(phone(1), shown_to(&[phone(2)], 1));
        core.online(phone(1), 2, 1);
        assert_eq!(
            flushed(&mut core),
            vec![(
                2,
                vec![Update::Presence {
                    user: phone(1),
                    status: PresenceStatus::Online
                }]
            )]
        );
        // The settings alone: the state as of the flush.
        core.set_policy(phone(3), shown_to(&[phone(2)], 1));
        core.subscribe(phone(2), vec![phone(3)]);
        let _ = flushed(&mut core);
        core.set_policy(phone(3), shown_to(&[], 2));
        core.set_policy(phone(3), shown_to(&[phone(2)], 3));
        assert_eq!(
            flushed(&mut core),
            vec![(
                2,
                vec![Update::Presence {
                    user: phone(3),
                    status: PresenceStatus::Offline { last_seen_ms: None }
                }]
            )]
        );
    }
}
