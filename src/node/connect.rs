//! Running a connect plan's direct attempts (LAN, mapped, direct): staggered,
//! racing, the first authenticated connection wins. Reverse connects and hole
//! punching are the traversal driver's (not here yet): a plan that needs them
//! ends in [`ConnectError::NeedsTraversal`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use natkit_dht::dht::DhtError;
use natkit_identity::NodeId;
use natkit_net::{Connection, Net, NetError};
use natkit_traversal::plan::{ATTEMPT_STAGGER, Attempt, AttemptKind, NoPath, Plan};
use natkit_unl::{AddrSource, Unl};

use super::record::RecordError;

/// How a connection was made.
///
/// ```
/// use natkit::node::PathKind;
///
/// assert_eq!(PathKind::Lan.to_string(), "lan");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PathKind {
    /// Dialed a LAN address of the peer (one on one of our LANs, or a loopback
    /// address when both nodes run on this host).
    Lan,
    /// Dialed an address the peer mapped on its router or forwarded.
    Mapped,
    /// Dialed the public address of a reachable peer.
    Direct,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Lan => "lan",
            PathKind::Mapped => "mapped",
            PathKind::Direct => "direct",
        })
    }
}

/// The way a [`Node::connect`](crate::Node::connect) reached its peer.
///
/// ```
/// use std::time::Duration;
/// use natkit::node::{Path, PathKind};
///
/// let path = Path {
///     kind: PathKind::Direct,
///     addr: "127.0.0.1:50500".parse().unwrap(),
///     lookup: Some(Duration::from_millis(3)),
///     elapsed: Duration::from_millis(2),
/// };
/// assert_eq!(path.to_string(), "direct 127.0.0.1:50500");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Path {
    /// How.
    pub kind: PathKind,
    /// The peer address dialed.
    pub addr: SocketAddr,
    /// How long the DHT lookup of the peer's UNL took (`None` when connecting
    /// to a UNL).
    pub lookup: Option<Duration>,
    /// From the start of the plan to the authenticated connection (the lookup
    /// not included).
    pub elapsed: Duration,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.addr)
    }
}

/// One direct attempt that did not connect.
///
/// ```
/// use natkit::net::NetError;
/// use natkit::node::{DialFailure, PathKind};
///
/// let f = DialFailure { kind: PathKind::Lan, addr: "10.0.0.2:1".parse().unwrap(), error: NetError::Shutdown };
/// assert!(f.to_string().starts_with("lan 10.0.0.2:1: "));
/// ```
#[derive(Debug)]
pub struct DialFailure {
    /// The attempt's kind.
    pub kind: PathKind,
    /// The address dialed.
    pub addr: SocketAddr,
    /// Why it failed.
    pub error: NetError,
}

impl fmt::Display for DialFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.addr, self.error)
    }
}

/// Why [`Node::connect`](crate::Node::connect) (or
/// [`Node::lookup`](crate::Node::lookup)) failed.
///
/// ```
/// use natkit::identity::Keypair;
/// use natkit::node::ConnectError;
///
/// let err = ConnectError::NotFound { node_id: Keypair::from_seed([1; 32]).node_id() };
/// assert!(err.to_string().contains("no UNL in the DHT"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The DHT lookup of the node's UNL failed.
    #[error("cannot look up node {node_id} in the DHT: {source}")]
    Lookup {
        /// The node looked up.
        node_id: NodeId,
        /// Why.
        source: DhtError,
    },
    /// The DHT lookup took longer than [`LOOKUP_TIMEOUT`](super::LOOKUP_TIMEOUT).
    #[error("looking up node {node_id} in the DHT timed out after {secs:.1} s")]
    LookupTimeout {
        /// The node looked up.
        node_id: NodeId,
        /// The limit, in seconds.
        secs: f64,
    },
    /// No node of the DHT holds a UNL record for this node id: it is not
    /// online (or has not published yet), or the id is wrong.
    #[error("node {node_id} has no UNL in the DHT (offline, not published yet, or a wrong id)")]
    NotFound {
        /// The node looked up.
        node_id: NodeId,
    },
    /// The record found is not a usable UNL of that node.
    #[error("the DHT record of node {node_id} is unusable: {source}")]
    BadRecord {
        /// The node looked up.
        node_id: NodeId,
        /// What is wrong with it.
        source: RecordError,
    },
    /// The planner found no way at all (ourselves, or nothing to dial).
    #[error("no way to reach node {node_id}: {source}")]
    NoPath {
        /// The peer.
        node_id: NodeId,
        /// The planner's reason.
        source: NoPath,
    },
    /// The plan needs NAT traversal (reverse connect or hole punching), which
    /// this version does not do yet; the direct attempts, if any, failed.
    #[error(
        "node {node_id} needs NAT traversal ({}), which natkit cannot do yet{}",
        describe_attempts(.attempts),
        describe_failures(.failures, "; the direct attempts failed: ")
    )]
    NeedsTraversal {
        /// The traversal attempts of the plan, not made.
        attempts: Vec<Attempt>,
        /// The direct attempts made first, all failed.
        failures: Vec<DialFailure>,
        /// The peer.
        node_id: NodeId,
    },
    /// Every attempt of the plan (all direct) failed.
    #[error(
        "cannot connect to node {node_id}{}",
        describe_failures(.failures, ": ")
    )]
    AllFailed {
        /// The peer.
        node_id: NodeId,
        /// Each attempt's failure.
        failures: Vec<DialFailure>,
    },
    /// The node is shut down.
    #[error("the node is shut down")]
    Shutdown,
}

fn describe_attempts(attempts: &[Attempt]) -> String {
    let names: Vec<&str> = attempts
        .iter()
        .map(|a| match a.kind {
            AttemptKind::Reverse { .. } => "reverse connect",
            AttemptKind::Punch { .. } => "hole punching",
            AttemptKind::Lan(_) | AttemptKind::Mapped(_) | AttemptKind::Direct(_) => "dial",
        })
        .collect();
    names.join(", ")
}

fn describe_failures(failures: &[DialFailure], lead: &str) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let all: Vec<String> = failures.iter().map(ToString::to_string).collect();
    format!("{lead}{}", all.join("; "))
}

/// A direct attempt to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dial {
    pub(crate) kind: PathKind,
    pub(crate) addr: SocketAddr,
    pub(crate) timeout: Duration,
}

/// Splits a plan into its direct attempts (in order) and the traversal ones.
/// When we are bound to loopback or to every interface, the peer's loopback
/// LAN addresses come first, as LAN attempts: the planner leaves loopback out
/// (it is another host's loopback, in general), but two nodes on one host
/// reach each other there, and dialing it elsewhere only fails the handshake.
pub(crate) fn split(plan: Plan, bind_ip: IpAddr, peer: &Unl) -> (Vec<Dial>, Vec<Attempt>) {
    let mut dials: Vec<Dial> = Vec::new();
    if bind_ip.is_loopback() || bind_ip.is_unspecified() {
        dials.extend(
            peer.addrs
                .iter()
                .filter(|c| c.source == AddrSource::Lan && c.addr.ip().is_loopback())
                .map(|c| Dial {
                    kind: PathKind::Lan,
                    addr: c.addr,
                    timeout: natkit_traversal::plan::DIAL_TIMEOUT,
                }),
        );
    }
    let mut traversal = Vec::new();
    for attempt in plan.attempts {
        let (kind, addr) = match attempt.kind {
            AttemptKind::Lan(a) => (PathKind::Lan, a),
            AttemptKind::Mapped(a) => (PathKind::Mapped, a),
            AttemptKind::Direct(a) => (PathKind::Direct, a),
            AttemptKind::Reverse { .. } | AttemptKind::Punch { .. } => {
                traversal.push(attempt);
                continue;
            }
        };
        if !dials.iter().any(|d| d.addr == addr) {
            dials.push(Dial {
                kind,
                addr,
                timeout: attempt.kind.timeout(),
            });
        }
    }
    (dials, traversal)
}

/// Runs the dials, one [`ATTEMPT_STAGGER`] apart (the next one at once when
/// every running one has failed), and returns the first connection
/// authenticated to `peer`; the others are cancelled. Or every failure.
pub(crate) async fn race(
    net: &Net,
    peer: NodeId,
    dials: Vec<Dial>,
) -> Result<(Connection, Dial), Vec<DialFailure>> {
    let mut waiting = dials.into_iter();
    let mut next = waiting.next();
    let mut running = FuturesUnordered::new();
    let mut failures = Vec::new();
    let mut next_at = tokio::time::Instant::now();
    loop {
        if let Some(d) = next.filter(|_| tokio::time::Instant::now() >= next_at) {
            let net = net.clone();
            running.push(async move {
                let r = tokio::time::timeout(d.timeout, net.connect(d.addr, peer)).await;
                let r = r.unwrap_or_else(|_| {
                    Err(NetError::Timeout {
                        what: "connect and handshake",
                        addr: d.addr,
                        secs: d.timeout.as_secs_f64(),
                    })
                });
                (d, r)
            });
            next = waiting.next();
            next_at = tokio::time::Instant::now() + ATTEMPT_STAGGER;
        }
        if running.is_empty() && next.is_none() {
            return Err(failures);
        }
        tokio::select! {
            Some((d, r)) = running.next() => match r {
                Ok(conn) => {
                    tracing::debug!(peer = %peer.short(), addr = %d.addr, kind = %d.kind, "connected");
                    return Ok((conn, d));
                }
                Err(error) => {
                    tracing::debug!(peer = %peer.short(), addr = %d.addr, kind = %d.kind, %error, "attempt failed");
                    failures.push(DialFailure { kind: d.kind, addr: d.addr, error });
                    if running.is_empty() {
                        next_at = tokio::time::Instant::now();
                    }
                }
            },
            () = tokio::time::sleep_until(next_at), if next.is_some() => {}
        }
    }
}

/// The error for a plan whose direct attempts (if any) failed.
pub(crate) fn failed(
    node_id: NodeId,
    traversal: Vec<Attempt>,
    failures: Vec<DialFailure>,
) -> ConnectError {
    if traversal.is_empty() {
        ConnectError::AllFailed { node_id, failures }
    } else {
        ConnectError::NeedsTraversal {
            attempts: traversal,
            failures,
            node_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_identity::Keypair;
    use natkit_traversal::plan::{LocalSituation, plan};
    use natkit_unl::NatType;
    use std::time::Instant;

    #[test]
    fn loopback_first_then_the_plan_and_traversal_apart() {
        let us = Keypair::from_seed([1; 32]).node_id();
        let them = Keypair::from_seed([2; 32]).node_id();
        let mut unl = Unl::new(them);
        unl.add_addr(AddrSource::Lan, "127.0.0.1:4000".parse().unwrap())
            .unwrap();
        unl.add_addr(AddrSource::Observed, "127.0.0.1:4000".parse().unwrap())
            .unwrap();
        unl.nat = NatType::Open;
        let situation = LocalSituation {
            node_id: us,
            lan: vec!["127.0.0.1:5000".parse().unwrap()],
            nat: NatType::Open,
            reachable: true,
            port_mapped: false,
        };
        let p = plan(&situation, &unl, Instant::now()).unwrap();
        let (dials, traversal) = split(p.clone(), "127.0.0.1".parse().unwrap(), &unl);
        assert_eq!(dials.len(), 1);
        assert_eq!(dials[0].kind, PathKind::Lan);
        assert!(traversal.is_empty());
        // Bound elsewhere, the loopback address is not ours to dial.
        let (dials, _) = split(p, "10.0.0.1".parse().unwrap(), &unl);
        assert_eq!(dials.len(), 1);
        assert_eq!(dials[0].kind, PathKind::Direct);

        // Behind an unknown NAT: a punch, which is the traversal driver's.
        unl.nat = NatType::Unknown;
        unl.addrs.retain(|c| c.source == AddrSource::Observed);
        unl.addrs[0].addr = "203.0.113.9:4000".parse().unwrap();
        let p = plan(&situation, &unl, Instant::now()).unwrap();
        let (dials, traversal) = split(p, "127.0.0.1".parse().unwrap(), &unl);
        assert!(dials.is_empty());
        assert!(!traversal.is_empty());
        let err = failed(them, traversal, Vec::new());
        assert!(matches!(err, ConnectError::NeedsTraversal { .. }), "{err}");
        assert!(err.to_string().contains("needs NAT traversal"), "{err}");
    }
}
