//! Helpers for tincan's end-to-end tests: run the real `tincan` binary in a
//! private data directory and read what it says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod netns;
pub mod voice;

/// Path of a binary built by cargo for this workspace (`tincan`,
/// `crash-writer`), next to the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// `tincan up` on loopback only (mesh and voice socket), without mDNS, its
/// local API on any free port: what tests run outside the network
/// namespaces they create. (A voice socket bound to all interfaces takes
/// no loopback candidates: see `tincan_voice::candidates`.)
pub const LOOPBACK_UP: &[&str] = &[
    "up",
    "--no-mdns",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--advertise-listen-addrs",
    "--api-port",
    "0",
    "--voice-listen",
    "127.0.0.1:0",
];

/// A running `tincan up` whose stderr is read line by line as it comes.
pub struct RunningNode {
    /// The process.
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub log: Vec<String>,
}

impl RunningNode {
    /// Starts `tincan` with `args` (e.g. [`LOOPBACK_UP`]) for `t`, and waits
    /// until its control endpoint is up.
    pub fn start(t: &Tincan, args: &[&str]) -> Self {
        Self::start_in(t, None, args)
    }

    /// Like [`RunningNode::start`], inside network namespace `ns`.
    pub fn start_in(t: &Tincan, ns: Option<&str>, args: &[&str]) -> Self {
        let mut child = t
            .cmd_in(ns)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tincan up");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Keep draining even when nobody listens, so the node never blocks on stderr.
                let _ = tx.try_send(line);
            }
        });
        let mut node = RunningNode {
            child,
            lines,
            log: Vec::new(),
        };
        node.wait_for_line("control endpoint", std::time::Duration::from_secs(30));
        node
    }

    /// Waits until a stderr line contains `needle`; returns that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: std::time::Duration) -> String {
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?} within {timeout:?}; stderr so far:\n{}",
            self.log.join("\n")
        );
    }

    /// The first mesh address it listens on, with its `/p2p/` suffix.
    pub fn mesh_addr(&mut self) -> String {
        let line = self.wait_for_line("Mesh listening on ", std::time::Duration::from_secs(30));
        line.split("Mesh listening on ")
            .nth(1)
            .expect("address")
            .trim()
            .to_owned()
    }

    /// The base URL of its local API, `http://127.0.0.1:PORT`.
    pub fn api_url(&mut self) -> String {
        let line = self.wait_for_line("Local API on ", std::time::Duration::from_secs(30));
        line.split("Local API on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("API address")
            .to_owned()
    }

    /// Sends SIGINT and waits (bounded) for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tincan up did not stop within 20 s of SIGINT");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        // A failed test must not leave nodes running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // TINCAN_TEST_DUMP=1 prints every node's log, failing or not.
        if std::thread::panicking() || std::env::var_os("TINCAN_TEST_DUMP").is_some() {
            self.log.extend(self.lines.try_iter());
            eprintln!(
                "--- stderr of tincan (pid {}) ---\n{}",
                self.child.id(),
                self.log.join("\n")
            );
        }
    }
}

/// Polls `f` every 50 ms until it returns Some, for at most `timeout`.
pub fn eventually<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A `tincan` invocation with its own data directory and password.
pub struct Tincan {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The password it unlocks with.
    pub password: String,
}

impl Tincan {
    /// A node in `dir` with `password`.
    pub fn new(dir: &Path, password: &str) -> Self {
        Tincan {
            data_dir: dir.to_path_buf(),
            password: password.to_owned(),
        }
    }

    /// The command, ready for arguments.
    pub fn cmd(&self) -> Command {
        self.cmd_in(None)
    }

    /// The command run inside network namespace `ns` (`ip netns exec`), or
    /// here when `None`.
    pub fn cmd_in(&self, ns: Option<&str>) -> Command {
        let bin = workspace_bin("tincan");
        assert!(
            bin.exists(),
            "{} is missing: build the binaries first (cargo build --workspace --bins), or run the whole suite with ./x test",
            bin.display()
        );
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.env("TINCAN_DATA_DIR", &self.data_dir)
            .env("TINCAN_PASSWORD", &self.password)
            .env_remove("TINCAN_USERNAME")
            .env_remove("TINCAN_EXPORT_PASSWORD")
            .env_remove("RUST_LOG");
        // TINCAN_TEST_LOG=tincan_mesh=debug (say) turns on the nodes' logs,
        // which a failing test prints.
        if let Ok(filter) = std::env::var("TINCAN_TEST_LOG") {
            c.env("RUST_LOG", filter);
        }
        c
    }

    /// Runs with `args` and returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run tincan")
    }

    /// Runs with `args`, requires success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tincan {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs with `args` and `--json`, requires success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{args:?} printed {text:?}: {e}"))
    }

    /// Runs with `args`, requires failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "tincan {args:?} should have failed");
        String::from_utf8(out.stderr).expect("utf-8 output")
    }
}

/// Why network-namespace tests cannot run here, if they cannot: they need
/// root and iproute2. Tests print this and skip.
pub fn netns_unavailable() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("network namespace tests need root (run ./x test as root)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some(
            "network namespace tests need iproute2 (`ip`); ./x bootstrap installs it".into(),
        );
    }
    None
}

/// Runs a command that must succeed (setting up namespaces).
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces a test created; deleted (with their links) on drop,
/// even when the test fails.
pub struct Namespaces {
    /// Their names.
    pub names: Vec<String>,
}

impl Namespaces {
    /// Creates namespaces `{prefix}{i}` for each suffix, with loopback up.
    pub fn create(prefix: &str, suffixes: &[&str]) -> Self {
        let ns = Namespaces {
            names: suffixes.iter().map(|s| format!("{prefix}{s}")).collect(),
        };
        for n in &ns.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Reads the first line a child writes to stdout, and keeps draining the
/// rest in the background, so the child never writes into a closed pipe.
pub fn first_stdout_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    let mut reader = std::io::BufReader::new(stdout);
    let mut first = String::new();
    reader
        .read_line(&mut first)
        .expect("read the child's stdout");
    std::thread::spawn(move || {
        let mut sink = String::new();
        while matches!(reader.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
    });
    first.trim().to_owned()
}

/// A `tincan-bootstrap` process on loopback with its voice relay and its
/// metrics endpoint on, as an operator runs one. Stopped on drop.
pub struct LoopbackRelay {
    /// Its mesh address, for `--bootstrap`.
    pub mesh_addr: String,
    /// Its voice relay, for `--voice-relay` (`127.0.0.1:PORT/PEERID`).
    pub relay: String,
    /// Its metrics endpoint (`127.0.0.1:PORT`).
    pub metrics: String,
    _process: netns::Kill,
}

impl LoopbackRelay {
    /// Starts one with its files in `dir`.
    pub fn start(dir: &Path) -> Self {
        use std::io::BufRead;
        std::fs::create_dir_all(dir).expect("create the bootstrap's directory");
        let config = dir.join("bootstrap.toml");
        std::fs::write(
            &config,
            format!(
                "key_file = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n\
                 [voice_relay]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
                dir.join("boot.key")
            ),
        )
        .expect("write the bootstrap's configuration");
        let mut child = Command::new(workspace_bin("tincan-bootstrap"))
            .args(["--config", config.to_str().expect("a UTF-8 path")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tincan-bootstrap (cargo build --workspace --bins first)");
        let mesh_addr = first_stdout_line(&mut child);
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
        let (mut metrics, mut relay) = (None, None);
        for _ in 0..20 {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(rest) = line.split("metrics on http://").nth(1) {
                metrics = rest.split('/').next().map(str::to_owned);
            }
            if let Some(rest) = line.split("players use --voice-relay ").nth(1) {
                relay = Some(
                    rest.trim()
                        .replace("<this server's public IP>", "127.0.0.1"),
                );
            }
            if metrics.is_some() && relay.is_some() {
                break;
            }
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stderr.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        LoopbackRelay {
            mesh_addr,
            relay: relay.expect("the bootstrap node printed no voice relay"),
            metrics: metrics.expect("the bootstrap node printed no metrics address"),
            _process: netns::Kill(child),
        }
    }
}

/// The text a metrics endpoint (`HOST:PORT`) serves at `/metrics`.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` (name and labels as printed) in
/// metrics `text`, or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// One signed-up identity per name, each in `dir/NAME` with the password
/// `pw`.
pub fn players(dir: &Path, names: &[&str]) -> Vec<Tincan> {
    names
        .iter()
        .map(|n| {
            let t = Tincan::new(&dir.join(n), "pw");
            t.ok(&["init", "--username", n]);
            t
        })
        .collect()
}

/// Waits until every node shows `room` with `members` members and
/// `channels` channels; panics after `limit`.
pub fn wait_for_room(
    nodes: &[Tincan],
    room: &str,
    members: usize,
    channels: usize,
    limit: std::time::Duration,
) {
    for t in nodes {
        eventually(limit, || {
            (t.json(&["room", "show", room])["members"].as_array()?.len() == members
                && t.json(&["channel", "list", room]).as_array()?.len() == channels)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("room state did not converge within {limit:?}"));
    }
}

/// One HTTP/1.1 request to a node's local API at `addr` (host:port); returns (status,
/// JSON body). A connection per request, bounded in time: a node killed
/// mid-request gives an error, never a hang.
pub fn api_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> std::io::Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         X-Parse-Application-Id: tincan\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head += &format!("X-Parse-Session-Token: {t}\r\n");
    }
    write!(s, "{head}\r\n{body}")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {out:?}")))?;
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}
