//! Voice channels of several sessions in one process, on `tincan-netem`
//! with a virtual clock: real Opus, the real jitter buffer, the sans-IO
//! relay. Each run is repeatable from its seed; the audio is checked by
//! correlating what each member heard with what the others said.

mod common;

use common::{Channel, ms};
use tincan_netem::{LinkConfig, LossModel};
use tincan_voice::SessionConfig;

fn clean() -> LinkConfig {
    LinkConfig {
        latency: ms(20),
        jitter: ms(2),
        ..LinkConfig::default()
    }
}

fn report(c: &Channel, label: &str) -> f64 {
    let n = c.members.len();
    let mut worst: f64 = 1.0;
    for l in 0..n {
        for s in 0..n {
            if l == s {
                continue;
            }
            let r = c.correlation(l, s);
            worst = worst.min(r);
            println!(
                "{label}: {} hears {}: correlation {r:.3}",
                c.members[l].name, c.members[s].name
            );
        }
    }
    for m in &c.members {
        let st = m.session.stats();
        println!(
            "{label}: {} sent {} frames, received {}, dropped: no key {}, bad tag {}, replay {}, no link {}; rotations {}, key shares {}",
            m.name,
            st.frames_sent,
            st.frames_received,
            st.dropped_no_key,
            st.dropped_bad_tag,
            st.dropped_replay,
            st.dropped_no_link,
            st.rotations,
            st.key_shares_published
        );
    }
    worst
}

fn three(seed: u64, link: LinkConfig) -> Channel {
    let mut c = Channel::new(seed, 3, link, SessionConfig::default());
    c.speak_all(ms(1000));
    c.run_until(ms(5000));
    c
}

#[test]
fn a_three_node_channel_links_everyone_and_carries_their_speech() {
    let c = three(7, clean());
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                assert!(c.linked(i, j), "{i} and {j} have no direct link");
            }
        }
        let m = &c.members[i];
        assert_eq!(m.session.participants().len(), 2);
        assert!(!m.session.is_relayed(), "no reason to use the relay");
        assert_eq!(m.relay_joins, 0);
    }
    let worst = report(&c, "3 nodes");
    assert!(worst > 0.8, "worst correlation {worst:.3}");
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let link = LinkConfig {
        jitter: ms(8),
        loss: LossModel::Random { probability: 0.02 },
        ..clean()
    };
    let a = three(11, link.clone());
    let b = three(11, link.clone());
    assert!(a.trace.len() > 10, "a trace of {} lines", a.trace.len());
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.digest(), b.digest(), "same seed, same run");
    let other = three(12, link);
    assert_ne!(a.digest(), other.digest(), "another seed, another run");
}

#[test]
fn five_percent_bursty_loss_is_heard_through() {
    let link = LinkConfig {
        jitter: ms(5),
        loss: LossModel::bursty(0.05, 2.0),
        ..clean()
    };
    let c = three(21, link);
    let worst = report(&c, "5% Gilbert-Elliott");
    for m in &c.members {
        assert_eq!(m.session.participants().len(), 2, "{}", m.name);
        let lost = m.session.stats().dropped_bad_tag + m.session.stats().dropped_replay;
        assert_eq!(lost, 0, "loss is not tampering");
    }
    assert!(worst > 0.6, "worst correlation {worst:.3}");
}

/// The pair's member with the smaller PeerId (the one that dials first),
/// then the other.
fn by_peer_id(c: &Channel) -> (usize, usize) {
    if tincan_voice::paths::dials_first(&c.members[0].peer, &c.members[1].peer) {
        (0, 1)
    } else {
        (1, 0)
    }
}

#[test]
fn the_larger_side_dials_when_the_smaller_cannot_reach_it_and_the_pair_talks_direct() {
    // A public node with the smaller PeerId and a node behind a symmetric
    // NAT: nothing the smaller sends gets to the larger unless the larger
    // sent first (the harness opens the way back on a dial).
    let mut c = Channel::new(41, 2, clean(), SessionConfig::default());
    let (small, large) = by_peer_id(&c);
    let (sa, la) = (c.members[small].addr, c.members[large].addr);
    c.net.block(sa, la);
    c.speak_all(ms(2500));
    c.run_until(ms(12_000));
    let worst = report(&c, "one-way NAT");
    assert!(
        c.members[large]
            .dials
            .iter()
            .any(|(_, p)| *p == c.members[small].peer),
        "the larger side never dialled"
    );
    for m in &c.members {
        assert_eq!(
            m.session.links().count(),
            1,
            "{} has no direct link",
            m.name
        );
        // It may have used the relay while the smaller side's dial failed,
        // but leaves it once the direct link carries everything.
        assert!(!m.session.is_relayed(), "{} is still on the relay", m.name);
    }
    assert!(c.linked(small, large) && c.linked(large, small));
    assert!(worst > 0.8, "worst correlation {worst:.3}");
}

#[test]
fn when_both_dials_succeed_the_pair_keeps_one_link_the_smaller_sides() {
    let mut c = Channel::new(43, 2, clean(), SessionConfig::default());
    let (small, large) = by_peer_id(&c);
    let (sa, la) = (c.members[small].addr, c.members[large].addr);
    // The smaller side's handshakes crawl: its dial answers only after the
    // larger side's fallback dial went out, and both come up.
    c.control.set_link(
        sa,
        la,
        LinkConfig {
            latency: ms(1300),
            ..LinkConfig::default()
        },
    );
    c.speak_all(ms(3000));
    c.run_until(ms(12_000));
    let worst = report(&c, "both dial");
    assert!(
        c.members[large]
            .dials
            .iter()
            .any(|(_, p)| *p == c.members[small].peer)
            && c.members[small]
                .dials
                .iter()
                .any(|(_, p)| *p == c.members[large].peer),
        "both sides must have dialled for this test to mean anything"
    );
    for m in &c.members {
        assert_eq!(m.session.links().count(), 1, "{}", m.name);
    }
    let refused: u64 = c
        .members
        .iter()
        .map(|m| {
            m.session
                .stats()
                .ignored
                .get(&tincan_voice::session::Ignored::AlreadyLinked)
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        refused >= 1,
        "the second connection was never refused: {:#?}",
        &c.trace[..c.trace.len().min(40)]
    );
    assert!(c.linked(small, large) && c.linked(large, small));
    assert!(worst > 0.8, "worst correlation {worst:.3}");
}

#[test]
fn a_plaintext_frame_on_a_link_is_dropped_and_counted() {
    let mut c = Channel::new(45, 2, clean(), SessionConfig::default());
    c.run_until(ms(3000));
    assert!(c.linked(0, 1));
    let from = c.members[1].peer;
    let plain = tincan_media::VoiceDatagram {
        sequence: 1,
        timestamp: 480,
        payload: vec![0x55; 40],
        ..tincan_media::VoiceDatagram::default()
    }
    .encode()
    .expect("a small frame");
    let now = c.now();
    let got = c.members[0]
        .session
        .handle_datagram(tincan_voice::Source::Peer(from), &plain, now);
    assert_eq!(got, tincan_voice::session::Received::Plaintext);
    assert_eq!(c.members[0].session.stats().dropped_plaintext, 1);
    assert_eq!(c.members[0].session.stats().frames_received, 0);
}

#[test]
fn with_direct_paths_blocked_the_channel_falls_back_on_the_relay() {
    let mut c = Channel::new(31, 3, clean(), SessionConfig::default());
    let addrs: Vec<_> = c.members.iter().map(|m| m.addr).collect();
    for a in &addrs {
        for b in &addrs {
            if a != b {
                c.net.block(*a, *b);
            }
        }
    }
    c.speak_all(ms(2500));
    c.run_until(ms(6500));
    for (i, m) in c.members.iter().enumerate() {
        assert!(m.session.is_relayed(), "{} is not on the relay", m.name);
        assert_eq!(m.session.links().count(), 0, "no direct link can exist");
        assert_eq!(m.session.participants().len(), 2);
        for j in 0..3 {
            assert!(i == j || !c.linked(i, j));
        }
    }
    let worst = report(&c, "relayed");
    assert!(worst > 0.8, "worst correlation {worst:.3}");
    let relay = c.relay.stats();
    println!("relay: {relay:?}");
    assert!(relay.forwarded > 1000);
}

#[test]
fn a_kicked_member_is_dropped_at_once_and_cannot_open_what_follows() {
    let mut c = Channel::new(41, 3, clean(), SessionConfig::default());
    c.speak_all(ms(1000));
    c.run_until(ms(3000));
    for i in 0..3 {
        for j in 0..3 {
            assert!(i == j || c.linked(i, j));
        }
    }
    let kicked = 2;
    let kicked_user = c.members[kicked].user_id();
    let kicked_peer = c.members[kicked].peer;
    let generations: Vec<u32> = c
        .members
        .iter()
        .map(|m| m.session.key_generation())
        .collect();
    let heard_before = c.members[kicked].session.stats().frames_received;
    // The kick reaches the others' stores; the kicked node keeps its old
    // roster (it does not play along).
    let roster = c.roster_without(&kicked_user);
    c.push_roster(roster, &[0, 1]);
    let at = c.now();
    for (i, generation) in generations.iter().enumerate().take(2) {
        assert!(
            !c.linked(i, kicked),
            "{i} still linked to the kicked node in the same step"
        );
        assert!(
            c.members[i]
                .closes
                .iter()
                .any(|(t, p)| *t == at && *p == kicked_peer),
            "{i} did not close the kicked node's link"
        );
        assert_eq!(
            c.members[i]
                .closes
                .iter()
                .filter(|(_, p)| *p == kicked_peer)
                .count(),
            1,
            "one Close per link"
        );
        assert!(
            c.members[i]
                .session
                .participants()
                .iter()
                .all(|p| p.peer != kicked_peer),
            "{i} still lists the kicked node"
        );
        assert_eq!(
            c.members[i].session.key_generation(),
            generation + 1,
            "{i} did not rotate its key"
        );
    }
    assert_eq!(
        c.members[kicked].session.links().count(),
        0,
        "the kicked side's links dropped too"
    );
    // The others go on talking; the kicked node hears nothing more, though
    // it keeps trying (its presence and dials are refused) and it is sent
    // the new key shares (which it cannot open).
    let delivered_before = c.members[kicked].delivered.len();
    c.run_until(ms(6000));
    assert!(c.linked(0, 1));
    for i in 0..2 {
        assert!(!c.linked(i, kicked));
        assert_eq!(c.members[i].session.participants().len(), 1);
    }
    let after: Vec<_> = c.members[kicked].delivered[delivered_before..].to_vec();
    assert!(
        after.is_empty(),
        "the kicked node got {} packets after the kick",
        after.len()
    );
    let st = c.members[kicked].session.stats();
    println!(
        "kicked node: {heard_before} frames before the kick, {} after; key shares it could not open: {}",
        st.frames_received - heard_before,
        st.ignored
            .get(&tincan_voice::Ignored::KeyNotForUs)
            .copied()
            .unwrap_or(0)
    );
    assert!(
        st.ignored
            .get(&tincan_voice::Ignored::KeyNotForUs)
            .copied()
            .unwrap_or(0)
            >= 2,
        "the new shares were not sealed away from the kicked node: {st:?}"
    );
    // Even handed the frames sent after the kick (a relay that did not
    // drop it yet), the kicked node cannot open them: they are under the
    // new keys.
    let speaker_user = c.members[0].user.id();
    let now = c.clock.now();
    c.members[kicked].session.handle_relay_joined(
        9,
        &[tincan_media::control::SpeakerEntry {
            speaker: 0,
            user: speaker_user,
        }],
        now,
    );
    let sent_after: Vec<Vec<u8>> = {
        let m0 = &mut c.members[0];
        let mut frames = Vec::new();
        for k in 0..20u32 {
            let packet = tincan_audio::codec::VoicePacket {
                sequence: 100_000 + k,
                timestamp: (100_000 + k) * 480,
                payload: vec![0x42; 60],
                redundant: None,
            };
            m0.session.send_voice(&packet, false, c.clock.now());
            while let Some(t) = m0.session.poll_transmit() {
                if let tincan_voice::Transmit::Datagram { bytes, .. } = t {
                    frames.push(bytes);
                }
            }
        }
        frames
    };
    assert!(!sent_after.is_empty());
    let before = c.members[kicked].session.stats().clone();
    for f in &sent_after {
        c.members[kicked]
            .session
            .handle_datagram(tincan_voice::Source::Relay, f, c.clock.now());
    }
    let st = c.members[kicked].session.stats();
    assert_eq!(st.frames_received, before.frames_received, "a frame opened");
    assert_eq!(
        st.dropped_no_key + st.dropped_bad_tag,
        before.dropped_no_key + before.dropped_bad_tag + sent_after.len() as u64
    );
    let worst01 = c.correlation(0, 1).min(c.correlation(1, 0));
    println!("after the kick: members hear each other at {worst01:.3}");
    assert!(worst01 > 0.8);
}
