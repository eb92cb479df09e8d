//! Which candidate addresses of a peer's presence we may send to.
//!
//! A presence's candidates are chosen by its publisher, so every address we
//! dial or punch is a packet we send where someone else pointed us. The
//! filter keeps only addresses a peer's voice socket can really be at, as
//! seen from our socket:
//! - never port 0, the unspecified address, multicast, or broadcast
//!   (255.255.255.255);
//! - loopback only when our own socket is bound to loopback (two nodes on
//!   one machine in a test); otherwise a loopback candidate aims our
//!   packets at some other program on our own machine;
//! - a private (RFC 1918, CGNAT, link-local, IPv6 unique-local) address only
//!   when one of our interfaces has an address in the same private block: a
//!   private address elsewhere is someone else's LAN, and we cannot reach
//!   it anyway;
//! - an IPv6 candidate only from an IPv6 socket.
//!
//! What passes may still be a victim's public address: the punch budget
//! ([`crate::pacer`]) bounds what we send there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tincan_media::presence::Candidate;

/// Why a candidate address was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateRefusal {
    /// Port 0 reaches no socket.
    #[error("port 0")]
    PortZero,
    /// 0.0.0.0 or ::.
    #[error("the unspecified address")]
    Unspecified,
    /// A multicast group.
    #[error("a multicast address")]
    Multicast,
    /// The limited broadcast address.
    #[error("the broadcast address")]
    Broadcast,
    /// Loopback, while our socket is not on loopback.
    #[error("a loopback address while our socket is not on loopback")]
    Loopback,
    /// A private block in which we have no interface.
    #[error("a private address in a network we have no interface in")]
    ForeignPrivate,
    /// An IPv6 address for an IPv4 socket.
    #[error("an IPv6 address for an IPv4 socket")]
    WrongFamily,
}

/// The private blocks a candidate and an interface must share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrivateBlock {
    Ten,
    OneSevenTwo,
    OneNineTwo,
    Cgnat,
    LinkLocal4,
    UniqueLocal6,
    LinkLocal6,
}

fn private_block(ip: IpAddr) -> Option<PrivateBlock> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            match o {
                [10, ..] => Some(PrivateBlock::Ten),
                [172, b, ..] if (16..32).contains(&b) => Some(PrivateBlock::OneSevenTwo),
                [192, 168, ..] => Some(PrivateBlock::OneNineTwo),
                [100, b, ..] if (64..128).contains(&b) => Some(PrivateBlock::Cgnat),
                [169, 254, ..] => Some(PrivateBlock::LinkLocal4),
                _ => None,
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if first & 0xfe00 == 0xfc00 {
                Some(PrivateBlock::UniqueLocal6)
            } else if first & 0xffc0 == 0xfe80 {
                Some(PrivateBlock::LinkLocal6)
            } else {
                None
            }
        }
    }
}

/// Whether an address is inside a private, link-local or loopback network
/// (a LAN path, as the planner classifies connections).
pub fn is_private(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    ip.is_loopback() || private_block(ip).is_some()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Checks one candidate address against our socket's bound address and our
/// interface addresses (see the module documentation).
pub fn check_candidate(
    addr: SocketAddr,
    bound: SocketAddr,
    interfaces: &[IpAddr],
) -> Result<(), CandidateRefusal> {
    if addr.port() == 0 {
        return Err(CandidateRefusal::PortZero);
    }
    let ip = canonical(addr.ip());
    if ip.is_unspecified() {
        return Err(CandidateRefusal::Unspecified);
    }
    if ip.is_multicast() {
        return Err(CandidateRefusal::Multicast);
    }
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(CandidateRefusal::Broadcast);
    }
    if bound.is_ipv4() && addr.is_ipv6() && ip.is_ipv6() {
        return Err(CandidateRefusal::WrongFamily);
    }
    if ip.is_loopback() {
        return if canonical(bound.ip()).is_loopback() {
            Ok(())
        } else {
            Err(CandidateRefusal::Loopback)
        };
    }
    if let Some(block) = private_block(ip) {
        let ours = interfaces
            .iter()
            .chain(std::iter::once(&bound.ip()))
            .any(|i| private_block(canonical(*i)) == Some(block));
        if !ours {
            return Err(CandidateRefusal::ForeignPrivate);
        }
    }
    Ok(())
}

/// The candidates of a presence that pass [`check_candidate`], in their
/// order, without duplicates; and for each refused one, why.
pub fn filter_candidates(
    candidates: &[Candidate],
    bound: SocketAddr,
    interfaces: &[IpAddr],
) -> (Vec<Candidate>, Vec<CandidateRefusal>) {
    let mut kept: Vec<Candidate> = Vec::with_capacity(candidates.len());
    let mut refused = Vec::new();
    for c in candidates {
        match check_candidate(c.addr, bound, interfaces) {
            Ok(()) if kept.iter().any(|k| k.addr == c.addr) => {}
            Ok(()) => kept.push(*c),
            Err(e) => refused.push(e),
        }
    }
    (kept, refused)
}

/// Our own host candidates' addresses: the bound address, or (bound to
/// all) the interface addresses of the socket's family, without loopback
/// unless there is nothing else (loopback reaches no other host).
pub fn host_addresses(bound: SocketAddr, interfaces: &[IpAddr]) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in interfaces {
        if ip.is_ipv4() == bound.is_ipv4() && !ip.is_unspecified() && !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    if ips.iter().any(|ip| !ip.is_loopback()) {
        ips.retain(|ip| !ip.is_loopback());
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect()
}

/// The v6 loopback, for tests and docs.
pub const LOOPBACK_V6: Ipv6Addr = Ipv6Addr::LOCALHOST;

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_media::presence::CandidateKind;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hostile_addresses_are_refused_and_reachable_ones_kept() {
        let bound = a("0.0.0.0:4433");
        let ifaces: Vec<IpAddr> = vec!["192.168.1.20".parse().unwrap()];
        let check = |s: &str| check_candidate(a(s), bound, &ifaces);
        assert_eq!(check("192.168.1.5:4000"), Ok(()));
        assert_eq!(check("203.0.113.7:4000"), Ok(()));
        assert_eq!(check("203.0.113.7:0"), Err(CandidateRefusal::PortZero));
        assert_eq!(check("0.0.0.0:4000"), Err(CandidateRefusal::Unspecified));
        assert_eq!(check("224.0.0.251:5353"), Err(CandidateRefusal::Multicast));
        assert_eq!(
            check("255.255.255.255:4000"),
            Err(CandidateRefusal::Broadcast)
        );
        assert_eq!(check("127.0.0.1:4000"), Err(CandidateRefusal::Loopback));
        assert_eq!(check("[::1]:4000"), Err(CandidateRefusal::WrongFamily));
        assert_eq!(
            check("10.1.2.3:4000"),
            Err(CandidateRefusal::ForeignPrivate)
        );
        assert_eq!(
            check("172.16.0.1:4000"),
            Err(CandidateRefusal::ForeignPrivate)
        );
        assert_eq!(
            check("169.254.1.1:4000"),
            Err(CandidateRefusal::ForeignPrivate)
        );
        assert_eq!(
            check("100.64.0.1:4000"),
            Err(CandidateRefusal::ForeignPrivate)
        );
        // v4-mapped v6 is judged as the v4 address it is.
        let v6 = a("[::]:4433");
        assert_eq!(
            check_candidate(a("[::ffff:127.0.0.1]:4000"), v6, &ifaces),
            Err(CandidateRefusal::Loopback)
        );
        assert_eq!(
            check_candidate(a("[ff02::1]:4000"), v6, &ifaces),
            Err(CandidateRefusal::Multicast)
        );
        assert_eq!(
            check_candidate(a("[fd00::1]:4000"), v6, &ifaces),
            Err(CandidateRefusal::ForeignPrivate)
        );
        assert_eq!(
            check_candidate(a("[2001:db8::1]:4000"), v6, &ifaces),
            Ok(())
        );
        // On loopback (two nodes on one machine), loopback is the way.
        let lo = a("127.0.0.1:4433");
        assert_eq!(check_candidate(a("127.0.0.1:5000"), lo, &[]), Ok(()));
        // The bound address counts as an interface.
        let ten = a("10.0.0.1:4433");
        assert_eq!(check_candidate(a("10.9.9.9:5000"), ten, &[]), Ok(()));
    }

    #[test]
    fn the_filter_keeps_order_drops_duplicates_and_says_why() {
        let c = |s: &str| Candidate {
            addr: a(s),
            kind: CandidateKind::Host,
        };
        let (kept, refused) = filter_candidates(
            &[
                c("127.0.0.1:1"),
                c("198.51.100.1:9"),
                c("255.255.255.255:9"),
                c("198.51.100.1:9"),
                c("192.168.1.5:9"),
            ],
            a("0.0.0.0:1"),
            &["192.168.1.2".parse().unwrap()],
        );
        assert_eq!(kept, vec![c("198.51.100.1:9"), c("192.168.1.5:9")]);
        assert_eq!(
            refused,
            vec![CandidateRefusal::Loopback, CandidateRefusal::Broadcast]
        );
    }

    #[test]
    fn host_addresses_skip_loopback_unless_alone() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.168.1.2".parse().unwrap();
        let v6: IpAddr = LOOPBACK_V6.into();
        assert_eq!(
            host_addresses(a("0.0.0.0:7"), &[lo, lan, v6, lan]),
            vec![a("192.168.1.2:7")]
        );
        assert_eq!(
            host_addresses(a("0.0.0.0:7"), &[lo]),
            vec![a("127.0.0.1:7")]
        );
        assert_eq!(
            host_addresses(a("10.0.0.1:7"), &[lan]),
            vec![a("10.0.0.1:7")]
        );
    }
}
