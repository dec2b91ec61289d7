//! What a DHT node stores for others: peers announced for info-hashes (BEP 5) and BEP 44 items,
//! with limits and expiry. Sans-I/O: every call takes `now`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::bencode::Value;
use crate::bep44::{Bep44Error, MutableItem};
use crate::id::Id;

/// Most info-hashes with announced peers held at once (same as `mainline`'s server). When full,
/// the info-hash whose newest announce is oldest is forgotten.
pub const MAX_INFO_HASHES: usize = 2000;

/// Most peers kept per info-hash; when full, the oldest announce is replaced.
pub const MAX_PEERS_PER_INFO_HASH: usize = 100;

/// Most peers sent in one `get_peers` response: 50 compact IPv4 peers are ~400 bytes of
/// `values`, which keeps the datagram under BEP 32's 1024-byte guideline with the token and
/// nodes.
pub const MAX_PEERS_PER_RESPONSE: usize = 50;

/// How long an announced peer is kept. BitTorrent clients re-announce every 15–30 minutes and
/// libtorrent forgets peers after 30 minutes; natkit keeps them twice that long so a peer that
/// misses one re-announce is not lost.
pub const PEER_TTL: Duration = Duration::from_secs(60 * 60);

/// Most BEP 44 items (immutable plus mutable) held at once. At ≤ 1000 bytes each this bounds
/// item storage to a few MiB. When full, the item stored longest ago is evicted.
pub const MAX_ITEMS: usize = 2000;

/// How long a BEP 44 item is kept without a re-put (BEP 44: items may expire after 2 hours;
/// publishers republish hourly).
pub const ITEM_TTL: Duration = Duration::from_secs(2 * 60 * 60);

/// A stored BEP 44 item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// An immutable value (its target is SHA-1 of its encoding).
    Immutable(Value),
    /// A signed mutable item.
    Mutable(MutableItem),
}

#[derive(Clone, Debug)]
struct Stored {
    item: Item,
    stored_at: Instant,
}

/// Peers and items stored for others.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    peers: HashMap<Id, Vec<(SocketAddr, Instant)>>,
    items: HashMap<Id, Stored>,
}

impl Storage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `peer` for `info_hash` at `now`.
    pub fn announce(&mut self, info_hash: Id, peer: SocketAddr, now: Instant) {
        if !self.peers.contains_key(&info_hash) && self.peers.len() >= MAX_INFO_HASHES {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, ps)| ps.iter().map(|(_, t)| *t).max())
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.peers.remove(&k);
            }
        }
        let list = self.peers.entry(info_hash).or_default();
        if let Some(p) = list.iter_mut().find(|(a, _)| *a == peer) {
            p.1 = now;
            return;
        }
        if list.len() >= MAX_PEERS_PER_INFO_HASH
            && let Some(i) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
        {
            list.swap_remove(i);
        }
        list.push((peer, now));
    }

    /// Up to [`MAX_PEERS_PER_RESPONSE`] unexpired peers for `info_hash`, newest first.
    pub fn peers(&self, info_hash: &Id, now: Instant) -> Vec<SocketAddr> {
        let Some(list) = self.peers.get(info_hash) else {
            return Vec::new();
        };
        let mut live: Vec<&(SocketAddr, Instant)> = list
            .iter()
            .filter(|(_, t)| now.duration_since(*t) < PEER_TTL)
            .collect();
        live.sort_by_key(|p| std::cmp::Reverse(p.1));
        live.into_iter()
            .take(MAX_PEERS_PER_RESPONSE)
            .map(|(a, _)| *a)
            .collect()
    }

    /// The unexpired item under `target`.
    pub fn get(&self, target: &Id, now: Instant) -> Option<&Item> {
        self.items
            .get(target)
            .filter(|s| now.duration_since(s.stored_at) < ITEM_TTL)
            .map(|s| &s.item)
    }

    /// Stores an immutable value under `target` (the caller checked `target` = SHA-1(v)).
    pub fn put_immutable(&mut self, target: Id, v: Value, now: Instant) {
        self.insert(target, Item::Immutable(v), now);
    }

    /// Stores a verified mutable item under its target, applying BEP 44's rules against what is
    /// stored: `cas` must equal the stored `seq` (301), `seq` may not go down (302), and an equal
    /// `seq` is accepted only with the same value (which resets the timer).
    pub fn put_mutable(
        &mut self,
        target: Id,
        item: MutableItem,
        cas: Option<i64>,
        now: Instant,
    ) -> Result<(), Bep44Error> {
        if let Some(Stored {
            item: Item::Mutable(old),
            stored_at,
        }) = self.items.get(&target)
            && now.duration_since(*stored_at) < ITEM_TTL
        {
            if let Some(cas) = cas
                && cas != old.seq
            {
                return Err(Bep44Error::CasMismatch {
                    cas,
                    stored: old.seq,
                });
            }
            if item.seq < old.seq || (item.seq == old.seq && item.v != old.v) {
                return Err(Bep44Error::SeqTooLow {
                    seq: item.seq,
                    stored: old.seq,
                });
            }
        }
        self.insert(target, Item::Mutable(item), now);
        Ok(())
    }

    fn insert(&mut self, target: Id, item: Item, now: Instant) {
        if !self.items.contains_key(&target) && self.items.len() >= MAX_ITEMS {
            let oldest = self
                .items
                .iter()
                .min_by_key(|(_, s)| s.stored_at)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.items.remove(&k);
            }
        }
        self.items.insert(
            target,
            Stored {
                item,
                stored_at: now,
            },
        );
    }

    /// Drops expired peers and items.
    pub fn expire(&mut self, now: Instant) {
        self.items
            .retain(|_, s| now.duration_since(s.stored_at) < ITEM_TTL);
        for list in self.peers.values_mut() {
            list.retain(|(_, t)| now.duration_since(*t) < PEER_TTL);
        }
        self.peers.retain(|_, l| !l.is_empty());
    }

    /// Number of stored items.
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Number of info-hashes with peers.
    pub fn info_hash_count(&self) -> usize {
        self.peers.len()
    }
}
