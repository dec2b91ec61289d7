//! `natkit::Node` on loopback: a DHT bootstrap node and a few nodes joining
//! through it; connect by UNL and by node id, lines both ways, the path; the
//! typed errors; and `natkit demo` run as a script would.
//!
//! Timings are printed (`cargo test --test node -- --nocapture`), never
//! asserted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use natkit::Node;
use natkit::dht::dht::Dht;
use natkit::identity::Keypair;
use natkit::net::{Connection, NetEvent};
use natkit::node::{
    AttemptError, ConnectError, LOOKUP_TIMEOUT, PathKind, ROUTING_TABLE_FILE, Target,
    TraversalError,
};
use natkit::unl::{AddrSource, Unl};

mod common;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Far more than anything here takes; only there so a bug fails the test
/// instead of hanging it.
const HANG: Duration = Duration::from_secs(60);

async fn bootstrap_node() -> Dht {
    Dht::builder()
        .bind_addr(SocketAddr::new(LOOPBACK, 0))
        .build()
        .await
        .unwrap()
}

async fn node(boot: &Dht) -> Node {
    Node::builder()
        .bind_ip(LOOPBACK)
        .bootstrap(&[boot.local_addr()])
        .build()
        .await
        .unwrap()
}

/// The next line that arrives at `node`, with its connection.
async fn next_line(
    events: &mut (impl futures::Stream<Item = NetEvent> + Unpin),
) -> (Connection, String) {
    loop {
        match tokio::time::timeout(HANG, events.next()).await.unwrap() {
            Some(NetEvent::Line(c, l)) => return (c, l),
            Some(NetEvent::Connected(_)) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// `dialer` connected to `listener` on `con`: a line each way.
async fn lines_both_ways(
    con: &Connection,
    listener: &Node,
    events: &mut (impl futures::Stream<Item = NetEvent> + Unpin),
    dialer: &Node,
) {
    con.send("ping from the dialer").await.unwrap();
    let (at_listener, line) = next_line(events).await;
    assert_eq!(line, "ping from the dialer");
    assert_eq!(at_listener.node_id(), dialer.id());
    at_listener.send("pong from the listener").await.unwrap();
    let reply = tokio::time::timeout(HANG, con.recv()).await.unwrap();
    assert_eq!(reply.as_deref(), Some("pong from the listener"));
    assert_eq!(con.node_id(), listener.id());
}

#[tokio::test]
async fn connect_by_unl_and_by_node_id_with_lines_both_ways() {
    let boot = bootstrap_node().await;
    let bob = node(&boot).await;
    let alice = node(&boot).await;
    let carol = node(&boot).await;
    let mut bob_events = Box::pin(bob.events());

    // Bob's UNL: the loopback address, and the address the DHT saw him at,
    // both on his one port; signed, published.
    let unl = bob.unl();
    assert!(unl.verify().unwrap());
    assert!(unl.addrs.contains(&natkit::unl::Candidate {
        source: AddrSource::Lan,
        addr: SocketAddr::new(LOOPBACK, bob.port()),
    }));
    assert_eq!(bob.dht().local_addr().port(), bob.port());
    assert_eq!(bob.net().local_addr().port(), bob.port());
    assert!(bob.published_seq().is_some());
    assert_eq!(alice.lookup(bob.id()).await.unwrap(), unl);

    // By UNL (its text, as a user would paste it): no lookup.
    let target: Target = unl.emit().parse().unwrap();
    let (con, path) = alice.connect(target).await.unwrap();
    println!("by UNL: {path}, connect {:?}", path.elapsed);
    assert_eq!(path.kind, PathKind::Lan);
    assert_eq!(path.addr, SocketAddr::new(LOOPBACK, bob.port()));
    assert_eq!(path.lookup, None);
    lines_both_ways(&con, &bob, &mut bob_events, &alice).await;

    // By node id alone: the UNL comes from the DHT.
    let target: Target = bob.id().to_string().parse().unwrap();
    let (con, path) = carol.connect(target).await.unwrap();
    println!(
        "by node id: {path}, lookup {:?}, connect {:?}",
        path.lookup.unwrap(),
        path.elapsed
    );
    assert_eq!(path.kind, PathKind::Lan);
    assert_eq!(path.addr, SocketAddr::new(LOOPBACK, bob.port()));
    assert!(path.lookup.is_some());
    lines_both_ways(&con, &bob, &mut bob_events, &carol).await;

    // And the other way, bob to alice by id.
    let (back, path) = bob.connect(alice.id()).await.unwrap();
    assert_eq!(back.node_id(), alice.id());
    println!("bob -> alice: {path}");

    for n in [alice, bob, carol] {
        n.shutdown().await;
    }
    boot.shutdown().await;
}

#[tokio::test]
async fn an_unknown_node_id_is_a_typed_error_soon() {
    let boot = bootstrap_node().await;
    let alice = node(&boot).await;
    let nobody = Keypair::from_seed([0x42; 32]).node_id();
    let t = Instant::now();
    let err = tokio::time::timeout(
        LOOKUP_TIMEOUT + Duration::from_secs(5),
        alice.connect(nobody),
    )
    .await
    .expect("the lookup is bounded")
    .unwrap_err();
    println!("unknown node id: {err} (after {:?})", t.elapsed());
    assert!(
        matches!(err, ConnectError::NotFound { node_id } if node_id == nobody),
        "{err}"
    );
    alice.shutdown().await;
    boot.shutdown().await;
}

#[tokio::test]
async fn a_peer_behind_nat_that_no_one_can_signal_is_a_typed_error_and_nothing_is_dialed() {
    let alice = Node::builder().bind_ip(LOOPBACK).build().await.unwrap();
    // Behind a NAT of unknown type, reachable only at a public address, no
    // rendezvous point: the plan is a hole punch, whose first message cannot
    // go anywhere (alice knows no DHT node). Nothing is dialed: a punch dials
    // only addresses from the peer's answer.
    let key = Keypair::from_seed([7; 32]);
    let mut unl = Unl::new(key.node_id());
    unl.add_addr(AddrSource::Observed, "203.0.113.9:50500".parse().unwrap())
        .unwrap();
    unl.sign(&key).unwrap();
    let t = Instant::now();
    let err = alice.connect(unl).await.unwrap_err();
    println!("{err} (after {:?})", t.elapsed());
    match &err {
        ConnectError::AllFailed {
            failures, node_id, ..
        } => {
            assert_eq!(*node_id, key.node_id());
            let kinds: Vec<PathKind> = failures.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, [PathKind::Punched], "{err}");
            assert!(
                matches!(
                    failures[0].error,
                    AttemptError::Traversal(TraversalError::Signal(_))
                ),
                "{err}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Ourselves: no path.
    let err = alice.connect(alice.unl()).await.unwrap_err();
    assert!(matches!(err, ConnectError::NoPath { .. }), "{err}");
    alice.shutdown().await;
}

#[tokio::test]
async fn a_dead_address_is_reported_per_attempt() {
    let boot = bootstrap_node().await;
    let alice = node(&boot).await;
    // A node without NAT (the DHT saw it at its own address): its UNL plans
    // a direct dial, then (its reachability unconfirmed) a punch, and both fail.
    let gone = node(&boot).await;
    let unl = gone.unl();
    assert_eq!(unl.nat, natkit::unl::NatType::Open);
    gone.shutdown().await;
    let err = alice.connect(unl).await.unwrap_err();
    println!("{err}");
    match &err {
        ConnectError::AllFailed { failures, .. } => {
            assert_eq!(failures[0].kind, PathKind::Lan, "{err}");
            assert!(matches!(failures[0].error, AttemptError::Net(_)), "{err}");
        }
        other => panic!("{other}"),
    }
    alice.shutdown().await;
    boot.shutdown().await;
}

#[tokio::test]
async fn the_routing_table_is_kept_in_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let boot = bootstrap_node().await;
    let bob = Node::builder()
        .key(Keypair::from_seed([8; 32]))
        .bind_ip(LOOPBACK)
        .bootstrap(&[boot.local_addr()])
        .state_dir(dir.path().join("bob"))
        .build()
        .await
        .unwrap();
    bob.shutdown().await;
    assert!(dir.path().join("bob").join(ROUTING_TABLE_FILE).is_file());
    // Restarted without bootstrap nodes, bob rejoins through his saved table
    // and publishes his new UNL (new port) there.
    let key = Keypair::from_seed([8; 32]);
    let bob = Node::builder()
        .key(key.clone())
        .bind_ip(LOOPBACK)
        .state_dir(dir.path().join("bob"))
        .build()
        .await
        .unwrap();
    assert!(bob.published_seq().is_some());
    let alice = node(&boot).await;
    assert_eq!(alice.lookup(key.node_id()).await.unwrap(), bob.unl());
    alice.shutdown().await;
    bob.shutdown().await;
    boot.shutdown().await;
}

#[test]
fn natkit_demo_runs_as_a_script_would() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("unused.key");
    let t = Instant::now();
    let out = common::natkit(&key, &["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("natkit demo ({:?}):\n{stdout}", t.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bob's UNL  nk"), "{stdout}");
    assert!(stdout.contains("by his node id"), "{stdout}");
    assert!(stdout.contains("over path lan 127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("alice -> bob: hello bob"), "{stdout}");
    assert!(stdout.contains("bob -> alice: hello alice"), "{stdout}");
    assert!(!key.exists(), "the demo made a key file");

    let out = common::natkit(&key, &["demo", "--json"]);
    assert!(out.status.success());
    let steps: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = steps.iter().map(|s| s["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "bootstrap",
            "node",
            "node",
            "lookup",
            "connected",
            "line",
            "line",
            "done"
        ]
    );
    let connected = &steps[4];
    assert_eq!(connected["path"], "lan");
    assert!(connected["connect_ms"].is_number());
    assert!(steps[3]["lookup_ms"].is_number());
    assert_eq!(
        steps[1]["unl"]
            .as_str()
            .unwrap()
            .parse::<Unl>()
            .unwrap()
            .node_id
            .to_string(),
        steps[1]["node_id"]
    );

    let out = common::natkit(&key, &["--bootstrap", "127.0.0.1:6881", "demo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("natkit: usage error: "));
}

#[tokio::test]
async fn on_loopback_the_udp_class_is_unknown_and_the_unl_says_open() {
    use natkit::traversal::classify::NatClass;
    // A few DHT nodes that all see us: every one of them reports from
    // loopback, which the classifier refuses (it sees us without any NAT in
    // between), so the class stays Unknown; the UNL then keeps the
    // own-address rule: the DHT saw us at our own address, so "open".
    let boot = bootstrap_node().await;
    let others: Vec<Node> = futures::future::join_all((0..3).map(|_| node(&boot))).await;
    let alice = node(&boot).await;
    let t0 = Instant::now();
    while alice.dht().observations().await.unwrap().len() < 2
        && t0.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let observations = alice.dht().observations().await.unwrap();
    assert!(!observations.is_empty());
    let c = alice.udp_classification().await.unwrap();
    assert!(
        matches!(c.class, NatClass::Unknown { have: 0, .. }),
        "{c:?}"
    );
    assert!(c.votes.is_empty(), "loopback votes are refused: {c:?}");
    assert_eq!(alice.unl().nat, natkit::unl::NatType::Open);
    alice.shutdown().await;
    for n in others {
        n.shutdown().await;
    }
    boot.shutdown().await;
}

#[tokio::test]
async fn rendezvous_points_are_listed_in_the_published_unl() {
    let boot = bootstrap_node().await;
    let bob = node(&boot).await;
    let carol = node(&boot).await;
    let alice = node(&boot).await;
    // On loopback alice's NAT type is open, so she does not register by
    // herself; asked to, she lists the points in her UNL and republishes it.
    assert!(alice.unl().rendezvous.is_empty());
    let points = tokio::time::timeout(HANG, alice.register_rendezvous())
        .await
        .unwrap()
        .unwrap();
    assert!(!points.is_empty());
    let unl = alice.unl();
    assert_eq!(
        unl.rendezvous.len(),
        points.len().min(natkit::unl::MAX_RENDEZVOUS)
    );
    for p in &unl.rendezvous {
        assert!(points.contains(p), "{p}");
    }
    let found = tokio::time::timeout(HANG, bob.lookup(alice.id()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.rendezvous, unl.rendezvous);
    for n in [alice, bob, carol] {
        n.shutdown().await;
    }
    boot.shutdown().await;
}

#[tokio::test]
async fn a_stale_unl_is_refreshed_from_the_dht_and_retried_once() {
    let boot = bootstrap_node().await;
    let key = Keypair::from_seed([0x5a; 32]);
    let start = |key: Keypair| {
        Node::builder()
            .key(key)
            .bind_ip(LOOPBACK)
            .bootstrap(&[boot.local_addr()])
            .build()
    };
    let bob = start(key.clone()).await.unwrap();
    bob.wait_reachable(HANG).await.unwrap();
    let old = bob.unl();
    bob.shutdown().await;
    // Bob comes back with the same key on another port, within the second
    // (his new registration with the rendezvous node must still win).
    let bob = start(key.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), bob.wait_reachable(HANG))
        .await
        .expect("reachable again within seconds")
        .unwrap();
    assert_ne!(bob.port(), old.addrs[0].addr.port());

    let alice = node(&boot).await;
    let t = Instant::now();
    let (con, path) = tokio::time::timeout(HANG, alice.connect(old))
        .await
        .unwrap()
        .unwrap();
    println!(
        "stale UNL: {path} after {:?}, retried={}",
        t.elapsed(),
        path.retried
    );
    assert!(path.retried, "{path:?}");
    assert_eq!(path.kind, PathKind::Lan);
    assert_eq!(path.addr.port(), bob.port());
    assert_eq!(con.node_id(), key.node_id());
    assert!(path.lookup.is_some());
    alice.shutdown().await;
    bob.shutdown().await;
    boot.shutdown().await;
}

/// The event-loop form: two blocking nodes, `for con in &node`.
#[test]
fn the_blocking_node_is_an_event_loop() {
    let bob = Node::builder().bind_ip(LOOPBACK).build_blocking().unwrap();
    let alice = Node::builder().bind_ip(LOOPBACK).build_blocking().unwrap();
    let (con, path) = alice.connect(bob.unl()).unwrap();
    assert_eq!(path.kind, PathKind::Lan);
    con.send_line("ping").unwrap();
    let deadline = Instant::now() + HANG;
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        bob.wait(Duration::from_millis(100));
        for c in &bob {
            for line in c.lines() {
                assert_eq!(line, "ping");
                c.send_line("pong").unwrap();
                answered = true;
            }
        }
    }
    assert!(answered);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        alice.wait(Duration::from_millis(100));
        got = con.lines();
    }
    assert_eq!(got, ["pong"]);
    assert_eq!(alice.connections().len(), 1);
    alice.stop();
    bob.stop();
}
