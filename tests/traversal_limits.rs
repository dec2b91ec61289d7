//! A node is no SYN reflector: what traversal requests from others can make
//! it dial (docs/traversal.md, "Abuse"). On loopback, with signed `Reverse`
//! requests ("dial me") sent straight to a node's DHT socket; the "targets"
//! are plain TCP listeners that count the connections they get.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use natkit::Node;
use natkit::dht::dht::Dht;
use natkit::dht::rendezvous::CHANNEL_TRAVERSAL;
use natkit::identity::Keypair;
use natkit::traversal::limits::{LimitsConfig, NODE_BURST};
use natkit::traversal::punch::{CancelReason, Message, Signal};
use tokio::net::TcpListener;

/// A TCP listener on `ip` counting its connections.
async fn target(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(s); // never answers: the node's handshake times out
        }
    });
    (addr, count)
}

/// The node under test, on loopback, with these limits.
async fn node(limits: LimitsConfig) -> Node {
    Node::builder()
        .bind_ip("127.0.0.1".parse().unwrap())
        .traversal_limits(limits)
        .build()
        .await
        .unwrap()
}

/// A requester: a DHT node with its own key, on 127.0.0.1.
async fn requester(seed: u8) -> Dht {
    Dht::builder()
        .identity(Keypair::from_seed([seed; 32]).signing_key().clone())
        .bind_addr("127.0.0.1:0".parse().unwrap())
        .build()
        .await
        .unwrap()
}

/// Sends `Reverse{id, addrs}` from `from` to `node`, answers to come back to
/// `from` directly.
async fn ask_reverse(from: &Dht, node: &Node, id: u64, addrs: Vec<SocketAddr>) {
    let signal = Signal {
        reply_via: vec![from.local_addr()],
        message: Message::Reverse {
            id,
            attempt: 1,
            addrs,
        },
    };
    from.send_on(
        CHANNEL_TRAVERSAL,
        *node.id().as_bytes(),
        &signal.emit().unwrap(),
        &[node.dht().local_addr()],
    )
    .await
    .expect("the node acknowledges the request");
}

/// The `Cancel(refused)` answers that reach `inbox` within `wait`, by id.
async fn refusals(
    inbox: &mut tokio::sync::mpsc::Receiver<natkit::dht::rendezvous::Incoming>,
    wait: Duration,
) -> Vec<u64> {
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, inbox.recv()).await {
        if let Ok(Signal {
            message:
                Message::Cancel {
                    id,
                    reason: CancelReason::Refused,
                    ..
                },
            ..
        }) = Signal::parse(&m.payload)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn a_request_cannot_aim_the_node_at_another_address() {
    let node = node(LimitsConfig::default()).await;
    // The victim listens on 127.0.0.2: another IP than the requester's.
    let (victim, hits) = target("127.0.0.2").await;
    let mallory = requester(9).await;
    let mut inbox = mallory.messages_on(CHANNEL_TRAVERSAL).await.unwrap();
    ask_reverse(&mallory, &node, 1, vec![victim]).await;
    assert_eq!(refusals(&mut inbox, Duration::from_secs(1)).await, [1]);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the victim was dialed");
    mallory.shutdown().await;
    node.shutdown().await;
}

/// The per-target budget of this test: small, and no refill within it.
const TARGET_BURST: u32 = 6;

#[tokio::test]
async fn requests_are_limited_per_requester_and_per_target() {
    let limits = LimitsConfig {
        target_burst: TARGET_BURST,
        target_refill: Duration::from_secs(600),
        node_refill: Duration::from_secs(600),
        ..LimitsConfig::default()
    };
    let node = node(limits).await;
    let (addr, hits) = target("127.0.0.1").await;

    // One requester: NODE_BURST requests are served, the next one refused.
    let first = requester(1).await;
    let mut inbox = first.messages_on(CHANNEL_TRAVERSAL).await.unwrap();
    let burst = u64::from(NODE_BURST);
    for id in 1..=burst + 1 {
        ask_reverse(&first, &node, id, vec![addr]).await;
    }
    assert_eq!(
        refusals(&mut inbox, Duration::from_millis(500)).await,
        [burst + 1]
    );
    let served = hits.load(Ordering::SeqCst);
    assert_eq!(served, NODE_BURST as usize, "one dial per served request");

    // More requesters, each within its own budget: the target still gets no
    // more than TARGET_BURST dials in all.
    let mut others = Vec::new();
    for seed in 2..=3 {
        let d = requester(seed).await;
        let inbox = d.messages_on(CHANNEL_TRAVERSAL).await.unwrap();
        for id in 1..=burst {
            ask_reverse(&d, &node, id, vec![addr]).await;
        }
        others.push((d, inbox));
    }
    let mut refused = 0;
    for (_, inbox) in &mut others {
        refused += refusals(inbox, Duration::from_millis(500)).await.len();
    }
    let dialed = hits.load(Ordering::SeqCst);
    println!("dials to the target: {dialed}; refused requests of the others: {refused}");
    assert_eq!(dialed, TARGET_BURST as usize);
    assert_eq!(refused, 2 * NODE_BURST as usize - (dialed - served));
    for (d, _) in others {
        d.shutdown().await;
    }
    first.shutdown().await;
    node.shutdown().await;
}

#[tokio::test]
async fn answered_requests_have_a_node_wide_budget() {
    use natkit::node::{ANSWER_BURST, ANSWER_REFILL};
    // Per-requester and per-target budgets out of the way: only the
    // node-wide one is left.
    let limits = LimitsConfig {
        target_burst: 1000,
        global_burst: 1000,
        ..LimitsConfig::default()
    };
    let node = node(limits).await;
    let (addr, hits) = target("127.0.0.1").await;
    // Fresh node ids cost nothing: 80 requesters, one request each.
    let t = std::time::Instant::now();
    let mut requesters = Vec::new();
    for seed in 0..80u8 {
        let d = requester(100 + seed).await;
        ask_reverse(&d, &node, 1, vec![addr]).await;
        requesters.push(d);
    }
    let elapsed = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dialed = hits.load(Ordering::SeqCst);
    let refill = (elapsed.as_millis() / ANSWER_REFILL.as_millis()) as usize;
    println!(
        "80 requests in {elapsed:?}: {dialed} dialed (budget {ANSWER_BURST} + {refill} refilled)"
    );
    assert!(dialed >= ANSWER_BURST as usize, "{dialed}");
    assert!(dialed <= ANSWER_BURST as usize + refill + 1, "{dialed}");
    assert!(dialed < 80, "{dialed}");
    for d in requesters {
        d.shutdown().await;
    }
    node.shutdown().await;
}
