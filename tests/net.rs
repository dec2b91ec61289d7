//! Connections on loopback: lines both ways, authentication, limits, bad
//! input, duplicates, keepalive, shutdown. (Through real NATs: see natlab.rs.)

use std::net::SocketAddr;
use std::time::Duration;

use natkit::identity::{Keypair, NodeId};
use natkit::net::frame::{self, Frame};
use natkit::net::handshake::{self, HandshakeOptions, LocalIdentity, Role};
use natkit::net::{
    CloseCode, CloseReason, Connection, Net, NetConfig, NetError, NetEvent, SendError,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn key(n: u32) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&n.to_be_bytes());
    seed[31] = 0x5a;
    Keypair::from_seed(seed)
}

fn cfg() -> NetConfig {
    NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NetConfig::default()
    }
}

async fn net(n: u32, c: NetConfig) -> Net {
    Net::bind(key(n), c).await.expect("bind")
}

/// The next Connected event (skipping lines of other connections).
async fn next_connected(net: &Net) -> Connection {
    loop {
        match timeout(T, net.next_event()).await.expect("event in time") {
            Some(NetEvent::Connected(c)) => return c,
            Some(_) => continue,
            None => panic!("net shut down"),
        }
    }
}

/// The next Disconnected event, with the lines that came as events before it.
async fn next_disconnected(net: &Net) -> (Connection, CloseReason, Vec<String>) {
    let mut lines = Vec::new();
    loop {
        match timeout(T, net.next_event()).await.expect("event in time") {
            Some(NetEvent::Disconnected { conn, reason }) => return (conn, reason, lines),
            Some(NetEvent::Line(_, l)) => lines.push(l),
            Some(_) => continue,
            None => panic!("net shut down"),
        }
    }
}

#[tokio::test]
async fn two_nodes_exchange_lines_both_ways() {
    let a = net(1, cfg()).await;
    let b = net(2, cfg()).await;
    let mut b_events = Box::pin(b.events());
    let ab = a.connect(b.local_addr(), b.node_id()).await.unwrap();
    assert_eq!(ab.node_id(), b.node_id());
    assert!(!ab.is_plaintext());
    // The observed address is how b saw us: our own local address on loopback.
    assert_eq!(ab.observed_addr(), ab.local_addr());
    // Outgoing connections leave from the listen port (port reuse).
    assert_eq!(ab.local_addr().port(), a.local_addr().port());

    use futures::StreamExt;
    let ba = match timeout(T, b_events.next()).await.unwrap().unwrap() {
        NetEvent::Connected(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(ba.node_id(), a.node_id());

    for i in 0..100 {
        ab.send(&format!("a->b {i}")).await.unwrap();
    }
    ab.send("").await.unwrap();
    ab.send("ünïcode ✓").await.unwrap();
    for i in 0..100 {
        assert_eq!(
            timeout(T, ba.recv()).await.unwrap().unwrap(),
            format!("a->b {i}")
        );
    }
    assert_eq!(ba.recv().await.unwrap(), "", "empty lines are delivered");
    assert_eq!(ba.recv().await.unwrap(), "ünïcode ✓");

    ba.send_line("b->a").unwrap();
    assert_eq!(timeout(T, ab.recv()).await.unwrap().unwrap(), "b->a");

    let s = ab.stats();
    assert_eq!(s.lines_out, 102);
    assert_eq!(s.lines_in, 1);
    assert_eq!(ba.stats().lines_in, 102);
    assert_eq!(ba.stats().bytes_in, s.bytes_out);

    // connect() to a node we already have returns the same connection.
    let again = a.connect(b.local_addr(), b.node_id()).await.unwrap();
    assert_eq!(again, ab);
    assert_eq!(a.connection(&b.node_id()), Some(ab.clone()));
    assert_eq!(a.connections_to(b.local_addr()), vec![ab.clone()]);

    a.shutdown().await;
    b.shutdown().await;
}

/// Lines that arrive before anyone asked for events are announced by the first
/// `next_event` (they used to wait, unannounced, for the connection's next line:
/// a peer waiting for an answer never got one).
#[tokio::test]
async fn lines_that_arrived_before_the_first_event_call_are_events() {
    let a = net(1, cfg()).await;
    let b = net(2, cfg()).await;
    let ab = a.connect(b.local_addr(), b.node_id()).await.unwrap();
    ab.send("early 1").await.unwrap();
    ab.send("early 2").await.unwrap();
    // Wait, without touching b's events, until b holds both lines.
    let deadline = std::time::Instant::now() + T;
    while b
        .connections()
        .iter()
        .map(|c| c.stats().lines_in)
        .sum::<u64>()
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "lines never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lines = Vec::new();
    while lines.len() < 2 {
        match timeout(T, b.next_event()).await.expect("announced") {
            Some(NetEvent::Line(c, l)) => {
                assert_eq!(c.node_id(), a.node_id());
                lines.push(l);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(lines, ["early 1", "early 2"]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn many_nodes_and_broadcast() {
    let hub = net(100, cfg()).await;
    let mut spokes = Vec::new();
    for i in 0..20 {
        let n = net(101 + i, cfg()).await;
        let c = n.connect(hub.local_addr(), hub.node_id()).await.unwrap();
        spokes.push((n, c));
    }
    // Wait until the hub has them all.
    for _ in 0..100 {
        if hub.connections().len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.connections().len(), 20);
    assert_eq!(hub.broadcast("to everyone"), 20);
    for (_, c) in &spokes {
        assert_eq!(timeout(T, c.recv()).await.unwrap().unwrap(), "to everyone");
    }
    // And each spoke's line reaches the hub on the right connection.
    for (n, c) in &spokes {
        c.send(&n.node_id().to_string()).await.unwrap();
    }
    for hc in hub.connections() {
        let line = timeout(T, hc.recv()).await.unwrap().unwrap();
        assert_eq!(line, hc.node_id().to_string());
    }
    hub.shutdown().await;
    for (n, _) in spokes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn wrong_expected_key_is_refused() {
    let a = net(1, cfg()).await;
    let b = net(2, cfg()).await;
    let impostor_key = key(3).node_id();
    let err = a.connect(b.local_addr(), impostor_key).await.unwrap_err();
    match err {
        NetError::Handshake {
            source: handshake::HandshakeError::KeyMismatch { expected, got },
            ..
        } => {
            assert_eq!(expected, impostor_key);
            assert_eq!(got, b.node_id());
        }
        other => panic!("expected a key mismatch, got {other}"),
    }
    assert!(a.connections().is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        b.connections().is_empty(),
        "b registered a connection the dialer refused"
    );
    // Connecting to ourselves is refused before dialing.
    assert!(matches!(
        a.connect(a.local_addr(), a.node_id()).await,
        Err(NetError::SelfConnect(_))
    ));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn over_long_line_closes_only_that_connection() {
    let small = NetConfig {
        max_line_bytes: 1024,
        send_queue_bytes: 64 * 1024,
        ..cfg()
    };
    let b = net(2, small).await;
    let mut bev = Box::pin(b.events());
    let a = net(1, cfg()).await;
    let c = net(3, cfg()).await;
    let ab = a.connect(b.local_addr(), b.node_id()).await.unwrap();
    let cb = c.connect(b.local_addr(), b.node_id()).await.unwrap();

    ab.send("fine").await.unwrap();
    ab.send(&"x".repeat(2000)).await.unwrap();
    ab.send("never delivered").await.unwrap();

    use futures::StreamExt;
    let mut got_fine = false;
    let reason = loop {
        match timeout(T, bev.next()).await.unwrap().unwrap() {
            NetEvent::Line(con, l) if con.node_id() == a.node_id() => {
                assert_eq!(l, "fine");
                got_fine = true;
            }
            NetEvent::Disconnected { conn, reason } => {
                assert_eq!(conn.node_id(), a.node_id());
                break reason;
            }
            _ => {}
        }
    };
    assert!(got_fine, "the line before the bad one is delivered");
    assert_eq!(reason, CloseReason::LineTooLong { limit: 1024 });
    // The sender is told why.
    assert_eq!(
        timeout(T, ab.closed()).await.unwrap(),
        CloseReason::Remote {
            code: CloseCode::LineTooLong,
            message: "the peer sent a line longer than 1024 bytes".into()
        }
    );
    // The other connection is untouched.
    cb.send("still here").await.unwrap();
    let bc = b.connection(&c.node_id()).unwrap();
    assert_eq!(timeout(T, bc.recv()).await.unwrap().unwrap(), "still here");
    // And our own limit refuses over-long lines before sending.
    assert!(matches!(
        cb.send_line(&"y".repeat(70 * 1024)),
        Err(SendError::Line(_))
    ));
    assert!(matches!(cb.send_line("a\nb"), Err(SendError::Line(_))));
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// A peer that speaks the handshake (asking for plaintext) and then writes
/// whatever frames a test wants.
struct RawPeer {
    stream: TcpStream,
}

impl RawPeer {
    async fn connect(to: &Net, seed: u32) -> RawPeer {
        let mut stream = TcpStream::connect(to.local_addr()).await.unwrap();
        let local = LocalIdentity::new(key(seed)).unwrap();
        let peer_addr = stream.peer_addr().unwrap();
        let est = handshake::run(
            &mut stream,
            HandshakeOptions {
                local: &local,
                role: Role::Initiator,
                expected: Some(to.node_id()),
                peer_addr,
                want_plaintext: true,
                allow_plaintext: true,
            },
        )
        .await
        .unwrap();
        assert!(est.plaintext);
        RawPeer { stream }
    }

    async fn data(&mut self, bytes: &[u8]) {
        let mut content = Vec::new();
        frame::emit(&Frame::Data(bytes), &mut content);
        let mut out = (content.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&content);
        self.stream.write_all(&out).await.unwrap();
    }
}

fn plaintext_ok() -> NetConfig {
    NetConfig {
        allow_plaintext: true,
        ..cfg()
    }
}

#[tokio::test]
async fn invalid_utf8_closes_the_connection_with_a_reason() {
    let b = net(2, plaintext_ok()).await;
    let _ = b.events();
    let mut raw = RawPeer::connect(&b, 9).await;
    let con = next_connected(&b).await;
    raw.data(b"good\n\xff\xfe bad\nafter\n").await;
    let (_, reason, lines) = next_disconnected(&b).await;
    assert_eq!(reason, CloseReason::InvalidUtf8);
    assert_eq!(lines, ["good"]);
    assert_eq!(con.recv().await, None, "nothing after the bad line");
    b.shutdown().await;
}

#[tokio::test]
async fn half_a_line_then_disconnect() {
    let b = net(2, plaintext_ok()).await;
    let _ = b.events();
    let mut raw = RawPeer::connect(&b, 9).await;
    let con = next_connected(&b).await;
    raw.data(b"complete\r\nhalf a li").await;
    drop(raw);
    let (_, reason, lines) = next_disconnected(&b).await;
    assert_eq!(reason, CloseReason::PeerGone);
    assert_eq!(lines, ["complete"], "the half line is not delivered");
    assert!(con.lines().is_empty());
    assert_eq!(con.recv().await, None);
    b.shutdown().await;
}

#[tokio::test]
async fn plaintext_needs_both_sides_to_opt_in() {
    let b = net(2, cfg()).await;
    let a = net(
        1,
        NetConfig {
            plaintext: true,
            ..cfg()
        },
    )
    .await;
    let err = a.connect(b.local_addr(), b.node_id()).await.unwrap_err();
    assert!(matches!(err, NetError::Handshake { .. }), "{err}");
    let b2 = net(3, plaintext_ok()).await;
    let c = a.connect(b2.local_addr(), b2.node_id()).await.unwrap();
    assert!(c.is_plaintext());
    c.send("clear text").await.unwrap();
    let at_b = timeout(T, next_connected(&b2)).await.unwrap();
    assert_eq!(
        timeout(T, at_b.recv()).await.unwrap().unwrap(),
        "clear text"
    );
    for n in [a, b, b2] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_peer_that_never_finishes_the_handshake_is_dropped() {
    let b = net(
        2,
        NetConfig {
            handshake_timeout: Duration::from_millis(300),
            ..cfg()
        },
    )
    .await;
    let mut silent = TcpStream::connect(b.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.stats().pending, 1);
    // The listener closes the socket after its timeout: we read EOF.
    let mut buf = [0u8; 16];
    use tokio::io::AsyncReadExt;
    let n = timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("dropped within the handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(b.stats().pending, 0);
    assert!(b.connections().is_empty());
    // A talking peer still gets in.
    let a = net(1, cfg()).await;
    a.connect(b.local_addr(), b.node_id()).await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn connection_limits_are_enforced() {
    let b = net(
        2,
        NetConfig {
            max_inbound: 2,
            ..cfg()
        },
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..2 {
        let n = net(10 + i, cfg()).await;
        n.connect(b.local_addr(), b.node_id()).await.unwrap();
        clients.push(n);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = net(20, cfg()).await;
    let err = third
        .connect(b.local_addr(), b.node_id())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Handshake { .. }), "{err}");
    assert_eq!(b.stats().inbound, 2);

    let a = net(
        1,
        NetConfig {
            max_outbound: 1,
            ..cfg()
        },
    )
    .await;
    a.connect(b.local_addr(), b.node_id()).await.unwrap_err(); // b is full
    let c = net(3, cfg()).await;
    a.connect(c.local_addr(), c.node_id()).await.unwrap();
    let d = net(4, cfg()).await;
    assert!(matches!(
        a.connect(d.local_addr(), d.node_id()).await,
        Err(NetError::Limit {
            which: "outbound",
            limit: 1
        })
    ));
    for n in clients.into_iter().chain([third, a, b, c, d]) {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn simultaneous_dials_leave_exactly_one_connection_on_both_sides() {
    for round in 0..10u32 {
        let a = net(1000 + round * 2, cfg()).await;
        let b = net(1001 + round * 2, cfg()).await;
        let (ra, rb) = tokio::join!(
            a.connect(b.local_addr(), b.node_id()),
            b.connect(a.local_addr(), a.node_id())
        );
        let (ca, cb) = (ra.unwrap(), rb.unwrap());
        // Let the losing connection close on both sides: both must end up
        // with the same single TCP connection.
        let mut settled = false;
        for _ in 0..300 {
            let open_a: Vec<_> = a
                .connections()
                .into_iter()
                .filter(|c| !c.is_closed())
                .collect();
            let open_b: Vec<_> = b
                .connections()
                .into_iter()
                .filter(|c| !c.is_closed())
                .collect();
            if open_a.len() == 1
                && open_b.len() == 1
                && open_a[0].local_addr() == open_b[0].remote_addr()
                && open_a[0].remote_addr() == open_b[0].local_addr()
            {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(settled, "round {round}: duplicates not resolved");
        let keep_a = a.connection(&b.node_id()).unwrap();
        let keep_b = b.connection(&a.node_id()).unwrap();
        keep_a.send("over the kept one").await.unwrap();
        assert_eq!(
            timeout(T, keep_b.recv()).await.unwrap().unwrap(),
            "over the kept one"
        );
        drop((ca, cb));
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn graceful_close_flushes_queued_lines() {
    let a = net(1, cfg()).await;
    let b = net(2, cfg()).await;
    let _ = b.events();
    let ab = a.connect(b.local_addr(), b.node_id()).await.unwrap();
    for i in 0..5000 {
        ab.send(&format!("line {i}")).await.unwrap();
    }
    ab.close();
    assert!(matches!(
        ab.send_line("late"),
        Err(SendError::Closed(CloseReason::Local))
    ));
    let (_, reason, got) = next_disconnected(&b).await;
    assert_eq!(
        reason,
        CloseReason::Remote {
            code: CloseCode::Normal,
            message: "closed by us".into()
        }
    );
    assert_eq!(got.len(), 5000);
    assert_eq!(got[4999], "line 4999");
    assert_eq!(timeout(T, ab.closed()).await.unwrap(), CloseReason::Local);
    assert!(ab.all_sent(), "every line was handed to the kernel");
    a.shutdown().await;
    b.shutdown().await;
}

/// `a` (with `a_config`'s other settings) connected to a `b` that never reads: b's receive
/// queue is 1 KiB, a's send queue 128 KiB of at most 1 KiB lines.
async fn to_a_peer_that_never_reads(a_config: NetConfig) -> (Net, Net, Connection) {
    let b = net(
        2,
        NetConfig {
            recv_queue_bytes: 1024,
            ..cfg()
        },
    )
    .await;
    let a = net(
        1,
        NetConfig {
            send_queue_bytes: 128 * 1024,
            max_line_bytes: 1024,
            ..a_config
        },
    )
    .await;
    let ab = a.connect(b.local_addr(), b.node_id()).await.unwrap();
    (a, b, ab)
}

/// Sends 1,000-byte lines until the send queue is full (yielding lets the writer drain into
/// the socket until TCP backs up); whether it filled, with the error that said so.
async fn fill_send_queue(ab: &Connection) -> Result<(), SendError> {
    let line = "z".repeat(1000);
    for _ in 0..200_000 {
        ab.send_line(&line)?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_close_that_times_out_says_lines_may_be_lost() {
    // b never reads: TCP backs up, and a's graceful close cannot send its queue in time.
    let close_soon = NetConfig {
        close_timeout: Duration::from_millis(300),
        ..cfg()
    };
    let (a, b, ab) = to_a_peer_that_never_reads(close_soon).await;
    assert!(
        matches!(fill_send_queue(&ab).await, Err(SendError::QueueFull)),
        "the send queue never filled"
    );
    ab.close();
    timeout(T, ab.closed()).await.expect("the close ends");
    assert!(!ab.all_sent(), "lines were left unsent, and it says so");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_full_send_queue_is_reported_not_blocking() {
    // b never reads: its receive queue fills, TCP backs up, our send queue fills.
    let (a, b, ab) = to_a_peer_that_never_reads(cfg()).await;
    let full = matches!(fill_send_queue(&ab).await, Err(SendError::QueueFull));
    assert!(full, "the send queue never filled");
    // The async send waits instead; it completes once b reads.
    let ba = b.connection(&a.node_id()).unwrap();
    let sender = tokio::spawn({
        let ab = ab.clone();
        async move { ab.send("after the wait").await }
    });
    let mut last = String::new();
    while last != "after the wait" {
        last = timeout(T, ba.recv()).await.unwrap().unwrap();
    }
    sender.await.unwrap().unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn shutdown_ends_every_task() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let base = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let a = net(1, cfg()).await;
        let b = net(2, cfg()).await;
        let ab = a.connect(b.local_addr(), b.node_id()).await.unwrap();
        ab.send("x").await.unwrap();
        let _silent = TcpStream::connect(b.local_addr()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(a.task_count() > 0 && b.task_count() > 0);
        a.shutdown().await;
        b.shutdown().await;
        assert_eq!(a.task_count(), 0);
        assert_eq!(b.task_count(), 0);
        assert!(a.is_shut_down());
        assert!(matches!(
            a.connect(b.local_addr(), b.node_id()).await,
            Err(NetError::Shutdown)
        ));
        assert_eq!(a.next_event().await.map(|_| ()), None);
        // A finished task is released by the worker thread that ran it, just
        // after our wait returned: give the runtime's bookkeeping a moment.
        let mut alive = usize::MAX;
        for _ in 0..100 {
            alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            if alive == base {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(alive, base, "tasks left running after shutdown");
    });
}

#[tokio::test]
async fn dead_peer_is_detected_in_process() {
    // A raw peer that finishes the handshake and then never answers pings.
    let b = net(
        2,
        NetConfig {
            allow_plaintext: true,
            ping_after: Duration::from_millis(200),
            dead_after: Duration::from_millis(800),
            ..cfg()
        },
    )
    .await;
    let _ = b.events();
    let _raw = RawPeer::connect(&b, 9).await;
    next_connected(&b).await;
    let started = std::time::Instant::now();
    let (_, reason, _) = next_disconnected(&b).await;
    assert_eq!(reason, CloseReason::DeadPeer);
    assert!(started.elapsed() >= Duration::from_millis(700));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thousand_simultaneous_connections() {
    const N: u32 = 1000;
    // 2,000 handshakes at once on a 2-core machine (maybe busy with other
    // work): generous timeouts, so that this tests capacity, not speed.
    let patient = NetConfig {
        handshake_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(60),
        ..cfg()
    };
    let hub = net(
        1,
        NetConfig {
            max_inbound: N as usize,
            max_pending_handshakes: 256,
            ..patient.clone()
        },
    )
    .await;
    let (hub_addr, hub_id) = (hub.local_addr(), hub.node_id());
    let mut tasks = Vec::new();
    for i in 0..N {
        let patient = patient.clone();
        tasks.push(tokio::spawn(async move {
            let n = net(10_000 + i, patient).await;
            let c = n.connect(hub_addr, hub_id).await.expect("connect");
            c.send(&format!("hello from {i}")).await.unwrap();
            let reply = timeout(Duration::from_secs(60), c.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(reply, format!("welcome {i}"));
            n
        }));
    }
    // The hub answers every line.
    let mut answered = 0;
    while answered < N {
        let ev = timeout(Duration::from_secs(60), hub.next_event())
            .await
            .unwrap()
            .unwrap();
        if let NetEvent::Line(con, line) = ev {
            let i = line.strip_prefix("hello from ").unwrap();
            con.send(&format!("welcome {i}")).await.unwrap();
            answered += 1;
        }
    }
    let mut nets = Vec::new();
    for t in tasks {
        nets.push(t.await.unwrap());
    }
    assert_eq!(hub.stats().inbound, N as usize);
    assert_eq!(hub.connections().len(), N as usize);
    hub.shutdown().await;
    for n in nets {
        n.shutdown().await;
    }
}

#[test]
fn event_loop_api_exchanges_lines() {
    use natkit::net::blocking;
    let a = blocking::Net::start(key(1), cfg()).unwrap();
    let b = blocking::Net::start(key(2), cfg()).unwrap();
    let ab = a.connect(b.local_addr(), b.node_id()).unwrap();
    ab.send_line("ping 1").unwrap();
    ab.send_line("ping 2").unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while got.len() < 2 && std::time::Instant::now() < deadline {
        b.wait(Duration::from_secs(1));
        for con in &b {
            for line in con.lines() {
                con.send_line(&format!("pong {}", &line[5..])).unwrap();
                got.push(line);
            }
        }
    }
    assert_eq!(got, ["ping 1", "ping 2"]);
    let mut replies = Vec::new();
    while replies.len() < 2 && std::time::Instant::now() < deadline {
        a.wait(Duration::from_secs(1));
        replies.extend(ab.lines());
    }
    assert_eq!(replies, ["pong 1", "pong 2"]);
    // wait() returns false when nothing happens.
    let t0 = std::time::Instant::now();
    assert!(!a.wait(Duration::from_millis(100)));
    assert!(t0.elapsed() >= Duration::from_millis(90));
    a.stop();
    b.stop();
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Net>();
    f::<Connection>();
    let _: Option<SocketAddr> = None;
    let _: Option<NodeId> = None;
}

/// A hole punch whose peer's dial reaches our listener: the accepted socket runs the handshake
/// in the role both sides computed and must prove the expected key.
#[tokio::test]
async fn an_expected_inbound_connection_takes_the_agreed_role_and_must_prove_the_key() {
    let a = net(70, cfg()).await;
    let b = net(71, cfg()).await;
    // b dials from its listen port as the Noise responder; a, which only accepts, is the
    // initiator on that socket, as a punch agreed.
    a.expect_inbound(b.local_addr(), b.node_id(), Role::Initiator, T)
        .expect("room");
    let at_b = timeout(
        T,
        b.connect_with_role(a.local_addr(), a.node_id(), Role::Responder),
    )
    .await
    .expect("in time")
    .expect("handshake with the agreed roles");
    let at_a = a
        .connection(&b.node_id())
        .expect("a holds the punched connection");
    assert_eq!(at_a.direction(), natkit::net::Direction::Inbound);
    at_b.send_line("punched").expect("queue");
    assert_eq!(
        timeout(T, at_a.recv()).await.expect("in time").as_deref(),
        Some("punched")
    );
    at_b.close();

    // Expecting another key at b's address: b's handshake is refused, nothing is registered.
    let c = net(72, cfg()).await;
    a.expect_inbound(c.local_addr(), b.node_id(), Role::Initiator, T)
        .expect("room");
    let wrong = timeout(
        T,
        c.connect_with_role(a.local_addr(), a.node_id(), Role::Responder),
    )
    .await
    .expect("in time");
    assert!(
        wrong.is_err(),
        "a connection with an unexpected key: {wrong:?}"
    );
    assert!(a.connection(&c.node_id()).is_none());

    // Without an expectation, the same dial as responder finds no initiator and fails: the
    // expectation is what gave the accepted socket its role.
    let quick = NetConfig {
        handshake_timeout: Duration::from_secs(1),
        ..cfg()
    };
    let d = net(73, quick).await;
    let plain = timeout(
        T,
        d.connect_with_role(a.local_addr(), a.node_id(), Role::Responder),
    )
    .await;
    assert!(!matches!(plain, Ok(Ok(_))), "{plain:?}");

    // The table of expectations is bounded.
    for port in 0..natkit::net::MAX_EXPECTED_INBOUND as u16 {
        let from = SocketAddr::from(([127, 0, 0, 2], 1000 + port));
        a.expect_inbound(from, b.node_id(), Role::Responder, T)
            .expect("room");
    }
    let over = SocketAddr::from(([127, 0, 0, 3], 1));
    assert!(matches!(
        a.expect_inbound(over, b.node_id(), Role::Responder, T),
        Err(NetError::Limit { .. })
    ));
    for n in [a, b, c, d] {
        n.shutdown().await;
    }
}
