//! The connect planner: from our situation and the peer's UNL, the ordered
//! list of ways to open a TCP connection to it.
//!
//! [`plan`] is a pure function. The driver starts each [`Attempt`] at its
//! [`start_at`](Attempt::start_at) (happy-eyeballs staggering, one
//! [`ATTEMPT_STAGGER`] apart), lets the attempts race, keeps the first
//! connection that authenticates to the peer's key and cancels the rest; at
//! [`Plan::deadline`] it gives up.
//!
//! # Attempts, in order
//! 1. [`AttemptKind::Lan`]: each peer LAN address on one of our LANs
//!    ([`same_lan`]). Cheap, and harmless when the prefix is a coincidence
//!    (two homes both on `192.168.1.0/24`): the handshake checks the key.
//! 2. [`AttemptKind::Mapped`]: each address the peer mapped with UPnP,
//!    NAT-PMP or PCP, or configured by hand. A mapping forwards inbound
//!    connections whatever the NAT type.
//! 3. [`AttemptKind::Direct`]: each observed address, when the peer is
//!    reachable (node type `reachable`, or an `open` NAT with an unknown node
//!    type). For the second, unconfirmed kind (a firewall looks the same) a
//!    punch follows, no earlier than [`UNCONFIRMED_PUNCH_DELAY`].
//! 4. [`AttemptKind::Punch`] when both NAT types are known and punchable.
//! 5. [`AttemptKind::Reverse`]: when we are reachable (dial-backs or a port
//!    mapping) and the peer is not, ask it through its rendezvous points to
//!    dial us.
//! 6. [`AttemptKind::Punch`] when a NAT type is unknown: an unknown type never
//!    prevents a punch, it only puts it after the surer ways.
//!
//! A punch (TCP simultaneous open, see [`crate::punch`]) is planned when the
//! peer is not confirmed reachable, neither side has a `random` NAT (a new port per
//! destination: the lab shows that cone × symmetric and symmetric × symmetric
//! both fail without port guessing) and the peer does not call itself
//! `outbound-only`. An `incrementing` peer NAT adds predicted ports
//! ([`predict_ports`]). When nothing over the internet can work, the plan says
//! why ([`NoPath`]); a relay will fill that gap later.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_identity::NodeId;
use natkit_unl::{AddrSource, NatType, NodeType, Unl};

use crate::punch::PUNCH_TIMEOUT;

/// Delay between the starts of two successive attempts (Happy Eyeballs,
/// RFC 8305, recommends 250 ms; iroh uses the same). Long enough for a LAN or
/// direct connect to finish first, short enough that a dead address costs
/// little.
pub const ATTEMPT_STAGGER: Duration = Duration::from_millis(250);

/// Time given to one direct TCP connect and handshake (Lan, Mapped, Direct).
/// The kernel's SYN retransmits come at 1 s and 3 s, so 5 s allows two.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Time given to a reverse connect: the request travels through the DHT
/// (several hops, each a UDP round trip with retransmits), then the peer
/// dials us.
pub const REVERSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Earliest start of the hole punch planned after the direct attempts to a
/// peer that looks reachable (an `open` NAT) without having said so (node type
/// `unknown`): a firewall that drops unsolicited SYNs looks the same from
/// outside. The direct dial usually wins well before this, and the punch is
/// then never started (no message sent); behind a firewall it starts after
/// about one second instead of after the direct dial's timeout.
pub const UNCONFIRMED_PUNCH_DELAY: Duration = Duration::from_secs(1);

/// Predicted ports tried for a peer behind an incrementing NAT: other flows
/// through that NAT may take the next one or two ports first.
pub const PREDICTED_PORTS: usize = 3;

/// Most attempts in one plan (the UNL has at most 8 addresses; one reverse
/// connect, one punch).
pub const MAX_PLAN_ATTEMPTS: usize = 10;

/// Prefix length (bits) of an IPv4 LAN for [`same_lan`]: home and office
/// networks are `/24` or larger.
pub const LAN_PREFIX_V4_BITS: u32 = 24;

/// Prefix length (bits) of an IPv6 LAN for [`same_lan`]: every IPv6 subnet is
/// a `/64`.
pub const LAN_PREFIX_V6_BITS: u32 = 64;

/// One of the two ends of a connection, from our point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Us.
    Local,
    /// The peer.
    Remote,
}

/// What we know about ourselves when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSituation {
    /// Our node id.
    pub node_id: NodeId,
    /// Our LAN addresses (interface addresses with our listening port).
    pub lan: Vec<SocketAddr>,
    /// Our TCP NAT type (from [`crate::classify::NatClass::nat_type`]).
    pub nat: NatType,
    /// Dial-backs show that inbound connections reach us.
    pub reachable: bool,
    /// We hold a port mapping (UPnP, NAT-PMP or PCP) for our listener.
    pub port_mapped: bool,
}

/// How one attempt tries to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    /// Dial a LAN address of the peer that is on one of our LANs.
    Lan(SocketAddr),
    /// Dial an address the peer mapped or forwarded.
    Mapped(SocketAddr),
    /// Dial a public address of a reachable peer.
    Direct(SocketAddr),
    /// Ask the peer, through its rendezvous points (or the DHT when it lists
    /// none), to dial us.
    Reverse {
        /// The peer's rendezvous points, from its UNL.
        rendezvous: Vec<SocketAddr>,
    },
    /// Coordinate a TCP simultaneous open ([`crate::punch`]).
    Punch {
        /// The peer's public addresses from its UNL, predicted ports
        /// included; its punch `Connect` message brings fresher ones.
        peer_addrs: Vec<SocketAddr>,
        /// The peer's rendezvous points, for the punch messages.
        rendezvous: Vec<SocketAddr>,
    },
}

impl AttemptKind {
    /// How long the attempt may take once started.
    pub fn timeout(&self) -> Duration {
        match self {
            AttemptKind::Lan(_) | AttemptKind::Mapped(_) | AttemptKind::Direct(_) => DIAL_TIMEOUT,
            AttemptKind::Reverse { .. } => REVERSE_TIMEOUT,
            AttemptKind::Punch { .. } => PUNCH_TIMEOUT,
        }
    }

    fn addr(&self) -> Option<SocketAddr> {
        match self {
            AttemptKind::Lan(a) | AttemptKind::Mapped(a) | AttemptKind::Direct(a) => Some(*a),
            AttemptKind::Reverse { .. } | AttemptKind::Punch { .. } => None,
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attempt {
    /// What to do.
    pub kind: AttemptKind,
    /// Delay from the start of the plan.
    pub delay: Duration,
    /// When to start it (`now` given to [`plan`] plus `delay`).
    pub start_at: Instant,
    /// When to give it up.
    pub give_up_at: Instant,
}

/// Why no path over the internet can work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NoPath {
    /// The peer's node id is ours.
    #[error("the peer is this node")]
    SelfConnect,
    /// Both NATs pick a random port per destination: hole punching cannot
    /// work without port guessing; a relay is needed.
    #[error("both NATs are symmetric (random ports); a relay is needed")]
    BothRandom,
    /// One side's NAT picks a random port per destination and the other side
    /// is not reachable.
    #[error(
        "{side} NAT is symmetric (random ports) and the other side is not reachable; a relay is needed"
    )]
    RandomNat {
        /// Whose NAT.
        side: Side,
    },
    /// The peer says it can only dial out, and we are not reachable.
    #[error("the peer can only dial out and we are not reachable; a relay is needed")]
    PeerOutboundOnly,
    /// The peer is reachable but its UNL lists no address to dial.
    #[error("the peer's UNL lists no address to dial")]
    NoAddresses,
}

/// The ordered attempts for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Attempts in start order.
    pub attempts: Vec<Attempt>,
    /// When the whole connect gives up: the latest `give_up_at`.
    pub deadline: Instant,
    /// When only LAN attempts were planned: why nothing over the internet can
    /// work (a relay attempt belongs here later).
    pub internet: Option<NoPath>,
}

/// Plans the connection from `us` to `peer`, starting at `now`. An error only
/// when no attempt at all can be made.
pub fn plan(us: &LocalSituation, peer: &Unl, now: Instant) -> Result<Plan, NoPath> {
    if us.node_id == peer.node_id {
        return Err(NoPath::SelfConnect);
    }
    let mut kinds = lan_attempts(us, peer);
    let lan_count = kinds.len();
    kinds.extend(internet_attempts(us, peer));
    dedup_addrs(&mut kinds);
    kinds.truncate(MAX_PLAN_ATTEMPTS);
    let internet = if kinds.len() == lan_count {
        Some(no_path_reason(us, peer))
    } else {
        None
    };
    if kinds.is_empty() {
        return Err(internet.unwrap_or(NoPath::NoAddresses));
    }
    let punch_floor = if peer_reachable(peer) {
        UNCONFIRMED_PUNCH_DELAY
    } else {
        Duration::ZERO
    };
    Ok(schedule(kinds, internet, punch_floor, now))
}

/// Whether two addresses are on one LAN: same family, same first
/// [`LAN_PREFIX_V4_BITS`] (IPv4) or [`LAN_PREFIX_V6_BITS`] (IPv6) bits, and
/// neither is loopback, unspecified, multicast or IPv6 link-local (whose
/// prefix is the same on every link, and which need a scope to dial).
pub fn same_lan(a: IpAddr, b: IpAddr) -> bool {
    if !lan_candidate(a) || !lan_candidate(b) {
        return false;
    }
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX << (32 - LAN_PREFIX_V4_BITS);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX << (128 - LAN_PREFIX_V6_BITS);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// The next `count` ports an incrementing NAT will probably give after the
/// observed one (`observed.port() + k * delta` for `k = 1..=count`), skipping
/// those outside `1..=65535`.
pub fn predict_ports(observed: SocketAddr, delta: i16, count: usize) -> Vec<SocketAddr> {
    let base = i64::from(observed.port());
    (1..=count)
        .filter_map(|k| {
            let k = i64::try_from(k).ok()?;
            let port = u16::try_from(base + k * i64::from(delta)).ok()?;
            (port != 0).then(|| SocketAddr::new(observed.ip(), port))
        })
        .collect()
}

/// Which side is the Noise initiator on a socket both sides dialed (TCP
/// simultaneous open), from the two node ids alone; `None` for the same id.
///
/// Both ends reach the same answer: `noise_initiator(a, b) == Some(Local)`
/// exactly when `noise_initiator(b, a) == Some(Remote)`. With `lo`/`hi` the
/// two ids in byte order, `lo` initiates when the parity of the bits of
/// `lo XOR hi` is even. Depending on the pair (not "the smaller id always
/// initiates") spreads the role over the key space; the role has no security
/// meaning (the handshake authenticates both sides).
pub fn noise_initiator(local: &NodeId, remote: &NodeId) -> Option<Side> {
    if local == remote {
        return None;
    }
    let (lo, hi) = if local < remote {
        (local, remote)
    } else {
        (remote, local)
    };
    let ones: u32 = lo
        .as_bytes()
        .iter()
        .zip(hi.as_bytes())
        .map(|(x, y)| (x ^ y).count_ones())
        .sum();
    let lo_initiates = ones.is_multiple_of(2);
    let we_are_lo = local == lo;
    Some(if lo_initiates == we_are_lo {
        Side::Local
    } else {
        Side::Remote
    })
}

fn lan_candidate(ip: IpAddr) -> bool {
    let common = !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast();
    match ip {
        IpAddr::V4(v4) => common && !v4.is_broadcast(),
        IpAddr::V6(v6) => common && !v6.is_unicast_link_local(),
    }
}

fn peer_addrs(peer: &Unl, pick: impl Fn(AddrSource) -> bool) -> Vec<SocketAddr> {
    peer.addrs
        .iter()
        .filter(|c| pick(c.source) && c.addr.port() != 0)
        .map(|c| c.addr)
        .collect()
}

fn lan_attempts(us: &LocalSituation, peer: &Unl) -> Vec<AttemptKind> {
    peer_addrs(peer, |s| s == AddrSource::Lan)
        .into_iter()
        .filter(|a| us.lan.iter().any(|l| same_lan(l.ip(), a.ip())))
        .map(AttemptKind::Lan)
        .collect()
}

/// Reachable: says so, or has no NAT and did not say otherwise.
fn peer_reachable(peer: &Unl) -> bool {
    peer.node == NodeType::Reachable
        || (peer.node == NodeType::Unknown && peer.nat == NatType::Open)
}

fn punchable(nat: NatType) -> bool {
    nat != NatType::Random
}

/// Reachable by its own say-so (a dial-back confirmed it), not only by
/// having no NAT.
fn peer_confirmed_reachable(peer: &Unl) -> bool {
    peer.node == NodeType::Reachable
}

fn can_punch(us: &LocalSituation, peer: &Unl) -> bool {
    !peer_confirmed_reachable(peer)
        && punchable(us.nat)
        && punchable(peer.nat)
        && peer.node != NodeType::OutboundOnly
}

fn internet_attempts(us: &LocalSituation, peer: &Unl) -> Vec<AttemptKind> {
    let mut out: Vec<AttemptKind> = peer_addrs(peer, AddrSource::is_mapping)
        .into_iter()
        .map(AttemptKind::Mapped)
        .collect();
    if peer_reachable(peer) {
        out.extend(direct_addrs(peer).into_iter().map(AttemptKind::Direct));
    }
    let punch = can_punch(us, peer).then(|| punch_attempt(peer));
    if peer_reachable(peer) {
        // Open but unconfirmed: perhaps a firewall; the punch is the fallback
        // (scheduled no earlier than UNCONFIRMED_PUNCH_DELAY).
        out.extend(punch);
        return out;
    }
    let sure = us.nat != NatType::Unknown && peer.nat != NatType::Unknown;
    if sure {
        out.extend(punch.clone());
    }
    if us.reachable || us.port_mapped {
        out.push(AttemptKind::Reverse {
            rendezvous: peer.rendezvous.clone(),
        });
    }
    if !sure {
        out.extend(punch);
    }
    out
}

/// Observed addresses, and for a peer without NAT its interface addresses.
fn direct_addrs(peer: &Unl) -> Vec<SocketAddr> {
    let open = peer.nat == NatType::Open;
    peer_addrs(peer, |s| {
        s == AddrSource::Observed || (open && s == AddrSource::Lan)
    })
}

fn punch_attempt(peer: &Unl) -> AttemptKind {
    let observed = direct_addrs(peer);
    let mut peer_addrs = observed.clone();
    if let NatType::Incrementing { delta } = peer.nat {
        for o in &observed {
            peer_addrs.extend(predict_ports(*o, delta, PREDICTED_PORTS));
        }
    }
    AttemptKind::Punch {
        peer_addrs,
        rendezvous: peer.rendezvous.clone(),
    }
}

/// Keeps the first attempt for each address.
fn dedup_addrs(kinds: &mut Vec<AttemptKind>) {
    let mut seen: Vec<SocketAddr> = Vec::new();
    kinds.retain(|k| match k.addr() {
        Some(a) if seen.contains(&a) => false,
        Some(a) => {
            seen.push(a);
            true
        }
        None => true,
    });
}

fn no_path_reason(us: &LocalSituation, peer: &Unl) -> NoPath {
    let we_reachable = us.reachable || us.port_mapped;
    match (us.nat, peer.nat) {
        (NatType::Random, NatType::Random) => NoPath::BothRandom,
        (NatType::Random, _) if !peer_reachable(peer) => NoPath::RandomNat { side: Side::Local },
        (_, NatType::Random) if !we_reachable => NoPath::RandomNat { side: Side::Remote },
        _ if peer.node == NodeType::OutboundOnly && !we_reachable => NoPath::PeerOutboundOnly,
        _ => NoPath::NoAddresses,
    }
}

fn schedule(
    kinds: Vec<AttemptKind>,
    internet: Option<NoPath>,
    punch_floor: Duration,
    now: Instant,
) -> Plan {
    let attempts: Vec<Attempt> = kinds
        .into_iter()
        .zip(0u32..)
        .map(|(kind, i)| {
            let mut delay = ATTEMPT_STAGGER * i;
            if matches!(kind, AttemptKind::Punch { .. }) {
                delay = delay.max(punch_floor);
            }
            let start_at = now + delay;
            let give_up_at = start_at + kind.timeout();
            Attempt {
                kind,
                delay,
                start_at,
                give_up_at,
            }
        })
        .collect();
    let deadline = attempts.iter().map(|a| a.give_up_at).max().unwrap_or(now);
    Plan {
        attempts,
        deadline,
        internet,
    }
}

impl fmt::Display for Side {
    /// `our` or `the peer's`, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "our",
            Side::Remote => "the peer's",
        })
    }
}

impl fmt::Display for AttemptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptKind::Lan(a) => write!(f, "lan {a}"),
            AttemptKind::Mapped(a) => write!(f, "mapped {a}"),
            AttemptKind::Direct(a) => write!(f, "direct {a}"),
            AttemptKind::Reverse { .. } => f.write_str("reverse connect"),
            AttemptKind::Punch { peer_addrs, .. } => {
                write!(f, "hole punch ({} addresses)", peer_addrs.len())
            }
        }
    }
}

#[cfg(test)]
mod tests;
