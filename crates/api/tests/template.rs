//! The template's schema in one process (real store, real HTTP): what
//! tests/js/parse_template.js drives through the SDK across two nodes,
//! plus the cases a misbehaving client sends that the SDK flows do not:
//! invite-only ACLs, a full open room under the log rule, `settings` keys
//! the record cannot hold, `members` set as a whole list, bad roles and
//! timestamps.

mod common;

use common::{fast_config, room_ptr, start, user_ptr};
use serde_json::json;

#[tokio::test]
async fn acls_are_derived_and_a_client_acl_must_agree() {
    let n = start(fast_config(), None).await;
    let (alice, a) = n.sign_up("alice").await;
    let (bob, b) = n.sign_up("bob").await;
    let room = n
        .create("Room", &a, json!({"title": "secret", "inviteOnly": true}))
        .await;
    n.ok(
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&a),
        Some(json!({"members": {"__op": "AddUnique", "objects": [user_ptr(&bob)]}})),
    )
    .await;
    // Public read of an invite-only room's channel: the rules cannot.
    let v = n
        .err(
            "POST",
            "/parse/classes/Channel",
            Some(&a),
            Some(json!({"room": room_ptr(&room), "name": "plans",
                "ACL": {"*": {"read": true}, alice.clone(): {"read": true, "write": true}}})),
            119,
        )
        .await;
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("grants everyone (\"*\") read"),
        "{v}"
    );
    // Bob's write: only the owner changes channels.
    n.err(
        "POST",
        "/parse/classes/Channel",
        Some(&a),
        Some(json!({"room": room_ptr(&room), "name": "plans",
            "ACL": {alice.clone(): {"read": true, "write": true}, bob.clone(): {"read": true, "write": true}}})),
        119,
    )
    .await;
    n.err(
        "POST",
        "/parse/classes/Channel",
        Some(&a),
        Some(json!({"room": room_ptr(&room), "name": "plans", "ACL": {"role:admin": {"read": true}}})),
        119,
    )
    .await;
    n.err(
        "POST",
        "/parse/classes/Channel",
        Some(&a),
        Some(json!({"room": room_ptr(&room), "name": "plans", "ACL": "public"})),
        123,
    )
    .await;
    let r = n
        .ok(
            "GET",
            &format!(
                "/parse/classes/Channel?where={}",
                urlenc(&json!({"room": room_ptr(&room)}).to_string())
            ),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(
        r["results"].as_array().unwrap().len(),
        0,
        "refused channels were written: {r}"
    );
    // The ACL the rules give is accepted and read back.
    let agreed = json!({alice.clone(): {"read": true, "write": true}, bob.clone(): {"read": true}});
    let ch = n
        .create(
            "Channel",
            &a,
            json!({"room": room_ptr(&room), "name": "plans", "ACL": agreed.clone()}),
        )
        .await;
    let c = n
        .ok(
            "GET",
            &format!("/parse/classes/Channel/{ch}"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(c["ACL"], agreed, "{c}");
    // A log entry: read by the members, written by nobody.
    let e = n
        .create(
            "RoomLog",
            &b,
            json!({"room": room_ptr(&room), "action": "hi", "user": user_ptr(&bob)}),
        )
        .await;
    let l = n
        .ok(
            "GET",
            &format!("/parse/classes/RoomLog/{e}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(
        l["ACL"],
        json!({alice.clone(): {"read": true}, bob.clone(): {"read": true}}),
        "{l}"
    );
    let u = n
        .ok("GET", &format!("/parse/users/{alice}"), Some(&b), None)
        .await;
    assert_eq!(
        u["ACL"],
        json!({"*": {"read": true}, alice.clone(): {"read": true, "write": true}}),
        "{u}"
    );
}

#[tokio::test]
async fn the_log_rule_joins_open_rooms_and_refuses_what_it_cannot_join() {
    let n = start(fast_config(), None).await;
    let (alice, a) = n.sign_up("alice").await;
    let (_carol, c) = n.sign_up("carol").await;
    // Full: the owner alone fills a room of one; carol's entry cannot join her.
    let full = n
        .create(
            "Room",
            &a,
            json!({"title": "solo", "settings": {"inviteOnly": false, "memberLimit": 1}}),
        )
        .await;
    n.err(
        "POST",
        "/parse/classes/RoomLog",
        Some(&c),
        Some(json!({"room": room_ptr(&full), "action": "squeeze in"})),
        119,
    )
    .await;
    let w = urlenc(&json!({"room": room_ptr(&full)}).to_string());
    let r = n
        .ok(
            "GET",
            &format!("/parse/classes/RoomLog?where={w}&count=1"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(r["count"], 0, "{r}");
    let room = n
        .ok(
            "GET",
            &format!("/parse/classes/Room/{full}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(room["members"], json!([user_ptr(&alice)]), "{room}");
    // Bad values change nothing either.
    n.err(
        "POST",
        "/parse/classes/RoomLog",
        Some(&a),
        Some(json!({"room": room_ptr(&full), "action": "x", "timestamp": "2024-01-01T00:00:00Z"})),
        111,
    )
    .await;
    n.err(
        "POST",
        "/parse/classes/RoomLog",
        Some(&a),
        Some(json!({"room": room_ptr(&full), "action": "x",
            "timestamp": {"__type": "Date", "iso": "2100-01-01T00:00:00.000Z"}})),
        142,
    )
    .await;
    let r = n
        .ok(
            "GET",
            &format!("/parse/classes/RoomLog?where={w}&count=1"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(r["count"], 0, "{r}");
}

#[tokio::test]
async fn settings_members_and_roles_as_the_template_sends_them() {
    let n = start(fast_config(), None).await;
    let (alice, a) = n.sign_up("alice").await;
    let (bob, b) = n.sign_up("bob").await;
    n.err(
        "POST",
        "/parse/classes/Room",
        Some(&a),
        Some(json!({"title": "x", "settings": {"theme": "dark"}})),
        105,
    )
    .await;
    n.err(
        "POST",
        "/parse/classes/Room",
        Some(&a),
        Some(json!({"title": "x", "settings": "dark"})),
        111,
    )
    .await;
    // Created with bob among its members: the owner admits him.
    let room = n
        .create(
            "Room",
            &a,
            json!({"title": "x", "owner": user_ptr(&alice), "members": [user_ptr(&alice), user_ptr(&bob)]}),
        )
        .await;
    let path = format!("/parse/classes/Room/{room}");
    let members = |v: &serde_json::Value| {
        let mut m: Vec<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["objectId"].as_str().unwrap().to_owned())
            .collect();
        m.sort();
        m
    };
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(members(&n.ok("GET", &path, Some(&a), None).await), both);
    // `members` set to the whole list: bob is removed (kicked by the owner).
    n.ok(
        "PUT",
        &path,
        Some(&a),
        Some(json!({"members": [user_ptr(&alice)]})),
    )
    .await;
    assert_eq!(
        members(&n.ok("GET", &path, Some(&a), None).await),
        vec![alice.clone()]
    );
    // Settings by the owner, in the template's object.
    n.ok(
        "PUT",
        &path,
        Some(&a),
        Some(json!({"settings": {"inviteOnly": true, "memberLimit": 5}})),
    )
    .await;
    let v = n.ok("GET", &path, Some(&a), None).await;
    assert_eq!(
        v["settings"],
        json!({"inviteOnly": true, "memberLimit": 5}),
        "{v}"
    );
    assert_eq!(v["inviteOnly"], true);
    // Roles: bad values and other users refused; kept across reads.
    for (bad, code) in [
        (json!(""), 142),
        (json!("x".repeat(33)), 142),
        (json!(["moderator"]), 111),
    ] {
        n.err(
            "PUT",
            &format!("/parse/users/{bob}"),
            Some(&b),
            Some(json!({"role": bad})),
            code,
        )
        .await;
    }
    n.ok(
        "PUT",
        &format!("/parse/users/{bob}"),
        Some(&b),
        Some(json!({"role": "moderator"})),
    )
    .await;
    n.err(
        "PUT",
        &format!("/parse/users/{bob}"),
        Some(&a),
        Some(json!({"role": "participant"})),
        119,
    )
    .await;
    let u = n
        .ok("GET", &format!("/parse/users/{bob}"), Some(&a), None)
        .await;
    assert_eq!(u["role"], "moderator", "{u}");
    n.ok(
        "PUT",
        &format!("/parse/users/{bob}"),
        Some(&b),
        Some(json!({"role": {"__op": "Delete"}})),
    )
    .await;
    let u = n
        .ok("GET", &format!("/parse/users/{bob}"), Some(&a), None)
        .await;
    assert_eq!(u.get("role"), None, "{u}");
    // A sign-up ACL may not grant public write or name another user.
    n.err(
        "POST",
        "/parse/users",
        None,
        Some(json!({"username": "eve", "password": "pw", "ACL": {"*": {"read": true, "write": true}}})),
        119,
    )
    .await;
    n.err(
        "POST",
        "/parse/users",
        None,
        Some(json!({"username": "eve", "password": "pw", "ACL": {"*": {"read": true}, alice.clone(): {"write": true}}})),
        119,
    )
    .await;
}

fn urlenc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
