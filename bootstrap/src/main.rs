//! The `tincan-bootstrap` binary: reads the configuration, runs the node
//! until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

/// A community bootstrap node for tincan: Kademlia server, libp2p relay and voice relay.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The TOML configuration (see deploy/bootstrap.toml)
    #[arg(
        long,
        short,
        env = "TINCAN_BOOTSTRAP_CONFIG",
        default_value = "/etc/tincan/bootstrap.toml"
    )]
    config: PathBuf,
    /// Log as JSON lines
    #[arg(long)]
    log_json: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if args.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let config = tincan_bootstrap::Config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let node = tincan_bootstrap::Bootstrap::start(&config).await?;
        // Written, not println!: a closed stdout (`| head -1`, a service
        // manager) must not kill the node.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for a in node.addresses().await? {
                let _ = writeln!(out, "{a}");
            }
            let _ = out.flush();
        }
        eprintln!(
            "tincan-bootstrap {} running; players use --bootstrap with an address above",
            node.peer_id()
        );
        if let Some(addr) = node.metrics_addr() {
            eprintln!("metrics on http://{addr}/metrics (Prometheus)");
        }
        if let Some(voice) = node.voice_relay() {
            // On stderr: stdout lists only multiaddrs, which scripts read.
            let addr = voice.local_addr();
            let public = if addr.ip().is_unspecified() {
                "<this server's public IP>".to_owned()
            } else {
                addr.ip().to_string()
            };
            eprintln!(
                "voice relay on udp {addr} (PeerId {id}); players use --voice-relay {public}:{port}/{id}",
                id = voice.peer_id(),
                port = addr.port(),
            );
        }
        shutdown_signal().await;
        eprintln!("stopping");
        node.shutdown().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
