//! Errors of core operations. Each says what was wrong and, where a person
//! can act on it, what to do.

use crate::record::{MAX_RECORD_BYTES, RoomId};

/// A key or signature problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a usable ed25519 public key.
    #[error("not a valid ed25519 public key (not on the curve, or a weak key)")]
    InvalidPublicKey,
    /// The signature does not verify.
    #[error("signature does not verify: forged or corrupted")]
    BadSignature,
    /// The operating system gave no randomness.
    #[error("the operating system's random number generator failed: {0}")]
    Entropy(String),
}

/// An id in text form that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a {what}: expected {expected_hex_chars} hex characters")]
pub struct ParseIdError {
    pub(crate) what: &'static str,
    pub(crate) expected_hex_chars: usize,
}

/// Bytes that are not a well-formed record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Over the size limit.
    #[error("record is {len} bytes; the limit is {MAX_RECORD_BYTES}")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// Too short to hold a version byte, a body and a signature.
    #[error("record is {len} bytes: too short to be a record")]
    TooShort {
        /// Its size.
        len: usize,
    },
    /// A format version this build does not know.
    #[error(
        "record format version {0} is unknown to this build (it knows version 1): upgrade tincan"
    )]
    UnknownVersion(u8),
    /// The body does not parse.
    #[error("malformed record body: {0}")]
    Malformed(String),
    /// The body parses but is not in the one canonical encoding.
    #[error("record body is not canonically encoded")]
    NonCanonical,
}

/// Why a record is refused: the rules of DESIGN.md ("signatures in place of ACLs").
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum RuleError {
    /// The signature does not verify with the author's key.
    #[error("forged record: the signature does not verify with the author's key")]
    ForgedSignature,
    /// A Profile written by someone other than its user.
    #[error("a profile may only be written by its own user")]
    ProfileNotOwn,
    /// A Channel written by someone other than the room's owner.
    #[error("only the owner of room {room} may create, change or delete its channels")]
    ChannelNotByOwner {
        /// The room.
        room: RoomId,
    },
    /// A Member record by someone who may not make that change.
    #[error("only the owner of room {room} may {what}")]
    MemberNotByOwner {
        /// The room.
        room: RoomId,
        /// What was attempted.
        what: &'static str,
    },
    /// A tombstone by someone other than the owner.
    #[error("only the owner of room {room} may delete it or its channels")]
    DeleteNotByOwner {
        /// The room.
        room: RoomId,
    },
    /// A RoomLog by someone who was not a member of the room at that time.
    #[error("the author was not a member of room {room} when the log entry was written")]
    NotAMember {
        /// The room.
        room: RoomId,
    },
    /// A RoomLog about someone other than its author.
    #[error("a log entry may only be written by the user it is about")]
    LogNotAboutAuthor,
    /// A field out of its allowed range.
    #[error("invalid {field}: {why}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A key grant written by someone other than the room's owner.
    #[error("only the owner of room {room} may grant its keys")]
    GrantNotByOwner {
        /// The room.
        room: RoomId,
    },
    /// A cutoff written by someone other than the room's owner.
    #[error("only the owner of room {room} may cut off a member's log entries")]
    CutoffNotByOwner {
        /// The room.
        room: RoomId,
    },
    /// A sealed record that does not open under the room's key of its epoch:
    /// its author sealed something else than it signed, or under another key.
    #[error(
        "a sealed record of room {room} does not open under the room's key of epoch {epoch}: it is forged, damaged or sealed under another key"
    )]
    SealedDoesNotOpen {
        /// The room.
        room: RoomId,
        /// The epoch the record names.
        epoch: u32,
    },
    /// A sealed record that opens but holds something a sealed record may not.
    #[error(
        "a sealed record may hold only a Member, Channel, RoomLog, Cutoff or channel delete of its own room: {why}"
    )]
    BadSealedContent {
        /// What is wrong with its content.
        why: &'static str,
    },
    /// A log entry dated inside a window that the room's owner cut off when
    /// it removed the entry's author.
    #[error(
        "the log entry is dated in a window that the owner of room {room} cut off when removing its author"
    )]
    CutOff {
        /// The room.
        room: RoomId,
    },
}

/// A record dated too far ahead of the receiver's clock
/// ([`crate::rules::MAX_CLOCK_SKEW`]). Not a fault of whoever forwarded it:
/// the record is refused for now and accepted once the clock catches up.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error(
    "the record is dated {ahead_ms} ms ahead of this node's clock, more than the {max_ms} ms allowed: it is refused for now and accepted once this clock catches up (check both machines' clocks)"
)]
pub struct ClockAhead {
    /// How far ahead of the receiver's clock it is dated, in milliseconds.
    pub ahead_ms: u64,
    /// The allowed skew, in milliseconds.
    pub max_ms: u64,
}

/// Opening a sealed record failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum UnsealError {
    /// The record is not sealed (or is already open).
    #[error("the record is not sealed, or is already opened")]
    NotSealed,
    /// The key given cannot open this record (the caller's mistake, not the
    /// author's): another room, or an epoch older than the record's.
    #[error(
        "the key of room {key_room} epoch {key_epoch} cannot open a record of room {room} epoch {epoch}: use that room's key of epoch {epoch} or newer"
    )]
    WrongKey {
        /// The record's room.
        room: RoomId,
        /// The record's epoch.
        epoch: u32,
        /// The key's room.
        key_room: RoomId,
        /// The key's epoch.
        key_epoch: u32,
    },
    /// The author broke the rules: the ciphertext does not open, or holds
    /// what a sealed record may not.
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// Building a record with [`crate::make`] failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MakeError {
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// What was asked for breaks the rules (a sealed record of a kind that
    /// is never sealed, say).
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// Any reason a record is refused, from bytes to rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes are not a well-formed record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The author may not say this.
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// Signing a record failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// The key does not belong to the record's author.
    #[error("the signing key does not belong to the record's author")]
    WrongKey,
    /// The encoded record is over the size limit.
    #[error(
        "record would be {len} bytes; the limit is {MAX_RECORD_BYTES}: shorten its text fields"
    )]
    TooLarge {
        /// Its size.
        len: usize,
    },
}
