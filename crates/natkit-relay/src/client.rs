//! The client side: a control [`Session`] with one relay, over a [`RelayClient`]'s own
//! [`Net`] (so control connections never mix with the node's own connections).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natkit_identity::{Keypair, NodeId};
use natkit_net::{CloseReason, Connection, Net, NetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::RelayError;
use crate::limits::CircuitLimits;
use crate::wire::{self, CircuitId, Cut, Reply, Request, SPLICED, Token};

/// Longest wait for a relay's answer to a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Notices a session queues for its owner before it drops the oldest (a relay that floods
/// us with incoming circuits is limited by the owner, not by our memory).
pub const MAX_NOTICES: usize = 64;

/// Relays a client keeps control connections with at once.
pub const MAX_SESSIONS: usize = 16;

/// Something a relay told us without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Someone asked for a circuit to us: join it with [`Session::join`].
    Incoming {
        /// The circuit.
        id: CircuitId,
        /// The node that asked (as the relay says; the end-to-end handshake proves it).
        from: NodeId,
        /// Our token for it.
        token: Token,
        /// Its limits.
        limits: CircuitLimits,
    },
    /// The relay cut a circuit, and why.
    Cut {
        /// The circuit.
        id: CircuitId,
        /// Why.
        reason: Cut,
    },
    /// The control connection ended (the relay went away, or closed it): every
    /// reservation and circuit of this session is gone.
    Closed(CloseReason),
}

/// A reservation the relay holds for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// How long it lasts unless renewed ([`Session::reserve`] again).
    pub ttl: Duration,
    /// The limits of every circuit to us.
    pub limits: CircuitLimits,
}

/// A circuit through the relay, joined: `stream` leads to the other end (run a natkit
/// handshake over it with `natkit_net::Net::connect_over`).
#[derive(Debug)]
pub struct Circuit {
    /// Its number on the relay (for its [`Notice::Cut`]).
    pub id: CircuitId,
    /// The byte stream.
    pub stream: TcpStream,
    /// Its limits.
    pub limits: CircuitLimits,
}

/// Makes control sessions with relays, from a [`Net`] of its own (listening on an
/// ephemeral port of `ip`; it accepts nothing of interest there).
#[derive(Clone)]
pub struct RelayClient {
    net: Net,
    /// Relays we have a session with (one per relay: its Net keeps one connection per node).
    open: Arc<Mutex<std::collections::HashSet<NodeId>>>,
}

impl RelayClient {
    /// A client with `identity` (the node's own: relays see the node's id).
    pub async fn bind(identity: Keypair, ip: IpAddr) -> Result<RelayClient, RelayError> {
        let config = NetConfig {
            listen: SocketAddr::new(ip, 0),
            max_inbound: 1,
            max_outbound: MAX_SESSIONS,
            ..NetConfig::default()
        };
        let net = Net::bind(identity, config).await.map_err(RelayError::Net)?;
        Ok(RelayClient {
            net,
            open: Arc::default(),
        })
    }

    /// Opens a control session with the relay at `addr` (any node id: relays are found by
    /// address; the session says which node it is), and the notices it will send. One
    /// session per relay: while one is open, another is refused
    /// ([`RelayError::SessionOpen`]); keep and clone the first.
    pub async fn open(
        &self,
        addr: SocketAddr,
    ) -> Result<(Session, mpsc::Receiver<Notice>), RelayError> {
        if self.net.connections_to(addr).iter().any(|c| !c.is_closed()) {
            return Err(RelayError::SessionOpen { addr });
        }
        let t0 = Instant::now();
        let conn = self
            .net
            .connect_any(addr)
            .await
            .map_err(|source| RelayError::Connect { addr, source })?;
        let rtt = t0.elapsed();
        let relay = conn.node_id();
        if !lock(&self.open).insert(relay) {
            // The relay answered on another address of one we have a session with.
            return Err(RelayError::SessionOpen { addr });
        }
        let (tx, rx) = mpsc::channel(MAX_NOTICES);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU32::new(1),
        });
        let open = self.open.clone();
        let reader = read_loop(conn.clone(), shared.clone(), tx);
        tokio::spawn(async move {
            reader.await;
            lock(&open).remove(&relay);
        });
        Ok((
            Session {
                conn,
                addr,
                rtt,
                shared,
            },
            rx,
        ))
    }

    /// Closes every session and waits for their tasks.
    pub async fn shutdown(&self) {
        self.net.shutdown().await;
    }
}

struct Shared {
    pending: Mutex<HashMap<u32, oneshot::Sender<Reply>>>,
    next_req: AtomicU32,
}

/// A control connection with one relay. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    conn: Connection,
    addr: SocketAddr,
    rtt: Duration,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("relay", &self.relay_id())
            .field("addr", &self.addr)
            .finish()
    }
}

impl Session {
    /// The relay's node id.
    pub fn relay_id(&self) -> NodeId {
        self.conn.node_id()
    }

    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long connecting to the relay took (TCP and the handshake: about two round
    /// trips), to choose between relays.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Whether the control connection ended.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Closes the control connection (every reservation with it).
    pub fn close(&self) {
        self.conn.close();
    }

    async fn request(&self, make: impl FnOnce(u32) -> Request) -> Result<Reply, RelayError> {
        let req = self.shared.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(req, tx);
        let line = wire::emit_request(&make(req));
        if let Err(e) = self.conn.send(&line).await {
            lock(&self.shared.pending).remove(&req);
            return Err(RelayError::Gone {
                relay: self.relay_id(),
                detail: e.to_string(),
            });
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RelayError::Gone {
                relay: self.relay_id(),
                detail: self
                    .conn
                    .close_reason()
                    .map_or_else(|| "the session ended".into(), |r| r.to_string()),
            }),
            Err(_) => {
                lock(&self.shared.pending).remove(&req);
                Err(RelayError::Timeout {
                    relay: self.relay_id(),
                    secs: REQUEST_TIMEOUT.as_secs_f64(),
                })
            }
        }
    }

    /// Reserves (or renews): the relay forwards circuits that others ask for to us, as
    /// [`Notice::Incoming`]s, until the reservation expires or the session ends.
    pub async fn reserve(&self) -> Result<Reservation, RelayError> {
        match self.request(|req| Request::Reserve { req }).await? {
            Reply::Reserved {
                expires_in_s,
                limits,
                ..
            } => Ok(Reservation {
                ttl: Duration::from_secs(expires_in_s),
                limits,
            }),
            other => Err(self.unexpected(other)),
        }
    }

    /// Opens a circuit to the node `to` (reserved on this relay) and joins it.
    pub async fn connect(&self, to: NodeId) -> Result<Circuit, RelayError> {
        match self.request(|req| Request::Connect { req, to }).await? {
            Reply::Circuit {
                id, token, limits, ..
            } => {
                let stream = self.join(&token, limits).await?;
                Ok(Circuit { id, stream, limits })
            }
            other => Err(self.unexpected(other)),
        }
    }

    /// Joins a circuit with our `token` (from a [`Notice::Incoming`], or the relay's answer
    /// to [`connect`](Session::connect)): a fresh TCP connection to the relay that, once
    /// the other end has joined too, leads to it.
    pub async fn join(
        &self,
        token: &Token,
        limits: CircuitLimits,
    ) -> Result<TcpStream, RelayError> {
        let relay = self.relay_id();
        let wait = Duration::from_secs(limits.join_timeout_s.max(1)) + REQUEST_TIMEOUT;
        let io = |e: std::io::Error| RelayError::Gone {
            relay,
            detail: e.to_string(),
        };
        let join = async {
            let mut s = TcpStream::connect(self.addr).await.map_err(io)?;
            let _ = s.set_nodelay(true);
            s.write_all(&wire::emit_preface(token)).await.map_err(io)?;
            let mut b = [0u8; 1];
            match s.read(&mut b).await.map_err(io)? {
                1 if b[0] == SPLICED => Ok(s),
                _ => Err(RelayError::NotJoined { relay }),
            }
        };
        match tokio::time::timeout(wait, join).await {
            Ok(r) => r,
            Err(_) => Err(RelayError::NotJoined { relay }),
        }
    }

    fn unexpected(&self, r: Reply) -> RelayError {
        match r {
            Reply::Refused { reason, .. } => RelayError::Refused {
                relay: self.relay_id(),
                reason,
            },
            other => RelayError::Protocol {
                relay: self.relay_id(),
                detail: format!("unexpected answer {other:?}"),
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_loop(conn: Connection, shared: Arc<Shared>, notices: mpsc::Sender<Notice>) {
    while let Some(line) = conn.recv().await {
        let reply = match wire::parse_reply(&line) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(relay = %conn.node_id().short(), error = %e, "closing the session with a relay that broke the protocol");
                conn.close_because(CloseReason::Protocol { detail: e.0 });
                break;
            }
        };
        let req = match &reply {
            Reply::Reserved { req, .. }
            | Reply::Circuit { req, .. }
            | Reply::Refused { req, .. } => Some(*req),
            _ => None,
        };
        match (req, reply) {
            (Some(req), reply) => {
                if let Some(tx) = lock(&shared.pending).remove(&req) {
                    let _ = tx.send(reply);
                }
            }
            (
                None,
                Reply::Incoming {
                    id,
                    from,
                    token,
                    limits,
                },
            ) => {
                if notices
                    .try_send(Notice::Incoming {
                        id,
                        from,
                        token,
                        limits,
                    })
                    .is_err()
                {
                    tracing::info!(relay = %conn.node_id().short(), "incoming circuit dropped: too many waiting");
                }
            }
            (None, Reply::Cut { id, reason }) => {
                let _ = notices.try_send(Notice::Cut { id, reason });
            }
            (None, _) => {}
        }
    }
    lock(&shared.pending).clear();
    let reason = conn.closed().await;
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, notices.send(Notice::Closed(reason))).await;
}
