//! Counters, the observed public address (BEP 42 `ip` votes) and the per-source query rate
//! limit. Sans-I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::lookup::LookupStats;

/// Queries accepted from one source IP per [`RATE_WINDOW`] (from one IP *and port* on
/// loopback, where every local test node shares 127.0.0.1); more are dropped unanswered. A
/// well-behaved node sends a handful per lookup; 100/s leaves room for several busy nodes
/// behind one NAT while bounding what one host can make us send, whatever ports it uses.
pub const MAX_QUERIES_PER_SOURCE: u32 = 100;

/// The rate limit's window.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Most sources tracked by the rate limiter; past this, idle ones are forgotten (and if all are
/// active, new sources are refused until the window passes).
pub const MAX_TRACKED_SOURCES: usize = 10_000;

/// Most reporters whose vote on our address is kept (one vote each, the latest).
pub const MAX_OBSERVATIONS: usize = 256;

/// How long a reporter's vote on our address counts: NAT mappings change, and a vote older
/// than this says little about the mapping in use now.
pub const OBSERVATION_TTL: Duration = Duration::from_secs(10 * 60);

/// Messages in and out, by type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Nodes in the routing table.
    pub routing_table_size: usize,
    /// BEP 44 items stored for others.
    pub stored_items: usize,
    /// Queries received, by method.
    pub queries_in: BTreeMap<String, u64>,
    /// Queries sent, by method.
    pub queries_out: BTreeMap<String, u64>,
    /// Responses received.
    pub responses_in: u64,
    /// Responses sent.
    pub responses_out: u64,
    /// Error messages received.
    pub errors_in: u64,
    /// Error messages sent.
    pub errors_out: u64,
    /// Datagrams that were not valid KRPC.
    pub malformed_in: u64,
    /// Queries dropped by the per-source rate limit.
    pub rate_limited: u64,
    /// Lookups finished.
    pub lookups: u64,
    /// Sum of their queries (for a mean).
    pub lookup_queries: u64,
    /// Sum of their rounds (for a mean).
    pub lookup_rounds: u64,
    /// Our address as others see it, and how many distinct nodes said so.
    pub observed_address: Option<(SocketAddr, usize)>,
    /// Registrations we hold as a rendezvous node.
    pub registrations: usize,
    /// Our own rendezvous nodes (0 unless registered).
    pub rendezvous_points: usize,
    /// Messages delivered to us.
    pub messages_delivered: u64,
    /// Messages we forwarded toward their recipient.
    pub messages_forwarded: u64,
    /// Times our node id changed to a BEP 42 secure id for our observed IP.
    pub id_changes: u64,
    /// Queries that echoed our address token (their sender counts as verified).
    pub address_proofs_in: u64,
    /// Pings sent at the end of a bootstrap only to echo a neighbour's address token.
    pub proof_pings: u64,
}

fn method_name(m: &[u8]) -> String {
    String::from_utf8_lossy(m).into_owned()
}

impl Stats {
    pub(crate) fn count_query_in(&mut self, method: &[u8]) {
        // Unknown methods are counted under one key so a peer cannot grow this map.
        let known = matches!(
            method,
            b"ping" | b"find_node" | b"get_peers" | b"announce_peer" | b"get" | b"put"
        );
        let key = if known {
            method_name(method)
        } else {
            "other".to_owned()
        };
        *self.queries_in.entry(key).or_default() += 1;
    }

    pub(crate) fn count_query_out(&mut self, method: &[u8]) {
        *self.queries_out.entry(method_name(method)).or_default() += 1;
    }

    pub(crate) fn record_lookup(&mut self, s: LookupStats) {
        self.lookups += 1;
        self.lookup_queries += u64::from(s.queries);
        self.lookup_rounds += u64::from(s.rounds);
    }
}

/// One node's report of the address it saw our UDP datagrams come from (the BEP 42 `ip` field
/// of its answer): the evidence a NAT classifier needs (which reporters, from which IPs, saw
/// which address, when).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Who reported it.
    pub reporter: SocketAddrV4,
    /// The address it saw us at.
    pub observed: SocketAddr,
    /// When it last said so.
    pub at: Instant,
}

/// Votes on our public address from the `ip` field of responses: one vote per reporter (its
/// latest), at most [`MAX_OBSERVATIONS`] reporters, dropped by [`ObservedAddress::expire`] once
/// older than [`OBSERVATION_TTL`] (the core expires them every minute). Votes
/// are counted per reporter IP (per IP and port on loopback, where every local node shares
/// 127.0.0.1), so one host cannot outvote the others with many ports.
#[derive(Clone, Debug, Default)]
pub struct ObservedAddress {
    votes: HashMap<SocketAddrV4, (SocketAddr, Instant)>,
}

impl ObservedAddress {
    /// `reporter` says at `now` that we are `addr`.
    pub fn vote(&mut self, addr: SocketAddr, reporter: SocketAddrV4, now: Instant) {
        if !self.votes.contains_key(&reporter) && self.votes.len() >= MAX_OBSERVATIONS {
            self.expire(now);
            // Still full: the oldest vote makes room (a fresh vote says more).
            if self.votes.len() >= MAX_OBSERVATIONS
                && let Some(oldest) = self.votes.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k)
            {
                self.votes.remove(&oldest);
            }
        }
        self.votes.insert(reporter, (addr, now));
    }

    /// Forgets votes older than [`OBSERVATION_TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.votes
            .retain(|_, (_, at)| now.duration_since(*at) < OBSERVATION_TTL);
    }

    /// Every vote kept, oldest first.
    pub fn observations(&self) -> Vec<Observation> {
        let mut out: Vec<Observation> = self
            .votes
            .iter()
            .map(|(reporter, (observed, at))| Observation {
                reporter: *reporter,
                observed: *observed,
                at: *at,
            })
            .collect();
        out.sort_by_key(|o| (o.at, o.reporter));
        out
    }

    /// Distinct voters (reporter IPs; IP and port on loopback) per value of `key(observed)`.
    fn tally<K: std::hash::Hash + Eq>(
        &self,
        key: impl Fn(&SocketAddr) -> K,
    ) -> HashMap<K, HashSet<SocketAddr>> {
        let mut per: HashMap<K, HashSet<SocketAddr>> = HashMap::new();
        for (reporter, (observed, _)) in &self.votes {
            let voter = if reporter.ip().is_loopback() {
                SocketAddr::V4(*reporter)
            } else {
                SocketAddr::new(std::net::IpAddr::V4(*reporter.ip()), 0)
            };
            per.entry(key(observed)).or_default().insert(voter);
        }
        per
    }

    /// The IP most voters agree on (whatever the port: a symmetric NAT gives each node another
    /// port), with the number of distinct voters.
    pub fn best_ip(&self) -> Option<(std::net::IpAddr, usize)> {
        self.tally(SocketAddr::ip)
            .into_iter()
            .map(|(ip, v)| (ip, v.len()))
            .max_by_key(|(ip, n)| (*n, std::cmp::Reverse(*ip)))
    }

    /// The address most voters agree on, with the number of distinct voters.
    pub fn best(&self) -> Option<(SocketAddr, usize)> {
        self.tally(|a| *a)
            .into_iter()
            .map(|(a, v)| (a, v.len()))
            .max_by_key(|(a, n)| (*n, std::cmp::Reverse(*a)))
    }
}

/// Per-source query counter over fixed windows.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    sources: HashMap<SocketAddr, (Instant, u32)>,
}

impl RateLimiter {
    /// Whether a query from `from` at `now` may be answered.
    pub fn allow(&mut self, from: SocketAddr, now: Instant) -> bool {
        let from = if from.ip().is_loopback() {
            from
        } else {
            SocketAddr::new(from.ip(), 0)
        };
        if !self.sources.contains_key(&from) && self.sources.len() >= MAX_TRACKED_SOURCES {
            self.expire(now);
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                return false;
            }
        }
        let (start, count) = self.sources.entry(from).or_insert((now, 0));
        if now.duration_since(*start) >= RATE_WINDOW {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= MAX_QUERIES_PER_SOURCE
    }

    /// Forgets sources whose window has passed.
    pub fn expire(&mut self, now: Instant) {
        self.sources
            .retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn rate_limit_per_source() {
        let now = Instant::now();
        let mut r = RateLimiter::default();
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        let b = SocketAddr::from(([10, 0, 0, 2], 1));
        for _ in 0..MAX_QUERIES_PER_SOURCE {
            assert!(r.allow(a, now));
        }
        assert!(!r.allow(a, now));
        assert!(r.allow(b, now), "another source is not affected");
        assert!(r.allow(a, now + RATE_WINDOW));
    }

    #[test]
    fn rate_limit_is_per_ip_off_loopback() {
        let now = Instant::now();
        let mut r = RateLimiter::default();
        for port in 0..MAX_QUERIES_PER_SOURCE {
            let p = u16::try_from(port).expect("fits");
            assert!(r.allow(SocketAddr::from(([198, 51, 100, 1], p)), now));
        }
        let other_port = SocketAddr::from(([198, 51, 100, 1], 60_000));
        assert!(
            !r.allow(other_port, now),
            "a new port does not get a new budget"
        );
        assert!(r.allow(SocketAddr::from(([198, 51, 100, 2], 1)), now));
    }

    #[test]
    fn observed_address_counts_distinct_voters_per_ip_and_expires() {
        let now = Instant::now();
        let mut o = ObservedAddress::default();
        let me = SocketAddr::from(([1, 2, 3, 4], 5));
        let liar = SocketAddr::from(([6, 6, 6, 6], 6));
        // Three loopback reporters (counted by port), each voting twice: three votes.
        for i in 0..3u16 {
            o.vote(me, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 100 + i), now);
            o.vote(me, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 100 + i), now);
        }
        // One public host with ten ports is one voter.
        for p in 0..10u16 {
            o.vote(
                liar,
                SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 9), 1000 + p),
                now,
            );
        }
        assert_eq!(o.best(), Some((me, 3)));
        assert_eq!(o.best_ip(), Some((me.ip(), 3)));
        // A reporter's latest vote replaces its earlier one.
        o.vote(liar, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 100), now);
        assert_eq!(o.best(), Some((me, 2)));
        assert_eq!(o.observations().len(), 13);
        // Votes expire.
        o.expire(now + OBSERVATION_TTL);
        assert_eq!(o.best(), None);
        assert!(o.observations().is_empty());
    }

    #[test]
    fn observed_address_keeps_a_bounded_number_of_reporters() {
        let now = Instant::now();
        let mut o = ObservedAddress::default();
        let me = SocketAddr::from(([1, 2, 3, 4], 5));
        for i in 0..(MAX_OBSERVATIONS as u32 + 50) {
            let t = now + Duration::from_millis(u64::from(i));
            let ip = Ipv4Addr::from(0x0a00_0000 + i);
            o.vote(me, SocketAddrV4::new(ip, 1), t);
        }
        assert_eq!(o.votes.len(), MAX_OBSERVATIONS);
        // The newest votes were kept.
        let last = Ipv4Addr::from(0x0a00_0000 + MAX_OBSERVATIONS as u32 + 49);
        assert!(o.votes.contains_key(&SocketAddrV4::new(last, 1)));
    }
}
