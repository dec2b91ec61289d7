//! A node's own UNL, and its record in the DHT: a BEP 44 mutable item signed
//! by the node's key, under the salt [`UNL_SALT`], whose value is the UNL's
//! binary form (signed too).
//!
//! Anyone with the node id can fetch it (`get_mutable(node id, "unl")`); the
//! DHT checks the item's signature, [`decode_record`] checks that the UNL in
//! it is signed by, and is the UNL of, that same node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use natkit_dht::Value;
use natkit_dht::bep44::{Bep44Error, MutableItem};
use natkit_dht::stats;
use natkit_identity::{Keypair, NodeId};
use natkit_traversal::classify::{
    Classification, Classifier, ClassifierConfig, NatClass, Observation, Transport,
};
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
/// [`MAX_ADDRS`]` - 2` (places are kept for the observed and the mapped address).
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
    ips.truncate(MAX_ADDRS - 2);
    if ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    ips
}

/// A stand-in node id for a DHT reporter, of which only the address is
/// known (BEP 42's `ip` field comes with the answering node's address; its
/// DHT id is not an ed25519 key). The classifier keys votes by reporter id, one
/// vote per reporter: the public key of a seed made of the address (IP, port
/// and a fixed tag) is stable for that address and distinct between
/// addresses, so each reporter address keeps one vote, replaced by its newer
/// reports. It is no one's real key and is never used as one.
pub(crate) fn reporter_stand_in(reporter: SocketAddrV4) -> NodeId {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&reporter.ip().octets());
    seed[4..6].copy_from_slice(&reporter.port().to_be_bytes());
    seed[6..].copy_from_slice(b"natkit reporter stand-in\0\0");
    Keypair::from_seed(seed).node_id()
}

/// The UDP classification of our NAT from the DHT's observations (each the
/// address a DHT node saw our datagrams come from; our local port is the DHT
/// socket's `port`), with `lan` as our own addresses. A fresh [`Classifier`]
/// each time: the DHT keeps and expires the reports itself. Reporters on
/// loopback or on our LAN are refused by the classifier (they see us without
/// the NAT in between), so on loopback the class stays `Unknown`.
pub(crate) fn udp_classification(
    observations: &[stats::Observation],
    lan: &[IpAddr],
    port: u16,
    now: Instant,
) -> Classification {
    let mut classifier = Classifier::new(ClassifierConfig::default(), lan.to_vec());
    for o in observations {
        let obs = Observation {
            reporter: reporter_stand_in(o.reporter),
            reporter_ip: IpAddr::V4(*o.reporter.ip()),
            transport: Transport::Udp,
            local_port: port,
            observed: o.observed,
            at: o.at,
        };
        // Refused reports (local reporters, port 0) say nothing about the NAT.
        let _ = classifier.observe(obs);
    }
    classifier.classify(Transport::Udp, now)
}

/// The node's UNL, unsigned and without timestamp: its LAN addresses with
/// `port`, and the address the DHT saw us at, if known. The NAT type is the
/// UDP `class` ([`udp_classification`]) once it is known; until then, when the
/// observed address is one of our own, there is no NAT: the NAT type is
/// `open`, which the planner takes as reachable (this is what a node on
/// loopback or on a LAN without NAT gets, where every reporter is local and
/// the classifier refuses them all).
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
    class: NatClass,
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
    if !matches!(class, NatClass::Unknown { .. }) {
        unl.nat = class.nat_type();
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

    const UNKNOWN: NatClass = NatClass::Unknown { have: 0, need: 3 };

    #[test]
    fn records_are_checked() {
        let key = Keypair::from_seed([1; 32]);
        let other = Keypair::from_seed([2; 32]);
        let lan = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let observed = Some("127.0.0.1:4000".parse().unwrap());
        let mut unl = own_unl(key.node_id(), &lan, 4000, observed, UNKNOWN).unwrap();
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
            UNKNOWN,
        )
        .unwrap();
        assert_eq!(behind_nat.nat, NatType::Unknown);
        assert!(!same_reach(&unl, &behind_nat));
        assert_eq!(lan_ips("127.0.0.1".parse().unwrap()), lan.to_vec());
        assert!(!lan_ips(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).is_empty());
    }

    fn dht_obs(reporter: &str, observed: &str, at: Instant) -> stats::Observation {
        stats::Observation {
            reporter: reporter.parse().unwrap(),
            observed: observed.parse().unwrap(),
            at,
        }
    }

    #[test]
    fn the_unl_carries_the_udp_classification() {
        let key = Keypair::from_seed([3; 32]);
        let lan = [IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10))];
        let now = Instant::now();
        let stand_in = reporter_stand_in("198.51.100.1:6881".parse().unwrap());
        assert_eq!(
            stand_in,
            reporter_stand_in("198.51.100.1:6881".parse().unwrap())
        );
        assert_ne!(
            stand_in,
            reporter_stand_in("198.51.100.1:6882".parse().unwrap())
        );
        // Three public reporters agree on one external address, not ours.
        let public: Vec<_> = ["198.51.100.1:6881", "198.51.100.2:6881", "203.0.113.9:1"]
            .iter()
            .map(|r| dht_obs(r, "203.0.113.5:4000", now))
            .collect();
        let c = udp_classification(&public, &lan, 4000, now);
        assert_eq!(
            c.class,
            NatClass::Consistent {
                port_preserving: true
            }
        );
        assert_eq!(c.votes.len(), 3);
        let observed = Some("203.0.113.5:4000".parse().unwrap());
        let unl = own_unl(key.node_id(), &lan, 4000, observed, c.class).unwrap();
        assert_eq!(unl.nat, NatType::Consistent);
        // Loopback and LAN reporters are refused: unknown, and the UNL falls
        // back to the own-address rule.
        let local = vec![
            dht_obs("127.0.0.1:7000", "127.0.0.1:4000", now),
            dht_obs("192.168.1.20:6881", "192.168.1.10:4000", now),
        ];
        let c = udp_classification(&local, &lan, 4000, now);
        assert!(
            matches!(c.class, NatClass::Unknown { have: 0, .. }),
            "{c:?}"
        );
        assert!(c.votes.is_empty());
        let observed = Some("192.168.1.10:4000".parse().unwrap());
        let unl = own_unl(key.node_id(), &lan, 4000, observed, c.class).unwrap();
        assert_eq!(unl.nat, NatType::Open);
    }
}
