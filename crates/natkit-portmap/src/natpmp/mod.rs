//! NAT-PMP (RFC 6886) wire codec: requests and responses as validated
//! representations with [`Request::parse`]/[`Request::emit`] and
//! [`Response::parse`]/[`Response::emit`], exact inverses that never panic.
//!
//! Packet layouts (all fields big-endian, version 0):
//!
//! ```text
//! external address request   | vers=0 | op=0 |                               (2 bytes)
//! external address response  | vers=0 | op=128 | result(16) | epoch(32) | ipv4(32) |  (12)
//! map request                | vers=0 | op=1 UDP / 2 TCP | reserved(16)=0 |
//!                            | internal port(16) | suggested external port(16) | lifetime(32) |  (12)
//! map response               | vers=0 | op=128+op | result(16) | epoch(32) |
//!                            | internal port(16) | mapped external port(16) | lifetime(32) |  (16)
//! short error response       | vers=0 | op=128+op | result(16) | epoch(32) |  (8)
//! ```
//!
//! The short form is what a gateway sends when it cannot answer in full, for
//! example "unsupported version" to a PCP request, or "unsupported opcode".
//!
//! A mapping is deleted by a map request with lifetime 0 and suggested external
//! port 0 ([`Request::delete`]). Requests go to the gateway on UDP
//! [`SERVER_PORT`]; the client retransmits on the [`RETRANSMIT_SCHEDULE`].

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::gateway::Protocol;
use crate::wire::{Reader, Writer};

/// The only NAT-PMP version.
pub const VERSION: u8 = 0;

/// UDP port the gateway listens on (shared with PCP).
pub const SERVER_PORT: u16 = 5351;

/// UDP port clients listen on for the gateway's multicast announcements
/// (sent to 224.0.0.1 when its external address changes or it restarts).
pub const CLIENT_ANNOUNCE_PORT: u16 = 5350;

/// Added to a request opcode to form the response opcode (RFC 6886 §3.2).
pub const RESPONSE_BIT: u8 = 128;

/// Opcode of the external address request.
pub const OP_EXTERNAL_ADDRESS: u8 = 0;

/// Lifetime RFC 6886 §3.3 recommends asking for: two hours. Tailscale and iroh
/// ask for the same.
pub const RECOMMENDED_LIFETIME_SECS: u32 = 7200;

/// Time before the first retransmission (RFC 6886 §3.1).
pub const INITIAL_RETRANSMIT: Duration = Duration::from_millis(250);

/// Number of times a request is sent before the client gives up (RFC 6886
/// §3.1: "up to 9 times", doubling the interval each time, about 128 s in all).
pub const MAX_ATTEMPTS: usize = 9;

/// How long to wait for an answer after each send, attempt by attempt:
/// 250 ms, 500 ms, 1 s, ... 64 s (RFC 6886 §3.1). After the last wait the
/// gateway is taken not to speak NAT-PMP. A prober that wants an answer
/// quickly (iroh waits 500 ms, Tailscale 250 ms) uses only the first entries.
pub const RETRANSMIT_SCHEDULE: [Duration; MAX_ATTEMPTS] = retransmit_schedule();

/// Builds [`RETRANSMIT_SCHEDULE`]: [`INITIAL_RETRANSMIT`] doubled per attempt.
pub const fn retransmit_schedule() -> [Duration; MAX_ATTEMPTS] {
    let mut out = [Duration::ZERO; MAX_ATTEMPTS];
    let mut i = 0;
    let mut millis = INITIAL_RETRANSMIT.as_millis() as u64;
    while i < MAX_ATTEMPTS {
        out[i] = Duration::from_millis(millis);
        millis *= 2;
        i += 1;
    }
    out
}

/// Why a NAT-PMP packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The packet ended before a field it must carry.
    #[error("NAT-PMP packet too short: {len} bytes, {needed} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes this kind of packet needs.
        needed: usize,
    },
    /// The packet is longer than its opcode allows.
    #[error("NAT-PMP packet with opcode {opcode} has {len} bytes, expected {expected}")]
    BadLength {
        /// The opcode.
        opcode: u8,
        /// Bytes received.
        len: usize,
        /// Bytes this opcode uses.
        expected: usize,
    },
    /// The version byte is not 0; version 2 means the peer speaks PCP.
    #[error("not NAT-PMP: version {0} (2 would be PCP)")]
    UnsupportedVersion(u8),
    /// A request opcode other than 0, 1 or 2.
    #[error("unknown NAT-PMP opcode {0}")]
    UnknownOpcode(u8),
    /// Parsing a request but the response bit is set.
    #[error("NAT-PMP opcode {0} is a response, not a request")]
    NotARequest(u8),
    /// Parsing a response but the response bit is clear.
    #[error("NAT-PMP opcode {0} is a request, not a response")]
    NotAResponse(u8),
    /// The reserved field of a map request is not zero.
    #[error("NAT-PMP map request with non-zero reserved field {0:#06x}")]
    ReservedNotZero(u16),
}

/// A NAT-PMP result code (RFC 6886 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0: the request succeeded.
    Success,
    /// 1: the gateway does not speak this version.
    UnsupportedVersion,
    /// 2: refused, e.g. NAT-PMP is turned off on the gateway or the port is
    /// not allowed.
    NotAuthorized,
    /// 3: the gateway has no external address (e.g. its WAN link is down).
    NetworkFailure,
    /// 4: the gateway cannot make more mappings.
    OutOfResources,
    /// 5: the gateway does not know this opcode.
    UnsupportedOpcode,
    /// A code this crate does not know (6 and up).
    Unknown(u16),
}

impl ResultCode {
    /// The result code for a wire value.
    pub const fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::UnsupportedVersion,
            2 => Self::NotAuthorized,
            3 => Self::NetworkFailure,
            4 => Self::OutOfResources,
            5 => Self::UnsupportedOpcode,
            other => Self::Unknown(other),
        }
    }

    /// The wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::Success => 0,
            Self::UnsupportedVersion => 1,
            Self::NotAuthorized => 2,
            Self::NetworkFailure => 3,
            Self::OutOfResources => 4,
            Self::UnsupportedOpcode => 5,
            Self::Unknown(v) => v,
        }
    }

    /// Whether this is [`ResultCode::Success`].
    pub const fn is_success(self) -> bool {
        matches!(self, Self::Success)
    }

    /// What the result means for the user, in words they can act on.
    pub const fn advice(self) -> &'static str {
        match self {
            Self::Success => "the gateway granted the request",
            Self::UnsupportedVersion => {
                "the gateway does not speak this NAT-PMP version; try PCP or UPnP instead"
            }
            Self::NotAuthorized => {
                "the gateway refused: NAT-PMP may be turned off in the router's settings, \
                 or the port is outside the range it allows"
            }
            Self::NetworkFailure => {
                "the gateway has no working internet connection or no external address yet; \
                 try again later"
            }
            Self::OutOfResources => {
                "the gateway has no free mappings or ports; remove unused mappings or try later"
            }
            Self::UnsupportedOpcode => {
                "the gateway does not support this request; try PCP or UPnP instead"
            }
            Self::Unknown(_) => {
                "the gateway answered with a result code this version does not know"
            }
        }
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NAT-PMP result {}: {}", self.to_u16(), self.advice())
    }
}

/// A NAT-PMP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// Ask for the gateway's external IPv4 address (opcode 0).
    ExternalAddress,
    /// Create, renew or (with lifetime 0) delete a mapping (opcode 1 UDP, 2 TCP).
    Map {
        /// UDP or TCP.
        protocol: Protocol,
        /// Our port on the LAN. 0 with lifetime 0 deletes all our mappings of
        /// this protocol.
        internal_port: u16,
        /// The external port we would like; 0 for "any". Asking for the port
        /// we had before keeps our address stable across renewals and restarts.
        suggested_external_port: u16,
        /// Requested lifetime in seconds; 0 deletes the mapping.
        lifetime_secs: u32,
    },
}

impl Request {
    /// A request that deletes our mapping of `internal_port` (RFC 6886 §3.4).
    pub const fn delete(protocol: Protocol, internal_port: u16) -> Self {
        Self::Map {
            protocol,
            internal_port,
            suggested_external_port: 0,
            lifetime_secs: 0,
        }
    }

    /// The opcode on the wire.
    pub const fn opcode(&self) -> u8 {
        match self {
            Self::ExternalAddress => OP_EXTERNAL_ADDRESS,
            Self::Map { protocol, .. } => protocol.natpmp_opcode(),
        }
    }

    /// The wire form.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = vec![VERSION, self.opcode()];
        if let Self::Map {
            internal_port,
            suggested_external_port,
            lifetime_secs,
            ..
        } = *self
        {
            out.put_u16(0);
            out.put_u16(internal_port);
            out.put_u16(suggested_external_port);
            out.put_u32(lifetime_secs);
        }
        out
    }

    /// Parses a request. Strict: the length must be exact and the reserved
    /// field zero, so that a packet that parses emits back to the same bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(buf);
        let (version, opcode) = header(&mut r, buf.len())?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        if opcode >= RESPONSE_BIT {
            return Err(Error::NotARequest(opcode));
        }
        let req = if opcode == OP_EXTERNAL_ADDRESS {
            Self::ExternalAddress
        } else {
            let protocol =
                Protocol::from_natpmp_opcode(opcode).ok_or(Error::UnknownOpcode(opcode))?;
            let short = || Error::Truncated {
                len: buf.len(),
                needed: 12,
            };
            let reserved = r.u16().ok_or_else(short)?;
            if reserved != 0 {
                return Err(Error::ReservedNotZero(reserved));
            }
            Self::Map {
                protocol,
                internal_port: r.u16().ok_or_else(short)?,
                suggested_external_port: r.u16().ok_or_else(short)?,
                lifetime_secs: r.u32().ok_or_else(short)?,
            }
        };
        expect_end(&r, opcode, buf.len())?;
        Ok(req)
    }
}

/// A NAT-PMP response. Every response carries the gateway's epoch: seconds
/// since it started or lost its mappings (feed it to
/// [`LeaseScheduler::on_gateway_epoch`](crate::lease::LeaseScheduler::on_gateway_epoch)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Response {
    /// Answer to [`Request::ExternalAddress`] (opcode 128, 12 bytes).
    ExternalAddress {
        /// The result; the address is 0.0.0.0 unless it is success.
        result: ResultCode,
        /// Seconds since start of epoch.
        epoch_secs: u32,
        /// The gateway's external IPv4 address.
        address: Ipv4Addr,
    },
    /// Answer to [`Request::Map`] (opcode 129 UDP / 130 TCP, 16 bytes).
    Map {
        /// UDP or TCP.
        protocol: Protocol,
        /// The result; the external port is 0 unless it is success.
        result: ResultCode,
        /// Seconds since start of epoch.
        epoch_secs: u32,
        /// Our port on the LAN, echoed from the request.
        internal_port: u16,
        /// The external port the gateway chose; may differ from the one we
        /// suggested.
        external_port: u16,
        /// The lifetime granted in seconds; may be shorter than asked for.
        lifetime_secs: u32,
    },
    /// The 8-byte form without opcode-specific fields, for any response
    /// opcode. Gateways use it for errors (e.g. unsupported version or
    /// opcode); with [`ResultCode::Success`] it carries no usable answer.
    Short {
        /// The request opcode this answers (the wire opcode minus 128).
        request_opcode: u8,
        /// The result.
        result: ResultCode,
        /// Seconds since start of epoch.
        epoch_secs: u32,
    },
}

impl Response {
    /// The result code.
    pub const fn result(&self) -> ResultCode {
        match *self {
            Self::ExternalAddress { result, .. }
            | Self::Map { result, .. }
            | Self::Short { result, .. } => result,
        }
    }

    /// Seconds since the gateway's start of epoch.
    pub const fn epoch_secs(&self) -> u32 {
        match *self {
            Self::ExternalAddress { epoch_secs, .. }
            | Self::Map { epoch_secs, .. }
            | Self::Short { epoch_secs, .. } => epoch_secs,
        }
    }

    /// The opcode of the request this answers (wire opcode minus 128).
    pub const fn request_opcode(&self) -> u8 {
        match *self {
            Self::ExternalAddress { .. } => OP_EXTERNAL_ADDRESS,
            Self::Map { protocol, .. } => protocol.natpmp_opcode(),
            Self::Short { request_opcode, .. } => request_opcode,
        }
    }

    /// Whether this answers `req`: same opcode and, for a mapping, the same
    /// internal port. NAT-PMP has no nonce, so keep one request in flight per
    /// gateway and check this before trusting a response.
    pub fn answers(&self, req: &Request) -> bool {
        match (self, req) {
            (
                Self::Map {
                    protocol,
                    internal_port,
                    ..
                },
                Request::Map {
                    protocol: p,
                    internal_port: i,
                    ..
                },
            ) => protocol == p && internal_port == i,
            _ => self.request_opcode() == req.opcode(),
        }
    }

    /// The wire form. A [`Response::Short`] whose `request_opcode` has the
    /// high bit set cannot be represented; its high bit is dropped.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = vec![
            VERSION,
            (self.request_opcode() & !RESPONSE_BIT) | RESPONSE_BIT,
        ];
        out.put_u16(self.result().to_u16());
        out.put_u32(self.epoch_secs());
        match *self {
            Self::ExternalAddress { address, .. } => out.extend_from_slice(&address.octets()),
            Self::Map {
                internal_port,
                external_port,
                lifetime_secs,
                ..
            } => {
                out.put_u16(internal_port);
                out.put_u16(external_port);
                out.put_u32(lifetime_secs);
            }
            Self::Short { .. } => {}
        }
        out
    }

    /// Parses a response. The length must be exactly the one the opcode
    /// uses, or 8 (the short form).
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(buf);
        let (version, opcode) = header(&mut r, buf.len())?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let Some(request_opcode) = opcode.checked_sub(RESPONSE_BIT) else {
            return Err(Error::NotAResponse(opcode));
        };
        let short = || Error::Truncated {
            len: buf.len(),
            needed: SHORT_RESPONSE_BYTES,
        };
        let result = ResultCode::from_u16(r.u16().ok_or_else(short)?);
        let epoch_secs = r.u32().ok_or_else(short)?;
        if r.remaining() == 0 {
            return Ok(Self::Short {
                request_opcode,
                result,
                epoch_secs,
            });
        }
        let resp = if request_opcode == OP_EXTERNAL_ADDRESS {
            let address = r.ipv4().ok_or(Error::BadLength {
                opcode,
                len: buf.len(),
                expected: 12,
            })?;
            Self::ExternalAddress {
                result,
                epoch_secs,
                address,
            }
        } else if let Some(protocol) = Protocol::from_natpmp_opcode(request_opcode) {
            let bad = || Error::BadLength {
                opcode,
                len: buf.len(),
                expected: 16,
            };
            Self::Map {
                protocol,
                result,
                epoch_secs,
                internal_port: r.u16().ok_or_else(bad)?,
                external_port: r.u16().ok_or_else(bad)?,
                lifetime_secs: r.u32().ok_or_else(bad)?,
            }
        } else {
            return Err(Error::BadLength {
                opcode,
                len: buf.len(),
                expected: SHORT_RESPONSE_BYTES,
            });
        };
        expect_end(&r, opcode, buf.len())?;
        Ok(resp)
    }
}

/// Length of the short (error) response form.
const SHORT_RESPONSE_BYTES: usize = 8;

/// Reads version and opcode.
fn header(r: &mut Reader<'_>, len: usize) -> Result<(u8, u8), Error> {
    match (r.u8(), r.u8()) {
        (Some(v), Some(op)) => Ok((v, op)),
        _ => Err(Error::Truncated { len, needed: 2 }),
    }
}

/// Fails if bytes are left after the last field.
fn expect_end(r: &Reader<'_>, opcode: u8, len: usize) -> Result<(), Error> {
    if r.remaining() == 0 {
        Ok(())
    } else {
        Err(Error::BadLength {
            opcode,
            len,
            expected: len - r.remaining(),
        })
    }
}

#[cfg(test)]
mod tests;
