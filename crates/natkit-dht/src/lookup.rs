//! Iterative lookups (BEP 5 / Kademlia), sans-I/O.
//!
//! A [`Lookup`] keeps the candidates it knows sorted by distance to the target and keeps
//! [`ALPHA`] requests in flight at all times (libtorrent's "aggressive" mode, not rounds): as
//! soon as one answers or times out, the next closest unqueried candidate among the [`K`]
//! closest is asked. It ends when the [`K`] closest candidates that have not failed have all
//! answered. Per-request timeouts follow the observed round-trip time ([`RttEstimator`]).
//!
//! The driver asks [`Lookup::next_queries`] whom to query, sends [`Lookup::query`] to them,
//! and reports answers ([`Lookup::on_response`]), errors ([`Lookup::on_failure`]) and the
//! passing of time ([`Lookup::expire`], [`Lookup::next_deadline`]).
//!
//! The same machine serves `find_node`, `get_peers` and BEP 44 `get` (immutable items are
//! checked against the target, mutable ones by signature and target, and the highest `seq`
//! wins). A `put` is a `get` lookup followed by a `put` to [`Lookup::closest_with_tokens`].

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::bencode::Value;
use crate::bep44::{self, MutableItem};
use crate::id::{Id, NodeInfo};
use crate::krpc::{Query, Response};
pub use crate::routing::K;

/// Requests kept in flight per lookup (Kademlia's α).
pub const ALPHA: usize = 3;

/// Per-request timeout before any round-trip time has been measured.
pub const INITIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Shortest per-request timeout, whatever the measured round-trip time: a node that is slow
/// to be scheduled (a busy machine, a loaded tokio runtime) should not be declared dead after a
/// few milliseconds, and a late answer is still used.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(250);

/// Longest per-request timeout (`mainline`'s fixed timeout).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(2);

/// Most candidates a lookup remembers; farther ones beyond this are forgotten. Only the [`K`]
/// closest ever get queried, so a few hundred leave ample slack for failures.
pub const MAX_CANDIDATES: usize = 256;

/// Most distinct peers a `get_peers` lookup collects.
pub const MAX_LOOKUP_PEERS: usize = 500;

/// A smoothed round-trip-time estimate (RFC 6298's estimator) giving request timeouts of
/// `srtt + 4 · rttvar`, clamped to [`MIN_TIMEOUT`, `MAX_TIMEOUT`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// Records one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The timeout for the next request.
    pub fn timeout(&self) -> Duration {
        match self.srtt {
            None => INITIAL_TIMEOUT,
            Some(srtt) => (srtt + self.rttvar * 4).clamp(MIN_TIMEOUT, MAX_TIMEOUT),
        }
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

/// What a lookup is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupKind {
    /// `find_node`: the closest nodes.
    FindNode,
    /// `get_peers`: peers for the info-hash, and the closest nodes with tokens for announcing.
    GetPeers,
    /// BEP 44 `get` of an immutable item (the target is SHA-1 of its value).
    GetImmutable,
    /// BEP 44 `get` of a mutable item stored under `target = SHA-1(k ‖ salt)`.
    GetMutable {
        /// The salt (needed to verify the signature; responses do not carry it).
        salt: Vec<u8>,
        /// Only items with a `seq` above this are wanted.
        more_recent_than: Option<i64>,
    },
}

/// Where a candidate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandidateState {
    /// Known, not asked yet.
    Pending,
    /// Asked at `sent`; failed if no answer by `deadline`.
    InFlight {
        /// When the query left.
        sent: Instant,
        /// When it times out.
        deadline: Instant,
    },
    /// Answered.
    Answered,
    /// Timed out or answered with an error.
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    node: NodeInfo,
    state: CandidateState,
    token: Option<Vec<u8>>,
    /// 0 for the seeds, n + 1 for nodes learnt from a node at hop n.
    hop: u32,
}

/// Counters for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Queries sent.
    pub queries: u32,
    /// Answers received.
    pub responses: u32,
    /// Requests that timed out.
    pub timeouts: u32,
    /// Error replies.
    pub errors: u32,
    /// Rounds: 1 + the largest hop count of an answering node (seeds are hop 0).
    pub rounds: u32,
}

/// One iterative lookup.
#[derive(Clone, Debug)]
pub struct Lookup {
    own: Id,
    target: Id,
    kind: LookupKind,
    candidates: Vec<Candidate>,
    rtt: RttEstimator,
    stats: LookupStats,
    peers: Vec<SocketAddr>,
    immutable: Option<Value>,
    mutable: Option<MutableItem>,
}

impl Lookup {
    /// A lookup by the node `own` for `target`, starting from `seeds` (usually the routing
    /// table's closest), with timeouts from `rtt`. `own` is never queried.
    pub fn new(
        own: Id,
        target: Id,
        kind: LookupKind,
        seeds: &[NodeInfo],
        rtt: RttEstimator,
    ) -> Self {
        let mut l = Lookup {
            own,
            target,
            kind,
            candidates: Vec::new(),
            rtt,
            stats: LookupStats::default(),
            peers: Vec::new(),
            immutable: None,
            mutable: None,
        };
        for s in seeds {
            l.add_candidate(*s, 0);
        }
        l
    }

    /// The target.
    pub fn target(&self) -> Id {
        self.target
    }

    /// The kind.
    pub fn kind(&self) -> &LookupKind {
        &self.kind
    }

    /// The query to send to each node [`Lookup::next_queries`] names.
    pub fn query(&self) -> Query {
        let own = self.own;
        match &self.kind {
            LookupKind::FindNode => Query::FindNode {
                id: own,
                target: self.target,
            },
            LookupKind::GetPeers => Query::GetPeers {
                id: own,
                info_hash: self.target,
            },
            LookupKind::GetImmutable => Query::Get {
                id: own,
                target: self.target,
                seq: None,
            },
            LookupKind::GetMutable {
                more_recent_than, ..
            } => Query::Get {
                id: own,
                target: self.target,
                seq: *more_recent_than,
            },
        }
    }

    fn add_candidate(&mut self, node: NodeInfo, hop: u32) {
        // One candidate per address: a node that answered under another id than others list
        // it with (it changed id, e.g. to a BEP 42 one) must not come back under the old id,
        // or the lookup would ask it again and again.
        if node.id == self.own || self.candidates.iter().any(|c| c.node.addr == node.addr) {
            return;
        }
        let d = self.target.distance(&node.id);
        let pos = match self
            .candidates
            .binary_search_by_key(&d, |c| self.target.distance(&c.node.id))
        {
            Ok(_) => return, // already known
            Err(pos) => pos,
        };
        if pos >= MAX_CANDIDATES {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                node,
                state: CandidateState::Pending,
                token: None,
                hop,
            },
        );
        if self.candidates.len() > MAX_CANDIDATES {
            self.candidates.truncate(MAX_CANDIDATES);
        }
    }

    /// The K closest candidates that have not failed.
    fn window(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates
            .iter()
            .filter(|c| c.state != CandidateState::Failed)
            .take(K)
    }

    /// Fails requests whose deadline passed; returns the nodes that timed out (for the routing
    /// table).
    pub fn expire(&mut self, now: Instant) -> Vec<NodeInfo> {
        let mut out = Vec::new();
        for c in &mut self.candidates {
            if let CandidateState::InFlight { deadline, .. } = c.state
                && deadline <= now
            {
                c.state = CandidateState::Failed;
                self.stats.timeouts += 1;
                out.push(c.node);
            }
        }
        out
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| matches!(c.state, CandidateState::InFlight { .. }))
            .count()
    }

    /// Nodes to query now (marked in flight), keeping [`ALPHA`] requests outstanding.
    pub fn next_queries(&mut self, now: Instant) -> Vec<NodeInfo> {
        let mut budget = ALPHA.saturating_sub(self.in_flight());
        let deadline = now + self.rtt.timeout();
        let mut out = Vec::new();
        let mut seen = 0;
        for c in &mut self.candidates {
            if budget == 0 || seen == K {
                break;
            }
            match c.state {
                CandidateState::Failed => continue,
                CandidateState::Pending => {
                    c.state = CandidateState::InFlight {
                        sent: now,
                        deadline,
                    };
                    out.push(c.node);
                    budget -= 1;
                    self.stats.queries += 1;
                }
                _ => {}
            }
            seen += 1;
        }
        out
    }

    /// True when the [`K`] closest candidates that have not failed have all answered.
    pub fn is_done(&self) -> bool {
        self.window().all(|c| c.state == CandidateState::Answered)
    }

    /// The earliest in-flight deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .filter_map(|c| match c.state {
                CandidateState::InFlight { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    fn find_asked(&self, from: SocketAddrV4) -> Option<usize> {
        self.candidates.iter().position(|c| {
            c.node.addr == from
                && matches!(
                    c.state,
                    CandidateState::InFlight { .. } | CandidateState::Failed
                )
        })
    }

    /// Records an answer from `from`. Returns the measured round-trip time if it matched a
    /// request in flight (a late answer after a timeout is still used, without a sample).
    pub fn on_response(
        &mut self,
        from: SocketAddrV4,
        r: &Response,
        now: Instant,
    ) -> Option<Duration> {
        let i = self.find_asked(from)?;
        let c = &mut self.candidates[i];
        let sample = match c.state {
            CandidateState::InFlight { sent, .. } => Some(now.saturating_duration_since(sent)),
            _ => None,
        };
        let hop = c.hop;
        if c.node.id != r.id {
            // It answered under another id: forget the old one, keep what it is.
            self.candidates.remove(i);
            self.add_candidate(
                NodeInfo {
                    id: r.id,
                    addr: from,
                },
                hop,
            );
        }
        if let Some(c) = self
            .candidates
            .iter_mut()
            .find(|c| c.node.id == r.id && c.node.addr == from)
        {
            c.state = CandidateState::Answered;
            c.token = r.token.clone();
        }
        if let Some(s) = sample {
            self.rtt.sample(s);
        }
        self.stats.responses += 1;
        self.stats.rounds = self.stats.rounds.max(hop + 1);
        for n in r.nodes.iter().flatten() {
            self.add_candidate(*n, hop + 1);
        }
        self.take_values(r);
        sample
    }

    /// Takes the values our own node stores for the target (as an answer of our own server
    /// would carry them): when we are among the closest nodes, the item may be only here.
    pub fn absorb_local(&mut self, r: &Response) {
        self.take_values(r);
    }

    fn take_values(&mut self, r: &Response) {
        match &self.kind {
            LookupKind::FindNode => {}
            LookupKind::GetPeers => {
                for p in r.values.iter().flatten() {
                    if self.peers.len() < MAX_LOOKUP_PEERS && !self.peers.contains(p) {
                        self.peers.push(*p);
                    }
                }
            }
            LookupKind::GetImmutable => {
                if self.immutable.is_none()
                    && let Some(v) = &r.v
                    && bep44::immutable_target(v) == self.target
                {
                    self.immutable = Some(v.clone());
                }
            }
            LookupKind::GetMutable {
                salt,
                more_recent_than,
            } => {
                let (Some(k), Some(seq), Some(sig), Some(v)) = (r.k, r.seq, r.sig, &r.v) else {
                    return;
                };
                if more_recent_than.is_some_and(|m| seq <= m) {
                    return;
                }
                let item = MutableItem {
                    k,
                    salt: salt.clone(),
                    seq,
                    v: v.clone(),
                    sig,
                };
                if item.target() != self.target || item.verify().is_err() {
                    return;
                }
                if self.mutable.as_ref().is_none_or(|m| m.seq < item.seq) {
                    self.mutable = Some(item);
                }
            }
        }
    }

    /// Records an error reply (or an unusable answer) from `from`.
    pub fn on_failure(&mut self, from: SocketAddrV4) {
        if let Some(i) = self.find_asked(from) {
            self.candidates[i].state = CandidateState::Failed;
            self.stats.errors += 1;
        }
    }

    /// The closest nodes that answered, closest first, at most [`K`].
    pub fn closest_answered(&self) -> Vec<NodeInfo> {
        self.candidates
            .iter()
            .filter(|c| c.state == CandidateState::Answered)
            .take(K)
            .map(|c| c.node)
            .collect()
    }

    /// The closest nodes that answered with a write token, with it (where to `announce_peer`
    /// or `put`).
    pub fn closest_with_tokens(&self) -> Vec<(NodeInfo, Vec<u8>)> {
        self.candidates
            .iter()
            .filter(|c| c.state == CandidateState::Answered)
            .filter_map(|c| c.token.clone().map(|t| (c.node, t)))
            .take(K)
            .collect()
    }

    /// Peers collected by a `get_peers` lookup.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers
    }

    /// The immutable value found (verified against the target).
    pub fn immutable(&self) -> Option<&Value> {
        self.immutable.as_ref()
    }

    /// The mutable item with the highest `seq` found (verified).
    pub fn mutable(&self) -> Option<&MutableItem> {
        self.mutable.as_ref()
    }

    /// Counters so far.
    pub fn stats(&self) -> LookupStats {
        self.stats
    }
}

#[cfg(test)]
#[path = "lookup_tests.rs"]
mod tests;
