//! The sans-IO lease keeper: which ports to map, when to look for the
//! router, when to renew, when to give up. Time is passed in; the driver
//! ([`crate::driver`]) carries out its [`Action`]s and feeds back results.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// The transport of a mapped port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// UDP (QUIC, voice).
    Udp,
    /// TCP.
    Tcp,
}

/// A local port this node wants reachable from outside its router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Want {
    /// UDP or TCP.
    pub transport: Transport,
    /// The port the node's socket is bound to.
    pub port: u16,
}

/// Timing of the lease keeper.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease asked of the router. Renewed at half of it, so a node that
    /// dies without removing its mappings leaves them for at most this long.
    pub lease: Duration,
    /// First wait before searching again when no router answered; doubles
    /// up to [`LeaseConfig::max_retry`].
    pub retry: Duration,
    /// Longest wait between searches or failed mapping attempts.
    pub max_retry: Duration,
    /// Mapping failures in a row after which the router is looked for again
    /// (it may have restarted or changed).
    pub failures_before_search: u32,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease: Duration::from_secs(3600),
            retry: Duration::from_secs(30),
            max_retry: Duration::from_secs(15 * 60),
            failures_before_search: 2,
        }
    }
}

/// What the router told us when it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Our address on the router's LAN (where mapped traffic is sent).
    pub local_ip: Ipv4Addr,
    /// The router's address on the outside.
    pub external_ip: IpAddr,
}

/// Something for the driver to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Look for the router (SSDP) and ask its external address; answer
    /// with [`Leases::on_search`].
    Search,
    /// Map `external_port` (0: any) on the router to `local`; answer with
    /// [`Leases::on_mapped`].
    Map {
        /// The port this is for.
        want: Want,
        /// Our LAN address and the socket's port.
        local: SocketAddrV4,
        /// The external port to ask for; 0 lets the router choose.
        external_port: u16,
        /// Lease in seconds.
        lease_secs: u32,
    },
    /// Remove a mapping (at shutdown or when the port is no longer wanted).
    Remove {
        /// UDP or TCP.
        transport: Transport,
        /// The external port mapped.
        external_port: u16,
    },
}

/// What changed, for the node to announce or withdraw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `want` is reachable from outside at `external`.
    Mapped {
        /// The local port.
        want: Want,
        /// The router's address and the mapped port.
        external: SocketAddr,
    },
    /// The mapping of `want` at `external` is gone (renewal failed, the
    /// router changed): stop announcing it.
    Lost {
        /// The local port.
        want: Want,
        /// What was announced.
        external: SocketAddr,
    },
    /// No usable router: why, in words for a log line.
    Unavailable(String),
}

#[derive(Clone, Debug)]
enum GatewayState {
    /// Search when `at` comes; `wait` is the backoff that led here.
    Idle {
        at: Instant,
        wait: Duration,
    },
    Searching {
        wait: Duration,
    },
    Found(Gateway),
}

#[derive(Clone, Debug)]
enum LeaseState {
    /// Ask when the router is known and `at` has come.
    Due { at: Instant, failures: u32 },
    /// `announced`: the address held before this renewal, withdrawn if it
    /// fails.
    Asking {
        failures: u32,
        announced: Option<SocketAddr>,
    },
    Held {
        external: SocketAddr,
        renew_at: Instant,
    },
}

/// The lease keeper. Feed it [`Leases::want`], [`Leases::on_search`] and
/// [`Leases::on_mapped`]; take [`Leases::poll_action`] and
/// [`Leases::poll_event`]; sleep until [`Leases::poll_timeout`].
#[derive(Debug)]
pub struct Leases {
    config: LeaseConfig,
    gateway: GatewayState,
    leases: BTreeMap<Want, LeaseState>,
    events: VecDeque<Event>,
}

/// Whether a router's external address can be reached from the internet.
/// A private, shared (carrier-grade NAT, 100.64/10), loopback, link-local
/// or unspecified one means another NAT sits outside the router: a mapping
/// would announce an address nobody can reach.
pub fn is_usable_external(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 0x40)
                || o[0] == 0)
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

impl Leases {
    /// A keeper that searches for the router at `now`.
    pub fn new(config: LeaseConfig, now: Instant) -> Self {
        let wait = config.retry;
        Leases {
            config,
            gateway: GatewayState::Idle { at: now, wait },
            leases: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Keep `want` mapped from now on. Wanting a port twice is harmless.
    pub fn want(&mut self, want: Want, now: Instant) {
        self.leases.entry(want).or_insert(LeaseState::Due {
            at: now,
            failures: 0,
        });
    }

    /// The external addresses held now.
    pub fn held(&self) -> Vec<(Want, SocketAddr)> {
        self.leases
            .iter()
            .filter_map(|(w, s)| match s {
                LeaseState::Held { external, .. } => Some((*w, *external)),
                _ => None,
            })
            .collect()
    }

    /// The next thing to do at `now`, if any.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        match self.gateway.clone() {
            GatewayState::Idle { at, wait } => {
                if at <= now && !self.leases.is_empty() {
                    self.gateway = GatewayState::Searching { wait };
                    return Some(Action::Search);
                }
                None
            }
            GatewayState::Searching { .. } => None,
            GatewayState::Found(gateway) => {
                let lease_secs = u32::try_from(self.config.lease.as_secs()).unwrap_or(u32::MAX);
                for (want, state) in self.leases.iter_mut() {
                    let (due, failures, external_port, announced) = match *state {
                        LeaseState::Due { at, failures } => (at <= now, failures, want.port, None),
                        // Renew the same external port we announce.
                        LeaseState::Held { external, renew_at } => {
                            (renew_at <= now, 0, external.port(), Some(external))
                        }
                        LeaseState::Asking { .. } => (false, 0, 0, None),
                    };
                    if due {
                        *state = LeaseState::Asking {
                            failures,
                            announced,
                        };
                        return Some(Action::Map {
                            want: *want,
                            local: SocketAddrV4::new(gateway.local_ip, want.port),
                            external_port,
                            lease_secs,
                        });
                    }
                }
                None
            }
        }
    }

    /// The driver's answer to [`Action::Search`].
    pub fn on_search(&mut self, result: Result<Gateway, String>, now: Instant) {
        let wait = match self.gateway {
            GatewayState::Searching { wait } => wait,
            _ => self.config.retry,
        };
        let again = |reason: String, this: &mut Leases| {
            this.events.push_back(Event::Unavailable(reason));
            this.gateway = GatewayState::Idle {
                at: now + wait,
                wait: (wait * 2).min(this.config.max_retry),
            };
        };
        match result {
            Err(e) => again(format!("no UPnP router answered ({e})"), self),
            Ok(g) if !is_usable_external(g.external_ip) => again(
                format!(
                    "the router's external address {} is not reachable from the internet (another NAT is outside it): port mapping cannot help, relays will",
                    g.external_ip
                ),
                self,
            ),
            Ok(g) => {
                self.gateway = GatewayState::Found(g);
                for state in self.leases.values_mut() {
                    if let LeaseState::Due { at, .. } = state {
                        *at = now;
                    }
                }
            }
        }
    }

    /// The driver's answer to [`Action::Map`]: the external port mapped, or
    /// why not.
    pub fn on_mapped(&mut self, want: Want, result: Result<u16, String>, now: Instant) {
        let GatewayState::Found(gateway) = self.gateway.clone() else {
            return;
        };
        let Some(state) = self.leases.get_mut(&want) else {
            return;
        };
        let (failures, previous) = match *state {
            LeaseState::Asking {
                failures,
                announced,
            } => (failures, announced),
            _ => return,
        };
        match result {
            Ok(port) => {
                let external = SocketAddr::new(gateway.external_ip, port);
                *state = LeaseState::Held {
                    external,
                    renew_at: now + self.config.lease / 2,
                };
                if previous != Some(external) {
                    if let Some(old) = previous {
                        self.events.push_back(Event::Lost {
                            want,
                            external: old,
                        });
                    }
                    self.events.push_back(Event::Mapped { want, external });
                }
            }
            Err(e) => {
                let failures = failures + 1;
                let wait = self
                    .config
                    .retry
                    .saturating_mul(1 << failures.min(8))
                    .min(self.config.max_retry);
                *state = LeaseState::Due {
                    at: now + wait,
                    failures,
                };
                if let Some(external) = previous {
                    self.events.push_back(Event::Lost { want, external });
                }
                tracing::info!(
                    ?want,
                    "the router refused a port mapping ({e}); retrying in {wait:?}"
                );
                if failures >= self.config.failures_before_search {
                    // The router may have restarted or been replaced.
                    self.gateway = GatewayState::Idle {
                        at: now + wait,
                        wait: self.config.retry,
                    };
                }
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Leases::poll_action`] next has something to do (None: only
    /// after new input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.gateway {
            GatewayState::Idle { at, .. } if !self.leases.is_empty() => Some(*at),
            GatewayState::Idle { .. } | GatewayState::Searching { .. } => None,
            GatewayState::Found(_) => self
                .leases
                .values()
                .filter_map(|s| match s {
                    LeaseState::Due { at, .. } => Some(*at),
                    LeaseState::Held { renew_at, .. } => Some(*renew_at),
                    LeaseState::Asking { .. } => None,
                })
                .min(),
        }
    }

    /// The removals to carry out before the node stops, so it leaves no
    /// open port on the router behind. Forgets every lease.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let held = self.held();
        self.leases.clear();
        held.into_iter()
            .map(|(w, e)| Action::Remove {
                transport: w.transport,
                external_port: e.port(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: Want = Want {
        transport: Transport::Udp,
        port: 4000,
    };

    fn gateway(ext: [u8; 4]) -> Gateway {
        Gateway {
            local_ip: Ipv4Addr::new(192, 168, 1, 20),
            external_ip: IpAddr::from(ext),
        }
    }

    #[test]
    fn maps_renews_at_half_the_lease_and_removes_at_shutdown() {
        let t0 = Instant::now();
        let mut l = Leases::new(LeaseConfig::default(), t0);
        assert_eq!(l.poll_action(t0), None, "nothing wanted, nothing searched");
        l.want(UDP, t0);
        assert_eq!(l.poll_action(t0), Some(Action::Search));
        assert_eq!(l.poll_action(t0), None, "one search at a time");
        l.on_search(Ok(gateway([11, 0, 0, 1])), t0);
        let Some(Action::Map {
            local,
            external_port,
            ..
        }) = l.poll_action(t0)
        else {
            panic!("expected a mapping request")
        };
        assert_eq!(local, "192.168.1.20:4000".parse().unwrap());
        assert_eq!(external_port, 4000, "the same port first");
        l.on_mapped(UDP, Ok(4000), t0);
        let ext: SocketAddr = "11.0.0.1:4000".parse().unwrap();
        assert_eq!(
            l.poll_event(),
            Some(Event::Mapped {
                want: UDP,
                external: ext
            })
        );
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(1800)));
        let later = t0 + Duration::from_secs(1800);
        assert!(matches!(
            l.poll_action(later),
            Some(Action::Map {
                external_port: 4000,
                ..
            })
        ));
        l.on_mapped(UDP, Ok(4000), later);
        assert_eq!(
            l.shutdown(),
            vec![Action::Remove {
                transport: Transport::Udp,
                external_port: 4000
            }]
        );
    }

    #[test]
    fn a_router_behind_another_nat_is_not_used_and_searches_back_off() {
        let t0 = Instant::now();
        let mut l = Leases::new(LeaseConfig::default(), t0);
        l.want(UDP, t0);
        assert_eq!(l.poll_action(t0), Some(Action::Search));
        l.on_search(Ok(gateway([100, 64, 3, 4])), t0);
        assert!(matches!(l.poll_event(), Some(Event::Unavailable(_))));
        assert_eq!(l.poll_action(t0), None);
        let t1 = l.poll_timeout().unwrap();
        assert_eq!(t1, t0 + Duration::from_secs(30));
        assert_eq!(l.poll_action(t1), Some(Action::Search));
        l.on_search(Err("timed out".into()), t1);
        assert_eq!(l.poll_timeout(), Some(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn a_failed_renewal_withdraws_the_address_and_looks_for_the_router_again() {
        let t0 = Instant::now();
        let mut l = Leases::new(LeaseConfig::default(), t0);
        l.want(UDP, t0);
        l.poll_action(t0);
        l.on_search(Ok(gateway([11, 0, 0, 1])), t0);
        l.poll_action(t0);
        l.on_mapped(UDP, Ok(4000), t0);
        l.poll_event();
        let t1 = t0 + Duration::from_secs(1800);
        l.poll_action(t1);
        l.on_mapped(UDP, Err("router gone".into()), t1);
        assert!(matches!(l.poll_event(), Some(Event::Lost { .. })));
        let t2 = l.poll_timeout().unwrap();
        assert_eq!(
            l.poll_action(t2).map(|a| matches!(a, Action::Map { .. })),
            Some(true)
        );
        l.on_mapped(UDP, Err("router gone".into()), t2);
        let t3 = l.poll_timeout().unwrap();
        assert_eq!(
            l.poll_action(t3),
            Some(Action::Search),
            "two failures: search again"
        );
    }

    #[test]
    fn usable_external_addresses() {
        for bad in [
            "10.1.2.3",
            "192.168.0.1",
            "100.100.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "169.254.1.1",
        ] {
            assert!(!is_usable_external(bad.parse().unwrap()), "{bad}");
        }
        for good in ["11.0.0.1", "81.2.69.160"] {
            assert!(is_usable_external(good.parse().unwrap()), "{good}");
        }
    }
}
