//! Incoming datagrams: queries are answered by the [`crate::server::Server`], responses and
//! errors are matched to their transaction and passed to the lookup or put that sent it.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Core, Op, Phase, Purpose, Tx};
use crate::id::NodeInfo;
use crate::krpc::{self, Kind, KrpcError, Message, Query, Response};
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
                match tx.purpose {
                    Purpose::Lookup(op) => {
                        if let Some(Op {
                            phase: Phase::Lookup(l),
                            ..
                        }) = self.ops.get_mut(&op)
                        {
                            l.on_failure(tx.to);
                        }
                        self.drive(op, now);
                    }
                    Purpose::Store(op) => self.store_progress(op, Some(Some(e.code))),
                    Purpose::Ping => {}
                }
            }
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
            if let Purpose::Lookup(op) = tx.purpose {
                if let Some(Op {
                    phase: Phase::Lookup(l),
                    ..
                }) = self.ops.get_mut(&op)
                {
                    l.on_failure(tx.to);
                }
                self.drive(op, now);
            } else if let Purpose::Store(op) = tx.purpose {
                self.store_progress(op, Some(Some(0)));
            }
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
        if self.read_only {
            return; // BEP 43: read-only nodes do not answer
        }
        if !self.limiter.allow(from, now) {
            self.stats.rate_limited += 1;
            return;
        }
        let answer = self
            .server
            .handle_query(from, &msg.transaction_id, q, &self.table, now);
        self.reply(from, &answer);
        if let (false, Some(id), SocketAddr::V4(addr)) = (msg.read_only, q.sender_id(), from) {
            let node = NodeInfo { id, addr };
            match self.table.heard_from(node, Contact::Query, now) {
                Insert::Added => self.ping(node, now), // verify it before relying on it
                Insert::PingFirst(q) => self.ping(q, now),
                _ => {}
            }
        }
    }

    fn handle_response(&mut self, from: SocketAddr, msg: &Message, r: &Response, now: Instant) {
        self.stats.responses_in += 1;
        let Some(tx) = self.take_tx(&msg.transaction_id, from) else {
            return;
        };
        if let Some(ip) = msg.ip {
            self.observed.vote(ip, tx.to);
        }
        let node = NodeInfo {
            id: r.id,
            addr: tx.to,
        };
        if let Insert::PingFirst(q) = self.table.heard_from(node, Contact::Response, now) {
            self.ping(q, now);
        }
        match tx.purpose {
            Purpose::Lookup(op) => {
                if let Some(Op {
                    phase: Phase::Lookup(l),
                    ..
                }) = self.ops.get_mut(&op)
                    && let Some(rtt) = l.on_response(tx.to, r, now)
                {
                    self.rtt.sample(rtt);
                }
                self.drive(op, now);
            }
            Purpose::Store(op) => self.store_progress(op, Some(None)),
            Purpose::Ping => {}
        }
    }
}
