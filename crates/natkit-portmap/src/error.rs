//! The errors of the port-mapping client, each with advice a user can act on.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::gateway::Method;
use crate::{natpmp, pcp};

/// What went wrong while talking to the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No default gateway was found and none was configured.
    #[error("no default IPv4 gateway found ({0}); give one explicitly (--gateway IP)")]
    NoGateway(String),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gateway did not answer in time (or answered only garbage).
    #[error("{method} gateway {gateway} did not answer within {}ms", after.as_millis())]
    Timeout {
        /// The method tried.
        method: Method,
        /// The gateway asked.
        gateway: Ipv4Addr,
        /// How long we waited.
        after: Duration,
    },
    /// The gateway answered a NAT-PMP request with an error.
    #[error("{0}")]
    NatPmp(natpmp::ResultCode),
    /// The gateway answered a PCP request with an error.
    #[error("PCP result {} ({}): {}", .0.to_u8(), .0.name(), .0.advice())]
    Pcp(pcp::ResultCode),
    /// The gateway answered a UPnP request with a UPnP error code.
    #[error("UPnP error {code} ({message}): {}", upnp_advice(*code))]
    Upnp {
        /// The UPnP error code (e.g. 718, 725, 402).
        code: u16,
        /// The gateway's description of it.
        message: String,
    },
    /// UPnP failed otherwise (no IGD found, HTTP or XML trouble).
    #[error("UPnP: {0}")]
    UpnpOther(String),
    /// The gateway reported an external address that is not IPv4.
    #[error("the gateway reported a non-IPv4 external address {0}; natkit maps IPv4 only")]
    NotIpv4(String),
    /// None of the allowed methods is spoken by the gateway.
    #[error("the gateway {gateway} speaks none of the methods tried ({tried})")]
    NoMethod {
        /// The gateway.
        gateway: Ipv4Addr,
        /// What each method said, in one line.
        tried: String,
    },
    /// The method cannot do this (e.g. NAT-PMP and PCP cannot list mappings).
    #[error("{method} cannot {what}")]
    Unsupported {
        /// The method.
        method: Method,
        /// What was asked.
        what: &'static str,
    },
    /// A request could not be encoded (a bug, or an absurd argument).
    #[error("cannot encode request: {0}")]
    Encode(String),
}

impl Error {
    /// Whether the gateway simply did not answer (the method is probably not
    /// spoken), as opposed to answering with an error.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Maps an I/O error to [`Error::Io`] with what we were doing.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

/// What to do about a UPnP error code (UPnP IGD WANIPConnection:1 and :2).
pub fn upnp_advice(code: u16) -> &'static str {
    match code {
        402 => "invalid arguments; the gateway may reject the lease duration (some accept only 0)",
        501 => "the gateway failed the action; try again later",
        606 => "the gateway does not allow this client to change mappings",
        714 => "no such mapping on the gateway",
        715 | 716 => "the gateway does not support wildcards in this field",
        718 => {
            "conflict: the external port is taken by another host, or the gateway (secure mode) \
             refuses to map for an address other than the requester's"
        }
        724 => "the gateway needs the internal and external port to be equal",
        725 => "the gateway only supports permanent leases (lease 0)",
        726 => "the gateway does not allow a specific remote host",
        727 => "the gateway does not allow a wildcard external port",
        728 => "the gateway has no free ports left",
        729 => "the gateway refuses a mapping that conflicts with one of its own services",
        _ => "see the gateway's UPnP documentation",
    }
}
