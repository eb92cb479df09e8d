//! A model of tincan's control-plane gossip (libp2p gossipsub with the
//! parameters tincan uses) driven by a virtual clock, for hundreds to
//! thousands of nodes in one process.
//!
//! What is modelled, per gossipsub v1.1:
//! - a random connection graph (each node dials `connections` peers, as mDNS
//!   and Kademlia would give it);
//! - a mesh per node of `d` peers kept between `d_lo` and `d_hi` at each
//!   heartbeat; publishing floods to every connected peer (libp2p's
//!   `flood_publish`, on by default); forwarding goes to mesh peers;
//! - lazy gossip: each heartbeat a node sends IHAVE with the ids it saw in
//!   the last `history_gossip` heartbeats to `d_lazy` connected peers outside
//!   its mesh; peers missing one answer IWANT and get the record;
//! - links: one-way latency plus uniform jitter; the transport is reliable
//!   (QUIC or TCP), so a lost packet is not gone but late by one
//!   retransmission timeout (and may be lost again);
//! - each node spends `validation` per new record (decode, signature, rules).
//!
//! Sans-IO and seeded: the same [`SimConfig`] gives the same [`SimResult`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

/// Parameters of one run. Times are in microseconds.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes, all subscribed to the room's topic.
    pub nodes: usize,
    /// Peers each node dials at start.
    pub connections: usize,
    /// Target mesh degree (gossipsub D).
    pub d: usize,
    /// Lowest mesh degree before grafting (D_lo).
    pub d_lo: usize,
    /// Highest mesh degree before pruning (D_hi).
    pub d_hi: usize,
    /// Peers that get IHAVE gossip per heartbeat (D_lazy).
    pub d_lazy: usize,
    /// Heartbeat interval.
    pub heartbeat_us: u64,
    /// Heartbeats of history announced in IHAVE.
    pub history_gossip: u64,
    /// One-way link latency.
    pub latency_us: u64,
    /// Jitter: each packet's delay is uniform in latency ± jitter.
    pub jitter_us: u64,
    /// Probability that a packet is lost (and retransmitted).
    pub loss: f64,
    /// Time to validate one new record at a node.
    pub validation_us: u64,
    /// Records published, one every `publish_interval_us`, from random nodes.
    pub messages: usize,
    /// Time between publications.
    pub publish_interval_us: u64,
    /// Size of a record on the wire, framing included.
    pub message_bytes: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SimConfig {
    /// libp2p gossipsub's defaults, 20 ms links and tincan's record size.
    fn default() -> Self {
        SimConfig {
            nodes: 50,
            connections: 8,
            d: 6,
            d_lo: 5,
            d_hi: 12,
            d_lazy: 6,
            heartbeat_us: 1_000_000,
            history_gossip: 3,
            latency_us: 20_000,
            jitter_us: 0,
            loss: 0.0,
            validation_us: 60,
            messages: 100,
            publish_interval_us: 100_000,
            message_bytes: 300,
            seed: 1,
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct SimResult {
    /// For each record, the time from publication until the last node had
    /// it (None if some node never got it before the run ended).
    pub time_to_all_us: Vec<Option<u64>>,
    /// Bytes each node sent, over the whole run, on average.
    pub bytes_sent_per_node: f64,
    /// Copies of records received that a node already had (eager-push waste).
    pub duplicates: u64,
    /// Records delivered through IHAVE/IWANT rather than eager push.
    pub via_gossip: u64,
    /// Length of simulated time.
    pub duration_us: u64,
}

impl SimResult {
    /// The `q` quantile (0..=1) of time-to-all over records that reached
    /// everyone.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let mut t: Vec<u64> = self.time_to_all_us.iter().flatten().copied().collect();
        if t.is_empty() {
            return None;
        }
        t.sort_unstable();
        let i = ((t.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(t[i])
    }

    /// Records that did not reach every node.
    pub fn undelivered(&self) -> usize {
        self.time_to_all_us.iter().filter(|t| t.is_none()).count()
    }
}

/// The workspace's one seeded generator (`tincan-netem`'s SplitMix64).
type Rng = tincan_netem::SimRng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Publish {
        origin: usize,
        msg: usize,
    },
    /// A full record arrives at `to` from `from`.
    Deliver {
        to: usize,
        from: usize,
        msg: usize,
        gossip: bool,
    },
    /// An IHAVE for `msg` arrives at `to`.
    IHave {
        to: usize,
        from: usize,
        msg: usize,
    },
    /// An IWANT for `msg` arrives at `to` (who then sends the record).
    IWant {
        to: usize,
        from: usize,
        msg: usize,
    },
    Heartbeat {
        node: usize,
    },
}

const CONTROL_BYTES: u64 = 40; // an IHAVE or IWANT entry with framing

struct Node {
    peers: Vec<usize>,
    mesh: Vec<usize>,
    /// Records this node has, with the heartbeat number at which it got each.
    have: Vec<Option<u64>>,
    heartbeats: u64,
    busy_until: u64,
    bytes_sent: u64,
}

/// The node's connected peers that are not in its mesh, in random order.
fn outside_mesh(node: &Node, rng: &mut Rng) -> Vec<usize> {
    let mut cand: Vec<usize> = node
        .peers
        .iter()
        .copied()
        .filter(|p| !node.mesh.contains(p))
        .collect();
    rng.shuffle(&mut cand);
    cand
}

/// Runs the model.
pub fn run(cfg: &SimConfig) -> SimResult {
    let n = cfg.nodes.max(2);
    let mut rng = Rng::new(cfg.seed);
    let mut nodes: Vec<Node> = (0..n)
        .map(|_| Node {
            peers: Vec::new(),
            mesh: Vec::new(),
            have: vec![None; cfg.messages],
            heartbeats: 0,
            busy_until: 0,
            bytes_sent: 0,
        })
        .collect();
    // Connection graph: every node dials `connections` distinct others.
    let mut edges: HashSet<(usize, usize)> = HashSet::new();
    for a in 0..n {
        let mut tries = 0;
        while nodes[a].peers.len() < cfg.connections.min(n - 1) && tries < 100 * cfg.connections {
            tries += 1;
            let b = rng.below(n as u64) as usize;
            if a == b || !edges.insert((a.min(b), a.max(b))) {
                continue;
            }
            nodes[a].peers.push(b);
            nodes[b].peers.push(a);
        }
    }
    // Initial mesh: GRAFT up to D peers, symmetric.
    for a in 0..n {
        let mut cand = nodes[a].peers.clone();
        rng.shuffle(&mut cand);
        for b in cand {
            if nodes[a].mesh.len() >= cfg.d {
                break;
            }
            if !nodes[a].mesh.contains(&b) && nodes[b].mesh.len() < cfg.d_hi {
                nodes[a].mesh.push(b);
                nodes[b].mesh.push(a);
            }
        }
    }

    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(u64, u64, Event)>>, t: u64, e: Event| {
        seq += 1;
        q.push(Reverse((t, seq, e)));
    };
    for node in 0..n {
        // Heartbeats start at a random phase, as nodes start at different times.
        let phase = rng.below(cfg.heartbeat_us.max(1));
        push(&mut queue, phase, Event::Heartbeat { node });
    }
    let start = cfg.heartbeat_us * 2; // let meshes settle first
    for msg in 0..cfg.messages {
        let origin = rng.below(n as u64) as usize;
        push(
            &mut queue,
            start + msg as u64 * cfg.publish_interval_us,
            Event::Publish { origin, msg },
        );
    }
    let published_at: Vec<u64> = (0..cfg.messages)
        .map(|m| start + m as u64 * cfg.publish_interval_us)
        .collect();
    let end = start
        + cfg.messages as u64 * cfg.publish_interval_us
        + (cfg.history_gossip + 3) * cfg.heartbeat_us
        + 50 * (cfg.latency_us + cfg.jitter_us);
    let mut have_count = vec![0usize; cfg.messages];
    let mut last_arrival = vec![0u64; cfg.messages];
    let mut duplicates = 0u64;
    let mut via_gossip = 0u64;

    // One packet's delay, retransmissions included.
    let link = |rng: &mut Rng| -> u64 {
        let mut d = cfg.latency_us + rng.below(2 * cfg.jitter_us + 1);
        d = d.saturating_sub(cfg.jitter_us);
        let rto = 3 * cfg.latency_us + 25_000;
        let mut tries = 0;
        while rng.chance(cfg.loss) && tries < 20 {
            d += rto << tries.min(4);
            tries += 1;
        }
        d
    };

    while let Some(Reverse((now, _, event))) = queue.pop() {
        if now > end {
            break;
        }
        match event {
            Event::Publish { origin, msg } => {
                let node = &mut nodes[origin];
                node.have[msg] = Some(node.heartbeats);
                have_count[msg] += 1;
                last_arrival[msg] = now;
                let peers = node.peers.clone();
                node.bytes_sent += cfg.message_bytes * peers.len() as u64;
                for p in peers {
                    let t = now + link(&mut rng);
                    push(
                        &mut queue,
                        t,
                        Event::Deliver {
                            to: p,
                            from: origin,
                            msg,
                            gossip: false,
                        },
                    );
                }
            }
            Event::Deliver {
                to,
                from,
                msg,
                gossip,
            } => {
                if nodes[to].have[msg].is_some() {
                    duplicates += 1;
                    continue;
                }
                // Validation queues behind earlier work at this node.
                let node = &mut nodes[to];
                let ready = node.busy_until.max(now) + cfg.validation_us;
                node.busy_until = ready;
                node.have[msg] = Some(node.heartbeats);
                have_count[msg] += 1;
                last_arrival[msg] = last_arrival[msg].max(ready);
                if gossip {
                    via_gossip += 1;
                }
                let mesh: Vec<usize> = node.mesh.iter().copied().filter(|&p| p != from).collect();
                node.bytes_sent += cfg.message_bytes * mesh.len() as u64;
                for p in mesh {
                    let t = ready + link(&mut rng);
                    push(
                        &mut queue,
                        t,
                        Event::Deliver {
                            to: p,
                            from: to,
                            msg,
                            gossip: false,
                        },
                    );
                }
            }
            Event::IHave { to, from, msg } => {
                if nodes[to].have[msg].is_none() {
                    nodes[to].bytes_sent += CONTROL_BYTES;
                    let t = now + link(&mut rng);
                    push(
                        &mut queue,
                        t,
                        Event::IWant {
                            to: from,
                            from: to,
                            msg,
                        },
                    );
                }
            }
            Event::IWant { to, from, msg } => {
                nodes[to].bytes_sent += cfg.message_bytes;
                let t = now + link(&mut rng);
                push(
                    &mut queue,
                    t,
                    Event::Deliver {
                        to: from,
                        from: to,
                        msg,
                        gossip: true,
                    },
                );
            }
            Event::Heartbeat { node: a } => {
                nodes[a].heartbeats += 1;
                let hb = nodes[a].heartbeats;
                // Mesh maintenance.
                if nodes[a].mesh.len() < cfg.d_lo {
                    let cand = outside_mesh(&nodes[a], &mut rng);
                    for b in cand.into_iter().take(cfg.d - nodes[a].mesh.len()) {
                        nodes[a].mesh.push(b);
                        if !nodes[b].mesh.contains(&a) {
                            nodes[b].mesh.push(a);
                        }
                    }
                } else if nodes[a].mesh.len() > cfg.d_hi {
                    rng.shuffle(&mut nodes[a].mesh);
                    let pruned: Vec<usize> = nodes[a].mesh.split_off(cfg.d);
                    for b in pruned {
                        nodes[b].mesh.retain(|&x| x != a);
                    }
                }
                // Lazy gossip of recent ids to non-mesh peers.
                let recent: Vec<usize> = nodes[a]
                    .have
                    .iter()
                    .enumerate()
                    .filter_map(|(m, h)| {
                        h.filter(|&h| hb.saturating_sub(h) <= cfg.history_gossip)
                            .map(|_| m)
                    })
                    .collect();
                if !recent.is_empty() {
                    let cand = outside_mesh(&nodes[a], &mut rng);
                    for b in cand.into_iter().take(cfg.d_lazy) {
                        nodes[a].bytes_sent += CONTROL_BYTES * recent.len() as u64;
                        let t = now + link(&mut rng);
                        for &msg in &recent {
                            push(
                                &mut queue,
                                t,
                                Event::IHave {
                                    to: b,
                                    from: a,
                                    msg,
                                },
                            );
                        }
                    }
                }
                push(
                    &mut queue,
                    now + cfg.heartbeat_us,
                    Event::Heartbeat { node: a },
                );
            }
        }
    }
    let time_to_all_us = (0..cfg.messages)
        .map(|m| (have_count[m] == n).then(|| last_arrival[m] - published_at[m]))
        .collect();
    SimResult {
        time_to_all_us,
        bytes_sent_per_node: nodes.iter().map(|x| x.bytes_sent as f64).sum::<f64>() / n as f64,
        duplicates,
        via_gossip,
        duration_us: end,
    }
}
