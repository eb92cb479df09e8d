//! The sealed form of an identity: what the keystore file and an identity
//! export hold. The secret seeds are encrypted with XChaCha20-Poly1305 under a
//! key derived from the password by argon2id; the public header (format,
//! username, ids, KDF parameters, salt) is bound to the ciphertext as
//! associated data, so editing any of it makes opening fail.
//!
//! Pure: file handling (atomic writes, permissions) lives in the store crate.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::identity::{NodeKey, UserId, UserKey, random_bytes};

const FORMAT: &str = "tincan-identity";
const VERSION: u8 = 1;
const AAD_DOMAIN: &[u8] = b"tincan/keystore/v1\0";

/// Cost parameters of argon2id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// What new keystores use: 64 MiB, 3 passes, 1 lane (above OWASP's
    /// argon2id minimum of 19 MiB and 2 passes; about a third of a second here).
    pub const RECOMMENDED: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Cheap parameters for tests only: they protect nothing.
    pub const INSECURE_FAST: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// Refuses parameters that would let a file make us allocate without
    /// bound (a hostile export) or that are below argon2's minimums.
    fn check(&self) -> Result<argon2::Params, KeystoreError> {
        if self.m_cost_kib > 4 * 1024 * 1024 || self.t_cost > 64 || self.p_cost > 16 {
            return Err(KeystoreError::Corrupt(
                "key derivation parameters are out of range".into(),
            ));
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| KeystoreError::Corrupt(format!("key derivation parameters: {e}")))
    }
}

/// An unlocked identity: the user key, and this device's node key.
#[derive(Debug)]
pub struct Identity {
    /// The display name chosen at sign-up.
    pub username: String,
    /// The user's key.
    pub user_key: UserKey,
    /// The node key, if this identity carries one (an export for a second
    /// device leaves it out: each device gets its own).
    pub node_key: Option<NodeKey>,
}

/// Why a sealed identity could not be opened or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The password does not open it (or the file was altered).
    #[error("wrong password (or the keystore file was altered); nothing was changed")]
    WrongPassword,
    /// The file is not a sealed identity, or is damaged.
    #[error("not a usable tincan identity file: {0}")]
    Corrupt(String),
    /// Made by a newer tincan.
    #[error("identity file version {0} is newer than this tincan understands: upgrade tincan")]
    UnsupportedVersion(u8),
    /// An empty password.
    #[error("the password must not be empty")]
    EmptyPassword,
    /// The operating system gave no randomness, or key derivation failed.
    #[error("{0}")]
    Crypto(String),
}

/// The sealed identity, as stored in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedIdentity {
    /// Always "tincan-identity".
    pub format: String,
    /// Format version.
    pub version: u8,
    /// Display name (public).
    pub username: String,
    /// The user id, hex (public).
    pub user_id: String,
    /// The node's PeerId, if a node key is inside (public).
    pub node_peer_id: Option<String>,
    /// argon2id parameters.
    pub kdf: KdfParams,
    /// argon2id salt, hex.
    pub salt: String,
    /// XChaCha20-Poly1305 nonce, hex.
    pub nonce: String,
    /// The sealed seeds, hex.
    pub ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Secrets {
    user_seed: [u8; 32],
    node_seed: Option<[u8; 32]>,
}

impl Drop for Secrets {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.user_seed.zeroize();
        if let Some(s) = self.node_seed.as_mut() {
            s.zeroize();
        }
    }
}

fn derive_key(
    password: &[u8],
    salt: &[u8],
    kdf: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
    let params = kdf.check()?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(password, salt, key.as_mut())
        .map_err(|e| KeystoreError::Crypto(format!("key derivation failed: {e}")))?;
    Ok(key)
}

impl SealedIdentity {
    /// The associated data: every public field, each length-prefixed.
    fn aad(&self) -> Vec<u8> {
        let mut out = AAD_DOMAIN.to_vec();
        for part in [
            self.format.as_bytes(),
            &[self.version],
            self.username.as_bytes(),
            self.user_id.as_bytes(),
            self.node_peer_id.as_deref().unwrap_or("").as_bytes(),
            &self.kdf.m_cost_kib.to_be_bytes(),
            &self.kdf.t_cost.to_be_bytes(),
            &self.kdf.p_cost.to_be_bytes(),
            self.salt.as_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Seals `identity` under `password`.
    pub fn seal(
        identity: &Identity,
        password: &[u8],
        kdf: KdfParams,
    ) -> Result<Self, KeystoreError> {
        if password.is_empty() {
            return Err(KeystoreError::EmptyPassword);
        }
        let entropy = |e: crate::error::IdentityError| KeystoreError::Crypto(e.to_string());
        let salt = random_bytes::<16>().map_err(entropy)?;
        let nonce = random_bytes::<24>().map_err(entropy)?;
        let mut sealed = SealedIdentity {
            format: FORMAT.into(),
            version: VERSION,
            username: identity.username.clone(),
            user_id: identity.user_key.id().to_hex(),
            node_peer_id: identity.node_key.as_ref().map(|k| k.id().peer_id()),
            kdf,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            ciphertext: String::new(),
        };
        let secrets = Secrets {
            user_seed: *identity.user_key.seed(),
            node_seed: identity.node_key.as_ref().map(|k| *k.seed()),
        };
        let plain = Zeroizing::new(
            postcard::to_allocvec(&secrets).expect("postcard encodes fixed-size seeds"),
        );
        let key = derive_key(password, &salt, &kdf)?;
        let cipher = XChaCha20Poly1305::new_from_slice(key.as_ref())
            .map_err(|_| KeystoreError::Crypto("bad key length".into()))?;
        let aad = sealed.aad();
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| KeystoreError::Crypto("encryption failed".into()))?;
        sealed.ciphertext = hex::encode(ct);
        Ok(sealed)
    }

    /// Opens it with `password`.
    pub fn open(&self, password: &[u8]) -> Result<Identity, KeystoreError> {
        if self.format != FORMAT {
            return Err(KeystoreError::Corrupt(format!(
                "format is {:?}, expected {FORMAT:?}",
                self.format
            )));
        }
        if self.version != VERSION {
            return Err(KeystoreError::UnsupportedVersion(self.version));
        }
        let corrupt = |what: &str| KeystoreError::Corrupt(format!("bad {what}"));
        let salt = hex::decode(&self.salt).map_err(|_| corrupt("salt"))?;
        let nonce: [u8; 24] = hex::decode(&self.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| corrupt("nonce"))?;
        let ct = hex::decode(&self.ciphertext).map_err(|_| corrupt("ciphertext"))?;
        if salt.len() < 8 || salt.len() > 64 {
            return Err(corrupt("salt"));
        }
        let key = derive_key(password, &salt, &self.kdf)?;
        let cipher = XChaCha20Poly1305::new_from_slice(key.as_ref())
            .map_err(|_| KeystoreError::Crypto("bad key length".into()))?;
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: &ct,
                        aad: &self.aad(),
                    },
                )
                .map_err(|_| KeystoreError::WrongPassword)?,
        );
        let secrets: Secrets =
            postcard::from_bytes(&plain).map_err(|_| corrupt("sealed contents"))?;
        let user_key = UserKey::from_seed(&secrets.user_seed);
        if user_key.id().to_hex() != self.user_id {
            return Err(corrupt("user id: it does not match the sealed key"));
        }
        let node_key = secrets.node_seed.as_ref().map(NodeKey::from_seed);
        Ok(Identity {
            username: self.username.clone(),
            user_key,
            node_key,
        })
    }

    /// The user id in the public header.
    pub fn user_id(&self) -> Result<UserId, KeystoreError> {
        UserId::from_hex(&self.user_id).map_err(|e| KeystoreError::Corrupt(e.to_string()))
    }

    /// JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain struct serialises")
    }

    /// Parses JSON text.
    pub fn from_json(text: &str) -> Result<Self, KeystoreError> {
        serde_json::from_str(text).map_err(|e| KeystoreError::Corrupt(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            username: "alice".into(),
            user_key: UserKey::from_seed(&[3; 32]),
            node_key: Some(NodeKey::from_seed(&[4; 32])),
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let s = SealedIdentity::seal(&identity(), b"hunter2", KdfParams::INSECURE_FAST).unwrap();
        let back = SealedIdentity::from_json(&s.to_json())
            .unwrap()
            .open(b"hunter2")
            .unwrap();
        assert_eq!(back.user_key.id(), identity().user_key.id());
        assert_eq!(
            back.node_key.unwrap().id(),
            NodeKey::from_seed(&[4; 32]).id()
        );
        assert_eq!(back.username, "alice");
    }

    #[test]
    fn wrong_password_is_a_clear_error() {
        let s = SealedIdentity::seal(&identity(), b"hunter2", KdfParams::INSECURE_FAST).unwrap();
        let err = s.open(b"hunter3").unwrap_err();
        assert!(matches!(err, KeystoreError::WrongPassword));
        assert!(err.to_string().contains("wrong password"));
    }

    #[test]
    fn tampered_header_fails_like_a_wrong_password() {
        let mut s = SealedIdentity::seal(&identity(), b"pw", KdfParams::INSECURE_FAST).unwrap();
        s.username = "mallory".into();
        assert!(matches!(s.open(b"pw"), Err(KeystoreError::WrongPassword)));
    }

    #[test]
    fn hostile_parameters_are_refused_before_allocating() {
        let mut s = SealedIdentity::seal(&identity(), b"pw", KdfParams::INSECURE_FAST).unwrap();
        s.kdf.m_cost_kib = u32::MAX;
        assert!(matches!(s.open(b"pw"), Err(KeystoreError::Corrupt(_))));
    }

    #[test]
    fn empty_password_refused() {
        assert!(matches!(
            SealedIdentity::seal(&identity(), b"", KdfParams::INSECURE_FAST),
            Err(KeystoreError::EmptyPassword)
        ));
    }
}
