//! tincan's core: who speaks (identities), what they say (signed records), who
//! may say it (rules) and how concurrent statements combine (merge).
//!
//! Everything here is pure: no IO, no clock, no thread RNG inside the logic.
//! Time comes in as an [`Hlc`] or milliseconds; fresh key material comes from
//! the caller or from the operating system only where a key is generated.
//!
//! The flow for anything a peer or a local client says:
//! 1. [`UnverifiedRecord::decode`] parses bytes (size limit, version, canonical form);
//! 2. [`UnverifiedRecord::verify`] checks the author's signature and gives a [`SignedRecord`];
//! 3. [`rules::check_standalone`] and, once the room is known,
//!    [`rules::check_in_room`] decide whether the author may say it; a
//!    sealed record of an invite-only room is first opened with the room's
//!    key ([`SignedRecord::open`]) and its content checked the same way;
//! 4. [`merge`] decides which write wins, the same on every node.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod error;
pub mod hlc;
pub mod identity;
pub mod invite;
pub mod keystore;
pub mod make;
pub mod merge;
pub mod permissions;
pub mod record;
pub mod relay_proof;
pub mod rules;
pub mod seal;
pub mod sealed_signal;

pub use error::{
    ClockAhead, DecodeError, IdentityError, MakeError, RecordError, RuleError, SignError,
    UnsealError,
};
pub use hlc::{Hlc, HlcClock};
pub use identity::{Fingerprint, NodeBinding, NodeId, NodeKey, UserId, UserKey};
pub use invite::{Invite, InviteError};
pub use record::{
    AudioSettings, Body, Channel, ChannelId, Cutoff, EntityKey, JoinPolicy, KeyGrant,
    MAX_GRANT_ENVELOPES, MAX_RECORD_BYTES, Member, MemberRole, MemberState, Profile, ProfileRole,
    Record, RecordId, Room, RoomId, RoomLog, RoomSettings, Sealed, SignedRecord, Target, Tombstone,
    UnverifiedRecord, VoiceMode,
};
pub use relay_proof::{EpochToken, ProofItem};
