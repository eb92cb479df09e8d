//! Deterministic merge: the same set of records gives the same state on every
//! node, whatever order they arrived in.
//!
//! - Profiles, rooms and channels: last writer wins on the HLC, ties broken by
//!   the record id; a tombstone beats any write with the same or an older HLC.
//! - Membership: every Member record of a (room, user) pair is kept, and the
//!   state is a fold over them in HLC order ([`membership`]), so an owner's ban
//!   cannot be undone by the banned user's own later "join".
//! - Log entries are never replaced.

use crate::hlc::Hlc;
use crate::record::{JoinPolicy, MemberRole, MemberState, RecordId};

/// The order in which writes to one entity win: later HLC, then tombstone
/// over write, then higher record id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// When it was written.
    pub hlc: Hlc,
    /// Whether it is a delete.
    pub tombstone: bool,
    /// Its id, the final tie-breaker.
    pub id: RecordId,
}

impl Version {
    /// Whether `self` replaces `current`.
    pub fn beats(&self, current: &Version) -> bool {
        self > current
    }
}

/// One Member record, as the fold sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberEntry {
    /// When.
    pub hlc: Hlc,
    /// The record's id (orders equal HLCs).
    pub id: RecordId,
    /// Written by the room's owner (otherwise by the user themself).
    pub by_owner: bool,
    /// The role stated.
    pub role: MemberRole,
    /// The state stated.
    pub state: MemberState,
}

/// A user's effective membership of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Never involved.
    None,
    /// Invited by the owner, not joined yet.
    Invited,
    /// Asked to join an invite-only room; waits for the owner.
    Requested,
    /// A member, with a role.
    Joined(MemberRole),
    /// Left.
    Left,
    /// Removed by the owner.
    Kicked,
    /// Banned by the owner.
    Banned,
}

impl Membership {
    /// Whether this is a joined member.
    pub fn is_member(self) -> bool {
        matches!(self, Membership::Joined(_))
    }

    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::None => "none",
            Membership::Invited => "invited",
            Membership::Requested => "requested",
            Membership::Joined(_) => "joined",
            Membership::Left => "left",
            Membership::Kicked => "kicked",
            Membership::Banned => "banned",
        }
    }
}

/// The membership that `entries` give, counting only those with an HLC at or
/// before `upto` (all when `None`). `policy` is the room's current join policy.
/// `entries` may come in any order.
pub fn membership(policy: JoinPolicy, entries: &[MemberEntry], upto: Option<Hlc>) -> Membership {
    let mut sorted: Vec<&MemberEntry> = entries
        .iter()
        .filter(|e| upto.is_none_or(|t| e.hlc <= t))
        .collect();
    sorted.sort_by_key(|e| (e.hlc, e.id));
    let mut state = Membership::None;
    // The last role the owner gave; kept when the user leaves and comes back.
    let mut role = MemberRole::Participant;
    for e in sorted {
        if e.by_owner {
            role = e.role;
            state = match e.state {
                MemberState::Invited => Membership::Invited,
                MemberState::Joined => Membership::Joined(role),
                MemberState::Left => Membership::Left,
                MemberState::Kicked => Membership::Kicked,
                MemberState::Banned => Membership::Banned,
            };
            continue;
        }
        state = match (e.state, state) {
            (_, Membership::Banned) => Membership::Banned,
            (MemberState::Joined, Membership::Invited | Membership::Joined(_)) => {
                Membership::Joined(role)
            }
            (MemberState::Joined, Membership::Requested) => Membership::Requested,
            (MemberState::Joined, Membership::None | Membership::Left | Membership::Kicked) => {
                match policy {
                    JoinPolicy::Open => Membership::Joined(role),
                    JoinPolicy::Invite => Membership::Requested,
                }
            }
            (MemberState::Left, Membership::Kicked) => Membership::Kicked,
            (MemberState::Left, _) => Membership::Left,
            // The rules never let a user state anything else about themself.
            (_, current) => current,
        };
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(t: u64, by_owner: bool, state: MemberState) -> MemberEntry {
        MemberEntry {
            hlc: Hlc::new(t, 0),
            id: RecordId([t as u8; 32]),
            by_owner,
            role: MemberRole::Participant,
            state,
        }
    }

    #[test]
    fn tombstone_wins_a_tie_and_newer_write_wins() {
        let w = Version {
            hlc: Hlc::new(5, 0),
            tombstone: false,
            id: RecordId([9; 32]),
        };
        let t = Version {
            hlc: Hlc::new(5, 0),
            tombstone: true,
            id: RecordId([1; 32]),
        };
        let newer = Version {
            hlc: Hlc::new(6, 0),
            tombstone: false,
            id: RecordId([0; 32]),
        };
        assert!(t.beats(&w));
        assert!(!w.beats(&t));
        assert!(newer.beats(&t));
    }

    #[test]
    fn open_room_self_join_and_leave() {
        use MemberState::*;
        let es = [e(1, false, Joined), e(2, false, Left)];
        assert_eq!(
            membership(JoinPolicy::Open, &es[..1], None),
            Membership::Joined(MemberRole::Participant)
        );
        assert_eq!(membership(JoinPolicy::Open, &es, None), Membership::Left);
        assert!(membership(JoinPolicy::Open, &es, Some(Hlc::new(1, 5))).is_member());
    }

    #[test]
    fn invite_only_needs_the_owner() {
        use MemberState::*;
        assert_eq!(
            membership(JoinPolicy::Invite, &[e(2, false, Joined)], None),
            Membership::Requested
        );
        let es = [e(2, false, Joined), e(1, true, Invited)];
        assert!(membership(JoinPolicy::Invite, &es, None).is_member());
    }

    #[test]
    fn ban_is_sticky_against_self_join() {
        use MemberState::*;
        let es = [e(1, false, Joined), e(2, true, Banned), e(3, false, Joined)];
        assert_eq!(membership(JoinPolicy::Open, &es, None), Membership::Banned);
    }

    #[test]
    fn kicked_may_rejoin_an_open_room_only() {
        use MemberState::*;
        let es = [e(1, false, Joined), e(2, true, Kicked), e(3, false, Joined)];
        assert!(membership(JoinPolicy::Open, &es, None).is_member());
        assert_eq!(
            membership(JoinPolicy::Invite, &es, None),
            Membership::Requested
        );
    }
}
