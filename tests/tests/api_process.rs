//! `tincan up` and its local API as a process: the printed URL answers, and
//! a taken API port stops the node with a message that says what to do,
//! leaving no control file behind.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tincan_tests::{RunningNode, Tincan};

fn http_get(url: &str, path: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_api_answers_where_tincan_up_says() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "api-node"]);
    let mut n = RunningNode::start(
        &t,
        &[
            "up",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api-port",
            "0",
        ],
    );
    let url = n.api_url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let health = http_get(&url, "/parse/health");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains(r#"{"status":"ok"}"#),
        "{health}"
    );
    let doc = http_get(&url, "/openapi.json");
    assert!(doc.contains("\"openapi\":\"3.0.3\""), "{doc:.300}");
    assert!(n.stop().success());
}

#[test]
fn a_taken_api_port_stops_the_node_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "api-node"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut child = t
        .cmd()
        .args([
            "up",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api-port",
            &port,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tincan up kept running on a taken API port");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("--api-port"),
        "{err}"
    );
    assert!(
        !t.data_dir.join("control.json").exists(),
        "a stale control file was left behind"
    );
}
