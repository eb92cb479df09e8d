//! Signed records: everything that is replicated is one of these.
//!
//! Wire form: `version (1 byte) | body (postcard) | ed25519 signature (64 bytes)`.
//! The signature covers [`RECORD_DOMAIN`] followed by `version | body`; the
//! record id is the BLAKE3 hash of `version | body`. Decoding accepts only the
//! canonical encoding (it re-encodes and compares), so one record has exactly
//! one byte form and one id on every node.

use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, IdentityError, RuleError, SignError, UnsealError};
use crate::hlc::Hlc;
use crate::identity::{UserId, UserKey, parse_hex_array, verify_in_domain};
use crate::seal::{self, Envelopes, LocatorSecret, Recipient, RoomKey};

/// The record format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Largest record on the wire, signature included.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Domain tag under which records are signed.
pub const RECORD_DOMAIN: &[u8] = b"tincan/record/v1\0";
const SIGNATURE_LEN: usize = 64;

/// A record's content-addressed id: BLAKE3 of its signed bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordId(pub [u8; 32]);

impl RecordId {
    /// Lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Result<Self, crate::error::ParseIdError> {
        parse_hex_array(s, "record id").map(RecordId)
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordId({})", &self.to_hex()[..12])
    }
}

macro_rules! short_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// Lowercase hex (32 characters).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses the hex form.
            pub fn from_hex(s: &str) -> Result<Self, crate::error::ParseIdError> {
                parse_hex_array(s, $what).map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }
    };
}

short_id!(
    /// A room. Derived from its owner and a nonce ([`RoomId::derive`]), so a
    /// room id commits to its owner: nobody else can write that room.
    RoomId,
    "room id"
);
short_id!(
    /// A channel within a room, chosen at random by the room's owner.
    ChannelId,
    "channel id"
);

impl RoomId {
    /// The id of the room that `owner` creates with `nonce`.
    pub fn derive(owner: &UserId, nonce: &[u8; 16]) -> Self {
        let mut input = [0u8; 48];
        input[..32].copy_from_slice(&owner.0);
        input[32..].copy_from_slice(nonce);
        let hash = blake3::derive_key("tincan room id v1", &input);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        RoomId(id)
    }
}

impl ChannelId {
    /// A new random channel id.
    pub fn random() -> Result<Self, IdentityError> {
        crate::identity::random_bytes::<16>().map(ChannelId)
    }
}

/// What a user says in one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Who says it: the signer.
    pub author: UserId,
    /// When: orders concurrent writes (last writer wins).
    pub hlc: Hlc,
    /// What.
    pub body: Body,
}

/// The kinds of record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A user's public profile.
    Profile(Profile),
    /// A room's title and settings.
    Room(Room),
    /// A user's membership of a room.
    Member(Member),
    /// A voice channel of a room.
    Channel(Channel),
    /// An entry of a room's activity log.
    RoomLog(RoomLog),
    /// A delete.
    Tombstone(Tombstone),
    // New kinds go at the end: postcard encodes the variant's index, so
    // every record written before keeps its bytes and its id.
    /// Another body, sealed to an invite-only room's members.
    Sealed(Sealed),
    /// An epoch key of an invite-only room, sealed to its members' user keys.
    KeyGrant(KeyGrant),
    /// Hides a removed member's log entries dated between what the owner had
    /// seen of them and the removal.
    Cutoff(Cutoff),
}

impl Body {
    /// The kind's name, as the API and error messages say it.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Profile(_) => "Profile",
            Body::Room(_) => "Room",
            Body::Member(_) => "Member",
            Body::Channel(_) => "Channel",
            Body::RoomLog(_) => "RoomLog",
            Body::Tombstone(_) => "Tombstone",
            Body::Sealed(_) => "Sealed",
            Body::KeyGrant(_) => "KeyGrant",
            Body::Cutoff(_) => "Cutoff",
        }
    }

    /// The room this body is about, if any, as written in it (a `Room` or a
    /// room delete names its room by owner and nonce: see [`Record::room`]).
    pub(crate) fn named_room(&self) -> Option<RoomId> {
        match self {
            Body::Profile(_) | Body::Room(_) => None,
            Body::Member(m) => Some(m.room),
            Body::Channel(c) => Some(c.room),
            Body::RoomLog(l) => Some(l.room),
            Body::Tombstone(t) => match t.target {
                Target::Room { .. } => None,
                Target::Channel(r, _) => Some(r),
            },
            Body::Sealed(s) => Some(s.room),
            Body::KeyGrant(g) => Some(g.room),
            Body::Cutoff(c) => Some(c.room),
        }
    }

    /// Whether this is a body that a sealed record may hold: a Member,
    /// Channel, RoomLog, Cutoff or channel delete (and so a body that a
    /// writer seals in an invite-only room).
    pub fn is_sealable(&self) -> bool {
        matches!(
            self,
            Body::Member(_)
                | Body::Channel(_)
                | Body::RoomLog(_)
                | Body::Cutoff(_)
                | Body::Tombstone(Tombstone {
                    target: Target::Channel(..)
                })
        )
    }
}

/// Purpose under which record contents are sealed with a [`RoomKey`].
pub const SEAL_PURPOSE_RECORDS: &str = "records";

/// Most envelopes in one [`KeyGrant`] record: with 89 bytes an envelope on
/// the wire, a full grant is about 11.6 KB, under [`MAX_RECORD_BYTES`].
/// More recipients take more records.
pub const MAX_GRANT_ENVELOPES: usize = 128;

/// Bytes of a grant's payload: the epoch key, then the locator secret.
pub const GRANT_PAYLOAD_LEN: usize = 64;

/// Bytes of each sealed envelope in a grant: the payload and its tag.
pub const GRANT_ENVELOPE_LEN: usize = GRANT_PAYLOAD_LEN + seal::ENVELOPE_OVERHEAD;

/// The envelope context of a grant: the room id, then the epoch big-endian,
/// so an envelope cannot be replayed for another room or epoch.
pub fn grant_context(room: &RoomId, epoch: u32) -> [u8; 20] {
    let mut c = [0u8; 20];
    c[..16].copy_from_slice(&room.0);
    c[16..].copy_from_slice(&epoch.to_be_bytes());
    c
}

/// A body of an invite-only room sealed to its members: the inner [`Body`]
/// in postcard, sealed with the room's key of `epoch` (purpose
/// [`SEAL_PURPOSE_RECORDS`]) and bound by [`seal::record_aad`] to the outer
/// record's author, HLC, room and epoch. Anyone can check the outer
/// signature; only a holder of the key can read or check what is inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The room: the inner body must name the same one.
    pub room: RoomId,
    /// The key epoch it is sealed under.
    pub epoch: u32,
    /// The XChaCha20-Poly1305 nonce, random per record.
    pub nonce: [u8; 24],
    /// The sealed inner body, tag included.
    pub ciphertext: Vec<u8>,
}

/// The key of one epoch of an invite-only room (and its locator secret),
/// sealed by the room's owner to each recipient's user key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGrant {
    /// The room.
    pub room: RoomId,
    /// The epoch whose key this grants.
    pub epoch: u32,
    /// [`RoomKey::relay_commit`] of the epoch's key: a voice relay checks a
    /// member's relay token against it.
    pub relay_commit: [u8; 32],
    /// The payload `K_epoch || locator secret` ([`GRANT_PAYLOAD_LEN`] bytes)
    /// sealed to each recipient, context [`grant_context`]; at most
    /// [`MAX_GRANT_ENVELOPES`] of exactly [`GRANT_ENVELOPE_LEN`] bytes.
    pub envelopes: Envelopes,
}

impl KeyGrant {
    /// The epoch key and locator secret sealed to `me`, if this grant holds
    /// an envelope for it whose key matches the grant's relay commitment.
    pub fn open(&self, me: &dyn Recipient) -> Option<(RoomKey, LocatorSecret)> {
        let payload =
            seal::open_envelope(&self.envelopes, me, &grant_context(&self.room, self.epoch))?;
        if payload.len() != GRANT_PAYLOAD_LEN {
            return None;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&payload[..32]);
        let mut locator = [0u8; 32];
        locator.copy_from_slice(&payload[32..]);
        let key = RoomKey::from_bytes(self.room, self.epoch, key).ok()?;
        // A key that does not match what the grant commits to is not the
        // key the owner announced to relays and the other members.
        (key.relay_commit() == self.relay_commit).then(|| (key, LocatorSecret(locator)))
    }
}

/// The owner's statement, made with a kick or ban, that `user`'s log
/// entries in `room` dated after `after` and up to this record's own HLC are
/// hidden: the owner had seen nothing of theirs after `after` when it removed
/// them, so anything dated in that window arrived after the removal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutoff {
    /// The room.
    pub room: RoomId,
    /// The removed user: never the author.
    pub user: UserId,
    /// The newest of `user`'s records the owner had seen; must be before the
    /// cutoff's own HLC.
    pub after: Hlc,
}

/// A user's public profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Whose profile: must be the author.
    pub user: UserId,
    /// Display name, 1 to 32 characters; not unique.
    pub username: String,
    /// What kind of participant.
    pub role: ProfileRole,
    /// Preferred audio settings.
    pub audio: AudioSettings,
}

/// What kind of participant a user is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProfileRole {
    /// A person.
    Player,
    /// A program: a recorder, a music bot, a test.
    Bot,
}

/// How a user speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoiceMode {
    /// Sends while voice activity is detected.
    VoiceActivity,
    /// Sends while the push-to-talk key is held.
    PushToTalk,
}

/// A user's audio preferences. Integers only, so the encoding stays canonical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSettings {
    /// Opus bitrate, 8,000 to 128,000 bits per second.
    pub bitrate_bps: u32,
    /// Frame duration: 10 or 20 ms.
    pub frame_ms: u8,
    /// Voice activity or push-to-talk.
    pub voice_mode: VoiceMode,
    /// Noise suppression on the microphone.
    pub noise_suppression: bool,
    /// Microphone gain in percent (0 to 400).
    pub input_gain_percent: u16,
    /// Output volume in percent (0 to 400).
    pub output_volume_percent: u16,
}

impl Default for AudioSettings {
    fn default() -> Self {
        AudioSettings {
            bitrate_bps: 32_000,
            frame_ms: 10,
            voice_mode: VoiceMode::VoiceActivity,
            noise_suppression: false,
            input_gain_percent: 100,
            output_volume_percent: 100,
        }
    }
}

/// A room: its owner is the author of its records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// Chosen at creation; with the owner it gives the [`RoomId`].
    pub nonce: [u8; 16],
    /// Title, 1 to 100 characters.
    pub title: String,
    /// Who may join, and how many.
    pub settings: RoomSettings,
}

/// Who may join a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinPolicy {
    /// Anyone may join.
    Open,
    /// Only users the owner invited or admitted.
    Invite,
}

/// A room's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Open or invite-only.
    pub join_policy: JoinPolicy,
    /// Most members at once (the owner included), 1 to 10,000; `None` for no limit.
    pub member_limit: Option<u32>,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            join_policy: JoinPolicy::Open,
            member_limit: None,
        }
    }
}

/// A member's role in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// An ordinary member.
    Participant,
    /// A member the owner trusts with moderation.
    Moderator,
}

/// A membership state, as one record states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// The owner invited the user.
    Invited,
    /// The user joined (by themself) or was admitted (by the owner).
    Joined,
    /// The user left.
    Left,
    /// The owner removed the user; they may come back to an open room.
    Kicked,
    /// The owner banned the user until the owner says otherwise.
    Banned,
}

/// A statement about a user's membership of a room, by the user or the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The room.
    pub room: RoomId,
    /// The user it is about.
    pub user: UserId,
    /// The role the owner gives (a user's own records say Participant).
    pub role: MemberRole,
    /// The state stated.
    pub state: MemberState,
}

/// A voice channel of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The room.
    pub room: RoomId,
    /// The channel within the room.
    pub id: ChannelId,
    /// Name, 1 to 64 characters.
    pub name: String,
    /// Description, up to 500 characters.
    pub description: String,
    /// Who may speak and listen: see [`crate::permissions`].
    pub permissions: Vec<String>,
}

/// An entry of a room's activity log, written by a member about themself.
/// Its time is the record's HLC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomLog {
    /// The room.
    pub room: RoomId,
    /// The user it is about: must be the author.
    pub user: UserId,
    /// What happened, 1 to 1,000 characters.
    pub action: String,
}

/// A delete of a room or a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// What is deleted.
    pub target: Target,
}

/// What a tombstone deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The author's room made with this nonce, and with it everything in it.
    /// Like a [`Room`] record it names the room by owner and nonce, so it
    /// proves its own authority and a node that never saw the room can
    /// still check it.
    Room {
        /// The nonce of the room's records.
        nonce: [u8; 16],
    },
    /// One channel of a room.
    Channel(RoomId, ChannelId),
}

/// The thing a record writes: records with the same key compete, last writer wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityKey {
    /// A user's profile.
    Profile(UserId),
    /// A room.
    Room(RoomId),
    /// A channel.
    Channel(RoomId, ChannelId),
    /// One user's membership of a room (its history is kept whole).
    Member(RoomId, UserId),
    /// A log entry: written once, never replaced.
    Log(RecordId),
    /// A sealed record this node cannot open (yet): its own entity, keyed by
    /// its id, until it is opened and becomes what it holds.
    Sealed(RecordId),
    /// A key grant: written once, never replaced.
    Grant(RecordId),
    /// The cutoffs about one user in a room (their history is kept whole).
    Cutoff(RoomId, UserId),
}

impl Record {
    /// The room a record belongs to, if any: that room must be known before
    /// the record can be checked (it is the record's parent).
    pub fn room(&self) -> Option<RoomId> {
        match &self.body {
            Body::Room(r) => Some(RoomId::derive(&self.author, &r.nonce)),
            Body::Tombstone(Tombstone {
                target: Target::Room { nonce },
            }) => Some(RoomId::derive(&self.author, nonce)),
            body => body.named_room(),
        }
    }

    /// The room this record depends on having seen first (None for profiles
    /// and for the room record itself).
    pub fn parent_room(&self) -> Option<RoomId> {
        match &self.body {
            Body::Profile(_)
            | Body::Room(_)
            | Body::Tombstone(Tombstone {
                target: Target::Room { .. },
            }) => None,
            _ => self.room(),
        }
    }

    /// Whether this record deletes what it names.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.body, Body::Tombstone(_))
    }

    /// What this record writes. `id` is the record's own id (log entries,
    /// grants and unopened sealed records are keyed by it).
    pub fn entity(&self, id: RecordId) -> EntityKey {
        match &self.body {
            Body::Profile(p) => EntityKey::Profile(p.user),
            Body::Room(r) => EntityKey::Room(RoomId::derive(&self.author, &r.nonce)),
            Body::Member(m) => EntityKey::Member(m.room, m.user),
            Body::Channel(c) => EntityKey::Channel(c.room, c.id),
            Body::RoomLog(_) => EntityKey::Log(id),
            Body::Tombstone(t) => match t.target {
                Target::Room { nonce } => EntityKey::Room(RoomId::derive(&self.author, &nonce)),
                Target::Channel(r, c) => EntityKey::Channel(r, c),
            },
            Body::Sealed(_) => EntityKey::Sealed(id),
            Body::KeyGrant(_) => EntityKey::Grant(id),
            Body::Cutoff(c) => EntityKey::Cutoff(c.room, c.user),
        }
    }

    fn encode_signed_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        // Serialising plain structs and enums into a Vec cannot fail.
        let body = postcard::to_allocvec(self).expect("postcard encodes any Record");
        out.extend_from_slice(&body);
        out
    }

    /// Signs this record with its author's key.
    pub fn sign(self, key: &UserKey) -> Result<SignedRecord, SignError> {
        if key.id() != self.author {
            return Err(SignError::WrongKey);
        }
        let signed = self.encode_signed_bytes();
        let len = signed.len() + SIGNATURE_LEN;
        if len > MAX_RECORD_BYTES {
            return Err(SignError::TooLarge { len });
        }
        let signature = key.sign_in_domain(RECORD_DOMAIN, &signed);
        let id = RecordId(*blake3::hash(&signed).as_bytes());
        Ok(SignedRecord {
            record: self,
            signed,
            signature,
            id,
            opened_epoch: None,
        })
    }
}

/// A record decoded from bytes whose signature has not been checked yet.
#[derive(Clone, Debug)]
pub struct UnverifiedRecord {
    record: Record,
    signed: Vec<u8>,
    signature: [u8; 64],
}

impl UnverifiedRecord {
    /// Parses wire bytes: size limit, version, body, canonical form. Never
    /// panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::TooLarge { len: bytes.len() });
        }
        if bytes.len() < 1 + SIGNATURE_LEN + 1 {
            return Err(DecodeError::TooShort { len: bytes.len() });
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(bytes[0]));
        }
        let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let record: Record = match postcard::from_bytes(&signed[1..]) {
            Ok(r) => r,
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                return Err(DecodeError::Malformed("truncated".into()));
            }
            Err(e) => return Err(DecodeError::Malformed(e.to_string())),
        };
        // postcard ignores trailing bytes and accepts over-long varints;
        // re-encoding rejects both, so every record has exactly one form.
        if record.encode_signed_bytes() != signed {
            return Err(DecodeError::NonCanonical);
        }
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| DecodeError::TooShort { len: bytes.len() })?;
        Ok(UnverifiedRecord {
            record,
            signed: signed.to_vec(),
            signature,
        })
    }

    /// The record, not yet trusted.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The id the record will have.
    pub fn id(&self) -> RecordId {
        RecordId(*blake3::hash(&self.signed).as_bytes())
    }

    /// Checks the author's signature.
    pub fn verify(self) -> Result<SignedRecord, RuleError> {
        verify_in_domain(
            &self.record.author,
            RECORD_DOMAIN,
            &self.signed,
            &self.signature,
        )
        .map_err(|_| RuleError::ForgedSignature)?;
        let id = self.id();
        Ok(SignedRecord {
            record: self.record,
            signed: self.signed,
            signature: self.signature,
            id,
            opened_epoch: None,
        })
    }
}

/// A record whose author's signature has been checked (or that we signed).
/// The only ways to get one are [`Record::sign`] and [`UnverifiedRecord::verify`]
/// (and, for a sealed record, [`SignedRecord::open`] on one of those).
///
/// A sealed record comes in two views with the same id, wire bytes and
/// signature: unopened, its body is [`Body::Sealed`]; opened, its body is
/// the inner body and [`SignedRecord::is_opened`] says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRecord {
    record: Record,
    signed: Vec<u8>,
    signature: [u8; 64],
    id: RecordId,
    /// The epoch it was sealed under, for an opened view.
    opened_epoch: Option<u32>,
}

/// Decodes the inner body of a sealed record: postcard, canonical only, so
/// every member reads one plaintext one way.
fn decode_inner(plain: &[u8]) -> Result<Body, &'static str> {
    let body: Body = postcard::from_bytes(plain).map_err(|_| "the content is not a record body")?;
    let again = postcard::to_allocvec(&body).map_err(|_| "the content does not re-encode")?;
    if again != plain {
        return Err("the content is not canonically encoded");
    }
    Ok(body)
}

impl SignedRecord {
    /// Decodes and verifies wire bytes in one step.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::error::RecordError> {
        Ok(UnverifiedRecord::decode(bytes)?.verify()?)
    }

    /// Decodes bytes that this node verified before and kept in its own
    /// store, without checking the signature again (reads must be fast).
    /// Never use it for bytes from a peer, a client or an import.
    pub fn decode_trusted(bytes: &[u8]) -> Result<Self, DecodeError> {
        let u = UnverifiedRecord::decode(bytes)?;
        let id = u.id();
        Ok(SignedRecord {
            record: u.record,
            signed: u.signed,
            signature: u.signature,
            id,
            opened_epoch: None,
        })
    }

    /// Rebuilds the opened view of a sealed record from what this node's
    /// store kept when it opened it: the wire bytes and the inner body
    /// (postcard), without decrypting or checking anything again. Never use
    /// it for bytes from a peer, a client or an import: those go through
    /// [`SignedRecord::from_bytes`] and [`SignedRecord::open`].
    pub fn decode_opened_trusted(wire: &[u8], inner_body: &[u8]) -> Result<Self, DecodeError> {
        let outer = Self::decode_trusted(wire)?;
        let Body::Sealed(s) = &outer.record.body else {
            return Err(DecodeError::Malformed("not a sealed record".into()));
        };
        let epoch = s.epoch;
        let body = decode_inner(inner_body).map_err(|why| DecodeError::Malformed(why.into()))?;
        Ok(outer.into_opened(body, epoch))
    }

    /// The opened view of this (unopened) sealed record, with `body` inside.
    pub(crate) fn into_opened(self, body: Body, epoch: u32) -> Self {
        SignedRecord {
            record: Record {
                author: self.record.author,
                hlc: self.record.hlc,
                body,
            },
            opened_epoch: Some(epoch),
            ..self
        }
    }

    /// Opens a sealed record with the room's key of its epoch or of a newer
    /// one (older keys are derived from newer ones; pass the key of the
    /// record's own epoch where you have it, deriving costs a hash per
    /// epoch). The opened view has the same id, wire bytes and signature;
    /// its body is the inner body, which the caller then checks with the
    /// ordinary rules. The content must decode canonically, be of a kind
    /// that is sealed ([`Body::is_sealable`]) and name the same room.
    pub fn open(&self, key: &RoomKey) -> Result<SignedRecord, UnsealError> {
        let (Body::Sealed(s), None) = (&self.record.body, self.opened_epoch) else {
            return Err(UnsealError::NotSealed);
        };
        if key.room() != s.room || key.epoch() < s.epoch {
            return Err(UnsealError::WrongKey {
                room: s.room,
                epoch: s.epoch,
                key_room: key.room(),
                key_epoch: key.epoch(),
            });
        }
        let does_not_open = || RuleError::SealedDoesNotOpen {
            room: s.room,
            epoch: s.epoch,
        };
        let key = key.older(s.epoch).map_err(|_| does_not_open())?;
        let aad = seal::record_aad(&self.record.author.0, self.record.hlc.0, &s.room, s.epoch);
        let plain = key
            .open(SEAL_PURPOSE_RECORDS, &s.nonce, &s.ciphertext, &aad)
            .map_err(|_| does_not_open())?;
        let body = decode_inner(&plain).map_err(|why| RuleError::BadSealedContent { why })?;
        crate::rules::check_sealed_content(s, &body)?;
        let epoch = s.epoch;
        Ok(self.clone().into_opened(body, epoch))
    }

    /// The unopened view of an opened sealed record (the record as a peer
    /// without the key sees it); any other record as it is.
    pub fn sealed_form(&self) -> Result<SignedRecord, DecodeError> {
        if self.opened_epoch.is_none() {
            return Ok(self.clone());
        }
        let outer: Record = postcard::from_bytes(self.signed.get(1..).unwrap_or_default())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(SignedRecord {
            record: outer,
            opened_epoch: None,
            ..self.clone()
        })
    }

    /// Whether this record is sealed on the wire (opened here or not).
    pub fn is_sealed(&self) -> bool {
        self.opened_epoch.is_some() || matches!(self.record.body, Body::Sealed(_))
    }

    /// Whether this is the opened view of a sealed record.
    pub fn is_opened(&self) -> bool {
        self.opened_epoch.is_some()
    }

    /// The key epoch of a sealed record (opened or not).
    pub fn sealed_epoch(&self) -> Option<u32> {
        match &self.record.body {
            Body::Sealed(s) if self.opened_epoch.is_none() => Some(s.epoch),
            _ => self.opened_epoch,
        }
    }

    /// The record.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Its content-addressed id.
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// The wire form: signed bytes then signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.signed.len() + SIGNATURE_LEN);
        out.extend_from_slice(&self.signed);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Size of the wire form.
    pub fn wire_len(&self) -> usize {
        self.signed.len() + SIGNATURE_LEN
    }

    /// What this record writes.
    pub fn entity(&self) -> EntityKey {
        self.record.entity(self.id)
    }
}

/// Verifies many records, spread over `threads` threads. Order is kept.
/// Used by catch-up sync and import, where records come in large batches.
pub fn verify_batch(
    records: Vec<UnverifiedRecord>,
    threads: usize,
) -> Vec<Result<SignedRecord, RuleError>> {
    let threads = threads.clamp(1, 64);
    if threads == 1 || records.len() < 64 {
        return records.into_iter().map(UnverifiedRecord::verify).collect();
    }
    let chunk = records.len().div_ceil(threads);
    let mut chunks: Vec<Vec<UnverifiedRecord>> = Vec::with_capacity(threads);
    let mut it = records.into_iter();
    loop {
        let c: Vec<_> = it.by_ref().take(chunk).collect();
        if c.is_empty() {
            break;
        }
        chunks.push(c);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    c.into_iter()
                        .map(UnverifiedRecord::verify)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                // verify() does not panic; if a thread died anyway, re-raise.
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> UserKey {
        UserKey::from_seed(&[5; 32])
    }

    fn room_record(k: &UserKey) -> Record {
        Record {
            author: k.id(),
            hlc: Hlc::new(1000, 0),
            body: Body::Room(Room {
                nonce: [1; 16],
                title: "LAN party".into(),
                settings: RoomSettings::default(),
            }),
        }
    }

    #[test]
    fn round_trip() {
        let k = key();
        let s = room_record(&k).sign(&k).unwrap();
        let bytes = s.to_bytes();
        let back = SignedRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.id(), s.id());
    }

    #[test]
    fn unknown_version_is_its_own_error() {
        let k = key();
        let mut bytes = room_record(&k).sign(&k).unwrap().to_bytes();
        bytes[0] = 2;
        assert_eq!(
            UnverifiedRecord::decode(&bytes).unwrap_err(),
            DecodeError::UnknownVersion(2)
        );
    }

    #[test]
    fn oversized_is_its_own_error() {
        let bytes = vec![1u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            UnverifiedRecord::decode(&bytes),
            Err(DecodeError::TooLarge { .. })
        ));
        let k = key();
        let mut r = room_record(&k);
        if let Body::Room(room) = &mut r.body {
            room.title = "x".repeat(MAX_RECORD_BYTES);
        }
        assert!(matches!(r.sign(&k), Err(SignError::TooLarge { .. })));
    }

    #[test]
    fn forged_signature_is_rejected() {
        let k = key();
        let mut bytes = room_record(&k).sign(&k).unwrap().to_bytes();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert_eq!(
            SignedRecord::from_bytes(&bytes).unwrap_err(),
            crate::error::RecordError::Rule(RuleError::ForgedSignature)
        );
    }

    #[test]
    fn another_authors_name_on_my_signature_is_forged() {
        // Claiming someone else's authorship: re-encode with their id but our signature.
        let me = key();
        let them = UserKey::from_seed(&[6; 32]);
        let mut r = room_record(&me);
        let sig = r.clone().sign(&me).unwrap().to_bytes();
        r.author = them.id();
        let mut forged = r.encode_signed_bytes();
        forged.extend_from_slice(&sig[sig.len() - 64..]);
        assert_eq!(
            SignedRecord::from_bytes(&forged).unwrap_err(),
            crate::error::RecordError::Rule(RuleError::ForgedSignature)
        );
    }

    #[test]
    fn trailing_bytes_are_not_canonical() {
        let k = key();
        let s = room_record(&k).sign(&k).unwrap();
        let mut signed = s.signed.clone();
        signed.push(0);
        signed.extend_from_slice(&s.signature);
        assert_eq!(
            UnverifiedRecord::decode(&signed).unwrap_err(),
            DecodeError::NonCanonical
        );
    }

    #[test]
    fn wrong_key_cannot_sign() {
        let r = room_record(&key());
        assert_eq!(
            r.sign(&UserKey::from_seed(&[9; 32])).unwrap_err(),
            SignError::WrongKey
        );
    }

    #[test]
    fn batch_verification_keeps_order_and_finds_the_bad_one() {
        let k = key();
        let mut wire: Vec<Vec<u8>> = (0..200u64)
            .map(|i| {
                let mut r = room_record(&k);
                r.hlc = Hlc::new(i, 0);
                r.sign(&k).unwrap().to_bytes()
            })
            .collect();
        let last = wire[77].len() - 1;
        wire[77][last] ^= 0x40;
        let unverified: Vec<_> = wire
            .iter()
            .map(|b| UnverifiedRecord::decode(b).unwrap())
            .collect();
        let out = verify_batch(unverified, 2);
        assert_eq!(out.len(), 200);
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r.is_err(), i == 77, "record {i}");
            if let Ok(s) = r {
                assert_eq!(s.record().hlc, Hlc::new(i as u64, 0));
            }
        }
    }
}
