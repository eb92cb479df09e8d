//! Prometheus metrics: the registry a node's counters live in, a collector
//! for counters kept elsewhere (a snapshot read at each scrape), and a small
//! HTTP endpoint that serves them in Prometheus' text format.
//!
//! A mesh node registers libp2p's own metrics (connections by transport,
//! gossipsub, Kademlia, identify, ping, relay, DCUtR, bytes per protocol
//! stack) and its [`crate::MeshStats`]; the bootstrap binary adds its voice
//! relay's counters as another [`Snapshot`] collector. [`serve`] answers
//! `GET /metrics` and nothing else, reads at most a few KiB per request
//! within a timeout, and serves a bounded number of scrapers at once, so an
//! endpoint left open by mistake costs little.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One value of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric's name, without the `_total` a counter gets.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// A counter only goes up; a gauge is a value now.
    pub kind: Kind,
    /// Labels (e.g. a drop reason); empty for none.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// The kind of a [`Sample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value now.
    Gauge,
}

impl Sample {
    /// A counter.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Sample {
            name,
            help,
            kind: Kind::Counter,
            labels: Vec::new(),
            value: value as f64,
        }
    }

    /// A gauge.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Sample {
            name,
            help,
            kind: Kind::Gauge,
            labels: Vec::new(),
            value,
        }
    }

    /// The same with a label.
    pub fn with_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((key, value.into()));
        self
    }
}

/// A collector that reads counters kept elsewhere at each scrape: `read`
/// gives every sample now. Samples of one name come together; a name's
/// help and kind are taken from its first sample.
pub struct Snapshot {
    read: Box<dyn Fn() -> Vec<Sample> + Send + Sync>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    /// A collector of what `read` gives.
    pub fn new(read: impl Fn() -> Vec<Sample> + Send + Sync + 'static) -> Self {
        Snapshot {
            read: Box::new(read),
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut samples = (self.read)();
        // Group by name, keeping each name's first-seen order.
        let mut order: Vec<&'static str> = Vec::new();
        for s in &samples {
            if !order.contains(&s.name) {
                order.push(s.name);
            }
        }
        samples.sort_by_key(|s| order.iter().position(|n| *n == s.name));
        let mut i = 0;
        while i < samples.len() {
            let first = &samples[i];
            let end = samples[i..]
                .iter()
                .position(|s| s.name != first.name)
                .map_or(samples.len(), |n| i + n);
            let kind = first.kind;
            let metric_type = match kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut descriptor =
                encoder.encode_descriptor(first.name, first.help, None, metric_type)?;
            if end - i == 1 && first.labels.is_empty() {
                // One series without labels: no `{}` after its name.
                match kind {
                    Kind::Counter => ConstCounter::new(first.value).encode(descriptor)?,
                    Kind::Gauge => ConstGauge::new(first.value).encode(descriptor)?,
                }
                i = end;
                continue;
            }
            for s in &samples[i..end] {
                let labels: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                let family = descriptor.encode_family(&labels)?;
                match kind {
                    Kind::Counter => ConstCounter::new(s.value).encode(family)?,
                    Kind::Gauge => ConstGauge::new(s.value).encode(family)?,
                }
            }
            i = end;
        }
        Ok(())
    }
}

/// The registry in Prometheus' text exposition format (version 0.0.4),
/// which every Prometheus and `promtool check metrics` read.
///
/// prometheus-client writes OpenMetrics; the two differ only in ways this
/// undoes: a counter's HELP and TYPE name it without `_total` in
/// OpenMetrics and with it in Prometheus' format, `info` metrics are gauges
/// named `*_info` there, and `# UNIT` and `# EOF` lines do not exist there.
pub fn render(registry: &Registry) -> String {
    let mut open = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug
    // in a collector, and an empty answer says so to the scraper.
    if prometheus_client::encoding::text::encode(&mut open, registry).is_err() {
        return String::new();
    }
    to_prometheus_text(&open)
}

fn to_prometheus_text(open: &str) -> String {
    // The types first, since a HELP line comes before its TYPE line.
    let mut types = std::collections::HashMap::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    let renamed = |name: &str| -> String {
        match types.get(name).map(String::as_str) {
            Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
            Some("info") => format!("{name}_info"),
            _ => name.to_owned(),
        }
    };
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = if kind == "info" { "gauge" } else { kind };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Scrapers served at once; more wait for the listener's backlog.
const MAX_SCRAPERS: usize = 16;
/// Longest request head read.
const MAX_REQUEST: usize = 4096;
/// Time a scraper has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` with what `render` gives, until the
/// task is dropped. Anything else gets 404 (a path) or 400 (not HTTP), and
/// the connection is closed after each answer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: wait, do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut head = Vec::with_capacity(512);
            let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let (status, body, kind) =
                if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?") {
                    (
                        "200 OK",
                        render(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                } else if line.starts_with(b"GET ") {
                    (
                        "404 Not Found",
                        "only /metrics is served here\n".to_owned(),
                        "text/plain",
                    )
                } else {
                    (
                        "400 Bad Request",
                        "not an HTTP GET\n".to_owned(),
                        "text/plain",
                    )
                };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(answer.as_bytes())).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_group_by_name_with_labels() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot::new(|| {
            vec![
                Sample::counter("tincan_dropped", "Datagrams dropped", 3)
                    .with_label("reason", "rate"),
                Sample::gauge("tincan_groups", "Voice groups now", 2.0),
                Sample::counter("tincan_plain", "No labels", 7),
                Sample::counter("tincan_dropped", "Datagrams dropped", 5)
                    .with_label("reason", "malformed"),
            ]
        })));
        let text = render(&registry);
        assert!(
            text.contains("# TYPE tincan_dropped_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP tincan_dropped_total Datagrams dropped"),
            "{text}"
        );
        assert!(
            text.contains("tincan_dropped_total{reason=\"rate\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("tincan_dropped_total{reason=\"malformed\"} 5.0"),
            "{text}"
        );
        assert!(text.contains("# TYPE tincan_groups gauge"), "{text}");
        assert!(text.contains("\ntincan_plain_total 7.0\n"), "{text}");
        assert_eq!(text.matches("# TYPE tincan_dropped").count(), 1, "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
