//! The tokio driver: one UDP socket and one task around a [`Core`]. The task only moves
//! datagrams, passes requests in and results out, and sleeps until the core's next deadline.
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

use crate::bencode::Value;
use crate::bep44::{Bep44Error, MutableItem};
use crate::core::{Core, OpId, Outcome, Request};
use crate::id::{Id, NodeInfo};
use crate::krpc::{ERROR_CAS_MISMATCH, ERROR_SEQ_TOO_LOW, PUBLIC_KEY_BYTES};
use crate::routing::{RoutingTable, SavedTable, TableFileError};
use crate::server::{QueryHandler, RegisterError};
use crate::stats::Stats;

/// Requests queued between the API and the node task.
pub const COMMAND_QUEUE: usize = 256;

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
    #[error("a storing node refused the put with {code} ({accepted} nodes accepted it)")]
    Conflict {
        /// 301 (CAS mismatch) or 302 (seq too low).
        code: i64,
        /// Nodes that accepted it anyway (they held nothing, or an older item).
        accepted: usize,
    },
    /// No node accepted a put or announce.
    #[error("no node stored the item (error codes: {errors:?})")]
    NotStored {
        /// Error codes returned by the nodes asked.
        errors: Vec<i64>,
    },
}

/// Builds a [`Dht`].
pub struct DhtBuilder {
    bind: SocketAddr,
    bootstrap: Vec<SocketAddrV4>,
    read_only: bool,
    id: Option<Id>,
    table_file: Option<PathBuf>,
    handlers: Vec<(String, Box<dyn QueryHandler>)>,
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

    /// A fixed node id (default: the saved table's, else random).
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

enum Command {
    Start(Request, oneshot::Sender<Outcome>),
    Stats(oneshot::Sender<Stats>),
    Forget(Id),
}

/// A running DHT node. Dropping it stops the node task; [`Dht::shutdown`] also waits for it.
#[derive(Debug)]
pub struct Dht {
    commands: mpsc::Sender<Command>,
    local_addr: SocketAddr,
    id: Id,
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
        }
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Our node id.
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
        Ok(self.stats().await?.routing_table_size)
    }

    /// The closest nodes to `target` that answered.
    pub async fn find_node(&self, target: Id) -> Result<Vec<NodeInfo>, DhtError> {
        self.nodes(Request::FindNode(target)).await
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
    loop {
        while let Some((to, bytes)) = core.poll_transmit() {
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(%to, error = %e, "DHT send failed");
            }
        }
        while let Some((op, outcome)) = core.poll_event() {
            if let Some(w) = waiters.remove(&op) {
                let _ = w.send(outcome);
            }
        }
        let deadline = tokio::time::Instant::from_std(core.next_deadline());
        tokio::select! {
            _ = cancel.cancelled() => break,
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
                    let op = core.start(req, Instant::now());
                    waiters.insert(op, reply);
                }
                Some(Command::Stats(reply)) => {
                    let _ = reply.send(core.stats());
                }
                Some(Command::Forget(target)) => core.forget_own(&target),
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
