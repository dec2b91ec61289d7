use std::net::{IpAddr, Ipv4Addr};

use ed25519_dalek::SigningKey;

use super::*;
use crate::krpc::PutItem;
use crate::sim::{SimNetwork, SplitMix};

const NODES: usize = 1000;

#[test]
fn rtt_estimator_adapts_with_a_floor() {
    let mut r = RttEstimator::default();
    assert_eq!(r.timeout(), INITIAL_TIMEOUT);
    for _ in 0..20 {
        r.sample(Duration::from_micros(200));
    }
    assert_eq!(r.timeout(), MIN_TIMEOUT);
    for _ in 0..50 {
        r.sample(Duration::from_millis(300));
    }
    assert!(r.timeout() > Duration::from_millis(300) && r.timeout() < Duration::from_millis(600));
    for _ in 0..50 {
        r.sample(Duration::from_secs(10));
    }
    assert_eq!(r.timeout(), MAX_TIMEOUT);
}

#[test]
fn empty_lookup_is_done_at_once() {
    let l = Lookup::new(
        Id([0; 20]),
        Id([1; 20]),
        LookupKind::FindNode,
        &[],
        RttEstimator::default(),
    );
    assert!(l.is_done());
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn keeps_alpha_in_flight_and_times_out() {
    let now = Instant::now();
    let seeds: Vec<NodeInfo> = (1..=10u8)
        .map(|i| crate::routing::loopback_node(Id([i; 20]), u16::from(i)))
        .collect();
    let mut l = Lookup::new(
        Id([0; 20]),
        Id([0; 20]),
        LookupKind::FindNode,
        &seeds,
        RttEstimator::default(),
    );
    let first = l.next_queries(now);
    assert_eq!(first.len(), ALPHA);
    assert!(
        l.next_queries(now).is_empty(),
        "never more than α in flight"
    );
    // One answers: exactly one more goes out, before the others come back.
    let r = Response::new(first[0].id);
    assert!(
        l.on_response(first[0].addr, &r, now + Duration::from_millis(5))
            .is_some()
    );
    assert_eq!(l.next_queries(now).len(), 1);
    // The rest time out.
    let deadline = l.next_deadline().expect("in flight");
    assert_eq!(
        deadline,
        now + MIN_TIMEOUT,
        "the 4th query uses the adapted timeout"
    );
    let deadline = now + INITIAL_TIMEOUT;
    let timed_out = l.expire(deadline);
    assert_eq!(timed_out.len(), ALPHA);
    assert_eq!(l.stats().timeouts, ALPHA as u32);
    // A late answer is still used (no RTT sample).
    let late = Response::new(timed_out[0].id);
    assert_eq!(l.on_response(timed_out[0].addr, &late, deadline), None);
    assert!(l.closest_answered().contains(&timed_out[0]));
    // Unknown senders are ignored.
    let stranger = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 5);
    assert_eq!(
        l.on_response(stranger, &Response::new(Id([9; 20])), deadline),
        None
    );
}

#[test]
fn lookups_find_the_true_closest_node_in_1000_nodes() {
    let mut net = SimNetwork::new(NODES, 1, 0);
    let mut rng = SplitMix(2);
    let mut rounds = 0;
    let mut queries = 0;
    let lookups = 100;
    for i in 0..lookups {
        let origin = (rng.next_u64() % NODES as u64) as usize;
        let target = rng.id();
        let mut l = net
            .lookup(origin, target, LookupKind::FindNode)
            .expect("node");
        net.run(origin, &mut l);
        assert!(l.is_done());
        let truth = net.true_closest(&target, origin).expect("nodes");
        assert_eq!(l.closest_answered().first(), Some(&truth), "lookup {i}");
        assert_eq!(l.closest_answered().len(), K);
        rounds += l.stats().rounds;
        queries += l.stats().queries;
    }
    assert!(net.max_in_flight <= ALPHA);
    // The notes' ideal simulation: ~4 rounds and ~11 queries for k = 8 at 1,000 nodes.
    let (mean_rounds, mean_queries) = (
        rounds as f64 / lookups as f64,
        queries as f64 / lookups as f64,
    );
    eprintln!("1000 nodes: {mean_rounds:.2} rounds, {mean_queries:.1} queries per lookup");
    assert!(mean_rounds < 6.0, "mean rounds {mean_rounds}");
    assert!(mean_queries < 30.0, "mean queries {mean_queries}");
}

#[test]
fn lookups_survive_dead_nodes() {
    // 20% of the nodes never answer but sit in everyone's table.
    let mut net = SimNetwork::new(NODES, 3, 200);
    let mut rng = SplitMix(4);
    for i in 0..30 {
        let origin = loop {
            let o = (rng.next_u64() % NODES as u64) as usize;
            if net.nodes[o].alive {
                break o;
            }
        };
        let target = rng.id();
        let mut l = net
            .lookup(origin, target, LookupKind::FindNode)
            .expect("node");
        net.run(origin, &mut l);
        let truth = net.true_closest(&target, origin).expect("nodes");
        assert_eq!(l.closest_answered().first(), Some(&truth), "lookup {i}");
        assert!(l.stats().timeouts > 0 || i > 0 || l.stats().queries > 0);
    }
}

#[test]
fn put_and_get_items_and_peers_across_the_simulated_network() {
    let mut net = SimNetwork::new(300, 5, 0);
    let own = |net: &SimNetwork, i: usize| net.nodes[i].info.id;

    // Immutable: get-lookup for the tokens, put to the closest, get from elsewhere.
    let v = Value::Bytes(b"Hello World!".to_vec());
    let target = bep44::immutable_target(&v);
    let mut l = net
        .lookup(0, target, LookupKind::GetImmutable)
        .expect("node");
    net.run(0, &mut l);
    assert_eq!(l.immutable(), None);
    let puts: Vec<(NodeInfo, Query)> = l
        .closest_with_tokens()
        .into_iter()
        .map(|(n, token)| {
            let q = Query::Put {
                id: own(&net, 0),
                token,
                item: PutItem::Immutable { v: v.clone() },
            };
            (n, q)
        })
        .collect();
    assert_eq!(puts.len(), K);
    assert!(net.send_all(0, &puts).iter().all(Result::is_ok));
    let mut l = net
        .lookup(299, target, LookupKind::GetImmutable)
        .expect("node");
    net.run(299, &mut l);
    assert_eq!(l.immutable(), Some(&v));

    // Mutable: two versions; the getter keeps the highest seq.
    let key = SigningKey::from_bytes(&[8; 32]);
    let salt = b"s".to_vec();
    for seq in [1, 2] {
        let item = MutableItem::sign(&key, &salt, seq, Value::Int(seq)).expect("sign");
        let kind = LookupKind::GetMutable {
            salt: salt.clone(),
            more_recent_than: None,
        };
        let mut l = net.lookup(1, item.target(), kind).expect("node");
        net.run(1, &mut l);
        let puts: Vec<(NodeInfo, Query)> = l
            .closest_with_tokens()
            .into_iter()
            .map(|(n, token)| {
                (
                    n,
                    Query::Put {
                        id: own(&net, 1),
                        token,
                        item: item.to_put_item(None),
                    },
                )
            })
            .collect();
        assert!(net.send_all(1, &puts).iter().all(Result::is_ok));
    }
    let target = bep44::mutable_target(&key.verifying_key().to_bytes(), &salt);
    let kind = LookupKind::GetMutable {
        salt: salt.clone(),
        more_recent_than: None,
    };
    let mut l = net.lookup(200, target, kind).expect("node");
    net.run(200, &mut l);
    assert_eq!(l.mutable().map(|m| m.seq), Some(2));
    // The wrong salt finds nothing that verifies.
    let kind = LookupKind::GetMutable {
        salt: b"other".to_vec(),
        more_recent_than: None,
    };
    let mut l = net.lookup(200, target, kind).expect("node");
    net.run(200, &mut l);
    assert_eq!(l.mutable(), None);

    // Peers: announce with tokens, then get_peers elsewhere.
    let ih = Id([0x3c; 20]);
    let mut l = net.lookup(2, ih, LookupKind::GetPeers).expect("node");
    net.run(2, &mut l);
    let announces: Vec<(NodeInfo, Query)> = l
        .closest_with_tokens()
        .into_iter()
        .map(|(n, token)| {
            let q = Query::AnnouncePeer {
                id: own(&net, 2),
                info_hash: ih,
                port: 7000,
                token,
                implied_port: false,
            };
            (n, q)
        })
        .collect();
    assert!(net.send_all(2, &announces).iter().all(Result::is_ok));
    let mut l = net.lookup(100, ih, LookupKind::GetPeers).expect("node");
    net.run(100, &mut l);
    let expected = SocketAddr::new(IpAddr::V4(*net.nodes[2].info.addr.ip()), 7000);
    assert_eq!(l.peers(), &[expected]);
}

#[test]
fn a_node_that_changed_id_is_asked_once_although_others_list_its_old_id() {
    let now = Instant::now();
    let target = Id([0x10; 20]);
    let old = NodeInfo {
        id: Id([0x11; 20]),
        addr: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 6881),
    };
    let other = NodeInfo {
        id: Id([0x12; 20]),
        addr: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 6881),
    };
    let mut l = Lookup::new(
        Id([0xff; 20]),
        target,
        LookupKind::FindNode,
        &[old, other],
        RttEstimator::default(),
    );
    let mut queries = 0;
    for _ in 0..50 {
        let sends = l.next_queries(now);
        if sends.is_empty() {
            break;
        }
        for n in sends {
            queries += 1;
            // `old` now answers under a new id; everybody keeps listing its old one.
            let id = if n.addr == old.addr {
                Id([0x99; 20])
            } else {
                n.id
            };
            let mut r = Response::new(id);
            r.nodes = Some(vec![old, other]);
            l.on_response(n.addr, &r, now);
        }
    }
    assert!(l.is_done(), "the lookup ends");
    assert_eq!(queries, 2, "each address asked once");
}
