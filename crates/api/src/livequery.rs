//! Parse's LiveQuery protocol over a WebSocket at `/parse` (where the Parse
//! SDKs connect by default: `serverURL` with `ws://` in place of `http://`)
//! and at `/` (where apps point `liveQueryServerURL`, since Parse Server
//! takes upgrades on any path).
//!
//! Client to node: `connect` (applicationId, sessionToken), `subscribe`
//! (requestId, query {className, where, keys}, optional sessionToken),
//! `update` (the same, replacing a subscription), `unsubscribe`, `query`.
//! Node to client: `connected`, `subscribed`, `unsubscribed`, `result`,
//! `error`, and the events `create`, `update`, `delete`, `enter`, `leave`.
//!
//! Events come from the store's change feed, so changes that arrive by
//! gossip or sync are pushed exactly like local writes. Before each push the
//! object is read again as the subscriber may see it (the read rule of
//! [`crate::model::can_read_room`]), and the session must still be live.
//!
//! The feed is bounded: a client that falls behind (`Lagged`) is told so
//! with an `error` message (no requestId, `reconnect: false`), and each of
//! its subscriptions is brought up to date by re-running its query: what
//! newly matches comes as `enter`, what no longer matches as `leave`, what
//! changed as `update`. Creates and deletes inside the gap therefore show as
//! `enter` and `leave`.
//!
//! Log entries are never edited: a RoomLog subscription gets `create` only.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tincan_store::{Change, ChangeKind};
use tokio::sync::broadcast::error::RecvError;

use crate::ApiState;
use crate::accounts::Session;
use crate::error::{ApiResult, ParseError, code};
use crate::model::Class;
use crate::ops::change_target;
use crate::query::{FindOptions, Where, project};

/// Most objects one subscription remembers (to tell update from enter, and
/// to send `original`); past it, further objects are not tracked.
const MAX_TRACKED: usize = 10_000;
/// Most subscriptions per connection.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Largest message a client may send.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Messages a client may send per second, sustained (a subscribe runs a query).
const MESSAGES_PER_S: f64 = 20.0;
/// Messages a client may send in a burst.
const MESSAGE_BURST: f64 = 100.0;

pub(crate) async fn upgrade(state: ApiState, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = state.inner.websockets.clone().try_acquire_owned() else {
        return ParseError::new(
            code::REQUEST_LIMIT_EXCEEDED,
            "too many WebSocket connections to this node",
        )
        .into_response();
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            Client::new(state).run(socket).await;
            drop(permit);
        })
}

struct Subscription {
    class: Class,
    filter: Where,
    keys: Option<Vec<String>>,
    session: Session,
    tracked: HashMap<String, Value>,
}

struct Client {
    state: ApiState,
    id: u64,
    connected: bool,
    session: Option<Session>,
    subs: HashMap<i64, Subscription>,
    /// Token bucket of the client's messages: (tokens, last refill).
    budget: (f64, std::time::Instant),
}

fn error(code: i64, message: impl Into<String>, request_id: Option<i64>, reconnect: bool) -> Value {
    let mut v =
        json!({"op": "error", "code": code, "error": message.into(), "reconnect": reconnect});
    if let Some(r) = request_id {
        v["requestId"] = json!(r);
    }
    v
}

impl Client {
    fn new(state: ApiState) -> Self {
        let id = state
            .inner
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Client {
            state,
            id,
            connected: false,
            session: None,
            subs: HashMap::new(),
            budget: (MESSAGE_BURST, std::time::Instant::now()),
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let mut feed = self.state.inner.store.subscribe();
        loop {
            let out: Vec<Value> = tokio::select! {
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_message(t.as_str()),
                    Some(Ok(Message::Binary(_))) => vec![error(code::INVALID_JSON, "LiveQuery messages are JSON text", None, false)],
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => Vec::new(),
                },
                change = feed.recv() => match change {
                    Ok(c) => self.on_change(&c),
                    Err(RecvError::Lagged(n)) => self.on_lag(n),
                    Err(RecvError::Closed) => break,
                },
            };
            for v in out {
                if tx.send(Message::Text(v.to_string().into())).await.is_err() {
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, text: &str) -> Vec<Value> {
        let now = std::time::Instant::now();
        let (tokens, last) = self.budget;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * MESSAGES_PER_S)
            .min(MESSAGE_BURST);
        if tokens < 1.0 {
            self.budget = (tokens, now);
            return vec![error(
                code::REQUEST_LIMIT_EXCEEDED,
                format!("more than {MESSAGES_PER_S} LiveQuery messages a second: slow down"),
                None,
                false,
            )];
        }
        self.budget = (tokens - 1.0, now);
        let msg: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return vec![error(
                    code::INVALID_JSON,
                    "a LiveQuery message is a JSON object with an op",
                    None,
                    false,
                )];
            }
        };
        let request_id = msg.get("requestId").and_then(Value::as_i64);
        let op = msg.get("op").and_then(Value::as_str).unwrap_or_default();
        let result = match op {
            "connect" => self.connect(&msg),
            "subscribe" | "update" => self.subscribe(&msg, request_id, op == "update"),
            "unsubscribe" => self.unsubscribe(request_id),
            "query" => self.query(request_id),
            other => Err(ParseError::invalid_json(format!(
                "unknown LiveQuery op {other:?}: use connect, subscribe, update, unsubscribe or query"
            ))),
        };
        match result {
            Ok(v) => v,
            Err(e) => vec![error(e.code, e.message, request_id, false)],
        }
    }

    fn connect(&mut self, msg: &Map<String, Value>) -> ApiResult<Vec<Value>> {
        if let Some(t) = msg
            .get("sessionToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.session = Some(self.state.inner.accounts.session(t)?);
        }
        self.connected = true;
        Ok(vec![json!({"op": "connected", "clientId": self.id})])
    }

    fn subscribe(
        &mut self,
        msg: &Map<String, Value>,
        request_id: Option<i64>,
        replace: bool,
    ) -> ApiResult<Vec<Value>> {
        if !self.connected {
            return Err(ParseError::invalid_json("send a connect message first"));
        }
        let request_id = request_id
            .ok_or_else(|| ParseError::invalid_json("subscribe needs a numeric requestId"))?;
        if !replace && self.subs.len() >= MAX_SUBSCRIPTIONS && !self.subs.contains_key(&request_id)
        {
            return Err(ParseError::new(
                code::REQUEST_LIMIT_EXCEEDED,
                format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
            ));
        }
        let session = match msg.get("sessionToken").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            Some(t) => self.state.inner.accounts.session(t)?,
            None => self.session.clone().ok_or_else(|| {
                ParseError::new(
                    code::SESSION_MISSING,
                    "a LiveQuery subscription needs a session: pass sessionToken in connect or subscribe",
                )
            })?,
        };
        let query = msg.get("query").and_then(Value::as_object).ok_or_else(|| {
            ParseError::invalid_json("subscribe needs a query {className, where}")
        })?;
        let class = Class::from_name(
            query
                .get("className")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )?;
        let filter = Where::parse(query.get("where"))?;
        let keys = match query.get("keys") {
            Some(Value::Array(k)) => Some(
                k.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => None,
        };
        let mut tracked = HashMap::new();
        if class != Class::RoomLog {
            let opts = FindOptions {
                filter: filter.clone(),
                order: Vec::new(),
                limit: MAX_TRACKED,
                skip: 0,
                count: false,
                keys: None,
                include: Vec::new(),
            };
            for o in self.state.candidates(class, &opts, &session.user)? {
                if tracked.len() >= MAX_TRACKED {
                    break;
                }
                if filter.matches(&o)
                    && let Some(id) = o.get("objectId").and_then(Value::as_str)
                {
                    tracked.insert(id.to_owned(), o.clone());
                }
            }
        }
        self.subs.insert(
            request_id,
            Subscription {
                class,
                filter,
                keys,
                session,
                tracked,
            },
        );
        Ok(vec![
            json!({"op": "subscribed", "clientId": self.id, "requestId": request_id}),
        ])
    }

    fn unsubscribe(&mut self, request_id: Option<i64>) -> ApiResult<Vec<Value>> {
        let request_id =
            request_id.ok_or_else(|| ParseError::invalid_json("unsubscribe needs a requestId"))?;
        if self.subs.remove(&request_id).is_none() {
            return Err(ParseError::not_found(format!(
                "no subscription {request_id} on this connection"
            )));
        }
        Ok(vec![
            json!({"op": "unsubscribed", "clientId": self.id, "requestId": request_id}),
        ])
    }

    fn query(&mut self, request_id: Option<i64>) -> ApiResult<Vec<Value>> {
        let request_id =
            request_id.ok_or_else(|| ParseError::invalid_json("query needs a requestId"))?;
        let sub = self.subs.get(&request_id).ok_or_else(|| {
            ParseError::not_found(format!("no subscription {request_id} on this connection"))
        })?;
        let opts = FindOptions {
            filter: sub.filter.clone(),
            order: Vec::new(),
            limit: crate::query::MAX_LIMIT,
            skip: 0,
            count: false,
            keys: sub.keys.clone(),
            include: Vec::new(),
        };
        let (results, _) = self.state.find(sub.class, &opts, &sub.session.user)?;
        Ok(vec![
            json!({"op": "result", "clientId": self.id, "requestId": request_id, "results": results}),
        ])
    }

    fn shaped(class: Class, keys: &Option<Vec<String>>, mut o: Value) -> Value {
        if let Some(k) = keys {
            project(&mut o, k);
        }
        if let Value::Object(m) = &mut o {
            m.insert("className".into(), Value::String(class.name().into()));
        }
        o
    }

    fn on_change(&mut self, change: &Change) -> Vec<Value> {
        let Some((class, object_id)) = change_target(&change.record) else {
            return Vec::new();
        };
        let room_deleted = class == Class::Room && change.kind == ChangeKind::Deleted;
        // A membership change may change what its user can read.
        let member_change = match &change.record.record().body {
            tincan_core::Body::Member(m) => Some((m.room, m.user)),
            _ => None,
        };
        let mut out = Vec::new();
        let accounts = &self.state.inner.accounts;
        for (request_id, sub) in self.subs.iter_mut() {
            if !accounts.is_live(&sub.session.token) {
                continue;
            }
            // A deleted room takes its channels with it.
            if room_deleted && sub.class == Class::Channel {
                let gone: Vec<String> = sub
                    .tracked
                    .iter()
                    .filter(|(_, o)| {
                        o.pointer("/room/objectId").and_then(Value::as_str)
                            == Some(object_id.as_str())
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for id in gone {
                    if let Some(o) = sub.tracked.remove(&id) {
                        out.push(
                            json!({"op": "delete", "clientId": self.id, "requestId": request_id,
                            "object": Self::shaped(sub.class, &sub.keys, o)}),
                        );
                    }
                }
            }
            if let Some((room, user)) = member_change
                && sub.class == Class::Channel
                && sub.session.user == user
            {
                out.extend(Self::resync_room_channels(
                    &self.state,
                    self.id,
                    *request_id,
                    sub,
                    room,
                ));
            }
            if sub.class != class {
                continue;
            }
            let now = match self.state.object(class, &object_id, &sub.session.user) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "LiveQuery could not read a changed object");
                    continue;
                }
            };
            let matches_now = now.as_ref().is_some_and(|o| sub.filter.matches(o));
            let was = sub.tracked.get(&object_id).cloned();
            let event = match (was, matches_now) {
                (None, true) => {
                    let op = if change.kind == ChangeKind::Created {
                        "create"
                    } else {
                        "enter"
                    };
                    Some((op, now.clone(), None))
                }
                // Nothing the subscriber sees changed (a change already
                // taken in by a resync after a lag): nothing to push.
                (Some(before), true) if now.as_ref() == Some(&before) => None,
                (Some(before), true) => Some(("update", now.clone(), Some(before))),
                (Some(before), false) if now.is_none() || change.kind == ChangeKind::Deleted => {
                    Some(("delete", Some(before), None))
                }
                (Some(before), false) => Some(("leave", now.clone(), Some(before))),
                (None, false) => None,
            };
            if class != Class::RoomLog {
                match (&now, matches_now) {
                    (Some(o), true)
                        if sub.tracked.len() < MAX_TRACKED
                            || sub.tracked.contains_key(&object_id) =>
                    {
                        sub.tracked.insert(object_id.clone(), o.clone());
                    }
                    _ => {
                        sub.tracked.remove(&object_id);
                    }
                }
            }
            if let Some((op, Some(object), original)) = event {
                let mut msg = json!({"op": op, "clientId": self.id, "requestId": request_id,
                    "object": Self::shaped(sub.class, &sub.keys, object)});
                if let Some(orig) = original {
                    msg["original"] = Self::shaped(sub.class, &sub.keys, orig);
                }
                out.push(msg);
            }
        }
        out
    }

    /// Brings a Channel subscription up to date for one room, after its
    /// user's membership changed: channels that became readable `enter`,
    /// channels that stopped being readable `leave`.
    fn resync_room_channels(
        state: &ApiState,
        client: u64,
        request_id: i64,
        sub: &mut Subscription,
        room: tincan_core::RoomId,
    ) -> Vec<Value> {
        let store = &state.inner.store;
        let room_hex = room.to_hex();
        let mut now: HashMap<String, Value> = HashMap::new();
        if let Ok(Some(view)) = store.room(&room)
            && crate::model::can_read_room(store, &view, &sub.session.user).unwrap_or(false)
        {
            let acl = match crate::acl::Acl::contents(store, &view, true) {
                Ok(a) => a.to_json(),
                Err(e) => {
                    tracing::warn!(error = %e, "LiveQuery could not read a room's members");
                    return Vec::new();
                }
            };
            for c in store.channels(&room).unwrap_or_default() {
                let o = crate::model::channel_json(&c, &acl);
                if sub.filter.matches(&o) {
                    now.insert(c.channel.id.to_hex(), o);
                }
            }
        }
        let mut out = Vec::new();
        let before: Vec<String> = sub
            .tracked
            .iter()
            .filter(|(_, o)| {
                o.pointer("/room/objectId").and_then(Value::as_str) == Some(room_hex.as_str())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for id in &before {
            if !now.contains_key(id)
                && let Some(o) = sub.tracked.remove(id)
            {
                out.push(
                    json!({"op": "leave", "clientId": client, "requestId": request_id,
                    "object": Self::shaped(sub.class, &sub.keys, o)}),
                );
            }
        }
        for (id, o) in now {
            if !sub.tracked.contains_key(&id) && sub.tracked.len() < MAX_TRACKED {
                out.push(
                    json!({"op": "enter", "clientId": client, "requestId": request_id,
                    "object": Self::shaped(sub.class, &sub.keys, o.clone())}),
                );
                sub.tracked.insert(id, o);
            }
        }
        out
    }

    fn on_lag(&mut self, missed: u64) -> Vec<Value> {
        tracing::warn!(
            client = self.id,
            missed,
            "a LiveQuery client fell behind the change feed"
        );
        let mut out = vec![error(
            code::INTERNAL_SERVER_ERROR,
            format!(
                "this connection fell {missed} changes behind the node's change feed; subscriptions were brought up to date with enter, leave and update events (creates and deletes in the gap show as enter and leave)"
            ),
            None,
            false,
        )];
        for (request_id, sub) in self.subs.iter_mut() {
            if sub.class == Class::RoomLog {
                // Log entries are not tracked; the client re-reads the log.
                continue;
            }
            let opts = FindOptions {
                filter: sub.filter.clone(),
                order: Vec::new(),
                limit: MAX_TRACKED,
                skip: 0,
                count: false,
                keys: None,
                include: Vec::new(),
            };
            let Ok(fresh) = self.state.candidates(sub.class, &opts, &sub.session.user) else {
                continue;
            };
            let mut now: HashMap<String, Value> = HashMap::new();
            for o in fresh {
                if now.len() < MAX_TRACKED
                    && sub.filter.matches(&o)
                    && let Some(id) = o.get("objectId").and_then(Value::as_str)
                {
                    now.insert(id.to_owned(), o);
                }
            }
            for (id, o) in &now {
                match sub.tracked.get(id) {
                    None => out.push(
                        json!({"op": "enter", "clientId": self.id, "requestId": request_id,
                        "object": Self::shaped(sub.class, &sub.keys, o.clone())}),
                    ),
                    Some(before) if before != o => out.push(
                        json!({"op": "update", "clientId": self.id, "requestId": request_id,
                        "object": Self::shaped(sub.class, &sub.keys, o.clone()),
                        "original": Self::shaped(sub.class, &sub.keys, before.clone())}),
                    ),
                    Some(_) => {}
                }
            }
            for (id, before) in &sub.tracked {
                if !now.contains_key(id) {
                    out.push(
                        json!({"op": "leave", "clientId": self.id, "requestId": request_id,
                        "object": Self::shaped(sub.class, &sub.keys, before.clone())}),
                    );
                }
            }
            sub.tracked = now;
        }
        out
    }
}
