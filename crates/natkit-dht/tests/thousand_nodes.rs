//! 1,000 natkit DHT nodes on 127.0.0.1 in one process: every node bootstraps, lookups from
//! nodes all over the network find the true closest nodes, and items put from one node are got
//! from others. Behaviour only: how long it takes is `scripts/bench.sh dht`'s business.

use std::time::Duration;

use natkit_dht::dht::Dht;
use natkit_dht::routing::K;
use natkit_dht::sim::SplitMix;
use natkit_dht::testnet::Testnet;
use natkit_dht::{Id, Value};

const NODES: usize = 1000;

/// A hang fails the test instead of blocking CI. Generous: a debug build on a busy 2-core
/// machine bootstraps the 1,000 nodes in well under a minute.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// The `K` ids closest to `target` among all nodes but `exclude`, closest first.
fn true_closest(ids: &[Id], target: &Id, exclude: &Id) -> Vec<Id> {
    let mut others: Vec<Id> = ids.iter().copied().filter(|id| id != exclude).collect();
    others.sort_by_key(|id| target.distance(id));
    others.truncate(K);
    others
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1000_node_network_finds_the_true_closest_nodes_and_items() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let started = std::time::Instant::now();
        let net = Testnet::new(NODES).await.expect("testnet");
        eprintln!("bootstrapped in {:?}", started.elapsed());
        let ids: Vec<Id> = net.nodes.iter().map(Dht::id).collect();

        // Every node joined: it knows a few others and others know it.
        let (mut known, mut proof_pings, mut proofs) = (0, 0, 0);
        for (i, n) in net.nodes.iter().enumerate() {
            let s = n.stats().await.expect("stats");
            proof_pings += s.proof_pings;
            proofs += s.address_proofs_in;
            assert!(
                s.routing_table_size >= K,
                "node {i} knows {} nodes",
                s.routing_table_size
            );
            known += s.routing_table_size;
        }
        eprintln!(
            "mean routing table size {}; {proofs} address proofs, {proof_pings} of them by a \
             ping at the end of a bootstrap",
            known / NODES
        );

        // find_node from nodes spread over the network: the K closest that answered are the
        // K closest that exist.
        let mut rng = SplitMix(1000);
        for i in 0..20usize {
            let from = &net.nodes[(i * 53) % NODES];
            let target = rng.id();
            let found = from.find_node(target).await.expect("find_node");
            let found: Vec<Id> = found.iter().map(|n| n.id).collect();
            assert_eq!(found, true_closest(&ids, &target, &from.id()), "lookup {i}");
        }
        // A node's own id: the lookup finds the node itself first.
        let from = &net.nodes[7];
        let wanted = ids[900];
        let found = from.find_node(wanted).await.expect("find_node");
        assert_eq!(found.first().map(|n| n.id), Some(wanted));

        // Items put from one node are got from several others.
        for i in 0..8usize {
            let v = Value::Bytes(format!("item {i} of the 1,000-node test").into_bytes());
            let target = net.nodes[(i * 97) % NODES]
                .put_immutable(v.clone())
                .await
                .expect("put");
            for j in 0..4usize {
                let getter = &net.nodes[(i * 97 + 250 * (j + 1) + 13) % NODES];
                let got = getter.get_immutable(target).await.expect("get");
                assert_eq!(got.as_ref(), Some(&v), "item {i} from getter {j}");
            }
        }
        net.shutdown().await;
    })
    .await
    .expect("test timed out");
}
