//! Identities: a user key that signs everything its user says, a node key per
//! device (the libp2p PeerId and the voice TLS identity), and a binding signed
//! by the user key that says "this node speaks for me".

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{IdentityError, ParseIdError};
use crate::hlc::Hlc;

/// Domain tag for node bindings, so a binding signature can never be replayed
/// as a record signature or the other way round.
const BINDING_DOMAIN: &[u8] = b"tincan/node-binding/v1\0";

/// Fresh 32 bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], IdentityError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| IdentityError::Entropy(e.to_string()))?;
    Ok(out)
}

/// A user, named by their ed25519 public key. Names are not unique without a
/// server, so a user is shown as name plus [`Fingerprint`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub [u8; 32]);

impl UserId {
    /// The short fingerprint shown next to the user's name.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }

    /// Lowercase hex of the public key (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the 64-character hex form.
    pub fn from_hex(s: &str) -> Result<Self, ParseIdError> {
        parse_hex_array(s, "user id").map(UserId)
    }

    /// The key to verify this user's signatures with; fails for bytes that
    /// are not a point on the curve, or a weak (small-order) key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(IdentityError::InvalidPublicKey);
        }
        Ok(key)
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserId({})", self.fingerprint())
    }
}

pub(crate) fn parse_hex_array<const N: usize>(
    s: &str,
    what: &'static str,
) -> Result<[u8; N], ParseIdError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseIdError {
        what,
        expected_hex_chars: N * 2,
    })?;
    Ok(out)
}

/// A short, human-comparable digest of a public key: 16 hex digits in four
/// groups, e.g. `3f2a-91c0-77d1-0b9e`. 64 bits: enough to tell people apart
/// at a glance, not a security boundary (the full key is).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl Fingerprint {
    /// The fingerprint of a public key.
    pub fn of(public_key: &[u8; 32]) -> Self {
        let hash = blake3::derive_key("tincan fingerprint v1", public_key);
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&hash[..8]);
        Fingerprint(fp)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode(self.0);
        write!(f, "{}-{}-{}-{}", &h[0..4], &h[4..8], &h[8..12], &h[12..16])
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A user's signing key. Kept only in memory once the keystore is unlocked.
pub struct UserKey(SigningKey);

impl UserKey {
    /// A new random key.
    pub fn generate() -> Result<Self, IdentityError> {
        let seed = Zeroizing::new(random_bytes::<32>()?);
        Ok(Self::from_seed(&seed))
    }

    /// The key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        UserKey(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed (secret: zeroised when dropped).
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The user this key belongs to.
    pub fn id(&self) -> UserId {
        UserId(self.0.verifying_key().to_bytes())
    }

    /// Signs `domain || message`. Domains end in a NUL byte, so no domain
    /// is a prefix of another.
    pub(crate) fn sign_in_domain(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        self.0.sign(&buf).to_bytes()
    }
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserKey({:?})", self.id())
    }
}

/// Verifies `signature` over `domain || message` by `key`, strictly (no
/// malleable signatures, no weak keys), so every node agrees on validity.
pub(crate) fn verify_in_domain(
    key: &UserId,
    domain: &[u8],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), IdentityError> {
    let vk = key.verifying_key()?;
    let sig = Signature::from_bytes(signature);
    let mut buf = Vec::with_capacity(domain.len() + message.len());
    buf.extend_from_slice(domain);
    buf.extend_from_slice(message);
    vk.verify_strict(&buf, &sig)
        .map_err(|_| IdentityError::BadSignature)
}

/// A device, named by its ed25519 node public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The libp2p PeerId of this node in its usual base58 text form
    /// (`12D3KooW...`): the identity multihash of the protobuf-encoded
    /// ed25519 public key, computed here so that core needs no libp2p.
    pub fn peer_id(&self) -> String {
        // protobuf PublicKey { Type = Ed25519 (1), Data = 32 bytes }
        let mut proto = Vec::with_capacity(36);
        proto.extend_from_slice(&[0x08, 0x01, 0x12, 0x20]);
        proto.extend_from_slice(&self.0);
        // multihash: code 0x00 (identity), length, digest
        let mut mh = Vec::with_capacity(38);
        mh.push(0x00);
        mh.push(proto.len() as u8);
        mh.extend_from_slice(&proto);
        bs58::encode(mh).into_string()
    }

    /// The short fingerprint of the node key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({})", self.fingerprint())
    }
}

/// A node's key: its seed is also the libp2p identity seed and the voice TLS key.
pub struct NodeKey(SigningKey);

impl NodeKey {
    /// A new random node key.
    pub fn generate() -> Result<Self, IdentityError> {
        let seed = Zeroizing::new(random_bytes::<32>()?);
        Ok(Self::from_seed(&seed))
    }

    /// The key from its 32-byte seed (the same seed libp2p's
    /// `Keypair::ed25519_from_bytes` takes).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        NodeKey(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed (secret: zeroised when dropped).
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// This node's public identity.
    pub fn id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({:?})", self.id())
    }
}

/// "Node `node` speaks for user `user`", signed by the user key. Lets one
/// user run several devices and lets peers map a PeerId to a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBinding {
    /// The user who vouches.
    pub user: UserId,
    /// The node vouched for.
    pub node: NodeId,
    /// When the binding was made.
    pub issued: Hlc,
    /// The user's signature over the domain tag and the fields above.
    #[serde(with = "serde_sig")]
    pub signature: [u8; 64],
}

impl NodeBinding {
    fn signed_bytes(user: &UserId, node: &NodeId, issued: Hlc) -> Vec<u8> {
        let mut b = Vec::with_capacity(72);
        b.extend_from_slice(&user.0);
        b.extend_from_slice(&node.0);
        b.extend_from_slice(&issued.to_be_bytes());
        b
    }

    /// The user key vouches for `node`.
    pub fn new(user_key: &UserKey, node: NodeId, issued: Hlc) -> Self {
        let user = user_key.id();
        let signature =
            user_key.sign_in_domain(BINDING_DOMAIN, &Self::signed_bytes(&user, &node, issued));
        NodeBinding {
            user,
            node,
            issued,
            signature,
        }
    }

    /// Checks the user's signature.
    pub fn verify(&self) -> Result<(), IdentityError> {
        verify_in_domain(
            &self.user,
            BINDING_DOMAIN,
            &Self::signed_bytes(&self.user, &self.node, self.issued),
            &self.signature,
        )
    }
}

/// serde for `[u8; 64]`, which serde does not derive for arrays over 32.
pub(crate) mod serde_sig {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = serde_bytes_vec(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(64);
                while let Some(b) = a.next_element::<u8>()? {
                    if out.len() == 64 {
                        return Err(serde::de::Error::custom("a signature is 64 bytes"));
                    }
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_matches_libp2p() {
        for seed in [[7u8; 32], [0u8; 32], [255u8; 32]] {
            let ours = NodeKey::from_seed(&seed).id().peer_id();
            let mut s = seed;
            let kp = libp2p_identity::Keypair::ed25519_from_bytes(&mut s).unwrap();
            assert_eq!(ours, kp.public().to_peer_id().to_string());
            assert!(ours.starts_with("12D3KooW"));
        }
    }

    #[test]
    fn binding_verifies_and_detects_tampering() {
        let user = UserKey::from_seed(&[1; 32]);
        let node = NodeKey::from_seed(&[2; 32]).id();
        let mut b = NodeBinding::new(&user, node, Hlc::new(10, 0));
        b.verify().unwrap();
        b.node = NodeKey::from_seed(&[3; 32]).id();
        assert!(matches!(b.verify(), Err(IdentityError::BadSignature)));
    }

    #[test]
    fn fingerprint_format() {
        let fp = UserKey::from_seed(&[9; 32]).id().fingerprint().to_string();
        assert_eq!(fp.len(), 19);
        assert_eq!(fp.matches('-').count(), 3);
    }

    #[test]
    fn user_id_hex_round_trip_and_errors() {
        let id = UserKey::from_seed(&[4; 32]).id();
        assert_eq!(UserId::from_hex(&id.to_hex()).unwrap(), id);
        let err = UserId::from_hex("abc").unwrap_err();
        assert!(err.to_string().contains("64 hex"));
    }
}
