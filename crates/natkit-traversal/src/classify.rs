//! The NAT classifier: what our NAT does, from the addresses other nodes saw
//! us at.
//!
//! Every node we talk to can tell us the address our packets arrived from
//! (natkit's handshake and the DHT both carry it). Each such report is an
//! [`Observation`]. The [`Classifier`] keeps them as *votes* and turns them
//! into a [`Classification`] per [`Transport`]:
//!
//! - one vote per reporter node id and transport: a newer report replaces the
//!   older one;
//! - votes are counted per distinct reporter IP, so that many node ids on one
//!   machine count once (the latest vote from that IP is used);
//! - votes expire after [`ClassifierConfig::vote_ttl`] ([`VOTE_TTL`]): NAT
//!   mappings change (a router restarts, the lease of a mapping ends);
//! - at most [`ClassifierConfig::max_votes`] ([`MAX_VOTES`]) votes per
//!   transport are kept; a new reporter evicts the oldest vote;
//! - reporters on our own LAN (see [`crate::plan::same_lan`]) and on loopback
//!   are refused: they see us without the NAT in between.
//!
//! UDP and TCP are classified separately: routers often treat them
//! differently, and natkit punches TCP.
//!
//! # Rules
//! Only the votes for the *primary local port* are compared: the local port
//! with the most reporter IPs (ties: the most recent). natkit dials with port
//! reuse from its listening port, so that is the port whose mapping matters;
//! votes for other ports are kept as evidence. With `n` reporter IPs for that
//! port and the most common observed address seen by `top` of them:
//!
//! 1. `n < min_reporter_ips` ([`MIN_REPORTER_IPS`]): [`NatClass::Unknown`],
//!    saying how many more reporters are needed.
//! 2. `top >= min_reporter_ips` and `4 * top >= 3 * n` (a three-quarter
//!    majority, so one lying or stale reporter does not flip the class):
//!    [`NatClass::Open`] when that address is one of our own addresses with the
//!    local port, else [`NatClass::Consistent`], port-preserving when its port
//!    is the local port.
//! 3. All votes are from one external IP and, in the order they were made,
//!    each port is the previous plus the same `delta` with
//!    `1 <= delta <= MAX_INCREMENT_DELTA`: [`NatClass::Incrementing`].
//! 4. Otherwise [`NatClass::Random`].
//!
//! Reachability (whether unsolicited inbound TCP connections reach us) is a
//! separate input: dial-back results ([`Classifier::dial_back`]), one per
//! reporter, counted per reporter IP, expiring like votes.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_identity::NodeId;
use natkit_unl::{NatType, NodeType};

use crate::plan::same_lan;

/// How long a vote (and a dial-back result) counts. NAT mappings of idle
/// flows are forgotten within minutes; routers restart. Ten minutes keeps
/// enough votes from a node's normal traffic while letting a change show.
pub const VOTE_TTL: Duration = Duration::from_secs(10 * 60);

/// Most votes kept per transport (and most dial-back results). Far more than
/// the classification needs, small enough that a flood of reporters costs
/// little memory.
pub const MAX_VOTES: usize = 32;

/// Distinct reporter IPs needed before a class is given (hyperdht uses 3 hits,
/// go-libp2p 4; 3 is also the least that shows a constant port delta).
pub const MIN_REPORTER_IPS: usize = 3;

/// Dial-back results from distinct IPs needed before reachability is decided.
pub const MIN_DIAL_BACK_IPS: usize = 2;

/// Largest port step taken as an incrementing NAT rather than a random one.
/// Sequential allocators step by 1 or 2; other traffic through the NAT between
/// our flows makes the steps a little larger.
pub const MAX_INCREMENT_DELTA: u16 = 16;

/// A transport whose mappings are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP (the DHT socket).
    Udp,
    /// TCP (natkit connections; what hole punching uses).
    Tcp,
}

impl Transport {
    fn index(self) -> usize {
        match self {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// One report of the address a node saw us at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The node that saw us.
    pub reporter: NodeId,
    /// The IP the report came from (the reporter's address as we see it).
    pub reporter_ip: IpAddr,
    /// Which transport the observed flow used.
    pub transport: Transport,
    /// Our local port of that flow.
    pub local_port: u16,
    /// The address the reporter saw the flow come from.
    pub observed: SocketAddr,
    /// When the report arrived.
    pub at: Instant,
}

/// Why an observation was not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The observed address or the local port is 0.
    #[error("observation from {reporter} has port 0")]
    ZeroPort {
        /// The reporter.
        reporter: NodeId,
    },
    /// The reporter is on loopback or on our own LAN: it sees us without the
    /// NAT in between, so its report says nothing about the NAT.
    #[error(
        "reporter {reporter} at {ip} is on our own network; its report says nothing about the NAT"
    )]
    LocalReporter {
        /// The reporter.
        reporter: NodeId,
        /// Its IP.
        ip: IpAddr,
    },
}

/// Knobs of the classifier; [`Default`] uses the constants of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierConfig {
    /// How long a vote counts ([`VOTE_TTL`]).
    pub vote_ttl: Duration,
    /// Most votes kept per transport ([`MAX_VOTES`]).
    pub max_votes: usize,
    /// Reporter IPs needed for a class ([`MIN_REPORTER_IPS`]).
    pub min_reporter_ips: usize,
    /// Dial-back IPs needed for reachability ([`MIN_DIAL_BACK_IPS`]).
    pub min_dial_back_ips: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            vote_ttl: VOTE_TTL,
            max_votes: MAX_VOTES,
            min_reporter_ips: MIN_REPORTER_IPS,
            min_dial_back_ips: MIN_DIAL_BACK_IPS,
        }
    }
}

/// What our NAT does on one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatClass {
    /// Too little evidence.
    Unknown {
        /// Reporter IPs counted so far.
        have: usize,
        /// Reporter IPs needed.
        need: usize,
    },
    /// No NAT: reporters see one of our own addresses.
    Open,
    /// The same external address toward every reporter (endpoint-independent
    /// mapping).
    Consistent {
        /// The external port is the local port.
        port_preserving: bool,
    },
    /// Each new mapping's port is the previous one plus `delta`.
    Incrementing {
        /// The step.
        delta: u16,
    },
    /// A new, unpredictable port per destination (symmetric NAT).
    Random,
}

impl NatClass {
    /// The UNL's NAT type for this class.
    pub fn nat_type(self) -> NatType {
        match self {
            NatClass::Unknown { .. } => NatType::Unknown,
            NatClass::Open => NatType::Open,
            NatClass::Consistent { .. } => NatType::Consistent,
            // MAX_INCREMENT_DELTA fits in an i16.
            NatClass::Incrementing { delta } => NatType::Incrementing {
                delta: i16::try_from(delta).unwrap_or(i16::MAX),
            },
            NatClass::Random => NatType::Random,
        }
    }
}

impl fmt::Display for NatClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatClass::Unknown { have, need } => {
                write!(f, "unknown ({have} of {need} reporters needed)")
            }
            NatClass::Open => f.write_str("open (no NAT)"),
            NatClass::Consistent {
                port_preserving: true,
            } => f.write_str("consistent, port-preserving"),
            NatClass::Consistent {
                port_preserving: false,
            } => f.write_str("consistent"),
            NatClass::Incrementing { delta } => write!(f, "incrementing by {delta}"),
            NatClass::Random => f.write_str("random (symmetric)"),
        }
    }
}

/// Whether unsolicited inbound connections reach us, from dial-back results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reachability {
    /// Fewer than [`ClassifierConfig::min_dial_back_ips`] results.
    Unknown,
    /// Most reporter IPs reached us.
    Reachable,
    /// At least half of the reporter IPs could not reach us.
    Unreachable,
}

/// One vote as evidence, for printing (`natkit showtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    /// Who saw us.
    pub reporter: NodeId,
    /// From which IP.
    pub reporter_ip: IpAddr,
    /// Our local port of the flow.
    pub local_port: u16,
    /// Where the reporter saw us.
    pub observed: SocketAddr,
    /// When.
    pub at: Instant,
    /// Whether it was compared (the latest vote of its IP, for the primary
    /// local port).
    pub counted: bool,
}

/// The class of one transport and the evidence behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The transport.
    pub transport: Transport,
    /// The class.
    pub class: NatClass,
    /// The local port whose votes were compared, if any.
    pub local_port: Option<u16>,
    /// The most common observed address among the compared votes.
    pub external: Option<SocketAddr>,
    /// Every unexpired vote, oldest first.
    pub votes: Vec<Vote>,
}

#[derive(Debug, Clone, Copy)]
struct DialBack {
    ip: IpAddr,
    ok: bool,
    at: Instant,
}

/// The classifier. Feed it with [`observe`](Classifier::observe) and
/// [`dial_back`](Classifier::dial_back); read it with
/// [`classify`](Classifier::classify) and [`reachability`](Classifier::reachability).
#[derive(Debug, Clone)]
pub struct Classifier {
    config: ClassifierConfig,
    local_ips: Vec<IpAddr>,
    votes: [HashMap<NodeId, Observation>; 2],
    dial_backs: HashMap<NodeId, DialBack>,
}

impl Classifier {
    /// A classifier for a node whose interfaces have `local_ips`.
    pub fn new(config: ClassifierConfig, local_ips: Vec<IpAddr>) -> Self {
        Classifier {
            config,
            local_ips,
            votes: [HashMap::new(), HashMap::new()],
            dial_backs: HashMap::new(),
        }
    }

    /// Replaces our interface addresses (after a network change).
    pub fn set_local_ips(&mut self, local_ips: Vec<IpAddr>) {
        self.local_ips = local_ips;
    }

    /// Records a report. It replaces the reporter's previous vote on that
    /// transport.
    pub fn observe(&mut self, obs: Observation) -> Result<(), ClassifyError> {
        if obs.local_port == 0 || obs.observed.port() == 0 {
            return Err(ClassifyError::ZeroPort {
                reporter: obs.reporter,
            });
        }
        if self.is_local_reporter(obs.reporter_ip) {
            return Err(ClassifyError::LocalReporter {
                reporter: obs.reporter,
                ip: obs.reporter_ip,
            });
        }
        let max = self.config.max_votes;
        let votes = &mut self.votes[obs.transport.index()];
        if !votes.contains_key(&obs.reporter) && votes.len() >= max {
            evict_oldest(votes, |v| v.at);
        }
        votes.insert(obs.reporter, obs);
        Ok(())
    }

    /// Records a dial-back result: `reporter` (at `reporter_ip`) tried to open
    /// a connection to our listener and `succeeded` or not. A reporter on our
    /// own network is refused: it reaches us without crossing the NAT.
    pub fn dial_back(
        &mut self,
        reporter: NodeId,
        reporter_ip: IpAddr,
        succeeded: bool,
        at: Instant,
    ) -> Result<(), ClassifyError> {
        if self.is_local_reporter(reporter_ip) {
            return Err(ClassifyError::LocalReporter {
                reporter,
                ip: reporter_ip,
            });
        }
        if !self.dial_backs.contains_key(&reporter)
            && self.dial_backs.len() >= self.config.max_votes
        {
            evict_oldest(&mut self.dial_backs, |d| d.at);
        }
        let result = DialBack {
            ip: reporter_ip,
            ok: succeeded,
            at,
        };
        self.dial_backs.insert(reporter, result);
        Ok(())
    }

    /// Drops expired votes and dial-back results.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ttl = self.config.vote_ttl;
        for votes in &mut self.votes {
            votes.retain(|_, v| !expired(v.at, ttl, now));
        }
        self.dial_backs.retain(|_, d| !expired(d.at, ttl, now));
    }

    /// When the next vote or dial-back result expires (the class may change
    /// then).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let vote_times = self.votes.iter().flat_map(|v| v.values().map(|o| o.at));
        let dial_times = self.dial_backs.values().map(|d| d.at);
        vote_times
            .chain(dial_times)
            .min()
            .map(|t| t + self.config.vote_ttl)
    }

    /// The class of `transport` at `now`, with the evidence.
    pub fn classify(&self, transport: Transport, now: Instant) -> Classification {
        let mut live: Vec<Observation> = self.votes[transport.index()]
            .values()
            .filter(|v| !expired(v.at, self.config.vote_ttl, now))
            .copied()
            .collect();
        live.sort_by_key(|v| (v.at, *v.reporter.as_bytes()));
        let primary = primary_port(&live);
        let counted = counted_votes(&live, primary);
        let (class, external) = self.decide(&counted);
        let votes = live
            .iter()
            .map(|v| as_evidence(v, counted.iter().any(|c| c.reporter == v.reporter)))
            .collect();
        Classification {
            transport,
            class,
            local_port: primary,
            external,
            votes,
        }
    }

    /// Whether inbound connections reach us, from unexpired dial-back results
    /// (the latest per reporter IP).
    pub fn reachability(&self, now: Instant) -> Reachability {
        let mut latest: HashMap<IpAddr, DialBack> = HashMap::new();
        for d in self.dial_backs.values() {
            if expired(d.at, self.config.vote_ttl, now) {
                continue;
            }
            let entry = latest.entry(d.ip).or_insert(*d);
            if d.at > entry.at {
                *entry = *d;
            }
        }
        let ok = latest.values().filter(|d| d.ok).count();
        let failed = latest.len() - ok;
        if latest.len() < self.config.min_dial_back_ips {
            Reachability::Unknown
        } else if ok > failed {
            Reachability::Reachable
        } else {
            Reachability::Unreachable
        }
    }

    /// The node type to put in our UNL: reachable if dial-backs say so,
    /// otherwise from the TCP class.
    pub fn node_type(&self, now: Instant) -> NodeType {
        if self.reachability(now) == Reachability::Reachable {
            return NodeType::Reachable;
        }
        match self.classify(Transport::Tcp, now).class {
            NatClass::Unknown { .. } => NodeType::Unknown,
            NatClass::Random => NodeType::OutboundOnly,
            // A firewall without NAT lets a simultaneous open through.
            NatClass::Open | NatClass::Consistent { .. } | NatClass::Incrementing { .. } => {
                NodeType::HolePunch
            }
        }
    }

    fn is_local_reporter(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || ip.is_unspecified()
            || self.local_ips.iter().any(|l| *l == ip || same_lan(*l, ip))
    }

    fn decide(&self, counted: &[Observation]) -> (NatClass, Option<SocketAddr>) {
        let need = self.config.min_reporter_ips.max(1);
        let n = counted.len();
        let top = most_common(counted);
        if n < need {
            return (NatClass::Unknown { have: n, need }, top.map(|t| t.0));
        }
        if let (Some((addr, count)), Some(first)) = (top, counted.first())
            && count >= need
            && 4 * count >= 3 * n
        {
            return (self.stable_class(addr, first.local_port), Some(addr));
        }
        let class = match constant_delta(counted) {
            Some(delta) => NatClass::Incrementing { delta },
            None => NatClass::Random,
        };
        (class, top.map(|t| t.0))
    }

    fn stable_class(&self, addr: SocketAddr, local_port: u16) -> NatClass {
        let port_preserving = addr.port() == local_port;
        if port_preserving && self.local_ips.contains(&addr.ip()) {
            NatClass::Open
        } else {
            NatClass::Consistent { port_preserving }
        }
    }
}

fn expired(at: Instant, ttl: Duration, now: Instant) -> bool {
    now.saturating_duration_since(at) >= ttl
}

fn evict_oldest<V>(map: &mut HashMap<NodeId, V>, at: impl Fn(&V) -> Instant) {
    let oldest = map.iter().min_by_key(|(_, v)| at(v)).map(|(k, _)| *k);
    if let Some(k) = oldest {
        map.remove(&k);
    }
}

fn as_evidence(v: &Observation, counted: bool) -> Vote {
    Vote {
        reporter: v.reporter,
        reporter_ip: v.reporter_ip,
        local_port: v.local_port,
        observed: v.observed,
        at: v.at,
        counted,
    }
}

/// The local port with the most reporter IPs; ties go to the most recent vote.
/// `live` is sorted oldest first.
fn primary_port(live: &[Observation]) -> Option<u16> {
    let mut ips: HashMap<u16, Vec<IpAddr>> = HashMap::new();
    for v in live {
        let list = ips.entry(v.local_port).or_default();
        if !list.contains(&v.reporter_ip) {
            list.push(v.reporter_ip);
        }
    }
    let last_seen = |port: u16| live.iter().rposition(|v| v.local_port == port);
    ips.iter()
        .max_by_key(|(port, list)| (list.len(), last_seen(**port)))
        .map(|(port, _)| *port)
}

/// The latest vote of each reporter IP for `port`, oldest first.
fn counted_votes(live: &[Observation], port: Option<u16>) -> Vec<Observation> {
    let Some(port) = port else {
        return Vec::new();
    };
    let mut out: Vec<Observation> = Vec::new();
    for v in live.iter().filter(|v| v.local_port == port) {
        out.retain(|o| o.reporter_ip != v.reporter_ip);
        out.push(*v);
    }
    out
}

/// The most common observed address and how many votes name it (ties: the
/// most recent).
fn most_common(votes: &[Observation]) -> Option<(SocketAddr, usize)> {
    let mut best: Option<(SocketAddr, usize)> = None;
    for v in votes.iter().rev() {
        let count = votes.iter().filter(|o| o.observed == v.observed).count();
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((v.observed, count));
        }
    }
    best
}

/// The constant step between successive ports, if the votes (oldest first)
/// share one external IP and each port is the previous plus the same small
/// positive step.
fn constant_delta(votes: &[Observation]) -> Option<u16> {
    let first = votes.first()?;
    if votes.iter().any(|v| v.observed.ip() != first.observed.ip()) {
        return None;
    }
    let steps: Vec<i32> = votes
        .windows(2)
        .map(|w| i32::from(w[1].observed.port()) - i32::from(w[0].observed.port()))
        .collect();
    let step = *steps.first()?;
    let small = (1..=i32::from(MAX_INCREMENT_DELTA)).contains(&step);
    if small && steps.iter().all(|s| *s == step) {
        u16::try_from(step).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
