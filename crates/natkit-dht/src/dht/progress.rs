//! The driver's requests in the logs, so that `natkit -v` shows a slow lookup's progress.
//!
//! The core has no logging (it is a silent state machine); the driver logs for it, from what
//! comes out of the core. At `info`: a request started, and ended (its result, how many nodes
//! answered and were queried, how long it took). At `debug`: each lookup reply, with who sent
//! it and how far from the target it is. Nothing is recorded when `info` is off for this
//! module.

use std::collections::HashMap;
use std::time::Instant;

use crate::bep44;
use crate::core::{OpId, Outcome, Request};
use crate::id::{Id, NodeInfo};

/// What the driver remembers of each request it logs.
#[derive(Debug, Default)]
pub(super) struct Progress {
    ops: HashMap<OpId, OpLog>,
}

#[derive(Debug)]
struct OpLog {
    request: &'static str,
    target: Option<Id>,
    started: Instant,
    answered: usize,
    /// [`crate::stats::Stats::lookup_queries`] when the request started.
    queries_before: u64,
}

impl Progress {
    /// Whether requests are logged: the subscriber wants `info` from this module.
    pub(super) fn enabled() -> bool {
        tracing::enabled!(tracing::Level::INFO)
    }

    /// Whether `op` is logged.
    pub(super) fn tracks(&self, op: OpId) -> bool {
        self.ops.contains_key(&op)
    }

    /// A request started as `op`: what [`describe`] says of it, and the core's
    /// `lookup_queries` counter now.
    pub(super) fn started(
        &mut self,
        op: OpId,
        (request, target): (&'static str, Option<Id>),
        lookup_queries: u64,
        now: Instant,
    ) {
        match target {
            Some(t) => tracing::info!(op, request, target = %t.to_hex(), "DHT request started"),
            None => tracing::info!(op, request, "DHT request started"),
        }
        self.ops.insert(
            op,
            OpLog {
                request,
                target,
                started: now,
                answered: 0,
                queries_before: lookup_queries,
            },
        );
    }

    /// A node answered one of `op`'s lookup queries.
    pub(super) fn reply(&mut self, op: OpId, from: &NodeInfo) {
        let Some(log) = self.ops.get_mut(&op) else {
            return;
        };
        log.answered += 1;
        // log2 of the XOR distance: 159 for the far half of the id space, lower is closer.
        let distance = log.target.and_then(|t| t.distance(&from.id).bucket_index());
        tracing::debug!(
            op,
            request = log.request,
            from = %from.addr,
            id = %from.id.to_hex(),
            log2_distance = distance,
            answered = log.answered,
            "DHT lookup reply"
        );
    }

    /// `op` ended with `outcome`; `lookup_queries` is the core's counter now (so `queried`
    /// also counts the queries of lookups that ran at the same time).
    pub(super) fn done(&mut self, op: OpId, outcome: &Outcome, lookup_queries: u64, now: Instant) {
        let Some(log) = self.ops.remove(&op) else {
            return;
        };
        let elapsed = now.saturating_duration_since(log.started);
        tracing::info!(
            op,
            request = log.request,
            result = %summary(outcome),
            answered = log.answered,
            queried = lookup_queries.saturating_sub(log.queries_before),
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "DHT request done"
        );
    }
}

/// A request's name and the target its lookup goes to (none for a registration); `own_id` is
/// ours, which a bootstrap looks up.
pub(super) fn describe(req: &Request, own_id: Id) -> (&'static str, Option<Id>) {
    match req {
        Request::Bootstrap(_) => ("bootstrap", Some(own_id)),
        Request::FindNode(t) => ("find_node", Some(*t)),
        Request::GetPeers(t) => ("get_peers", Some(*t)),
        Request::Announce(t, _) => ("announce_peer", Some(*t)),
        Request::GetImmutable(t) => ("get immutable", Some(*t)),
        Request::GetMutable { k, salt, .. } => {
            ("get mutable", Some(bep44::mutable_target(k, salt)))
        }
        Request::PutImmutable(v) => ("put immutable", Some(bep44::immutable_target(v))),
        Request::PutMutable(item, _) => ("put mutable", Some(item.target())),
        Request::Register => ("register", None),
        Request::AnnounceHere(..) => ("announce here", None),
        Request::SendMessage { to, .. } => ("message", Some(crate::rendezvous::target(to))),
    }
}

/// An outcome in a few words.
fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Nodes(n) => format!("{} nodes", n.len()),
        Outcome::Peers(p) => format!("{} peers", p.len()),
        Outcome::Immutable(Some(_)) => "found".to_owned(),
        Outcome::Mutable(Some(m)) => format!("found seq {}", m.seq),
        Outcome::Immutable(None) | Outcome::Mutable(None) => "not found".to_owned(),
        Outcome::Stored {
            accepted, errors, ..
        } => format!("stored on {accepted} nodes, refused by {}", errors.len()),
        Outcome::Registered(points) => format!("{} rendezvous nodes", points.len()),
        Outcome::Delivered => "delivered".to_owned(),
        Outcome::NotDelivered { errors } => format!(
            "not delivered: {}",
            crate::rendezvous::describe_errors(errors)
        ),
        Outcome::Busy => "busy".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_named_and_lookups_have_their_target() {
        let own = Id([1; 20]);
        assert_eq!(
            describe(&Request::Bootstrap(vec![]), own),
            ("bootstrap", Some(own))
        );
        assert_eq!(
            describe(&Request::GetImmutable(Id([2; 20])), own),
            ("get immutable", Some(Id([2; 20])))
        );
        assert_eq!(describe(&Request::Register, own), ("register", None));
    }

    #[test]
    fn a_tracked_request_is_forgotten_when_done() {
        let mut p = Progress::default();
        let now = Instant::now();
        let what = describe(&Request::FindNode(Id([3; 20])), Id([1; 20]));
        p.started(7, what, 10, now);
        assert!(p.tracks(7));
        let from = NodeInfo {
            id: Id([4; 20]),
            addr: "127.0.0.1:1".parse().expect("address"),
        };
        p.reply(7, &from);
        assert_eq!(p.ops.get(&7).map(|l| l.answered), Some(1));
        p.done(7, &Outcome::Nodes(vec![from]), 14, now);
        assert!(!p.tracks(7));
        // Unknown ops are ignored.
        p.reply(8, &from);
        p.done(8, &Outcome::Busy, 0, now);
    }
}
