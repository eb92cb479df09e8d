//! tincan's voice plane: the voice datagram's wire format ([`protocol`]) and
//! a relay's forwarding logic ([`relay`]), as pure code that tests, fuzzers
//! and benchmarks run without a network; and the QUIC endpoint that carries
//! the datagrams ([`endpoint`]), bound to the node key.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod control;
pub mod endpoint;
pub mod impair;
pub mod presence;
pub mod protocol;
pub mod relay;
pub mod relay_client;

pub use endpoint::{
    ALPN, Accepting, ConnectError, EndpointConfig, EndpointError, VoiceConnection, VoiceEndpoint,
};
pub use protocol::{EncodeError, ParseError, VoiceDatagram, VoiceDatagramRef, VoiceHeader};
pub use relay::{ConnId, DropReason, Forward, GroupKey, JoinError, Relay, RelayConfig, RelayStats};
