//! The session's settings, with the reasons for their defaults.

use std::time::Duration;

use crate::paths::PlannerConfig;

/// How a [`crate::VoiceSession`] behaves. Every limit here bounds a table or
/// a rate that a peer could otherwise grow.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The path planner's timing and its `max_peers`, the most peers the
    /// session holds in its planner and participant list (64, the relay's
    /// group size: a larger channel is not a voice chat anyone follows).
    pub planner: PlannerConfig,
    /// Total packets a second we send to peers' candidate addresses, across
    /// all peers: punch packets, and one per address a dial tries (a QUIC
    /// Initial). 40: a peer waiting
    /// for our punches gets a burst every 250 ms to its usable candidates,
    /// usually two (host and reflexive), so 8 packets a second; 40 lets five
    /// peers punch at full pace at once and more at a slower one. At about
    /// 40 bytes a packet that is 1.6 KB/s at most that forged or hostile
    /// presences can make us send anywhere, less than their own gossip
    /// costs them, so we are no amplifier.
    pub punch_budget_per_second: u64,
    /// Punch packets that may go out at once above that rate.
    pub punch_burst: u64,
    /// Most candidate addresses one dial tries at once (4: a host, a
    /// reflexive and two spares; a presence may list 8).
    pub max_dial_addrs: usize,
    /// Early presences (answers to newcomers) a second, sustained: 2.
    /// Each newcomer learns our addresses at once; a flood of them gets at
    /// most two extra presences a second from us, on top of the regular one.
    pub answers_per_second: u64,
    /// Early presences at once above that rate.
    pub answer_burst: u64,
    /// Nodes of one user admitted into the channel at once (a user's
    /// phone and desktop: 2). A member's further nodes are ignored.
    pub max_nodes_per_user: usize,
    /// How long a dial may take before the session counts it as failed.
    pub dial_timeout: Duration,
    /// How long a relay join may take before it is given up and retried.
    pub relay_join_timeout: Duration,
    /// Whether a relay is configured: without one the session never asks
    /// to join a relay.
    pub relay_available: bool,
    /// How long a receiver keeps a sender's previous key after a rotation:
    /// 2 s covers frames still in flight and in jitter buffers (at most a
    /// few hundred milliseconds) with room for gossip delay.
    pub key_grace: Duration,
    /// How often the current sender key is shared again with everyone, in
    /// case a share was lost on the mesh.
    pub key_reshare_every: Duration,
    /// How often the session runs its planner and timers while idle.
    pub tick: Duration,
    /// A voice is speaking while its level reaches this (dBFS).
    pub speaking_threshold_dbfs: f32,
    /// ... and for this long after its last loud level.
    pub speaking_hold: Duration,
    /// Most outputs (transmits, events) waiting to be polled; past it the
    /// oldest is dropped and counted (voice never waits).
    pub max_queued: usize,
    /// Most entries the relay's speaker table may hold.
    pub max_relay_speakers: usize,
    /// How long the relay stays joined once no participant needs it (every
    /// one has a direct link) before the session leaves it: long enough
    /// that a link that flaps does not make us leave and join again.
    pub relay_linger: Duration,
    /// Longest signal the session publishes: the mesh carries voice
    /// signals of at most 2 KiB (`tincan_mesh::MAX_SIGNAL_BYTES`), so a key
    /// share to many participants goes out as several signals.
    pub max_signal_len: usize,
    /// The wall clock, in milliseconds since the Unix epoch, at `now` = 0:
    /// presences carry `origin_ms + now` so peers order our repetitions
    /// across restarts.
    pub origin_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            planner: PlannerConfig::default(),
            punch_budget_per_second: 40,
            punch_burst: 20,
            max_dial_addrs: 4,
            answers_per_second: 2,
            answer_burst: 2,
            max_nodes_per_user: 2,
            dial_timeout: Duration::from_secs(4),
            relay_join_timeout: Duration::from_secs(10),
            relay_available: true,
            key_grace: Duration::from_secs(2),
            key_reshare_every: Duration::from_secs(10),
            tick: Duration::from_millis(100),
            speaking_threshold_dbfs: -45.0,
            speaking_hold: Duration::from_millis(300),
            max_queued: 4096,
            max_relay_speakers: 256,
            relay_linger: Duration::from_secs(5),
            max_signal_len: 2048,
            origin_ms: 0,
        }
    }
}
