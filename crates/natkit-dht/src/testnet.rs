//! [`Testnet`]: n natkit DHT nodes on 127.0.0.1 in one process, for tests and examples.

use std::net::SocketAddr;

use futures::StreamExt;

use crate::dht::{Dht, DhtError};

/// Nodes re-bootstrapping at once in [`Testnet::new`]'s second round.
pub const TESTNET_BOOTSTRAP_CONCURRENCY: usize = 4;

/// n nodes on 127.0.0.1: the first starts alone, each other bootstraps from the first, then
/// every node bootstraps once more so the early joiners learn about the later ones.
#[derive(Debug)]
pub struct Testnet {
    /// The nodes.
    pub nodes: Vec<Dht>,
}

impl Testnet {
    /// Starts `n` nodes (at least one).
    pub async fn new(n: usize) -> Result<Self, DhtError> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let first = Dht::builder().bind_addr(loopback).build().await?;
        let seed = [first.local_addr()];
        let mut nodes = vec![first];
        for _ in 1..n.max(1) {
            let node = Dht::builder()
                .bind_addr(loopback)
                .bootstrap(&seed)
                .build()
                .await?;
            nodes.push(node);
        }
        // A few at a time: all at once would overflow the first nodes' UDP receive buffers, and
        // each lost request costs a timeout.
        let rounds = nodes.iter().skip(1).map(|n| n.bootstrap());
        let results: Vec<_> = futures::stream::iter(rounds)
            .buffer_unordered(TESTNET_BOOTSTRAP_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            r?;
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
