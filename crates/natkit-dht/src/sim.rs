//! An in-memory network of sans-I/O nodes for tests and benchmarks: every node has a
//! [`RoutingTable`] and a [`Server`], messages are delivered through an event queue with a
//! simulated latency, and time is simulated (no sleeping).
//!
//! Tables are "ideal": each node's table holds what offering it every other node, in index
//! order, would leave in it (so every bucket is as full as the id distribution allows). They are
//! built from the ids sorted once, in O(n log² n) overall (100,000 nodes in seconds; see
//! [`ideal_tables`]).
//!
//! [`SimNetwork::run_traced`] also reports when each answer arrived; with a fixed latency,
//! times divided by the round trip give the notes' "rounds" (see [`SimRun`]).

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

/// For each id, the indices (ascending) of the ids an ideal routing table around it holds:
/// exactly what [`RoutingTable::heard_from`] would keep if offered every other id in index
/// order with [`Contact::Response`].
///
/// Why that set: the last bucket only ever splits, so it ends as the deepest prefix `L` that
/// at most [`K`] others share with us, and holds all of them; every bucket `j < L` keeps the
/// first [`K`] arrivals (lowest indices) among the ids sharing exactly `j` bits. Offering a
/// table only this set, in index order, drops nothing and leaves the same entries (it may split
/// fewer times when its last buckets would be empty).
///
/// With the ids sorted, "sharing exactly `j` bits with x" is one contiguous range (x's prefix
/// of `j` bits, then the other bit), and a segment tree over the sorted order gives the [`K`]
/// lowest indices in any range by merging O(log n) lists.
pub fn ideal_tables(ids: &[Id]) -> Vec<Vec<u32>> {
    let n = ids.len();
    let mut order: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
    order.truncate(n);
    order.sort_by_key(|&i| ids[i as usize]);
    let sorted: Vec<Id> = order.iter().map(|&i| ids[i as usize]).collect();
    let tree = LowestIndices::new(&order);
    let mut out = vec![Vec::new(); n];
    for (pos, &me) in order.iter().enumerate() {
        let id = sorted[pos];
        let mut members = Vec::new();
        // [lo, hi): the sorted ids sharing at least `j` bits with ours.
        let (mut lo, mut hi) = (0, n);
        for j in 0..crate::routing::ID_BITS {
            if hi - lo - 1 <= K {
                members.extend((lo..hi).filter(|&p| p != pos).map(|p| order[p]));
                break;
            }
            // Split [lo, hi) by bit j: ids with the bit clear sort first.
            let mid = lo + sorted[lo..hi].partition_point(|other| !bit(other, j));
            let (own, sibling) = if bit(&id, j) {
                ((mid, hi), (lo, mid))
            } else {
                ((lo, mid), (mid, hi))
            };
            members.extend(tree.lowest(sibling.0, sibling.1));
            (lo, hi) = own;
        }
        members.sort_unstable();
        if let Some(slot) = out.get_mut(me as usize) {
            *slot = members;
        }
    }
    out
}

fn bit(id: &Id, i: usize) -> bool {
    id.0[i / 8] & (0x80 >> (i % 8)) != 0
}

/// A segment tree over positions holding, per segment, the [`K`] lowest values in it.
struct LowestIndices {
    size: usize,
    nodes: Vec<Vec<u32>>,
}

impl LowestIndices {
    fn new(values: &[u32]) -> Self {
        let size = values.len().next_power_of_two().max(1);
        let mut nodes = vec![Vec::new(); 2 * size];
        for (i, v) in values.iter().enumerate() {
            nodes[size + i] = vec![*v];
        }
        for i in (1..size).rev() {
            nodes[i] = merge_lowest(&nodes[2 * i], &nodes[2 * i + 1]);
        }
        LowestIndices { size, nodes }
    }

    /// The K lowest values at positions [lo, hi).
    fn lowest(&self, lo: usize, hi: usize) -> Vec<u32> {
        let mut acc = Vec::new();
        let (mut l, mut r) = (lo + self.size, hi + self.size);
        while l < r {
            if l % 2 == 1 {
                acc = merge_lowest(&acc, &self.nodes[l]);
                l += 1;
            }
            if r % 2 == 1 {
                r -= 1;
                acc = merge_lowest(&acc, &self.nodes[r]);
            }
            l /= 2;
            r /= 2;
        }
        acc
    }
}

fn merge_lowest(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(K);
    let (mut i, mut j) = (0, 0);
    while out.len() < K {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x <= y => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}

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

/// The timeline of one simulated lookup ([`SimNetwork::run_traced`]).
///
/// Every request takes exactly one round trip ([`SIM_ROUND_TRIP`]) and new requests leave only
/// when an answer arrives (or a timeout fires), so a time after the start divided by the round
/// trip counts round trips on the critical path: the notes' "rounds" (section 6), comparable
/// with their strict α-round model even though natkit keeps α requests in flight continuously.
#[derive(Clone, Debug)]
pub struct SimRun {
    /// Simulated time at the start.
    pub started: Instant,
    /// Each answer: when it arrived and the answering node's id.
    pub answers: Vec<(Instant, Id)>,
    /// When the lookup was done.
    pub finished: Instant,
}

/// The round trip of the simulated network.
pub const SIM_ROUND_TRIP: Duration = SIM_LATENCY.saturating_mul(2);

impl SimRun {
    fn rounds_at(&self, t: Instant) -> u32 {
        let rtt = SIM_ROUND_TRIP.as_nanos();
        let n = t
            .saturating_duration_since(self.started)
            .as_nanos()
            .div_ceil(rtt);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Round trips until the lookup was done ("rounds to terminate").
    pub fn rounds_to_terminate(&self) -> u32 {
        self.rounds_at(self.finished)
    }

    /// Round trips until `id` answered ("rounds to closest" when `id` is the true closest), or
    /// `None` if it never did.
    pub fn rounds_to(&self, id: &Id) -> Option<u32> {
        self.answers
            .iter()
            .find(|(_, a)| a == id)
            .map(|(t, _)| self.rounds_at(*t))
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
        let ids: Vec<Id> = infos.iter().map(|n| n.id).collect();
        let members = ideal_tables(&ids);
        let nodes = infos
            .iter()
            .zip(members)
            .map(|(info, members)| {
                let mut table = RoutingTable::new(info.id, now);
                for j in members {
                    if let Some(other) = infos.get(j as usize) {
                        table.heard_from(*other, Contact::Response, now);
                    }
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
        self.run_traced(origin, lookup);
    }

    /// [`SimNetwork::run`], also recording when each answer arrived.
    pub fn run_traced(&mut self, origin: usize, lookup: &mut Lookup) -> SimRun {
        let mut trace = SimRun {
            started: self.now,
            answers: Vec::new(),
            finished: self.now,
        };
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
                    queue.push(Reverse((self.now + SIM_ROUND_TRIP, seq, to.addr)));
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
                                trace.answers.push((self.now, r.id));
                            }
                            _ => lookup.on_failure(from),
                        }
                    }
                }
                (None, Some(d)) => self.now = d,
                (None, None) => break,
            }
        }
        trace.finished = self.now;
        trace
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables the sort-based builder gives hold exactly what offering every node, in index
    /// order, leaves in a table (the O(n²) construction it replaces).
    #[test]
    fn ideal_tables_match_offering_every_node() {
        let now = Instant::now();
        for (n, seed) in [(1, 1), (2, 2), (9, 3), (10, 4), (300, 5), (1000, 6)] {
            let mut rng = SplitMix(seed);
            let infos: Vec<NodeInfo> = (0..n)
                .map(|i| NodeInfo {
                    id: rng.id(),
                    addr: addr_of(i),
                })
                .collect();
            let ids: Vec<Id> = infos.iter().map(|i| i.id).collect();
            let fast = ideal_tables(&ids);
            for (i, info) in infos.iter().enumerate() {
                let mut table = RoutingTable::new(info.id, now);
                for other in &infos {
                    table.heard_from(*other, Contact::Response, now);
                }
                let mut slow: Vec<u32> = table
                    .entries()
                    .filter_map(|e| infos.iter().position(|o| o.id == e.node.id))
                    .map(|p| p as u32)
                    .collect();
                slow.sort_unstable();
                assert_eq!(fast[i], slow, "n={n} node {i}");
            }
        }
    }

    #[test]
    fn traced_rounds_count_round_trips() {
        let mut net = SimNetwork::new(500, 7, 0);
        let target = SplitMix(8).id();
        let mut l = net.lookup(3, target, LookupKind::FindNode).expect("node");
        let run = net.run_traced(3, &mut l);
        let truth = net.true_closest(&target, 3).expect("nodes");
        let to_closest = run.rounds_to(&truth.id).expect("the closest answered");
        assert!(to_closest >= 1 && to_closest <= run.rounds_to_terminate());
        // Nothing is learnt faster than one hop per round trip.
        assert!(run.rounds_to_terminate() >= l.stats().rounds);
        assert_eq!(run.answers.len(), l.stats().responses as usize);
    }
}
