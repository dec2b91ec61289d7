//! The traversal driver: reverse connects and TCP hole punches for
//! [`Node::connect`], and the answers to other nodes' requests, signalled
//! through DHT rendezvous messages on
//! [`CHANNEL_TRAVERSAL`](natkit_dht::rendezvous::CHANNEL_TRAVERSAL).
//!
//! The decisions are the sans-I/O cores' ([`natkit_traversal::punch::Punch`],
//! [`natkit_traversal::limits::Limiter`]); this file moves their messages
//! (each in a [`Signal`] carrying our rendezvous points, so that the answer
//! needs no lookup), dials from the listening port, and watches for the
//! peer's connection arriving at our listener instead.
//!
//! # Requests from others
//! A `Connect` (punch) or `Reverse` (dial me) from a node is signed by it (the
//! DHT checked). Before anything is dialed:
//! - the request's addresses are cut to those on the IP address the message
//!   came from (as the first node on its path saw it), so a request cannot
//!   aim our SYNs at a third party;
//! - the requester gets [`natkit_traversal::limits::NODE_BURST`] requests,
//!   then one per [`natkit_traversal::limits::NODE_REFILL`]; each dial batch
//!   takes tokens per target IP and overall;
//! - at most [`MAX_TRAVERSALS`] run at once, both directions together.
//!
//! A refused request is answered with one `Cancel` (`refused`), so the
//! requester stops at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use natkit_dht::dht::DhtError;
use natkit_dht::rendezvous::{CHANNEL_TRAVERSAL, Incoming};
use natkit_identity::NodeId;
use natkit_net::{Connection, NetError, Role};
use natkit_traversal::limits::{Limiter, LimitsConfig, TokenBucket};
use natkit_traversal::plan::{DIAL_TIMEOUT, REVERSE_TIMEOUT, Side, noise_initiator};
use natkit_traversal::punch::{
    CancelReason, DialResult, Message, Output, Punch, PunchConfig, PunchFailure, PunchRole, Signal,
};
use natkit_unl::{AddrSource, MAX_ADDRS, NatType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Inner, Node};

/// Most traversals (punches and reverse connects, ours and others') at once.
pub const MAX_TRAVERSALS: usize = 16;

/// Requests of other nodes (punch `Connect`s, `Reverse`s) answered at once,
/// node-wide: each answer is sent through rendezvous points the request names.
pub const ANSWER_BURST: u32 = 32;

/// One more answered request per this interval (sustained: 20 a second).
pub const ANSWER_REFILL: Duration = Duration::from_millis(50);

/// Most reply-via addresses an answer is sent through (a request may name
/// [`natkit_traversal::punch::wire::MAX_REPLY_VIA`]).
pub const MAX_ANSWER_VIA: usize = 2;

/// Signals queued for one traversal; more are dropped (the punch retries).
const SIGNAL_QUEUE: usize = 16;

/// How often a traversal looks whether the peer's connection is up (it may
/// arrive at our listener rather than through our own dial).
const CONNECTION_POLL: Duration = Duration::from_millis(10);

/// How long a reachability check waits for the dial-backs it asked for.
pub const DIAL_BACK_WAIT: Duration = Duration::from_secs(3);

/// Most rendezvous nodes asked to dial back in one reachability check.
pub const DIAL_BACK_HELPERS: usize = 3;

/// Why a reverse connect or a hole punch did not connect.
///
/// ```
/// use natkit::node::TraversalError;
///
/// assert!(TraversalError::Refused.to_string().contains("refused"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraversalError {
    /// The request could not be delivered through the peer's rendezvous
    /// points (or, without any, through the DHT).
    #[error("cannot reach the peer through rendezvous: {0}")]
    Signal(#[source] DhtError),
    /// The punch ended without a connection.
    #[error("{0}")]
    Punch(#[from] PunchFailure),
    /// The peer did not dial back in time.
    #[error("the peer did not dial back within {secs:.1} s")]
    ReverseTimeout {
        /// The limit ([`REVERSE_TIMEOUT`]).
        secs: f64,
    },
    /// The peer refused the request (its rate limits, or no address of ours
    /// it may dial).
    #[error("the peer refused the request (rate limit, or no address it may dial)")]
    Refused,
    /// The peer gave up.
    #[error("the peer gave up ({0:?})")]
    PeerCancelled(CancelReason),
    /// Too many traversals at once here.
    #[error("too many NAT traversals at once (at most {MAX_TRAVERSALS})")]
    Busy,
    /// We know no public address of ours that the peer could dial back.
    #[error("this node knows no public address of its own for the peer to dial")]
    NoOwnAddress,
    /// The node is shut down.
    #[error("the node is shut down")]
    Shutdown,
}

/// What a traversal reports when it connects.
pub(crate) struct Traversed {
    pub(crate) conn: Connection,
    /// The round trip of the rendezvous exchange (punch initiator).
    pub(crate) signal_rtt: Option<Duration>,
}

/// An input for a running traversal.
enum Event {
    Message {
        msg: Message,
        reply_via: Vec<SocketAddr>,
    },
    SendFailed(DhtError),
}

/// The traversals running, by (peer, correlation id).
#[derive(Default)]
struct Routes {
    by_key: HashMap<(NodeId, u64), mpsc::Sender<Event>>,
    /// Our own punch toward a peer, for a competing `Connect` (glare).
    initiating: HashMap<NodeId, u64>,
    /// The addresses punches dial (or expect) per peer, with how many punches
    /// have each: a connection with one of them is a punch's, not a reverse
    /// connect's.
    punch_addrs: HashMap<NodeId, HashMap<SocketAddr, usize>>,
}

/// The traversal state of a node.
pub(crate) struct Traversal {
    routes: Mutex<Routes>,
    limiter: Mutex<Limiter>,
    /// Requests of others answered, node-wide.
    answers: Mutex<TokenBucket>,
}

impl Traversal {
    pub(crate) fn new(limits: LimitsConfig) -> Self {
        Traversal {
            routes: Mutex::new(Routes::default()),
            limiter: Mutex::new(Limiter::new(limits, Instant::now())),
            answers: Mutex::new(TokenBucket::new(
                ANSWER_BURST,
                ANSWER_REFILL,
                Instant::now(),
            )),
        }
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a connection with `peer` at `addr` is one a punch dialed.
    fn punched(&self, peer: &NodeId, addr: SocketAddr) -> bool {
        self.routes()
            .punch_addrs
            .get(peer)
            .is_some_and(|m| m.contains_key(&addr))
    }

    /// Takes a token of the node-wide budget of answered requests.
    fn take_answer(&self, now: Instant) -> bool {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take(1, now)
    }

    fn limiter(&self) -> MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A traversal's entry in [`Routes`], removed when dropped; a traversal
/// dropped before it ended (another attempt connected first, or the caller
/// gave up) tells the peer with a `Cancel`.
struct Route {
    node: Node,
    peer: NodeId,
    id: u64,
    initiating: bool,
    /// The `Cancel` to send if dropped unfinished: (attempt, via).
    cancel: Option<(u8, Vec<SocketAddr>)>,
    /// The addresses this punch dialed (in [`Routes::punch_addrs`]).
    dialed: Vec<SocketAddr>,
}

impl Route {
    fn open(
        node: &Node,
        peer: NodeId,
        id: u64,
        initiating: bool,
    ) -> Result<(Route, mpsc::Receiver<Event>), TraversalError> {
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        let mut r = node.inner.traversal.routes();
        if r.by_key.len() >= MAX_TRAVERSALS {
            return Err(TraversalError::Busy);
        }
        r.by_key.insert((peer, id), tx);
        if initiating {
            r.initiating.insert(peer, id);
        }
        drop(r);
        let route = Route {
            node: node.clone(),
            peer,
            id,
            initiating,
            cancel: None,
            dialed: Vec::new(),
        };
        Ok((route, rx))
    }

    /// Notes that this punch dials (and expects a connection from) `addr`.
    fn dialing(&mut self, addr: SocketAddr) {
        if self.dialed.contains(&addr) {
            return;
        }
        self.dialed.push(addr);
        let mut r = self.node.inner.traversal.routes();
        *r.punch_addrs
            .entry(self.peer)
            .or_default()
            .entry(addr)
            .or_default() += 1;
    }

    fn owns(&self, addr: SocketAddr) -> bool {
        self.dialed.contains(&addr)
    }

    /// Our initiator punch became a responder to the peer's punch `id`.
    fn rekey(&mut self, id: u64) {
        let mut r = self.node.inner.traversal.routes();
        if let Some(tx) = r.by_key.remove(&(self.peer, self.id)) {
            r.by_key.insert((self.peer, id), tx);
        }
        if self.initiating {
            r.initiating.remove(&self.peer);
            self.initiating = false;
        }
        self.id = id;
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        let mut r = self.node.inner.traversal.routes();
        r.by_key.remove(&(self.peer, self.id));
        if self.initiating && r.initiating.get(&self.peer) == Some(&self.id) {
            r.initiating.remove(&self.peer);
        }
        if let Some(m) = r.punch_addrs.get_mut(&self.peer) {
            for a in &self.dialed {
                if let Some(n) = m.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(a);
                    }
                }
            }
            if m.is_empty() {
                r.punch_addrs.remove(&self.peer);
            }
        }
        drop(r);
        if let Some((attempt, via)) = self.cancel.take() {
            let msg = Message::Cancel {
                id: self.id,
                attempt,
                reason: CancelReason::Connected,
            };
            self.node.signal(self.peer, via, msg, None);
        }
    }
}

/// Receives the traversal channel's messages until the node stops.
pub(crate) async fn dispatch_loop(
    node: Weak<Inner>,
    mut inbox: mpsc::Receiver<Incoming>,
    cancel: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => return,
            m = inbox.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let Some(inner) = node.upgrade() else { return };
        Node { inner }.on_signal(incoming);
    }
}

/// A random correlation id.
fn random_id() -> u64 {
    let mut b = [0u8; 8];
    // No randomness at all is unheard of on Linux; the clock still separates
    // the punches of one node.
    if getrandom::fill(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (nanos as u64).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// Keeps the addresses on `ip` (the requester's, as seen on the way): a
/// request may only make us dial its sender. Without a known sender address,
/// none.
fn on_sender_ip(addrs: Vec<SocketAddr>, ip: Option<IpAddr>) -> Vec<SocketAddr> {
    match ip {
        Some(ip) => addrs.into_iter().filter(|a| a.ip() == ip).collect(),
        None => Vec::new(),
    }
}

/// The Noise role on a socket both sides dialed.
fn punch_role(us: &NodeId, peer: &NodeId) -> Role {
    match noise_initiator(us, peer) {
        Some(Side::Local) => Role::Initiator,
        _ => Role::Responder,
    }
}

impl Node {
    /// Our public TCP addresses, for a peer to dial: the address the DHT saw
    /// us at with our listening port (port-preserving NATs keep it), the
    /// observed address as seen, our mappings, and, without NAT, our own
    /// addresses. Loopback and unspecified addresses are left out.
    pub(crate) fn public_addrs(&self) -> Vec<SocketAddr> {
        let unl = self.unl();
        let port = self.port();
        let mut out: Vec<SocketAddr> = Vec::new();
        let mut push = |a: SocketAddr| {
            let ip = a.ip();
            if !ip.is_loopback() && !ip.is_unspecified() && a.port() != 0 && !out.contains(&a) {
                out.push(a);
            }
        };
        for c in &unl.addrs {
            match c.source {
                AddrSource::Observed => {
                    push(SocketAddr::new(c.addr.ip(), port));
                    push(c.addr);
                }
                s if s.is_mapping() => push(c.addr),
                AddrSource::Lan if unl.nat == NatType::Open => push(c.addr),
                _ => {}
            }
        }
        out.truncate(MAX_ADDRS);
        out
    }

    /// Where a peer answers us: our rendezvous points, or (a node without
    /// any, reachable itself) the DHT's view of our own address.
    fn reply_via(&self) -> Vec<SocketAddr> {
        let unl = self.unl();
        if !unl.rendezvous.is_empty() {
            return unl.rendezvous.clone();
        }
        unl.addrs
            .iter()
            .filter(|c| c.source == AddrSource::Observed)
            .map(|c| c.addr)
            .take(natkit_traversal::punch::wire::MAX_REPLY_VIA)
            .collect()
    }

    /// Sends `msg` to `peer` through `via` in the background; a failure goes
    /// to `report`, if given.
    fn signal(
        &self,
        peer: NodeId,
        via: Vec<SocketAddr>,
        msg: Message,
        report: Option<mpsc::Sender<Event>>,
    ) {
        let signal = Signal {
            reply_via: self.reply_via(),
            message: msg,
        };
        let payload = match signal.emit() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a traversal message");
                return;
            }
        };
        let node = self.clone();
        let kind = signal.message.kind();
        self.inner.tracker.spawn(async move {
            let dht = &node.inner.dht;
            let sent = tokio::select! {
                () = node.inner.cancel.cancelled() => return,
                r = dht.send_on(CHANNEL_TRAVERSAL, *peer.as_bytes(), &payload, &via) => r,
            };
            match sent {
                Ok(()) => tracing::trace!(peer = %peer.short(), ?kind, "signal delivered"),
                Err(e) => {
                    tracing::debug!(peer = %peer.short(), ?kind, error = %e, "signal not delivered");
                    if let Some(report) = report {
                        let _ = report.try_send(Event::SendFailed(e));
                    }
                }
            }
        });
    }

    /// A message on the traversal channel.
    fn on_signal(&self, incoming: Incoming) {
        let Ok(from) = NodeId::from_bytes(&incoming.from) else {
            return;
        };
        let signal = match Signal::parse(&incoming.payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(from = %from.short(), error = %e, "bad traversal message");
                return;
            }
        };
        let sender_ip = incoming.sender_addr.map(|a| a.ip());
        // Requests may make us dial their sender only.
        let msg = match signal.message {
            Message::Connect { id, attempt, addrs } => Message::Connect {
                id,
                attempt,
                addrs: on_sender_ip(addrs, sender_ip),
            },
            Message::Reverse { id, attempt, addrs } => Message::Reverse {
                id,
                attempt,
                addrs: on_sender_ip(addrs, sender_ip),
            },
            other => other,
        };
        let mut reply_via = signal.reply_via;
        reply_via.truncate(MAX_ANSWER_VIA);
        if reply_via.is_empty() {
            // Sent to us directly: answer the same way.
            reply_via.extend(incoming.sender_addr.filter(|a| *a == incoming.via));
        }
        let id = msg.id();
        let route = {
            let r = self.inner.traversal.routes();
            r.by_key.get(&(from, id)).cloned().or_else(|| {
                let glare = matches!(msg, Message::Connect { .. });
                glare
                    .then(|| r.initiating.get(&from))
                    .flatten()
                    .and_then(|ours| r.by_key.get(&(from, *ours)).cloned())
            })
        };
        if let Some(tx) = route {
            let _ = tx.try_send(Event::Message { msg, reply_via });
            return;
        }
        match msg {
            Message::Connect { .. } => self.answer_punch(from, msg, reply_via),
            Message::Reverse { id, addrs, .. } => self.answer_reverse(from, id, addrs, reply_via),
            other => {
                tracing::trace!(from = %from.short(), kind = ?other.kind(), "traversal message for no running traversal");
            }
        }
    }

    /// Admits a request of `from`, or answers `Cancel(refused)`.
    /// Admits a request of `from`: it names addresses on its sender's IP,
    /// the requester is within its budget, and the node-wide budget of
    /// answered requests ([`ANSWER_BURST`], [`ANSWER_REFILL`]) has a token
    /// (node ids are free to make, and every answer goes to the "rendezvous
    /// points" the request names). A request refused while that budget lasts
    /// gets one `Cancel(refused)`; past it, nothing.
    fn admit(&self, from: NodeId, id: u64, via: &[SocketAddr], has_addrs: bool) -> bool {
        let now = Instant::now();
        let traversal = &self.inner.traversal;
        if !traversal.take_answer(now) {
            tracing::debug!(from = %from.short(), "traversal request dropped: too many requests");
            return false;
        }
        let admitted = has_addrs
            && traversal
                .limiter()
                .admit_request(&from, now)
                .map_err(|e| tracing::info!(from = %from.short(), error = %e, "traversal request refused"))
                .is_ok();
        if !admitted {
            let msg = Message::Cancel {
                id,
                attempt: 1,
                reason: CancelReason::Refused,
            };
            self.signal(from, via.to_vec(), msg, None);
        }
        admitted
    }

    /// A peer's `Connect`: answer it as the punch's responder.
    fn answer_punch(&self, from: NodeId, connect: Message, via: Vec<SocketAddr>) {
        let Message::Connect { id, ref addrs, .. } = connect else {
            return;
        };
        if !self.admit(from, id, &via, !addrs.is_empty()) {
            return;
        }
        let punch = match Punch::respond(
            &connect,
            &self.public_addrs(),
            PunchConfig::default(),
            Instant::now(),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(from = %from.short(), error = %e, "punch request ignored");
                return;
            }
        };
        let (route, rx) = match Route::open(self, from, id, false) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(from = %from.short(), error = %e, "punch request dropped");
                return;
            }
        };
        tracing::debug!(from = %from.short(), id = format_args!("{id:#018x}"), "answering a hole punch");
        let node = self.clone();
        self.inner.tracker.spawn(async move {
            let mut run = Run {
                node: &node,
                route,
                rx,
                via,
            };
            match run.drive(punch).await {
                Ok(t) => tracing::info!(peer = %from.short(), addr = %t.conn.remote_addr(), "hole punched (responder)"),
                Err(e) => tracing::info!(peer = %from.short(), error = %e, "hole punch failed (responder)"),
            }
        });
    }

    /// A peer's `Reverse`: dial it back at its addresses.
    fn answer_reverse(&self, from: NodeId, id: u64, addrs: Vec<SocketAddr>, via: Vec<SocketAddr>) {
        if !self.admit(from, id, &via, !addrs.is_empty()) {
            return;
        }
        let allowed = self
            .inner
            .traversal
            .limiter()
            .admit_dials(&addrs, Instant::now())
            .allowed;
        if allowed.is_empty() {
            let msg = Message::Cancel {
                id,
                attempt: 1,
                reason: CancelReason::Refused,
            };
            self.signal(from, via, msg, None);
            return;
        }
        tracing::debug!(from = %from.short(), ?allowed, "dialing back (reverse connect)");
        let net = self.inner.net.clone();
        let cancel = self.inner.cancel.clone();
        self.inner.tracker.spawn(async move {
            for addr in allowed {
                // From a fresh port: the listen port's 4-tuple toward the
                // requester may be a punch's.
                let dial = tokio::time::timeout(DIAL_TIMEOUT, net.connect_from_fresh_port(addr, from));
                let r = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = dial => r,
                };
                match r {
                    Ok(Ok(c)) => {
                        tracing::info!(peer = %from.short(), addr = %c.remote_addr(), "dialed back (reverse connect)");
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "reverse dial failed"),
                    Err(_) => tracing::debug!(%addr, "reverse dial timed out"),
                }
            }
        });
    }

    /// Whether unsolicited TCP connections reach us: asks up to
    /// [`DIAL_BACK_HELPERS`] of our rendezvous nodes (natkit nodes that told
    /// us their key, not on our LAN) to dial us back, as a `Reverse` request
    /// (they dial only the IP address the request came from, within their
    /// limits), and waits up to [`DIAL_BACK_WAIT`] for one of their
    /// connections; those are closed at once. `Some(true)`: one arrived;
    /// `Some(false)`: none did; `None`: nobody could be asked.
    pub(crate) async fn dial_back_check(&self, helpers: &[(SocketAddr, NodeId)]) -> Option<bool> {
        let addrs = self.public_addrs();
        if helpers.is_empty() || addrs.is_empty() {
            return None;
        }
        let mut routes = Vec::new();
        for (addr, helper) in helpers {
            let id = random_id();
            let Ok((route, rx)) = Route::open(self, *helper, id, false) else {
                continue;
            };
            let msg = Message::Reverse {
                id,
                attempt: 1,
                addrs: addrs.clone(),
            };
            self.signal(*helper, vec![*addr], msg, None);
            routes.push((route, rx));
        }
        if routes.is_empty() {
            return None;
        }
        let net = &self.inner.net;
        let deadline = tokio::time::Instant::now() + DIAL_BACK_WAIT;
        let mut tick = tokio::time::interval(CONNECTION_POLL);
        let found = loop {
            let back: Vec<Connection> = helpers
                .iter()
                .filter_map(|(_, h)| net.connection(h))
                .filter(|c| c.direction() == natkit_net::Direction::Inbound)
                .collect();
            if !back.is_empty() {
                for c in &back {
                    tracing::info!(helper = %c.node_id().short(), from = %c.remote_addr(), "dialed back: reachable");
                    c.close();
                }
                break true;
            }
            tokio::select! {
                () = self.inner.cancel.cancelled() => return None,
                () = tokio::time::sleep_until(deadline) => break false,
                _ = tick.tick() => {}
            }
        };
        if !found {
            tracing::info!(
                asked = routes.len(),
                "no dial-back arrived: not reachable unsolicited"
            );
        }
        drop(routes);
        Some(found)
    }

    /// Our rendezvous nodes that told their key and are off our network (they
    /// see us through our NAT): up to [`DIAL_BACK_HELPERS`].
    pub(crate) async fn helpers(&self) -> Vec<(SocketAddr, NodeId)> {
        let Ok(nodes) = self.inner.dht.rendezvous_nodes().await else {
            return Vec::new();
        };
        let lan = &self.inner.lan;
        nodes
            .into_iter()
            .filter_map(|(addr, key)| Some((addr, NodeId::from_bytes(&key?).ok()?)))
            .filter(|(addr, id)| {
                let ip = addr.ip();
                *id != self.id()
                    && !ip.is_loopback()
                    && !lan
                        .iter()
                        .any(|l| *l == ip || natkit_traversal::plan::same_lan(*l, ip))
            })
            .take(DIAL_BACK_HELPERS)
            .collect()
    }

    /// Connects to each helper from our listening port and keeps the address
    /// it saw the connection come from (the handshake tells): how our NAT
    /// maps TCP, the flows hole punching uses. The connections are closed.
    pub(crate) async fn tcp_probe(&self, helpers: &[(SocketAddr, NodeId)]) -> usize {
        let net = &self.inner.net;
        let probes = helpers.iter().map(|(addr, helper)| async move {
            let r = tokio::time::timeout(DIAL_TIMEOUT, net.connect(*addr, *helper)).await;
            (*addr, *helper, r)
        });
        let mut got = 0;
        for (addr, helper, r) in futures::future::join_all(probes).await {
            match r {
                Ok(Ok(c)) => {
                    let obs = natkit_traversal::classify::Observation {
                        reporter: helper,
                        reporter_ip: addr.ip(),
                        transport: natkit_traversal::classify::Transport::Tcp,
                        local_port: c.local_addr().port(),
                        observed: c.observed_addr(),
                        at: Instant::now(),
                    };
                    tracing::debug!(helper = %helper.short(), observed = %obs.observed, "TCP report");
                    self.add_tcp_report(obs);
                    c.close();
                    got += 1;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TCP probe failed"),
                Err(_) => tracing::debug!(%addr, "TCP probe timed out"),
            }
        }
        got
    }

    /// Punches a hole to `peer` as initiator, signalling through `via`.
    pub(crate) async fn punch(
        &self,
        peer: NodeId,
        via: Vec<SocketAddr>,
    ) -> Result<Traversed, TraversalError> {
        let id = random_id();
        let (route, rx) = Route::open(self, peer, id, true)?;
        let punch = Punch::initiate(
            id,
            &self.public_addrs(),
            PunchConfig::default(),
            Instant::now(),
        );
        let mut run = Run {
            node: self,
            route,
            rx,
            via,
        };
        run.drive(punch).await
    }

    /// Asks `peer` (through `via`) to dial us, and waits for its connection.
    pub(crate) async fn reverse(
        &self,
        peer: NodeId,
        via: Vec<SocketAddr>,
    ) -> Result<Traversed, TraversalError> {
        let net = &self.inner.net;
        let addrs = self.public_addrs();
        if addrs.is_empty() {
            return Err(TraversalError::NoOwnAddress);
        }
        let id = random_id();
        let (mut route, mut rx) = Route::open(self, peer, id, false)?;
        let (report, failures) = mpsc::channel(1);
        let mut failures = failures;
        let msg = Message::Reverse {
            id,
            attempt: 1,
            addrs,
        };
        self.signal(peer, via.clone(), msg, Some(report));
        route.cancel = Some((1, via));
        let deadline = tokio::time::Instant::now() + REVERSE_TIMEOUT;
        let mut tick = tokio::time::interval(CONNECTION_POLL);
        let result = loop {
            tokio::select! {
                () = self.inner.cancel.cancelled() => break Err(TraversalError::Shutdown),
                () = tokio::time::sleep_until(deadline) => break Err(TraversalError::ReverseTimeout {
                    secs: REVERSE_TIMEOUT.as_secs_f64(),
                }),
                // Not a connection a punch to the peer dialed (or expects).
                _ = tick.tick() => if let Some(conn) = net.connection(&peer)
                    && !self.inner.traversal.punched(&peer, conn.remote_addr())
                {
                    break Ok(Traversed { conn, signal_rtt: None });
                },
                Some(Event::SendFailed(e)) = failures.recv() => break Err(TraversalError::Signal(e)),
                ev = rx.recv() => match ev {
                    Some(Event::Message { msg: Message::Cancel { reason, .. }, .. }) => {
                        break Err(match reason {
                            CancelReason::Refused => TraversalError::Refused,
                            other => TraversalError::PeerCancelled(other),
                        });
                    }
                    Some(_) => {}
                    None => break Err(TraversalError::Shutdown),
                },
            }
        };
        route.cancel = None;
        result
    }
}

/// One punch being driven, either role.
struct Run<'a> {
    node: &'a Node,
    route: Route,
    rx: mpsc::Receiver<Event>,
    /// Where the peer's messages go (its rendezvous points).
    via: Vec<SocketAddr>,
}

type DialOutcome = (SocketAddr, Result<Connection, NetError>);

impl Run<'_> {
    /// Runs `punch` to its end.
    async fn drive(&mut self, mut punch: Punch) -> Result<Traversed, TraversalError> {
        // A `Connect` of the peer's that arrived while ours was running.
        let mut competing: Option<Message> = None;
        let node = self.node;
        let net = &node.inner.net;
        let peer = self.route.peer;
        let role = punch_role(&node.id(), &peer);
        let (report, mut failures) = mpsc::channel(4);
        let mut dials: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = DialOutcome> + Send>>,
        > = FuturesUnordered::new();
        let mut connected: Option<Connection> = None;
        let mut tick = tokio::time::interval(CONNECTION_POLL);
        loop {
            while let Some(out) = punch.poll_output() {
                match out {
                    Output::Send(msg) => {
                        node.signal(peer, self.via.clone(), msg, Some(report.clone()));
                    }
                    Output::Dial { addrs, .. } => {
                        let allowed = if punch.role() == PunchRole::Responder {
                            let admitted = node
                                .inner
                                .traversal
                                .limiter()
                                .admit_dials(&addrs, Instant::now());
                            for (addr, why) in admitted.refused {
                                tracing::info!(%addr, %why, "punch dial refused by a limit");
                                punch.handle_dial_result(addr, DialResult::Failed, Instant::now());
                            }
                            admitted.allowed
                        } else {
                            addrs
                        };
                        let timeout = PunchConfig::default().dial_timeout;
                        for addr in allowed {
                            self.route.dialing(addr);
                            let _ = net.expect_inbound(addr, peer, role, timeout + CONNECTION_POLL);
                            let net = net.clone();
                            dials.push(Box::pin(async move {
                                let r = tokio::time::timeout(
                                    timeout,
                                    net.connect_with_role(addr, peer, role),
                                )
                                .await
                                .unwrap_or(Err(
                                    NetError::Timeout {
                                        what: "hole punch dial",
                                        addr,
                                        secs: timeout.as_secs_f64(),
                                    },
                                ));
                                (addr, r)
                            }));
                        }
                    }
                    Output::Succeeded { rtt, .. } => {
                        self.route.cancel = None;
                        let conn = connected.take().ok_or(TraversalError::Shutdown)?;
                        return Ok(Traversed {
                            conn,
                            signal_rtt: rtt,
                        });
                    }
                    Output::Failed(PunchFailure::Superseded { by }) => {
                        // Both sides initiated and the peer's punch goes on:
                        // answer it.
                        let Some(theirs) = competing.take().filter(|m| m.id() == by) else {
                            self.route.cancel = None;
                            return Err(PunchFailure::Superseded { by }.into());
                        };
                        tracing::debug!(peer = %peer.short(), "both sides punched; answering the peer's");
                        punch = Punch::respond(
                            &theirs,
                            &node.public_addrs(),
                            PunchConfig::default(),
                            Instant::now(),
                        )
                        .map_err(|_| PunchFailure::Superseded { by })?;
                        self.route.rekey(by);
                    }
                    Output::Failed(f) => {
                        self.route.cancel = None;
                        return Err(match f {
                            PunchFailure::PeerCancelled(CancelReason::Refused) => {
                                TraversalError::Refused
                            }
                            f => f.into(),
                        });
                    }
                }
            }
            self.route.cancel = Some((punch.attempt(), self.via.clone()));
            let timer = punch
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                () = node.inner.cancel.cancelled() => {
                    self.route.cancel = None;
                    return Err(TraversalError::Shutdown);
                }
                () = tokio::time::sleep_until(timer) => punch.handle_timeout(Instant::now()),
                // The peer's dial may have reached our listener instead.
                _ = tick.tick() => if let Some(c) = net.connection(&peer)
                    && self.route.owns(c.remote_addr())
                {
                    let addr = c.remote_addr();
                    connected = Some(c);
                    punch.handle_dial_result(addr, DialResult::Connected, Instant::now());
                },
                Some((addr, r)) = dials.next(), if !dials.is_empty() => match r {
                    Ok(c) => {
                        connected = Some(c);
                        punch.handle_dial_result(addr, DialResult::Connected, Instant::now());
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "punch dial failed");
                        punch.handle_dial_result(addr, DialResult::Failed, Instant::now());
                    }
                },
                Some(Event::SendFailed(e)) = failures.recv() => {
                    self.route.cancel = None;
                    return Err(TraversalError::Signal(e));
                }
                ev = self.rx.recv() => match ev {
                    Some(Event::Message { msg, reply_via }) => {
                        if !reply_via.is_empty() {
                            self.via = reply_via;
                        }
                        if matches!(msg, Message::Connect { .. }) && msg.id() != punch.id() {
                            competing = Some(msg.clone());
                        }
                        if let Err(e) = punch.handle_message(&msg, Instant::now()) {
                            tracing::trace!(peer = %peer.short(), error = %e, "punch message ignored");
                        }
                    }
                    Some(Event::SendFailed(e)) => {
                        self.route.cancel = None;
                        return Err(TraversalError::Signal(e));
                    }
                    None => return Err(TraversalError::Shutdown),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_dial_their_sender_only() {
        let a: SocketAddr = "203.0.113.10:4000".parse().unwrap();
        let victim: SocketAddr = "198.51.100.7:80".parse().unwrap();
        let ip = Some(a.ip());
        assert_eq!(on_sender_ip(vec![a, victim], ip), vec![a]);
        assert!(on_sender_ip(vec![a], None).is_empty());
    }

    #[test]
    fn both_ends_agree_on_the_punch_role() {
        let a = natkit_identity::Keypair::from_seed([1; 32]).node_id();
        let b = natkit_identity::Keypair::from_seed([2; 32]).node_id();
        assert_ne!(punch_role(&a, &b), punch_role(&b, &a));
    }
}
