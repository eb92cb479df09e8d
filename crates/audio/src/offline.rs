//! The whole chain, offline and faster than real time: a WAV file is captured,
//! gated, encoded, sent over an emulated lossy and jittery link
//! (`tincan-netem`), received by a jitter buffer, decoded with FEC and
//! concealment, mixed, and written to a WAV file, all on a virtual clock.
//! `tincan audio test` runs it; the PESQ script measures its output.
//!
//! Every run with the same configuration (seed included) gives the same output,
//! sample for sample.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::capture::{CaptureChain, CaptureConfig, GateMode};
use crate::codec::{Encoder, EncoderConfig, VoicePacket};
use crate::error::OfflineError;
use crate::jitter::{JitterConfig, JitterStats};
use crate::receive::{LossReporter, ReceiveConfig, Receiver, WaitStats};
use crate::wav::{WavWriter, read_mono_48k};
use crate::{SAMPLE_RATE, TICK_SAMPLES};
use tincan_netem::{Link, LinkConfig, LinkStats, LossModel};

/// What the offline chain does.
#[derive(Clone, Debug, PartialEq)]
pub struct OfflineConfig {
    /// The WAV file to "speak" (any PCM WAV; converted to 48 kHz mono).
    pub input: PathBuf,
    /// Where to write what the listener hears (48 kHz mono 16-bit).
    pub output: PathBuf,
    /// The speaker's encoder.
    pub encoder: EncoderConfig,
    /// The speaker's capture path. Defaults to an open microphone.
    pub capture: CaptureConfig,
    /// The link between speaker and listener (its seed makes the run
    /// repeatable).
    pub link: LinkConfig,
    /// The listener's jitter buffer.
    pub jitter: JitterConfig,
    /// Whether the listener reports its loss each second (over the last five
    /// seconds) and the speaker sets its encoder's expected loss from it, as
    /// the voice plane will.
    pub loss_feedback: bool,
    /// How much faster the speaker's clock runs than the listener's, in parts
    /// per million (negative: slower).
    pub sender_clock_ppm: f64,
}

impl OfflineConfig {
    /// Defaults: 10 ms frames at 32 kbps with FEC, an open microphone, a link
    /// of 20 ms without jitter or loss, loss feedback on.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        OfflineConfig {
            input: input.into(),
            output: output.into(),
            encoder: EncoderConfig::default(),
            capture: CaptureConfig {
                gate: GateMode::AlwaysOn,
                ..CaptureConfig::default()
            },
            link: LinkConfig::default(),
            jitter: JitterConfig::default(),
            loss_feedback: true,
            sender_clock_ppm: 0.0,
        }
    }
}

/// What happened in a run, with the delay and concealment figures.
#[derive(Clone, Debug, PartialEq)]
pub struct OfflineReport {
    /// The output file.
    pub output: PathBuf,
    /// Length of the input, in seconds.
    pub input_seconds: f64,
    /// Samples written to the output.
    pub output_samples: u64,
    /// The encoder settings used.
    pub encoder: EncoderConfig,
    /// The link settings used.
    pub link: LinkConfig,
    /// Frames captured.
    pub frames_captured: u64,
    /// Packets sent (captured frames the gate and DTX let through).
    pub packets_sent: u64,
    /// What the link did.
    pub link_stats: LinkStats,
    /// The jitter buffer's counters at the end.
    pub jitter: JitterStats,
    /// How long played frames waited in the buffer.
    pub waits: WaitStats,
    /// The jitter buffer's delay over the fastest path, averaged over the
    /// ticks while playing: the delay it adds to the best the link can do.
    pub mean_buffer_delay: Duration,
    /// The 95th percentile of the same.
    pub p95_buffer_delay: Duration,
    /// The target delay, averaged over the same ticks.
    pub mean_target_delay: Duration,
    /// The encoder's algorithmic delay: one frame plus its lookahead.
    pub codec_delay: Duration,
}

impl OfflineReport {
    /// Lost frames as a share of those due, before FEC, 0.0 to 1.0.
    pub fn loss_fraction(&self) -> f64 {
        self.jitter.loss_fraction()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for OfflineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let j = &self.jitter;
        let l = &self.link;
        let loss = match l.loss {
            LossModel::None => "no loss".to_string(),
            LossModel::Random { probability } => format!("{:.1}% random loss", probability * 100.0),
            LossModel::GilbertElliott { .. } => "bursty loss".to_string(),
        };
        writeln!(
            f,
            "input: {:.2} s; {} ms frames, {} kbps, FEC {}, DTX {}, redundancy {:?}",
            self.input_seconds,
            self.encoder.frame.duration().as_millis(),
            self.encoder.bitrate_bps / 1000,
            if self.encoder.fec { "on" } else { "off" },
            if self.encoder.dtx { "on" } else { "off" },
            self.encoder.redundancy,
        )?;
        writeln!(
            f,
            "link: {:.0} ms +- {:.0} ms, {loss}, seed {}: {} packets sent, {} lost on the link, {} duplicated",
            ms(l.latency),
            ms(l.jitter),
            l.seed,
            self.packets_sent,
            self.link_stats.lost,
            self.link_stats.duplicated,
        )?;
        writeln!(
            f,
            "delay: jitter buffer {:.1} ms mean, {:.1} ms p95 over the fastest path (target {:.1} ms mean); \
             frames waited {:.1} ms on average; codec {:.1} ms",
            ms(self.mean_buffer_delay),
            ms(self.p95_buffer_delay),
            ms(self.mean_target_delay),
            ms(self.waits.mean()),
            ms(self.codec_delay),
        )?;
        writeln!(
            f,
            "frames: {} played, {} lost ({:.1}%): {} recovered by redundancy, {} recovered by FEC, \
             {} concealed; {} late, {} duplicate, {} silent; {} inserted, {} dropped to adapt the delay",
            j.played,
            j.lost,
            j.loss_fraction() * 100.0,
            j.recovered_redundancy,
            j.recovered_fec,
            j.concealed,
            j.late,
            j.duplicate,
            j.silent,
            j.inserted,
            j.dropped,
        )?;
        write!(
            f,
            "output: {} ({:.2} s)",
            self.output.display(),
            self.output_samples as f64 / f64::from(SAMPLE_RATE)
        )
    }
}

/// Seconds of loss each report covers.
const LOSS_REPORT_SECONDS: usize = 5;

fn sample_time(samples: u64) -> Duration {
    Duration::from_micros(samples * 1_000_000 / u64::from(SAMPLE_RATE))
}

/// Runs the chain on `input` samples (48 kHz mono) and returns what the
/// listener hears with the report. [`run`] is this with WAV files.
pub fn run_samples(
    config: &OfflineConfig,
    input: &[f32],
) -> Result<(Vec<f32>, OfflineReport), OfflineError> {
    if !config.sender_clock_ppm.is_finite() || config.sender_clock_ppm.abs() > 10_000.0 {
        return Err(OfflineError::InvalidSetting {
            setting: "sender_clock_ppm",
            reason: "must be within -10000..=10000".into(),
        });
    }
    let mut encoder = Encoder::new(config.encoder.clone())?;
    let codec_delay = sample_time((encoder.frame_samples() + encoder.lookahead_samples()) as u64);
    let mut capture = CaptureChain::new(config.capture.clone());
    let mut link: Link<VoicePacket> = Link::new(config.link.clone());
    let mut receiver: Receiver<u32> = Receiver::new(ReceiveConfig {
        jitter: config.jitter.clone(),
        ..ReceiveConfig::default()
    });
    const SPEAKER: u32 = 0;

    let frame_samples = encoder.frame_samples();
    let frame_count = input.len().div_ceil(frame_samples);
    let speaker_rate = 1.0 + config.sender_clock_ppm * 1e-6;
    // Frame k is captured by the end of its samples, on the speaker's clock.
    let send_time = |k: usize| {
        Duration::from_secs_f64(((k + 1) * frame_samples) as f64 / 48_000.0 / speaker_rate)
    };
    let drain = config.jitter.max_delay
        + config.link.latency
        + config.link.jitter
        + config.link.reorder_delay
        + Duration::from_millis(200);
    let end = send_time(frame_count.saturating_sub(1)) + drain;

    let mut output = Vec::with_capacity((end.as_secs_f64() * 48_000.0) as usize + TICK_SAMPLES);
    let mut frame = vec![0.0f32; frame_samples];
    let mut tick = vec![0.0f32; TICK_SAMPLES];
    let mut next_frame = 0usize;
    let mut packets_sent = 0u64;
    let mut delays = Vec::new();
    let mut target_sum = Duration::ZERO;
    // One second alone is too few frames to tell 2% from 5%.
    let mut reporter = LossReporter::new(Duration::from_secs(1), LOSS_REPORT_SECONDS);

    let mut now = Duration::ZERO;
    while now <= end {
        while next_frame < frame_count && send_time(next_frame) <= now {
            let start = next_frame * frame_samples;
            let available = input.len().saturating_sub(start).min(frame_samples);
            frame[..available].copy_from_slice(&input[start..start + available]);
            frame[available..].fill(0.0);
            if capture.process(&mut frame) {
                if let Some(packet) = encoder.encode(&frame)? {
                    link.send(packet, send_time(next_frame));
                    packets_sent += 1;
                }
            } else {
                encoder.skip_frame();
            }
            next_frame += 1;
        }
        while let Some((packet, arrived_at)) = link.poll(now) {
            receiver.push(&SPEAKER, packet, arrived_at)?;
        }
        receiver.mix(now, &mut tick);
        output.extend_from_slice(&tick);

        if let Some(pipeline) = receiver.speaker(&SPEAKER) {
            let stats = pipeline.stats();
            if stats.played > 0 {
                delays.push(stats.current_delay);
                target_sum += stats.target_delay;
            }
            if config.loss_feedback
                && let Some(percent) = reporter.update(stats, now)
            {
                encoder.set_expected_loss(percent)?;
            }
        }
        now += Duration::from_millis(10);
    }

    let (jitter, waits) = receiver
        .speaker(&SPEAKER)
        .map(|p| (p.stats(), p.waits()))
        .unwrap_or_default();
    let playing_ticks = delays.len().max(1);
    let mean_buffer_delay = delays.iter().sum::<Duration>() / playing_ticks as u32;
    delays.sort_unstable();
    let p95_buffer_delay = delays
        .get((delays.len() as f64 * 0.95) as usize)
        .or(delays.last())
        .copied()
        .unwrap_or_default();
    let report = OfflineReport {
        output: config.output.clone(),
        input_seconds: input.len() as f64 / f64::from(SAMPLE_RATE),
        output_samples: output.len() as u64,
        encoder: config.encoder.clone(),
        link: config.link.clone(),
        frames_captured: frame_count as u64,
        packets_sent,
        link_stats: link.stats(),
        jitter,
        waits,
        mean_buffer_delay,
        p95_buffer_delay,
        mean_target_delay: target_sum / playing_ticks as u32,
        codec_delay,
    };
    Ok((output, report))
}

/// Runs the chain from `config.input` to `config.output` and reports.
pub fn run(config: &OfflineConfig) -> Result<OfflineReport, OfflineError> {
    let input = read_mono_48k(&config.input)?;
    let (output, report) = run_samples(config, &input)?;
    write_wav(&config.output, &output)?;
    Ok(report)
}

fn write_wav(path: &Path, samples: &[f32]) -> Result<(), OfflineError> {
    let mut writer = WavWriter::create(path)?;
    writer.write(samples)?;
    writer.finish()?;
    Ok(())
}
