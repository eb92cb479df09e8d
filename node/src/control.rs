//! The local control endpoint's protocol: while `tincan up` runs, it holds
//! the store (redb allows one process per file) and the unlocked key, so the
//! other `tincan` commands send it their work instead of doing it themselves.
//!
//! Wire: one connection per request on 127.0.0.1. The token is random (128
//! bits) and lives in `control.json` in the data directory (mode 0600, in a
//! 0700 directory), so only the node's own user can drive it.
//! 1. The client writes a first line of its own, `tincan-control/2 TOKEN`
//!    (at most [`MAX_HELLO_BYTES`] with its newline).
//! 2. The node reads no more than that (within [`HELLO_TIMEOUT`]) and checks
//!    the token before reading anything else. On a wrong token (or anything
//!    else) it answers one line `{"error": ".."}` and closes; on the right
//!    one it answers `{}`.
//! 3. The client writes one line of JSON `{"command": ..}` (at most
//!    [`MAX_LINE_BYTES`], within [`REQUEST_TIMEOUT`]); the node answers one
//!    line `{"outputs": [..]}` or `{"error": ".."}` and closes.
//!
//! So a local process without the token gets at most a few hundred bytes
//! read, and a client that sends nothing is dropped after a few seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tincan_store::datadir::DataDir;

use crate::cli::{ChannelAction, Command, LogAction, Output, RoomAction, VoiceAction};

/// Largest request or response line: an import bundle of a big room fits.
/// Read only from a client that showed the token.
pub const MAX_LINE_BYTES: u64 = 64 * 1024 * 1024;

/// Largest first line (the token frame), newline included. The node reads no
/// more than this from a client before it has checked the token.
pub const MAX_HELLO_BYTES: u64 = 256;

/// How long the node waits for the first line: a client that sends nothing
/// is dropped after this.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the node waits for the command line once the token is checked
/// (a 64 MiB import bundle takes well under a second on loopback).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the first line starts with: the protocol and its version.
pub const HELLO_PREFIX: &str = "tincan-control/2 ";

/// The first line a client sends, newline included.
pub fn hello_line(token: &str) -> String {
    format!("{HELLO_PREFIX}{token}\n")
}

/// Why a first line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HelloError {
    /// No newline within [`MAX_HELLO_BYTES`], or the connection ended first.
    Unframed,
    /// The line is not a token frame (an older client sends its JSON first).
    NotHello,
    /// The token is not this node's.
    BadToken,
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::Unframed | HelloError::NotHello => write!(
                f,
                "bad control request: the first line must be `{HELLO_PREFIX}TOKEN` in at most {MAX_HELLO_BYTES} bytes (an older tincan? use the same binary as the running node)"
            ),
            HelloError::BadToken => write!(
                f,
                "bad control token: is this the node of another data directory?"
            ),
        }
    }
}

impl std::error::Error for HelloError {}

/// Checks a client's first line (as read, newline included) against the
/// node's token, in time independent of where a wrong token differs.
pub fn check_hello(line: &[u8], token: &str) -> Result<(), HelloError> {
    let Some(line) = line.strip_suffix(b"\n") else {
        return Err(HelloError::Unframed);
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(presented) = line.strip_prefix(HELLO_PREFIX.as_bytes()) else {
        return Err(HelloError::NotHello);
    };
    if same_token(presented, token.as_bytes()) {
        Ok(())
    } else {
        Err(HelloError::BadToken)
    }
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a running node tells its clients about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlFile {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The shared secret clients present.
    pub token: String,
    /// Its process id, for people.
    pub pid: u32,
}

/// The file's path in a data directory.
pub fn control_path(dir: &DataDir) -> PathBuf {
    dir.root().join("control.json")
}

/// The commands a running node can do for a client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RemoteCommand {
    /// `tincan room ...`
    Room(RoomAction),
    /// `tincan channel ...`
    Channel(ChannelAction),
    /// `tincan log ...`
    Log(LogAction),
    /// `tincan export` (paths made absolute by the client)
    Export(Option<PathBuf>),
    /// `tincan import` (paths made absolute by the client)
    Import(PathBuf),
    /// `tincan peers`
    Peers,
    /// `tincan voice ...`
    Voice(VoiceAction),
    /// `tincan status`
    Status,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}

impl RemoteCommand {
    /// Splits a command line into what a running node can do (Ok) and what
    /// is always done locally (Err: init, up, id, audio).
    pub fn from_command(c: Command) -> Result<Result<Self, Command>> {
        Ok(Ok(match c {
            Command::Room { action } => RemoteCommand::Room(action),
            Command::Channel { action } => RemoteCommand::Channel(action),
            Command::Log { action } => RemoteCommand::Log(action),
            Command::Export { out } => {
                RemoteCommand::Export(out.as_deref().map(absolute).transpose()?)
            }
            Command::Import { file } => RemoteCommand::Import(absolute(&file)?),
            Command::Peers => RemoteCommand::Peers,
            Command::Voice { action } => RemoteCommand::Voice(action),
            Command::Status => RemoteCommand::Status,
            other => return Ok(Err(other)),
        }))
    }

    /// Back to a command line, to run here.
    pub fn into_command(self) -> Command {
        match self {
            RemoteCommand::Room(action) => Command::Room { action },
            RemoteCommand::Channel(action) => Command::Channel { action },
            RemoteCommand::Log(action) => Command::Log { action },
            RemoteCommand::Export(out) => Command::Export { out },
            RemoteCommand::Import(file) => Command::Import { file },
            RemoteCommand::Peers => Command::Peers,
            RemoteCommand::Voice(action) => Command::Voice { action },
            RemoteCommand::Status => Command::Status,
        }
    }
}

/// A request on the wire (the line after the token frame).
#[derive(Serialize, Deserialize)]
pub struct Request {
    /// What to do.
    pub command: RemoteCommand,
}

/// A response on the wire: to the token frame (`{}` when accepted) and to
/// the request.
#[derive(Serialize, Deserialize, Default)]
pub struct Response {
    /// What the command said, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<Output>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sends `command` to the node running on `dir`, if one is. `Ok(None)`: no
/// node runs there (no control file, or nobody listens at its address).
pub fn forward(dir: &DataDir, command: &RemoteCommand) -> Result<Option<Vec<Output>>> {
    let path = control_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let control: ControlFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged: delete it if no `tincan up` is running",
            path.display()
        )
    })?;
    let stream = match TcpStream::connect_timeout(&control.addr, Duration::from_secs(2)) {
        Ok(s) => s,
        // A node that died without cleaning up: its file is stale.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(
                "{} is stale (nobody listens at {}): running offline",
                path.display(),
                control.addr
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot reach the running node at {}", control.addr));
        }
    };
    let who = format!("the running node (pid {})", control.pid);
    // The token frame first; the node answers it before we send more.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = &stream;
    writer.write_all(hello_line(&control.token).as_bytes())?;
    writer.flush()?;
    let mut reader = BufReader::new(&stream);
    let ack = read_response(&mut reader, 64 * 1024, &who)?;
    if let Some(e) = ack.error {
        bail!(e);
    }
    // Imports of big bundles take a while; a hung node should not hang us forever.
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_string(&Request {
        command: command.clone(),
    })?;
    line.push('\n');
    writer.write_all(line.as_bytes())?;
    writer.flush()?;
    let response = read_response(&mut reader, MAX_LINE_BYTES, &who)?;
    match (response.outputs, response.error) {
        (_, Some(e)) => Err(anyhow!(e)),
        (Some(o), None) => Ok(Some(o)),
        (None, None) => bail!("the running node answered nothing"),
    }
}

/// Reads one response line of at most `limit` bytes.
fn read_response(reader: &mut impl BufRead, limit: u64, who: &str) -> Result<Response> {
    let mut answer = String::new();
    reader
        .take(limit)
        .read_line(&mut answer)
        .with_context(|| format!("{who} did not answer"))?;
    if answer.is_empty() {
        bail!("{who} closed the connection without answering");
    }
    serde_json::from_str(&answer).with_context(|| format!("{who} answered garbage"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_frame_is_checked_whole() {
        let token = "ab".repeat(16);
        assert_eq!(check_hello(hello_line(&token).as_bytes(), &token), Ok(()));
        assert_eq!(
            check_hello(format!("{HELLO_PREFIX}{token}\r\n").as_bytes(), &token),
            Ok(())
        );
        let wrong = hello_line(&"ac".repeat(16));
        assert_eq!(
            check_hello(wrong.as_bytes(), &token),
            Err(HelloError::BadToken)
        );
        // A prefix of the token, or the token and more, is not the token.
        let short = hello_line(&token[..31]);
        assert_eq!(
            check_hello(short.as_bytes(), &token),
            Err(HelloError::BadToken)
        );
        let long = hello_line(&format!("{token}0"));
        assert_eq!(
            check_hello(long.as_bytes(), &token),
            Err(HelloError::BadToken)
        );
        // No newline (cut at the size limit): refused, whatever it holds.
        let cut = hello_line(&token);
        assert_eq!(
            check_hello(cut.trim_end().as_bytes(), &token),
            Err(HelloError::Unframed)
        );
        // An older client's JSON request line.
        let old = format!("{{\"token\":\"{token}\",\"command\":\"Status\"}}\n");
        assert_eq!(
            check_hello(old.as_bytes(), &token),
            Err(HelloError::NotHello)
        );
        assert!(hello_line(&token).len() as u64 <= MAX_HELLO_BYTES);
    }
}
