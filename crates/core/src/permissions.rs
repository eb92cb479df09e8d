//! Channel permissions: strings of the form `ACTION:WHO` that say who may
//! speak and who may listen in a channel.
//!
//! - ACTION is `speak` or `listen`;
//! - WHO is `everyone` (any member or visitor of an open room), `members`,
//!   `moderators`, `owner`, or `user:<64 hex digits of a user id>`.
//!
//! The room's owner may always speak and listen. A channel with no `speak`
//! entry lets only the owner speak.

use crate::identity::UserId;
use crate::merge::Membership;
use crate::record::MemberRole;

/// What a permission grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send voice in the channel.
    Speak,
    /// Receive voice from the channel.
    Listen,
}

/// Whom a permission grants it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Anyone who can see the room.
    Everyone,
    /// Joined members.
    Members,
    /// Joined members with the moderator role.
    Moderators,
    /// The owner only.
    Owner,
    /// One user.
    User(UserId),
}

/// One parsed permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// What it grants.
    pub action: Action,
    /// To whom.
    pub audience: Audience,
}

/// Channel permissions when none are given: members speak and listen.
pub fn default_permissions() -> Vec<String> {
    vec!["speak:members".to_owned(), "listen:members".to_owned()]
}

impl std::str::FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (action, who) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not ACTION:WHO (e.g. speak:members)"))?;
        let action = match action {
            "speak" => Action::Speak,
            "listen" => Action::Listen,
            other => return Err(format!("unknown action {other:?}: use speak or listen")),
        };
        let audience = match who {
            "everyone" => Audience::Everyone,
            "members" => Audience::Members,
            "moderators" => Audience::Moderators,
            "owner" => Audience::Owner,
            other => match other.strip_prefix("user:") {
                Some(hex) => Audience::User(UserId::from_hex(hex).map_err(|e| e.to_string())?),
                None => {
                    return Err(format!(
                        "unknown audience {other:?}: use everyone, members, moderators, owner or user:<id>"
                    ));
                }
            },
        };
        Ok(Permission { action, audience })
    }
}

/// Parses every entry; the first bad one is the error.
pub fn parse_all(entries: &[String]) -> Result<Vec<Permission>, String> {
    entries.iter().map(|e| e.parse()).collect()
}

/// Whether `user`, with `membership` in the room owned by `owner`, may do
/// `action` under `permissions` (entries that fail to parse grant nothing;
/// the rules never let such a channel in).
pub fn allows(
    permissions: &[String],
    action: Action,
    user: &UserId,
    owner: &UserId,
    membership: Membership,
) -> bool {
    if user == owner {
        return true;
    }
    permissions
        .iter()
        .filter_map(|p| p.parse::<Permission>().ok())
        .filter(|p| p.action == action)
        .any(|p| match p.audience {
            Audience::Everyone => !matches!(membership, Membership::Banned | Membership::Kicked),
            Audience::Members => matches!(membership, Membership::Joined(_)),
            Audience::Moderators => membership == Membership::Joined(MemberRole::Moderator),
            Audience::Owner => false,
            Audience::User(u) => u == *user && matches!(membership, Membership::Joined(_)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!("speak:members".parse::<Permission>().is_ok());
        assert!("listen:everyone".parse::<Permission>().is_ok());
        assert!(
            format!("speak:user:{}", "ab".repeat(32))
                .parse::<Permission>()
                .is_ok()
        );
        assert!("shout:members".parse::<Permission>().is_err());
        assert!("speak".parse::<Permission>().is_err());
        assert!("speak:user:zz".parse::<Permission>().is_err());
    }

    #[test]
    fn who_may_speak() {
        let owner = UserId([1; 32]);
        let u = UserId([2; 32]);
        let p = vec!["speak:moderators".to_owned(), "listen:members".to_owned()];
        assert!(allows(&p, Action::Speak, &owner, &owner, Membership::None));
        assert!(!allows(
            &p,
            Action::Speak,
            &u,
            &owner,
            Membership::Joined(MemberRole::Participant)
        ));
        assert!(allows(
            &p,
            Action::Speak,
            &u,
            &owner,
            Membership::Joined(MemberRole::Moderator)
        ));
        assert!(allows(
            &p,
            Action::Listen,
            &u,
            &owner,
            Membership::Joined(MemberRole::Participant)
        ));
        assert!(!allows(&p, Action::Listen, &u, &owner, Membership::Left));
    }
}
