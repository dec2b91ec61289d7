//! Rendezvous on loopback: registration with the nodes closest to a key's target, messages
//! delivered through them (looked up, given rendezvous points, relayed hop by hop), the typed
//! errors, the limits, replacement of a rendezvous node that goes away, and registration
//! through the service info-hash in a network shared with `mainline` nodes.
//! (Through real NAT: `tests/dht_lab.rs` at the workspace root.)

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use natkit_dht::dht::{Dht, DhtError};
use natkit_dht::rendezvous::{
    CHANNEL_TRAVERSAL, CHANNEL_USER, CHANNELS, ERROR_BUSY, ERROR_NOT_REGISTERED, Incoming,
    MAX_MESSAGES_PER_RECIPIENT, MAX_PAYLOAD_BYTES, RENDEZVOUS_NODES,
};
use natkit_dht::testnet::Testnet;
use support::mainline_node;
use tokio::sync::mpsc;

const LOOPBACK: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(k: &SigningKey) -> [u8; 32] {
    k.verifying_key().to_bytes()
}

/// A node with an identity that does not serve as a rendezvous node (as a node behind NAT).
async fn client(seed: u8, bootstrap: &[SocketAddr]) -> Dht {
    Dht::builder()
        .bind_addr(LOOPBACK)
        .bootstrap(bootstrap)
        .identity(key(seed))
        .rendezvous_server(false)
        .build()
        .await
        .expect("node")
}

async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("stream open")
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_a_registered_node_three_ways() {
    within(async {
        let net = Testnet::new(16).await.expect("testnet");
        let seeds = net.bootstrap_addrs();
        let alice = client(1, &seeds[..1]).await;
        let bob = client(2, &seeds[1..2]).await;
        let mut inbox = alice.messages().await.expect("stream");

        let points = alice.register().await.expect("register");
        assert_eq!(points.len(), RENDEZVOUS_NODES, "{points:?}");
        assert_eq!(alice.rendezvous_points().await.expect("points"), points);
        let holding: usize = {
            let mut n = 0;
            for node in &net.nodes {
                n += node.stats().await.expect("stats").registrations;
            }
            n
        };
        assert!(holding >= RENDEZVOUS_NODES, "registrations held: {holding}");

        // 1. Looked up: Bob knows only Alice's key.
        bob.send_message(public(&key(1)), b"hello, looked up")
            .await
            .expect("delivered");
        let m = next(&mut inbox).await;
        assert_eq!(m.from, public(&key(2)));
        assert_eq!(m.payload, b"hello, looked up");
        assert_eq!(
            m.sender_addr,
            Some(bob.local_addr()),
            "the first hop saw Bob"
        );
        // Through a node that holds a registration (one of the three kept, or another of the
        // closest that accepted the first announce: its registration just expires), or
        // straight from Bob when Alice herself is among the closest nodes he found (on
        // loopback she is reachable).
        assert!(
            seeds.contains(&m.via) || m.via == bob.local_addr(),
            "came through {}; Bob is {}",
            m.via,
            bob.local_addr()
        );

        // 2. Through the rendezvous points of Alice's UNL: no lookup.
        bob.send_message_via(public(&key(1)), b"hello, via", &points)
            .await
            .expect("delivered");
        assert_eq!(next(&mut inbox).await.payload, b"hello, via");

        // 3. Relayed hop by hop from Bob's own table.
        bob.relay_message(public(&key(1)), b"hello, relayed")
            .await
            .expect("delivered");
        assert_eq!(next(&mut inbox).await.payload, b"hello, relayed");

        // Each was delivered once, although several rendezvous nodes got it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(inbox.try_recv().is_err(), "no duplicate deliveries");
        assert_eq!(alice.stats().await.expect("stats").messages_delivered, 3);

        // A callback sees messages too.
        let (tx, mut rx) = mpsc::unbounded_channel();
        alice
            .add_message_handler(move |m: &Incoming| {
                let _ = tx.send(m.payload.clone());
            })
            .await
            .expect("handler");
        bob.send_message_via(public(&key(1)), b"to the callback", &points)
            .await
            .expect("delivered");
        assert_eq!(next(&mut inbox).await.payload, b"to the callback");
        assert_eq!(rx.recv().await.expect("callback"), b"to the callback");

        alice.shutdown().await;
        bob.shutdown().await;
        net.shutdown().await;
    })
    .await;
}

/// Connection set-up messages travel on their own channel: they reach the traversal code's
/// stream, never the application's, and a full or unread application inbox does not hold them
/// up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_keep_traversal_messages_apart_from_the_applications() {
    within(async {
        let net = Testnet::new(12).await.expect("testnet");
        let seeds = net.bootstrap_addrs();
        let alice = client(1, &seeds[..1]).await;
        let bob = client(2, &seeds[1..2]).await;
        let points = alice.register().await.expect("register");
        let mut traversal = alice.messages_on(CHANNEL_TRAVERSAL).await.expect("stream");
        // The application has not asked for its messages: they wait in the node.
        bob.send_message_via(public(&key(1)), b"for the app", &points)
            .await
            .expect("delivered");
        bob.send_on(CHANNEL_TRAVERSAL, public(&key(1)), b"punch?", &points)
            .await
            .expect("delivered");
        let m = next(&mut traversal).await;
        assert_eq!(
            (m.channel, m.payload.as_slice()),
            (CHANNEL_TRAVERSAL, &b"punch?"[..])
        );
        assert_eq!(m.from, public(&key(2)));
        // Found by a lookup too (no rendezvous points given).
        bob.send_on(CHANNEL_TRAVERSAL, public(&key(1)), b"looked up", &[])
            .await
            .expect("delivered");
        assert_eq!(next(&mut traversal).await.payload, b"looked up");
        // The application's message is still there, on its own channel, and only it.
        let mut app = alice.messages().await.expect("stream");
        let m = next(&mut app).await;
        assert_eq!(
            (m.channel, m.payload.as_slice()),
            (CHANNEL_USER, &b"for the app"[..])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(app.try_recv().is_err() && traversal.try_recv().is_err());
        // A channel that does not exist is a typed error, on both ends of the API.
        assert!(matches!(
            alice.messages_on(CHANNELS).await,
            Err(DhtError::UnknownChannel { channel }) if channel == CHANNELS
        ));
        assert!(matches!(
            bob.send_on(CHANNELS, public(&key(1)), b"x", &points).await,
            Err(DhtError::UnknownChannel { .. })
        ));
        alice.shutdown().await;
        bob.shutdown().await;
        net.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_and_limits() {
    within(async {
        let net = Testnet::new(10).await.expect("testnet");
        let seeds = net.bootstrap_addrs();
        let alice = client(3, &seeds[..1]).await;
        let bob = client(4, &seeds[..1]).await;
        let anonymous = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&seeds[..1])
            .build()
            .await
            .expect("node");

        // Nobody registered under this key: every node asked says so.
        match bob.send_message(public(&key(99)), b"anyone?").await {
            Err(DhtError::NotDelivered { errors }) => {
                assert!(!errors.is_empty());
                assert!(
                    errors.iter().all(|&c| c == ERROR_NOT_REGISTERED),
                    "{errors:?}"
                );
            }
            other => panic!("expected NotDelivered, got {other:?}"),
        }
        let big = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            bob.send_message(public(&key(3)), &big).await,
            Err(DhtError::PayloadTooBig { len }) if len == big.len()
        ));
        assert!(matches!(
            anonymous.send_message(public(&key(3)), b"x").await,
            Err(DhtError::NoIdentity)
        ));
        assert!(matches!(
            anonymous.register().await,
            Err(DhtError::NoIdentity)
        ));

        // Per-sender limit at the recipient: a flood is refused with "busy", not queued.
        let mut inbox = alice.messages().await.expect("stream");
        let points = alice.register().await.expect("register");
        assert!(!points.is_empty());
        let mut delivered = 0;
        let mut busy = 0;
        for i in 0..MAX_MESSAGES_PER_RECIPIENT + 5 {
            match bob
                .send_message_via(public(&key(3)), format!("{i}").as_bytes(), &points[..1])
                .await
            {
                Ok(()) => delivered += 1,
                Err(DhtError::NotDelivered { errors }) if errors == [ERROR_BUSY] => busy += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(delivered, MAX_MESSAGES_PER_RECIPIENT, "then refused");
        assert_eq!(busy, 5);
        for _ in 0..delivered {
            next(&mut inbox).await;
        }
        assert!(inbox.try_recv().is_err());

        for n in [alice, bob, anonymous] {
            n.shutdown().await;
        }
        net.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendezvous_node_that_goes_away_is_replaced() {
    within(async {
        let mut net = Testnet::new(12).await.expect("testnet");
        let seeds = net.bootstrap_addrs();
        let alice = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&seeds[..1])
            .identity(key(5))
            .rendezvous_server(false)
            .keepalive_interval(Duration::from_secs(1))
            .build()
            .await
            .expect("alice");
        let bob = client(6, &seeds[2..3]).await;
        let mut inbox = alice.messages().await.expect("stream");
        let before = alice.register().await.expect("register");
        assert_eq!(before.len(), RENDEZVOUS_NODES);

        // Stop every rendezvous node of Alice's.
        let gone: Vec<Dht> = {
            let (gone, kept) = net
                .nodes
                .drain(..)
                .partition(|n| before.contains(&n.local_addr()));
            net.nodes = kept;
            gone
        };
        assert_eq!(gone.len(), RENDEZVOUS_NODES);
        for n in &gone {
            n.shutdown().await;
        }

        // Keepalives fail twice, then Alice searches again and registers elsewhere.
        let mut after = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = alice.rendezvous_points().await.expect("points");
            if !after.is_empty() && after.iter().all(|p| !before.contains(p)) {
                break;
            }
        }
        assert!(
            !after.is_empty() && after.iter().all(|p| !before.contains(p)),
            "replaced: before {before:?}, after {after:?}"
        );
        bob.send_message(public(&key(5)), b"still there?")
            .await
            .expect("delivered through the new rendezvous nodes");
        assert_eq!(next(&mut inbox).await.payload, b"still there?");

        alice.shutdown().await;
        bob.shutdown().await;
        net.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_network_of_other_dhts_rendezvous_nodes_are_found_on_the_service_hash() {
    within(async {
        // Mostly `mainline` nodes (they answer natkit's queries with 204), one natkit node that
        // offers itself as a rendezvous node on the service info-hash.
        let first = mainline_node(None);
        let first_addr = SocketAddr::V4(first.info().await.local_addr());
        let mut others = Vec::new();
        for _ in 0..11 {
            let m = mainline_node(Some(first_addr));
            assert!(m.bootstrapped().await);
            others.push(m);
        }
        let server = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&[first_addr])
            .build()
            .await
            .expect("natkit server");
        assert!(
            server
                .announce_rendezvous_service()
                .await
                .expect("announce")
                > 0
        );

        let alice = client(7, &[first_addr]).await;
        let bob = client(8, &[first_addr]).await;
        let mut inbox = alice.messages().await.expect("stream");
        let points = alice.register().await.expect("register");
        assert_eq!(
            points,
            vec![server.local_addr()],
            "only the natkit node serves"
        );
        assert_eq!(server.stats().await.expect("stats").registrations, 1);

        bob.send_message_via(public(&key(7)), b"found you", &points)
            .await
            .expect("delivered");
        assert_eq!(next(&mut inbox).await.payload, b"found you");

        for n in [alice, bob, server] {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_keep_the_same_rendezvous_nodes() {
    within(async {
        let net = Testnet::new(12).await.expect("testnet");
        let seeds = net.bootstrap_addrs();
        let alice = Dht::builder()
            .bind_addr(LOOPBACK)
            .bootstrap(&seeds[..1])
            .identity(key(7))
            .rendezvous_server(false)
            .keepalive_interval(Duration::from_millis(200))
            .build()
            .await
            .expect("alice");
        let before = alice.register().await.expect("register");
        assert_eq!(before.len(), RENDEZVOUS_NODES);
        // Testnet nodes have no identity, so they tell no key.
        let nodes = alice.rendezvous_nodes().await.expect("nodes");
        assert!(nodes.iter().all(|(_, k)| k.is_none()), "{nodes:?}");
        // Ten keepalive rounds: each must be accepted (a refused one drops the node).
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = alice.rendezvous_points().await.expect("points");
            assert_eq!(now, before, "the rendezvous nodes stay the same");
        }
        let stats = alice.stats().await.expect("stats");
        assert_eq!(stats.errors_in, 0, "no keepalive was refused: {stats:?}");
        alice.shutdown().await;
        net.shutdown().await;
    })
    .await;
}
