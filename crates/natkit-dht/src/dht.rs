//! The tokio driver: one UDP socket and one task around a [`Core`]. The task only moves
//! datagrams, passes requests in and results out, and sleeps until the core's next deadline.
//! It also logs the requests' progress (`info`: each request and its result; `debug`: each
//! lookup reply), which the silent core cannot.
//!
//! ```no_run
//! # async fn demo() -> Result<(), natkit_dht::dht::DhtError> {
//! use natkit_dht::{Value, dht::Dht};
//!
//! let dht = Dht::builder()
//!     .bind_addr("127.0.0.1:0".parse().expect("address"))
//!     .bootstrap(&["127.0.0.1:6881".parse().expect("address")])
//!     .build()
//!     .await?;
//! let target = dht.put_immutable(Value::Bytes(b"hello".to_vec())).await?;
//! assert!(dht.get_immutable(target).await?.is_some());
//! dht.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;

use crate::bencode::Value;
use crate::bep44::{Bep44Error, MutableItem};
use crate::core::{Core, OpId, Outcome, Request};
use crate::id::{Id, NodeInfo};
use crate::krpc::{ERROR_CAS_MISMATCH, ERROR_SEQ_TOO_LOW, PUBLIC_KEY_BYTES};
use crate::rendezvous::{CHANNEL_USER, CHANNELS, Incoming, MAX_PAYLOAD_BYTES};
use crate::routing::{RoutingTable, SavedTable, TableFileError};
use crate::server::{QueryHandler, RegisterError};
use crate::stats::Stats;

mod progress;
use progress::Progress;

/// Requests queued between the API and the node task.
pub const COMMAND_QUEUE: usize = 256;

/// Delivered messages queued for [`Dht::messages`]; when it is full, messages wait in the
/// node (up to [`crate::rendezvous::MAX_INBOX`]), then senders are told the node is busy.
pub const MESSAGE_QUEUE: usize = 256;

/// Largest datagram read (the UDP maximum).
pub const MAX_DATAGRAM_BYTES: usize = 65_535;

/// Why a DHT call failed.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// Binding or using the socket failed.
    #[error("DHT socket: {0}")]
    Io(#[from] std::io::Error),
    /// The saved routing table could not be read or written.
    #[error(transparent)]
    TableFile(#[from] TableFileError),
    /// A handler could not be registered.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The item breaks a BEP 44 limit.
    #[error(transparent)]
    Bep44(#[from] Bep44Error),
    /// The operating system gave no randomness.
    #[error("no randomness: {0}")]
    Random(String),
    /// The node was shut down.
    #[error("the DHT node is shut down")]
    Shutdown,
    /// Too many requests are running.
    #[error(
        "the DHT node is busy ({} requests running)",
        crate::core::MAX_OPERATIONS
    )]
    Busy,
    /// A storing node refused a mutable put because it holds a newer item (302) or its `seq` is
    /// not the put's `cas` (301): someone else wrote meanwhile. Get the item and retry.
    #[error(
        "a storing node refused the put: {} ({code}); {accepted} nodes accepted it",
        crate::krpc::error_name(*.code)
    )]
    Conflict {
        /// 301 (CAS mismatch) or 302 (seq too low).
        code: i64,
        /// Nodes that accepted it anyway (they held nothing, or an older item).
        accepted: usize,
    },
    /// Sending or receiving messages, or registering, needs an identity
    /// ([`DhtBuilder::identity`]).
    #[error("no identity: build the DHT node with an identity key to use messages")]
    NoIdentity,
    /// A message payload is over [`MAX_PAYLOAD_BYTES`].
    #[error("message payload of {len} bytes is over the limit of {MAX_PAYLOAD_BYTES}")]
    PayloadTooBig {
        /// The payload's length.
        len: usize,
    },
    /// A message channel that does not exist (see [`crate::rendezvous::CHANNELS`]).
    #[error("no message channel {channel} (there are {})", CHANNELS)]
    UnknownChannel {
        /// The channel asked for.
        channel: u8,
    },
    /// No node acknowledged the message. Its text names the codes
    /// ([`crate::rendezvous::describe_errors`]).
    #[error("message not delivered: {}", not_delivered(.errors))]
    NotDelivered {
        /// The error code of each node tried (480 not registered there, 481 no answer, 482
        /// busy, 483 refused, 204 not a natkit node); empty if there was nobody to try.
        errors: Vec<i64>,
    },
    /// No node accepted a put or announce. Its text names the codes
    /// ([`crate::rendezvous::describe_errors`]).
    #[error("no node stored the item{}", not_stored(.errors))]
    NotStored {
        /// Error codes returned by the nodes asked.
        errors: Vec<i64>,
    },
}

fn not_delivered(errors: &[i64]) -> String {
    if errors.is_empty() {
        return "no node to give it to (no rendezvous node found)".to_owned();
    }
    crate::rendezvous::describe_errors(errors)
}

fn not_stored(errors: &[i64]) -> String {
    if errors.is_empty() {
        return " (no node answered)".to_owned();
    }
    format!(": {}", crate::rendezvous::describe_errors(errors))
}

/// Builds a [`Dht`].
pub struct DhtBuilder {
    bind: SocketAddr,
    bootstrap: Vec<SocketAddrV4>,
    read_only: bool,
    id: Option<Id>,
    table_file: Option<PathBuf>,
    handlers: Vec<(String, Box<dyn QueryHandler>)>,
    identity: Option<SigningKey>,
    rendezvous_server: bool,
    keepalive: Option<Duration>,
}

impl std::fmt::Debug for DhtBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtBuilder")
            .field("bind", &self.bind)
            .field("bootstrap", &self.bootstrap)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl DhtBuilder {
    /// The local UDP address (default `0.0.0.0:0`). IPv4 only for now.
    pub fn bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Nodes to bootstrap from (IPv4 addresses; others are ignored). No default: natkit never
    /// contacts a public router unless told to.
    pub fn bootstrap(mut self, nodes: &[SocketAddr]) -> Self {
        self.bootstrap = nodes
            .iter()
            .filter_map(|a| match a {
                SocketAddr::V4(v4) => Some(*v4),
                SocketAddr::V6(_) => None,
            })
            .collect();
        self
    }

    /// BEP 43 read-only mode: send `ro: 1`, answer no queries.
    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    /// A fixed node id (default: the saved table's, else random; either is replaced by a BEP 42
    /// secure id once enough nodes agree on our public IP). A fixed id is kept as given.
    pub fn id(mut self, id: Id) -> Self {
        self.id = Some(id);
        self
    }

    /// Load the routing table from this file at start (if it exists) and save it at shutdown.
    pub fn table_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.table_file = Some(path.into());
        self
    }

    /// Answer the `natkit.*` method with `handler`.
    pub fn handler(mut self, method: &str, handler: Box<dyn QueryHandler>) -> Self {
        self.handlers.push((method.to_owned(), handler));
        self
    }

    /// The node's identity: messages are sent from and delivered to this key's public half,
    /// and [`Dht::register`] registers it with rendezvous nodes.
    pub fn identity(mut self, key: SigningKey) -> Self {
        self.identity = Some(key);
        self
    }

    /// Whether to serve as a rendezvous node for others (answer `natkit.announce`). Default:
    /// yes, unless read-only. A node behind NAT is of no use as one.
    pub fn rendezvous_server(mut self, serve: bool) -> Self {
        self.rendezvous_server = serve;
        self
    }

    /// How often our registrations are refreshed (default
    /// [`crate::rendezvous::KEEPALIVE_INTERVAL`]); must be below the NAT's UDP timeout.
    pub fn keepalive_interval(mut self, every: Duration) -> Self {
        self.keepalive = Some(every);
        self
    }

    /// Binds the socket, starts the node task and, if bootstrap nodes were given, bootstraps.
    pub async fn build(self) -> Result<Dht, DhtError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| DhtError::Random(e.to_string()))?;
        let now = Instant::now();
        let saved = match &self.table_file {
            Some(p) if p.exists() => Some(SavedTable::load(p)?),
            _ => None,
        };
        let table = match (&saved, self.id) {
            (Some(s), None) => RoutingTable::from_saved(s, now),
            (Some(s), Some(id)) => {
                let mut t = RoutingTable::from_saved(s, now);
                if t.own_id() != id {
                    t = RoutingTable::new(id, now);
                }
                t
            }
            (None, id) => {
                let id = id.unwrap_or_else(|| {
                    let mut b = [0u8; 20];
                    b.copy_from_slice(&seed[12..32]);
                    Id(b)
                });
                RoutingTable::new(id, now)
            }
        };
        let mut core = Core::new(table, self.read_only, seed, now);
        for (method, h) in self.handlers {
            core.server_mut().register(&method, h)?;
        }
        core.set_unix_time_ms(now, unix_now_ms());
        core.set_adopt_secure_id(self.id.is_none());
        core.set_rendezvous_server(self.rendezvous_server);
        if let Some(every) = self.keepalive {
            core.set_keepalive_interval(every);
        }
        let has_identity = self.identity.is_some();
        if let Some(key) = self.identity {
            core.set_identity(key);
        }
        let socket = UdpSocket::bind(self.bind).await?;
        let local_addr = socket.local_addr()?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let cancel = CancellationToken::new();
        let id = core.id();
        let task = tokio::spawn(run(socket, core, rx, cancel.clone(), self.table_file));
        let dht = Dht {
            commands: tx,
            local_addr,
            id,
            has_identity,
            bootstrap: self.bootstrap,
            cancel,
            task: Mutex::new(Some(task)),
        };
        if !dht.bootstrap.is_empty() {
            dht.bootstrap().await?;
        }
        Ok(dht)
    }
}

/// A callback for delivered messages (see [`Dht::add_message_handler`]).
pub type MessageHandler = Box<dyn FnMut(&Incoming) + Send>;

/// What a streaming lookup ([`Dht::find_node_stream`], [`Dht::get_peers_stream`]) yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupEvent {
    /// A node answered (closer nodes, peers, tokens: all in `response`).
    Reply {
        /// Who answered.
        from: NodeInfo,
        /// Its answer.
        response: crate::krpc::Response,
    },
    /// The lookup ended with this result (the same [`Dht::find_node`] or
    /// [`Dht::get_peers`] would return); nothing follows.
    Done(Outcome),
}

/// Events a streaming lookup may queue before its reader takes them; a lookup gets far
/// fewer replies than this, so none is dropped unless the reader stops reading.
pub const LOOKUP_STREAM_QUEUE: usize = 512;

enum Command {
    Start(Request, oneshot::Sender<Outcome>),
    StartStream(Request, mpsc::Sender<LookupEvent>),
    Stats(oneshot::Sender<Stats>),
    Observations(oneshot::Sender<Vec<crate::stats::Observation>>),
    Forget(Id),
    AddHandler(MessageHandler, oneshot::Sender<()>),
    Subscribe(u8, mpsc::Sender<Incoming>, oneshot::Sender<()>),
    RendezvousPoints(oneshot::Sender<Vec<SocketAddr>>),
    RendezvousNodes(oneshot::Sender<Vec<(SocketAddr, Option<[u8; PUBLIC_KEY_BYTES]>)>>),
}

fn unix_now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A running DHT node. Dropping it stops the node task; [`Dht::shutdown`] also waits for it.
#[derive(Debug)]
pub struct Dht {
    commands: mpsc::Sender<Command>,
    local_addr: SocketAddr,
    id: Id,
    has_identity: bool,
    bootstrap: Vec<SocketAddrV4>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Dht {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Dht {
    /// A builder with the defaults.
    pub fn builder() -> DhtBuilder {
        DhtBuilder {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            bootstrap: Vec::new(),
            read_only: false,
            id: None,
            table_file: None,
            handlers: Vec::new(),
            identity: None,
            rendezvous_server: true,
            keepalive: None,
        }
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Our node id at start. Unless it was fixed with [`DhtBuilder::id`], it changes to a BEP
    /// 42 secure id once enough nodes agree on a public IP it does not match
    /// ([`Stats::id_changes`]).
    pub fn id(&self) -> Id {
        self.id
    }

    async fn request(&self, req: Request) -> Result<Outcome, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Start(req, tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        match rx.await.map_err(|_| DhtError::Shutdown)? {
            Outcome::Busy => Err(DhtError::Busy),
            o => Ok(o),
        }
    }

    async fn nodes(&self, req: Request) -> Result<Vec<NodeInfo>, DhtError> {
        match self.request(req).await? {
            Outcome::Nodes(n) => Ok(n),
            _ => Ok(Vec::new()),
        }
    }

    /// Looks up our own id from the bootstrap nodes and the table; returns the routing table
    /// size afterwards.
    pub async fn bootstrap(&self) -> Result<usize, DhtError> {
        self.nodes(Request::Bootstrap(self.bootstrap.clone()))
            .await?;
        let known = self.stats().await?.routing_table_size;
        tracing::info!(
            nodes_known = known,
            bootstrap_nodes = self.bootstrap.len(),
            "DHT bootstrap done"
        );
        Ok(known)
    }

    /// The closest nodes to `target` that answered.
    pub async fn find_node(&self, target: Id) -> Result<Vec<NodeInfo>, DhtError> {
        self.nodes(Request::FindNode(target)).await
    }

    async fn stream(&self, req: Request) -> Result<mpsc::Receiver<LookupEvent>, DhtError> {
        let (tx, rx) = mpsc::channel(LOOKUP_STREAM_QUEUE);
        self.commands
            .send(Command::StartStream(req, tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        Ok(rx)
    }

    /// [`Dht::find_node`] as a stream: every reply as it arrives, then
    /// [`LookupEvent::Done`] with the closest nodes.
    pub async fn find_node_stream(
        &self,
        target: Id,
    ) -> Result<mpsc::Receiver<LookupEvent>, DhtError> {
        self.stream(Request::FindNode(target)).await
    }

    /// [`Dht::get_peers`] as a stream: every reply (with its `values`) as it arrives, then
    /// [`LookupEvent::Done`] with all peers found.
    pub async fn get_peers_stream(
        &self,
        info_hash: Id,
    ) -> Result<mpsc::Receiver<LookupEvent>, DhtError> {
        self.stream(Request::GetPeers(info_hash)).await
    }

    /// Peers announced for `info_hash`.
    pub async fn get_peers(&self, info_hash: Id) -> Result<Vec<SocketAddr>, DhtError> {
        match self.request(Request::GetPeers(info_hash)).await? {
            Outcome::Peers(p) => Ok(p),
            _ => Ok(Vec::new()),
        }
    }

    async fn stored(&self, req: Request) -> Result<(Id, usize), DhtError> {
        match self.request(req).await? {
            Outcome::Stored {
                target, accepted, ..
            } if accepted > 0 => Ok((target, accepted)),
            Outcome::Stored { errors, .. } => Err(DhtError::NotStored { errors }),
            _ => Err(DhtError::NotStored { errors: Vec::new() }),
        }
    }

    /// Announces us as a peer for `info_hash` on `port` (`None`: our UDP port, `implied_port`).
    /// Returns how many nodes accepted.
    pub async fn announce_peer(&self, info_hash: Id, port: Option<u16>) -> Result<usize, DhtError> {
        Ok(self.stored(Request::Announce(info_hash, port)).await?.1)
    }

    /// Stores an immutable value on the closest nodes and republishes it hourly; returns its
    /// target.
    pub async fn put_immutable(&self, v: Value) -> Result<Id, DhtError> {
        let len = crate::bencode::emit(&v).len();
        if len > crate::bep44::MAX_VALUE_BYTES {
            return Err(Bep44Error::ValueTooBig { len }.into());
        }
        Ok(self.stored(Request::PutImmutable(v)).await?.0)
    }

    /// The immutable value stored under `target`, verified.
    pub async fn get_immutable(&self, target: Id) -> Result<Option<Value>, DhtError> {
        match self.request(Request::GetImmutable(target)).await? {
            Outcome::Immutable(v) => Ok(v),
            _ => Ok(None),
        }
    }

    /// Stores a signed item on the closest nodes (with `cas`, only where the stored `seq` is
    /// `cas`); returns its target. Any 301/302 refusal is reported as [`DhtError::Conflict`].
    pub async fn put_mutable(&self, item: MutableItem, cas: Option<i64>) -> Result<Id, DhtError> {
        item.verify()?;
        match self.request(Request::PutMutable(item, cas)).await? {
            Outcome::Stored {
                accepted, errors, ..
            } if errors
                .iter()
                .any(|&c| c == ERROR_CAS_MISMATCH || c == ERROR_SEQ_TOO_LOW) =>
            {
                let code = if errors.contains(&ERROR_CAS_MISMATCH) {
                    ERROR_CAS_MISMATCH
                } else {
                    ERROR_SEQ_TOO_LOW
                };
                Err(DhtError::Conflict { code, accepted })
            }
            Outcome::Stored {
                target, accepted, ..
            } if accepted > 0 => Ok(target),
            Outcome::Stored { errors, .. } => Err(DhtError::NotStored { errors }),
            _ => Err(DhtError::NotStored { errors: Vec::new() }),
        }
    }

    /// The mutable item under `k` and `salt` with the highest `seq` found, verified.
    pub async fn get_mutable(
        &self,
        k: [u8; PUBLIC_KEY_BYTES],
        salt: &[u8],
        more_recent_than: Option<i64>,
    ) -> Result<Option<MutableItem>, DhtError> {
        let req = Request::GetMutable {
            k,
            salt: salt.to_vec(),
            more_recent_than,
        };
        match self.request(req).await? {
            Outcome::Mutable(m) => Ok(m),
            _ => Ok(None),
        }
    }

    /// [`Dht::get_mutable`] as a stream: every reply as it arrives (a reply with the item has
    /// `k`, `seq`, `sig` and `v`; check it with [`MutableItem::verify`] before believing it),
    /// then [`LookupEvent::Done`] with the highest `seq` found. For a reader that can act on
    /// the first item and does not need to wait for the lookup to end.
    pub async fn get_mutable_stream(
        &self,
        k: [u8; PUBLIC_KEY_BYTES],
        salt: &[u8],
        more_recent_than: Option<i64>,
    ) -> Result<mpsc::Receiver<LookupEvent>, DhtError> {
        self.stream(Request::GetMutable {
            k,
            salt: salt.to_vec(),
            more_recent_than,
        })
        .await
    }

    /// Stops republishing our item under `target` (puts are republished hourly until then).
    pub async fn stop_republishing(&self, target: Id) -> Result<(), DhtError> {
        self.commands
            .send(Command::Forget(target))
            .await
            .map_err(|_| DhtError::Shutdown)
    }

    /// Counters, routing table size and observed address.
    pub async fn stats(&self) -> Result<Stats, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats(tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }

    /// Our address as other nodes see it (BEP 42 `ip`), and how many distinct nodes agree.
    pub async fn observed_address(&self) -> Result<Option<(SocketAddr, usize)>, DhtError> {
        Ok(self.stats().await?.observed_address)
    }

    /// Every node's latest report of the address our datagrams came from (BEP 42 `ip` in its
    /// answers), oldest first: the UDP evidence for a NAT classifier (which reporters, from
    /// which IPs, saw which address and port, when). At most
    /// [`crate::stats::MAX_OBSERVATIONS`], none older than [`crate::stats::OBSERVATION_TTL`]
    /// (give or take the minute between expiries).
    pub async fn observations(&self) -> Result<Vec<crate::stats::Observation>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Observations(tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }

    /// Registers our identity with up to [`crate::rendezvous::RENDEZVOUS_NODES`] rendezvous
    /// nodes — the natkit nodes closest to our rendezvous target, or else natkit nodes found on
    /// [`crate::rendezvous::service_info_hash`] — and from then on keeps the registrations (and
    /// our NAT mappings to them) alive, replacing nodes that stop answering. Returns the
    /// rendezvous nodes, to put in our UNL; empty if none accepted (it keeps trying).
    pub async fn register(&self) -> Result<Vec<SocketAddr>, DhtError> {
        if !self.has_identity {
            return Err(DhtError::NoIdentity);
        }
        match self.request(Request::Register).await? {
            Outcome::Registered(points) => Ok(points),
            _ => Ok(Vec::new()),
        }
    }

    /// Our current rendezvous nodes (empty unless [`Dht::register`] was called).
    pub async fn rendezvous_points(&self) -> Result<Vec<SocketAddr>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::RendezvousPoints(tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }

    /// Our rendezvous nodes with their public keys, when they sent one (natkit nodes with an
    /// identity do; see [`crate::rendezvous::RESPONSE_KEY`]).
    pub async fn rendezvous_nodes(
        &self,
    ) -> Result<Vec<(SocketAddr, Option<[u8; PUBLIC_KEY_BYTES]>)>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::RendezvousNodes(tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }

    /// Stores `peer` for `info_hash` in this node's own store (no lookup, nothing sent), so
    /// that `get_peers` queries reaching this node return it; it expires like any announced
    /// peer, so call it again at least every half hour. For a service on this node that
    /// others look for through the nodes they know (a relay, see
    /// [`crate::rendezvous::relay_info_hash`]).
    pub async fn announce_here(&self, info_hash: Id, peer: SocketAddr) -> Result<(), DhtError> {
        self.stored(Request::AnnounceHere(info_hash, peer))
            .await
            .map(|_| ())
    }

    /// Announces this node on [`crate::rendezvous::service_info_hash`] as willing to serve as
    /// a rendezvous node, so nodes find it in a DHT shared with other implementations. Only
    /// for nodes reachable from the internet; peers forget it after 30 minutes.
    pub async fn announce_rendezvous_service(&self) -> Result<usize, DhtError> {
        self.announce_peer(crate::rendezvous::service_info_hash(), None)
            .await
    }

    async fn message(&self, req: Request) -> Result<(), DhtError> {
        if !self.has_identity {
            return Err(DhtError::NoIdentity);
        }
        if let Request::SendMessage { payload, .. } = &req
            && payload.len() > MAX_PAYLOAD_BYTES
        {
            return Err(DhtError::PayloadTooBig { len: payload.len() });
        }
        match self.request(req).await? {
            Outcome::Delivered => Ok(()),
            Outcome::NotDelivered { errors } => Err(DhtError::NotDelivered { errors }),
            _ => Err(DhtError::NotDelivered { errors: Vec::new() }),
        }
    }

    /// Sends a signed message to the node with public key `to`, through the nodes registered
    /// closest to its rendezvous target (found by a lookup), so it reaches nodes behind NAT.
    /// `Ok` means the recipient acknowledged it.
    pub async fn send_message(
        &self,
        to: [u8; PUBLIC_KEY_BYTES],
        payload: &[u8],
    ) -> Result<(), DhtError> {
        self.message(Request::SendMessage {
            to,
            payload: payload.to_vec(),
            via: Vec::new(),
            relay: false,
            channel: CHANNEL_USER,
        })
        .await
    }

    /// Like [`Dht::send_message`], but through the given rendezvous points (from the
    /// recipient's UNL) or the recipient's own address: no lookup.
    pub async fn send_message_via(
        &self,
        to: [u8; PUBLIC_KEY_BYTES],
        payload: &[u8],
        via: &[SocketAddr],
    ) -> Result<(), DhtError> {
        if via.is_empty() {
            return Err(DhtError::NotDelivered { errors: Vec::new() });
        }
        self.send_on(CHANNEL_USER, to, payload, via).await
    }

    /// Sends a signed message on `channel` (for example
    /// [`crate::rendezvous::CHANNEL_TRAVERSAL`] for connection set-up): through `via` (the
    /// recipient's rendezvous points or its own address) if given, else through the nodes
    /// closest to its rendezvous target, found by a lookup. It reaches the recipient's
    /// [`Dht::messages_on`] for that channel, never its application's [`Dht::messages`].
    pub async fn send_on(
        &self,
        channel: u8,
        to: [u8; PUBLIC_KEY_BYTES],
        payload: &[u8],
        via: &[SocketAddr],
    ) -> Result<(), DhtError> {
        if channel >= CHANNELS {
            return Err(DhtError::UnknownChannel { channel });
        }
        let v4: Vec<SocketAddrV4> = via
            .iter()
            .filter_map(|a| match a {
                SocketAddr::V4(v4) => Some(*v4),
                SocketAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() && !via.is_empty() {
            return Err(DhtError::NotDelivered { errors: Vec::new() });
        }
        self.message(Request::SendMessage {
            to,
            payload: payload.to_vec(),
            via: v4,
            relay: false,
            channel,
        })
        .await
    }

    /// Like [`Dht::send_message`], but routed hop by hop: each node passes it to the closest
    /// node to the recipient's rendezvous target it knows (at most
    /// [`crate::rendezvous::MAX_HOPS`] hops) until one that holds the recipient's registration
    /// delivers it (storjnode's `relay_message`). No lookup by the sender.
    pub async fn relay_message(
        &self,
        to: [u8; PUBLIC_KEY_BYTES],
        payload: &[u8],
    ) -> Result<(), DhtError> {
        self.message(Request::SendMessage {
            to,
            payload: payload.to_vec(),
            via: Vec::new(),
            relay: true,
            channel: CHANNEL_USER,
        })
        .await
    }

    /// Calls `handler` on the node's task for every message delivered to us. It must return
    /// quickly; use [`Dht::messages`] to handle messages elsewhere.
    pub async fn add_message_handler(
        &self,
        handler: impl FnMut(&Incoming) + Send + 'static,
    ) -> Result<(), DhtError> {
        let (done, installed) = oneshot::channel();
        self.commands
            .send(Command::AddHandler(Box::new(handler), done))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        // Installed before this returns: every message delivered after it reaches the handler.
        installed.await.map_err(|_| DhtError::Shutdown)
    }

    /// A stream of the messages delivered to us, from now on. Only the latest stream receives
    /// messages. While it is full, messages wait in the node and then senders are told it is
    /// busy: none is acknowledged and then lost.
    pub async fn messages(&self) -> Result<mpsc::Receiver<Incoming>, DhtError> {
        self.messages_on(CHANNEL_USER).await
    }

    /// Like [`Dht::messages`], for the messages on `channel` (one of
    /// [`crate::rendezvous::CHANNELS`]): each channel has its own inbox and its own latest
    /// stream, so a slow reader of one does not hold up the others. Messages on a channel
    /// without a stream go to the [`Dht::add_message_handler`] callbacks, if any, else they
    /// wait in the node.
    pub async fn messages_on(&self, channel: u8) -> Result<mpsc::Receiver<Incoming>, DhtError> {
        if channel >= CHANNELS {
            return Err(DhtError::UnknownChannel { channel });
        }
        let (tx, rx) = mpsc::channel(MESSAGE_QUEUE);
        let (done, installed) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(channel, tx, done))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        installed.await.map_err(|_| DhtError::Shutdown)?;
        Ok(rx)
    }

    /// Stops the node task (saving the table if configured) and waits for it to end.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(
    socket: UdpSocket,
    mut core: Core,
    mut commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
    table_file: Option<PathBuf>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    let mut waiters: HashMap<OpId, oneshot::Sender<Outcome>> = HashMap::new();
    let mut streams: HashMap<OpId, mpsc::Sender<LookupEvent>> = HashMap::new();
    let mut handlers: Vec<MessageHandler> = Vec::new();
    let mut subscribers: [Option<mpsc::Sender<Incoming>>; CHANNELS as usize] = Default::default();
    let mut progress = Progress::default();
    loop {
        for s in &mut subscribers {
            if s.as_ref().is_some_and(mpsc::Sender::is_closed) {
                *s = None;
            }
        }
        // On a channel without a stream, callbacks take everything; with one, messages leave
        // the node only as fast as the stream is read.
        if !handlers.is_empty() {
            for channel in 0..CHANNELS {
                if subscribers[usize::from(channel)].is_some() {
                    continue;
                }
                while let Some(m) = core.poll_incoming(channel) {
                    handlers.iter_mut().for_each(|h| h(&m));
                }
            }
        }
        while let Some((to, bytes)) = core.poll_transmit() {
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(%to, error = %e, "DHT send failed");
            }
        }
        while let Some((op, from, response)) = core.poll_reply() {
            progress.reply(op, &from);
            if let Some(s) = streams.get(&op) {
                let _ = s.try_send(LookupEvent::Reply { from, response });
            }
        }
        while let Some((op, outcome)) = core.poll_event() {
            if progress.tracks(op) {
                let queries = core.stats().lookup_queries;
                progress.done(op, &outcome, queries, Instant::now());
            }
            if let Some(w) = waiters.remove(&op) {
                let _ = w.send(outcome);
            } else if let Some(s) = streams.remove(&op) {
                let _ = s.try_send(LookupEvent::Done(outcome));
            }
        }
        let deadline = tokio::time::Instant::from_std(core.next_deadline());
        let waiting: Vec<(u8, mpsc::Sender<Incoming>)> = (0..CHANNELS)
            .filter(|&c| core.incoming_len(c) > 0)
            .filter_map(|c| Some((c, subscribers[usize::from(c)].clone()?)))
            .collect();
        let reserve = reserve_any(waiting);
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some((channel, permit)) = reserve => {
                if let Some(m) = core.poll_incoming(channel) {
                    handlers.iter_mut().for_each(|h| h(&m));
                    permit.send(m);
                }
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if let Some(bytes) = buf.get(..n) {
                        core.handle_datagram(from, bytes, Instant::now());
                    }
                }
                // ICMP errors surface as recv errors on some systems; they say nothing useful.
                Err(e) => tracing::debug!(error = %e, "DHT receive failed"),
            },
            cmd = commands.recv() => match cmd {
                Some(Command::Start(req, reply)) => {
                    let op = start(&mut core, &mut progress, req, false);
                    waiters.insert(op, reply);
                }
                Some(Command::StartStream(req, events)) => {
                    let op = start(&mut core, &mut progress, req, true);
                    streams.insert(op, events);
                }
                Some(Command::Stats(reply)) => {
                    let _ = reply.send(core.stats());
                }
                Some(Command::Observations(reply)) => {
                    let _ = reply.send(core.observations());
                }
                Some(Command::Forget(target)) => core.forget_own(&target),
                Some(Command::AddHandler(h, done)) => {
                    handlers.push(h);
                    let _ = done.send(());
                }
                Some(Command::Subscribe(channel, s, done)) => {
                    if let Some(slot) = subscribers.get_mut(usize::from(channel)) {
                        *slot = Some(s);
                    }
                    let _ = done.send(());
                }
                Some(Command::RendezvousPoints(reply)) => {
                    let _ = reply.send(core.rendezvous_points());
                }
                Some(Command::RendezvousNodes(reply)) => {
                    let _ = reply.send(core.rendezvous_nodes());
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => core.handle_timeout(Instant::now()),
        }
    }
    if let Some(path) = table_file
        && let Err(e) = core.table().to_saved().save(&path)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not save the DHT routing table");
    }
}

/// Room in the first of `waiting`'s streams (channel, stream) to free up; never, if none.
async fn reserve_any(
    waiting: Vec<(u8, mpsc::Sender<Incoming>)>,
) -> Option<(u8, mpsc::OwnedPermit<Incoming>)> {
    if waiting.is_empty() {
        return std::future::pending().await;
    }
    let reserves = waiting
        .into_iter()
        .map(|(channel, s)| Box::pin(async move { (channel, s.reserve_owned().await.ok()) }));
    let ((channel, permit), _, _) = futures::future::select_all(reserves).await;
    permit.map(|p| (channel, p))
}

/// Starts `req` (as a streaming lookup if `stream`). While requests are logged, every request
/// is started streaming, so that its replies reach the log; the driver drops the replies that
/// nobody streams.
fn start(core: &mut Core, progress: &mut Progress, req: Request, stream: bool) -> OpId {
    let now = Instant::now();
    if !Progress::enabled() {
        return if stream {
            core.start_streaming(req, now)
        } else {
            core.start(req, now)
        };
    }
    let what = progress::describe(&req, core.id());
    let queries = core.stats().lookup_queries;
    let op = core.start_streaming(req, now);
    progress.started(op, what, queries, now);
    op
}
