//! The relay on loopback: circuits, and every limit with the reason both ends are told.
//! (Traversal through real NATs is tests/natlab_traversal.rs at the workspace root.)

use std::time::Duration;

use natkit_identity::Keypair;
use natkit_net::{Connection, Net, NetConfig, Role};
use natkit_relay::wire::{Cut, Refusal};
use natkit_relay::{Notice, RelayClient, RelayError, RelayLimits, RelayServer, Session};
use tokio::sync::mpsc;

fn config() -> NetConfig {
    NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NetConfig::default()
    }
}

struct Peer {
    net: Net,
    relays: RelayClient,
}

async fn peer(seed: u8) -> Peer {
    let key = Keypair::from_seed([seed; 32]);
    Peer {
        net: Net::bind(key.clone(), config()).await.unwrap(),
        relays: RelayClient::bind(key, "127.0.0.1".parse().unwrap())
            .await
            .unwrap(),
    }
}

async fn relay(limits: RelayLimits) -> RelayServer {
    let net = Net::bind(Keypair::from_seed([99; 32]), config())
        .await
        .unwrap();
    RelayServer::start(net, limits).await.unwrap()
}

/// Alice's side: accepts the next incoming circuit.
async fn accept(
    alice: &Peer,
    session: &Session,
    notices: &mut mpsc::Receiver<Notice>,
) -> Connection {
    let Some(Notice::Incoming {
        from,
        token,
        limits,
        ..
    }) = notices.recv().await
    else {
        panic!("no incoming circuit")
    };
    let stream = session.join(&token, limits).await.unwrap();
    alice
        .net
        .connect_over(stream, Some(from), Role::Responder, session.relay_id())
        .await
        .unwrap()
}

/// Bob's side: a circuit to `to`, and the handshake through it.
async fn dial(
    bob: &Peer,
    session: &Session,
    to: natkit_identity::NodeId,
) -> Result<Connection, String> {
    let circuit = session.connect(to).await.map_err(|e| e.to_string())?;
    bob.net
        .connect_over(
            circuit.stream,
            Some(to),
            Role::Initiator,
            session.relay_id(),
        )
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn lines_flow_both_ways_through_a_circuit() {
    let relay = relay(RelayLimits::default()).await;
    let (alice, bob) = (peer(1).await, peer(2).await);
    let (session, mut notices) = alice.relays.open(relay.local_addr()).await.unwrap();
    session.reserve().await.unwrap();
    let (bob_session, _) = bob.relays.open(relay.local_addr()).await.unwrap();
    let (con, at_alice) = tokio::join!(
        dial(&bob, &bob_session, alice.net.node_id()),
        accept(&alice, &session, &mut notices)
    );
    let con = con.unwrap();
    con.send("ping").await.unwrap();
    assert_eq!(at_alice.recv().await.as_deref(), Some("ping"));
    at_alice.send("pong").await.unwrap();
    assert_eq!(con.recv().await.as_deref(), Some("pong"));
    assert_eq!(relay.stats().spliced, 1);
    assert_eq!(con.relay(), Some(relay.node_id()));
    assert_eq!(at_alice.relay(), Some(relay.node_id()));
    assert_eq!(
        at_alice.node_id(),
        bob.net.node_id(),
        "authenticated end to end"
    );
}

/// A reserved alice, a bob with a session, on a relay with `limits`.
async fn setup(
    limits: RelayLimits,
) -> (
    RelayServer,
    Peer,
    Session,
    mpsc::Receiver<Notice>,
    Peer,
    Session,
    mpsc::Receiver<Notice>,
) {
    let relay = relay(limits).await;
    let (alice, bob) = (peer(1).await, peer(2).await);
    let (a, an) = alice.relays.open(relay.local_addr()).await.unwrap();
    a.reserve().await.unwrap();
    let (b, bn) = bob.relays.open(relay.local_addr()).await.unwrap();
    (relay, alice, a, an, bob, b, bn)
}

async fn relayed_pair(
    bob: &Peer,
    b: &Session,
    alice: &Peer,
    a: &Session,
    an: &mut mpsc::Receiver<Notice>,
) -> (Connection, Connection) {
    let (con, at_alice) = tokio::join!(dial(bob, b, alice.net.node_id()), accept(alice, a, an));
    (con.unwrap(), at_alice)
}

async fn next_cut(n: &mut mpsc::Receiver<Notice>) -> natkit_relay::wire::Cut {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), n.recv()).await {
            Ok(Some(Notice::Cut { reason, .. })) => return reason,
            Ok(Some(_)) => continue,
            other => panic!("no cut: {other:?}"),
        }
    }
}

#[tokio::test]
async fn reservations_beyond_the_limit_are_refused_with_the_limit() {
    let (relay, _alice, _a, _an, bob, b, _bn) = setup(RelayLimits {
        max_reservations: 1,
        ..RelayLimits::default()
    })
    .await;
    let carol = peer(3).await;
    let (c, _) = carol.relays.open(relay.local_addr()).await.unwrap();
    let err = c.reserve().await.unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Refused {
                reason: Refusal::Reservations { limit: 1 },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("most reservations (1)"), "{err}");
    // One session per relay.
    let again = bob.relays.open(relay.local_addr()).await.unwrap_err();
    assert!(matches!(again, RelayError::SessionOpen { .. }), "{again}");
    // Nobody reaches a node that has no reservation.
    let err = b.connect(carol.net.node_id()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Refused {
                reason: Refusal::NotReserved { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(relay.stats().refused, 2);
}

#[tokio::test]
async fn circuits_per_peer_are_limited() {
    let (_relay, alice, a, mut an, bob, b, _bn) = setup(RelayLimits {
        max_circuits_per_peer: 1,
        ..RelayLimits::default()
    })
    .await;
    let (_con, _at_alice) = relayed_pair(&bob, &b, &alice, &a, &mut an).await;
    let err = b.connect(alice.net.node_id()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RelayError::Refused {
                reason: Refusal::CircuitsPerPeer { limit: 1 },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_circuit_is_cut_at_its_duration_and_both_ends_are_told() {
    let (relay, alice, a, mut an, bob, b, mut bn) = setup(RelayLimits {
        circuit_duration_s: 1,
        ..RelayLimits::default()
    })
    .await;
    let (con, at_alice) = relayed_pair(&bob, &b, &alice, &a, &mut an).await;
    let expect = Cut::Duration { secs: 1 };
    assert_eq!(next_cut(&mut bn).await, expect);
    assert_eq!(next_cut(&mut an).await, expect);
    for c in [&con, &at_alice] {
        tokio::time::timeout(Duration::from_secs(10), c.closed())
            .await
            .expect("the relayed connection ends");
    }
    assert_eq!(relay.stats().cut, 1);
}

#[tokio::test]
async fn a_circuit_is_cut_at_its_data_limit() {
    let limit = 64 * 1024;
    let (_relay, alice, a, mut an, bob, b, mut bn) = setup(RelayLimits {
        circuit_data_bytes: limit,
        ..RelayLimits::default()
    })
    .await;
    let (con, at_alice) = relayed_pair(&bob, &b, &alice, &a, &mut an).await;
    let line = "x".repeat(1000);
    let mut sent = 0;
    while con.send(&line).await.is_ok() && sent < 1000 {
        sent += 1;
    }
    assert_eq!(next_cut(&mut bn).await, Cut::Data { bytes: limit });
    tokio::time::timeout(Duration::from_secs(10), at_alice.closed())
        .await
        .expect("alice's end closes");
    assert!(
        at_alice.stats().bytes_in < limit,
        "{} bytes reached alice",
        at_alice.stats().bytes_in
    );
}

#[tokio::test]
async fn a_circuit_carries_at_most_its_rate() {
    let rate = 64 * 1024;
    let (_relay, alice, a, mut an, bob, b, _bn) = setup(RelayLimits {
        circuit_bytes_per_sec: rate,
        ..RelayLimits::default()
    })
    .await;
    let (con, at_alice) = relayed_pair(&bob, &b, &alice, &a, &mut an).await;
    let line = "y".repeat(1023);
    let total = 256 * 1024u64;
    let t0 = std::time::Instant::now();
    let sender = async {
        for _ in 0..total / 1024 {
            con.send(&line).await.unwrap();
        }
    };
    let receiver = async {
        let mut got = 0;
        while got < total / 1024 {
            at_alice.recv().await.unwrap();
            got += 1;
        }
    };
    tokio::join!(sender, receiver);
    // The first burst (64 KiB) is free; the rest cannot go faster than the rate. A lower
    // bound only: a slow machine takes longer, never shorter.
    let floor = (total - 64 * 1024) as f64 / rate as f64;
    let took = t0.elapsed().as_secs_f64();
    assert!(
        took >= floor * 0.95,
        "{took:.2} s for {total} bytes at {rate} B/s"
    );
}

#[tokio::test]
async fn a_circuit_the_target_never_joins_is_not_joined() {
    let (_relay, alice, _a, _an, _bob, b, mut bn) = setup(RelayLimits {
        join_timeout_s: 1,
        ..RelayLimits::default()
    })
    .await;
    // Alice ignores the incoming circuit.
    let err = b.connect(alice.net.node_id()).await.unwrap_err();
    assert!(matches!(err, RelayError::NotJoined { .. }), "{err}");
    assert_eq!(next_cut(&mut bn).await, Cut::NotJoined { secs: 1 });
}

#[tokio::test]
async fn garbage_and_unknown_requests_cost_nothing_but_a_refusal() {
    let (relay, alice, a, mut an, bob, b, _bn) = setup(RelayLimits::default()).await;
    // A stream with the magic and a wrong token, and one with garbage.
    for bytes in [
        &b"NKRELAY1notatokennotatoken"[..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(relay.local_addr())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, bytes)
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("the relay drops the stream")
        .unwrap_or(0);
        assert_eq!(n, 0, "nothing is spliced");
    }
    // A request the relay does not know (there is no way to name an address).
    let carol = Net::bind(Keypair::from_seed([3; 32]), config())
        .await
        .unwrap();
    let con = carol.connect_any(relay.local_addr()).await.unwrap();
    con.send(r#"{"op":"dial","req":5,"addr":"192.0.2.1:80"}"#)
        .await
        .unwrap();
    let reply = natkit_relay::wire::parse_reply(&con.recv().await.unwrap()).unwrap();
    assert!(
        matches!(
            reply,
            natkit_relay::wire::Reply::Refused {
                reason: Refusal::Malformed { .. },
                ..
            }
        ),
        "{reply:?}"
    );
    // The relay still serves.
    let (c, at_alice) = relayed_pair(&bob, &b, &alice, &a, &mut an).await;
    c.send("still here").await.unwrap();
    assert_eq!(at_alice.recv().await.as_deref(), Some("still here"));
}

#[tokio::test]
async fn a_direct_connection_replaces_a_relayed_one_without_reordering_a_line() {
    let (_relay, alice, a, mut an, bob, b, _bn) = setup(RelayLimits::default()).await;
    let mut events = std::pin::pin!(alice.net.events());
    let (relayed, _at_alice) = relayed_pair(&bob, &b, &alice, &a, &mut an).await;
    for k in 1..=100 {
        relayed.send(&format!("line {k}")).await.unwrap();
    }
    // A direct path appears: both ends keep it and close the relayed one as a duplicate,
    // after the lines queued on it.
    let direct = bob
        .net
        .connect(alice.net.local_addr(), alice.net.node_id())
        .await
        .unwrap();
    assert_eq!(direct.relay(), None);
    assert_ne!(
        direct, relayed,
        "connect dials even when a relayed connection exists"
    );
    assert!(
        relayed.send("too late").await.is_err(),
        "the relayed one takes no more lines"
    );
    assert_eq!(
        bob.net.connection(&alice.net.node_id()),
        Some(direct.clone())
    );
    for k in 101..=200 {
        direct.send(&format!("line {k}")).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        let ev = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut events),
        )
        .await
        .expect("alice's events")
        .unwrap();
        if let natkit_net::NetEvent::Line(_, l) = ev {
            got.push(l.strip_prefix("line ").unwrap().parse::<u32>().unwrap());
        }
    }
    assert_eq!(got, (1..=200).collect::<Vec<_>>());
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), relayed.closed())
            .await
            .unwrap(),
        natkit_net::CloseReason::Duplicate
    );
}
