//! What the API does, whatever the dialect (Parse REST, LiveQuery, GraphQL):
//! reads with the read rule applied, and writes as records signed by the
//! session's user, applied to the store and gossiped.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tincan_core::{
    Body, ChannelId, Hlc, JoinPolicy, MemberRole, MemberState, RoomId, RoomSettings, RuleError,
    SignedRecord, UserId, UserKey, make, permissions,
};
use tincan_store::{Applied, ApplyError, RoomView};

use crate::ApiState;
use crate::accounts::Session;
use crate::acl::{self, Acl};
use crate::error::{ApiResult, ParseError, code};
use crate::model::{self, Class};
use crate::query::{FindOptions, project};

/// Most log entries a RoomLog query that the indexes cannot answer scans
/// (one over every room, or with a `where` on other fields); past it the
/// query is refused with what to ask instead, never cut short silently.
const MAX_LOG_SCAN: usize = 100_000;

/// The objectId an exact equality on a pointer field asks for: a pointer
/// of `class`, or `{"$eq": pointer}` alone. Anything else (another
/// operator beside it, another class, a plain string, which the matcher
/// does not take for a pointer) is not one.
fn exact_id(cond: &Value, class: &str) -> Option<String> {
    match cond {
        Value::Object(o) if o.get("__type").and_then(Value::as_str) == Some("Pointer") => {
            if o.get("className").and_then(Value::as_str) != Some(class) {
                return None;
            }
            o.get("objectId").and_then(Value::as_str).map(str::to_owned)
        }
        Value::Object(o) if o.len() == 1 => exact_id(o.get("$eq")?, class),
        _ => None,
    }
}

fn rule_error(e: RuleError) -> ParseError {
    match e {
        RuleError::InvalidField { .. } => ParseError::new(code::VALIDATION_ERROR, e.to_string()),
        other => ParseError::forbidden(format!(
            "refused by the rules: {other}; nothing was changed"
        )),
    }
}

/// A local write that could not be prepared: no key yet for an
/// invite-only room (119, with what to wait for), or a store failure.
fn write_error(e: tincan_store::WriteError) -> ParseError {
    match e {
        tincan_store::WriteError::NoKey { .. }
        | tincan_store::WriteError::NotOwner { .. }
        | tincan_store::WriteError::UnknownRoom(_) => {
            ParseError::forbidden(format!("{e}; nothing was changed"))
        }
        other => ParseError::internal(other),
    }
}

fn sign_error(e: tincan_core::SignError) -> ParseError {
    ParseError::new(
        code::VALIDATION_ERROR,
        format!("cannot make that record: {e}"),
    )
}

/// The fields of a write, without the SDK's envelope (`_method`,
/// `_SessionToken` ...) and without what a client may send but not set
/// (`objectId`, dates, `ACL`: signatures take the place of ACLs).
pub(crate) fn write_fields(
    class: Class,
    body: &Map<String, Value>,
) -> ApiResult<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in body {
        if k.starts_with('_')
            || matches!(
                k.as_str(),
                "ACL" | "objectId" | "createdAt" | "updatedAt" | "className"
            )
        {
            continue;
        }
        if !class.writable_fields().contains(&k.as_str()) {
            return Err(ParseError::new(
                code::INVALID_KEY_NAME,
                format!(
                    "{} has no field {k:?} a client can set: its fields are {}",
                    class.name(),
                    class.writable_fields().join(", ")
                ),
            ));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

fn string_field(
    fields: &Map<String, Value>,
    name: &str,
    class: Class,
) -> ApiResult<Option<String>> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ParseError::incorrect_type(format!(
            "{}.{name} must be a string",
            class.name()
        ))),
    }
}

fn is_delete_op(v: &Value) -> bool {
    v.get("__op").and_then(Value::as_str) == Some("Delete")
}

impl ApiState {
    /// Applies a record a local user signed (sealed first when its room is
    /// invite-only: [`tincan_store::Store::prepare_signed`]) and gossips
    /// it; returns the outcome and the id of the record as written (a sealed
    /// record has an id of its own). A refusal by the rules is 119 (142 for
    /// a bad value) and changes nothing.
    pub(crate) async fn write(
        &self,
        author: &UserKey,
        record: SignedRecord,
    ) -> ApiResult<(Applied, tincan_core::RecordId)> {
        let store = self.inner.store.clone();
        let author = UserKey::from_seed(&author.seed());
        let prepared = tokio::task::spawn_blocking(move || store.prepare_signed(&author, record))
            .await
            .map_err(ParseError::internal)?;
        let record = match prepared {
            Ok(p) => p,
            Err(e) => return Err(write_error(e)),
        };
        // Durable when it answers; shares its commit with concurrent writes.
        let applied = match self.inner.writer.apply(record.clone()).await {
            Ok(a) => a,
            Err(ApplyError::Rejected(e)) => return Err(rule_error(e)),
            Err(ApplyError::Decode(e)) => return Err(ParseError::internal(e)),
            Err(e) => return Err(ParseError::internal(e)),
        };
        let id = record.id();
        if let (Some(mesh), Applied::Stored) = (&self.inner.mesh, &applied) {
            mesh.gossip_own(record).await;
        }
        Ok((applied, id))
    }

    /// Keeps a signed-in user's key in the store's memory (never on
    /// disk), so that grants to them are opened and the invite-only rooms
    /// they own have their keys.
    pub(crate) async fn unlock(&self, s: &Session) -> ApiResult<()> {
        let store = self.inner.store.clone();
        let key = UserKey::from_seed(&s.key.seed());
        tokio::task::spawn_blocking(move || store.unlock_user(&key))
            .await
            .map_err(ParseError::internal)??;
        Ok(())
    }

    /// A timestamp for a new record.
    pub(crate) fn now(&self) -> ApiResult<Hlc> {
        Ok(self.inner.clock.now(&self.inner.store)?)
    }

    /// Follows a room's gossip and sync, when the mesh runs.
    pub(crate) async fn follow(&self, room: RoomId) {
        if let Some(mesh) = &self.inner.mesh
            && let Err(e) = mesh.subscribe_room(room).await
        {
            tracing::warn!(%room, error = %e, "cannot follow the room on the mesh");
        }
    }

    /// The room, fetched from peers first when this node has not seen it
    /// (follows it and waits for catch-up sync, bounded).
    pub(crate) async fn fetch_room(&self, id: RoomId) -> ApiResult<RoomView> {
        if let Some(r) = self.inner.store.room(&id)? {
            return Ok(r);
        }
        if self.inner.mesh.is_none() {
            return Err(ParseError::not_found(format!("no Room {id} on this node")));
        }
        self.follow(id).await;
        let deadline = Instant::now() + self.inner.config.room_fetch_timeout;
        while Instant::now() < deadline {
            if let Some(r) = self.inner.store.room(&id)? {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(mesh) = &self.inner.mesh {
            let _ = mesh.unsubscribe_room(id).await;
        }
        Err(ParseError::not_found(format!(
            "Room {id} did not arrive from any peer within {} s: check the node's peers (GET /v1/peers), or that its owner's node is up",
            self.inner.config.room_fetch_timeout.as_secs()
        )))
    }

    /// A visible room, or 101.
    fn readable_room(&self, id: &RoomId, user: &UserId) -> ApiResult<RoomView> {
        let store = &self.inner.store;
        match store.room(id)? {
            Some(r) if model::can_read_room(store, &r, user)? => Ok(r),
            _ => Err(ParseError::not_found(format!(
                "no Room {id} visible to you on this node"
            ))),
        }
    }

    /// One object as `user` may see it, or None.
    pub(crate) fn object(&self, class: Class, id: &str, user: &UserId) -> ApiResult<Option<Value>> {
        let store = &self.inner.store;
        Ok(match class {
            Class::User => {
                let Ok(u) = UserId::from_hex(id) else {
                    return Ok(None);
                };
                match store.profile(&u)? {
                    Some(p) => Some(self.user_object(&p, user)),
                    None => self.local_user_object(&u, user),
                }
            }
            Class::Room => {
                let Ok(r) = RoomId::from_hex(id) else {
                    return Ok(None);
                };
                model::room_by_id(store, &r, user)?
            }
            Class::Channel => {
                let Ok(c) = ChannelId::from_hex(id) else {
                    return Ok(None);
                };
                match model::find_channel(store, &c, user)? {
                    Some((r, c)) => Some(model::channel_json(
                        &c,
                        &Acl::contents(store, &r, true)?.to_json(),
                    )),
                    None => None,
                }
            }
            Class::RoomLog => {
                let Ok(r) = tincan_core::RecordId::from_hex(id) else {
                    return Ok(None);
                };
                match model::find_log(store, &r, user)? {
                    Some((r, e)) => Some(model::log_json(
                        &e,
                        &Acl::contents(store, &r, false)?.to_json(),
                    )),
                    None => None,
                }
            }
        })
    }

    /// A user's JSON with their ACL, and the `role` of a local account;
    /// their own also shows their e-mail.
    pub(crate) fn user_object(&self, p: &tincan_store::ProfileView, viewer: &UserId) -> Value {
        let user = &p.profile.user;
        let mut v = model::user_json(p);
        if let Value::Object(o) = &mut v {
            o.insert("ACL".into(), Acl::user(user).to_json());
            if let Some(role) = self.inner.accounts.role(user) {
                o.insert("role".into(), Value::String(role));
            }
            if user == viewer
                && let Some(email) = self.inner.accounts.email(viewer)
            {
                o.insert("email".into(), Value::String(email));
            }
        }
        v
    }

    /// A local account whose profile the store does not hold (yet): the
    /// store keeps the profiles of users with a standing (a room of theirs
    /// or a membership), so a new account's profile waits until then; the
    /// account is still this node's to show.
    pub(crate) fn local_user_object(&self, user: &UserId, viewer: &UserId) -> Option<Value> {
        let accounts = &self.inner.accounts;
        let username = accounts.username(user)?;
        let mut o = Map::new();
        o.insert("objectId".into(), Value::String(user.to_hex()));
        o.insert("username".into(), Value::String(username));
        o.insert(
            "fingerprint".into(),
            Value::String(user.fingerprint().to_string()),
        );
        o.insert("ACL".into(), Acl::user(user).to_json());
        if let Some(role) = accounts.role(user) {
            o.insert("role".into(), Value::String(role));
        }
        if user == viewer
            && let Some(email) = accounts.email(viewer)
        {
            o.insert("email".into(), Value::String(email));
        }
        Some(Value::Object(o))
    }

    /// Every object of `class` that `user` may see and that could match
    /// `opts` (narrowed by a `room` equality when there is one).
    pub(crate) fn candidates(
        &self,
        class: Class,
        opts: &FindOptions,
        user: &UserId,
    ) -> ApiResult<Vec<Value>> {
        let store = &self.inner.store;
        let rooms_to_scan = |field: &str| -> ApiResult<Vec<RoomView>> {
            match opts.filter.equal_id(field) {
                Some(id) => match RoomId::from_hex(&id) {
                    Ok(rid) => Ok(store.room(&rid)?.into_iter().collect()),
                    Err(_) => Ok(Vec::new()),
                },
                None => Ok(store.rooms()?),
            }
        };
        let mut out = Vec::new();
        match class {
            Class::User => {
                let profiles = store.profiles()?;
                for u in self.inner.accounts.local_users() {
                    if !profiles.iter().any(|p| p.profile.user == u)
                        && let Some(o) = self.local_user_object(&u, user)
                    {
                        out.push(o);
                    }
                }
                for p in profiles {
                    out.push(self.user_object(&p, user));
                }
            }
            Class::Room => {
                for r in store.rooms()? {
                    out.push(model::room_for(store, &r, user)?);
                }
            }
            Class::Channel => {
                for r in rooms_to_scan("room")? {
                    if !model::can_read_room(store, &r, user)? {
                        continue;
                    }
                    let acl = Acl::contents(store, &r, true)?.to_json();
                    for c in store.channels(&r.id)? {
                        out.push(model::channel_json(&c, &acl));
                    }
                }
            }
            Class::RoomLog => {
                let mut scanned = 0usize;
                for r in rooms_to_scan("room")? {
                    if !model::can_read_room(store, &r, user)? {
                        continue;
                    }
                    let acl = Acl::contents(store, &r, false)?.to_json();
                    let mut after = None;
                    loop {
                        let page = store.log(&r.id, Hlc::ZERO, Hlc::MAX, after, 1000)?;
                        for e in &page.entries {
                            out.push(model::log_json(e, &acl));
                        }
                        scanned += page.entries.len();
                        if scanned > MAX_LOG_SCAN {
                            return Err(ParseError::invalid_query(format!(
                                "this RoomLog query would scan more than {MAX_LOG_SCAN} entries: ask for one room (where room is a pointer), optionally one user (where user is a pointer), ordered by createdAt, updatedAt or timestamp, which the indexes answer at any size; nothing was cut short"
                            )));
                        }
                        match page.next {
                            Some(n) if !page.entries.is_empty() => after = Some(n),
                            _ => break,
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Replaces pointer fields named in `include` by the objects they point at.
    pub(crate) fn include(
        &self,
        object: &mut Value,
        include: &[String],
        user: &UserId,
    ) -> ApiResult<()> {
        for field in include {
            let field = field.split('.').next().unwrap_or(field);
            let Some(Value::Object(ptr)) = object.get(field) else {
                continue;
            };
            if ptr.get("__type").and_then(Value::as_str) != Some("Pointer") {
                continue;
            }
            let (Some(class), Some(id)) = (
                ptr.get("className").and_then(Value::as_str),
                ptr.get("objectId").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Ok(class) = Class::from_name(class) else {
                continue;
            };
            if let Some(Value::Object(mut full)) = self.object(class, id, user)? {
                full.insert("__type".into(), Value::String("Object".into()));
                full.insert("className".into(), Value::String(class.name().into()));
                if let Value::Object(o) = object {
                    o.insert(field.to_owned(), Value::Object(full));
                }
            }
        }
        Ok(())
    }

    /// A RoomLog query that the log's indexes answer, if `opts` is one:
    /// one room, at most one user (exact pointer equalities), ordered by
    /// time (`createdAt`, `updatedAt`, `timestamp`, ascending or not) or
    /// not at all. Its cost is the page plus `skip` index keys; the count
    /// comes from counters the write path keeps. None: not such a query.
    fn indexed_log_find(
        &self,
        opts: &FindOptions,
        viewer: &UserId,
    ) -> ApiResult<Option<(Vec<Value>, usize)>> {
        let fields = opts.filter.fields();
        if fields.keys().any(|k| k != "room" && k != "user") {
            return Ok(None);
        }
        let Some(room) = fields.get("room").and_then(|c| exact_id(c, "Room")) else {
            return Ok(None);
        };
        let by_user = match fields.get("user") {
            None => None,
            Some(c) => match exact_id(c, "_User") {
                Some(u) => Some(u),
                None => return Ok(None),
            },
        };
        let order = match opts.order.as_slice() {
            [] => tincan_store::LogOrder::OldestFirst,
            [k] => match k.as_str() {
                "createdAt" | "updatedAt" | "timestamp" => tincan_store::LogOrder::OldestFirst,
                "-createdAt" | "-updatedAt" | "-timestamp" => tincan_store::LogOrder::NewestFirst,
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        let store = &self.inner.store;
        let nothing = Ok(Some((Vec::new(), 0)));
        let Ok(room) = RoomId::from_hex(&room) else {
            return nothing;
        };
        let by_user = match by_user.map(|u| UserId::from_hex(&u)) {
            None => None,
            Some(Ok(u)) => Some(u),
            Some(Err(_)) => return nothing,
        };
        let Some(r) = store.room(&room)? else {
            return nothing;
        };
        if !model::can_read_room(store, &r, viewer)? {
            return nothing;
        }
        let acl = Acl::contents(store, &r, false)?.to_json();
        let entries = store.log_query(&tincan_store::LogQuery {
            room,
            user: by_user,
            order,
            skip: opts.skip,
            limit: opts.limit,
        })?;
        let total = store.log_count(&room, by_user.as_ref())?;
        let page = entries.iter().map(|e| model::log_json(e, &acl)).collect();
        Ok(Some((page, usize::try_from(total).unwrap_or(usize::MAX))))
    }

    /// A query: the page and the total count of matches.
    pub(crate) fn find(
        &self,
        class: Class,
        opts: &FindOptions,
        user: &UserId,
    ) -> ApiResult<(Vec<Value>, usize)> {
        let indexed = match class {
            Class::RoomLog => self.indexed_log_find(opts, user)?,
            _ => None,
        };
        let (mut page, total) = match indexed {
            Some(found) => found,
            None => opts.run(self.candidates(class, opts, user)?),
        };
        for o in &mut page {
            self.include(o, &opts.include, user)?;
            if let Some(keys) = &opts.keys {
                project(o, keys);
            }
        }
        Ok((page, total))
    }

    /// `GET /classes/X/id`.
    pub(crate) fn get(
        &self,
        class: Class,
        id: &str,
        opts: &FindOptions,
        user: &UserId,
    ) -> ApiResult<Value> {
        let mut o = self.object(class, id, user)?.ok_or_else(|| {
            ParseError::not_found(format!(
                "no {} {id:?} visible to you on this node",
                class.name()
            ))
        })?;
        self.include(&mut o, &opts.include, user)?;
        if let Some(keys) = &opts.keys {
            project(&mut o, keys);
        }
        Ok(o)
    }

    /// Creates an object; returns `{objectId, createdAt}`.
    pub(crate) async fn create(
        &self,
        s: &Session,
        class: Class,
        body: &Map<String, Value>,
    ) -> ApiResult<Value> {
        let fields = write_fields(class, body)?;
        let key = &s.key;
        let (id, hlc) = match class {
            Class::User => {
                return Err(ParseError::forbidden(
                    "users are made by sign-up: POST /parse/users with a username and a password",
                ));
            }
            Class::Room => {
                let title = string_field(&fields, "title", class)?.ok_or_else(|| {
                    ParseError::new(code::VALIDATION_ERROR, "a Room needs a title")
                })?;
                check_owner(&fields, &s.user, None)?;
                let settings = room_settings(&fields, RoomSettings::default())?;
                // Who else the owner admits at creation (the owner is always a member).
                let members = match fields.get("members") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => added_members(v)?,
                };
                acl::check_body(class, body, || Ok(Acl::room(&s.user)))?;
                let mut nonce = [0u8; 16];
                getrandom::fill(&mut nonce)
                    .map_err(|e| ParseError::internal(format!("no randomness: {e}")))?;
                let hlc = self.now()?;
                let (id, rec) =
                    make::room(key, hlc, nonce, &title, settings).map_err(sign_error)?;
                self.write(&s.key, rec).await?;
                self.follow(id).await;
                if members.iter().any(|m| *m != s.user) {
                    let r = self.inner.store.room(&id)?.ok_or_else(|| {
                        ParseError::internal("a room just written is not in the store")
                    })?;
                    let op = json!({"__op": "AddUnique", "objects": members
                        .iter()
                        .map(|m| model::pointer("_User", &m.to_hex()))
                        .collect::<Vec<_>>()});
                    self.members_op(s, &r, &op).await?;
                }
                (id.to_hex(), hlc)
            }
            Class::Channel => {
                let room_ptr = fields.get("room").ok_or_else(|| {
                    ParseError::new(
                        code::VALIDATION_ERROR,
                        "a Channel needs a room (a pointer to a Room)",
                    )
                })?;
                let room = model::room_id(&model::read_pointer(room_ptr, Class::Room, "room")?)?;
                let r = self.readable_room(&room, &s.user)?;
                let name = string_field(&fields, "name", class)?.ok_or_else(|| {
                    ParseError::new(code::VALIDATION_ERROR, "a Channel needs a name")
                })?;
                let description = string_field(&fields, "description", class)?.unwrap_or_default();
                let perms = match fields.get("permissions") {
                    Some(v) => permission_list(v)?,
                    None => permissions::default_permissions(),
                };
                acl::check_body(class, body, || Acl::contents(&self.inner.store, &r, true))?;
                let id = ChannelId::random().map_err(ParseError::internal)?;
                let hlc = self.now()?;
                let rec = make::channel(key, hlc, r.id, id, &name, &description, perms)
                    .map_err(sign_error)?;
                self.write(&s.key, rec).await?;
                (id.to_hex(), hlc)
            }
            Class::RoomLog => {
                let room_ptr = fields.get("room").ok_or_else(|| {
                    ParseError::new(
                        code::VALIDATION_ERROR,
                        "a RoomLog needs a room (a pointer to a Room)",
                    )
                })?;
                let room = model::room_id(&model::read_pointer(room_ptr, Class::Room, "room")?)?;
                let action = string_field(&fields, "action", class)?.ok_or_else(|| {
                    ParseError::new(
                        code::VALIDATION_ERROR,
                        "a RoomLog needs an action (a string)",
                    )
                })?;
                if let Some(u) = fields.get("user").filter(|v| !v.is_null()) {
                    let user = model::read_pointer(u, Class::User, "user")?;
                    if user != s.user.to_hex() {
                        return Err(ParseError::forbidden(format!(
                            "a RoomLog's user is the user who signs it: set user to yourself ({}) or leave it out; nothing was written",
                            s.user
                        )));
                    }
                }
                let r = self.fetch_room(room).await?;
                let mut hlc = self.now()?;
                if let Some(t) = fields.get("timestamp").filter(|v| !v.is_null()) {
                    check_timestamp(t, hlc.physical_ms())?;
                }
                acl::check_body(class, body, || Acl::contents(&self.inner.store, &r, false))?;
                // The log rule: a log entry in an open room joins its author
                // first; an invite-only room takes entries only from members.
                let store = &self.inner.store;
                if r.owner != s.user && !store.membership(&r.id, &s.user)?.is_member() {
                    if r.room.settings.join_policy != JoinPolicy::Open {
                        return Err(ParseError::forbidden(format!(
                            "room {} is invite-only and you are not a member: its owner admits members (a log entry joins its author only in an open room); nothing was written",
                            r.id
                        )));
                    }
                    self.write(key, make::join(key, hlc, r.id).map_err(sign_error)?)
                        .await?;
                    let now = store.membership(&r.id, &s.user)?;
                    if !now.is_member() {
                        return Err(ParseError::forbidden(format!(
                            "you cannot join room {} (your membership is {}), so you cannot write its log",
                            r.id,
                            now.as_str()
                        )));
                    }
                    self.follow(r.id).await;
                    hlc = self.now()?;
                }
                let rec = make::log(key, hlc, r.id, &action).map_err(sign_error)?;
                let (_, id) = self.write(&s.key, rec).await?;
                (id.to_hex(), hlc)
            }
        };
        Ok(json!({"objectId": id, "createdAt": model::iso_date(hlc.physical_ms())}))
    }

    /// Updates an object; returns `{updatedAt}`.
    pub(crate) async fn update(
        &self,
        s: &Session,
        class: Class,
        id: &str,
        body: &Map<String, Value>,
    ) -> ApiResult<Value> {
        let fields = write_fields(class, body)?;
        let key = &s.key;
        let store = &self.inner.store;
        let mut last = None;
        match class {
            Class::User => return self.update_user(s, id, &fields, body).await,
            Class::Room => {
                let rid = model::room_id(id)?;
                let r = if fields.contains_key("members") {
                    self.fetch_room(rid).await?
                } else {
                    store.room(&rid)?.ok_or_else(|| {
                        ParseError::not_found(format!("no Room {id} on this node"))
                    })?
                };
                check_owner(&fields, &s.user, Some(&r))?;
                acl::check_body(class, body, || Ok(Acl::room(&r.owner)))?;
                let changes_room = fields.keys().any(|k| k != "members" && k != "owner");
                if changes_room {
                    if r.owner != s.user {
                        return Err(ParseError::forbidden(format!(
                            "only the owner of room {} may change its title or settings; nothing was changed",
                            r.id
                        )));
                    }
                    let mut room = r.room.clone();
                    if let Some(t) = string_field(&fields, "title", class)? {
                        room.title = t;
                    }
                    room.settings = room_settings(&fields, room.settings)?;
                    let hlc = self.now()?;
                    let (_, rec) = make::room(key, hlc, room.nonce, &room.title, room.settings)
                        .map_err(sign_error)?;
                    self.write(&s.key, rec).await?;
                    last = Some(hlc);
                }
                if let Some(op) = fields.get("members") {
                    let op = match op {
                        Value::Array(_) => self.members_set(&r, op)?,
                        _ => vec![op.clone()],
                    };
                    for op in &op {
                        if let Some(h) = self.members_op(s, &r, op).await? {
                            last = Some(h);
                        }
                    }
                }
            }
            Class::Channel => {
                let cid = model::channel_id(id)?;
                let (r, c) = model::find_channel(store, &cid, &s.user)?.ok_or_else(|| {
                    ParseError::not_found(format!("no Channel {id} visible to you on this node"))
                })?;
                if let Some(room) = fields.get("room")
                    && model::read_pointer(room, Class::Room, "room")? != r.id.to_hex()
                {
                    return Err(ParseError::new(
                        code::VALIDATION_ERROR,
                        "a Channel cannot move to another room",
                    ));
                }
                let mut ch = c.channel.clone();
                if let Some(n) = string_field(&fields, "name", class)? {
                    ch.name = n;
                }
                if let Some(d) = string_field(&fields, "description", class)? {
                    ch.description = d;
                }
                if let Some(p) = fields.get("permissions") {
                    ch.permissions = permission_list(p)?;
                }
                acl::check_body(class, body, || Acl::contents(store, &r, true))?;
                let hlc = self.now()?;
                let rec = make::channel(
                    key,
                    hlc,
                    r.id,
                    ch.id,
                    &ch.name,
                    &ch.description,
                    ch.permissions,
                )
                .map_err(sign_error)?;
                self.write(&s.key, rec).await?;
                last = Some(hlc);
            }
            Class::RoomLog => {
                return Err(ParseError::forbidden(
                    "log entries are never edited: write a new RoomLog instead",
                ));
            }
        }
        let hlc = match last {
            Some(h) => h,
            None => self.now()?,
        };
        Ok(json!({"updatedAt": model::iso_date(hlc.physical_ms())}))
    }

    /// `members` of a Room: `AddUnique`/`Add` joins (or, by the owner,
    /// admits), `Remove` leaves (or, by the owner, kicks). Returns the
    /// time of the last record written.
    async fn members_op(&self, s: &Session, r: &RoomView, op: &Value) -> ApiResult<Option<Hlc>> {
        let kind = op.get("__op").and_then(Value::as_str).unwrap_or_default();
        let objects = op.get("objects").and_then(Value::as_array);
        let (state_self, state_other, objects) = match (kind, objects) {
            ("AddUnique" | "Add", Some(o)) => (MemberState::Joined, MemberState::Joined, o),
            ("Remove", Some(o)) => (MemberState::Left, MemberState::Kicked, o),
            _ => {
                return Err(ParseError::incorrect_type(
                    "members changes with {\"__op\":\"AddUnique\"|\"Remove\",\"objects\":[pointers to _User]}: add yourself to join, remove yourself to leave",
                ));
            }
        };
        let mut last = None;
        for o in objects {
            let user = model::user_id(&model::read_pointer(o, Class::User, "members")?)?;
            let rec = if user == s.user {
                if r.owner == s.user {
                    // The owner is always a member.
                    continue;
                }
                let hlc = self.now()?;
                last = Some(hlc);
                make::member(&s.key, hlc, r.id, user, MemberRole::Participant, state_self)
                    .map_err(sign_error)?
            } else {
                if r.owner != s.user {
                    return Err(ParseError::forbidden(format!(
                        "only the owner of room {} may add or remove other members; nothing was changed",
                        r.id
                    )));
                }
                let hlc = self.now()?;
                last = Some(hlc);
                if state_other == MemberState::Kicked {
                    // A removal is the Member record and a cutoff (their
                    // entries dated after what we have seen stay hidden).
                    let store = self.inner.store.clone();
                    let key = UserKey::from_seed(&s.key.seed());
                    let room = r.id;
                    let records = tokio::task::spawn_blocking(move || {
                        store.removal(&key, &room, &user, MemberState::Kicked, hlc)
                    })
                    .await
                    .map_err(ParseError::internal)?
                    .map_err(write_error)?;
                    for rec in records {
                        self.write(&s.key, rec).await?;
                    }
                    continue;
                }
                make::member(
                    &s.key,
                    hlc,
                    r.id,
                    user,
                    MemberRole::Participant,
                    state_other,
                )
                .map_err(sign_error)?
            };
            self.write(&s.key, rec).await?;
            if user == s.user {
                match state_self {
                    MemberState::Joined => self.follow(r.id).await,
                    _ => {
                        if let Some(mesh) = &self.inner.mesh
                            && !self.any_local_member(&r.id)?
                        {
                            let _ = mesh.unsubscribe_room(r.id).await;
                        }
                    }
                }
            }
        }
        Ok(last)
    }

    /// `members` set to a whole array (the SDKs' `set('members', [...])`):
    /// the `AddUnique` and `Remove` operations that make the room's members
    /// that list. The owner is always a member, listed or not.
    fn members_set(&self, r: &RoomView, list: &Value) -> ApiResult<Vec<Value>> {
        let want: std::collections::BTreeSet<UserId> = added_members(list)?.into_iter().collect();
        let now: std::collections::BTreeSet<UserId> = self
            .inner
            .store
            .members(&r.id)?
            .into_iter()
            .filter(|m| m.membership.is_member())
            .map(|m| m.user)
            .chain([r.owner])
            .collect();
        let ptrs = |users: Vec<&UserId>| -> Vec<Value> {
            users
                .into_iter()
                .filter(|u| **u != r.owner)
                .map(|u| model::pointer("_User", &u.to_hex()))
                .collect()
        };
        let add = ptrs(want.difference(&now).collect());
        let remove = ptrs(now.difference(&want).collect());
        let mut ops = Vec::new();
        if !add.is_empty() {
            ops.push(json!({"__op": "AddUnique", "objects": add}));
        }
        if !remove.is_empty() {
            ops.push(json!({"__op": "Remove", "objects": remove}));
        }
        Ok(ops)
    }

    fn any_local_member(&self, room: &RoomId) -> ApiResult<bool> {
        let store = &self.inner.store;
        for u in self.inner.accounts.local_users() {
            if store.membership(room, &u)?.is_member() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn update_user(
        &self,
        s: &Session,
        id: &str,
        fields: &Map<String, Value>,
        body: &Map<String, Value>,
    ) -> ApiResult<Value> {
        let user = model::user_id(id)?;
        if user != s.user {
            return Err(ParseError::forbidden(
                "a user may change only their own account (its username, password and role); nothing was changed",
            ));
        }
        acl::check_body(Class::User, body, || Ok(Acl::user(&user)))?;
        let role = match fields.get("role") {
            None => None,
            Some(v) if v.is_null() || is_delete_op(v) => Some(None),
            Some(v) => Some(Some(role_value(v)?)),
        };
        if fields.contains_key("email") {
            return Err(ParseError::forbidden(
                "the e-mail is set at sign-up and stays on this machine",
            ));
        }
        let mut hlc = self.now()?;
        if let Some(role) = role {
            self.inner.accounts.set_role(&s.user, role)?;
        }
        if let Some(name) = string_field(fields, "username", Class::User)? {
            let rec = make::profile(&s.key, hlc, &name).map_err(sign_error)?;
            tincan_core::rules::check_standalone(rec.record()).map_err(rule_error)?;
            self.inner.accounts.rename(&s.user, &name)?;
            self.write(&s.key, rec).await?;
        }
        if let Some(pw) = string_field(fields, "password", Class::User)? {
            self.inner.accounts.change_password(s, &pw).await?;
            hlc = self.now()?;
        }
        Ok(json!({"updatedAt": model::iso_date(hlc.physical_ms())}))
    }

    /// Deletes an object.
    pub(crate) async fn delete(&self, s: &Session, class: Class, id: &str) -> ApiResult<()> {
        let store = &self.inner.store;
        match class {
            Class::User => {
                let user = model::user_id(id)?;
                if user != s.user {
                    return Err(ParseError::forbidden(
                        "a user may delete only their own account",
                    ));
                }
                self.inner.accounts.delete(&user)?;
                // Nobody could drive a session left to a deleted account.
                if let Some(v) = &self.inner.voice
                    && v.session_user() == Some(user)
                    && let Err(e) = v.leave()
                {
                    tracing::warn!(error = %e, "cannot leave the deleted account's voice session");
                }
                Ok(())
            }
            Class::Room => {
                let rid = model::room_id(id)?;
                let r = store
                    .room(&rid)?
                    .ok_or_else(|| ParseError::not_found(format!("no Room {id} on this node")))?;
                if r.owner != s.user {
                    return Err(ParseError::forbidden(format!(
                        "only the owner of room {} may delete it; nothing was changed",
                        r.id
                    )));
                }
                let hlc = self.now()?;
                self.write(
                    &s.key,
                    make::delete_room(&s.key, hlc, r.room.nonce).map_err(sign_error)?,
                )
                .await?;
                Ok(())
            }
            Class::Channel => {
                let cid = model::channel_id(id)?;
                let (r, c) = model::find_channel(store, &cid, &s.user)?.ok_or_else(|| {
                    ParseError::not_found(format!("no Channel {id} visible to you on this node"))
                })?;
                let hlc = self.now()?;
                // Signed and applied even for a non-owner: the store's rules
                // refuse it (119), the same rule every node applies.
                self.write(
                    &s.key,
                    make::delete_channel(&s.key, hlc, r.id, c.channel.id).map_err(sign_error)?,
                )
                .await?;
                Ok(())
            }
            Class::RoomLog => Err(ParseError::forbidden(
                "log entries are never deleted (the room's owner may delete the whole room)",
            )),
        }
    }

    /// Writes the profile of a newly signed-up user.
    pub(crate) async fn write_profile(&self, s: &Session) -> ApiResult<Hlc> {
        let hlc = self.now()?;
        let rec = make::profile(&s.key, hlc, &s.username).map_err(sign_error)?;
        self.write(&s.key, rec).await?;
        Ok(hlc)
    }

    /// Follows every room a local account owns or belongs to.
    pub(crate) async fn follow_local_rooms(&self) {
        for u in self.inner.accounts.local_users() {
            match self.inner.store.rooms_of_user(&u) {
                Ok(rooms) => {
                    for r in rooms {
                        self.follow(r.id).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list a local user's rooms"),
            }
        }
    }
}

/// Refuses an `owner` other than the caller: a room's owner is the user
/// whose key signs it (its id derives from that key), so it can neither be
/// someone else at creation nor change later.
fn check_owner(
    fields: &Map<String, Value>,
    caller: &UserId,
    room: Option<&RoomView>,
) -> ApiResult<()> {
    let Some(v) = fields.get("owner") else {
        return Ok(());
    };
    let owner = model::read_pointer(v, Class::User, "owner")?;
    let actual = room.map_or(*caller, |r| r.owner);
    if owner == actual.to_hex() {
        return Ok(());
    }
    Err(ParseError::forbidden(match room {
        None => format!(
            "a Room's owner is the user who creates it (its id derives from their key): set owner to yourself ({caller}) or leave it out; nothing was written"
        ),
        Some(r) => format!(
            "room {}'s owner is {} and cannot change (the room id derives from the owner's key); nothing was changed",
            r.id, r.owner
        ),
    }))
}

/// The users a `members` value adds: a plain array of pointers to `_User`
/// (what the SDKs send for `set('members', [...])`) or an `Add`/`AddUnique`
/// operation.
fn added_members(v: &Value) -> ApiResult<Vec<UserId>> {
    let objects = match v {
        Value::Array(a) => a,
        _ => match (
            v.get("__op").and_then(Value::as_str),
            v.get("objects").and_then(Value::as_array),
        ) {
            (Some("Add" | "AddUnique"), Some(o)) => o,
            _ => {
                return Err(ParseError::incorrect_type(
                    "a new Room's members are an array of pointers to _User (the owner is always one)",
                ));
            }
        },
    };
    objects
        .iter()
        .map(|o| model::user_id(&model::read_pointer(o, Class::User, "members")?))
        .collect()
}

/// Checks a client's RoomLog `timestamp` (a Parse Date). The entry's time is
/// its signed HLC, which every node shows as `timestamp`; a client's clock
/// may differ from it by at most the clock-skew rule either way, and is then
/// replaced by the HLC. One further off is refused rather than silently
/// replaced: backdating or postdating an entry is not something a record can
/// say.
fn check_timestamp(v: &Value, now_ms: u64) -> ApiResult<()> {
    let iso = match v {
        Value::Object(o) if o.get("__type").and_then(Value::as_str) == Some("Date") => {
            o.get("iso").and_then(Value::as_str)
        }
        _ => None,
    }
    .ok_or_else(|| {
        ParseError::incorrect_type(
            "RoomLog.timestamp must be a Date {\"__type\":\"Date\",\"iso\":\"2024-01-01T00:00:00.000Z\"}",
        )
    })?;
    let ms = model::parse_iso_date(iso).ok_or_else(|| {
        ParseError::incorrect_type(format!(
            "RoomLog.timestamp {iso:?} is not an ISO 8601 UTC date like 2024-01-01T00:00:00.000Z"
        ))
    })?;
    let skew = tincan_core::rules::MAX_CLOCK_SKEW.as_millis() as i64;
    let off = ms.saturating_sub(now_ms as i64);
    if off.unsigned_abs() > skew.unsigned_abs() {
        return Err(ParseError::new(
            code::VALIDATION_ERROR,
            format!(
                "RoomLog.timestamp {iso} is {} s from this node's clock: an entry is dated by its signed clock, and a client's timestamp may differ from it by at most {} s; send the current time or none; nothing was written",
                off / 1000,
                skew / 1000
            ),
        ));
    }
    Ok(())
}

/// The room fields of a write: the top-level `inviteOnly` and `memberLimit`,
/// and the same two inside the template's `settings` object (which holds
/// nothing else: it is what the signed room record carries).
fn room_settings(fields: &Map<String, Value>, s: RoomSettings) -> ApiResult<RoomSettings> {
    let s = match fields.get("settings") {
        None | Some(Value::Null) => s,
        Some(Value::Object(o)) => {
            if let Some(k) = o
                .keys()
                .find(|k| !matches!(k.as_str(), "inviteOnly" | "memberLimit"))
            {
                return Err(ParseError::new(
                    code::INVALID_KEY_NAME,
                    format!(
                        "Room.settings holds inviteOnly and memberLimit (what the signed room record carries), not {k:?}"
                    ),
                ));
            }
            settings_fields(o, s)?
        }
        Some(_) => {
            return Err(ParseError::incorrect_type(
                "Room.settings must be an object {\"inviteOnly\":bool,\"memberLimit\":number|null}",
            ));
        }
    };
    settings_fields(fields, s)
}

fn settings_fields(fields: &Map<String, Value>, mut s: RoomSettings) -> ApiResult<RoomSettings> {
    match fields.get("inviteOnly") {
        None => {}
        Some(Value::Bool(b)) => {
            s.join_policy = if *b {
                JoinPolicy::Invite
            } else {
                JoinPolicy::Open
            }
        }
        Some(_) => {
            return Err(ParseError::incorrect_type(
                "Room.inviteOnly must be true or false",
            ));
        }
    }
    match fields.get("memberLimit") {
        None => {}
        Some(Value::Null) => s.member_limit = None,
        Some(v) if is_delete_op(v) => s.member_limit = None,
        Some(Value::Number(n)) => {
            let n = n
                .as_u64()
                .filter(|n| *n >= 1 && *n <= u32::MAX as u64)
                .ok_or_else(|| {
                    ParseError::new(
                        code::VALIDATION_ERROR,
                        "Room.memberLimit must be a whole number of at least 1",
                    )
                })?;
            s.member_limit = Some(n as u32);
        }
        Some(_) => {
            return Err(ParseError::incorrect_type(
                "Room.memberLimit must be a number or null",
            ));
        }
    }
    Ok(s)
}

/// Longest `_User.role`, in characters.
const MAX_ROLE_CHARS: usize = 32;

/// A `_User.role` value: a string of 1 to 32 characters, no control
/// characters ("moderator", "participant" ...).
pub(crate) fn role_value(v: &Value) -> ApiResult<String> {
    let r = v.as_str().ok_or_else(|| {
        ParseError::incorrect_type("_User.role must be a string such as \"participant\"")
    })?;
    let n = r.chars().count();
    if n == 0 || n > MAX_ROLE_CHARS || r.chars().any(char::is_control) {
        return Err(ParseError::new(
            code::VALIDATION_ERROR,
            format!(
                "_User.role must be 1 to {MAX_ROLE_CHARS} characters without control characters"
            ),
        ));
    }
    Ok(r.to_owned())
}

fn permission_list(v: &Value) -> ApiResult<Vec<String>> {
    let items = v.as_array().ok_or_else(|| {
        ParseError::incorrect_type(
            "Channel.permissions must be an array of strings like \"speak:members\"",
        )
    })?;
    let list: Vec<String> = items
        .iter()
        .map(|i| {
            i.as_str().map(str::to_owned).ok_or_else(|| {
                ParseError::incorrect_type("Channel.permissions must be an array of strings")
            })
        })
        .collect::<ApiResult<_>>()?;
    permissions::parse_all(&list).map_err(|e| ParseError::new(code::VALIDATION_ERROR, e))?;
    Ok(list)
}

/// Which entity a store change is about, as (class, objectId).
pub(crate) fn change_target(record: &SignedRecord) -> Option<(Class, String)> {
    let rec = record.record();
    Some(match &rec.body {
        Body::Profile(p) => (Class::User, p.user.to_hex()),
        Body::Room(_) | Body::Member(_) => (Class::Room, rec.room()?.to_hex()),
        Body::Channel(c) => (Class::Channel, c.id.to_hex()),
        Body::RoomLog(_) => (Class::RoomLog, record.id().to_hex()),
        Body::Tombstone(t) => match t.target {
            tincan_core::Target::Room { .. } => (Class::Room, rec.room()?.to_hex()),
            tincan_core::Target::Channel(_, c) => (Class::Channel, c.to_hex()),
        },
        Body::Cutoff(c) => (Class::Room, c.room.to_hex()),
        // Key grants and unopened ciphertext are no class's objects.
        Body::Sealed(_) | Body::KeyGrant(_) => return None,
    })
}
