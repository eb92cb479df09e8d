//! Which voice paths to try, without I/O: the planner a node's voice session
//! drives with presences, connection outcomes and the time.
//!
//! Peers are keyed by [`PeerId`]. It holds at most
//! [`PlannerConfig::max_peers`] peers: at the limit a new peer is refused
//! ([`PathPlanner::on_presence`] says so) and the peers it has are kept. The
//! session feeds it only presences the admission gate let through, with
//! candidate lists already filtered.
//!
//! For every peer present in our voice channel it decides:
//! - who dials: the node with the smaller PeerId (as text, as every tincan
//!   node compares them) dials first, all the peer's candidates at once,
//!   and keeps the first that answers;
//! - who punches: the other node sends punch packets to the dialler's
//!   candidates every [`PlannerConfig::punch_every`] while it waits, so that
//!   its NAT lets the dialler's handshake in (simultaneous open);
//! - the side that can dial does: when the smaller side's dial has not
//!   produced a link within [`PlannerConfig::fallback_dial_after`], the
//!   larger side dials too (a public peer with the smaller PeerId cannot
//!   reach a symmetric NAT, but the symmetric side can reach it). Should
//!   both dials succeed, the session keeps the smaller side's connection
//!   at both ends, so a pair holds exactly one link;
//! - when to fall back on the relay: a peer present for
//!   [`PlannerConfig::relay_after`] without a direct connection, or one
//!   that says it is relayed, makes [`PathPlanner::needs_relay`] true.
//!
//! `now` is a parameter (time since any origin), so tests run without clocks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use libp2p_identity::PeerId;
use tincan_core::{ChannelId, RoomId};
use tincan_media::presence::{CandidateKind, PRESENCE_TIMEOUT, Presence};

use crate::candidates::is_private;

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

/// Whether `me` is the side that dials `peer` first: the smaller PeerId as
/// text, as every tincan node compares them. Where both sides dialled and
/// both connections came up, the one this side dialled is the one both keep.
pub fn dials_first(me: &PeerId, peer: &PeerId) -> bool {
    me.to_string() < peer.to_string()
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
    /// How long the larger PeerId waits for the smaller one's dial before
    /// it dials itself. Shorter than `relay_after`, so that the direct
    /// path wins where one side can reach the other.
    pub fallback_dial_after: Duration,
    /// Most peers a channel's full mesh connects to; beyond it, the relay.
    pub max_direct_peers: usize,
    /// A peer with a live direct link is not timed out for want of
    /// presences: for a driver that learns of a dead link from the
    /// connection itself (QUIC keep-alives and idle timeout) and calls
    /// [`PathPlanner::on_disconnected`]. Off by default.
    pub links_vouch: bool,
    /// Most peers the planner holds at all; a presence from one more is
    /// refused until one leaves or times out.
    pub max_peers: usize,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            relay_after: Duration::from_millis(1500),
            punch_every: Duration::from_millis(250),
            redial_after: Duration::from_secs(2),
            fallback_dial_after: Duration::from_millis(1000),
            max_direct_peers: 16,
            max_peers: 64,
            links_vouch: false,
        }
    }
}

/// What the session should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Dial this peer at these addresses at once; report the outcome.
    Dial {
        /// The peer.
        peer: PeerId,
        /// Its candidates, best first.
        addrs: Vec<SocketAddr>,
    },
    /// Send punch packets to these addresses of this peer.
    Punch {
        /// The peer waiting for our punches.
        peer: PeerId,
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
    /// The peer left the channel or went silent: close its connection.
    Forget {
        /// The peer.
        peer: PeerId,
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
    /// The PeerId as text, which decides who dials.
    text: String,
    presence: Presence,
    heard_at: Duration,
    first_heard: Duration,
    link: Link,
    last_punch: Option<Duration>,
}

/// The path planner of one node's voice session.
#[derive(Debug)]
pub struct PathPlanner {
    me: PeerId,
    me_text: String,
    config: PlannerConfig,
    channel: Option<(RoomId, ChannelId)>,
    peers: BTreeMap<PeerId, Peer>,
}

impl PathPlanner {
    /// A planner for the node `me`.
    pub fn new(me: PeerId, config: PlannerConfig) -> Self {
        PathPlanner {
            me_text: me.to_string(),
            me,
            config,
            channel: None,
            peers: BTreeMap::new(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    /// The channel we are in (or none). Peers of another channel are
    /// forgotten at the next [`Self::poll`].
    pub fn set_channel(&mut self, channel: Option<(RoomId, ChannelId)>) {
        self.channel = channel;
    }

    /// A peer's presence (already admitted, its candidates filtered).
    /// Returns false when it was refused: our own, or a new peer while the
    /// planner holds [`PlannerConfig::max_peers`].
    pub fn on_presence(&mut self, peer: &PeerId, presence: Presence, now: Duration) -> bool {
        if *peer == self.me {
            return false;
        }
        let full = self.peers.len() >= self.config.max_peers;
        match self.peers.get_mut(peer) {
            Some(p) if presence.sent_ms < p.presence.sent_ms => true,
            Some(p) => {
                p.presence = presence;
                p.heard_at = now;
                true
            }
            None if full => false,
            None => {
                self.peers.insert(
                    *peer,
                    Peer {
                        text: peer.to_string(),
                        presence,
                        heard_at: now,
                        first_heard: now,
                        link: Link::Idle { since: now },
                        last_punch: None,
                    },
                );
                true
            }
        }
    }

    /// Whether the planner holds this peer.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Forgets a peer at once (the gate refused it); returns whether it
    /// was there. No [`Action::Forget`] follows: the caller closes its link.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// The peer's presence, if the planner holds it.
    pub fn presence(&self, peer: &PeerId) -> Option<&Presence> {
        self.peers.get(peer).map(|p| &p.presence)
    }

    /// Whether a dial to the peer is under way.
    pub fn is_dialing(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.link == Link::Dialing)
    }

    /// A direct connection to `peer` is up, with the peer at `remote`:
    /// returns the path it is.
    pub fn on_connected(&mut self, peer: &PeerId, remote: SocketAddr) -> Path {
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
    pub fn on_disconnected(&mut self, peer: &PeerId, now: Duration) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.link = Link::Idle { since: now };
        }
    }

    /// Peers present in our channel now, with their presence.
    pub fn present(&self) -> impl Iterator<Item = (&PeerId, &Presence)> {
        self.peers
            .iter()
            .filter(|(_, p)| self.in_our_channel(&p.presence))
            .map(|(k, p)| (k, &p.presence))
    }

    /// The path of a peer's direct connection, if it has one.
    pub fn path(&self, peer: &PeerId) -> Option<Path> {
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
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                // A peer we hold a live direct link with is present while
                // the link is: its keep-alives prove it, and it closes the
                // link when it leaves. Gossip can stall between two nodes
                // for longer than the presence timeout (the mesh swapping a
                // relay circuit for a direct connection), and the link
                // must not go with it.
                (now.saturating_sub(p.heard_at) >= PRESENCE_TIMEOUT
                    && !(self.config.links_vouch && matches!(p.link, Link::Connected(_))))
                    || !matches!(channel, Some((room, ch))
                        if p.presence.room == room && p.presence.channel == Some(ch))
            })
            .map(|(k, _)| *k)
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
        let mut names: Vec<(String, PeerId)> = self
            .peers
            .iter()
            .map(|(k, p)| (p.text.clone(), *k))
            .collect();
        names.sort();
        for (text, name) in names {
            let dials = self.me_text < text;
            let Some(p) = self.peers.get_mut(&name) else {
                continue;
            };
            let addrs: Vec<SocketAddr> = p.presence.candidates.iter().map(|c| c.addr).collect();
            if addrs.is_empty() {
                continue;
            }
            match p.link {
                Link::Idle { since } => {
                    let first = since == p.first_heard;
                    // The larger side dials too once the smaller side's
                    // dial has had its chance.
                    let may_dial = dials
                        || now.saturating_sub(p.first_heard) >= self.config.fallback_dial_after;
                    if may_dial
                        && direct < self.config.max_direct_peers
                        && (first || now.saturating_sub(since) >= self.config.redial_after)
                    {
                        p.link = Link::Dialing;
                        direct += 1;
                        actions.push(Action::Dial { peer: name, addrs });
                    } else if !dials
                        && p.last_punch
                            .is_none_or(|t| now.saturating_sub(t) >= self.config.punch_every)
                    {
                        p.last_punch = Some(now);
                        actions.push(Action::Punch { peer: name, addrs });
                    }
                }
                Link::Dialing | Link::Connected(_) => {}
            }
        }
        actions
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
    use tincan_core::{Hlc, NodeBinding, NodeKey, UserKey};
    use tincan_media::presence::Candidate;

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

    /// Three PeerIds in the order of their text, as the planner compares.
    fn abc() -> (PeerId, PeerId, PeerId) {
        let mut ids: Vec<PeerId> = (0..3u8)
            .map(|i| {
                let node = NodeKey::from_seed(&[i + 10; 32]);
                crate::gate::peer_id_of(&node.id()).unwrap()
            })
            .collect();
        ids.sort_by_key(|p| p.to_string());
        (ids[0], ids[1], ids[2])
    }

    #[test]
    fn the_smaller_id_dials_and_the_other_punches() {
        let (a_id, b_id, _) = abc();
        let mut low = PathPlanner::new(a_id, PlannerConfig::default());
        let mut high = PathPlanner::new(b_id, PlannerConfig::default());
        for p in [&mut low, &mut high] {
            p.set_channel(Some((ROOM, CH)));
        }
        low.on_presence(&b_id, presence(Some(CH), 1, false), ms(0));
        high.on_presence(&a_id, presence(Some(CH), 1, false), ms(0));
        let a = low.poll(ms(0));
        assert!(
            matches!(&a[..], [Action::Dial { peer, addrs }] if *peer == b_id && addrs.len() == 2)
        );
        assert!(low.poll(ms(10)).is_empty(), "one dial at a time");
        let b = high.poll(ms(0));
        assert!(
            matches!(&b[..], [Action::Punch { peer, addrs }] if *peer == a_id && addrs.len() == 2)
        );
        assert!(high.poll(ms(100)).is_empty(), "punches are paced");
        assert!(matches!(&high.poll(ms(300))[..], [Action::Punch { .. }]));
        // A failed dial is retried after redial_after, not at once.
        low.on_disconnected(&b_id, ms(1000));
        assert!(low.poll(ms(1500)).is_empty());
        assert!(matches!(&low.poll(ms(3100))[..], [Action::Dial { .. }]));
    }

    #[test]
    fn the_larger_side_dials_when_the_smaller_sides_dial_brings_no_link() {
        let (a_id, b_id, _) = abc();
        let mut high = PathPlanner::new(b_id, PlannerConfig::default());
        high.set_channel(Some((ROOM, CH)));
        high.on_presence(&a_id, presence(Some(CH), 1, false), ms(0));
        assert!(matches!(&high.poll(ms(0))[..], [Action::Punch { .. }]));
        assert!(matches!(&high.poll(ms(900))[..], [Action::Punch { .. }]));
        // 1 s without a link: it dials, and stops punching meanwhile.
        assert!(matches!(&high.poll(ms(1000))[..], [Action::Dial { peer, .. }] if *peer == a_id));
        assert!(high.poll(ms(1300)).is_empty());
        // Its dial failed: punches again, dials again after redial_after.
        high.on_disconnected(&a_id, ms(2000));
        assert!(matches!(&high.poll(ms(2100))[..], [Action::Punch { .. }]));
        assert!(matches!(&high.poll(ms(4000))[..], [Action::Dial { .. }]));
        // A link (whoever dialled) ends both.
        high.on_connected(&a_id, "192.168.1.5:4000".parse().unwrap());
        assert!(high.poll(ms(5000)).is_empty());
    }

    #[test]
    fn paths_are_classified_by_the_candidate_that_answered() {
        let (a_id, b_id, _) = abc();
        let mut p = PathPlanner::new(a_id, PlannerConfig::default());
        p.set_channel(Some((ROOM, CH)));
        p.on_presence(&b_id, presence(Some(CH), 1, false), ms(0));
        assert_eq!(
            p.on_connected(&b_id, "192.168.1.5:4000".parse().unwrap()),
            Path::Lan
        );
        assert_eq!(
            p.on_connected(&b_id, "203.0.113.7:4000".parse().unwrap()),
            Path::Punched
        );
        assert_eq!(
            p.on_connected(&b_id, "203.0.113.7:5123".parse().unwrap()),
            Path::Punched
        );
        assert_eq!(
            p.on_connected(&b_id, "198.51.100.1:4000".parse().unwrap()),
            Path::Direct
        );
        assert_eq!(p.path(&b_id), Some(Path::Direct));
    }

    #[test]
    fn no_direct_path_for_a_while_means_relay() {
        let (a_id, b_id, c_id) = abc();
        let mut p = PathPlanner::new(a_id, PlannerConfig::default());
        p.set_channel(Some((ROOM, CH)));
        assert!(!p.needs_relay(ms(0)));
        p.on_presence(&b_id, presence(Some(CH), 1, false), ms(0));
        assert!(!p.needs_relay(ms(1000)));
        assert!(p.needs_relay(ms(1500)));
        p.on_connected(&b_id, "192.168.1.5:4000".parse().unwrap());
        assert!(!p.needs_relay(ms(5000)));
        // A peer that says it is relayed pulls us onto the relay at once.
        p.on_presence(&c_id, presence(Some(CH), 1, true), ms(5000));
        assert!(p.needs_relay(ms(5000)));
    }

    #[test]
    fn peers_that_leave_or_go_silent_are_forgotten() {
        let (a_id, b_id, c_id) = abc();
        let config = PlannerConfig {
            links_vouch: true,
            ..PlannerConfig::default()
        };
        let mut p = PathPlanner::new(a_id, config);
        p.set_channel(Some((ROOM, CH)));
        p.on_presence(&b_id, presence(Some(CH), 1, false), ms(0));
        p.on_presence(&c_id, presence(Some(CH), 1, false), ms(0));
        p.poll(ms(0));
        // C leaves; an older presence arriving late changes nothing.
        p.on_presence(&c_id, presence(None, 2, false), ms(100));
        p.on_presence(&c_id, presence(Some(CH), 1, false), ms(150));
        let actions = p.poll(ms(200));
        assert!(actions.contains(&Action::Forget { peer: c_id }));
        // B goes silent while linked: the link vouches for it; once the
        // link is gone, the silence counts.
        p.on_connected(&b_id, "192.168.1.5:4000".parse().unwrap());
        let actions = p.poll(PRESENCE_TIMEOUT + ms(1));
        assert!(!actions.contains(&Action::Forget { peer: b_id }));
        p.on_disconnected(&b_id, PRESENCE_TIMEOUT + ms(2));
        let actions = p.poll(PRESENCE_TIMEOUT + ms(3));
        assert!(actions.contains(&Action::Forget { peer: b_id }));
        assert_eq!(p.present().count(), 0);
    }

    #[test]
    fn the_planner_holds_at_most_max_peers() {
        let (a_id, ..) = abc();
        let config = PlannerConfig {
            max_peers: 3,
            ..PlannerConfig::default()
        };
        let mut p = PathPlanner::new(a_id, config);
        p.set_channel(Some((ROOM, CH)));
        let peers: Vec<PeerId> = (0..5u8)
            .map(|i| crate::gate::peer_id_of(&NodeKey::from_seed(&[i + 40; 32]).id()).unwrap())
            .collect();
        let taken: Vec<bool> = peers
            .iter()
            .map(|id| p.on_presence(id, presence(Some(CH), 1, false), ms(0)))
            .collect();
        assert_eq!(taken, [true, true, true, false, false]);
        assert!(
            !p.on_presence(&a_id, presence(Some(CH), 1, false), ms(0)),
            "ourselves"
        );
        // A known peer still updates; one leaving makes room.
        assert!(p.on_presence(&peers[0], presence(Some(CH), 2, false), ms(5)));
        assert!(p.remove(&peers[1]));
        assert!(p.on_presence(&peers[4], presence(Some(CH), 1, false), ms(5)));
        assert_eq!(p.present().count(), 3);
    }
}
