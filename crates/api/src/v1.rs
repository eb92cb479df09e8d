//! `/v1`: our own routes (not Parse): node status, mesh peers, voice
//! controls, and `/v1/events`, a WebSocket of voice events. Every route
//! needs a session (`X-Parse-Session-Token`, or `?sessionToken=` on the
//! WebSocket, which browsers open without custom headers). Errors have
//! Parse's `{"code","error"}` form.
//!
//! The node's one voice session belongs to the account that joined it.
//! While it is in voice, every other account's join, leave, mute, deafen,
//! push-to-talk, volume and device change is refused (119), and its
//! status, `/v1/status`, `/v1/peers` and `/v1/events` show it not in voice
//! ([`VoiceStatus::seen_by`]). `/v1/voice/presence` follows the room's
//! read rule instead: who is in which channel is what the room's members
//! announce to the room, so whoever may read the room sees it, this node's
//! session included. Devices are chosen only by the names the node lists;
//! files (`wav:`, `wav-loop:`, paths) are for `tincan up --input/--output`.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::ApiState;
use crate::accounts::Session;
use crate::error::{ApiResult, ParseError, code};
use crate::model;
use crate::rest::{header_token, json_response};
use crate::voice::{VoiceControl, VoiceEvent, VoiceStatus};
use tincan_core::UserId;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/rooms/nearby", get(nearby_rooms))
        .route("/v1/rooms/invite", post(room_invite))
        .route("/v1/rooms/accept", post(room_accept))
        .route("/v1/voice/status", get(voice_status))
        .route("/v1/voice/presence", post(voice_presence))
        .route("/v1/voice/join", post(voice_join))
        .route("/v1/voice/leave", post(voice_leave))
        .route("/v1/voice/mute", post(voice_mute))
        .route("/v1/voice/deafen", post(voice_deafen))
        .route("/v1/voice/ptt", post(voice_ptt))
        .route("/v1/voice/volume", post(voice_volume))
        .route(
            "/v1/voice/devices",
            get(voice_devices).put(voice_choose_devices),
        )
        .route("/v1/events", get(events))
}

struct V1 {
    state: ApiState,
    body: Map<String, Value>,
}

async fn read(state: &ApiState, req: Request) -> ApiResult<(Session, V1)> {
    let (parts, body) = req.into_parts();
    let token = header_token(&parts.headers).or_else(|| query_token(&parts.uri));
    let session = match token {
        Some(t) => state.inner.accounts.session(&t)?,
        None => {
            return Err(ParseError::new(
                code::SESSION_MISSING,
                "this call needs a session: log in (POST /parse/login) and send its sessionToken as X-Parse-Session-Token",
            ));
        }
    };
    let limit = state.inner.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ParseError::new(
            code::OBJECT_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
    })?;
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => m,
            _ => return Err(ParseError::invalid_json("the body must be a JSON object")),
        }
    };
    Ok((
        session,
        V1 {
            state: state.clone(),
            body,
        },
    ))
}

fn query_token(uri: &axum::http::Uri) -> Option<String> {
    let q: Query<Vec<(String, String)>> = Query::try_from_uri(uri).ok()?;
    q.0.into_iter()
        .find(|(k, _)| k == "sessionToken")
        .map(|(_, v)| v)
}

fn reply(r: ApiResult<Value>) -> Response {
    match r {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => e.into_response(),
    }
}

fn no_voice() -> Response {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "code": code::INTERNAL_SERVER_ERROR,
            "error": "voice is not available on this node: it runs without a voice session (start it with voice enabled)",
        }),
    )
}

fn voice_error(e: String) -> ParseError {
    ParseError::new(
        code::VALIDATION_ERROR,
        format!("the voice session refused: {e}"),
    )
}

/// Runs `act` on the voice session for `caller` if the session is free or
/// theirs: one account's control at a time (the check and the act under one
/// lock), so two accounts cannot both think they hold it.
fn as_holder<T>(
    state: &ApiState,
    v: &dyn VoiceControl,
    caller: &UserId,
    joining: bool,
    act: impl FnOnce() -> ApiResult<T>,
) -> ApiResult<T> {
    let _one_at_a_time = state
        .inner
        .voice_control
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match v.session_user() {
        Some(holder) if holder != *caller => Err(ParseError::forbidden(if joining {
            "another account of this node is in voice: the node has one voice session, and the other account must leave first"
        } else {
            "another account of this node is in voice: only the account that joined can change the session"
        })),
        _ => act(),
    }
}

/// A device name the node lists, or a Parse error that says what to use.
fn listed_device(kind: &str, name: &str, listed: &[String]) -> ApiResult<()> {
    if listed.iter().any(|d| d == name) {
        return Ok(());
    }
    let file = name.starts_with("wav:")
        || name.starts_with("wav-loop:")
        || name.contains('/')
        || name.contains('\\')
        || name.starts_with('.')
        || name.starts_with('~');
    if file {
        return Err(ParseError::forbidden(format!(
            "{kind} {name:?} names a file: files are for the command line (`tincan up --input/--output wav:PATH`), not the API; choose one of the devices GET /v1/voice/devices lists"
        )));
    }
    Err(ParseError::new(
        code::VALIDATION_ERROR,
        format!(
            "there is no {kind} device {name:?} on this node: choose one of {}",
            listed.join(", ")
        ),
    ))
}

fn bool_field(body: &Map<String, Value>, name: &str) -> ApiResult<bool> {
    body.get(name).and_then(Value::as_bool).ok_or_else(|| {
        ParseError::incorrect_type(format!("the body needs {{\"{name}\": true|false}}"))
    })
}

fn str_field<'a>(body: &'a Map<String, Value>, name: &str) -> ApiResult<&'a str> {
    body.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ParseError::incorrect_type(format!("the body needs \"{name}\" (a string)")))
}

macro_rules! with_session {
    ($state:expr, $req:expr) => {
        match read(&$state, $req).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        }
    };
}

macro_rules! with_voice {
    ($state:expr) => {
        match $state.inner.voice.clone() {
            Some(v) => v,
            None => return no_voice(),
        }
    };
}

async fn status(State(state): State<ApiState>, req: Request) -> Response {
    let (s, _) = with_session!(state, req);
    let inner = &state.inner;
    let mut out = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "user": s.user.to_hex(),
        "username": s.username,
        "nodeUser": inner.accounts.node_user().to_hex(),
        "uptimeS": inner.started.elapsed().as_secs(),
        "localAccounts": inner.accounts.local_users().len(),
        "voice": inner.voice.as_ref().map(|v| serde_json::to_value(v.status().seen_by(&s.user)).unwrap_or(Value::Null)),
    });
    if let Some(mesh) = &inner.mesh {
        out["peerId"] = json!(mesh.peer_id().to_string());
        if let Ok(p) = mesh.peers().await {
            out["peers"] = json!(p.len());
        }
        if let Ok(st) = mesh.stats().await {
            out["gossip"] = json!({
                "accepted": st.gossip_accepted,
                "rejected": st.gossip_rejected,
                "syncedRecords": st.synced_records,
            });
        }
    } else {
        out["peerId"] = Value::Null;
        out["peers"] = json!(0);
    }
    reply(Ok(out))
}

/// The open rooms of the nodes on this LAN (mDNS), asked now; at most
/// 1.5 s. Each entry's Room record was signed by its owner and checked.
async fn nearby_rooms(State(state): State<ApiState>, req: Request) -> Response {
    let _ = with_session!(state, req);
    let Some(mesh) = &state.inner.mesh else {
        return reply(Ok(json!({"rooms": []})));
    };
    let rooms = mesh
        .nearby_rooms(std::time::Duration::from_millis(1500))
        .await
        .unwrap_or_default();
    let list: Vec<Value> = rooms
        .iter()
        .map(|r| {
            json!({
                "objectId": r.id.to_hex(),
                "title": r.title,
                "owner": r.owner.to_hex(),
                "ownerFingerprint": r.owner.fingerprint().to_string(),
                "ownerName": r.owner_name,
                "members": r.members,
                "via": r.via.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    reply(Ok(json!({"rooms": list})))
}

/// The invite link of a room the caller can read: with the room's locator
/// secret for an invite-only room (what lets an invitee's node find and
/// sync it) and this node's addresses. Invite the user first (Room
/// `members`), then send them the link.
async fn room_invite(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let r = async {
        let room = model::room_id(str_field(&call.body, "room")?)?;
        let store = &state.inner.store;
        let visible = match store.room(&room)? {
            Some(rv) => model::can_read_room(store, &rv, &s.user)?,
            None => false,
        };
        if !visible {
            return Err(ParseError::not_found(format!(
                "no Room {room} visible to you on this node"
            )));
        }
        let Some(mesh) = &state.inner.mesh else {
            return Err(ParseError::new(
                code::INTERNAL_SERVER_ERROR,
                "an invite link names this node's addresses: the mesh is not running",
            ));
        };
        let invite = mesh
            .invite(room)
            .await
            .map_err(|e| ParseError::forbidden(e.to_string()))?;
        Ok(json!({"room": room.to_hex(), "link": invite.to_link()}))
    }
    .await;
    reply(r)
}

/// Accepts an invite link: this node keeps its locator, dials the inviter
/// and follows the room. The room arrives by sync; then join it (Room
/// `members`) once the owner's grant has reached you.
async fn room_accept(State(state): State<ApiState>, req: Request) -> Response {
    let (_, call) = with_session!(state, req);
    let r = async {
        let link = str_field(&call.body, "link")?;
        let invite = tincan_core::invite::Invite::parse(link)
            .map_err(|e| ParseError::new(code::INVALID_JSON, format!("not an invite link: {e}")))?;
        let Some(mesh) = &state.inner.mesh else {
            return Err(ParseError::new(
                code::INTERNAL_SERVER_ERROR,
                "accepting an invite needs the mesh, which is not running",
            ));
        };
        mesh.accept_invite(&invite)
            .await
            .map_err(|e| ParseError::new(code::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(json!({"room": invite.room.to_hex()}))
    }
    .await;
    reply(r)
}

async fn peers(State(state): State<ApiState>, req: Request) -> Response {
    let (s, _) = with_session!(state, req);
    let mut list = Vec::new();
    if let Some(mesh) = &state.inner.mesh
        && let Ok(peers) = mesh.peers().await
    {
        // The voice links of the caller's own session only.
        let links = state
            .inner
            .voice
            .as_ref()
            .map(|v| v.status().seen_by(&s.user).links)
            .unwrap_or_default();
        for p in peers {
            let id = p.peer_id.to_string();
            let link = links.iter().find(|l| l.peer == id);
            list.push(json!({
                "peerId": id,
                "address": p.address.to_string(),
                "path": p.path.as_str(),
                "rttMs": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                "score": p.score,
                "agent": p.agent,
                "voice": link.map(|l| serde_json::to_value(l).unwrap_or(Value::Null)),
            }));
        }
    }
    reply(Ok(json!({"peers": list})))
}

async fn voice_status(State(state): State<ApiState>, req: Request) -> Response {
    let (s, _) = with_session!(state, req);
    let v = with_voice!(state);
    reply(serde_json::to_value(v.status().seen_by(&s.user)).map_err(ParseError::internal))
}

async fn voice_presence(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let v = with_voice!(state);
    let r = (|| {
        let room = model::room_id(str_field(&call.body, "room")?)?;
        let store = &call.state.inner.store;
        let visible = match store.room(&room)? {
            Some(rv) => model::can_read_room(store, &rv, &s.user)?,
            None => false,
        };
        if !visible {
            return Err(ParseError::not_found(format!(
                "no Room {room} visible to you on this node"
            )));
        }
        let channels = serde_json::to_value(v.presence(room)).map_err(ParseError::internal)?;
        Ok(json!({ "room": room.to_hex(), "channels": channels }))
    })();
    reply(r)
}

async fn voice_join(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let v = with_voice!(state);
    let r = (|| {
        let room = model::room_id(str_field(&call.body, "room")?)?;
        let channel = model::channel_id(str_field(&call.body, "channel")?)?;
        let store = &call.state.inner.store;
        let Some(rv) = store.room(&room)? else {
            return Err(ParseError::not_found(format!(
                "no Room {room} on this node"
            )));
        };
        if !model::can_read_room(store, &rv, &s.user)? || store.channel(&room, &channel)?.is_none()
        {
            return Err(ParseError::not_found(format!(
                "no Channel {channel} in room {room} visible to you"
            )));
        }
        as_holder(&state, &*v, &s.user, true, || {
            v.join(&s.key, room, channel).map_err(voice_error)
        })?;
        Ok(json!({}))
    })();
    reply(r)
}

async fn voice_leave(State(state): State<ApiState>, req: Request) -> Response {
    let (s, _) = with_session!(state, req);
    let v = with_voice!(state);
    reply(
        as_holder(&state, &*v, &s.user, false, || {
            v.leave().map_err(voice_error)
        })
        .map(|_| json!({})),
    )
}

async fn voice_mute(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let v = with_voice!(state);
    reply(bool_field(&call.body, "muted").and_then(|m| {
        as_holder(&state, &*v, &s.user, false, || {
            v.set_muted(m);
            Ok(json!({}))
        })
    }))
}

async fn voice_deafen(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let v = with_voice!(state);
    reply(bool_field(&call.body, "deafened").and_then(|d| {
        as_holder(&state, &*v, &s.user, false, || {
            v.set_deafened(d);
            Ok(json!({}))
        })
    }))
}

async fn voice_ptt(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let v = with_voice!(state);
    reply(bool_field(&call.body, "down").and_then(|d| {
        as_holder(&state, &*v, &s.user, false, || {
            v.push_to_talk(d);
            Ok(json!({}))
        })
    }))
}

async fn voice_volume(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let v = with_voice!(state);
    let r = (|| {
        let user = model::user_id(str_field(&call.body, "user")?)?;
        let gain = call
            .body
            .get("gain")
            .and_then(Value::as_f64)
            .filter(|g| g.is_finite() && (0.0..=4.0).contains(g))
            .ok_or_else(|| {
                ParseError::incorrect_type(
                    "gain must be a number from 0 (silent) to 4; 1 is unchanged",
                )
            })?;
        as_holder(&state, &*v, &s.user, false, || {
            v.set_volume(user, gain as f32).map_err(voice_error)
        })?;
        Ok(json!({}))
    })();
    reply(r)
}

async fn voice_devices(State(state): State<ApiState>, req: Request) -> Response {
    let _ = with_session!(state, req);
    let v = with_voice!(state);
    reply(serde_json::to_value(v.devices()).map_err(ParseError::internal))
}

async fn voice_choose_devices(State(state): State<ApiState>, req: Request) -> Response {
    let (s, call) = with_session!(state, req);
    let v = with_voice!(state);
    let pick = |k: &str| -> ApiResult<Option<String>> {
        match call.body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ParseError::incorrect_type(format!(
                "{k} must be a device name or null"
            ))),
        }
    };
    let r = (|| {
        let (input, output) = (pick("input")?, pick("output")?);
        // Only the node's own device names: a file named here would be
        // written (output) or read out to peers (input) by the node.
        if input.is_some() || output.is_some() {
            let listed = v.devices();
            if let Some(i) = &input {
                listed_device("input", i, &listed.inputs)?;
            }
            if let Some(o) = &output {
                listed_device("output", o, &listed.outputs)?;
            }
        }
        as_holder(&state, &*v, &s.user, false, || {
            v.choose_devices(&s.key, input, output).map_err(voice_error)
        })?;
        Ok(json!({}))
    })();
    reply(r)
}

async fn events(State(state): State<ApiState>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let token = header_token(&parts.headers).or_else(|| query_token(&parts.uri));
    let Some(token) = token else {
        return ParseError::new(
            code::SESSION_MISSING,
            "/v1/events needs a session: ?sessionToken=... or the X-Parse-Session-Token header",
        )
        .into_response();
    };
    let viewer = match state.inner.accounts.session(&token) {
        Ok(s) => s.user,
        Err(e) => return e.into_response(),
    };
    let v = with_voice!(state);
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(e) => {
            return ParseError::invalid_json(format!("/v1/events is a WebSocket: {e}"))
                .into_response();
        }
    };
    let Ok(permit) = state.inner.websockets.clone().try_acquire_owned() else {
        return ParseError::new(
            code::REQUEST_LIMIT_EXCEEDED,
            "too many WebSocket connections to this node",
        )
        .into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        stream_events(socket, v, viewer).await;
        drop(permit);
    })
}

/// Streams the viewer's own session: status events as [`VoiceStatus::seen_by`]
/// shows them, speaking events only while the session speaks for the viewer.
async fn stream_events(mut socket: WebSocket, voice: Arc<dyn VoiceControl>, viewer: UserId) {
    use tokio::sync::broadcast::error::RecvError;
    let status = |s: VoiceStatus| {
        serde_json::to_string(&VoiceEvent::Status(s.seen_by(&viewer))).unwrap_or_default()
    };
    let mut rx = voice.events();
    // The current status first, so a client needs no separate call.
    if socket
        .send(Message::Text(status(voice.status()).into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let text = match ev {
                    Ok(VoiceEvent::Status(s)) => status(s),
                    Ok(ev @ VoiceEvent::Speaking { .. }) => {
                        if voice.session_user() != Some(viewer) {
                            continue;
                        }
                        serde_json::to_string(&ev).unwrap_or_default()
                    }
                    Err(RecvError::Lagged(n)) => {
                        // Say so, then the full status so the client is right again.
                        let lag = json!({"type": "lagged", "missed": n}).to_string();
                        if socket.send(Message::Text(lag.into())).await.is_err() { return; }
                        status(voice.status())
                    }
                    Err(RecvError::Closed) => return,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}
