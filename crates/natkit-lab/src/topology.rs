//! What a lab looks like: NAT types, UPnP placement, hosts and their addresses.

use std::fmt;
use std::net::Ipv4Addr;

/// Behaviour of one of the two NAT routers (`natA`, `natB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT, no filtering: the host behind the router has a public address.
    Open,
    /// Linux masquerade: port-preserving, endpoint-independent mapping, port-restricted filtering.
    Cone,
    /// Masquerade `fully-random`: a random external port per flow.
    Symmetric,
    /// No NAT (public host address), but unsolicited inbound packets are dropped.
    Firewall,
}

impl NatKind {
    /// The name `natlab.sh` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::Cone => "cone",
            NatKind::Symmetric => "symmetric",
            NatKind::Firewall => "firewall",
        }
    }

    /// Whether this router translates addresses (the host behind it is in 10.0.x.0/24).
    pub fn translates(self) -> bool {
        matches!(self, NatKind::Cone | NatKind::Symmetric)
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which routers run miniupnpd (UPnP IGD + NAT-PMP + PCP). Only NAT routers (cone/symmetric) can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Upnp {
    /// No port-mapping service anywhere.
    #[default]
    None,
    /// miniupnpd in `natA`.
    NatA,
    /// miniupnpd in `natB`.
    NatB,
    /// miniupnpd in both routers.
    Both,
}

impl Upnp {
    /// The name `natlab.sh --upnp` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Upnp::None => "none",
            Upnp::NatA => "natA",
            Upnp::NatB => "natB",
            Upnp::Both => "both",
        }
    }
}

/// The topology to build: see the crate docs for the fixed parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Type of router `natA` (alice and carol sit behind it).
    pub nat_a: NatKind,
    /// Type of router `natB` (bob sits behind it).
    pub nat_b: NatKind,
    /// One-way delay added in each direction of natA's and natB's WAN links, in milliseconds.
    pub delay_ms: u32,
    /// Where miniupnpd runs.
    pub upnp: Upnp,
}

impl LabConfig {
    /// Two routers of the given kinds, no delay, no UPnP.
    pub fn new(nat_a: NatKind, nat_b: NatKind) -> Self {
        LabConfig {
            nat_a,
            nat_b,
            delay_ms: 0,
            upnp: Upnp::None,
        }
    }

    /// Sets the one-way WAN delay (milliseconds).
    pub fn delay_ms(mut self, ms: u32) -> Self {
        self.delay_ms = ms;
        self
    }

    /// Sets where miniupnpd runs.
    pub fn upnp(mut self, upnp: Upnp) -> Self {
        self.upnp = upnp;
        self
    }
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig::new(NatKind::Cone, NatKind::Cone)
    }
}

/// A machine (network namespace) of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The internet segment itself (a bridge, 203.0.113.1).
    Internet,
    /// Public bootstrap/rendezvous host with two addresses; runs a STUN server on 3478/3479.
    Rendezvous,
    /// A second public host.
    Public2,
    /// Router A.
    NatA,
    /// Host behind natA.
    Alice,
    /// Second host behind natA (same LAN as alice: hairpin cases).
    Carol,
    /// Router B.
    NatB,
    /// Host behind natB.
    Bob,
    /// Carrier-grade NAT router of an ISP (cone), WAN on the internet.
    Cgnat,
    /// Home router (cone) behind `cgnat`, WAN in 100.64.0.0/24.
    Home,
    /// Host behind two NATs: home → cgnat → internet.
    Dave,
}

impl Host {
    /// Every host, in a fixed order.
    pub const ALL: [Host; 11] = [
        Host::Internet,
        Host::Rendezvous,
        Host::Public2,
        Host::NatA,
        Host::Alice,
        Host::Carol,
        Host::NatB,
        Host::Bob,
        Host::Cgnat,
        Host::Home,
        Host::Dave,
    ];

    /// The name `natlab.sh` uses (namespace `<lab>-<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Host::Internet => "internet",
            Host::Rendezvous => "rendezvous",
            Host::Public2 => "public2",
            Host::NatA => "natA",
            Host::Alice => "alice",
            Host::Carol => "carol",
            Host::NatB => "natB",
            Host::Bob => "bob",
            Host::Cgnat => "cgnat",
            Host::Home => "home",
            Host::Dave => "dave",
        }
    }

    /// Whether this host is a router (runs nftables NAT/firewall rules).
    pub fn is_router(self) -> bool {
        matches!(self, Host::NatA | Host::NatB | Host::Cgnat | Host::Home)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a host lives and which addresses it has, as reported by `natlab.sh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Which host.
    pub host: Host,
    /// Its network namespace (`ip netns exec <netns> ...`).
    pub netns: String,
    /// Its main address: the WAN address for routers, `eth0` for everyone else.
    pub ip: Ipv4Addr,
    /// A second address on the same interface (the rendezvous host's 203.0.113.101).
    pub ip2: Option<Ipv4Addr>,
    /// A router's LAN-side address (its hosts' gateway).
    pub lan_ip: Option<Ipv4Addr>,
    /// The source address the internet sees for this host's traffic (its NAT's WAN address, or
    /// its own address when it is public).
    pub public_ip: Ipv4Addr,
}
