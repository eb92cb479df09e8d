//! One direction of an emulated link: latency, jitter, random or bursty
//! (Gilbert-Elliott) loss, reordering and duplication, all drawn from a seed.
//!
//! Two layers:
//! - [`LinkModel`] decides each packet's fate ([`Fate`]: lost, or delivered
//!   once or twice after some delay) and holds no packets, so a real socket
//!   (the impairing UDP socket of `tincan-media`) can carry out its choices
//!   on its own timers;
//! - [`Link`] is a model plus the packets in flight: [`Link::send`] takes an
//!   item and the time it was sent; [`Link::poll`] hands back what has
//!   arrived by `now`, with its arrival time; [`Link::next_arrival`] says
//!   when to look next, so a test can jump its virtual clock straight there.
//!
//! The same seed and the same calls give the same deliveries, so tests,
//! simulations and the offline chain are repeatable.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::rng::SimRng;

/// Which packets the link loses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum LossModel {
    /// None.
    #[default]
    None,
    /// Each packet independently, with this probability (0.0 to 1.0).
    Random {
        /// Probability of losing a packet.
        probability: f64,
    },
    /// The Gilbert-Elliott two-state model: losses come in bursts.
    GilbertElliott {
        /// Per packet, probability of moving from the good state to the bad.
        good_to_bad: f64,
        /// Per packet, probability of moving from the bad state to the good.
        bad_to_good: f64,
        /// Loss probability in the good state.
        loss_in_good: f64,
        /// Loss probability in the bad state.
        loss_in_bad: f64,
    },
}

impl LossModel {
    /// Bursts of loss averaging `mean_burst` packets, losing `mean_loss` (0.0
    /// to 1.0) of all packets in the long run.
    pub fn bursty(mean_loss: f64, mean_burst: f64) -> Self {
        let mean_loss = mean_loss.clamp(0.0, 0.99);
        let bad_to_good = 1.0 / mean_burst.max(1.0);
        // Stationary share of the bad state is g2b / (g2b + b2g) = mean_loss.
        let good_to_bad = bad_to_good * mean_loss / (1.0 - mean_loss);
        LossModel::GilbertElliott {
            good_to_bad,
            bad_to_good,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        }
    }
}

/// How the emulated link behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Seed of every random choice the link makes.
    pub seed: u64,
    /// Base one-way delay.
    pub latency: Duration,
    /// Each packet's delay is uniform in `latency ± jitter` (as netem's
    /// `delay LATENCY JITTER`), and never below zero. Packets overtake each
    /// other when the jitter exceeds their spacing.
    pub jitter: Duration,
    /// Which packets are lost.
    pub loss: LossModel,
    /// Probability that a packet is held back by an extra `reorder_delay`,
    /// so that later ones overtake it.
    pub reorder: f64,
    /// The extra delay of a held-back packet.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Most packets in flight; at the limit the oldest is dropped.
    pub capacity: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            seed: 1,
            latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            loss: LossModel::None,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
            duplicate: 0.0,
            capacity: 4096,
        }
    }
}

/// What a link did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Items sent into the link.
    pub sent: u64,
    /// Items the loss model dropped.
    pub lost: u64,
    /// Items delivered (duplicates count twice).
    pub delivered: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Items held back to be reordered.
    pub reordered: u64,
    /// Items dropped because too many were in flight.
    pub overflow: u64,
}

/// What the model decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The loss model dropped it.
    Lost,
    /// It arrives after this delay.
    Once(Duration),
    /// It arrives twice, after each of these delays.
    Twice(Duration, Duration),
}

/// The decisions of one direction of a link, without the packets: see the
/// module documentation.
#[derive(Clone, Debug)]
pub struct LinkModel {
    config: LinkConfig,
    rng: SimRng,
    bad_state: bool,
    stats: LinkStats,
}

impl LinkModel {
    /// A model drawing from `config.seed`.
    pub fn new(config: LinkConfig) -> Self {
        LinkModel {
            rng: SimRng::new(config.seed),
            config,
            bad_state: false,
            stats: LinkStats::default(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// What it has decided so far (`delivered` and `overflow` are counted
    /// by whoever holds the packets: [`Link`] does).
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    fn lose(&mut self) -> bool {
        match self.config.loss {
            LossModel::None => false,
            LossModel::Random { probability } => self.rng.chance(probability),
            LossModel::GilbertElliott {
                good_to_bad,
                bad_to_good,
                loss_in_good,
                loss_in_bad,
            } => {
                let flip = if self.bad_state {
                    bad_to_good
                } else {
                    good_to_bad
                };
                if self.rng.chance(flip) {
                    self.bad_state = !self.bad_state;
                }
                let p = if self.bad_state {
                    loss_in_bad
                } else {
                    loss_in_good
                };
                self.rng.chance(p)
            }
        }
    }

    fn delay(&mut self) -> Duration {
        let jitter = self.config.jitter.as_secs_f64();
        let offset = (self.rng.next_f64() * 2.0 - 1.0) * jitter;
        let mut delay = (self.config.latency.as_secs_f64() + offset).max(0.0);
        if self.rng.chance(self.config.reorder) {
            self.stats.reordered += 1;
            delay += self.config.reorder_delay.as_secs_f64();
        }
        Duration::from_secs_f64(delay)
    }

    /// Decides the fate of the next packet sent.
    pub fn transmit(&mut self) -> Fate {
        self.stats.sent += 1;
        if self.lose() {
            self.stats.lost += 1;
            return Fate::Lost;
        }
        if self.rng.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            let first = self.delay();
            return Fate::Twice(first, self.delay());
        }
        Fate::Once(self.delay())
    }
}

/// One direction of an emulated link. See the module documentation.
#[derive(Debug)]
pub struct Link<T> {
    model: LinkModel,
    in_flight: BTreeMap<(Duration, u64), T>,
    order: u64,
    delivered: u64,
    overflow: u64,
}

impl<T: Clone> Link<T> {
    /// An empty link.
    pub fn new(config: LinkConfig) -> Self {
        Link {
            model: LinkModel::new(config),
            in_flight: BTreeMap::new(),
            order: 0,
            delivered: 0,
            overflow: 0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &LinkConfig {
        self.model.config()
    }

    /// What the link has done so far.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            delivered: self.delivered,
            overflow: self.overflow,
            ..self.model.stats()
        }
    }

    fn enqueue(&mut self, item: T, arrival: Duration) {
        self.order += 1;
        self.in_flight.insert((arrival, self.order), item);
        while self.in_flight.len() > self.model.config.capacity.max(1) {
            self.in_flight.pop_first();
            self.overflow += 1;
        }
    }

    /// Sends `item` at time `now`.
    pub fn send(&mut self, item: T, now: Duration) {
        match self.model.transmit() {
            Fate::Lost => {}
            Fate::Once(delay) => self.enqueue(item, now + delay),
            Fate::Twice(first, second) => {
                self.enqueue(item.clone(), now + first);
                self.enqueue(item, now + second);
            }
        }
    }

    /// The next item to have arrived by `now`, with its arrival time.
    pub fn poll(&mut self, now: Duration) -> Option<(T, Duration)> {
        let (&(arrival, _), _) = self.in_flight.first_key_value()?;
        if arrival > now {
            return None;
        }
        let ((arrival, _), item) = self.in_flight.pop_first()?;
        self.delivered += 1;
        Some((item, arrival))
    }

    /// When the next item arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<Duration> {
        self.in_flight.keys().next().map(|(arrival, _)| *arrival)
    }

    /// Items in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliveries(config: LinkConfig) -> Vec<(u32, Duration)> {
        let mut link = Link::new(config);
        for i in 0..2000u32 {
            link.send(i, Duration::from_millis(u64::from(i) * 10));
        }
        let mut out = Vec::new();
        while let Some(at) = link.next_arrival() {
            while let Some(d) = link.poll(at) {
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn same_seed_same_deliveries() {
        let config = LinkConfig {
            jitter: Duration::from_millis(20),
            loss: LossModel::Random { probability: 0.05 },
            ..Default::default()
        };
        assert_eq!(deliveries(config.clone()), deliveries(config.clone()));
        let other = LinkConfig { seed: 2, ..config };
        assert_ne!(deliveries(other.clone()), deliveries(LinkConfig::default()));
    }

    #[test]
    fn random_loss_rate_is_close_to_asked() {
        let config = LinkConfig {
            loss: LossModel::Random { probability: 0.05 },
            ..Default::default()
        };
        let lost = 2000 - deliveries(config).len();
        assert!((60..=140).contains(&lost), "lost {lost} of 2000");
    }

    #[test]
    fn bursty_loss_comes_in_bursts_at_the_asked_rate() {
        let config = LinkConfig {
            seed: 7,
            loss: LossModel::bursty(0.05, 4.0),
            capacity: 20_000,
            ..Default::default()
        };
        let mut link = Link::new(config);
        let mut delivered = vec![false; 20_000];
        for i in 0..20_000u32 {
            link.send(i, Duration::ZERO);
        }
        while let Some((i, _)) = link.poll(Duration::from_secs(1)) {
            delivered[i as usize] = true;
        }
        let lost = delivered.iter().filter(|d| !**d).count();
        let bursts = delivered.windows(2).filter(|w| w[0] && !w[1]).count();
        let mean_burst = lost as f64 / bursts as f64;
        assert!((700..=1300).contains(&lost), "lost {lost} of 20000");
        assert!(mean_burst > 2.5, "mean burst {mean_burst}");
    }

    #[test]
    fn jitter_reorders_and_stays_within_bounds() {
        let config = LinkConfig {
            latency: Duration::from_millis(30),
            jitter: Duration::from_millis(20),
            ..Default::default()
        };
        let out = deliveries(config);
        assert_eq!(out.len(), 2000);
        let reordered = out.windows(2).filter(|w| w[1].0 < w[0].0).count();
        assert!(reordered > 100, "only {reordered} reorderings");
        for (i, at) in out {
            let delay = at - Duration::from_millis(u64::from(i) * 10);
            assert!(delay >= Duration::from_millis(10) && delay <= Duration::from_millis(50));
        }
    }
}
