//! The one admission gate: who may hold a voice link in a channel, decided
//! by a pure function over a [`RosterSnapshot`].
//!
//! The driver builds the snapshot from its store (the room's owner, and per
//! user whether they are a joined member, may listen and may speak in the
//! channel; [`RosterSnapshot::from_members`] does the permission rules) and
//! pushes it into the session on every membership change. The session runs
//! [`admit`] on every presence before the peer enters the planner, before
//! it dials, on both ends of every link as it comes up, and
//! [`admit_user`] for every peer and link on every new roster. A relay runs
//! the same functions over a roster it builds from the proofs it was shown.
//!
//! Checks run cheapest first: room and channel, the binding naming the node
//! that proved itself (TLS or gossipsub), the roster, and only then the
//! binding's signature, so a flood from strangers costs a hash lookup each.

use std::collections::BTreeMap;

use libp2p_identity::PeerId;
use tincan_core::merge::Membership;
use tincan_core::permissions::{Action, allows};
use tincan_core::{ChannelId, NodeBinding, NodeId, RoomId, UserId};

/// What the store says about one user, for one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RosterEntry {
    /// A joined member of the room (or its owner).
    pub member: bool,
    /// May receive voice in the channel.
    pub may_listen: bool,
    /// May send voice in the channel.
    pub may_speak: bool,
}

/// Who may be in one voice channel, as the driver's store sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterSnapshot {
    /// The room.
    pub room: RoomId,
    /// The voice channel.
    pub channel: ChannelId,
    /// The room's owner, who may always speak and listen.
    pub owner: UserId,
    /// Every other user the store knows something about; a user missing
    /// here is no member.
    pub users: BTreeMap<UserId, RosterEntry>,
    /// The channel (or the whole room) was deleted: nobody may be in it,
    /// the owner neither.
    pub deleted: bool,
}

impl RosterSnapshot {
    /// A roster with only the owner.
    pub fn new(room: RoomId, channel: ChannelId, owner: UserId) -> Self {
        RosterSnapshot {
            room,
            channel,
            owner,
            users: BTreeMap::new(),
            deleted: false,
        }
    }

    /// The roster of a channel (or room) that was deleted, or that the
    /// store does not hold: it admits nobody.
    pub fn deleted(room: RoomId, channel: ChannelId, owner: UserId) -> Self {
        RosterSnapshot {
            deleted: true,
            ..RosterSnapshot::new(room, channel, owner)
        }
    }

    /// The roster of a channel with these `permissions` (the channel's
    /// `ACTION:WHO` entries) and these users' memberships, by the rules of
    /// `tincan_core::permissions`.
    pub fn from_members(
        room: RoomId,
        channel: ChannelId,
        owner: UserId,
        permissions: &[String],
        members: impl IntoIterator<Item = (UserId, Membership)>,
    ) -> Self {
        let mut roster = RosterSnapshot::new(room, channel, owner);
        for (user, membership) in members {
            roster.users.insert(
                user,
                RosterEntry {
                    member: membership.is_member() || user == owner,
                    may_listen: allows(permissions, Action::Listen, &user, &owner, membership),
                    may_speak: allows(permissions, Action::Speak, &user, &owner, membership),
                },
            );
        }
        roster
    }

    /// What the roster says of `user`: the owner may do everything, an
    /// unknown user nothing (and in a deleted channel nobody anything).
    pub fn entry(&self, user: &UserId) -> RosterEntry {
        if self.deleted {
            return RosterEntry::default();
        }
        if *user == self.owner {
            return RosterEntry {
                member: true,
                may_listen: true,
                may_speak: true,
            };
        }
        self.users.get(user).copied().unwrap_or_default()
    }
}

/// A peer asking to be in the channel.
#[derive(Clone, Copy, Debug)]
pub struct AdmitRequest<'a> {
    /// "This node speaks for that user", as the peer presented it.
    pub binding: &'a NodeBinding,
    /// The node that proved itself: the TLS peer of a link, the gossipsub
    /// publisher of a presence.
    pub node: &'a PeerId,
    /// The room it asks for.
    pub room: RoomId,
    /// The channel it asks for.
    pub channel: ChannelId,
}

/// The gate's yes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The user the peer speaks for.
    pub user: UserId,
    /// Whether that user may also send voice (listening is implied).
    pub may_speak: bool,
}

/// The gate's no, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// It asked for another room than the roster's.
    #[error("the request is for another room")]
    WrongRoom,
    /// It asked for another channel than the roster's.
    #[error("the request is for another voice channel")]
    WrongChannel,
    /// The binding names another node than the one that proved itself.
    #[error("the user binding names another node than the one that presented it")]
    WrongNode,
    /// The user is no joined member of the room.
    #[error("the user is not a member of this room")]
    NotMember,
    /// A member who may not listen in this channel.
    #[error("the user may not listen in this voice channel")]
    MayNotListen,
    /// The binding's signature does not verify.
    #[error("the user binding is not signed by its user")]
    BadBinding,
    /// The channel or its room was deleted.
    #[error("the voice channel (or its room) was deleted")]
    Deleted,
}

/// The libp2p PeerId of a tincan node id (an ed25519 public key), or None
/// for bytes that are no ed25519 point.
pub fn peer_id_of(node: &NodeId) -> Option<PeerId> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&node.0).ok()?;
    Some(libp2p_identity::PublicKey::from(key).to_peer_id())
}

/// Whether the roster lets `user` be in its channel: the part of [`admit`]
/// that changes when the roster does. The session re-runs this alone on a
/// new roster, for bindings [`admit`] already verified.
pub fn admit_user(user: &UserId, roster: &RosterSnapshot) -> Result<Admitted, Refusal> {
    if roster.deleted {
        return Err(Refusal::Deleted);
    }
    let entry = roster.entry(user);
    if !entry.member {
        return Err(Refusal::NotMember);
    }
    if !entry.may_listen {
        return Err(Refusal::MayNotListen);
    }
    Ok(Admitted {
        user: *user,
        may_speak: entry.may_speak,
    })
}

/// The gate: whether the peer of `request` may be in the roster's channel.
/// See the module documentation for where it runs.
pub fn admit(request: &AdmitRequest<'_>, roster: &RosterSnapshot) -> Result<Admitted, Refusal> {
    if request.room != roster.room {
        return Err(Refusal::WrongRoom);
    }
    if request.channel != roster.channel {
        return Err(Refusal::WrongChannel);
    }
    if peer_id_of(&request.binding.node).as_ref() != Some(request.node) {
        return Err(Refusal::WrongNode);
    }
    let admitted = admit_user(&request.binding.user, roster)?;
    request.binding.verify().map_err(|_| Refusal::BadBinding)?;
    Ok(admitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_core::record::MemberRole;
    use tincan_core::{Hlc, NodeKey, UserKey};

    const ROOM: RoomId = RoomId([1; 16]);
    const CH: ChannelId = ChannelId([2; 16]);

    fn peer(node: &NodeKey) -> PeerId {
        peer_id_of(&node.id()).expect("an ed25519 key")
    }

    #[test]
    fn a_node_id_maps_to_the_same_peer_id_as_its_text_form() {
        let node = NodeKey::from_seed(&[5; 32]);
        assert_eq!(peer(&node).to_string(), node.id().peer_id());
    }

    #[test]
    fn the_gate_admits_members_who_may_listen_and_no_one_else() {
        let owner = UserKey::from_seed(&[1; 32]);
        let member = UserKey::from_seed(&[2; 32]);
        let deaf = UserKey::from_seed(&[3; 32]);
        let kicked = UserKey::from_seed(&[4; 32]);
        let stranger = UserKey::from_seed(&[5; 32]);
        let perms = vec!["speak:owner".to_owned(), "listen:members".to_owned()];
        let roster = RosterSnapshot::from_members(
            ROOM,
            CH,
            owner.id(),
            &["speak:members".to_owned(), "listen:user:".to_owned()],
            [],
        );
        assert!(roster.users.is_empty());
        let mut roster = RosterSnapshot::from_members(
            ROOM,
            CH,
            owner.id(),
            &perms,
            [
                (member.id(), Membership::Joined(MemberRole::Participant)),
                (kicked.id(), Membership::Kicked),
            ],
        );
        roster.users.insert(
            deaf.id(),
            RosterEntry {
                member: true,
                may_listen: false,
                may_speak: false,
            },
        );
        let node = NodeKey::from_seed(&[9; 32]);
        let other = NodeKey::from_seed(&[8; 32]);
        let ask = |user: &UserKey, proven: &NodeKey, room, channel| {
            let binding = NodeBinding::new(user, node.id(), Hlc::new(1, 0));
            admit(
                &AdmitRequest {
                    binding: &binding,
                    node: &peer(proven),
                    room,
                    channel,
                },
                &roster,
            )
        };
        assert_eq!(
            ask(&member, &node, ROOM, CH),
            Ok(Admitted {
                user: member.id(),
                may_speak: false
            })
        );
        assert_eq!(
            ask(&owner, &node, ROOM, CH),
            Ok(Admitted {
                user: owner.id(),
                may_speak: true
            })
        );
        assert_eq!(ask(&stranger, &node, ROOM, CH), Err(Refusal::NotMember));
        assert_eq!(ask(&kicked, &node, ROOM, CH), Err(Refusal::NotMember));
        assert_eq!(ask(&deaf, &node, ROOM, CH), Err(Refusal::MayNotListen));
        assert_eq!(ask(&member, &other, ROOM, CH), Err(Refusal::WrongNode));
        assert_eq!(
            ask(&member, &node, RoomId([7; 16]), CH),
            Err(Refusal::WrongRoom)
        );
        assert_eq!(
            ask(&member, &node, ROOM, ChannelId([7; 16])),
            Err(Refusal::WrongChannel)
        );
        // A binding whose signature was tampered with.
        let mut forged = NodeBinding::new(&member, node.id(), Hlc::new(1, 0));
        forged.issued = Hlc::new(2, 0);
        let request = AdmitRequest {
            binding: &forged,
            node: &peer(&node),
            room: ROOM,
            channel: CH,
        };
        assert_eq!(admit(&request, &roster), Err(Refusal::BadBinding));
        // A stranger's forged binding is refused before its signature is
        // checked: the roster lookup comes first.
        let mut junk = NodeBinding::new(&stranger, node.id(), Hlc::new(1, 0));
        junk.signature = [0; 64];
        let request = AdmitRequest {
            binding: &junk,
            ..request
        };
        assert_eq!(admit(&request, &roster), Err(Refusal::NotMember));
        // A new roster without the member: admit_user says no.
        roster.users.remove(&member.id());
        assert_eq!(admit_user(&member.id(), &roster), Err(Refusal::NotMember));
        // The channel deleted: not even the owner.
        let gone = RosterSnapshot::deleted(ROOM, CH, owner.id());
        assert_eq!(admit_user(&owner.id(), &gone), Err(Refusal::Deleted));
        assert_eq!(gone.entry(&owner.id()), RosterEntry::default());
    }
}
