//! Parse ACLs derived from what the signatures and rules enforce.
//!
//! tincan has no ACLs to store: who may change a record is decided by its
//! signature and the rules (`tincan_core::rules`), who may read it by
//! whether it is public on the mesh (open rooms) or sealed to the members
//! (invite-only rooms). Every object the API returns carries the ACL those
//! rules amount to, so an app written for Parse reads back what is true:
//!
//! | class | read | write |
//! |---|---|---|
//! | `_User` | `*` | the user |
//! | `Room` | `*` (an invite-only room's `members` only to its members) | the owner |
//! | `Channel` | open room: `*`; invite-only: the owner and joined members | the owner |
//! | `RoomLog` | as its room's channels | nobody (entries are never edited) |
//!
//! A client may send an ACL with a write: it is accepted when it says the
//! same, and refused (119, nothing written) when it grants what the rules
//! cannot grant or withholds what they cannot withhold, with the reason.
//! Roles (`role:...` keys) are not served.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tincan_core::{JoinPolicy, UserId};
use tincan_store::{RoomView, Store};

use crate::error::{ApiResult, ParseError, code};
use crate::model::Class;

/// Read and write grants of one ACL key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Grant {
    read: bool,
    write: bool,
}

/// An ACL: `*` or a user's objectId to what they are granted. Keys with
/// neither grant are left out, so two ACLs that grant the same compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Acl(BTreeMap<String, Grant>);

const PUBLIC: &str = "*";

impl Acl {
    fn grant(&mut self, who: &str, read: bool, write: bool) {
        let g = self.0.entry(who.to_owned()).or_default();
        g.read |= read;
        g.write |= write;
        if !g.read && !g.write {
            self.0.remove(who);
        }
    }

    /// A user's profile: public, written by its user.
    pub(crate) fn user(user: &UserId) -> Acl {
        let mut a = Acl::default();
        a.grant(PUBLIC, true, false);
        a.grant(&user.to_hex(), true, true);
        a
    }

    /// A room record: public (title, owner, settings), written by its owner.
    pub(crate) fn room(owner: &UserId) -> Acl {
        Acl::user(owner)
    }

    /// Who reads a room's channels and log: anyone for an open room; its
    /// owner and joined members for an invite-only one. `owner_writes` for
    /// channels (the owner changes and deletes them); log entries are
    /// written by nobody once made.
    pub(crate) fn contents(store: &Store, room: &RoomView, owner_writes: bool) -> ApiResult<Acl> {
        let mut a = Acl::default();
        if room.room.settings.join_policy == JoinPolicy::Open {
            a.grant(PUBLIC, true, false);
        } else {
            for m in store.members(&room.id)? {
                if m.membership.is_member() {
                    a.grant(&m.user.to_hex(), true, false);
                }
            }
            a.grant(&room.owner.to_hex(), true, false);
        }
        if owner_writes {
            a.grant(&room.owner.to_hex(), true, true);
        }
        Ok(a)
    }

    /// Parse's JSON form.
    pub(crate) fn to_json(&self) -> Value {
        let mut o = Map::new();
        for (who, g) in &self.0 {
            let mut e = Map::new();
            if g.read {
                e.insert("read".into(), Value::Bool(true));
            }
            if g.write {
                e.insert("write".into(), Value::Bool(true));
            }
            o.insert(who.clone(), Value::Object(e));
        }
        Value::Object(o)
    }

    /// A client's ACL, as the SDKs send it: `{"*": {"read": true}, "<userId>": {"read": true, "write": true}}`.
    pub(crate) fn from_json(v: &Value) -> ApiResult<Acl> {
        let bad = |why: String| ParseError::new(code::INVALID_ACL, why);
        let o = v.as_object().ok_or_else(|| {
            bad("an ACL is an object like {\"*\":{\"read\":true},\"<userId>\":{\"read\":true,\"write\":true}}".into())
        })?;
        let mut a = Acl::default();
        for (who, g) in o {
            if who.starts_with("role:") {
                return Err(ParseError::forbidden(format!(
                    "ACL key {who:?}: this node serves no roles; grants follow the rules (public read, owner write: see GET on any object for its ACL)"
                )));
            }
            if who != PUBLIC && UserId::from_hex(who).is_err() {
                return Err(bad(format!(
                    "ACL key {who:?} is neither \"*\" nor a user's objectId (64 hex digits)"
                )));
            }
            let g = g.as_object().ok_or_else(|| {
                bad(format!(
                    "ACL entry {who:?} must be {{\"read\":bool,\"write\":bool}}"
                ))
            })?;
            let flag = |k: &str| -> ApiResult<bool> {
                match g.get(k) {
                    None | Some(Value::Null) => Ok(false),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(_) => Err(bad(format!("ACL entry {who:?}: {k} must be true or false"))),
                }
            };
            a.grant(who, flag("read")?, flag("write")?);
        }
        Ok(a)
    }

    /// Accepts a client's `acl` for an object of `class` whose derived ACL
    /// is `self`; refuses (119) one that grants or withholds what the rules
    /// decide otherwise, saying which grant and why.
    pub(crate) fn check_client(&self, class: Class, client: &Acl) -> ApiResult<()> {
        let name = |who: &str| {
            if who == PUBLIC {
                "everyone (\"*\")".to_owned()
            } else {
                format!("user {who}")
            }
        };
        let why_write = match class {
            Class::User => "only a user signs their own profile",
            Class::Room => "only a room's owner signs its records",
            Class::Channel => "only the room's owner may change or delete its channels",
            Class::RoomLog => "log entries are never edited or deleted, by anyone",
        };
        let why_read = match class {
            Class::User | Class::Room => {
                "profiles and room records are public on the mesh".to_owned()
            }
            Class::Channel | Class::RoomLog => {
                "an open room's records are public on the mesh; an invite-only room's are sealed to its owner and joined members".to_owned()
            }
        };
        let keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(client.0.keys()).collect();
        let public = |a: &Acl| a.0.get(PUBLIC).copied().unwrap_or_default();
        let (client_public, derived_public) = (public(client), public(self));
        for who in keys {
            // A user is granted what everyone is, and what their own key says.
            let effective = |a: &Acl, everyone: Grant| {
                let own = a.0.get(who).copied().unwrap_or_default();
                if who == PUBLIC {
                    own
                } else {
                    Grant {
                        read: own.read || everyone.read,
                        write: own.write || everyone.write,
                    }
                }
            };
            let want = effective(client, client_public);
            let is = effective(self, derived_public);
            let problem = if want.write && !is.write {
                Some(format!(
                    "grants {} write, which the rules cannot: {why_write}",
                    name(who)
                ))
            } else if want.read && !is.read {
                Some(format!(
                    "grants {} read, which the rules cannot: {why_read}",
                    name(who)
                ))
            } else if is.write && !want.write {
                Some(format!(
                    "withholds write from {}, which the rules cannot: {why_write}",
                    name(who)
                ))
            } else if is.read && !want.read {
                Some(format!(
                    "withholds read from {}, which the rules cannot: {why_read}",
                    name(who)
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(ParseError::forbidden(format!(
                    "this {} ACL {p}; send the ACL the rules give ({}) or none; nothing was changed",
                    class.name(),
                    self.to_json()
                )));
            }
        }
        Ok(())
    }
}

/// Checks the `ACL` of a write body, if it has one, against `derived`.
pub(crate) fn check_body(
    class: Class,
    body: &Map<String, Value>,
    derived: impl FnOnce() -> ApiResult<Acl>,
) -> ApiResult<()> {
    match body.get("ACL") {
        None | Some(Value::Null) => Ok(()),
        Some(v) => derived()?.check_client(class, &Acl::from_json(v)?),
    }
}

/// Checks a sign-up's ACL before the user (and so their id) exists: it
/// must grant everyone read and nothing more, and no other user anything.
/// The signing-up user's own grants cannot be named yet.
pub(crate) fn check_sign_up(acl: &Value) -> ApiResult<()> {
    let client = Acl::from_json(acl)?;
    let mut derived = Acl::default();
    derived.grant(PUBLIC, true, false);
    let mut only_public = Acl::default();
    if let Some(g) = client.0.get(PUBLIC) {
        only_public.grant(PUBLIC, g.read, g.write);
    }
    if let Some(other) = client.0.keys().find(|k| k.as_str() != PUBLIC) {
        return Err(ParseError::forbidden(format!(
            "a sign-up ACL cannot name user {other}: a profile is written only by its own user, who has no id until sign-up; send {{\"*\":{{\"read\":true}}}} or none"
        )));
    }
    derived.check_client(Class::User, &only_public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(n: u8) -> UserId {
        tincan_core::UserKey::from_seed(&[n; 32]).id()
    }

    #[test]
    fn an_agreeing_acl_passes_and_others_say_why() {
        let alice = user(1);
        let derived = Acl::room(&alice);
        let same = Acl::from_json(
            &json!({"*": {"read": true}, alice.to_hex(): {"read": true, "write": true}}),
        )
        .unwrap();
        derived.check_client(Class::Room, &same).unwrap();
        // Parse SDKs may send false grants: they grant nothing.
        let with_false = Acl::from_json(
            &json!({"*": {"read": true, "write": false}, alice.to_hex(): {"read": true, "write": true}}),
        )
        .unwrap();
        derived.check_client(Class::Room, &with_false).unwrap();
        let public_write = Acl::from_json(&json!({"*": {"read": true, "write": true}, alice.to_hex(): {"read": true, "write": true}}))
            .unwrap();
        let e = derived
            .check_client(Class::Room, &public_write)
            .unwrap_err();
        assert_eq!(e.code, code::OPERATION_FORBIDDEN);
        assert!(
            e.message.contains("grants everyone (\"*\") write"),
            "{}",
            e.message
        );
        let private =
            Acl::from_json(&json!({alice.to_hex(): {"read": true, "write": true}})).unwrap();
        let e = derived.check_client(Class::Room, &private).unwrap_err();
        assert!(
            e.message.contains("withholds read from everyone"),
            "{}",
            e.message
        );
        let bob_writes = Acl::from_json(&json!({"*": {"read": true}, alice.to_hex(): {"read": true, "write": true}, user(2).to_hex(): {"write": true}}))
            .unwrap();
        let e = derived.check_client(Class::Room, &bob_writes).unwrap_err();
        assert!(
            e.message
                .contains(&format!("grants user {} write", user(2).to_hex())),
            "{}",
            e.message
        );
    }

    #[test]
    fn malformed_acls_and_roles_are_refused() {
        for bad in [
            json!([]),
            json!({"nobody": {"read": true}}),
            json!({"*": {"read": "yes"}}),
            json!({"*": true}),
        ] {
            assert_eq!(
                Acl::from_json(&bad).unwrap_err().code,
                code::INVALID_ACL,
                "{bad}"
            );
        }
        assert_eq!(
            Acl::from_json(&json!({"role:admin": {"read": true}}))
                .unwrap_err()
                .code,
            code::OPERATION_FORBIDDEN
        );
    }
}
