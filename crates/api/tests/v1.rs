//! `/v1`: node status, peers, and the voice controls through a
//! `VoiceControl` that records what it was asked (the node's real voice
//! session lives in node/, which this crate cannot depend on).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fast_config, room_ptr, start};
use futures::StreamExt;
use serde_json::{Value, json};
use tincan_api::{Devices, LinkStats, Participant, VoiceControl, VoiceEvent, VoiceStatus};
use tincan_core::{ChannelId, RoomId, UserId, UserKey};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

struct Recorder {
    calls: Mutex<Vec<String>>,
    events: broadcast::Sender<VoiceEvent>,
    /// Who the session speaks for: set by join, cleared by leave.
    holder: Mutex<Option<UserId>>,
}

impl Recorder {
    fn new(events: broadcast::Sender<VoiceEvent>) -> Arc<Self> {
        Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            events,
            holder: Mutex::new(None),
        })
    }
}

impl VoiceControl for Recorder {
    fn join(&self, user: &UserKey, room: RoomId, channel: ChannelId) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("join {} {room} {channel}", user.id().to_hex()));
        *self.holder.lock().unwrap() = Some(user.id());
        Ok(())
    }
    fn leave(&self) -> Result<(), String> {
        self.calls.lock().unwrap().push("leave".into());
        match self.holder.lock().unwrap().take() {
            Some(_) => Ok(()),
            None => Err("not in a voice channel".into()),
        }
    }
    fn set_muted(&self, muted: bool) {
        self.calls.lock().unwrap().push(format!("muted {muted}"));
    }
    fn set_deafened(&self, deafened: bool) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("deafened {deafened}"));
    }
    fn push_to_talk(&self, down: bool) {
        self.calls.lock().unwrap().push(format!("ptt {down}"));
    }
    fn set_volume(&self, user: UserId, gain: f32) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("volume {} {gain}", &user.to_hex()[..8]));
        Ok(())
    }
    fn devices(&self) -> Devices {
        Devices {
            inputs: vec!["mic".into()],
            outputs: vec!["spk".into()],
            input: Some("mic".into()),
            output: None,
        }
    }
    fn choose_devices(
        &self,
        user: &UserKey,
        input: Option<String>,
        output: Option<String>,
    ) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!(
            "devices {} {input:?} {output:?}",
            &user.id().to_hex()[..8]
        ));
        Ok(())
    }
    fn session_user(&self) -> Option<UserId> {
        *self.holder.lock().unwrap()
    }
    fn status(&self) -> VoiceStatus {
        let user = *self.holder.lock().unwrap();
        VoiceStatus {
            user,
            room: user.map(|_| RoomId([9; 16])),
            muted: true,
            participants: vec![Participant {
                user: UserId([1; 32]),
                speaking: false,
                volume: 1.0,
            }],
            links: vec![LinkStats {
                peer: "12D3KooWtest".into(),
                user: None,
                path: "direct".into(),
                rtt_ms: 1.5,
                loss: 0.0,
                jitter_ms: 0.2,
                bitrate_kbps: 24.0,
            }],
            ..Default::default()
        }
    }
    fn events(&self) -> broadcast::Receiver<VoiceEvent> {
        self.events.subscribe()
    }
}

#[tokio::test]
async fn voice_routes_without_a_voice_session_answer_503() {
    let n = start(fast_config(), None).await;
    let (_, a) = n.sign_up("alice").await;
    let (s, v) = n
        .call(
            "POST",
            "/v1/voice/mute",
            Some(&a),
            Some(json!({"muted": true})),
        )
        .await;
    assert_eq!(s, 503);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("voice is not available"),
        "{v}"
    );
    let status = n.ok("GET", "/v1/status", Some(&a), None).await;
    assert_eq!(status["voice"], Value::Null);
    assert_eq!(status["username"], "alice");
    n.err("GET", "/v1/status", None, None, 206).await;
    let peers = n.ok("GET", "/v1/peers", Some(&a), None).await;
    assert_eq!(peers["peers"], json!([]));
}

#[tokio::test]
async fn voice_routes_reach_the_voice_session() {
    let (tx, _) = broadcast::channel(16);
    let rec = Recorder::new(tx.clone());
    let n = start(fast_config(), Some(rec.clone())).await;
    let (alice, a) = n.sign_up("alice").await;
    let room = n.create("Room", &a, json!({"title": "voice"})).await;
    let ch = n
        .create(
            "Channel",
            &a,
            json!({"room": room_ptr(&room), "name": "talk"}),
        )
        .await;

    n.ok(
        "POST",
        "/v1/voice/join",
        Some(&a),
        Some(json!({"room": room, "channel": ch})),
    )
    .await;
    n.err(
        "POST",
        "/v1/voice/join",
        Some(&a),
        Some(json!({"room": room, "channel": "00".repeat(16)})),
        101,
    )
    .await;
    n.err(
        "POST",
        "/v1/voice/join",
        Some(&a),
        Some(json!({"room": room})),
        111,
    )
    .await;
    n.ok(
        "POST",
        "/v1/voice/mute",
        Some(&a),
        Some(json!({"muted": true})),
    )
    .await;
    n.err(
        "POST",
        "/v1/voice/mute",
        Some(&a),
        Some(json!({"muted": "yes"})),
        111,
    )
    .await;
    n.ok(
        "POST",
        "/v1/voice/deafen",
        Some(&a),
        Some(json!({"deafened": false})),
    )
    .await;
    n.ok(
        "POST",
        "/v1/voice/ptt",
        Some(&a),
        Some(json!({"down": true})),
    )
    .await;
    n.ok(
        "POST",
        "/v1/voice/volume",
        Some(&a),
        Some(json!({"user": "ab".repeat(32), "gain": 0.5})),
    )
    .await;
    n.err(
        "POST",
        "/v1/voice/volume",
        Some(&a),
        Some(json!({"user": "ab".repeat(32), "gain": 99})),
        111,
    )
    .await;
    n.ok(
        "PUT",
        "/v1/voice/devices",
        Some(&a),
        Some(json!({"input": "mic", "output": null})),
    )
    .await;
    n.ok("POST", "/v1/voice/leave", Some(&a), None).await;
    // The session's refusal is a 4xx saying why.
    let e = n.err("POST", "/v1/voice/leave", Some(&a), None, 142).await;
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("not in a voice channel")
    );
    let devices = n.ok("GET", "/v1/voice/devices", Some(&a), None).await;
    assert_eq!(devices["inputs"], json!(["mic"]));
    let status = n.ok("GET", "/v1/voice/status", Some(&a), None).await;
    assert_eq!(status["muted"], true);
    assert_eq!(status["participants"][0]["user"], "01".repeat(32));
    assert_eq!(status["links"][0]["path"], "direct");

    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            // The session's own user joins, with their own key.
            format!("join {alice} {room} {ch}"),
            "muted true".into(),
            "deafened false".into(),
            "ptt true".into(),
            "volume abababab 0.5".into(),
            format!("devices {} Some(\"mic\") None", &alice[..8]),
            "leave".into(),
            "leave".into(),
        ]
    );

    // /v1/events: the status first, then events as they come (of the
    // caller's own session: alice joins again).
    n.ok(
        "POST",
        "/v1/voice/join",
        Some(&a),
        Some(json!({"room": room, "channel": ch})),
    )
    .await;
    n.err("GET", "/v1/events", None, None, 206).await;
    let url = n.ws_url(&format!("/v1/events?sessionToken={a}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = next(&mut ws).await;
    assert_eq!(first["type"], "status");
    tx.send(VoiceEvent::Speaking {
        user: UserId([2; 32]),
        speaking: true,
    })
    .unwrap();
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["type"].as_str(), ev["speaking"].as_bool()),
        (Some("speaking"), Some(true))
    );
    assert_eq!(ev["user"], "02".repeat(32));
}

async fn next(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn the_session_belongs_to_the_account_that_joined_it() {
    let (tx, _) = broadcast::channel(16);
    let rec = Recorder::new(tx.clone());
    let n = start(fast_config(), Some(rec.clone())).await;
    let (alice, a) = n.sign_up("alice").await;
    let (bob, b) = n.sign_up("bob").await;
    let room = n.create("Room", &a, json!({"title": "voice"})).await;
    let ch = n
        .create(
            "Channel",
            &a,
            json!({"room": room_ptr(&room), "name": "talk"}),
        )
        .await;
    n.ok(
        "PUT",
        &format!("/parse/classes/Room/{room}"),
        Some(&b),
        Some(json!({"members": {"__op": "AddUnique", "objects": [common::user_ptr(&bob)]}})),
    )
    .await;
    let join = json!({"room": room, "channel": ch});
    n.ok("POST", "/v1/voice/join", Some(&a), Some(join.clone()))
        .await;
    let calls_before = rec.calls.lock().unwrap().len();

    for (method, path, body) in [
        ("POST", "/v1/voice/leave", None),
        ("POST", "/v1/voice/mute", Some(json!({"muted": true}))),
        ("POST", "/v1/voice/deafen", Some(json!({"deafened": true}))),
        ("POST", "/v1/voice/ptt", Some(json!({"down": true}))),
        (
            "POST",
            "/v1/voice/volume",
            Some(json!({"user": alice, "gain": 0.0})),
        ),
        ("PUT", "/v1/voice/devices", Some(json!({"input": "mic"}))),
        ("POST", "/v1/voice/join", Some(join.clone())),
    ] {
        let e = n.err(method, path, Some(&b), body, 119).await;
        let msg = e["error"].as_str().unwrap();
        assert!(
            msg.contains("another account of this node is in voice"),
            "{path}: {e}"
        );
        if path.ends_with("join") {
            assert!(msg.contains("must leave first"), "{e}");
        }
    }
    assert_eq!(
        rec.calls.lock().unwrap().len(),
        calls_before,
        "a refused control reached the session: {:?}",
        rec.calls.lock().unwrap()
    );

    // Status: alice sees her session; bob sees that he is not in voice.
    let mine = n.ok("GET", "/v1/voice/status", Some(&a), None).await;
    assert_eq!(mine["user"], alice.as_str());
    assert_eq!(mine["room"], "09".repeat(16));
    assert_eq!(mine["links"][0]["path"], "direct");
    let theirs = n.ok("GET", "/v1/voice/status", Some(&b), None).await;
    let hidden = json!({
        "user": null, "held_by_another_account": true, "room": null, "channel": null,
        "muted": false, "deafened": false, "push_to_talk": false,
        "participants": [], "links": [],
    });
    assert_eq!(theirs, hidden);
    let node = n.ok("GET", "/v1/status", Some(&b), None).await;
    assert_eq!(node["voice"], hidden);

    // Events: bob gets statuses as he may see them, and no speaking events.
    let mut bws =
        tokio_tungstenite::connect_async(n.ws_url(&format!("/v1/events?sessionToken={b}")))
            .await
            .unwrap()
            .0;
    let mut aws =
        tokio_tungstenite::connect_async(n.ws_url(&format!("/v1/events?sessionToken={a}")))
            .await
            .unwrap()
            .0;
    assert_eq!(next(&mut bws).await, {
        let mut h = hidden.clone();
        h["type"] = "status".into();
        h
    });
    assert_eq!(next(&mut aws).await["room"], "09".repeat(16));
    tx.send(VoiceEvent::Speaking {
        user: UserId([2; 32]),
        speaking: true,
    })
    .unwrap();
    tx.send(VoiceEvent::Status(rec.status())).unwrap();
    assert_eq!(next(&mut aws).await["type"], "speaking");
    assert_eq!(next(&mut aws).await["user"], alice.as_str());
    let ev = next(&mut bws).await;
    assert_eq!(
        (ev["type"].as_str(), ev["room"].is_null()),
        (Some("status"), true),
        "{ev}"
    );
    assert_eq!(ev["held_by_another_account"], true, "{ev}");

    // Once alice leaves, bob may join.
    n.ok("POST", "/v1/voice/leave", Some(&a), None).await;
    n.ok("POST", "/v1/voice/join", Some(&b), Some(join)).await;
    assert_eq!(
        n.ok("GET", "/v1/voice/status", Some(&b), None).await["user"],
        bob.as_str()
    );
}

#[tokio::test]
async fn devices_are_chosen_by_the_nodes_own_names_only() {
    let (tx, _) = broadcast::channel(16);
    let rec = Recorder::new(tx);
    let n = start(fast_config(), Some(rec.clone())).await;
    let (_, a) = n.sign_up("alice").await;
    for (body, code, says) in [
        (json!({"output": "wav:/tmp/victim"}), 119, "command line"),
        (
            json!({"input": "wav-loop:/etc/passwd"}),
            119,
            "command line",
        ),
        (json!({"output": "/tmp/victim"}), 119, "command line"),
        (json!({"output": "../victim.wav"}), 119, "command line"),
        (
            json!({"input": "mic", "output": "wav:/tmp/victim"}),
            119,
            "command line",
        ),
        (json!({"input": "no such mic"}), 142, "mic"),
        (json!({"output": "mic"}), 142, "spk"),
        (json!({"input": ""}), 142, "mic"),
    ] {
        let e = n
            .err(
                "PUT",
                "/v1/voice/devices",
                Some(&a),
                Some(body.clone()),
                code,
            )
            .await;
        assert!(e["error"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    assert_eq!(*rec.calls.lock().unwrap(), Vec::<String>::new());
    n.ok(
        "PUT",
        "/v1/voice/devices",
        Some(&a),
        Some(json!({"input": "mic", "output": "spk"})),
    )
    .await;
    assert_eq!(rec.calls.lock().unwrap().len(), 1);
}
