//! The control endpoint of a real `tincan up` against local clients that do
//! not play along: one that sends a 64 MiB line without the token, one that
//! sends nothing at all, and clients that hang while the node is told to
//! stop. The node checks the token in a small first frame before it reads
//! anything more, drops silent clients, and stops promptly on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tincan_tests::{LOOPBACK_UP, Tincan};

/// Starts `tincan up` with the daemon's info log on stderr (it says how
/// much it read of refused connections); returns the child, its stderr
/// lines as they come, and the control address.
fn start(t: &Tincan) -> (Child, mpsc::Receiver<String>, SocketAddr, String) {
    let mut child = t
        .cmd()
        .args(LOOPBACK_UP)
        .env("RUST_LOG", "warn,tincan::daemon=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::sync_channel(4096);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Keep draining even when the buffer is full, so the node never blocks on stderr.
            let _ = tx.try_send(line);
        }
    });
    let control = t.data_dir.join("control.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let c: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&control)
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        assert!(Instant::now() < deadline, "no control endpoint within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let addr = c["addr"].as_str().unwrap().parse().unwrap();
    let token = c["token"].as_str().unwrap().to_owned();
    (child, rx, addr, token)
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    if wait_exit(&mut child, Duration::from_secs(20)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tincan up did not stop within 20 s of SIGINT");
    }
}

/// A stderr line containing `needle`, within `limit`.
fn line_with(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn a_64_mib_line_without_the_token_is_refused_after_a_small_read() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "alice"]);
    let (child, log, addr, _token) = start(&t);

    const LINE: usize = 64 * 1024 * 1024;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // First 4 KiB of the line, then wait: the node must decide on what it has.
    let chunk = vec![b'x'; 64 * 1024];
    s.write_all(&chunk[..4096]).unwrap();
    let mut reader = s.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = reader.read_to_end(&mut out);
        (out, r.err().map(|e| e.kind()))
    });
    std::thread::sleep(Duration::from_millis(300));
    // Then the rest of the 64 MiB line, until the node's close stops us.
    let mut accepted = 4096usize;
    let started = Instant::now();
    let mut write_error = None;
    while accepted < LINE {
        let n = chunk.len().min(LINE - accepted);
        match s.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(k) => accepted += k,
            Err(e) => {
                write_error = Some(e.kind());
                break;
            }
        }
    }
    if write_error.is_none() {
        let _ = s.write_all(b"\n");
    }
    let (out, read_error) = answer.join().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let node_read = line_with(&log, "refused", Duration::from_secs(5));
    println!(
        "FIGURE control endpoint, 64 MiB line without a token: {accepted} bytes accepted by the socket before the node closed it (write error {write_error:?} after {:?}); the node's own count: {node_read:?}; its answer {text:?} (read error {read_error:?})",
        started.elapsed()
    );
    let node_bytes: Option<usize> = node_read.as_deref().and_then(|l| {
        l.split("after reading ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    println!("FIGURE control endpoint, bytes the node read before refusing: {node_bytes:?}");
    assert!(
        text.to_lowercase().contains("token"),
        "the node did not answer with a token error on the first 4 KiB: {text:?} ({read_error:?})"
    );
    assert!(
        write_error.is_some() && accepted < LINE,
        "the node took the whole 64 MiB line ({accepted} bytes)"
    );
    let node_bytes = node_bytes.expect("the node logs how much it read of a refused connection");
    assert!(
        node_bytes <= 512,
        "the node read {node_bytes} bytes before refusing"
    );

    // The same line streamed at full speed, no pause: what the sockets
    // take in before the node's close stops the writer (kernel buffers).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut streamed = 0usize;
    while streamed < LINE {
        match s.write(&chunk[..chunk.len().min(LINE - streamed)]) {
            Ok(0) | Err(_) => break,
            Ok(k) => streamed += k,
        }
    }
    println!(
        "FIGURE control endpoint, 64 MiB line streamed without a pause: {streamed} bytes taken by the sockets before the node's close stopped the writer"
    );
    assert!(streamed < LINE, "the node took the whole streamed line");
    stop(child);
}

#[test]
fn a_silent_client_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "alice"]);
    let (child, _log, addr, _token) = start(&t);

    // A client that connects and sends nothing is dropped by the node.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let r = silent.read_to_end(&mut buf);
    let waited = t0.elapsed();
    println!(
        "FIGURE control endpoint: a silent client was dropped after {waited:?} ({r:?}, {:?})",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the node kept a silent client for 20 s: {r:?}"
    );
    // And it still serves a real command afterwards.
    assert_eq!(t.json(&["room", "list"]), serde_json::json!([]));
    stop(child);
}

#[test]
fn sigterm_is_not_held_up_by_hung_control_clients() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "alice"]);
    let (mut child, _log, addr, token) = start(&t);

    // Hung clients: more silent ones than the node serves at once, and one
    // that sends the right token and then nothing.
    let mut hung: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut authed = TcpStream::connect(addr).unwrap();
    // The first line carries only the token (see node/src/control.rs).
    writeln!(authed, "tincan-control/2 {token}").unwrap();
    authed.flush().unwrap();
    hung.push(authed);
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t0 = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let took = t0.elapsed();
    println!(
        "FIGURE control endpoint: SIGTERM with 25 hung control clients: exited after {took:?} ({status:?})"
    );
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tincan up did not stop within 15 s of SIGTERM while control clients hung");
    };
    assert!(status.success(), "{status:?}");
    assert!(!t.data_dir.join("control.json").exists());
    drop(hung);
}
