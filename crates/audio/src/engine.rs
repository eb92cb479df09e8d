//! The real-time voice engine: one thread that moves sound between the
//! devices and the network side.
//!
//! Each turn it takes what the input device captured, gates it (mute,
//! push-to-talk, voice activity), encodes whole frames and hands the packets
//! to the network side through a small bounded queue (full: the packet is
//! dropped and counted, never waited for); it takes the packets the network
//! side received, with their arrival times, into the [`Receiver`]'s jitter
//! buffers; and it mixes 10 ms at a time into the output device whenever the
//! device can take them. The device callbacks themselves never meet this
//! thread except through their lock-free rings (see [`crate::device`]).
//!
//! The engine knows nothing of the network: `K` names a speaker (the voice
//! plane uses the user id).

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::TICK_SAMPLES;
use crate::capture::{CaptureChain, CaptureConfig, PushToTalk};
use crate::codec::{Encoder, EncoderConfig, VoicePacket};
use crate::device::{DeviceSpec, open_input, open_output};
use crate::error::{DeviceError, EncoderError};
use crate::mixer::SpeakerLevel;
use crate::receive::{ReceiveConfig, Receiver};

/// Packets received and waiting for the engine; past it they are dropped.
const INCOMING_QUEUE: usize = 512;
/// Encoded packets waiting for the network side; past it they are dropped:
/// a frame that cannot leave now is stale by the time it could.
const OUTGOING_QUEUE: usize = 8;
/// Commands waiting for the engine.
const COMMAND_QUEUE: usize = 64;
/// How long the engine sleeps when there is nothing to do. Small against a
/// 10 ms frame, so it adds at most this to the latency.
const IDLE_SLEEP: Duration = Duration::from_millis(1);
/// Speakers whose levels are tracked at most (the receiver decodes 64).
const MAX_TRACKED_SPEAKERS: usize = 256;
/// How often speaker levels are published for indicators.
const LEVELS_EVERY: Duration = Duration::from_millis(50);

/// The engine's settings.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// The microphone.
    pub input: DeviceSpec,
    /// The speaker.
    pub output: DeviceSpec,
    /// Opus settings.
    pub encoder: EncoderConfig,
    /// Denoise, gate.
    pub capture: CaptureConfig,
    /// Jitter buffers and mixer.
    pub receive: ReceiveConfig,
}

/// The engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A device could not be opened.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The encoder refused its settings.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// The thread could not be started.
    #[error("cannot start the audio thread: {0}")]
    Thread(#[from] std::io::Error),
}

enum Command<K> {
    Muted(bool),
    Deafened(bool),
    Volume(K, f32),
    ExpectedLoss(u8),
    Bitrate(u32),
    Stop,
}

/// Counters and state the engine shares with the rest of the node.
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Frames encoded and handed to the network side.
    pub frames_sent: AtomicU64,
    /// Frames dropped because the network side's queue was full.
    pub frames_dropped: AtomicU64,
    /// Received packets dropped because the engine's queue was full.
    pub packets_dropped: AtomicU64,
    /// Whether our own microphone carries voice now (for our indicator).
    pub self_speaking: AtomicBool,
    /// Wall clock (microseconds since the Unix epoch) when the input gave
    /// its first sample; 0 before. With a WAV input, sample `n` of the file
    /// was "spoken" at this time plus `n / 48 kHz`.
    pub input_started_us: AtomicU64,
    /// Wall clock when the output took its first sample; 0 before. With a
    /// WAV output, sample `n` of the file was "played" at this time plus
    /// `n / 48 kHz`.
    pub output_started_us: AtomicU64,
}

/// A running engine. Dropping it stops the thread and completes the output
/// (a WAV file gets its final header).
pub struct Engine<K> {
    commands: mpsc::SyncSender<Command<K>>,
    incoming: mpsc::SyncSender<(K, VoicePacket, Instant)>,
    push_to_talk: PushToTalk,
    counters: Arc<EngineCounters>,
    levels: Arc<Mutex<Vec<(K, SpeakerLevel)>>>,
    thread: Option<JoinHandle<()>>,
}

impl<K> std::fmt::Debug for Engine<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Where encoded packets come out: the network side reads them here.
pub type PacketSource = tokio::sync::mpsc::Receiver<VoicePacket>;

impl<K: Eq + Hash + Clone + Send + 'static> Engine<K> {
    /// Opens the devices and starts the engine thread. Returns the engine
    /// and the queue of packets to send.
    pub fn start(config: EngineConfig) -> Result<(Self, PacketSource), EngineError> {
        let input = open_input(&config.input)?;
        let output = open_output(&config.output)?;
        let encoder = Encoder::new(config.encoder.clone())?;
        let capture = CaptureChain::new(config.capture.clone());
        let push_to_talk = capture.push_to_talk();
        let receiver = Receiver::new(config.receive.clone());
        let (commands, command_rx) = mpsc::sync_channel(COMMAND_QUEUE);
        let (incoming, incoming_rx) = mpsc::sync_channel(INCOMING_QUEUE);
        let (outgoing, outgoing_rx) = tokio::sync::mpsc::channel(OUTGOING_QUEUE);
        let counters = Arc::new(EngineCounters::default());
        let levels = Arc::new(Mutex::new(Vec::new()));
        let run = Run {
            input,
            output,
            encoder,
            capture,
            receiver,
            commands: command_rx,
            incoming: incoming_rx,
            outgoing,
            counters: counters.clone(),
            levels: levels.clone(),
            muted: false,
            speakers: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tincan-audio".into())
            .spawn(move || run.run())?;
        Ok((
            Engine {
                commands,
                incoming,
                push_to_talk,
                counters,
                levels,
                thread: Some(thread),
            },
            outgoing_rx,
        ))
    }

    /// Hands over a packet from `speaker` that arrived at `arrived_at`.
    /// Never blocks: if the engine is that far behind, the packet is
    /// dropped and counted.
    pub fn push(&self, speaker: K, packet: VoicePacket, arrived_at: Instant) {
        if self
            .incoming
            .try_send((speaker, packet, arrived_at))
            .is_err()
        {
            self.counters
                .packets_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn command(&self, command: Command<K>) {
        // The queue only fills if the engine thread is gone or stuck; a
        // setting lost then does not matter.
        let _ = self.commands.try_send(command);
    }

    /// Mutes or unmutes our microphone (nothing is sent while muted).
    pub fn set_muted(&self, muted: bool) {
        self.command(Command::Muted(muted));
    }

    /// Deafens (nothing is played) or undeafens.
    pub fn set_deafened(&self, deafened: bool) {
        self.command(Command::Deafened(deafened));
    }

    /// The push-to-talk key (only gates in push-to-talk mode).
    pub fn push_to_talk(&self) -> &PushToTalk {
        &self.push_to_talk
    }

    /// Sets a speaker's volume (1.0 as is, 0.0 silent, up to 4.0).
    pub fn set_volume(&self, speaker: K, gain: f32) {
        self.command(Command::Volume(speaker, gain));
    }

    /// Tells the encoder the loss its receivers see (percent), for FEC and
    /// redundancy.
    pub fn set_expected_loss(&self, percent: u8) {
        self.command(Command::ExpectedLoss(percent));
    }

    /// Changes the encoder's bitrate.
    pub fn set_bitrate(&self, bitrate_bps: u32) {
        self.command(Command::Bitrate(bitrate_bps));
    }

    /// Counters and start times.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Each remote speaker's level, as of the last 50 ms.
    pub fn levels(&self) -> Vec<(K, SpeakerLevel)> {
        self.levels.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl<K> Drop for Engine<K> {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Run<K> {
    input: Box<dyn crate::device::AudioInput>,
    output: Box<dyn crate::device::AudioOutput>,
    encoder: Encoder,
    capture: CaptureChain,
    receiver: Receiver<K>,
    commands: mpsc::Receiver<Command<K>>,
    incoming: mpsc::Receiver<(K, VoicePacket, Instant)>,
    outgoing: tokio::sync::mpsc::Sender<VoicePacket>,
    counters: Arc<EngineCounters>,
    levels: Arc<Mutex<Vec<(K, SpeakerLevel)>>>,
    muted: bool,
    speakers: Vec<K>,
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl<K: Eq + Hash + Clone> Run<K> {
    fn run(mut self) {
        let start = Instant::now();
        let frame_len = self.encoder.frame_samples();
        let mut frame = vec![0.0f32; frame_len];
        let mut filled = 0usize;
        let mut tick = vec![0.0f32; TICK_SAMPLES];
        let mut last_levels = start;
        loop {
            if !self.on_commands() {
                break;
            }
            let mut busy = false;
            // Capture: whole frames only.
            loop {
                if self.counters.input_started_us.load(Ordering::Relaxed) == 0 {
                    self.counters
                        .input_started_us
                        .store(wall_us(), Ordering::Relaxed);
                }
                let n = match self.input.read(&mut frame[filled..]) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!("the microphone failed: {e}; voice goes on without it");
                        0
                    }
                };
                filled += n;
                if filled < frame_len {
                    break;
                }
                filled = 0;
                busy = true;
                self.on_frame(&mut frame);
            }
            // Receive.
            while let Ok((speaker, packet, arrived_at)) = self.incoming.try_recv() {
                busy = true;
                if !self.speakers.contains(&speaker) {
                    if self.speakers.len() >= MAX_TRACKED_SPEAKERS {
                        // The receiver forgets silent speakers; so do we.
                        let mixer = self.receiver.mixer();
                        self.speakers.retain(|k| mixer.level(k).is_some());
                    }
                    self.speakers.push(speaker.clone());
                }
                if let Err(e) = self.receiver.push(
                    &speaker,
                    packet,
                    arrived_at.saturating_duration_since(start),
                ) {
                    tracing::warn!("cannot decode a speaker: {e}");
                }
            }
            // Play out.
            while self.output.writable() >= TICK_SAMPLES {
                if self.counters.output_started_us.load(Ordering::Relaxed) == 0 {
                    self.counters
                        .output_started_us
                        .store(wall_us(), Ordering::Relaxed);
                }
                busy = true;
                self.receiver.mix(start.elapsed(), &mut tick);
                match self.output.write(&tick) {
                    Ok(n) if n == TICK_SAMPLES => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!("the speaker failed: {e}");
                        break;
                    }
                }
            }
            if last_levels.elapsed() >= LEVELS_EVERY {
                last_levels = Instant::now();
                self.publish_levels();
            }
            if !busy {
                std::thread::sleep(IDLE_SLEEP);
            }
        }
        if let Err(e) = self.output.finish() {
            tracing::warn!("cannot complete the output: {e}");
        }
    }

    /// Applies pending commands; false once told to stop (or orphaned).
    fn on_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
                Ok(Command::Muted(m)) => self.muted = m,
                Ok(Command::Deafened(d)) => self.receiver.mixer().set_deafened(d),
                Ok(Command::Volume(k, gain)) => {
                    self.receiver.mixer().set_gain(&k, gain.clamp(0.0, 4.0));
                }
                Ok(Command::ExpectedLoss(p)) => {
                    if let Err(e) = self.encoder.set_expected_loss(p) {
                        tracing::debug!("expected loss not applied: {e}");
                    }
                }
                Ok(Command::Bitrate(b)) => {
                    if let Err(e) = self.encoder.set_bitrate(b) {
                        tracing::debug!("bitrate not applied: {e}");
                    }
                }
            }
        }
    }

    fn on_frame(&mut self, frame: &mut [f32]) {
        let open = self.capture.process(frame);
        self.counters.self_speaking.store(
            self.capture.voice_active() && open && !self.muted,
            Ordering::Relaxed,
        );
        if !open || self.muted {
            self.encoder.skip_frame();
            return;
        }
        match self.encoder.encode(frame) {
            Ok(Some(packet)) => match self.outgoing.try_send(packet) {
                Ok(()) => {
                    self.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot encode a frame: {e}"),
        }
    }

    fn publish_levels(&mut self) {
        let mixer = self.receiver.mixer();
        let levels: Vec<(K, SpeakerLevel)> = self
            .speakers
            .iter()
            .filter_map(|k| mixer.level(k).map(|l| (k.clone(), l)))
            .collect();
        if let Ok(mut shared) = self.levels.lock() {
            *shared = levels;
        }
    }
}
