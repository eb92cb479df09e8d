//! Voice signals (presences, key shares) of invite-only rooms, sealed where
//! they cross the wire (the mesh seals and opens them: `tincan_mesh::signal`).
//!
//! An invite-only room's voice topic is named from its locator secret, but
//! the locator outlives membership: a removed member's node still knows the
//! topic. So on that topic every signal travels as a [`SealedSignal`]: the
//! signal's bytes sealed with XChaCha20-Poly1305 under the room's epoch key
//! ([`RoomKey::seal`], purpose [`SIGNAL_PURPOSE`]), bound by associated data
//! to the room, the epoch and the publishing node (gossipsub proves the
//! publisher, so a member cannot re-publish another's sealed signal as its
//! own). A sender seals under the newest epoch it holds; a receiver opens
//! that epoch and, for a short overlap, the one before. A member removed
//! before an epoch has no key of it and reads nothing sealed under it.

use serde::{Deserialize, Serialize};

use crate::RoomId;
use crate::seal::{RoomKey, SealError};

/// Purpose of the room-key subkey voice signals are sealed under (see
/// docs/trust.md, "Presences of a sealed room are sealed under the current
/// epoch key").
pub const SIGNAL_PURPOSE: &str = "presence";

/// Bytes a sealed signal adds at most to its plaintext on the wire: the
/// epoch and the length (varints), the nonce and the tag.
pub const SEALED_SIGNAL_OVERHEAD: usize = 5 + 3 + 24 + 16;

/// A voice signal of an invite-only room as it travels on the voice topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSignal {
    /// The key epoch it is sealed under.
    pub epoch: u32,
    /// The XChaCha20-Poly1305 nonce, random per signal.
    pub nonce: [u8; 24],
    /// The sealed signal bytes, tag included.
    pub ciphertext: Vec<u8>,
}

/// Associated data: what a sealed signal is bound to.
fn aad(room: &RoomId, epoch: u32, publisher: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(b"tincan sealed voice signal v1");
    a.extend_from_slice(&room.0);
    a.extend_from_slice(&epoch.to_be_bytes());
    a.extend_from_slice(publisher);
    a
}

/// Seals `signal` for `publisher` (this node's PeerId bytes) under `key`:
/// the bytes to publish on the room's sealed voice topic.
pub fn seal_signal(key: &RoomKey, publisher: &[u8], signal: &[u8]) -> Result<Vec<u8>, SealError> {
    let aad = aad(&key.room(), key.epoch(), publisher);
    let (nonce, ciphertext) = key.seal(SIGNAL_PURPOSE, signal, &aad)?;
    Ok(encode(&SealedSignal {
        epoch: key.epoch(),
        nonce,
        ciphertext,
    }))
}

/// [`seal_signal`] with the nonce given (tests and fuzzing only: a nonce
/// must never repeat under one key).
pub fn seal_signal_with_nonce(
    key: &RoomKey,
    publisher: &[u8],
    nonce: &[u8; 24],
    signal: &[u8],
) -> Result<Vec<u8>, SealError> {
    let aad = aad(&key.room(), key.epoch(), publisher);
    let ciphertext = key.seal_with_nonce(SIGNAL_PURPOSE, nonce, signal, &aad)?;
    Ok(encode(&SealedSignal {
        epoch: key.epoch(),
        nonce: *nonce,
        ciphertext,
    }))
}

fn encode(s: &SealedSignal) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_allocvec(s).unwrap_or_default()
}

/// What became of a sealed signal a peer published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// It opened: the signal's bytes.
    Signal(Vec<u8>),
    /// Sealed under an epoch this node does not open now (newer than the
    /// key it holds, or older than the overlap allows): not the
    /// publisher's fault, nothing to read.
    OtherEpoch(u32),
    /// Not a sealed signal, or it does not open under the epoch it names:
    /// forged or damaged, the publisher's fault.
    Invalid,
}

/// Opens `bytes`, published by `publisher` (its PeerId bytes, as gossipsub
/// proved them), with `held` (the newest key of
/// the room held here) if they are sealed under its epoch, or under the
/// epoch before it when `previous_too`. Never panics.
pub fn open_signal(held: &RoomKey, previous_too: bool, publisher: &[u8], bytes: &[u8]) -> Opened {
    let Ok((sealed, rest)) = postcard::take_from_bytes::<SealedSignal>(bytes) else {
        return Opened::Invalid;
    };
    if !rest.is_empty() {
        return Opened::Invalid;
    }
    let key = if sealed.epoch == held.epoch() {
        held.clone()
    } else if previous_too && sealed.epoch.checked_add(1) == Some(held.epoch()) {
        match held.older(sealed.epoch) {
            Ok(k) => k,
            Err(_) => return Opened::OtherEpoch(sealed.epoch),
        }
    } else {
        return Opened::OtherEpoch(sealed.epoch);
    };
    let aad = aad(&key.room(), sealed.epoch, publisher);
    match key.open(SIGNAL_PURPOSE, &sealed.nonce, &sealed.ciphertext, &aad) {
        Ok(plain) => Opened::Signal(plain.to_vec()),
        Err(_) => Opened::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserKey;
    use crate::seal::RoomChain;

    #[test]
    fn members_of_the_epoch_open_signals_and_a_removed_member_does_not() {
        let owner = UserKey::from_seed(&[1; 32]);
        let room = RoomId([5; 16]);
        let chain = RoomChain::derive(&owner, &room);
        let (k0, k1) = (chain.epoch_key(0).unwrap(), chain.epoch_key(1).unwrap());
        let me = [7u8; 38];
        let presence = b"presence of bob in channel 9".to_vec();

        let sealed = seal_signal(&k1, &me, &presence).unwrap();
        assert!(sealed.len() <= presence.len() + SEALED_SIGNAL_OVERHEAD);
        assert!(
            !sealed.windows(8).any(|w| w == &presence[..8]),
            "no plaintext"
        );
        assert_eq!(
            open_signal(&k1, false, &me, &sealed),
            Opened::Signal(presence.clone())
        );
        // A node that holds only epoch 0 (removed before epoch 1) reads
        // nothing, whatever it tries.
        assert_eq!(open_signal(&k0, true, &me, &sealed), Opened::OtherEpoch(1));
        // The epoch before, only within the overlap.
        let old = seal_signal(&k0, &me, &presence).unwrap();
        assert_eq!(
            open_signal(&k1, true, &me, &old),
            Opened::Signal(presence.clone())
        );
        assert_eq!(open_signal(&k1, false, &me, &old), Opened::OtherEpoch(0));
        // Bound to its publisher: re-published by another node, it does
        // not open.
        assert_eq!(
            open_signal(&k1, false, &[8u8; 38], &sealed),
            Opened::Invalid
        );
        // Damaged, truncated, trailing bytes, garbage.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open_signal(&k1, false, &me, &bad), Opened::Invalid);
        assert_eq!(open_signal(&k1, false, &me, &sealed[..10]), Opened::Invalid);
        let mut trailing = sealed.clone();
        trailing.push(0);
        assert_eq!(open_signal(&k1, false, &me, &trailing), Opened::Invalid);
        for len in 0..64usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_ne!(
                std::mem::discriminant(&open_signal(&k1, true, &me, &junk)),
                std::mem::discriminant(&Opened::Signal(Vec::new()))
            );
        }
        // Another room's key of the same epoch does not open it.
        let other = RoomChain::derive(&owner, &RoomId([6; 16]))
            .epoch_key(1)
            .unwrap();
        assert_eq!(open_signal(&other, false, &me, &sealed), Opened::Invalid);
    }
}
