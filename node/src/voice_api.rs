//! The voice plane as the local API sees it: [`tincan_api::VoiceControl`]
//! implemented over [`crate::voice::Voice`], so `/v1` and the web UI drive
//! the same session as `tincan voice ...`. The API decides who may drive it
//! (the account the session speaks for, [`VoiceControl::session_user`]) and
//! which device names are allowed (those [`VoiceControl::devices`] lists);
//! here names become devices without ever naming a file.

use std::sync::Arc;
use std::time::Duration;

use tincan_api::{
    ChannelPresence, Devices, LinkStats, Participant, VoiceControl, VoiceEvent, VoiceStatus,
};
use tincan_audio::device::{DeviceDirection, DeviceSpec, list_devices};
use tincan_core::{ChannelId, RoomId, UserId, UserKey};

use crate::voice::Voice;

/// Events kept for a slow `/v1/events` client.
const EVENT_QUEUE: usize = 256;

/// How often the whole status is pushed to event subscribers.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The API's handle on the node's voice plane.
pub struct ApiVoice {
    voice: Voice,
    events: tokio::sync::broadcast::Sender<VoiceEvent>,
}

/// The text `--input`/`--output` take for a device.
fn spec_name(spec: &DeviceSpec) -> String {
    match spec {
        DeviceSpec::Default => "default".into(),
        DeviceSpec::Null => "null".into(),
        DeviceSpec::Named(n) => n.clone(),
        DeviceSpec::Wav { path, looped } => {
            format!(
                "{}:{}",
                if *looped { "wav-loop" } else { "wav" },
                path.display()
            )
        }
    }
}

/// The device a name of [`VoiceControl::devices`]'s list stands for. Never a
/// file: a sound device that happened to be called `wav:...` stays a name.
fn listed_spec(name: String) -> DeviceSpec {
    match name.as_str() {
        "default" => DeviceSpec::Default,
        "null" => DeviceSpec::Null,
        _ => DeviceSpec::Named(name),
    }
}

impl ApiVoice {
    /// Wraps the voice plane; starts the task that turns its speaking
    /// changes and its status into API events. Call inside the runtime.
    pub fn new(voice: Voice) -> Arc<Self> {
        let (events, _) = tokio::sync::broadcast::channel(EVENT_QUEUE);
        let api = Arc::new(ApiVoice { voice, events });
        let weak = Arc::downgrade(&api);
        let mut speaking = api.voice.speaking_events();
        tokio::spawn(async move {
            let mut status = tokio::time::interval(STATUS_EVERY);
            loop {
                let event = tokio::select! {
                    change = speaking.recv() => match change {
                        Ok((user, speaking)) => VoiceEvent::Speaking { user, speaking },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = status.tick() => match weak.upgrade() {
                        Some(api) => VoiceEvent::Status(api.status()),
                        None => return,
                    },
                };
                let Some(api) = weak.upgrade() else { return };
                // Nobody listening is fine.
                let _ = api.events.send(event);
            }
        });
        api
    }
}

impl VoiceControl for ApiVoice {
    fn join(&self, user: &UserKey, room: RoomId, channel: ChannelId) -> Result<(), String> {
        self.voice
            .join_as(user, room, channel)
            .map_err(|e| format!("{e:#}"))
    }

    fn leave(&self) -> Result<(), String> {
        self.voice.leave();
        Ok(())
    }

    fn set_muted(&self, muted: bool) {
        self.voice.set_muted(muted);
    }

    fn set_deafened(&self, deafened: bool) {
        self.voice.set_deafened(deafened);
    }

    fn push_to_talk(&self, down: bool) {
        self.voice.push_to_talk(down);
    }

    fn set_volume(&self, user: UserId, gain: f32) -> Result<(), String> {
        self.voice
            .set_volume(user, gain)
            .map_err(|e| format!("{e:#}"))
    }

    fn devices(&self) -> Devices {
        let (input, output) = self.voice.devices();
        let mut inputs = vec!["default".to_owned(), "null".to_owned()];
        let mut outputs = inputs.clone();
        // Probing sound systems can fail on a machine without any: the
        // WAV and null devices remain.
        if let Ok(found) = list_devices() {
            for d in found {
                let name = d.name.clone();
                if matches!(
                    d.direction,
                    DeviceDirection::Capture | DeviceDirection::Both
                ) && !inputs.contains(&name)
                {
                    inputs.push(name.clone());
                }
                if matches!(
                    d.direction,
                    DeviceDirection::Playback | DeviceDirection::Both
                ) && !outputs.contains(&name)
                {
                    outputs.push(name);
                }
            }
        }
        Devices {
            inputs,
            outputs,
            input: Some(spec_name(&input)),
            output: Some(spec_name(&output)),
        }
    }

    fn choose_devices(
        &self,
        user: &UserKey,
        input: Option<String>,
        output: Option<String>,
    ) -> Result<(), String> {
        let (input, output) = (input.map(listed_spec), output.map(listed_spec));
        let view = self.voice.status();
        let current = view
            .room
            .as_deref()
            .and_then(|r| RoomId::from_hex(r).ok())
            .zip(
                view.channel
                    .as_deref()
                    .and_then(|c| ChannelId::from_hex(c).ok()),
            );
        let Some((room, channel)) = current else {
            return self
                .voice
                .choose_devices(input, output)
                .map_err(|e| format!("{e:#}"));
        };
        // `Voice::choose_devices` restarts a session as the node's own
        // user; this one speaks for `user`, so it restarts as them.
        self.voice.leave();
        self.voice
            .choose_devices(input, output)
            .map_err(|e| format!("{e:#}"))?;
        self.voice
            .join_as(user, room, channel)
            .map_err(|e| format!("{e:#}"))
    }

    fn session_user(&self) -> Option<UserId> {
        self.voice.session_user()
    }

    fn status(&self) -> VoiceStatus {
        // Who the session speaks for, read on both sides of the view: a
        // session that changed hands meanwhile is shown to nobody (the next
        // status is right).
        let before = self.voice.session_user();
        let view = self.voice.status();
        let user = before.filter(|u| self.voice.session_user() == Some(*u));
        let hex_user = |h: &str| UserId::from_hex(h).ok();
        VoiceStatus {
            user,
            held_by_another_account: false,
            room: view.room.as_deref().and_then(|r| RoomId::from_hex(r).ok()),
            channel: view
                .channel
                .as_deref()
                .and_then(|c| ChannelId::from_hex(c).ok()),
            muted: view.muted,
            deafened: view.deafened,
            push_to_talk: self.voice.push_to_talk_down(),
            participants: view
                .participants
                .iter()
                .filter_map(|(u, speaking)| {
                    let user = hex_user(u)?;
                    Some(Participant {
                        user,
                        speaking: *speaking,
                        volume: self.voice.volume(&user),
                    })
                })
                .collect(),
            links: view
                .links
                .iter()
                .map(|l| LinkStats {
                    peer: l.peer.clone(),
                    user: l.user.as_deref().and_then(hex_user),
                    path: l.path.clone(),
                    rtt_ms: l.rtt_ms,
                    loss: l.loss,
                    jitter_ms: l.jitter_ms,
                    bitrate_kbps: l.bitrate_kbps,
                })
                .collect(),
        }
    }

    fn presence(&self, room: RoomId) -> Vec<ChannelPresence> {
        self.voice
            .room_presence(room)
            .into_iter()
            .map(|(channel, users)| ChannelPresence { channel, users })
            .collect()
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<VoiceEvent> {
        self.events.subscribe()
    }
}
