//! The local API of a real `tincan up` against the other local processes
//! that do not play along: another account of the same node, a client that
//! names files as sound devices, and a web page reaching the API under a
//! foreign Host (DNS rebinding).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};
use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually};

const LIMIT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request to `api` with Host `host`; returns (status, JSON body).
fn call_as_host(
    api: &str,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let addr = api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         X-Parse-Application-Id: tincan\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head += &format!("X-Parse-Session-Token: {t}\r\n");
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn call(
    api: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let host = api.trim_start_matches("http://");
    call_as_host(api, host, method, path, token, body)
}

fn ok(api: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
    let (status, json) = call(api, method, path, token, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {json}"
    );
    json
}

fn sign_up(api: &str, name: &str) -> (String, String) {
    let r = ok(
        api,
        "POST",
        "/parse/users",
        None,
        Some(json!({"username": name, "password": "correct horse"})),
    );
    (
        r["objectId"].as_str().unwrap().to_owned(),
        r["sessionToken"].as_str().unwrap().to_owned(),
    )
}

/// Opens a WebSocket at `path` with Host `host`; returns the HTTP status
/// of the upgrade and, on 101, the first text message.
fn websocket_first_message(api: &str, host: &str, path: &str) -> (u16, Option<Value>) {
    let addr = api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    if status != 101 {
        return (status, None);
    }
    // One server frame: unmasked, FIN, text (the first message fits one frame).
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (status, serde_json::from_slice(&payload).ok())
}

fn start_voice_node(t: &Tincan) -> RunningNode {
    let mut args = LOOPBACK_UP.to_vec();
    args.extend(["--gate", "open", "--input", "null", "--output", "null"]);
    RunningNode::start(t, &args)
}

/// A room with a voice channel, owned by `token`'s user; returns (room, channel).
fn room_with_channel(api: &str, token: &str, invite_only: bool) -> (String, String) {
    let room = ok(
        api,
        "POST",
        "/parse/classes/Room",
        Some(token),
        Some(json!({"title": "voice", "inviteOnly": invite_only})),
    )["objectId"]
        .as_str()
        .unwrap()
        .to_owned();
    let channel = ok(
        api,
        "POST",
        "/parse/classes/Channel",
        Some(token),
        Some(json!({"room": {"__type": "Pointer", "className": "Room", "objectId": room}, "name": "talk"})),
    )["objectId"]
        .as_str()
        .unwrap()
        .to_owned();
    (room, channel)
}

fn in_channel(api: &str, token: &str, channel: &str) -> bool {
    ok(api, "GET", "/v1/voice/status", Some(token), None)["channel"] == channel
}

#[test]
fn file_devices_through_the_api_are_refused_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "node-owner"]);
    let mut node = start_voice_node(&t);
    let api = node.api_url();
    let (_ann, ann) = sign_up(&api, "ann");
    let (room, channel) = room_with_channel(&api, &ann, false);

    let victim = dir.path().join("victim.txt");
    let known: Vec<u8> = b"precious bytes, not a WAV file\n".repeat(64);
    std::fs::write(&victim, &known).unwrap();
    let v = victim.display().to_string();
    // Inputs first, then outputs, the one that names the file plainly last:
    // whatever an old node took last is what it opens on joining.
    let attempts = [
        json!({"input": format!("wav-loop:{v}")}),
        json!({"input": format!("wav:{v}")}),
        json!({"output": v}),
        json!({"output": format!("wav-loop:{v}")}),
        json!({"output": format!("wav:{v}")}),
    ];
    let mut answers = Vec::new();
    for body in &attempts {
        answers.push((
            body.clone(),
            call(
                &api,
                "PUT",
                "/v1/voice/devices",
                Some(&ann),
                Some(body.clone()),
            ),
        ));
    }
    // A listed name is accepted (and puts the input back to one that opens).
    ok(
        &api,
        "PUT",
        "/v1/voice/devices",
        Some(&ann),
        Some(json!({"input": "null"})),
    );
    // Joining opens the devices chosen: a file device accepted above would be written now.
    ok(
        &api,
        "POST",
        "/v1/voice/join",
        Some(&ann),
        Some(json!({"room": room, "channel": channel})),
    );
    eventually(LIMIT, || in_channel(&api, &ann, &channel).then_some(()))
        .expect("ann never got into voice");
    std::thread::sleep(Duration::from_millis(500));
    let after = std::fs::read(&victim).unwrap();
    let devices = ok(&api, "GET", "/v1/voice/devices", Some(&ann), None);
    println!("answers: {answers:?}; devices after: {devices}");
    assert!(
        after == known,
        "the file was overwritten through the API ({} bytes now, {} before); answers: {answers:?}",
        after.len(),
        known.len()
    );
    for (body, (status, v)) in &answers {
        assert!(
            (400..500).contains(status),
            "{body} was accepted: {status} {v}"
        );
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(v["code"].is_i64(), "{body}: not a Parse error: {v}");
        let names_file = body.to_string().contains("wav");
        assert!(
            !names_file || (msg.contains("command line") && msg.contains("--input")),
            "{body}: the refusal does not point to the command line: {v}"
        );
    }
    assert_eq!(devices["output"], "null", "{devices}");
    assert_eq!(devices["input"], "null", "{devices}");
    // The node's own names still work, in voice too.
    ok(
        &api,
        "PUT",
        "/v1/voice/devices",
        Some(&ann),
        Some(json!({"output": "null", "input": "null"})),
    );
    assert!(
        in_channel(&api, &ann, &channel),
        "the device change ended the session"
    );
    // The command line keeps its file devices: the node started with --output null,
    // and `tincan up --output wav:...` is what tests/tests/voice_processes.rs records with.
    assert!(node.stop().success());
}

#[test]
fn another_account_can_neither_drive_nor_read_the_voice_session() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "node-owner"]);
    let mut node = start_voice_node(&t);
    let api = node.api_url();
    let (_ann, ann) = sign_up(&api, "ann");
    let (bob_id, bob) = sign_up(&api, "bob");
    let (room, channel) = room_with_channel(&api, &ann, false);
    // Bob is a member: he could join this channel himself, were voice free.
    ok(
        &api,
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&bob),
        Some(json!({"members": {"__op": "AddUnique", "objects": [
            {"__type": "Pointer", "className": "_User", "objectId": bob_id}
        ]}})),
    );
    let join = json!({"room": room, "channel": channel});
    ok(
        &api,
        "POST",
        "/v1/voice/join",
        Some(&ann),
        Some(join.clone()),
    );
    eventually(LIMIT, || in_channel(&api, &ann, &channel).then_some(()))
        .expect("ann never got into voice");
    let before = ok(&api, "GET", "/v1/voice/status", Some(&ann), None);

    let attempts: Vec<(&str, &str, Option<Value>)> = vec![
        ("POST", "/v1/voice/leave", None),
        ("POST", "/v1/voice/mute", Some(json!({"muted": true}))),
        ("POST", "/v1/voice/deafen", Some(json!({"deafened": true}))),
        ("POST", "/v1/voice/ptt", Some(json!({"down": true}))),
        (
            "POST",
            "/v1/voice/volume",
            Some(json!({"user": "ab".repeat(32), "gain": 0.0})),
        ),
        ("PUT", "/v1/voice/devices", Some(json!({"output": "null"}))),
        ("POST", "/v1/voice/join", Some(join.clone())),
    ];
    let mut answers = Vec::new();
    for (method, path, body) in &attempts {
        answers.push((*path, call(&api, method, path, Some(&bob), body.clone())));
    }
    let bob_status = ok(&api, "GET", "/v1/voice/status", Some(&bob), None);
    let bob_node_status = ok(&api, "GET", "/v1/status", Some(&bob), None);
    let host = api.trim_start_matches("http://").to_owned();
    let (bob_ws, bob_event) =
        websocket_first_message(&api, &host, &format!("/v1/events?sessionToken={bob}"));
    let (ann_ws, ann_event) =
        websocket_first_message(&api, &host, &format!("/v1/events?sessionToken={ann}"));
    let after = ok(&api, "GET", "/v1/voice/status", Some(&ann), None);
    println!("bob's answers: {answers:?}");
    println!("bob's status: {bob_status}; ann's after: {after}");

    // Ann's session is as it was: still in the channel, not muted, not deafened.
    for k in ["room", "channel", "muted", "deafened", "push_to_talk"] {
        assert_eq!(
            after[k], before[k],
            "{k} changed: {before} -> {after}; bob's answers: {answers:?}"
        );
    }
    for (path, (status, v)) in &answers {
        assert!(
            (400..500).contains(status) && v["code"] == 119,
            "{path} by another account: {status} {v}"
        );
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("another account of this node is in voice"),
            "{path}: {v}"
        );
        if *path == "/v1/voice/join" {
            assert!(msg.contains("leave first"), "{v}");
        }
    }
    // Bob sees that he is not in voice, and nothing of ann's session.
    let hides = |s: &Value, what: &str| {
        assert_eq!(s["room"], Value::Null, "{what}: {s}");
        assert_eq!(s["channel"], Value::Null, "{what}: {s}");
        assert_eq!(s["participants"], json!([]), "{what}: {s}");
        assert_eq!(s["links"], json!([]), "{what}: {s}");
    };
    hides(&bob_status, "bob's /v1/voice/status");
    hides(&bob_node_status["voice"], "bob's /v1/status");
    assert_eq!(bob_ws, 101);
    let bob_event = bob_event.expect("bob's first event");
    assert_eq!(bob_event["type"], "status", "{bob_event}");
    hides(&bob_event, "bob's /v1/events");
    assert_eq!(ann_ws, 101);
    assert_eq!(
        ann_event.expect("ann's first event")["channel"],
        channel.as_str()
    );

    // Once ann leaves, voice is free: bob joins, and now ann is the other account.
    ok(&api, "POST", "/v1/voice/leave", Some(&ann), None);
    ok(&api, "POST", "/v1/voice/join", Some(&bob), Some(join));
    eventually(LIMIT, || in_channel(&api, &bob, &channel).then_some(()))
        .expect("bob never got into voice");
    let (status, v) = call(
        &api,
        "POST",
        "/v1/voice/mute",
        Some(&ann),
        Some(json!({"muted": true})),
    );
    assert!(
        (400..500).contains(&status) && v["code"] == 119,
        "{status} {v}"
    );
    ok(&api, "POST", "/v1/voice/leave", Some(&bob), None);
    assert!(node.stop().success());
}

#[test]
fn foreign_hosts_are_refused_and_the_nodes_own_names_work() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "node-owner"]);
    let mut node = start_voice_node(&t);
    let api = node.api_url();
    let (_ann, ann) = sign_up(&api, "ann");
    let port = api.rsplit(':').next().unwrap().to_owned();
    let gql = json!({"query": "{ me { username } }"});
    for host in [
        "evil.example:1337".to_owned(),
        format!("attacker.test:{port}"),
    ] {
        let (s, v) = call_as_host(&api, &host, "GET", "/parse/health", None, None);
        assert_eq!(s, 421, "REST with Host {host}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("localhost:{port}")),
            "{v}"
        );
        let (s, v) = call_as_host(
            &api,
            &host,
            "POST",
            "/graphql",
            Some(&ann),
            Some(gql.clone()),
        );
        assert_eq!(s, 421, "GraphQL with Host {host}: {v}");
        let (s, _) = call_as_host(&api, &host, "POST", "/v1/voice/leave", Some(&ann), None);
        assert_eq!(s, 421, "/v1 with Host {host}");
        let (s, _) = websocket_first_message(&api, &host, "/parse");
        assert_eq!(s, 421, "LiveQuery upgrade with Host {host}");
        let (s, _) =
            websocket_first_message(&api, &host, &format!("/v1/events?sessionToken={ann}"));
        assert_eq!(s, 421, "/v1/events upgrade with Host {host}");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (s, v) = call_as_host(&api, &host, "GET", "/parse/health", None, None);
        assert_eq!(s, 200, "{host}: {v}");
        let (s, v) = call_as_host(
            &api,
            &host,
            "POST",
            "/graphql",
            Some(&ann),
            Some(gql.clone()),
        );
        assert_eq!(
            (s, v["data"]["me"]["username"].as_str()),
            (200, Some("ann")),
            "{host}: {v}"
        );
        let (s, _) =
            websocket_first_message(&api, &host, &format!("/v1/events?sessionToken={ann}"));
        assert_eq!(s, 101, "{host}");
    }
    assert!(node.stop().success());
}
