//! Groups: the record a group's home fragment keeps, and the rules that
//! change it. Pure: no clock, disk or actions (the fragment core turns
//! these decisions into writes and fan-out).
//!
//! A group's id is a message id of the fragment that created it
//! ([`crate::compose_message_id`]), so the fragment that owns the group
//! (its *home*) is read off the id, and the group is replicated, failed
//! over and copied with that fragment's data.
//!
//! Everything that happens in a group has a **position** in its log: a
//! message id of the home fragment, so positions only grow, survive a
//! fail-over (a new owner's ids start above the stored high-water mark)
//! and never repeat. Membership is kept per position: a member has spans
//! from the position of the change that added it (`since`) to the one
//! that removed it (`until`, open while a member). What is logged at `p`
//! goes to the members whose span holds `p`: an added member receives its
//! own addition and nothing before it, a removed one its removal and
//! nothing after. A closed span stays in the record until fan-out has
//! passed its end ([`GroupRecord::forget_through`]), so entries still
//! being fanned out reach exactly the members they had.

use std::collections::BTreeMap;

pub use proto::{GroupChange, GroupCommand, GroupId, GroupRole as Role, Position};
use proto::{PhoneNumber, TimestampMs};
use router::{FragmentId, Placement};
use serde::{Deserialize, Serialize};

/// Most bytes in a group's name.
pub const MAX_GROUP_NAME_BYTES: usize = 100;

/// One member, present or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's number.
    pub phone: PhoneNumber,
    /// What the member may do now.
    pub role: Role,
    /// The stretches of the log the member receives, oldest first: from
    /// the change that added it to the one that removed it (or its
    /// leaving), both included; the last is open while it is a member. A
    /// member removed and added again has two, until fan-out has passed
    /// the first.
    pub spans: Vec<Span>,
}

/// A stretch of a group's log that a member receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The position of the change that added the member.
    pub since: Position,
    /// The position of the change that removed it; `None` while a member.
    pub until: Option<Position>,
}

impl Member {
    fn joined(phone: PhoneNumber, role: Role, position: Position) -> Self {
        Self {
            phone,
            role,
            spans: vec![Span {
                since: position,
                until: None,
            }],
        }
    }

    fn is_current(&self) -> bool {
        self.spans.last().is_some_and(|span| span.until.is_none())
    }

    /// Whether the member receives what is logged at `position`.
    pub fn receives(&self, position: Position) -> bool {
        self.spans
            .iter()
            .any(|span| span.since <= position && span.until.is_none_or(|until| position <= until))
    }

    /// Where the current membership began.
    pub fn since(&self) -> Option<Position> {
        self.spans
            .last()
            .filter(|span| span.until.is_none())
            .map(|span| span.since)
    }

    fn end_at(&mut self, position: Position) {
        if let Some(span) = self.spans.last_mut() {
            span.until = Some(position);
        }
    }
}

/// A group as its home fragment stores it (postcard, one row per group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group's id.
    pub id: GroupId,
    /// Shown to members.
    pub name: String,
    /// Who created it.
    pub creator: PhoneNumber,
    /// When it was created.
    pub created_at: TimestampMs,
    /// Members and, until fan-out has passed their removal, former members;
    /// sorted by number, one row per number.
    pub members: Vec<Member>,
    /// The position of the latest change of the record.
    pub changed_at: Position,
}

/// Why a group request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum GroupError {
    /// No group with this id (never created, or every member left).
    #[error("no such group")]
    UnknownGroup,
    /// The requester is not a member.
    #[error("not a member of the group")]
    NotMember,
    /// The change needs an admin.
    #[error("only an admin may do this")]
    NotAdmin,
    /// The group would have more members than the node allows.
    #[error("a group has at most {limit} members")]
    Full {
        /// The limit.
        limit: u32,
    },
    /// Adding someone who is a member already.
    #[error("{0} is a member already")]
    AlreadyMember(PhoneNumber),
    /// Removing, promoting or demoting someone who is not a member.
    #[error("{0} is not a member")]
    NoSuchMember(PhoneNumber),
    /// A name that is empty, too long or holds control characters.
    #[error("a group name has 1 to {MAX_GROUP_NAME_BYTES} bytes and no control characters")]
    InvalidName,
    /// Anything else malformed: an empty or repeated list, removing
    /// oneself, demoting the last admin.
    #[error("{0}")]
    Invalid(String),
}

impl GroupError {
    /// The wire error code for a client.
    pub fn error_code(&self) -> proto::ErrorCode {
        match self {
            GroupError::UnknownGroup => proto::ErrorCode::UnknownGroup,
            GroupError::NotMember => proto::ErrorCode::NotGroupMember,
            GroupError::NotAdmin => proto::ErrorCode::NotGroupAdmin,
            GroupError::Full { limit } => proto::ErrorCode::GroupFull { limit: *limit },
            GroupError::AlreadyMember(_)
            | GroupError::NoSuchMember(_)
            | GroupError::InvalidName
            | GroupError::Invalid(_) => proto::ErrorCode::InvalidRequest,
        }
    }
}

fn check_name(name: &str) -> Result<(), GroupError> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(GroupError::InvalidName);
    }
    Ok(())
}

/// A list of numbers that is not empty and names no number twice.
fn check_list(list: &[PhoneNumber]) -> Result<(), GroupError> {
    if list.is_empty() {
        return Err(GroupError::Invalid(
            "the list of members is empty".to_owned(),
        ));
    }
    let mut sorted: Vec<&PhoneNumber> = list.iter().collect();
    sorted.sort();
    if let Some(twice) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(GroupError::Invalid(format!("{} is listed twice", twice[0])));
    }
    Ok(())
}

impl GroupRecord {
    /// A new group: `creator` is its admin, `others` its members, all
    /// since `position` (the creation's place in the log). At most `limit`
    /// members with the creator.
    pub fn create(
        id: GroupId,
        position: Position,
        creator: PhoneNumber,
        name: String,
        others: Vec<PhoneNumber>,
        limit: u32,
        now: TimestampMs,
    ) -> Result<(Self, GroupChange), GroupError> {
        check_name(&name)?;
        if others.contains(&creator) {
            return Err(GroupError::AlreadyMember(creator));
        }
        if !others.is_empty() {
            check_list(&others)?;
        }
        if others.len() + 1 > limit as usize {
            return Err(GroupError::Full { limit });
        }
        let mut everyone = Vec::with_capacity(others.len() + 1);
        everyone.push(creator.clone());
        everyone.extend(others);
        let mut members: Vec<Member> = everyone
            .iter()
            .map(|phone| {
                let role = if *phone == creator {
                    Role::Admin
                } else {
                    Role::Member
                };
                Member::joined(phone.clone(), role, position)
            })
            .collect();
        members.sort_by(|a, b| a.phone.cmp(&b.phone));
        let record = Self {
            id,
            name: name.clone(),
            creator,
            created_at: now,
            members,
            changed_at: position,
        };
        Ok((
            record,
            GroupChange::Created {
                name,
                members: everyone,
            },
        ))
    }

    fn find(&self, phone: &PhoneNumber) -> Option<usize> {
        self.members
            .binary_search_by(|member| member.phone.cmp(phone))
            .ok()
    }

    /// `phone`'s current membership, if any.
    pub fn member(&self, phone: &PhoneNumber) -> Option<&Member> {
        self.find(phone)
            .map(|i| &self.members[i])
            .filter(|member| member.is_current())
    }

    /// The current members.
    pub fn current(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|member| member.is_current())
    }

    /// How many members the group has now.
    pub fn size(&self) -> usize {
        self.current().count()
    }

    /// Whether no one is left (the last member left): the group is over.
    pub fn is_empty(&self) -> bool {
        self.current().next().is_none()
    }

    /// Whether `phone` may send to the group now.
    pub fn may_send(&self, phone: &PhoneNumber) -> Result<(), GroupError> {
        self.member(phone).map(|_| ()).ok_or(GroupError::NotMember)
    }

    /// Applies `command` from `by` at `position` (the change's place in
    /// the log, above every earlier one); on success the record is changed
    /// and the change to log is returned, otherwise nothing changed.
    pub fn apply(
        &mut self,
        by: &PhoneNumber,
        command: GroupCommand,
        position: Position,
        limit: u32,
    ) -> Result<GroupChange, GroupError> {
        let role = self.member(by).ok_or(GroupError::NotMember)?.role;
        let admin_only = !matches!(command, GroupCommand::Leave);
        if admin_only && role != Role::Admin {
            return Err(GroupError::NotAdmin);
        }
        let change = match command {
            GroupCommand::Add(new) => {
                check_list(&new)?;
                if let Some(present) = new.iter().find(|p| self.member(p).is_some()) {
                    return Err(GroupError::AlreadyMember(present.clone()));
                }
                if self.size() + new.len() > limit as usize {
                    return Err(GroupError::Full { limit });
                }
                for phone in &new {
                    match self.find(phone) {
                        // A former member not yet forgotten: a new span.
                        Some(i) => {
                            let member = &mut self.members[i];
                            member.role = Role::Member;
                            member.spans.push(Span {
                                since: position,
                                until: None,
                            });
                        }
                        None => {
                            let at = self
                                .members
                                .binary_search_by(|m| m.phone.cmp(phone))
                                .unwrap_or_else(|at| at);
                            self.members
                                .insert(at, Member::joined(phone.clone(), Role::Member, position));
                        }
                    }
                }
                GroupChange::Added { members: new }
            }
            GroupCommand::Remove(gone) => {
                check_list(&gone)?;
                if gone.contains(by) {
                    return Err(GroupError::Invalid(
                        "an admin leaves instead of removing itself".to_owned(),
                    ));
                }
                if let Some(absent) = gone.iter().find(|p| self.member(p).is_none()) {
                    return Err(GroupError::NoSuchMember(absent.clone()));
                }
                for phone in &gone {
                    if let Some(i) = self.find(phone) {
                        self.members[i].end_at(position);
                    }
                }
                GroupChange::Removed { members: gone }
            }
            GroupCommand::Promote(phone) => {
                let i = self
                    .find(&phone)
                    .filter(|i| self.members[*i].is_current())
                    .ok_or_else(|| GroupError::NoSuchMember(phone.clone()))?;
                self.members[i].role = Role::Admin;
                GroupChange::Promoted { member: phone }
            }
            GroupCommand::Demote(phone) => {
                let i = self
                    .find(&phone)
                    .filter(|i| self.members[*i].is_current())
                    .ok_or_else(|| GroupError::NoSuchMember(phone.clone()))?;
                let admins = self.current().filter(|m| m.role == Role::Admin).count();
                if self.members[i].role == Role::Admin && admins == 1 {
                    return Err(GroupError::Invalid(
                        "a group keeps at least one admin".to_owned(),
                    ));
                }
                self.members[i].role = Role::Member;
                GroupChange::Demoted { member: phone }
            }
            GroupCommand::Rename(name) => {
                check_name(&name)?;
                self.name = name.clone();
                GroupChange::Renamed { name }
            }
            GroupCommand::Leave => {
                if let Some(i) = self.find(by) {
                    self.members[i].end_at(position);
                }
                let admin_left = self.current().any(|m| m.role == Role::Admin);
                let new_admin = if admin_left {
                    None
                } else {
                    // The longest-standing member takes over, as in the
                    // apps people know; ties go to the lower number.
                    let heir = self
                        .members
                        .iter_mut()
                        .filter(|m| m.is_current())
                        .min_by(|a, b| a.since().cmp(&b.since()).then(a.phone.cmp(&b.phone)));
                    heir.map(|m| {
                        m.role = Role::Admin;
                        m.phone.clone()
                    })
                };
                GroupChange::Left { new_admin }
            }
        };
        self.changed_at = position;
        Ok(change)
    }
}

impl GroupRecord {
    /// Who receives what is logged at `position`, by the fragment that
    /// holds their mailboxes, numbers in order; `except` (a message's
    /// sender) is left out.
    pub fn recipients_at(
        &self,
        position: Position,
        placement: &Placement,
        except: Option<&PhoneNumber>,
    ) -> BTreeMap<FragmentId, Vec<PhoneNumber>> {
        let mut by_fragment: BTreeMap<FragmentId, Vec<PhoneNumber>> = BTreeMap::new();
        for member in &self.members {
            if Some(&member.phone) != except && member.receives(position) {
                by_fragment
                    .entry(placement.fragment_of(&member.phone))
                    .or_default()
                    .push(member.phone.clone());
            }
        }
        by_fragment
    }

    /// Fan-out has handed everything up to `done` to its recipients:
    /// spans that ended there are no longer needed, and former members
    /// without spans are forgotten. Whether anything changed.
    pub fn forget_through(&mut self, done: Position) -> bool {
        let before: usize = self.members.iter().map(|m| m.spans.len()).sum();
        for member in &mut self.members {
            member
                .spans
                .retain(|span| span.until.is_none_or(|until| until > done));
        }
        self.members.retain(|member| !member.spans.is_empty());
        let after: usize = self.members.iter().map(|m| m.spans.len()).sum();
        before != after
    }
}

#[cfg(test)]
mod tests;
