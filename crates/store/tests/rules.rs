//! Every rule of DESIGN.md, each refused with its own error, through the
//! store's real apply path (redb on disk), and each leaving nothing behind.

use tincan_core::make;
use tincan_core::{
    Body, ChannelId, DecodeError, Hlc, MAX_RECORD_BYTES, MemberRole, MemberState, Profile,
    ProfileRole, Record, RoomId, RoomSettings, RuleError, SignedRecord, UserKey,
};
use tincan_store::{Applied, ApplyError, Store};

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    owner: UserKey,
    other: UserKey,
    room: RoomId,
}

fn t(ms: u64) -> Hlc {
    Hlc::new(1_700_000_000_000 + ms, 0)
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let other = UserKey::from_seed(&[2; 32]);
    let (room, rec) = make::room(&owner, t(1), [7; 16], "LAN", RoomSettings::default()).unwrap();
    assert_eq!(store.apply(rec).unwrap(), Applied::Stored);
    World {
        _dir: dir,
        store,
        owner,
        other,
        room,
    }
}

fn rejected(w: &World, rec: SignedRecord) -> RuleError {
    let before = w.store.state_dump().unwrap();
    let err = match w.store.apply(rec) {
        Err(ApplyError::Rejected(e)) => e,
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert_eq!(
        w.store.state_dump().unwrap(),
        before,
        "a refused record changed the store"
    );
    err
}

#[test]
fn forged_signature() {
    let w = world();
    let rec = make::channel(
        &w.owner,
        t(2),
        w.room,
        ChannelId([1; 16]),
        "general",
        "",
        vec![],
    )
    .unwrap();
    let mut bytes = rec.to_bytes();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    let before = w.store.state_dump().unwrap();
    assert!(matches!(
        w.store.apply_bytes(&bytes),
        Err(ApplyError::Rejected(RuleError::ForgedSignature))
    ));
    assert_eq!(w.store.state_dump().unwrap(), before);
}

#[test]
fn channel_by_someone_other_than_the_owner() {
    let w = world();
    let rec = make::channel(
        &w.other,
        t(2),
        w.room,
        ChannelId([1; 16]),
        "mine",
        "",
        vec![],
    )
    .unwrap();
    assert_eq!(
        rejected(&w, rec),
        RuleError::ChannelNotByOwner { room: w.room }
    );
    assert!(w.store.channels(&w.room).unwrap().is_empty());
}

#[test]
fn channel_delete_by_someone_other_than_the_owner() {
    let w = world();
    let ch = ChannelId([1; 16]);
    w.store
        .apply(make::channel(&w.owner, t(2), w.room, ch, "general", "", vec![]).unwrap())
        .unwrap();
    let rec = make::delete_channel(&w.other, t(3), w.room, ch).unwrap();
    assert_eq!(
        rejected(&w, rec),
        RuleError::DeleteNotByOwner { room: w.room }
    );
    assert_eq!(w.store.channels(&w.room).unwrap().len(), 1);
}

#[test]
fn room_log_by_a_non_member() {
    // The pure rule gives its own error...
    let w = world();
    let rec = make::log(&w.other, t(5), w.room, "said hi").unwrap();
    let info = w.store.room(&w.room).unwrap().unwrap().info();
    assert_eq!(
        tincan_core::rules::check_log_membership(rec.record(), &info, &[], &[]),
        Err(RuleError::NotAMember { room: w.room })
    );
    // ...and the store never stores it: it waits (the Member record may
    // still be on its way), and written before joining it waits too, in the
    // small group kept per author, never in the store.
    assert!(matches!(w.store.apply(rec).unwrap(), Applied::Pending(_)));
    w.store
        .apply(make::join(&w.other, t(10), w.room).unwrap())
        .unwrap();
    let early = make::log(&w.other, t(6), w.room, "before joining").unwrap();
    let early_id = early.id();
    assert_eq!(
        w.store.apply(early).unwrap(),
        Applied::Pending(tincan_store::Waiting::Membership(w.room, w.other.id()))
    );
    assert!(w.store.record(&early_id).unwrap().is_none());
    let page = w
        .store
        .log(&w.room, Hlc::ZERO, Hlc::MAX, None, 100)
        .unwrap();
    assert!(page.entries.is_empty(), "{page:?}");
    let ok = make::log(&w.other, t(11), w.room, "after joining").unwrap();
    assert_eq!(w.store.apply(ok).unwrap(), Applied::Stored);
    let page = w
        .store
        .log(&w.room, Hlc::ZERO, Hlc::MAX, None, 100)
        .unwrap();
    assert_eq!(page.entries.len(), 1);
}

#[test]
fn room_log_about_someone_else() {
    let w = world();
    let rec = Record {
        author: w.owner.id(),
        hlc: t(3),
        body: Body::RoomLog(tincan_core::RoomLog {
            room: w.room,
            user: w.other.id(),
            action: "framed".into(),
        }),
    }
    .sign(&w.owner)
    .unwrap();
    assert_eq!(rejected(&w, rec), RuleError::LogNotAboutAuthor);
}

#[test]
fn profile_changed_by_another_user() {
    let w = world();
    // A profile is kept only for a user with a standing here.
    w.store
        .apply(make::join(&w.other, t(2), w.room).unwrap())
        .unwrap();
    w.store
        .apply(make::profile(&w.other, t(2), "other").unwrap())
        .unwrap();
    let rec = Record {
        author: w.owner.id(),
        hlc: t(3),
        body: Body::Profile(Profile {
            user: w.other.id(),
            username: "hacked".into(),
            role: ProfileRole::Player,
            audio: Default::default(),
        }),
    }
    .sign(&w.owner)
    .unwrap();
    assert_eq!(rejected(&w, rec), RuleError::ProfileNotOwn);
    assert_eq!(
        w.store
            .profile(&w.other.id())
            .unwrap()
            .unwrap()
            .profile
            .username,
        "other"
    );
}

#[test]
fn member_change_by_a_non_owner() {
    let w = world();
    let third = UserKey::from_seed(&[3; 32]);
    // Banning someone else.
    let rec = make::member(
        &w.other,
        t(3),
        w.room,
        third.id(),
        MemberRole::Participant,
        MemberState::Banned,
    )
    .unwrap();
    assert_eq!(
        rejected(&w, rec),
        RuleError::MemberNotByOwner {
            room: w.room,
            what: "change another user's membership"
        }
    );
    // Promoting oneself.
    let rec = make::member(
        &w.other,
        t(4),
        w.room,
        w.other.id(),
        MemberRole::Moderator,
        MemberState::Joined,
    )
    .unwrap();
    assert_eq!(
        rejected(&w, rec),
        RuleError::MemberNotByOwner {
            room: w.room,
            what: "make someone a moderator"
        }
    );
    // Inviting oneself.
    let rec = make::member(
        &w.other,
        t(5),
        w.room,
        w.other.id(),
        MemberRole::Participant,
        MemberState::Invited,
    )
    .unwrap();
    assert_eq!(
        rejected(&w, rec),
        RuleError::MemberNotByOwner {
            room: w.room,
            what: "invite, kick or ban"
        }
    );
}

#[test]
fn record_over_the_size_limit() {
    let w = world();
    let mut bytes = make::log(&w.owner, t(2), w.room, "x").unwrap().to_bytes();
    bytes.resize(MAX_RECORD_BYTES + 1, 0);
    assert!(matches!(
        w.store.apply_bytes(&bytes),
        Err(ApplyError::Decode(DecodeError::TooLarge { len })) if len == MAX_RECORD_BYTES + 1
    ));
}

#[test]
fn unknown_version() {
    let w = world();
    let mut bytes = make::log(&w.owner, t(2), w.room, "x").unwrap().to_bytes();
    bytes[0] = 9;
    assert!(matches!(
        w.store.apply_bytes(&bytes),
        Err(ApplyError::Decode(DecodeError::UnknownVersion(9)))
    ));
}

#[test]
fn invalid_fields() {
    let w = world();
    let rec = make::channel(&w.owner, t(2), w.room, ChannelId([1; 16]), "", "", vec![]).unwrap();
    assert!(matches!(
        rejected(&w, rec),
        RuleError::InvalidField {
            field: "channel name",
            ..
        }
    ));
    let rec = make::channel(
        &w.owner,
        t(2),
        w.room,
        ChannelId([1; 16]),
        "ok",
        "",
        vec!["yell:all".into()],
    )
    .unwrap();
    assert!(matches!(
        rejected(&w, rec),
        RuleError::InvalidField {
            field: "permissions",
            ..
        }
    ));
}
