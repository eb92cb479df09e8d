//! Deterministic scenarios for the jitter buffer: virtual time, seeded links,
//! exact counts.

use std::time::Duration;

use proptest::prelude::*;
use tincan_audio::codec::VoicePacket;
use tincan_audio::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use tincan_netem::{Link, LinkConfig};

const FRAME: u32 = 480;
const TICK: Duration = Duration::from_millis(10);

/// A small valid Opus packet of 10 ms (SILK wideband, one frame).
fn packet(sequence: u32, timestamp: u32) -> VoicePacket {
    VoicePacket {
        sequence,
        timestamp,
        payload: vec![8 << 3, sequence as u8, (sequence >> 8) as u8],
        redundant: None,
    }
}

#[derive(Debug, Default)]
struct Run {
    stats: JitterStats,
    /// Sequence numbers of the frames played from packets, in order.
    played: Vec<u32>,
    /// The current delay at each tick once playing.
    delays: Vec<Duration>,
    /// Ticks that played something other than a frame or silence.
    recovered: Vec<u32>,
}

/// Feeds `arrivals` (packet, arrival time) to a buffer and pops every 10 ms
/// until `end`. `quiet(t)` says whether the audio at tick time t is quiet.
fn simulate(
    config: JitterConfig,
    mut arrivals: Vec<(VoicePacket, Duration)>,
    end: Duration,
    quiet: impl Fn(Duration) -> bool,
) -> Run {
    arrivals.sort_by_key(|(_, at)| *at);
    let mut jb = JitterBuffer::new(config);
    let mut run = Run::default();
    let mut next = 0;
    let mut now = Duration::ZERO;
    while now <= end {
        while next < arrivals.len() && arrivals[next].1 <= now {
            let (packet, at) = arrivals[next].clone();
            jb.push(packet, at);
            next += 1;
        }
        match jb.pop(now) {
            Playout::Frame(f) => run.played.push(f.sequence),
            Playout::Recover { next_payload, .. } => {
                let following = u32::from(next_payload[1]) | (u32::from(next_payload[2]) << 8);
                run.recovered.push(following.wrapping_sub(1));
            }
            _ => {}
        }
        if jb.stats().played > 0 {
            run.delays.push(jb.stats().current_delay);
        }
        jb.set_quiet(quiet(now));
        now += TICK;
    }
    run.stats = jb.stats();
    run
}

fn steady(count: u32, delay: Duration) -> Vec<(VoicePacket, Duration)> {
    (0..count)
        .map(|i| (packet(i, i * FRAME), TICK * i + delay))
        .collect()
}

fn is_consecutive(sequences: &[u32]) -> bool {
    sequences.windows(2).all(|w| w[1] == w[0] + 1)
}

#[test]
fn reordered_packets_play_in_order_without_loss() {
    // Every other packet is 15 ms late, so neighbours swap all the time.
    let arrivals = (0..1000u32)
        .map(|i| {
            let extra = if i % 2 == 0 { 15 } else { 0 };
            (
                packet(i, i * FRAME),
                TICK * i + Duration::from_millis(20 + extra),
            )
        })
        .collect();
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(11),
        |_| false,
    );
    assert_eq!(run.played.len(), 1000, "{:?}", run.stats);
    assert!(is_consecutive(&run.played));
    assert_eq!((run.stats.lost, run.stats.late), (0, 0), "{:?}", run.stats);
    // The buffer settles at the reordering depth, not at its cap.
    let settled = &run.delays[200..];
    assert!(
        settled.iter().all(|d| *d <= Duration::from_millis(35)),
        "{:?}",
        settled.iter().max()
    );
}

#[test]
fn burst_loss_is_counted_recovered_at_the_edge_and_concealed_inside() {
    let arrivals = steady(1000, Duration::from_millis(20))
        .into_iter()
        .filter(|(p, _)| !(300..305).contains(&p.sequence) && !(600..603).contains(&p.sequence))
        .collect();
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(11),
        |_| false,
    );
    let s = run.stats;
    assert_eq!(s.lost, 8, "{s:?}");
    assert_eq!(s.played, 992);
    // Only the last frame of each burst has its successor (with FEC) in.
    assert_eq!(run.recovered, vec![304, 602]);
    assert_eq!((s.recovered_fec, s.concealed), (2, 6));
    assert_eq!(
        s.lost,
        s.recovered_fec + s.concealed + s.recovered_redundancy
    );
    assert!(is_consecutive(&run.played[..299]));
}

#[test]
fn redundant_copies_fill_single_losses() {
    let arrivals: Vec<_> = (0..500u32)
        .filter(|i| i % 50 != 7)
        .map(|i| {
            let mut p = packet(i, i * FRAME);
            if i > 0 {
                p.redundant = Some(packet(i - 1, 0).payload);
            }
            (p, TICK * i + Duration::from_millis(20))
        })
        .collect();
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(6),
        |_| false,
    );
    let s = run.stats;
    assert_eq!(
        (s.lost, s.recovered_redundancy, s.concealed),
        (10, 10, 0),
        "{s:?}"
    );
    assert_eq!(run.played.len(), 500, "copies play as frames");
    assert!(is_consecutive(&run.played));
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut arrivals = steady(500, Duration::from_millis(20));
    let copies: Vec<_> = arrivals
        .iter()
        .map(|(p, at)| (p.clone(), *at + Duration::from_millis(3)))
        .collect();
    arrivals.extend(copies);
    // And three copies that come back long after their turn.
    for i in [10u32, 20, 30] {
        arrivals.push((packet(i, i * FRAME), Duration::from_secs(2)));
    }
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(6),
        |_| false,
    );
    assert_eq!(run.stats.duplicate, 503, "{:?}", run.stats);
    assert_eq!(run.stats.late, 0);
    assert_eq!(run.played.len(), 500);
    assert!(is_consecutive(&run.played));
}

#[test]
fn a_late_packet_is_dropped_and_its_slot_covered() {
    let mut arrivals = steady(300, Duration::from_millis(20));
    arrivals[100].1 += Duration::from_millis(300);
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(4),
        |_| false,
    );
    let s = run.stats;
    assert_eq!((s.late, s.lost, s.recovered_fec), (1, 1, 1), "{s:?}");
    assert_eq!(run.played.len(), 299);
}

#[test]
fn silence_and_dtx_gaps_are_not_loss() {
    // 1 s of speech, 0.5 s of nothing sent (timestamps skip, sequence numbers
    // do not), 1 s of speech, a lone DTX keep-alive in another 0.5 s gap, and
    // 1 s of speech.
    let mut arrivals = Vec::new();
    let mut sequence = 0;
    let mut send = |frame: u32| {
        arrivals.push((
            packet(sequence, frame * FRAME),
            TICK * frame + Duration::from_millis(25),
        ));
        sequence += 1;
    };
    (0..100).for_each(&mut send);
    (150..250).for_each(&mut send);
    send(275);
    (300..400).for_each(&mut send);
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(5),
        |_| false,
    );
    let s = run.stats;
    assert_eq!((s.lost, s.concealed, s.late), (0, 0, 0), "{s:?}");
    assert_eq!(run.played.len(), 301);
    assert!(is_consecutive(&run.played));
    assert!(s.silent >= 95, "{s:?}");
    // The gaps did not move the delay.
    assert!(
        run.delays.iter().all(|d| *d <= Duration::from_millis(20)),
        "{:?}",
        run.delays.iter().max()
    );
}

#[test]
fn sequence_and_timestamp_wrap_around() {
    let first_sequence = u32::MAX - 100;
    let first_timestamp = u32::MAX - 100 * FRAME;
    let arrivals = (0..300u32)
        .map(|i| {
            (
                packet(
                    first_sequence.wrapping_add(i),
                    first_timestamp.wrapping_add(i * FRAME),
                ),
                TICK * i + Duration::from_millis(20),
            )
        })
        .collect();
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(4),
        |_| false,
    );
    assert_eq!(run.played.len(), 300, "{:?}", run.stats);
    assert_eq!(run.stats.lost, 0);
    assert!(run.played.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
}

/// Ten minutes from a sender whose clock runs `ppm` fast (or slow), over a
/// link with 20 ms of jitter. Speech is 1 s on, 0.5 s off.
fn drift(ppm: f64) -> Run {
    let mut link = Link::new(LinkConfig {
        seed: 42,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(20),
        ..LinkConfig::default()
    });
    let frames = 60_000u32;
    let mut arrivals = Vec::new();
    for i in 0..frames {
        let sent = Duration::from_secs_f64(f64::from(i + 1) * 0.01 / (1.0 + ppm * 1e-6));
        link.send(packet(i, i * FRAME), sent);
        while let Some(delivered) = link.poll(sent) {
            arrivals.push(delivered);
        }
    }
    while let Some(at) = link.next_arrival() {
        while let Some(delivered) = link.poll(at) {
            arrivals.push(delivered);
        }
    }
    let quiet = |t: Duration| t.as_millis() % 1500 >= 1000;
    simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(601),
        quiet,
    )
}

fn check_drift(run: &Run, ppm: f64) {
    let s = run.stats;
    // After the first minute, the delay stays within the jitter (40 ms
    // peak to peak) plus the adaptation margins, whatever the drift.
    let settled = &run.delays[6000..];
    let max = settled.iter().max().copied().unwrap_or_default();
    let min = settled.iter().min().copied().unwrap_or_default();
    assert!(
        max <= Duration::from_millis(70),
        "max delay {max:?} ({ppm} ppm): {s:?}"
    );
    assert!(
        min >= Duration::from_millis(20),
        "min delay {min:?} ({ppm} ppm): {s:?}"
    );
    // 200 ppm of 10 minutes is 120 ms, 12 frames to drop or insert.
    let net = s.dropped as i64 - s.inserted as i64;
    let expected = (ppm * 1e-6 * 60_000.0).round() as i64;
    assert!(
        (net - expected).abs() <= 4,
        "net drops {net}, expected {expected}: {s:?}"
    );
    // Adapting cost almost nothing: under 0.5 % of frames missed.
    assert!(s.lost < 300, "{s:?}");
    assert!(s.played + s.lost + s.dropped >= 59_900, "{s:?}");
}

#[test]
fn sender_clock_200_ppm_fast_keeps_the_delay_bounded() {
    let run = drift(200.0);
    check_drift(&run, 200.0);
}

#[test]
fn sender_clock_200_ppm_slow_keeps_the_delay_bounded() {
    let run = drift(-200.0);
    check_drift(&run, -200.0);
}

#[test]
fn jitter_and_random_loss_mostly_recovered() {
    let mut link = Link::new(LinkConfig {
        seed: 5,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(20),
        loss: tincan_netem::LossModel::Random { probability: 0.05 },
        capacity: 10_000,
        ..LinkConfig::default()
    });
    let mut arrivals = Vec::new();
    for i in 0..6000u32 {
        link.send(packet(i, i * FRAME), TICK * (i + 1));
    }
    while let Some(at) = link.next_arrival() {
        while let Some(delivered) = link.poll(at) {
            arrivals.push(delivered);
        }
    }
    let run = simulate(
        JitterConfig::default(),
        arrivals,
        Duration::from_secs(61),
        |_| false,
    );
    let s = run.stats;
    let link_lost = link.stats().lost;
    assert!(
        (s.lost as i64 - link_lost as i64).abs() <= 10,
        "{s:?} vs {link_lost} lost on the link"
    );
    // Isolated losses (most of them) are rebuilt from FEC.
    assert!(s.recovered_fec * 10 >= s.lost * 8, "{s:?}");
    assert!(s.late <= 30, "{s:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever arrives, in whatever order, with whatever bytes: no panic, and
    /// the books balance.
    #[test]
    fn never_panics_and_books_balance(
        events in prop::collection::vec(
            (any::<u16>(), any::<u16>(), prop::collection::vec(any::<u8>(), 0..8), 0u64..40, any::<bool>()),
            0..300,
        )
    ) {
        let mut jb = JitterBuffer::new(JitterConfig { capacity: 16, ..JitterConfig::default() });
        let mut now = Duration::ZERO;
        for (sequence, timestamp, payload, advance_ms, pop) in events {
            now += Duration::from_millis(advance_ms);
            let redundant = payload.len().is_multiple_of(2).then(|| payload.clone());
            jb.push(
                VoicePacket {
                    sequence: u32::from(sequence % 64),
                    timestamp: u32::from(timestamp % 64) * 480,
                    payload,
                    redundant,
                },
                now,
            );
            if pop {
                let _ = jb.pop(now);
            }
            prop_assert!(jb.len() <= 16);
        }
        let s = jb.stats();
        prop_assert_eq!(s.lost, s.recovered_fec + s.recovered_redundancy + s.concealed);
    }
}

#[test]
fn target_is_floored_at_one_frame_and_capped_by_the_config() {
    // No jitter at all: the target is one frame.
    let run = simulate(
        JitterConfig::default(),
        steady(500, Duration::from_millis(20)),
        Duration::from_secs(6),
        |_| false,
    );
    assert_eq!(
        run.stats.target_delay,
        Duration::from_millis(10),
        "{:?}",
        run.stats
    );
    assert_eq!(run.stats.lost, 0);

    // 300 ms of jitter against a 100 ms cap: the target stops at the cap and
    // the packets later than that are counted late, not waited for.
    let mut link = Link::new(LinkConfig {
        seed: 3,
        latency: Duration::from_millis(300),
        jitter: Duration::from_millis(300),
        capacity: 10_000,
        ..LinkConfig::default()
    });
    for i in 0..3000u32 {
        link.send(packet(i, i * FRAME), TICK * (i + 1));
    }
    let mut arrivals = Vec::new();
    while let Some(at) = link.next_arrival() {
        while let Some(delivered) = link.poll(at) {
            arrivals.push(delivered);
        }
    }
    let config = JitterConfig {
        max_delay: Duration::from_millis(100),
        ..JitterConfig::default()
    };
    let run = simulate(config, arrivals, Duration::from_secs(32), |_| false);
    let s = run.stats;
    assert_eq!(s.target_delay, Duration::from_millis(100), "{s:?}");
    assert!(
        run.delays[1000..]
            .iter()
            .all(|d| *d <= Duration::from_millis(130)),
        "{s:?}"
    );
    assert!(s.late > 1000, "{s:?}");
}
