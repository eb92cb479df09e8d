//! The template's own Parse contract through the official Parse JS SDK
//! (npm `parse`, pinned in tests/js): two real `tincan up` processes on
//! loopback, node B bootstrapped from node A; tests/js/parse_template.js
//! says what it checks. Needs Node.js and `npm ci` in tests/js, which
//! `./x bootstrap` installs; without them this test fails and says so.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually};

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

#[test]
fn template_schema_and_flows_through_the_parse_sdk_on_two_nodes() {
    let js = js_dir();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "Node.js is not installed: run ./x bootstrap (it installs nodejs and npm, then the Parse SDK in tests/js)"
    );
    assert!(
        js.join("node_modules/parse").exists(),
        "the Parse JS SDK is not installed in {}: run ./x bootstrap (npm ci there)",
        js.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let a_id = Tincan::new(&dir.path().join("a"), "pw-a");
    let b_id = Tincan::new(&dir.path().join("b"), "pw-b");
    a_id.ok(&["init", "--username", "node-a"]);
    b_id.ok(&["init", "--username", "node-b"]);
    let mut a = RunningNode::start(&a_id, LOOPBACK_UP);
    let a_mesh = a.mesh_addr();
    let a_url = a.api_url();
    let mut args = LOOPBACK_UP.to_vec();
    args.extend(["--bootstrap", &a_mesh]);
    let mut b = RunningNode::start(&b_id, &args);
    let b_url = b.api_url();
    eventually(Duration::from_secs(20), || {
        (a_id.json(&["peers"]).as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .expect("the nodes did not connect within 20 s");

    let out = Command::new("node")
        .arg("parse_template.js")
        .current_dir(&js)
        .env("TINCAN_A_URL", &a_url)
        .env("TINCAN_B_URL", &b_url)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !out.status.success() {
        panic!(
            "the template flows failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
    assert!(
        stdout.contains("parse template: all checks passed"),
        "{stdout}\n{stderr}"
    );
    assert!(b.stop().success());
    assert!(a.stop().success());
}
