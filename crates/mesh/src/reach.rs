//! How a node stays reachable, without I/O: the planner the swarm task
//! drives with connection events, AutoNAT's verdict and the time.
//!
//! It decides three things:
//! - **Bootstrap peers** are dialled at start and again, with exponential
//!   backoff ([`ReachConfig::backoff_min`] doubling to
//!   [`ReachConfig::backoff_max`]), whenever the node has no connection to
//!   one (it restarted, the network dropped, the first dial failed).
//! - **Relay reservations**: unless AutoNAT has confirmed that the node is
//!   public, it reserves a slot on every relay it knows (the `--relay`
//!   addresses, and each bootstrap peer that offers the relay protocol), so
//!   that peers behind other NATs can reach it through a circuit. A
//!   reservation is asked only once the connection to the relay is up (a
//!   reservation dialled while another dial to the same peer is pending is
//!   dropped by libp2p's relay client, silently), and asked again, with
//!   backoff, when its listener closes (the relay restarted or refused).
//! - **Room peers** (peers that share a followed room) that the node loses
//!   are dialled again with backoff for [`ReachConfig::keep_trying`], at the
//!   addresses they last announced (their relay circuits among them): a
//!   bootstrap node that restarts takes every circuit with it, and the DHT
//!   it held is empty until nodes announce again, so waiting on the DHT
//!   would leave two players behind NATs apart for a long while.
//! - **Circuits** end when the relay's limit runs out (two minutes by
//!   libp2p's default). A peer reached only through circuits gets a fresh
//!   circuit at [`ReachConfig::circuit_refresh_at`] of the old one's life,
//!   so the peer is never lost while the old one closes; a peer with a
//!   direct connection (DCUtR upgraded it) needs none.
//!
//! `now` is a parameter; nothing here sleeps or reads a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Timing of the planner.
#[derive(Clone, Debug, PartialEq)]
pub struct ReachConfig {
    /// First wait before a dial or reservation is tried again.
    pub backoff_min: Duration,
    /// Longest wait between two tries.
    pub backoff_max: Duration,
    /// A circuit's life when the relay did not say (libp2p's default).
    pub circuit_lifetime: Duration,
    /// Fraction of a circuit's life after which a fresh one is opened.
    pub circuit_refresh_at: f64,
    /// How long a refresh may take before it is tried again.
    pub refresh_timeout: Duration,
    /// How long a lost room peer is dialled again before it is given up.
    pub keep_trying: Duration,
    /// Longest wait between two dials of a lost room peer: they are cheap
    /// (its relay answers at once while the peer is not there).
    pub room_peer_backoff_max: Duration,
    /// Room peers remembered for redialling at most.
    pub max_room_peers: usize,
}

impl Default for ReachConfig {
    fn default() -> Self {
        ReachConfig {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            circuit_lifetime: Duration::from_secs(120),
            circuit_refresh_at: 0.75,
            refresh_timeout: Duration::from_secs(10),
            keep_trying: Duration::from_secs(600),
            room_peer_backoff_max: Duration::from_secs(8),
            max_room_peers: 64,
        }
    }
}

/// What the swarm task should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReachAction {
    /// Dial this bootstrap peer at these addresses.
    DialBootstrap {
        /// The peer.
        peer: PeerId,
        /// Its configured addresses.
        addrs: Vec<Multiaddr>,
    },
    /// Listen on `<relay address>/p2p-circuit`: ask the relay for a slot.
    Reserve {
        /// The relay.
        relay: PeerId,
        /// Its address, ending in `/p2p/<relay>`.
        addr: Multiaddr,
    },
    /// Open a fresh connection to this peer through a relay circuit (its
    /// known addresses) before the current circuit ends.
    RefreshCircuit {
        /// The peer.
        peer: PeerId,
    },
    /// Dial a lost room peer again at these addresses.
    DialRoomPeer {
        /// The peer.
        peer: PeerId,
        /// Where it last said it listens.
        addrs: Vec<Multiaddr>,
    },
}

#[derive(Clone, Debug)]
struct Backoff {
    next: Duration,
    not_before: Option<Instant>,
}

impl Backoff {
    fn new(min: Duration) -> Self {
        Backoff {
            next: min,
            not_before: None,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// A try failed: wait, longer each time.
    fn failed(&mut self, now: Instant, max: Duration) {
        self.not_before = Some(now + self.next);
        self.next = (self.next * 2).min(max);
    }

    fn succeeded(&mut self, min: Duration) {
        self.next = min;
        self.not_before = None;
    }
}

/// A peer the node keeps a connection to: a bootstrap peer or a relay.
#[derive(Clone, Debug)]
struct Bootstrap {
    /// A bootstrap peer (else only a configured relay).
    bootstrap: bool,
    addrs: Vec<Multiaddr>,
    connected: bool,
    dialing: bool,
    backoff: Backoff,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// No reservation, none asked.
    Idle,
    /// Listening on the circuit address; the relay has not answered yet.
    Asked,
    /// The relay accepted.
    Reserved,
}

#[derive(Clone, Debug)]
struct Relay {
    addr: Multiaddr,
    /// Whether it offers the relay protocol (configured relays do by
    /// definition; bootstrap peers say so in identify).
    offers: bool,
    connected: bool,
    slot: Slot,
    backoff: Backoff,
}

#[derive(Clone, Debug, Default)]
struct Remote {
    direct: usize,
    /// Open times and lifetimes of relayed connections.
    circuits: Vec<(Instant, Duration)>,
    refresh_asked: Option<Instant>,
}

#[derive(Clone, Debug)]
struct RoomPeer {
    addrs: Vec<Multiaddr>,
    connected: bool,
    dialing: bool,
    /// Since when it has been lost (None while connected).
    lost_since: Option<Instant>,
    backoff: Backoff,
}

/// The reachability planner of one node.
#[derive(Debug)]
pub struct Reach {
    room_peers: HashMap<PeerId, RoomPeer>,
    config: ReachConfig,
    public: bool,
    bootstraps: HashMap<PeerId, Bootstrap>,
    relays: HashMap<PeerId, Relay>,
    remotes: HashMap<PeerId, Remote>,
    /// Most remote peers tracked (a bound: the swarm's connection limit).
    max_remotes: usize,
}

/// The relay a circuit address goes through: the PeerId before
/// `/p2p-circuit`.
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// Whether an address goes through a relay circuit.
pub fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl Reach {
    /// A planner for a node with these bootstrap peers and relays (each
    /// address ending in `/p2p/<peer>`; others are ignored), tracking at
    /// most `max_remotes` peers' circuits.
    pub fn new(
        config: ReachConfig,
        bootstrap: &[Multiaddr],
        relays: &[Multiaddr],
        max_remotes: usize,
    ) -> Self {
        let mut reach = Reach {
            room_peers: HashMap::new(),
            public: false,
            bootstraps: HashMap::new(),
            relays: HashMap::new(),
            remotes: HashMap::new(),
            max_remotes: max_remotes.max(1),
            config,
        };
        for addr in bootstrap {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                let b = reach.bootstraps.entry(peer).or_insert(Bootstrap {
                    bootstrap: true,
                    addrs: Vec::new(),
                    connected: false,
                    dialing: false,
                    backoff: Backoff::new(reach.config.backoff_min),
                });
                b.addrs.push(addr.clone());
            }
        }
        for addr in relays {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                // A relay is kept connected like a bootstrap peer: a
                // reservation needs the connection.
                let b = reach.bootstraps.entry(peer).or_insert(Bootstrap {
                    bootstrap: false,
                    addrs: Vec::new(),
                    connected: false,
                    dialing: false,
                    backoff: Backoff::new(reach.config.backoff_min),
                });
                if !b.addrs.contains(addr) {
                    b.addrs.push(addr.clone());
                }
                reach.relays.insert(
                    peer,
                    Relay {
                        addr: addr.clone(),
                        offers: true,
                        connected: false,
                        slot: Slot::Idle,
                        backoff: Backoff::new(reach.config.backoff_min),
                    },
                );
            }
        }
        reach
    }

    /// Whether `peer` is one of the bootstrap peers.
    pub fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.bootstraps.get(peer).is_some_and(|b| b.bootstrap)
    }

    /// Whether the node keeps a connection to `peer` (a bootstrap peer or
    /// a configured relay).
    pub fn is_anchor(&self, peer: &PeerId) -> bool {
        self.bootstraps.contains_key(peer)
    }

    /// `peer` shares a followed room with us; `addrs` are where it says it
    /// listens (identify). Remembered (bounded) so that it is dialled again
    /// when lost; a full table forgets a peer that is not connected.
    pub fn on_room_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, connected: bool) {
        if self.bootstraps.contains_key(&peer) {
            return;
        }
        if !self.room_peers.contains_key(&peer)
            && self.room_peers.len() >= self.config.max_room_peers
        {
            let Some(gone) = self
                .room_peers
                .iter()
                .filter(|(_, p)| !p.connected)
                .map(|(k, _)| *k)
                .next()
            else {
                return;
            };
            self.room_peers.remove(&gone);
        }
        let min = self.config.backoff_min;
        let p = self.room_peers.entry(peer).or_insert(RoomPeer {
            addrs: Vec::new(),
            connected,
            dialing: false,
            lost_since: None,
            backoff: Backoff::new(min),
        });
        if !addrs.is_empty() {
            p.addrs = addrs;
        }
        if connected {
            p.connected = true;
            p.lost_since = None;
        }
    }

    /// We no longer share a room with `peer`: it is not redialled.
    pub fn forget_room_peer(&mut self, peer: &PeerId) {
        self.room_peers.remove(peer);
    }

    /// AutoNAT's verdict: confirmed public, or not (private or unknown).
    pub fn on_nat_status(&mut self, public: bool) {
        self.public = public;
    }

    /// A connection to `peer` is up; `relayed` when it is a relay
    /// circuit, with `circuit_life` the relay's limit if it said.
    pub fn on_connected(
        &mut self,
        peer: PeerId,
        relayed: bool,
        circuit_life: Option<Duration>,
        now: Instant,
    ) {
        let min = self.config.backoff_min;
        if let Some(b) = self.bootstraps.get_mut(&peer) {
            b.connected = true;
            b.dialing = false;
            b.backoff.succeeded(min);
        }
        if let Some(p) = self.room_peers.get_mut(&peer) {
            p.connected = true;
            p.dialing = false;
            p.lost_since = None;
            p.backoff.succeeded(min);
        }
        if !relayed && let Some(r) = self.relays.get_mut(&peer) {
            r.connected = true;
        }
        if !self.remotes.contains_key(&peer) && self.remotes.len() >= self.max_remotes {
            return;
        }
        let life = circuit_life.unwrap_or(self.config.circuit_lifetime);
        let remote = self.remotes.entry(peer).or_default();
        if relayed {
            remote.circuits.push((now, life));
            remote.refresh_asked = None;
        } else {
            remote.direct += 1;
        }
    }

    /// A connection to `peer` closed (`relayed` if it was a circuit);
    /// `remaining` connections to it are still open.
    pub fn on_disconnected(&mut self, peer: PeerId, relayed: bool, remaining: u32, now: Instant) {
        let (min, max) = (self.config.backoff_min, self.config.backoff_max);
        if let Some(remote) = self.remotes.get_mut(&peer) {
            if relayed {
                // The oldest circuit is the one that ends first.
                if !remote.circuits.is_empty() {
                    remote.circuits.remove(0);
                }
            } else {
                remote.direct = remote.direct.saturating_sub(1);
            }
        }
        if remaining == 0 {
            self.remotes.remove(&peer);
            if let Some(p) = self.room_peers.get_mut(&peer) {
                p.connected = false;
                p.dialing = false;
                p.lost_since = Some(now);
                // At once: the peer's other path (a fresh circuit, a direct
                // address) may already be there.
                p.backoff.succeeded(min);
            }
            if let Some(b) = self.bootstraps.get_mut(&peer) {
                b.connected = false;
                b.dialing = false;
                // Wait before redialling: a restarting peer needs a moment,
                // and a peer that drops us at once must not be hammered.
                b.backoff.failed(now, max);
            }
            if let Some(r) = self.relays.get_mut(&peer) {
                r.connected = false;
                if r.slot != Slot::Idle {
                    r.slot = Slot::Idle;
                    r.backoff.succeeded(min);
                }
            }
        } else if !relayed
            && let Some(r) = self.relays.get_mut(&peer)
            && self.remotes.get(&peer).is_none_or(|x| x.direct == 0)
        {
            r.connected = false;
        }
    }

    /// A dial to `peer` failed.
    pub fn on_dial_failed(&mut self, peer: PeerId, now: Instant) {
        let max = self.config.backoff_max;
        if let Some(p) = self.room_peers.get_mut(&peer)
            && !p.connected
        {
            p.dialing = false;
            p.backoff.failed(now, self.config.room_peer_backoff_max);
        }
        if let Some(b) = self.bootstraps.get_mut(&peer)
            && !b.connected
        {
            b.dialing = false;
            b.backoff.failed(now, max);
        }
    }

    /// `peer` (a bootstrap peer) says in identify that it is a relay.
    pub fn on_relay_offered(&mut self, peer: PeerId) {
        let min = self.config.backoff_min;
        if let Some(r) = self.relays.get_mut(&peer) {
            r.offers = true;
            return;
        }
        let Some(b) = self.bootstraps.get(&peer).filter(|b| b.bootstrap) else {
            return;
        };
        let Some(addr) = b.addrs.first().cloned() else {
            return;
        };
        self.relays.insert(
            peer,
            Relay {
                addr,
                offers: true,
                connected: b.connected,
                slot: Slot::Idle,
                backoff: Backoff::new(min),
            },
        );
    }

    /// The relay accepted (or renewed) our reservation.
    pub fn on_reserved(&mut self, relay: PeerId) {
        let min = self.config.backoff_min;
        if let Some(r) = self.relays.get_mut(&relay) {
            r.slot = Slot::Reserved;
            r.backoff.succeeded(min);
        }
    }

    /// Our listener on `relay`'s circuit closed (refused, the relay went,
    /// the reservation lapsed).
    pub fn on_reservation_lost(&mut self, relay: PeerId, now: Instant) {
        let max = self.config.backoff_max;
        if let Some(r) = self.relays.get_mut(&relay) {
            r.slot = Slot::Idle;
            r.backoff.failed(now, max);
        }
    }

    /// The relays the node knows (their addresses end in `/p2p/<relay>`).
    pub fn relay_addrs(&self) -> impl Iterator<Item = &Multiaddr> {
        self.relays.values().filter(|r| r.offers).map(|r| &r.addr)
    }

    /// How many relay reservations are held now.
    pub fn reservations(&self) -> usize {
        self.relays
            .values()
            .filter(|r| r.slot == Slot::Reserved)
            .count()
    }

    /// Whether a reservation on `relay` is held now.
    pub fn reserved_on(&self, relay: &PeerId) -> bool {
        self.relays
            .get(relay)
            .is_some_and(|r| r.slot == Slot::Reserved)
    }

    /// What to do now.
    pub fn poll(&mut self, now: Instant) -> Vec<ReachAction> {
        let mut out = Vec::new();
        let mut peers: Vec<PeerId> = self.bootstraps.keys().copied().collect();
        peers.sort();
        for peer in peers {
            let Some(b) = self.bootstraps.get_mut(&peer) else {
                continue;
            };
            if !b.connected && !b.dialing && b.backoff.due(now) {
                b.dialing = true;
                out.push(ReachAction::DialBootstrap {
                    peer,
                    addrs: b.addrs.clone(),
                });
            }
        }
        if !self.public {
            let mut relays: Vec<PeerId> = self.relays.keys().copied().collect();
            relays.sort();
            for relay in relays {
                let Some(r) = self.relays.get_mut(&relay) else {
                    continue;
                };
                if r.offers && r.connected && r.slot == Slot::Idle && r.backoff.due(now) {
                    r.slot = Slot::Asked;
                    out.push(ReachAction::Reserve {
                        relay,
                        addr: r.addr.clone(),
                    });
                }
            }
        }
        let mut lost: Vec<PeerId> = self.room_peers.keys().copied().collect();
        lost.sort();
        for peer in lost {
            let Some(p) = self.room_peers.get_mut(&peer) else {
                continue;
            };
            let Some(since) = p.lost_since else {
                continue;
            };
            if now.saturating_duration_since(since) > self.config.keep_trying {
                self.room_peers.remove(&peer);
                continue;
            }
            if !p.connected && !p.dialing && !p.addrs.is_empty() && p.backoff.due(now) {
                p.dialing = true;
                out.push(ReachAction::DialRoomPeer {
                    peer,
                    addrs: p.addrs.clone(),
                });
            }
        }
        let mut remotes: Vec<PeerId> = self.remotes.keys().copied().collect();
        remotes.sort();
        for peer in remotes {
            let Some(remote) = self.remotes.get_mut(&peer) else {
                continue;
            };
            if remote.direct > 0 {
                continue;
            }
            let Some(&(since, life)) = remote.circuits.last() else {
                continue;
            };
            let due = since + life.mul_f64(self.config.circuit_refresh_at.clamp(0.1, 0.95));
            let waiting = remote
                .refresh_asked
                .is_some_and(|t| now < t + self.config.refresh_timeout);
            if now >= due && !waiting {
                remote.refresh_asked = Some(now);
                out.push(ReachAction::RefreshCircuit { peer });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        let kp = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        kp.public().to_peer_id()
    }

    fn addr_of(p: PeerId) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/4001/p2p/{p}").parse().unwrap()
    }

    fn circuit(relay: PeerId, to: PeerId) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{to}")
            .parse()
            .unwrap()
    }

    #[test]
    fn a_bootstrap_peer_is_redialled_with_backoff_and_a_relay_reserved_once_connected() {
        let boot = peer(1);
        let t0 = Instant::now();
        let mut r = Reach::new(ReachConfig::default(), &[addr_of(boot)], &[], 16);
        assert!(
            matches!(&r.poll(t0)[..], [ReachAction::DialBootstrap { peer, .. }] if *peer == boot)
        );
        assert!(r.poll(t0).is_empty(), "one dial at a time");
        r.on_dial_failed(boot, t0);
        assert!(r.poll(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(r.poll(t0 + Duration::from_secs(1)).len(), 1);
        r.on_dial_failed(boot, t0 + Duration::from_secs(1));
        // The wait doubles.
        assert!(r.poll(t0 + Duration::from_millis(2900)).is_empty());
        assert_eq!(r.poll(t0 + Duration::from_secs(3)).len(), 1);
        // Connected; it says it relays: a reservation, once.
        let t1 = t0 + Duration::from_secs(4);
        r.on_connected(boot, false, None, t1);
        r.on_relay_offered(boot);
        assert!(matches!(&r.poll(t1)[..], [ReachAction::Reserve { relay, .. }] if *relay == boot));
        assert!(r.poll(t1).is_empty());
        r.on_reserved(boot);
        assert!(r.reserved_on(&boot));
        // The relay restarts: the connection and the listener go; after the
        // backoff it is dialled again, and once back, reserved again.
        r.on_reservation_lost(boot, t1);
        r.on_disconnected(boot, false, 0, t1);
        assert!(r.poll(t1).is_empty());
        let t2 = t1 + Duration::from_secs(1);
        assert!(matches!(
            &r.poll(t2)[..],
            [ReachAction::DialBootstrap { .. }]
        ));
        r.on_connected(boot, false, None, t2);
        let t3 = t2 + Duration::from_secs(2);
        assert!(matches!(&r.poll(t3)[..], [ReachAction::Reserve { .. }]));
    }

    #[test]
    fn a_public_node_reserves_nothing() {
        let boot = peer(1);
        let t0 = Instant::now();
        let mut r = Reach::new(ReachConfig::default(), &[addr_of(boot)], &[], 16);
        r.on_nat_status(true);
        r.poll(t0);
        r.on_connected(boot, false, None, t0);
        r.on_relay_offered(boot);
        assert!(r.poll(t0).is_empty());
    }

    #[test]
    fn a_peer_behind_circuits_gets_a_fresh_one_before_the_old_ends() {
        let other = peer(2);
        let t0 = Instant::now();
        let mut r = Reach::new(ReachConfig::default(), &[], &[], 16);
        r.on_connected(other, true, Some(Duration::from_secs(120)), t0);
        assert!(r.poll(t0 + Duration::from_secs(89)).is_empty());
        let due = t0 + Duration::from_secs(90);
        assert_eq!(
            r.poll(due),
            vec![ReachAction::RefreshCircuit { peer: other }]
        );
        assert!(
            r.poll(due + Duration::from_secs(1)).is_empty(),
            "asked already"
        );
        // The fresh circuit arrives; the old one ends; no peer is lost.
        r.on_connected(other, true, None, due + Duration::from_secs(1));
        r.on_disconnected(other, true, 1, t0 + Duration::from_secs(120));
        assert!(r.poll(t0 + Duration::from_secs(121)).is_empty());
        // A direct connection (DCUtR) makes circuits irrelevant.
        r.on_connected(other, false, None, t0);
        assert!(r.poll(t0 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn a_lost_room_peer_is_redialled_with_backoff_then_given_up() {
        let other = peer(2);
        let t0 = Instant::now();
        let mut r = Reach::new(ReachConfig::default(), &[], &[], 16);
        let where_ = vec![circuit(peer(1), other)];
        r.on_room_peer(other, where_.clone(), true);
        r.on_connected(other, true, None, t0);
        assert!(r.poll(t0).is_empty());
        r.on_disconnected(other, true, 0, t0);
        assert_eq!(
            r.poll(t0),
            vec![ReachAction::DialRoomPeer {
                peer: other,
                addrs: where_.clone()
            }]
        );
        r.on_dial_failed(other, t0);
        assert!(r.poll(t0 + Duration::from_millis(900)).is_empty());
        assert_eq!(r.poll(t0 + Duration::from_secs(1)).len(), 1);
        // Back: nothing more to do.
        r.on_connected(other, true, None, t0 + Duration::from_secs(2));
        assert!(r.poll(t0 + Duration::from_secs(3)).is_empty());
        // Lost for longer than keep_trying: given up.
        r.on_disconnected(other, true, 0, t0 + Duration::from_secs(3));
        r.on_dial_failed(other, t0 + Duration::from_secs(3));
        assert!(r.poll(t0 + Duration::from_secs(700)).is_empty());
        assert!(r.poll(t0 + Duration::from_secs(800)).is_empty());
    }

    #[test]
    fn circuit_addresses_name_their_relay() {
        let (relay, other) = (peer(1), peer(2));
        assert_eq!(relay_of(&circuit(relay, other)), Some(relay));
        assert_eq!(relay_of(&addr_of(relay)), None);
        assert!(is_circuit(&circuit(relay, other)));
    }
}
