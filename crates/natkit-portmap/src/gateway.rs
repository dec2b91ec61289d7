//! Types shared by every port-mapping method: the transport protocol, the
//! method (PCP, NAT-PMP, UPnP IGD) and its preference order, a granted
//! [`Mapping`], and [`is_global_ipv4`] to tell a public external address from
//! one that is itself behind another NAT.
//!
//! This module has types only; the client that talks to a gateway comes later.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::lease::EpochRule;

/// The transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IANA protocol number, as PCP carries it (TCP 6, UDP 17).
    pub const fn iana_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The protocol with this IANA number, if it is TCP or UDP.
    pub const fn from_iana_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The NAT-PMP mapping opcode (RFC 6886 §3.3: UDP 1, TCP 2).
    pub const fn natpmp_opcode(self) -> u8 {
        match self {
            Protocol::Udp => 1,
            Protocol::Tcp => 2,
        }
    }

    /// The protocol of a NAT-PMP mapping opcode (1 or 2).
    pub const fn from_natpmp_opcode(op: u8) -> Option<Self> {
        match op {
            1 => Some(Protocol::Udp),
            2 => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

/// A way of asking a gateway for a port mapping.
///
/// The derived order is the preference order: `Pcp < NatPmp < Upnp`, so the
/// smallest method a gateway answered to is the one to use. PCP comes first
/// because its nonce ties a response to our request and it can say why it
/// failed; NAT-PMP is the same packet family without those; UPnP IGD needs
/// SSDP discovery and HTTP/SOAP and has the most router quirks (iroh and
/// Tailscale order them the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Port Control Protocol, RFC 6887 (UDP 5351).
    Pcp,
    /// NAT Port Mapping Protocol, RFC 6886 (UDP 5351).
    NatPmp,
    /// UPnP Internet Gateway Device (SSDP on UDP 1900, then HTTP/SOAP).
    Upnp,
}

impl Method {
    /// All methods, most preferred first.
    pub const BY_PREFERENCE: [Method; 3] = [Method::Pcp, Method::NatPmp, Method::Upnp];

    /// Which epoch rule the gateway's "seconds since start of epoch" field
    /// follows, or `None` for UPnP, which has no epoch.
    pub const fn epoch_rule(self) -> Option<EpochRule> {
        match self {
            Method::Pcp => Some(EpochRule::Pcp),
            Method::NatPmp => Some(EpochRule::NatPmp),
            Method::Upnp => None,
        }
    }

    /// A short lowercase name for logs and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Pcp => "pcp",
            Method::NatPmp => "nat-pmp",
            Method::Upnp => "upnp",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A port mapping a gateway granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// How the mapping was made.
    pub method: Method,
    /// The transport protocol mapped.
    pub protocol: Protocol,
    /// Our address on the LAN that the gateway forwards to.
    pub internal: SocketAddrV4,
    /// The address peers on the other side of the gateway can reach us at.
    /// Check it with [`is_global_ipv4`]: if it is not public, there is another
    /// NAT (often a carrier's) beyond this gateway.
    pub external: SocketAddrV4,
    /// How long the gateway keeps the mapping unless it is renewed.
    pub lifetime: Duration,
}

impl Mapping {
    /// Whether the external address is reachable from the public internet
    /// (false behind double NAT or carrier-grade NAT).
    pub fn is_publicly_reachable(&self) -> bool {
        is_global_ipv4(*self.external.ip())
    }
}

/// Whether `ip` is a public, globally routable unicast IPv4 address.
///
/// False for 0.0.0.0/8 ("this network"), 10/8, 172.16/12 and 192.168/16
/// (RFC 1918), 100.64/10 (RFC 6598 carrier-grade NAT), 127/8 (loopback),
/// 169.254/16 (link-local), 192.0.0/24 (IETF protocol assignments),
/// 192.0.2/24, 198.51.100/24 and 203.0.113/24 (TEST-NET-1/2/3), 198.18/15
/// (benchmarking), 224/4 (multicast) and 240/4 (reserved, which includes
/// 255.255.255.255 broadcast).
///
/// A gateway whose external address is not global sits behind another NAT, so
/// a mapping on it does not make us reachable from the internet. Note that the
/// NAT lab uses TEST-NET-3 (203.0.113/24) as its "internet": there, every
/// external address is non-global by this test.
///
/// ```
/// use natkit_portmap::gateway::is_global_ipv4;
/// assert!(is_global_ipv4("8.8.8.8".parse().unwrap()));
/// assert!(!is_global_ipv4("100.64.1.2".parse().unwrap()));
/// assert!(!is_global_ipv4("192.168.1.1".parse().unwrap()));
/// ```
pub fn is_global_ipv4(ip: Ipv4Addr) -> bool {
    /// Non-global ranges as (network, prefix length).
    const NON_GLOBAL: [([u8; 4], u32); 15] = [
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
        ([255, 255, 255, 255], 32),
    ];
    let addr = u32::from(ip);
    !NON_GLOBAL.iter().any(|&(net, len)| {
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        addr & mask == u32::from_be_bytes(net) & mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn global_addresses() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.112.255",
            "223.255.255.255",
        ] {
            assert!(is_global_ipv4(ip(s)), "{s} should be global");
        }
    }

    #[test]
    fn non_global_addresses() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.10",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_global_ipv4(ip(s)), "{s} should not be global");
        }
    }

    #[test]
    fn preference_order() {
        let mut m = vec![Method::Upnp, Method::Pcp, Method::NatPmp];
        m.sort();
        assert_eq!(m, Method::BY_PREFERENCE);
        assert_eq!(Method::Upnp.epoch_rule(), None);
    }

    #[test]
    fn protocol_numbers_round_trip() {
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(Protocol::from_iana_number(p.iana_number()), Some(p));
            assert_eq!(Protocol::from_natpmp_opcode(p.natpmp_opcode()), Some(p));
        }
        assert_eq!(Protocol::from_iana_number(0), None);
        assert_eq!(Protocol::from_natpmp_opcode(0), None);
    }

    #[test]
    fn mapping_reachability() {
        let m = Mapping {
            method: Method::NatPmp,
            protocol: Protocol::Udp,
            internal: "10.0.1.2:4000".parse().unwrap(),
            external: "100.70.0.1:4000".parse().unwrap(),
            lifetime: Duration::from_secs(7200),
        };
        assert!(!m.is_publicly_reachable());
    }
}
