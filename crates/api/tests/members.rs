//! An invite-only room's member list is shown only to its owner and its
//! joined members: REST (one room, queries, a `where` on members, counts,
//! `include`), GraphQL and LiveQuery pushes (`update`, `enter`). Everyone
//! else sees the room (it is gossiped in the clear) without its members.

mod common;

use std::time::Duration;

use common::{fast_config, room_ptr, start, user_ptr};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON text message, or None if none comes within `wait`.
async fn next_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).unwrap());
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn next(ws: &mut Ws) -> Value {
    next_within(ws, Duration::from_secs(10))
        .await
        .expect("no LiveQuery message within 10 s")
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The member ids a Room object shows (empty when it shows none).
fn member_ids(room: &Value) -> Vec<String> {
    room.get("members")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|p| p["objectId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn graphql(n: &common::TestNode, token: &str, query: &str) -> Value {
    let r = n
        .http
        .post(format!("{}/graphql", n.url))
        .header("X-Parse-Session-Token", token)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn an_invite_only_rooms_members_are_shown_to_members_only() {
    let n = start(fast_config(), None).await;
    let (alice, a) = n.sign_up("alice").await;
    let (bob, b) = n.sign_up("bob").await;
    let (_carol, c) = n.sign_up("carol").await;
    let (dave, _d) = n.sign_up("dave").await;
    let room = n
        .create("Room", &a, json!({"title": "secret", "inviteOnly": true}))
        .await;
    let open = n.create("Room", &a, json!({"title": "open"})).await;
    n.ok(
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&a),
        Some(json!({"members": {"__op": "AddUnique", "objects": [user_ptr(&bob)]}})),
    )
    .await;
    let entry = n
        .create(
            "RoomLog",
            &b,
            json!({"room": room_ptr(&room), "action": "hello"}),
        )
        .await;

    // REST, one room: the owner and the member see bob; carol sees the room, no members.
    let get = format!("/parse/classes/Room/{room}");
    let owner_view = n.ok("GET", &get, Some(&a), None).await;
    let member_view = n.ok("GET", &get, Some(&b), None).await;
    let stranger_view = n.ok("GET", &get, Some(&c), None).await;
    assert!(member_ids(&owner_view).contains(&bob), "{owner_view}");
    assert!(member_ids(&member_view).contains(&bob), "{member_view}");
    assert_eq!(stranger_view["title"], "secret", "{stranger_view}");
    assert_eq!(stranger_view["owner"], user_ptr(&alice));
    assert!(
        stranger_view.get("members").is_none(),
        "a non-member sees the members: {stranger_view}"
    );
    // An open room's members stay public.
    let open_view = n
        .ok(
            "GET",
            &format!("/parse/classes/Room/{open}"),
            Some(&c),
            None,
        )
        .await;
    assert!(open_view.get("members").is_some(), "{open_view}");

    // REST queries: the list, a `where` on members, a count, keys.
    let all = n.ok("GET", "/parse/classes/Room", Some(&c), None).await;
    let listed = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["objectId"] == room.as_str())
        .cloned()
        .expect("the room is listed");
    assert!(listed.get("members").is_none(), "{listed}");
    let w = urlenc(&json!({"members": user_ptr(&bob)}).to_string());
    let by_member = format!("/parse/classes/Room?where={w}&count=1");
    let probe = n.ok("GET", &by_member, Some(&c), None).await;
    assert_eq!(
        (
            probe["count"].as_u64(),
            probe["results"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "a non-member finds the room by its members: {probe}"
    );
    let mine = n.ok("GET", &by_member, Some(&b), None).await;
    assert_eq!(mine["count"], 1, "{mine}");
    let keyed = n
        .ok("GET", &format!("{get}?keys=members,title"), Some(&c), None)
        .await;
    assert!(keyed.get("members").is_none(), "{keyed}");
    // include: the member's own log entry brings the room with its members.
    let inc = n
        .ok(
            "GET",
            &format!("/parse/classes/RoomLog/{entry}?include=room"),
            Some(&b),
            None,
        )
        .await;
    assert!(member_ids(&inc["room"]).contains(&bob), "{inc}");

    // GraphQL: rooms and room.
    let q = format!(
        r#"{{ room(id: "{room}") {{ objectId memberIds }} rooms {{ objectId memberIds }} }}"#
    );
    let stranger = graphql(&n, &c, &q).await;
    let member = graphql(&n, &b, &q).await;
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(stranger.get("errors").is_none(), "{stranger}");
    assert!(
        stranger["data"]["room"]["memberIds"].is_null(),
        "GraphQL room shows a non-member the members: {stranger}"
    );
    let in_list = stranger["data"]["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["objectId"] == room.as_str())
        .cloned()
        .expect("listed");
    assert!(in_list["memberIds"].is_null(), "{in_list}");
    assert!(
        ids(&member["data"]["room"]["memberIds"]).contains(&bob),
        "{member}"
    );

    // LiveQuery: carol follows the room and a query that it enters when
    // renamed; bob follows the room too. dave is admitted, then the room renamed.
    let (mut cws, _) = tokio_tungstenite::connect_async(n.ws_url("/parse"))
        .await
        .unwrap();
    send(
        &mut cws,
        json!({"op": "connect", "applicationId": "test", "sessionToken": c}),
    )
    .await;
    assert_eq!(next(&mut cws).await["op"], "connected");
    send(&mut cws, json!({"op": "subscribe", "requestId": 1, "query": {"className": "Room", "where": {"objectId": room}}})).await;
    assert_eq!(next(&mut cws).await["op"], "subscribed");
    send(&mut cws, json!({"op": "subscribe", "requestId": 2, "query": {"className": "Room", "where": {"title": "secret 2"}}})).await;
    assert_eq!(next(&mut cws).await["op"], "subscribed");
    let (mut bws, _) = tokio_tungstenite::connect_async(n.ws_url("/parse"))
        .await
        .unwrap();
    send(
        &mut bws,
        json!({"op": "connect", "applicationId": "test", "sessionToken": b}),
    )
    .await;
    assert_eq!(next(&mut bws).await["op"], "connected");
    send(&mut bws, json!({"op": "subscribe", "requestId": 1, "query": {"className": "Room", "where": {"objectId": room}}})).await;
    assert_eq!(next(&mut bws).await["op"], "subscribed");

    n.ok(
        "PUT",
        &get,
        Some(&a),
        Some(json!({"members": {"__op": "AddUnique", "objects": [user_ptr(&dave)]}})),
    )
    .await;
    let ev = next(&mut bws).await;
    assert_eq!(ev["op"], "update", "{ev}");
    assert!(member_ids(&ev["object"]).contains(&dave), "{ev}");
    n.ok("PUT", &get, Some(&a), Some(json!({"title": "secret 2"})))
        .await;
    let ev = next(&mut bws).await;
    assert_eq!(
        (ev["op"].as_str(), ev["object"]["title"].as_str()),
        (Some("update"), Some("secret 2")),
        "{ev}"
    );
    // Carol: the rename (as update and as enter), never a member.
    let mut pushed = Vec::new();
    while let Some(ev) = next_within(&mut cws, Duration::from_millis(800)).await {
        pushed.push(ev);
    }
    assert!(
        pushed
            .iter()
            .any(|e| e["op"] == "enter" && e["requestId"] == 2),
        "the renamed room did not enter carol's query: {pushed:?}"
    );
    for ev in &pushed {
        for part in ["object", "original"] {
            assert!(
                ev.get(part).is_none_or(|o| o.get("members").is_none()),
                "a LiveQuery push shows carol the members: {ev}"
            );
        }
    }

    // Kicked, bob no longer sees who is in the room.
    n.ok(
        "PUT",
        &get,
        Some(&a),
        Some(json!({"members": {"__op": "Remove", "objects": [user_ptr(&bob)]}})),
    )
    .await;
    let after = n.ok("GET", &get, Some(&b), None).await;
    assert!(after.get("members").is_none(), "{after}");
}
