//! Sealing: the cryptography that keeps an invite-only room's content and a
//! voice channel's keys to their members, on a wire any peer may read.
//!
//! Three pieces, each pure (randomness comes from the caller or, where a
//! fresh secret is made, from the operating system):
//! - **Envelopes** ([`seal_to`], [`open_envelope`]): one short payload sealed
//!   to many recipients at once, each named by their ed25519 public key (a
//!   user key or a node key). One ephemeral X25519 key per batch; for each
//!   recipient a key from X25519 with the recipient's key (its ed25519 key
//!   in Montgomery form, as libsodium's `crypto_sign_ed25519_pk_to_curve25519`
//!   and age's ssh-ed25519 recipients do) and a ChaCha20-Poly1305 box. A
//!   recipient finds its envelope by an 8-byte hint that only it and the
//!   sealer can compute, so a non-member sees how many envelopes there are,
//!   never whom they are for.
//! - **Room key chains** ([`RoomChain`], [`RoomKey`]): an invite-only room's
//!   content key for epoch `e` is `K_e`; `K_(e-1) = step(K_e)`. The owner
//!   derives the whole chain from its user key and the room id (no state to
//!   lose, the same on each of the owner's devices); a member holding `K_e`
//!   derives every older key, so a member admitted late reads the room's
//!   history, and a member removed at epoch `e` cannot compute `K_(e+1)`
//!   (that would invert BLAKE3). The chain has [`MAX_EPOCHS`] epochs: one
//!   per kick, ban or leave.
//! - **Locators** ([`LocatorSecret`]): where an invite-only room lives on the
//!   wire (gossip topic, DHT key, sync scope) is derived from a secret the
//!   owner hands to invitees, never from the public room id.
//!
//! What a key is used for is always bound in its derivation (a BLAKE3
//! `derive_key` context per purpose), so no key ever serves two purposes.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::IdentityError;
use crate::identity::{NodeKey, UserKey, random_bytes};
use crate::record::RoomId;

/// Epochs in a room's key chain. Each kick, ban or leave of an invite-only
/// room starts a new one, so a room can see 65,535 removals; deriving the
/// oldest key from the newest costs that many BLAKE3 calls (about 6 ms).
pub const MAX_EPOCHS: u32 = 1 << 16;

/// Bytes an envelope adds to its payload: the Poly1305 tag.
pub const ENVELOPE_OVERHEAD: usize = 16;

/// Bytes of the hint by which a recipient finds its envelope.
pub const HINT_LEN: usize = 8;

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum SealError {
    /// A recipient's public key is not a usable ed25519 key.
    #[error("a recipient's key is not a valid ed25519 public key")]
    BadRecipient,
    /// The shared secret with a recipient is degenerate (a low-order key).
    #[error("a recipient's key gives no shared secret (a low-order point)")]
    LowOrder,
    /// The operating system gave no randomness.
    #[error("the operating system's random number generator failed: {0}")]
    Entropy(String),
    /// The ciphertext does not open under this key: forged, damaged, or
    /// sealed under another key.
    #[error("cannot open: the ciphertext is forged, damaged or sealed under another key")]
    Open,
    /// An epoch outside the chain.
    #[error("epoch {0} is outside the room's key chain (0 to {max})", max = MAX_EPOCHS - 1)]
    Epoch(u32),
}

impl From<IdentityError> for SealError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Entropy(s) => SealError::Entropy(s),
            _ => SealError::BadRecipient,
        }
    }
}

/// An ed25519 public key (user id or node id bytes) in X25519 form.
pub fn x25519_public(ed25519_public: &[u8; 32]) -> Result<[u8; 32], SealError> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(ed25519_public)
        .map_err(|_| SealError::BadRecipient)?;
    if vk.is_weak() {
        return Err(SealError::BadRecipient);
    }
    Ok(vk.to_montgomery().to_bytes())
}

/// The X25519 secret of an ed25519 seed: the clamped scalar ed25519 signs with.
fn x25519_secret(seed: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(ed25519_dalek::SigningKey::from_bytes(seed).to_scalar_bytes())
}

/// Something that can open envelopes sealed to its public key: a user key
/// or a node key.
pub trait Recipient {
    /// The ed25519 public key envelopes are sealed to.
    fn public(&self) -> [u8; 32];
    /// The ed25519 seed (secret).
    fn seed(&self) -> Zeroizing<[u8; 32]>;
}

impl Recipient for UserKey {
    fn public(&self) -> [u8; 32] {
        self.id().0
    }
    fn seed(&self) -> Zeroizing<[u8; 32]> {
        UserKey::seed(self)
    }
}

impl Recipient for NodeKey {
    fn public(&self) -> [u8; 32] {
        self.id().0
    }
    fn seed(&self) -> Zeroizing<[u8; 32]> {
        NodeKey::seed(self)
    }
}

/// One recipient's sealed copy of a payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Lets the recipient find its envelope without trying them all; says
    /// nothing about who it is to anyone else.
    pub hint: [u8; HINT_LEN],
    /// The payload sealed to the recipient (payload + 16 bytes).
    pub sealed: Vec<u8>,
}

/// A payload sealed to several recipients under one ephemeral key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelopes {
    /// The ephemeral X25519 public key of this batch.
    pub ephemeral: [u8; 32],
    /// One per recipient, in no meaningful order.
    pub entries: Vec<Envelope>,
}

struct EnvelopeKeys {
    key: Zeroizing<[u8; 32]>,
    hint: [u8; HINT_LEN],
}

fn envelope_keys(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient_x: &[u8; 32],
    context: &[u8],
) -> Result<EnvelopeKeys, SealError> {
    // X25519 with a low-order point gives all zeros: refuse it rather than
    // derive a key everyone knows.
    if shared.iter().all(|b| *b == 0) {
        return Err(SealError::LowOrder);
    }
    let mut input = Zeroizing::new(Vec::with_capacity(96 + context.len()));
    input.extend_from_slice(shared);
    input.extend_from_slice(ephemeral);
    input.extend_from_slice(recipient_x);
    input.extend_from_slice(context);
    let key = Zeroizing::new(blake3::derive_key("tincan envelope key v1", &input));
    let full = blake3::derive_key("tincan envelope hint v1", &input);
    let mut hint = [0u8; HINT_LEN];
    hint.copy_from_slice(&full[..HINT_LEN]);
    Ok(EnvelopeKeys { key, hint })
}

/// Seals `payload` to each of `recipients` (ed25519 public keys), binding
/// `context` (what the payload is for: a room and epoch, say) so an
/// envelope cannot be replayed elsewhere. Uses fresh OS randomness.
pub fn seal_to(
    recipients: &[[u8; 32]],
    payload: &[u8],
    context: &[u8],
) -> Result<Envelopes, SealError> {
    let ephemeral_secret = Zeroizing::new(random_bytes::<32>()?);
    seal_to_with(&ephemeral_secret, recipients, payload, context)
}

/// [`seal_to`] with the ephemeral secret given (tests and fuzzing: the
/// same inputs give the same bytes). Never reuse a secret for real sealing.
pub fn seal_to_with(
    ephemeral_secret: &[u8; 32],
    recipients: &[[u8; 32]],
    payload: &[u8],
    context: &[u8],
) -> Result<Envelopes, SealError> {
    let ephemeral = x25519_dalek::x25519(*ephemeral_secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let mut entries = Vec::with_capacity(recipients.len());
    for r in recipients {
        let rx = x25519_public(r)?;
        let shared = Zeroizing::new(x25519_dalek::x25519(*ephemeral_secret, rx));
        let keys = envelope_keys(&shared, &ephemeral, &rx, context)?;
        let cipher = ChaCha20Poly1305::new_from_slice(keys.key.as_ref())
            .map_err(|_| SealError::BadRecipient)?;
        // Each (ephemeral, recipient) pair has its own key, used once:
        // a fixed nonce is safe.
        let sealed = cipher
            .encrypt(
                &Nonce::default(),
                Payload {
                    msg: payload,
                    aad: context,
                },
            )
            .map_err(|_| SealError::Open)?;
        entries.push(Envelope {
            hint: keys.hint,
            sealed,
        });
    }
    Ok(Envelopes { ephemeral, entries })
}

/// Opens the envelope sealed to `me` among `envelopes`, if there is one.
/// One X25519 per call, whatever the number of envelopes.
pub fn open_envelope(
    envelopes: &Envelopes,
    me: &dyn Recipient,
    context: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let secret = x25519_secret(&me.seed());
    let my_x = x25519_public(&me.public()).ok()?;
    let shared = Zeroizing::new(x25519_dalek::x25519(*secret, envelopes.ephemeral));
    let keys = envelope_keys(&shared, &envelopes.ephemeral, &my_x, context).ok()?;
    let cipher = ChaCha20Poly1305::new_from_slice(keys.key.as_ref()).ok()?;
    envelopes
        .entries
        .iter()
        .filter(|e| e.hint == keys.hint)
        .find_map(|e| {
            cipher
                .decrypt(
                    &Nonce::default(),
                    Payload {
                        msg: &e.sealed,
                        aad: context,
                    },
                )
                .ok()
                .map(Zeroizing::new)
        })
}

/// The owner's view of an invite-only room's secrets: every epoch key and
/// the locator, derived from the owner's user key and the room id.
pub struct RoomChain {
    room: RoomId,
    /// `K_(MAX_EPOCHS - 1)`, the head of the chain.
    head: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for RoomChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomChain")
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

const STEP_CONTEXT: &str = "tincan room key chain step v1";

fn step(key: &[u8; 32], hasher: &blake3::Hasher) -> [u8; 32] {
    let mut h = hasher.clone();
    h.update(key);
    *h.finalize().as_bytes()
}

impl RoomChain {
    /// The chain of `room`, owned by `owner`.
    pub fn derive(owner: &UserKey, room: &RoomId) -> Self {
        let seed = owner.seed();
        let mut input = Zeroizing::new([0u8; 48]);
        input[..32].copy_from_slice(seed.as_ref());
        input[32..].copy_from_slice(&room.0);
        RoomChain {
            room: *room,
            head: Zeroizing::new(blake3::derive_key("tincan room key chain v1", &*input)),
        }
    }

    /// The key of `epoch`.
    pub fn epoch_key(&self, epoch: u32) -> Result<RoomKey, SealError> {
        if epoch >= MAX_EPOCHS {
            return Err(SealError::Epoch(epoch));
        }
        let head = RoomKey {
            room: self.room,
            epoch: MAX_EPOCHS - 1,
            key: self.head.clone(),
        };
        head.older(epoch)
    }

    /// Where the room lives on the wire. Stable for the room's life: it is
    /// what an invite carries.
    pub fn locator(&self) -> LocatorSecret {
        let mut input = Zeroizing::new([0u8; 48]);
        input[..32].copy_from_slice(self.head.as_ref());
        input[32..].copy_from_slice(&self.room.0);
        LocatorSecret(blake3::derive_key("tincan room locator v1", &*input))
    }
}

/// The content key of one epoch of an invite-only room. Holding it gives
/// every older epoch's key ([`RoomKey::older`]) and no newer one.
#[derive(Clone)]
pub struct RoomKey {
    room: RoomId,
    epoch: u32,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomKey")
            .field("room", &self.room)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Associated data of a sealed record: who wrote it, when, in which room
/// and epoch. The outer record's signature covers the ciphertext, and this
/// binds the plaintext to that record, so no member can move another's
/// ciphertext into a record of its own.
pub fn record_aad(author: &[u8; 32], hlc: u64, room: &RoomId, epoch: u32) -> [u8; 60] {
    let mut aad = [0u8; 60];
    aad[..32].copy_from_slice(author);
    aad[32..40].copy_from_slice(&hlc.to_be_bytes());
    aad[40..56].copy_from_slice(&room.0);
    aad[56..60].copy_from_slice(&epoch.to_be_bytes());
    aad
}

impl RoomKey {
    /// A key from its parts, as a member got it from a grant.
    pub fn from_bytes(room: RoomId, epoch: u32, key: [u8; 32]) -> Result<Self, SealError> {
        if epoch >= MAX_EPOCHS {
            return Err(SealError::Epoch(epoch));
        }
        Ok(RoomKey {
            room,
            epoch,
            key: Zeroizing::new(key),
        })
    }

    /// The room.
    pub fn room(&self) -> RoomId {
        self.room
    }

    /// The epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The raw key (secret): what a grant seals and the store keeps.
    pub fn bytes(&self) -> Zeroizing<[u8; 32]> {
        self.key.clone()
    }

    /// The key of an older (or the same) epoch; an error for a newer one,
    /// which this key cannot give.
    pub fn older(&self, epoch: u32) -> Result<RoomKey, SealError> {
        if epoch > self.epoch {
            return Err(SealError::Epoch(epoch));
        }
        let hasher = blake3::Hasher::new_derive_key(STEP_CONTEXT);
        let mut k = *self.key;
        for _ in epoch..self.epoch {
            let next = step(&k, &hasher);
            k.zeroize();
            k = next;
        }
        let key = Zeroizing::new(k);
        k.zeroize();
        Ok(RoomKey {
            room: self.room,
            epoch,
            key,
        })
    }

    /// A subkey for one purpose (`purpose` names it, e.g. "records").
    fn subkey(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut input = Zeroizing::new([0u8; 52]);
        input[..32].copy_from_slice(self.key.as_ref());
        input[32..48].copy_from_slice(&self.room.0);
        input[48..].copy_from_slice(&self.epoch.to_be_bytes());
        let mut h = blake3::Hasher::new_derive_key("tincan room subkey v1");
        h.update(purpose.as_bytes());
        h.update(&[0]);
        h.update(&*input);
        Zeroizing::new(*h.finalize().as_bytes())
    }

    /// Seals `plaintext` with a fresh random nonce, bound to `aad`
    /// ([`record_aad`] for records). Returns (nonce, ciphertext).
    pub fn seal(
        &self,
        purpose: &str,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<([u8; 24], Vec<u8>), SealError> {
        let nonce = random_bytes::<24>()?;
        let ct = self.seal_with_nonce(purpose, &nonce, plaintext, aad)?;
        Ok((nonce, ct))
    }

    /// [`RoomKey::seal`] with the nonce given (tests and fuzzing only: a
    /// nonce must never repeat under one key).
    pub fn seal_with_nonce(
        &self,
        purpose: &str,
        nonce: &[u8; 24],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let key = self.subkey(purpose);
        let cipher =
            XChaCha20Poly1305::new_from_slice(key.as_ref()).map_err(|_| SealError::Open)?;
        cipher
            .encrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Open)
    }

    /// Opens what [`RoomKey::seal`] sealed for the same purpose and `aad`.
    pub fn open(
        &self,
        purpose: &str,
        nonce: &[u8; 24],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let key = self.subkey(purpose);
        let cipher =
            XChaCha20Poly1305::new_from_slice(key.as_ref()).map_err(|_| SealError::Open)?;
        cipher
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }

    /// The token a member shows a voice relay to prove it holds this
    /// epoch's key without giving the key away.
    pub fn relay_token(&self) -> [u8; 32] {
        *self.subkey("voice relay token")
    }

    /// What the owner publishes in the epoch's grant so a relay can check a
    /// token: its BLAKE3 hash.
    pub fn relay_commit(&self) -> [u8; 32] {
        relay_commit_of(&self.relay_token())
    }
}

/// The commitment a grant carries for a relay token.
pub fn relay_commit_of(token: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("tincan relay token commit v1", token)
}

/// The secret that says where an invite-only room lives on the wire.
/// Members get it in their grants, invitees in their invite.
#[derive(Clone, PartialEq, Eq)]
pub struct LocatorSecret(pub [u8; 32]);

impl std::fmt::Debug for LocatorSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocatorSecret({})", self.id())
    }
}

impl Drop for LocatorSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The public name derived from a [`LocatorSecret`]: what topic names, DHT
/// keys and sync scopes carry. Seeing it on the wire lets a peer subscribe
/// to ciphertext; it does not let it sync (that needs [`LocatorSecret::proof`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocatorId(pub [u8; 16]);

impl LocatorId {
    /// Lowercase hex (32 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for LocatorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for LocatorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocatorId({})", self.to_hex())
    }
}

impl LocatorSecret {
    /// The public name.
    pub fn id(&self) -> LocatorId {
        let full = blake3::derive_key("tincan room locator id v1", &self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&full[..16]);
        LocatorId(id)
    }

    /// Proof, bound to one requester (its PeerId bytes), that it holds the
    /// secret: a sync responder checks it before serving the room.
    pub fn proof(&self, requester: &[u8]) -> [u8; 32] {
        let key = blake3::derive_key("tincan room locator proof key v1", &self.0);
        *blake3::keyed_hash(&key, requester).as_bytes()
    }

    /// Checks a [`LocatorSecret::proof`] in constant time.
    pub fn check_proof(&self, requester: &[u8], proof: &[u8; 32]) -> bool {
        let want = self.proof(requester);
        let mut diff = 0u8;
        for (a, b) in want.iter().zip(proof) {
            diff |= a ^ b;
        }
        diff == 0
    }

    /// A key derived for one purpose (e.g. the voice topic's name).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("tincan room locator subkey v1");
        h.update(purpose.as_bytes());
        h.update(&[0]);
        h.update(&self.0);
        *h.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_open_only_for_their_recipients() {
        let a = UserKey::from_seed(&[1; 32]);
        let b = NodeKey::from_seed(&[2; 32]);
        let stranger = UserKey::from_seed(&[3; 32]);
        let env = seal_to(&[a.id().0, b.id().0], b"room key", b"ctx").unwrap();
        assert_eq!(env.entries.len(), 2);
        assert_eq!(&open_envelope(&env, &a, b"ctx").unwrap()[..], b"room key");
        assert_eq!(&open_envelope(&env, &b, b"ctx").unwrap()[..], b"room key");
        assert!(open_envelope(&env, &stranger, b"ctx").is_none());
        // Another context (another room or epoch) opens nothing.
        assert!(open_envelope(&env, &a, b"other").is_none());
        // A tampered envelope opens nothing.
        let mut bad = env.clone();
        bad.entries[0].sealed[0] ^= 1;
        bad.entries[1].sealed[0] ^= 1;
        assert!(open_envelope(&bad, &a, b"ctx").is_none());
    }

    #[test]
    fn low_order_and_invalid_recipients_are_refused() {
        // The identity point is a valid encoding but a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(seal_to(&[identity], b"x", b"").is_err());
    }

    #[test]
    fn a_key_gives_older_epochs_and_never_newer_ones() {
        let owner = UserKey::from_seed(&[7; 32]);
        let room = RoomId([9; 16]);
        let chain = RoomChain::derive(&owner, &room);
        let k5 = chain.epoch_key(5).unwrap();
        let k2 = chain.epoch_key(2).unwrap();
        assert_eq!(*k5.older(2).unwrap().bytes(), *k2.bytes());
        assert!(k2.older(5).is_err());
        assert_ne!(*k5.bytes(), *k2.bytes());
        assert!(chain.epoch_key(MAX_EPOCHS).is_err());
        // Another room of the same owner has another chain and locator.
        let other = RoomChain::derive(&owner, &RoomId([8; 16]));
        assert_ne!(*other.epoch_key(2).unwrap().bytes(), *k2.bytes());
        assert_ne!(other.locator().id(), chain.locator().id());
    }

    #[test]
    fn sealed_content_opens_only_with_its_key_and_aad() {
        let owner = UserKey::from_seed(&[7; 32]);
        let room = RoomId([9; 16]);
        let chain = RoomChain::derive(&owner, &room);
        let k1 = chain.epoch_key(1).unwrap();
        let aad = record_aad(&owner.id().0, 42, &room, 1);
        let (nonce, ct) = k1.seal("records", b"general", &aad).unwrap();
        assert_eq!(
            &k1.open("records", &nonce, &ct, &aad).unwrap()[..],
            b"general"
        );
        let k2 = chain.epoch_key(2).unwrap();
        assert!(k2.open("records", &nonce, &ct, &aad).is_err());
        assert!(k1.open("presence", &nonce, &ct, &aad).is_err());
        let other_aad = record_aad(&owner.id().0, 43, &room, 1);
        assert!(k1.open("records", &nonce, &ct, &other_aad).is_err());
    }

    #[test]
    fn relay_tokens_match_their_commitment_and_locator_proofs_their_requester() {
        let owner = UserKey::from_seed(&[7; 32]);
        let chain = RoomChain::derive(&owner, &RoomId([9; 16]));
        let k = chain.epoch_key(3).unwrap();
        assert_eq!(relay_commit_of(&k.relay_token()), k.relay_commit());
        assert_ne!(k.relay_token(), chain.epoch_key(4).unwrap().relay_token());
        let loc = chain.locator();
        let p = loc.proof(b"peer-a");
        assert!(loc.check_proof(b"peer-a", &p));
        assert!(!loc.check_proof(b"peer-b", &p));
    }
}
