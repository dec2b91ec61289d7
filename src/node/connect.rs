//! Running a connect plan: its attempts (LAN, mapped and direct dials,
//! reverse connects and hole punches, see `traverse.rs`) start staggered and
//! race; the first authenticated connection wins and the others are dropped.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use natkit_dht::dht::DhtError;
use natkit_identity::NodeId;
use natkit_net::{Connection, NetError};
use natkit_traversal::plan::{ATTEMPT_STAGGER, AttemptKind, NoPath, Plan};
use natkit_traversal::punch::PunchFailure;
use natkit_unl::{AddrSource, Unl};
use tracing::Instrument;

use super::Node;
use super::record::RecordError;
use super::relay::{RELAY_CONNECT_TIMEOUT, RELAY_FALLBACK_DELAY};
use super::traverse::{TraversalError, Traversed};

/// How a connection was made.
///
/// ```
/// use natkit::node::PathKind;
///
/// assert_eq!(PathKind::Lan.to_string(), "lan");
/// assert_eq!(PathKind::Punched.to_string(), "punched");
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
    /// Asked the peer, through its rendezvous points, to dial us; it did.
    Reverse,
    /// A TCP hole punch (simultaneous open), coordinated through rendezvous.
    Punched,
    /// Through one of the peer's relays ([`Path::relay`] says which), end-to-end
    /// encrypted; replaced by a direct connection when one is made later.
    Relayed,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Lan => "lan",
            PathKind::Mapped => "mapped",
            PathKind::Direct => "direct",
            PathKind::Reverse => "reverse",
            PathKind::Punched => "punched",
            PathKind::Relayed => "relayed",
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
///     signal_rtt: None,
///     elapsed: Duration::from_millis(2),
///     retried: false,
///     relay: None,
/// };
/// assert_eq!(path.to_string(), "direct 127.0.0.1:50500");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Path {
    /// How.
    pub kind: PathKind,
    /// The peer's address on the connection.
    pub addr: SocketAddr,
    /// How long the DHT lookup of the peer's UNL took (`None` when connecting
    /// to a UNL that was not refreshed).
    pub lookup: Option<Duration>,
    /// For a hole punch: the round trip of the rendezvous exchange (our
    /// `Connect` to the peer's reply), which timed the dials.
    pub signal_rtt: Option<Duration>,
    /// From the start of the plan that connected to the authenticated
    /// connection (the lookup not included).
    pub elapsed: Duration,
    /// Whether the first plan failed and this is the second, made from a
    /// fresh UNL looked up in the DHT (the peer's addresses had changed).
    pub retried: bool,
    /// For a relayed connection: the relay's node id (`addr` is the relay's
    /// address).
    pub relay: Option<NodeId>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.addr)
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// A dial (connect and handshake) failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A reverse connect or a hole punch failed.
    #[error(transparent)]
    Traversal(#[from] TraversalError),
    /// A connection through a relay failed.
    #[error(transparent)]
    Relay(#[from] super::relay::RelayAttemptError),
}

/// One attempt that did not connect.
///
/// ```
/// use natkit::net::NetError;
/// use natkit::node::{AttemptFailure, PathKind};
///
/// let f = AttemptFailure {
///     kind: PathKind::Lan,
///     addr: Some("10.0.0.2:1".parse().unwrap()),
///     error: NetError::Shutdown.into(),
/// };
/// assert!(f.to_string().starts_with("lan 10.0.0.2:1: "));
/// ```
#[derive(Debug)]
pub struct AttemptFailure {
    /// The attempt's kind.
    pub kind: PathKind,
    /// The address dialed (none for a reverse connect or a punch, which may
    /// dial several).
    pub addr: Option<SocketAddr>,
    /// Why it failed.
    pub error: AttemptError,
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{} {a}: {}", self.kind, self.error),
            None => write!(f, "{}: {}", self.kind, self.error),
        }
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
#[non_exhaustive]
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
    /// The planner found no way at all (ourselves, or nothing to try).
    #[error("no way to reach node {node_id}: {source}")]
    NoPath {
        /// The peer.
        node_id: NodeId,
        /// The planner's reason.
        source: NoPath,
    },
    /// Every attempt of the plan failed (and of the second plan, when a fresh
    /// UNL was found in the DHT).
    #[error(
        "cannot connect to node {node_id}{}{}",
        describe_failures(.failures, ": "),
        .internet.map(|n| format!("; {n}")).unwrap_or_default()
    )]
    AllFailed {
        /// The peer.
        node_id: NodeId,
        /// Each attempt's failure, in the order they ended.
        failures: Vec<AttemptFailure>,
        /// When only LAN attempts were possible: why nothing over the internet
        /// can work.
        internet: Option<NoPath>,
    },
    /// The node is shut down.
    #[error("the node is shut down")]
    Shutdown,
}

fn describe_failures(failures: &[AttemptFailure], lead: &str) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let all: Vec<String> = failures.iter().map(ToString::to_string).collect();
    format!("{lead}{}", all.join("; "))
}

/// One attempt to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) kind: PathKind,
    /// The address, for a dial.
    pub(crate) addr: Option<SocketAddr>,
    /// For a reverse connect or a punch: where to signal the peer.
    pub(crate) via: Vec<SocketAddr>,
    /// For a dial: from a fresh port, as the plan has a punch too (whose
    /// dials need the listen port's 4-tuples).
    pub(crate) fresh_port: bool,
    /// From the start of the plan.
    pub(crate) delay: Duration,
    pub(crate) timeout: Duration,
}

/// The plan's attempts as steps. When we are bound to loopback or to every
/// interface, the peer's loopback LAN addresses come first, as LAN attempts:
/// the planner leaves loopback out (it is another host's loopback, in
/// general), but two nodes on one host reach each other there, and dialing it
/// elsewhere only fails the handshake. A peer without rendezvous points is
/// signalled at its observed addresses (its DHT port has the same number).
pub(crate) fn steps(plan: &Plan, bind_ip: IpAddr, peer: &Unl) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    if bind_ip.is_loopback() || bind_ip.is_unspecified() {
        out.extend(
            peer.addrs
                .iter()
                .filter(|c| c.source == AddrSource::Lan && c.addr.ip().is_loopback())
                .map(|c| Step {
                    kind: PathKind::Lan,
                    addr: Some(c.addr),
                    via: Vec::new(),
                    fresh_port: false,
                    delay: Duration::ZERO,
                    timeout: natkit_traversal::plan::DIAL_TIMEOUT,
                }),
        );
    }
    let signal_via = |rendezvous: &[SocketAddr]| -> Vec<SocketAddr> {
        if !rendezvous.is_empty() {
            return rendezvous.to_vec();
        }
        peer.addrs
            .iter()
            .filter(|c| c.source == AddrSource::Observed)
            .map(|c| c.addr)
            .collect()
    };
    // After the loopback dials, the plan's own stagger.
    let shift = if out.is_empty() {
        Duration::ZERO
    } else {
        ATTEMPT_STAGGER
    };
    let punching = plan
        .attempts
        .iter()
        .any(|a| matches!(a.kind, AttemptKind::Punch { .. }));
    for attempt in &plan.attempts {
        let (kind, addr, via) = match &attempt.kind {
            AttemptKind::Lan(a) => (PathKind::Lan, Some(*a), Vec::new()),
            AttemptKind::Mapped(a) => (PathKind::Mapped, Some(*a), Vec::new()),
            AttemptKind::Direct(a) => (PathKind::Direct, Some(*a), Vec::new()),
            AttemptKind::Reverse { rendezvous } => {
                (PathKind::Reverse, None, signal_via(rendezvous))
            }
            AttemptKind::Punch { rendezvous, .. } => {
                (PathKind::Punched, None, signal_via(rendezvous))
            }
        };
        if addr.is_some() && out.iter().any(|s| s.addr == addr) {
            continue;
        }
        out.push(Step {
            kind,
            addr,
            via,
            fresh_port: punching && addr.is_some(),
            delay: attempt.delay + shift,
            timeout: attempt.kind.timeout(),
        });
    }
    out.extend(relay_steps(&out, plan.internet.is_some(), peer));
    out
}

/// The peer's relays, the last attempts: at once (after any LAN attempt) when nothing over
/// the internet can work without one, else [`RELAY_FALLBACK_DELAY`] after the last direct
/// attempt started; each next relay 1 s later (at once when the others failed).
pub(crate) fn relay_steps(before: &[Step], no_direct: bool, peer: &Unl) -> Vec<Step> {
    let last = before.iter().map(|s| s.delay).max().unwrap_or_default();
    let first = if before.is_empty() {
        Duration::ZERO
    } else if no_direct {
        last + ATTEMPT_STAGGER
    } else {
        last + RELAY_FALLBACK_DELAY
    };
    peer.addrs
        .iter()
        .filter(|c| c.source == AddrSource::Relay)
        .zip(0u32..)
        .map(|(c, i)| Step {
            kind: PathKind::Relayed,
            addr: Some(c.addr),
            via: Vec::new(),
            fresh_port: false,
            delay: first + ATTEMPT_STAGGER * 4 * i,
            timeout: RELAY_CONNECT_TIMEOUT,
        })
        .collect()
}

type Outcome = (Step, Result<(Connection, Option<Duration>), AttemptError>);

type Running = FuturesUnordered<Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>>;

/// Runs the steps, each at its delay from now (the next one at once when
/// every running one has failed), and returns the first connection
/// authenticated to `peer` (a dial's, or one a traversal made); the others
/// are cancelled (a running punch tells the peer). Or every failure.
///
/// When a relay wins, the direct attempts still running or waiting are not
/// cancelled: they go on in the background, and one that connects replaces
/// the relayed connection (natkit-net keeps direct over relayed). A relayed
/// connection can thus start early without costing the direct path.
pub(crate) async fn race(
    node: &Node,
    peer: NodeId,
    steps: Vec<Step>,
) -> Result<(Connection, Step, Option<Duration>), Vec<AttemptFailure>> {
    let t0 = tokio::time::Instant::now();
    let mut waiting: std::collections::VecDeque<Step> = steps.into();
    let mut direct: Running = FuturesUnordered::new();
    let mut relayed: Running = FuturesUnordered::new();
    let mut failures = Vec::new();
    loop {
        while waiting.front().is_some_and(|s| {
            (direct.is_empty() && relayed.is_empty()) || tokio::time::Instant::now() >= t0 + s.delay
        }) {
            let s = waiting.pop_front().expect("a waiting step");
            let set = if s.kind == PathKind::Relayed {
                &mut relayed
            } else {
                &mut direct
            };
            set.push(Box::pin(run_step(node.clone(), peer, s)));
        }
        if direct.is_empty() && relayed.is_empty() && waiting.is_empty() {
            return Err(failures);
        }
        let next_at = waiting.front().map(|s| t0 + s.delay);
        let (s, r) = tokio::select! {
            Some(o) = direct.next() => o,
            Some(o) = relayed.next() => o,
            () = sleep_until_opt(next_at) => continue,
        };
        match r {
            Ok((conn, rtt)) => {
                tracing::debug!(peer = %peer.short(), addr = %conn.remote_addr(), kind = %s.kind, "connected");
                if s.kind == PathKind::Relayed {
                    waiting.retain(|w| w.kind != PathKind::Relayed);
                    if !direct.is_empty() || !waiting.is_empty() {
                        finish_direct_in_background(node, peer, t0, direct, waiting);
                    }
                }
                return Ok((conn, s, rtt));
            }
            Err(error) => {
                tracing::debug!(peer = %peer.short(), addr = ?s.addr, kind = %s.kind, %error, "attempt failed");
                failures.push(AttemptFailure {
                    kind: s.kind,
                    addr: s.addr,
                    error,
                });
            }
        }
    }
}

/// After a relay won the race: lets the direct attempts run on (and start the waiting
/// ones at their times) until one connects, all fail, or the node shuts down.
fn finish_direct_in_background(
    node: &Node,
    peer: NodeId,
    t0: tokio::time::Instant,
    mut running: Running,
    mut waiting: std::collections::VecDeque<Step>,
) {
    let owned = node.clone();
    let cancel = node.inner.cancel.clone();
    let task = async move {
        loop {
            while waiting
                .front()
                .is_some_and(|s| running.is_empty() || tokio::time::Instant::now() >= t0 + s.delay)
            {
                let s = waiting.pop_front().expect("a waiting step");
                running.push(Box::pin(run_step(owned.clone(), peer, s)));
            }
            if running.is_empty() {
                return;
            }
            let next_at = waiting.front().map(|s| t0 + s.delay);
            tokio::select! {
                () = cancel.cancelled() => return,
                Some((s, r)) = running.next() => if let Ok((conn, _)) = r {
                    tracing::info!(peer = %peer.short(), kind = %s.kind, addr = %conn.remote_addr(), "a direct attempt still running connected: it replaces the relayed connection");
                    return;
                },
                () = sleep_until_opt(next_at) => {}
            }
        }
    };
    node.inner
        .tracker
        .spawn(task.instrument(node.inner.span.clone()));
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn run_step(node: Node, peer: NodeId, s: Step) -> Outcome {
    let node = &node;
    let timeout = s.timeout;
    let r = match (s.kind, s.addr) {
        (PathKind::Reverse, _) => timed(timeout, node.reverse(peer, s.via.clone())).await,
        (PathKind::Punched, _) => timed(timeout, node.punch(peer, s.via.clone())).await,
        (PathKind::Relayed, Some(addr)) => {
            let relayed = node.relayed(peer, addr);
            dial_within(timeout, addr, "connect through the relay", relayed).await
        }
        (_, Some(addr)) => {
            let net = node.net();
            let dial = async {
                if s.fresh_port {
                    net.connect_from_fresh_port(addr, peer).await
                } else {
                    net.connect(addr, peer).await
                }
            };
            dial_within(timeout, addr, "connect and handshake", dial).await
        }
        (_, None) => Err(NetError::Shutdown.into()),
    };
    (s, r)
}

/// A dial (direct or through a relay) within `timeout`; `what` names it in the timeout
/// error.
async fn dial_within<E: Into<AttemptError>>(
    timeout: Duration,
    addr: SocketAddr,
    what: &'static str,
    dial: impl Future<Output = Result<Connection, E>>,
) -> Result<(Connection, Option<Duration>), AttemptError> {
    match tokio::time::timeout(timeout, dial).await {
        Ok(Ok(c)) => Ok((c, None)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(NetError::Timeout {
            what,
            addr,
            secs: timeout.as_secs_f64(),
        }
        .into()),
    }
}

async fn timed(
    timeout: Duration,
    f: impl Future<Output = Result<Traversed, TraversalError>>,
) -> Result<(Connection, Option<Duration>), AttemptError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(t)) => Ok((t.conn, t.signal_rtt)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(TraversalError::Punch(PunchFailure::Timeout).into()),
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
    fn loopback_first_then_the_plan() {
        let us = Keypair::from_seed([1; 32]).node_id();
        let them = Keypair::from_seed([2; 32]).node_id();
        let mut unl = Unl::new(them);
        unl.add_addr(AddrSource::Lan, "127.0.0.1:4000".parse().unwrap())
            .unwrap();
        unl.add_addr(AddrSource::Observed, "127.0.0.1:4000".parse().unwrap())
            .unwrap();
        unl.nat = NatType::Open;
        unl.node = natkit_unl::NodeType::Reachable;
        let situation = LocalSituation {
            node_id: us,
            lan: vec!["127.0.0.1:5000".parse().unwrap()],
            nat: NatType::Open,
            reachable: true,
            port_mapped: false,
        };
        let p = plan(&situation, &unl, Instant::now()).unwrap();
        let s = steps(&p, "127.0.0.1".parse().unwrap(), &unl);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, PathKind::Lan);
        // Bound elsewhere, the loopback address is not ours to dial.
        let s = steps(&p, "10.0.0.1".parse().unwrap(), &unl);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].kind, PathKind::Direct);

        // Behind a NAT of unknown type: a punch, signalled at the peer's
        // observed address when it lists no rendezvous point.
        unl.nat = NatType::Unknown;
        unl.node = natkit_unl::NodeType::Unknown;
        unl.addrs.retain(|c| c.source == AddrSource::Observed);
        unl.addrs[0].addr = "203.0.113.9:4000".parse().unwrap();
        let p = plan(&situation, &unl, Instant::now()).unwrap();
        let s = steps(&p, "127.0.0.1".parse().unwrap(), &unl);
        let kinds: Vec<PathKind> = s.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [PathKind::Reverse, PathKind::Punched]);
        assert_eq!(s[1].via, vec!["203.0.113.9:4000".parse().unwrap()]);
        assert!(s[1].delay > s[0].delay);
    }
}
