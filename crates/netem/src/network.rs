//! A network of several nodes joined by directed links, each with its own
//! [`LinkConfig`], and paths that can be blocked (a NAT that drops what it
//! has no mapping for, a firewall).
//!
//! Nodes are named by an address of the caller's choosing (a `SocketAddr`,
//! an index). [`Network::send`] puts an item on the link `from -> to` at
//! `now`; [`Network::poll`] hands back, in arrival order across all links,
//! what has arrived by `now`; [`Network::next_arrival`] is the next wakeup
//! for a virtual clock ([`crate::VirtualClock`]). A pair with no link set
//! uses the network's default link, made on first use with a seed drawn
//! from the network's seed, so the same calls give the same deliveries.
//! Sending to an address that is no node, or on a blocked path, is counted
//! and goes nowhere, as on a real network: nothing is queued for later.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::link::{Link, LinkConfig, LinkStats};
use crate::rng::SimRng;

/// What became of an item handed to [`Network::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// On the link; it arrives later unless the link loses it.
    OnLink,
    /// The path is blocked: dropped at once.
    Blocked,
    /// No node has that address: dropped at once.
    Unroutable,
}

/// One item that arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<A, T> {
    /// The sender.
    pub from: A,
    /// The receiver.
    pub to: A,
    /// What was sent.
    pub item: T,
    /// When it arrived.
    pub at: Duration,
}

/// Counters over the whole network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Items handed to [`Network::send`].
    pub sent: u64,
    /// Items dropped on a blocked path.
    pub blocked: u64,
    /// Items sent to an address that is no node.
    pub unroutable: u64,
    /// Items delivered.
    pub delivered: u64,
}

/// Several nodes and the directed links between them. See the module
/// documentation.
#[derive(Debug)]
pub struct Network<A, T> {
    rng: SimRng,
    default_link: LinkConfig,
    nodes: BTreeSet<A>,
    links: BTreeMap<(A, A), Link<T>>,
    blocked: BTreeSet<(A, A)>,
    stats: NetworkStats,
}

impl<A: Ord + Copy, T: Clone> Network<A, T> {
    /// A network with no nodes, whose links are `default_link` (its seed is
    /// replaced per link by one drawn from `seed`).
    pub fn new(seed: u64, default_link: LinkConfig) -> Self {
        Network {
            rng: SimRng::new(seed),
            default_link,
            nodes: BTreeSet::new(),
            links: BTreeMap::new(),
            blocked: BTreeSet::new(),
            stats: NetworkStats::default(),
        }
    }

    /// Adds a node at `addr` (adding it twice changes nothing).
    pub fn add_node(&mut self, addr: A) {
        self.nodes.insert(addr);
    }

    /// Whether a node has this address.
    pub fn has_node(&self, addr: &A) -> bool {
        self.nodes.contains(addr)
    }

    /// Sets the link `from -> to`; items already on the old one are lost.
    /// The config's own seed is used as it is.
    pub fn set_link(&mut self, from: A, to: A, config: LinkConfig) {
        self.links.insert((from, to), Link::new(config));
    }

    /// Blocks the path `from -> to`: what is sent on it is dropped.
    pub fn block(&mut self, from: A, to: A) {
        self.blocked.insert((from, to));
    }

    /// Blocks both directions between `a` and `b`.
    pub fn block_both(&mut self, a: A, b: A) {
        self.block(a, b);
        self.block(b, a);
    }

    /// Opens a blocked path again.
    pub fn unblock(&mut self, from: A, to: A) {
        self.blocked.remove(&(from, to));
    }

    /// Whether an item sent `from -> to` can arrive (a node is there and
    /// the path is not blocked).
    pub fn is_open(&self, from: A, to: A) -> bool {
        self.nodes.contains(&to) && !self.blocked.contains(&(from, to))
    }

    fn link(&mut self, from: A, to: A) -> &mut Link<T> {
        let rng = &mut self.rng;
        let default = &self.default_link;
        self.links.entry((from, to)).or_insert_with(|| {
            Link::new(LinkConfig {
                seed: rng.next_u64(),
                ..default.clone()
            })
        })
    }

    /// Sends `item` from `from` to `to` at `now`.
    pub fn send(&mut self, from: A, to: A, item: T, now: Duration) -> Sent {
        self.stats.sent += 1;
        if !self.nodes.contains(&to) {
            self.stats.unroutable += 1;
            return Sent::Unroutable;
        }
        if self.blocked.contains(&(from, to)) {
            self.stats.blocked += 1;
            return Sent::Blocked;
        }
        self.link(from, to).send(item, now);
        Sent::OnLink
    }

    /// The next item to have arrived by `now` on any link, earliest first
    /// (ties go to the lower `(from, to)` pair, so the order is fixed).
    pub fn poll(&mut self, now: Duration) -> Option<Delivery<A, T>> {
        let (&(from, to), _) = self
            .links
            .iter()
            .filter_map(|(k, l)| l.next_arrival().map(|t| (k, t)))
            .filter(|(_, t)| *t <= now)
            .min_by_key(|(k, t)| (*t, **k))?;
        let (item, at) = self.links.get_mut(&(from, to))?.poll(now)?;
        self.stats.delivered += 1;
        Some(Delivery { from, to, item, at })
    }

    /// When the next item arrives anywhere, if any is in flight.
    pub fn next_arrival(&self) -> Option<Duration> {
        self.links.values().filter_map(Link::next_arrival).min()
    }

    /// Counters over the whole network.
    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    /// What the link `from -> to` did, if it was ever used.
    pub fn link_stats(&self, from: A, to: A) -> Option<LinkStats> {
        self.links.get(&(from, to)).map(Link::stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LossModel;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn trace(seed: u64) -> Vec<(u8, u8, u32, Duration)> {
        let mut net: Network<u8, u32> = Network::new(
            seed,
            LinkConfig {
                jitter: ms(10),
                loss: LossModel::Random { probability: 0.1 },
                ..LinkConfig::default()
            },
        );
        for n in 0..3 {
            net.add_node(n);
        }
        for i in 0..300u32 {
            let from = (i % 3) as u8;
            net.send(from, (from + 1) % 3, i, ms(u64::from(i)));
        }
        let mut out = Vec::new();
        while let Some(t) = net.next_arrival() {
            while let Some(d) = net.poll(t) {
                out.push((d.from, d.to, d.item, d.at));
            }
        }
        out
    }

    #[test]
    fn same_seed_same_deliveries_in_arrival_order() {
        let a = trace(5);
        assert_eq!(a, trace(5));
        assert_ne!(a, trace(6));
        assert!(a.windows(2).all(|w| w[0].3 <= w[1].3), "out of order");
        assert!((240..300).contains(&a.len()), "{} delivered", a.len());
    }

    #[test]
    fn blocked_paths_and_unknown_addresses_drop_at_once() {
        let mut net: Network<u8, &str> = Network::new(1, LinkConfig::default());
        net.add_node(1);
        net.add_node(2);
        net.block(1, 2);
        assert!(!net.is_open(1, 2));
        assert!(net.is_open(2, 1));
        assert_eq!(net.send(1, 2, "x", ms(0)), Sent::Blocked);
        assert_eq!(net.send(1, 9, "x", ms(0)), Sent::Unroutable);
        assert_eq!(net.send(2, 1, "y", ms(0)), Sent::OnLink);
        assert_eq!(net.next_arrival(), Some(ms(20)));
        assert!(net.poll(ms(19)).is_none());
        let d = net.poll(ms(20)).expect("arrived");
        assert_eq!((d.from, d.to, d.item), (2, 1, "y"));
        let s = net.stats();
        assert_eq!((s.sent, s.blocked, s.unroutable, s.delivered), (3, 1, 1, 1));
        net.unblock(1, 2);
        assert_eq!(net.send(1, 2, "z", ms(0)), Sent::OnLink);
    }

    #[test]
    fn a_link_of_its_own_overrides_the_default() {
        let mut net: Network<u8, u8> = Network::new(1, LinkConfig::default());
        net.add_node(1);
        net.add_node(2);
        net.set_link(
            1,
            2,
            LinkConfig {
                latency: ms(100),
                ..LinkConfig::default()
            },
        );
        net.send(1, 2, 0, ms(0));
        net.send(2, 1, 0, ms(0));
        assert_eq!(net.poll(ms(50)).map(|d| d.from), Some(2));
        assert!(net.poll(ms(50)).is_none());
        assert_eq!(net.next_arrival(), Some(ms(100)));
    }
}
