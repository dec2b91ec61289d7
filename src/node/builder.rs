//! [`NodeBuilder`]: binds the TCP listener and the DHT's UDP socket on one
//! port number, makes the first UNL and starts the node's task.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use natkit_dht::dht::{Dht, DhtError};
use natkit_identity::Keypair;
use natkit_net::{Net, NetConfig};
use natkit_traversal::classify::{MIN_REPORTER_IPS, NatClass};
use natkit_traversal::limits::LimitsConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{
    Inner, Node, NodeError, PORT_ATTEMPTS, ROUTING_TABLE_FILE, UnlState, record, refresh_loop,
};

/// Builds a [`Node`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), natkit::node::NodeError> {
/// use natkit::Node;
/// use natkit::identity::Keypair;
///
/// let node = Node::builder()
///     .key(Keypair::from_seed([1; 32]))
///     .bind_ip("127.0.0.1".parse().unwrap())
///     .port(0)
///     .build()
///     .await?;
/// assert_eq!(node.id(), Keypair::from_seed([1; 32]).node_id());
/// node.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    key: Option<Keypair>,
    port: u16,
    bind_ip: IpAddr,
    bootstrap: Vec<SocketAddr>,
    state_dir: Option<PathBuf>,
    net: NetConfig,
    limits: LimitsConfig,
    port_mapping: bool,
    relay: bool,
    relay_port: u16,
    relay_limits: natkit_relay::RelayLimits,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            key: None,
            port: 0,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            bootstrap: Vec::new(),
            state_dir: None,
            net: NetConfig::default(),
            limits: LimitsConfig::default(),
            port_mapping: true,
            relay: false,
            relay_port: 0,
            relay_limits: natkit_relay::RelayLimits::default(),
        }
    }
}

impl NodeBuilder {
    /// The node's identity (default: a new random key).
    ///
    /// ```
    /// use natkit::Node;
    /// use natkit::identity::Keypair;
    ///
    /// let builder = Node::builder().key(Keypair::from_seed([1; 32]));
    /// ```
    pub fn key(mut self, key: Keypair) -> Self {
        self.key = Some(key);
        self
    }

    /// The port of both the TCP listener and the DHT's UDP socket (default 0:
    /// any free port, the same number for both).
    ///
    /// ```
    /// let builder = natkit::Node::builder().port(50500);
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The local address to bind (default `0.0.0.0`: every interface, whose
    /// addresses the UNL lists). IPv4 only for now.
    ///
    /// ```
    /// let builder = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap());
    /// ```
    pub fn bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind_ip = ip;
        self
    }

    /// DHT nodes to join through (IPv4). Without any (and without a saved
    /// routing table in the [state directory](Self::state_dir)), the node
    /// contacts nobody and publishes nothing: it can only be reached by its
    /// UNL.
    ///
    /// ```
    /// let builder = natkit::Node::builder().bootstrap(&["127.0.0.1:6881".parse().unwrap()]);
    /// ```
    pub fn bootstrap(mut self, nodes: &[SocketAddr]) -> Self {
        self.bootstrap = nodes.to_vec();
        self
    }

    /// A directory for the node's state (created if missing): the DHT routing
    /// table ([`ROUTING_TABLE_FILE`]), loaded at start and saved at shutdown,
    /// so a restart rejoins without bootstrap nodes.
    ///
    /// ```
    /// let builder = natkit::Node::builder().state_dir("/var/lib/natkit");
    /// ```
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The connection manager's limits and timeouts (its `listen` address is
    /// replaced by [`bind_ip`](Self::bind_ip) and [`port`](Self::port)).
    ///
    /// ```
    /// use natkit::net::NetConfig;
    ///
    /// let builder = natkit::Node::builder().net_config(NetConfig { max_inbound: 16, ..NetConfig::default() });
    /// ```
    pub fn net_config(mut self, config: NetConfig) -> Self {
        self.net = config;
        self
    }

    /// The limits on what other nodes' traversal requests (reverse connects,
    /// hole punches) may make this node dial; see docs/traversal.md, "Abuse".
    ///
    /// ```
    /// use natkit::traversal::limits::LimitsConfig;
    ///
    /// let builder = natkit::Node::builder().traversal_limits(LimitsConfig { node_burst: 2, ..LimitsConfig::default() });
    /// ```
    pub fn traversal_limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// Whether the node maps its port on the gateway (PCP, NAT-PMP or UPnP)
    /// in the background, keeps the lease and removes it at shutdown (default
    /// on; never for a node bound to loopback). The mapped address goes in
    /// the UNL; see [`Node::mapping`].
    ///
    /// ```
    /// let builder = natkit::Node::builder().port_mapping(false);
    /// ```
    pub fn port_mapping(mut self, on: bool) -> Self {
        self.port_mapping = on;
        self
    }

    /// Whether the node serves as a relay for others (default off): it relays on a TCP port
    /// of its own ([`relay_port`](Self::relay_port)) and announces it in the DHT, so that
    /// nodes that cannot be reached directly find it and reserve. Only for nodes reachable
    /// from the internet. See [`Node::relay_addr`] and docs/relay.md.
    ///
    /// ```
    /// let builder = natkit::Node::builder().relay(true).relay_port(4001);
    /// ```
    pub fn relay(mut self, on: bool) -> Self {
        self.relay = on;
        self
    }

    /// The relay's TCP port (default 0: any free port; the DHT announcement carries it).
    ///
    /// ```
    /// let builder = natkit::Node::builder().relay(true).relay_port(4001);
    /// ```
    pub fn relay_port(mut self, port: u16) -> Self {
        self.relay_port = port;
        self
    }

    /// The relay's limits ([`natkit_relay::RelayLimits`], each a named value with its
    /// unit), when the node serves as a relay.
    ///
    /// ```
    /// use natkit::relay::RelayLimits;
    ///
    /// let builder = natkit::Node::builder()
    ///     .relay(true)
    ///     .relay_limits(RelayLimits { max_reservations: 16, ..RelayLimits::default() });
    /// ```
    pub fn relay_limits(mut self, limits: natkit_relay::RelayLimits) -> Self {
        self.relay_limits = limits;
        self
    }

    /// Binds TCP and UDP, joins the DHT (when bootstrap nodes were given),
    /// makes and signs the UNL and publishes it. A failed publish does not fail
    /// the build: it is logged and retried every
    /// [`UNL_REFRESH_INTERVAL`](super::UNL_REFRESH_INTERVAL)
    /// ([`Node::published_seq`] tells).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), natkit::node::NodeError> {
    /// let node = natkit::Node::builder().bind_ip("127.0.0.1".parse().unwrap()).build().await?;
    /// assert!(node.unl().addrs.iter().all(|c| c.addr.port() == node.port()));
    /// node.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn build(mut self) -> Result<Node, NodeError> {
        let key = match self.key.take() {
            Some(k) => k,
            None => Keypair::generate().map_err(NodeError::Key)?,
        };
        if self.bind_ip.is_ipv6() {
            return Err(NodeError::Ipv6(self.bind_ip));
        }
        let table_file = match &self.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| NodeError::StateDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(dir.join(ROUTING_TABLE_FILE))
            }
            None => None,
        };
        // A saved routing table is a way into the DHT as good as bootstrap nodes.
        let has_table = table_file.as_ref().is_some_and(|f| f.is_file());
        let span = tracing::info_span!("node", id = %key.node_id().short());
        let (net, dht) = bind(&self, &key, table_file)
            .instrument(span.clone())
            .await?;
        let port = net.local_addr().port();
        let lan = record::lan_ips(self.bind_ip);
        let mut unl = record::own_unl(
            key.node_id(),
            &lan,
            port,
            None,
            NatClass::Unknown {
                have: 0,
                need: MIN_REPORTER_IPS,
            },
        )
        .map_err(NodeError::Unl)?;
        unl.timestamp = record::unix_secs();
        unl.sign(&key).map_err(NodeError::Unl)?;
        let relay_client = natkit_relay::RelayClient::bind(key.clone(), self.bind_ip)
            .await
            .map_err(|e| NodeError::Relay(Box::new(e)))?;
        let relay_server = if self.relay {
            let config = NetConfig {
                listen: SocketAddr::new(self.bind_ip, self.relay_port),
                ..NetConfig::default()
            };
            let relay_net = Net::bind(key.clone(), config)
                .await
                .map_err(|e| NodeError::Relay(Box::new(natkit_relay::RelayError::Net(e))))?;
            Some(
                natkit_relay::RelayServer::start(relay_net, self.relay_limits.clone())
                    .instrument(span.clone())
                    .await
                    .map_err(|e| NodeError::Relay(Box::new(e)))?,
            )
        } else {
            None
        };
        let inner = Arc::new(Inner {
            key,
            net,
            dht,
            bind_ip: self.bind_ip,
            port,
            lan,
            publishing: !self.bootstrap.is_empty() || has_table,
            registering: AtomicBool::new(false),
            state: Mutex::new(UnlState {
                unl,
                published_seq: None,
                published: None,
                last_seq: 0,
            }),
            publish_lock: tokio::sync::Mutex::new(()),
            traversal: super::traverse::Traversal::new(self.limits.clone()),
            mapping: Mutex::new(None),
            reachability: Mutex::new(None),
            check_lock: tokio::sync::Mutex::new(()),
            tcp_reports: Mutex::new(Vec::new()),
            relaying: super::relay::Relaying::new(relay_client, relay_server),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            span,
        });
        let node = Node { inner };
        // Subscribed before the first publish, so no request is missed.
        let inbox = node
            .inner
            .dht
            .messages_on(natkit_dht::rendezvous::CHANNEL_TRAVERSAL)
            .await
            .map_err(|source| NodeError::Dht {
                addr: node.inner.dht.local_addr(),
                source,
            })?;
        node.inner.tracker.spawn(
            super::traverse::dispatch_loop(
                Arc::downgrade(&node.inner),
                inbox,
                node.inner.cancel.clone(),
            )
            .instrument(node.inner.span.clone()),
        );
        if self.port_mapping && !self.bind_ip.is_loopback() {
            node.inner.tracker.spawn(
                super::portmap::map_loop(
                    Arc::downgrade(&node.inner),
                    self.bind_ip,
                    port,
                    node.inner.cancel.clone(),
                )
                .instrument(node.inner.span.clone()),
            );
        }
        if let Some(addr) = node.relay_addr() {
            node.inner.tracker.spawn(
                super::relay::announce_loop(
                    Arc::downgrade(&node.inner),
                    node.inner.cancel.clone(),
                    addr,
                )
                .instrument(node.inner.span.clone()),
            );
        }
        if let Err(e) = node.refresh(false).await {
            tracing::warn!(parent: &node.inner.span, error = %e, "could not publish the UNL; retrying in the background");
        }
        let weak = Arc::downgrade(&node.inner);
        let cancel = node.inner.cancel.clone();
        node.inner
            .tracker
            .spawn(refresh_loop(weak, cancel).instrument(node.inner.span.clone()));
        Ok(node)
    }
}

/// Binds the TCP listener, then the DHT on the same port number; with port 0
/// tries again with another port when UDP has it taken.
async fn bind(
    b: &NodeBuilder,
    key: &Keypair,
    table_file: Option<PathBuf>,
) -> Result<(Net, Dht), NodeError> {
    for _ in 0..PORT_ATTEMPTS {
        let config = NetConfig {
            listen: SocketAddr::new(b.bind_ip, b.port),
            ..b.net.clone()
        };
        let net = Net::bind(key.clone(), config)
            .await
            .map_err(NodeError::Net)?;
        let addr = SocketAddr::new(b.bind_ip, net.local_addr().port());
        let mut dht = Dht::builder()
            .identity(key.signing_key().clone())
            .bind_addr(addr)
            .bootstrap(&b.bootstrap);
        if let Some(f) = &table_file {
            dht = dht.table_file(f);
        }
        match dht.build().await {
            Ok(dht) => {
                tracing::info!(%addr, "node started (TCP and UDP)");
                return Ok((net, dht));
            }
            Err(DhtError::Io(e)) if b.port == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::debug!(%addr, "UDP port taken; trying another");
                net.shutdown().await;
            }
            Err(source) => {
                net.shutdown().await;
                return Err(NodeError::Dht { addr, source });
            }
        }
    }
    Err(NodeError::NoFreePort { ip: b.bind_ip })
}
