//! Port mapping (issue 15, item 3): two players behind symmetric NATs
//! (`MASQUERADE --random`), which no hole punch gets through, so their mesh
//! meets only through the bootstrap node's relay; bob's router offers
//! UPnP-IGD (miniupnpd, as many home routers do). Both started with exactly
//! the README's flags: bob's node asks his router to forward its ports and
//! announces the mapped address, and alice's node reaches bob directly.
//!
//! Root only (network namespaces), and miniupnpd (`./x test` installs
//! Debian's miniupnpd-nftables and nftables); elsewhere the test prints SKIPPED.
//!
//! Addresses: the public segment is 11.77.2.0/24 (not a private range, so
//! the routers look like routers on the internet to the UPnP client, which
//! rightly refuses a router whose outside address is private), homes
//! 10.78.0.0/24 and 10.79.0.0/24, all only inside the test's namespaces.

use std::time::{Duration, Instant};

use tincan_tests::netns::{
    Home, Kill, in_ns, join_when_it_arrives, nat_lab_on, run_json, start_bootstrap,
};
use tincan_tests::{RunningNode, Tincan, eventually, netns_unavailable};

const LIMIT: Duration = Duration::from_secs(60);
const MINIUPNPD: &str = "/usr/sbin/miniupnpd";
const NFT: &str = "/usr/sbin/nft";

fn skip() -> bool {
    if let Some(why) = netns_unavailable() {
        println!("SKIPPED: {why}");
        return true;
    }
    for tool in [MINIUPNPD, NFT] {
        if !std::path::Path::new(tool).exists() {
            println!(
                "SKIPPED: {tool} is missing (`./x bootstrap` installs Debian's miniupnpd-nftables and nftables)"
            );
            return true;
        }
    }
    false
}

/// Starts miniupnpd on router `rt` (outside eth0, home eth1 on `home_net`
/// /24) with the nftables chains it fills (its defaults: table `inet
/// filter`, chains `miniupnpd`, `prerouting_miniupnpd`,
/// `postrouting_miniupnpd`), as a home router runs it.
fn upnp_router(rt: &str, home_net: &str, dir: &std::path::Path, protocol: Mapping) -> Kill {
    let rules = dir.join("miniupnpd.nft");
    std::fs::write(
        &rules,
        "table inet filter {\n\
         chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n\
         chain miniupnpd { }\n\
         chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n\
         chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }\n\
         chain prerouting_miniupnpd { }\n\
         chain postrouting_miniupnpd { }\n\
         }\n",
    )
    .unwrap();
    in_ns(rt, &["nft", "-f", rules.to_str().unwrap()]);
    let conf = dir.join("miniupnpd.conf");
    std::fs::write(
        &conf,
        format!(
            "ext_ifname=eth0\nlistening_ip=eth1\nhttp_port=0\nenable_upnp={}\n\
             enable_natpmp={}\nsecure_mode=yes\nsystem_uptime=yes\n\
             uuid=3a1f6c1e-2b7d-4c55-9a63-5d0c1f2e7b10\n\
             allow 1024-65535 {home_net}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
            if protocol == Mapping::Upnp {
                "yes"
            } else {
                "no"
            },
            if protocol == Mapping::Pcp {
                "yes"
            } else {
                "no"
            },
        ),
    )
    .unwrap();
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", rt, MINIUPNPD, "-d", "-f"])
        .arg(&conf)
        .arg("-P")
        .arg(dir.join("miniupnpd.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start miniupnpd");
    Kill(child)
}

/// What bob's router speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mapping {
    /// UPnP-IGD (SSDP and SOAP).
    Upnp,
    /// PCP and NAT-PMP (miniupnpd's `enable_natpmp` serves both).
    Pcp,
}

#[test]
fn a_player_behind_a_upnp_router_is_reached_directly_with_the_readme_flags() {
    if skip() {
        return;
    }
    reached_directly("u", Mapping::Upnp);
}

#[test]
fn a_player_behind_a_pcp_or_nat_pmp_router_is_reached_directly_with_the_readme_flags() {
    if skip() {
        return;
    }
    reached_directly("p", Mapping::Pcp);
}

fn reached_directly(tag: &str, protocol: Mapping) {
    let prefix = format!("t{tag}{}", std::process::id() % 10_000);
    let (ns, _) = nat_lab_on(&prefix, Home::Symmetric, Home::Symmetric, "11.77.2");
    let [boot_ns, ns_a, ns_b, rtb] = [0, 1, 2, 5].map(|i| ns.names[i].as_str());
    let dir = tempfile::tempdir().unwrap();
    let _router = upnp_router(rtb, "10.78.0", dir.path(), protocol);
    let (_boot, boot_addr, voice_relay) = start_bootstrap(dir.path(), boot_ns, "11.77.2.1");
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    let readme = [
        "up",
        "--bootstrap",
        &boot_addr,
        "--voice-relay",
        &voice_relay,
        "--input",
        "null",
        "--output",
        "null",
    ];
    let mut b_args = readme.to_vec();
    // TINCAN_NO_PORT_MAPPING=1 runs the same lab with bob's mapping off:
    // the control, where the pair meets only through the relay.
    if std::env::var_os("TINCAN_NO_PORT_MAPPING").is_some() {
        b_args.push("--no-port-mapping");
    }
    let started = Instant::now();
    let _a = RunningNode::start_in(&alice, Some(ns_a), &readme);
    let _b = RunningNode::start_in(&bob, Some(ns_b), &b_args);
    let in_a = |args: &[&str]| run_json(&alice, ns_a, args);
    let in_b = |args: &[&str]| run_json(&bob, ns_b, args);
    let room = in_a(&["room", "create", tag])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    join_when_it_arrives(&bob, ns_b, &room, LIMIT).expect("bob never got alice's room");
    let room_after = started.elapsed();
    let bob_id = bob.json(&["id"])["node_id"].as_str().unwrap().to_owned();
    // alice's path to bob: direct once alice dials bob's mapped address
    // (from identify, DCUtR or the room's provider records).
    let path = eventually(LIMIT, || {
        let peers = in_a(&["peers"]);
        let bob = peers
            .as_array()?
            .iter()
            .find(|p| p["peer_id"] == bob_id.as_str())?
            .clone();
        (bob["path"] == "direct").then_some(bob)
    });
    let direct_after = started.elapsed();
    let Some(peer) = path else {
        let rules = std::process::Command::new("ip")
            .args(["netns", "exec", rtb, "nft", "list", "ruleset"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if let Some(secs) = std::env::var("TINCAN_HOLD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            // To look at the lab while investigating.
            std::thread::sleep(Duration::from_secs(secs));
        }
        panic!(
            "alice never reached bob directly within {LIMIT:?} (room at bob after {room_after:?}); alice's peers: {}\nbob's router's rules:\n{rules}",
            in_a(&["peers"])
        );
    };
    // The direct path is through bob's router's outside address, which
    // only the mapping opens (bob's router drops anything unsolicited).
    let addr = peer["address"].as_str().unwrap_or_default().to_owned();
    println!(
        "FIGURE port_mapping symmetric x symmetric+{protocol:?}: room at bob {:.1} s after start, alice direct to bob at {:.1} s via {addr}",
        room_after.as_secs_f64(),
        direct_after.as_secs_f64()
    );
    assert!(
        addr.contains("/ip4/11.77.2.254/"),
        "alice's direct path to bob is not through bob's router's mapped address: {peer}"
    );
    // The room still replicates over it.
    in_a(&["log", "add", &room, "over the mapped port"]);
    eventually(LIMIT, || {
        in_b(&["log", "list", &room])["entries"]
            .as_array()?
            .iter()
            .any(|e| e["action"] == "over the mapped port")
            .then_some(())
    })
    .expect("the log entry never reached bob");
}
