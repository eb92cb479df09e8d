//! Sound cards through cpal. The device callback only moves samples through a
//! ring (see [`super::ring`]); resampling to and from 48 kHz and everything
//! else happens on the engine's side of the ring, outside the callback.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{SampleFormat, StreamConfig};

use super::ring::{RingCounters, capture_ring, playback_ring};
use super::{AudioInput, AudioOutput};
use crate::error::DeviceError;
use crate::resample::StreamResampler;
use crate::{SAMPLE_RATE, TICK_SAMPLES};

/// Which way a device goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceDirection {
    /// A microphone.
    Capture,
    /// A speaker.
    Playback,
    /// Both.
    Both,
}

/// A sound device, as listed by [`list_devices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The sound system it belongs to (ALSA, PulseAudio, ...).
    pub host: String,
    /// The name to open it by (the id without its host, e.g. `pulse`).
    pub name: String,
    /// What the sound system says it is.
    pub description: String,
    /// cpal's stable id (e.g. `alsa:pulse`); also accepted as a name.
    pub id: String,
    /// Capture, playback or both.
    pub direction: DeviceDirection,
    /// Whether it is the system's default capture device.
    pub default_capture: bool,
    /// Whether it is the system's default playback device.
    pub default_playback: bool,
    /// Its preferred sample rate, if it says.
    pub sample_rate: Option<u32>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let direction = match self.direction {
            DeviceDirection::Capture => "capture",
            DeviceDirection::Playback => "playback",
            DeviceDirection::Both => "capture+playback",
        };
        write!(
            f,
            "{:<12} {} [{}, {direction}",
            self.name, self.description, self.host
        )?;
        if let Some(rate) = self.sample_rate {
            write!(f, ", {rate} Hz")?;
        }
        if self.default_capture {
            write!(f, ", default capture")?;
        }
        if self.default_playback {
            write!(f, ", default playback")?;
        }
        write!(f, "]")
    }
}

fn device_description(device: &cpal::Device) -> String {
    device
        .description()
        .map(|d| d.name().to_string())
        .unwrap_or_else(|_| device.to_string())
}

fn device_id(device: &cpal::Device) -> String {
    device.id().map(|id| id.to_string()).unwrap_or_default()
}

/// The id without its host: what people type.
fn device_name(device: &cpal::Device) -> String {
    device
        .id()
        .map(|id| id.id().to_string())
        .unwrap_or_else(|_| device_description(device))
}

/// Lists the sound devices of the default host. An empty list means no sound
/// card: use WAV or null devices.
pub fn list_devices() -> Result<Vec<DeviceInfo>, DeviceError> {
    let host = cpal::default_host();
    let default_in = host.default_input_device().map(|d| device_id(&d));
    let default_out = host.default_output_device().map(|d| device_id(&d));
    let devices = host.devices().map_err(|source| DeviceError::Backend {
        action: "list devices",
        source,
    })?;
    let mut list = Vec::new();
    for device in devices {
        let (capture, playback) = (device.supports_input(), device.supports_output());
        let direction = match (capture, playback) {
            (true, true) => DeviceDirection::Both,
            (true, false) => DeviceDirection::Capture,
            (false, true) => DeviceDirection::Playback,
            (false, false) => continue,
        };
        let sample_rate = device
            .default_output_config()
            .or_else(|_| device.default_input_config())
            .ok()
            .map(|c| c.sample_rate());
        let id = device_id(&device);
        list.push(DeviceInfo {
            host: host.id().name().to_string(),
            name: device_name(&device),
            description: device_description(&device),
            default_capture: default_in.as_deref() == Some(id.as_str()),
            default_playback: default_out.as_deref() == Some(id.as_str()),
            id,
            direction,
            sample_rate,
        });
    }
    Ok(list)
}

fn find_device(name: Option<&str>, capture: bool) -> Result<cpal::Device, DeviceError> {
    let host = cpal::default_host();
    let direction = if capture { "capture" } else { "playback" };
    let Some(name) = name else {
        let device = if capture {
            host.default_input_device()
        } else {
            host.default_output_device()
        };
        return device.ok_or(DeviceError::NoDevice { direction });
    };
    let devices = host.devices().map_err(|source| DeviceError::Backend {
        action: "list devices",
        source,
    })?;
    devices
        .filter(|d| {
            if capture {
                d.supports_input()
            } else {
                d.supports_output()
            }
        })
        .find(|d| device_name(d) == name || device_id(d) == name || device_description(d) == name)
        .ok_or_else(|| DeviceError::NotFound {
            direction,
            name: name.to_string(),
        })
}

fn stream_error(error: cpal::Error) {
    tracing::warn!("sound device: {error}");
}

/// A sound card's microphone.
pub struct CpalInput {
    name: String,
    _stream: cpal::Stream,
    consumer: rtrb::Consumer<f32>,
    resampler: Option<StreamResampler>,
    raw: Vec<f32>,
    ready: Vec<f32>,
    counters: Arc<RingCounters>,
}

impl std::fmt::Debug for CpalInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpalInput")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CpalInput {
    /// Opens the default capture device, or the one with that name.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let device = find_device(name, true)?;
        let name = device_name(&device);
        let supported = device
            .default_input_config()
            .map_err(|source| DeviceError::Backend {
                action: "read the capture device's format",
                source,
            })?;
        let config: StreamConfig = supported.config();
        let rate = config.sample_rate;
        let channels = usize::from(config.channels);
        // Half a second: the engine drains it every few milliseconds.
        let (mut writer, consumer, counters) = capture_ring(rate as usize / 2, channels);
        macro_rules! typed {
            ($t:ty) => {{
                device
                    .build_input_stream(
                        config,
                        move |data: &[$t], _: &cpal::InputCallbackInfo| writer.on_input(data),
                        stream_error,
                        None,
                    )
                    .map_err(|source| DeviceError::Backend {
                        action: "open the capture stream",
                        source,
                    })
            }};
        }
        let stream = match supported.sample_format() {
            SampleFormat::F32 => typed!(f32),
            SampleFormat::I16 => typed!(i16),
            SampleFormat::I32 => typed!(i32),
            SampleFormat::U16 => typed!(u16),
            SampleFormat::U8 => typed!(u8),
            SampleFormat::I8 => typed!(i8),
            SampleFormat::F64 => typed!(f64),
            other => Err(DeviceError::UnsupportedFormat {
                name: name.clone(),
                reason: format!("sample format {other}"),
            }),
        }?;
        stream.play().map_err(|source| DeviceError::Backend {
            action: "start the capture stream",
            source,
        })?;
        let resampler = resampler_between(rate, SAMPLE_RATE)?;
        tracing::info!("capture device: {name} at {rate} Hz, {channels} channel(s)");
        Ok(CpalInput {
            name,
            _stream: stream,
            consumer,
            resampler,
            raw: vec![0.0; rate as usize / 2],
            ready: Vec::with_capacity(SAMPLE_RATE as usize),
            counters,
        })
    }

    /// Samples the callback had to drop because the engine fell behind.
    pub fn overruns(&self) -> u64 {
        self.counters.overruns.load(Ordering::Relaxed)
    }
}

fn resampler_between(from: u32, to: u32) -> Result<Option<StreamResampler>, DeviceError> {
    if from == to {
        return Ok(None);
    }
    StreamResampler::new(from, to)
        .map(Some)
        .map_err(|reason| DeviceError::Resampler {
            device_rate: if from == SAMPLE_RATE { to } else { from },
            reason,
        })
}

impl AudioInput for CpalInput {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&mut self, out: &mut [f32]) -> Result<usize, DeviceError> {
        let available = self.consumer.slots().min(self.raw.len());
        if let Ok(chunk) = self.consumer.read_chunk(available) {
            let (a, b) = chunk.as_slices();
            self.raw[..a.len()].copy_from_slice(a);
            self.raw[a.len()..a.len() + b.len()].copy_from_slice(b);
            chunk.commit_all();
        }
        let raw = &self.raw[..available];
        match &mut self.resampler {
            Some(resampler) => {
                let ready = &mut self.ready;
                resampler.process(raw, |piece| ready.extend_from_slice(piece));
            }
            None => self.ready.extend_from_slice(raw),
        }
        // Bounded: keep the newest second if the caller stopped reading.
        let limit = SAMPLE_RATE as usize;
        if self.ready.len() > limit {
            let excess = self.ready.len() - limit;
            self.ready.drain(..excess);
        }
        let n = out.len().min(self.ready.len());
        out[..n].copy_from_slice(&self.ready[..n]);
        self.ready.drain(..n);
        Ok(n)
    }
}

/// A sound card's speaker.
pub struct CpalOutput {
    name: String,
    _stream: cpal::Stream,
    producer: rtrb::Producer<f32>,
    resampler: Option<StreamResampler>,
    device_rate: u32,
    pending: Vec<f32>,
    counters: Arc<RingCounters>,
}

impl std::fmt::Debug for CpalOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpalOutput")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CpalOutput {
    /// Opens the default playback device, or the one with that name.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let device = find_device(name, false)?;
        let name = device_name(&device);
        let supported = device
            .default_output_config()
            .map_err(|source| DeviceError::Backend {
                action: "read the playback device's format",
                source,
            })?;
        let config: StreamConfig = supported.config();
        let rate = config.sample_rate;
        let channels = usize::from(config.channels);
        // Room for 200 ms; how much is kept queued is decided in `writable`.
        let (producer, mut reader, counters) = playback_ring(rate as usize / 5, channels);
        macro_rules! typed {
            ($t:ty) => {{
                device
                    .build_output_stream(
                        config,
                        move |data: &mut [$t], _: &cpal::OutputCallbackInfo| reader.on_output(data),
                        stream_error,
                        None,
                    )
                    .map_err(|source| DeviceError::Backend {
                        action: "open the playback stream",
                        source,
                    })
            }};
        }
        let stream = match supported.sample_format() {
            SampleFormat::F32 => typed!(f32),
            SampleFormat::I16 => typed!(i16),
            SampleFormat::I32 => typed!(i32),
            SampleFormat::U16 => typed!(u16),
            SampleFormat::U8 => typed!(u8),
            SampleFormat::I8 => typed!(i8),
            SampleFormat::F64 => typed!(f64),
            other => Err(DeviceError::UnsupportedFormat {
                name: name.clone(),
                reason: format!("sample format {other}"),
            }),
        }?;
        stream.play().map_err(|source| DeviceError::Backend {
            action: "start the playback stream",
            source,
        })?;
        let resampler = resampler_between(SAMPLE_RATE, rate)?;
        tracing::info!("playback device: {name} at {rate} Hz, {channels} channel(s)");
        Ok(CpalOutput {
            name,
            _stream: stream,
            producer,
            resampler,
            device_rate: rate,
            pending: Vec::with_capacity(rate as usize / 10),
            counters,
        })
    }

    /// Samples of silence the callback played because the engine was late.
    pub fn underruns(&self) -> u64 {
        self.counters.underruns.load(Ordering::Relaxed)
    }
}

impl AudioOutput for CpalOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn writable(&self) -> usize {
        // Keep 20 ms queued, or twice what the device takes per callback if
        // that is more: enough never to run dry, little enough to add no
        // needless delay.
        let capacity = self.producer.buffer().capacity();
        let queued = capacity - self.producer.slots() + self.pending.len();
        let largest = self.counters.largest_callback.load(Ordering::Relaxed) as usize;
        let wanted = (self.device_rate as usize / 50)
            .max(2 * largest)
            .min(capacity);
        let free = wanted.saturating_sub(queued) as u64;
        (free * u64::from(SAMPLE_RATE) / u64::from(self.device_rate.max(1))) as usize
    }

    fn write(&mut self, samples: &[f32]) -> Result<usize, DeviceError> {
        let n = samples
            .len()
            .min(self.writable().max(TICK_SAMPLES.min(samples.len())));
        let pending = &mut self.pending;
        match &mut self.resampler {
            Some(resampler) => resampler.process(&samples[..n], |piece| {
                pending.extend_from_slice(piece);
            }),
            None => pending.extend_from_slice(&samples[..n]),
        }
        let fits = self.pending.len().min(self.producer.slots());
        if let Ok(chunk) = self.producer.write_chunk_uninit(fits) {
            chunk.fill_from_iter(self.pending.drain(..fits));
        }
        // Bounded: what still does not fit after 100 ms is dropped, oldest
        // first, rather than delaying everything after it.
        let limit = self.device_rate as usize / 10;
        if self.pending.len() > limit {
            let excess = self.pending.len() - limit;
            self.pending.drain(..excess);
        }
        Ok(n)
    }
}
