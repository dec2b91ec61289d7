//! Incoming datagrams: queries are answered by the [`crate::server::Server`], responses and
//! errors are matched to their transaction and passed to the lookup or put that sent it.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Core, Op, Phase, Purpose, Tx};
use crate::id::NodeInfo;
use crate::krpc::{self, ErrorMessage, Kind, KrpcError, Message, Query, Response};
use crate::rendezvous;
use crate::routing::{Contact, Insert, Status};

impl Core {
    /// Handles one datagram from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        let msg = match krpc::parse(bytes) {
            Ok(m) => m,
            Err(e) => return self.handle_malformed(from, &e, now),
        };
        match msg.kind {
            Kind::Query(ref q) => self.handle_query(from, &msg, q, now),
            Kind::Response(ref r) => self.handle_response(from, &msg, r, now),
            Kind::Error(ref e) => {
                self.stats.errors_in += 1;
                let Some(tx) = self.take_tx(&msg.transaction_id, from) else {
                    return;
                };
                self.tx_failed(tx, Some(e), now);
            }
        }
    }

    /// A request was answered with an error (`Some`) or with something malformed (`None`).
    fn tx_failed(&mut self, tx: Tx, error: Option<&ErrorMessage>, now: Instant) {
        let code = error.map_or(0, |e| e.code);
        match &tx.purpose {
            Purpose::Lookup(op) => {
                let op = *op;
                if let Some(Op {
                    phase: Phase::Lookup(l),
                    ..
                }) = self.ops.get_mut(&op)
                {
                    l.on_failure(tx.to);
                }
                self.drive(op, now);
            }
            Purpose::Store(op) => self.store_progress(*op, Some(Some(code))),
            Purpose::Ping => {}
            Purpose::Forward { reply_to, tid } => {
                let error = error.map(|e| (e.code, e.message.clone()));
                self.rv_forward_done(*reply_to, tid.clone(), Err(error));
            }
            Purpose::Message(op) => {
                let code = error.map_or(rendezvous::ERROR_UNDELIVERED, |e| e.code);
                self.rv_message_progress(*op, Some(Some(code)));
            }
            // A refused keepalive means the node dropped us: replace it at once.
            Purpose::RvAnnounce { .. } if error.is_some() => {
                if let Some(e) = error {
                    tracing::debug!(node = %tx.to, code = e.code, message = %String::from_utf8_lossy(&e.message), "rendezvous announce refused");
                }
                self.rv_refused(&tx, now)
            }
            Purpose::RvAnnounce { .. } | Purpose::RvProbe => self.rv_answer(&tx, None, now),
        }
    }

    fn take_tx(&mut self, tid: &[u8], from: SocketAddr) -> Option<Tx> {
        let tx = self.txs.get(tid)?;
        if SocketAddr::V4(tx.to) != from {
            return None; // not from whom we asked: ignore (spoofing or confusion)
        }
        self.txs.remove(tid)
    }

    fn handle_malformed(&mut self, from: SocketAddr, e: &KrpcError, now: Instant) {
        self.stats.malformed_in += 1;
        if let KrpcError::MalformedResponse { transaction_id, .. } = e
            && let Some(tx) = self.take_tx(transaction_id, from)
        {
            self.tx_failed(tx, None, now);
            return;
        }
        if self.read_only || !self.limiter.allow(from, now) {
            return;
        }
        if let Some(reply) = self.server.reply_to_malformed(e, from) {
            self.reply(from, &reply);
        }
    }

    fn handle_query(&mut self, from: SocketAddr, msg: &Message, q: &Query, now: Instant) {
        self.stats.count_query_in(q.method());
        let ours = match q {
            Query::Other { method, .. } => {
                method == rendezvous::ANNOUNCE_METHOD || method == rendezvous::MESSAGE_METHOD
            }
            _ => false,
        };
        // BEP 43: read-only nodes do not answer, except messages delivered to them.
        let message =
            matches!(q, Query::Other { method, .. } if method == rendezvous::MESSAGE_METHOD);
        if self.read_only && !message {
            return;
        }
        if !self.limiter.allow(from, now) {
            self.stats.rate_limited += 1;
            return;
        }
        if let Query::Other { method, args } = q
            && ours
        {
            self.rv_query(from, &msg.transaction_id, method, args, now);
            // Announcers are usually behind NAT: not for the routing table. Forwarding nodes
            // are ordinary nodes.
            if method == rendezvous::ANNOUNCE_METHOD || self.read_only {
                return;
            }
            if let (false, Some(id), SocketAddr::V4(addr)) = (msg.read_only, q.sender_id(), from) {
                self.table_heard_query(NodeInfo { id, addr }, false, now);
            }
            return;
        }
        let mut answer = self
            .server
            .handle_query(from, &msg.transaction_id, q, &self.table, now);
        // A natkit querier that is not yet good here gets an address token to echo (others
        // would ignore it; a good one has nothing to prove).
        let querier = match (msg.read_only, q.sender_id(), from) {
            (false, Some(id), SocketAddr::V4(addr)) => Some(NodeInfo { id, addr }),
            _ => None,
        };
        let good = querier.is_some_and(|n| {
            self.table
                .get(&n.id)
                .is_some_and(|e| e.node.addr == n.addr && e.status(now) == Status::Good)
        });
        let natkit = msg.version.as_deref().is_some_and(|v| v.starts_with(b"NK"));
        if natkit && querier.is_some() && !good {
            answer.address_token = Some(self.server.tokens_mut().address_token(from, now).to_vec());
        }
        self.reply(from, &answer);
        if let Some(node) = querier {
            let proof = !good
                && msg
                    .address_token
                    .as_deref()
                    .is_some_and(|t| self.server.tokens_mut().check_address(t, from, now));
            self.table_heard_query(node, proof, now);
        }
    }

    /// A querier joins the table unverified, unless its query echoed our address token
    /// (`proof`): then it counts as having answered us. An unverified node is never pinged,
    /// asked or named to others (see [`crate::routing`]), so a query makes us send nothing
    /// toward its source but the one answer: a spoofed query cannot aim more traffic at a
    /// third party than it sends itself.
    fn table_heard_query(&mut self, node: NodeInfo, proof: bool, now: Instant) {
        let contact = if proof {
            self.stats.address_proofs_in += 1;
            Contact::Proof
        } else {
            Contact::Query
        };
        if let Insert::PingFirst(q) = self.table.heard_from(node, contact, now) {
            self.ping(q, now);
        }
    }

    fn handle_response(&mut self, from: SocketAddr, msg: &Message, r: &Response, now: Instant) {
        self.stats.responses_in += 1;
        let Some(tx) = self.take_tx(&msg.transaction_id, from) else {
            return;
        };
        if let Some(ip) = msg.ip {
            self.observed.vote(ip, tx.to, now);
            self.check_secure_id(now);
        }
        let node = NodeInfo {
            id: r.id,
            addr: tx.to,
        };
        // Message recipients may be behind NAT, reachable only through their rendezvous node.
        let routable = !matches!(tx.purpose, Purpose::Forward { .. } | Purpose::Message(_));
        if routable {
            if let Insert::PingFirst(q) = self.table.heard_from(node, Contact::Response, now) {
                self.ping(q, now);
            }
            if let Some(token) = &msg.address_token
                && let Some(e) = self.table.get_mut(&node.id)
                && e.node.addr == node.addr
            {
                e.keep_token(token, now);
            }
        }
        match tx.purpose {
            Purpose::Lookup(op) => {
                if let Some(Op {
                    phase: Phase::Lookup(l),
                    stream,
                    ..
                }) = self.ops.get_mut(&op)
                {
                    if *stream {
                        self.replies.push_back((op, node, r.clone()));
                    }
                    if let Some(rtt) = l.on_response(tx.to, r, now) {
                        self.rtt.sample(rtt);
                    }
                }
                self.drive(op, now);
            }
            Purpose::Store(op) => self.store_progress(op, Some(None)),
            Purpose::Ping => {}
            Purpose::Forward { reply_to, tid } => self.rv_forward_done(reply_to, tid, Ok(())),
            Purpose::Message(op) => self.rv_message_progress(op, Some(None)),
            Purpose::RvAnnounce { .. } | Purpose::RvProbe => self.rv_answer(&tx, Some(r), now),
        }
    }
}
