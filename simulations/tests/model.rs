//! The gossip model's basic truths: with reliable fast links every record
//! reaches every node, no faster than the link allows; the same seed gives
//! the same result; loss slows delivery down but gossip still completes it.

use tincan_sim::{SimConfig, run};

fn cfg(nodes: usize, loss: f64) -> SimConfig {
    SimConfig {
        nodes,
        loss,
        messages: 40,
        ..SimConfig::default()
    }
}

#[test]
fn everything_reaches_everyone_and_not_faster_than_the_links() {
    let r = run(&cfg(200, 0.0));
    assert_eq!(r.undelivered(), 0);
    let min = r.time_to_all_us.iter().flatten().min().copied().unwrap();
    // At least two hops for 200 nodes with 8 connections each.
    assert!(min >= 2 * 20_000, "{min} us");
    assert!(r.quantile_us(0.99).unwrap() >= r.quantile_us(0.5).unwrap());
}

#[test]
fn same_seed_same_result_other_seed_other_result() {
    assert_eq!(run(&cfg(100, 0.02)), run(&cfg(100, 0.02)));
    let other = SimConfig {
        seed: 2,
        ..cfg(100, 0.02)
    };
    assert_ne!(
        run(&cfg(100, 0.02)).time_to_all_us,
        run(&other).time_to_all_us
    );
}

#[test]
fn loss_costs_time_not_records() {
    let clean = run(&cfg(200, 0.0));
    // Redundant paths hide a few percent of loss; 30 % must show.
    let lossy = run(&cfg(200, 0.3));
    assert_eq!(lossy.undelivered(), 0);
    assert!(lossy.quantile_us(0.99).unwrap() > clean.quantile_us(0.99).unwrap());
}

#[test]
fn more_nodes_send_more_duplicates_in_total() {
    let small = run(&cfg(50, 0.0));
    let big = run(&cfg(400, 0.0));
    assert!(big.duplicates > small.duplicates);
}
