//! A link impairment on the voice socket: delay, jitter and loss applied to
//! every packet it sends, for tests and the latency harness on a kernel
//! without `netem` (see FIELD-NOTES: the test machines have none).
//!
//! It wraps quinn's own socket behind quinn's [`quinn::AsyncUdpSocket`]
//! trait, so the endpoint, TLS, congestion control and the OS socket are all
//! the real ones; only the wire between them is made worse. Delays and losses
//! come from `tincan-netem`'s seeded link model: uniform in `delay ± jitter`,
//! so packets may overtake one another, as on a real jittery path. Nothing is impaired
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
use tincan_netem::{Fate, LinkConfig, LinkModel, LossModel};

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

/// quinn's socket with an [`Impairment`] on what it sends: each packet's
/// fate comes from `tincan-netem`'s link model, the one emulator of the
/// workspace, so `--voice-impair` and the in-process tests draw delays and
/// losses the same way.
pub(crate) struct ImpairedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    impairment: Impairment,
    model: Mutex<LinkModel>,
}

impl fmt::Debug for ImpairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairedSocket")
            .field("impairment", &self.impairment)
            .finish_non_exhaustive()
    }
}

impl Impairment {
    /// The link model that carries it out.
    pub fn link_config(&self) -> LinkConfig {
        LinkConfig {
            seed: self.seed,
            latency: self.delay,
            jitter: self.jitter,
            loss: if self.loss > 0.0 {
                LossModel::Random {
                    probability: self.loss,
                }
            } else {
                LossModel::None
            },
            ..LinkConfig::default()
        }
    }
}

impl ImpairedSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, impairment: Impairment) -> Self {
        ImpairedSocket {
            inner,
            model: Mutex::new(LinkModel::new(impairment.link_config())),
            impairment,
        }
    }

    fn send_later(&self, transmit: &Transmit<'_>, delay: Duration) {
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
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let fate = self
            .model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .transmit();
        match fate {
            Fate::Lost => {}
            Fate::Once(delay) => self.send_later(transmit, delay),
            Fate::Twice(first, second) => {
                self.send_later(transmit, first);
                self.send_later(transmit, second);
            }
        }
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
    fn an_impairment_is_carried_out_by_the_netem_model() {
        let i: Impairment = "delay=20ms,jitter=5ms,loss=2%,seed=3".parse().unwrap();
        let mut model = LinkModel::new(i.link_config());
        let n = 100_000;
        let mut lost = 0;
        for _ in 0..n {
            match model.transmit() {
                Fate::Lost => lost += 1,
                Fate::Once(d) => {
                    assert!(d >= Duration::from_millis(15) && d <= Duration::from_millis(25))
                }
                Fate::Twice(..) => panic!("this impairment never duplicates"),
            }
        }
        assert!((1_700..2_300).contains(&lost), "{lost}");
    }
}
