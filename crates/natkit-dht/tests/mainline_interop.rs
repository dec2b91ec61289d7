//! Interop with the `mainline` crate (another Rust Mainline DHT), on 127.0.0.1 only: every
//! `mainline` node is built with `bind_address(LOCALHOST).port(0).server_mode()` and either
//! `no_bootstrap()` or a loopback bootstrap list, so nothing is resolved or sent elsewhere.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use natkit_dht::bep44::MutableItem;
use natkit_dht::dht::Dht;
use natkit_dht::testnet::Testnet;
use natkit_dht::{Id, Value};
use support::mainline_node;

const LOOPBACK: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// Generous: `mainline` ticks every 50 ms and times requests out after 2 s.
const TEST_TIMEOUT: Duration = Duration::from_secs(40);

async fn mainline_addr(m: &mainline::async_dht::AsyncDht) -> SocketAddr {
    SocketAddr::V4(m.info().await.local_addr())
}

fn ours(id: &mainline::Id) -> Id {
    Id(*id.as_bytes())
}

fn theirs(id: Id) -> mainline::Id {
    mainline::Id::from_bytes(id.0).expect("20 bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natkit_and_mainline_share_one_network() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // natkit nodes, then mainline nodes bootstrapping from ours (theirs from ours) ...
        let net = Testnet::new(4).await.expect("natkit testnet");
        let m0 = mainline_node(Some(net.bootstrap_addrs()[0]));
        assert!(m0.bootstrapped().await, "mainline bootstraps from natkit");
        let m1 = mainline_node(Some(mainline_addr(&m0).await));
        assert!(m1.bootstrapped().await);
        let m0_id = ours(m0.info().await.id());
        let m1_id = ours(m1.info().await.id());

        // ... and a natkit node bootstrapping from mainline only (ours from theirs).
        let a = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&[mainline_addr(&m1).await])
            .build()
            .await
            .expect("natkit node");
        assert!(a.stats().await.expect("stats").routing_table_size >= 2);

        // find_node both ways.
        let found = a.find_node(m0_id).await.expect("find_node");
        assert_eq!(
            found.first().map(|n| n.id),
            Some(m0_id),
            "natkit finds mainline"
        );
        let n3 = net.nodes[3].id();
        let found = m1.find_node(theirs(n3)).await;
        assert!(
            found.iter().any(|n| ours(n.id()) == n3),
            "mainline finds natkit"
        );
        let found = a.find_node(m1_id).await.expect("find_node");
        assert_eq!(found.first().map(|n| n.id), Some(m1_id));

        // Immutable items both ways.
        let target = m1
            .put_immutable(b"from mainline")
            .await
            .expect("mainline put");
        let got = net.nodes[2]
            .get_immutable(ours(&target))
            .await
            .expect("get");
        assert_eq!(got, Some(Value::Bytes(b"from mainline".to_vec())));
        let target = net.nodes[1]
            .put_immutable(Value::Bytes(b"from natkit".to_vec()))
            .await
            .expect("natkit put");
        let got = m0.get_immutable(theirs(target)).await;
        assert_eq!(got.as_deref(), Some(&b"from natkit"[..]));

        // Mutable items both ways, one key updated by each side in turn (seq and cas kept).
        let seed = [21u8; 32];
        let salt = b"interop";
        let their_key = mainline::SigningKey::from_bytes(&seed);
        let item = mainline::MutableItem::new(their_key, b"v1", 1, Some(salt));
        m0.put_mutable(item, None)
            .await
            .expect("mainline mutable put");
        let our_key = SigningKey::from_bytes(&seed);
        let k = our_key.verifying_key().to_bytes();
        let got = a
            .get_mutable(k, salt, None)
            .await
            .expect("get")
            .expect("found");
        assert_eq!((got.seq, got.v), (1, Value::Bytes(b"v1".to_vec())));
        let v2 = MutableItem::sign(&our_key, salt, 2, Value::Bytes(b"v2".to_vec())).expect("sign");
        a.put_mutable(v2, Some(1))
            .await
            .expect("natkit mutable put");
        let got = m1
            .get_mutable_most_recent(&k, Some(salt))
            .await
            .expect("mainline gets it");
        assert_eq!((got.seq(), got.value()), (2, &b"v2"[..]));

        a.shutdown().await;
        net.shutdown().await;
    })
    .await
    .expect("interop test timed out");
}
