//! The tincan node: command line, configuration and wiring of the libraries.
//! `main.rs` is a thin wrapper so that all of this is testable in-process.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bundle;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod node;
pub mod password;
pub mod voice;
pub mod voice_api;
