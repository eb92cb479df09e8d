//! The key rotation policy, on sessions: a newcomer gets the current key
//! (no rotation); a participant who leaves or times out makes every other
//! sender rotate, and the new key is sealed to the remaining participants
//! only.

mod common;

use common::{Channel, ms};
use tincan_core::NodeKey;
use tincan_core::seal::open_envelope;
use tincan_netem::LinkConfig;
use tincan_voice::SessionConfig;
use tincan_voice::protocol::{KeyShare, VoiceSignal, key_share_context};

fn clean() -> LinkConfig {
    LinkConfig {
        latency: ms(20),
        ..LinkConfig::default()
    }
}

/// The last key share `member` published, and when.
fn last_share(c: &Channel, member: usize) -> Option<(std::time::Duration, KeyShare)> {
    c.published
        .iter()
        .rev()
        .filter(|(i, ..)| *i == member)
        .find_map(|(_, t, b)| match VoiceSignal::decode(b) {
            Ok(VoiceSignal::KeyShare(k)) => Some((*t, k)),
            _ => None,
        })
}

fn opens(c: &Channel, share: &KeyShare, sender: usize, reader: usize) -> bool {
    let context = key_share_context(
        &share.room,
        &share.channel,
        &NodeKey::from_seed(&c.members[sender].node_seed).id(),
        share.key_id,
        share.generation,
    );
    let key = NodeKey::from_seed(&c.members[reader].node_seed);
    open_envelope(&share.envelopes, &key, &context).is_some()
}

#[test]
fn newcomers_get_the_current_key_and_a_leaver_makes_everyone_rotate() {
    let mut c = Channel::new(91, 3, clean(), SessionConfig::default());
    c.run_until(ms(2000));
    for (i, m) in c.members.iter().enumerate() {
        assert_eq!(m.session.key_generation(), 0, "{i} rotated on a join");
        assert_eq!(m.session.stats().rotations, 0);
        let (_, share) = last_share(&c, i).expect("a share");
        for j in 0..3 {
            if j != i {
                assert!(opens(&c, &share, i, j), "{j} cannot open {i}'s key");
            }
        }
        assert!(!opens(&c, &share, i, i), "a share is for the others");
    }
    // m2 leaves.
    let now = c.now();
    c.members[2].session.leave(now);
    c.drain();
    c.run_until(ms(2100));
    for i in 0..2 {
        assert_eq!(
            c.members[i].session.key_generation(),
            1,
            "{i} did not rotate"
        );
        let (at, share) = last_share(&c, i).expect("a share");
        assert!(at > now, "no new share after the leave");
        assert_eq!(share.generation, 1);
        assert!(
            opens(&c, &share, i, 1 - i),
            "the remaining member cannot open it"
        );
        assert!(!opens(&c, &share, i, 2), "the leaver can open the new key");
        assert_eq!(share.envelopes.entries.len(), 1);
    }
}

#[test]
fn a_participant_that_goes_silent_times_out_and_the_key_rotates() {
    let mut c = Channel::new(92, 3, clean(), SessionConfig::default());
    c.run_until(ms(2000));
    c.frozen.insert(1);
    let before = c.members[0].session.key_generation();
    c.run_until(ms(2000) + tincan_media::presence::PRESENCE_TIMEOUT + ms(500));
    for i in [0, 2] {
        let m = &c.members[i];
        assert_eq!(
            m.session.participants().len(),
            1,
            "{i} still lists the silent one"
        );
        assert_eq!(m.session.key_generation(), before + 1, "{i} did not rotate");
        let (_, share) = last_share(&c, i).expect("a share");
        assert!(
            !opens(&c, &share, i, 1),
            "the silent one can open the new key"
        );
        assert!(opens(&c, &share, i, 2 - i));
    }
}
