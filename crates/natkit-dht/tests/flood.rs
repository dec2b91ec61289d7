//! A `find_node` flood from many source ports against a node on 127.0.0.1: the node sends
//! nothing toward a source but the answers to its queries (no pings, never more datagrams than
//! it got from that source), and never names a flooding address to anyone else. Prints the
//! datagrams and bytes out per datagram and byte in (recorded in BENCHMARKS.md).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use natkit_dht::sim::SplitMix;
use natkit_dht::testnet::Testnet;
use natkit_dht::{Id, Kind, Message, Query, krpc};

/// Source ports of the flood.
const SOURCES: usize = 2000;
/// Queries from each source (50,000 in all).
const QUERIES_PER_SOURCE: usize = 25;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Default)]
struct Tally {
    sent: usize,
    sent_bytes: usize,
    got: usize,
    got_bytes: usize,
    got_queries: usize,
    /// Datagrams back, per source.
    per_source: Vec<usize>,
}

impl Tally {
    fn drain_all(&mut self, sockets: &[UdpSocket], buf: &mut [u8]) {
        self.per_source.resize(sockets.len(), 0);
        for (i, s) in sockets.iter().enumerate() {
            let (n, b, q) = drain(s, buf);
            self.got += n;
            self.got_bytes += b;
            self.got_queries += q;
            self.per_source[i] += n;
        }
    }
}

/// Every datagram waiting on `s`: (count, bytes, how many were queries).
fn drain(s: &UdpSocket, buf: &mut [u8]) -> (usize, usize, usize) {
    let (mut n, mut bytes, mut queries) = (0, 0, 0);
    while let Ok(len) = s.recv(buf) {
        n += 1;
        bytes += len;
        if matches!(krpc::parse(&buf[..len]).map(|m| m.kind), Ok(Kind::Query(_))) {
            queries += 1;
        }
    }
    (n, bytes, queries)
}

fn flood(node: SocketAddr) -> (Tally, Vec<UdpSocket>, Vec<Id>) {
    let mut rng = SplitMix(50_000);
    let sockets: Vec<UdpSocket> = (0..SOURCES)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            s.connect(node).expect("connect");
            s
        })
        .collect();
    let ids: Vec<Id> = (0..SOURCES).map(|_| rng.id()).collect();
    let mut t = Tally::default();
    let mut buf = vec![0u8; 2048];
    // Paced at about 5,000 queries a second (a debug build on a busy 2-core machine answers
    // that many), reading the answers as they come so none is lost to a full receive buffer.
    for round in 0..QUERIES_PER_SOURCE {
        for (chunk_no, chunk) in sockets.chunks(100).enumerate() {
            for (j, s) in chunk.iter().enumerate() {
                let i = chunk_no * 100 + j;
                let tid = (round as u32 * SOURCES as u32 + i as u32).to_be_bytes();
                let q = Query::FindNode {
                    id: ids[i],
                    target: rng.id(),
                };
                let bytes = Message::query(tid, q).emit();
                if s.send(&bytes).is_ok() {
                    t.sent += 1;
                    t.sent_bytes += bytes.len();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        t.drain_all(&sockets, &mut buf);
    }
    (t, sockets, ids)
}

/// Floods the first node of a `network`-node testnet.
async fn flood_test(network: usize) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let net = Testnet::new(network).await.expect("testnet");
        let node = net.nodes[0].local_addr();
        let before = net.nodes[0].stats().await.expect("stats");
        let (mut t, sockets, ids) = tokio::task::spawn_blocking(move || flood(node))
            .await
            .expect("flood");
        // Whatever the node still sends (late answers, pings it might have queued).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut buf = vec![0u8; 2048];
        t.drain_all(&sockets, &mut buf);
        let s = net.nodes[0].stats().await.expect("stats");
        let count = |s: &natkit_dht::stats::Stats| s.queries_in.values().sum::<u64>();
        let received = count(&s) - count(&before);
        // Bytes in: every query of the flood has the same length.
        let received_bytes = received as f64 * (t.sent_bytes as f64 / t.sent as f64);
        eprintln!(
            "flood of a node with {} neighbours: {} datagrams from {SOURCES} source ports, {received} received by the node \
             ({} rate-limited); {} datagrams ({} bytes) back, {} of them queries: {:.3} \
             datagrams and {:.2}x the bytes out per datagram received; table {}",
            network - 1,
            t.sent,
            s.rate_limited - before.rate_limited,
            t.got,
            t.got_bytes,
            t.got_queries,
            t.got as f64 / received as f64,
            t.got_bytes as f64 / received_bytes,
            s.routing_table_size,
        );
        assert!(
            received as usize >= t.sent / 2,
            "the node got only {received} of {} queries: the flood measures nothing",
            t.sent
        );
        assert_eq!(t.got_queries, 0, "the node sent queries (pings) to flooders");
        assert!(t.got as u64 <= received, "more datagrams out than in");

        let most = t.per_source.iter().max().copied().unwrap_or(0);
        assert!(
            most <= QUERIES_PER_SOURCE,
            "a source got {most} datagrams for its {QUERIES_PER_SOURCE}"
        );

        // Nobody is told about a flooder: find_node for flooders' own ids from a clean socket.
        let asker = UdpSocket::bind("127.0.0.1:0").expect("bind");
        asker
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let flooders: std::collections::HashSet<SocketAddr> = sockets
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        for (i, target) in ids.iter().enumerate().step_by(100) {
            let q = Query::FindNode {
                id: Id([0xee; 20]),
                target: *target,
            };
            let tid = (i as u32).to_be_bytes();
            asker
                .send_to(&Message::query(tid, q).emit(), node)
                .expect("send");
            let len = asker.recv(&mut buf).expect("an answer");
            let m = krpc::parse(&buf[..len]).expect("valid");
            let Kind::Response(r) = m.kind else {
                panic!("not a response: {m:?}")
            };
            let named = r.nodes.unwrap_or_default();
            assert_eq!(
                named.is_empty(),
                network == 1,
                "the node's real neighbours are named, and only they"
            );
            for n in named {
                assert!(
                    !flooders.contains(&SocketAddr::V4(n.addr)),
                    "flooder {} handed out",
                    n.addr
                );
            }
        }
        net.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// One test, so the two floods do not run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_find_node_flood_gets_one_answer_per_query_and_nothing_else() {
    // A lone node: before, the flooders filled its table as questionable nodes and each new one
    // made it ping an older one, and its answers named flooders.
    flood_test(1).await;
    // A node with real neighbours: its answers are full-sized, the bytes-out figure of a node
    // in a real network.
    flood_test(30).await;
}
