//! Voice presence: the signal a node gossips on its room's voice topic to
//! say "my user is in this voice channel, reach my voice socket here".
//!
//! It is how the members of a channel find each other's voice sockets
//! (candidates exchanged over the control plane, as the design says): a node
//! that joins a channel publishes its [`Presence`] at once and then every
//! [`PRESENCE_INTERVAL`]; a peer that has not been heard for
//! [`PRESENCE_TIMEOUT`] is taken to have left. Leaving publishes a presence
//! with no channel.
//!
//! The mesh proves which node published a signal (gossipsub's signature);
//! [`Presence::verify`] checks that the user binding names that node, so a
//! node cannot claim to be in a channel for a user it does not speak for.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tincan_core::{ChannelId, NodeBinding, RoomId};

/// How often a node in a voice channel repeats its presence.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(2);

/// A presence older than this is stale: its node left or vanished.
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(7);

/// Most candidate addresses one presence may carry.
pub const MAX_CANDIDATES: usize = 8;

/// Where a candidate address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CandidateKind {
    /// An address of one of the node's own interfaces.
    Host,
    /// The node's voice socket as a relay or bootstrap node sees it: the
    /// public side of its NAT, where peers punch to.
    Reflexive,
}

/// An address at which a node's voice socket may be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// The address.
    pub addr: SocketAddr,
    /// Its kind.
    pub kind: CandidateKind,
}

/// "The user of this binding is in this channel of this room, at these
/// addresses" (or, with no channel, "has left the room's voice").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The user and node.
    pub binding: NodeBinding,
    /// The room.
    pub room: RoomId,
    /// The voice channel, or `None` once the node left voice.
    pub channel: Option<ChannelId>,
    /// Where its voice socket may be reached, best first.
    pub candidates: Vec<Candidate>,
    /// Whether it is (also) reachable through a relay: a peer that cannot
    /// reach it directly should join the relay too.
    pub relayed: bool,
    /// Sender's wall clock in milliseconds: makes each repetition a new
    /// gossip message and orders them.
    pub sent_ms: u64,
}

/// A presence could not be accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// Not a presence.
    #[error("not a voice presence: {0}")]
    Malformed(#[from] postcard::Error),
    /// More candidates than anyone needs.
    #[error("a voice presence with {0} candidates, over the limit of {MAX_CANDIDATES}")]
    TooManyCandidates(usize),
    /// The binding's signature is bad.
    #[error("the presence's user binding is not signed by its user")]
    BadBinding,
    /// The binding names another node than the one that published it.
    #[error("the presence's binding names node {bound}, but {published} published it")]
    WrongNode {
        /// PeerId in the binding.
        bound: String,
        /// PeerId that published.
        published: String,
    },
    /// It was gossiped on another room's topic.
    #[error("a presence for another room")]
    WrongRoom,
}

impl Presence {
    /// The bytes to gossip.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a presence that `published_by` (a PeerId, as text) gossiped
    /// on `room`'s voice topic, and checks its binding names that node.
    pub fn verify(bytes: &[u8], room: RoomId, published_by: &str) -> Result<Self, PresenceError> {
        let presence: Presence = postcard::from_bytes(bytes)?;
        if presence.candidates.len() > MAX_CANDIDATES {
            return Err(PresenceError::TooManyCandidates(presence.candidates.len()));
        }
        if presence.room != room {
            return Err(PresenceError::WrongRoom);
        }
        let bound = presence.binding.node.peer_id();
        if bound != published_by {
            return Err(PresenceError::WrongNode {
                bound,
                published: published_by.to_owned(),
            });
        }
        presence
            .binding
            .verify()
            .map_err(|_| PresenceError::BadBinding)?;
        Ok(presence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_core::{Hlc, NodeKey, UserKey};

    fn presence(node: &NodeKey) -> Presence {
        let user = UserKey::from_seed(&[1; 32]);
        Presence {
            binding: NodeBinding::new(&user, node.id(), Hlc::new(1, 0)),
            room: RoomId([2; 16]),
            channel: Some(ChannelId([3; 16])),
            candidates: vec![Candidate {
                addr: "10.0.0.1:4000".parse().unwrap(),
                kind: CandidateKind::Host,
            }],
            relayed: false,
            sent_ms: 5,
        }
    }

    #[test]
    fn a_presence_verifies_only_from_its_own_node_and_room() {
        let node = NodeKey::from_seed(&[9; 32]);
        let other = NodeKey::from_seed(&[8; 32]);
        let p = presence(&node);
        let bytes = p.encode();
        let me = node.id().peer_id();
        assert_eq!(Presence::verify(&bytes, p.room, &me).unwrap(), p);
        assert!(matches!(
            Presence::verify(&bytes, p.room, &other.id().peer_id()),
            Err(PresenceError::WrongNode { .. })
        ));
        assert!(matches!(
            Presence::verify(&bytes, RoomId([7; 16]), &me),
            Err(PresenceError::WrongRoom)
        ));
        let mut forged = p.clone();
        forged.binding.issued = Hlc::new(2, 0);
        assert!(matches!(
            Presence::verify(&forged.encode(), p.room, &me),
            Err(PresenceError::BadBinding)
        ));
        let mut many = p.clone();
        many.candidates = vec![p.candidates[0]; MAX_CANDIDATES + 1];
        assert!(matches!(
            Presence::verify(&many.encode(), p.room, &me),
            Err(PresenceError::TooManyCandidates(_))
        ));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            assert!(Presence::verify(&bytes, RoomId([2; 16]), "x").is_err());
        }
    }
}
