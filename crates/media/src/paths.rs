//! Which voice paths to try, without I/O: the planner a node's voice session
//! drives with presences, connection outcomes and the time.
//!
//! For every peer present in our voice channel it decides:
//! - who dials: the node with the smaller PeerId (as text), so two nodes
//!   never race two connections; it dials all the peer's candidates at once
//!   and keeps the first that answers;
//! - who punches: the other node sends punch packets to the dialler's
//!   candidates every [`PlannerConfig::punch_every`] while it waits, so that
//!   its NAT lets the dialler's handshake in (simultaneous open);
//! - when to fall back on the relay: a peer present for
//!   [`PlannerConfig::relay_after`] without a direct connection, or one
//!   that says it is relayed, makes [`PathPlanner::needs_relay`] true.
//!
//! `now` is a parameter (time since any origin), so tests run without clocks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tincan_core::{ChannelId, RoomId};

use crate::presence::{CandidateKind, PRESENCE_TIMEOUT, Presence};

/// How a peer's voice reaches us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// A direct connection inside a private network.
    Lan,
    /// A direct connection to a public address, no NAT in the way.
    Direct,
    /// A direct connection through NATs, opened by punching.
    Punched,
    /// Through a relay.
    Relayed,
}

impl Path {
    /// The name shown to users and in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Path::Lan => "lan",
            Path::Direct => "direct",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The planner's timing.
#[derive(Clone, Debug)]
pub struct PlannerConfig {
    /// A peer without a direct path for this long sends us to the relay.
    pub relay_after: Duration,
    /// Time between two punch bursts towards a peer we wait for.
    pub punch_every: Duration,
    /// Wait after a failed dial before dialling the same peer again.
    pub redial_after: Duration,
    /// Most peers a channel's full mesh connects to; beyond it, the relay.
    pub max_direct_peers: usize,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            relay_after: Duration::from_millis(1500),
            punch_every: Duration::from_millis(250),
            redial_after: Duration::from_secs(2),
            max_direct_peers: 16,
        }
    }
}

/// What the session should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Dial this peer at these addresses at once; report the outcome.
    Dial {
        /// The peer (PeerId as text).
        peer: String,
        /// Its candidates, best first.
        addrs: Vec<SocketAddr>,
    },
    /// Send punch packets to these addresses.
    Punch {
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
    /// The peer left the channel or went silent: close its connection.
    Forget {
        /// The peer.
        peer: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Idle { since: Duration },
    Dialing,
    Connected(Path),
}

#[derive(Clone, Debug)]
struct Peer {
    presence: Presence,
    heard_at: Duration,
    first_heard: Duration,
    link: Link,
    last_punch: Option<Duration>,
}

/// The path planner of one node's voice session.
#[derive(Debug)]
pub struct PathPlanner {
    me: String,
    config: PlannerConfig,
    channel: Option<(RoomId, ChannelId)>,
    peers: HashMap<String, Peer>,
}

impl PathPlanner {
    /// A planner for the node `me` (its PeerId as text).
    pub fn new(me: String, config: PlannerConfig) -> Self {
        PathPlanner {
            me,
            config,
            channel: None,
            peers: HashMap::new(),
        }
    }

    /// The channel we are in (or none). Peers of another channel are
    /// forgotten at the next [`Self::poll`].
    pub fn set_channel(&mut self, channel: Option<(RoomId, ChannelId)>) {
        self.channel = channel;
    }

    /// A peer's presence (already verified).
    pub fn on_presence(&mut self, peer: &str, presence: Presence, now: Duration) {
        if peer == self.me {
            return;
        }
        match self.peers.get_mut(peer) {
            Some(p) if presence.sent_ms < p.presence.sent_ms => {}
            Some(p) => {
                p.presence = presence;
                p.heard_at = now;
            }
            None => {
                self.peers.insert(
                    peer.to_owned(),
                    Peer {
                        presence,
                        heard_at: now,
                        first_heard: now,
                        link: Link::Idle { since: now },
                        last_punch: None,
                    },
                );
            }
        }
    }

    /// A direct connection to `peer` is up, with the peer at `remote`:
    /// returns the path it is.
    pub fn on_connected(&mut self, peer: &str, remote: SocketAddr) -> Path {
        let path = match self.peers.get(peer) {
            Some(p) => classify(&p.presence, remote),
            None => classify_addr(remote),
        };
        if let Some(p) = self.peers.get_mut(peer) {
            p.link = Link::Connected(path);
        }
        path
    }

    /// The connection to `peer` closed, or a dial failed.
    pub fn on_disconnected(&mut self, peer: &str, now: Duration) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.link = Link::Idle { since: now };
        }
    }

    /// Peers present in our channel now, with their presence.
    pub fn present(&self) -> impl Iterator<Item = (&str, &Presence)> {
        self.peers
            .iter()
            .filter(|(_, p)| self.in_our_channel(&p.presence))
            .map(|(k, p)| (k.as_str(), &p.presence))
    }

    /// The path of a peer's direct connection, if it has one.
    pub fn path(&self, peer: &str) -> Option<Path> {
        match self.peers.get(peer)?.link {
            Link::Connected(path) => Some(path),
            _ => None,
        }
    }

    fn in_our_channel(&self, presence: &Presence) -> bool {
        matches!(self.channel, Some((room, channel))
            if presence.room == room && presence.channel == Some(channel))
    }

    /// Whether we should (also) send and receive through a relay: some peer
    /// of our channel has had no direct path for a while, or says it is
    /// relayed, or the channel is larger than the full mesh allows.
    pub fn needs_relay(&self, now: Duration) -> bool {
        let present: Vec<&Peer> = self
            .peers
            .values()
            .filter(|p| self.in_our_channel(&p.presence))
            .collect();
        if present.len() > self.config.max_direct_peers {
            return true;
        }
        present.iter().any(|p| {
            !matches!(p.link, Link::Connected(_))
                && (p.presence.relayed
                    || now.saturating_sub(p.first_heard) >= self.config.relay_after)
        })
    }

    /// What to do now.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        let channel = self.channel;
        let stale: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                now.saturating_sub(p.heard_at) >= PRESENCE_TIMEOUT
                    || !matches!(channel, Some((room, ch))
                        if p.presence.room == room && p.presence.channel == Some(ch))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for peer in stale {
            self.peers.remove(&peer);
            actions.push(Action::Forget { peer });
        }
        let mut direct = self
            .peers
            .values()
            .filter(|p| matches!(p.link, Link::Connected(_) | Link::Dialing))
            .count();
        let mut names: Vec<&String> = self.peers.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for name in names {
            let dials = self.me < name;
            let Some(p) = self.peers.get_mut(&name) else {
                continue;
            };
            let addrs: Vec<SocketAddr> = p.presence.candidates.iter().map(|c| c.addr).collect();
            if addrs.is_empty() {
                continue;
            }
            match p.link {
                Link::Idle { since } if dials => {
                    let first = since == p.first_heard;
                    if direct < self.config.max_direct_peers
                        && (first || now.saturating_sub(since) >= self.config.redial_after)
                    {
                        p.link = Link::Dialing;
                        direct += 1;
                        actions.push(Action::Dial {
                            peer: name.clone(),
                            addrs,
                        });
                    }
                }
                Link::Idle { .. } => {
                    if p.last_punch
                        .is_none_or(|t| now.saturating_sub(t) >= self.config.punch_every)
                    {
                        p.last_punch = Some(now);
                        actions.push(Action::Punch { addrs });
                    }
                }
                Link::Dialing | Link::Connected(_) => {}
            }
        }
        actions
    }
}

/// Whether an address is inside a private, link-local or loopback network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || v6.is_unicast_link_local()
        }
    }
}

fn classify_addr(remote: SocketAddr) -> Path {
    if is_private(remote.ip()) {
        Path::Lan
    } else {
        Path::Direct
    }
}

/// The path a connection with the peer at `remote` is, given what its
/// presence said of its addresses.
fn classify(presence: &Presence, remote: SocketAddr) -> Path {
    let hit = presence.candidates.iter().find(|c| c.addr == remote);
    match hit.map(|c| c.kind) {
        Some(CandidateKind::Host) => classify_addr(remote),
        Some(CandidateKind::Reflexive) => Path::Punched,
        // An address the peer did not announce: its NAT's mapping towards
        // us, seen by the acceptor of a punched connection.
        None if presence
            .candidates
            .iter()
            .any(|c| c.kind == CandidateKind::Reflexive && c.addr.ip() == remote.ip()) =>
        {
            Path::Punched
        }
        None => classify_addr(remote),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Candidate;
    use tincan_core::{Hlc, NodeBinding, NodeKey, UserKey};

    const ROOM: RoomId = RoomId([1; 16]);
    const CH: ChannelId = ChannelId([2; 16]);

    fn presence(channel: Option<ChannelId>, sent_ms: u64, relayed: bool) -> Presence {
        Presence {
            binding: NodeBinding::new(
                &UserKey::from_seed(&[3; 32]),
                NodeKey::from_seed(&[4; 32]).id(),
                Hlc::new(1, 0),
            ),
            room: ROOM,
            channel,
            candidates: vec![
                Candidate {
                    addr: "192.168.1.5:4000".parse().unwrap(),
                    kind: CandidateKind::Host,
                },
                Candidate {
                    addr: "203.0.113.7:4000".parse().unwrap(),
                    kind: CandidateKind::Reflexive,
                },
            ],
            relayed,
            sent_ms,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_smaller_id_dials_and_the_other_punches() {
        let mut low = PathPlanner::new("A".into(), PlannerConfig::default());
        let mut high = PathPlanner::new("B".into(), PlannerConfig::default());
        for p in [&mut low, &mut high] {
            p.set_channel(Some((ROOM, CH)));
        }
        low.on_presence("B", presence(Some(CH), 1, false), ms(0));
        high.on_presence("A", presence(Some(CH), 1, false), ms(0));
        let a = low.poll(ms(0));
        assert!(
            matches!(&a[..], [Action::Dial { peer, addrs }] if peer == "B" && addrs.len() == 2)
        );
        assert!(low.poll(ms(10)).is_empty(), "one dial at a time");
        let b = high.poll(ms(0));
        assert!(matches!(&b[..], [Action::Punch { addrs }] if addrs.len() == 2));
        assert!(high.poll(ms(100)).is_empty(), "punches are paced");
        assert!(matches!(&high.poll(ms(300))[..], [Action::Punch { .. }]));
        // A failed dial is retried after redial_after, not at once.
        low.on_disconnected("B", ms(1000));
        assert!(low.poll(ms(1500)).is_empty());
        assert!(matches!(&low.poll(ms(3100))[..], [Action::Dial { .. }]));
    }

    #[test]
    fn paths_are_classified_by_the_candidate_that_answered() {
        let mut p = PathPlanner::new("A".into(), PlannerConfig::default());
        p.set_channel(Some((ROOM, CH)));
        p.on_presence("B", presence(Some(CH), 1, false), ms(0));
        assert_eq!(
            p.on_connected("B", "192.168.1.5:4000".parse().unwrap()),
            Path::Lan
        );
        assert_eq!(
            p.on_connected("B", "203.0.113.7:4000".parse().unwrap()),
            Path::Punched
        );
        assert_eq!(
            p.on_connected("B", "203.0.113.7:5123".parse().unwrap()),
            Path::Punched
        );
        assert_eq!(
            p.on_connected("B", "198.51.100.1:4000".parse().unwrap()),
            Path::Direct
        );
        assert_eq!(p.path("B"), Some(Path::Direct));
    }

    #[test]
    fn no_direct_path_for_a_while_means_relay() {
        let mut p = PathPlanner::new("A".into(), PlannerConfig::default());
        p.set_channel(Some((ROOM, CH)));
        assert!(!p.needs_relay(ms(0)));
        p.on_presence("B", presence(Some(CH), 1, false), ms(0));
        assert!(!p.needs_relay(ms(1000)));
        assert!(p.needs_relay(ms(1500)));
        p.on_connected("B", "192.168.1.5:4000".parse().unwrap());
        assert!(!p.needs_relay(ms(5000)));
        // A peer that says it is relayed pulls us onto the relay at once.
        p.on_presence("C", presence(Some(CH), 1, true), ms(5000));
        assert!(p.needs_relay(ms(5000)));
    }

    #[test]
    fn peers_that_leave_or_go_silent_are_forgotten() {
        let mut p = PathPlanner::new("A".into(), PlannerConfig::default());
        p.set_channel(Some((ROOM, CH)));
        p.on_presence("B", presence(Some(CH), 1, false), ms(0));
        p.on_presence("C", presence(Some(CH), 1, false), ms(0));
        p.poll(ms(0));
        // C leaves; an older presence arriving late changes nothing.
        p.on_presence("C", presence(None, 2, false), ms(100));
        p.on_presence("C", presence(Some(CH), 1, false), ms(150));
        let actions = p.poll(ms(200));
        assert!(actions.contains(&Action::Forget { peer: "C".into() }));
        // B goes silent.
        let actions = p.poll(PRESENCE_TIMEOUT + ms(1));
        assert!(actions.contains(&Action::Forget { peer: "B".into() }));
        assert_eq!(p.present().count(), 0);
    }
}
