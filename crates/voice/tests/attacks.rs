//! Peers and relays that do not play along, against real sessions on the
//! emulated network: a non-member advertising presence, a flood of forged
//! presences, members pointing our punches at a victim, and a relay that
//! alters, forges, replays and relabels frames.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::{CHANNEL, Channel, ROOM, ground_key, ms, presence_signal, punch_rate};
use tincan_core::{Hlc, NodeBinding, NodeKey, UserKey};
use tincan_media::control::{Answer, Hello};
use tincan_media::protocol::{HEADER_LEN, VoiceDatagram, VoiceHeader, set_speaker};
use tincan_netem::LinkConfig;
use tincan_voice::gate::peer_id_of;
use tincan_voice::{Ignored, Refusal, SessionConfig};

fn clean() -> LinkConfig {
    LinkConfig {
        latency: ms(20),
        jitter: ms(2),
        ..LinkConfig::default()
    }
}

fn non_member_presence_gets_nothing(low: bool) {
    let mut c = Channel::new(51, 3, clean(), SessionConfig::default());
    let members: Vec<_> = c.members.iter().map(|m| m.peer).collect();
    let (seed, attacker) = ground_key(77, low, &members);
    let stranger = UserKey::from_seed(&[66; 32]);
    let node = NodeKey::from_seed(&seed);
    let addr: SocketAddr = "10.0.0.66:4433".parse().unwrap();
    c.net.add_node(addr);
    c.control.add_node(addr);
    // Its presence every 2 s to every member, as gossip would carry it.
    for k in 0..5u64 {
        for to in 0..3 {
            let bytes = presence_signal(&stranger, &node, &[addr], 1 + k);
            c.injected.push((ms(100 + 2000 * k), to, attacker, bytes));
        }
    }
    c.speak_all(ms(1000));
    c.run_until(ms(2000));
    // It dials (as a low PeerId would) with a hello of its own.
    let hello = Hello {
        room: ROOM,
        channel: CHANNEL,
        binding: NodeBinding::new(&stranger, node.id(), Hlc::new(1, 0)),
        proof: Vec::new(),
    };
    for i in 0..3 {
        let now = c.now();
        let answer = c.members[i]
            .session
            .handle_hello(attacker, &hello, addr, now);
        assert!(
            matches!(answer, Answer::Refused(_)),
            "{i} welcomed a non-member"
        );
    }
    c.drain();
    c.run_until(ms(10_000));
    for (i, m) in c.members.iter().enumerate() {
        assert!(
            m.dials.iter().all(|(_, p)| *p != attacker),
            "{i} dialled the non-member"
        );
        assert!(
            m.session.links().all(|p| *p != attacker),
            "{i} has a link to it"
        );
        assert!(m.session.participants().iter().all(|p| p.peer != attacker));
        let refused = m
            .session
            .stats()
            .ignored
            .get(&Ignored::Gate(Refusal::NotMember))
            .copied()
            .unwrap_or(0);
        assert!(
            refused >= 5,
            "{i} ignored only {refused} of its presences and hellos"
        );
        assert_eq!(m.session.participants().len(), 2, "{i}");
    }
    assert!(!c.links.iter().any(|(_, p)| *p == attacker));
    assert!(
        c.punches.iter().all(|(_, _, to)| *to != addr),
        "punched the non-member"
    );
    // No frame was sent its way: nothing at all reached its address.
    let reached = c
        .net
        .link_stats(c.members[0].addr, addr)
        .map_or(0, |s| s.sent)
        + c.net
            .link_stats(c.members[1].addr, addr)
            .map_or(0, |s| s.sent)
        + c.net
            .link_stats(c.members[2].addr, addr)
            .map_or(0, |s| s.sent);
    assert_eq!(reached, 0, "{reached} packets went to the non-member");
    println!(
        "non-member with a PeerId sorting {}: 0 dials, 0 links, 0 packets; member 0 ignored {:?}",
        if low { "low" } else { "high" },
        c.members[0].session.stats().ignored
    );
}

#[test]
fn a_non_member_with_a_high_peer_id_gets_no_dial_no_link_no_frame() {
    non_member_presence_gets_nothing(false);
}

#[test]
fn a_non_member_with_a_low_peer_id_gets_no_dial_no_link_no_frame() {
    non_member_presence_gets_nothing(true);
}

fn hostile_candidates(victim: SocketAddr) -> Vec<SocketAddr> {
    vec![
        victim,
        SocketAddr::new(victim.ip(), victim.port() + 1),
        "127.0.0.1:4433".parse().unwrap(),
        "255.255.255.255:4433".parse().unwrap(),
        "224.0.0.251:5353".parse().unwrap(),
        "192.168.7.7:4433".parse().unwrap(),
        "0.0.0.0:4433".parse().unwrap(),
        SocketAddr::new(victim.ip(), 0),
    ]
}

#[test]
fn a_thousand_forged_presences_keep_punches_under_the_budget_and_the_channel_off_the_relay() {
    let mut c = Channel::new(61, 3, clean(), SessionConfig::default());
    let victim: SocketAddr = "198.51.100.7:80".parse().unwrap();
    let members: Vec<_> = c.members.iter().map(|m| m.peer).collect();
    let mut sent_ms = 10_000;
    let mut forged = 0;
    // 500 non-members with valid bindings, half with PeerIds sorting low,
    // half high, each pointing at the victim.
    for k in 0..500u32 {
        // Users 1..=50: none of them is a member.
        let stranger = UserKey::from_seed(&[(k % 50) as u8 + 1; 32]);
        let (seed, peer) = ground_key(k as u8 ^ 0x5a, k % 2 == 0, &members);
        let mut seed = seed;
        seed[31] = (k >> 8) as u8;
        seed[30] = k as u8;
        let node = NodeKey::from_seed(&seed);
        let peer = peer_id_of(&node.id()).unwrap_or(peer);
        let bytes = presence_signal(&stranger, &node, &hostile_candidates(victim), sent_ms);
        c.injected
            .push((ms(50 + u64::from(k)), (k % 3) as usize, peer, bytes));
        forged += 1;
    }
    // 250 replays of the members' own bindings, published by other nodes.
    for k in 0..250u32 {
        let m = (k % 3) as usize;
        let user = &c.members[m].user;
        let node = NodeKey::from_seed(&c.members[m].node_seed);
        let mut seed = [0xa5; 32];
        seed[..4].copy_from_slice(&k.to_be_bytes());
        let attacker = peer_id_of(&NodeKey::from_seed(&seed).id()).unwrap();
        let bytes = presence_signal(user, &node, &hostile_candidates(victim), sent_ms);
        c.injected
            .push((ms(60 + u64::from(k)), (m + 1) % 3, attacker, bytes));
        forged += 1;
    }
    // 250 presences of the members themselves (hostile members) whose
    // candidate lists point at the victim, loopback, broadcast, ...,
    // with their real address last so that their links still come up.
    for k in 0..250u32 {
        let m = (k % 3) as usize;
        let user = UserKey::from_seed(&c.members[m].user.seed());
        let node = NodeKey::from_seed(&c.members[m].node_seed);
        let mut cands = hostile_candidates(victim);
        cands.truncate(7);
        cands.push(c.members[m].addr);
        sent_ms += 1;
        let bytes = presence_signal(&user, &node, &cands, sent_ms);
        c.injected
            .push((ms(u64::from(k) * 20), (m + 1) % 3, c.members[m].peer, bytes));
        forged += 1;
    }
    assert_eq!(forged, 1000);
    c.speak_all(ms(1000));
    c.run_until(ms(8000));
    let budget = SessionConfig::default().punch_budget_per_second;
    let burst = SessionConfig::default().punch_burst;
    for (i, m) in c.members.iter().enumerate() {
        let (worst_all, total_all) = punch_rate(&c, i, |_| true);
        let (worst_victim, total_victim) = punch_rate(&c, i, |a| a.ip() == victim.ip());
        let dialled_victim = m
            .dial_addrs
            .iter()
            .filter(|(_, a)| a.ip() == victim.ip())
            .count();
        let (_, bad) = punch_rate(&c, i, |a| {
            a.ip().is_loopback()
                || a.ip().is_multicast()
                || a.ip().is_unspecified()
                || a.port() == 0
                || a.ip().to_string() == "255.255.255.255"
                || a.ip().to_string().starts_with("192.168.")
        });
        println!(
            "member {i}: punches {total_all} in all, at most {worst_all} in a second (budget {budget}/s + {burst}); \
             {total_victim} to the victim, at most {worst_victim} in a second, and {dialled_victim} dialled addresses; ignored {:?}; candidates refused {}",
            m.session.stats().ignored,
            m.session.stats().candidates_refused
        );
        assert!(
            worst_all as u64 <= budget + burst,
            "{worst_all} punches in a second"
        );
        assert_eq!(bad, 0, "punched a filtered address");
        assert!(!m.session.is_relayed(), "{i} went to the relay");
        assert_eq!(m.relay_joins, 0, "{i} asked for the relay");
        assert_eq!(m.session.participants().len(), 2, "{i} lists forged peers");
        let peers: BTreeSet<_> = m.session.participants().iter().map(|p| p.peer).collect();
        let others: BTreeSet<_> = c
            .members
            .iter()
            .filter(|o| o.peer != m.peer)
            .map(|o| o.peer)
            .collect();
        assert_eq!(peers, others);
        for j in 0..3 {
            assert!(i == j || c.linked(i, j), "{i} and {j} not linked");
        }
    }
}

#[test]
fn members_pointing_punches_at_a_victim_get_at_most_the_budget() {
    // Two honest members and six hostile ones whose real addresses are
    // unreachable and whose presences list eight victim addresses each:
    // without a budget each honest node would punch 8 addresses four times
    // a second for every hostile peer that dials it, and dial 8 addresses
    // of every one it dials, for as long as they stay.
    let mut c = Channel::new(71, 8, clean(), SessionConfig::default());
    let victim: SocketAddr = "198.51.100.9:1000".parse().unwrap();
    for h in 2..8 {
        c.frozen.insert(h);
        let user = UserKey::from_seed(&c.members[h].user.seed());
        let node = NodeKey::from_seed(&c.members[h].node_seed);
        let cands: Vec<SocketAddr> = (0..8)
            .map(|k| SocketAddr::new(victim.ip(), victim.port() + k))
            .collect();
        for k in 0..5u64 {
            for to in 0..2 {
                let bytes = presence_signal(&user, &node, &cands, 1 + k);
                c.injected
                    .push((ms(10 + 2000 * k), to, c.members[h].peer, bytes));
            }
        }
    }
    c.run_until(ms(10_000));
    let budget = SessionConfig::default().punch_budget_per_second;
    let burst = SessionConfig::default().punch_burst;
    let mut held = 0;
    for i in 0..2 {
        let (worst, punches) = punch_rate(&c, i, |a| a.ip() == victim.ip());
        let dialled: usize = c.members[i]
            .dial_addrs
            .iter()
            .filter(|(_, a)| a.ip() == victim.ip())
            .count();
        let st = c.members[i].session.stats();
        held += st.punches_over_budget + st.dial_addrs_over_budget;
        println!(
            "member {i}: to the victim in 10 s: {punches} punches (at most {worst} in a second) and \
             {dialled} dialled addresses; budget {budget}/s + {burst}; held back: {} punches, {} addresses",
            st.punches_over_budget, st.dial_addrs_over_budget
        );
        assert!(worst as u64 <= budget + burst, "{worst} in a second");
        assert!(
            (punches + dialled) as u64 <= budget * 10 + burst,
            "over the budget"
        );
    }
    assert!(
        held > 0,
        "the budget never held anything back: the test asks too little"
    );
}

#[test]
fn a_relay_that_alters_forges_replays_or_relabels_frames_gets_none_to_the_audio() {
    let mut c = Channel::new(81, 3, clean(), SessionConfig::default());
    let addrs: Vec<_> = c.members.iter().map(|m| m.addr).collect();
    for a in &addrs {
        for b in &addrs {
            if a != b {
                c.net.block(*a, *b);
            }
        }
    }
    let mut history: Vec<Vec<u8>> = Vec::new();
    let mut count = 0u64;
    c.relay_filter = Some(Box::new(move |_now, bytes: &[u8]| {
        count += 1;
        let mut out = vec![bytes.to_vec()];
        let Ok((header, _)) = VoiceHeader::parse(bytes) else {
            return out;
        };
        match count % 5 {
            // Altered: one bit of the ciphertext.
            0 => {
                let mut b = bytes.to_vec();
                b[HEADER_LEN + 3] ^= 0x10;
                out = vec![b];
            }
            // Forged: a fresh frame in the speaker's name.
            1 => {
                let mut b = bytes[..HEADER_LEN + 1].to_vec();
                b[5..9].copy_from_slice(&(header.sequence + 1_000).to_be_bytes());
                b.extend((0..70).map(|i| (i * 7 + count as usize) as u8));
                out.push(b);
            }
            // Replayed: one from 50 frames ago and one from long ago.
            2 if history.len() > 300 => {
                out.push(history[history.len() - 50].clone());
                out.push(history[history.len() - 300].clone());
            }
            // Relabelled: in another speaker's name.
            3 => {
                let mut b = bytes.to_vec();
                set_speaker(&mut b, header.speaker ^ 1);
                out = vec![b];
            }
            _ => {}
        }
        history.push(bytes.to_vec());
        out
    }));
    c.speak_all(ms(2500));
    c.run_until(ms(7000));
    let mut opened_forgeries = 0;
    for (i, m) in c.members.iter().enumerate() {
        assert!(m.session.is_relayed(), "{i}");
        let st = m.session.stats();
        println!(
            "member {i}: opened {}, dropped: bad tag {}, replay {}, no key {}, unknown speaker {}",
            st.frames_received,
            st.dropped_bad_tag,
            st.dropped_replay,
            st.dropped_no_key,
            st.dropped_unknown_speaker
        );
        assert!(
            st.dropped_bad_tag > 50,
            "{i}: altered, forged or relabelled frames not caught"
        );
        assert!(st.dropped_replay > 10, "{i}: replays not caught");
        assert!(
            st.frames_received > 200,
            "{i}: the genuine frames must still get through"
        );
        // Every packet handed to the audio engine is one its speaker
        // really encoded, byte for byte.
        for (user, seq, payload) in &m.delivered {
            let speaker = c
                .members
                .iter()
                .find(|s| s.user.id() == *user)
                .expect("a member");
            if speaker.sent.get(seq) != Some(payload) {
                opened_forgeries += 1;
            }
        }
        let delivered: BTreeSet<_> = m.delivered.iter().map(|(u, s, _)| (*u, *s)).collect();
        assert_eq!(
            delivered.len(),
            m.delivered.len(),
            "{i}: a frame reached the audio twice"
        );
    }
    assert_eq!(
        opened_forgeries, 0,
        "forged or altered frames reached the audio"
    );
    // And the relay read nothing: no datagram it forwarded is plaintext.
    for m in &c.members {
        for payload in m.sent.values().take(50) {
            let hit = c.trace.iter().any(|l| l.contains(&format!("{payload:?}")));
            assert!(!hit);
        }
    }
    let sample = c.members[0]
        .sent
        .values()
        .next()
        .cloned()
        .unwrap_or_default();
    assert!(VoiceDatagram::parse(&sample).is_err() || sample.is_empty());
}

#[test]
fn a_node_the_roster_refuses_cannot_start_a_session() {
    let c = Channel::new(95, 1, clean(), SessionConfig::default());
    let stranger = UserKey::from_seed(&[66; 32]);
    let node = NodeKey::from_seed(&[66; 32]);
    let outcome = tincan_voice::VoiceSession::new(
        SessionConfig::default(),
        tincan_voice::SessionIdentity {
            binding: NodeBinding::new(&stranger, node.id(), Hlc::new(1, 0)),
            node_key: node,
        },
        c.roster.clone(),
        tincan_voice::SocketInfo {
            bound: "10.0.0.9:4433".parse().unwrap(),
            interfaces: Vec::new(),
        },
        [0; 32],
        ms(0),
    );
    assert!(matches!(
        outcome,
        Err(tincan_voice::LinkRefused::Gate(Refusal::NotMember))
    ));
}

#[test]
fn an_unasked_welcome_gives_no_link() {
    let mut c = Channel::new(96, 2, clean(), SessionConfig::default());
    let (seed, attacker) = ground_key(9, true, &[c.members[0].peer]);
    let _ = seed;
    let now = c.now();
    let welcome = tincan_media::control::Welcome {
        observed: "198.51.100.1:4433".parse().unwrap(),
        speaker: 0,
        speakers: Vec::new(),
    };
    // From a stranger, and from a member we are not dialling.
    let member = c.members[1].peer;
    for from in [attacker, member] {
        let outcome = c.members[0].session.handle_welcome(
            from,
            &welcome,
            "10.0.0.2:4433".parse().unwrap(),
            now,
        );
        assert_eq!(outcome, Err(tincan_voice::LinkRefused::NotDialing));
    }
    assert_eq!(c.members[0].session.links().count(), 0);
    c.run_until(ms(50));
}

#[test]
fn a_listener_who_sends_anyway_is_heard_by_no_one() {
    let mut c = Channel::new(97, 3, clean(), SessionConfig::default());
    c.speak_all(ms(500));
    c.run_until(ms(2500));
    assert!(c.linked(0, 1) && c.linked(0, 2) && c.linked(1, 2));
    // The owner makes member 2 a listener; member 2's node does not play
    // along (it keeps the roster in which it may speak, so it sends on).
    let listener = c.members[2].user_id();
    let mut roster = c.roster.clone();
    roster.users.insert(
        listener,
        tincan_voice::RosterEntry {
            member: true,
            may_listen: true,
            may_speak: false,
        },
    );
    c.push_roster(roster, &[0, 1]);
    let delivered: Vec<usize> = c.members.iter().map(|m| m.delivered.len()).collect();
    let forbidden: Vec<u64> = c
        .members
        .iter()
        .map(|m| m.session.stats().dropped_forbidden)
        .collect();
    c.run_until(ms(5500));
    for i in 0..2 {
        let after = &c.members[i].delivered[delivered[i]..];
        assert!(
            after.iter().all(|(user, _, _)| *user != listener),
            "{i} delivered the listener's voice to its audio"
        );
        assert!(
            after.iter().any(|(user, _, _)| *user != listener),
            "{i} stopped hearing the speaker who may speak"
        );
        let dropped = c.members[i].session.stats().dropped_forbidden - forbidden[i];
        // 3 s of 20 ms frames: 150 sent by the listener.
        assert!(dropped > 100, "{i} dropped only {dropped} of its frames");
        // A listener still listens: its link stays.
        assert!(c.linked(i, 2), "{i} dropped the listener's link");
    }
    assert!(
        c.members[2].delivered.len() > delivered[2],
        "the listener no longer hears"
    );
}
