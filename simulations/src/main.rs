//! `tincan-sim`: runs the gossip model for several node counts and loss
//! rates, prints a table, and writes `results.csv` and `time_to_all.png`
//! (p50 and p99 time for a record to reach every node, against node count)
//! and `bandwidth.png` (bytes sent per node).
//!
//! ```sh
//! cargo run --release -p tincan-sim -- --nodes 50,100,200,400,800 --latency-ms 20 --jitter-ms 5 --loss 0,0.02,0.1
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tincan_sim::{SimConfig, run};

mod plot;

/// Simulate tincan's gossip for many nodes on a virtual clock.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Node counts to simulate, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400,800")]
    nodes: Vec<usize>,
    /// One-way link latency in milliseconds
    #[arg(long, default_value_t = 20.0)]
    latency_ms: f64,
    /// Jitter in milliseconds (delay uniform in latency ± jitter)
    #[arg(long, default_value_t = 5.0)]
    jitter_ms: f64,
    /// Packet loss probabilities to simulate, comma-separated (0.02 = 2 %)
    #[arg(long, value_delimiter = ',', default_value = "0,0.02,0.1")]
    loss: Vec<f64>,
    /// Records published per run
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Records published per second
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Peers each node dials
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seed of the random choices
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write results.csv and the plots
    #[arg(long, default_value = "simulations/results")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut csv = String::from(
        "nodes,latency_ms,jitter_ms,loss,messages,p50_ms,p99_ms,max_ms,undelivered,duplicates_per_record,via_gossip,bytes_per_node,kbit_per_s_per_node\n",
    );
    let mut series: Vec<plot::Series> = Vec::new();
    let mut bandwidth: Vec<plot::Series> = Vec::new();
    println!(
        "{:>6} {:>6} {:>9} {:>9} {:>9} {:>11} {:>10} {:>12}",
        "nodes", "loss", "p50 ms", "p99 ms", "max ms", "undelivered", "dup/rec", "kbit/s/node"
    );
    for &loss in &args.loss {
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut bw = Vec::new();
        for &nodes in &args.nodes {
            let cfg = SimConfig {
                nodes,
                connections: args.connections,
                latency_us: (args.latency_ms * 1000.0) as u64,
                jitter_us: (args.jitter_ms * 1000.0) as u64,
                loss,
                messages: args.messages,
                publish_interval_us: (1e6 / args.rate.max(0.001)) as u64,
                seed: args.seed,
                ..SimConfig::default()
            };
            let r = run(&cfg);
            let ms = |q| {
                r.quantile_us(q)
                    .map(|us| us as f64 / 1000.0)
                    .unwrap_or(f64::NAN)
            };
            let kbps = r.bytes_sent_per_node * 8.0 / (r.duration_us as f64 / 1e6) / 1000.0;
            let dup = r.duplicates as f64 / args.messages as f64;
            println!(
                "{nodes:>6} {loss:>6.3} {:>9.1} {:>9.1} {:>9.1} {:>11} {dup:>10.1} {kbps:>12.2}",
                ms(0.5),
                ms(0.99),
                ms(1.0),
                r.undelivered()
            );
            writeln!(
                csv,
                "{nodes},{},{},{loss},{},{:.3},{:.3},{:.3},{},{dup:.2},{},{:.0},{kbps:.3}",
                args.latency_ms,
                args.jitter_ms,
                args.messages,
                ms(0.5),
                ms(0.99),
                ms(1.0),
                r.undelivered(),
                r.via_gossip,
                r.bytes_sent_per_node
            )?;
            p50.push((nodes as f64, ms(0.5)));
            p99.push((nodes as f64, ms(0.99)));
            bw.push((nodes as f64, kbps));
        }
        let pct = loss * 100.0;
        series.push(plot::Series {
            label: format!("p50, {pct}% loss"),
            points: p50,
            dashed: false,
        });
        series.push(plot::Series {
            label: format!("p99, {pct}% loss"),
            points: p99,
            dashed: true,
        });
        bandwidth.push(plot::Series {
            label: format!("{pct}% loss"),
            points: bw,
            dashed: false,
        });
    }
    let csv_path = args.out.join("results.csv");
    std::fs::write(&csv_path, csv)?;
    let title = format!(
        "Time for a record to reach every node ({} ms links, {} peers each)",
        args.latency_ms, args.connections
    );
    let png = args.out.join("time_to_all.png");
    plot::line_chart(&png, &title, "nodes", "milliseconds", &series)?;
    let bw_png = args.out.join("bandwidth.png");
    plot::line_chart(
        &bw_png,
        &format!("Upload per node at {} records/s", args.rate),
        "nodes",
        "kbit/s",
        &bandwidth,
    )?;
    println!(
        "wrote {}, {} and {}",
        csv_path.display(),
        png.display(),
        bw_png.display()
    );
    Ok(())
}
