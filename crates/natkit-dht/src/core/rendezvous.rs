//! The core's side of [`crate::rendezvous`]: answering `natkit.announce` and `natkit.message`,
//! forwarding messages, keeping our own registrations alive, and sending messages.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::{Core, Op, OpId, Outcome, Phase, Purpose, Then, Tx};
use crate::id::{Id, NodeInfo};
use crate::krpc::{
    ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL, Message, PUBLIC_KEY_BYTES, Query, Response,
};
use crate::lookup::K;
use crate::rendezvous::{
    ANNOUNCE_METHOD, Announce, CHANNELS, ERROR_BUSY, ERROR_NOT_REGISTERED, ERROR_REFUSED,
    ERROR_UNDELIVERED, Envelope, Incoming, KEEPALIVE_INTERVAL, MAX_HOPS, MAX_INBOX,
    MAX_KEEPALIVE_FAILURES, MAX_MESSAGES_PER_IP, MAX_MESSAGES_PER_RECIPIENT, MAX_PENDING_FORWARDS,
    MESSAGE_METHOD, MessageArgs, REGISTRATION_TTL, RENDEZVOUS_NODES, RESEARCH_INTERVAL,
    RESPONSE_KEY, RETRY_INTERVAL, Registry, RendezvousError, ReplayCache, WindowLimit,
    service_info_hash, target,
};

/// How long one hop may take to answer a forwarded message; a message that may travel `h`
/// more hops waits `(h + 1)` times this.
pub const HOP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Nodes a relayed message ([`crate::core::Request::SendMessage`] with `relay`) starts from.
pub const RELAY_FANOUT: usize = 3;

/// Everything rendezvous-related a node holds.
#[derive(Debug)]
pub(super) struct Rv {
    identity: Option<SigningKey>,
    /// `now` and the Unix time (seconds) at that instant.
    /// The Unix time in milliseconds at an instant.
    clock: Option<(Instant, i64)>,
    serve: bool,
    registry: Registry,
    replay: ReplayCache,
    /// One inbox per channel, each at most [`MAX_INBOX`].
    inbox: [VecDeque<Incoming>; CHANNELS as usize],
    per_ip: WindowLimit<SocketAddr>,
    per_recipient: WindowLimit<[u8; PUBLIC_KEY_BYTES]>,
    per_sender: WindowLimit<[u8; PUBLIC_KEY_BYTES]>,
    forwards: usize,
    client: Option<Client>,
    keepalive: Duration,
    pub(super) delivered: u64,
    pub(super) forwarded: u64,
}

#[derive(Debug)]
struct Client {
    seq: i64,
    nodes: Vec<RvNode>,
    round: Option<Round>,
    next_search: Instant,
    /// Wait before the next search while short of rendezvous nodes: doubles from
    /// [`RETRY_INTERVAL`] up to [`RESEARCH_INTERVAL`] (a small network may never have more).
    retry: Duration,
    waiters: Vec<OpId>,
}

#[derive(Debug, Default)]
struct Round {
    pending: usize,
    fallback_done: bool,
    accepted: Vec<RvNode>,
}

#[derive(Clone, Debug)]
struct RvNode {
    node: NodeInfo,
    token: Vec<u8>,
    /// Its public key, when it is a natkit node with an identity (`nkk`).
    key: Option<[u8; PUBLIC_KEY_BYTES]>,
    next_keepalive: Instant,
    failures: u8,
}

impl Rv {
    pub(super) fn new(serve: bool) -> Self {
        Rv {
            identity: None,
            clock: None,
            serve,
            registry: Registry::default(),
            replay: ReplayCache::default(),
            inbox: Default::default(),
            per_ip: WindowLimit::new(MAX_MESSAGES_PER_IP),
            per_recipient: WindowLimit::new(MAX_MESSAGES_PER_RECIPIENT),
            per_sender: WindowLimit::new(MAX_MESSAGES_PER_RECIPIENT),
            forwards: 0,
            client: None,
            keepalive: KEEPALIVE_INTERVAL,
            delivered: 0,
            forwarded: 0,
        }
    }

    fn unix_now(&self, now: Instant) -> Option<i64> {
        self.unix_now_ms(now).map(|ms| ms.div_euclid(1000))
    }

    fn unix_now_ms(&self, now: Instant) -> Option<i64> {
        let (at, ms) = self.clock?;
        let elapsed = now.saturating_duration_since(at).as_millis();
        Some(ms.saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX)))
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let c = self.client.as_ref()?;
        let keepalives = c.nodes.iter().map(|n| n.next_keepalive);
        let search = c.round.is_none().then_some(c.next_search);
        keepalives.chain(search).min()
    }

    pub(super) fn registrations(&self) -> usize {
        self.registry.len()
    }
}

/// Per-IP limits key: the IP, except on loopback, where every test node shares one IP and the
/// port tells them apart.
fn limit_key(from: SocketAddr) -> SocketAddr {
    if from.ip().is_loopback() {
        from
    } else {
        SocketAddr::new(from.ip(), 0)
    }
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

impl Core {
    /// Sets the identity messages are signed with and addressed to, and that
    /// [`super::Request::Register`] registers.
    pub fn set_identity(&mut self, key: SigningKey) {
        self.rv.identity = Some(key);
    }

    /// Tells the core the Unix time (seconds) at `now`; needed to sign and check messages.
    pub fn set_unix_time(&mut self, now: Instant, unix_secs: i64) {
        self.set_unix_time_ms(now, unix_secs.saturating_mul(1000));
    }

    /// Like [`Core::set_unix_time`], in milliseconds: registrations are numbered from it, so
    /// that a node restarted within the same second still registers with a higher `seq`.
    pub fn set_unix_time_ms(&mut self, now: Instant, unix_ms: i64) {
        self.rv.clock = Some((now, unix_ms));
    }

    /// Whether this node answers `natkit.announce` (serves as a rendezvous node). On by default
    /// unless read-only.
    pub fn set_rendezvous_server(&mut self, serve: bool) {
        self.rv.serve = serve && !self.read_only;
    }

    /// Sets how often registrations are refreshed (default [`KEEPALIVE_INTERVAL`]; must stay
    /// below the NAT's UDP mapping timeout). Clamped to 1 s .. [`REGISTRATION_TTL`] / 2.
    pub fn set_keepalive_interval(&mut self, every: Duration) {
        self.rv.keepalive = every.clamp(Duration::from_secs(1), REGISTRATION_TTL / 2);
    }

    /// The next message delivered to us on `channel` (`None` for an unknown channel).
    pub fn poll_incoming(&mut self, channel: u8) -> Option<Incoming> {
        self.rv.inbox.get_mut(usize::from(channel))?.pop_front()
    }

    /// Messages delivered on `channel` and not yet taken by [`Core::poll_incoming`].
    pub fn incoming_len(&self, channel: u8) -> usize {
        self.rv
            .inbox
            .get(usize::from(channel))
            .map_or(0, VecDeque::len)
    }

    /// Our rendezvous nodes with their public keys, when they sent one (natkit nodes with an
    /// identity do, in their answer to our registration).
    pub fn rendezvous_nodes(&self) -> Vec<(SocketAddr, Option<[u8; PUBLIC_KEY_BYTES]>)> {
        let Some(c) = &self.rv.client else {
            return Vec::new();
        };
        c.nodes
            .iter()
            .map(|n| (SocketAddr::V4(n.node.addr), n.key))
            .collect()
    }

    /// Our current rendezvous nodes (empty unless registered), closest to our target first.
    pub fn rendezvous_points(&self) -> Vec<SocketAddr> {
        let Some(c) = &self.rv.client else {
            return Vec::new();
        };
        c.nodes
            .iter()
            .map(|n| SocketAddr::V4(n.node.addr))
            .collect()
    }

    /// Answers our own methods; `None` if `method` is not one of them.
    pub(super) fn rv_query(
        &mut self,
        from: SocketAddr,
        tid: &[u8],
        method: &[u8],
        args: &crate::bencode::Value,
        now: Instant,
    ) -> Option<()> {
        let result = if method == ANNOUNCE_METHOD {
            if !self.rv.serve {
                Err((ERROR_METHOD_UNKNOWN, "not a rendezvous node".to_owned()))
            } else {
                self.rv_register(from, args, now)
            }
        } else if method == MESSAGE_METHOD {
            match self.rv_message(from, tid, args, now) {
                Ok(None) => return Some(()), // forwarded: the answer comes later
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e),
            }
        } else {
            return None;
        };
        let m = match result {
            Ok(r) => Message::response(tid.to_vec(), r),
            Err((code, text)) => Message::error(tid.to_vec(), code, text),
        };
        let m = self.server.finish(m, from);
        self.reply(from, &m);
        Some(())
    }

    fn rv_register(
        &mut self,
        from: SocketAddr,
        args: &crate::bencode::Value,
        now: Instant,
    ) -> Result<Response, (i64, String)> {
        let refuse = |e: RendezvousError| (e.code(), e.to_string());
        let a = Announce::from_args(args).map_err(refuse)?;
        if !self.server.tokens_mut().check(&a.token, from.ip(), now) {
            return Err((ERROR_PROTOCOL, "bad token".to_owned()));
        }
        // Announces signed for our previous id (we just took a BEP 42 id) are still ours.
        let previous = self.previous_id;
        a.verify(&self.id)
            .or_else(|e| previous.map_or(Err(e), |p| a.verify(&p)))
            .map_err(refuse)?;
        self.rv.registry.register(&a, from, now).map_err(refuse)?;
        let mut r = Response::new(self.id);
        // The write token for the next keepalive, in the response's `token` key.
        r.token = Some(self.server.tokens_mut().token(from.ip(), now).to_vec());
        let ttl = i64::try_from(REGISTRATION_TTL.as_secs()).unwrap_or(i64::MAX);
        r.extra
            .insert(b"ttl".to_vec(), crate::bencode::Value::Int(ttl));
        // Our key, so that the registrant can address messages to us (a natkit
        // node asks its rendezvous nodes to dial it back, to learn whether it
        // is reachable).
        if let Some(k) = &self.rv.identity {
            r.extra.insert(
                RESPONSE_KEY.to_vec(),
                crate::bencode::Value::Bytes(k.verifying_key().to_bytes().to_vec()),
            );
        }
        Ok(r)
    }

    /// `Ok(None)`: forwarded (answered when the next hop answers).
    fn rv_message(
        &mut self,
        from: SocketAddr,
        tid: &[u8],
        args: &crate::bencode::Value,
        now: Instant,
    ) -> Result<Option<Response>, (i64, String)> {
        let refuse = |e: RendezvousError| (e.code(), e.to_string());
        let m = MessageArgs::from_args(args).map_err(refuse)?;
        let e = &m.envelope;
        let Some(unix_now) = self.rv.unix_now(now) else {
            return Err((ERROR_BUSY, "no clock".to_owned()));
        };
        e.verify(unix_now).map_err(refuse)?;
        let me = self
            .rv
            .identity
            .as_ref()
            .map(|k| k.verifying_key().to_bytes());
        if me == Some(e.to) {
            // For us. A duplicate (the same message through several rendezvous nodes) is
            // acknowledged again but delivered once.
            if self.rv.replay.contains(e) {
                return Ok(Some(Response::new(self.id)));
            }
            if !self.rv.per_sender.allow(&e.from, now) {
                return Err((ERROR_BUSY, "too many messages from this sender".to_owned()));
            }
            let Some(inbox) = self.rv.inbox.get(usize::from(e.channel)) else {
                return Err((ERROR_REFUSED, format!("no channel {}", e.channel)));
            };
            if inbox.len() >= MAX_INBOX {
                return Err((ERROR_BUSY, "inbox full".to_owned()));
            }
            self.rv.replay.check(e, now).map_err(refuse)?;
            self.rv.inbox[usize::from(e.channel)].push_back(Incoming {
                from: e.from,
                channel: e.channel,
                payload: e.payload.clone(),
                ts: e.ts,
                sender_addr: Some(m.src.map_or(from, SocketAddr::V4)),
                via: from,
            });
            self.rv.delivered += 1;
            return Ok(Some(Response::new(self.id)));
        }
        let registered = self.rv.registry.lookup(&e.to, now).and_then(v4);
        let (next, hops) = match registered {
            Some(addr) => (
                NodeInfo {
                    id: target(&e.to),
                    addr,
                },
                0,
            ),
            None if m.hops > 0 => {
                let t = target(&e.to);
                let mine = t.distance(&self.id);
                let closer = self
                    .table
                    .closest_good(&t, 1, now)
                    .into_iter()
                    .find(|n| t.distance(&n.id) < mine && SocketAddr::V4(n.addr) != from);
                match closer {
                    Some(n) => (n, m.hops - 1),
                    None => return Err((ERROR_NOT_REGISTERED, "not registered here".to_owned())),
                }
            }
            None => return Err((ERROR_NOT_REGISTERED, "not registered here".to_owned())),
        };
        if self.rv.forwards >= MAX_PENDING_FORWARDS
            || !self.rv.per_ip.allow(&limit_key(from), now)
            || !self.rv.per_recipient.allow(&e.to, now)
        {
            return Err((ERROR_BUSY, "rate limit".to_owned()));
        }
        let src = m.src.or_else(|| v4(from));
        let q = Query::Other {
            method: MESSAGE_METHOD.to_vec(),
            args: e.to_args(self.id, hops, src),
        };
        let purpose = Purpose::Forward {
            reply_to: from,
            tid: tid.to_vec(),
        };
        let node_id = registered.is_none().then_some(next.id);
        self.send_with_timeout(next.addr, node_id, q, purpose, hop_timeout(hops), now);
        self.rv.forwards += 1;
        self.rv.forwarded += 1;
        Ok(None)
    }

    /// The answer (`Ok`) or error code (`Err`) to a forwarded message arrived, or it timed out
    /// (`Err(None)`): pass it back to whoever sent it to us.
    pub(super) fn rv_forward_done(
        &mut self,
        reply_to: SocketAddr,
        tid: Vec<u8>,
        result: Result<(), Option<(i64, Vec<u8>)>>,
    ) {
        self.rv.forwards = self.rv.forwards.saturating_sub(1);
        let m = match result {
            Ok(()) => Message::response(tid, Response::new(self.id)),
            Err(Some((code, text))) => Message::error(tid, code, text),
            Err(None) => Message::error(tid, ERROR_UNDELIVERED, "the recipient did not answer"),
        };
        let m = self.server.finish(m, reply_to);
        self.reply(reply_to, &m);
    }

    /// Starts sending a message (see [`super::Request::SendMessage`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rv_send(
        &mut self,
        op: OpId,
        channel: u8,
        to: [u8; PUBLIC_KEY_BYTES],
        payload: Vec<u8>,
        via: Vec<SocketAddrV4>,
        relay: bool,
        now: Instant,
    ) {
        let envelope = match (&self.rv.identity, self.rv.unix_now(now)) {
            (Some(key), Some(ts)) => {
                let nonce = self.rng.next_u64().to_be_bytes();
                Envelope::sign_on(key, channel, to, ts, nonce, payload).ok()
            }
            _ => None,
        };
        let Some(envelope) = envelope else {
            self.events
                .push_back((op, Outcome::NotDelivered { errors: vec![] }));
            return;
        };
        // A key registered with us needs no search.
        let mut via = via;
        if via.is_empty()
            && let Some(addr) = self.rv.registry.lookup(&to, now).and_then(v4)
        {
            via.push(addr);
        }
        if !via.is_empty() {
            let targets = via.into_iter().take(K).map(|addr| (None, addr)).collect();
            return self.rv_send_to(op, &envelope, targets, 0, now);
        }
        if relay {
            let t = target(&to);
            let targets = self.table.closest(&t, RELAY_FANOUT, now);
            let targets = targets.into_iter().map(|n| (Some(n.id), n.addr)).collect();
            return self.rv_send_to(op, &envelope, targets, MAX_HOPS, now);
        }
        self.launch(
            op,
            super::Request::FindNode(target(&to)),
            Some(Then::Message(Box::new(envelope))),
            now,
        );
    }

    pub(super) fn rv_send_to(
        &mut self,
        op: OpId,
        envelope: &Envelope,
        targets: Vec<(Option<Id>, SocketAddrV4)>,
        hops: u8,
        now: Instant,
    ) {
        let pending = targets.len();
        for (id, addr) in targets {
            let q = Query::Other {
                method: MESSAGE_METHOD.to_vec(),
                args: envelope.to_args(self.id, hops, None),
            };
            let timeout = hop_timeout(hops) + HOP_TIMEOUT;
            self.send_with_timeout(addr, id, q, Purpose::Message(op), timeout, now);
        }
        let phase = Phase::Messaging {
            pending,
            errors: Vec::new(),
        };
        match self.ops.get_mut(&op) {
            Some(o) => o.phase = phase,
            None => {
                self.ops.insert(
                    op,
                    Op {
                        phase,
                        then: Then::Report,
                        stream: false,
                    },
                );
            }
        }
        self.rv_message_progress(op, None);
    }

    /// A message was acknowledged (`Some(None)`), refused or lost (`Some(Some(code))`);
    /// `None` only checks completion.
    pub(super) fn rv_message_progress(&mut self, op: OpId, result: Option<Option<i64>>) {
        let Some(Op {
            phase: Phase::Messaging { pending, errors },
            ..
        }) = self.ops.get_mut(&op)
        else {
            return;
        };
        match result {
            Some(None) => {
                self.ops.remove(&op);
                self.events.push_back((op, Outcome::Delivered));
                return;
            }
            Some(Some(code)) => {
                errors.push(code);
                *pending = pending.saturating_sub(1);
            }
            None => {}
        }
        if *pending == 0 {
            let errors = std::mem::take(errors);
            self.ops.remove(&op);
            self.events
                .push_back((op, Outcome::NotDelivered { errors }));
        }
    }

    /// Starts (or joins) a registration round; `op` is told the rendezvous nodes at its end.
    pub(super) fn rv_register_start(&mut self, op: OpId, now: Instant) {
        if self.rv.identity.is_none() {
            self.events.push_back((op, Outcome::Registered(Vec::new())));
            return;
        }
        // Milliseconds times 1000: room for 1000 announces per millisecond of
        // uptime before a restart of this identity could number below them.
        let seq = self.rv.unix_now_ms(now).unwrap_or(0).saturating_mul(1000);
        let client = self.rv.client.get_or_insert_with(|| Client {
            seq,
            nodes: Vec::new(),
            round: None,
            next_search: now,
            retry: RETRY_INTERVAL,
            waiters: Vec::new(),
        });
        client.waiters.push(op);
        if client.round.is_none() {
            self.rv_search(now);
        }
    }

    fn own_target(&self) -> Option<Id> {
        let key = self.rv.identity.as_ref()?;
        Some(target(&key.verifying_key().to_bytes()))
    }

    fn rv_search(&mut self, now: Instant) {
        let Some(t) = self.own_target() else { return };
        let Some(client) = &mut self.rv.client else {
            return;
        };
        client.round = Some(Round::default());
        client.next_search = now + RETRY_INTERVAL;
        if !self.start_internal(super::Request::GetPeers(t), Then::RvSearch, now) {
            self.rv_round_progress(now);
        }
    }

    /// The search lookup (`fallback` false) or the service lookup (true) ended.
    pub(super) fn rv_lookup_done(
        &mut self,
        nodes: Vec<(NodeInfo, Vec<u8>)>,
        peers: Vec<SocketAddr>,
        now: Instant,
    ) {
        let Some(t) = self.own_target() else { return };
        let mut sent = 0;
        for (n, token) in nodes {
            self.rv_announce(n, token, true, now);
            sent += 1;
        }
        let mut known: Vec<SocketAddrV4> = self
            .rendezvous_points()
            .iter()
            .filter_map(|a| v4(*a))
            .collect();
        if let Some(Client { round: Some(r), .. }) = &self.rv.client {
            known.extend(r.accepted.iter().map(|n| n.node.addr));
        }
        for p in peers
            .into_iter()
            .filter_map(v4)
            .filter(|p| !known.contains(p))
            .take(K)
        {
            let q = Query::GetPeers {
                id: self.id,
                info_hash: t,
            };
            let timeout = self.rtt.timeout();
            self.send_with_timeout(p, None, q, Purpose::RvProbe, timeout, now);
            sent += 1;
        }
        if let Some(Client { round: Some(r), .. }) = &mut self.rv.client {
            r.pending += sent;
        }
        self.rv_round_progress(now);
    }

    fn rv_announce(&mut self, node: NodeInfo, token: Vec<u8>, search: bool, now: Instant) {
        let Some(key) = &self.rv.identity else { return };
        let Some(client) = &mut self.rv.client else {
            return;
        };
        client.seq = client.seq.saturating_add(1);
        let a = Announce::sign(key, &node.id, client.seq, token);
        let q = Query::Other {
            method: ANNOUNCE_METHOD.to_vec(),
            args: a.to_args(self.id),
        };
        let timeout = self.rtt.timeout();
        let purpose = Purpose::RvAnnounce { search };
        self.send_with_timeout(node.addr, Some(node.id), q, purpose, timeout, now);
    }

    /// An answer to one of our rendezvous queries (`r` is `None` for an error or a timeout).
    pub(super) fn rv_answer(&mut self, tx: &Tx, r: Option<&Response>, now: Instant) {
        let keepalive = self.rv.keepalive;
        match (&tx.purpose, r) {
            (Purpose::RvProbe, Some(r)) if r.token.is_some() => {
                let node = NodeInfo {
                    id: r.id,
                    addr: tx.to,
                };
                let token = r.token.clone().unwrap_or_default();
                // The probe's place in the round goes to the announce.
                return self.rv_announce(node, token, true, now);
            }
            (Purpose::RvAnnounce { search: true }, Some(r)) => {
                if let Some(Client {
                    round: Some(round), ..
                }) = &mut self.rv.client
                {
                    // Its id as it answered: it may have taken a new (BEP 42) id since the
                    // lookup, and keepalives are signed for it.
                    round.accepted.push(RvNode {
                        node: NodeInfo {
                            id: r.id,
                            addr: tx.to,
                        },
                        token: next_token(r),
                        key: answer_key(r),
                        next_keepalive: now + keepalive,
                        failures: 0,
                    });
                }
            }
            (Purpose::RvAnnounce { search: false }, answer) => {
                let Some(client) = &mut self.rv.client else {
                    return;
                };
                let Some(i) = client.nodes.iter().position(|n| n.node.addr == tx.to) else {
                    return;
                };
                match answer {
                    Some(r) => {
                        client.nodes[i].failures = 0;
                        client.nodes[i].token = next_token(r);
                        // It may have taken a new (BEP 42) id: sign for that one next time.
                        client.nodes[i].node.id = r.id;
                    }
                    None => {
                        client.nodes[i].failures += 1;
                        if client.nodes[i].failures >= MAX_KEEPALIVE_FAILURES {
                            client.nodes.remove(i);
                            if client.round.is_none() {
                                client.next_search = client.next_search.min(now);
                            }
                        }
                    }
                }
                return;
            }
            _ => {}
        }
        if let Some(Client { round: Some(r), .. }) = &mut self.rv.client {
            r.pending = r.pending.saturating_sub(1);
        }
        self.rv_round_progress(now);
    }

    /// A refresh was refused outright (the node restarted, or dropped us): replace it now.
    pub(super) fn rv_refused(&mut self, tx: &Tx, now: Instant) {
        if let (Purpose::RvAnnounce { search: false }, Some(client)) =
            (&tx.purpose, &mut self.rv.client)
        {
            client.nodes.retain(|n| n.node.addr != tx.to);
            if client.round.is_none() {
                client.next_search = client.next_search.min(now);
            }
            return;
        }
        self.rv_answer(tx, None, now);
    }

    fn rv_round_progress(&mut self, now: Instant) {
        let Some(t) = self.own_target() else { return };
        let Some(client) = &mut self.rv.client else {
            return;
        };
        let Some(round) = &mut client.round else {
            return;
        };
        if round.pending > 0 {
            return;
        }
        let have = round.accepted.len();
        if have < RENDEZVOUS_NODES && !round.fallback_done {
            round.fallback_done = true;
            let req = super::Request::GetPeers(service_info_hash());
            if self.start_internal(req, Then::RvFallback, now) {
                return;
            }
        }
        let Some(client) = &mut self.rv.client else {
            return;
        };
        let Some(round) = client.round.take() else {
            return;
        };
        let mut nodes: Vec<RvNode> = Vec::new();
        for n in round
            .accepted
            .into_iter()
            .chain(client.nodes.iter().cloned())
        {
            if !nodes.iter().any(|m| m.node.addr == n.node.addr) {
                nodes.push(n);
            }
        }
        nodes.sort_by_key(|n| t.distance(&n.node.id));
        nodes.truncate(RENDEZVOUS_NODES);
        client.nodes = nodes;
        if client.nodes.len() >= RENDEZVOUS_NODES {
            client.next_search = now + RESEARCH_INTERVAL;
            client.retry = RETRY_INTERVAL;
        } else {
            client.next_search = now + client.retry;
            client.retry = (client.retry * 2).min(RESEARCH_INTERVAL);
        }
        let points: Vec<SocketAddr> = client
            .nodes
            .iter()
            .map(|n| SocketAddr::V4(n.node.addr))
            .collect();
        for op in std::mem::take(&mut client.waiters) {
            self.events
                .push_back((op, Outcome::Registered(points.clone())));
        }
    }

    /// Keepalives and searches that are due.
    pub(super) fn rv_timeout(&mut self, now: Instant) {
        let keepalive = self.rv.keepalive;
        let Some(client) = &mut self.rv.client else {
            return;
        };
        let mut due = Vec::new();
        for n in &mut client.nodes {
            if n.next_keepalive <= now {
                n.next_keepalive = now + keepalive;
                due.push((n.node, n.token.clone()));
            }
        }
        let search = client.round.is_none() && client.next_search <= now;
        for (node, token) in due {
            self.rv_announce(node, token, false, now);
        }
        if search {
            self.rv_search(now);
        }
    }

    pub(super) fn rv_expire(&mut self, now: Instant) {
        self.rv.registry.expire(now);
    }
}

fn hop_timeout(hops: u8) -> Duration {
    HOP_TIMEOUT * (u32::from(hops) + 1)
}

/// The rendezvous node's public key in its answer (`nkk`), if any.
fn answer_key(r: &Response) -> Option<[u8; PUBLIC_KEY_BYTES]> {
    r.extra
        .get(RESPONSE_KEY)
        .and_then(crate::bencode::Value::as_bytes)
        .and_then(|b| <[u8; PUBLIC_KEY_BYTES]>::try_from(b).ok())
}

/// The token for the next keepalive: a response's `token` key (parsed into
/// its typed field; the `extra` map never holds known keys).
fn next_token(r: &Response) -> Vec<u8> {
    r.token.clone().unwrap_or_default()
}
