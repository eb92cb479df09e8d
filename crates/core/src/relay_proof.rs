//! What a member shows a voice relay, which holds no copy of the room, to
//! be let into a voice channel: the items of a `Hello`'s proof.
//!
//! Two kinds, by the room's join policy:
//! - an open room: the signed records that decide the membership (the
//!   room, the user's membership tail, the channel), all
//!   [`ProofItem::Record`]; the relay runs the ordinary rules over them;
//! - an invite-only room, whose Member and Channel records are sealed:
//!   the room's record and the owner's [`crate::KeyGrant`] of the current
//!   epoch (records), and that epoch's [`EpochToken`]
//!   ([`crate::seal::RoomKey::relay_token`]), which the relay checks against
//!   the grant's `relay_commit`. A newer grant (from another member's
//!   hello or evidence) supersedes the epoch: the relay then refuses the
//!   older token.

use serde::{Deserialize, Serialize};

/// A relay token of one key epoch of an invite-only room: shows that its
/// holder holds that epoch's key without giving the key away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochToken {
    /// The key epoch.
    pub epoch: u32,
    /// [`crate::seal::RoomKey::relay_token`] of that epoch's key.
    pub token: [u8; 32],
}

impl EpochToken {
    /// Whether this token is the one a grant's `relay_commit` commits to.
    pub fn matches(&self, relay_commit: &[u8; 32]) -> bool {
        crate::seal::relay_commit_of(&self.token) == *relay_commit
    }
}

/// One item of a relay membership proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProofItem {
    /// The wire bytes of a signed record (`SignedRecord::to_bytes`).
    Record(Vec<u8>),
    /// The relay token of the epoch the proof's grant is of.
    Token(EpochToken),
}

impl ProofItem {
    /// The record bytes, if this is a record.
    pub fn record(&self) -> Option<&[u8]> {
        match self {
            ProofItem::Record(bytes) => Some(bytes),
            ProofItem::Token(_) => None,
        }
    }

    /// The token, if this is one.
    pub fn token(&self) -> Option<&EpochToken> {
        match self {
            ProofItem::Token(token) => Some(token),
            ProofItem::Record(_) => None,
        }
    }
}
