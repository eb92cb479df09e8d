//! The local control endpoint's protocol: while `tincan up` runs, it holds
//! the store (redb allows one process per file) and the unlocked key, so the
//! other `tincan` commands send it their work instead of doing it themselves.
//!
//! Wire: one connection per request on 127.0.0.1; the client writes one line
//! of JSON `{"token": .., "command": ..}`, the node answers one line
//! `{"outputs": [..]}` or `{"error": ".."}`. The token is random (128 bits)
//! and lives in `control.json` in the data directory (mode 0600, in a 0700
//! directory), so only the node's own user can drive it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tincan_store::datadir::DataDir;

use crate::cli::{ChannelAction, Command, LogAction, Output, RoomAction, VoiceAction};

/// Largest request or response line: an import bundle of a big room fits.
pub const MAX_LINE_BYTES: u64 = 64 * 1024 * 1024;

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

/// A request on the wire.
#[derive(Serialize, Deserialize)]
pub struct Request {
    /// The token from `control.json`.
    pub token: String,
    /// What to do.
    pub command: RemoteCommand,
}

/// A response on the wire.
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
    // Imports of big bundles take a while; a hung node should not hang us forever.
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut writer = &stream;
    let line = serde_json::to_string(&Request {
        token: control.token,
        command: command.clone(),
    })?;
    writer.write_all(line.as_bytes())?;
    writer.write_all(b"\n")?;
    writer.flush()?;
    let mut reader = BufReader::new(std::io::Read::take(&stream, MAX_LINE_BYTES));
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .with_context(|| format!("the running node (pid {}) did not answer", control.pid))?;
    if answer.is_empty() {
        bail!(
            "the running node (pid {}) closed the connection without answering",
            control.pid
        );
    }
    let response: Response =
        serde_json::from_str(&answer).context("the running node answered garbage")?;
    match (response.outputs, response.error) {
        (_, Some(e)) => Err(anyhow!(e)),
        (Some(o), None) => Ok(Some(o)),
        (None, None) => bail!("the running node answered nothing"),
    }
}
