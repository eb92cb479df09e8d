//! The web control panel in a real browser: Debian's chromium, headless,
//! driven by Playwright (npm `playwright-core`, pinned in tests/js) through
//! tests/js/web_ui.js, against two real `tincan up` processes on loopback.
//! Node A's microphone is a WAV of speech; on A's page alice signs up,
//! creates a room and a channel and joins voice; on B's page bob signs up,
//! joins the room by its id and sees it and its channel without a reload,
//! then a channel A adds later and A's log entry, live; bob joins voice and
//! B's page shows alice speaking. Screenshots of both pages go to
//! `<target>/web-ui-screenshots/`. Needs chromium, Node.js and `npm ci` in
//! tests/js, which `./x bootstrap` installs; without them it fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tincan_tests::voice::write_speech;
use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually};

const CHROMIUM: &str = "/usr/bin/chromium";

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// `<target>/web-ui-screenshots`: the test executable is
/// `<target>/<profile>/deps/web_ui-<hash>`.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map_or_else(std::env::temp_dir, Path::to_path_buf)
        .join("web-ui-screenshots")
}

#[test]
fn web_panel_two_nodes_in_chromium() {
    let started = Instant::now();
    let js = js_dir();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "Node.js is not installed: run ./x bootstrap (it installs nodejs, npm, chromium and the packages in tests/js)"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run ./x bootstrap (it installs Debian's chromium)"
    );
    assert!(
        js.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: run ./x bootstrap (npm ci there)",
        js.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let speech = dir.path().join("speech.wav");
    write_speech(&speech, 3.0);
    let input = format!("wav-loop:{}", speech.display());
    let a_id = Tincan::new(&dir.path().join("a"), "pw-a");
    let b_id = Tincan::new(&dir.path().join("b"), "pw-b");
    a_id.ok(&["init", "--username", "node-a"]);
    b_id.ok(&["init", "--username", "node-b"]);
    let mut a_args = LOOPBACK_UP.to_vec();
    a_args.extend(["--input", &input, "--gate", "open", "--output", "null"]);
    let mut a = RunningNode::start(&a_id, &a_args);
    let a_mesh = a.mesh_addr();
    let a_url = a.api_url();
    let mut b_args = LOOPBACK_UP.to_vec();
    b_args.extend([
        "--bootstrap",
        &a_mesh,
        "--input",
        "null",
        "--output",
        "null",
    ]);
    let mut b = RunningNode::start(&b_id, &b_args);
    let b_url = b.api_url();
    eventually(Duration::from_secs(20), || {
        (a_id.json(&["peers"]).as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .expect("the nodes did not connect within 20 s");

    let shots = screenshot_dir();
    let out = Command::new("node")
        .arg("web_ui.js")
        .current_dir(&js)
        .env("TINCAN_A_URL", &a_url)
        .env("TINCAN_B_URL", &b_url)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let passed = out.status.success() && stdout.contains("web ui: all checks passed");
    if !passed {
        // What each node's voice session says, to tell a panel bug from a
        // node bug.
        for (name, t) in [("a", &a_id), ("b", &b_id)] {
            let out = t.run(&["status", "--json"]);
            println!(
                "node {name} status: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    assert!(
        passed,
        "the web panel test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for f in ["node-a.png", "node-b.png"] {
        assert!(
            shots.join(f).exists(),
            "no screenshot {f} in {}",
            shots.display()
        );
    }
    assert!(b.stop().success());
    assert!(a.stop().success());
    println!(
        "FIGURE web ui test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
