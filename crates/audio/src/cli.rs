//! The `tincan audio ...` subcommands, for `node/` to mount (feature `cli`):
//! `devices` lists sound devices; `test` runs the offline chain and prints the
//! delay and concealment figures.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::capture::GateMode;
use crate::codec::{Bandwidth, FrameDuration, Redundancy};
use crate::offline::OfflineConfig;
use tincan_netem::LossModel;

/// `tincan audio ...`
#[derive(Debug, clap::Subcommand)]
pub enum AudioCommand {
    /// List the sound devices (capture and playback) of this machine.
    Devices,
    /// Run the whole chain offline: capture from a WAV file, encode, a
    /// simulated lossy and jittery link, jitter buffer, decode, mix, and write
    /// what the listener hears to a WAV file. Prints delay and concealment
    /// figures.
    Test(TestArgs),
}

/// Options of `tincan audio test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The WAV file to speak (any PCM WAV; converted to 48 kHz mono).
    #[arg(long = "in", value_name = "WAV")]
    pub input: PathBuf,
    /// Where to write what the listener hears (48 kHz mono 16-bit WAV).
    #[arg(long = "out", value_name = "WAV")]
    pub output: PathBuf,
    /// Packet loss on the link, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Make the loss come in bursts of this many packets on average
    /// (Gilbert-Elliott) instead of independently.
    #[arg(long, value_name = "PACKETS")]
    pub burst: Option<f64>,
    /// Jitter: each packet's delay is uniform in latency +- jitter (as netem).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub jitter: Duration,
    /// One-way latency of the link.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Frame duration: 10ms or 20ms.
    #[arg(long, default_value = "10ms", value_parser = parse_frame)]
    pub frame: FrameDuration,
    /// Opus bitrate in kbit/s (8 to 128).
    #[arg(long, default_value_t = 32)]
    pub bitrate: u32,
    /// Opus complexity (0 to 10).
    #[arg(long, default_value_t = 5)]
    pub complexity: u8,
    /// Widest band sent: nb, mb, wb, swb or fb.
    #[arg(long, default_value = "fb", value_parser = parse_bandwidth)]
    pub bandwidth: Bandwidth,
    /// Keep the full band under loss (by default the encoder narrows to
    /// wideband while loss is reported, where libopus has room for FEC).
    #[arg(long)]
    pub keep_band_under_loss: bool,
    /// Redundancy (each packet repeats the previous frame): off, always, or
    /// the loss in percent from which it turns on.
    #[arg(long, default_value = "2", value_parser = parse_redundancy)]
    pub redundancy: Redundancy,
    /// Turn in-band FEC off.
    #[arg(long)]
    pub no_fec: bool,
    /// Turn DTX on.
    #[arg(long)]
    pub dtx: bool,
    /// Gate the microphone by voice activity (default: open microphone).
    #[arg(long)]
    pub vad: bool,
    /// Suppress noise before encoding.
    #[arg(long)]
    pub denoise: bool,
    /// Cap of the jitter buffer's target delay.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub max_delay: Duration,
    /// Seed of the link's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Parses "20ms", "1.5s", "250us" or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1e-3)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 20ms or 0.5s"))?;
    if !value.is_finite() || value < 0.0 || value * scale > 3600.0 {
        return Err(format!("{text:?} is not a duration between 0 and an hour"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn parse_bandwidth(text: &str) -> Result<Bandwidth, String> {
    match text {
        "nb" => Ok(Bandwidth::Narrowband),
        "mb" => Ok(Bandwidth::Mediumband),
        "wb" => Ok(Bandwidth::Wideband),
        "swb" => Ok(Bandwidth::Superwideband),
        "fb" => Ok(Bandwidth::Fullband),
        other => Err(format!("{other:?} is not one of nb, mb, wb, swb, fb")),
    }
}

fn parse_redundancy(text: &str) -> Result<Redundancy, String> {
    match text {
        "off" => Ok(Redundancy::Off),
        "always" => Ok(Redundancy::Always),
        percent => percent
            .parse()
            .map(|min_loss_percent| Redundancy::UnderLoss { min_loss_percent })
            .map_err(|_| format!("{percent:?} is not off, always or a loss percentage")),
    }
}

fn parse_frame(text: &str) -> Result<FrameDuration, String> {
    let d = parse_duration(text)?;
    FrameDuration::from_millis(d.as_millis() as u64)
        .filter(|f| f.duration() == d)
        .ok_or_else(|| format!("frames are 10ms or 20ms, not {text}"))
}

impl TestArgs {
    /// The offline chain configuration these options describe.
    pub fn to_config(&self) -> anyhow::Result<OfflineConfig> {
        anyhow::ensure!(
            (0.0..=100.0).contains(&self.loss),
            "--loss is a percentage between 0 and 100"
        );
        let mut config = OfflineConfig::new(&self.input, &self.output);
        config.encoder.frame = self.frame;
        config.encoder.bitrate_bps = self.bitrate.saturating_mul(1000);
        config.encoder.complexity = self.complexity;
        config.encoder.fec = !self.no_fec;
        config.encoder.dtx = self.dtx;
        config.encoder.max_bandwidth = self.bandwidth;
        config.encoder.redundancy = self.redundancy;
        if self.keep_band_under_loss {
            config.encoder.max_bandwidth_under_loss = None;
        }
        config.capture.denoise = self.denoise;
        if self.vad {
            config.capture.gate = GateMode::VoiceActivity;
        }
        config.link.seed = self.seed;
        config.link.latency = self.latency;
        config.link.jitter = self.jitter;
        config.link.loss = match (self.loss, self.burst) {
            (0.0, _) => LossModel::None,
            (loss, Some(burst)) => LossModel::bursty(loss / 100.0, burst),
            (loss, None) => LossModel::Random {
                probability: loss / 100.0,
            },
        };
        config.jitter.max_delay = self.max_delay;
        Ok(config)
    }
}

/// Runs a `tincan audio ...` command, printing to standard output.
pub fn run(command: AudioCommand) -> anyhow::Result<()> {
    match command {
        AudioCommand::Devices => {
            let devices = crate::device::list_devices().context("listing sound devices")?;
            if devices.is_empty() {
                println!(
                    "No sound devices found: this machine has no sound card (or no sound server).\n\
                     tincan can still run with WAV files or the null device."
                );
            }
            for device in devices {
                println!("{device}");
            }
            Ok(())
        }
        AudioCommand::Test(args) => {
            let config = args.to_config()?;
            let report = crate::offline::run(&config).with_context(|| {
                format!("running the offline chain on {}", args.input.display())
            })?;
            println!("{report}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_millis(7)));
        assert!(parse_duration("-1ms").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_frame("20ms"), Ok(FrameDuration::Ms20));
        assert!(parse_frame("15ms").is_err());
    }
}
