//! The node ([`Node`]): one identity on one port, joining a connection
//! manager ([`natkit_net::Net`], TCP) and a DHT node
//! ([`natkit_dht::dht::Dht`], UDP, with the same ed25519 key). The two crates
//! do not know each other; this is where they meet.
//!
//! A node makes its own [UNL](natkit_unl::Unl) (the LAN addresses of the
//! interface it is bound to, the address the DHT saw it at, and its NAT type
//! from the DHT's reports classified, see [`Node::udp_classification`]), signs it and
//! publishes it in the DHT under its key (a BEP 44 mutable item, salt
//! [`UNL_SALT`], see [`unl_record`]), again whenever it changes. So a bare
//! node id is enough to connect: [`Node::connect`] looks the UNL up, asks the
//! planner ([`natkit_traversal::plan`]) how to reach the node, and races the
//! attempts: LAN, mapped and direct dials, a reverse connect, a TCP hole
//! punch (docs/traversal.md). Unless it is known to be reachable, a node
//! registers with rendezvous nodes, through which the reverse connects and
//! punches of others reach it ([`Node::wait_reachable`]); it maps its port on
//! the gateway in the background ([`Node::mapping`]).
//!
//! # Layout
//! - this file: [`Node`], [`NodeError`];
//! - `builder.rs`: [`NodeBuilder`]: binding one port in TCP and UDP, the
//!   first UNL;
//! - `target.rs`: [`Target`], a UNL or a node id, parsed from text;
//! - `record.rs`: the node's own UNL and its DHT record ([`unl_record`],
//!   [`decode_record`]);
//! - `connect.rs`: running a plan: its attempts race ([`Path`],
//!   [`ConnectError`]);
//! - `traverse.rs`: reverse connects and hole punches, ours and the answers
//!   to others' requests, with their limits ([`TraversalError`]);
//! - `portmap.rs`: the node's own port mappings, in the background;
//! - `blocking.rs`: [`BlockingNode`], the event-loop form.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use natkit::Node;
//! use natkit::dht::dht::Dht;
//! use natkit::node::Target;
//!
//! let loopback = "127.0.0.1".parse()?;
//! let boot = Dht::builder().bind_addr("127.0.0.1:0".parse()?).build().await?;
//! let bob = Node::builder().bind_ip(loopback).bootstrap(&[boot.local_addr()]).build().await?;
//! let alice = Node::builder().bind_ip(loopback).bootstrap(&[boot.local_addr()]).build().await?;
//!
//! let target: Target = bob.id().to_string().parse()?; // a bare node id: looked up in the DHT
//! let (con, path) = alice.connect(target).await?;
//! con.send("hello bob").await?;
//! println!("connected over {path} in {:?}", path.elapsed);
//!
//! alice.shutdown().await;
//! bob.shutdown().await;
//! boot.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use natkit_dht::bep44::Bep44Error;
use natkit_dht::dht::{Dht, DhtError};
use natkit_identity::{IdentityError, Keypair, NodeId};
use natkit_net::{Connection, Net, NetError, NetEvent};
use natkit_traversal::classify::{Classification, NatClass};
use natkit_traversal::plan::{self, LocalSituation};
use natkit_unl::{AddrSource, MAX_RENDEZVOUS, NatType, NodeType, Unl, UnlError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub mod blocking;
mod builder;
mod connect;
mod portmap;
mod record;
mod relay;
mod target;
mod traverse;

pub use blocking::BlockingNode;
pub use builder::NodeBuilder;

pub use connect::{AttemptError, AttemptFailure, ConnectError, Path, PathKind};
pub use portmap::PORTMAP_RETRY;
pub use record::{RecordError, UNL_SALT, decode_record, unl_record};
pub use relay::{
    MAX_RELAYED_ACCEPTS, RELAY_ANNOUNCE_INTERVAL, RELAY_ANNOUNCE_RETRY, RELAY_CONNECT_TIMEOUT,
    RELAY_FALLBACK_DELAY, RELAY_PROBES, RELAY_QUICK_SEARCH_INTERVAL, RELAY_QUICK_SEARCHES,
    RELAY_RESERVATIONS, RELAY_SEARCH_INTERVAL, RelayAttemptError, RelayInfo, UPGRADE_INTERVAL,
    UPGRADE_MAX_INTERVAL,
};
pub use target::{MAX_QUOTED_CHARS, Target, TargetError};
pub use traverse::{
    ANSWER_BURST, ANSWER_REFILL, DIAL_BACK_HELPERS, DIAL_BACK_WAIT, MAX_ANSWER_VIA, MAX_TRAVERSALS,
    TraversalError,
};

/// How often a node checks whether its UNL changed (the DHT learned our
/// address, or its reports changed our NAT type) and republishes it, or retries a publish that failed. The DHT
/// itself republishes the stored record hourly; this is about changes, which
/// peers should see within seconds, at the cost of one stats call.
pub const UNL_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Most TCP reports kept ([`Node::tcp_classification`]).
pub const MAX_TCP_REPORTS: usize = 32;

/// How often [`Node::wait_reachable`] looks.
const REACHABLE_POLL: Duration = Duration::from_millis(20);

/// Pause of [`Node::wait_reachable`] after a failed publish.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// How one plan ended without a connection.
enum Failed {
    /// Not worth a second plan.
    Fatal(ConnectError),
    /// Every attempt failed.
    All {
        failures: Vec<AttemptFailure>,
        internet: Option<plan::NoPath>,
    },
}

/// Tries to find a port free for both TCP and UDP when any port will do: a
/// free TCP port is taken in UDP by another program only rarely.
pub const PORT_ATTEMPTS: usize = 8;

/// Longest DHT lookup of a UNL. A lookup ends by itself when no closer node
/// answers (each unanswered query costs the DHT's query timeout); this bounds
/// it whatever the network does.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The routing table's file in the [state directory](NodeBuilder::state_dir).
pub const ROUTING_TABLE_FILE: &str = "dht-routing-table";

/// Why a node could not start or publish.
///
/// ```
/// use natkit::node::NodeError;
///
/// let err = NodeError::Ipv6("::1".parse().unwrap());
/// assert!(err.to_string().contains("IPv4 only"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No key was given and none could be made.
    #[error("cannot create an identity key: {0}")]
    Key(#[source] IdentityError),
    /// The DHT speaks IPv4 only for now.
    #[error("cannot bind to {0}: the DHT speaks IPv4 only for now")]
    Ipv6(IpAddr),
    /// The runtime thread of a [`BlockingNode`] could not start.
    #[error("cannot start the node's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The TCP listener could not start.
    #[error("cannot start the connection manager: {0}")]
    Net(#[source] NetError),
    /// The DHT's UDP socket could not start.
    #[error("cannot start the DHT node on UDP {addr}: {source}")]
    Dht {
        /// The UDP address.
        addr: SocketAddr,
        /// Why.
        source: DhtError,
    },
    /// With port 0, no port was free in both TCP and UDP.
    #[error("no port free for both TCP and UDP on {ip} after {PORT_ATTEMPTS} tries")]
    NoFreePort {
        /// The address bound.
        ip: IpAddr,
    },
    /// The state directory could not be made.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The node's own UNL breaks a limit.
    #[error("cannot make this node's UNL: {0}")]
    Unl(#[source] UnlError),
    /// The node's UNL does not fit in a DHT record.
    #[error("cannot make this node's DHT record: {0}")]
    Record(#[source] Bep44Error),
    /// No DHT node stored the UNL record.
    #[error("cannot publish this node's UNL in the DHT: {0}")]
    Publish(#[source] DhtError),
    /// Registering with rendezvous nodes failed (the DHT node stopped).
    #[error("cannot register with rendezvous nodes: {0}")]
    Register(#[source] DhtError),
    /// The relay client or the relay service could not start.
    #[error("cannot start the relay: {0}")]
    Relay(#[source] Box<natkit_relay::RelayError>),
    /// [`Node::wait_reachable`] gave up: published, but no rendezvous node
    /// accepted our registration.
    #[error("published, but no rendezvous node accepted this node within {secs:.1} s")]
    NotReachable {
        /// The limit, in seconds.
        secs: f64,
    },
}

async fn refresh_loop(node: Weak<Inner>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(UNL_REFRESH_INTERVAL) => {}
        }
        let Some(inner) = node.upgrade() else { return };
        let node = Node { inner };
        tokio::select! {
            () = cancel.cancelled() => return,
            r = node.refresh(false) => if let Err(e) = r {
                tracing::info!(error = %e, "could not publish the UNL; will retry");
            }
        }
    }
}

/// A natkit node: an identity, a TCP listener for connections and a DHT node
/// on the same port, and a UNL published in the DHT. Cheap to clone (all
/// clones are one node). See the [module docs](self) for an example.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    key: Keypair,
    net: Net,
    dht: Dht,
    bind_ip: IpAddr,
    port: u16,
    lan: Vec<IpAddr>,
    publishing: bool,
    /// Whether the background registration with rendezvous nodes was started
    /// (once, when our NAT type is not open; the DHT keeps it up from then on).
    registering: AtomicBool,
    state: Mutex<UnlState>,
    /// One publish at a time, so that seqs reach the DHT in order.
    publish_lock: tokio::sync::Mutex<()>,
    /// Reverse connects and hole punches running, and their limits.
    traversal: traverse::Traversal,
    /// Our TCP port mapping on the gateway, while there is one.
    mapping: Mutex<Option<natkit_portmap::gateway::Mapping>>,
    /// Whether a dial-back reached us (`None`: not checked, or nobody to ask).
    reachability: Mutex<Option<bool>>,
    /// One reachability check at a time.
    check_lock: tokio::sync::Mutex<()>,
    /// The addresses other nodes saw our TCP connections come from.
    tcp_reports: Mutex<Vec<natkit_traversal::classify::Observation>>,
    /// Our relay service (opt-in), our reservations and relayed circuits.
    relaying: relay::Relaying,
    cancel: CancellationToken,
    tracker: TaskTracker,
    span: tracing::Span,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Net and Dht stop themselves when dropped; stop our task too.
        self.cancel.cancel();
    }
}

struct UnlState {
    unl: Unl,
    published_seq: Option<i64>,
    /// The UNL in the record last stored.
    published: Option<Unl>,
    last_seq: i64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id())
            .field("addr", &self.net().local_addr())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A builder with the defaults (random key, any port, every interface,
    /// no bootstrap nodes, no state directory).
    ///
    /// ```
    /// let builder = natkit::Node::builder();
    /// ```
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// Our node id (the public key).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert_eq!(node.unl().node_id, node.id());
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn id(&self) -> NodeId {
        self.inner.key.node_id()
    }

    /// The port of the TCP listener and of the DHT's UDP socket.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert_eq!(node.dht().local_addr().port(), node.port());
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Our current UNL, signed (it changes when the DHT learns our address).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// let text = node.unl().emit(); // paste it to a friend
    /// assert_eq!(text.parse::<natkit::unl::Unl>().unwrap(), node.unl());
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn unl(&self) -> Unl {
        self.state().unl.clone()
    }

    /// The `seq` of the UNL record last stored in the DHT, if any was.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert_eq!(node.published_seq(), None); // no bootstrap node: nowhere to publish
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn published_seq(&self) -> Option<i64> {
        self.state().published_seq
    }

    /// Our TCP port mapping on the gateway, if the node made one (see
    /// [`NodeBuilder::port_mapping`]); its external address is in the UNL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert!(node.mapping().is_none()); // bound to loopback: no gateway to ask
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn mapping(&self) -> Option<natkit_portmap::gateway::Mapping> {
        *self.inner.mapping.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether unsolicited TCP connections reach this node, as a dial-back
    /// check found out: after registering with rendezvous nodes, the node asks
    /// up to three of them (natkit nodes, not on its LAN) to dial it back.
    /// `None` until then, or when nobody could be asked. The UNL's node type
    /// follows it (`reachable` or `hole-punch`; a port mapping on the outermost
    /// NAT also makes it `reachable`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert_eq!(node.reachability(), None);
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn reachability(&self) -> Option<bool> {
        *self
            .inner
            .reachability
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Checks now whether unsolicited TCP connections reach us (see
    /// [`Node::reachability`]: a dial-back asked of our rendezvous nodes,
    /// which takes up to [`DIAL_BACK_WAIT`]); records the answer, republishes
    /// the UNL if its node type changed, and returns it. A node does this by
    /// itself once it has registered with rendezvous nodes.
    ///
    /// ```no_run
    /// # async fn demo(node: natkit::Node) {
    /// match node.check_reachability().await {
    ///     Some(true) => println!("peers can dial us"),
    ///     Some(false) => println!("behind a NAT or firewall: peers punch or ask us to dial"),
    ///     None => println!("no natkit rendezvous node to ask"),
    /// }
    /// # }
    /// ```
    pub async fn check_reachability(&self) -> Option<bool> {
        // One check at a time: a helper that holds a connection to us from
        // another check's probe would not dial back.
        let _one = self.inner.check_lock.lock().await;
        let helpers = self.helpers().await;
        let found = self.dial_back_check(&helpers).await;
        if let Some(found) = found {
            *self
                .inner
                .reachability
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(found);
        }
        // Then (never before: a helper that has a connection to us would
        // not dial back) connect to them: how our NAT maps TCP.
        self.tcp_probe(&helpers).await;
        if let Err(e) = self.refresh(false).await {
            tracing::info!(error = %e, "could not publish the UNL; will retry");
        }
        found
    }

    /// Keeps a report of the address a peer saw one of our TCP connections
    /// come from (one per reporter, the latest; at most
    /// [`MAX_TCP_REPORTS`]).
    fn add_tcp_report(&self, obs: natkit_traversal::classify::Observation) {
        // From another port (the listening port's 4-tuple to that node was
        // still taken, say by the last probe in TIME_WAIT): it says nothing
        // of the listening port's mapping, and must not replace a report
        // that does.
        if obs.local_port != self.port() {
            return;
        }
        let mut reports = self
            .inner
            .tcp_reports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        reports.retain(|o| o.reporter != obs.reporter);
        if reports.len() >= MAX_TCP_REPORTS {
            reports.remove(0);
        }
        reports.push(obs);
    }

    /// What our NAT does to TCP, from the addresses other nodes saw our TCP
    /// connections come from: the rendezvous nodes the node connects to after
    /// its dial-back check (see [`Node::check_reachability`]), each a real
    /// node id. Like [`Node::udp_classification`], reporters on loopback or on
    /// our LAN are not counted, and 3 reporter IPs are needed. When it is
    /// known, the UNL's NAT type follows this class (hole punching uses TCP),
    /// else the UDP one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use natkit::traversal::classify::NatClass;
    ///
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse()?).build().await?;
    /// assert!(matches!(node.tcp_classification().class, NatClass::Unknown { .. }));
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn tcp_classification(&self) -> Classification {
        let reports = self
            .inner
            .tcp_reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut classifier = natkit_traversal::classify::Classifier::new(
            natkit_traversal::classify::ClassifierConfig::default(),
            self.inner.lan.clone(),
        );
        for o in reports {
            // Local reporters (no NAT in between) are refused: they say nothing.
            let _ = classifier.observe(o);
        }
        classifier.classify(natkit_traversal::classify::Transport::Tcp, Instant::now())
    }

    /// The UNL in the DHT record last stored, if any.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert!(node.published_unl().is_none());
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn published_unl(&self) -> Option<Unl> {
        self.state().published.clone()
    }

    /// Whether peers can reach us by node id: our UNL is in the DHT, and
    /// unless we are known to be reachable, it lists rendezvous points (for
    /// reverse connects and hole punches to reach us). A node becomes
    /// reachable by itself after start-up; see [`Node::wait_reachable`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert!(!node.is_reachable_by_id()); // no bootstrap node: nothing published
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub fn is_reachable_by_id(&self) -> bool {
        self.state()
            .published
            .as_ref()
            .is_some_and(|u| u.node == NodeType::Reachable || !u.rendezvous.is_empty())
            && !self.relay_search_pending()
    }

    /// Waits until [`Node::is_reachable_by_id`], publishing now and then;
    /// gives up after `limit` with the last publish error (or
    /// [`NodeError::NotReachable`]).
    ///
    /// ```no_run
    /// # async fn demo(node: natkit::Node) -> Result<(), natkit::node::NodeError> {
    /// node.wait_reachable(std::time::Duration::from_secs(30)).await?;
    /// println!("others can connect to {} now", node.id());
    /// # Ok(()) }
    /// ```
    pub async fn wait_reachable(&self, limit: Duration) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = None;
        loop {
            if self.is_reachable_by_id() {
                return Ok(());
            }
            let mut pause = REACHABLE_POLL;
            if self.published_seq().is_none() {
                match self.publish().await {
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::info!(error = %e, "could not publish the UNL yet; retrying");
                        last = Some(e);
                        pause = PUBLISH_RETRY;
                    }
                }
            } else if !self.inner.registering.load(Ordering::SeqCst) {
                self.register_in_background();
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last.unwrap_or(NodeError::NotReachable {
                    secs: limit.as_secs_f64(),
                }));
            }
            tokio::select! {
                () = self.inner.cancel.cancelled() => return Err(NodeError::Publish(DhtError::Shutdown)),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes our UNL now (remade from what the DHT knows), whether or not
    /// it changed; returns the record's `seq`. Nodes do this by themselves;
    /// this is for when a peer must find the latest UNL at once.
    ///
    /// ```no_run
    /// # async fn demo(node: natkit::Node) -> Result<(), natkit::node::NodeError> {
    /// let seq = node.publish().await?;
    /// assert_eq!(node.published_seq(), Some(seq));
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self) -> Result<i64, NodeError> {
        self.refresh(true).await?;
        self.published_seq()
            .ok_or(NodeError::Publish(DhtError::NotStored {
                errors: Vec::new(),
            }))
    }

    /// Remakes the UNL; publishes it if it changed, if it was never
    /// published, or if `force`. Nothing is published without bootstrap
    /// nodes unless `force`.
    async fn refresh(&self, force: bool) -> Result<(), NodeError> {
        let inner = &self.inner;
        if !inner.publishing && !force {
            return Ok(());
        }
        let _one = inner.publish_lock.lock().await;
        let observed = match inner.dht.observed_address().await {
            Ok(o) => o.map(|(addr, _voters)| addr),
            Err(_) => return Ok(()), // shut down
        };
        let tcp = self.tcp_classification().class;
        let class = if matches!(tcp, NatClass::Unknown { .. }) {
            match self.udp_classification().await {
                Ok(c) => c.class,
                Err(_) => return Ok(()), // shut down
            }
        } else {
            tcp
        };
        let mut fresh = record::own_unl(self.id(), &inner.lan, inner.port, observed, class)
            .map_err(NodeError::Unl)?;
        match self.reachability() {
            Some(true) => fresh.node = NodeType::Reachable,
            Some(false) => fresh.node = NodeType::HolePunch,
            None => {}
        }
        if let Some(m) = self.mapping() {
            let (source, addr) = portmap::external(&m);
            fresh.add_addr(source, addr).map_err(NodeError::Unl)?;
            // The gateway is the outermost NAT: peers reach us through it.
            if observed.is_some_and(|o| o.ip() == addr.ip()) {
                fresh.node = NodeType::Reachable;
            }
        }
        // Not before the DHT has seen us. Unless we are known to be reachable
        // (an open NAT type may be a firewall), peers need rendezvous points
        // to reach us through.
        if observed.is_some() && fresh.node != NodeType::Reachable {
            self.register_in_background();
            self.relay_in_background();
        }
        for addr in self.relay_addrs() {
            fresh
                .add_addr(AddrSource::Relay, addr)
                .map_err(NodeError::Unl)?;
        }
        let points = match inner.dht.rendezvous_points().await {
            Ok(p) => p,
            Err(_) => return Ok(()), // shut down
        };
        for p in points.into_iter().take(MAX_RENDEZVOUS) {
            fresh.add_rendezvous(p).map_err(NodeError::Unl)?;
        }
        let (unl, seq) = {
            let mut st = self.state();
            let changed = !record::same_reach(&st.unl, &fresh);
            if !changed && st.published_seq.is_some() && !force {
                return Ok(());
            }
            if changed {
                let mut unl = fresh;
                unl.timestamp = record::unix_secs();
                unl.sign(&inner.key).map_err(NodeError::Unl)?;
                tracing::info!(unl = %unl.emit(), "UNL changed");
                st.unl = unl;
            }
            st.last_seq = record::unix_ms().max(st.last_seq + 1);
            (st.unl.clone(), st.last_seq)
        };
        let item = unl_record(&inner.key, &unl, seq).map_err(NodeError::Record)?;
        let result = match inner.dht.put_mutable(item, None).await {
            // A record of ours with this seq or a higher one is out there (an earlier run of
            // this identity, within the same millisecond or with a clock ahead): go past it.
            Err(DhtError::Conflict { .. }) => {
                let theirs = inner
                    .dht
                    .get_mutable(*self.id().as_bytes(), UNL_SALT, None)
                    .await
                    .ok()
                    .flatten()
                    .map_or(seq, |m| m.seq);
                let seq = {
                    let mut st = self.state();
                    st.last_seq = st.last_seq.max(theirs) + 1;
                    st.last_seq
                };
                let item = unl_record(&inner.key, &unl, seq).map_err(NodeError::Record)?;
                inner.dht.put_mutable(item, None).await.map(|_| seq)
            }
            other => other.map(|_| seq),
        };
        match result {
            Ok(seq) => {
                tracing::info!(seq, "UNL published in the DHT");
                let mut st = self.state();
                st.published_seq = Some(seq);
                st.published = Some(unl);
                Ok(())
            }
            Err(e) => Err(NodeError::Publish(e)),
        }
    }

    /// Starts registering with rendezvous nodes in the background, once (from
    /// [`Node::refresh`] when the DHT has seen us and our NAT type is not
    /// open): such a node cannot be reached unsolicited, so peers
    /// need rendezvous points to reach it through. When the registration
    /// answers, the UNL is remade with the points and republished. The task
    /// ends at [`Node::shutdown`], or once the registration and that publish
    /// have answered (each bounded by the DHT's timeouts).
    fn register_in_background(&self) {
        if self.inner.registering.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        let cancel = self.inner.cancel.clone();
        self.inner.tracker.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    r = node.register_rendezvous() => match r {
                        Ok(points) => {
                            tracing::info!(?points, "registered with rendezvous nodes");
                            // Now that we know natkit nodes: are we reachable?
                            node.check_reachability().await;
                        }
                        Err(e) => tracing::info!(error = %e, "could not register with rendezvous nodes"),
                    }
                }
            }
            .instrument(self.inner.span.clone()),
        );
    }

    /// Registers with rendezvous nodes now ([`Dht::register`]; the DHT keeps
    /// the registrations alive from then on) and lists them in the UNL
    /// (republished when it changes); returns the rendezvous points, empty if
    /// none accepted yet. A node whose NAT type is not open does this by
    /// itself in the background.
    ///
    /// ```no_run
    /// # async fn demo(node: natkit::Node) -> Result<(), natkit::node::NodeError> {
    /// let points = node.register_rendezvous().await?;
    /// println!("reachable through {points:?}; UNL: {}", node.unl().emit());
    /// # Ok(()) }
    /// ```
    pub async fn register_rendezvous(&self) -> Result<Vec<std::net::SocketAddr>, NodeError> {
        self.inner.registering.store(true, Ordering::SeqCst);
        let points = self
            .inner
            .dht
            .register()
            .await
            .map_err(NodeError::Register)?;
        if let Err(e) = self.refresh(false).await {
            tracing::info!(error = %e, "could not publish the UNL; will retry");
        }
        Ok(points)
    }

    /// What our NAT does to UDP, from the addresses the DHT's nodes saw our
    /// datagrams come from ([`Dht::observations`], classified by
    /// [`natkit_traversal::classify::Classifier`]), with the evidence: each
    /// reporter's vote. Reporters on loopback or on our LAN are left out (they
    /// see us without the NAT in between), so a node on loopback stays
    /// `Unknown`. A DHT reporter's node id is not known, only its address: each
    /// vote's `reporter` is a stand-in id derived from that address, stable for
    /// it; `reporter_ip` is real. The UNL's NAT type follows this class once it
    /// is known, recomputed every [`UNL_REFRESH_INTERVAL`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use natkit::traversal::classify::NatClass;
    ///
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse()?).build().await?;
    /// let c = node.udp_classification().await?;
    /// assert!(matches!(c.class, NatClass::Unknown { .. })); // nobody has seen us yet
    /// # node.shutdown().await; Ok(()) }
    /// ```
    pub async fn udp_classification(&self) -> Result<Classification, DhtError> {
        let inner = &self.inner;
        let observations = inner.dht.observations().await?;
        Ok(record::udp_classification(
            &observations,
            &inner.lan,
            inner.port,
            Instant::now(),
        ))
    }

    /// Looks the UNL of `node_id` up in the DHT and checks it
    /// ([`decode_record`]); the first valid record found is taken, without
    /// waiting for the lookup to reach every node close to the key (a
    /// connect that fails looks again, for the newest record: see
    /// [`Node::connect`]). Our own id gives our own UNL.
    ///
    /// ```no_run
    /// # async fn demo(alice: natkit::Node, bob: natkit::identity::NodeId) -> Result<(), natkit::node::ConnectError> {
    /// let unl = alice.lookup(bob).await?;
    /// println!("bob is at {:?}", unl.addrs);
    /// # Ok(()) }
    /// ```
    pub async fn lookup(&self, node_id: NodeId) -> Result<Unl, ConnectError> {
        self.lookup_with(node_id, true).await
    }

    /// [`Node::lookup`]; `first`: the first valid record, else the one with
    /// the highest `seq` once the lookup ended.
    async fn lookup_with(&self, node_id: NodeId, first: bool) -> Result<Unl, ConnectError> {
        if node_id == self.id() {
            return Ok(self.unl());
        }
        let timed_out = || ConnectError::LookupTimeout {
            node_id,
            secs: LOOKUP_TIMEOUT.as_secs_f64(),
        };
        let dht_err = |source| match source {
            DhtError::Shutdown => ConnectError::Shutdown,
            source => ConnectError::Lookup { node_id, source },
        };
        let found = |item: Option<natkit_dht::bep44::MutableItem>| match item {
            None => Err(ConnectError::NotFound { node_id }),
            Some(item) => decode_record(&node_id, &item)
                .map_err(|source| ConnectError::BadRecord { node_id, source }),
        };
        let dht = &self.inner.dht;
        let key = *node_id.as_bytes();
        if !first {
            return match tokio::time::timeout(LOOKUP_TIMEOUT, dht.get_mutable(key, UNL_SALT, None))
                .await
            {
                Err(_) => Err(timed_out()),
                Ok(Err(e)) => Err(dht_err(e)),
                Ok(Ok(item)) => found(item),
            };
        }
        let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
        let mut replies = dht
            .get_mutable_stream(key, UNL_SALT, None)
            .await
            .map_err(dht_err)?;
        loop {
            let event = match tokio::time::timeout_at(deadline, replies.recv()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => return Err(ConnectError::Shutdown),
                Ok(Some(e)) => e,
            };
            match event {
                natkit_dht::dht::LookupEvent::Reply { response: r, .. } => {
                    let (Some(k), Some(seq), Some(sig), Some(v)) = (r.k, r.seq, r.sig, r.v) else {
                        continue;
                    };
                    let item = natkit_dht::bep44::MutableItem {
                        k,
                        salt: UNL_SALT.to_vec(),
                        seq,
                        v,
                        sig,
                    };
                    // A forged or broken record from one node: wait for others.
                    if item.verify().is_err() {
                        continue;
                    }
                    if let Ok(unl) = decode_record(&node_id, &item) {
                        return Ok(unl);
                    }
                }
                natkit_dht::dht::LookupEvent::Done(natkit_dht::core::Outcome::Mutable(m)) => {
                    return found(m);
                }
                natkit_dht::dht::LookupEvent::Done(_) => return found(None),
            }
        }
    }

    /// Connects to `target`: a node id is looked up first ([`Node::lookup`]);
    /// then the planner's attempts race (LAN, mapped and direct dials, a
    /// reverse connect, a hole punch; see [`natkit_traversal::plan`]), each
    /// started one [`ATTEMPT_STAGGER`](natkit_traversal::plan::ATTEMPT_STAGGER)
    /// after the previous one (at once when every running one failed), and
    /// the first connection authenticated to the target's key is returned
    /// with the path it took. A connection that exists already is returned at
    /// once.
    ///
    /// When every attempt fails, the peer's UNL is looked up in the DHT once
    /// more: if it changed (the peer moved or restarted on another port), the
    /// new one is planned and tried ([`Path::retried`]).
    ///
    /// ```no_run
    /// # async fn demo(alice: natkit::Node) -> Result<(), Box<dyn std::error::Error>> {
    /// let target: natkit::node::Target = "nkaaaa...".parse()?; // a UNL, or a bare node id
    /// let (con, path) = alice.connect(target).await?;
    /// con.send("hello").await?;
    /// println!("{path} in {:?}", path.elapsed);
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        &self,
        target: impl Into<Target>,
    ) -> Result<(Connection, Path), ConnectError> {
        let t0 = Instant::now();
        let target = target.into();
        let (unl, lookup) = match target {
            Target::Unl(unl) => (*unl, None),
            Target::NodeId(id) => {
                let unl = self.lookup(id).await?;
                (unl, Some(t0.elapsed()))
            }
        };
        let node_id = unl.node_id;
        if node_id != self.id()
            && let Some(conn) = self.inner.net.connection(&node_id)
        {
            let path = Path {
                kind: if conn.relay().is_some() {
                    PathKind::Relayed
                } else {
                    PathKind::Direct
                },
                addr: conn.remote_addr(),
                lookup,
                signal_rtt: None,
                elapsed: Duration::ZERO,
                retried: false,
                relay: conn.relay(),
            };
            return Ok((conn, path));
        }
        let span =
            tracing::info_span!(parent: &self.inner.span, "connect", peer = %node_id.short());
        let first = self.try_plan(&unl).instrument(span.clone()).await;
        let mut failures = match first {
            Ok((conn, mut path)) => {
                path.lookup = lookup;
                return Ok((conn, path));
            }
            Err(Failed::Fatal(e)) => return Err(e),
            Err(Failed::All { failures, .. }) => failures,
        };
        // A stale UNL? Look the peer up again; one with other addresses (the
        // peer moved, or restarted on another port) gets one more plan.
        let t1 = Instant::now();
        let fresh = match self.lookup_with(node_id, false).await {
            Ok(fresh) if fresh.addrs != unl.addrs => fresh,
            _ => {
                let internet = plan::plan(&self.situation(), &unl, Instant::now())
                    .ok()
                    .and_then(|p| p.internet);
                return Err(ConnectError::AllFailed {
                    node_id,
                    failures,
                    internet,
                });
            }
        };
        tracing::info!(parent: &span, "the peer's UNL changed; trying the fresh one");
        let relookup = t1.elapsed();
        match self.try_plan(&fresh).instrument(span).await {
            Ok((conn, mut path)) => {
                path.lookup = Some(lookup.unwrap_or_default() + relookup);
                path.retried = true;
                Ok((conn, path))
            }
            Err(Failed::Fatal(e)) => Err(e),
            Err(Failed::All {
                failures: more,
                internet,
            }) => {
                failures.extend(more);
                Err(ConnectError::AllFailed {
                    node_id,
                    failures,
                    internet,
                })
            }
        }
    }

    /// Plans and races one connection to `unl`.
    async fn try_plan(&self, unl: &Unl) -> Result<(Connection, Path), Failed> {
        let node_id = unl.node_id;
        let started = Instant::now();
        let (steps, internet) = match plan::plan(&self.situation(), unl, started) {
            Ok(plan) => (
                connect::steps(&plan, self.inner.bind_ip, unl),
                plan.internet,
            ),
            // No direct attempt at all: the peer's relays, if it has any.
            Err(source) => {
                let relays = connect::relay_steps(&[], true, unl);
                if relays.is_empty() || source == plan::NoPath::SelfConnect {
                    return Err(Failed::Fatal(ConnectError::NoPath { node_id, source }));
                }
                (relays, Some(source))
            }
        };
        if self.inner.net.is_shut_down() {
            return Err(Failed::Fatal(ConnectError::Shutdown));
        }
        match connect::race(self, node_id, steps).await {
            Ok((conn, step, signal_rtt)) => {
                let path = Path {
                    kind: step.kind,
                    addr: conn.remote_addr(),
                    lookup: None,
                    signal_rtt,
                    elapsed: started.elapsed(),
                    retried: false,
                    relay: conn.relay(),
                };
                Ok((conn, path))
            }
            Err(failures) => {
                if self.inner.net.is_shut_down() {
                    return Err(Failed::Fatal(ConnectError::Shutdown));
                }
                Err(Failed::All { failures, internet })
            }
        }
    }

    /// What the planner knows of us: our LAN addresses, and whether there is
    /// no NAT (the DHT saw us at one of our own addresses).
    fn situation(&self) -> LocalSituation {
        let unl = self.unl();
        LocalSituation {
            node_id: self.id(),
            lan: unl
                .addrs
                .iter()
                .filter(|c| c.source == AddrSource::Lan)
                .map(|c| c.addr)
                .collect(),
            nat: unl.nat,
            reachable: unl.nat == NatType::Open || unl.node == NodeType::Reachable,
            port_mapped: unl.addrs.iter().any(|c| c.source.is_mapping()),
        }
    }

    /// The connection events (connected, line, disconnected) of the node's
    /// connection manager, inbound and outbound; see
    /// [`Net::next_event`](natkit_net::Net::next_event) for when they start.
    ///
    /// ```no_run
    /// # async fn demo(bob: natkit::Node) {
    /// use futures::StreamExt;
    /// use natkit::net::NetEvent;
    ///
    /// let mut events = std::pin::pin!(bob.events());
    /// while let Some(event) = events.next().await {
    ///     if let NetEvent::Line(con, line) = event {
    ///         let _ = con.send_line(&format!("echo: {line}"));
    ///     }
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> impl futures::Stream<Item = NetEvent> + Send + 'static {
        self.inner.net.events()
    }

    /// The connection manager (for everything [`Node`] does not wrap).
    ///
    /// ```no_run
    /// # fn demo(node: natkit::Node) {
    /// println!("{} connections", node.net().connections().len());
    /// # }
    /// ```
    pub fn net(&self) -> &Net {
        &self.inner.net
    }

    /// The DHT node (same key, same port number, UDP).
    ///
    /// ```no_run
    /// # async fn demo(node: natkit::Node) -> Result<(), natkit::dht::dht::DhtError> {
    /// println!("{} DHT nodes known", node.dht().stats().await?.routing_table_size);
    /// # Ok(()) }
    /// ```
    pub fn dht(&self) -> &Dht {
        &self.inner.dht
    }

    /// Closes every connection gracefully, stops the DHT node (saving its
    /// routing table in the state directory) and waits until every task has
    /// ended. The UNL record stays in the DHT until it expires.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// node.shutdown().await;
    /// assert!(node.net().is_shut_down());
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.cancel.cancel();
        inner.tracker.close();
        inner.tracker.wait().await;
        inner.net.shutdown().await;
        inner.relaying.shutdown().await;
        inner.dht.shutdown().await;
    }

    fn state(&self) -> MutexGuard<'_, UnlState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
