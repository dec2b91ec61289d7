//! [`Testnet`]: n natkit DHT nodes on 127.0.0.1 in one process, for tests and examples.

use std::net::SocketAddr;

use futures::StreamExt;

use crate::dht::{Dht, DhtError};

/// Nodes joining at once in [`Testnet::new`]. Joining one at a time leaves one
/// core idle; many at once would overflow the first node's UDP receive buffer (each lost
/// request costs a timeout). With α = 3 requests in flight per lookup, 8 joiners keep at most
/// 24 requests outstanding at the first node.
pub const TESTNET_JOIN_CONCURRENCY: usize = 8;

/// n nodes on 127.0.0.1: the first starts alone and the others bootstrap from it, a few at a
/// time. The early joiners learn their later neighbours from those neighbours' queries (a
/// second round of lookups on every node's own id made no difference to lookups on 1,000
/// nodes and cost a tenth of the datagrams).
#[derive(Debug)]
pub struct Testnet {
    /// The nodes, in the order they joined.
    pub nodes: Vec<Dht>,
}

impl Testnet {
    /// Starts `n` nodes (at least one).
    pub async fn new(n: usize) -> Result<Self, DhtError> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let first = Dht::builder().bind_addr(loopback).build().await?;
        let seed = [first.local_addr()];
        let joins =
            (1..n.max(1)).map(|_| Dht::builder().bind_addr(loopback).bootstrap(&seed).build());
        let joined: Vec<Result<Dht, DhtError>> = futures::stream::iter(joins)
            .buffered(TESTNET_JOIN_CONCURRENCY)
            .collect()
            .await;
        let mut nodes = vec![first];
        for node in joined {
            nodes.push(node?);
        }
        Ok(Testnet { nodes })
    }

    /// The nodes' addresses (to bootstrap another node from).
    pub fn bootstrap_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(Dht::local_addr).collect()
    }

    /// Stops every node and waits for their tasks.
    pub async fn shutdown(self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
    }
}
