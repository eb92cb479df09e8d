//! Network-namespace topologies and processes shared by the voice tests and
//! the latency harness. Addresses: 10.77.x.y, 10.78.0.y, 10.79.0.y, only
//! inside namespaces the caller creates.

use std::path::Path;

use crate::{Namespaces, Tincan, sh};

/// A child process killed (and reaped) on drop.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A veth pair: `from_if` in `from`, `to_if` in `to`.
pub fn veth(from: &str, from_if: &str, to: &str, to_if: &str) {
    sh(&[
        "ip", "-n", from, "link", "add", from_if, "type", "veth", "peer", "name", to_if, "netns",
        to,
    ]);
}

/// Gives `dev` in `ns` the address `cidr` and brings it up.
pub fn addr(ns: &str, dev: &str, cidr: &str) {
    sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
    sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
}

/// Runs a command inside namespace `ns`; it must succeed.
pub fn in_ns(ns: &str, args: &[&str]) {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v);
}

/// Loss on a router: each forwarded packet dropped with `probability`
/// (this kernel has no netem; iptables' statistic match does the loss).
pub fn lossy(router: &str, probability: f64) {
    let p = probability.to_string();
    in_ns(
        router,
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ],
    );
}

/// The public segment 10.77.2.0/24 (bridge in `sw`) with the bootstrap
/// node `boot` at .1, and two homes: `a` (10.79.0.2) behind router `rta`
/// (.253 outside) and `b` (10.78.0.2) behind `rtb` (.254 outside). Both
/// routers masquerade; `symmetric_b` makes rtb pick a random port per
/// destination (`MASQUERADE --random`), which defeats hole punching. No
/// port forward anywhere: home routers have none.
pub fn two_homes(prefix: &str, symmetric_b: bool) -> Namespaces {
    let ns = Namespaces::create(prefix, &["boot", "rta", "a", "rtb", "b", "sw"]);
    let [boot, rta, a, rtb, b, sw] = [0, 1, 2, 3, 4, 5].map(|i| ns.names[i].as_str());
    sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
    for (i, (host, cidr)) in [
        (boot, "10.77.2.1/24"),
        (rta, "10.77.2.253/24"),
        (rtb, "10.77.2.254/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let port = format!("p{i}");
        veth(sw, &port, host, "eth0");
        sh(&["ip", "-n", sw, "link", "set", &port, "master", "br0"]);
        sh(&["ip", "-n", sw, "link", "set", &port, "up"]);
        addr(host, "eth0", cidr);
    }
    for (rt, home, net, random) in [(rta, a, "10.79.0", false), (rtb, b, "10.78.0", symmetric_b)] {
        veth(rt, "eth1", home, "eth0");
        addr(rt, "eth1", &format!("{net}.1/24"));
        addr(home, "eth0", &format!("{net}.2/24"));
        sh(&[
            "ip",
            "-n",
            home,
            "route",
            "add",
            "default",
            "via",
            &format!("{net}.1"),
        ]);
        in_ns(rt, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let src = format!("{net}.0/24");
        let mut rule = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &src,
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ];
        if random {
            rule.push("--random");
        }
        in_ns(rt, &rule);
        // Like any home router, nothing unsolicited from outside reaches the
        // router itself. (Without this, the first punch to arrive would
        // leave a conntrack entry on the router that makes MASQUERADE pick
        // another port for the reply: no home router behaves like that.)
        in_ns(
            rt,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "DROP",
            ],
        );
    }
    ns
}

/// Starts tincan-bootstrap (with its voice relay) in `ns` on `ip`; returns
/// the process, its mesh address and its voice relay as `IP:PORT/PEERID`.
pub fn start_bootstrap(dir: &Path, ns: &str, ip: &str) -> (Kill, String, String) {
    start_bootstrap_with(dir, ns, ip, "")
}

/// [`start_bootstrap`] with more configuration (TOML tables, e.g.
/// `[relay_limits]`) after the defaults.
pub fn start_bootstrap_with(dir: &Path, ns: &str, ip: &str, more: &str) -> (Kill, String, String) {
    let config = dir.join("bootstrap.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = {:?}\nlisten = [\"/ip4/{ip}/tcp/4001\", \"/ip4/{ip}/udp/4001/quic-v1\"]\n\
             [voice_relay]\nlisten = \"{ip}:4434\"\n{more}",
            dir.join("boot.key").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut boot = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(crate::workspace_bin("tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let boot_addr = crate::first_stdout_line(&mut boot);
    let peer = boot_addr.rsplit("/p2p/").next().unwrap().to_owned();
    (Kill(boot), boot_addr, format!("{ip}:4434/{peer}"))
}

/// Runs `tincan ARGS --json` for `t` inside `ns`; it must succeed.
pub fn run_json(t: &Tincan, ns: &str, args: &[&str]) -> serde_json::Value {
    let out = t
        .cmd_in(Some(ns))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs `tincan room join ROOM` for `t` inside `ns` until it succeeds (the
/// room has reached the node, by gossip, sync or the DHT) or `limit`
/// passes; None then.
pub fn join_when_it_arrives(
    t: &Tincan,
    ns: &str,
    room: &str,
    limit: std::time::Duration,
) -> Option<()> {
    crate::eventually(limit, || {
        let out = t
            .cmd_in(Some(ns))
            .args(["room", "join", room, "--json"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
}

/// A home network as the NAT matrix builds it: what stands between a
/// player's host and the public segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// No NAT: the host sits on the public segment itself.
    Public,
    /// `MASQUERADE`: the same public port to every destination
    /// (endpoint-independent mapping), filtering by remote address and port.
    PortPreserving,
    /// `MASQUERADE` and a firewall that lets in only established and
    /// related traffic (what most home routers do on top).
    PortRestricted,
    /// `MASQUERADE --random`: a new public port per destination (symmetric).
    Symmetric,
}

impl Home {
    /// Every kind, in the matrix's order.
    pub const ALL: [Home; 4] = [
        Home::Public,
        Home::PortPreserving,
        Home::PortRestricted,
        Home::Symmetric,
    ];

    /// A short name for figures.
    pub fn name(self) -> &'static str {
        match self {
            Home::Public => "public",
            Home::PortPreserving => "port-preserving",
            Home::PortRestricted => "port-restricted",
            Home::Symmetric => "symmetric",
        }
    }

    /// Whether the side maps per destination (its NAT defeats punching
    /// towards anyone that filters).
    pub fn maps_per_destination(self) -> bool {
        self == Home::Symmetric
    }
}

/// The NAT matrix's lab: the public segment 10.77.2.0/24 (a bridge in
/// `sw`) with the bootstrap node `boot` at .1, and two homes, `a` and `b`,
/// of the given kinds. A public home's host is on the segment itself
/// (10.77.2.10 and .11); a home behind a router has its host at
/// 10.79.0.2 (a) or 10.78.0.2 (b) and the router at .253 (a) or .254 (b) on
/// the segment. No port forward anywhere. Returns the namespaces (boot, a,
/// b first) and each host's address.
pub fn nat_lab(prefix: &str, home_a: Home, home_b: Home) -> (Namespaces, [String; 2]) {
    nat_lab_on(prefix, home_a, home_b, "10.77.2")
}

/// [`nat_lab`] with the public segment on `public` (`a.b.c`, a /24; the
/// bootstrap node at .1, public hosts at .10 and .11, routers at .253 and
/// .254). A segment outside the private ranges makes the routers look like
/// real ones on the internet to software that checks (UPnP clients refuse a
/// router whose external address is private); it exists only inside the
/// test's namespaces.
pub fn nat_lab_on(
    prefix: &str,
    home_a: Home,
    home_b: Home,
    public: &str,
) -> (Namespaces, [String; 2]) {
    let ns = Namespaces::create(prefix, &["boot", "a", "b", "sw", "rta", "rtb"]);
    let [boot, a, b, sw, rta, rtb] = [0, 1, 2, 3, 4, 5].map(|i| ns.names[i].as_str());
    sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
    let mut port = 0;
    let mut on_segment = |host: &str, cidr: &str| {
        let p = format!("p{port}");
        port += 1;
        veth(sw, &p, host, "eth0");
        sh(&["ip", "-n", sw, "link", "set", &p, "master", "br0"]);
        sh(&["ip", "-n", sw, "link", "set", &p, "up"]);
        addr(host, "eth0", cidr);
    };
    on_segment(boot, &format!("{public}.1/24"));
    let mut hosts = [String::new(), String::new()];
    let at = |host: u8| format!("{public}.{host}");
    for (i, (home, host, rt, public_ip, router_ip, net)) in [
        (home_a, a, rta, at(10), at(253), "10.79.0"),
        (home_b, b, rtb, at(11), at(254), "10.78.0"),
    ]
    .into_iter()
    .enumerate()
    {
        if home == Home::Public {
            on_segment(host, &format!("{public_ip}/24"));
            hosts[i] = public_ip;
            continue;
        }
        on_segment(rt, &format!("{router_ip}/24"));
        veth(rt, "eth1", host, "eth0");
        addr(rt, "eth1", &format!("{net}.1/24"));
        addr(host, "eth0", &format!("{net}.2/24"));
        sh(&[
            "ip",
            "-n",
            host,
            "route",
            "add",
            "default",
            "via",
            &format!("{net}.1"),
        ]);
        in_ns(rt, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let src = format!("{net}.0/24");
        let mut rule = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &src,
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ];
        if home == Home::Symmetric {
            rule.push("--random");
        }
        in_ns(rt, &rule);
        // Nothing unsolicited from outside reaches the router itself, as on
        // any home router.
        in_ns(
            rt,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "DROP",
            ],
        );
        if home == Home::PortRestricted {
            in_ns(
                rt,
                &[
                    "iptables",
                    "-A",
                    "FORWARD",
                    "-i",
                    "eth0",
                    "-m",
                    "conntrack",
                    "!",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "DROP",
                ],
            );
        }
        hosts[i] = format!("{net}.2");
    }
    (ns, hosts)
}
