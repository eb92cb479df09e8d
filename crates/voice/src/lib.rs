//! tincan's voice session as a library: a sans-IO state machine
//! ([`VoiceSession`]) that a thin driver runs over the QUIC voice endpoint,
//! the mesh and the audio engine.
//!
//! - [`session`]: the session: inputs with `now`, outputs to poll;
//! - [`gate`]: the one admission gate, a pure function over a roster;
//! - [`candidates`]: which addresses of a presence we may send to;
//! - [`pacer`]: the punch and answer budgets;
//! - [`paths`]: the path planner (who dials, who punches, when the relay);
//! - [`policy`]: bitrate for loss, speaking detection;
//! - [`frame`] and [`keys`]: end-to-end sealed frames and their keys;
//! - [`protocol`]: the session's wire formats (signals, sealed frames);
//! - [`config`]: the settings and why they are what they are.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod candidates;
pub mod config;
pub mod driver;
pub mod frame;
pub mod gate;
pub mod keys;
pub mod pacer;
pub mod paths;
pub mod policy;
pub mod protocol;
pub mod roster;
pub mod session;

pub use config::SessionConfig;
pub use gate::{AdmitRequest, Admitted, Refusal, RosterEntry, RosterSnapshot, admit};
pub use session::{
    CloseReason, Event, Ignored, LinkRefused, ParticipantView, SessionIdentity, SessionStats,
    SocketInfo, Source, Transmit, VoiceSession,
};
