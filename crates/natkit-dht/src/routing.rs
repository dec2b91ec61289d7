//! The routing table: k-buckets over the 160-bit XOR space (BEP 5), sans-I/O.
//!
//! Buckets are kept as a list indexed by the length of the prefix a node's id shares with ours:
//! bucket `i` holds nodes sharing exactly `i` leading bits, and the last bucket holds every node
//! sharing at least `len - 1` bits. That last bucket is the one "covering our own id", and it is
//! the only one that splits (BEP 5): when it is full, the nodes sharing one more bit move to a
//! new last bucket.
//!
//! Time is passed in (`now: Instant`); nothing here sends packets. When a full bucket holds a
//! questionable node, [`RoutingTable::heard_from`] says which one to ping ([`Insert::PingFirst`]);
//! the caller pings it and reports the result with [`RoutingTable::heard_from`] or
//! [`RoutingTable::failed`]. The new node waits as the bucket's replacement and takes the
//! questionable node's place once that one turns bad.
//!
//! # Who is told about whom
//!
//! A node that has only sent us queries is *unverified*: its source address may be spoofed, or
//! it may be a short-lived process that is gone. It is kept (so it can be verified later and
//! so it counts as known), but it is never handed to other nodes
//! ([`RoutingTable::closest_good`] names good nodes only, as BEP 5 asks), never asked by our
//! own lookups ([`RoutingTable::closest`] leaves it out), and never pinged: nothing is sent
//! toward it beyond the answers to its queries. It becomes verified by answering one of our
//! queries, or by echoing the address token of one of our answers in a later query
//! ([`Contact::Proof`]). Any node that proved reachable takes an unverified node's place in a
//! full bucket without a ping.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::bencode::{self, Value};
use crate::id::{ID_BYTES, Id, NodeInfo, decode_nodes, encode_nodes};

/// Nodes per bucket. BEP 5 says 8; `mainline` uses 20. natkit uses 8: with α = 3 a lookup
/// terminates once the k closest answered, and the simulation in the DHT notes gives ~4 rounds
/// and ~11 queries per lookup at k = 8 against ~7.5 rounds and ~21 queries at k = 20 for
/// 1,000 nodes, while BEP 44 items are still stored on 8 nodes (libtorrent's choice too).
pub const K: usize = 8;

/// Number of bits in an id, hence the most buckets a table can have.
pub const ID_BITS: usize = ID_BYTES * 8;

/// A node that answered us within this long is good; after this long without activity it is
/// questionable (BEP 5: 15 minutes).
pub const GOOD_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Consecutive failed queries after which a node is bad. BEP 5 says "several"; 2 means a
/// questionable node gets a ping and one retry before it can be evicted.
pub const BAD_AFTER_FAILURES: u32 = 2;

/// A bucket that has not changed for this long is refreshed with a `find_node` on a random id
/// in its range (BEP 5: 15 minutes).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Largest routing-table file accepted by [`SavedTable::load`], in bytes: 160 full buckets of
/// 26-byte compact nodes plus framing is ~33 KiB; anything far larger is not ours.
pub const MAX_TABLE_FILE_BYTES: usize = 64 * 1024;

/// BEP 5 node status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Answered us within [`GOOD_WINDOW`], or answered us once and queried us within it.
    Good,
    /// Not known to be good and not bad.
    Questionable,
    /// Failed [`BAD_AFTER_FAILURES`] queries in a row.
    Bad,
}

/// One routing-table entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The node.
    pub node: NodeInfo,
    /// When it last answered one of our queries.
    pub last_response: Option<Instant>,
    /// When it last sent us a query.
    pub last_query: Option<Instant>,
    /// When we last heard anything from it (or added it).
    pub last_seen: Instant,
    /// Consecutive failed queries.
    pub failures: u32,
    /// Known only from its own queries: it never answered us, and no saved table or third
    /// party named it. See the module docs.
    pub unverified: bool,
    /// The address token its last answer carried (`nkt`; natkit's are
    /// [`crate::server::TOKEN_BYTES`] long, others are not kept), with when it came: echoed in
    /// our next query to it, so that it can verify us. Fixed-size, so a table of 1,000s of
    /// nodes stays small.
    pub their_token: Option<(Instant, [u8; crate::server::TOKEN_BYTES])>,
    /// Whether `their_token` was echoed already.
    pub echoed: bool,
}

impl Entry {
    fn new(node: NodeInfo, now: Instant) -> Self {
        Entry {
            node,
            last_response: None,
            last_query: None,
            last_seen: now,
            failures: 0,
            unverified: false,
            their_token: None,
            echoed: false,
        }
    }

    /// Whether our own queries may go to it: it answered us once, or a saved table or a third
    /// party named it, and it is not bad.
    pub fn askable(&self, now: Instant) -> bool {
        !self.unverified && self.status(now) != Status::Bad
    }

    /// Whether its address token should ride on our next query to it: we have one from the
    /// last 5 minutes (tokens live 5–10) and have not echoed it since.
    pub fn token_to_echo(&self, now: Instant) -> Option<&[u8]> {
        let (at, token) = self.their_token.as_ref()?;
        let fresh = now.duration_since(*at) < crate::server::TOKEN_ROTATION;
        (fresh && !self.echoed).then_some(token.as_slice())
    }

    /// Keeps `token` (from its answer at `now`) to echo, if it is one of natkit's.
    pub fn keep_token(&mut self, token: &[u8], now: Instant) {
        if let Ok(t) = <[u8; crate::server::TOKEN_BYTES]>::try_from(token) {
            self.their_token = Some((now, t));
            self.echoed = false;
        }
    }

    /// The node's BEP 5 status at `now`.
    pub fn status(&self, now: Instant) -> Status {
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < GOOD_WINDOW);
        if self.failures >= BAD_AFTER_FAILURES {
            Status::Bad
        } else if recent(self.last_response)
            || (self.last_response.is_some() && recent(self.last_query))
        {
            Status::Good
        } else {
            Status::Questionable
        }
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    entries: Vec<Entry>,
    /// A node waiting for a questionable entry to turn bad.
    replacement: Option<NodeInfo>,
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            entries: Vec::with_capacity(K),
            replacement: None,
            last_changed: now,
        }
    }
}

/// How a node was heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// It answered one of our queries: proof that it is reachable.
    Response,
    /// It sent us a query (not read-only): added as unverified until it answers us.
    Query,
    /// It sent us a query that echoed the address token of one of our answers: as good as an
    /// answer (it receives what we send to its address, and it is alive).
    Proof,
    /// Learnt from a third party (a `nodes` list or a saved table): added as questionable.
    Hearsay,
}

/// What [`RoutingTable::heard_from`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// The node was added.
    Added,
    /// The node was already there; its timestamps were updated.
    Updated,
    /// The node took the place of this bad node.
    Replaced(NodeInfo),
    /// The bucket is full but holds this questionable node: ping it. The new node waits as the
    /// bucket's replacement and gets in if the questionable one turns bad.
    PingFirst(NodeInfo),
    /// The bucket is full of good nodes (or the node is not one we accept): dropped.
    Dropped,
}

/// Why a routing-table file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TableFileError {
    /// Reading or writing the file failed.
    #[error("routing table file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is larger than [`MAX_TABLE_FILE_BYTES`].
    #[error("routing table file is {len} bytes, over the {MAX_TABLE_FILE_BYTES}-byte limit")]
    TooBig {
        /// Its length.
        len: usize,
    },
    /// The file is not a bencoded `{id, nodes}` dictionary.
    #[error("routing table file is malformed: {0}")]
    Malformed(&'static str),
}

/// The saved form of a table: our id and the nodes it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedTable {
    /// Our node id.
    pub id: Id,
    /// The nodes, closest buckets last.
    pub nodes: Vec<NodeInfo>,
}

impl SavedTable {
    /// Bencodes as `d2:id20:<id>5:nodes<compact nodes>e`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut d = std::collections::BTreeMap::new();
        d.insert(b"id".to_vec(), Value::Bytes(self.id.0.to_vec()));
        d.insert(b"nodes".to_vec(), Value::Bytes(encode_nodes(&self.nodes)));
        bencode::emit(&Value::Dict(d))
    }

    /// Parses what [`SavedTable::to_bytes`] wrote; anything else is a typed error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TableFileError> {
        if bytes.len() > MAX_TABLE_FILE_BYTES {
            return Err(TableFileError::TooBig { len: bytes.len() });
        }
        let value =
            bencode::parse(bytes).map_err(|_| TableFileError::Malformed("not valid bencode"))?;
        let id = value
            .get(b"id")
            .and_then(Value::as_bytes)
            .and_then(Id::from_slice)
            .ok_or(TableFileError::Malformed("no 20-byte `id`"))?;
        let nodes = value
            .get(b"nodes")
            .and_then(Value::as_bytes)
            .ok_or(TableFileError::Malformed("no `nodes` string"))?;
        let nodes = decode_nodes(nodes)
            .map_err(|_| TableFileError::Malformed("`nodes` is not a list of 26-byte nodes"))?;
        Ok(SavedTable { id, nodes })
    }

    /// Writes the table to `path` (through a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<(), TableFileError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_bytes())?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Reads a table saved by [`SavedTable::save`].
    pub fn load(path: &Path) -> Result<Self, TableFileError> {
        let len = std::fs::metadata(path)?.len();
        if len > MAX_TABLE_FILE_BYTES as u64 {
            return Err(TableFileError::TooBig {
                len: usize::try_from(len).unwrap_or(usize::MAX),
            });
        }
        Self::from_bytes(&std::fs::read(path)?)
    }
}

/// A BEP 5 routing table around our own id.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: Id,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table for `own` id.
    pub fn new(own: Id, now: Instant) -> Self {
        RoutingTable {
            own,
            buckets: vec![Bucket::new(now)],
        }
    }

    /// Our id.
    pub fn own_id(&self) -> Id {
        self.own
    }

    /// Number of nodes held.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// True when no node is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buckets (1 + number of splits).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Every entry, farthest bucket first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// The entry for `id`, if held.
    pub fn get(&self, id: &Id) -> Option<&Entry> {
        let b = self.bucket_of(id)?;
        self.buckets
            .get(b)?
            .entries
            .iter()
            .find(|e| e.node.id == *id)
    }

    fn bucket_of(&self, id: &Id) -> Option<usize> {
        if *id == self.own {
            return None;
        }
        let shared = usize::try_from(self.own.distance(id).leading_zeros()).ok()?;
        Some(shared.min(self.buckets.len() - 1))
    }

    /// Records that `node` was heard from at `now` and adds it if there is room (BEP 5 rules).
    /// Our own id is never added; callers must not pass read-only (BEP 43) senders.
    ///
    /// Only a node that proved reachable ([`Contact::Response`], [`Contact::Proof`]) may push
    /// another out of a full bucket: an unverified node at once, a questionable one after a
    /// ping ([`Insert::PingFirst`]). A mere query never causes a ping.
    pub fn heard_from(&mut self, node: NodeInfo, contact: Contact, now: Instant) -> Insert {
        let Some(mut b) = self.bucket_of(&node.id) else {
            return Insert::Dropped;
        };
        // One entry per address: a sender cycling through ids cannot fill the table.
        if self
            .entries()
            .any(|e| e.node.addr == node.addr && e.node.id != node.id)
        {
            return Insert::Dropped;
        }
        let proven = matches!(contact, Contact::Response | Contact::Proof);
        loop {
            let count = self.buckets.len();
            let bucket = &mut self.buckets[b];
            if let Some(e) = bucket.entries.iter_mut().find(|e| e.node.id == node.id) {
                if e.node.addr != node.addr {
                    // Same id from a new address: only proof of reachability may move it,
                    // and only once the old address stopped answering.
                    if !proven || e.status(now) == Status::Good {
                        return Insert::Dropped;
                    }
                    e.node.addr = node.addr;
                    e.their_token = None;
                    e.echoed = false;
                }
                match contact {
                    Contact::Response | Contact::Proof => {
                        e.last_response = Some(now);
                        e.failures = 0;
                        e.last_seen = now;
                        e.unverified = false;
                    }
                    Contact::Query => {
                        e.last_query = Some(now);
                        e.last_seen = now;
                    }
                    Contact::Hearsay => {}
                }
                bucket.last_changed = now;
                return Insert::Updated;
            }
            let mut entry = Entry::new(node, now);
            match contact {
                Contact::Response | Contact::Proof => entry.last_response = Some(now),
                Contact::Query => {
                    entry.last_query = Some(now);
                    entry.unverified = true;
                }
                Contact::Hearsay => {}
            }
            if bucket.entries.len() < K {
                bucket.entries.push(entry);
                bucket.last_changed = now;
                return Insert::Added;
            }
            if b == count - 1 && count < ID_BITS {
                self.split();
                b = self.bucket_of(&node.id).unwrap_or(b);
                continue;
            }
            let bad = bucket
                .entries
                .iter()
                .position(|e| e.status(now) == Status::Bad);
            // A node that proved reachable takes the place of one that never did.
            let unverified = || {
                bucket
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.unverified)
                    .min_by_key(|(_, e)| e.last_seen)
                    .map(|(i, _)| i)
            };
            let evict = bad.or_else(|| if proven { unverified() } else { None });
            if let Some(i) = evict {
                let old = std::mem::replace(&mut bucket.entries[i], entry);
                bucket.last_changed = now;
                return Insert::Replaced(old.node);
            }
            if !proven {
                return Insert::Dropped;
            }
            let questionable = bucket
                .entries
                .iter()
                .filter(|e| e.status(now) == Status::Questionable)
                .min_by_key(|e| e.last_seen);
            return match questionable {
                Some(q) => {
                    let q = q.node;
                    bucket.replacement = Some(node);
                    Insert::PingFirst(q)
                }
                None => Insert::Dropped,
            };
        }
    }

    fn split(&mut self) {
        let last = self.buckets.len() - 1;
        let own = self.own;
        let now = self.buckets[last].last_changed;
        let mut new = Bucket::new(now);
        let old = &mut self.buckets[last];
        let (stay, go): (Vec<Entry>, Vec<Entry>) = old
            .entries
            .drain(..)
            .partition(|e| own.distance(&e.node.id).leading_zeros() as usize == last);
        old.entries = stay;
        new.entries = go;
        self.buckets.push(new);
    }

    /// Records a failed query to `id` at `now`. If that makes it bad and its bucket has a
    /// replacement waiting, the replacement takes its place (returned).
    pub fn failed(&mut self, id: &Id, now: Instant) -> Option<NodeInfo> {
        let b = self.bucket_of(id)?;
        let bucket = self.buckets.get_mut(b)?;
        let i = bucket.entries.iter().position(|e| e.node.id == *id)?;
        bucket.entries[i].failures = bucket.entries[i].failures.saturating_add(1);
        if bucket.entries[i].status(now) == Status::Bad
            && let Some(rep) = bucket.replacement.take()
        {
            bucket.entries[i] = Entry::new(rep, now);
            bucket.last_changed = now;
            return Some(rep);
        }
        None
    }

    /// Removes `id` (e.g. a node that answered with a different id).
    pub fn remove(&mut self, id: &Id) -> Option<NodeInfo> {
        let b = self.bucket_of(id)?;
        let bucket = self.buckets.get_mut(b)?;
        let i = bucket.entries.iter().position(|e| e.node.id == *id)?;
        Some(bucket.entries.remove(i).node)
    }

    /// Good nodes in the bucket that `id` falls in, or `None` when that is the bucket around
    /// our own id (it splits instead of filling up, so "full" means nothing there).
    pub fn good_in_bucket(&self, id: &Id, now: Instant) -> Option<usize> {
        let b = self.bucket_of(id)?;
        if b + 1 == self.buckets.len() {
            return None;
        }
        let good = self.buckets[b]
            .entries
            .iter()
            .filter(|e| e.status(now) == Status::Good);
        Some(good.count())
    }

    /// Up to `n` nodes closest to `target` that our own queries may go to ([`Entry::askable`]:
    /// not bad, and not known only from their own queries), closest first.
    pub fn closest(&self, target: &Id, n: usize, now: Instant) -> Vec<NodeInfo> {
        self.closest_where(target, n, |e| e.askable(now))
    }

    /// Up to `n` good nodes closest to `target` (they answered us, or proved their address,
    /// within [`GOOD_WINDOW`]), closest first: what we tell other nodes (BEP 5: "the K closest
    /// good nodes"). A node known only from its queries may have sent them from a spoofed
    /// address or be gone; handing it out would have others send to it on a stranger's word.
    pub fn closest_good(&self, target: &Id, n: usize, now: Instant) -> Vec<NodeInfo> {
        self.closest_where(target, n, |e| e.status(now) == Status::Good)
    }

    fn closest_where(&self, target: &Id, n: usize, keep: impl Fn(&Entry) -> bool) -> Vec<NodeInfo> {
        let mut all: Vec<NodeInfo> = self.entries().filter(|e| keep(e)).map(|e| e.node).collect();
        all.sort_by_key(|node| target.distance(&node.id));
        all.truncate(n);
        all
    }

    /// The entry for `id`, to record what we sent it.
    pub fn get_mut(&mut self, id: &Id) -> Option<&mut Entry> {
        let b = self.bucket_of(id)?;
        self.buckets
            .get_mut(b)?
            .entries
            .iter_mut()
            .find(|e| e.node.id == *id)
    }

    /// Nodes that are questionable at `now`, least recently seen first (to ping).
    pub fn questionable(&self, now: Instant) -> Vec<NodeInfo> {
        let mut q: Vec<&Entry> = self
            .entries()
            .filter(|e| !e.unverified && e.status(now) == Status::Questionable)
            .collect();
        q.sort_by_key(|e| e.last_seen);
        q.into_iter().map(|e| e.node).collect()
    }

    /// Indices of buckets not changed for [`REFRESH_INTERVAL`] at `now`.
    pub fn buckets_to_refresh(&self, now: Instant) -> Vec<usize> {
        (0..self.buckets.len())
            .filter(|&i| now.duration_since(self.buckets[i].last_changed) >= REFRESH_INTERVAL)
            .collect()
    }

    /// When the next bucket refresh is due.
    pub fn next_refresh(&self) -> Instant {
        self.buckets
            .iter()
            .map(|b| b.last_changed + REFRESH_INTERVAL)
            .min()
            .unwrap_or_else(Instant::now)
    }

    /// A target in bucket `index`'s range built from `random` bytes, and marks the bucket as
    /// refreshed at `now` (the caller then runs `find_node` on it).
    pub fn refresh_target(&mut self, index: usize, random: [u8; ID_BYTES], now: Instant) -> Id {
        let last = self.buckets.len() - 1;
        if let Some(b) = self.buckets.get_mut(index) {
            b.last_changed = now;
        }
        if index < last {
            id_sharing_prefix(&self.own, index, random)
        } else {
            let mut out = random;
            for bit in 0..index.min(ID_BITS) {
                set_bit(&mut out, bit, get_bit(&self.own.0, bit));
            }
            Id(out)
        }
    }

    /// The table's saved form: the nodes that ever answered us (unverified ones are left out).
    pub fn to_saved(&self) -> SavedTable {
        SavedTable {
            id: self.own,
            nodes: self
                .entries()
                .filter(|e| !e.unverified)
                .map(|e| e.node)
                .collect(),
        }
    }

    /// A table from a saved form: its nodes come back questionable (they must answer again
    /// before they count as good).
    pub fn from_saved(saved: &SavedTable, now: Instant) -> Self {
        let mut t = RoutingTable::new(saved.id, now);
        for n in &saved.nodes {
            t.heard_from(*n, Contact::Hearsay, now);
        }
        t
    }
}

/// An id sharing exactly `len` leading bits with `own` (the rest from `random`): a target in
/// the bucket at that prefix length. `len` ≥ 160 gives `own`'s prefix on every bit.
pub fn id_sharing_prefix(own: &Id, len: usize, random: [u8; ID_BYTES]) -> Id {
    let mut out = random;
    for bit in 0..len.min(ID_BITS) {
        set_bit(&mut out, bit, get_bit(&own.0, bit));
    }
    if len < ID_BITS {
        set_bit(&mut out, len, !get_bit(&own.0, len));
    }
    Id(out)
}

fn get_bit(bytes: &[u8; ID_BYTES], bit: usize) -> bool {
    bytes[bit / 8] & (0x80 >> (bit % 8)) != 0
}

fn set_bit(bytes: &mut [u8; ID_BYTES], bit: usize, on: bool) {
    if on {
        bytes[bit / 8] |= 0x80 >> (bit % 8);
    } else {
        bytes[bit / 8] &= !(0x80 >> (bit % 8));
    }
}

/// A node on 127.0.0.1 with `port`, for tests and examples.
pub fn loopback_node(id: Id, port: u16) -> NodeInfo {
    NodeInfo {
        id,
        addr: SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port),
    }
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
