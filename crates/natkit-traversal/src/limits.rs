//! Abuse limits for the requests that make us dial someone: dial-backs
//! (reachability checks for others) and hole punches answered as responder.
//!
//! Such a request names addresses, and we send SYNs there: without limits a
//! node would be a free SYN reflector. The [`Limiter`] holds sans-I/O token
//! buckets:
//!
//! - per **requester node id** ([`LimitsConfig::node_burst`] requests, then
//!   one per [`LimitsConfig::node_refill`]): [`Limiter::admit_request`], once
//!   per new request (a new punch correlation id or dial-back);
//! - per **target** ([`target_key`]: the IPv4 address, or the IPv6 `/64`
//!   since one host owns a whole `/64`) and **overall**, one token per SYN:
//!   [`Limiter::admit_dials`], once per dial batch (each
//!   [`Output::Dial`](crate::punch::Output::Dial)), which also cuts a batch
//!   to [`LimitsConfig::max_dials_per_request`].
//!
//! So one request yields at most `max_dials_per_request` SYNs per batch, and
//! any target gets at most [`LimitsConfig::target_burst`] SYNs however many
//! requesters ask.
//!
//! The tables are bounded ([`MAX_TRACKED_NODES`], [`MAX_TRACKED_TARGETS`]).
//! When one is full, entries whose bucket has refilled completely are dropped
//! (they hold no information: a fresh bucket is full too). If none has, the
//! new key is refused: failing closed means a flood of fresh node ids can
//! delay honest requests for a while, but never makes us send more SYNs.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_identity::NodeId;

use crate::punch::MAX_DIALS_PER_ATTEMPT;

/// Requests one node id may make at once (a punch and its retry from a
/// second plan, plus dial-backs).
pub const NODE_BURST: u32 = 4;
/// One more request per node id per this interval (sustained: 4 a minute).
pub const NODE_REFILL: Duration = Duration::from_secs(15);
/// SYNs toward one target IP (or IPv6 `/64`) at once: four requests' worth.
/// Requests are cut to their sender's own IP, so the target is the requester's
/// IP, which a carrier-grade NAT shares among many users.
pub const TARGET_BURST: u32 = 16;
/// One more SYN toward a target per this interval (sustained: 4 a second).
pub const TARGET_REFILL: Duration = Duration::from_millis(250);
/// SYNs toward anyone at once.
pub const GLOBAL_BURST: u32 = 64;
/// One more SYN overall per this interval (sustained: 20 per second).
pub const GLOBAL_REFILL: Duration = Duration::from_millis(50);
/// Most requester node ids tracked (a bucket is about 50 bytes).
pub const MAX_TRACKED_NODES: usize = 1024;
/// Most targets tracked.
pub const MAX_TRACKED_TARGETS: usize = 1024;

/// Knobs of the limiter; [`Default`] uses the constants of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Requests per node id at once ([`NODE_BURST`]).
    pub node_burst: u32,
    /// Refill interval per node id ([`NODE_REFILL`]).
    pub node_refill: Duration,
    /// SYNs per target at once ([`TARGET_BURST`]).
    pub target_burst: u32,
    /// Refill interval per target ([`TARGET_REFILL`]).
    pub target_refill: Duration,
    /// SYNs overall at once ([`GLOBAL_BURST`]).
    pub global_burst: u32,
    /// Overall refill interval ([`GLOBAL_REFILL`]).
    pub global_refill: Duration,
    /// Most SYNs per dial batch ([`MAX_DIALS_PER_ATTEMPT`]).
    pub max_dials_per_request: usize,
    /// Most node ids tracked ([`MAX_TRACKED_NODES`]).
    pub max_nodes: usize,
    /// Most targets tracked ([`MAX_TRACKED_TARGETS`]).
    pub max_targets: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            node_burst: NODE_BURST,
            node_refill: NODE_REFILL,
            target_burst: TARGET_BURST,
            target_refill: TARGET_REFILL,
            global_burst: GLOBAL_BURST,
            global_refill: GLOBAL_REFILL,
            max_dials_per_request: MAX_DIALS_PER_ATTEMPT,
            max_nodes: MAX_TRACKED_NODES,
            max_targets: MAX_TRACKED_TARGETS,
        }
    }
}

/// A request refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The node made too many requests lately.
    #[error("node {0} made too many dial requests; try again later")]
    NodeRateLimited(NodeId),
    /// Too many nodes are making requests at once.
    #[error("too many nodes are making dial requests; try again later")]
    NodeTableFull,
}

/// Why one address of a dial batch was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DialRefusal {
    /// Beyond [`LimitsConfig::max_dials_per_request`] in one batch.
    #[error("more addresses than one request may dial")]
    TooManyInRequest,
    /// The target got its share of SYNs lately.
    #[error("the target got too many dials lately")]
    TargetRateLimited,
    /// Too many targets are being dialed at once.
    #[error("too many targets are being dialed")]
    TargetTableFull,
    /// The overall SYN budget is spent.
    #[error("too many dials overall")]
    GlobalRateLimited,
}

/// The outcome of [`Limiter::admit_dials`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admitted {
    /// Dial these.
    pub allowed: Vec<SocketAddr>,
    /// Do not dial these, and why.
    pub refused: Vec<(SocketAddr, DialRefusal)>,
}

/// The key a target is limited by: an IPv4 address itself, an IPv6 address
/// cut to its `/64`.
pub fn target_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mask = u128::MAX << 64;
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// A token bucket without a clock: `capacity` tokens, one more every
/// `interval`, time given by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    capacity: u32,
    interval: Duration,
    tokens: u32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A zero `interval` means "always full".
    pub fn new(capacity: u32, interval: Duration, now: Instant) -> Self {
        TokenBucket {
            capacity,
            interval,
            tokens: capacity,
            last: now,
        }
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: u32, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Whether the bucket has refilled completely (it then says nothing a
    /// fresh bucket would not).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.available(now) >= self.capacity
    }

    fn refill(&mut self, now: Instant) {
        if self.interval.is_zero() {
            self.tokens = self.capacity;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last);
        let steps = elapsed.as_nanos() / self.interval.as_nanos();
        let missing = self.capacity - self.tokens;
        let add = u32::try_from(steps).unwrap_or(u32::MAX).min(missing);
        self.tokens += add;
        if self.tokens == self.capacity {
            self.last = now;
        } else {
            self.last += self.interval * add;
        }
    }
}

/// Buckets per key, at most `max` of them.
#[derive(Debug, Clone)]
struct BucketTable<K> {
    buckets: HashMap<K, TokenBucket>,
    max: usize,
    capacity: u32,
    interval: Duration,
}

impl<K: Hash + Eq + Copy> BucketTable<K> {
    fn new(max: usize, capacity: u32, interval: Duration) -> Self {
        BucketTable {
            buckets: HashMap::new(),
            max,
            capacity,
            interval,
        }
    }

    /// The key's bucket; `None` when the table is full of busy buckets.
    fn bucket(&mut self, key: K, now: Instant) -> Option<&mut TokenBucket> {
        if !self.buckets.contains_key(&key) {
            if self.buckets.len() >= self.max {
                self.prune(now);
            }
            if self.buckets.len() >= self.max {
                return None;
            }
            let fresh = TokenBucket::new(self.capacity, self.interval, now);
            self.buckets.insert(key, fresh);
        }
        self.buckets.get_mut(&key)
    }

    fn available(&mut self, key: K, now: Instant) -> Option<u32> {
        if let Some(b) = self.buckets.get_mut(&key) {
            return Some(b.available(now));
        }
        if self.buckets.len() >= self.max {
            self.prune(now);
        }
        (self.buckets.len() < self.max).then_some(self.capacity)
    }

    fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }
}

/// The abuse limiter. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Limiter {
    max_dials: usize,
    nodes: BucketTable<NodeId>,
    targets: BucketTable<IpAddr>,
    global: TokenBucket,
}

impl Limiter {
    /// A limiter with full buckets at `now`.
    pub fn new(config: LimitsConfig, now: Instant) -> Self {
        Limiter {
            max_dials: config.max_dials_per_request,
            nodes: BucketTable::new(config.max_nodes, config.node_burst, config.node_refill),
            targets: BucketTable::new(
                config.max_targets,
                config.target_burst,
                config.target_refill,
            ),
            global: TokenBucket::new(config.global_burst, config.global_refill, now),
        }
    }

    /// Admits (or refuses) a new request by `requester`: a dial-back or a
    /// punch `Connect` with a new correlation id. Takes one token.
    pub fn admit_request(&mut self, requester: &NodeId, now: Instant) -> Result<(), Refused> {
        let bucket = self
            .nodes
            .bucket(*requester, now)
            .ok_or(Refused::NodeTableFull)?;
        if bucket.try_take(1, now) {
            Ok(())
        } else {
            Err(Refused::NodeRateLimited(*requester))
        }
    }

    /// Admits the addresses of one dial batch: at most
    /// [`LimitsConfig::max_dials_per_request`], each within its target's and
    /// the overall budget. Takes one target token and one overall token per
    /// allowed address.
    pub fn admit_dials(&mut self, addrs: &[SocketAddr], now: Instant) -> Admitted {
        let mut out = Admitted::default();
        for (i, addr) in addrs.iter().enumerate() {
            match self.admit_one(i, *addr, now) {
                Ok(()) => out.allowed.push(*addr),
                Err(why) => out.refused.push((*addr, why)),
            }
        }
        out
    }

    /// Drops buckets that have refilled completely (call now and then, e.g.
    /// every minute; the tables also prune themselves when full).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.nodes.prune(now);
        self.targets.prune(now);
    }

    /// Node ids and targets tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        (self.nodes.buckets.len(), self.targets.buckets.len())
    }

    fn admit_one(
        &mut self,
        index: usize,
        addr: SocketAddr,
        now: Instant,
    ) -> Result<(), DialRefusal> {
        if index >= self.max_dials {
            return Err(DialRefusal::TooManyInRequest);
        }
        let key = target_key(addr.ip());
        match self.targets.available(key, now) {
            None => return Err(DialRefusal::TargetTableFull),
            Some(0) => return Err(DialRefusal::TargetRateLimited),
            Some(_) => {}
        }
        if !self.global.try_take(1, now) {
            return Err(DialRefusal::GlobalRateLimited);
        }
        // `available` said there is room and a token.
        let taken = self
            .targets
            .bucket(key, now)
            .is_some_and(|b| b.try_take(1, now));
        if taken {
            Ok(())
        } else {
            Err(DialRefusal::TargetTableFull)
        }
    }
}

#[cfg(test)]
mod tests;
