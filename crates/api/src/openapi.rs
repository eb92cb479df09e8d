//! `/openapi.json`: the OpenAPI 3.0 document of `/parse` and `/v1`.
//!
//! Written out by hand, beside the dispatcher it describes, because the
//! Parse dialect routes every class and the JS SDK's POST-with-`_method`
//! form through one handler, which derive macros cannot see through. A test
//! (`tests/rest.rs`) calls every documented operation, so a path that
//! drifted from the code fails there.

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

use crate::ApiState;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/openapi.json", get(|| async { axum::Json(document()) }))
}

fn error_responses() -> Value {
    json!({
        "400": {"description": "a Parse error: bad input (107, 102, 111, 142), forbidden by the rules (119), no or bad session (206, 209)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "101: not found, or not visible to this user", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "413": {"description": "116: the body is too large", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "429": {"description": "155: this session's rate limit", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    })
}

fn op(summary: &str, id: &str, ok_status: &str, ok_schema: Value, extra: Value) -> Value {
    let mut responses = error_responses();
    responses[ok_status] =
        json!({"description": "success", "content": {"application/json": {"schema": ok_schema}}});
    let mut o = json!({"summary": summary, "operationId": id, "responses": responses});
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            o[k] = v;
        }
    }
    o
}

fn body(schema: Value) -> Value {
    json!({"requestBody": {"required": true, "content": {"application/json": {"schema": schema}}}})
}

fn voice_op(summary: &str, id: &str, ok_schema: Value, extra: Value) -> Value {
    let mut o = op(summary, id, "200", ok_schema, extra);
    o["responses"]["503"] = json!({"description": "no voice session is plugged into this node", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    o
}

/// The document.
pub(crate) fn document() -> Value {
    let obj = json!({"type": "object"});
    let empty = json!({"type": "object", "maxProperties": 0});
    let class_param = json!({"name": "className", "in": "path", "required": true,
        "schema": {"type": "string", "enum": ["Room", "Channel", "RoomLog", "_User"]}});
    let id_param = json!({"name": "objectId", "in": "path", "required": true, "schema": {"type": "string"},
        "description": "hex: a RoomId or ChannelId (32 digits), a RoomLog record id or user id (64 digits)"});
    let query_params = json!([
        {"name": "where", "in": "query", "schema": {"type": "string"}, "description": "JSON object: equality, pointers, $in, $nin, $ne, $lt, $lte, $gt, $gte, $exists, $or, $and"},
        {"name": "order", "in": "query", "schema": {"type": "string"}, "description": "comma-separated fields, - for descending"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "skip", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "count", "in": "query", "schema": {"type": "integer", "enum": [0, 1]}},
        {"name": "keys", "in": "query", "schema": {"type": "string"}},
        {"name": "include", "in": "query", "schema": {"type": "string"}}
    ]);
    let results = json!({"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "items": {"type": "object"}}, "count": {"type": "integer"}}});
    let created = json!({"$ref": "#/components/schemas/Created"});
    let updated = json!({"type": "object", "required": ["updatedAt"], "properties": {"updatedAt": {"type": "string"}}});
    let user_session = json!({"$ref": "#/components/schemas/UserWithSession"});
    let credentials = json!({"type": "object", "required": ["username", "password"], "properties": {
        "username": {"type": "string"}, "password": {"type": "string"}, "email": {"type": "string"},
        "role": {"type": "string", "minLength": 1, "maxLength": 32}}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tincan local API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Parse REST dialect (classes _User, Room, Channel, RoomLog) under /parse, and the node's own /v1 routes. LiveQuery is a WebSocket on /parse; GraphQL is at /graphql; voice events are a WebSocket at /v1/events. Log in with POST /parse/login and send the sessionToken as X-Parse-Session-Token."
        },
        "servers": [{"url": "/"}],
        "security": [{"session": []}],
        "paths": {
            "/parse/users": {
                "post": op("sign up: a new local identity, sealed with the password", "signUp", "201",
                    json!({"$ref": "#/components/schemas/SignedUp"}), {
                        let mut b = body(credentials.clone()); b["security"] = json!([]); b }),
                "get": op("users known to the mesh", "listUsers", "200", results.clone(), json!({"parameters": query_params.clone()}))
            },
            "/parse/users/me": {"get": op("the session's user", "me", "200", user_session.clone(), json!({}))},
            "/parse/sessions/me": {"get": op("the session: token, user, expiresAt", "mySession", "200",
                json!({"type": "object", "required": ["sessionToken", "user", "expiresAt"]}), json!({}))},
            "/parse/users/{objectId}": {
                "parameters": [id_param.clone()],
                "get": op("a user", "getUser", "200", obj.clone(), json!({})),
                "put": op("change your own username, password or role", "updateUser", "200", updated.clone(), body(obj.clone())),
                "delete": op("delete your own local account", "deleteUser", "200", empty.clone(), json!({}))
            },
            "/parse/login": {
                "get": op("log in", "logInGet", "200", user_session.clone(), json!({"security": [], "parameters": [
                    {"name": "username", "in": "query", "required": true, "schema": {"type": "string"}},
                    {"name": "password", "in": "query", "required": true, "schema": {"type": "string"}}]})),
                "post": op("log in", "logIn", "200", user_session.clone(), {
                    let mut b = body(credentials.clone()); b["security"] = json!([]); b })
            },
            "/parse/logout": {"post": op("end this session", "logOut", "200", empty.clone(), json!({}))},
            "/parse/health": {"get": op("liveness", "health", "200", json!({"type": "object", "properties": {"status": {"type": "string"}}}), json!({"security": []}))},
            "/parse/classes/{className}": {
                "parameters": [class_param.clone()],
                "get": op("query a class", "find", "200", results.clone(), json!({"parameters": query_params.clone()})),
                "post": op("create an object (a record signed by you)", "create", "201", created.clone(), body(obj.clone()))
            },
            "/parse/classes/{className}/{objectId}": {
                "parameters": [class_param.clone(), id_param.clone()],
                "get": op("one object", "get", "200", obj.clone(), json!({"parameters": [
                    {"name": "keys", "in": "query", "schema": {"type": "string"}},
                    {"name": "include", "in": "query", "schema": {"type": "string"}}]})),
                "put": op("update an object", "update", "200", updated.clone(), body(obj.clone())),
                "delete": op("delete an object", "delete", "200", empty.clone(), json!({}))
            },
            "/parse/batch": {"post": op("several /parse/classes requests in order", "batch", "200",
                json!({"type": "array", "items": {"type": "object"}}),
                body(json!({"type": "object", "required": ["requests"], "properties": {"requests": {"type": "array", "maxItems": 50, "items": {
                    "type": "object", "required": ["method", "path"], "properties": {
                        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "DELETE"]},
                        "path": {"type": "string"}, "body": {"type": "object"}}}}}})))},
            "/v1/status": {"get": op("node status: user, PeerId, uptime, peers, voice", "status", "200", obj.clone(), json!({}))},
            "/v1/peers": {"get": op("mesh peers, with voice path and link statistics when known", "peers", "200",
                json!({"type": "object", "required": ["peers"], "properties": {"peers": {"type": "array", "items": {"type": "object"}}}}), json!({}))},
            "/v1/rooms/nearby": {"get": op("open rooms that nodes on this LAN (mDNS) follow, asked now", "nearbyRooms", "200",
                json!({"type": "object", "required": ["rooms"], "properties": {"rooms": {"type": "array", "items": {"type": "object", "required": ["objectId", "title", "owner", "members", "via"]}}}}), json!({}))},
            "/v1/rooms/invite": {"post": op("the invite link of a room you can read (invite-only: carries its locator)", "roomInvite", "200",
                json!({"type": "object", "required": ["room", "link"], "properties": {"room": {"type": "string"}, "link": {"type": "string"}}}),
                body(json!({"type": "object", "required": ["room"], "properties": {"room": {"type": "string"}}})))},
            "/v1/rooms/accept": {"post": op("accept an invite link: keep its locator, dial the inviter, follow the room", "roomAccept", "200",
                json!({"type": "object", "required": ["room"], "properties": {"room": {"type": "string"}}}),
                body(json!({"type": "object", "required": ["link"], "properties": {"link": {"type": "string", "maxLength": 16384}}})))},
            "/v1/voice/status": {"get": voice_op("voice status", "voiceStatus", json!({"$ref": "#/components/schemas/VoiceStatus"}), json!({}))},
            "/v1/voice/presence": {"post": voice_op("who is in which voice channel of a room", "voicePresence",
                json!({"type": "object", "required": ["room", "channels"], "properties": {"room": {"type": "string"}, "channels": {"type": "array", "items": {"type": "object", "required": ["channel", "users"], "properties": {"channel": {"type": "string"}, "users": {"type": "array", "items": {"type": "string"}}}}}}}),
                body(json!({"type": "object", "required": ["room"], "properties": {"room": {"type": "string"}}})))},
            "/v1/voice/join": {"post": voice_op("join a voice channel", "voiceJoin", empty.clone(), body(json!({"type": "object", "required": ["room", "channel"], "properties": {"room": {"type": "string"}, "channel": {"type": "string"}}})))},
            "/v1/voice/leave": {"post": voice_op("leave the voice channel", "voiceLeave", empty.clone(), json!({}))},
            "/v1/voice/mute": {"post": voice_op("mute or unmute", "voiceMute", empty.clone(), body(json!({"type": "object", "required": ["muted"], "properties": {"muted": {"type": "boolean"}}})))},
            "/v1/voice/deafen": {"post": voice_op("deafen or undeafen", "voiceDeafen", empty.clone(), body(json!({"type": "object", "required": ["deafened"], "properties": {"deafened": {"type": "boolean"}}})))},
            "/v1/voice/ptt": {"post": voice_op("push-to-talk down or up", "voicePushToTalk", empty.clone(), body(json!({"type": "object", "required": ["down"], "properties": {"down": {"type": "boolean"}}})))},
            "/v1/voice/volume": {"post": voice_op("one speaker's gain", "voiceVolume", empty.clone(), body(json!({"type": "object", "required": ["user", "gain"], "properties": {"user": {"type": "string"}, "gain": {"type": "number", "minimum": 0, "maximum": 4}}})))},
            "/v1/voice/devices": {
                "get": voice_op("sound devices", "voiceDevices", json!({"$ref": "#/components/schemas/Devices"}), json!({})),
                "put": voice_op("choose sound devices", "voiceChooseDevices", empty.clone(), body(json!({"type": "object", "properties": {"input": {"type": "string", "nullable": true}, "output": {"type": "string", "nullable": true}}})))
            }
        },
        "components": {
            "securitySchemes": {"session": {"type": "apiKey", "in": "header", "name": "X-Parse-Session-Token"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "error"], "properties": {"code": {"type": "integer"}, "error": {"type": "string"}}},
                "Created": {"type": "object", "required": ["objectId", "createdAt"], "properties": {"objectId": {"type": "string"}, "createdAt": {"type": "string"}}},
                "SignedUp": {"type": "object", "required": ["objectId", "createdAt", "sessionToken"], "properties": {"objectId": {"type": "string"}, "createdAt": {"type": "string"}, "sessionToken": {"type": "string"}, "username": {"type": "string"}}},
                "UserWithSession": {"type": "object", "required": ["objectId", "username", "sessionToken"], "properties": {"objectId": {"type": "string"}, "username": {"type": "string"}, "sessionToken": {"type": "string"}, "fingerprint": {"type": "string"}}},
                "Devices": {"type": "object", "properties": {"inputs": {"type": "array", "items": {"type": "string"}}, "outputs": {"type": "array", "items": {"type": "string"}}, "input": {"type": "string", "nullable": true}, "output": {"type": "string", "nullable": true}}},
                "VoiceStatus": {"type": "object", "properties": {"user": {"type": "string", "nullable": true, "description": "the user the session speaks for (the account that joined it)"}, "held_by_another_account": {"type": "boolean", "description": "another account of this node is in voice; you see nothing of its session"}, "room": {"type": "string", "nullable": true}, "channel": {"type": "string", "nullable": true}, "muted": {"type": "boolean"}, "deafened": {"type": "boolean"}, "push_to_talk": {"type": "boolean"}, "participants": {"type": "array", "items": {"type": "object"}}, "links": {"type": "array", "items": {"type": "object"}}}}
            }
        }
    })
}
