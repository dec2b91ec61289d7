use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_identity::{Keypair, NodeId};

use super::*;

fn id(seed: u8) -> NodeId {
    Keypair::from_seed([seed; 32]).node_id()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ports(ip: &str, n: u16) -> Vec<SocketAddr> {
    let ip: IpAddr = ip.parse().unwrap();
    (1..=n).map(|p| SocketAddr::new(ip, p)).collect()
}

#[test]
fn bucket_spends_and_refills_keeping_the_remainder() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(2, secs(10), t0);
    assert!(b.is_full(t0));
    assert!(b.try_take(2, t0));
    assert!(!b.try_take(1, t0));
    assert_eq!(b.available(t0 + secs(15)), 1);
    assert_eq!(b.available(t0 + secs(19)), 1);
    assert_eq!(b.available(t0 + secs(20)), 2, "the 5 s left over counted");
    assert_eq!(b.available(t0 + secs(1000)), 2, "never above capacity");
    assert!(b.try_take(1, t0 + secs(1000)));
    assert_eq!(b.available(t0), 1, "a clock going back adds nothing");
}

#[test]
fn zero_interval_bucket_is_always_full() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(1, Duration::ZERO, t0);
    assert!(b.try_take(1, t0));
    assert!(b.try_take(1, t0));
}

#[test]
fn requests_per_node_are_limited_and_refill() {
    let t0 = Instant::now();
    let mut l = Limiter::new(LimitsConfig::default(), t0);
    for _ in 0..NODE_BURST {
        l.admit_request(&id(1), t0).unwrap();
    }
    assert_eq!(
        l.admit_request(&id(1), t0),
        Err(Refused::NodeRateLimited(id(1)))
    );
    l.admit_request(&id(2), t0).unwrap();
    l.admit_request(&id(1), t0 + NODE_REFILL).unwrap();
    assert!(l.admit_request(&id(1), t0 + NODE_REFILL).is_err());
}

#[test]
fn node_table_is_bounded_and_fails_closed() {
    let t0 = Instant::now();
    let config = LimitsConfig {
        max_nodes: 2,
        ..LimitsConfig::default()
    };
    let mut l = Limiter::new(config, t0);
    l.admit_request(&id(1), t0).unwrap();
    l.admit_request(&id(2), t0).unwrap();
    assert_eq!(l.admit_request(&id(3), t0), Err(Refused::NodeTableFull));
    assert_eq!(l.tracked().0, 2);
    // Once a bucket has refilled, its entry makes room.
    l.admit_request(&id(3), t0 + NODE_REFILL).unwrap();
    assert_eq!(l.tracked().0, 1);
}

#[test]
fn one_batch_dials_at_most_a_few_addresses() {
    let t0 = Instant::now();
    let mut l = Limiter::new(LimitsConfig::default(), t0);
    let got = l.admit_dials(&ports("203.0.113.20", 6), t0);
    assert_eq!(got.allowed, ports("203.0.113.20", 4));
    assert_eq!(got.refused.len(), 2);
    assert!(
        got.refused
            .iter()
            .all(|(_, why)| *why == DialRefusal::TooManyInRequest)
    );
}

#[test]
fn a_target_gets_a_bounded_number_of_syns_whoever_asks() {
    let t0 = Instant::now();
    let mut l = Limiter::new(LimitsConfig::default(), t0);
    let mut allowed = 0;
    for requester in 1..=50u8 {
        if l.admit_request(&id(requester), t0).is_ok() {
            allowed += l.admit_dials(&ports("203.0.113.99", 8), t0).allowed.len();
        }
    }
    assert_eq!(allowed, usize::try_from(TARGET_BURST).unwrap());
    let got = l.admit_dials(&[sa("203.0.113.99:1")], t0);
    assert_eq!(
        got.refused,
        vec![(sa("203.0.113.99:1"), DialRefusal::TargetRateLimited)]
    );
    // Another target is not affected; the first one refills.
    assert_eq!(l.admit_dials(&[sa("203.0.113.98:1")], t0).allowed.len(), 1);
    let later = t0 + TARGET_REFILL;
    assert_eq!(
        l.admit_dials(&ports("203.0.113.99", 2), later)
            .allowed
            .len(),
        1
    );
}

#[test]
fn ipv6_targets_are_limited_per_slash_64() {
    assert_eq!(
        target_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
        "2001:db8:1:2::".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        target_key("203.0.113.7".parse().unwrap()),
        "203.0.113.7".parse::<IpAddr>().unwrap()
    );
    let t0 = Instant::now();
    let config = LimitsConfig {
        target_burst: 2,
        ..LimitsConfig::default()
    };
    let mut l = Limiter::new(config, t0);
    let same_net = [
        sa("[2001:db8::1]:1"),
        sa("[2001:db8::2]:1"),
        sa("[2001:db8::3]:1"),
    ];
    let got = l.admit_dials(&same_net, t0);
    assert_eq!(got.allowed.len(), 2);
    assert_eq!(
        got.refused,
        vec![(same_net[2], DialRefusal::TargetRateLimited)]
    );
    assert_eq!(
        l.admit_dials(&[sa("[2001:db8:0:1::1]:1")], t0)
            .allowed
            .len(),
        1
    );
}

#[test]
fn the_overall_budget_caps_all_targets() {
    let t0 = Instant::now();
    let config = LimitsConfig {
        global_burst: 5,
        ..LimitsConfig::default()
    };
    let mut l = Limiter::new(config, t0);
    let mut allowed = 0;
    for host in 1..=10u8 {
        let addr = SocketAddr::new(IpAddr::from([198, 51, 100, host]), 80);
        allowed += l.admit_dials(&[addr], t0).allowed.len();
    }
    assert_eq!(allowed, 5);
    let got = l.admit_dials(&[sa("198.51.100.77:80")], t0);
    assert_eq!(got.refused[0].1, DialRefusal::GlobalRateLimited);
    assert_eq!(
        l.admit_dials(&[sa("198.51.100.77:80")], t0 + GLOBAL_REFILL)
            .allowed
            .len(),
        1
    );
}

#[test]
fn target_table_is_bounded_and_fails_closed() {
    let t0 = Instant::now();
    let config = LimitsConfig {
        max_targets: 2,
        ..LimitsConfig::default()
    };
    let mut l = Limiter::new(config, t0);
    l.admit_dials(&[sa("198.51.100.1:1"), sa("198.51.100.2:1")], t0);
    let got = l.admit_dials(&[sa("198.51.100.3:1")], t0);
    assert_eq!(
        got.refused,
        vec![(sa("198.51.100.3:1"), DialRefusal::TargetTableFull)]
    );
    assert_eq!(l.tracked().1, 2);
    let later = t0 + TARGET_REFILL;
    assert_eq!(
        l.admit_dials(&[sa("198.51.100.3:1")], later).allowed.len(),
        1
    );
}

#[test]
fn refused_dials_cost_nothing() {
    let t0 = Instant::now();
    let config = LimitsConfig {
        global_burst: 1,
        target_burst: 1,
        ..LimitsConfig::default()
    };
    let mut l = Limiter::new(config, t0);
    assert_eq!(l.admit_dials(&[sa("198.51.100.1:1")], t0).allowed.len(), 1);
    let got = l.admit_dials(&[sa("198.51.100.2:1")], t0);
    assert_eq!(got.refused[0].1, DialRefusal::GlobalRateLimited);
    // Long before .2's target bucket could refill, its one token is still there.
    let soon = t0 + GLOBAL_REFILL;
    assert!(GLOBAL_REFILL < TARGET_REFILL);
    assert_eq!(
        l.admit_dials(&[sa("198.51.100.2:1")], soon).allowed.len(),
        1
    );
}

#[test]
fn idle_entries_are_pruned() {
    let t0 = Instant::now();
    let mut l = Limiter::new(LimitsConfig::default(), t0);
    l.admit_request(&id(1), t0).unwrap();
    l.admit_dials(&[sa("198.51.100.1:1")], t0);
    assert_eq!(l.tracked(), (1, 1));
    l.handle_timeout(t0 + Duration::from_millis(100));
    assert_eq!(l.tracked(), (1, 1), "still refilling");
    l.handle_timeout(t0 + NODE_REFILL.max(TARGET_REFILL));
    assert_eq!(l.tracked(), (0, 0));
}
