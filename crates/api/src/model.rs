//! The classes the API serves, built from the store's views, and their
//! Parse JSON form. objectIds are the ids records carry, so they are the
//! same on every node: a room's `RoomId`, a channel's `ChannelId`, a log
//! entry's `RecordId` and a user's `UserId`, in hex.
//!
//! Dates: records carry a hybrid logical clock, whose physical part is Unix
//! milliseconds. `updatedAt` is the time of the record in force; the store
//! keeps only the winning record of a room, channel or profile, so their
//! `createdAt` is that same time (log entries are never edited, so theirs is
//! exact).

use serde_json::{Map, Value, json};
use tincan_core::{ChannelId, Hlc, JoinPolicy, RecordId, RoomId, UserId};
use tincan_store::{ChannelView, LogEntry, MemberView, ProfileView, RoomView, Store};

use crate::acl::Acl;
use crate::error::{ApiResult, ParseError};

/// The classes served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Users (`_User`, also at `/parse/users`).
    User,
    /// Rooms.
    Room,
    /// Voice channels of a room.
    Channel,
    /// Entries of a room's activity log.
    RoomLog,
}

impl Class {
    /// From a Parse class name.
    pub fn from_name(name: &str) -> ApiResult<Class> {
        match name {
            "_User" => Ok(Class::User),
            "Room" => Ok(Class::Room),
            "Channel" => Ok(Class::Channel),
            "RoomLog" => Ok(Class::RoomLog),
            other => Err(ParseError::new(
                crate::error::code::INVALID_CLASS_NAME,
                format!(
                    "this node serves no class {other:?}: its classes are _User, Room, Channel and RoomLog"
                ),
            )),
        }
    }

    /// The Parse class name.
    pub fn name(self) -> &'static str {
        match self {
            Class::User => "_User",
            Class::Room => "Room",
            Class::Channel => "Channel",
            Class::RoomLog => "RoomLog",
        }
    }

    /// Fields a client may set on create or update.
    pub fn writable_fields(self) -> &'static [&'static str] {
        match self {
            Class::User => &["username", "password", "email", "role"],
            Class::Room => &[
                "title",
                "owner",
                "inviteOnly",
                "memberLimit",
                "settings",
                "members",
            ],
            Class::Channel => &["room", "name", "description", "permissions"],
            Class::RoomLog => &["room", "user", "action", "timestamp"],
        }
    }
}

/// ISO 8601 in UTC with milliseconds, as Parse writes dates.
pub fn iso_date(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (what Parse SDKs send) to Unix ms.
pub fn parse_iso_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let frac = &s[19..s.len() - 1];
    let millis = if frac.is_empty() {
        0
    } else {
        let digits = frac.strip_prefix('.')?;
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut padded = digits.chars().take(3).collect::<String>();
        while padded.len() < 3 {
            padded.push('0');
        }
        padded.parse::<i64>().ok()?
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

/// A Parse pointer.
pub fn pointer(class: &str, id: &str) -> Value {
    json!({"__type": "Pointer", "className": class, "objectId": id})
}

/// A Parse date object.
pub fn date_object(ms: u64) -> Value {
    json!({"__type": "Date", "iso": iso_date(ms)})
}

/// Reads a pointer to `class` from a field value: a pointer object, or
/// (leniently) a bare objectId string.
pub fn read_pointer(value: &Value, class: Class, field: &str) -> ApiResult<String> {
    match value {
        Value::String(id) => Ok(id.clone()),
        Value::Object(o) => {
            let ok = o.get("__type").and_then(Value::as_str) == Some("Pointer")
                && o.get("className").and_then(Value::as_str) == Some(class.name());
            match (ok, o.get("objectId").and_then(Value::as_str)) {
                (true, Some(id)) => Ok(id.to_owned()),
                _ => Err(ParseError::new(
                    crate::error::code::INVALID_POINTER,
                    format!(
                        "{field} must be a pointer {{\"__type\":\"Pointer\",\"className\":\"{}\",\"objectId\":...}}",
                        class.name()
                    ),
                )),
            }
        }
        _ => Err(ParseError::new(
            crate::error::code::INVALID_POINTER,
            format!("{field} must be a pointer to a {}", class.name()),
        )),
    }
}

/// Parses a room's objectId.
pub fn room_id(s: &str) -> ApiResult<RoomId> {
    RoomId::from_hex(s).map_err(|_| {
        ParseError::not_found(format!("no Room {s:?}: a Room objectId is 32 hex digits"))
    })
}

/// Parses a channel's objectId.
pub fn channel_id(s: &str) -> ApiResult<ChannelId> {
    ChannelId::from_hex(s).map_err(|_| {
        ParseError::not_found(format!(
            "no Channel {s:?}: a Channel objectId is 32 hex digits"
        ))
    })
}

/// Parses a user's objectId.
pub fn user_id(s: &str) -> ApiResult<UserId> {
    UserId::from_hex(s).map_err(|_| {
        ParseError::not_found(format!("no user {s:?}: a user objectId is 64 hex digits"))
    })
}

/// Parses a log entry's objectId.
pub fn record_id(s: &str) -> ApiResult<RecordId> {
    RecordId::from_hex(s).map_err(|_| {
        ParseError::not_found(format!(
            "no RoomLog {s:?}: a RoomLog objectId is 64 hex digits"
        ))
    })
}

fn stamp(obj: &mut Map<String, Value>, created: Hlc, updated: Hlc) {
    obj.insert(
        "createdAt".into(),
        Value::String(iso_date(created.physical_ms())),
    );
    obj.insert(
        "updatedAt".into(),
        Value::String(iso_date(updated.physical_ms())),
    );
}

/// A user, from their profile.
pub fn user_json(p: &ProfileView) -> Value {
    let mut o = Map::new();
    o.insert("objectId".into(), Value::String(p.profile.user.to_hex()));
    o.insert("username".into(), Value::String(p.profile.username.clone()));
    o.insert(
        "fingerprint".into(),
        Value::String(p.profile.user.fingerprint().to_string()),
    );
    stamp(&mut o, p.hlc, p.hlc);
    Value::Object(o)
}

/// A room, with its joined members when `members` is given (see
/// [`room_for`] for who may see them).
pub fn room_json(r: &RoomView, members: Option<&[MemberView]>) -> Value {
    let mut o = Map::new();
    o.insert("objectId".into(), Value::String(r.id.to_hex()));
    o.insert("title".into(), Value::String(r.room.title.clone()));
    o.insert(
        "inviteOnly".into(),
        Value::Bool(r.room.settings.join_policy == JoinPolicy::Invite),
    );
    o.insert(
        "memberLimit".into(),
        r.room
            .settings
            .member_limit
            .map(Value::from)
            .unwrap_or(Value::Null),
    );
    o.insert("owner".into(), pointer("_User", &r.owner.to_hex()));
    // The template's `settings` object: the same two settings, which the
    // signed room record holds.
    o.insert(
        "settings".into(),
        json!({
            "inviteOnly": r.room.settings.join_policy == JoinPolicy::Invite,
            "memberLimit": r.room.settings.member_limit,
        }),
    );
    o.insert("ACL".into(), Acl::room(&r.owner).to_json());
    if let Some(members) = members {
        o.insert(
            "members".into(),
            Value::Array(
                members
                    .iter()
                    .filter(|m| m.membership.is_member())
                    .map(|m| pointer("_User", &m.user.to_hex()))
                    .collect(),
            ),
        );
    }
    stamp(&mut o, r.hlc, r.hlc);
    Value::Object(o)
}

/// A channel; `acl` is its room's `Acl::contents` (owner writes).
pub fn channel_json(c: &ChannelView, acl: &Value) -> Value {
    let mut o = Map::new();
    o.insert("objectId".into(), Value::String(c.channel.id.to_hex()));
    o.insert("room".into(), pointer("Room", &c.channel.room.to_hex()));
    o.insert("name".into(), Value::String(c.channel.name.clone()));
    o.insert(
        "description".into(),
        Value::String(c.channel.description.clone()),
    );
    o.insert(
        "permissions".into(),
        Value::Array(
            c.channel
                .permissions
                .iter()
                .cloned()
                .map(Value::String)
                .collect(),
        ),
    );
    o.insert("ACL".into(), acl.clone());
    stamp(&mut o, c.hlc, c.hlc);
    Value::Object(o)
}

/// A log entry; `acl` is its room's `Acl::contents` (nobody writes).
/// Its `timestamp` (the template's Date field) is the time of its signed
/// HLC, the same on every node, whatever a client sent when making it.
pub fn log_json(e: &LogEntry, acl: &Value) -> Value {
    let mut o = Map::new();
    o.insert("objectId".into(), Value::String(e.id.to_hex()));
    o.insert("room".into(), pointer("Room", &e.room.to_hex()));
    o.insert("user".into(), pointer("_User", &e.user.to_hex()));
    o.insert("action".into(), Value::String(e.action.clone()));
    o.insert("timestamp".into(), date_object(e.hlc.physical_ms()));
    o.insert("ACL".into(), acl.clone());
    stamp(&mut o, e.hlc, e.hlc);
    Value::Object(o)
}

/// Who may read a room's contents (channels, log, members, voice
/// presence): anyone for an open room; for an invite-only room its owner
/// and joined members. Rooms themselves (title, owner, settings) and
/// profiles are visible to every user; an invite-only room is shown to the
/// others without its `members` ([`room_for`]).
pub fn can_read_room(store: &Store, room: &RoomView, user: &UserId) -> ApiResult<bool> {
    if room.room.settings.join_policy == JoinPolicy::Open || room.owner == *user {
        return Ok(true);
    }
    Ok(store.membership(&room.id, user)?.is_member())
}

/// The Parse JSON of a room as `viewer` may see it: with its members if
/// they may read the room, without the `members` field otherwise. Every
/// path that shows a room (queries, `include`, LiveQuery, GraphQL) comes
/// through here, so a `where` on members matches only what the viewer sees.
pub fn room_for(store: &Store, room: &RoomView, viewer: &UserId) -> ApiResult<Value> {
    if can_read_room(store, room, viewer)? {
        let members = store.members(&room.id)?;
        Ok(room_json(room, Some(&members)))
    } else {
        Ok(room_json(room, None))
    }
}

/// The Parse JSON of a room by id as `viewer` may see it, if it exists.
pub fn room_by_id(store: &Store, id: &RoomId, viewer: &UserId) -> ApiResult<Option<Value>> {
    match store.room(id)? {
        Some(r) => Ok(Some(room_for(store, &r, viewer)?)),
        None => Ok(None),
    }
}

/// Finds a channel by id in any room the user may read.
pub fn find_channel(
    store: &Store,
    id: &ChannelId,
    user: &UserId,
) -> ApiResult<Option<(RoomView, ChannelView)>> {
    for room in store.rooms()? {
        if let Some(c) = store.channel(&room.id, id)? {
            if can_read_room(store, &room, user)? {
                return Ok(Some((room, c)));
            }
            return Ok(None);
        }
    }
    Ok(None)
}

/// Finds a visible log entry by id, with its room.
pub fn find_log(
    store: &Store,
    id: &RecordId,
    user: &UserId,
) -> ApiResult<Option<(RoomView, LogEntry)>> {
    let Some(rec) = store.record(id)? else {
        return Ok(None);
    };
    let tincan_core::Body::RoomLog(l) = &rec.record().body else {
        return Ok(None);
    };
    let Some(room) = store.room(&l.room)? else {
        return Ok(None);
    };
    if !can_read_room(store, &room, user)? {
        return Ok(None);
    }
    let hlc = rec.record().hlc;
    // Stored-but-hidden entries (author not a member then) are not shown:
    // ask the log query, which applies that rule, for entries at this time.
    let page = store.log(&l.room, hlc, hlc, None, 1000)?;
    Ok(page
        .entries
        .into_iter()
        .find(|e| e.id == *id)
        .map(|e| (room, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for ms in [0u64, 1_700_000_000_123, 951_782_400_000, 4_102_444_799_999] {
            let s = iso_date(ms);
            assert_eq!(parse_iso_date(&s), Some(ms as i64), "{s}");
        }
        assert_eq!(iso_date(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_iso_date("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        assert_eq!(
            parse_iso_date("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500)
        );
        for bad in [
            "",
            "2000-13-01T00:00:00Z",
            "yesterday",
            "2000-01-01T00:00:00",
            "2000-01-01T00:00:00.Z",
        ] {
            assert_eq!(parse_iso_date(bad), None, "{bad}");
        }
    }
}
