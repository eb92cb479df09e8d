//! `/v1`: our own routes (not Parse): node status, mesh peers, voice
//! controls, and `/v1/events`, a WebSocket of voice events. Every route
//! needs a session (`X-Parse-Session-Token`, or `?sessionToken=` on the
//! WebSocket, which browsers open without custom headers). Errors have
//! Parse's `{"code","error"}` form.

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
use crate::voice::VoiceControl;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
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
        "voice": inner.voice.as_ref().map(|v| serde_json::to_value(v.status()).unwrap_or(Value::Null)),
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

async fn peers(State(state): State<ApiState>, req: Request) -> Response {
    let _ = with_session!(state, req);
    let mut list = Vec::new();
    if let Some(mesh) = &state.inner.mesh
        && let Ok(peers) = mesh.peers().await
    {
        let links = state
            .inner
            .voice
            .as_ref()
            .map(|v| v.status().links)
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
    let _ = with_session!(state, req);
    let v = with_voice!(state);
    reply(serde_json::to_value(v.status()).map_err(ParseError::internal))
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
        v.join(&s.key, room, channel).map_err(voice_error)?;
        Ok(json!({}))
    })();
    reply(r)
}

async fn voice_leave(State(state): State<ApiState>, req: Request) -> Response {
    let _ = with_session!(state, req);
    let v = with_voice!(state);
    reply(v.leave().map(|_| json!({})).map_err(voice_error))
}

async fn voice_mute(State(state): State<ApiState>, req: Request) -> Response {
    let (_, call) = with_session!(state, req);
    let v = with_voice!(state);
    reply(bool_field(&call.body, "muted").map(|m| {
        v.set_muted(m);
        json!({})
    }))
}

async fn voice_deafen(State(state): State<ApiState>, req: Request) -> Response {
    let (_, call) = with_session!(state, req);
    let v = with_voice!(state);
    reply(bool_field(&call.body, "deafened").map(|d| {
        v.set_deafened(d);
        json!({})
    }))
}

async fn voice_ptt(State(state): State<ApiState>, req: Request) -> Response {
    let (_, call) = with_session!(state, req);
    let v = with_voice!(state);
    reply(bool_field(&call.body, "down").map(|d| {
        v.push_to_talk(d);
        json!({})
    }))
}

async fn voice_volume(State(state): State<ApiState>, req: Request) -> Response {
    let (_, call) = with_session!(state, req);
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
        v.set_volume(user, gain as f32).map_err(voice_error)?;
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
    let (_, call) = with_session!(state, req);
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
        v.choose_devices(input, output).map_err(voice_error)?;
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
    if let Err(e) = state.inner.accounts.session(&token) {
        return e.into_response();
    }
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
        stream_events(socket, v).await;
        drop(permit);
    })
}

async fn stream_events(mut socket: WebSocket, voice: Arc<dyn VoiceControl>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = voice.events();
    // The current status first, so a client needs no separate call.
    let first = serde_json::to_string(&crate::voice::VoiceEvent::Status(voice.status()))
        .unwrap_or_default();
    if socket.send(Message::Text(first.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let text = match ev {
                    Ok(ev) => serde_json::to_string(&ev).unwrap_or_default(),
                    Err(RecvError::Lagged(n)) => {
                        // Say so, then the full status so the client is right again.
                        let lag = json!({"type": "lagged", "missed": n}).to_string();
                        if socket.send(Message::Text(lag.into())).await.is_err() { return; }
                        serde_json::to_string(&crate::voice::VoiceEvent::Status(voice.status())).unwrap_or_default()
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
