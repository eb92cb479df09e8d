//! The voice session's controls, as the API sees them. The node's voice
//! session implements [`VoiceControl`] and is plugged in with
//! [`crate::ApiStateBuilder::voice`]; without it `/v1/voice/...` answers 503.
//!
//! A node has one voice session, and it belongs to the account that joined
//! it ([`VoiceControl::session_user`]): `/v1` lets only that account change
//! it, and shows every other account a status that says it is not in voice
//! ([`VoiceStatus::seen_by`]). Devices are named as the node lists them
//! ([`Devices`]); files are for the command line only.
//!
//! In JSON, ids are hex strings (as everywhere in the API).

use serde::{Serialize, Serializer};
use tincan_core::{ChannelId, RoomId, UserId, UserKey};

/// What the API asks of the voice session. Methods return quickly: they
/// hand the request to the session and never wait for the network.
pub trait VoiceControl: Send + Sync + 'static {
    /// Joins voice channel `channel` of `room` (leaving any other first)
    /// as `user`, the logged-in user whose key vouches for this node.
    fn join(&self, user: &UserKey, room: RoomId, channel: ChannelId) -> Result<(), String>;
    /// Leaves the voice channel.
    fn leave(&self) -> Result<(), String>;
    /// Mutes or unmutes the microphone.
    fn set_muted(&self, muted: bool);
    /// Deafens (mutes everyone else, and the microphone) or undeafens.
    fn set_deafened(&self, deafened: bool);
    /// Push-to-talk key down (true) or up (false).
    fn push_to_talk(&self, down: bool);
    /// Sets one speaker's gain (1.0 is unchanged, 0.0 silent).
    fn set_volume(&self, user: UserId, gain: f32) -> Result<(), String>;
    /// The sound devices there are, and the ones in use.
    fn devices(&self) -> Devices;
    /// Chooses the input and output devices by the names [`Self::devices`]
    /// lists (None keeps the current one); the API checks the names first.
    /// A session in progress restarts on them, still speaking for `user`
    /// (the caller, who holds the session when there is one).
    fn choose_devices(
        &self,
        user: &UserKey,
        input: Option<String>,
        output: Option<String>,
    ) -> Result<(), String>;
    /// The user the session in progress speaks for (the account that
    /// joined it), or None when the node is not in voice.
    fn session_user(&self) -> Option<UserId>;
    /// Where the session is and how its links do, with the user it speaks
    /// for in [`VoiceStatus::user`].
    fn status(&self) -> VoiceStatus;
    /// Who is in which voice channel of `room`, as their presence signals
    /// say (users on other nodes too, for any channel, joined or not).
    fn presence(&self, room: RoomId) -> Vec<ChannelPresence> {
        let _ = room;
        Vec::new()
    }
    /// Speaking changes and status updates, as they happen.
    fn events(&self) -> tokio::sync::broadcast::Receiver<VoiceEvent>;
}

/// Sound devices.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Devices {
    /// Input devices (microphones) by name: `default`, `null` and the sound
    /// system's devices. Only these names can be chosen through the API.
    pub inputs: Vec<String>,
    /// Output devices (speakers) by name, as for inputs.
    pub outputs: Vec<String>,
    /// The input in use.
    pub input: Option<String>,
    /// The output in use.
    pub output: Option<String>,
}

/// The voice session's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VoiceStatus {
    /// The user the session speaks for (the account that joined it), if in voice.
    #[serde(serialize_with = "opt_hex_user")]
    pub user: Option<UserId>,
    /// Whether another account of this node is in voice: set only in what
    /// [`VoiceStatus::seen_by`] shows the others, which is all they see.
    pub held_by_another_account: bool,
    /// The room of the voice channel joined, if any.
    #[serde(serialize_with = "opt_hex_room")]
    pub room: Option<RoomId>,
    /// The voice channel joined, if any.
    #[serde(serialize_with = "opt_hex_channel")]
    pub channel: Option<ChannelId>,
    /// Whether the microphone is muted.
    pub muted: bool,
    /// Whether the session is deafened.
    pub deafened: bool,
    /// Whether push-to-talk is held down.
    pub push_to_talk: bool,
    /// Everyone in the channel.
    pub participants: Vec<Participant>,
    /// The voice links to peers.
    pub links: Vec<LinkStats>,
}

impl VoiceStatus {
    /// The status as `viewer` may see it: all of it when the session speaks
    /// for them (or nobody is in voice); otherwise "not in voice", with
    /// [`VoiceStatus::held_by_another_account`] set and nothing of the other
    /// account's session (room, channel, participants, links, its mute,
    /// deafen and push-to-talk state).
    pub fn seen_by(self, viewer: &UserId) -> VoiceStatus {
        let theirs = self.user.is_some_and(|u| u != *viewer)
            // In voice for nobody known (between a join and its status):
            // shown to nobody.
            || (self.user.is_none() && self.room.is_some());
        if theirs {
            VoiceStatus {
                held_by_another_account: true,
                ..VoiceStatus::default()
            }
        } else {
            self
        }
    }
}

/// Someone in the voice channel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Participant {
    /// The user.
    #[serde(serialize_with = "hex_user")]
    pub user: UserId,
    /// Whether they are speaking now.
    pub speaking: bool,
    /// The gain applied to them.
    pub volume: f32,
}

/// One voice link to a peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkStats {
    /// The peer's PeerId.
    pub peer: String,
    /// The user it speaks for, when known.
    #[serde(serialize_with = "opt_hex_user")]
    pub user: Option<UserId>,
    /// "lan", "direct", "punched" or "relayed".
    pub path: String,
    /// Round trip, milliseconds.
    pub rtt_ms: f64,
    /// Fraction of datagrams lost, 0 to 1.
    pub loss: f64,
    /// Arrival jitter, milliseconds.
    pub jitter_ms: f64,
    /// Receive bitrate, kbit/s.
    pub bitrate_kbps: f64,
}

/// The users in one voice channel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChannelPresence {
    /// The channel.
    #[serde(serialize_with = "hex_channel")]
    pub channel: ChannelId,
    /// Who is in it.
    #[serde(serialize_with = "hex_users")]
    pub users: Vec<UserId>,
}

fn hex_channel<S: Serializer>(c: &ChannelId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.to_hex())
}

fn hex_users<S: Serializer>(u: &[UserId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(u.iter().map(UserId::to_hex))
}

/// What `/v1/events` streams.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VoiceEvent {
    /// Someone started or stopped speaking.
    Speaking {
        /// Who.
        #[serde(serialize_with = "hex_user")]
        user: UserId,
        /// Whether they speak now.
        speaking: bool,
    },
    /// The whole status, after a change.
    Status(VoiceStatus),
}

fn hex_user<S: Serializer>(u: &UserId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&u.to_hex())
}

fn opt_hex_user<S: Serializer>(u: &Option<UserId>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_str(&u.to_hex()),
        None => s.serialize_none(),
    }
}

fn opt_hex_room<S: Serializer>(r: &Option<RoomId>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_str(&r.to_hex()),
        None => s.serialize_none(),
    }
}

fn opt_hex_channel<S: Serializer>(c: &Option<ChannelId>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&c.to_hex()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_in_json() {
        let e = VoiceEvent::Speaking {
            user: UserId([0xab; 32]),
            speaking: true,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "speaking");
        assert_eq!(v["user"], "ab".repeat(32));
        let s = VoiceStatus {
            room: Some(RoomId([1; 16])),
            user: Some(UserId([2; 32])),
            ..Default::default()
        };
        let v = serde_json::to_value(VoiceEvent::Status(s)).unwrap();
        assert_eq!(v["type"], "status");
        assert_eq!(v["room"], "01".repeat(16));
        assert_eq!(v["user"], "02".repeat(32));
        assert_eq!(v["channel"], serde_json::Value::Null);
    }

    #[test]
    fn another_account_sees_no_part_of_the_session() {
        let (ann, bob) = (UserId([1; 32]), UserId([2; 32]));
        let full = VoiceStatus {
            user: Some(ann),
            room: Some(RoomId([3; 16])),
            channel: Some(ChannelId([4; 16])),
            muted: true,
            deafened: true,
            push_to_talk: true,
            participants: vec![Participant {
                user: UserId([5; 32]),
                speaking: true,
                volume: 1.0,
            }],
            links: vec![LinkStats {
                peer: "12D3KooWpeer".into(),
                user: Some(UserId([5; 32])),
                path: "direct".into(),
                rtt_ms: 1.0,
                loss: 0.0,
                jitter_ms: 0.0,
                bitrate_kbps: 24.0,
            }],
            held_by_another_account: false,
        };
        assert_eq!(full.clone().seen_by(&ann), full);
        let hidden = VoiceStatus {
            held_by_another_account: true,
            ..VoiceStatus::default()
        };
        assert_eq!(full.clone().seen_by(&bob), hidden);
        // A session whose user is not known yet is shown to nobody.
        let unknown = VoiceStatus { user: None, ..full };
        assert_eq!(unknown.clone().seen_by(&ann), hidden);
        // Not in voice: the same for everyone.
        assert_eq!(VoiceStatus::default().seen_by(&bob), VoiceStatus::default());
    }
}
