use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::bencode::Value;
use crate::krpc;
use crate::routing::REFRESH_INTERVAL;

fn addr(i: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1000 + i)
}

/// Cores wired together in memory: datagrams are delivered in order, instantly.
struct Wire {
    cores: Vec<Core>,
    now: Instant,
}

impl Wire {
    fn new(n: u16, now: Instant) -> Self {
        let cores = (0..n)
            .map(|i| {
                let mut id = [0u8; 20];
                id[0] = (i as u8).wrapping_mul(37);
                id[19] = i as u8;
                let table = RoutingTable::new(Id(id), now);
                Core::new(table, false, [i as u8 + 1; 32], now)
            })
            .collect();
        Wire { cores, now }
    }

    fn index(&self, to: SocketAddr) -> Option<usize> {
        (0..self.cores.len()).find(|&i| SocketAddr::V4(addr(i as u16)) == to)
    }

    /// Delivers datagrams until none is left; returns the events.
    fn settle(&mut self) -> Vec<(usize, OpId, Outcome)> {
        let mut events = Vec::new();
        loop {
            let mut queue = VecDeque::new();
            for (i, c) in self.cores.iter_mut().enumerate() {
                while let Some((to, bytes)) = c.poll_transmit() {
                    queue.push_back((i, to, bytes));
                }
                while let Some((op, o)) = c.poll_event() {
                    events.push((i, op, o));
                }
            }
            if queue.is_empty() {
                return events;
            }
            for (from, to, bytes) in queue {
                if let Some(j) = self.index(to) {
                    let src = SocketAddr::V4(addr(from as u16));
                    self.cores[j].handle_datagram(src, &bytes, self.now);
                }
            }
        }
    }
}

#[test]
fn cores_bootstrap_put_and_get_in_memory() {
    let now = Instant::now();
    let mut w = Wire::new(6, now);
    for i in 1..6 {
        w.cores[i].start(Request::Bootstrap(vec![addr(0)]), now);
        w.settle();
    }
    for i in 0..6 {
        w.cores[i].start(Request::Bootstrap(vec![]), now);
    }
    w.settle();
    for c in &w.cores {
        assert_eq!(c.table().len(), 5, "every core knows every other");
    }
    let v = Value::Bytes(b"in memory".to_vec());
    let put = w.cores[2].start(Request::PutImmutable(v.clone()), now);
    let events = w.settle();
    let stored = events.iter().find(|(i, op, _)| *i == 2 && *op == put);
    assert!(matches!(
        stored,
        Some((_, _, Outcome::Stored { accepted: 5, .. }))
    ));
    let target = bep44::immutable_target(&v);
    let get = w.cores[4].start(Request::GetImmutable(target), now);
    let events = w.settle();
    let got = events.iter().find(|(i, op, _)| *i == 4 && *op == get);
    assert_eq!(got.map(|e| &e.2), Some(&Outcome::Immutable(Some(v))));
    let stats = w.cores[4].stats();
    assert_eq!(stats.observed_address, Some((SocketAddr::V4(addr(4)), 5)));
    // With 6 nodes and K = 8 every node stores it, the getter included.
    assert_eq!(stats.stored_items, 1);
    assert!(stats.queries_out.get("find_node").copied().unwrap_or(0) > 0);
}

#[test]
fn stale_buckets_are_refreshed_and_requests_time_out() {
    let now = Instant::now();
    let mut w = Wire::new(3, now);
    w.cores[1].start(Request::Bootstrap(vec![addr(0)]), now);
    w.settle();
    // Nothing is due before the refresh interval.
    let c = &mut w.cores[1];
    c.handle_timeout(now + Duration::from_secs(1));
    assert!(c.poll_transmit().is_none());
    let later = now + REFRESH_INTERVAL;
    assert!(c.next_deadline() <= later);
    c.handle_timeout(later);
    let (_, bytes) = c.poll_transmit().expect("a refresh query");
    let m = krpc::parse(&bytes).expect("valid");
    assert!(matches!(m.kind, Kind::Query(Query::FindNode { .. })));
    // Nobody answers: the lookup times out and the node's failures are counted.
    let deadline = c.next_deadline();
    assert!(deadline > later && deadline <= later + Duration::from_secs(2));
    c.handle_timeout(later + Duration::from_secs(10));
    let failures: u32 = c.table().entries().map(|e| e.failures).sum();
    assert!(failures > 0);
}

#[test]
fn own_items_are_republished_hourly() {
    let now = Instant::now();
    let mut w = Wire::new(4, now);
    for i in 1..4 {
        w.cores[i].start(Request::Bootstrap(vec![addr(0)]), now);
        w.settle();
    }
    let v = Value::Int(42);
    w.cores[1].start(Request::PutImmutable(v.clone()), now);
    w.settle();
    let puts = |c: &Core| c.stats().queries_out.get("put").copied().unwrap_or(0);
    let before = puts(&w.cores[1]);
    assert!(before > 0);
    let later = now + REPUBLISH_INTERVAL;
    assert!(w.cores[1].next_deadline() <= later);
    w.now = later;
    w.cores[1].handle_timeout(later);
    w.settle();
    assert!(puts(&w.cores[1]) > before, "republished");
    // Forgotten items are not.
    w.cores[1].forget_own(&bep44::immutable_target(&v));
    let after = puts(&w.cores[1]);
    let much_later = later + REPUBLISH_INTERVAL;
    w.now = much_later;
    w.cores[1].handle_timeout(much_later);
    w.settle();
    assert_eq!(puts(&w.cores[1]), after);
}

#[test]
fn an_idle_lonely_core_does_not_spin() {
    let now = Instant::now();
    let mut c = Core::new(RoutingTable::new(Id([1; 20]), now), false, [5; 32], now);
    // An own item that cannot be stored anywhere (no nodes) is still rescheduled.
    c.start(Request::PutImmutable(Value::Int(1)), now);
    let mut t = now;
    // Storage expiry wakes it every minute; past the bucket refresh (15 min) and the republish
    // (1 h) deadlines too.
    for _ in 0..100 {
        t = c.next_deadline().max(t);
        c.handle_timeout(t);
        assert!(c.next_deadline() > t, "deadline must move past {t:?}");
    }
    assert!(t >= now + REPUBLISH_INTERVAL);
}

#[test]
fn read_only_cores_answer_nothing_and_flag_their_queries() {
    let now = Instant::now();
    let table = RoutingTable::new(Id([1; 20]), now);
    let mut c = Core::new(table, true, [5; 32], now);
    let ping = Message::query(*b"abcd", Query::Ping { id: Id([2; 20]) }).emit();
    c.handle_datagram(SocketAddr::V4(addr(9)), &ping, now);
    assert!(c.poll_transmit().is_none());
    c.start(Request::Bootstrap(vec![addr(9)]), now);
    let (_, bytes) = c.poll_transmit().expect("query");
    let m = krpc::parse(&bytes).expect("valid");
    assert!(m.read_only);
    assert_eq!(m.transaction_id.len(), 4);
}

#[test]
fn unsolicited_and_spoofed_responses_are_ignored() {
    let now = Instant::now();
    let mut w = Wire::new(2, now);
    w.cores[1].start(Request::FindNode(Id([7; 20])), now);
    // A response nobody asked for, and one from the wrong address.
    let r = Message::response(*b"zzzz", crate::krpc::Response::new(Id([3; 20]))).emit();
    w.cores[0].handle_datagram(SocketAddr::V4(addr(1)), &r, now);
    assert!(w.cores[0].table().is_empty());
    assert_eq!(w.cores[0].stats().responses_in, 1);
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let now = Instant::now();
        let mut c = Core::new(RoutingTable::new(Id([1; 20]), now), false, [3; 32], now);
        c.handle_datagram(SocketAddr::V4(addr(1)), &bytes, now);
        // At most one answer (an error 203, or a response if the bytes happened to be a query).
        let mut n = 0;
        while c.poll_transmit().is_some() {
            n += 1;
        }
        prop_assert!(n <= 2);
    }

    #[test]
    fn mutated_queries_never_panic(pos in 0usize..80, byte in any::<u8>()) {
        let now = Instant::now();
        let mut c = Core::new(RoutingTable::new(Id([1; 20]), now), false, [3; 32], now);
        let q = Query::AnnouncePeer {
            id: Id([2; 20]),
            info_hash: Id([3; 20]),
            port: 80,
            token: b"tok".to_vec(),
            implied_port: true,
        };
        let mut bytes = Message::query(*b"abcd", q).emit();
        if let Some(b) = bytes.get_mut(pos) {
            *b = byte;
        }
        c.handle_datagram(SocketAddr::V4(addr(1)), &bytes, now);
        while c.poll_transmit().is_some() {}
    }
}

/// A core whose table holds `n` nodes at public addresses, after a lookup whose every query
/// was answered with `ip` = `seen`.
fn core_seen_as(seen: SocketAddr, adopt: bool) -> Core {
    let now = Instant::now();
    let mut table = RoutingTable::new(Id([0; 20]), now);
    for i in 0..SECURE_ID_VOTES as u8 {
        let node = NodeInfo {
            id: Id([0x80 | i; 20]),
            addr: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1 + i), 6881),
        };
        table.heard_from(node, crate::routing::Contact::Response, now);
    }
    let mut core = Core::new(table, false, [9; 32], now);
    core.set_adopt_secure_id(adopt);
    core.start(Request::FindNode(Id([0x11; 20])), now);
    let mut answered = 0;
    while let Some((to, bytes)) = core.poll_transmit() {
        let q = krpc::parse(&bytes).expect("our query parses");
        if !matches!(q.kind, Kind::Query(Query::FindNode { .. })) {
            continue;
        }
        answered += 1;
        let SocketAddr::V4(to4) = to else {
            unreachable!()
        };
        let mut r = krpc::Response::new(Id([0x80 | (to4.ip().octets()[3] - 1); 20]));
        r.nodes = Some(Vec::new());
        let mut m = Message::response(q.transaction_id, r);
        m.ip = Some(seen);
        core.handle_datagram(to, &m.emit(), now);
    }
    assert!(answered >= SECURE_ID_VOTES, "every node was asked");
    core
}

#[test]
fn a_bep42_secure_id_is_taken_once_enough_nodes_agree_on_a_public_ip() {
    let public = SocketAddr::from(([198, 51, 100, 7], 5000));
    let core = core_seen_as(public, true);
    assert_ne!(core.id(), Id([0; 20]));
    assert!(crate::bep42::id_matches_ip(&core.id(), public.ip()));
    assert_eq!(core.stats().id_changes, 1);
    assert_eq!(core.table().own_id(), core.id());
    assert_eq!(core.table().len(), SECURE_ID_VOTES, "the nodes are kept");

    // A fixed id stays; exempt (private, loopback) addresses change nothing.
    assert_eq!(core_seen_as(public, false).id(), Id([0; 20]));
    let private = SocketAddr::from(([192, 168, 1, 7], 5000));
    assert_eq!(core_seen_as(private, true).id(), Id([0; 20]));
    assert_eq!(core_seen_as(private, true).stats().id_changes, 0);
}

#[test]
fn a_new_querier_is_answered_and_kept_questionable_not_pinged() {
    let now = Instant::now();
    let mut c = Core::new(RoutingTable::new(Id([1; 20]), now), false, [5; 32], now);
    let ping = Message::query(*b"abcd", Query::Ping { id: Id([2; 20]) }).emit();
    c.handle_datagram(SocketAddr::V4(addr(9)), &ping, now);
    let (to, bytes) = c.poll_transmit().expect("the answer");
    assert_eq!(to, SocketAddr::V4(addr(9)));
    assert!(matches!(
        krpc::parse(&bytes).map(|m| m.kind),
        Ok(Kind::Response(_))
    ));
    assert!(c.poll_transmit().is_none(), "one datagram back, no ping");
    let entry = c.table().get(&Id([2; 20])).expect("kept");
    assert_eq!(entry.status(now), crate::routing::Status::Questionable);
}

#[test]
fn bootstrap_skips_refreshing_a_bucket_that_has_enough_good_nodes() {
    let now = Instant::now();
    let own = Id([0; 20]);
    let mut table = RoutingTable::new(own, now);
    // A near node, then K good nodes in the far half: the table splits and bucket 0 is full.
    let mut ids = vec![Id([0x01; 20])];
    ids.extend((0..K as u8).map(|i| Id([0x80 | i; 20])));
    for (i, id) in ids.iter().enumerate() {
        let node = NodeInfo {
            id: *id,
            addr: addr(i as u16),
        };
        table.heard_from(node, crate::routing::Contact::Response, now);
    }
    assert_eq!(table.good_in_bucket(&Id([0xff; 20]), now), Some(K));
    let mut c = Core::new(table, false, [5; 32], now);
    let op = c.start(Request::Bootstrap(vec![]), now);
    let mut far_targets = 0;
    let mut done = false;
    for _ in 0..1000 {
        while let Some((o, _)) = c.poll_event() {
            done |= o == op;
        }
        let Some((to, bytes)) = c.poll_transmit() else {
            break;
        };
        let m = krpc::parse(&bytes).expect("our query parses");
        let Kind::Query(Query::FindNode { target, .. }) = m.kind else {
            continue;
        };
        if target.0[0] & 0x80 != 0 {
            far_targets += 1;
        }
        let i = (0..ids.len()).find(|&i| SocketAddr::V4(addr(i as u16)) == to);
        let mut r = krpc::Response::new(ids[i.expect("a table node")]);
        r.nodes = Some(Vec::new());
        c.handle_datagram(to, &Message::response(m.transaction_id, r).emit(), now);
    }
    while let Some((o, _)) = c.poll_event() {
        done |= o == op;
    }
    assert!(done, "the bootstrap finished");
    assert_eq!(far_targets, 0, "bucket 0 was not refreshed");
    assert!(c.stats().queries_out.get("find_node").copied().unwrap_or(0) > 0);
}

/// Everything `c` sends, parsed.
fn sent(c: &mut Core) -> Vec<(SocketAddr, Message)> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|(to, b)| (to, krpc::parse(&b).expect("we send valid KRPC")))
        .collect()
}

#[test]
fn a_querier_gets_one_answer_and_is_named_only_after_echoing_its_address_token() {
    let now = Instant::now();
    let mut table = RoutingTable::new(Id([0; 20]), now);
    // One node that answered long ago (questionable, still askable), so answers name it.
    table.heard_from(
        NodeInfo {
            id: Id([0x01; 20]),
            addr: addr(1),
        },
        crate::routing::Contact::Response,
        now,
    );
    let later = now + crate::routing::GOOD_WINDOW;
    let mut c = Core::new(table, false, [5; 32], later);
    let querier = Id([0x02; 20]);
    let ask = |tid: &[u8; 4], token: Option<Vec<u8>>| {
        let q = Query::FindNode {
            id: querier,
            target: querier,
        };
        let mut m = Message::query(*tid, q);
        m.version = Some(b"NK\x00\x01".to_vec());
        m.address_token = token;
        m.emit()
    };
    c.handle_datagram(SocketAddr::V4(addr(9)), &ask(b"aaaa", None), later);
    let out = sent(&mut c);
    assert_eq!(out.len(), 1, "the answer only: {out:?}");
    let (to, answer) = &out[0];
    assert_eq!(*to, SocketAddr::V4(addr(9)));
    let token = answer
        .address_token
        .clone()
        .expect("a natkit querier gets a token");
    let named = |c: &mut Core| {
        let q = Query::FindNode {
            id: Id([0xee; 20]),
            target: querier,
        };
        let m = Message::query(*b"zzzz", q).emit();
        c.handle_datagram(SocketAddr::V4(addr(30)), &m, later);
        let out = sent(c);
        let Kind::Response(r) = &out[0].1.kind else {
            panic!("not an answer")
        };
        r.nodes.clone().unwrap_or_default()
    };
    assert!(
        named(&mut c).iter().all(|n| n.id != querier),
        "unverified, not named"
    );
    // A token made for another address proves nothing.
    c.handle_datagram(
        SocketAddr::V4(addr(10)),
        &ask(b"bbbb", Some(token.clone())),
        later,
    );
    sent(&mut c);
    assert!(named(&mut c).iter().all(|n| n.id != querier));
    // Echoed from its own address: verified, and named.
    c.handle_datagram(SocketAddr::V4(addr(9)), &ask(b"cccc", Some(token)), later);
    assert_eq!(sent(&mut c).len(), 1, "still only the answer");
    assert_eq!(c.stats().address_proofs_in, 1);
    assert!(named(&mut c).iter().any(|n| n.id == querier));
}

#[test]
fn our_queries_echo_a_nodes_address_token_once() {
    let now = Instant::now();
    let mut w = Wire::new(2, now);
    let b = w.cores[1].id();
    w.cores[0].start(Request::Bootstrap(vec![addr(1)]), now);
    w.settle();
    // Core 0 asked core 1, got its token and echoed it (in a refresh or the proof ping):
    // core 1 now counts core 0 as good and names it.
    assert!(w.cores[1].stats().address_proofs_in >= 1);
    let a = w.cores[0].id();
    let entry = w.cores[1].table().get(&a).expect("core 1 knows core 0");
    assert_eq!(entry.status(now), crate::routing::Status::Good);
    assert!(!entry.unverified);
    let e0 = w.cores[0].table().get(&b).expect("core 0 knows core 1");
    assert!(e0.token_to_echo(now).is_none(), "echoed, not again");
}
