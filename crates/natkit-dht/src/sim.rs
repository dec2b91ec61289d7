//! An in-memory network of sans-I/O nodes for tests and benchmarks: every node has a
//! [`RoutingTable`] and a [`Server`], messages are delivered through an event queue with a
//! simulated latency, and time is simulated (no sleeping).
//!
//! Tables are "ideal": each node's table is built by offering it every other node (so every
//! bucket is as full as the id distribution allows). That costs O(n²) and suits up to a few
//! thousand nodes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::id::{Id, NodeInfo};
use crate::krpc::{Kind, Message, Query, Response};
use crate::lookup::{K, Lookup, LookupKind, RttEstimator};
use crate::routing::{Contact, RoutingTable};
use crate::server::Server;

/// One-way latency of the simulated network.
pub const SIM_LATENCY: Duration = Duration::from_millis(10);

/// A small deterministic PRNG (splitmix64) so simulations replay exactly.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random id.
    pub fn id(&mut self) -> Id {
        let mut b = [0u8; 20];
        for chunk in b.chunks_mut(8) {
            let r = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        Id(b)
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its id and address.
    pub info: NodeInfo,
    /// Its routing table.
    pub table: RoutingTable,
    /// Its answering side.
    pub server: Server,
    /// A dead node never answers.
    pub alive: bool,
}

/// An in-memory network.
#[derive(Debug)]
pub struct SimNetwork {
    /// The nodes, addressed 10.x.y.z:6881 by index.
    pub nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddrV4, usize>,
    /// Simulated now.
    pub now: Instant,
    /// Most requests seen in flight at once in any lookup run here.
    pub max_in_flight: usize,
}

fn addr_of(i: usize) -> SocketAddrV4 {
    let n = u32::try_from(i).unwrap_or(u32::MAX);
    SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)), 6881)
}

impl SimNetwork {
    /// `n` nodes with random ids from `seed`, every table ideal; a fraction `dead_per_mille`
    /// / 1000 of them never answer (but sit in others' tables).
    pub fn new(n: usize, seed: u64, dead_per_mille: u64) -> Self {
        let now = Instant::now();
        let mut rng = SplitMix(seed);
        let infos: Vec<NodeInfo> = (0..n)
            .map(|i| NodeInfo {
                id: rng.id(),
                addr: addr_of(i),
            })
            .collect();
        let nodes = infos
            .iter()
            .map(|info| {
                let mut table = RoutingTable::new(info.id, now);
                for other in &infos {
                    table.heard_from(*other, Contact::Response, now);
                }
                let mut seed = [0u8; 20];
                seed[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
                SimNode {
                    info: *info,
                    table,
                    server: Server::new(info.id, seed, now),
                    alive: rng.next_u64() % 1000 >= dead_per_mille,
                }
            })
            .collect();
        let by_addr = infos.iter().enumerate().map(|(i, n)| (n.addr, i)).collect();
        SimNetwork {
            nodes,
            by_addr,
            now,
            max_in_flight: 0,
        }
    }

    /// The live node closest to `target`, other than `exclude`.
    pub fn true_closest(&self, target: &Id, exclude: usize) -> Option<NodeInfo> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != exclude && n.alive)
            .map(|(_, n)| n.info)
            .min_by_key(|n| target.distance(&n.id))
    }

    /// A lookup from node `origin`, seeded from its table.
    pub fn lookup(&self, origin: usize, target: Id, kind: LookupKind) -> Option<Lookup> {
        let node = self.nodes.get(origin)?;
        let seeds = node.table.closest(&target, K, self.now);
        Some(Lookup::new(
            node.info.id,
            target,
            kind,
            &seeds,
            RttEstimator::default(),
        ))
    }

    /// Delivers `query` from `origin` to `to` at the current time and returns the answer.
    pub fn ask(&mut self, origin: usize, to: SocketAddrV4, query: &Query) -> Option<Message> {
        let from = SocketAddr::V4(self.nodes.get(origin)?.info.addr);
        let i = *self.by_addr.get(&to)?;
        let now = self.now;
        let node = self.nodes.get_mut(i)?;
        if !node.alive {
            return None;
        }
        Some(
            node.server
                .handle_query(from, b"sim0", query, &node.table, now),
        )
    }

    /// Runs `lookup` for node `origin` to completion, advancing simulated time.
    pub fn run(&mut self, origin: usize, lookup: &mut Lookup) {
        let mut queue: BinaryHeap<Reverse<(Instant, u64, SocketAddrV4)>> = BinaryHeap::new();
        let mut answers: HashMap<u64, Message> = HashMap::new();
        let mut seq = 0u64;
        loop {
            lookup.expire(self.now);
            for to in lookup.next_queries(self.now) {
                let query = lookup.query();
                if let Some(answer) = self.ask(origin, to.addr, &query) {
                    seq += 1;
                    answers.insert(seq, answer);
                    queue.push(Reverse((self.now + 2 * SIM_LATENCY, seq, to.addr)));
                }
            }
            self.max_in_flight = self.max_in_flight.max(lookup.in_flight());
            if lookup.is_done() {
                break;
            }
            let next_answer = queue.peek().map(|Reverse((t, _, _))| *t);
            let next_deadline = lookup.next_deadline();
            match (next_answer, next_deadline) {
                (Some(a), Some(d)) if d < a => self.now = d,
                (Some(_), _) => {
                    if let Some(Reverse((t, s, from))) = queue.pop() {
                        self.now = t;
                        match answers.remove(&s).map(|m| m.kind) {
                            Some(Kind::Response(r)) => {
                                lookup.on_response(from, &r, self.now);
                            }
                            _ => lookup.on_failure(from),
                        }
                    }
                }
                (None, Some(d)) => self.now = d,
                (None, None) => break,
            }
        }
    }

    /// Sends `query` from `origin` to each of `targets` (e.g. a `put` with each node's token)
    /// and returns the responses.
    pub fn send_all(
        &mut self,
        origin: usize,
        targets: &[(NodeInfo, Query)],
    ) -> Vec<Result<Response, i64>> {
        targets
            .iter()
            .filter_map(|(n, q)| self.ask(origin, n.addr, q))
            .map(|m| match m.kind {
                Kind::Response(r) => Ok(r),
                Kind::Error(e) => Err(e.code),
                Kind::Query(_) => Err(0),
            })
            .collect()
    }
}
