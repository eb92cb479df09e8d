//! The Parse REST dialect under `/parse`.
//!
//! Every SDK call lands in one dispatcher, whichever way it is sent:
//! - plain REST with `X-Parse-Application-Id` / `X-Parse-Session-Token`
//!   headers, query parameters for GET (`where` as a JSON string);
//! - the JS SDK's form: every call a `POST` with a `text/plain` JSON body
//!   carrying `_method`, `_ApplicationId`, `_SessionToken` (and, for reads,
//!   the query parameters as JSON values);
//! - `POST /parse/batch` with `{"requests":[{"method","path","body"}]}`.
//!
//! The application id is not checked: the node serves one app, and an
//! application id is no secret in Parse either; sessions are what protect.

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};

use crate::ApiState;
use crate::accounts::{LoggedIn, Session};
use crate::error::{ApiResult, ParseError, code};
use crate::model::{self, Class};
use crate::query::FindOptions;

/// Most requests in one batch (Parse Server's default).
const MAX_BATCH: usize = 50;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/parse", any(parse_any))
        .route("/parse/", any(parse_any))
        .route("/parse/{*rest}", any(parse_any))
}

/// Any path nobody serves.
pub(crate) async fn not_found() -> Response {
    ParseError::not_found(
        "no such endpoint: this node serves /parse (Parse REST and LiveQuery), /graphql, /v1 and /openapi.json",
    )
    .into_response()
}

/// What a panic in a handler turns into (a bug: panics must not happen).
pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ParseError::internal("a handler panicked (a bug in tincan: please report it)").into_response()
}

/// One call, however it arrived.
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) segments: Vec<String>,
    pub(crate) params: Map<String, Value>,
    pub(crate) body: Map<String, Value>,
    pub(crate) token: Option<String>,
}

fn header_str(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The session token of a request's headers.
pub(crate) fn header_token(headers: &axum::http::HeaderMap) -> Option<String> {
    header_str(headers, "x-parse-session-token").or_else(|| {
        header_str(headers, "authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_owned()))
    })
}

pub(crate) fn is_websocket(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn parse_any(State(state): State<ApiState>, req: axum::extract::Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if is_websocket(&parts.headers) && (path == "/parse" || path == "/parse/") {
        return match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
        {
            Ok(upgrade) => crate::livequery::upgrade(state, upgrade).await,
            Err(e) => ParseError::invalid_json(format!("not a usable WebSocket upgrade: {e}"))
                .into_response(),
        };
    }
    let limit = state.inner.config.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ParseError::new(
                code::OBJECT_TOO_LARGE,
                format!("the request body is larger than {limit} bytes: send less"),
            )
            .into_response();
        }
    };
    let call = match read_call(&parts, &bytes) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match dispatch(&state, call).await {
        Ok((status, value)) => (status, axum::Json(value)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn read_call(parts: &axum::http::request::Parts, bytes: &[u8]) -> ApiResult<Call> {
    let mut body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(ParseError::invalid_json("the body must be a JSON object")),
            Err(e) => {
                return Err(ParseError::invalid_json(format!(
                    "the body is not JSON: {e}"
                )));
            }
        }
    };
    let mut method = parts.method.clone();
    if method == Method::POST
        && let Some(m) = body.get("_method")
    {
        method = match m.as_str() {
            Some("GET") => Method::GET,
            Some("PUT") => Method::PUT,
            Some("DELETE") => Method::DELETE,
            Some("POST") => Method::POST,
            _ => {
                return Err(ParseError::invalid_json(
                    "_method must be GET, POST, PUT or DELETE",
                ));
            }
        };
    }
    let token = header_token(&parts.headers).or_else(|| {
        body.get("_SessionToken")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let mut params = Map::new();
    let query: Query<Vec<(String, String)>> = Query::try_from_uri(&parts.uri)
        .map_err(|e| ParseError::invalid_query(format!("the query string is malformed: {e}")))?;
    for (k, v) in query.0 {
        params.insert(k, Value::String(v));
    }
    if method == Method::GET && parts.method == Method::POST {
        // The JS SDK sends a read's parameters in the body.
        for (k, v) in &body {
            if !k.starts_with('_') {
                params.insert(k.clone(), v.clone());
            }
        }
        body.clear();
    }
    let path = parts.uri.path();
    let rest = path.strip_prefix("/parse").unwrap_or(path);
    Ok(Call {
        method,
        segments: rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        params,
        body,
        token,
    })
}

fn session(state: &ApiState, token: &Option<String>) -> ApiResult<Session> {
    match token {
        Some(t) => state.inner.accounts.session(t),
        None => Err(ParseError::new(
            code::SESSION_MISSING,
            "this call needs a session: log in (POST /parse/login) and send its sessionToken as X-Parse-Session-Token",
        )),
    }
}

fn field_str<'a>(m: &'a Map<String, Value>, k: &str) -> ApiResult<&'a str> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ParseError::incorrect_type(format!("{k} must be a string"))),
    }
}

async fn user_with_session(state: &ApiState, l: &LoggedIn) -> ApiResult<Value> {
    let store = &state.inner.store;
    let mut v = match store.profile(&l.session.user)? {
        Some(p) => state.user_object(&p, &l.session.user),
        None => state
            .local_user_object(&l.session.user, &l.session.user)
            .unwrap_or_else(
                || json!({"objectId": l.session.user.to_hex(), "username": l.session.username}),
            ),
    };
    if let Value::Object(o) = &mut v {
        o.insert(
            "sessionToken".into(),
            Value::String(l.session.token.clone()),
        );
        o.insert("username".into(), Value::String(l.session.username.clone()));
    }
    Ok(v)
}

pub(crate) async fn dispatch(state: &ApiState, call: Call) -> ApiResult<(StatusCode, Value)> {
    let segs: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let m = &call.method;
    let ok = |v: Value| Ok((StatusCode::OK, v));
    match (m.as_str(), segs.as_slice()) {
        ("POST", ["users"]) | ("POST", ["classes", "_User"]) => {
            let username = field_str(&call.body, "username")?.to_owned();
            let password = field_str(&call.body, "password")?.to_owned();
            let email = match call.body.get("email") {
                Some(Value::String(e)) => Some(e.clone()),
                _ => None,
            };
            for k in call.body.keys() {
                if !k.starts_with('_')
                    && !matches!(
                        k.as_str(),
                        "username" | "password" | "email" | "role" | "ACL"
                    )
                {
                    return Err(ParseError::new(
                        code::INVALID_KEY_NAME,
                        format!("sign-up takes username, password, email and role, not {k:?}"),
                    ));
                }
            }
            let role = match call.body.get("role") {
                None | Some(Value::Null) => None,
                Some(v) => Some(crate::ops::role_value(v)?),
            };
            // The new user's id is not known yet: check what an ACL says
            // about everyone (read, not write) before anything is made;
            // its own user's grants are the rules' anyway.
            if let Some(acl) = call.body.get("ACL").filter(|v| !v.is_null()) {
                crate::acl::check_sign_up(acl)?;
            }
            // Check the name against the profile rules before sealing anything.
            if !username.is_empty() {
                let probe = tincan_core::UserKey::from_seed(&[7; 32]);
                let rec = tincan_core::make::profile(&probe, tincan_core::Hlc::ZERO, &username)
                    .map_err(|e| ParseError::new(code::VALIDATION_ERROR, e.to_string()))?;
                tincan_core::rules::check_standalone(rec.record()).map_err(|e| {
                    ParseError::new(
                        code::VALIDATION_ERROR,
                        format!("cannot use that username: {e}"),
                    )
                })?;
            }
            let l = state
                .inner
                .accounts
                .sign_up(&username, &password, email, role)
                .await?;
            state.unlock(&l.session).await?;
            let hlc = state.write_profile(&l.session).await?;
            Ok((
                StatusCode::CREATED,
                json!({
                    "objectId": l.session.user.to_hex(),
                    "createdAt": model::iso_date(hlc.physical_ms()),
                    "sessionToken": l.session.token,
                    "username": l.session.username,
                }),
            ))
        }
        ("GET" | "POST", ["login"]) => {
            let src = if m == Method::GET {
                &call.params
            } else {
                &call.body
            };
            let username = field_str(src, "username")?.to_owned();
            let password = field_str(src, "password")?.to_owned();
            let l = state.inner.accounts.log_in(&username, &password).await?;
            state.unlock(&l.session).await?;
            ok(user_with_session(state, &l).await?)
        }
        ("POST", ["logout"]) => {
            let s = session(state, &call.token)?;
            state.inner.accounts.log_out(&s.token);
            ok(json!({}))
        }
        ("GET", ["sessions", "me"]) => {
            let s = session(state, &call.token)?;
            ok(json!({
                "sessionToken": s.token,
                "user": model::pointer("_User", &s.user.to_hex()),
                "createdAt": model::iso_date(s.created_ms),
                "expiresAt": model::date_object(s.expires_ms),
                "createdWith": {"action": "login", "authProvider": "password"},
                "restricted": false,
            }))
        }
        ("GET", ["users", "me"]) => {
            let s = session(state, &call.token)?;
            let email = state.inner.accounts.email(&s.user);
            let v = user_with_session(state, &LoggedIn { session: s, email }).await?;
            ok(v)
        }
        ("GET", ["health"]) => ok(json!({"status": "ok"})),
        ("POST", ["batch"]) => {
            let s = session(state, &call.token)?;
            ok(batch(state, &s, &call).await?)
        }
        (_, ["users", rest @ ..]) => {
            let mut segments = vec!["classes".to_owned(), "_User".to_owned()];
            segments.extend(rest.iter().map(|s| (*s).to_owned()));
            Box::pin(dispatch(state, Call { segments, ..call })).await
        }
        (method, ["classes", class, rest @ ..]) if rest.len() <= 1 => {
            let class = Class::from_name(class)?;
            let s = session(state, &call.token)?;
            match (method, rest) {
                ("GET", []) => {
                    let opts = FindOptions::from_params(&call.params)?;
                    let (page, total) = state.find(class, &opts, &s.user)?;
                    let mut out =
                        json!({"results": if opts.limit == 0 { Vec::new() } else { page }});
                    if opts.count {
                        out["count"] = json!(total);
                    }
                    ok(out)
                }
                ("POST", []) => Ok((
                    StatusCode::CREATED,
                    state.create(&s, class, &call.body).await?,
                )),
                ("GET", [id]) => {
                    let opts = FindOptions::from_params(&call.params)?;
                    ok(state.get(class, id, &opts, &s.user)?)
                }
                ("PUT", [id]) => ok(state.update(&s, class, id, &call.body).await?),
                ("DELETE", [id]) => {
                    state.delete(&s, class, id).await?;
                    ok(json!({}))
                }
                _ => Err(ParseError::not_found(format!(
                    "{method} is not served on /classes/{}{}: use GET or POST on the class, GET, PUT or DELETE on an object",
                    class.name(),
                    rest.first().map(|r| format!("/{r}")).unwrap_or_default()
                ))),
            }
        }
        _ => Err(ParseError::not_found(format!(
            "no endpoint {} /parse/{}: see /openapi.json",
            m,
            call.segments.join("/")
        ))),
    }
}

async fn batch(state: &ApiState, _s: &Session, call: &Call) -> ApiResult<Value> {
    let requests = call
        .body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ParseError::invalid_json(
                "a batch is {\"requests\":[{\"method\":..,\"path\":..,\"body\":..}]}",
            )
        })?;
    if requests.len() > MAX_BATCH {
        return Err(ParseError::invalid_json(format!(
            "a batch holds at most {MAX_BATCH} requests"
        )));
    }
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let method = match r.get("method").and_then(Value::as_str) {
            Some("GET") => Method::GET,
            Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some("DELETE") => Method::DELETE,
            _ => {
                return Err(ParseError::invalid_json(
                    "each batch request needs a method: GET, POST, PUT or DELETE",
                ));
            }
        };
        let path = r.get("path").and_then(Value::as_str).ok_or_else(|| {
            ParseError::invalid_json("each batch request needs a path such as /parse/classes/Room")
        })?;
        let rest = path.strip_prefix("/parse").unwrap_or(path);
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if segments.first().map(String::as_str) != Some("classes") {
            return Err(ParseError::invalid_json(format!(
                "a batch may only hold /parse/classes/... requests, not {path:?}"
            )));
        }
        let body = match r.get("body") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(ParseError::invalid_json(
                    "a batch request's body must be an object",
                ));
            }
        };
        let (params, body) = if method == Method::GET {
            (body, Map::new())
        } else {
            (Map::new(), body)
        };
        let sub = Call {
            method,
            segments,
            params,
            body,
            token: call.token.clone(),
        };
        match Box::pin(dispatch(state, sub)).await {
            Ok((_, v)) => out.push(json!({"success": v})),
            Err(e) => out.push(json!({"error": e.to_json()})),
        }
    }
    Ok(Value::Array(out))
}

/// A JSON response with a status (for other modules' handlers).
pub(crate) fn json_response(status: StatusCode, v: Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
