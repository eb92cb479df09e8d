//! LiveQuery and GraphQL subscriptions against a real store, over real
//! WebSockets on loopback.

mod common;

use std::time::Duration;

use common::{fast_config, room_ptr, start, user_ptr};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON text message, within 10 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")
            .expect("socket closed")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Whether another message arrives within `wait`.
async fn quiet(ws: &mut Ws, wait: Duration) -> Option<Value> {
    match tokio::time::timeout(wait, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(serde_json::from_str(t.as_str()).unwrap()),
        _ => None,
    }
}

#[tokio::test]
async fn livequery_pushes_create_update_enter_leave_delete() {
    let n = start(fast_config(), None).await;
    let (_alice, a) = n.sign_up("alice").await;
    let (bob, b) = n.sign_up("bob").await;
    let room = n.create("Room", &a, json!({"title": "live"})).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(n.ws_url("/parse"))
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"op": "connect", "applicationId": "test", "sessionToken": b}),
    )
    .await;
    let c = next(&mut ws).await;
    assert_eq!(c["op"], "connected", "{c}");
    // Channels of the room; and, separately, channels named "stage".
    send(&mut ws, json!({"op": "subscribe", "requestId": 1, "query": {"className": "Channel", "where": {"room": room_ptr(&room)}}})).await;
    assert_eq!(next(&mut ws).await["op"], "subscribed");
    send(&mut ws, json!({"op": "subscribe", "requestId": 2, "query": {"className": "Channel", "where": {"name": "stage"}, "keys": ["name"]}})).await;
    assert_eq!(next(&mut ws).await["op"], "subscribed");

    let ch = n
        .create(
            "Channel",
            &a,
            json!({"room": room_ptr(&room), "name": "general"}),
        )
        .await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["op"].as_str(), ev["requestId"].as_i64()),
        (Some("create"), Some(1)),
        "{ev}"
    );
    assert_eq!(ev["object"]["objectId"], ch);
    assert_eq!(ev["object"]["className"], "Channel");

    // Renamed into "stage": update for 1, enter for 2 (keys applied).
    n.ok(
        "PUT",
        &format!("/parse/classes/Channel/{ch}"),
        Some(&a),
        Some(json!({"name": "stage"})),
    )
    .await;
    let mut got = [next(&mut ws).await, next(&mut ws).await];
    got.sort_by_key(|e| e["requestId"].as_i64());
    assert_eq!(got[0]["op"], "update");
    assert_eq!(got[0]["original"]["name"], "general");
    assert_eq!(got[0]["object"]["name"], "stage");
    assert_eq!(got[1]["op"], "enter");
    assert!(
        got[1]["object"].get("description").is_none(),
        "keys not applied: {}",
        got[1]
    );

    // Renamed away: update for 1, leave for 2.
    n.ok(
        "PUT",
        &format!("/parse/classes/Channel/{ch}"),
        Some(&a),
        Some(json!({"name": "lobby"})),
    )
    .await;
    let mut got = [next(&mut ws).await, next(&mut ws).await];
    got.sort_by_key(|e| e["requestId"].as_i64());
    assert_eq!(
        (got[0]["op"].as_str(), got[1]["op"].as_str()),
        (Some("update"), Some("leave"))
    );

    // A refused write pushes nothing.
    n.err(
        "DELETE",
        &format!("/parse/classes/Channel/{ch}"),
        Some(&b),
        None,
        119,
    )
    .await;
    assert_eq!(quiet(&mut ws, Duration::from_millis(300)).await, None);

    n.ok(
        "DELETE",
        &format!("/parse/classes/Channel/{ch}"),
        Some(&a),
        None,
    )
    .await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["op"].as_str(), ev["requestId"].as_i64()),
        (Some("delete"), Some(1)),
        "{ev}"
    );

    // The "query" op answers with what the subscription matches now.
    send(&mut ws, json!({"op": "query", "requestId": 1})).await;
    let r = next(&mut ws).await;
    assert_eq!(
        (r["op"].as_str(), r["requestId"].as_i64()),
        (Some("result"), Some(1)),
        "{r}"
    );
    assert_eq!(r["results"], json!([]));

    // Unsubscribed: no more events for 1.
    send(&mut ws, json!({"op": "unsubscribe", "requestId": 1})).await;
    assert_eq!(next(&mut ws).await["op"], "unsubscribed");
    n.create(
        "Channel",
        &a,
        json!({"room": room_ptr(&room), "name": "other"}),
    )
    .await;
    assert_eq!(quiet(&mut ws, Duration::from_millis(300)).await, None);

    // Garbage gets an error, and the connection lives on.
    ws.send(Message::Text("{nope".into())).await.unwrap();
    assert_eq!(next(&mut ws).await["op"], "error");
    send(
        &mut ws,
        json!({"op": "subscribe", "requestId": 3, "query": {"className": "Nope"}}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(
        (
            e["op"].as_str(),
            e["code"].as_i64(),
            e["requestId"].as_i64()
        ),
        (Some("error"), Some(103), Some(3))
    );
    let _ = bob;
}

#[tokio::test]
async fn livequery_checks_read_rules_on_the_push_path() {
    let n = start(fast_config(), None).await;
    let (_alice, a) = n.sign_up("alice").await;
    let (bob, b) = n.sign_up("bob").await;
    let room = n
        .create("Room", &a, json!({"title": "secret", "inviteOnly": true}))
        .await;

    let (mut ws, _) = tokio_tungstenite::connect_async(n.ws_url("/parse"))
        .await
        .unwrap();
    send(&mut ws, json!({"op": "connect", "applicationId": "test"})).await;
    assert_eq!(next(&mut ws).await["op"], "connected");
    // No session: refused.
    send(
        &mut ws,
        json!({"op": "subscribe", "requestId": 1, "query": {"className": "RoomLog", "where": {}}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["code"], 206);
    send(&mut ws, json!({"op": "subscribe", "requestId": 1, "sessionToken": b, "query": {"className": "RoomLog", "where": {}}})).await;
    assert_eq!(next(&mut ws).await["op"], "subscribed");

    send(&mut ws, json!({"op": "subscribe", "requestId": 2, "sessionToken": b, "query": {"className": "Channel", "where": {"room": room_ptr(&room)}}})).await;
    assert_eq!(next(&mut ws).await["op"], "subscribed");
    n.create(
        "Channel",
        &a,
        json!({"room": room_ptr(&room), "name": "hidden"}),
    )
    .await;

    // Bob is not a member of the invite-only room: alice's channel and entry are not pushed to him.
    n.create(
        "RoomLog",
        &a,
        json!({"room": room_ptr(&room), "action": "private"}),
    )
    .await;
    assert_eq!(quiet(&mut ws, Duration::from_millis(400)).await, None);
    // Admitted, the channel enters his subscription, and he gets the next entry.
    n.ok(
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&a),
        Some(json!({"members": {"__op": "AddUnique", "objects": [user_ptr(&bob)]}})),
    )
    .await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (
            ev["op"].as_str(),
            ev["requestId"].as_i64(),
            ev["object"]["name"].as_str()
        ),
        (Some("enter"), Some(2), Some("hidden")),
        "{ev}"
    );
    n.create(
        "RoomLog",
        &a,
        json!({"room": room_ptr(&room), "action": "welcome"}),
    )
    .await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["op"].as_str(), ev["object"]["action"].as_str()),
        (Some("create"), Some("welcome")),
        "{ev}"
    );

    // Logged out: pushes stop.
    n.ok("POST", "/parse/logout", Some(&b), None).await;
    n.create(
        "RoomLog",
        &a,
        json!({"room": room_ptr(&room), "action": "after logout"}),
    )
    .await;
    assert_eq!(quiet(&mut ws, Duration::from_millis(400)).await, None);
}

#[tokio::test]
async fn livequery_tells_a_lagging_client_and_resyncs() {
    let n = start(fast_config(), None).await;
    let login = n
        .ok(
            "GET",
            "/parse/login?username=node&password=node-pw",
            None,
            None,
        )
        .await;
    let token = login["sessionToken"].as_str().unwrap().to_owned();
    let room = n.create("Room", &token, json!({"title": "busy"})).await;
    let rid = tincan_core::RoomId::from_hex(&room).unwrap();
    n.create(
        "Channel",
        &token,
        json!({"room": room_ptr(&room), "name": "before"}),
    )
    .await;

    let (mut ws, _) = tokio_tungstenite::connect_async(n.ws_url("/parse"))
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"op": "connect", "applicationId": "test", "sessionToken": token}),
    )
    .await;
    assert_eq!(next(&mut ws).await["op"], "connected");
    send(&mut ws, json!({"op": "subscribe", "requestId": 1, "query": {"className": "Channel", "where": {"room": room_ptr(&room)}}})).await;
    assert_eq!(next(&mut ws).await["op"], "subscribed");

    // One group commit of more changes than the feed buffers for a
    // subscriber (4096): they reach the feed at once, so this client lags.
    let base = n.store.hlc_high().unwrap().0 + 1;
    let records: Vec<_> = (0..5000u64)
        .map(|i| {
            let id = tincan_core::ChannelId::random().unwrap();
            tincan_core::make::channel(
                &n.node_key,
                tincan_core::Hlc(base + i),
                rid,
                id,
                &format!("c{i}"),
                "",
                vec![],
            )
            .unwrap()
        })
        .collect();
    let outcomes = n.store.apply_batch(records).unwrap();
    assert!(outcomes.iter().all(Result::is_ok));

    let mut lagged = false;
    let mut entered = 0;
    let mut created = 0;
    while let Some(ev) = quiet(&mut ws, Duration::from_secs(3)).await {
        match ev["op"].as_str() {
            Some("create") => created += 1,
            Some("enter") => entered += 1,
            Some("error") => {
                assert!(ev["error"].as_str().unwrap().contains("behind"), "{ev}");
                assert!(ev.get("requestId").is_none());
                lagged = true;
            }
            other => panic!("unexpected {other:?}: {ev}"),
        }
    }
    assert!(
        lagged,
        "5000 changes at once did not overflow a feed of 4096"
    );
    // Every new channel is accounted for: pushed before the lag was seen, or
    // entered by the resync (and none twice).
    assert_eq!(n.store.channels(&rid).unwrap().len(), 5001);
    assert_eq!(
        created + entered,
        5000,
        "created {created}, entered {entered}"
    );
}

#[tokio::test]
async fn graphql_queries_mutations_and_a_subscription() {
    let n = start(fast_config(), None).await;
    let (_alice, a) = n.sign_up("alice").await;
    let (_bob, b) = n.sign_up("bob").await;
    let gql = |token: &str, query: String| {
        n.http
            .post(format!("{}/graphql", n.url))
            .header("X-Parse-Session-Token", token.to_owned())
            .json(&json!({"query": query}))
            .send()
    };
    let r: Value = gql(
        &a,
        "mutation { createRoom(title: \"gql room\") { objectId title } }".into(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let room = r["data"]["createRoom"]["objectId"]
        .as_str()
        .unwrap()
        .to_owned();
    let r: Value = gql(&a, format!("mutation {{ createChannel(room: \"{room}\", name: \"voice\") {{ objectId name roomId }} }}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ch = r["data"]["createChannel"]["objectId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Bob may not delete it: the Parse code is in the error's extensions.
    let r: Value = gql(&b, format!("mutation {{ deleteChannel(id: \"{ch}\") }}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["errors"][0]["extensions"]["code"], 119, "{r}");
    let r: Value = gql(
        &b,
        format!("{{ room(id: \"{room}\") {{ title channels {{ name }} }} me {{ username }} }}"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(r["data"]["room"]["channels"][0]["name"], "voice", "{r}");
    assert_eq!(r["data"]["me"]["username"], "bob");
    // Without a session: an error with 206.
    let r: Value = n
        .http
        .post(format!("{}/graphql", n.url))
        .json(&json!({"query": "{ me { username } }"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["errors"][0]["extensions"]["code"], 206, "{r}");
    // GraphiQL for a browser.
    let page = n
        .http
        .get(format!("{}/graphql", n.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("graphiql"), "{page:.200}");

    // Subscription over graphql-transport-ws: bob joins and follows the log.
    let r: Value = gql(
        &b,
        format!("mutation {{ joinRoom(id: \"{room}\") {{ memberIds }} }}"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        r["data"]["joinRoom"]["memberIds"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    let mut req = n.ws_url("/graphql").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"sessionToken": b}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({"id": "1", "type": "subscribe", "payload": {"query": format!("subscription {{ roomLogCreated(room: \"{room}\") {{ action userId }} }}")}}),
    )
    .await;
    // Subscriptions start asynchronously: write until the first event shows.
    let mut got = None;
    for i in 0..50 {
        gql(
            &a,
            format!(
                "mutation {{ addRoomLog(room: \"{room}\", action: \"tick {i}\") {{ objectId }} }}"
            ),
        )
        .await
        .unwrap();
        if let Some(v) = quiet(&mut ws, Duration::from_millis(200)).await {
            got = Some(v);
            break;
        }
    }
    let ev = got.expect("no subscription event");
    assert_eq!(ev["type"], "next", "{ev}");
    assert!(
        ev["payload"]["data"]["roomLogCreated"]["action"]
            .as_str()
            .unwrap()
            .starts_with("tick")
    );
}

#[tokio::test]
async fn livequery_room_updates_when_members_change() {
    let n = start(fast_config(), None).await;
    let (_alice, a) = n.sign_up("alice").await;
    let (bob, b) = n.sign_up("bob").await;
    let room = n.create("Room", &a, json!({"title": "club"})).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(n.ws_url("/parse/"))
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"op": "connect", "applicationId": "test", "sessionToken": a}),
    )
    .await;
    assert_eq!(next(&mut ws).await["op"], "connected");
    send(&mut ws, json!({"op": "subscribe", "requestId": 7, "query": {"className": "Room", "where": {"objectId": room}}})).await;
    assert_eq!(next(&mut ws).await["op"], "subscribed");

    n.ok(
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&b),
        Some(json!({"members": {"__op": "AddUnique", "objects": [user_ptr(&bob)]}})),
    )
    .await;
    let ev = next(&mut ws).await;
    assert_eq!(ev["op"], "update", "{ev}");
    assert!(
        ev["object"]["members"]
            .as_array()
            .unwrap()
            .contains(&user_ptr(&bob))
    );
    assert!(
        !ev["original"]["members"]
            .as_array()
            .unwrap()
            .contains(&user_ptr(&bob))
    );

    n.ok(
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&a),
        Some(json!({"title": "club 2"})),
    )
    .await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["op"].as_str(), ev["object"]["title"].as_str()),
        (Some("update"), Some("club 2"))
    );
    n.ok(
        "DELETE",
        &format!("/parse/classes/Room/{room}"),
        Some(&a),
        None,
    )
    .await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["op"].as_str(), ev["object"]["objectId"].as_str()),
        (Some("delete"), Some(room.as_str()))
    );
}

#[tokio::test]
async fn livequery_limits_a_flooding_client() {
    let n = start(fast_config(), None).await;
    let (_alice, a) = n.sign_up("alice").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(n.ws_url("/parse"))
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"op": "connect", "applicationId": "test", "sessionToken": a}),
    )
    .await;
    assert_eq!(next(&mut ws).await["op"], "connected");
    for i in 0..150 {
        send(&mut ws, json!({"op": "subscribe", "requestId": 1, "query": {"className": "Room", "where": {"n": i}}})).await;
    }
    let mut limited = 0;
    for _ in 0..150 {
        let m = next(&mut ws).await;
        if m["code"] == 155 {
            limited += 1;
        }
    }
    assert!(
        limited >= 40,
        "only {limited} of 150 messages at once were limited (burst 100)"
    );
    // The connection still works afterwards.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut ws, json!({"op": "unsubscribe", "requestId": 1})).await;
    assert_eq!(next(&mut ws).await["op"], "unsubscribed");
}
