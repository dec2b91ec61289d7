use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_identity::{Keypair, NodeId};
use natkit_unl::{NatType, NodeType};
use proptest::prelude::*;

use super::*;

const LOCAL_PORT: u16 = 50500;

fn id(seed: u8) -> NodeId {
    Keypair::from_seed([seed; 32]).node_id()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Reporter `n` at 203.0.113.(100 + n).
fn reporter_ip(n: u8) -> IpAddr {
    IpAddr::from([203, 0, 113, 100 + n])
}

fn classifier() -> Classifier {
    Classifier::new(
        ClassifierConfig::default(),
        vec!["10.0.1.2".parse().unwrap()],
    )
}

fn obs(n: u8, observed: &str, at: Instant) -> Observation {
    Observation {
        reporter: id(n),
        reporter_ip: reporter_ip(n),
        transport: Transport::Tcp,
        local_port: LOCAL_PORT,
        observed: sa(observed),
        at,
    }
}

fn feed(c: &mut Classifier, observed: &[&str], t0: Instant) {
    for (n, o) in (1u8..).zip(observed) {
        let at = t0 + Duration::from_secs(u64::from(n));
        c.observe(obs(n, o, at)).unwrap();
    }
}

fn tcp_class(c: &Classifier, now: Instant) -> NatClass {
    c.classify(Transport::Tcp, now).class
}

#[test]
fn too_few_reporters_is_unknown_and_says_how_many_are_needed() {
    let t0 = Instant::now();
    let mut c = classifier();
    assert_eq!(
        tcp_class(&c, t0),
        NatClass::Unknown {
            have: 0,
            need: MIN_REPORTER_IPS
        }
    );
    feed(&mut c, &["203.0.113.10:50500", "203.0.113.10:50500"], t0);
    let got = c.classify(Transport::Tcp, t0 + Duration::from_secs(5));
    assert_eq!(got.class, NatClass::Unknown { have: 2, need: 3 });
    assert_eq!(got.class.to_string(), "unknown (2 of 3 reporters needed)");
    assert_eq!(got.class.nat_type(), NatType::Unknown);
}

#[test]
fn same_port_toward_everyone_is_consistent_and_port_preserving() {
    let t0 = Instant::now();
    let mut c = classifier();
    feed(&mut c, &["203.0.113.10:50500"; 3], t0);
    let got = c.classify(Transport::Tcp, t0 + Duration::from_secs(5));
    assert_eq!(
        got.class,
        NatClass::Consistent {
            port_preserving: true
        }
    );
    assert_eq!(got.external, Some(sa("203.0.113.10:50500")));
    assert_eq!(got.local_port, Some(LOCAL_PORT));
    assert_eq!(got.votes.len(), 3);
    assert!(got.votes.iter().all(|v| v.counted));
    assert_eq!(got.class.nat_type(), NatType::Consistent);
}

#[test]
fn same_translated_port_is_consistent_not_port_preserving() {
    let t0 = Instant::now();
    let mut c = classifier();
    feed(&mut c, &["203.0.113.10:61000"; 4], t0);
    let class = tcp_class(&c, t0 + Duration::from_secs(5));
    assert_eq!(
        class,
        NatClass::Consistent {
            port_preserving: false
        }
    );
}

#[test]
fn seeing_our_own_address_is_open() {
    let t0 = Instant::now();
    let mut c = classifier();
    feed(&mut c, &["10.0.1.2:50500"; 3], t0);
    assert_eq!(tcp_class(&c, t0 + Duration::from_secs(5)), NatClass::Open);
    assert_eq!(NatClass::Open.nat_type(), NatType::Open);
}

#[test]
fn constant_step_in_time_order_is_incrementing() {
    let t0 = Instant::now();
    let mut c = classifier();
    // Fed out of order: the class follows the time of each report.
    c.observe(obs(3, "203.0.113.10:40004", t0 + Duration::from_secs(3)))
        .unwrap();
    c.observe(obs(1, "203.0.113.10:40000", t0 + Duration::from_secs(1)))
        .unwrap();
    c.observe(obs(2, "203.0.113.10:40002", t0 + Duration::from_secs(2)))
        .unwrap();
    let class = tcp_class(&c, t0 + Duration::from_secs(5));
    assert_eq!(class, NatClass::Incrementing { delta: 2 });
    assert_eq!(class.nat_type(), NatType::Incrementing { delta: 2 });
}

#[test]
fn large_or_uneven_steps_are_random() {
    let t0 = Instant::now();
    for ports in [
        [
            "203.0.113.10:40000",
            "203.0.113.10:52113",
            "203.0.113.10:33001",
        ],
        [
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "203.0.113.10:40003",
        ],
        [
            "203.0.113.10:40004",
            "203.0.113.10:40002",
            "203.0.113.10:40000",
        ],
        [
            "203.0.113.10:40000",
            "203.0.113.11:40001",
            "203.0.113.10:40002",
        ],
    ] {
        let mut c = classifier();
        feed(&mut c, &ports, t0);
        assert_eq!(
            tcp_class(&c, t0 + Duration::from_secs(5)),
            NatClass::Random,
            "{ports:?}"
        );
    }
}

#[test]
fn one_dissenting_reporter_in_four_does_not_flip_the_class() {
    let t0 = Instant::now();
    let mut c = classifier();
    let seen = [
        "203.0.113.10:50500",
        "203.0.113.10:50500",
        "203.0.113.10:9999",
        "203.0.113.10:50500",
    ];
    feed(&mut c, &seen, t0);
    let class = tcp_class(&c, t0 + Duration::from_secs(5));
    assert_eq!(
        class,
        NatClass::Consistent {
            port_preserving: true
        }
    );

    let mut c = classifier();
    feed(&mut c, &seen[..3], t0);
    assert_eq!(tcp_class(&c, t0 + Duration::from_secs(5)), NatClass::Random);
}

#[test]
fn one_vote_per_reporter_the_latest() {
    let t0 = Instant::now();
    let mut c = classifier();
    for s in 1..=5u64 {
        let port = 40000 + u16::try_from(s).unwrap();
        let o = Observation {
            observed: SocketAddr::new(reporter_ip(1), port),
            ..obs(1, "203.0.113.10:1", t0 + Duration::from_secs(s))
        };
        c.observe(o).unwrap();
    }
    let got = c.classify(Transport::Tcp, t0 + Duration::from_secs(6));
    assert_eq!(got.votes.len(), 1);
    assert_eq!(got.votes[0].observed.port(), 40005);
    assert_eq!(got.class, NatClass::Unknown { have: 1, need: 3 });
}

#[test]
fn reporters_sharing_an_ip_count_once() {
    let t0 = Instant::now();
    let mut c = classifier();
    for n in 1..=5u8 {
        let o = Observation {
            reporter_ip: reporter_ip(1),
            ..obs(
                n,
                "203.0.113.10:50500",
                t0 + Duration::from_secs(u64::from(n)),
            )
        };
        c.observe(o).unwrap();
    }
    let got = c.classify(Transport::Tcp, t0 + Duration::from_secs(6));
    assert_eq!(got.class, NatClass::Unknown { have: 1, need: 3 });
    assert_eq!(got.votes.len(), 5);
    assert_eq!(got.votes.iter().filter(|v| v.counted).count(), 1);
    assert!(
        got.votes.last().is_some_and(|v| v.counted),
        "the latest counts"
    );
}

#[test]
fn votes_expire() {
    let t0 = Instant::now();
    let mut c = classifier();
    feed(&mut c, &["203.0.113.10:50500"; 3], t0);
    let first_expiry = t0 + Duration::from_secs(1) + VOTE_TTL;
    assert_eq!(c.poll_timeout(), Some(first_expiry));
    let class = tcp_class(&c, first_expiry);
    assert_eq!(class, NatClass::Unknown { have: 2, need: 3 });
    c.handle_timeout(first_expiry);
    assert_eq!(c.classify(Transport::Tcp, first_expiry).votes.len(), 2);
    c.handle_timeout(t0 + VOTE_TTL * 2);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn votes_are_bounded_and_the_oldest_goes() {
    let t0 = Instant::now();
    let mut c = classifier();
    for n in 1..=100u8 {
        let o = obs(
            n,
            "203.0.113.10:50500",
            t0 + Duration::from_millis(u64::from(n)),
        );
        c.observe(o).unwrap();
    }
    let got = c.classify(Transport::Tcp, t0 + Duration::from_secs(1));
    assert_eq!(got.votes.len(), MAX_VOTES);
    assert_eq!(
        got.votes[0].reporter,
        id(100 - u8::try_from(MAX_VOTES).unwrap() + 1)
    );
}

#[test]
fn udp_and_tcp_are_classified_separately() {
    let t0 = Instant::now();
    let mut c = classifier();
    feed(&mut c, &["203.0.113.10:50500"; 3], t0);
    for n in 1..=3u8 {
        let port = 30000 + u16::from(n) * 977;
        let o = Observation {
            transport: Transport::Udp,
            observed: SocketAddr::new("203.0.113.10".parse().unwrap(), port),
            ..obs(n, "203.0.113.10:1", t0 + Duration::from_secs(u64::from(n)))
        };
        c.observe(o).unwrap();
    }
    let now = t0 + Duration::from_secs(5);
    assert_eq!(
        tcp_class(&c, now),
        NatClass::Consistent {
            port_preserving: true
        }
    );
    assert_eq!(c.classify(Transport::Udp, now).class, NatClass::Random);
}

#[test]
fn only_the_primary_local_port_is_compared() {
    let t0 = Instant::now();
    let mut c = classifier();
    feed(&mut c, &["203.0.113.10:50500"; 3], t0);
    let other = Observation {
        local_port: 41000,
        ..obs(9, "203.0.113.10:41000", t0 + Duration::from_secs(4))
    };
    c.observe(other).unwrap();
    let got = c.classify(Transport::Tcp, t0 + Duration::from_secs(5));
    assert_eq!(got.local_port, Some(LOCAL_PORT));
    assert_eq!(
        got.class,
        NatClass::Consistent {
            port_preserving: true
        }
    );
    assert_eq!(got.votes.iter().filter(|v| !v.counted).count(), 1);
}

#[test]
fn local_reporters_and_port_zero_are_refused() {
    let t0 = Instant::now();
    let mut c = classifier();
    let lan = Observation {
        reporter_ip: "10.0.1.3".parse().unwrap(),
        ..obs(1, "10.0.1.2:50500", t0)
    };
    assert!(matches!(
        c.observe(lan),
        Err(ClassifyError::LocalReporter { .. })
    ));
    let lo = Observation {
        reporter_ip: "127.0.0.1".parse().unwrap(),
        ..obs(1, "127.0.0.1:50500", t0)
    };
    assert!(matches!(
        c.observe(lo),
        Err(ClassifyError::LocalReporter { .. })
    ));
    let zero = obs(1, "203.0.113.10:0", t0);
    assert_eq!(
        c.observe(zero),
        Err(ClassifyError::ZeroPort { reporter: id(1) })
    );
    assert!(c.classify(Transport::Tcp, t0).votes.is_empty());
}

#[test]
fn reachability_needs_two_reporter_ips_and_a_majority() {
    let t0 = Instant::now();
    let mut c = classifier();
    assert_eq!(c.reachability(t0), Reachability::Unknown);
    c.dial_back(id(1), reporter_ip(1), true, t0).unwrap();
    assert_eq!(c.reachability(t0), Reachability::Unknown);
    c.dial_back(id(2), reporter_ip(1), true, t0).unwrap();
    assert_eq!(c.reachability(t0), Reachability::Unknown, "one IP");
    c.dial_back(id(3), reporter_ip(3), true, t0).unwrap();
    assert_eq!(c.reachability(t0), Reachability::Reachable);
    c.dial_back(id(4), reporter_ip(4), false, t0).unwrap();
    assert_eq!(c.reachability(t0), Reachability::Reachable, "2 of 3");
    c.dial_back(id(3), reporter_ip(3), false, t0 + Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        c.reachability(t0),
        Reachability::Unreachable,
        "the latest result counts"
    );
    assert_eq!(
        c.reachability(t0 + VOTE_TTL * 2),
        Reachability::Unknown,
        "expired"
    );
}

#[test]
fn dial_backs_from_our_own_network_are_refused() {
    let mut c = classifier();
    let lan = "10.0.1.9".parse().unwrap();
    let err = c.dial_back(id(1), lan, true, Instant::now()).unwrap_err();
    assert_eq!(
        err,
        ClassifyError::LocalReporter {
            reporter: id(1),
            ip: lan
        }
    );
}

#[test]
fn node_type_follows_reachability_then_the_tcp_class() {
    let t0 = Instant::now();
    let now = t0 + Duration::from_secs(5);
    let mut c = classifier();
    assert_eq!(c.node_type(now), NodeType::Unknown);
    feed(&mut c, &["203.0.113.10:50500"; 3], t0);
    assert_eq!(c.node_type(now), NodeType::HolePunch);
    c.dial_back(id(1), reporter_ip(1), true, t0).unwrap();
    c.dial_back(id(2), reporter_ip(2), true, t0).unwrap();
    assert_eq!(c.node_type(now), NodeType::Reachable);

    let mut c = classifier();
    feed(
        &mut c,
        &[
            "203.0.113.10:1000",
            "203.0.113.10:31000",
            "203.0.113.10:2000",
        ],
        t0,
    );
    assert_eq!(c.node_type(now), NodeType::OutboundOnly);
}

proptest! {
    #[test]
    fn any_observations_stay_bounded_and_classify(
        reports in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), any::<u16>(), 0u64..2000), 0..200),
    ) {
        let t0 = Instant::now();
        let mut c = classifier();
        for (who, ip, local_port, port, secs) in reports {
            let o = Observation {
                reporter: id(who % 64),
                reporter_ip: IpAddr::from([198, 51, 100, ip]),
                transport: if who % 2 == 0 { Transport::Tcp } else { Transport::Udp },
                local_port,
                observed: SocketAddr::new("203.0.113.10".parse().unwrap(), port),
                at: t0 + Duration::from_secs(secs),
            };
            let _ = c.observe(o);
        }
        let now = t0 + Duration::from_secs(1000);
        for t in [Transport::Tcp, Transport::Udp] {
            let got = c.classify(t, now);
            prop_assert!(got.votes.len() <= MAX_VOTES);
            let counted = got.votes.iter().filter(|v| v.counted).count();
            if let NatClass::Unknown { have, .. } = got.class {
                prop_assert_eq!(have, counted);
            }
        }
    }
}
