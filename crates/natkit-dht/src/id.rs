//! 160-bit node ids and targets, XOR distance, and the compact node/peer encodings of BEP 5
//! and BEP 32.
//!
//! Compact formats (all big-endian):
//! - peer: 4-byte IPv4 + 2-byte port ([`COMPACT_PEER_V4_BYTES`]), or 16 + 2 for IPv6
//!   ([`COMPACT_PEER_V6_BYTES`]);
//! - node: 20-byte id followed by the compact peer: 26 bytes for IPv4 (`nodes`), 38 for IPv6
//!   (`nodes6`).

use std::cmp::Ordering;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Length of a node id, info-hash or BEP 44 target, in bytes (SHA-1 sized).
pub const ID_BYTES: usize = 20;
/// Length of a compact IPv4 peer (`ip ‖ port`), in bytes.
pub const COMPACT_PEER_V4_BYTES: usize = 6;
/// Length of a compact IPv6 peer (`ip ‖ port`), in bytes.
pub const COMPACT_PEER_V6_BYTES: usize = 18;
/// Length of a compact IPv4 node (`id ‖ ip ‖ port`), in bytes.
pub const COMPACT_NODE_V4_BYTES: usize = ID_BYTES + COMPACT_PEER_V4_BYTES;
/// Length of a compact IPv6 node (`id ‖ ip ‖ port`), in bytes.
pub const COMPACT_NODE_V6_BYTES: usize = ID_BYTES + COMPACT_PEER_V6_BYTES;

/// A 160-bit DHT key: a node id, an info-hash or a BEP 44 target.
///
/// `Ord` is plain big-endian byte order; to order by closeness to a target, sort by
/// [`Id::distance`] (a [`Distance`] orders numerically).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; ID_BYTES]);

impl Id {
    /// The id held in `bytes`, if it is exactly [`ID_BYTES`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Id)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    /// XOR distance between `self` and `other`.
    pub fn distance(&self, other: &Id) -> Distance {
        let mut d = [0u8; ID_BYTES];
        for (out, (a, b)) in d.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *out = a ^ b;
        }
        Distance(d)
    }

    /// Orders `a` and `b` by their distance to `self` (closest first), for
    /// `nodes.sort_by(|a, b| target.cmp_distance(&a.id, &b.id))`.
    pub fn cmp_distance(&self, a: &Id, b: &Id) -> Ordering {
        self.distance(a).cmp(&self.distance(b))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 40 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != ID_BYTES * 2 {
            return None;
        }
        let mut id = [0u8; ID_BYTES];
        for (out, pair) in id.iter_mut().zip(bytes.chunks_exact(2)) {
            let s = std::str::from_utf8(pair).ok()?;
            *out = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Id(id))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The XOR of two ids, ordered as a 160-bit unsigned integer (smaller is closer).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Distance(pub [u8; ID_BYTES]);

impl Distance {
    /// Number of leading zero bits: the length of the prefix the two ids share (160 when equal).
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for b in self.0 {
            if b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }

    /// The routing-table bucket this distance falls in: `i` such that `2^i ≤ distance < 2^(i+1)`,
    /// so 159 for the far half of the id space and 0 for the single closest id. `None` for
    /// distance zero (the id itself).
    pub fn bucket_index(&self) -> Option<usize> {
        let lz = usize::try_from(self.leading_zeros()).ok()?;
        (ID_BYTES * 8).checked_sub(lz + 1)
    }
}

/// A node as carried in `nodes`: its id and IPv4 address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NodeInfo {
    /// The node's id.
    pub id: Id,
    /// Where it answers.
    pub addr: SocketAddrV4,
}

/// A node as carried in `nodes6` (BEP 32): its id and IPv6 address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NodeInfo6 {
    /// The node's id.
    pub id: Id,
    /// Where it answers (flow info and scope id are not carried and read back as 0).
    pub addr: SocketAddrV6,
}

/// A compact field whose length is not a multiple of its record size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compact field is {len} bytes, not a multiple of {record} (or a valid size)")]
pub struct CompactError {
    /// Length of the field.
    pub len: usize,
    /// Expected record size.
    pub record: usize,
}

/// Encodes an IPv4 peer in 6 bytes.
pub fn encode_peer_v4(addr: &SocketAddrV4) -> [u8; COMPACT_PEER_V4_BYTES] {
    let mut out = [0u8; COMPACT_PEER_V4_BYTES];
    let (ip, port) = out.split_at_mut(4);
    ip.copy_from_slice(&addr.ip().octets());
    port.copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// Encodes an IPv6 peer in 18 bytes.
pub fn encode_peer_v6(addr: &SocketAddrV6) -> [u8; COMPACT_PEER_V6_BYTES] {
    let mut out = [0u8; COMPACT_PEER_V6_BYTES];
    let (ip, port) = out.split_at_mut(16);
    ip.copy_from_slice(&addr.ip().octets());
    port.copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// Encodes a peer in 6 (IPv4) or 18 (IPv6) bytes.
pub fn encode_peer(addr: &SocketAddr) -> Vec<u8> {
    match addr {
        SocketAddr::V4(a) => encode_peer_v4(a).to_vec(),
        SocketAddr::V6(a) => encode_peer_v6(a).to_vec(),
    }
}

/// Decodes a 6-byte IPv4 peer.
pub fn decode_peer_v4(bytes: &[u8]) -> Option<SocketAddrV4> {
    let b: &[u8; COMPACT_PEER_V4_BYTES] = bytes.try_into().ok()?;
    let [a, b2, c, d, p0, p1] = *b;
    Some(SocketAddrV4::new(
        Ipv4Addr::new(a, b2, c, d),
        u16::from_be_bytes([p0, p1]),
    ))
}

/// Decodes an 18-byte IPv6 peer.
pub fn decode_peer_v6(bytes: &[u8]) -> Option<SocketAddrV6> {
    let (ip, port) = bytes.split_first_chunk::<16>()?;
    let port: &[u8; 2] = port.try_into().ok()?;
    Some(SocketAddrV6::new(
        Ipv6Addr::from(*ip),
        u16::from_be_bytes(*port),
        0,
        0,
    ))
}

/// Decodes a peer of 6 (IPv4) or 18 (IPv6) bytes.
pub fn decode_peer(bytes: &[u8]) -> Option<SocketAddr> {
    match bytes.len() {
        COMPACT_PEER_V4_BYTES => decode_peer_v4(bytes).map(SocketAddr::V4),
        COMPACT_PEER_V6_BYTES => decode_peer_v6(bytes).map(SocketAddr::V6),
        _ => None,
    }
}

/// Encodes IPv4 nodes as the concatenation of 26-byte records (`nodes`).
pub fn encode_nodes(nodes: &[NodeInfo]) -> Vec<u8> {
    encode_records(nodes, COMPACT_NODE_V4_BYTES, |n| {
        (n.id, encode_peer_v4(&n.addr).to_vec())
    })
}

/// Decodes a `nodes` field: 26-byte records.
pub fn decode_nodes(bytes: &[u8]) -> Result<Vec<NodeInfo>, CompactError> {
    decode_records(bytes, COMPACT_NODE_V4_BYTES, |id, peer| {
        Some(NodeInfo {
            id,
            addr: decode_peer_v4(peer)?,
        })
    })
}

/// Encodes IPv6 nodes as the concatenation of 38-byte records (`nodes6`).
pub fn encode_nodes6(nodes: &[NodeInfo6]) -> Vec<u8> {
    encode_records(nodes, COMPACT_NODE_V6_BYTES, |n| {
        (n.id, encode_peer_v6(&n.addr).to_vec())
    })
}

/// Decodes a `nodes6` field: 38-byte records.
pub fn decode_nodes6(bytes: &[u8]) -> Result<Vec<NodeInfo6>, CompactError> {
    decode_records(bytes, COMPACT_NODE_V6_BYTES, |id, peer| {
        Some(NodeInfo6 {
            id,
            addr: decode_peer_v6(peer)?,
        })
    })
}

/// The compact node-list codec of both families: records of `record` bytes, each an id
/// and a compact peer.
fn encode_records<N>(nodes: &[N], record: usize, parts: impl Fn(&N) -> (Id, Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * record);
    for n in nodes {
        let (id, peer) = parts(n);
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&peer);
    }
    out
}

fn decode_records<N>(
    bytes: &[u8],
    record: usize,
    make: impl Fn(Id, &[u8]) -> Option<N>,
) -> Result<Vec<N>, CompactError> {
    let err = CompactError {
        len: bytes.len(),
        record,
    };
    let chunks = bytes.chunks_exact(record);
    if !chunks.remainder().is_empty() {
        return Err(err);
    }
    chunks
        .map(|c| {
            let (id, peer) = c.split_at_checked(ID_BYTES).ok_or(err.clone())?;
            let id = Id::from_slice(id).ok_or(err.clone())?;
            make(id, peer).ok_or(err.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_with(first: u8, last: u8) -> Id {
        let mut b = [0u8; ID_BYTES];
        b[0] = first;
        b[19] = last;
        Id(b)
    }

    #[test]
    fn distance_and_buckets() {
        let a = id_with(0, 0);
        assert_eq!(a.distance(&a).leading_zeros(), 160);
        assert_eq!(a.distance(&a).bucket_index(), None);
        assert_eq!(a.distance(&id_with(0x80, 0)).bucket_index(), Some(159));
        assert_eq!(a.distance(&id_with(0x01, 0)).bucket_index(), Some(152));
        assert_eq!(a.distance(&id_with(0, 1)).bucket_index(), Some(0));
        assert_eq!(a.distance(&id_with(0, 1)).leading_zeros(), 159);
        let target = id_with(0x10, 0);
        let mut ids = vec![id_with(0xff, 0), id_with(0x11, 0), id_with(0x10, 5)];
        ids.sort_by(|x, y| target.cmp_distance(x, y));
        assert_eq!(
            ids,
            vec![id_with(0x10, 5), id_with(0x11, 0), id_with(0xff, 0)]
        );
    }

    #[test]
    fn hex_round_trip() {
        let id = Id::from_hex("e5f96f6f38320f0f33959cb4d3d656452117aadb").unwrap();
        assert_eq!(id.to_hex(), "e5f96f6f38320f0f33959cb4d3d656452117aadb");
        assert_eq!(Id::from_hex("e5"), None);
        assert_eq!(Id::from_hex(&"zz".repeat(20)), None);
    }

    #[test]
    fn compact_peers_and_nodes() {
        let p4: SocketAddrV4 = "1.2.3.4:6881".parse().unwrap();
        assert_eq!(encode_peer_v4(&p4), [1, 2, 3, 4, 0x1a, 0xe1]);
        assert_eq!(
            decode_peer(&encode_peer(&SocketAddr::V4(p4))),
            Some(SocketAddr::V4(p4))
        );
        let p6: SocketAddrV6 = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(
            decode_peer(&encode_peer(&SocketAddr::V6(p6))),
            Some(SocketAddr::V6(p6))
        );
        assert_eq!(decode_peer(&[0; 7]), None);

        let nodes = vec![
            NodeInfo {
                id: id_with(1, 2),
                addr: p4,
            },
            NodeInfo {
                id: id_with(3, 4),
                addr: "9.9.9.9:1".parse().unwrap(),
            },
        ];
        let enc = encode_nodes(&nodes);
        assert_eq!(enc.len(), 52);
        assert_eq!(decode_nodes(&enc), Ok(nodes));
        assert_eq!(
            decode_nodes(&enc[..51]),
            Err(CompactError {
                len: 51,
                record: 26
            })
        );
        assert_eq!(decode_nodes(&[]), Ok(vec![]));

        let nodes6 = vec![NodeInfo6 {
            id: id_with(5, 6),
            addr: p6,
        }];
        let enc6 = encode_nodes6(&nodes6);
        assert_eq!(enc6.len(), 38);
        assert_eq!(decode_nodes6(&enc6), Ok(nodes6));
        assert!(decode_nodes6(&enc).is_err());
    }
}
