//! A node's side of a community voice relay (`tincan-bootstrap`'s voice
//! relay): ask it for this voice socket's public address, or join a voice
//! channel through it and send one upload that it fans out to the others.
//!
//! ```no_run
//! # async fn demo(
//! #     endpoint: &tincan_media::VoiceEndpoint,
//! #     relay: tincan_media::relay_client::RelayAddr,
//! #     hello: tincan_media::control::Hello,
//! #     frame: tincan_media::VoiceDatagram,
//! # ) -> Result<(), tincan_media::relay_client::RelayClientError> {
//! use tincan_media::relay_client::{RelaySession, observe_address};
//! // Where NAT maps our voice socket, for hole punching:
//! let public = observe_address(endpoint, &relay).await?;
//! // Join (hello.proof from `Store::membership_proof`):
//! let session = RelaySession::join(endpoint, &relay, hello).await?;
//! let mut frame = frame;
//! frame.speaker = session.speaker();
//! session.send(&frame);
//! let bytes = session.recv().await?;
//! let d = tincan_media::VoiceDatagramRef::parse(&bytes).expect("the relay checked it");
//! let who = session.user_of(d.speaker);
//! # let _ = (public, who); Ok(()) }
//! ```
//!
//! The relay gives each member a speaker index in its welcome and announces
//! who holds which index as members come and go; a background task keeps
//! [`RelaySession::speakers`] up to date from those announcements. The relay
//! checked every datagram's speaker index against the connection that sent
//! it, so the table names the user who spoke.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;
use tincan_core::UserId;
use tokio::sync::watch;

use crate::control::{
    Answer, ControlError, Hello, MAX_CONTROL_MESSAGE, MemberMessage, Request, Update, Welcome,
    read_message, write_frame, write_message,
};
use crate::endpoint::{ConnectError, VoiceConnection, VoiceEndpoint};
use crate::protocol::VoiceDatagram;

/// How long the relay may take to answer a request before we give up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest update we read from a relay: an update is a few dozen bytes.
const MAX_UPDATE: usize = 1024;

/// A relay: its voice address and the PeerId it must prove (the same as
/// its libp2p identity, since it uses the same node key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAddr {
    /// UDP address of its voice endpoint.
    pub addr: SocketAddr,
    /// Its node's PeerId.
    pub peer: PeerId,
}

/// Which user holds which speaker index in the relay group.
pub type SpeakerTable = BTreeMap<u16, UserId>;

/// Talking to a relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayClientError {
    /// The relay could not be reached, or did not prove the PeerId asked for.
    #[error("cannot reach the voice relay: {0}: check its address and PeerId")]
    Connect(#[from] ConnectError),
    /// The connection broke while setting up.
    #[error("the voice relay connection broke: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The control stream failed or carried something unreadable.
    #[error("the voice relay's control stream failed: {0}")]
    Control(#[from] ControlError),
    /// The relay said no; its reason is for the user.
    #[error("the voice relay refused: {0}")]
    Refused(String),
    /// The relay answered something that is not an answer to our request.
    #[error("the voice relay answered {0}, not what was asked: it may run another tincan version")]
    UnexpectedAnswer(&'static str),
    /// The relay did not answer in time.
    #[error("the voice relay did not answer within {0:?}: it may be overloaded; try another")]
    Timeout(Duration),
}

fn answer_name(answer: &Answer) -> &'static str {
    match answer {
        Answer::Welcome(_) => "a welcome",
        Answer::Refused(_) => "a refusal",
        Answer::Observed(_) => "an observed address",
    }
}

async fn within<T>(what: impl Future<Output = T>) -> Result<T, RelayClientError> {
    tokio::time::timeout(ANSWER_TIMEOUT, what)
        .await
        .map_err(|_| RelayClientError::Timeout(ANSWER_TIMEOUT))
}

async fn request(
    endpoint: &VoiceEndpoint,
    relay: &RelayAddr,
    request: &Request,
) -> Result<
    (
        VoiceConnection,
        quinn::SendStream,
        quinn::RecvStream,
        Answer,
    ),
    RelayClientError,
> {
    let conn = within(endpoint.connect(relay.addr, relay.peer)).await??;
    let (mut send, mut recv) = within(conn.open_control()).await??;
    within(write_message(&mut send, request)).await??;
    let answer: Answer = within(read_message(&mut recv, MAX_CONTROL_MESSAGE)).await??;
    if let Answer::Refused(refused) = answer {
        conn.close();
        return Err(RelayClientError::Refused(refused.reason));
    }
    Ok((conn, send, recv, answer))
}

/// Asks the relay at which address it sees this endpoint: behind a NAT,
/// the public address of our voice socket, which peers punch towards.
pub async fn observe_address(
    endpoint: &VoiceEndpoint,
    relay: &RelayAddr,
) -> Result<SocketAddr, RelayClientError> {
    let (conn, _send, _recv, answer) = request(endpoint, relay, &Request::Observe).await?;
    conn.close();
    match answer {
        Answer::Observed(addr) => Ok(addr),
        other => Err(RelayClientError::UnexpectedAnswer(answer_name(&other))),
    }
}

/// Updates from the relay kept for a driver that reads them with
/// [`RelaySession::take_updates`]; past it the oldest are lost (the speaker
/// table itself stays right).
const UPDATE_QUEUE: usize = 256;

/// Member messages (evidence) waiting to be written; past it new ones are
/// dropped: evidence is sent again while the relay still forwards.
const OUTGOING_QUEUE: usize = 16;

/// Membership of a voice channel through a relay. Dropping it (or
/// [`RelaySession::leave`]) leaves the channel.
#[derive(Debug)]
pub struct RelaySession {
    conn: VoiceConnection,
    welcome: Welcome,
    speakers: watch::Receiver<SpeakerTable>,
    updates_rx: Option<tokio::sync::mpsc::Receiver<Update>>,
    // The control stream's writer: our member messages; it keeps the
    // stream open, since the relay takes its end as leaving.
    outgoing: tokio::sync::mpsc::Sender<Vec<u8>>,
    updates: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl RelaySession {
    /// Connects to the relay and joins the channel `hello` names, proving
    /// membership with `hello.proof` (build it with
    /// `tincan_store::Store::membership_proof(.., MAX_PROOF_RECORDS)`).
    pub async fn join(
        endpoint: &VoiceEndpoint,
        relay: &RelayAddr,
        hello: Hello,
    ) -> Result<RelaySession, RelayClientError> {
        let (conn, control, mut recv, answer) =
            request(endpoint, relay, &Request::Join(hello)).await?;
        let welcome = match answer {
            Answer::Welcome(welcome) => welcome,
            other => {
                conn.close();
                return Err(RelayClientError::UnexpectedAnswer(answer_name(&other)));
            }
        };
        let table: SpeakerTable = welcome
            .speakers
            .iter()
            .map(|entry| (entry.speaker, entry.user))
            .collect();
        let (table_tx, speakers) = watch::channel(table);
        let (updates_tx, updates_rx) = tokio::sync::mpsc::channel(UPDATE_QUEUE);
        let updates = tokio::spawn(async move {
            // Ends when the relay closes the stream or the connection; the
            // watch sender drops with it, which tells watchers.
            while let Ok(update) = read_message::<Update, _>(&mut recv, MAX_UPDATE).await {
                table_tx.send_modify(|table| match update {
                    Update::SpeakerJoined(entry) => {
                        table.insert(entry.speaker, entry.user);
                    }
                    Update::SpeakerLeft(speaker) => {
                        table.remove(&speaker);
                    }
                });
                // Nobody reading, or a reader that fell far behind: the
                // table above is what counts.
                let _ = updates_tx.try_send(update);
            }
        });
        let (outgoing, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(OUTGOING_QUEUE);
        let writer = tokio::spawn(async move {
            let mut control = control;
            while let Some(bytes) = queued.recv().await {
                if write_frame(&mut control, &bytes).await.is_err() {
                    break;
                }
            }
            // The sender side dropped: we leave.
            let _ = control.finish();
        });
        Ok(RelaySession {
            conn,
            welcome,
            speakers,
            updates_rx: Some(updates_rx),
            outgoing,
            updates,
            writer,
        })
    }

    /// The relay's updates to the speaker table as they come, for a driver
    /// that feeds them to its session (once; later calls get `None`). The
    /// channel ends when the relay closes the session.
    pub fn take_updates(&mut self) -> Option<tokio::sync::mpsc::Receiver<Update>> {
        self.updates_rx.take()
    }

    /// Queues a message for the relay on the control stream (evidence that
    /// someone it forwards to is no longer admitted). Never waits: `false`
    /// when the queue is full or the session is over.
    pub fn send_message(&self, message: &MemberMessage) -> bool {
        self.outgoing.try_send(message.encode()).is_ok()
    }

    /// The speaker index to write in every datagram we send.
    pub fn speaker(&self) -> u16 {
        self.welcome.speaker
    }

    /// Our address as the relay sees it (public, behind a NAT).
    pub fn observed(&self) -> SocketAddr {
        self.welcome.observed
    }

    /// The other members now: speaker index to user.
    pub fn speakers(&self) -> SpeakerTable {
        self.speakers.borrow().clone()
    }

    /// The user who speaks with `speaker`, if anyone does now.
    pub fn user_of(&self, speaker: u16) -> Option<UserId> {
        self.speakers.borrow().get(&speaker).copied()
    }

    /// A receiver that wakes on every change of the speaker table; its
    /// `changed()` fails once the relay has closed the session.
    pub fn watch_speakers(&self) -> watch::Receiver<SpeakerTable> {
        self.speakers.clone()
    }

    /// Sends a frame now or drops it (never waits). Its `speaker` must be
    /// [`Self::speaker`]: the relay drops any other.
    pub fn send(&self, datagram: &VoiceDatagram) -> bool {
        self.conn.send(datagram)
    }

    /// The next frame another member sent, as the relay forwarded it
    /// (parse it with [`crate::VoiceDatagramRef::parse`], look the speaker
    /// up with [`Self::user_of`]); an error once the session is over.
    pub async fn recv(&self) -> Result<Bytes, quinn::ConnectionError> {
        self.conn.recv_bytes().await
    }

    /// The connection to the relay (statistics, RTT, `closed()`).
    pub fn connection(&self) -> &VoiceConnection {
        &self.conn
    }

    /// Leaves the channel and closes the connection.
    pub fn leave(self) {
        // Dropping closes the connection; the relay takes that as leaving.
        drop(self);
    }
}

impl Drop for RelaySession {
    fn drop(&mut self) {
        self.updates.abort();
        self.writer.abort();
        self.conn.close();
    }
}
