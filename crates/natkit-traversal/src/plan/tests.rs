use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_identity::{Keypair, NodeId};
use natkit_unl::{AddrSource, NatType, NodeType, Unl};

use super::*;

fn id(seed: u8) -> NodeId {
    Keypair::from_seed([seed; 32]).node_id()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Alice: 10.0.1.2 behind a NAT of type `nat`, not reachable.
fn alice(nat: NatType) -> LocalSituation {
    LocalSituation {
        node_id: id(1),
        lan: vec![sa("10.0.1.2:50500")],
        nat,
        reachable: false,
        port_mapped: false,
    }
}

/// Bob: LAN 10.0.2.2, observed 203.0.113.20, one rendezvous point.
fn bob(nat: NatType, node: NodeType) -> Unl {
    let mut unl = Unl::new(id(2));
    unl.add_addr(AddrSource::Lan, sa("10.0.2.2:50500")).unwrap();
    unl.add_addr(AddrSource::Observed, sa("203.0.113.20:50500"))
        .unwrap();
    unl.add_rendezvous(sa("203.0.113.100:6881")).unwrap();
    unl.nat = nat;
    unl.node = node;
    unl
}

fn kinds(p: &Plan) -> Vec<AttemptKind> {
    p.attempts.iter().map(|a| a.kind.clone()).collect()
}

fn is_punch(k: &AttemptKind) -> bool {
    matches!(k, AttemptKind::Punch { .. })
}

fn is_reverse(k: &AttemptKind) -> bool {
    matches!(k, AttemptKind::Reverse { .. })
}

#[test]
fn same_lan_rule() {
    assert!(same_lan(ip("10.0.1.2"), ip("10.0.1.3")));
    assert!(same_lan(ip("192.168.1.10"), ip("192.168.1.254")));
    assert!(!same_lan(ip("10.0.1.2"), ip("10.0.2.2")));
    assert!(same_lan(ip("fd00::1"), ip("fd00::2:3")));
    assert!(!same_lan(ip("fd00:0:0:1::1"), ip("fd00:0:0:2::1")));
    assert!(!same_lan(ip("fe80::1"), ip("fe80::2")), "link-local");
    assert!(!same_lan(ip("127.0.0.1"), ip("127.0.0.2")), "loopback");
    assert!(!same_lan(ip("0.0.0.0"), ip("0.0.0.1")), "unspecified");
    assert!(!same_lan(ip("10.0.1.2"), ip("::ffff:10.0.1.2")), "families");
    assert!(!same_lan(ip("224.0.0.1"), ip("224.0.0.2")), "multicast");
}

#[test]
fn self_connect_is_refused() {
    let mut peer = bob(NatType::Consistent, NodeType::HolePunch);
    peer.node_id = id(1);
    let err = plan(&alice(NatType::Consistent), &peer, Instant::now()).unwrap_err();
    assert_eq!(err, NoPath::SelfConnect);
}

#[test]
fn lan_address_on_our_lan_comes_first_with_no_delay() {
    let mut us = alice(NatType::Consistent);
    us.lan = vec![sa("10.0.2.9:50500")];
    let p = plan(
        &us,
        &bob(NatType::Consistent, NodeType::HolePunch),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(p.attempts[0].kind, AttemptKind::Lan(sa("10.0.2.2:50500")));
    assert_eq!(p.attempts[0].delay, Duration::ZERO);
    assert!(
        p.attempts
            .iter()
            .skip(1)
            .all(|a| !matches!(a.kind, AttemptKind::Lan(_)))
    );
}

#[test]
fn lan_address_elsewhere_is_not_tried() {
    let p = plan(
        &alice(NatType::Consistent),
        &bob(NatType::Consistent, NodeType::HolePunch),
        Instant::now(),
    )
    .unwrap();
    assert!(kinds(&p).iter().all(|k| !matches!(k, AttemptKind::Lan(_))));
}

#[test]
fn reachable_peer_is_dialed_directly_mapping_first() {
    let mut peer = bob(NatType::Consistent, NodeType::Reachable);
    peer.add_addr(AddrSource::Upnp, sa("203.0.113.20:4242"))
        .unwrap();
    let p = plan(&alice(NatType::Random), &peer, Instant::now()).unwrap();
    assert_eq!(
        kinds(&p),
        vec![
            AttemptKind::Mapped(sa("203.0.113.20:4242")),
            AttemptKind::Direct(sa("203.0.113.20:50500")),
        ]
    );
    assert_eq!(p.internet, None);
}

#[test]
fn open_peer_with_unknown_node_type_is_dialed_on_all_its_addresses() {
    let mut peer = Unl::new(id(2));
    peer.add_addr(AddrSource::Lan, sa("198.51.100.130:50500"))
        .unwrap();
    peer.nat = NatType::Open;
    let p = plan(&alice(NatType::Consistent), &peer, Instant::now()).unwrap();
    // Unconfirmed: a firewall looks the same, so a punch follows, late.
    assert_eq!(
        kinds(&p),
        vec![
            AttemptKind::Direct(sa("198.51.100.130:50500")),
            AttemptKind::Punch {
                peer_addrs: vec![sa("198.51.100.130:50500")],
                rendezvous: vec![],
            }
        ]
    );
    assert_eq!(p.attempts[0].delay, Duration::ZERO);
    assert_eq!(p.attempts[1].delay, UNCONFIRMED_PUNCH_DELAY);

    // Confirmed reachable: the dial alone.
    peer.node = NodeType::Reachable;
    let p = plan(&alice(NatType::Consistent), &peer, Instant::now()).unwrap();
    assert_eq!(
        kinds(&p),
        vec![AttemptKind::Direct(sa("198.51.100.130:50500"))]
    );
}

#[test]
fn open_but_firewalled_peer_is_punched_not_dialed() {
    let peer = bob(NatType::Open, NodeType::HolePunch);
    let p = plan(&alice(NatType::Consistent), &peer, Instant::now()).unwrap();
    assert!(
        kinds(&p)
            .iter()
            .all(|k| !matches!(k, AttemptKind::Direct(_)))
    );
    assert!(kinds(&p).iter().any(is_punch));
}

#[test]
fn mapped_addresses_are_tried_even_when_the_peer_is_not_reachable() {
    let mut peer = bob(NatType::Random, NodeType::OutboundOnly);
    peer.add_addr(AddrSource::NatPmp, sa("203.0.113.20:7000"))
        .unwrap();
    let p = plan(&alice(NatType::Random), &peer, Instant::now()).unwrap();
    assert_eq!(
        kinds(&p),
        vec![AttemptKind::Mapped(sa("203.0.113.20:7000"))]
    );
}

#[test]
fn reachable_us_asks_an_unreachable_peer_to_dial_back() {
    let mut us = alice(NatType::Consistent);
    us.reachable = true;
    let p = plan(
        &us,
        &bob(NatType::Random, NodeType::OutboundOnly),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(
        kinds(&p),
        vec![AttemptKind::Reverse {
            rendezvous: vec![sa("203.0.113.100:6881")]
        }]
    );
}

#[test]
fn a_port_mapping_makes_us_reachable_for_reverse_connects() {
    let mut us = alice(NatType::Random);
    us.port_mapped = true;
    let p = plan(
        &us,
        &bob(NatType::Random, NodeType::OutboundOnly),
        Instant::now(),
    )
    .unwrap();
    assert!(is_reverse(&p.attempts[0].kind));
}

#[test]
fn known_punchable_nats_punch_before_reverse() {
    let mut us = alice(NatType::Consistent);
    us.reachable = true;
    let p = plan(
        &us,
        &bob(NatType::Consistent, NodeType::HolePunch),
        Instant::now(),
    )
    .unwrap();
    let k = kinds(&p);
    assert_eq!(k.len(), 2);
    assert!(is_punch(&k[0]) && is_reverse(&k[1]), "{k:?}");
}

#[test]
fn unknown_nat_never_blocks_a_punch_it_only_moves_it_last() {
    for (ours, theirs) in [
        (NatType::Unknown, NatType::Consistent),
        (NatType::Consistent, NatType::Unknown),
        (NatType::Unknown, NatType::Unknown),
    ] {
        let p = plan(
            &alice(ours),
            &bob(theirs, NodeType::Unknown),
            Instant::now(),
        )
        .unwrap();
        assert!(kinds(&p).iter().any(is_punch), "{ours:?} x {theirs:?}");

        let mut us = alice(ours);
        us.reachable = true;
        let p = plan(&us, &bob(theirs, NodeType::Unknown), Instant::now()).unwrap();
        let k = kinds(&p);
        assert!(is_reverse(&k[0]) && is_punch(&k[1]), "{k:?}");
    }
}

#[test]
fn punch_targets_the_observed_address() {
    let p = plan(
        &alice(NatType::Consistent),
        &bob(NatType::Consistent, NodeType::HolePunch),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(
        kinds(&p),
        vec![AttemptKind::Punch {
            peer_addrs: vec![sa("203.0.113.20:50500")],
            rendezvous: vec![sa("203.0.113.100:6881")],
        }]
    );
}

#[test]
fn incrementing_peer_gets_predicted_ports() {
    let peer = bob(NatType::Incrementing { delta: 2 }, NodeType::HolePunch);
    let p = plan(&alice(NatType::Consistent), &peer, Instant::now()).unwrap();
    let AttemptKind::Punch { peer_addrs, .. } = &p.attempts[0].kind else {
        panic!("{p:?}");
    };
    let ports: Vec<u16> = peer_addrs.iter().map(|a| a.port()).collect();
    assert_eq!(ports, vec![50500, 50502, 50504, 50506]);
}

#[test]
fn predicted_ports_stay_in_range() {
    let near_top = sa("203.0.113.20:65533");
    assert_eq!(
        predict_ports(near_top, 2, 3),
        vec![sa("203.0.113.20:65535")]
    );
    let near_bottom = sa("203.0.113.20:3");
    assert_eq!(
        predict_ports(near_bottom, -1, 5),
        vec![sa("203.0.113.20:2"), sa("203.0.113.20:1")]
    );
    assert!(
        predict_ports(near_top, 0, 3)
            .iter()
            .all(|a| a.port() == 65533)
    );
}

#[test]
fn symmetric_on_both_sides_is_no_path() {
    let err = plan(
        &alice(NatType::Random),
        &bob(NatType::Random, NodeType::OutboundOnly),
        Instant::now(),
    )
    .unwrap_err();
    assert_eq!(err, NoPath::BothRandom);
    assert!(err.to_string().contains("relay"));
}

#[test]
fn symmetric_on_one_side_is_no_path_when_the_other_is_unreachable() {
    let err = plan(
        &alice(NatType::Random),
        &bob(NatType::Consistent, NodeType::HolePunch),
        Instant::now(),
    )
    .unwrap_err();
    assert_eq!(err, NoPath::RandomNat { side: Side::Local });
    assert!(err.to_string().starts_with("our NAT"));

    let err = plan(
        &alice(NatType::Consistent),
        &bob(NatType::Random, NodeType::Unknown),
        Instant::now(),
    )
    .unwrap_err();
    assert_eq!(err, NoPath::RandomNat { side: Side::Remote });
}

#[test]
fn outbound_only_peer_needs_us_reachable() {
    let err = plan(
        &alice(NatType::Consistent),
        &bob(NatType::Unknown, NodeType::OutboundOnly),
        Instant::now(),
    )
    .unwrap_err();
    assert_eq!(err, NoPath::PeerOutboundOnly);
}

#[test]
fn reachable_peer_without_addresses_is_no_path() {
    let mut peer = Unl::new(id(2));
    peer.node = NodeType::Reachable;
    let err = plan(&alice(NatType::Random), &peer, Instant::now()).unwrap_err();
    assert_eq!(err, NoPath::NoAddresses);
}

#[test]
fn lan_only_plan_says_why_the_internet_cannot_work() {
    let mut us = alice(NatType::Random);
    us.lan = vec![sa("10.0.2.9:50500")];
    let p = plan(
        &us,
        &bob(NatType::Random, NodeType::OutboundOnly),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(kinds(&p), vec![AttemptKind::Lan(sa("10.0.2.2:50500"))]);
    assert_eq!(p.internet, Some(NoPath::BothRandom));
}

#[test]
fn attempts_are_staggered_and_the_deadline_covers_them_all() {
    let now = Instant::now();
    let mut us = alice(NatType::Consistent);
    us.lan = vec![sa("10.0.2.9:50500")];
    us.reachable = true;
    let mut peer = bob(NatType::Consistent, NodeType::HolePunch);
    peer.add_addr(AddrSource::Pcp, sa("203.0.113.20:9000"))
        .unwrap();
    let p = plan(&us, &peer, now).unwrap();
    assert_eq!(p.attempts.len(), 4, "lan, mapped, punch, reverse");
    for (i, a) in p.attempts.iter().enumerate() {
        assert_eq!(a.delay, ATTEMPT_STAGGER * u32::try_from(i).unwrap());
        assert_eq!(a.start_at, now + a.delay);
        assert_eq!(a.give_up_at, a.start_at + a.kind.timeout());
        assert!(a.give_up_at <= p.deadline);
    }
    assert!(p.attempts.iter().any(|a| a.give_up_at == p.deadline));
}

#[test]
fn an_address_is_dialed_once() {
    let mut us = alice(NatType::Consistent);
    us.lan = vec![sa("203.0.113.7:50500")];
    let mut peer = bob(NatType::Open, NodeType::Reachable);
    peer.addrs.clear();
    peer.add_addr(AddrSource::Lan, sa("203.0.113.20:50500"))
        .unwrap();
    peer.add_addr(AddrSource::Observed, sa("203.0.113.20:50500"))
        .unwrap();
    peer.add_addr(AddrSource::Manual, sa("203.0.113.20:50500"))
        .unwrap();
    let p = plan(&us, &peer, Instant::now()).unwrap();
    assert_eq!(kinds(&p), vec![AttemptKind::Lan(sa("203.0.113.20:50500"))]);
}

#[test]
fn plans_are_bounded() {
    let mut us = alice(NatType::Consistent);
    us.reachable = true;
    let mut peer = bob(NatType::Consistent, NodeType::HolePunch);
    peer.addrs.clear();
    for port in 1..=8 {
        peer.add_addr(AddrSource::Upnp, SocketAddr::new(ip("203.0.113.20"), port))
            .unwrap();
    }
    let p = plan(&us, &peer, Instant::now()).unwrap();
    assert_eq!(p.attempts.len(), MAX_PLAN_ATTEMPTS);
}

#[test]
fn both_ends_agree_on_the_noise_initiator() {
    let ids: Vec<NodeId> = (1..=40).map(id).collect();
    for a in &ids {
        for b in &ids {
            match (noise_initiator(a, b), noise_initiator(b, a)) {
                (None, None) => assert_eq!(a, b),
                (Some(x), Some(y)) => assert_ne!(x, y, "{a} vs {b}"),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn noise_initiator_role_is_spread_over_peers() {
    let me = id(1);
    let local = (2..=40)
        .filter(|s| noise_initiator(&me, &id(*s)) == Some(Side::Local))
        .count();
    assert!((5..=34).contains(&local), "{local} of 39");
}
