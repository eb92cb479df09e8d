//! The relay's forwarding logic: datagram copies decided per second on one
//! core, for N senders and M listeners in one group. Each (datagram,
//! recipient) pair counts as one forwarded datagram, so a frame from one of
//! the N senders counts N + M - 1. This measures `Relay::on_datagram` alone
//! (header check, rate buckets, fan-out list), not sockets, QUIC or crypto.
//!
//!     cargo bench -p tincan-media --bench relay
//!
//! The figure is criterion's "thrpt" line, in forwarded datagrams a second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tincan_media::{ConnId, Forward, GroupKey, Relay, RelayConfig, VoiceDatagram};

/// An 80-byte sealed datagram: the 13-byte header, then 67 bytes the relay
/// never reads (a key id, 58 bytes of sealed Opus, the 8-byte tag).
const DATAGRAM_LEN: usize = 80;

/// Frames each sender sends per iteration, so one iteration is a round of
/// talk from every sender.
const FRAMES_PER_SENDER: u32 = 10;

/// A sender and the encoded frames it sends, in order.
type Stream = (ConnId, Vec<Vec<u8>>);

fn setup(senders: u64, listeners: u64) -> (Relay, Vec<Stream>) {
    let mut relay = Relay::new(RelayConfig {
        max_groups: 1,
        max_members: (senders + listeners) as usize,
        // Caps far above what the benchmark sends, so nothing is dropped and
        // every frame pays for the bucket arithmetic.
        datagrams_per_second: u64::MAX / 4_000_000,
        datagram_burst: u64::MAX / 4_000_000,
        bytes_per_second: u64::MAX / 4_000_000,
        byte_burst: u64::MAX / 4_000_000,
        sealed_only: true,
    });
    let group = GroupKey([7; 16]);
    let mut streams = Vec::new();
    for c in 0..senders + listeners {
        let speaker = relay.join(ConnId(c), group).expect("the group has room");
        if c < senders {
            let frames = (0..FRAMES_PER_SENDER)
                .map(|sequence| {
                    let mut bytes = VoiceDatagram {
                        speaker,
                        sequence,
                        timestamp: sequence * 480,
                        payload: vec![0x5a; DATAGRAM_LEN - tincan_media::protocol::HEADER_LEN],
                        ..VoiceDatagram::default()
                    }
                    .encode()
                    .expect("an 80-byte frame fits");
                    // What the relay forwards: a sealed frame's header
                    // (version 2) before bytes it cannot read.
                    bytes[0] = tincan_media::protocol::SEALED_VERSION;
                    bytes
                })
                .collect();
            streams.push((ConnId(c), frames));
        }
    }
    (relay, streams)
}

fn relay_fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_forward");
    for (senders, listeners) in [(1, 4), (4, 4), (4, 16), (8, 56)] {
        let (mut relay, streams) = setup(senders, listeners);
        let copies_per_iter = senders * u64::from(FRAMES_PER_SENDER) * (senders + listeners - 1);
        group.throughput(Throughput::Elements(copies_per_iter));
        let mut now = 0u64;
        let before = relay.stats().forwarded;
        group.bench_function(format!("{senders}x{listeners}"), |b| {
            b.iter(|| {
                for frame in 0..FRAMES_PER_SENDER as usize {
                    now += 10_000;
                    for (conn, frames) in &streams {
                        match relay.on_datagram(*conn, black_box(&frames[frame]), now) {
                            Forward::To(to) => {
                                for r in to {
                                    black_box(r);
                                }
                            }
                            Forward::Drop(reason) => panic!("benchmark frame dropped: {reason:?}"),
                        }
                    }
                }
            })
        });
        let stats = relay.stats();
        assert_eq!(
            stats.received * (senders + listeners - 1),
            stats.forwarded - before
        );
    }
    group.finish();
}

criterion_group!(benches, relay_fan_out);
criterion_main!(benches);
