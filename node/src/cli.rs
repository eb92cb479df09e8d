//! The `tincan` command line.

use std::cell::{Ref, RefCell, RefMut};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tincan_core::keystore::{Identity, KdfParams, SealedIdentity};
use tincan_core::{
    ChannelId, Hlc, JoinPolicy, MemberRole, MemberState, NodeKey, RoomId, RoomSettings,
    UnverifiedRecord, make, permissions,
};
use tincan_store::datadir::{DataDir, NewStore};
use tincan_store::{Applied, RoomView, Store};

use crate::bundle::Bundle;
use crate::node::{self, Node};
use crate::password::PasswordSource;

/// tincan: voice chat for gamers that needs no server.
#[derive(Parser, Debug)]
#[command(name = "tincan", version, about, long_about = None)]
pub struct Cli {
    /// Data directory (identity and store) [default: $XDG_DATA_HOME/tincan]
    #[arg(long, global = true, env = "TINCAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Read the password from this file (else $TINCAN_PASSWORD, else a prompt)
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print results as JSON
    #[arg(long, global = true)]
    pub json: bool,
    /// Start an empty store when store.redb is missing beside an existing
    /// identity (the rooms you are in sync again from peers); without it
    /// a missing store is an error
    #[arg(long, global = true)]
    pub new_store: bool,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an identity (sign-up): a user key, a node key and a profile
    Init {
        /// Display name (not unique: others see it with your fingerprint)
        #[arg(long, env = "TINCAN_USERNAME")]
        username: Option<String>,
    },
    /// Start the node: sign up if there is no identity yet, unlock it, open the store and show the node
    Up {
        /// Display name for sign-up, if there is no identity yet
        #[arg(long, env = "TINCAN_USERNAME")]
        username: Option<String>,
        /// Port of the local control endpoint on 127.0.0.1 (0: any free port)
        #[arg(long, default_value_t = 0)]
        control_port: u16,
        /// Show the node and exit instead of running until Ctrl-C
        #[arg(long)]
        once: bool,
        /// Mesh addresses to listen on (multiaddr, repeatable) [default: QUIC and TCP on every interface, any port]
        #[arg(long = "listen")]
        listen: Vec<String>,
        /// A bootstrap or known peer to dial, /ip4/.../tcp/.../p2p/<peer id> (repeatable)
        #[arg(long = "bootstrap", env = "TINCAN_BOOTSTRAP", value_delimiter = ',')]
        bootstrap: Vec<String>,
        /// Do not look for peers on the LAN by mDNS
        #[arg(long)]
        no_mdns: bool,
        /// Do not ask the home router (UPnP) to forward the mesh ports
        #[arg(long)]
        no_port_mapping: bool,
        /// A relay to listen through when behind NAT, /.../p2p/<relay id> (repeatable)
        #[arg(long = "relay")]
        relays: Vec<String>,
        /// Announce the listen addresses as reachable (on a LAN or with a public IP; behind NAT AutoNAT finds the address instead)
        #[arg(long)]
        advertise_listen_addrs: bool,
        /// An address at which others reach this node (a port forward, a public IP), repeatable
        #[arg(long = "external")]
        external: Vec<String>,
        /// The voice socket (UDP), IP:PORT [default: every interface, any port]
        #[arg(long, default_value = "0.0.0.0:0")]
        voice_listen: std::net::SocketAddr,
        /// Microphone: default, null, wav:PATH, wav-loop:PATH, or a device name (`tincan audio devices`)
        #[arg(long, default_value = "default")]
        input: String,
        /// Speaker: default, null, wav:PATH (records what would be played), or a device name
        #[arg(long, default_value = "default")]
        output: String,
        /// Port of the local API (Parse REST and LiveQuery, GraphQL, /v1; 0: any free port)
        #[arg(long, env = "TINCAN_API_PORT", default_value_t = 1337)]
        api_port: u16,
        /// Address of the local API; anything but loopback exposes it to the network
        #[arg(long, default_value = "127.0.0.1")]
        api_listen: std::net::IpAddr,
        /// A voice relay, IP:PORT/PEERID (repeatable): for the public address of the voice socket and as the fallback path
        #[arg(
            long = "voice-relay",
            env = "TINCAN_VOICE_RELAY",
            value_delimiter = ','
        )]
        voice_relays: Vec<String>,
        /// Tests and measurements only: delay, jitter and loss on what the voice socket sends, e.g. delay=20ms,jitter=5ms,loss=2%
        #[arg(long)]
        voice_impair: Option<tincan_media::impair::Impairment>,
        /// When the microphone is sent: vad (while you speak), ptt (while push-to-talk is held), open (always)
        #[arg(long, default_value = "vad", value_parser = crate::voice::parse_gate)]
        gate: tincan_audio::capture::GateMode,
        /// Most peers a voice channel's full mesh connects to directly; larger channels go through the voice relay
        #[arg(long, default_value_t = 16)]
        voice_mesh_limit: usize,
        /// Serve Prometheus metrics at http://ADDR/metrics (off unless given; e.g. 127.0.0.1:9465)
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Voice: join or leave a channel, mute, deafen (acts on the running node)
    Voice {
        /// Voice operations
        #[command(subcommand)]
        action: VoiceAction,
    },
    /// The running node's voice session: channel, participants, and per peer the path, RTT, loss, jitter and bitrate
    Status,
    /// Peers of the running node, with round-trip time and score
    Peers,
    /// Show or manage this node's identity
    Id {
        /// Identity operations (default: show)
        #[command(subcommand)]
        action: Option<IdAction>,
    },
    /// Rooms
    Room {
        /// Room operations
        #[command(subcommand)]
        action: RoomAction,
    },
    /// Voice channels of a room
    Channel {
        /// Channel operations
        #[command(subcommand)]
        action: ChannelAction,
    },
    /// A room's activity log
    Log {
        /// Log operations
        #[command(subcommand)]
        action: LogAction,
    },
    /// Write every stored record, signed, to a bundle (JSON)
    Export {
        /// Output file [default: standard output]
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Apply the records of a bundle; each is checked like a record from a peer
    Import {
        /// The bundle file
        file: PathBuf,
    },
    /// Sound devices, and an offline test of the whole voice chain
    Audio {
        /// Audio operations
        #[command(subcommand)]
        action: tincan_audio::cli::AudioCommand,
    },
}

/// Identity operations.
#[derive(Subcommand, Debug)]
pub enum IdAction {
    /// Show user id, fingerprint and node id (no password needed)
    Show,
    /// Write the identity, sealed under an export password, for backup or a second device
    Export {
        /// Output file
        #[arg(long, short)]
        out: PathBuf,
        /// Include this device's node key (a backup of this device, not a second device)
        #[arg(long)]
        with_node_key: bool,
        /// Read the export password from this file (else $TINCAN_EXPORT_PASSWORD, else a prompt)
        #[arg(long)]
        export_password_file: Option<PathBuf>,
    },
    /// Make this data directory's identity from an export; a new node key is made unless the export carries one
    Import {
        /// The export file
        file: PathBuf,
        /// Read the export password from this file (else $TINCAN_EXPORT_PASSWORD, else a prompt)
        #[arg(long)]
        export_password_file: Option<PathBuf>,
    },
    /// Change the password
    Passwd {
        /// Read the new password from this file (else $TINCAN_NEW_PASSWORD, else a prompt)
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

/// Room operations.
#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum RoomAction {
    /// Create a room you own
    Create {
        /// Title
        title: String,
        /// Only users you invite or admit may join
        #[arg(long)]
        invite_only: bool,
        /// Most members at once, you included
        #[arg(long)]
        member_limit: Option<u32>,
    },
    /// List known rooms
    List {
        /// Only rooms you own or have joined
        #[arg(long)]
        mine: bool,
        /// The open rooms of the nodes on this LAN (found by mDNS), asked now
        #[arg(long, conflicts_with = "mine")]
        nearby: bool,
    },
    /// Show a room with its members and channels
    Show {
        /// Room id, or a unique prefix of it
        room: String,
    },
    /// Join a room (or ask to join an invite-only one)
    Join {
        /// Room id, unique prefix, or an invite link (tincan://join/...)
        room: String,
    },
    /// Print the invite link of a room, to share with who you invite
    Link {
        /// Room id or unique prefix
        room: String,
    },
    /// Leave a room
    Leave {
        /// Room id or unique prefix
        room: String,
    },
    /// Owner: invite, admit, kick or ban a user, or make them a moderator
    Member {
        /// Room id or unique prefix
        room: String,
        /// The user's id (64 hex digits)
        user: String,
        /// What to do
        #[arg(value_enum)]
        action: MemberAction,
    },
    /// Owner: delete the room
    Delete {
        /// Room id or unique prefix
        room: String,
    },
}

/// What an owner does to a member.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize)]
pub enum MemberAction {
    /// Invite to an invite-only room.
    Invite,
    /// Admit (join on their behalf).
    Admit,
    /// Make a moderator.
    Promote,
    /// Remove; they may come back to an open room.
    Kick,
    /// Ban.
    Ban,
}

/// Channel operations.
#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum ChannelAction {
    /// Owner: create a voice channel
    Create {
        /// Room id or unique prefix
        room: String,
        /// Channel name
        name: String,
        /// Description
        #[arg(long, default_value = "")]
        description: String,
        /// Who may speak or listen, ACTION:WHO, repeatable (default: speak:members, listen:members)
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    /// List a room's channels
    List {
        /// Room id or unique prefix
        room: String,
    },
    /// Owner: delete a channel
    Delete {
        /// Room id or unique prefix
        room: String,
        /// Channel name, id or unique id prefix
        channel: String,
    },
}

/// Log operations.
#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum LogAction {
    /// Add an entry about yourself (you must be a member)
    Add {
        /// Room id or unique prefix
        room: String,
        /// What happened
        action: String,
    },
    /// List entries, oldest first
    List {
        /// Room id or unique prefix
        room: String,
        /// From this time (Unix milliseconds)
        #[arg(long)]
        since: Option<u64>,
        /// Up to this time (Unix milliseconds)
        #[arg(long)]
        until: Option<u64>,
        /// Most entries on this page
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after this cursor (the `next` of the previous page)
        #[arg(long)]
        after: Option<String>,
    },
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // Kademlia warns whenever its routing table is empty, which is the
    // normal state of a node at a LAN party: keep that out of the default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// What a command works with: the data directory, and the node or store it
/// opens on demand (offline), or the running node's (in the daemon).
pub(crate) struct Ctx {
    pub(crate) dir: DataDir,
    password_file: Option<PathBuf>,
    json: bool,
    node: RefCell<Option<Node>>,
    store: RefCell<Option<Store>>,
    out: RefCell<Vec<Output>>,
    /// Whether a missing store may be started empty (`--new-store`).
    new_store: NewStore,
}

/// What a command says: JSON for machines, text for people.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Output {
    /// The result as JSON (printed with --json).
    pub json: serde_json::Value,
    /// The result as text.
    pub text: String,
}

impl Ctx {
    pub(crate) fn offline(
        dir: DataDir,
        password_file: Option<PathBuf>,
        json: bool,
        new_store: NewStore,
    ) -> Self {
        Ctx {
            dir,
            password_file,
            json,
            node: RefCell::new(None),
            store: RefCell::new(None),
            out: RefCell::new(Vec::new()),
            new_store,
        }
    }

    /// A context around an already unlocked node (the daemon's).
    pub(crate) fn with_node(node: Node) -> Self {
        let ctx = Ctx::offline(node.dir.clone(), None, true, NewStore::Refuse);
        *ctx.node.borrow_mut() = Some(node);
        ctx
    }

    /// Gives the node back, with what the command said.
    pub(crate) fn into_parts(self) -> (Option<Node>, Vec<Output>) {
        (self.node.into_inner(), self.out.into_inner())
    }

    fn password(&self, confirm: bool) -> Result<zeroize::Zeroizing<String>> {
        PasswordSource {
            file: self.password_file.as_deref(),
            env: "TINCAN_PASSWORD",
            prompt: "Password: ",
        }
        .read(confirm)
    }

    /// The unlocked node, unlocking it the first time.
    fn unlock(&self) -> Result<RefMut<'_, Node>> {
        if self.node.borrow().is_none() {
            // redb allows one open handle per file: close the read-only one.
            self.store.borrow_mut().take();
            let node = Node::unlock(self.dir.clone(), &self.password(false)?, self.new_store)?;
            *self.node.borrow_mut() = Some(node);
        }
        Ok(RefMut::map(self.node.borrow_mut(), |n| {
            n.as_mut().expect("set just above")
        }))
    }

    /// The node of a running `tincan up` (never unlocks one here).
    fn unlock_running(&self) -> Result<RefMut<'_, Node>> {
        if self.node.borrow().is_none() {
            bail!(
                "no node is running on {}: start it with `tincan up`",
                self.dir.root().display()
            );
        }
        self.unlock()
    }

    /// The store, without unlocking the identity if it is not unlocked yet.
    fn store(&self) -> Result<Ref<'_, Store>> {
        if self.node.borrow().is_some() {
            return Ok(Ref::map(self.node.borrow(), |n| {
                &*n.as_ref().expect("checked above").store
            }));
        }
        if self.store.borrow().is_none() {
            *self.store.borrow_mut() = Some(node::open_store(&self.dir, self.new_store)?);
        }
        Ok(Ref::map(self.store.borrow(), |s| {
            s.as_ref().expect("set just above")
        }))
    }

    fn print(&self, value: serde_json::Value, text: impl FnOnce() -> String) {
        self.out.borrow_mut().push(Output {
            json: value,
            text: text(),
        });
    }

    fn flush(&self) {
        print_outputs(
            &self.out.borrow_mut().drain(..).collect::<Vec<_>>(),
            self.json,
        );
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<()> {
    // Audio commands need no identity or data directory.
    if let Command::Audio { action } = cli.command {
        return tincan_audio::cli::run(action);
    }
    let root = match cli.data_dir {
        Some(d) => d,
        None => node::default_data_dir()?,
    };
    let dir = DataDir::create(root)?;
    let command = match crate::control::RemoteCommand::from_command(cli.command)? {
        Ok(remote) => match crate::control::forward(&dir, &remote)? {
            Some(outputs) => {
                print_outputs(&outputs, cli.json);
                return Ok(());
            }
            // No node running: do it here.
            None => remote.into_command(),
        },
        Err(local) => local,
    };
    let new_store = if cli.new_store {
        NewStore::Allow
    } else {
        NewStore::Refuse
    };
    let ctx = Ctx::offline(dir, cli.password_file, cli.json, new_store);
    let result = dispatch(&ctx, command);
    ctx.flush();
    result
}

fn print_outputs(outputs: &[Output], json: bool) {
    let mut out = std::io::stdout().lock();
    for o in outputs {
        let _ = if json {
            writeln!(out, "{}", o.json)
        } else {
            writeln!(out, "{}", o.text)
        };
    }
}

/// Runs a command; its output is collected in `ctx`.
pub(crate) fn dispatch(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Init { username } => {
            sign_up(ctx, username)?;
            show_identity(ctx, &ctx.dir.load_identity()?)
        }
        Command::Up {
            username,
            control_port,
            once,
            listen,
            bootstrap,
            no_mdns,
            no_port_mapping,
            relays,
            advertise_listen_addrs,
            external,
            voice_listen,
            input,
            output,
            voice_relays,
            voice_impair,
            gate,
            voice_mesh_limit,
            api_port,
            api_listen,
            metrics,
        } => {
            let voice = crate::voice::VoiceOptions {
                listen: voice_listen,
                input: input.parse().unwrap_or_default(),
                output: output.parse().unwrap_or_default(),
                relays: voice_relays
                    .iter()
                    .map(|r| crate::voice::parse_relay(r))
                    .collect::<Result<_>>()?,
                impairment: voice_impair,
                gate,
                max_direct_peers: voice_mesh_limit,
            };
            let options = crate::daemon::UpOptions {
                control_port,
                listen,
                bootstrap,
                mdns: !no_mdns,
                port_mapping: !no_port_mapping,
                relays,
                advertise_listen_addrs,
                external,
                voice,
                api_listen: Some(api_listen),
                api_port,
                metrics,
            };
            up(ctx, username, once, options)
        }
        Command::Peers => peers(ctx),
        Command::Voice { action } => voice_command(ctx, action),
        Command::Status => voice_status(ctx),
        Command::Id { action } => id_command(ctx, action.unwrap_or(IdAction::Show)),
        Command::Room { action } => room_command(ctx, action),
        Command::Channel { action } => channel_command(ctx, action),
        Command::Log { action } => log_command(ctx, action),
        Command::Export { out } => export(ctx, out.as_deref()),
        Command::Import { file } => import(ctx, &file),
        Command::Audio { .. } => unreachable!("handled before the data directory is opened"),
    }
}

fn sign_up(ctx: &Ctx, username: Option<String>) -> Result<Identity> {
    // Before any prompt: neither over an identity nor beside a store.
    ctx.dir.check_new_identity()?;
    let username = match username {
        Some(u) => u,
        None => prompt_line("Username: ")?,
    };
    let password = ctx.password(true)?;
    node::init(&ctx.dir, username.trim(), &password, KdfParams::RECOMMENDED)
}

fn prompt_line(prompt: &str) -> Result<String> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("a username is needed: pass --username or set TINCAN_USERNAME");
    }
    eprint!("{prompt}");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn up(
    ctx: &Ctx,
    username: Option<String>,
    once: bool,
    options: crate::daemon::UpOptions,
) -> Result<()> {
    if !ctx.dir.has_identity() {
        eprintln!(
            "No identity in {} yet: signing up.",
            ctx.dir.root().display()
        );
        sign_up(ctx, username)?;
    }
    let node = ctx.unlock()?;
    let rooms = node.store.rooms_of_user(&node.user_key().id())?;
    let all_rooms = node.store.rooms()?.len();
    let uid = node.user_key().id();
    let peer = node
        .identity
        .node_key
        .as_ref()
        .map(|k| k.id().peer_id())
        .unwrap_or_default();
    ctx.print(
        json!({
            "username": node.identity.username,
            "user_id": uid.to_hex(),
            "fingerprint": uid.fingerprint().to_string(),
            "peer_id": peer,
            "data_dir": node.dir.root(),
            "rooms_known": all_rooms,
            "my_rooms": rooms.iter().map(|r| r.id.to_hex()).collect::<Vec<_>>(),
            "running": !once,
        }),
        || {
            let mut s = format!(
                "tincan node {}\n  user      {} [{}]\n  user id   {}\n  node id   {}\n  data dir  {}\n  rooms     {} known, {} yours",
                if once { "(not started: --once)" } else { "up" },
                node.identity.username,
                uid.fingerprint(),
                uid.to_hex(),
                peer,
                node.dir.root().display(),
                all_rooms,
                rooms.len()
            );
            for r in &rooms {
                s.push_str(&format!("\n    {}  {}", r.id, r.room.title));
            }
            if !once {
                s.push_str("\nWhile it runs, the other tincan commands go through it.");
            }
            s
        },
    );
    drop(node);
    if once {
        return Ok(());
    }
    ctx.flush();
    let node = ctx.node.borrow_mut().take().expect("unlocked above");
    crate::daemon::run(node, options)
}

/// Voice operations.
#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum VoiceAction {
    /// Join a voice channel of a room you are a member of
    Join {
        /// Room id
        room: String,
        /// Channel id (`tincan channel list ROOM`)
        channel: String,
    },
    /// Leave the voice channel
    Leave,
    /// Stop sending your microphone
    Mute,
    /// Send your microphone again
    Unmute,
    /// Stop playing others' voices
    Deafen,
    /// Play others' voices again
    Undeafen,
}

fn running_voice(ctx: &Ctx) -> Result<crate::voice::Voice> {
    crate::voice::running().ok_or_else(|| {
        anyhow!(
            "no node is running on {}: start it with `tincan up`",
            ctx.dir.root().display()
        )
    })
}

fn voice_command(ctx: &Ctx, action: VoiceAction) -> Result<()> {
    let voice = running_voice(ctx)?;
    let (what, text) = match action {
        VoiceAction::Join { room, channel } => {
            let room = RoomId::from_hex(&room).map_err(|e| anyhow!("room {room:?}: {e}"))?;
            let channel =
                ChannelId::from_hex(&channel).map_err(|e| anyhow!("channel {channel:?}: {e}"))?;
            voice.join(room, channel)?;
            (
                "joined",
                format!("in voice channel {channel} of room {room}"),
            )
        }
        VoiceAction::Leave => {
            voice.leave();
            ("left", "left voice".to_owned())
        }
        VoiceAction::Mute => {
            voice.set_muted(true);
            ("muted", "microphone muted".to_owned())
        }
        VoiceAction::Unmute => {
            voice.set_muted(false);
            ("unmuted", "microphone on".to_owned())
        }
        VoiceAction::Deafen => {
            voice.set_deafened(true);
            ("deafened", "deafened".to_owned())
        }
        VoiceAction::Undeafen => {
            voice.set_deafened(false);
            ("undeafened", "undeafened".to_owned())
        }
    };
    ctx.print(json!({ "voice": what }), || text);
    Ok(())
}

fn voice_status(ctx: &Ctx) -> Result<()> {
    let voice = running_voice(ctx)?;
    let view = voice.status();
    let value = serde_json::to_value(&view)?;
    ctx.print(value, || {
        let mut s = match (&view.room, &view.channel) {
            (Some(room), Some(channel)) => format!("voice: channel {channel} of room {room}"),
            _ => "voice: not in a channel".to_owned(),
        };
        s += &format!(
            "\n  socket {}{}{}{}\n  frames sent {}, received {}, refused {}",
            view.local,
            view.reflexive
                .as_deref()
                .map(|r| format!(" (public {r})"))
                .unwrap_or_default(),
            if view.muted { ", muted" } else { "" },
            if view.deafened { ", deafened" } else { "" },
            view.frames_sent,
            view.frames_received,
            view.frames_refused,
        );
        if view.frames_withheld > 0 {
            s += &format!(
                ", withheld {} (you may not speak in this channel)",
                view.frames_withheld
            );
        }
        for (user, speaking) in &view.participants {
            s += &format!(
                "\n  {} {}",
                &user[..16],
                if *speaking { "speaking" } else { "" }
            );
        }
        for l in &view.links {
            s += &format!(
                "\n  {}  {:8} {}  rtt {:.1} ms  loss {:.1}%  jitter {:.1} ms  {:.1} kbit/s",
                l.peer,
                l.path,
                l.remote,
                l.rtt_ms,
                l.loss * 100.0,
                l.jitter_ms,
                l.bitrate_kbps
            );
        }
        s
    });
    Ok(())
}

fn peers(ctx: &Ctx) -> Result<()> {
    let node = ctx.unlock_running()?;
    let Some(link) = node.mesh.clone() else {
        bail!(
            "no node is running on {}: start it with `tincan up`",
            ctx.dir.root().display()
        );
    };
    let peers = link.runtime.block_on(link.mesh.peers())?;
    ctx.print(
        json!(
            peers
                .iter()
                .map(|p| json!({
                    "peer_id": p.peer_id.to_string(),
                    "address": p.address.to_string(),
                    "path": p.path.as_str(),
                    "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    "score": p.score,
                    "agent": p.agent,
                }))
                .collect::<Vec<_>>()
        ),
        || {
            if peers.is_empty() {
                return "no peers connected".into();
            }
            peers
                .iter()
                .map(|p| {
                    format!(
                        "{}  {}  {}  rtt {}  score {}",
                        p.peer_id,
                        p.path.as_str(),
                        p.address,
                        p.rtt
                            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
                            .unwrap_or_else(|| "?".into()),
                        p.score
                            .map(|s| format!("{s:.1}"))
                            .unwrap_or_else(|| "?".into())
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    Ok(())
}

fn show_identity(ctx: &Ctx, sealed: &SealedIdentity) -> Result<()> {
    let uid = sealed.user_id()?;
    ctx.print(
        json!({
            "username": sealed.username,
            "user_id": uid.to_hex(),
            "fingerprint": uid.fingerprint().to_string(),
            "node_id": sealed.node_peer_id,
        }),
        || {
            format!(
                "username     {}\nuser id      {}\nfingerprint  {}\nnode id      {}",
                sealed.username,
                uid.to_hex(),
                uid.fingerprint(),
                sealed.node_peer_id.as_deref().unwrap_or("(none)")
            )
        },
    );
    Ok(())
}

fn export_password(file: Option<&Path>, confirm: bool) -> Result<zeroize::Zeroizing<String>> {
    PasswordSource {
        file,
        env: "TINCAN_EXPORT_PASSWORD",
        prompt: "Export password: ",
    }
    .read(confirm)
}

fn id_command(ctx: &Ctx, action: IdAction) -> Result<()> {
    match action {
        IdAction::Show => show_identity(ctx, &ctx.dir.load_identity()?),
        IdAction::Export {
            out,
            with_node_key,
            export_password_file,
        } => {
            let sealed = ctx.dir.load_identity()?;
            let mut identity = sealed.open(ctx.password(false)?.as_bytes())?;
            if !with_node_key {
                identity.node_key = None;
            }
            let pw = export_password(export_password_file.as_deref(), true)?;
            let export = SealedIdentity::seal(&identity, pw.as_bytes(), KdfParams::RECOMMENDED)?;
            tincan_store::datadir::write_atomic(&out, export.to_json().as_bytes())?;
            ctx.print(json!({"exported": out}), || {
                format!(
                    "identity of {} written to {} ({})",
                    identity.username,
                    out.display(),
                    if with_node_key {
                        "with this device's node key"
                    } else {
                        "for a second device"
                    }
                )
            });
            Ok(())
        }
        IdAction::Import {
            file,
            export_password_file,
        } => {
            if ctx.dir.has_identity() {
                bail!(
                    "an identity already exists in {}: import into a new --data-dir",
                    ctx.dir.root().display()
                );
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let sealed = SealedIdentity::from_json(&text)?;
            let pw = export_password(export_password_file.as_deref(), false)?;
            let mut identity = sealed.open(pw.as_bytes())?;
            if identity.node_key.is_none() {
                identity.node_key = Some(NodeKey::generate()?);
            }
            let local = ctx.password(true)?;
            let resealed =
                SealedIdentity::seal(&identity, local.as_bytes(), KdfParams::RECOMMENDED)?;
            ctx.dir.create_identity(&resealed)?;
            // The store that lost its identity, or a new one.
            node::open_store(&ctx.dir, NewStore::Allow)?;
            show_identity(ctx, &resealed)
        }
        IdAction::Passwd { new_password_file } => {
            let sealed = ctx.dir.load_identity()?;
            let identity = sealed.open(ctx.password(false)?.as_bytes())?;
            let new = PasswordSource {
                file: new_password_file.as_deref(),
                env: "TINCAN_NEW_PASSWORD",
                prompt: "New password: ",
            }
            .read(true)?;
            let resealed = SealedIdentity::seal(&identity, new.as_bytes(), sealed.kdf)?;
            ctx.dir.save_identity(&resealed)?;
            ctx.print(json!({"changed": true}), || "password changed".into());
            Ok(())
        }
    }
}

/// Finds a room by full id or unique prefix among known rooms.
fn resolve_room(store: &Store, text: &str) -> Result<RoomView> {
    let text = text.trim().to_ascii_lowercase();
    if let Ok(id) = RoomId::from_hex(&text) {
        return store
            .room(&id)?
            .ok_or_else(|| anyhow!("no room {id} is known here (deleted, or not received yet)"));
    }
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{text:?} is not a room id: use the hex id that `tincan room list` shows");
    }
    let matches: Vec<RoomView> = store
        .rooms()?
        .into_iter()
        .filter(|r| r.id.to_hex().starts_with(&text))
        .collect();
    match matches.len() {
        0 => bail!("no known room id starts with {text}"),
        1 => Ok(matches.into_iter().next().expect("one element")),
        n => bail!("{n} rooms start with {text}: give more digits"),
    }
}

fn room_json(r: &RoomView) -> serde_json::Value {
    json!({
        "id": r.id.to_hex(),
        "title": r.room.title,
        "owner": r.owner.to_hex(),
        "owner_fingerprint": r.owner.fingerprint().to_string(),
        "join_policy": match r.room.settings.join_policy { JoinPolicy::Open => "open", JoinPolicy::Invite => "invite" },
        "member_limit": r.room.settings.member_limit,
        "updated_ms": r.hlc.physical_ms(),
    })
}

fn outcome(a: &Applied) -> &'static str {
    match a {
        Applied::Stored => "stored",
        Applied::Sealed => "stored sealed (no key here)",
        Applied::Dropped(_) => "dropped",
        Applied::Duplicate => "duplicate",
        Applied::Superseded => "superseded",
        Applied::Pending(_) => "pending",
        _ => "other",
    }
}

fn room_command(ctx: &Ctx, action: RoomAction) -> Result<()> {
    match action {
        RoomAction::Create {
            title,
            invite_only,
            member_limit,
        } => {
            let mut node = ctx.unlock()?;
            let nonce: [u8; 16] = {
                let mut n = [0u8; 16];
                getrandom::fill(&mut n).map_err(|e| anyhow!("no randomness: {e}"))?;
                n
            };
            let settings = RoomSettings {
                join_policy: if invite_only {
                    JoinPolicy::Invite
                } else {
                    JoinPolicy::Open
                },
                member_limit,
            };
            let hlc = node.now()?;
            let (id, rec) = make::room(node.user_key(), hlc, nonce, &title, settings)?;
            node.write(rec)?;
            node.follow(id);
            let view = node
                .store
                .room(&id)?
                .ok_or_else(|| anyhow!("room vanished after writing"))?;
            ctx.print(room_json(&view), || format!("created room {id}  {title}"));
            Ok(())
        }
        RoomAction::List { nearby: true, .. } => {
            let node = ctx.unlock_running()?;
            let Some(link) = node.mesh.clone() else {
                bail!(
                    "no node is running on {}: start it with `tincan up` (the LAN is asked by the running node)",
                    ctx.dir.root().display()
                );
            };
            let rooms = link.runtime.block_on(
                link.mesh
                    .nearby_rooms(std::time::Duration::from_millis(1500)),
            )?;
            ctx.print(
                json!(
                    rooms
                        .iter()
                        .map(|r| json!({
                            "id": r.id.to_hex(),
                            "title": r.title,
                            "owner": r.owner.to_hex(),
                            "owner_fingerprint": r.owner.fingerprint().to_string(),
                            "owner_name": r.owner_name,
                            "members": r.members,
                            "via": r.via.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                        }))
                        .collect::<Vec<_>>()
                ),
                || {
                    if rooms.is_empty() {
                        return "no open rooms on this LAN (nodes are found by mDNS)".into();
                    }
                    rooms
                        .iter()
                        .map(|r| {
                            format!(
                                "{}  {}  (owner {} {}, {} members)  join: tincan room join {}",
                                r.id,
                                r.title,
                                r.owner_name.as_deref().unwrap_or("?"),
                                r.owner.fingerprint(),
                                r.members,
                                r.id
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
            Ok(())
        }
        RoomAction::List { mine, .. } => {
            let rooms = if mine {
                let node = ctx.unlock()?;
                node.store.rooms_of_user(&node.user_key().id())?
            } else {
                ctx.store()?.rooms()?
            };
            ctx.print(
                json!(rooms.iter().map(room_json).collect::<Vec<_>>()),
                || {
                    if rooms.is_empty() {
                        return "no rooms known".into();
                    }
                    rooms
                        .iter()
                        .map(|r| {
                            format!(
                                "{}  {}  (owner {})",
                                r.id,
                                r.room.title,
                                r.owner.fingerprint()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
            Ok(())
        }
        RoomAction::Show { room } => {
            let store = ctx.store()?;
            let r = resolve_room(&store, &room)?;
            let members = store.members(&r.id)?;
            let channels = store.channels(&r.id)?;
            let names: std::collections::HashMap<_, _> = store
                .profiles()?
                .into_iter()
                .map(|p| (p.profile.user, p.profile.username))
                .collect();
            let name =
                |u: &tincan_core::UserId| names.get(u).cloned().unwrap_or_else(|| "?".into());
            let mut v = room_json(&r);
            v["members"] = json!(members.iter().map(|m| json!({
                "user": m.user.to_hex(), "username": name(&m.user), "state": m.membership.as_str(),
                "moderator": m.membership == tincan_core::merge::Membership::Joined(MemberRole::Moderator), "owner": m.is_owner,
            })).collect::<Vec<_>>());
            v["channels"] = json!(channels.iter().map(|c| json!({
                "id": c.channel.id.to_hex(), "name": c.channel.name, "description": c.channel.description, "permissions": c.channel.permissions,
            })).collect::<Vec<_>>());
            ctx.print(v, || {
                let mut s = format!(
                    "{}  {}\n  owner    {} [{}]\n  joining  {}{}\n  members",
                    r.id,
                    r.room.title,
                    name(&r.owner),
                    r.owner.fingerprint(),
                    match r.room.settings.join_policy {
                        JoinPolicy::Open => "open",
                        JoinPolicy::Invite => "invite only",
                    },
                    r.room
                        .settings
                        .member_limit
                        .map(|l| format!(", at most {l}"))
                        .unwrap_or_default(),
                );
                for m in &members {
                    s.push_str(&format!(
                        "\n    {} [{}] {}{}",
                        name(&m.user),
                        m.user.fingerprint(),
                        m.membership.as_str(),
                        if m.is_owner { " (owner)" } else { "" }
                    ));
                }
                s.push_str("\n  channels");
                for c in &channels {
                    s.push_str(&format!(
                        "\n    {}  {}  {}",
                        c.channel.id,
                        c.channel.name,
                        c.channel.permissions.join(",")
                    ));
                }
                s
            });
            Ok(())
        }
        RoomAction::Join { room } => self_membership(ctx, &room, MemberState::Joined),
        RoomAction::Leave { room } => self_membership(ctx, &room, MemberState::Left),
        RoomAction::Member { room, user, action } => {
            let mut node = ctx.unlock()?;
            let r = resolve_room(&node.store, &room)?;
            let user = tincan_core::UserId::from_hex(&user)?;
            let (role, state) = match action {
                MemberAction::Invite => (MemberRole::Participant, MemberState::Invited),
                MemberAction::Admit => (MemberRole::Participant, MemberState::Joined),
                MemberAction::Promote => (MemberRole::Moderator, MemberState::Joined),
                MemberAction::Kick => (MemberRole::Participant, MemberState::Kicked),
                MemberAction::Ban => (MemberRole::Participant, MemberState::Banned),
            };
            let hlc = node.now()?;
            if matches!(state, MemberState::Kicked | MemberState::Banned) {
                // The Member record and a cutoff: entries they date after
                // what this node has seen of them stay hidden everywhere.
                for rec in node
                    .store
                    .removal(node.user_key(), &r.id, &user, state, hlc)?
                {
                    node.write(rec)?;
                }
            } else {
                let rec = make::member(node.user_key(), hlc, r.id, user, role, state)?;
                node.write(rec)?;
            }
            let m = node.store.membership(&r.id, &user)?;
            let link = match (action, &node.mesh) {
                (MemberAction::Invite, Some(mesh)) => {
                    Some(mesh.runtime.block_on(mesh.mesh.invite(r.id))?.to_link())
                }
                _ => None,
            };
            ctx.print(
                json!({"room": r.id.to_hex(), "user": user.to_hex(), "state": m.as_str(), "link": link}),
                || {
                    let mut s = format!(
                        "{} is now {} in {}",
                        user.fingerprint(),
                        m.as_str(),
                        r.room.title
                    );
                    if let Some(link) = &link {
                        s.push_str(&format!("\nsend them this link: {link}"));
                    }
                    s
                },
            );
            Ok(())
        }
        RoomAction::Link { room } => {
            let node = ctx.unlock_running()?;
            let r = resolve_room(&node.store, &room)?;
            let Some(mesh) = &node.mesh else {
                bail!("an invite link names this node's addresses: start `tincan up` first");
            };
            let link = mesh.runtime.block_on(mesh.mesh.invite(r.id))?.to_link();
            ctx.print(json!({"room": r.id.to_hex(), "link": link}), || {
                link.clone()
            });
            Ok(())
        }
        RoomAction::Delete { room } => {
            let mut node = ctx.unlock()?;
            let r = resolve_room(&node.store, &room)?;
            if r.owner != node.user_key().id() {
                bail!("refused: only the owner may delete room {}", r.id);
            }
            let hlc = node.now()?;
            node.write(make::delete_room(node.user_key(), hlc, r.room.nonce)?)?;
            node.unfollow(r.id);
            ctx.print(json!({"deleted": r.id.to_hex()}), || {
                format!("deleted room {}", r.id)
            });
            Ok(())
        }
    }
}

/// How long `room join` waits for a room it has not seen to arrive by sync.
const ROOM_ARRIVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Finds a room; on a running node, a full room id it has not seen yet is
/// fetched from peers first (follow its topic, wait for catch-up sync).
fn resolve_or_fetch_room(node: &Node, text: &str) -> Result<RoomView> {
    if text.trim().starts_with("tincan://") {
        let invite = tincan_core::invite::Invite::parse(text)?;
        let Some(link) = &node.mesh else {
            bail!("joining by invite link needs the running node: start `tincan up` first");
        };
        link.runtime.block_on(link.mesh.accept_invite(&invite))?;
        if let Some(r) = node.store.room(&invite.room)? {
            return Ok(r);
        }
        return wait_for_room(node, invite.room);
    }
    let id = match resolve_room(&node.store, text) {
        Ok(r) => return Ok(r),
        Err(e) => match (RoomId::from_hex(text.trim()), &node.mesh) {
            (Ok(id), Some(_)) => id,
            _ => return Err(e),
        },
    };
    node.follow(id);
    wait_for_room(node, id)
}

/// Waits (bounded) for a followed room to arrive by sync.
fn wait_for_room(node: &Node, id: RoomId) -> Result<RoomView> {
    let deadline = std::time::Instant::now() + ROOM_ARRIVAL_TIMEOUT;
    while std::time::Instant::now() < deadline {
        if let Some(r) = node.store.room(&id)? {
            return Ok(r);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    node.unfollow(id);
    bail!(
        "room {id} did not arrive from any peer within {} s: check `tincan peers`, or that its owner's node is up",
        ROOM_ARRIVAL_TIMEOUT.as_secs()
    )
}

fn self_membership(ctx: &Ctx, room: &str, state: MemberState) -> Result<()> {
    let mut node = ctx.unlock()?;
    let r = resolve_or_fetch_room(&node, room)?;
    let me = node.user_key().id();
    if r.owner == me {
        bail!("you own {}: owners are always members", r.id);
    }
    if state == MemberState::Joined
        && r.room.settings.join_policy == JoinPolicy::Invite
        && node.mesh.is_some()
        && node.store.locator(&r.id)?.is_some()
    {
        // An invitee's join is sealed once the owner's grant is here (it
        // follows the invite by a moment); without it, it goes out as a
        // plaintext join request.
        let deadline = std::time::Instant::now() + ROOM_ARRIVAL_TIMEOUT;
        while node.store.room_key(&r.id)?.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let hlc = node.now()?;
    let rec = make::member(
        node.user_key(),
        hlc,
        r.id,
        me,
        MemberRole::Participant,
        state,
    )?;
    node.write(rec)?;
    let m = node.store.membership(&r.id, &me)?;
    ctx.print(json!({"room": r.id.to_hex(), "state": m.as_str()}), || {
        let note = if m == tincan_core::merge::Membership::Requested {
            " (invite-only or full: the owner must admit you)"
        } else {
            ""
        };
        format!("{}: {}{}", r.room.title, m.as_str(), note)
    });
    Ok(())
}

fn resolve_channel(store: &Store, room: &RoomId, text: &str) -> Result<tincan_store::ChannelView> {
    let channels = store.channels(room)?;
    let lower = text.to_ascii_lowercase();
    let by_name: Vec<_> = channels.iter().filter(|c| c.channel.name == text).collect();
    if by_name.len() == 1 {
        return Ok(by_name[0].clone());
    }
    let by_id: Vec<_> = channels
        .iter()
        .filter(|c| !lower.is_empty() && c.channel.id.to_hex().starts_with(&lower))
        .collect();
    match (by_name.len(), by_id.len()) {
        (_, 1) => Ok(by_id[0].clone()),
        (n, _) if n > 1 => bail!("{n} channels are named {text:?}: use the channel id"),
        (_, 0) => bail!("no channel {text:?} in room {room}"),
        (_, n) => bail!("{n} channel ids start with {text}: give more digits"),
    }
}

fn channel_command(ctx: &Ctx, action: ChannelAction) -> Result<()> {
    match action {
        ChannelAction::Create {
            room,
            name,
            description,
            permissions: perms,
        } => {
            let mut node = ctx.unlock()?;
            let r = resolve_room(&node.store, &room)?;
            let perms = if perms.is_empty() {
                permissions::default_permissions()
            } else {
                perms
            };
            let id = ChannelId::random()?;
            let hlc = node.now()?;
            let rec = make::channel(node.user_key(), hlc, r.id, id, &name, &description, perms)?;
            node.write(rec)?;
            ctx.print(
                json!({"room": r.id.to_hex(), "channel": id.to_hex(), "name": name}),
                || format!("created channel {id}  {name} in {}", r.room.title),
            );
            Ok(())
        }
        ChannelAction::List { room } => {
            let store = ctx.store()?;
            let r = resolve_room(&store, &room)?;
            let channels = store.channels(&r.id)?;
            ctx.print(
                json!(channels.iter().map(|c| json!({"id": c.channel.id.to_hex(), "name": c.channel.name, "description": c.channel.description, "permissions": c.channel.permissions})).collect::<Vec<_>>()),
                || {
                    if channels.is_empty() {
                        return format!("no channels in {}", r.room.title);
                    }
                    channels
                        .iter()
                        .map(|c| format!("{}  {}  {}", c.channel.id, c.channel.name, c.channel.description))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
            Ok(())
        }
        ChannelAction::Delete { room, channel } => {
            let mut node = ctx.unlock()?;
            let r = resolve_room(&node.store, &room)?;
            let c = resolve_channel(&node.store, &r.id, &channel)?;
            let hlc = node.now()?;
            node.write(make::delete_channel(
                node.user_key(),
                hlc,
                r.id,
                c.channel.id,
            )?)?;
            ctx.print(json!({"deleted": c.channel.id.to_hex()}), || {
                format!("deleted channel {}  {}", c.channel.id, c.channel.name)
            });
            Ok(())
        }
    }
}

fn log_command(ctx: &Ctx, action: LogAction) -> Result<()> {
    match action {
        LogAction::Add { room, action } => {
            let mut node = ctx.unlock()?;
            let r = resolve_room(&node.store, &room)?;
            let me = node.user_key().id();
            // Refuse here rather than leave an entry nobody will see.
            if r.owner != me && !node.store.membership(&r.id, &me)?.is_member() {
                bail!(
                    "refused: you are not a member of {}: `tincan room join {}` first",
                    r.room.title,
                    r.id
                );
            }
            let hlc = node.now()?;
            let rec = make::log(node.user_key(), hlc, r.id, &action)?;
            let (a, id) = node.write(rec)?;
            ctx.print(json!({"id": id.to_hex(), "outcome": outcome(&a)}), || {
                format!("logged {id}")
            });
            Ok(())
        }
        LogAction::List {
            room,
            since,
            until,
            limit,
            after,
        } => {
            let store = ctx.store()?;
            let r = resolve_room(&store, &room)?;
            let after = after
                .map(|c| c.parse())
                .transpose()
                .map_err(|e: String| anyhow!(e))?;
            let from = since.map(|ms| Hlc::new(ms, 0)).unwrap_or(Hlc::ZERO);
            let to = until.map(|ms| Hlc::new(ms, u16::MAX)).unwrap_or(Hlc::MAX);
            let page = store.log(&r.id, from, to, after, limit.clamp(1, 10_000))?;
            let names: std::collections::HashMap<_, _> = store
                .profiles()?
                .into_iter()
                .map(|p| (p.profile.user, p.profile.username))
                .collect();
            ctx.print(
                json!({
                    "entries": page.entries.iter().map(|e| json!({"id": e.id.to_hex(), "user": e.user.to_hex(), "action": e.action, "time_ms": e.hlc.physical_ms()})).collect::<Vec<_>>(),
                    "next": page.next.map(|c| c.to_string()),
                }),
                || {
                    let mut lines: Vec<String> = page
                        .entries
                        .iter()
                        .map(|e| format!("{}  {} [{}]  {}", e.hlc.physical_ms(), names.get(&e.user).map(String::as_str).unwrap_or("?"), e.user.fingerprint(), e.action))
                        .collect();
                    if let Some(c) = page.next {
                        lines.push(format!("(more: --after {c})"));
                    }
                    if lines.is_empty() {
                        lines.push("no entries".into());
                    }
                    lines.join("\n")
                },
            );
            Ok(())
        }
    }
}

fn export(ctx: &Ctx, out: Option<&Path>) -> Result<()> {
    let store = ctx.store()?;
    let records = store.records_in_dependency_order()?;
    let text = serde_json::to_string_pretty(&Bundle::new(&records))?;
    match out {
        Some(path) => {
            tincan_store::datadir::write_atomic(path, text.as_bytes())?;
            eprintln!("exported {} records to {}", records.len(), path.display());
        }
        None => ctx.print(serde_json::from_str(&text)?, || text.clone()),
    }
    Ok(())
}

fn import(ctx: &Ctx, file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let bundle = Bundle::parse(&text)?;
    let store = ctx.store()?;
    let mut refused: Vec<String> = Vec::new();
    let mut decoded = Vec::new();
    for (i, w) in bundle.wire().into_iter().enumerate() {
        match w
            .map_err(|e| e.to_string())
            .and_then(|b| UnverifiedRecord::decode(&b).map_err(|e| e.to_string()))
        {
            Ok(u) => decoded.push((i, u)),
            Err(e) => refused.push(format!("record {i}: {e}")),
        }
    }
    let (idx, unverified): (Vec<usize>, Vec<UnverifiedRecord>) = decoded.into_iter().unzip();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut verified = Vec::new();
    for (i, r) in idx
        .into_iter()
        .zip(tincan_core::record::verify_batch(unverified, threads))
    {
        match r {
            Ok(s) => verified.push((i, s)),
            Err(e) => refused.push(format!("record {i}: {e}")),
        }
    }
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for chunk in verified.chunks(1000) {
        let (is, recs): (Vec<usize>, Vec<_>) = chunk.iter().cloned().unzip();
        for (i, r) in is.into_iter().zip(store.apply_batch(recs)?) {
            match r {
                Ok(a) => *counts.entry(outcome(&a)).or_default() += 1,
                Err(e) => refused.push(format!("record {i}: {e}")),
            }
        }
    }
    refused.sort_by_key(|s| {
        s.split(':')
            .next()
            .and_then(|n| n.trim_start_matches("record ").parse::<usize>().ok())
    });
    ctx.print(json!({"outcomes": counts, "refused": refused}), || {
        let mut s = format!("{} records in {}:", bundle.records.len(), file.display());
        for (k, n) in &counts {
            s.push_str(&format!(" {n} {k},"));
        }
        s.push_str(&format!(" {} refused", refused.len()));
        for r in &refused {
            s.push_str(&format!("\n  refused {r}"));
        }
        s
    });
    Ok(())
}
