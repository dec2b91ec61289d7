//! The whole node as one deterministic state machine: routing table, server, lookups,
//! transactions, puts and maintenance. Inputs are datagrams ([`Core::handle_datagram`]),
//! requests ([`Core::start`]) and the passing of time ([`Core::handle_timeout`]), each with
//! `now`; outputs are datagrams ([`Core::poll_transmit`]), finished requests
//! ([`Core::poll_event`]) and the next deadline ([`Core::next_deadline`]). The tokio driver in
//! [`crate::dht`] only moves bytes and sleeps.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::bep44;
use crate::id::{Id, NodeInfo};
use crate::krpc::{Kind, Message, PutItem, Query};
use crate::lookup::{K, Lookup, LookupKind, RttEstimator};
use crate::routing::{ID_BITS, RoutingTable, id_sharing_prefix};
use crate::server::{CLIENT_VERSION, Server};
use crate::sim::SplitMix;
use crate::stats::{ObservedAddress, RateLimiter, Stats};

/// How long a lookup's request stays matchable after it was sent: past its lookup timeout a
/// late answer is still used, up to this.
pub const TRANSACTION_LIFETIME: Duration = Duration::from_secs(4);

/// How often expired peers and items are dropped from storage.
pub const STORAGE_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Requests running at once (lookups and puts); more are refused with [`Outcome::Busy`], so a
/// caller cannot make the node hold unbounded state.
pub const MAX_OPERATIONS: usize = 256;

/// How often our own BEP 44 items are put again (BEP 44: items may expire after 2 hours,
/// publishers republish hourly).
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Most of our own items kept for republishing; puts beyond this are not republished.
pub const MAX_OWN_ITEMS: usize = 1000;

/// After the bootstrap lookup on our own id, a `find_node` runs for a random id at each prefix
/// length from 0 up to the table's depth (at least this many), so the far buckets fill up and
/// the node is known on both sides of the id space, not only near its own id.
pub const MIN_BOOTSTRAP_REFRESH_DEPTH: usize = 4;

/// A bucket refresh (at bootstrap or every [`crate::routing::REFRESH_INTERVAL`]) ends as soon as
/// its bucket holds this many good nodes: every answering node is offered to the table, and the
/// last rounds of a lookup add the fewest nodes for their messages; the remaining slots fill
/// from incoming queries. Measured on 1,000 nodes (`scripts/bench.sh dht`): 6 instead of
/// running each refresh to the end cut the datagrams sent to join by 8% with lookups as
/// short and as exact; 4 saved more but made later lookups a third dearer.
pub const REFRESH_ENOUGH_GOOD: usize = 6;

/// How many of the closest nodes a bootstrap found get a ping echoing their address token, if
/// no other query of the bootstrap echoed it already (see [`crate::routing`]: nodes name only
/// nodes that answered them or proved their address). Measured on 1,000 nodes
/// (`tests/thousand_nodes.rs`, 4-5 runs each): with none, half the runs had a lookup miss one
/// of the true 8 closest; with 1, 2, 3, 4 or all 8, every lookup was exact, at 0.9, 1.9, 2.8,
/// 3.7 and 7.6 pings per node. 2 keeps a node findable if one neighbour goes away.
pub const BOOTSTRAP_PROOF_PINGS: usize = 2;

/// Distinct nodes that must agree on our public IP before we take a BEP 42 secure id for it.
pub const SECURE_ID_VOTES: usize = 4;

/// Identifies a request given to [`Core::start`].
pub type OpId = u64;

mod incoming;
mod rendezvous;
mod request;

pub use rendezvous::{HOP_TIMEOUT, RELAY_FANOUT};
pub use request::{Outcome, Request};

#[derive(Debug)]
enum Then {
    Report,
    /// Refresh the buckets, then report the bootstrap lookup's nodes.
    Bootstrap,
    /// A bucket refresh started by a bootstrap: tell the parent when done.
    Child(OpId),
    Announce(Option<u16>),
    Put(Box<PutItem>),
    Refresh,
    /// Send the message to the closest nodes found.
    Message(Box<crate::rendezvous::Envelope>),
    /// Our rendezvous search: announce to the closest nodes found.
    RvSearch,
    /// Our rendezvous search's fallback: probe the natkit nodes found on the service
    /// info-hash.
    RvFallback,
}

#[derive(Debug)]
enum Phase {
    Lookup(Box<Lookup>),
    Storing {
        target: Id,
        pending: usize,
        accepted: usize,
        errors: Vec<i64>,
    },
    /// Waiting for child lookups (bootstrap's bucket refreshes).
    Waiting {
        nodes: Vec<NodeInfo>,
        children: usize,
    },
    /// A message given to `pending` more nodes; the first acknowledgement ends it.
    Messaging {
        pending: usize,
        errors: Vec<i64>,
    },
}

#[derive(Debug)]
struct Op {
    phase: Phase,
    then: Then,
    /// Report each lookup reply as it arrives ([`Core::poll_reply`]).
    stream: bool,
}

#[derive(Clone, Debug)]
enum Purpose {
    Lookup(OpId),
    Store(OpId),
    Ping,
    /// A message we forward for `reply_to` (its query's transaction id `tid`).
    Forward {
        reply_to: SocketAddr,
        tid: Vec<u8>,
    },
    /// A message we send.
    Message(OpId),
    /// Our `natkit.announce`: part of a search, or a keepalive.
    RvAnnounce {
        search: bool,
    },
    /// A `get_peers` to a possible rendezvous node whose id we do not know yet.
    RvProbe,
}

#[derive(Clone, Debug)]
struct Tx {
    to: SocketAddrV4,
    node_id: Option<Id>,
    purpose: Purpose,
    expires: Instant,
}

/// A node's state.
#[derive(Debug)]
pub struct Core {
    id: Id,
    read_only: bool,
    table: RoutingTable,
    server: Server,
    rtt: RttEstimator,
    rng: SplitMix,
    next_tid: u32,
    next_op: OpId,
    txs: HashMap<Vec<u8>, Tx>,
    ops: HashMap<OpId, Op>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<(OpId, Outcome)>,
    replies: VecDeque<(OpId, NodeInfo, crate::krpc::Response)>,
    stats: Stats,
    observed: ObservedAddress,
    limiter: RateLimiter,
    next_storage_expiry: Instant,
    /// Our own puts, by target, with when to republish them.
    own_items: HashMap<Id, (Request, Instant)>,
    rv: rendezvous::Rv,
    /// Whether our id may change to a BEP 42 secure id (not when the caller chose it).
    adopt_secure_id: bool,
    /// The IP our id was last checked against.
    secure_for: Option<std::net::IpAddr>,
    /// Our id before the last change: nodes that knew us by it still sign announces for it.
    previous_id: Option<Id>,
}

impl Core {
    /// A node with `table` (its own id is ours), read-only or not, with randomness from
    /// `seed` (tokens, transaction ids, refresh targets).
    pub fn new(table: RoutingTable, read_only: bool, seed: [u8; 32], now: Instant) -> Self {
        let mut token_seed = [0u8; 20];
        token_seed.copy_from_slice(&seed[..20]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&seed[20..28]);
        let mut rng = SplitMix(u64::from_be_bytes(s));
        let id = table.own_id();
        Core {
            id,
            read_only,
            server: Server::new(id, token_seed, now),
            table,
            rtt: RttEstimator::default(),
            next_tid: (rng.next_u64() & 0xffff_ffff) as u32,
            rng,
            next_op: 1,
            txs: HashMap::new(),
            ops: HashMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            replies: VecDeque::new(),
            stats: Stats::default(),
            observed: ObservedAddress::default(),
            limiter: RateLimiter::default(),
            next_storage_expiry: now + STORAGE_EXPIRY_INTERVAL,
            own_items: HashMap::new(),
            rv: rendezvous::Rv::new(!read_only),
            adopt_secure_id: true,
            secure_for: None,
            previous_id: None,
        }
    }

    /// Our id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Whether to switch to a BEP 42 secure id once [`SECURE_ID_VOTES`] nodes agree on our
    /// public IP (on by default; off keeps the id given, e.g. by `Dht::builder().id(..)`).
    /// Loopback and private addresses are exempt and never cause a change.
    pub fn set_adopt_secure_id(&mut self, adopt: bool) {
        self.adopt_secure_id = adopt;
    }

    /// After a vote on our address: if enough nodes agree on a public IP our id does not match
    /// (BEP 42), take a secure id for it. The routing table is rebuilt around the new id (its
    /// nodes must answer again before they count as good) and a lookup of the new id tells
    /// the nodes near it about us.
    fn check_secure_id(&mut self, now: Instant) {
        if !self.adopt_secure_id {
            return;
        }
        let Some((ip, votes)) = self.observed.best_ip() else {
            return;
        };
        if votes < SECURE_ID_VOTES || self.secure_for == Some(ip) {
            return;
        }
        self.secure_for = Some(ip);
        if crate::bep42::is_compliant(&self.id, ip) {
            return;
        }
        let id = crate::bep42::secure_id(ip, self.random_bytes());
        let mut saved = self.table.to_saved();
        saved.id = id;
        self.table = RoutingTable::from_saved(&saved, now);
        self.server.set_id(id);
        self.previous_id = Some(self.id);
        self.id = id;
        self.stats.id_changes += 1;
        tracing::info!(%ip, id = %id.to_hex(), "took a BEP 42 secure node id for our public IP");
        self.start_internal(Request::FindNode(id), Then::Refresh, now);
    }

    /// Every node's latest report of our address (BEP 42 `ip`), for a NAT classifier.
    pub fn observations(&self) -> Vec<crate::stats::Observation> {
        self.observed.observations()
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The answering side (to register `natkit.*` handlers).
    pub fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Counters, with the current table size and observed address.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.routing_table_size = self.table.len();
        s.stored_items = self.server.storage().item_count();
        s.observed_address = self.observed.best();
        s.registrations = self.rv.registrations();
        s.rendezvous_points = self.rendezvous_points().len();
        s.messages_delivered = self.rv.delivered;
        s.messages_forwarded = self.rv.forwarded;
        s
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// The next finished request.
    pub fn poll_event(&mut self) -> Option<(OpId, Outcome)> {
        self.events.pop_front()
    }

    /// When [`Core::handle_timeout`] must next run.
    pub fn next_deadline(&self) -> Instant {
        let lookups = self.ops.values().filter_map(|op| match &op.phase {
            Phase::Lookup(l) => l.next_deadline(),
            Phase::Storing { .. } | Phase::Waiting { .. } | Phase::Messaging { .. } => None,
        });
        let txs = self.txs.values().map(|t| t.expires);
        lookups
            .chain(txs)
            .chain(self.own_items.values().map(|(_, t)| *t))
            .chain(self.rv.next_deadline())
            .chain([self.table.next_refresh(), self.next_storage_expiry])
            .min()
            .unwrap_or(self.next_storage_expiry)
    }

    fn send(
        &mut self,
        to: SocketAddrV4,
        node_id: Option<Id>,
        query: Query,
        purpose: Purpose,
        now: Instant,
    ) {
        let timeout = match purpose {
            Purpose::Lookup(_) => TRANSACTION_LIFETIME,
            _ => self.rtt.timeout(),
        };
        self.send_with_timeout(to, node_id, query, purpose, timeout, now);
    }

    fn send_with_timeout(
        &mut self,
        to: SocketAddrV4,
        node_id: Option<Id>,
        query: Query,
        purpose: Purpose,
        timeout: Duration,
        now: Instant,
    ) {
        self.next_tid = self.next_tid.wrapping_add(1);
        let tid = self.next_tid.to_be_bytes().to_vec();
        let expires = now + timeout;
        self.stats.count_query_out(query.method());
        let mut m = Message::query(tid.clone(), query);
        m.read_only = self.read_only;
        m.version = Some(CLIENT_VERSION.to_vec());
        // Echo the node's address token (a read-only node is never added, so it has no use).
        if !self.read_only
            && let Some(e) = node_id.and_then(|id| self.table.get_mut(&id))
            && e.node.addr == to
            && let Some(token) = e.token_to_echo(now)
        {
            m.address_token = Some(token.to_vec());
            e.echoed = true;
        }
        self.outbox.push_back((SocketAddr::V4(to), m.emit()));
        self.txs.insert(
            tid,
            Tx {
                to,
                node_id,
                purpose,
                expires,
            },
        );
    }

    fn reply(&mut self, to: SocketAddr, m: &Message) {
        match m.kind {
            Kind::Error(_) => self.stats.errors_out += 1,
            _ => self.stats.responses_out += 1,
        }
        self.outbox.push_back((to, m.emit()));
    }

    fn ping(&mut self, node: NodeInfo, now: Instant) {
        let q = Query::Ping { id: self.id };
        self.send(node.addr, Some(node.id), q, Purpose::Ping, now);
    }

    /// Starts a request; its result comes out of [`Core::poll_event`] under the returned id.
    pub fn start(&mut self, req: Request, now: Instant) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        if self.ops.len() >= MAX_OPERATIONS {
            self.events.push_back((op, Outcome::Busy));
            return op;
        }
        match req {
            Request::Register => self.rv_register_start(op, now),
            Request::AnnounceHere(target, peer) => {
                self.server.storage_mut().announce(target, peer, now);
                self.events.push_back((
                    op,
                    Outcome::Stored {
                        target,
                        accepted: 1,
                        errors: Vec::new(),
                    },
                ));
            }
            Request::SendMessage {
                to,
                payload,
                via,
                relay,
                channel,
            } => self.rv_send(op, channel, to, payload, via, relay, now),
            req => {
                self.remember_own(&req, now);
                self.launch(op, req, None, now);
            }
        }
        op
    }

    /// Like [`Core::start`], and every reply its lookup gets also comes out of
    /// [`Core::poll_reply`] as it arrives (dht-rpc's streaming queries). For lookups only; other
    /// requests are started as by [`Core::start`].
    pub fn start_streaming(&mut self, req: Request, now: Instant) -> OpId {
        let op = self.start(req, now);
        if let Some(o) = self.ops.get_mut(&op) {
            o.stream = true;
        }
        op
    }

    /// The next reply to a streaming lookup: the request, who answered, and what.
    pub fn poll_reply(&mut self) -> Option<(OpId, NodeInfo, crate::krpc::Response)> {
        self.replies.pop_front()
    }

    /// Starts an internal request (no event for it); false if too many are running.
    fn start_internal(&mut self, req: Request, then: Then, now: Instant) -> bool {
        if self.ops.len() >= MAX_OPERATIONS {
            return false;
        }
        let op = self.next_op;
        self.next_op += 1;
        self.launch(op, req, Some(then), now);
        true
    }

    fn random_bytes(&mut self) -> [u8; 20] {
        let mut random = [0u8; 20];
        for c in random.chunks_mut(8) {
            let r = self.rng.next_u64().to_be_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
        random
    }

    fn launch(&mut self, op: OpId, req: Request, then_override: Option<Then>, now: Instant) {
        let (target, kind, then, extra_seeds) = match req {
            Request::Bootstrap(addrs) => (self.id, LookupKind::FindNode, Then::Bootstrap, addrs),
            Request::FindNode(t) => (t, LookupKind::FindNode, Then::Report, vec![]),
            Request::GetPeers(t) => (t, LookupKind::GetPeers, Then::Report, vec![]),
            Request::Announce(t, port) => (t, LookupKind::GetPeers, Then::Announce(port), vec![]),
            Request::GetImmutable(t) => (t, LookupKind::GetImmutable, Then::Report, vec![]),
            Request::GetMutable {
                k,
                salt,
                more_recent_than,
            } => {
                let t = bep44::mutable_target(&k, &salt);
                let kind = LookupKind::GetMutable {
                    salt,
                    more_recent_than,
                };
                (t, kind, Then::Report, vec![])
            }
            Request::PutImmutable(v) => {
                let t = bep44::immutable_target(&v);
                let item = PutItem::Immutable { v };
                (
                    t,
                    LookupKind::GetImmutable,
                    Then::Put(Box::new(item)),
                    vec![],
                )
            }
            Request::Register | Request::SendMessage { .. } | Request::AnnounceHere(..) => {
                // Started by `start` itself, never launched as a lookup.
                self.events.push_back((op, Outcome::Busy));
                return;
            }
            Request::PutMutable(item, cas) => {
                let kind = LookupKind::GetMutable {
                    salt: item.salt.clone(),
                    more_recent_than: None,
                };
                (
                    item.target(),
                    kind,
                    Then::Put(Box::new(item.to_put_item(cas))),
                    vec![],
                )
            }
        };
        let mut seeds = self.table.closest(&target, K, now);
        // Addresses of unknown id get placeholder ids right next to the target, so they are
        // asked first; their answer replaces the placeholder with the real id.
        for (i, addr) in extra_seeds.iter().enumerate() {
            let mut id = target;
            let [.., a, b] = &mut id.0;
            let n = u16::try_from(i + 1).unwrap_or(u16::MAX).to_be_bytes();
            *a ^= n[0];
            *b ^= n[1];
            seeds.push(NodeInfo { id, addr: *addr });
        }
        let mut lookup = Lookup::new(self.id, target, kind, &seeds, self.rtt);
        lookup.absorb_local(&self.server.local_answer(&target, now));
        self.ops.insert(
            op,
            Op {
                phase: Phase::Lookup(Box::new(lookup)),
                then: then_override.unwrap_or(then),
                stream: false,
            },
        );
        self.drive(op, now);
    }

    fn child_done(&mut self, parent: OpId, now: Instant) {
        let Some(Op {
            phase: Phase::Waiting { nodes, children },
            ..
        }) = self.ops.get_mut(&parent)
        else {
            return;
        };
        *children = children.saturating_sub(1);
        if *children == 0 {
            let nodes = std::mem::take(nodes);
            self.ops.remove(&parent);
            self.prove_address_to(&nodes, now);
            self.events.push_back((parent, Outcome::Nodes(nodes)));
        }
    }

    /// At the end of a bootstrap: nodes name only nodes they have verified, so the
    /// [`BOOTSTRAP_PROOF_PINGS`] closest nodes found that have not yet seen their address token
    /// come back from us get a ping carrying it. Without it, a node that asked its neighbours
    /// only once would stay unknown to everyone else.
    fn prove_address_to(&mut self, nodes: &[NodeInfo], now: Instant) {
        if self.read_only {
            return;
        }
        for n in nodes.iter().take(BOOTSTRAP_PROOF_PINGS) {
            let due = self
                .table
                .get(&n.id)
                .is_some_and(|e| e.node.addr == n.addr && e.token_to_echo(now).is_some());
            if due {
                self.stats.proof_pings += 1;
                self.ping(*n, now);
            }
        }
    }

    /// Records our own puts so [`Core::handle_timeout`] republishes them every
    /// [`REPUBLISH_INTERVAL`] (a mutable item without its `cas`: the put is a refresh).
    fn remember_own(&mut self, req: &Request, now: Instant) {
        let (target, again) = match req {
            Request::PutImmutable(v) => (bep44::immutable_target(v), req.clone()),
            Request::PutMutable(item, _) => {
                (item.target(), Request::PutMutable(item.clone(), None))
            }
            _ => return,
        };
        if self.own_items.len() < MAX_OWN_ITEMS || self.own_items.contains_key(&target) {
            self.own_items
                .insert(target, (again, now + REPUBLISH_INTERVAL));
        }
    }

    /// Stops republishing the item under `target` (it then expires from the DHT).
    pub fn forget_own(&mut self, target: &Id) {
        self.own_items.remove(target);
    }

    /// Sends what a lookup wants sent, and finishes it if done.
    fn drive(&mut self, op_id: OpId, now: Instant) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        let Phase::Lookup(lookup) = &mut op.phase else {
            return;
        };
        for node in lookup.expire(now) {
            self.table.failed(&node.id, now);
        }
        // A get that found its immutable item is over; so is a bucket refresh once the bucket
        // holds enough good nodes.
        let early = match op.then {
            Then::Report => lookup.immutable().is_some(),
            Then::Refresh | Then::Child(_) => self
                .table
                .good_in_bucket(&lookup.target(), now)
                .is_some_and(|n| n >= REFRESH_ENOUGH_GOOD),
            _ => false,
        };
        if !early {
            let sends = lookup.next_queries(now);
            let query = lookup.query();
            for n in sends {
                self.send(
                    n.addr,
                    Some(n.id),
                    query.clone(),
                    Purpose::Lookup(op_id),
                    now,
                );
            }
        }
        let Some(Op {
            phase: Phase::Lookup(lookup),
            then,
            ..
        }) = self.ops.get(&op_id)
        else {
            return;
        };
        if !early && !lookup.is_done() {
            return;
        }
        self.stats.record_lookup(lookup.stats());
        let outcome = match (&then, lookup.kind()) {
            (Then::Report, LookupKind::FindNode) => Outcome::Nodes(lookup.closest_answered()),
            (Then::Report, LookupKind::GetPeers) => Outcome::Peers(lookup.peers().to_vec()),
            (Then::Report, LookupKind::GetImmutable) => {
                Outcome::Immutable(lookup.immutable().cloned())
            }
            (Then::Report, LookupKind::GetMutable { .. }) => {
                Outcome::Mutable(lookup.mutable().cloned())
            }
            (Then::Refresh, _) => {
                self.ops.remove(&op_id);
                return;
            }
            (Then::Message(envelope), _) => {
                let envelope = (**envelope).clone();
                let targets = lookup.closest_answered();
                let targets = targets.into_iter().map(|n| (Some(n.id), n.addr)).collect();
                return self.rv_send_to(op_id, &envelope, targets, 0, now);
            }
            (Then::RvSearch, _) => {
                let nodes = lookup.closest_with_tokens();
                self.ops.remove(&op_id);
                return self.rv_lookup_done(nodes, Vec::new(), now);
            }
            (Then::RvFallback, _) => {
                let peers = lookup.peers().to_vec();
                self.ops.remove(&op_id);
                return self.rv_lookup_done(Vec::new(), peers, now);
            }
            (Then::Child(parent), _) => {
                let parent = *parent;
                self.ops.remove(&op_id);
                return self.child_done(parent, now);
            }
            (Then::Bootstrap, _) => {
                let nodes = lookup.closest_answered();
                let depth = self
                    .table
                    .bucket_count()
                    .saturating_sub(1)
                    .clamp(MIN_BOOTSTRAP_REFRESH_DEPTH, ID_BITS);
                if let Some(op) = self.ops.get_mut(&op_id) {
                    op.phase = Phase::Waiting {
                        nodes,
                        children: depth,
                    };
                }
                for len in 0..depth {
                    let random = self.random_bytes();
                    let target = id_sharing_prefix(&self.id, len, random);
                    let req = Request::FindNode(target);
                    if !self.start_internal(req, Then::Child(op_id), now) {
                        self.child_done(op_id, now);
                    }
                }
                return;
            }
            (Then::Announce(port), _) => {
                let (ih, port) = (lookup.target(), *port);
                let targets = lookup.closest_with_tokens();
                let queries = targets.into_iter().map(|(n, token)| {
                    let q = Query::AnnouncePeer {
                        id: self.id,
                        info_hash: ih,
                        port: port.unwrap_or(0),
                        token,
                        implied_port: port.is_none(),
                    };
                    (n, q)
                });
                let queries: Vec<_> = queries.collect();
                return self.store(op_id, ih, queries, now);
            }
            (Then::Put(item), _) => {
                let target = lookup.target();
                let item = (**item).clone();
                let targets = lookup.closest_with_tokens();
                // Among the closest ourselves? Then keep a copy too (we never query ourselves).
                let kth = targets.get(K - 1).map(|(n, _)| target.distance(&n.id));
                if kth.is_none_or(|d| target.distance(&self.id) < d) {
                    self.store_locally(target, &item, now);
                }
                let queries = targets
                    .into_iter()
                    .map(|(n, token)| {
                        let q = Query::Put {
                            id: self.id,
                            token,
                            item: item.clone(),
                        };
                        (n, q)
                    })
                    .collect();
                return self.store(op_id, target, queries, now);
            }
        };
        self.ops.remove(&op_id);
        self.events.push_back((op_id, outcome));
    }

    fn store_locally(&mut self, target: Id, item: &PutItem, now: Instant) {
        let storage = self.server.storage_mut();
        match bep44::Stored::of(item) {
            bep44::Stored::Immutable(v) => storage.put_immutable(target, v.clone(), now),
            bep44::Stored::Mutable(m, cas) => {
                // A refusal (older than what we hold) changes nothing locally.
                let _ = storage.put_mutable(target, m, cas, now);
            }
        }
    }

    fn store(&mut self, op_id: OpId, target: Id, queries: Vec<(NodeInfo, Query)>, now: Instant) {
        let pending = queries.len();
        for (n, q) in queries {
            self.send(n.addr, Some(n.id), q, Purpose::Store(op_id), now);
        }
        if let Some(op) = self.ops.get_mut(&op_id) {
            op.phase = Phase::Storing {
                target,
                pending,
                accepted: 0,
                errors: Vec::new(),
            };
        }
        self.store_progress(op_id, None);
    }

    /// One put/announce answered (`Some(None)` = accepted, `Some(Some(code))` = refused) or
    /// timed out (`Some(Some(0))`); `None` only checks completion.
    fn store_progress(&mut self, op_id: OpId, result: Option<Option<i64>>) {
        let Some(Op {
            phase:
                Phase::Storing {
                    target,
                    pending,
                    accepted,
                    errors,
                },
            ..
        }) = self.ops.get_mut(&op_id)
        else {
            return;
        };
        match result {
            Some(None) => *accepted += 1,
            Some(Some(code)) => errors.push(code),
            None => {}
        }
        if result.is_some() {
            *pending = pending.saturating_sub(1);
        }
        if *pending == 0 {
            let outcome = Outcome::Stored {
                target: *target,
                accepted: *accepted,
                errors: std::mem::take(errors),
            };
            self.ops.remove(&op_id);
            self.events.push_back((op_id, outcome));
        }
    }

    /// Handles the passing of time: timeouts, bucket refresh, storage expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<Vec<u8>> = self
            .txs
            .iter()
            .filter(|(_, t)| t.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for tid in expired {
            let Some(tx) = self.txs.remove(&tid) else {
                continue;
            };
            match tx.purpose {
                Purpose::Lookup(_) => {} // the lookup already failed it at its own deadline
                Purpose::Store(op) => {
                    self.fail_node(tx.node_id, now);
                    self.store_progress(op, Some(Some(0)));
                }
                Purpose::Ping => self.fail_node(tx.node_id, now),
                Purpose::Forward { reply_to, tid } => {
                    self.rv_forward_done(reply_to, tid, Err(None))
                }
                Purpose::Message(op) => {
                    let lost = Some(Some(crate::rendezvous::ERROR_UNDELIVERED));
                    self.rv_message_progress(op, lost);
                }
                Purpose::RvAnnounce { .. } | Purpose::RvProbe => {
                    self.fail_node(tx.node_id, now);
                    self.rv_answer(&tx, None, now);
                }
            }
        }
        let lookups: Vec<OpId> = self.ops.keys().copied().collect();
        for op in lookups {
            self.drive(op, now);
        }
        // Every due deadline moves forward even when nothing can be started (empty table,
        // too busy), or the driver would wake up in a loop.
        for i in self.table.buckets_to_refresh(now) {
            let random = self.random_bytes();
            let target = self.table.refresh_target(i, random, now);
            if !self.table.is_empty() && self.ops.len() < MAX_OPERATIONS / 2 {
                self.start_internal(Request::FindNode(target), Then::Refresh, now);
            }
        }
        let mut due = Vec::new();
        for (req, t) in self.own_items.values_mut() {
            if *t <= now {
                *t = now + REPUBLISH_INTERVAL;
                due.push(req.clone());
            }
        }
        for req in due {
            // Its result is reported under an op id nobody waits for.
            self.start(req, now);
        }
        self.rv_timeout(now);
        if now >= self.next_storage_expiry {
            self.rv_expire(now);
            self.server.storage_mut().expire(now);
            self.limiter.expire(now);
            self.observed.expire(now);
            self.next_storage_expiry = now + STORAGE_EXPIRY_INTERVAL;
        }
    }

    fn fail_node(&mut self, id: Option<Id>, now: Instant) {
        if let Some(id) = id {
            self.table.failed(&id, now);
        }
    }
}

#[cfg(test)]
mod tests;
