//! GraphQL at `/graphql` over the same model and rules as the Parse
//! dialect: queries, mutations, and subscriptions over a WebSocket
//! (`graphql-transport-ws` or the older `graphql-ws`). `GET /graphql` in a
//! browser shows GraphiQL.
//!
//! The session token comes in the `X-Parse-Session-Token` header (or
//! `Authorization: Bearer ...`); on a WebSocket, in the `connection_init`
//! payload as `{"sessionToken": "..."}` (or the upgrade request's header).
//! Errors carry the Parse code in `extensions.code`.

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql::{Context, Data, ErrorExtensions, ID, Object, Schema, Subscription};
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use serde_json::{Map, Value, json};
use tincan_store::ChangeKind;
use tokio::sync::broadcast::error::RecvError;

use crate::ApiState;
use crate::accounts::Session;
use crate::error::{ParseError, code};
use crate::model::{self, Class};
use crate::ops::change_target;
use crate::query::FindOptions;
use crate::rest::header_token;

pub(crate) type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The session of a GraphQL request or WebSocket, looked up (and charged to
/// the session's rate limit) once per request or connection.
struct Auth(Result<Session, ParseError>);

fn missing_session() -> ParseError {
    ParseError::new(
        code::SESSION_MISSING,
        "GraphQL needs a session: send X-Parse-Session-Token (or, on a WebSocket, {\"sessionToken\":..} in connection_init)",
    )
}

fn auth(state: &ApiState, token: Option<String>) -> Auth {
    Auth(match token {
        Some(t) => state.inner.accounts.session(&t),
        None => Err(missing_session()),
    })
}

fn gql_err(e: ParseError) -> async_graphql::Error {
    let code = e.code;
    async_graphql::Error::new(e.message).extend_with(|_, ext| ext.set("code", code))
}

fn session(ctx: &Context<'_>) -> async_graphql::Result<Session> {
    let state = ctx.data::<ApiState>()?;
    match ctx.data_opt::<Auth>().map(|a| &a.0) {
        Some(Ok(s)) if state.inner.accounts.is_live(&s.token) => Ok(s.clone()),
        Some(Ok(_)) => Err(gql_err(ParseError::new(
            code::INVALID_SESSION_TOKEN,
            "the session ended (logged out or expired): log in again",
        ))),
        Some(Err(e)) => Err(gql_err(e.clone())),
        None => Err(gql_err(missing_session())),
    }
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn pointer_id(v: &Value, k: &str) -> String {
    v.pointer(&format!("/{k}/objectId"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A user.
pub(crate) struct User(Value);

#[Object]
impl User {
    /// The user id (hex), the same on every node.
    async fn object_id(&self) -> ID {
        ID(text(&self.0, "objectId"))
    }
    /// The name the user chose (not unique across the mesh).
    async fn username(&self) -> String {
        text(&self.0, "username")
    }
    /// A short fingerprint of the user's key, shown next to the name.
    async fn fingerprint(&self) -> String {
        text(&self.0, "fingerprint")
    }
    /// The template's role ("moderator", "participant" ...), set by the
    /// user; null for users without an account on this node (the role is
    /// a local account attribute, not part of the signed profile).
    async fn role(&self) -> Option<String> {
        self.0
            .get("role")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
    /// When the profile in force was written (ISO 8601).
    async fn updated_at(&self) -> String {
        text(&self.0, "updatedAt")
    }
}

/// A room.
pub(crate) struct Room(Value);

#[Object]
impl Room {
    /// The room id (hex).
    async fn object_id(&self) -> ID {
        ID(text(&self.0, "objectId"))
    }
    /// Its title.
    async fn title(&self) -> String {
        text(&self.0, "title")
    }
    /// Whether only invited users may join.
    async fn invite_only(&self) -> bool {
        self.0
            .get("inviteOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
    /// Most members, if limited.
    async fn member_limit(&self) -> Option<i64> {
        self.0.get("memberLimit").and_then(Value::as_i64)
    }
    /// The owner's user id.
    async fn owner_id(&self) -> ID {
        ID(pointer_id(&self.0, "owner"))
    }
    /// Joined members' user ids; null for an invite-only room you are not
    /// a member (or the owner) of, whose members only they may see.
    async fn member_ids(&self) -> Option<Vec<ID>> {
        self.0.get("members").and_then(Value::as_array).map(|l| {
            l.iter()
                .filter_map(|p| p.get("objectId").and_then(Value::as_str))
                .map(|s| ID(s.to_owned()))
                .collect()
        })
    }
    /// When the room record in force was written.
    async fn updated_at(&self) -> String {
        text(&self.0, "updatedAt")
    }
    /// Its channels (if you may read the room).
    async fn channels(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Channel>> {
        list(
            ctx,
            Class::Channel,
            json!({"room": model::pointer("Room", &text(&self.0, "objectId"))}),
            1000,
        )
        .map(|l| l.into_iter().map(Channel).collect())
    }
}

/// A voice channel.
pub(crate) struct Channel(Value);

#[Object]
impl Channel {
    /// The channel id (hex).
    async fn object_id(&self) -> ID {
        ID(text(&self.0, "objectId"))
    }
    /// The room's id.
    async fn room_id(&self) -> ID {
        ID(pointer_id(&self.0, "room"))
    }
    /// Its name.
    async fn name(&self) -> String {
        text(&self.0, "name")
    }
    /// Its description.
    async fn description(&self) -> String {
        text(&self.0, "description")
    }
    /// Who may speak and listen (`speak:members` ...).
    async fn permissions(&self) -> Vec<String> {
        self.0
            .get("permissions")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An entry of a room's log.
pub(crate) struct RoomLog(Value);

#[Object]
impl RoomLog {
    /// The entry's record id (hex).
    async fn object_id(&self) -> ID {
        ID(text(&self.0, "objectId"))
    }
    /// The room's id.
    async fn room_id(&self) -> ID {
        ID(pointer_id(&self.0, "room"))
    }
    /// Who did it.
    async fn user_id(&self) -> ID {
        ID(pointer_id(&self.0, "user"))
    }
    /// What they did.
    async fn action(&self) -> String {
        text(&self.0, "action")
    }
    /// When (ISO 8601).
    async fn created_at(&self) -> String {
        text(&self.0, "createdAt")
    }
    /// The template's `timestamp`: the entry's signed time (ISO 8601), the
    /// same as `createdAt`.
    async fn timestamp(&self) -> String {
        self.0
            .pointer("/timestamp/iso")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// A change to a channel of a room.
pub(crate) struct ChannelEvent {
    kind: &'static str,
    object_id: String,
    channel: Option<Value>,
}

#[Object]
impl ChannelEvent {
    /// "created", "updated" or "deleted".
    async fn kind(&self) -> &str {
        self.kind
    }
    /// The channel id.
    async fn object_id(&self) -> ID {
        ID(self.object_id.clone())
    }
    /// The channel as it is now (none once deleted).
    async fn channel(&self) -> Option<Channel> {
        self.channel.clone().map(Channel)
    }
}

fn list(
    ctx: &Context<'_>,
    class: Class,
    filter: Value,
    limit: usize,
) -> async_graphql::Result<Vec<Value>> {
    let state = ctx.data::<ApiState>()?;
    let s = session(ctx)?;
    let mut params = Map::new();
    params.insert("where".into(), filter);
    params.insert("limit".into(), json!(limit));
    let opts = FindOptions::from_params(&params).map_err(gql_err)?;
    Ok(state.find(class, &opts, &s.user).map_err(gql_err)?.0)
}

fn one(ctx: &Context<'_>, class: Class, id: &str) -> async_graphql::Result<Value> {
    let state = ctx.data::<ApiState>()?;
    let s = session(ctx)?;
    state
        .object(class, id, &s.user)
        .map_err(gql_err)?
        .ok_or_else(|| {
            gql_err(ParseError::not_found(format!(
                "no {} {id} visible to you",
                class.name()
            )))
        })
}

/// Reads.
pub(crate) struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The logged-in user.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let s = session(ctx)?;
        one(ctx, Class::User, &s.user.to_hex()).map(User)
    }
    /// Users known to the mesh.
    async fn users(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<User>> {
        Ok(list(ctx, Class::User, json!({}), 1000)?
            .into_iter()
            .map(User)
            .collect())
    }
    /// Rooms, optionally filtered with a Parse `where` object.
    async fn rooms(
        &self,
        ctx: &Context<'_>,
        filter: Option<async_graphql::Json<Value>>,
        #[graphql(default = 100)] limit: usize,
    ) -> async_graphql::Result<Vec<Room>> {
        let f = filter.map(|j| j.0).unwrap_or_else(|| json!({}));
        Ok(list(ctx, Class::Room, f, limit)?
            .into_iter()
            .map(Room)
            .collect())
    }
    /// One room.
    async fn room(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Room> {
        one(ctx, Class::Room, &id).map(Room)
    }
    /// The channels of a room.
    async fn channels(&self, ctx: &Context<'_>, room: ID) -> async_graphql::Result<Vec<Channel>> {
        Ok(list(
            ctx,
            Class::Channel,
            json!({"room": model::pointer("Room", &room)}),
            1000,
        )?
        .into_iter()
        .map(Channel)
        .collect())
    }
    /// A room's log, oldest first.
    async fn room_logs(
        &self,
        ctx: &Context<'_>,
        room: ID,
        #[graphql(default = 100)] limit: usize,
    ) -> async_graphql::Result<Vec<RoomLog>> {
        Ok(list(
            ctx,
            Class::RoomLog,
            json!({"room": model::pointer("Room", &room)}),
            limit,
        )?
        .into_iter()
        .map(RoomLog)
        .collect())
    }
}

/// Writes, signed by the session's user.
pub(crate) struct MutationRoot;

async fn create(ctx: &Context<'_>, class: Class, fields: Value) -> async_graphql::Result<Value> {
    let state = ctx.data::<ApiState>()?;
    let s = session(ctx)?;
    let body = fields.as_object().cloned().unwrap_or_default();
    let made = state.create(&s, class, &body).await.map_err(gql_err)?;
    let id = text(&made, "objectId");
    one(ctx, class, &id)
}

#[Object]
impl MutationRoot {
    /// Creates a room owned by you.
    async fn create_room(
        &self,
        ctx: &Context<'_>,
        title: String,
        #[graphql(default = false)] invite_only: bool,
    ) -> async_graphql::Result<Room> {
        create(
            ctx,
            Class::Room,
            json!({"title": title, "inviteOnly": invite_only}),
        )
        .await
        .map(Room)
    }
    /// Joins a room (fetching it from peers if this node has not seen it).
    async fn join_room(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Room> {
        let state = ctx.data::<ApiState>()?;
        let s = session(ctx)?;
        let op = json!({"members": {"__op": "AddUnique", "objects": [model::pointer("_User", &s.user.to_hex())]}});
        let body = op.as_object().cloned().unwrap_or_default();
        state
            .update(&s, Class::Room, &id, &body)
            .await
            .map_err(gql_err)?;
        one(ctx, Class::Room, &id).map(Room)
    }
    /// Creates a channel in a room you own.
    async fn create_channel(
        &self,
        ctx: &Context<'_>,
        room: ID,
        name: String,
        #[graphql(default)] description: String,
    ) -> async_graphql::Result<Channel> {
        create(
            ctx,
            Class::Channel,
            json!({"room": model::pointer("Room", &room), "name": name, "description": description}),
        )
        .await
        .map(Channel)
    }
    /// Deletes a channel of a room you own (code 119 otherwise).
    async fn delete_channel(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let state = ctx.data::<ApiState>()?;
        let s = session(ctx)?;
        state
            .delete(&s, Class::Channel, &id)
            .await
            .map_err(gql_err)?;
        Ok(true)
    }
    /// Adds an entry to a room's log, about yourself: in an open room it
    /// joins you first; in an invite-only room members only (119 otherwise).
    async fn add_room_log(
        &self,
        ctx: &Context<'_>,
        room: ID,
        action: String,
    ) -> async_graphql::Result<RoomLog> {
        create(
            ctx,
            Class::RoomLog,
            json!({"room": model::pointer("Room", &room), "action": action}),
        )
        .await
        .map(RoomLog)
    }
}

/// Live changes, from the store's change feed (local writes and gossip alike).
pub(crate) struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// New entries of a room's log. If this subscriber falls behind the
    /// node's bounded feed, it gets an error item saying how many changes
    /// it missed, then the stream goes on.
    async fn room_log_created(
        &self,
        ctx: &Context<'_>,
        room: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<RoomLog>> + use<>> {
        let state = ctx.data::<ApiState>()?.clone();
        let s = session(ctx)?;
        let room_id = model::room_id(&room).map_err(gql_err)?;
        let rx = state.inner.store.subscribe();
        Ok(futures::stream::unfold(
            (rx, state, s, room_id),
            |(mut rx, state, s, room_id)| async move {
                loop {
                    match rx.recv().await {
                        Ok(change) => {
                            let tincan_core::Body::RoomLog(l) = &change.record.record().body else {
                                continue;
                            };
                            if l.room != room_id || !state.inner.accounts.is_live(&s.token) {
                                continue;
                            }
                            // Read again as the subscriber may see it (read rule, hidden entries).
                            match state.object(
                                Class::RoomLog,
                                &change.record.id().to_hex(),
                                &s.user,
                            ) {
                                Ok(Some(v)) => {
                                    return Some((Ok(RoomLog(v)), (rx, state, s, room_id)));
                                }
                                Ok(None) => continue,
                                Err(e) => return Some((Err(gql_err(e)), (rx, state, s, room_id))),
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            let e = gql_err(ParseError::internal(format!(
                                "this subscription fell {n} changes behind; re-read the log with roomLogs"
                            )));
                            return Some((Err(e), (rx, state, s, room_id)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }

    /// Channels of a room created, changed or deleted.
    async fn channel_changed(
        &self,
        ctx: &Context<'_>,
        room: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ChannelEvent>> + use<>>
    {
        let state = ctx.data::<ApiState>()?.clone();
        let s = session(ctx)?;
        let room_id = model::room_id(&room).map_err(gql_err)?;
        let rx = state.inner.store.subscribe();
        Ok(futures::stream::unfold(
            (rx, state, s, room_id),
            |(mut rx, state, s, room_id)| async move {
                loop {
                    match rx.recv().await {
                        Ok(change) => {
                            if change.record.record().room() != Some(room_id)
                                || !state.inner.accounts.is_live(&s.token)
                            {
                                continue;
                            }
                            let Some((Class::Channel, id)) = change_target(&change.record) else {
                                continue;
                            };
                            let channel = match state.object(Class::Channel, &id, &s.user) {
                                Ok(c) => c,
                                Err(e) => return Some((Err(gql_err(e)), (rx, state, s, room_id))),
                            };
                            let kind = match change.kind {
                                ChangeKind::Created => "created",
                                ChangeKind::Updated => "updated",
                                ChangeKind::Deleted => "deleted",
                            };
                            if channel.is_none() && kind != "deleted" {
                                continue;
                            }
                            let ev = ChannelEvent {
                                kind,
                                object_id: id,
                                channel,
                            };
                            return Some((Ok(ev), (rx, state, s, room_id)));
                        }
                        Err(RecvError::Lagged(n)) => {
                            let e = gql_err(ParseError::internal(format!(
                                "this subscription fell {n} changes behind; re-read the channels"
                            )));
                            return Some((Err(e), (rx, state, s, room_id)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}

pub(crate) fn schema(state: &ApiState) -> ApiSchema {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(state.clone())
        .limit_depth(12)
        .limit_complexity(2000)
        .finish()
}

pub(crate) fn routes(state: &ApiState) -> Router<ApiState> {
    let schema = schema(state);
    let get_schema = schema.clone();
    Router::new()
        .route(
            "/graphql",
            get(
                move |State(state): State<ApiState>, req: axum::extract::Request| {
                    let schema = get_schema.clone();
                    async move { graphql_get(state, schema, req).await }
                },
            )
            .post(
                move |State(state): State<ApiState>,
                      headers: axum::http::HeaderMap,
                      req: GraphQLRequest| {
                    let schema = schema.clone();
                    async move {
                        let auth = auth(&state, header_token(&headers));
                        let resp: GraphQLResponse =
                            schema.execute(req.into_inner().data(auth)).await.into();
                        resp
                    }
                },
            ),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            state.inner.config.max_body_bytes,
        ))
}

async fn graphql_get(state: ApiState, schema: ApiSchema, req: axum::extract::Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let upgrading = parts
        .headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrading {
        return Html(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .title("tincan GraphQL")
                .finish(),
        )
        .into_response();
    }
    let header = header_token(&parts.headers);
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &state).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let Ok(permit) = state.inner.websockets.clone().try_acquire_owned() else {
        return ParseError::new(
            code::REQUEST_LIMIT_EXCEEDED,
            "too many WebSocket connections to this node",
        )
        .into_response();
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let ws_state = state.clone();
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let token = payload
                        .get("sessionToken")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or(header);
                    let mut data = Data::default();
                    data.insert(auth(&ws_state, token));
                    Ok(data)
                })
                .serve()
                .await;
            drop(permit);
        })
}
