//! Who may say what: DESIGN.md's "signatures in place of ACLs" as pure
//! functions, checked at every node on ingest and again before anything is
//! shown to a local client.
//!
//! - Profile: only its user.
//! - Room: only its owner (the room id is derived from the owner's key, so
//!   a room record by anyone else names a different room).
//! - Channel and deletes: only the room's owner.
//! - Member: the owner admits, invites, kicks, bans and sets roles; a user may
//!   join (the fold in [`crate::merge`] decides whether an invite-only room
//!   lets them in) and may always leave.
//! - RoomLog: appended by a member about themself; never edited. Hidden when
//!   dated inside a window the owner cut off ([`Cutoff`](crate::record::Cutoff)):
//!   after the cutoff's `after` and up to the cutoff's own HLC.
//! - KeyGrant and Cutoff: only the room's owner; a cutoff is about someone
//!   else and its `after` is before its own HLC. A grant holds at most
//!   [`MAX_GRANT_ENVELOPES`] envelopes of exactly [`GRANT_ENVELOPE_LEN`] bytes.
//! - Sealed: anyone may write one (the outer record is checked like any
//!   other: signature, size, room). Once opened, its content must be a
//!   Member, Channel, RoomLog, Cutoff or channel delete of the same room
//!   ([`check_sealed_content`]), and is checked with these same rules as
//!   `Record { author, hlc, body: inner }`. A ciphertext that does not open
//!   under the room's key of its epoch is its author's fault.
//! - Time: a record dated more than [`MAX_CLOCK_SKEW`] ahead of the
//!   receiver's clock is refused for now ([`check_clock_skew`]), not for
//!   good: it is nobody's fault yet, and accepted once the clock catches up.
//!
//! Checks come in two steps: [`check_standalone`] needs only the record;
//! [`check_in_room`] needs the room it belongs to (its parent), and for log
//! entries [`check_log_membership`] needs the author's membership history
//! and the cutoffs about them.

use std::time::Duration;

use crate::error::{ClockAhead, RuleError};
use crate::hlc::Hlc;
use crate::identity::UserId;
use crate::merge::{MemberEntry, membership};
use crate::permissions;
use crate::record::{
    AudioSettings, Body, GRANT_ENVELOPE_LEN, MAX_GRANT_ENVELOPES, MemberRole, MemberState, Record,
    RoomId, RoomSettings, Sealed,
};
use crate::seal::{ENVELOPE_OVERHEAD, MAX_EPOCHS};

/// Longest username, in characters.
pub const MAX_USERNAME_CHARS: usize = 32;
/// Longest room title, in characters.
pub const MAX_TITLE_CHARS: usize = 100;
/// Longest channel name, in characters.
pub const MAX_CHANNEL_NAME_CHARS: usize = 64;
/// Longest channel description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest log action, in characters.
pub const MAX_ACTION_CHARS: usize = 1000;
/// Most permission entries on a channel.
pub const MAX_PERMISSIONS: usize = 32;
/// Largest member limit a room may set.
pub const MAX_MEMBER_LIMIT: u32 = 10_000;
/// How far ahead of the receiver's clock a record may be dated. Further
/// ahead, it is refused for now (so nobody can date entries into the future
/// to win every last-writer-wins race or to outlive a removal).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// One cutoff about a user, as [`check_log_membership`] needs it: their
/// entries dated after `after` and up to `at` are hidden.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutoffWindow {
    /// The cutoff's `after`: the newest of the user's records the owner had.
    pub after: Hlc,
    /// The cutoff record's own HLC.
    pub at: Hlc,
}

impl CutoffWindow {
    /// Whether an entry dated `hlc` falls in the hidden window.
    pub fn hides(&self, hlc: Hlc) -> bool {
        self.after < hlc && hlc <= self.at
    }
}

/// What the rules need to know about a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room.
    pub id: RoomId,
    /// Its owner.
    pub owner: UserId,
    /// Its current settings.
    pub settings: RoomSettings,
}

fn text(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), RuleError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(RuleError::InvalidField {
            field,
            why: format!("must be {min} to {max} characters, is {n}"),
        });
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(RuleError::InvalidField {
            field,
            why: "must not contain control characters".into(),
        });
    }
    Ok(())
}

fn audio(a: &AudioSettings) -> Result<(), RuleError> {
    let bad = |field, why: &str| {
        Err(RuleError::InvalidField {
            field,
            why: why.to_owned(),
        })
    };
    if !(8_000..=128_000).contains(&a.bitrate_bps) {
        return bad("audio.bitrate_bps", "must be 8000 to 128000");
    }
    if a.frame_ms != 10 && a.frame_ms != 20 {
        return bad("audio.frame_ms", "must be 10 or 20");
    }
    if a.input_gain_percent > 400 || a.output_volume_percent > 400 {
        return bad("audio gain", "must be 0 to 400 percent");
    }
    Ok(())
}

fn settings(s: &RoomSettings) -> Result<(), RuleError> {
    if let Some(limit) = s.member_limit
        && !(1..=MAX_MEMBER_LIMIT).contains(&limit)
    {
        return Err(RuleError::InvalidField {
            field: "member_limit",
            why: format!("must be 1 to {MAX_MEMBER_LIMIT}, is {limit}"),
        });
    }
    Ok(())
}

/// The checks that need only the record itself (the signature has been
/// checked by [`crate::UnverifiedRecord::verify`]).
pub fn check_standalone(rec: &Record) -> Result<(), RuleError> {
    match &rec.body {
        Body::Profile(p) => {
            if p.user != rec.author {
                return Err(RuleError::ProfileNotOwn);
            }
            text("username", &p.username, 1, MAX_USERNAME_CHARS)?;
            if p.username.trim() != p.username {
                return Err(RuleError::InvalidField {
                    field: "username",
                    why: "must not start or end with spaces".into(),
                });
            }
            audio(&p.audio)
        }
        Body::Room(r) => {
            text("title", &r.title, 1, MAX_TITLE_CHARS)?;
            settings(&r.settings)
        }
        Body::Member(_) => Ok(()),
        Body::Channel(c) => {
            text("channel name", &c.name, 1, MAX_CHANNEL_NAME_CHARS)?;
            text("description", &c.description, 0, MAX_DESCRIPTION_CHARS)?;
            if c.permissions.len() > MAX_PERMISSIONS {
                return Err(RuleError::InvalidField {
                    field: "permissions",
                    why: format!("at most {MAX_PERMISSIONS} entries"),
                });
            }
            permissions::parse_all(&c.permissions).map_err(|why| RuleError::InvalidField {
                field: "permissions",
                why,
            })?;
            Ok(())
        }
        Body::RoomLog(l) => {
            if l.user != rec.author {
                return Err(RuleError::LogNotAboutAuthor);
            }
            text("action", &l.action, 1, MAX_ACTION_CHARS)
        }
        Body::Tombstone(_) => Ok(()),
        Body::Sealed(sealed) => {
            epoch("epoch", sealed.epoch)?;
            if sealed.ciphertext.len() <= ENVELOPE_OVERHEAD {
                return Err(RuleError::InvalidField {
                    field: "ciphertext",
                    why: format!(
                        "must be longer than its {ENVELOPE_OVERHEAD}-byte tag, is {} bytes",
                        sealed.ciphertext.len()
                    ),
                });
            }
            Ok(())
        }
        Body::KeyGrant(g) => {
            epoch("epoch", g.epoch)?;
            let n = g.envelopes.entries.len();
            if n > MAX_GRANT_ENVELOPES {
                return Err(RuleError::InvalidField {
                    field: "envelopes",
                    why: format!("at most {MAX_GRANT_ENVELOPES} a record, has {n}"),
                });
            }
            if let Some(e) = g
                .envelopes
                .entries
                .iter()
                .find(|e| e.sealed.len() != GRANT_ENVELOPE_LEN)
            {
                return Err(RuleError::InvalidField {
                    field: "envelopes",
                    why: format!(
                        "each must be {GRANT_ENVELOPE_LEN} bytes, one is {}",
                        e.sealed.len()
                    ),
                });
            }
            Ok(())
        }
        Body::Cutoff(c) => {
            if c.user == rec.author {
                return Err(RuleError::InvalidField {
                    field: "user",
                    why: "a cutoff is about someone other than its author".into(),
                });
            }
            if c.after >= rec.hlc {
                return Err(RuleError::InvalidField {
                    field: "after",
                    why: format!("must be before the cutoff's own time {}", rec.hlc),
                });
            }
            Ok(())
        }
    }
}

fn epoch(field: &'static str, e: u32) -> Result<(), RuleError> {
    if e >= MAX_EPOCHS {
        return Err(RuleError::InvalidField {
            field,
            why: format!("must be below {MAX_EPOCHS}, is {e}"),
        });
    }
    Ok(())
}

/// What an opened sealed record may hold: a body of a sealed kind
/// ([`Body::is_sealable`]) about the sealed record's own room. (The content
/// is then checked with the ordinary rules, with the outer author and HLC.)
pub fn check_sealed_content(sealed: &Sealed, inner: &Body) -> Result<(), RuleError> {
    if !inner.is_sealable() {
        return Err(RuleError::BadSealedContent {
            why: "it holds a kind that is never sealed",
        });
    }
    if inner.named_room() != Some(sealed.room) {
        return Err(RuleError::BadSealedContent {
            why: "its content names another room",
        });
    }
    Ok(())
}

/// Whether `rec` is dated within [`MAX_CLOCK_SKEW`] of the receiver's clock
/// (`now_ms`, Unix milliseconds). Past it the record is refused for now:
/// the caller drops it without blaming anyone, and takes it when offered
/// again later.
pub fn check_clock_skew(rec: &Record, now_ms: u64) -> Result<(), ClockAhead> {
    let max_ms = MAX_CLOCK_SKEW.as_millis() as u64;
    let at = rec.hlc.physical_ms();
    if at > now_ms.saturating_add(max_ms) {
        return Err(ClockAhead {
            ahead_ms: at - now_ms,
            max_ms,
        });
    }
    Ok(())
}

/// The checks that need the record's room: owner rules for channels, deletes
/// and membership changes. `room` must be the record's [`Record::room`].
pub fn check_in_room(rec: &Record, room: &RoomInfo) -> Result<(), RuleError> {
    let by_owner = rec.author == room.owner;
    match &rec.body {
        Body::Profile(_) | Body::Room(_) => Ok(()),
        Body::Channel(_) if !by_owner => Err(RuleError::ChannelNotByOwner { room: room.id }),
        Body::Channel(_) => Ok(()),
        Body::Tombstone(_) if !by_owner => Err(RuleError::DeleteNotByOwner { room: room.id }),
        Body::Tombstone(_) => Ok(()),
        Body::Member(m) => {
            if m.user == room.owner {
                return Err(RuleError::InvalidField {
                    field: "user",
                    why: "the owner is always a member of their room".into(),
                });
            }
            if by_owner {
                return Ok(());
            }
            if rec.author != m.user {
                return Err(RuleError::MemberNotByOwner {
                    room: room.id,
                    what: "change another user's membership",
                });
            }
            match (m.state, m.role) {
                (MemberState::Joined | MemberState::Left, MemberRole::Participant) => Ok(()),
                (_, MemberRole::Moderator) => Err(RuleError::MemberNotByOwner {
                    room: room.id,
                    what: "make someone a moderator",
                }),
                _ => Err(RuleError::MemberNotByOwner {
                    room: room.id,
                    what: "invite, kick or ban",
                }),
            }
        }
        // Membership is checked by check_log_membership, with the history.
        Body::RoomLog(_) => Ok(()),
        // What is inside is checked once opened.
        Body::Sealed(_) => Ok(()),
        Body::KeyGrant(_) if !by_owner => Err(RuleError::GrantNotByOwner { room: room.id }),
        Body::KeyGrant(_) => Ok(()),
        Body::Cutoff(_) if !by_owner => Err(RuleError::CutoffNotByOwner { room: room.id }),
        Body::Cutoff(_) => Ok(()),
    }
}

/// Whether the author of a log entry was a member of the room when they
/// wrote it, and the entry is not dated in a window the owner cut off.
/// `history` holds the Member records about the author in that room (in any
/// order), `cutoffs` the owner's cutoffs about them.
pub fn check_log_membership(
    rec: &Record,
    room: &RoomInfo,
    history: &[MemberEntry],
    cutoffs: &[CutoffWindow],
) -> Result<(), RuleError> {
    check_log_author(&rec.author, rec.hlc, room, history, cutoffs)
}

/// [`check_log_membership`] for an entry by `author` dated `hlc`, for a
/// caller that has not decoded the entry (a store judging its index).
pub fn check_log_author(
    author: &UserId,
    hlc: Hlc,
    room: &RoomInfo,
    history: &[MemberEntry],
    cutoffs: &[CutoffWindow],
) -> Result<(), RuleError> {
    if *author == room.owner {
        return Ok(());
    }
    if !membership(room.settings.join_policy, history, Some(hlc)).is_member() {
        return Err(RuleError::NotAMember { room: room.id });
    }
    if cutoffs.iter().any(|c| c.hides(hlc)) {
        return Err(RuleError::CutOff { room: room.id });
    }
    Ok(())
}
