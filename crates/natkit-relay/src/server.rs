//! The relay service ([`RelayServer`]): the tokio side of [`Registry`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natkit_identity::NodeId;
use natkit_net::{Connection, Net, NetEvent};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::RelayError;
use crate::limits::{CircuitLimits, Pacer, RelayLimits};
use crate::registry::{End, Registry, SessionId};
use crate::wire::{
    self, CircuitId, Cut, MAGIC, PREFACE_BYTES, Refusal, Reply, Request, SPLICED, Token,
};

/// How long a circuit stream may take to send its preface.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Circuit streams waiting for their preface at once, queued or being read (beyond it,
/// new ones are dropped).
pub const MAX_PREFACE_QUEUE: usize = 64;

/// How long the relay waits between telling the ends why it cuts a circuit and closing
/// their streams, so that the reason arrives first.
pub const CUT_GRACE: Duration = Duration::from_millis(100);

/// Bytes copied per read on a circuit.
const SPLICE_CHUNK: usize = 64 * 1024;

/// A relay's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    /// Reservations held.
    pub reservations: usize,
    /// Circuits open (joined or waiting).
    pub circuits: usize,
    /// Circuits joined since start.
    pub spliced: u64,
    /// Requests refused since start.
    pub refused: u64,
    /// Circuits cut at a limit since start.
    pub cut: u64,
    /// Bytes forwarded since start (both directions).
    pub bytes: u64,
}

/// A relay: serves reservations and circuits on its own [`Net`] (whose listen port is the
/// relay's address; the Net's identity is the relay's id). See the [crate docs](crate).
#[derive(Clone)]
pub struct RelayServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    net: Net,
    cancel: CancellationToken,
    tracker: TaskTracker,
    stats: Mutex<RelayStats>,
    bytes: AtomicU64,
}

impl RelayServer {
    /// Starts relaying on `net`, which must be the relay's own (its connections are control
    /// connections, and nothing else may read its events).
    pub async fn start(net: Net, limits: RelayLimits) -> Result<RelayServer, RelayError> {
        limits.validate()?;
        let streams = net
            .take_prefaced(MAGIC, MAX_PREFACE_QUEUE)
            .map_err(RelayError::Net)?;
        let inner = Arc::new(ServerInner {
            net: net.clone(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            stats: Mutex::new(RelayStats::default()),
            bytes: AtomicU64::new(0),
        });
        let span =
            tracing::info_span!("relay", node = %net.node_id().short(), addr = %net.local_addr());
        tracing::info!(parent: &span, ?limits, "relaying");
        let state = State {
            inner: inner.clone(),
            registry: Registry::new(limits),
            sessions: HashMap::new(),
            next_session: 1,
            waiting: HashMap::new(),
        };
        inner.tracker.spawn(run(state, streams).instrument(span));
        Ok(RelayServer { inner })
    }

    /// The relay's address (its Net's listen address).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.net.local_addr()
    }

    /// The relay's node id.
    pub fn node_id(&self) -> NodeId {
        self.inner.net.node_id()
    }

    /// Counters.
    pub fn stats(&self) -> RelayStats {
        let mut s = *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.bytes = self.inner.bytes.load(Ordering::Relaxed);
        s
    }

    /// Cuts every circuit (telling both ends), closes the Net and waits for every task.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner.net.shutdown().await;
    }
}

struct Session {
    id: SessionId,
    conn: Connection,
}

struct State {
    inner: Arc<ServerInner>,
    registry: Registry,
    /// The control connection of each node, by node id (a Net keeps one per node).
    sessions: HashMap<NodeId, Session>,
    next_session: SessionId,
    /// Circuit streams that joined, waiting for the other end.
    waiting: HashMap<CircuitId, (End, TcpStream)>,
}

enum Ended {
    /// A circuit's splice ended (at a limit, or because one end closed).
    Splice(CircuitId, Option<Cut>),
    /// A circuit stream presented a token.
    Preface(Token, TcpStream),
}

async fn run(mut st: State, mut streams: mpsc::Receiver<(TcpStream, SocketAddr)>) {
    let (done_tx, mut done_rx) = mpsc::channel::<Ended>(256);
    let prefaces = Arc::new(tokio::sync::Semaphore::new(MAX_PREFACE_QUEUE));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let cancel = st.inner.cancel.clone();
    let net = st.inner.net.clone();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            ev = net.next_event() => match ev {
                Some(NetEvent::Line(con, line)) => st.on_line(&con, &line),
                Some(NetEvent::Disconnected { conn, .. }) => st.on_closed(&conn),
                Some(NetEvent::Connected(_)) => {}
                None => break,
            },
            Some((stream, peer)) = streams.recv() => {
                // At most MAX_PREFACE_QUEUE streams wait for their token at once.
                let Ok(permit) = prefaces.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "circuit stream dropped: too many waiting for their token");
                    continue;
                };
                let tx = done_tx.clone();
                st.inner.tracker.spawn(async move {
                    let _permit = permit;
                    let mut stream = stream;
                    if let Some(token) = read_preface(&mut stream).await {
                        let _ = tx.send(Ended::Preface(token, stream)).await;
                    } else {
                        tracing::debug!(%peer, "circuit stream without a valid preface");
                    }
                });
            }
            Some(ended) = done_rx.recv() => match ended {
                Ended::Preface(token, stream) => st.on_join(token, stream, &done_tx),
                Ended::Splice(id, cut) => st.on_splice_end(id, cut),
            },
            _ = tick.tick() => {
                let secs = st.registry.limits().join_timeout_s;
                for c in st.registry.unjoined(Instant::now()) {
                    st.waiting.remove(&c.id);
                    st.tell_ends(&c, Cut::NotJoined { secs });
                }
            }
        }
        st.update_stats();
    }
    // Shutting down: every circuit's ends are told; the splices stop with the tracker.
    st.waiting.clear();
}

/// Reads exactly a preface (and nothing after it: the rest is the circuit's).
async fn read_preface(stream: &mut TcpStream) -> Option<Token> {
    let mut buf = [0u8; PREFACE_BYTES];
    match tokio::time::timeout(PREFACE_TIMEOUT, stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => wire::parse_preface(&buf),
        _ => None,
    }
}

impl State {
    fn session_of(&mut self, con: &Connection) -> SessionId {
        let node = con.node_id();
        if let Some(s) = self.sessions.get(&node)
            && s.conn == *con
        {
            return s.id;
        }
        let id = self.next_session;
        self.next_session += 1;
        if let Some(old) = self.sessions.insert(
            node,
            Session {
                id,
                conn: con.clone(),
            },
        ) {
            self.session_closed(old.id);
        }
        id
    }

    fn conn_of(&self, session: SessionId) -> Option<&Connection> {
        self.sessions
            .values()
            .find(|s| s.id == session)
            .map(|s| &s.conn)
    }

    fn reply(&self, con: &Connection, r: &Reply) {
        if con.send_line(&wire::emit_reply(r)).is_err() {
            tracing::debug!(peer = %con.node_id().short(), "control connection full or closed; message dropped");
        }
    }

    fn refuse(&self, con: &Connection, req: u32, reason: Refusal) {
        tracing::info!(peer = %con.node_id().short(), %reason, "refused");
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused += 1;
        self.reply(con, &Reply::Refused { req, reason });
    }

    fn on_line(&mut self, con: &Connection, line: &str) {
        let session = self.session_of(con);
        let now = Instant::now();
        let limits: CircuitLimits = self.registry.limits().circuit();
        match wire::parse_request(line) {
            Err(e) => self.refuse(con, 0, Refusal::Malformed { detail: e.0 }),
            Ok(Request::Reserve { req }) => {
                match self
                    .registry
                    .reserve(con.node_id(), session, con.remote_addr().ip(), now)
                {
                    Ok(ttl) => {
                        tracing::debug!(peer = %con.node_id().short(), "reserved");
                        self.reply(
                            con,
                            &Reply::Reserved {
                                req,
                                expires_in_s: ttl.as_secs(),
                                limits,
                            },
                        );
                    }
                    Err(reason) => self.refuse(con, req, reason),
                }
            }
            Ok(Request::Connect { req, to }) => {
                let tokens = (Token::random(), Token::random());
                match self.registry.open(
                    con.node_id(),
                    session,
                    con.remote_addr().ip(),
                    to,
                    now,
                    tokens,
                ) {
                    Ok(opened) => {
                        let Some(target) = self.conn_of(opened.target_session).cloned() else {
                            self.registry.end(opened.id);
                            self.refuse(con, req, Refusal::NotReserved { node: to });
                            return;
                        };
                        tracing::debug!(from = %con.node_id().short(), to = %to.short(), id = opened.id, "circuit opened");
                        self.reply(
                            &target,
                            &Reply::Incoming {
                                id: opened.id,
                                from: con.node_id(),
                                token: opened.target_token,
                                limits,
                            },
                        );
                        self.reply(
                            con,
                            &Reply::Circuit {
                                req,
                                id: opened.id,
                                token: opened.dialer_token,
                                limits,
                            },
                        );
                    }
                    Err(reason) => self.refuse(con, req, reason),
                }
            }
        }
    }

    fn on_closed(&mut self, con: &Connection) {
        let node = con.node_id();
        let Some(s) = self.sessions.get(&node) else {
            return;
        };
        if s.conn != *con {
            return;
        }
        let id = s.id;
        self.sessions.remove(&node);
        self.session_closed(id);
    }

    fn session_closed(&mut self, session: SessionId) {
        for c in self.registry.session_closed(session) {
            self.waiting.remove(&c.id);
            self.tell_ends(&c, Cut::ReservationEnded);
        }
    }

    fn on_join(&mut self, token: Token, stream: TcpStream, done: &mpsc::Sender<Ended>) {
        let Some(j) = self.registry.join(&token, Instant::now()) else {
            tracing::debug!("circuit stream with an unknown or late token");
            return;
        };
        if !j.both {
            self.waiting.insert(j.id, (j.end, stream));
            return;
        }
        let Some((_, other)) = self.waiting.remove(&j.id) else {
            self.registry.end(j.id);
            return;
        };
        let Some(c) = self.registry.circuit(j.id).cloned() else {
            return;
        };
        let (dialer, target) = if j.end == End::Dialer {
            (stream, other)
        } else {
            (other, stream)
        };
        let ends = (
            self.conn_of(c.dialer_session).cloned(),
            self.conn_of(c.target_session).cloned(),
        );
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spliced += 1;
        let limits = self.registry.limits().clone();
        let inner = self.inner.clone();
        let done = done.clone();
        let id = c.id;
        let span =
            tracing::debug_span!("circuit", id, from = %c.dialer.short(), to = %c.target.short());
        self.inner.tracker.spawn(
            async move {
                let cut = splice(id, dialer, target, ends, &limits, &inner).await;
                let _ = done.send(Ended::Splice(id, cut)).await;
            }
            .instrument(span),
        );
    }

    fn on_splice_end(&mut self, id: CircuitId, cut: Option<Cut>) {
        self.registry.end(id);
        if cut.is_some() {
            self.inner
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cut += 1;
        }
    }

    /// Tells both ends of a circuit (those whose control connection is still here) why it
    /// ended.
    fn tell_ends(&self, c: &crate::registry::Circuit, reason: Cut) {
        tracing::info!(id = c.id, %reason, "circuit cut");
        let line = Reply::Cut { id: c.id, reason };
        for session in [c.dialer_session, c.target_session] {
            if let Some(con) = self.conn_of(session) {
                self.reply(con, &line);
            }
        }
    }

    fn update_stats(&self) {
        let mut s = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.reservations = self.registry.reservations();
        s.circuits = self.registry.circuits();
    }
}

/// Copies bytes both ways between the circuit's two streams until one closes or a limit is
/// reached; at a limit, tells both ends why (on their control connections) before closing.
async fn splice(
    id: CircuitId,
    mut dialer: TcpStream,
    mut target: TcpStream,
    ends: (Option<Connection>, Option<Connection>),
    limits: &RelayLimits,
    inner: &ServerInner,
) -> Option<Cut> {
    let _ = dialer.set_nodelay(true);
    let _ = target.set_nodelay(true);
    if dialer.write_all(&[SPLICED]).await.is_err() || target.write_all(&[SPLICED]).await.is_err() {
        return None;
    }
    let total = AtomicU64::new(0);
    let (mut dr, mut dw) = dialer.split();
    let (mut tr, mut tw) = target.split();
    let stop = CancellationToken::new();
    let copy = async {
        let a = pump(&mut dr, &mut tw, limits, &total, &inner.bytes, &stop);
        let b = pump(&mut tr, &mut dw, limits, &total, &inner.bytes, &stop);
        let (a, b) = tokio::join!(a, b);
        a.or(b)
    };
    let deadline = Duration::from_secs(limits.circuit_duration_s);
    let cut = tokio::select! {
        c = copy => c,
        () = tokio::time::sleep(deadline) => Some(Cut::Duration { secs: limits.circuit_duration_s }),
        () = inner.cancel.cancelled() => Some(Cut::Shutdown),
    };
    if let Some(reason) = &cut {
        tracing::info!(id, %reason, "circuit cut");
        let line = wire::emit_reply(&Reply::Cut {
            id,
            reason: reason.clone(),
        });
        for c in [&ends.0, &ends.1].into_iter().flatten() {
            let _ = c.send_line(&line);
        }
        tokio::time::sleep(CUT_GRACE).await;
    }
    cut
}

/// One direction of a circuit. Ends at EOF (passing it on), an error, or a limit.
async fn pump(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    limits: &RelayLimits,
    total: &AtomicU64,
    relayed: &AtomicU64,
    stop: &CancellationToken,
) -> Option<Cut> {
    let mut buf = vec![0u8; SPLICE_CHUNK];
    let mut pacer = Pacer::new(limits.circuit_bytes_per_sec, Instant::now());
    loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = wr.shutdown().await;
                    return None;
                }
                Ok(n) => n,
            },
            () = stop.cancelled() => return None,
        };
        let before = total.fetch_add(n as u64, Ordering::Relaxed);
        let allowed = limits
            .circuit_data_bytes
            .saturating_sub(before)
            .min(n as u64) as usize;
        if wr.write_all(&buf[..allowed]).await.is_err() {
            stop.cancel();
            return None;
        }
        relayed.fetch_add(allowed as u64, Ordering::Relaxed);
        if allowed < n {
            stop.cancel();
            return Some(Cut::Data {
                bytes: limits.circuit_data_bytes,
            });
        }
        let wait = pacer.take(n as u64, Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return None,
            }
        }
    }
}
