//! The Host header is checked before any handler runs: a page on another
//! name (DNS rebinding: `attacker.test` resolving to 127.0.0.1) reaches the
//! socket but gets 421 on REST, GraphQL and WebSocket upgrades alike.

mod common;

use common::{fast_config, start};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one raw HTTP/1.1 request with `host` as its Host header; returns
/// the status and the body (up to where the server stops).
async fn raw(addr: &str, host: &str, head: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the server closes, or (a 101 keeps the socket open) the head is in.
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

#[tokio::test]
async fn foreign_hosts_get_421_before_any_handler() {
    let n = start(fast_config(), None).await;
    let (_, token) = n.sign_up("alice").await;
    let addr = n.url.trim_start_matches("http://").to_owned();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let gql = r#"{"query":"{ me { username } }"}"#;
    let requests: Vec<(&str, String, &str)> = vec![
        ("REST", "GET /parse/health HTTP/1.1".into(), ""),
        (
            "GraphQL",
            format!(
                "POST /graphql HTTP/1.1\r\nContent-Type: application/json\r\nX-Parse-Session-Token: {token}"
            ),
            gql,
        ),
        ("web panel", "GET / HTTP/1.1".into(), ""),
        (
            "LiveQuery upgrade",
            format!("GET /parse HTTP/1.1\r\n{UPGRADE}"),
            "",
        ),
        (
            "GraphQL upgrade",
            format!(
                "GET /graphql HTTP/1.1\r\n{UPGRADE}\r\nSec-WebSocket-Protocol: graphql-transport-ws"
            ),
            "",
        ),
        (
            "/v1/events upgrade",
            format!("GET /v1/events?sessionToken={token} HTTP/1.1\r\n{UPGRADE}"),
            "",
        ),
    ];
    let foreign = [
        "evil.example:1337".to_owned(),
        format!("attacker.test:{port}"),
        // The right name on another port is another origin too.
        "127.0.0.1:1".to_owned(),
    ];
    for (what, head, body) in &requests {
        for host in &foreign {
            let (status, text) = raw(&addr, host, head, body).await;
            assert_eq!(status, 421, "{what} with Host {host}: {status} {text}");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: not a Parse error ({e}): {text}"));
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains(&format!("127.0.0.1:{port}"))
                    && msg.contains(&format!("localhost:{port}")),
                "{what}: the error does not name the allowed hosts: {v}"
            );
        }
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("LocalHost:{port}"),
        ] {
            let (status, text) = raw(&addr, &host, head, body).await;
            // This node has no voice session: /v1/events answers 503, from its handler.
            let expected = if head.contains("/v1/events") {
                503
            } else if head.contains("Upgrade: websocket") {
                101
            } else {
                200
            };
            assert_eq!(status, expected, "{what} with Host {host}: {text}");
        }
    }
    // An absolute request target names the host too, and wins over Host.
    let (status, text) = raw(
        &addr,
        &format!("127.0.0.1:{port}"),
        "GET http://evil.example:1337/parse/health HTTP/1.1",
        "",
    )
    .await;
    assert_eq!(status, 421, "absolute-form target: {text}");
    // No Host at all (HTTP/1.0 allows it): refused too.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /parse/health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 421"), "no Host: {text}");
}
