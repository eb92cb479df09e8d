//! The adaptive jitter buffer: one per remote speaker, sans-IO.
//!
//! The voice plane calls [`JitterBuffer::push`] with each packet and the time it
//! arrived; the playout side calls [`JitterBuffer::pop`] each time it needs the
//! next frame, with the current time, and gets a [`Playout`] decision: play this
//! frame, rebuild a lost one from the next packet's FEC, conceal, and so on.
//! There is no clock inside: times are [`Duration`]s since any fixed origin of
//! the caller's choosing, the same for both calls.
//!
//! How the delay adapts: each packet's transit (arrival time minus its media
//! time) is kept for a sliding window. The smallest transit is the fastest path;
//! the target delay is a high quantile of how much later than that packets
//! arrive, floored at one frame and capped by [`JitterConfig::max_delay`]. The
//! current delay is how far behind the fastest path the playout runs. When it
//! is more than a frame above the target, a frame is dropped; half a frame
//! below, a frame of concealment is inserted (the band is wider than the one
//! frame step, so the two never chase each other). Both wait for a quiet
//! moment (see [`JitterBuffer::set_quiet`]) unless the error passes two frames,
//! so speech is rarely cut; an insert may also take an empty slot, where it
//! gives a late packet time to arrive. (No time-stretching: at 10 ms a frame,
//! dropping or inserting in pauses is smooth enough.) While packets are being
//! lost, the target grows by one frame, so that the packet after a lost one,
//! whose FEC data rebuilds it, is usually there in time.
//!
//! Sequence numbers tell loss from silence: a speaker who stops sending (DTX,
//! voice activity gate) skips timestamps but not sequence numbers.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::codec::{Decoder, VoicePacket};

/// How the jitter buffer adapts.
#[derive(Clone, Debug, PartialEq)]
pub struct JitterConfig {
    /// The target delay never exceeds this (the cap). Default 200 ms.
    pub max_delay: Duration,
    /// The target delay never goes below this, nor below one frame. Default 0.
    pub min_delay: Duration,
    /// Share of packets that should arrive in time, 0.5 to 1.0. Default 0.97:
    /// the rest are recovered by FEC or concealed.
    pub on_time_quantile: f64,
    /// How far back arrival jitter is remembered. Longer is steadier, shorter
    /// follows a changing network sooner. Default 4 s.
    pub window: Duration,
    /// Most frames held at once; at the limit the oldest is dropped. Default 64.
    pub capacity: usize,
    /// After this long with nothing to play, playout goes idle (silence, no
    /// decoding) until the speaker sends again. Default 200 ms.
    pub idle_after: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            max_delay: Duration::from_millis(200),
            min_delay: Duration::ZERO,
            on_time_quantile: 0.97,
            window: Duration::from_secs(4),
            capacity: 64,
            idle_after: Duration::from_millis(200),
        }
    }
}

/// A frame handed to playout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitterFrame {
    /// The sender's sequence number.
    pub sequence: u32,
    /// The sender's 48 kHz timestamp.
    pub timestamp: u32,
    /// Samples the packet carries.
    pub samples: usize,
    /// The Opus packet.
    pub payload: Vec<u8>,
    /// When it arrived (as passed to [`JitterBuffer::push`]).
    pub arrived_at: Duration,
}

/// What to play next, from [`JitterBuffer::pop`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Playout {
    /// Nothing to play (before the first packet, or a long silence): output
    /// `samples` of silence without touching the decoder.
    Idle {
        /// Samples of silence to play.
        samples: usize,
    },
    /// Decode and play this frame.
    Frame(JitterFrame),
    /// The frame here was lost, and the packet after it is in: decode that
    /// packet's FEC data for `samples` samples (see
    /// [`crate::codec::Decoder::decode_fec`]). The next packet stays buffered
    /// and is played normally next time.
    Recover {
        /// The packet that follows the lost frame.
        next_payload: Vec<u8>,
        /// Samples to rebuild.
        samples: usize,
    },
    /// The frame here was lost and cannot be rebuilt: conceal `samples` samples.
    Conceal {
        /// Samples to conceal.
        samples: usize,
    },
    /// The speaker sent nothing here (DTX or their voice gate), or nothing has
    /// arrived yet: let the decoder conceal, which fades out or continues the
    /// comfort noise.
    Gap {
        /// Samples to fill.
        samples: usize,
    },
    /// The buffer is growing its delay by one frame: conceal `samples`
    /// samples without moving on.
    Insert {
        /// Samples to fill.
        samples: usize,
    },
}

/// Counters and the current state, for statistics and link-quality reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets accepted into the buffer.
    pub received: u64,
    /// Frames played from their own packet.
    pub played: u64,
    /// Packets that arrived after their turn had passed (dropped).
    pub late: u64,
    /// Packets received twice (dropped).
    pub duplicate: u64,
    /// Packets that were not valid Opus (dropped).
    pub corrupt: u64,
    /// Packets dropped because the buffer was full.
    pub overflow: u64,
    /// Frames whose own packet was missing when their turn came:
    /// `recovered_redundancy + recovered_fec + concealed`.
    pub lost: u64,
    /// Lost frames played from the copy the next packet carried.
    pub recovered_redundancy: u64,
    /// Lost frames rebuilt from the next packet's FEC.
    pub recovered_fec: u64,
    /// Lost frames concealed.
    pub concealed: u64,
    /// Slots the speaker sent nothing for (DTX, voice gate), not counted as loss.
    pub silent: u64,
    /// Frames inserted to grow the delay.
    pub inserted: u64,
    /// Frames dropped to shrink the delay.
    pub dropped: u64,
    /// How far behind the fastest observed path playout runs now.
    pub current_delay: Duration,
    /// Where the buffer wants `current_delay` to be.
    pub target_delay: Duration,
}

impl JitterStats {
    /// Share of frames lost (before FEC), 0.0 to 1.0: what a receiver reports
    /// so that the sender can tune its FEC.
    pub fn loss_fraction(&self) -> f64 {
        let total = self.played + self.lost;
        if total == 0 {
            0.0
        } else {
            self.lost as f64 / total as f64
        }
    }
}

#[derive(Debug)]
struct Stored {
    sequence: i64,
    samples: u32,
    payload: Vec<u8>,
    arrived_at: Duration,
    raw_sequence: u32,
    raw_timestamp: u32,
    /// A copy carried by the next packet: its own packet was lost.
    from_redundancy: bool,
}

/// Unwraps a 32-bit counter against the last unwrapped value near it.
fn unwrap_u32(value: u32, reference: i64) -> i64 {
    let delta = value.wrapping_sub(reference as u32) as i32;
    reference + i64::from(delta)
}

fn media_micros(timestamp: i64) -> i64 {
    // 48 000 samples per second: 1 sample = 125/6 us.
    timestamp.saturating_mul(125) / 6
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn duration_from_micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// A sender that jumps further than this in timestamps restarted: start over.
const RESTART_JUMP_SAMPLES: i64 = 48_000 * 10;
/// Remember this many played sequence numbers, to tell duplicates from late.
const PLAYED_MEMORY: usize = 256;
/// Keep at most this many transit samples, whatever the window.
const TRANSIT_CAPACITY: usize = 2048;
/// Slots over which the recent loss rate is averaged.
const LOSS_AVERAGE_SLOTS: f64 = 200.0;
/// Above this recent loss rate the target delay makes room for FEC.
const LOSS_NEEDING_FEC_MARGIN: f64 = 0.005;
/// Frame length assumed before the first packet says otherwise.
const DEFAULT_FRAME_SAMPLES: u32 = 480;

/// One remote speaker's adaptive jitter buffer. See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    frames: BTreeMap<i64, Stored>,
    highest_sequence: Option<i64>,
    highest_timestamp: Option<i64>,
    /// The playout position (unwrapped timestamp); `None` until playout starts.
    next_timestamp: Option<i64>,
    last_played_sequence: Option<i64>,
    /// Frames concealed since the last played packet, known lost.
    lost_since_played: i64,
    /// Slots played since the last played packet while the buffer was empty:
    /// loss or silence, decided once the next packet shows its sequence number.
    unknown_since_played: i64,
    /// Samples of consecutive slots with nothing to play.
    empty_run_samples: i64,
    frame_samples: u32,
    transits: VecDeque<(Duration, i64)>,
    scratch: Vec<i64>,
    played_sequences: VecDeque<i64>,
    quiet: bool,
    target_us: i64,
    /// Recent share of slots lost (exponential average over about 200 slots).
    recent_loss: f64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// An empty buffer.
    pub fn new(config: JitterConfig) -> Self {
        let capacity = config.capacity.max(2);
        let config = JitterConfig {
            capacity,
            on_time_quantile: if config.on_time_quantile.is_finite() {
                config.on_time_quantile.clamp(0.5, 1.0)
            } else {
                0.97
            },
            ..config
        };
        let target_us = micros(config.min_delay.max(Duration::from_micros(
            u64::from(DEFAULT_FRAME_SAMPLES) * 125 / 6,
        )));
        JitterBuffer {
            config,
            frames: BTreeMap::new(),
            highest_sequence: None,
            highest_timestamp: None,
            next_timestamp: None,
            last_played_sequence: None,
            lost_since_played: 0,
            unknown_since_played: 0,
            empty_run_samples: 0,
            frame_samples: DEFAULT_FRAME_SAMPLES,
            transits: VecDeque::with_capacity(TRANSIT_CAPACITY),
            scratch: Vec::with_capacity(TRANSIT_CAPACITY),
            played_sequences: VecDeque::with_capacity(PLAYED_MEMORY),
            quiet: true,
            target_us,
            recent_loss: 0.0,
            stats: JitterStats::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Counters and current delays.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Frames waiting in the buffer.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Tells the buffer whether what it last played was quiet, so that a drop
    /// or an insert now would not be heard. The receive pipeline calls this
    /// after decoding each frame.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// Takes a packet that arrived at `arrived_at`. Invalid, late, duplicate
    /// packets are counted and dropped; none of them is an error.
    pub fn push(&mut self, packet: VoicePacket, arrived_at: Duration) {
        let Some(samples) = Decoder::packet_samples(&packet.payload) else {
            self.stats.corrupt += 1;
            return;
        };
        let samples = samples as u32;
        let sequence = match self.highest_sequence {
            Some(h) => unwrap_u32(packet.sequence, h),
            None => i64::from(packet.sequence),
        };
        let timestamp = match self.highest_timestamp {
            Some(h) => unwrap_u32(packet.timestamp, h),
            None => i64::from(packet.timestamp),
        };
        if let Some(next) = self.next_timestamp
            && (timestamp - next).abs() > RESTART_JUMP_SAMPLES
        {
            // The sender restarted (or its clock jumped): nothing buffered
            // relates to the new stream any more.
            self.restart();
            return self.push(packet, arrived_at);
        }
        if let Some(redundant) = packet.redundant {
            self.push_redundant(redundant, sequence - 1, timestamp, arrived_at);
        }
        if self
            .frames
            .get(&timestamp)
            .is_some_and(|f| !f.from_redundancy)
            || self.played_sequences.contains(&sequence)
        {
            self.stats.duplicate += 1;
            return;
        }
        self.record_transit(arrived_at, timestamp);
        if self.next_timestamp.is_some_and(|next| timestamp < next) {
            self.stats.late += 1;
            return;
        }
        self.highest_sequence = Some(self.highest_sequence.map_or(sequence, |h| h.max(sequence)));
        self.highest_timestamp = Some(
            self.highest_timestamp
                .map_or(timestamp, |h| h.max(timestamp)),
        );
        self.frame_samples = samples;
        self.frames.insert(
            timestamp,
            Stored {
                sequence,
                samples,
                payload: packet.payload,
                arrived_at,
                raw_sequence: packet.sequence,
                raw_timestamp: packet.timestamp,
                from_redundancy: false,
            },
        );
        self.stats.received += 1;
        while self.frames.len() > self.config.capacity {
            // Voice drops the oldest, never waits.
            self.frames.pop_first();
            self.stats.overflow += 1;
        }
    }

    /// Keeps the copy of the previous frame a packet carried, if that frame is
    /// still missing and not yet due. Copies say nothing about jitter, and a
    /// useless copy is not counted anywhere.
    fn push_redundant(
        &mut self,
        payload: Vec<u8>,
        sequence: i64,
        following_timestamp: i64,
        arrived_at: Duration,
    ) {
        let Some(samples) = Decoder::packet_samples(&payload) else {
            return;
        };
        let timestamp = following_timestamp - samples as i64;
        if self.frames.contains_key(&timestamp)
            || self.played_sequences.contains(&sequence)
            || self.next_timestamp.is_some_and(|next| timestamp < next)
            || self.highest_sequence.is_none()
        {
            return;
        }
        self.frames.insert(
            timestamp,
            Stored {
                sequence,
                samples: samples as u32,
                payload,
                arrived_at,
                raw_sequence: sequence as u32,
                raw_timestamp: timestamp as u32,
                from_redundancy: true,
            },
        );
        while self.frames.len() > self.config.capacity {
            self.frames.pop_first();
            self.stats.overflow += 1;
        }
    }

    fn restart(&mut self) {
        self.frames.clear();
        self.highest_sequence = None;
        self.highest_timestamp = None;
        self.next_timestamp = None;
        self.last_played_sequence = None;
        self.lost_since_played = 0;
        self.unknown_since_played = 0;
        self.empty_run_samples = 0;
        self.transits.clear();
        self.played_sequences.clear();
    }

    fn record_transit(&mut self, arrived_at: Duration, timestamp: i64) {
        let transit = micros(arrived_at) - media_micros(timestamp);
        if self.transits.len() == TRANSIT_CAPACITY {
            self.transits.pop_front();
        }
        self.transits.push_back((arrived_at, transit));
    }

    fn frame_micros(&self) -> i64 {
        media_micros(i64::from(self.frame_samples))
    }

    /// Forgets old transits, then returns the fastest transit and sets the
    /// target delay from the spread of the rest.
    fn update_target(&mut self, now: Duration) -> Option<i64> {
        let horizon = now.saturating_sub(self.config.window);
        while self.transits.len() > 1 && self.transits.front().is_some_and(|(t, _)| *t < horizon) {
            self.transits.pop_front();
        }
        let fastest = self.transits.iter().map(|(_, transit)| *transit).min()?;
        self.scratch.clear();
        self.scratch
            .extend(self.transits.iter().map(|(_, transit)| transit - fastest));
        let rank = ((self.scratch.len() - 1) as f64 * self.config.on_time_quantile).round();
        let rank = (rank as usize).min(self.scratch.len() - 1);
        let spread = *self.scratch.select_nth_unstable(rank).1;
        let floor = self.frame_micros().max(micros(self.config.min_delay));
        let cap = micros(self.config.max_delay).max(floor);
        // Rebuilding a lost frame from FEC needs the packet after it: while
        // packets are being lost, wait one frame more so that it is there.
        let fec_margin = if self.recent_loss > LOSS_NEEDING_FEC_MARGIN {
            self.frame_micros()
        } else {
            0
        };
        self.target_us = spread
            .saturating_add(self.frame_micros() / 2 + fec_margin)
            .clamp(floor, cap);
        self.stats.target_delay = duration_from_micros(self.target_us);
        Some(fastest)
    }

    /// Decides what to play at `now`. Call it each time the playout needs the
    /// next frame (every frame duration).
    pub fn pop(&mut self, now: Duration) -> Playout {
        let idle = Playout::Idle {
            samples: self.frame_samples as usize,
        };
        let Some(fastest) = self.update_target(now) else {
            return idle;
        };
        let next = match self.next_timestamp {
            Some(next) => next,
            None => {
                let Some((&first, _)) = self.frames.first_key_value() else {
                    return idle;
                };
                // Start once the first frame has waited out the target delay.
                if micros(now) < media_micros(first) + fastest + self.target_us {
                    return idle;
                }
                self.next_timestamp = Some(first);
                first
            }
        };
        let frame_us = self.frame_micros();
        let current = micros(now) - media_micros(next) - fastest;
        self.stats.current_delay = duration_from_micros(current);
        let error = current - self.target_us;
        let slot_empty = !self.frames.contains_key(&next);

        // Shrinking waits for quiet audio: skipping an empty slot mid-speech
        // would throw away what FEC could have rebuilt.
        if error > frame_us && (self.quiet || error > 2 * frame_us) {
            // Too much delay: skip this slot.
            let skipped = self
                .frames
                .remove(&next)
                .map_or(self.frame_samples, |stored| {
                    self.note_played(stored.sequence);
                    self.stats.dropped += 1;
                    stored.samples
                });
            if slot_empty {
                // Loss or silence: settled when the next packet shows its number.
                self.stats.dropped += 1;
                self.unknown_since_played += 1;
            }
            self.next_timestamp = Some(next + i64::from(skipped));
            return self.play_slot(next + i64::from(skipped));
        }
        // Growing also takes an empty slot: concealing it without moving on
        // gives a late packet the time to arrive.
        if error < -frame_us / 2 && (self.quiet || slot_empty || error < -2 * frame_us) {
            // Too little delay: stretch by one frame, without moving on.
            self.stats.inserted += 1;
            return Playout::Insert {
                samples: self.frame_samples as usize,
            };
        }
        self.play_slot(next)
    }

    fn note_played(&mut self, sequence: i64) {
        if self.played_sequences.len() == PLAYED_MEMORY {
            self.played_sequences.pop_front();
        }
        self.played_sequences.push_back(sequence);
        self.last_played_sequence = Some(sequence);
        self.lost_since_played = 0;
        self.unknown_since_played = 0;
        self.empty_run_samples = 0;
    }

    /// Once a packet shows its sequence number, decides what the slots played
    /// with an empty buffer were: loss, or silence.
    fn settle_unknown(&mut self, next_sequence: i64) {
        if self.unknown_since_played == 0 {
            return;
        }
        let missing = self
            .last_played_sequence
            .map_or(0, |last| (next_sequence - last - 1).max(0));
        let lost = self
            .unknown_since_played
            .min(missing - self.lost_since_played)
            .max(0);
        self.stats.lost += lost as u64;
        self.stats.concealed += lost as u64;
        self.stats.silent += (self.unknown_since_played - lost) as u64;
        self.lost_since_played += lost;
        self.unknown_since_played = 0;
    }

    fn play_slot(&mut self, slot: i64) -> Playout {
        let playout = self.play_slot_inner(slot);
        let lost = matches!(playout, Playout::Recover { .. } | Playout::Conceal { .. });
        self.recent_loss += (f64::from(u8::from(lost)) - self.recent_loss) / LOSS_AVERAGE_SLOTS;
        playout
    }

    fn play_slot_inner(&mut self, slot: i64) -> Playout {
        if let Some(stored) = self.frames.remove(&slot) {
            self.settle_unknown(stored.sequence);
            self.note_played(stored.sequence);
            self.next_timestamp = Some(slot + i64::from(stored.samples));
            if stored.from_redundancy {
                self.stats.lost += 1;
                self.stats.recovered_redundancy += 1;
            } else {
                self.stats.played += 1;
            }
            return Playout::Frame(JitterFrame {
                sequence: stored.raw_sequence,
                timestamp: stored.raw_timestamp,
                samples: stored.samples as usize,
                payload: stored.payload,
                arrived_at: stored.arrived_at,
            });
        }
        let samples = self.frame_samples;
        self.next_timestamp = Some(slot + i64::from(samples));
        let following = self
            .frames
            .range(slot..)
            .next()
            .map(|(&timestamp, stored)| (timestamp, stored.sequence));
        let Some((following_timestamp, following_sequence)) = following else {
            // Nothing buffered: loss or silence, we learn which later.
            self.empty_run_samples += i64::from(samples);
            if self.empty_run_samples > media_samples(self.config.idle_after) {
                self.stats.silent += 1;
                return Playout::Idle {
                    samples: samples as usize,
                };
            }
            self.unknown_since_played += 1;
            return Playout::Gap {
                samples: samples as usize,
            };
        };
        self.settle_unknown(following_sequence);
        self.empty_run_samples = 0;
        let missing = self
            .last_played_sequence
            .map_or(0, |last| following_sequence - last - 1);
        let lost_left = missing - self.lost_since_played;
        let slots_left = (following_timestamp - slot) / i64::from(samples.max(1));
        if lost_left <= 0 || lost_left < slots_left {
            // The speaker sent nothing for this slot. Losses are assumed to sit
            // just before the packet that follows, where FEC can reach them.
            self.stats.silent += 1;
            return Playout::Gap {
                samples: samples as usize,
            };
        }
        self.lost_since_played += 1;
        self.stats.lost += 1;
        let adjacent = following_timestamp == slot + i64::from(samples);
        match self.frames.get(&following_timestamp) {
            Some(stored) if adjacent => {
                self.stats.recovered_fec += 1;
                Playout::Recover {
                    next_payload: stored.payload.clone(),
                    samples: samples as usize,
                }
            }
            _ => {
                self.stats.concealed += 1;
                Playout::Conceal {
                    samples: samples as usize,
                }
            }
        }
    }
}

fn media_samples(d: Duration) -> i64 {
    i64::try_from(d.as_micros().saturating_mul(6) / 125).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid Opus packet for a 10 ms SILK wideband frame (table of
    /// contents: config 8, one frame).
    fn packet(sequence: u32, timestamp: u32) -> VoicePacket {
        VoicePacket {
            sequence,
            timestamp,
            payload: vec![8 << 3, sequence as u8],
            redundant: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn plays_in_order_after_the_target_delay() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for i in 0..5u32 {
            jb.push(packet(i, i * 480), ms(u64::from(i) * 10));
        }
        assert_eq!(jb.pop(ms(0)), Playout::Idle { samples: 480 });
        let mut sequences = Vec::new();
        for t in 1..8u64 {
            if let Playout::Frame(f) = jb.pop(ms(t * 10)) {
                sequences.push(f.sequence);
            }
        }
        assert_eq!(sequences, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn corrupt_packets_are_counted() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(
            VoicePacket {
                sequence: 0,
                timestamp: 0,
                payload: vec![],
                redundant: None,
            },
            ms(0),
        );
        // Code 3 with a frame count of zero is invalid.
        jb.push(
            VoicePacket {
                sequence: 1,
                timestamp: 480,
                payload: vec![0x4b, 0x00],
                redundant: None,
            },
            ms(0),
        );
        assert_eq!(jb.stats().corrupt, 2);
        assert!(jb.is_empty());
    }

    #[test]
    fn unwraps_sequence_and_timestamp() {
        assert_eq!(unwrap_u32(5, i64::from(u32::MAX)), i64::from(u32::MAX) + 6);
        assert_eq!(unwrap_u32(u32::MAX, 1i64 << 32), (1i64 << 32) - 1);
        assert_eq!(unwrap_u32(10, 3), 10);
    }
}
