//! Voice driven through the local API by users logged in over HTTP, on two
//! real `tincan up` processes: each user joins the voice channel with
//! `POST /v1/voice/join`, the session speaks for that user (not the node's
//! own), and the listener's `/v1/voice/status` shows the link and the
//! speaker speaking.

use std::time::Duration;

use serde_json::{Value, json};
use tincan_tests::voice::write_speech;
use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually};

const LIMIT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request with a JSON body; returns (status, JSON body).
fn call(
    api: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    tincan_tests::api_request(api.trim_start_matches("http://"), method, path, token, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
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

#[test]
fn api_users_talk_through_their_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let speech = dir.path().join("speech.wav");
    write_speech(&speech, 3.0);
    let input = format!("wav-loop:{}", speech.display());
    let a_node = Tincan::new(&dir.path().join("a"), "pw-a");
    let b_node = Tincan::new(&dir.path().join("b"), "pw-b");
    a_node.ok(&["init", "--username", "node-a"]);
    b_node.ok(&["init", "--username", "node-b"]);
    let mut args = LOOPBACK_UP.to_vec();
    args.extend(["--gate", "open", "--output", "null"]);
    let mut a_args = args.clone();
    a_args.extend(["--input", &input]);
    let mut a = RunningNode::start(&a_node, &a_args);
    let a_mesh = a.mesh_addr();
    let a_api = a.api_url();
    let mut b_args = args.clone();
    b_args.extend(["--input", "null", "--bootstrap", &a_mesh]);
    let mut b = RunningNode::start(&b_node, &b_args);
    let b_api = b.api_url();

    let (ann, ann_token) = sign_up(&a_api, "ann");
    let (ben, ben_token) = sign_up(&b_api, "ben");
    let room = ok(
        &a_api,
        "POST",
        "/parse/classes/Room",
        Some(&ann_token),
        Some(json!({"title": "API voice"})),
    )["objectId"]
        .as_str()
        .unwrap()
        .to_owned();
    let channel = ok(
        &a_api,
        "POST",
        "/parse/classes/Channel",
        Some(&ann_token),
        Some(json!({"room": {"__type": "Pointer", "className": "Room", "objectId": room}, "name": "talk"})),
    )["objectId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Ben joins the room from his node (fetched from node A first).
    ok(
        &b_api,
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&ben_token),
        Some(json!({"members": {"__op": "AddUnique", "objects": [
            {"__type": "Pointer", "className": "_User", "objectId": ben}
        ]}})),
    );
    // Ann's node must know Ben's membership, and Ben's node the channel.
    eventually(LIMIT, || {
        let members = a_node.json(&["room", "show", &room])["members"]
            .as_array()?
            .len();
        let channels = b_node.json(&["channel", "list", &room]).as_array()?.len();
        (members == 2 && channels == 1).then_some(())
    })
    .expect("room state did not converge");

    let join = json!({"room": room, "channel": channel});
    ok(
        &b_api,
        "POST",
        "/v1/voice/join",
        Some(&ben_token),
        Some(join.clone()),
    );
    ok(
        &a_api,
        "POST",
        "/v1/voice/join",
        Some(&ann_token),
        Some(join),
    );
    // Ben's node hears Ann: a link to her, and Ann speaking.
    let status = eventually(LIMIT, || {
        let s = ok(&b_api, "GET", "/v1/voice/status", Some(&ben_token), None);
        let speaking = s["participants"]
            .as_array()?
            .iter()
            .any(|p| p["user"] == ann.as_str() && p["speaking"] == true);
        let linked = s["links"]
            .as_array()?
            .iter()
            .any(|l| l["user"] == ann.as_str());
        (speaking && linked).then_some(s)
    })
    .expect("ben's node never showed ann speaking over a link");
    println!("ben's voice status: {status}");
    assert_eq!(status["channel"], channel.as_str());
    // Without a session, no voice.
    let (code, _) = call(&b_api, "POST", "/v1/voice/leave", None, None);
    assert!((400..500).contains(&code), "{code}");
    ok(&b_api, "POST", "/v1/voice/leave", Some(&ben_token), None);
    ok(&a_api, "POST", "/v1/voice/leave", Some(&ann_token), None);
    assert!(b.stop().success());
    assert!(a.stop().success());
}
