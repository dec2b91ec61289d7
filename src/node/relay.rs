//! Relays in the node (crate `natkit-relay`): serving as one (opt-in,
//! [`NodeBuilder::relay`](super::NodeBuilder::relay)), reserving on one or two
//! when we cannot be reached directly, and connecting through a peer's relays
//! when nothing direct works (docs/relay.md).
//!
//! - **Serving**: the relay listens on a port of its own and announces it in
//!   the DHT ([`natkit_dht::rendezvous::relay_info_hash`]): `announce_peer` to
//!   the closest nodes, and in our own store, so that any lookup that reaches
//!   us finds it.
//! - **Reserving**: a node that is not known to be reachable finds relays with
//!   `get_peers`, connects to up to [`RELAY_PROBES`] of them, keeps
//!   reservations with the [`RELAY_RESERVATIONS`] that answered fastest, lists
//!   them in its UNL (source `relay`), renews them at half-time and replaces
//!   any that goes away.
//! - **Connecting**: a peer's relays are the last attempts of a connect: at
//!   once when the planner found no direct way, else [`RELAY_FALLBACK_DELAY`]
//!   after the last direct attempt started. The direct attempts go on when
//!   the relay wins; a direct connection made later (by them, by the upgrade
//!   loop, or by the other side) replaces the relayed one (natkit-net keeps
//!   direct over relayed).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use natkit_identity::NodeId;
use natkit_net::{CloseReason, Connection, NetError, Role};
use natkit_relay::wire::CircuitId;
use natkit_relay::{Notice, RelayClient, RelayError, RelayServer, Session};
use natkit_unl::NodeType;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Inner, Node};

/// Relays a node that cannot be reached directly keeps reservations with.
pub const RELAY_RESERVATIONS: usize = 2;

/// Relays found in the DHT that a node connects to, to choose the fastest.
pub const RELAY_PROBES: usize = 6;

/// How often a node holding fewer than [`RELAY_RESERVATIONS`] looks for relays again.
pub const RELAY_SEARCH_INTERVAL: Duration = Duration::from_secs(30);

/// The first [`RELAY_QUICK_SEARCHES`] searches are this far apart (relays that came up
/// just after us are found soon).
pub const RELAY_QUICK_SEARCH_INTERVAL: Duration = Duration::from_secs(5);

/// How many searches are quick.
pub const RELAY_QUICK_SEARCHES: u32 = 3;

/// How often a relay announces itself in the DHT (peers forget announcements after 30 min
/// in other implementations).
pub const RELAY_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How often a relay retries its announcement until some node stored it (a relay that
/// starts first, such as a bootstrap node, has nobody to store it yet).
pub const RELAY_ANNOUNCE_RETRY: Duration = Duration::from_secs(2);

/// When a connect plan has direct attempts, how long after the last of them started the
/// relay attempt starts too. If the relay wins, the direct attempts go on, and one that connects
/// replaces the relayed connection.
pub const RELAY_FALLBACK_DELAY: Duration = Duration::from_secs(1);

/// Longest a relayed attempt takes: the circuit request, the join, the handshake.
pub const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Incoming relayed circuits joined at once; beyond, they wait (and the relay's join
/// timeout cuts them).
pub const MAX_RELAYED_ACCEPTS: usize = 8;

/// Longest wait to connect to a relay found in the DHT.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the reservations are looked after.
const TICK: Duration = Duration::from_millis(500);

const SEARCH_IDLE: u8 = 0;
const SEARCHING: u8 = 1;
const SEARCHED: u8 = 2;

/// What one upgrade attempt found: a direct connection and how, nothing to try, or a
/// failure.
type DirectTry = Result<Option<(Connection, super::PathKind)>, ()>;

/// A relay the node holds a reservation with.
///
/// ```
/// use natkit::node::RelayInfo;
///
/// fn show(r: &RelayInfo) -> String {
///     format!("{} at {} ({} ms)", r.id.short(), r.addr, r.rtt.as_millis())
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RelayInfo {
    /// The relay's node id.
    pub id: NodeId,
    /// Its relay address.
    pub addr: SocketAddr,
    /// How long connecting to it took.
    pub rtt: Duration,
}

struct Held {
    session: Session,
    renew_at: Instant,
}

/// The node's relay state.
pub(crate) struct Relaying {
    client: RelayClient,
    pub(crate) server: Option<RelayServer>,
    /// Open control sessions by relay address (one per relay: its Net keeps one connection
    /// per node). Opening is serialized.
    sessions: tokio::sync::Mutex<HashMap<SocketAddr, Session>>,
    held: Mutex<Vec<Held>>,
    /// Relayed connections by (relay, circuit), to close with the relay's reason.
    circuits: Mutex<HashMap<(NodeId, CircuitId), Connection>>,
    search: AtomicU8,
    started: AtomicBool,
    accepts: Arc<Semaphore>,
}

impl Relaying {
    pub(crate) fn new(client: RelayClient, server: Option<RelayServer>) -> Relaying {
        Relaying {
            client,
            server,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            held: Mutex::new(Vec::new()),
            circuits: Mutex::new(HashMap::new()),
            search: AtomicU8::new(SEARCH_IDLE),
            started: AtomicBool::new(false),
            accepts: Arc::new(Semaphore::new(MAX_RELAYED_ACCEPTS)),
        }
    }

    pub(crate) async fn shutdown(&self) {
        self.client.shutdown().await;
        if let Some(s) = &self.server {
            s.shutdown().await;
        }
    }

    /// Relays that carry a live relayed connection of ours.
    fn busy_relays(&self) -> Vec<NodeId> {
        lock(&self.circuits)
            .iter()
            .filter(|(_, c)| !c.is_closed())
            .map(|((relay, _), _)| *relay)
            .collect()
    }

    fn remember(&self, relay: NodeId, id: CircuitId, conn: &Connection) {
        let mut c = lock(&self.circuits);
        c.retain(|_, con| !con.is_closed());
        c.insert((relay, id), conn.clone());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// The relays this node holds reservations with (listed in its UNL), fastest first.
    ///
    /// ```no_run
    /// # fn demo(node: natkit::Node) {
    /// for r in node.relays() {
    ///     println!("reachable through relay {} at {}", r.id, r.addr);
    /// }
    /// # }
    /// ```
    pub fn relays(&self) -> Vec<RelayInfo> {
        lock(&self.inner.relaying.held)
            .iter()
            .filter(|h| !h.session.is_closed())
            .map(|h| RelayInfo {
                id: h.session.relay_id(),
                addr: h.session.addr(),
                rtt: h.session.rtt(),
            })
            .collect()
    }

    /// The address this node relays on, when it serves as a relay
    /// ([`NodeBuilder::relay`](super::NodeBuilder::relay)).
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.inner.relaying.server.as_ref().map(|s| s.local_addr())
    }

    /// The relay service's counters, when this node serves as a relay.
    pub fn relay_stats(&self) -> Option<natkit_relay::RelayStats> {
        self.inner.relaying.server.as_ref().map(|s| s.stats())
    }

    /// Whether the first search for relays is under way (a node that needs relays is not
    /// reachable by id before it has looked).
    pub(crate) fn relay_search_pending(&self) -> bool {
        self.inner.relaying.search.load(Ordering::Acquire) == SEARCHING
    }

    /// Relay addresses for the UNL.
    pub(crate) fn relay_addrs(&self) -> Vec<SocketAddr> {
        self.relays().into_iter().map(|r| r.addr).collect()
    }

    /// Starts looking after reservations in the background, once (from `refresh`, when we
    /// are not known to be reachable).
    pub(crate) fn relay_in_background(&self) {
        let r = &self.inner.relaying;
        if r.started.swap(true, Ordering::SeqCst) {
            return;
        }
        r.search.store(SEARCHING, Ordering::Release);
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        self.inner
            .tracker
            .spawn(reserve_loop(weak, cancel).instrument(self.inner.span.clone()));
    }

    /// The control session with the relay at `addr`, opened if needed.
    async fn relay_session(&self, addr: SocketAddr) -> Result<Session, RelayError> {
        let r = &self.inner.relaying;
        let mut sessions = r.sessions.lock().await;
        sessions.retain(|_, s| !s.is_closed());
        if let Some(s) = sessions.get(&addr) {
            return Ok(s.clone());
        }
        if sessions.len() >= natkit_relay::client::MAX_SESSIONS {
            // Full: close the sessions that carry nothing (no reservation of ours, no live
            // circuit), opened to reach peers through their relays.
            let held: Vec<SocketAddr> = lock(&r.held).iter().map(|h| h.session.addr()).collect();
            let busy = r.busy_relays();
            sessions.retain(|a, s| {
                let keep = held.contains(a) || busy.contains(&s.relay_id());
                if !keep {
                    s.close();
                }
                keep
            });
        }
        let (session, notices) = tokio::time::timeout(PROBE_TIMEOUT, r.client.open(addr))
            .await
            .map_err(|_| RelayError::Connect {
                addr,
                source: NetError::Timeout {
                    what: "connect to the relay",
                    addr,
                    secs: PROBE_TIMEOUT.as_secs_f64(),
                },
            })??;
        sessions.insert(addr, session.clone());
        drop(sessions);
        self.inner.tracker.spawn(
            notice_loop(
                Arc::downgrade(&self.inner),
                session.clone(),
                notices,
                self.inner.cancel.clone(),
            )
            .instrument(self.inner.span.clone()),
        );
        Ok(session)
    }

    /// A connection to `peer` through the relay at `addr` (one of the peer's).
    pub(crate) async fn relayed(
        &self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> Result<Connection, RelayAttemptError> {
        let session = self.relay_session(addr).await?;
        let circuit = session.connect(peer).await?;
        let conn = self
            .net()
            .connect_over(
                circuit.stream,
                Some(peer),
                Role::Initiator,
                session.relay_id(),
            )
            .await?;
        self.inner
            .relaying
            .remember(session.relay_id(), circuit.id, &conn);
        let weak = Arc::downgrade(&self.inner);
        self.inner.tracker.spawn(
            upgrade_loop(weak, peer, conn.clone(), self.inner.cancel.clone())
                .instrument(self.inner.span.clone()),
        );
        Ok(conn)
    }

    /// One try at a direct connection to `peer`, from its UNL looked up afresh: the plan's
    /// attempts without relays. `Ok(None)`: the planner sees no direct way now. (Boxed: a
    /// connect may start an upgrade, which connects.)
    fn try_direct(&self, peer: NodeId) -> Pin<Box<dyn Future<Output = DirectTry> + Send + '_>> {
        Box::pin(async move {
            // A lookup that fails is no sign against a direct path: look again next time.
            let Ok(unl) = self.lookup_with(peer, false).await else {
                return Ok(None);
            };
            let Ok(plan) = natkit_traversal::plan::plan(&self.situation(), &unl, Instant::now())
            else {
                return Ok(None);
            };
            let mut steps = super::connect::steps(&plan, self.inner.bind_ip, &unl);
            steps.retain(|s| s.kind != super::PathKind::Relayed);
            if steps.is_empty() {
                return Ok(None);
            }
            match super::connect::race(self, peer, steps).await {
                Ok((conn, step, _)) if conn.relay().is_none() => Ok(Some((conn, step.kind))),
                _ => Err(()),
            }
        })
    }

    /// One round of looking after reservations: drops those that went away, renews those
    /// at half-time, and (at most every [`RELAY_SEARCH_INTERVAL`]) looks for more when
    /// fewer than [`RELAY_RESERVATIONS`] are held. Returns whether the set changed.
    async fn tend_reservations(&self, search: bool) -> bool {
        let r = &self.inner.relaying;
        let now = Instant::now();
        let mut changed = false;
        if self.unl().node == NodeType::Reachable {
            // Reachable now (a port mapping appeared): reservations are no longer needed.
            // Those that carry a live relayed connection stay until it ends (or is upgraded).
            let busy = r.busy_relays();
            let mut held = lock(&r.held);
            let before = held.len();
            held.retain(|h| {
                let keep = busy.contains(&h.session.relay_id());
                if !keep {
                    tracing::info!(relay = %h.session.relay_id().short(), "reachable directly now: relay reservation given up");
                    h.session.close();
                }
                keep
            });
            return held.len() != before;
        }
        let due: Vec<Session> = {
            let mut held = lock(&r.held);
            let before = held.len();
            held.retain(|h| !h.session.is_closed());
            changed |= held.len() != before;
            held.iter()
                .filter(|h| h.renew_at <= now)
                .map(|h| h.session.clone())
                .collect()
        };
        for s in due {
            match s.reserve().await {
                Ok(res) => {
                    if let Some(h) = lock(&r.held)
                        .iter_mut()
                        .find(|h| h.session.addr() == s.addr())
                    {
                        h.renew_at = Instant::now() + res.ttl / 2;
                    }
                }
                Err(e) => {
                    tracing::info!(relay = %s.relay_id().short(), error = %e, "could not renew a relay reservation; dropping it");
                    lock(&r.held).retain(|h| h.session.addr() != s.addr());
                    changed = true;
                }
            }
        }
        if search && lock(&r.held).len() < RELAY_RESERVATIONS {
            changed |= self.search_relays().await;
        }
        changed
    }

    /// Finds relays in the DHT and reserves with the fastest until
    /// [`RELAY_RESERVATIONS`] are held. Returns whether any was added.
    async fn search_relays(&self) -> bool {
        let r = &self.inner.relaying;
        let found = match self
            .dht()
            .get_peers(natkit_dht::rendezvous::relay_info_hash())
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "relay search failed");
                return false;
            }
        };
        let own = self.relay_addr();
        let held: Vec<SocketAddr> = lock(&r.held).iter().map(|h| h.session.addr()).collect();
        let mut candidates: Vec<SocketAddr> = Vec::new();
        for a in found {
            if Some(a) != own && !held.contains(&a) && !candidates.contains(&a) {
                candidates.push(a);
            }
        }
        candidates.truncate(RELAY_PROBES);
        tracing::debug!(?candidates, "relays found in the DHT");
        let probes = candidates.iter().map(|a| self.relay_session(*a));
        let mut sessions: Vec<Session> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(|s| {
                s.map_err(|e| tracing::debug!(error = %e, "relay probe failed"))
                    .ok()
            })
            .filter(|s| s.relay_id() != self.id())
            .collect();
        sessions.sort_by_key(|s| s.rtt());
        let mut added = false;
        for s in sessions {
            if lock(&r.held).len() >= RELAY_RESERVATIONS {
                break;
            }
            match s.reserve().await {
                Ok(res) => {
                    tracing::info!(relay = %s.relay_id().short(), addr = %s.addr(), rtt_ms = s.rtt().as_millis() as u64, "relay reservation held");
                    lock(&r.held).push(Held {
                        session: s,
                        renew_at: Instant::now() + res.ttl / 2,
                    });
                    added = true;
                }
                Err(e) => {
                    tracing::info!(relay = %s.relay_id().short(), error = %e, "relay refused a reservation")
                }
            }
        }
        added
    }
}

/// While a relayed connection that we made lasts, how often we look whether a direct path
/// appeared (the peer's UNL looked up afresh: a new port mapping, a changed NAT type); after
/// a direct attempt failed, the wait doubles up to [`UPGRADE_MAX_INTERVAL`].
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(5);

/// Longest wait between two upgrade attempts.
pub const UPGRADE_MAX_INTERVAL: Duration = Duration::from_secs(300);

/// Tries, now and then, to replace the relayed connection `relayed` to `peer` with a direct
/// one. The direct connection, once made, replaces the relayed one on both ends (natkit-net
/// keeps direct over relayed and closes the relayed one as a duplicate, its queued lines
/// still delivered first); the task ends then, or when the relayed connection ends.
async fn upgrade_loop(
    node: Weak<Inner>,
    peer: NodeId,
    relayed: Connection,
    cancel: CancellationToken,
) {
    let mut wait = UPGRADE_INTERVAL;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = relayed.closed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(inner) = node.upgrade() else { return };
        let node_ = Node { inner };
        if node_
            .net()
            .connection(&peer)
            .is_some_and(|c| c.relay().is_none())
        {
            return;
        }
        let attempt = tokio::select! {
            () = cancel.cancelled() => return,
            _ = relayed.closed() => return,
            a = node_.try_direct(peer) => a,
        };
        match attempt {
            Ok(Some((conn, kind))) => {
                tracing::info!(peer = %peer.short(), %kind, addr = %conn.remote_addr(), "relayed connection upgraded to a direct one");
                return;
            }
            Ok(None) => {}
            Err(()) => wait = (wait * 2).min(UPGRADE_MAX_INTERVAL),
        }
    }
}

/// Why a relayed attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayAttemptError {
    /// The relay failed or refused.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The handshake through the circuit failed.
    #[error(transparent)]
    Net(#[from] NetError),
}

async fn reserve_loop(node: Weak<Inner>, cancel: CancellationToken) {
    let mut last_search: Option<Instant> = None;
    let mut searches = 0u32;
    loop {
        let Some(inner) = node.upgrade() else { return };
        let node_ = Node { inner };
        // The first few searches come quicker: relays that joined just after us.
        let every = if searches < RELAY_QUICK_SEARCHES {
            RELAY_QUICK_SEARCH_INTERVAL
        } else {
            RELAY_SEARCH_INTERVAL
        };
        let search = last_search.is_none_or(|t| t.elapsed() >= every);
        if search {
            last_search = Some(Instant::now());
            searches += 1;
        }
        let changed = tokio::select! {
            () = cancel.cancelled() => return,
            c = node_.tend_reservations(search) => c,
        };
        if changed || node_.relay_search_pending() {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = node_.refresh(false) => if let Err(e) = r {
                    tracing::info!(error = %e, "could not publish the UNL; will retry");
                }
            }
            node_
                .inner
                .relaying
                .search
                .store(SEARCHED, Ordering::Release);
        }
        drop(node_);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Handles what a relay tells us unasked: incoming circuits (joined, and handshaken as the
/// responder), cuts (the relayed connection closed with the relay's reason), and the end
/// of the session (every connection through that relay closed with the reason).
async fn notice_loop(
    node: Weak<Inner>,
    session: Session,
    mut notices: mpsc::Receiver<Notice>,
    cancel: CancellationToken,
) {
    let relay = session.relay_id();
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => return,
            n = notices.recv() => match n {
                Some(n) => n,
                None => return,
            },
        };
        let Some(inner) = node.upgrade() else { return };
        match n {
            Notice::Incoming {
                id,
                from,
                token,
                limits,
            } => {
                let Ok(permit) = inner.relaying.accepts.clone().try_acquire_owned() else {
                    tracing::info!(relay = %relay.short(), "incoming relayed circuit ignored: too many being joined");
                    continue;
                };
                let node = Node {
                    inner: inner.clone(),
                };
                let session = session.clone();
                let cancel = cancel.clone();
                inner.tracker.spawn(
                    async move {
                        let _permit = permit;
                        let res = async {
                            let stream = session.join(&token, limits).await?;
                            let conn = node
                                .net()
                                .connect_over(stream, Some(from), Role::Responder, relay)
                                .await?;
                            Ok::<_, RelayAttemptError>(conn)
                        };
                        let res = tokio::select! {
                            () = cancel.cancelled() => return,
                            r = res => r,
                        };
                        match res {
                            Ok(conn) => {
                                tracing::info!(peer = %from.short(), relay = %relay.short(), "relayed connection accepted");
                                node.inner.relaying.remember(relay, id, &conn);
                            }
                            Err(e) => {
                                tracing::info!(peer = %from.short(), relay = %relay.short(), error = %e, "relayed connection failed")
                            }
                        }
                    }
                    .instrument(inner.span.clone()),
                );
            }
            Notice::Cut { id, reason } => {
                if let Some(conn) = lock(&inner.relaying.circuits).remove(&(relay, id)) {
                    tracing::info!(peer = %conn.node_id().short(), relay = %relay.short(), %reason, "the relay cut a relayed connection");
                    conn.close_because(CloseReason::PathLost {
                        detail: format!("relay {}: {reason}", relay.short()),
                    });
                }
            }
            Notice::Closed(reason) => {
                let gone: Vec<Connection> = {
                    let mut c = lock(&inner.relaying.circuits);
                    let keys: Vec<_> = c.keys().filter(|(r, _)| *r == relay).copied().collect();
                    keys.into_iter().filter_map(|k| c.remove(&k)).collect()
                };
                for conn in gone {
                    conn.close_because(CloseReason::PathLost {
                        detail: format!("relay {} went away ({reason})", relay.short()),
                    });
                }
                tracing::info!(relay = %relay.short(), %reason, "session with a relay ended");
                return;
            }
        }
    }
}

/// Announces the relay in the DHT: in our own store, and to the closest nodes, again every
/// [`RELAY_ANNOUNCE_INTERVAL`] (every [`RELAY_ANNOUNCE_RETRY`] until a node stored it).
pub(crate) async fn announce_loop(node: Weak<Inner>, cancel: CancellationToken, relay: SocketAddr) {
    loop {
        let Some(inner) = node.upgrade() else { return };
        let wait = tokio::select! {
            () = cancel.cancelled() => return,
            w = announce(&inner.dht, relay) => w,
        };
        drop(inner);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One announcement; returns when to make the next.
async fn announce(dht: &natkit_dht::dht::Dht, relay: SocketAddr) -> Duration {
    let hash = natkit_dht::rendezvous::relay_info_hash();
    // Our own store: the address as others reach it (the bind address, or the one the DHT
    // saw us at when bound to every interface).
    let ip = if relay.ip().is_unspecified() {
        dht.observed_address()
            .await
            .ok()
            .flatten()
            .map(|(a, _)| a.ip())
    } else {
        Some(relay.ip())
    };
    if let Some(ip) = ip {
        let _ = dht
            .announce_here(hash, SocketAddr::new(ip, relay.port()))
            .await;
    }
    match dht.announce_peer(hash, Some(relay.port())).await {
        Ok(n) if n > 0 && ip.is_some() => {
            tracing::debug!(nodes = n, "relay announced in the DHT");
            RELAY_ANNOUNCE_INTERVAL
        }
        _ => RELAY_ANNOUNCE_RETRY,
    }
}
