//! natkit DHT nodes talking over UDP on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use natkit_dht::bep44::{self, MutableItem};
use natkit_dht::dht::{Dht, DhtError};
use natkit_dht::krpc::{
    self, ERROR_CAS_MISMATCH, ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL, ERROR_SEQ_TOO_LOW,
};
use natkit_dht::routing::K;
use natkit_dht::testnet::Testnet;
use natkit_dht::{ErrorMessage, Id, Kind, Message, Query, Value};
use tokio::net::UdpSocket;

const LOOPBACK: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

/// Every test finishes in well under this; a hang fails instead of blocking CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn bootstrap_find_node_and_observed_address() {
    timed(async {
        let net = Testnet::new(12).await.expect("testnet");
        for n in &net.nodes {
            let s = n.stats().await.expect("stats");
            assert!(
                s.routing_table_size >= 3,
                "{} has {}",
                n.id(),
                s.routing_table_size
            );
        }
        let newcomer = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&net.bootstrap_addrs()[..1])
            .build()
            .await
            .expect("newcomer");
        assert!(newcomer.stats().await.expect("stats").routing_table_size >= K);
        // find_node finds the true closest node.
        for probe in 0..5u8 {
            let target = Id([probe.wrapping_mul(51); 20]);
            let found = newcomer.find_node(target).await.expect("find_node");
            let truth = net
                .nodes
                .iter()
                .map(Dht::id)
                .min_by_key(|id| target.distance(id))
                .expect("nodes");
            assert_eq!(found.first().map(|n| n.id), Some(truth), "probe {probe}");
        }
        let (addr, votes) = newcomer
            .observed_address()
            .await
            .expect("stats")
            .expect("observed");
        assert_eq!(addr, newcomer.local_addr());
        assert!(votes >= 3);
        // The evidence behind it: one latest report per node that answered, from the nodes of
        // the testnet, each saying our real address.
        let seen = newcomer.observations().await.expect("observations");
        assert!(seen.len() >= votes, "{} reports, {votes} votes", seen.len());
        let testnet: Vec<SocketAddr> = net.bootstrap_addrs();
        for o in &seen {
            assert_eq!(o.observed, newcomer.local_addr());
            assert!(testnet.contains(&SocketAddr::V4(o.reporter)), "{o:?}");
        }
        newcomer.shutdown().await;
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn immutable_and_mutable_items_across_nodes() {
    timed(async {
        let net = Testnet::new(10).await.expect("testnet");
        let v = Value::Bytes(b"Hello World!".to_vec());
        let target = net.nodes[1].put_immutable(v.clone()).await.expect("put");
        assert_eq!(target, bep44::immutable_target(&v));
        assert_eq!(
            net.nodes[7].get_immutable(target).await.expect("get"),
            Some(v)
        );
        let missing = Id([0xee; 20]);
        assert_eq!(
            net.nodes[7].get_immutable(missing).await.expect("get"),
            None
        );

        let key = SigningKey::from_bytes(&[42; 32]);
        let k = key.verifying_key().to_bytes();
        let salt = b"natkit".to_vec();
        let one = MutableItem::sign(&key, &salt, 1, Value::Bytes(b"one".to_vec())).expect("sign");
        net.nodes[2]
            .put_mutable(one.clone(), None)
            .await
            .expect("put 1");
        let got = net.nodes[8].get_mutable(k, &salt, None).await.expect("get");
        assert_eq!(got, Some(one));
        let two = MutableItem::sign(&key, &salt, 2, Value::Bytes(b"two".to_vec())).expect("sign");
        net.nodes[3]
            .put_mutable(two.clone(), Some(1))
            .await
            .expect("put 2 with cas 1");
        let got = net.nodes[9].get_mutable(k, &salt, None).await.expect("get");
        assert_eq!(got.map(|m| m.seq), Some(2));
        // Nothing newer than 2.
        let newer = net.nodes[9].get_mutable(k, &salt, Some(2)).await;
        assert_eq!(newer.expect("get"), None);
        // A stale cas is refused (301) by the nodes holding seq 2.
        let three = MutableItem::sign(&key, &salt, 3, Value::Int(3)).expect("sign");
        match net.nodes[4].put_mutable(three, Some(1)).await {
            Err(DhtError::Conflict { code, .. }) => assert_eq!(code, ERROR_CAS_MISMATCH),
            other => panic!("expected a CAS refusal, got {other:?}"),
        }
        // A lower seq is refused (302).
        match net.nodes[5].put_mutable(one_again(&key, &salt), None).await {
            Err(DhtError::Conflict { code, .. }) => assert_eq!(code, ERROR_SEQ_TOO_LOW),
            other => panic!("expected a seq refusal, got {other:?}"),
        }
        net.shutdown().await;
    })
    .await;
}

fn one_again(key: &SigningKey, salt: &[u8]) -> MutableItem {
    MutableItem::sign(key, salt, 1, Value::Bytes(b"one".to_vec())).expect("sign")
}

/// Events of a streaming lookup until `Done`.
async fn drain(
    mut rx: tokio::sync::mpsc::Receiver<natkit_dht::dht::LookupEvent>,
) -> (
    Vec<(natkit_dht::NodeInfo, natkit_dht::Response)>,
    natkit_dht::core::Outcome,
) {
    use natkit_dht::dht::LookupEvent;
    let mut replies = Vec::new();
    loop {
        match rx.recv().await.expect("the stream ends with Done") {
            LookupEvent::Reply { from, response } => replies.push((from, response)),
            LookupEvent::Done(outcome) => {
                assert!(rx.recv().await.is_none(), "nothing after Done");
                return (replies, outcome);
            }
        }
    }
}

#[tokio::test]
async fn lookups_as_streams_yield_each_reply_then_the_result() {
    use natkit_dht::core::Outcome;
    timed(async {
        let net = Testnet::new(12).await.expect("testnet");
        let addrs = net.bootstrap_addrs();
        let target = Id([0x33; 20]);
        let (replies, outcome) =
            drain(net.nodes[3].find_node_stream(target).await.expect("stream")).await;
        let Outcome::Nodes(closest) = outcome else {
            panic!("find_node ends with nodes, got {outcome:?}");
        };
        assert!(!closest.is_empty());
        assert!(
            replies.len() >= closest.len(),
            "every answering node is reported"
        );
        for (from, r) in &replies {
            assert_eq!(from.id, r.id, "the reply is from the node named");
            assert!(addrs.contains(&SocketAddr::V4(from.addr)));
        }
        for n in &closest {
            assert!(
                replies.iter().any(|(f, _)| f == n),
                "{n:?} answered, so it was streamed"
            );
        }

        let ih = Id([0x44; 20]);
        assert!(
            net.nodes[0]
                .announce_peer(ih, Some(7000))
                .await
                .expect("announce")
                > 0
        );
        let (replies, outcome) =
            drain(net.nodes[7].get_peers_stream(ih).await.expect("stream")).await;
        let peer = SocketAddr::from(([127, 0, 0, 1], 7000));
        assert_eq!(outcome, Outcome::Peers(vec![peer]));
        assert!(
            replies
                .iter()
                .any(|(_, r)| r.values.as_ref().is_some_and(|v| v.contains(&peer))),
            "the reply that carried the peer was streamed"
        );
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn announce_and_get_peers() {
    timed(async {
        let net = Testnet::new(10).await.expect("testnet");
        let ih = Id([0x5a; 20]);
        assert!(
            net.nodes[0]
                .announce_peer(ih, Some(6969))
                .await
                .expect("announce")
                > 0
        );
        assert!(
            net.nodes[4]
                .announce_peer(ih, None)
                .await
                .expect("announce")
                > 0
        );
        let mut peers = net.nodes[9].get_peers(ih).await.expect("get_peers");
        peers.sort();
        let mut expected = vec![
            SocketAddr::from(([127, 0, 0, 1], 6969)),
            net.nodes[4].local_addr(),
        ];
        expected.sort();
        assert_eq!(peers, expected);
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn read_only_nodes_get_but_are_not_routed_through() {
    timed(async {
        let net = Testnet::new(8).await.expect("testnet");
        let ro = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&net.bootstrap_addrs())
            .read_only(true)
            .build()
            .await
            .expect("read-only node");
        let v = Value::Int(7);
        let target = ro
            .put_immutable(v.clone())
            .await
            .expect("put from read-only");
        assert_eq!(ro.get_immutable(target).await.expect("get"), Some(v));
        for n in &net.nodes {
            let closest = n.find_node(ro.id()).await.expect("find_node");
            assert!(
                closest.iter().all(|c| c.id != ro.id()),
                "read-only node was added"
            );
        }
        ro.shutdown().await;
        net.shutdown().await;
    })
    .await;
}

async fn ask(sock: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> Message {
    sock.send_to(datagram, to).await.expect("send");
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("answer")
            .expect("recv");
        let m = krpc::parse(&buf[..n]).expect("valid answer");
        // The node pings new nodes that query it: skip its queries.
        if !matches!(m.kind, Kind::Query(_)) {
            return m;
        }
    }
}

#[tokio::test]
async fn malformed_unknown_and_natkit_queries() {
    timed(async {
        let handler = |from: SocketAddr, _: &Value, _: Instant| {
            let mut r = BTreeMap::new();
            r.insert(b"port".to_vec(), Value::Int(i64::from(from.port())));
            Ok::<_, ErrorMessage>(r)
        };
        let node = Dht::builder()
            .bind_addr(LOOPBACK)
            .handler("natkit.echo", Box::new(handler))
            .build()
            .await
            .expect("node");
        let sock = UdpSocket::bind(LOOPBACK).await.expect("socket");
        let me = sock.local_addr().expect("addr");
        let to = node.local_addr();

        // Malformed: 203, with our address in `ip`.
        let m = ask(&sock, to, b"d1:ad2:id3:abce1:q4:ping1:t2:xy1:y1:qe").await;
        assert_eq!(m.transaction_id, b"xy");
        assert_eq!(m.ip, Some(me));
        assert!(matches!(m.kind, Kind::Error(ref e) if e.code == ERROR_PROTOCOL));

        // Unknown method: 204.
        let q = |method: &str| {
            let mut args = BTreeMap::new();
            args.insert(b"id".to_vec(), Value::Bytes(vec![1; 20]));
            Message::query(
                *b"abcd",
                Query::Other {
                    method: method.as_bytes().to_vec(),
                    args: Value::Dict(args),
                },
            )
            .emit()
        };
        let m = ask(&sock, to, &q("vote")).await;
        assert!(matches!(m.kind, Kind::Error(ref e) if e.code == ERROR_METHOD_UNKNOWN));

        // natkit.* handler.
        let m = ask(&sock, to, &q("natkit.echo")).await;
        match m.kind {
            Kind::Response(r) => {
                assert_eq!(r.id, node.id());
                assert_eq!(
                    r.extra.get(&b"port"[..]),
                    Some(&Value::Int(i64::from(me.port())))
                );
            }
            other => panic!("{other:?}"),
        }

        // A 2-byte transaction id is echoed as is.
        let ping = Message::query(*b"zz", Query::Ping { id: Id([3; 20]) }).emit();
        let m = ask(&sock, to, &ping).await;
        assert_eq!(m.transaction_id, b"zz");
        assert!(matches!(m.kind, Kind::Response(_)));

        let stats = node.stats().await.expect("stats");
        assert_eq!(stats.malformed_in, 1);
        assert_eq!(stats.queries_in.get("other"), Some(&2));
        node.shutdown().await;
        assert!(matches!(node.stats().await, Err(DhtError::Shutdown)));
    })
    .await;
}

#[tokio::test]
async fn routing_table_is_saved_and_reloaded() {
    timed(async {
        let net = Testnet::new(6).await.expect("testnet");
        let dir = std::env::temp_dir().join(format!("natkit-dht-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("table.bencode");
        let _ = std::fs::remove_file(&path);
        let first = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&net.bootstrap_addrs()[..1])
            .table_file(&path)
            .build()
            .await
            .expect("node");
        let id = first.id();
        let size = first.stats().await.expect("stats").routing_table_size;
        first.shutdown().await;
        assert!(path.exists());
        // Restarted with no bootstrap nodes: same id, same nodes, and it can look things up.
        let again = Dht::builder()
            .bind_addr(LOOPBACK)
            .table_file(&path)
            .build()
            .await
            .expect("node");
        assert_eq!(again.id(), id);
        assert_eq!(again.stats().await.expect("stats").routing_table_size, size);
        assert!(!again.find_node(Id([9; 20])).await.expect("find").is_empty());
        again.shutdown().await;
        // A malformed file is a typed error.
        std::fs::write(&path, b"not a table").expect("write");
        let err = Dht::builder()
            .bind_addr(LOOPBACK)
            .table_file(&path)
            .build()
            .await;
        assert!(matches!(err, Err(DhtError::TableFile(_))));
        let _ = std::fs::remove_dir_all(&dir);
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_64_node_network_finds_the_true_closest_nodes_and_items() {
    timed(async {
        let net = Testnet::new(64).await.expect("testnet");
        for i in 0..16usize {
            let v = Value::Int(1000 + i as i64);
            let target = net.nodes[i * 3]
                .put_immutable(v.clone())
                .await
                .expect("put");
            let got = net.nodes[63 - i].get_immutable(target).await.expect("get");
            assert_eq!(got, Some(v), "item {i}");
            let from = &net.nodes[(i * 7) % 64];
            let found = from.find_node(target).await.expect("find_node");
            let truth = net
                .nodes
                .iter()
                .map(Dht::id)
                .filter(|id| *id != from.id())
                .min_by_key(|id| target.distance(id))
                .expect("nodes");
            assert_eq!(found.first().map(|n| n.id), Some(truth), "lookup {i}");
        }
        net.shutdown().await;
    })
    .await;
}
