//! Incoming datagrams: queries are answered by the [`crate::server::Server`], responses and
//! errors are matched to their transaction and passed to the lookup or put that sent it.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Core, Op, Phase, Purpose, Tx};
use crate::id::NodeInfo;
use crate::krpc::{self, ErrorMessage, Kind, KrpcError, Message, Query, Response};
use crate::rendezvous;
use crate::routing::{Contact, Insert};

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
            Purpose::RvAnnounce { .. } if error.is_some() => self.rv_refused(&tx, now),
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
                self.table_heard_query(NodeInfo { id, addr }, now);
            }
            return;
        }
        let answer = self
            .server
            .handle_query(from, &msg.transaction_id, q, &self.table, now);
        self.reply(from, &answer);
        if let (false, Some(id), SocketAddr::V4(addr)) = (msg.read_only, q.sender_id(), from) {
            self.table_heard_query(NodeInfo { id, addr }, now);
        }
    }

    /// A querier joins the table as questionable (BEP 5: good once it answered us). It is not
    /// pinged to verify it: that cost a ping per new querier (a tenth of the datagrams sent
    /// while a network forms) and would send a second datagram to whatever address a spoofed
    /// query names. Lookups verify it when they ask it; a full bucket pings its questionable
    /// nodes before replacing them.
    fn table_heard_query(&mut self, node: NodeInfo, now: Instant) {
        if let Insert::PingFirst(q) = self.table.heard_from(node, Contact::Query, now) {
            self.ping(q, now);
        }
    }

    fn handle_response(&mut self, from: SocketAddr, msg: &Message, r: &Response, now: Instant) {
        self.stats.responses_in += 1;
        let Some(tx) = self.take_tx(&msg.transaction_id, from) else {
            return;
        };
        if let Some(ip) = msg.ip {
            self.observed.vote(ip, tx.to);
            self.check_secure_id(now);
        }
        let node = NodeInfo {
            id: r.id,
            addr: tx.to,
        };
        // Message recipients may be behind NAT, reachable only through their rendezvous node.
        let routable = !matches!(tx.purpose, Purpose::Forward { .. } | Purpose::Message(_));
        if routable
            && let Insert::PingFirst(q) = self.table.heard_from(node, Contact::Response, now)
        {
            self.ping(q, now);
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
