//! A link impairment on the voice socket: delay, jitter and loss applied to
//! every packet it sends, for tests and the latency harness on a kernel
//! without `netem` (see FIELD-NOTES: the test machines have none).
//!
//! It wraps quinn's own socket behind quinn's [`quinn::AsyncUdpSocket`]
//! trait, so the endpoint, TLS, congestion control and the OS socket are all
//! the real ones; only the wire between them is made worse. Delays are
//! drawn from a seeded generator: uniform in `delay ± jitter`, so packets
//! may overtake one another, as on a real jittery path. Nothing is impaired
//! unless a node is started with `--voice-impair`.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// How a link is made worse.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    /// One-way delay added to each packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// Share of packets dropped, 0.0 to 1.0.
    pub loss: f64,
    /// Seed of the random choices.
    pub seed: u64,
}

impl std::str::FromStr for Impairment {
    type Err = String;

    /// `delay=20ms,jitter=5ms,loss=2%` (any subset; `seed=N` too).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut imp = Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            seed: 1,
        };
        let ms = |v: &str| -> Result<Duration, String> {
            let n: f64 = v
                .trim_end_matches("ms")
                .parse()
                .map_err(|_| format!("{v:?} is not a number of milliseconds, e.g. 20ms"))?;
            if !(0.0..=10_000.0).contains(&n) {
                return Err(format!("{v:?} is not between 0 and 10000 ms"));
            }
            Ok(Duration::from_secs_f64(n / 1000.0))
        };
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=VALUE (delay, jitter, loss, seed)"))?;
            match key.trim() {
                "delay" => imp.delay = ms(value)?,
                "jitter" => imp.jitter = ms(value)?,
                "loss" => {
                    let p: f64 = value
                        .trim_end_matches('%')
                        .parse()
                        .map_err(|_| format!("loss {value:?} is not a percentage, e.g. 2%"))?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!("loss {value:?} is not between 0 and 100%"));
                    }
                    imp.loss = p / 100.0;
                }
                "seed" => {
                    imp.seed = value
                        .parse()
                        .map_err(|_| format!("seed {value:?} is not a number"))?;
                }
                other => {
                    return Err(format!(
                        "unknown impairment {other:?}: use delay, jitter, loss, seed"
                    ));
                }
            }
        }
        if imp.jitter > imp.delay {
            return Err("jitter larger than the delay would send packets back in time".into());
        }
        Ok(imp)
    }
}

/// xorshift64*: small, seeded, good enough to pick delays and losses.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// quinn's socket with an [`Impairment`] on what it sends.
pub(crate) struct ImpairedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    impairment: Impairment,
    rng: Mutex<Rng>,
}

impl fmt::Debug for ImpairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairedSocket")
            .field("impairment", &self.impairment)
            .finish_non_exhaustive()
    }
}

impl ImpairedSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, impairment: Impairment) -> Self {
        ImpairedSocket {
            inner,
            rng: Mutex::new(Rng(impairment.seed.max(1))),
            impairment,
        }
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let (lost, delay) = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let lost = rng.next_f64() < self.impairment.loss;
            let spread = (rng.next_f64() * 2.0 - 1.0) * self.impairment.jitter.as_secs_f64();
            let delay = (self.impairment.delay.as_secs_f64() + spread).max(0.0);
            (lost, Duration::from_secs_f64(delay))
        };
        if lost {
            return Ok(());
        }
        let inner = self.inner.clone();
        let contents = transmit.contents.to_vec();
        let (destination, ecn, segment_size, src_ip) = (
            transmit.destination,
            transmit.ecn,
            transmit.segment_size,
            transmit.src_ip,
        );
        // A packet in flight on the emulated wire; if the real socket is
        // busy when it lands, it is lost, as on a full link.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inner.try_send(&Transmit {
                destination,
                ecn,
                contents: &contents,
                segment_size,
                src_ip,
            });
        });
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impairments_parse_and_bad_ones_say_why() {
        let i: Impairment = "delay=20ms,jitter=5ms,loss=2%".parse().unwrap();
        assert_eq!(i.delay, Duration::from_millis(20));
        assert_eq!(i.jitter, Duration::from_millis(5));
        assert!((i.loss - 0.02).abs() < 1e-9);
        assert!("delay=5ms,jitter=10ms".parse::<Impairment>().is_err());
        assert!("loss=200%".parse::<Impairment>().is_err());
        assert!("wobble=1".parse::<Impairment>().is_err());
        assert!("delay".parse::<Impairment>().is_err());
    }

    #[test]
    fn the_generator_is_uniform_enough() {
        let mut rng = Rng(7);
        let n = 100_000;
        let below: usize = (0..n).filter(|_| rng.next_f64() < 0.02).count();
        assert!((1_700..2_300).contains(&below), "{below}");
    }
}
