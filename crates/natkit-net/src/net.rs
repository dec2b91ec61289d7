//! The connection manager ([`Net`]): listens, dials, authenticates, enforces
//! limits, keeps one connection per node, and shuts everything down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use natkit_identity::{Keypair, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::NetConfig;
use crate::conn::{self, ConnShared, Connection, Direction, Limits};
use crate::error::{CloseReason, NetError};
use crate::handshake::{self, HandshakeOptions, LocalIdentity, Role};
use crate::hub::{Hub, NetEvent};
use crate::socket;

/// The connection manager (async API).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use natkit_identity::Keypair;
/// use natkit_net::{Net, NetConfig, NetEvent};
///
/// let net = Net::bind(Keypair::generate()?, NetConfig::default()).await?;
/// println!("listening on {} as {}", net.local_addr(), net.node_id());
/// while let Some(event) = net.next_event().await {
///     match event {
///         NetEvent::Connected(con) => con.send("hello").await?,
///         NetEvent::Line(con, line) => println!("{}: {line}", con.node_id().short()),
///         NetEvent::Disconnected { conn, reason } => println!("{} left: {reason}", conn.node_id()),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

struct Inner {
    local: LocalIdentity,
    config: NetConfig,
    limits: Arc<Limits>,
    local_addr: SocketAddr,
    registry: Mutex<Registry>,
    hub: Arc<Hub>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    handshake_permits: Arc<Semaphore>,
    stopped: AtomicBool,
    /// Streams that start with a magic other than a natkit handshake, and where they go
    /// ([`Net::take_prefaced`]).
    prefaced: Mutex<Option<Prefaced>>,
}

/// A listener's second protocol: inbound streams whose first bytes are `magic`.
struct Prefaced {
    magic: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<(TcpStream, SocketAddr)>,
}

/// Longest magic [`Net::take_prefaced`] takes.
pub const MAX_PREFACE_BYTES: usize = 16;

#[derive(Default)]
struct Registry {
    /// The one live connection per node.
    by_id: HashMap<NodeId, Connection>,
    /// Every connection whose task has not finished or whose lines were not all
    /// taken (includes connections closed as duplicates).
    all: Vec<Connection>,
    inbound: usize,
    outbound: usize,
    pending_inbound: usize,
    pending_outbound: usize,
    /// Inbound connections expected from an address (a hole punch), by that address.
    expected: HashMap<SocketAddr, Expected>,
}

/// An inbound connection announced by [`Net::expect_inbound`].
#[derive(Clone, Copy, Debug)]
struct Expected {
    node: NodeId,
    role: Role,
    until: std::time::Instant,
}

/// Most inbound connections expected at once ([`Net::expect_inbound`]): a few punches in
/// flight, each expecting its peer's one or two addresses.
pub const MAX_EXPECTED_INBOUND: usize = 64;

/// Counters of a [`Net`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Live inbound connections.
    pub inbound: usize,
    /// Live outbound connections.
    pub outbound: usize,
    /// Handshakes in progress.
    pub pending: usize,
    /// Events dropped because nobody read them.
    pub dropped_events: u64,
}

impl Net {
    /// Starts listening and returns the manager. Outgoing connections leave
    /// from the same port.
    pub async fn bind(identity: Keypair, config: NetConfig) -> Result<Net, NetError> {
        config.validate()?;
        let listener = socket::listen(config.listen).map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| NetError::Bind {
            addr: config.listen,
            source,
        })?;
        let local = LocalIdentity::new(identity).map_err(|e| NetError::Handshake {
            addr: local_addr,
            source: e,
        })?;
        let limits = Arc::new(Limits {
            max_line_bytes: config.max_line_bytes,
            send_queue_bytes: config.send_queue_bytes,
            recv_queue_bytes: config.recv_queue_bytes,
            ping_after: config.ping_after,
            dead_after: config.dead_after,
            close_timeout: config.close_timeout,
        });
        let inner = Arc::new(Inner {
            handshake_permits: Arc::new(Semaphore::new(config.max_pending_handshakes)),
            hub: Arc::new(Hub::new(config.max_queued_events)),
            local,
            limits,
            local_addr,
            registry: Mutex::new(Registry::default()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            stopped: AtomicBool::new(false),
            prefaced: Mutex::new(None),
            config,
        });
        let span =
            tracing::info_span!("net", node = %inner.local.node_id().short(), addr = %local_addr);
        tracing::info!(parent: &span, "listening");
        inner.tracker.spawn(
            accept_loop(Arc::downgrade(&inner), listener, inner.shutdown.clone()).instrument(span),
        );
        Ok(Net { inner })
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.local.node_id()
    }

    /// The address we listen on (with the port chosen if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.inner.config
    }

    /// Connects to `addr`, expecting the node `expected` there (from its UNL),
    /// and returns the connection once the handshake succeeded. If a connection
    /// to that node exists already, returns it. The dial leaves from the listen
    /// port (so the peer and NATs see one port for us) unless the kernel refuses
    /// it, then from a fresh port (logged at `info`).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: NodeId,
    ) -> Result<Connection, NetError> {
        self.dial(
            addr,
            expected,
            Role::Initiator,
            socket::DialFrom::ListenPortOrFresh,
        )
        .await
    }

    /// Connects to `addr` and accepts whatever node answers there (its key is authenticated,
    /// and [`Connection::node_id`] says which it is): for services found by address alone,
    /// such as relays announced in the DHT, where any node will do. If a connection to that
    /// node exists already, it is returned and the new one closed as a duplicate.
    pub async fn connect_any(&self, addr: SocketAddr) -> Result<Connection, NetError> {
        self.dial(
            addr,
            None,
            Role::Initiator,
            socket::DialFrom::ListenPortOrFresh,
        )
        .await
    }

    /// Like [`connect`](Net::connect), from a fresh port rather than the listen port: for a
    /// dial that runs beside a hole punch toward the same address, whose 4-tuple (listen port
    /// to listen port) it must leave free.
    pub async fn connect_from_fresh_port(
        &self,
        addr: SocketAddr,
        expected: NodeId,
    ) -> Result<Connection, NetError> {
        self.dial(addr, expected, Role::Initiator, socket::DialFrom::Fresh)
            .await
    }

    /// Like [`connect`](Net::connect), with the handshake role given: after a
    /// TCP simultaneous open both sides dialed, and exactly one must be the
    /// initiator (hole punching decides it from the UNLs). The dial leaves from
    /// the listen port or fails with [`NetError::PortReuse`]: from any other
    /// port it could not meet the peer's dial.
    pub async fn connect_with_role(
        &self,
        addr: SocketAddr,
        expected: NodeId,
        role: Role,
    ) -> Result<Connection, NetError> {
        self.dial(addr, expected, role, socket::DialFrom::ListenPort)
            .await
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        expected: impl Into<Option<NodeId>>,
        role: Role,
        from: socket::DialFrom,
    ) -> Result<Connection, NetError> {
        let expected: Option<NodeId> = expected.into();
        let inner = &self.inner;
        if expected == Some(self.node_id()) {
            return Err(NetError::SelfConnect(self.node_id()));
        }
        if inner.stopped.load(Ordering::Acquire) {
            return Err(NetError::Shutdown);
        }
        if let Some(c) = expected.and_then(|e| self.connection(&e))
            && c.relay().is_none()
        {
            return Ok(c);
        }
        let _slot = {
            let mut r = inner.registry();
            if r.outbound + r.pending_outbound >= inner.config.max_outbound {
                return Err(NetError::Limit {
                    which: "outbound",
                    limit: inner.config.max_outbound,
                });
            }
            r.pending_outbound += 1;
            PendingGuard {
                inner: inner.clone(),
                inbound: false,
            }
        };
        let span = tracing::info_span!("dial", peer = ?expected.map(|e| e.short()), %addr);
        async {
            let local = inner.local_addr;
            let (mut stream, fresh_port) =
                socket::connect(local, addr, inner.config.connect_timeout, from)
                    .await
                    .map_err(|source| {
                        if from == socket::DialFrom::ListenPort && socket::is_port_refused(&source)
                        {
                            NetError::PortReuse {
                                addr,
                                local,
                                source,
                            }
                        } else if source.kind() == std::io::ErrorKind::TimedOut {
                            NetError::Timeout {
                                what: "connect",
                                addr,
                                secs: inner.config.connect_timeout.as_secs_f64(),
                            }
                        } else {
                            NetError::Connect { addr, source }
                        }
                    })?;
            if fresh_port && from != socket::DialFrom::Fresh {
                tracing::info!("dialed from a fresh port (listen port's 4-tuple was taken)");
            }
            let opts = HandshakeOptions {
                local: &inner.local,
                role,
                expected,
                peer_addr: addr,
                want_plaintext: inner.config.plaintext,
                allow_plaintext: inner.config.allow_plaintext || inner.config.plaintext,
            };
            let est = inner.handshake(&mut stream, opts, "handshake").await?;
            register(inner, stream, est, Direction::Outbound, None)
        }
        .instrument(span)
        .await
    }

    /// Runs a connection to `expected` over `stream`, a byte stream that a relay (the node
    /// `relay`) splices to the peer: the handshake runs end to end through it, in `role`
    /// (the side that asked the relay for the circuit is the initiator), and must prove
    /// `expected`'s key (as the responder, `None` accepts any key, which the caller checks).
    /// The relay sees only ciphertext and cannot impersonate either side.
    ///
    /// A relayed connection counts against the inbound or outbound limit by `role`; it is
    /// the node's one connection unless a direct one exists. Of a direct and a relayed
    /// connection to one node, both ends keep the direct one (the relayed one is closed as a
    /// [duplicate](CloseReason::Duplicate), its lines still delivered), so a direct path
    /// found later replaces the relayed one; [`connect`](Net::connect) dials even when a
    /// relayed connection exists.
    pub async fn connect_over(
        &self,
        mut stream: TcpStream,
        expected: Option<NodeId>,
        role: Role,
        relay: NodeId,
    ) -> Result<Connection, NetError> {
        let inner = &self.inner;
        if expected == Some(self.node_id()) {
            return Err(NetError::SelfConnect(self.node_id()));
        }
        if inner.stopped.load(Ordering::Acquire) {
            return Err(NetError::Shutdown);
        }
        let addr = stream.peer_addr().map_err(|source| NetError::Connect {
            addr: inner.local_addr,
            source,
        })?;
        let inbound = role == Role::Responder;
        let _slot = {
            let mut r = inner.registry();
            let (live, pending, limit, which) = if inbound {
                (
                    r.inbound,
                    r.pending_inbound,
                    inner.config.max_inbound,
                    "inbound",
                )
            } else {
                (
                    r.outbound,
                    r.pending_outbound,
                    inner.config.max_outbound,
                    "outbound",
                )
            };
            if live + pending >= limit {
                return Err(NetError::Limit { which, limit });
            }
            if inbound {
                r.pending_inbound += 1;
            } else {
                r.pending_outbound += 1;
            }
            PendingGuard {
                inner: inner.clone(),
                inbound,
            }
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("relayed", peer = ?expected.map(|e| e.short()), relay = %relay.short(), %addr);
        async {
            let opts = HandshakeOptions {
                local: &inner.local,
                role,
                expected,
                peer_addr: addr,
                want_plaintext: false,
                allow_plaintext: false,
            };
            let est = inner
                .handshake(&mut stream, opts, "handshake through the relay")
                .await?;
            let direction = if inbound {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            register(inner, stream, est, direction, Some(relay))
        }
        .instrument(span)
        .await
    }

    /// Hands inbound streams whose first bytes are `magic` to the returned receiver, instead
    /// of running a natkit handshake on them: a second protocol on the listen port (natkit's
    /// relay takes its circuits this way). A natkit handshake starts with a 2-byte length
    /// below 256, so a magic whose first byte is not 0 never takes one. Streams wait for
    /// their first bytes within the handshake timeout and in the handshake slots; when the
    /// receiver is full or gone, the stream is dropped. Once per Net; the magic is 1 to
    /// [`MAX_PREFACE_BYTES`] bytes, and its bytes are left in the stream.
    pub fn take_prefaced(
        &self,
        magic: &[u8],
        queue: usize,
    ) -> Result<tokio::sync::mpsc::Receiver<(TcpStream, SocketAddr)>, NetError> {
        if magic.is_empty() || magic.len() > MAX_PREFACE_BYTES || magic[0] == 0 {
            return Err(NetError::Config(
                "a preface magic is 1 to 16 bytes and does not start with 0",
            ));
        }
        let mut p = self
            .inner
            .prefaced
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if p.is_some() {
            return Err(NetError::Config("take_prefaced was called already"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(queue.max(1));
        *p = Some(Prefaced {
            magic: magic.to_vec(),
            tx,
        });
        Ok(rx)
    }

    /// Announces that a connection from `from` is expected within `ttl`: a hole punch, where
    /// the peer's dial may reach our listener instead of meeting our own dial. If one arrives
    /// from exactly that address in time, its handshake runs in `role` (the one both sides
    /// computed for the punched socket) and must prove the key `expected`, as a dial to it
    /// would; any other key is refused. Other inbound connections are unaffected. At most
    /// [`MAX_EXPECTED_INBOUND`] at once (expired ones are forgotten first).
    pub fn expect_inbound(
        &self,
        from: SocketAddr,
        expected: NodeId,
        role: Role,
        ttl: std::time::Duration,
    ) -> Result<(), NetError> {
        let now = std::time::Instant::now();
        let mut r = self.inner.registry();
        r.expected.retain(|_, e| e.until > now);
        if !r.expected.contains_key(&from) && r.expected.len() >= MAX_EXPECTED_INBOUND {
            return Err(NetError::Limit {
                which: "expected inbound",
                limit: MAX_EXPECTED_INBOUND,
            });
        }
        let until = now + ttl;
        r.expected.insert(
            from,
            Expected {
                node: expected,
                role,
                until,
            },
        );
        Ok(())
    }

    /// The live connection to `node`, if any.
    pub fn connection(&self, node: &NodeId) -> Option<Connection> {
        let r = self.inner.registry();
        r.by_id.get(node).filter(|c| !c.is_closed()).cloned()
    }

    /// Connections whose peer address is `addr`.
    pub fn connections_to(&self, addr: SocketAddr) -> Vec<Connection> {
        self.connections()
            .into_iter()
            .filter(|c| c.remote_addr() == addr)
            .collect()
    }

    /// Every connection that is open, or closed with lines not yet taken.
    pub fn connections(&self) -> Vec<Connection> {
        let mut r = self.inner.registry();
        r.all.retain(|c| !c.is_finished());
        r.all.clone()
    }

    /// Queues `line` on every open connection (without waiting). Returns how
    /// many accepted it; a full or closed connection is skipped.
    pub fn broadcast(&self, line: &str) -> usize {
        self.connections()
            .iter()
            .filter(|c| !c.is_closed() && c.send_line(line).is_ok())
            .count()
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        let r = self.inner.registry();
        NetStats {
            inbound: r.inbound,
            outbound: r.outbound,
            pending: r.pending_inbound + r.pending_outbound,
            dropped_events: self.inner.hub.dropped(),
        }
    }

    /// The next event. Events are queued from the first call of this method or
    /// of [`events`](Net::events) on: connections made before that are in
    /// [`connections`](Net::connections) (no `Connected` event), and lines they
    /// received before it come as `Line` events like any other. Returns `None`
    /// after shutdown.
    pub async fn next_event(&self) -> Option<NetEvent> {
        self.enable_events();
        self.inner.hub.next().await
    }

    /// The events as a stream (see [`next_event`](Net::next_event)).
    pub fn events(&self) -> impl futures::Stream<Item = NetEvent> + Send + 'static {
        self.enable_events();
        futures::stream::unfold(self.clone(), |net| async move {
            let ev = net.next_event().await?;
            Some((ev, net))
        })
    }

    /// Switches the event queue on. The first time, lines that arrived before
    /// are announced: their connections had no marker in the queue, and would
    /// have been silent until their next line (a line arriving meanwhile is
    /// announced once, by whichever side sets the connection's marker first).
    fn enable_events(&self) {
        if self.inner.hub.enable() {
            let conns: Vec<Connection> = self.inner.registry().all.clone();
            for c in conns.iter().filter(|c| c.has_lines()) {
                self.inner.hub.lines_ready(c);
            }
        }
    }

    /// A counter that moves whenever something happens: a connection comes or
    /// goes, lines arrive (for event loops; see [`Net::wait_activity`]).
    pub fn activity(&self) -> u64 {
        self.inner.hub.activity()
    }

    /// Waits until the [activity](Net::activity) counter moves from `seen`,
    /// or `timeout`.
    pub async fn wait_activity(&self, seen: u64, timeout: std::time::Duration) {
        self.inner.hub.wait_activity(seen, timeout).await
    }

    /// Closes every connection gracefully (queued lines are sent, within the
    /// close timeout), stops listening and waits until every task this Net
    /// started has ended.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stopped.store(true, Ordering::Release);
        inner.shutdown.cancel();
        let conns: Vec<Connection> = inner.registry().all.clone();
        for c in conns {
            c.0.begin_close(CloseReason::Shutdown);
        }
        inner.tracker.close();
        inner.tracker.wait().await;
        inner.hub.close();
        inner.hub.clear();
        let mut r = inner.registry();
        r.by_id.clear();
        r.all.clear();
    }

    /// Whether [`shutdown`](Net::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Tasks this Net is running (for tests and diagnostics).
    pub fn task_count(&self) -> usize {
        self.inner.tracker.len()
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the handshake on a dialed stream, within the handshake timeout (`what` names it
    /// in the timeout error) and until shutdown.
    async fn handshake(
        &self,
        stream: &mut TcpStream,
        opts: HandshakeOptions<'_>,
        what: &'static str,
    ) -> Result<handshake::Established, NetError> {
        let addr = opts.peer_addr;
        let r = tokio::select! {
            r = tokio::time::timeout(self.config.handshake_timeout, handshake::run(stream, opts)) => r,
            () = self.shutdown.cancelled() => return Err(NetError::Shutdown),
        };
        r.map_err(|_| NetError::Timeout {
            what,
            addr,
            secs: self.config.handshake_timeout.as_secs_f64(),
        })?
        .map_err(|source| NetError::Handshake { addr, source })
    }

    fn has_preface(&self) -> bool {
        self.prefaced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Waits for the stream's first bytes: the preface's sender if they are its magic, `None`
    /// if they cannot be (a natkit handshake, or anything else).
    async fn preface_of(
        &self,
        stream: &TcpStream,
    ) -> Option<tokio::sync::mpsc::Sender<(TcpStream, SocketAddr)>> {
        let (magic, tx) = {
            let p = self.prefaced.lock().unwrap_or_else(|e| e.into_inner());
            let p = p.as_ref()?;
            (p.magic.clone(), p.tx.clone())
        };
        let mut buf = [0u8; MAX_PREFACE_BYTES];
        loop {
            let n = stream.peek(&mut buf[..magic.len()]).await.ok()?;
            if n == 0 || buf[..n] != magic[..n] {
                return None;
            }
            if n == magic.len() {
                return Some(tx);
            }
            // Part of the magic so far: wait for more.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone without `shutdown`: stop listening and close
        // every connection (gracefully, in the background). Prefer calling
        // `shutdown().await`, which also waits for the tasks to end.
        self.shutdown.cancel();
        let r = self.registry.get_mut().unwrap_or_else(|e| e.into_inner());
        for c in r.all.drain(..) {
            c.0.begin_close(CloseReason::Shutdown);
        }
        r.by_id.clear();
    }
}

struct PendingGuard {
    inner: Arc<Inner>,
    inbound: bool,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut r = self.inner.registry();
        if self.inbound {
            r.pending_inbound -= 1;
        } else {
            r.pending_outbound -= 1;
        }
    }
}

/// Adds an authenticated connection, resolving duplicates: of two connections
/// to the same node, both sides keep a direct one over a relayed one, and else
/// the one with the smaller handshake hash (both the same on both ends), so
/// they agree without talking. The other one is
/// closed gracefully, and the lines it carried are still delivered.
fn register(
    inner: &Arc<Inner>,
    stream: TcpStream,
    est: handshake::Established,
    direction: Direction,
    relay: Option<NodeId>,
) -> Result<Connection, NetError> {
    let remote_addr = stream.peer_addr().map_err(|source| NetError::Connect {
        addr: inner.local_addr,
        source,
    })?;
    let local_addr = stream.local_addr().unwrap_or(inner.local_addr);
    let shared = ConnShared::new(
        est.peer,
        remote_addr,
        local_addr,
        est.observed,
        direction,
        est.handshake_hash,
        est.plaintext,
        relay,
        inner.limits.clone(),
        Arc::downgrade(&inner.hub),
    );
    let conn = Connection(shared.clone());
    let mut loser = None;
    let winner;
    {
        let mut r = inner.registry();
        if inner.stopped.load(Ordering::Acquire) {
            return Err(NetError::Shutdown);
        }
        match r.by_id.get(&est.peer) {
            Some(existing) if !existing.is_closed() => {
                // Direct beats relayed; between two of a kind, the smaller hash.
                let ours = (relay.is_some(), est.handshake_hash);
                let theirs = (existing.0.relay.is_some(), existing.0.handshake_hash);
                if ours < theirs {
                    if existing.0.relay.is_some() && relay.is_none() {
                        // A direct path replaces a relayed one: its lines wait for the
                        // relayed one's, so that none overtakes another.
                        *shared.predecessor.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(existing.0.clone());
                    }
                    loser = Some(existing.clone());
                    r.by_id.insert(est.peer, conn.clone());
                    winner = conn.clone();
                } else {
                    loser = Some(conn.clone());
                    winner = existing.clone();
                }
            }
            _ => {
                r.by_id.insert(est.peer, conn.clone());
                winner = conn.clone();
            }
        }
        r.all.push(conn.clone());
        match direction {
            Direction::Inbound => r.inbound += 1,
            Direction::Outbound => r.outbound += 1,
        }
    }
    let span = tracing::info_span!("conn", peer = %est.peer.short(), addr = %remote_addr, dir = ?direction);
    tracing::debug!(parent: &span, "connected");
    let weak = Arc::downgrade(inner);
    let transport = est.transport;
    // Connected is queued before the task can queue anything else.
    inner.hub.connected(conn);
    inner.tracker.spawn(
        async move {
            conn::run(shared.clone(), stream, transport).await;
            if let Some(inner) = weak.upgrade() {
                let mut r = inner.registry();
                if r.by_id
                    .get(&shared.node_id)
                    .is_some_and(|c| Arc::ptr_eq(&c.0, &shared))
                {
                    r.by_id.remove(&shared.node_id);
                }
                match shared.direction {
                    Direction::Inbound => r.inbound -= 1,
                    Direction::Outbound => r.outbound -= 1,
                }
            }
            conn::finish(&shared);
        }
        .instrument(span),
    );
    if let Some(l) = loser {
        tracing::debug!(peer = %est.peer.short(), "duplicate connection: keeping the one with the smaller handshake hash");
        l.0.begin_close(CloseReason::Duplicate);
    }
    Ok(winner)
}

async fn accept_loop(
    inner: std::sync::Weak<Inner>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    loop {
        // Wait for a handshake slot before accepting: beyond the limit,
        // connections wait in the kernel's queue instead of in our memory.
        let permits = match inner.upgrade() {
            Some(i) => i.handshake_permits.clone(),
            None => return,
        };
        let permit = tokio::select! {
            p = permits.acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (guard, expected) = {
            let mut r = inner.registry();
            let expected = r
                .expected
                .remove(&peer)
                .filter(|e| e.until > std::time::Instant::now());
            if r.inbound + r.pending_inbound >= inner.config.max_inbound {
                tracing::info!(%peer, limit = inner.config.max_inbound, "refusing inbound connection: limit reached");
                drop(r);
                drop(stream);
                continue;
            }
            r.pending_inbound += 1;
            let guard = PendingGuard {
                inner: inner.clone(),
                inbound: true,
            };
            (guard, expected)
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("accept", %peer);
        let inner2 = inner.clone();
        inner.tracker.spawn(
            async move {
                let _permit = permit;
                let _guard = guard;
                if expected.is_none() && inner2.has_preface() {
                    let peeked = tokio::select! {
                        r = tokio::time::timeout(inner2.config.handshake_timeout, inner2.preface_of(&stream)) => r,
                        () = inner2.shutdown.cancelled() => return,
                    };
                    match peeked {
                        Ok(Some(tx)) => {
                            if tx.try_send((stream, peer)).is_err() {
                                tracing::info!("prefaced stream dropped: its receiver is full or gone");
                            }
                            return;
                        }
                        Ok(None) => {}
                        Err(_) => {
                            tracing::info!("no first bytes within the handshake timeout; dropping the peer");
                            return;
                        }
                    }
                }
                if let Some(e) = &expected {
                    tracing::debug!(node = %e.node.short(), role = ?e.role, "expected inbound connection (hole punch)");
                }
                let opts = HandshakeOptions {
                    local: &inner2.local,
                    role: expected.map_or(Role::Responder, |e| e.role),
                    expected: expected.map(|e| e.node),
                    peer_addr: peer,
                    want_plaintext: false,
                    allow_plaintext: inner2.config.allow_plaintext || inner2.config.plaintext,
                };
                let res = tokio::select! {
                    r = tokio::time::timeout(inner2.config.handshake_timeout, handshake::run(&mut stream, opts)) => r,
                    () = inner2.shutdown.cancelled() => return,
                };
                match res {
                    Ok(Ok(est)) => {
                        if let Err(e) = register(&inner2, stream, est, Direction::Inbound, None) {
                            tracing::debug!(error = %e, "inbound connection not registered");
                        }
                    }
                    Ok(Err(e)) => tracing::info!(error = %e, "inbound handshake failed"),
                    Err(_) => tracing::info!("inbound handshake timed out; dropping the peer"),
                }
            }
            .instrument(span),
        );
    }
}
