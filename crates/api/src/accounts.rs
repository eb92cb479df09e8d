//! Local accounts and sessions.
//!
//! Every account is a user key sealed with its password (the keystore's
//! argon2id + XChaCha20-Poly1305). The identity `tincan up` was unlocked
//! with is one account (its sealed form stays in `identity.json`); accounts
//! made by sign-up through the API live in `accounts.json` in the data
//! directory, written atomically with mode 0600. Usernames are unique among
//! this node's accounts only: without a server, names are not unique across
//! the mesh, which is why users also have a fingerprint.
//!
//! Sessions live in memory. A session holds the unlocked user key, and a
//! key can only be unlocked with its password, so a session could not
//! survive a restart of the node without storing keys unsealed: a restart
//! logs everyone out (the SDKs then get 209 and log in again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tincan_core::keystore::{Identity, KdfParams, SealedIdentity};
use tincan_core::{UserId, UserKey};
use tincan_store::datadir::{DataDir, write_atomic};

use crate::error::{ApiResult, ParseError, code};

const ACCOUNTS_FILE: &str = "accounts.json";
const ACCOUNTS_FORMAT: &str = "tincan-accounts";
/// Most accounts one node keeps (sign-up refuses more).
pub const MAX_ACCOUNTS: usize = 1000;

/// One account made through the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AccountEntry {
    /// The login name (may differ from the name sealed at sign-up, after a rename).
    username: String,
    /// The e-mail given at sign-up, if any; it never leaves this machine.
    #[serde(default)]
    email: Option<String>,
    /// The template's `_User.role` ("moderator", "participant" ...), set by
    /// its user. Kept here, not in the signed profile: the profile's
    /// `ProfileRole` is Player or Bot and has no place for a free role, so
    /// other nodes do not see it until the profile record carries one.
    #[serde(default)]
    role: Option<String>,
    /// The sealed user key.
    sealed: SealedIdentity,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AccountsFile {
    format: String,
    version: u8,
    /// Login name of the node's own identity after a rename through the API.
    #[serde(default)]
    node_username: Option<String>,
    /// `_User.role` of the node's own identity, once set through the API.
    #[serde(default)]
    node_role: Option<String>,
    accounts: Vec<AccountEntry>,
}

/// A logged-in session.
#[derive(Clone)]
pub struct Session {
    /// The session token.
    pub token: String,
    /// The user.
    pub user: UserId,
    /// The login name.
    pub username: String,
    /// The unlocked key, to sign this user's writes.
    pub key: Arc<UserKey>,
    /// When it was made, Unix milliseconds.
    pub created_ms: u64,
    /// When it ends, Unix milliseconds.
    pub expires_ms: u64,
    expires: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Limits of sessions and requests.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// How long a session lasts after login.
    pub lifetime: Duration,
    /// Most sessions at once; at the limit the oldest is dropped.
    pub max_sessions: usize,
    /// Requests per second one session may make, sustained.
    pub rate_per_s: f64,
    /// Requests one session may make in a burst.
    pub burst: f64,
    /// Sign-ups and logins per second, for the whole node (each costs an
    /// argon2id derivation).
    pub login_rate_per_s: f64,
    /// Sign-ups and logins in a burst.
    pub login_burst: f64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            lifetime: Duration::from_secs(30 * 24 * 3600),
            max_sessions: 10_000,
            // On loopback a per-session limit protects nothing a second
            // session would not bypass; these only stop a runaway loop
            // (a sequential client on a release node makes about 3,000
            // requests a second). Sign-up and login keep theirs below.
            rate_per_s: 20_000.0,
            burst: 40_000.0,
            login_rate_per_s: 5.0,
            login_burst: 20.0,
        }
    }
}

struct SessionEntry {
    session: Session,
    bucket: Bucket,
    created: Instant,
}

/// Accounts of this node and their sessions.
pub struct Accounts {
    dir: DataDir,
    path: PathBuf,
    kdf: KdfParams,
    node_user: UserId,
    node_username: String,
    node_key: Arc<UserKey>,
    file: Mutex<AccountsFile>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    login_bucket: Mutex<Bucket>,
    limits: SessionLimits,
    /// argon2id uses 64 MiB: at most two derivations at once.
    kdf_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere mid-update of plain maps; the
    // maps are still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new session token: 32 random bytes (256 bits), hex, with Parse's `r:` prefix.
fn new_token() -> ApiResult<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ParseError::internal(format!("no randomness: {e}")))?;
    Ok(format!("r:{}", hex::encode(b)))
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What sign-up and login give back.
#[derive(Clone, Debug)]
pub struct LoggedIn {
    /// The new session.
    pub session: Session,
    /// The account's e-mail, if any.
    pub email: Option<String>,
}

impl Accounts {
    /// Loads `accounts.json` from `dir` (none yet is fine). `node` is the
    /// identity `tincan up` unlocked.
    pub fn open(
        dir: DataDir,
        node: &Identity,
        kdf: KdfParams,
        limits: SessionLimits,
    ) -> Result<Self, String> {
        let path = dir.root().join(ACCOUNTS_FILE);
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let f: AccountsFile = serde_json::from_str(&text).map_err(|e| {
                    format!("{} is damaged ({e}): restore it from a backup, or move it away to start without API accounts", path.display())
                })?;
                if f.format != ACCOUNTS_FORMAT || f.version != 1 {
                    return Err(format!(
                        "{} is not a tincan accounts file of version 1",
                        path.display()
                    ));
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AccountsFile {
                format: ACCOUNTS_FORMAT.into(),
                version: 1,
                ..Default::default()
            },
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let node_username = file
            .node_username
            .clone()
            .unwrap_or_else(|| node.username.clone());
        let now = Instant::now();
        Ok(Accounts {
            dir,
            path,
            kdf,
            node_user: node.user_key.id(),
            node_username,
            node_key: Arc::new(UserKey::from_seed(&node.user_key.seed())),
            file: Mutex::new(file),
            sessions: Mutex::new(HashMap::new()),
            login_bucket: Mutex::new(Bucket::new(limits.login_burst, now)),
            limits,
            kdf_slots: tokio::sync::Semaphore::new(2),
        })
    }

    /// The node's own user.
    pub fn node_user(&self) -> UserId {
        self.node_user
    }

    /// Users with an account on this node (the node's own first).
    pub fn local_users(&self) -> Vec<UserId> {
        let mut out = vec![self.node_user];
        for a in &lock(&self.file).accounts {
            if let Ok(id) = a.sealed.user_id() {
                out.push(id);
            }
        }
        out
    }

    /// Whether `user` has an account here.
    pub fn is_local(&self, user: &UserId) -> bool {
        self.local_users().contains(user)
    }

    fn save(&self, file: &AccountsFile) -> ApiResult<()> {
        let text = serde_json::to_string_pretty(file).map_err(ParseError::internal)?;
        write_atomic(&self.path, text.as_bytes()).map_err(ParseError::internal)
    }

    fn check_login_rate(&self) -> ApiResult<()> {
        let ok = lock(&self.login_bucket).take(
            self.limits.login_rate_per_s,
            self.limits.login_burst,
            Instant::now(),
        );
        if ok {
            Ok(())
        } else {
            Err(ParseError::new(
                code::REQUEST_LIMIT_EXCEEDED,
                "too many sign-ups and logins on this node right now: wait a second and retry",
            ))
        }
    }

    fn username_taken(&self, file: &AccountsFile, username: &str) -> bool {
        let node_name = file.node_username.as_deref().unwrap_or(&self.node_username);
        node_name == username || file.accounts.iter().any(|a| a.username == username)
    }

    /// Creates an account: a new user key sealed with `password`. The
    /// caller writes its profile. Returns a logged-in session.
    pub async fn sign_up(
        &self,
        username: &str,
        password: &str,
        email: Option<String>,
        role: Option<String>,
    ) -> ApiResult<LoggedIn> {
        if username.is_empty() {
            return Err(ParseError::new(
                code::USERNAME_MISSING,
                "sign-up needs a username",
            ));
        }
        if password.is_empty() {
            return Err(ParseError::new(
                code::PASSWORD_MISSING,
                "sign-up needs a password",
            ));
        }
        self.check_login_rate()?;
        if lock(&self.file).accounts.len() >= MAX_ACCOUNTS {
            return Err(ParseError::new(
                code::VALIDATION_ERROR,
                format!(
                    "this node already has {MAX_ACCOUNTS} accounts: delete unused ones (DELETE /parse/users/:id) first"
                ),
            ));
        }
        if self.username_taken(&lock(&self.file), username) {
            return Err(ParseError::new(
                code::USERNAME_TAKEN,
                format!("the username {username:?} is taken on this node: choose another"),
            ));
        }
        let identity = Identity {
            username: username.to_owned(),
            user_key: UserKey::generate().map_err(ParseError::internal)?,
            node_key: None,
        };
        let key = Arc::new(UserKey::from_seed(&identity.user_key.seed()));
        let sealed = {
            let _slot = self
                .kdf_slots
                .acquire()
                .await
                .map_err(ParseError::internal)?;
            let pw = password.to_owned();
            let kdf = self.kdf;
            tokio::task::spawn_blocking(move || SealedIdentity::seal(&identity, pw.as_bytes(), kdf))
                .await
                .map_err(ParseError::internal)?
                .map_err(ParseError::internal)?
        };
        {
            let mut file = lock(&self.file);
            // Checked again: another sign-up may have taken it while we sealed.
            if self.username_taken(&file, username) {
                return Err(ParseError::new(
                    code::USERNAME_TAKEN,
                    format!("the username {username:?} is taken on this node: choose another"),
                ));
            }
            file.accounts.push(AccountEntry {
                username: username.to_owned(),
                email: email.clone(),
                role,
                sealed,
            });
            if let Err(e) = self.save(&file) {
                file.accounts.pop();
                return Err(e);
            }
        }
        let session = self.new_session(key.id(), username, key)?;
        Ok(LoggedIn { session, email })
    }

    /// Logs in with a username and password.
    pub async fn log_in(&self, username: &str, password: &str) -> ApiResult<LoggedIn> {
        let bad = || ParseError::not_found("invalid username/password");
        if username.is_empty() {
            return Err(ParseError::new(
                code::USERNAME_MISSING,
                "login needs a username",
            ));
        }
        if password.is_empty() {
            return Err(ParseError::new(
                code::PASSWORD_MISSING,
                "login needs a password",
            ));
        }
        self.check_login_rate()?;
        let (sealed, email, is_node) = {
            let file = lock(&self.file);
            let node_name = file.node_username.as_deref().unwrap_or(&self.node_username);
            if node_name == username {
                let sealed = self.dir.load_identity().map_err(ParseError::internal)?;
                (sealed, None, true)
            } else {
                let a = file
                    .accounts
                    .iter()
                    .find(|a| a.username == username)
                    .ok_or_else(bad)?;
                (a.sealed.clone(), a.email.clone(), false)
            }
        };
        let _slot = self
            .kdf_slots
            .acquire()
            .await
            .map_err(ParseError::internal)?;
        let pw = password.to_owned();
        let opened = tokio::task::spawn_blocking(move || sealed.open(pw.as_bytes()))
            .await
            .map_err(ParseError::internal)?;
        let identity = opened.map_err(|_| bad())?;
        let key = if is_node {
            self.node_key.clone()
        } else {
            Arc::new(UserKey::from_seed(&identity.user_key.seed()))
        };
        let session = self.new_session(key.id(), username, key)?;
        Ok(LoggedIn { session, email })
    }

    fn new_session(&self, user: UserId, username: &str, key: Arc<UserKey>) -> ApiResult<Session> {
        let now = Instant::now();
        let wall = tincan_store::clock::wall_ms();
        let session = Session {
            token: new_token()?,
            user,
            username: username.to_owned(),
            key,
            created_ms: wall,
            expires_ms: wall.saturating_add(self.limits.lifetime.as_millis() as u64),
            expires: now + self.limits.lifetime,
        };
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, e| e.session.expires > now);
        if sessions.len() >= self.limits.max_sessions
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            session.token.clone(),
            SessionEntry {
                session: session.clone(),
                bucket: Bucket::new(self.limits.burst, now),
                created: now,
            },
        );
        Ok(session)
    }

    /// The session of `token`, charging one request to its rate limit.
    pub fn session(&self, token: &str) -> ApiResult<Session> {
        let invalid = || {
            ParseError::new(
                code::INVALID_SESSION_TOKEN,
                "invalid session token: it is unknown, expired or logged out (sessions also end when the node restarts): log in again",
            )
        };
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        // The map hashes the token with a random SipHash key, so the lookup
        // leaks nothing useful about how close a guess was.
        let entry = sessions.get_mut(token).ok_or_else(invalid)?;
        if !same(&entry.session.token, token) || entry.session.expires <= now {
            sessions.remove(token);
            return Err(invalid());
        }
        if !entry
            .bucket
            .take(self.limits.rate_per_s, self.limits.burst, now)
        {
            return Err(ParseError::new(
                code::REQUEST_LIMIT_EXCEEDED,
                format!(
                    "this session made more than {} requests a second: slow down and retry",
                    self.limits.rate_per_s
                ),
            ));
        }
        Ok(entry.session.clone())
    }

    /// Whether `token` is a live session, without charging its rate limit
    /// (LiveQuery checks this before every push).
    pub fn is_live(&self, token: &str) -> bool {
        lock(&self.sessions)
            .get(token)
            .is_some_and(|e| e.session.expires > Instant::now())
    }

    /// Ends one session (logout).
    pub fn log_out(&self, token: &str) {
        lock(&self.sessions).remove(token);
    }

    /// The e-mail of a local account.
    pub fn email(&self, user: &UserId) -> Option<String> {
        lock(&self.file)
            .accounts
            .iter()
            .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
            .and_then(|a| a.email.clone())
    }

    /// The login name of a local account.
    pub fn username(&self, user: &UserId) -> Option<String> {
        let file = lock(&self.file);
        if *user == self.node_user {
            return Some(
                file.node_username
                    .clone()
                    .unwrap_or_else(|| self.node_username.clone()),
            );
        }
        file.accounts
            .iter()
            .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
            .map(|a| a.username.clone())
    }

    /// The `_User.role` of a local account, if it has one.
    pub fn role(&self, user: &UserId) -> Option<String> {
        let file = lock(&self.file);
        if *user == self.node_user {
            return file.node_role.clone();
        }
        file.accounts
            .iter()
            .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
            .and_then(|a| a.role.clone())
    }

    /// Sets (or, with `None`, clears) the `_User.role` of `user`'s local
    /// account; the caller checks that `user` is the one asking.
    pub fn set_role(&self, user: &UserId, role: Option<String>) -> ApiResult<()> {
        let mut file = lock(&self.file);
        let before = if *user == self.node_user {
            std::mem::replace(&mut file.node_role, role)
        } else {
            let a = file
                .accounts
                .iter_mut()
                .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
                .ok_or_else(|| ParseError::forbidden("that user has no account on this node"))?;
            std::mem::replace(&mut a.role, role)
        };
        if let Err(e) = self.save(&file) {
            if *user == self.node_user {
                file.node_role = before;
            } else if let Some(a) = file
                .accounts
                .iter_mut()
                .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
            {
                a.role = before;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Renames `user`'s login (the caller writes the new profile).
    pub fn rename(&self, user: &UserId, username: &str) -> ApiResult<()> {
        let mut file = lock(&self.file);
        let current = if *user == self.node_user {
            file.node_username
                .clone()
                .unwrap_or_else(|| self.node_username.clone())
        } else {
            file.accounts
                .iter()
                .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
                .map(|a| a.username.clone())
                .ok_or_else(|| ParseError::forbidden("that user has no account on this node"))?
        };
        if current == username {
            return Ok(());
        }
        if self.username_taken(&file, username) {
            return Err(ParseError::new(
                code::USERNAME_TAKEN,
                format!("the username {username:?} is taken on this node: choose another"),
            ));
        }
        let before_node = file.node_username.clone();
        let mut before_entry = None;
        if *user == self.node_user {
            file.node_username = Some(username.to_owned());
        } else if let Some(a) = file
            .accounts
            .iter_mut()
            .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
        {
            before_entry = Some(std::mem::replace(&mut a.username, username.to_owned()));
        }
        if let Err(e) = self.save(&file) {
            file.node_username = before_node;
            if let Some(old) = before_entry
                && let Some(a) = file
                    .accounts
                    .iter_mut()
                    .find(|a| a.sealed.user_id().ok().as_ref() == Some(user))
            {
                a.username = old;
            }
            return Err(e);
        }
        let mut sessions = lock(&self.sessions);
        for e in sessions.values_mut() {
            if e.session.user == *user {
                e.session.username = username.to_owned();
            }
        }
        Ok(())
    }

    /// Seals `user`'s key again under a new password.
    pub async fn change_password(&self, session: &Session, password: &str) -> ApiResult<()> {
        if session.user == self.node_user {
            return Err(ParseError::forbidden(
                "the node's own identity changes its password with `tincan id passwd`, not through the API",
            ));
        }
        if password.is_empty() {
            return Err(ParseError::new(
                code::PASSWORD_MISSING,
                "the new password is empty",
            ));
        }
        let sealed_name = lock(&self.file)
            .accounts
            .iter()
            .find(|a| a.sealed.user_id().ok() == Some(session.user))
            .map(|a| a.sealed.username.clone())
            .ok_or_else(|| ParseError::forbidden("that user has no account on this node"))?;
        let identity = Identity {
            username: sealed_name,
            user_key: UserKey::from_seed(&session.key.seed()),
            node_key: None,
        };
        let sealed = {
            let _slot = self
                .kdf_slots
                .acquire()
                .await
                .map_err(ParseError::internal)?;
            let pw = password.to_owned();
            let kdf = self.kdf;
            tokio::task::spawn_blocking(move || SealedIdentity::seal(&identity, pw.as_bytes(), kdf))
                .await
                .map_err(ParseError::internal)?
                .map_err(ParseError::internal)?
        };
        let mut file = lock(&self.file);
        let Some(i) = file
            .accounts
            .iter()
            .position(|a| a.sealed.user_id().ok() == Some(session.user))
        else {
            return Err(ParseError::not_found("the account was deleted meanwhile"));
        };
        let old = std::mem::replace(&mut file.accounts[i].sealed, sealed);
        if let Err(e) = self.save(&file) {
            file.accounts[i].sealed = old;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes `user`'s local account and ends its sessions. Its profile
    /// stays in the mesh (records are never taken back), but nobody can
    /// log in as it or sign with its key again.
    pub fn delete(&self, user: &UserId) -> ApiResult<()> {
        if *user == self.node_user {
            return Err(ParseError::forbidden(
                "the node's own identity cannot be deleted through the API: it is the identity `tincan up` runs with",
            ));
        }
        let mut file = lock(&self.file);
        let Some(i) = file
            .accounts
            .iter()
            .position(|a| a.sealed.user_id().ok().as_ref() == Some(user))
        else {
            return Err(ParseError::not_found(
                "that user has no account on this node",
            ));
        };
        let removed = file.accounts.remove(i);
        if let Err(e) = self.save(&file) {
            file.accounts.insert(i, removed);
            return Err(e);
        }
        lock(&self.sessions).retain(|_, e| e.session.user != *user);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, t0);
        assert!(b.take(1.0, 2.0, t0));
        assert!(b.take(1.0, 2.0, t0));
        assert!(!b.take(1.0, 2.0, t0));
        assert!(b.take(1.0, 2.0, t0 + Duration::from_millis(1000)));
        assert!(!b.take(1.0, 2.0, t0 + Duration::from_millis(1000)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(100);
        assert!(b.take(1.0, 2.0, later));
        assert!(b.take(1.0, 2.0, later));
        assert!(!b.take(1.0, 2.0, later));
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 + 64);
    }
}
