//! The only code that runs inside a sound device's callback: moving samples
//! between the device's buffer and a lock-free single-producer
//! single-consumer ring (rtrb). It converts sample formats and mixes channels
//! down (capture) or spreads them (playback). It never allocates, locks or
//! blocks; `tests/callback_alloc.rs` proves the first with a counting
//! allocator.
//!
//! When the ring is full (capture) or empty (playback), the callback cannot
//! wait: it drops what does not fit, or plays silence, and counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cpal::{FromSample, Sample};

/// Counts of samples the callbacks could not move.
#[derive(Debug, Default)]
pub struct RingCounters {
    /// Capture: samples dropped because the ring was full (the engine fell
    /// behind).
    pub overruns: AtomicU64,
    /// Playback: samples of silence played because the ring was empty.
    pub underruns: AtomicU64,
    /// Callbacks run.
    pub callbacks: AtomicU64,
    /// Largest number of frames one callback asked for or brought: the
    /// engine keeps at least twice that queued for playback.
    pub largest_callback: AtomicU64,
}

/// The capture callback's end of a ring: takes interleaved device samples,
/// pushes mono f32.
#[derive(Debug)]
pub struct CaptureRingWriter {
    producer: rtrb::Producer<f32>,
    channels: usize,
    counters: Arc<RingCounters>,
}

/// The playback callback's end of a ring: pops mono f32, fills interleaved
/// device samples.
#[derive(Debug)]
pub struct PlaybackRingReader {
    consumer: rtrb::Consumer<f32>,
    channels: usize,
    counters: Arc<RingCounters>,
}

/// A capture ring of `capacity` mono samples for a device with `channels`
/// channels: the callback's writer, the engine's consumer, and the counters.
pub fn capture_ring(
    capacity: usize,
    channels: usize,
) -> (CaptureRingWriter, rtrb::Consumer<f32>, Arc<RingCounters>) {
    let (producer, consumer) = rtrb::RingBuffer::new(capacity.max(1));
    let counters = Arc::new(RingCounters::default());
    let writer = CaptureRingWriter {
        producer,
        channels: channels.max(1),
        counters: counters.clone(),
    };
    (writer, consumer, counters)
}

/// A playback ring of `capacity` mono samples for a device with `channels`
/// channels: the engine's producer, the callback's reader, and the counters.
pub fn playback_ring(
    capacity: usize,
    channels: usize,
) -> (rtrb::Producer<f32>, PlaybackRingReader, Arc<RingCounters>) {
    let (producer, consumer) = rtrb::RingBuffer::new(capacity.max(1));
    let counters = Arc::new(RingCounters::default());
    let reader = PlaybackRingReader {
        consumer,
        channels: channels.max(1),
        counters: counters.clone(),
    };
    (producer, reader, counters)
}

impl CaptureRingWriter {
    /// The body of the capture callback.
    pub fn on_input<T>(&mut self, data: &[T])
    where
        T: Sample,
        f32: FromSample<T>,
    {
        self.counters.callbacks.fetch_add(1, Ordering::Relaxed);
        let frames = data.len() / self.channels;
        self.counters
            .largest_callback
            .fetch_max(frames as u64, Ordering::Relaxed);
        let fits = frames.min(self.producer.slots());
        let scale = 1.0 / self.channels as f32;
        if let Ok(chunk) = self.producer.write_chunk_uninit(fits) {
            chunk.fill_from_iter(
                data.chunks_exact(self.channels)
                    .map(|frame| frame.iter().map(|s| f32::from_sample(*s)).sum::<f32>() * scale),
            );
        }
        if fits < frames {
            self.counters
                .overruns
                .fetch_add((frames - fits) as u64, Ordering::Relaxed);
        }
    }
}

impl PlaybackRingReader {
    /// The body of the playback callback.
    pub fn on_output<T>(&mut self, data: &mut [T])
    where
        T: Sample + FromSample<f32>,
    {
        self.counters.callbacks.fetch_add(1, Ordering::Relaxed);
        let frames = data.len() / self.channels;
        self.counters
            .largest_callback
            .fetch_max(frames as u64, Ordering::Relaxed);
        let available = frames.min(self.consumer.slots());
        let mut played = 0;
        if let Ok(chunk) = self.consumer.read_chunk(available) {
            for (frame, value) in data.chunks_exact_mut(self.channels).zip(chunk) {
                let sample = T::from_sample(value);
                frame.fill(sample);
                played += 1;
            }
        }
        for frame in data.chunks_exact_mut(self.channels).skip(played) {
            frame.fill(T::EQUILIBRIUM);
        }
        if played < frames {
            self.counters
                .underruns
                .fetch_add((frames - played) as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_mixes_down_and_counts_overruns() {
        let (mut writer, mut consumer, counters) = capture_ring(3, 2);
        writer.on_input(&[0.5f32, 0.1, -0.2, -0.4, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(consumer.pop(), Ok(0.3));
        assert!((consumer.pop().unwrap() + 0.3).abs() < 1e-6);
        assert_eq!(consumer.pop(), Ok(1.0));
        assert!(consumer.pop().is_err());
        assert_eq!(counters.overruns.load(Ordering::Relaxed), 1);
        writer.on_input(&[i16::MIN, i16::MIN]);
        assert_eq!(consumer.pop(), Ok(-1.0));
    }

    #[test]
    fn playback_spreads_channels_and_pads_with_silence() {
        let (mut producer, mut reader, counters) = playback_ring(8, 2);
        producer.push(0.5).unwrap();
        producer.push(-1.0).unwrap();
        let mut out = [7i16; 6];
        reader.on_output(&mut out);
        assert_eq!(out, [16384, 16384, -32768, -32768, 0, 0]);
        assert_eq!(counters.underruns.load(Ordering::Relaxed), 1);
    }
}
