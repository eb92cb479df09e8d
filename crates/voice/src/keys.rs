//! The key schedule of end-to-end frames (DAVE's shape, without MLS):
//! - each sender draws a random sender key per key epoch ([`OwnKey`]),
//!   numbered by a generation (0, 1, 2, ... in a session) and carried in
//!   frames as a one-byte key id (the generation's low byte);
//! - it shares the key sealed to each admitted participant's node key, and
//!   re-shares it to newcomers;
//! - whenever an admitted participant leaves, times out or is removed, it
//!   draws a new key (next generation) and shares it with the remaining
//!   participants only, so the one who left cannot open what follows;
//! - a receiver keeps, per sender, the newest key it got ([`PeerKeys`]) and
//!   the one before for [`crate::config::SessionConfig::key_grace`], so
//!   frames sealed just before a rotation still open; it takes only a
//!   higher generation than it has, so a replayed share cannot bring back
//!   an old key, and keeps a replay window per key ([`ReplayWindow`]).
//!
//! Keys come from [`KeyRng`], a deterministic generator keyed by a 32-byte
//! seed: the driver seeds it from the operating system's randomness, tests
//! with a constant, so a test run is repeatable and a real one unguessable.

use std::time::Duration;

use zeroize::{Zeroize, Zeroizing};

use crate::frame::FrameKey;
use crate::protocol::SENDER_KEY_LEN;

/// A deterministic random generator for key material: BLAKE3 in keyed mode
/// over a counter (a PRF used as a generator), so its output is as
/// unpredictable as its seed. Not `Clone`: two copies would repeat keys.
pub struct KeyRng {
    seed: Zeroizing<[u8; 32]>,
    counter: u64,
}

impl std::fmt::Debug for KeyRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRng").finish_non_exhaustive()
    }
}

impl KeyRng {
    /// A generator from a 32-byte secret seed.
    pub fn new(seed: [u8; 32]) -> Self {
        KeyRng {
            seed: Zeroizing::new(seed),
            counter: 0,
        }
    }

    /// The next 32 random bytes.
    pub fn next_key(&mut self) -> Zeroizing<[u8; 32]> {
        self.counter += 1;
        let out = blake3::keyed_hash(&self.seed, &self.counter.to_le_bytes());
        Zeroizing::new(*out.as_bytes())
    }
}

/// The key we seal our frames with now.
pub struct OwnKey {
    generation: u32,
    secret: Zeroizing<[u8; SENDER_KEY_LEN]>,
    frame_key: FrameKey,
    last_sequence: Option<u32>,
}

impl std::fmt::Debug for OwnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnKey")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl OwnKey {
    /// A fresh key of `generation`.
    pub fn new(generation: u32, rng: &mut KeyRng) -> Self {
        let secret = rng.next_key();
        OwnKey {
            generation,
            frame_key: FrameKey::derive(&secret, generation as u8),
            secret,
            last_sequence: None,
        }
    }

    /// Its generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The key id its frames carry.
    pub fn key_id(&self) -> u8 {
        self.generation as u8
    }

    /// The secret to share.
    pub fn secret(&self) -> &[u8; SENDER_KEY_LEN] {
        &self.secret
    }

    /// Whether `sequence` may still be sealed under this key (no frame with
    /// it or a later one was).
    pub fn can_seal(&self, sequence: u32) -> bool {
        self.last_sequence.is_none_or(|last| sequence > last)
    }

    /// The frame key to seal `sequence` with, or None if a frame with that
    /// sequence or a later one was already sealed under this key (its nonce
    /// would repeat: the caller rotates the key first).
    pub fn seal_key(&mut self, sequence: u32) -> Option<&FrameKey> {
        if self.last_sequence.is_some_and(|last| sequence <= last) {
            return None;
        }
        self.last_sequence = Some(sequence);
        Some(&self.frame_key)
    }
}

/// Which sequences of one key were already opened: the highest, and a
/// bitmap of the [`ReplayWindow::WIDTH`] before it. A frame older than the
/// window is refused too: the jitter buffer would have dropped it as late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: Option<u32>,
    seen: u128,
}

impl ReplayWindow {
    /// Sequences remembered below the highest.
    pub const WIDTH: u32 = 128;

    /// Whether `sequence` is new (neither seen nor older than the window).
    pub fn is_new(&self, sequence: u32) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        // Sequences compare modulo 2^32, as the jitter buffer does.
        let behind = highest.wrapping_sub(sequence) as i32;
        if behind < 0 {
            return true;
        }
        let behind = behind as u32;
        behind < Self::WIDTH && self.seen & (1u128 << behind) == 0
    }

    /// Marks `sequence` as opened (call only after [`Self::is_new`] and a
    /// successful open).
    pub fn mark(&mut self, sequence: u32) {
        let Some(highest) = self.highest else {
            self.highest = Some(sequence);
            self.seen = 1;
            return;
        };
        let ahead = sequence.wrapping_sub(highest) as i32;
        if ahead > 0 {
            let ahead = ahead as u32;
            self.seen = if ahead >= Self::WIDTH {
                0
            } else {
                self.seen << ahead
            };
            self.seen |= 1;
            self.highest = Some(sequence);
        } else {
            let behind = (-ahead) as u32;
            if behind < Self::WIDTH {
                self.seen |= 1u128 << behind;
            }
        }
    }
}

/// A sender's key as a receiver holds it.
#[derive(Debug)]
pub struct ReceivedKey {
    generation: u32,
    frame_key: FrameKey,
    /// Sequences already opened with it.
    pub replay: ReplayWindow,
}

impl ReceivedKey {
    /// The frame key.
    pub fn frame_key(&self) -> &FrameKey {
        &self.frame_key
    }

    /// Its generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// What became of a received key share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// A newer key: it is the current one now.
    New,
    /// The key we have already (a re-share).
    Same,
    /// An older generation than ours: ignored.
    Stale,
}

/// One sender's keys at a receiver: the current one and, for a grace
/// period after a rotation, the previous one.
#[derive(Debug, Default)]
pub struct PeerKeys {
    current: Option<ReceivedKey>,
    previous: Option<(ReceivedKey, Duration)>,
}

impl PeerKeys {
    /// Takes a key the sender shared; the old current key stays usable
    /// until `now + grace`.
    pub fn install(
        &mut self,
        generation: u32,
        mut secret: [u8; SENDER_KEY_LEN],
        now: Duration,
        grace: Duration,
    ) -> Installed {
        let outcome = match &self.current {
            Some(c) if generation < c.generation => Installed::Stale,
            Some(c) if generation == c.generation => Installed::Same,
            _ => Installed::New,
        };
        if outcome == Installed::New {
            let key = ReceivedKey {
                generation,
                frame_key: FrameKey::derive(&secret, generation as u8),
                replay: ReplayWindow::default(),
            };
            if let Some(old) = self.current.replace(key) {
                self.previous = Some((old, now + grace));
            }
        }
        secret.zeroize();
        outcome
    }

    /// The key with this key id, if we hold it and (for the previous one)
    /// its grace has not run out.
    pub fn get_mut(&mut self, key_id: u8, now: Duration) -> Option<&mut ReceivedKey> {
        if let Some((_, until)) = &self.previous
            && *until <= now
        {
            self.previous = None;
        }
        match &mut self.current {
            Some(c) if c.frame_key.key_id() == key_id => return Some(c),
            _ => {}
        }
        match &mut self.previous {
            Some((p, _)) if p.frame_key.key_id() == key_id => Some(p),
            _ => None,
        }
    }

    /// The generation of the current key, if any.
    pub fn generation(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.generation)
    }

    /// Whether any key is held.
    pub fn is_empty(&self) -> bool {
        self.current.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_repeatable_from_its_seed_and_never_repeats() {
        let mut a = KeyRng::new([1; 32]);
        let mut b = KeyRng::new([1; 32]);
        let mut c = KeyRng::new([2; 32]);
        let (x, y, z) = (a.next_key(), b.next_key(), c.next_key());
        assert_eq!(*x, *y);
        assert_ne!(*x, *z);
        assert_ne!(*a.next_key(), *x);
    }

    #[test]
    fn a_sequence_is_sealed_at_most_once_per_key() {
        let mut rng = KeyRng::new([1; 32]);
        let mut k = OwnKey::new(257, &mut rng);
        assert_eq!(k.key_id(), 1);
        assert!(k.can_seal(5));
        assert!(k.seal_key(5).is_some());
        assert!(!k.can_seal(5));
        assert!(k.seal_key(5).is_none(), "a repeated nonce");
        assert!(k.seal_key(4).is_none());
        assert!(k.seal_key(6).is_some());
    }

    #[test]
    fn the_replay_window_takes_each_sequence_once() {
        let mut w = ReplayWindow::default();
        for s in [10u32, 12, 11, 200, 150] {
            assert!(w.is_new(s), "{s}");
            w.mark(s);
            assert!(!w.is_new(s), "{s} again");
        }
        assert!(!w.is_new(12), "older than the window");
        assert!(w.is_new(199));
        assert!(w.is_new(201));
        // Across the wrap of u32.
        let mut w = ReplayWindow::default();
        w.mark(u32::MAX);
        assert!(w.is_new(0));
        w.mark(0);
        assert!(!w.is_new(u32::MAX));
        assert!(!w.is_new(0));
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_the_grace_and_refuses_old_shares() {
        let ms = Duration::from_millis;
        let mut keys = PeerKeys::default();
        assert!(keys.get_mut(0, ms(0)).is_none());
        assert_eq!(keys.install(0, [1; 32], ms(0), ms(500)), Installed::New);
        assert_eq!(keys.install(0, [1; 32], ms(10), ms(500)), Installed::Same);
        assert_eq!(keys.install(1, [2; 32], ms(100), ms(500)), Installed::New);
        assert_eq!(keys.generation(), Some(1));
        assert!(keys.get_mut(1, ms(100)).is_some());
        assert!(keys.get_mut(0, ms(599)).is_some(), "within the grace");
        assert!(keys.get_mut(0, ms(600)).is_none(), "after the grace");
        assert_eq!(keys.install(0, [1; 32], ms(700), ms(500)), Installed::Stale);
        assert!(keys.get_mut(0, ms(700)).is_none());
    }
}
