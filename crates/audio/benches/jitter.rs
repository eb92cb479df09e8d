//! The jitter buffer: first the delay it adds (a figure, from a seeded
//! simulation), then its cost per frame (criterion).
//!
//!     cargo bench -p tincan-audio --bench jitter
//!
//! The delay figure: 60 s of 10 ms frames over a link of 30 ms +- 20 ms
//! (uniform, as netem's `delay 30ms 20ms`), at 0% and 5% random loss, three
//! seeds each, speech 1 s on and 0.5 s off. "Added delay" is how far behind
//! the fastest packet the playout runs (the buffer's share of mouth-to-ear
//! delay); "wait" is how long played packets sat in the buffer.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use tincan_audio::codec::VoicePacket;
use tincan_audio::jitter::{JitterBuffer, JitterConfig, Playout};
use tincan_netem::{Link, LinkConfig, LossModel};

fn packet(sequence: u32) -> VoicePacket {
    VoicePacket {
        sequence,
        timestamp: sequence * 480,
        payload: vec![8 << 3, sequence as u8],
        redundant: None,
    }
}

struct Figures {
    mean_delay: Duration,
    p95_delay: Duration,
    mean_wait: Duration,
    lost: u64,
    recovered: u64,
    late: u64,
    frames: u64,
}

fn simulate(loss: f64, seed: u64) -> Figures {
    let mut link = Link::new(LinkConfig {
        seed,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(20),
        loss: if loss > 0.0 {
            LossModel::Random { probability: loss }
        } else {
            LossModel::None
        },
        capacity: 100_000,
        ..LinkConfig::default()
    });
    let frames = 6000u32;
    for i in 0..frames {
        link.send(packet(i), Duration::from_millis(u64::from(i + 1) * 10));
    }
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut delays = Vec::new();
    let (mut wait_total, mut waits) = (Duration::ZERO, 0u32);
    let mut now = Duration::ZERO;
    while now < Duration::from_secs(61) {
        while let Some((p, at)) = link.poll(now) {
            jb.push(p, at);
        }
        if let Playout::Frame(f) = jb.pop(now) {
            wait_total += now - f.arrived_at;
            waits += 1;
        }
        let stats = jb.stats();
        // Skip the first 5 s while the buffer learns the jitter.
        if now > Duration::from_secs(5) && stats.played > 0 {
            delays.push(stats.current_delay);
        }
        jb.set_quiet(now.as_millis() % 1500 >= 1000);
        now += Duration::from_millis(10);
    }
    delays.sort_unstable();
    let s = jb.stats();
    Figures {
        mean_delay: delays.iter().sum::<Duration>() / delays.len().max(1) as u32,
        p95_delay: delays[delays.len() * 95 / 100],
        mean_wait: wait_total / waits.max(1),
        lost: s.lost,
        recovered: s.recovered_fec,
        late: s.late,
        frames: u64::from(frames),
    }
}

fn print_delay_figures() {
    println!("jitter buffer added delay, link 30 ms +- 20 ms, 10 ms frames, 60 s x 3 seeds:");
    for loss in [0.0, 0.05] {
        for seed in 1..=3 {
            let f = simulate(loss, seed);
            println!(
                "  loss {:>2.0}% seed {seed}: added delay mean {:5.1} ms, p95 {:5.1} ms; wait mean {:5.1} ms; \
                 lost {:3} of {} (FEC {:3}), late {}",
                loss * 100.0,
                f.mean_delay.as_secs_f64() * 1000.0,
                f.p95_delay.as_secs_f64() * 1000.0,
                f.mean_wait.as_secs_f64() * 1000.0,
                f.lost,
                f.frames,
                f.recovered,
                f.late,
            );
        }
    }
}

fn bench_push_pop(c: &mut Criterion) {
    let mut link = Link::new(LinkConfig {
        seed: 1,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(20),
        loss: LossModel::Random { probability: 0.05 },
        capacity: 100_000,
        ..LinkConfig::default()
    });
    let frames = 6000u32;
    for i in 0..frames {
        link.send(packet(i), Duration::from_millis(u64::from(i + 1) * 10));
    }
    let mut arrivals = Vec::new();
    while let Some(at) = link.next_arrival() {
        while let Some(d) = link.poll(at) {
            arrivals.push(d);
        }
    }
    c.bench_function(
        "jitter buffer: 60 s of 10 ms frames, push + pop (5% loss, 20 ms jitter)",
        |b| {
            b.iter(|| {
                let mut jb = JitterBuffer::new(JitterConfig::default());
                let mut next = 0;
                let mut now = Duration::ZERO;
                while now < Duration::from_secs(61) {
                    while next < arrivals.len() && arrivals[next].1 <= now {
                        jb.push(arrivals[next].0.clone(), arrivals[next].1);
                        next += 1;
                    }
                    black_box(jb.pop(now));
                    now += Duration::from_millis(10);
                }
                jb.stats()
            })
        },
    );
}

fn main() {
    print_delay_figures();
    let mut c = Criterion::default().configure_from_args().sample_size(20);
    bench_push_pop(&mut c);
    c.final_summary();
}
