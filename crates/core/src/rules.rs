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
//! - RoomLog: appended by a member about themself; never edited.
//!
//! Checks come in two steps: [`check_standalone`] needs only the record;
//! [`check_in_room`] needs the room it belongs to (its parent), and for log
//! entries [`check_log_membership`] needs the author's membership history.

use crate::error::RuleError;
use crate::identity::UserId;
use crate::merge::{MemberEntry, membership};
use crate::permissions;
use crate::record::{AudioSettings, Body, MemberRole, MemberState, Record, RoomId, RoomSettings};

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
    }
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
    }
}

/// Whether the author of a log entry was a member of the room when they
/// wrote it. `history` holds the Member records about the author in that
/// room (in any order).
pub fn check_log_membership(
    rec: &Record,
    room: &RoomInfo,
    history: &[MemberEntry],
) -> Result<(), RuleError> {
    if rec.author == room.owner {
        return Ok(());
    }
    if membership(room.settings.join_policy, history, Some(rec.hlc)).is_member() {
        Ok(())
    } else {
        Err(RuleError::NotAMember { room: room.id })
    }
}
