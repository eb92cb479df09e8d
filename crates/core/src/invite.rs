//! Invite links: how a room is handed from one person to another.
//!
//! `tincan://join/<room id hex>?k=<locator secret hex>&via=<address>...`
//!
//! - the room id names the room;
//! - `k`, only for an invite-only room, is its locator secret
//!   ([`LocatorSecret`]): where the room lives on the wire (its gossip topic,
//!   DHT key and sync scope come from it, never from the public room id).
//!   Whoever holds the link can find the room and ask to join; the room's
//!   content stays sealed to the members the owner grants keys to;
//! - each `via` is a way to reach a peer that holds the room (a multiaddr),
//!   percent-encoded.
//!
//! [`Invite::parse`] also takes a bare room id (32 hex digits), which is all
//! an open room needs. Parsing never panics, whatever the text: it is fed
//! links from chat windows and clipboards (and fuzzed).

use crate::record::RoomId;
use crate::seal::LocatorSecret;

/// The scheme and path every invite link starts with.
pub const LINK_PREFIX: &str = "tincan://join/";
/// Longest invite link accepted, in bytes: more than the longest
/// [`Invite::to_link`] makes ([`MAX_VIA`] addresses of [`MAX_VIA_BYTES`],
/// each byte percent-encoded), so every link we make parses.
pub const MAX_LINK_BYTES: usize = 16 * 1024;
/// Most `via` addresses in one link.
pub const MAX_VIA: usize = 16;
/// Longest `via` address, in bytes once decoded.
pub const MAX_VIA_BYTES: usize = 256;

/// A room and how to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The room.
    pub room: RoomId,
    /// The locator secret of an invite-only room; `None` for an open room.
    pub locator: Option<LocatorSecret>,
    /// Ways to reach a peer that holds the room (multiaddrs), best first.
    pub via: Vec<String>,
}

/// Text that is not an invite link.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum InviteError {
    /// Neither a link nor a room id.
    #[error(
        "not an invite: expected a link starting with {LINK_PREFIX} or a room id of 32 hex digits"
    )]
    NotAnInvite,
    /// Longer than any link we make.
    #[error("the invite is {len} bytes; the limit is {MAX_LINK_BYTES}: copy the link again")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The room id part is not 32 hex digits.
    #[error("the invite's room id is not 32 hex digits: copy the whole link again")]
    BadRoomId,
    /// The `k` parameter is not 64 hex digits, or is given twice.
    #[error("the invite's key (k=) is not one value of 64 hex digits: copy the whole link again")]
    BadLocator,
    /// A `via` address that does not decode, or too many of them.
    #[error("the invite's address (via=) is not usable: {why}")]
    BadVia {
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Invite {
    /// An invite to an open room (no locator, no address).
    pub fn open(room: RoomId) -> Self {
        Invite {
            room,
            locator: None,
            via: Vec::new(),
        }
    }

    /// The link form.
    pub fn to_link(&self) -> String {
        let mut out = format!("{LINK_PREFIX}{}", self.room.to_hex());
        let mut sep = '?';
        if let Some(l) = &self.locator {
            out.push(sep);
            out.push_str("k=");
            out.push_str(&hex::encode(l.0));
            sep = '&';
        }
        for v in &self.via {
            out.push(sep);
            out.push_str("via=");
            percent_encode(v, &mut out);
            sep = '&';
        }
        out
    }

    /// Parses a link made by [`Invite::to_link`], or a bare room id.
    /// Surrounding white space is ignored; unknown parameters are ignored
    /// (a newer build may add some).
    pub fn parse(text: &str) -> Result<Invite, InviteError> {
        let text = text.trim();
        if text.len() > MAX_LINK_BYTES {
            return Err(InviteError::TooLong { len: text.len() });
        }
        if !text.starts_with(LINK_PREFIX) {
            if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                let room = RoomId::from_hex(text).map_err(|_| InviteError::BadRoomId)?;
                return Ok(Invite::open(room));
            }
            return Err(InviteError::NotAnInvite);
        }
        let rest = &text[LINK_PREFIX.len()..];
        let (room_hex, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let room_hex = room_hex.strip_suffix('/').unwrap_or(room_hex);
        if room_hex.len() != 32 || !room_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InviteError::BadRoomId);
        }
        let room = RoomId::from_hex(room_hex).map_err(|_| InviteError::BadRoomId)?;
        let mut invite = Invite::open(room);
        for pair in query.unwrap_or_default().split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "k" => {
                    if invite.locator.is_some() || value.len() != 64 {
                        return Err(InviteError::BadLocator);
                    }
                    let mut secret = [0u8; 32];
                    hex::decode_to_slice(value, &mut secret)
                        .map_err(|_| InviteError::BadLocator)?;
                    invite.locator = Some(LocatorSecret(secret));
                }
                "via" => {
                    if invite.via.len() == MAX_VIA {
                        return Err(InviteError::BadVia {
                            why: "more addresses than an invite carries",
                        });
                    }
                    invite.via.push(percent_decode(value)?);
                }
                _ => {}
            }
        }
        Ok(invite)
    }
}

/// Bytes left as they are in a `via` value: RFC 3986's unreserved
/// characters and the separators of a multiaddr, which are legal in a query.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b':')
}

fn percent_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

fn percent_decode(s: &str) -> Result<String, InviteError> {
    let bad = |why| InviteError::BadVia { why };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(bad("a % is not followed by two hex digits"))?;
            let mut v = [0u8; 1];
            hex::decode_to_slice(hex, &mut v)
                .map_err(|_| bad("a % is not followed by two hex digits"))?;
            out.push(v[0]);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
        if out.len() > MAX_VIA_BYTES {
            return Err(bad("an address is longer than 256 bytes"));
        }
    }
    let text = String::from_utf8(out).map_err(|_| bad("an address is not UTF-8 text"))?;
    if text.is_empty() {
        return Err(bad("an address is empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(bad("an address holds control characters"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId([0xab; 16])
    }

    #[test]
    fn a_link_round_trips_with_its_secret_and_addresses() {
        let invite = Invite {
            room: room(),
            locator: Some(LocatorSecret([7; 32])),
            via: vec![
                "/ip4/192.168.1.20/udp/4001/quic-v1/p2p/12D3KooWabc".into(),
                "/dns4/relay.example/tcp/4001?x=1&y= z%".into(),
            ],
        };
        let link = invite.to_link();
        assert!(link.starts_with("tincan://join/abababababababababababababababab?k=0707"));
        assert!(link.contains("via=/ip4/192.168.1.20/udp/4001/quic-v1/p2p/12D3KooWabc&"));
        assert!(link.contains("%3Fx%3D1%26y%3D%20z%25"), "{link}");
        assert_eq!(Invite::parse(&link).unwrap(), invite);
        assert_eq!(Invite::parse(&format!("  {link}\n")).unwrap(), invite);
    }

    #[test]
    fn an_open_room_is_a_bare_id_or_a_link_without_a_key() {
        let id = room().to_hex();
        assert_eq!(Invite::parse(&id).unwrap(), Invite::open(room()));
        let link = Invite::open(room()).to_link();
        assert_eq!(link, format!("tincan://join/{id}"));
        assert_eq!(Invite::parse(&link).unwrap(), Invite::open(room()));
        // Unknown parameters from a newer build are ignored.
        assert_eq!(
            Invite::parse(&format!("{link}?future=1&&")).unwrap(),
            Invite::open(room())
        );
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        let id = room().to_hex();
        assert_eq!(Invite::parse("hello"), Err(InviteError::NotAnInvite));
        assert_eq!(Invite::parse(""), Err(InviteError::NotAnInvite));
        assert_eq!(
            Invite::parse("tincan://join/abc"),
            Err(InviteError::BadRoomId)
        );
        assert_eq!(
            Invite::parse(&format!("tincan://join/{id}?k=12")),
            Err(InviteError::BadLocator)
        );
        let k = "00".repeat(32);
        assert_eq!(
            Invite::parse(&format!("tincan://join/{id}?k={k}&k={k}")),
            Err(InviteError::BadLocator)
        );
        assert!(matches!(
            Invite::parse(&format!("tincan://join/{id}?via=%zz")),
            Err(InviteError::BadVia { .. })
        ));
        assert!(matches!(
            Invite::parse(&format!("tincan://join/{id}?via=%")),
            Err(InviteError::BadVia { .. })
        ));
        assert!(matches!(
            Invite::parse(&format!("tincan://join/{id}?via=%ff%fe")),
            Err(InviteError::BadVia { .. })
        ));
        assert!(matches!(
            Invite::parse(&format!("tincan://join/{id}?via=a%0Ab")),
            Err(InviteError::BadVia { .. })
        ));
        let many = "&via=x".repeat(MAX_VIA + 1);
        assert!(matches!(
            Invite::parse(&format!("tincan://join/{id}?{many}")),
            Err(InviteError::BadVia { .. })
        ));
        let long = "x".repeat(MAX_LINK_BYTES);
        // The longest link we make parses.
        let longest = Invite {
            room: room(),
            locator: Some(LocatorSecret([1; 32])),
            // Two bytes each, all percent-encoded: six bytes a character.
            via: vec!["é".repeat(MAX_VIA_BYTES / 2); MAX_VIA],
        };
        assert_eq!(Invite::parse(&longest.to_link()).unwrap(), longest);
        assert!(matches!(
            Invite::parse(&format!("tincan://join/{id}?via={long}")),
            Err(InviteError::TooLong { .. })
        ));
        // Multi-byte characters next to where the parser slices.
        assert!(Invite::parse("tincan://join/ééééééééééééééééé").is_err());
        assert!(Invite::parse("tincan://join/").is_err());
    }
}
