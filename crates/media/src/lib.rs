//! tincan's voice plane without I/O: the voice datagram's wire format
//! ([`protocol`]) and a relay's forwarding logic ([`relay`]), as pure code
//! that a later quinn layer drives and that tests, fuzzers and benchmarks run
//! without a network.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod protocol;
pub mod relay;

pub use protocol::{EncodeError, ParseError, VoiceDatagram, VoiceDatagramRef};
pub use relay::{ConnId, DropReason, Forward, GroupKey, JoinError, Relay, RelayConfig, RelayStats};
