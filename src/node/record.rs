//! A node's own UNL, and its record in the DHT: a BEP 44 mutable item signed
//! by the node's key, under the salt [`UNL_SALT`], whose value is the UNL's
//! binary form (signed too).
//!
//! Anyone with the node id can fetch it (`get_mutable(node id, "unl")`); the
//! DHT checks the item's signature, [`decode_record`] checks that the UNL in
//! it is signed by, and is the UNL of, that same node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use natkit_dht::Value;
use natkit_dht::bep44::{Bep44Error, MutableItem};
use natkit_identity::{Keypair, NodeId};
use natkit_unl::{AddrSource, MAX_ADDRS, NatType, Unl, UnlError};

/// The BEP 44 salt of a node's UNL record.
pub const UNL_SALT: &[u8] = b"unl";

/// Why a DHT record is not a usable UNL of the node it was fetched for.
///
/// ```
/// use natkit::node::RecordError;
///
/// assert!(RecordError::Unsigned.to_string().contains("not signed"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The item is stored under another key than the node id.
    #[error("the item is signed by another key")]
    WrongKey,
    /// The item's value is not a byte string.
    #[error("the item's value is not a byte string")]
    NotBytes,
    /// The bytes are not a valid UNL.
    #[error("not a UNL: {0}")]
    Unl(#[from] UnlError),
    /// The UNL is another node's.
    #[error("it holds the UNL of another node ({0})")]
    OtherNode(NodeId),
    /// The UNL carries no signature.
    #[error("the UNL in it is not signed")]
    Unsigned,
}

/// The DHT record for `unl` (which should be signed), signed with `key` at
/// `seq`.
///
/// ```
/// use natkit::identity::Keypair;
/// use natkit::node::{decode_record, unl_record};
/// use natkit::unl::Unl;
///
/// let key = Keypair::from_seed([5; 32]);
/// let mut unl = Unl::new(key.node_id());
/// unl.sign(&key).unwrap();
/// let item = unl_record(&key, &unl, 1).unwrap();
/// assert_eq!(decode_record(&key.node_id(), &item).unwrap(), unl);
/// ```
pub fn unl_record(key: &Keypair, unl: &Unl, seq: i64) -> Result<MutableItem, Bep44Error> {
    MutableItem::sign(key.signing_key(), UNL_SALT, seq, Value::Bytes(unl.encode()))
}

/// The UNL in a record fetched for `node_id`, checked: stored under that key,
/// a signed UNL of that node. (The DHT has verified the item's own signature.)
///
/// ```
/// use natkit::identity::Keypair;
/// use natkit::node::{RecordError, decode_record, unl_record};
/// use natkit::unl::Unl;
///
/// let key = Keypair::from_seed([5; 32]);
/// let unsigned = Unl::new(key.node_id());
/// let item = unl_record(&key, &unsigned, 1).unwrap();
/// assert_eq!(decode_record(&key.node_id(), &item), Err(RecordError::Unsigned));
/// ```
pub fn decode_record(node_id: &NodeId, item: &MutableItem) -> Result<Unl, RecordError> {
    if item.k != *node_id.as_bytes() {
        return Err(RecordError::WrongKey);
    }
    let Value::Bytes(bytes) = &item.v else {
        return Err(RecordError::NotBytes);
    };
    let unl = Unl::decode(bytes)?;
    if unl.node_id != *node_id {
        return Err(RecordError::OtherNode(unl.node_id));
    }
    if !unl.verify()? {
        return Err(RecordError::Unsigned);
    }
    Ok(unl)
}

/// The IPv4 addresses to list as LAN addresses for a node bound to `bind_ip`:
/// that address itself, or for `0.0.0.0` the addresses of the local interfaces
/// that are up (loopback only when there is nothing else), at most
/// [`MAX_ADDRS`]` - 1` (one place is kept for the observed address).
pub(crate) fn lan_ips(bind_ip: IpAddr) -> Vec<IpAddr> {
    if !bind_ip.is_unspecified() {
        return vec![bind_ip];
    }
    let mut ips: Vec<IpAddr> = netdev::get_interfaces()
        .into_iter()
        .filter(|i| i.is_up() && !i.is_loopback())
        .flat_map(|i| i.ipv4.into_iter().map(|net| IpAddr::V4(net.addr())))
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    ips.sort();
    ips.dedup();
    ips.truncate(MAX_ADDRS - 1);
    if ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    ips
}

/// The node's UNL, unsigned and without timestamp: its LAN addresses with
/// `port`, and the address the DHT saw us at, if known. When that address is
/// one of our own, there is no NAT: the NAT type is `open`, which the planner
/// takes as reachable.
///
/// The DHT sees our UDP mapping; the UNL's addresses are for TCP. They agree
/// without NAT and behind port-preserving NATs; elsewhere the TCP address the
/// peers of our connections saw (`Connection::observed_addr`) and the NAT
/// classifier are the better source, which the traversal driver will use.
pub(crate) fn own_unl(
    id: NodeId,
    lan: &[IpAddr],
    port: u16,
    observed: Option<SocketAddr>,
) -> Result<Unl, UnlError> {
    let mut unl = Unl::new(id);
    for ip in lan.iter().take(MAX_ADDRS - 1) {
        unl.add_addr(AddrSource::Lan, SocketAddr::new(*ip, port))?;
    }
    if let Some(o) = observed.filter(|o| o.port() != 0) {
        unl.add_addr(AddrSource::Observed, o)?;
        if lan.contains(&o.ip()) {
            unl.nat = NatType::Open;
        }
    }
    Ok(unl)
}

/// Whether two UNLs say the same about how to reach the node (timestamp and
/// signature aside).
pub(crate) fn same_reach(a: &Unl, b: &Unl) -> bool {
    a.node_id == b.node_id
        && a.addrs == b.addrs
        && a.nat == b.nat
        && a.node == b.node
        && a.rendezvous == b.rendezvous
}

/// Now in milliseconds since the Unix epoch (the record's `seq`, so that a
/// node restarted with the same key still publishes a higher one).
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now in seconds since the Unix epoch, for the UNL's timestamp.
pub(crate) fn unix_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked() {
        let key = Keypair::from_seed([1; 32]);
        let other = Keypair::from_seed([2; 32]);
        let lan = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let observed = Some("127.0.0.1:4000".parse().unwrap());
        let mut unl = own_unl(key.node_id(), &lan, 4000, observed).unwrap();
        assert_eq!(unl.nat, NatType::Open);
        unl.sign(&key).unwrap();
        let item = unl_record(&key, &unl, 7).unwrap();
        assert_eq!(decode_record(&key.node_id(), &item), Ok(unl.clone()));
        assert_eq!(
            decode_record(&other.node_id(), &item),
            Err(RecordError::WrongKey)
        );
        // A record signed by `other` holding `key`'s UNL.
        let theirs = unl_record(&other, &unl, 7).unwrap();
        assert_eq!(
            decode_record(&other.node_id(), &theirs),
            Err(RecordError::OtherNode(key.node_id()))
        );
        let junk = MutableItem::sign(other.signing_key(), UNL_SALT, 1, Value::Int(3)).unwrap();
        assert_eq!(
            decode_record(&other.node_id(), &junk),
            Err(RecordError::NotBytes)
        );
        let behind_nat = own_unl(
            key.node_id(),
            &lan,
            4000,
            Some("203.0.113.5:4000".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(behind_nat.nat, NatType::Unknown);
        assert!(!same_reach(&unl, &behind_nat));
        assert_eq!(lan_ips("127.0.0.1".parse().unwrap()), lan.to_vec());
        assert!(!lan_ips(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).is_empty());
    }
}
