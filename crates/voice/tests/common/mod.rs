//! An emulated voice channel: real `VoiceSession`s on `tincan-netem`, with
//! a virtual clock, an emulated mesh (signals delivered between sessions
//! after a delay), emulated links (a `Dial` becomes a link on both ends
//! after a round trip when the network lets it through; the acceptor runs
//! its gate), the sans-IO `tincan_media::relay::Relay` as the relay, real
//! Opus and the real jitter buffer of `tincan-audio`.
//!
//! The harness is the driver: it carries out what sessions ask and feeds
//! them what arrives, and writes every step into a trace, so that a run
//! can be compared with another of the same seed.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use libp2p_identity::PeerId;
use tincan_audio::codec::{Encoder, EncoderConfig, VoicePacket};
use tincan_audio::jitter::JitterConfig;
use tincan_audio::receive::SpeakerPipeline;
use tincan_core::merge::Membership;
use tincan_core::record::MemberRole;
use tincan_core::{ChannelId, Hlc, NodeBinding, NodeKey, RoomId, UserId, UserKey};
use tincan_media::control::{Answer, Hello, SpeakerEntry, Update};
use tincan_media::relay::{ConnId, Forward, GroupKey, Relay, RelayConfig};
use tincan_netem::{LinkConfig, Network, VirtualClock};
use tincan_voice::gate::{AdmitRequest, admit, peer_id_of};
use tincan_voice::{
    Event, RosterSnapshot, SessionConfig, SessionIdentity, SocketInfo, Source, Transmit,
    VoiceSession,
};

pub const ROOM: RoomId = RoomId([0x11; 16]);
pub const CHANNEL: ChannelId = ChannelId([0x22; 16]);
pub const FRAME: Duration = Duration::from_millis(10);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What travels on the emulated voice network.
#[derive(Clone, Debug)]
pub enum Wire {
    /// A datagram on the link from `from`.
    Datagram {
        from: PeerId,
        bytes: Vec<u8>,
    },
    /// A punch packet.
    Punch,
    /// A dialler's hello, after the TLS handshake proved `from`.
    Hello {
        from: PeerId,
        hello: Hello,
    },
    /// The acceptor's answer.
    Answer {
        from: PeerId,
        answer: Answer,
    },
    /// To the relay: a datagram, or a join.
    ToRelay(Vec<u8>),
    RelayJoin(Hello),
    /// From the relay.
    FromRelay(Vec<u8>),
    RelayWelcome {
        speaker: u16,
        speakers: Vec<SpeakerEntry>,
    },
    RelayRefused,
    RelayUpdate(Update),
}

/// Speech to say: espeak-ng where it is installed, a speech-like signal
/// otherwise; `index` picks the sentence.
pub fn speech(index: usize) -> (Vec<f32>, &'static str) {
    const TEXTS: [&str; 4] = [
        "Push the left flank now, I will cover the bridge.",
        "Medic needed at the tower, two enemies behind the wall.",
        "Nice shot! Regroup at the base and buy armour.",
        "Who has the flag? Bring it back to our side.",
    ];
    let text = TEXTS[index % TEXTS.len()];
    let dir = std::env::temp_dir().join(format!("tincan-voice-{}-{index}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("speech.wav");
    let made = Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(text)
        .output()
        .is_ok_and(|o| o.status.success());
    let samples = made
        .then(|| tincan_audio::wav::read_mono_48k(&path).ok())
        .flatten();
    let _ = std::fs::remove_dir_all(&dir);
    match samples {
        Some(s) => (s, "espeak-ng"),
        None => (synthetic(index, 3.0), "synthetic"),
    }
}

/// Voiced syllables with a pitch of its own per `index`, and pauses.
pub fn synthetic(index: usize, seconds: f32) -> Vec<f32> {
    let n = (seconds * 48_000.0) as usize;
    let base = 110.0 + 30.0 * index as f32;
    let mut phase = 0.0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            let syllable = (t * (3.0 + index as f32 * 0.4)).fract();
            let envelope = if syllable < 0.6 {
                (syllable / 0.6 * std::f32::consts::PI).sin()
            } else {
                0.0
            };
            phase += (base + 30.0 * (t * 1.7).sin()) / 48_000.0;
            let v: f32 = [(1, 1.0), (2, 0.6), (3, 0.4), (5, 0.2)]
                .iter()
                .map(|(h, a)| a * (std::f32::consts::TAU * phase * *h as f32).sin())
                .sum();
            0.2 * envelope * v
        })
        .collect()
}

pub struct Member {
    pub name: String,
    pub user: UserKey,
    pub node_seed: [u8; 32],
    pub peer: PeerId,
    pub addr: SocketAddr,
    pub session: VoiceSession,
    pub encoder: Encoder,
    pub speech: Vec<f32>,
    pub speak_from: Option<Duration>,
    pub next_frame: usize,
    /// What this member hears, per speaking user, from when that user
    /// started speaking (so lag 0 is "said at once").
    pub heard: BTreeMap<UserId, (SpeakerPipeline, Vec<f32>)>,
    /// Every voice packet delivered to the audio engine: (user, sequence,
    /// payload).
    pub delivered: Vec<(UserId, u32, Vec<u8>)>,
    /// Every packet this member's encoder made, by sequence.
    pub sent: BTreeMap<u32, Vec<u8>>,
    /// Every event's kind, for the trace.
    pub closes: Vec<(Duration, PeerId)>,
    pub dials: Vec<(Duration, PeerId)>,
    /// Every address a dial tried.
    pub dial_addrs: Vec<(Duration, SocketAddr)>,
    pub relay_joins: u64,
}

impl Member {
    pub fn user_id(&self) -> UserId {
        self.user.id()
    }
}

/// A node key whose PeerId text sorts below (`low`) or above every one in
/// `others`: an attacker grinding its key so that it dials, or is dialled.
pub fn ground_key(seed: u8, low: bool, others: &[PeerId]) -> ([u8; 32], PeerId) {
    for i in 0u32..100_000 {
        let mut s = [seed; 32];
        s[..4].copy_from_slice(&i.to_be_bytes());
        let peer = peer_id_of(&NodeKey::from_seed(&s).id()).expect("ed25519");
        let text = peer.to_string();
        let ok = others.iter().all(|o| {
            if low {
                text < o.to_string()
            } else {
                text > o.to_string()
            }
        });
        if ok {
            return (s, peer);
        }
    }
    panic!("no key in 100000 tries sorts where asked");
}

/// What a hostile relay does to each datagram it forwards: the datagrams
/// it sends instead.
pub type RelayFilter = Box<dyn FnMut(Duration, &[u8]) -> Vec<Vec<u8>>>;

pub struct Channel {
    pub clock: VirtualClock,
    pub net: Network<SocketAddr, Wire>,
    /// Reliable, ordered control streams (handshakes, the relay's control
    /// messages): no loss or jitter, but blocked wherever `net` is.
    pub control: Network<SocketAddr, Wire>,
    pub mesh: Network<usize, Vec<u8>>,
    pub members: Vec<Member>,
    pub owner: UserKey,
    pub roster: RosterSnapshot,
    pub config: SessionConfig,
    pub relay: Relay,
    pub relay_addr: SocketAddr,
    pub relay_conns: BTreeMap<SocketAddr, ConnId>,
    pub relay_speakers: BTreeMap<ConnId, (u16, UserId, SocketAddr)>,
    /// Direct links as the driver holds them: (holder, peer).
    pub links: BTreeSet<(usize, PeerId)>,
    /// Which member dialled the connection each link runs on: where both
    /// sides dialled, closing one connection must not close the other.
    pub link_dialler: BTreeMap<(usize, PeerId), usize>,
    pub next_audio: Duration,
    pub trace: Vec<String>,
    /// Every punch packet sent: when, from whom, to where.
    pub punches: Vec<(Duration, usize, SocketAddr)>,
    /// A hook on every datagram the relay forwards: may change, drop or
    /// add datagrams (a hostile relay).
    pub relay_filter: Option<RelayFilter>,
    /// Extra datagrams the relay sends to every member at a time.
    pub relay_inject: Vec<(Duration, Vec<u8>)>,
    /// Every signal a member published: (member, when, bytes).
    pub published: Vec<(usize, Duration, Vec<u8>)>,
    /// Signals injected into sessions: (when, to member, from, bytes).
    pub injected: Vec<(Duration, usize, PeerId, Vec<u8>)>,
    /// Loss fed to sessions each second, per (member, link).
    last_loss: BTreeMap<(usize, Source), (u64, u64)>,
    next_loss: Duration,
    pub seed: u64,
    /// Members that stopped (killed, unplugged): they get no input and
    /// send nothing.
    pub frozen: BTreeSet<usize>,
}

pub fn mesh_link() -> LinkConfig {
    // Gossip over TCP or QUIC streams: reliable and in order, 30 ms.
    LinkConfig {
        latency: ms(30),
        ..LinkConfig::default()
    }
}

pub fn encoder() -> Encoder {
    Encoder::new(EncoderConfig::default()).expect("the default encoder")
}

impl Channel {
    /// `n` members (members of the room, the first one its owner) at
    /// 10.0.0.1.. , each speaking its own sentence from `speak_from`.
    pub fn new(seed: u64, n: usize, voice_link: LinkConfig, config: SessionConfig) -> Self {
        let owner = UserKey::from_seed(&[200; 32]);
        let users: Vec<UserKey> = (0..n)
            .map(|i| {
                if i == 0 {
                    UserKey::from_seed(&[200; 32])
                } else {
                    UserKey::from_seed(&[100 + i as u8; 32])
                }
            })
            .collect();
        let roster = RosterSnapshot::from_members(
            ROOM,
            CHANNEL,
            owner.id(),
            &tincan_core::permissions::default_permissions(),
            users
                .iter()
                .map(|u| (u.id(), Membership::Joined(MemberRole::Participant))),
        );
        let mut net = Network::new(seed, voice_link.clone());
        let relay_addr: SocketAddr = "203.0.113.1:4434".parse().expect("addr");
        net.add_node(relay_addr);
        let mut control = Network::new(
            seed,
            LinkConfig {
                latency: voice_link.latency,
                ..LinkConfig::default()
            },
        );
        control.add_node(relay_addr);
        let mut mesh = Network::new(seed ^ 0x5eed, mesh_link());
        let mut channel = Channel {
            clock: VirtualClock::new(),
            net,
            control,
            mesh: Network::new(0, mesh_link()),
            members: Vec::new(),
            owner,
            roster,
            config,
            relay: Relay::new(RelayConfig::default()),
            relay_addr,
            relay_conns: BTreeMap::new(),
            relay_speakers: BTreeMap::new(),
            links: BTreeSet::new(),
            link_dialler: BTreeMap::new(),
            next_audio: Duration::ZERO,
            trace: Vec::new(),
            punches: Vec::new(),
            relay_filter: None,
            relay_inject: Vec::new(),
            injected: Vec::new(),
            published: Vec::new(),
            last_loss: BTreeMap::new(),
            next_loss: ms(1000),
            seed,
            frozen: BTreeSet::new(),
        };
        for (i, user) in users.into_iter().enumerate() {
            mesh.add_node(i);
            channel.add_member(i, user, [i as u8 + 1; 32]);
        }
        channel.mesh = mesh;
        channel
    }

    fn add_member(&mut self, i: usize, user: UserKey, node_seed: [u8; 32]) {
        let node_key = NodeKey::from_seed(&node_seed);
        let peer = peer_id_of(&node_key.id()).expect("ed25519");
        let addr: SocketAddr = format!("10.0.0.{}:4433", i + 1).parse().expect("addr");
        self.net.add_node(addr);
        self.control.add_node(addr);
        let binding = NodeBinding::new(&user, node_key.id(), Hlc::new(1, 0));
        let mut key_seed = [0u8; 32];
        key_seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        key_seed[8] = i as u8;
        let session = VoiceSession::new(
            self.config.clone(),
            SessionIdentity { node_key, binding },
            self.roster.clone(),
            SocketInfo {
                bound: addr,
                interfaces: vec![addr.ip()],
            },
            key_seed,
            self.clock.now(),
        )
        .expect("a member joins");
        self.members.push(Member {
            name: format!("m{i}"),
            user,
            node_seed,
            peer,
            addr,
            session,
            encoder: encoder(),
            speech: speech(i).0,
            speak_from: None,
            next_frame: 0,
            heard: BTreeMap::new(),
            delivered: Vec::new(),
            sent: BTreeMap::new(),
            closes: Vec::new(),
            dials: Vec::new(),
            dial_addrs: Vec::new(),
            relay_joins: 0,
        });
    }

    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    pub fn index_of(&self, peer: &PeerId) -> Option<usize> {
        self.members.iter().position(|m| m.peer == *peer)
    }

    fn index_at(&self, addr: &SocketAddr) -> Option<usize> {
        self.members.iter().position(|m| m.addr == *addr)
    }

    pub fn speak_all(&mut self, from: Duration) {
        for m in &mut self.members {
            m.speak_from = Some(from);
        }
    }

    /// A new roster for everyone in `to`.
    pub fn push_roster(&mut self, roster: RosterSnapshot, to: &[usize]) {
        let now = self.now();
        self.roster = roster.clone();
        for &i in to {
            self.members[i].session.handle_roster(roster.clone(), now);
        }
        self.drain();
    }

    fn log(&mut self, line: String) {
        self.trace
            .push(format!("{:>8.3} {line}", self.now().as_secs_f64()));
    }

    /// Carries out every queued output of every session, until none has
    /// any.
    pub fn drain(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.members.len() {
                if self.frozen.contains(&i) {
                    continue;
                }
                while let Some(t) = self.members[i].session.poll_transmit() {
                    any = true;
                    self.transmit(i, t);
                }
                while let Some(e) = self.members[i].session.poll_event() {
                    any = true;
                    self.event(i, e);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn transmit(&mut self, i: usize, t: Transmit) {
        let now = self.now();
        let from = self.members[i].addr;
        match t {
            Transmit::Datagram {
                to: Source::Peer(p),
                bytes,
            } => {
                let Some(j) = self.index_of(&p) else { return };
                if !self.links.contains(&(i, p)) {
                    return;
                }
                let to = self.members[j].addr;
                let me = self.members[i].peer;
                self.net
                    .send(from, to, Wire::Datagram { from: me, bytes }, now);
            }
            Transmit::Datagram {
                to: Source::Relay,
                bytes,
            } => {
                self.net
                    .send(from, self.relay_addr, Wire::ToRelay(bytes), now);
            }
            Transmit::Punch { to } => {
                self.punches.push((now, i, to));
                self.net.send(from, to, Wire::Punch, now);
            }
        }
    }

    fn event(&mut self, i: usize, e: Event) {
        let now = self.now();
        let from = self.members[i].addr;
        let name = self.members[i].name.clone();
        match e {
            Event::Dial { peer, addrs, hello } => {
                self.log(format!("{name} dials {peer} at {addrs:?}"));
                self.members[i].dials.push((now, peer));
                self.members[i]
                    .dial_addrs
                    .extend(addrs.iter().map(|a| (now, *a)));
                // TLS proves the peer at the address: the first open
                // address of a node with that PeerId carries the hello;
                // if none, the dial times out in the session.
                let target = addrs.iter().find(|a| {
                    self.index_at(a)
                        .is_some_and(|j| self.members[j].peer == peer)
                        && self.net.is_open(from, **a)
                });
                if let Some(to) = target.copied() {
                    // A NAT keeps a mapping for what goes out: the way back
                    // from the dialled address is open from now on.
                    self.net.unblock(to, from);
                    let me = self.members[i].peer;
                    self.send_control(from, to, Wire::Hello { from: me, hello });
                }
            }
            Event::Close { peer, reason } => {
                self.log(format!("{name} closes {peer}: {reason:?}"));
                self.members[i].closes.push((now, peer));
                self.links.remove(&(i, peer));
                let conn = self.link_dialler.remove(&(i, peer));
                // The other end learns it with the connection's close, if
                // its link runs on that connection.
                if let Some(j) = self.index_of(&peer) {
                    let me = self.members[i].peer;
                    if conn.is_some() && self.link_dialler.get(&(j, me)) == conn.as_ref() {
                        self.link_dialler.remove(&(j, me));
                        self.links.remove(&(j, me));
                        self.members[j].session.handle_link_closed(me, now);
                    }
                }
            }
            Event::JoinRelay { hello } => {
                self.log(format!("{name} joins the relay"));
                self.members[i].relay_joins += 1;
                let relay = self.relay_addr;
                self.send_control(from, relay, Wire::RelayJoin(hello));
            }
            Event::LeaveRelay => {
                self.log(format!("{name} leaves the relay"));
                self.relay_leave(from);
            }
            Event::Publish { signal } => {
                self.published.push((i, now, signal.clone()));
                for j in 0..self.members.len() {
                    if j != i {
                        self.mesh.send(i, j, signal.clone(), now);
                    }
                }
            }
            Event::Voice {
                user,
                packet,
                arrived_at,
                ..
            } => {
                let m = &mut self.members[i];
                m.delivered
                    .push((user, packet.sequence, packet.payload.clone()));
                if let Some((pipeline, _)) = m.heard.get_mut(&user) {
                    pipeline.push(packet, arrived_at);
                }
            }
            Event::SetEncoder {
                bitrate_bps,
                expected_loss_percent,
            } => {
                self.log(format!(
                    "{name} encoder {bitrate_bps} bps, {expected_loss_percent}% loss"
                ));
                let enc = &mut self.members[i].encoder;
                enc.set_bitrate(bitrate_bps).expect("a valid bitrate");
                enc.set_expected_loss(expected_loss_percent)
                    .expect("a valid loss");
            }
            other => self.log(format!("{name} {other:?}")),
        }
    }

    fn relay_leave(&mut self, addr: SocketAddr) {
        if let Some(conn) = self.relay_conns.remove(&addr) {
            self.relay.leave(conn);
            if let Some((speaker, _, _)) = self.relay_speakers.remove(&conn) {
                let others: Vec<SocketAddr> =
                    self.relay_speakers.values().map(|(_, _, a)| *a).collect();
                for a in others {
                    let relay = self.relay_addr;
                    self.send_control(relay, a, Wire::RelayUpdate(Update::SpeakerLeft(speaker)));
                }
            }
        }
    }

    /// Sends on a control stream, if the path lets anything through.
    fn send_control(&mut self, from: SocketAddr, to: SocketAddr, wire: Wire) {
        if self.net.is_open(from, to) {
            let now = self.now();
            self.control.send(from, to, wire, now);
        }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, wire: Wire) {
        let now = self.now();
        if to == self.relay_addr {
            return self.at_relay(from, wire);
        }
        let Some(j) = self.index_at(&to) else { return };
        if self.frozen.contains(&j) {
            return;
        }
        match wire {
            Wire::Datagram { from: p, bytes } => {
                if self.links.contains(&(j, p)) {
                    self.members[j]
                        .session
                        .handle_datagram(Source::Peer(p), &bytes, now);
                }
            }
            Wire::Punch => {}
            Wire::Hello { from: p, hello } => {
                let answer = self.members[j].session.handle_hello(p, &hello, from, now);
                let name = self.members[j].name.clone();
                if matches!(answer, Answer::Welcome(_)) {
                    self.links.insert((j, p));
                    if let Some(k) = self.index_of(&p) {
                        self.link_dialler.insert((j, p), k);
                    }
                    self.log(format!("{name} welcomes {p}"));
                } else {
                    self.log(format!("{name} refuses {p}: {answer:?}"));
                }
                let me = self.members[j].peer;
                self.send_control(to, from, Wire::Answer { from: me, answer });
            }
            Wire::Answer { from: p, answer } => match answer {
                Answer::Welcome(w) => {
                    let outcome = self.members[j].session.handle_welcome(p, &w, from, now);
                    let me = self.members[j].peer;
                    let name = self.members[j].name.clone();
                    match outcome {
                        Ok(()) => {
                            self.links.insert((j, p));
                            self.link_dialler.insert((j, p), j);
                            self.log(format!("{name} link up with {p}"));
                        }
                        Err(e) => {
                            self.log(format!("{name} drops the welcome of {p}: {e}"));
                            // Our connection closes; the peer's link goes
                            // with it if it runs on that connection.
                            if let Some(k) = self.index_of(&p)
                                && self.link_dialler.get(&(k, me)) == Some(&j)
                            {
                                self.link_dialler.remove(&(k, me));
                                self.links.remove(&(k, me));
                                self.members[k].session.handle_link_closed(me, now);
                            }
                        }
                    }
                }
                _ => self.members[j].session.handle_dial_failed(p, now),
            },
            Wire::FromRelay(bytes) => {
                self.members[j]
                    .session
                    .handle_datagram(Source::Relay, &bytes, now);
            }
            Wire::RelayWelcome { speaker, speakers } => {
                self.members[j]
                    .session
                    .handle_relay_joined(speaker, &speakers, now);
            }
            Wire::RelayRefused => self.members[j].session.handle_relay_closed(now),
            Wire::RelayUpdate(u) => self.members[j].session.handle_relay_update(&u, now),
            Wire::ToRelay(_) | Wire::RelayJoin(_) => {}
        }
    }

    fn at_relay(&mut self, from: SocketAddr, wire: Wire) {
        let now = self.now();
        match wire {
            Wire::RelayJoin(hello) => {
                // The relay runs the same gate, over a roster it builds (here
                // the channel's own).
                let Some(i) = self.index_at(&from) else {
                    return;
                };
                let peer = self.members[i].peer;
                let admitted = admit(
                    &AdmitRequest {
                        binding: &hello.binding,
                        node: &peer,
                        room: hello.room,
                        channel: hello.channel,
                    },
                    &self.roster,
                );
                if admitted.is_err() || self.relay_conns.contains_key(&from) {
                    let relay = self.relay_addr;
                    self.send_control(relay, from, Wire::RelayRefused);
                    return;
                }
                let conn = ConnId(self.relay_conns.len() as u64 + 1 + i as u64 * 1000);
                let Ok(speaker) = self.relay.join(conn, GroupKey(CHANNEL.0)) else {
                    let relay = self.relay_addr;
                    self.send_control(relay, from, Wire::RelayRefused);
                    return;
                };
                let user = hello.binding.user;
                let speakers: Vec<SpeakerEntry> = self
                    .relay_speakers
                    .values()
                    .map(|(s, u, _)| SpeakerEntry {
                        speaker: *s,
                        user: *u,
                    })
                    .collect();
                let relay = self.relay_addr;
                let others: Vec<SocketAddr> =
                    self.relay_speakers.values().map(|(_, _, a)| *a).collect();
                for a in others {
                    self.send_control(
                        relay,
                        a,
                        Wire::RelayUpdate(Update::SpeakerJoined(SpeakerEntry { speaker, user })),
                    );
                }
                self.relay_conns.insert(from, conn);
                self.relay_speakers.insert(conn, (speaker, user, from));
                let relay = self.relay_addr;
                self.send_control(relay, from, Wire::RelayWelcome { speaker, speakers });
            }
            Wire::ToRelay(bytes) => {
                let Some(conn) = self.relay_conns.get(&from).copied() else {
                    return;
                };
                let to: Vec<ConnId> =
                    match self.relay.on_datagram(conn, &bytes, now.as_micros() as u64) {
                        Forward::To(r) => r.collect(),
                        Forward::Drop(_) => return,
                    };
                let out = match &mut self.relay_filter {
                    Some(f) => f(now, &bytes),
                    None => vec![bytes],
                };
                for c in to {
                    if let Some((_, _, a)) = self.relay_speakers.get(&c).copied() {
                        for b in &out {
                            self.net
                                .send(self.relay_addr, a, Wire::FromRelay(b.clone()), now);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn audio_tick(&mut self, now: Duration) {
        for i in 0..self.members.len() {
            if self.frozen.contains(&i) {
                continue;
            }
            let Some(from) = self.members[i].speak_from else {
                continue;
            };
            if now < from {
                continue;
            }
            let m = &mut self.members[i];
            let samples = m.encoder.frame_samples();
            let start = m.next_frame * samples;
            if start < m.speech.len() {
                let mut frame = vec![0.0f32; samples];
                let end = (start + samples).min(m.speech.len());
                frame[..end - start].copy_from_slice(&m.speech[start..end]);
                m.next_frame += 1;
                if let Some(packet) = m.encoder.encode(&frame).expect("encodes") {
                    m.sent.insert(packet.sequence, packet.payload.clone());
                    m.session.send_voice(&packet, false, now);
                }
            }
        }
        // Listeners: every speaker's pipeline, from the speaker's start.
        let speakers: Vec<(UserId, Duration)> = self
            .members
            .iter()
            .filter_map(|m| m.speak_from.map(|t| (m.user_id(), t)))
            .collect();
        for m in &mut self.members {
            for (user, from) in &speakers {
                if *user == m.user_id() || now < *from {
                    continue;
                }
                let (pipeline, out) = m.heard.entry(*user).or_insert_with(|| {
                    (
                        SpeakerPipeline::new(JitterConfig::default(), -60.0).expect("decoder"),
                        Vec::new(),
                    )
                });
                let mut tick = [0.0f32; 480];
                pipeline.pull(now, &mut tick);
                out.extend_from_slice(&tick);
            }
        }
    }

    fn feed_loss(&mut self, now: Duration) {
        for i in 0..self.members.len() {
            let peers: Vec<PeerId> = self.members[i].session.links().copied().collect();
            let from = self.members[i].addr;
            let mut reports = Vec::new();
            for p in peers {
                let Some(j) = self.index_of(&p) else { continue };
                if let Some(s) = self.net.link_stats(from, self.members[j].addr) {
                    reports.push((Source::Peer(p), s.sent, s.lost));
                }
            }
            if self.members[i].session.is_relayed()
                && let Some(s) = self.net.link_stats(from, self.relay_addr)
            {
                reports.push((Source::Relay, s.sent, s.lost));
            }
            for (link, sent, lost) in reports {
                let (ls, ll) = self.last_loss.get(&(i, link)).copied().unwrap_or((0, 0));
                self.last_loss.insert((i, link), (sent, lost));
                let ds = sent.saturating_sub(ls);
                if ds > 0 {
                    let loss = lost.saturating_sub(ll) as f64 / ds as f64;
                    self.members[i].session.handle_loss(link, loss, now);
                }
            }
        }
    }

    /// Runs everything until `end` (virtual time), stepping the clock to
    /// the next wakeup.
    pub fn run_until(&mut self, end: Duration) {
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(steps < 10_000_000, "the run does not end");
            self.drain();
            let now = self.now();
            let mut progressed = false;
            while let Some(d) = self.net.poll(now) {
                self.deliver(d.from, d.to, d.item);
                self.drain();
                progressed = true;
            }
            while let Some(d) = self.control.poll(now) {
                self.deliver(d.from, d.to, d.item);
                self.drain();
                progressed = true;
            }
            while let Some(d) = self.mesh.poll(now) {
                if self.frozen.contains(&d.to) {
                    continue;
                }
                let from = self.members[d.from].peer;
                self.members[d.to].session.handle_signal(from, &d.item, now);
                self.drain();
                progressed = true;
            }
            let due: Vec<usize> = self
                .injected
                .iter()
                .enumerate()
                .filter(|(_, (t, ..))| *t <= now)
                .map(|(k, _)| k)
                .collect();
            for k in due.into_iter().rev() {
                let (_, to, from, bytes) = self.injected.remove(k);
                self.members[to].session.handle_signal(from, &bytes, now);
                progressed = true;
            }
            let inject: Vec<Vec<u8>> = self
                .relay_inject
                .iter()
                .filter(|(t, _)| *t <= now)
                .map(|(_, b)| b.clone())
                .collect();
            self.relay_inject.retain(|(t, _)| *t > now);
            for bytes in inject {
                let to: Vec<SocketAddr> =
                    self.relay_speakers.values().map(|(_, _, a)| *a).collect();
                for a in to {
                    self.net
                        .send(self.relay_addr, a, Wire::FromRelay(bytes.clone()), now);
                }
                progressed = true;
            }
            for i in 0..self.members.len() {
                if self.members[i]
                    .session
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                {
                    self.members[i].session.handle_timeout(now);
                    progressed = true;
                }
            }
            if now >= self.next_audio {
                self.audio_tick(now);
                self.next_audio = now + FRAME;
                progressed = true;
            }
            if now >= self.next_loss {
                self.feed_loss(now);
                self.next_loss = now + ms(1000);
                progressed = true;
            }
            if progressed {
                continue;
            }
            let mut deadlines = vec![
                self.net.next_arrival(),
                self.control.next_arrival(),
                self.mesh.next_arrival(),
                Some(self.next_audio),
                Some(self.next_loss),
            ];
            deadlines.extend(self.injected.iter().map(|(t, ..)| Some(*t)));
            deadlines.extend(self.relay_inject.iter().map(|(t, _)| Some(*t)));
            deadlines.extend(
                self.members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !self.frozen.contains(i))
                    .map(|(_, m)| m.session.poll_timeout()),
            );
            if !self.clock.step(deadlines, end) {
                self.clock.advance_to(end);
                self.drain();
                return;
            }
        }
    }

    /// How well `listener` heard `speaker`: the best normalised
    /// correlation of what it played against what was said, over 2 s from
    /// 0.3 s into the speech, at lags up to 0.5 s.
    pub fn correlation(&self, listener: usize, speaker: usize) -> f64 {
        let said = &self.members[speaker].speech;
        let Some((_, heard)) = self.members[listener]
            .heard
            .get(&self.members[speaker].user_id())
        else {
            return 0.0;
        };
        let window = (2 * 48_000).min(said.len().saturating_sub(14_400));
        tincan_audio::analysis::best_alignment(said, heard, 14_400, window, 24_000)
            .map_or(0.0, |a| a.correlation)
    }

    /// A digest of the whole run: the trace and every member's counters
    /// and delivered packets.
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for line in &self.trace {
            h.update(line.as_bytes());
        }
        for m in &self.members {
            h.update(format!("{:?}", m.session.stats()).as_bytes());
            for (u, s, p) in &m.delivered {
                h.update(&u.0);
                h.update(&s.to_be_bytes());
                h.update(p);
            }
            for (_, out) in m.heard.values() {
                for x in out {
                    h.update(&x.to_le_bytes());
                }
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// Whether `i` and `j` hold a direct link on both ends.
    pub fn linked(&self, i: usize, j: usize) -> bool {
        let (pi, pj) = (self.members[i].peer, self.members[j].peer);
        self.links.contains(&(i, pj)) && self.links.contains(&(j, pi))
    }

    /// The roster without `user` (kicked).
    pub fn roster_without(&self, user: &UserId) -> RosterSnapshot {
        let mut r = self.roster.clone();
        r.users.insert(
            *user,
            tincan_voice::RosterEntry {
                member: false,
                may_listen: false,
                may_speak: false,
            },
        );
        r
    }

    pub fn packet(&mut self, i: usize) -> Option<VoicePacket> {
        let m = &mut self.members[i];
        let frame = vec![0.1f32; m.encoder.frame_samples()];
        m.encoder.encode(&frame).expect("encodes")
    }
}

/// The bytes of a presence signal for `user` on `node`, in our channel.
pub fn presence_signal(
    user: &UserKey,
    node: &NodeKey,
    candidates: &[SocketAddr],
    sent_ms: u64,
) -> Vec<u8> {
    let presence = tincan_media::presence::Presence {
        binding: NodeBinding::new(user, node.id(), Hlc::new(1, 0)),
        room: ROOM,
        channel: Some(CHANNEL),
        candidates: candidates
            .iter()
            .map(|a| tincan_media::presence::Candidate {
                addr: *a,
                kind: tincan_media::presence::CandidateKind::Host,
            })
            .collect(),
        relayed: false,
        sent_ms,
    };
    tincan_voice::protocol::VoiceSignal::Presence(presence)
        .encode()
        .expect("a presence fits")
}

/// The most punch packets one member sent in any one-second window, and
/// the total, to addresses for which `pick` is true.
pub fn punch_rate(
    c: &Channel,
    member: usize,
    pick: impl Fn(&SocketAddr) -> bool,
) -> (usize, usize) {
    let times: Vec<Duration> = c
        .punches
        .iter()
        .filter(|(_, i, to)| *i == member && pick(to))
        .map(|(t, _, _)| *t)
        .collect();
    let mut worst = 0;
    for (k, t) in times.iter().enumerate() {
        let in_window = times[k..]
            .iter()
            .take_while(|u| **u < *t + ms(1000))
            .count();
        worst = worst.max(in_window);
    }
    (worst, times.len())
}
