//! PCP (RFC 6887) wire codec: the common request and response headers, the
//! MAP and ANNOUNCE opcodes and options, with `parse`/`emit` pairs that never
//! panic and are inverses of each other.
//!
//! ```text
//! request  | vers=2 | R=0,opcode(7) | reserved(16) | requested lifetime(32) |
//!          | client IP (128, IPv4-mapped for IPv4) |
//!          | opcode-specific data | options ... |
//! response | vers=2 | R=1,opcode(7) | reserved(8) | result(8) | lifetime(32) |
//!          | epoch time(32) | reserved(96) |
//!          | opcode-specific data | options ... |
//! MAP data | nonce(96) | protocol(8) | reserved(24) | internal port(16) |
//!          | suggested/assigned external port(16) | suggested/assigned external IP(128) |
//! ```
//!
//! ANNOUNCE has no opcode-specific data. A message is at most
//! [`MAX_MESSAGE_BYTES`] long and a multiple of 4. Reserved fields and option
//! padding are sent as zero and ignored on receipt, as the RFC asks; so a
//! parsed message re-emits to the same bytes except for those.
//!
//! A MAP is renewed by sending the same request again (same nonce) before half
//! its lifetime has passed, and deleted by sending it with lifetime 0.
//! [`Response::check_answers`] ties a response to its request.

pub mod options;
pub mod result;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::time::Duration;

pub use options::PcpOption;
pub use result::ResultCode;

use crate::gateway::Protocol;
use crate::wire::{Reader, Writer};

/// The PCP version this crate speaks.
pub const VERSION: u8 = 2;

/// UDP port the PCP server listens on (shared with NAT-PMP).
pub const SERVER_PORT: u16 = 5351;

/// UDP port clients listen on for unsolicited ANNOUNCE responses, multicast
/// to 224.0.0.1 / ff02::1 when the server restarts.
pub const CLIENT_ANNOUNCE_PORT: u16 = 5350;

/// Largest PCP message in bytes (RFC 6887 §7: fits a minimum-MTU UDP
/// datagram; longer ones are malformed).
pub const MAX_MESSAGE_BYTES: usize = 1100;

/// Length of the common request and response headers in bytes.
pub const HEADER_BYTES: usize = 24;

/// Length of the MAP opcode-specific data in bytes.
pub const MAP_DATA_BYTES: usize = 36;

/// Length of the MAP nonce in bytes.
pub const NONCE_BYTES: usize = 12;

/// Opcode ANNOUNCE: "are you there, and did you restart?".
pub const OP_ANNOUNCE: u8 = 0;
/// Opcode MAP: create, renew or delete an inbound mapping.
pub const OP_MAP: u8 = 1;
/// Opcode PEER: an outbound mapping to a known peer (not modelled; carried
/// as [`OpData::Other`]).
pub const OP_PEER: u8 = 2;

/// The R bit in the opcode byte: set in responses.
pub const RESPONSE_BIT: u8 = 0x80;

/// IANA protocol number meaning "all protocols" in a MAP.
pub const PROTOCOL_ALL: u8 = 0;

/// Initial retransmission time (RFC 6887 §8.1.1, IRT).
pub const INITIAL_RETRANSMIT: Duration = Duration::from_secs(3);

/// Cap on the retransmission interval (RFC 6887 §8.1.1, MRT). The RFC sets
/// no cap on the number of tries (MRC = 0) or total time (MRD = 0): a client
/// keeps trying, or gives up on its own timeout when probing.
pub const MAX_RETRANSMIT: Duration = Duration::from_secs(1024);

/// Largest random factor applied to retransmission times: ±10 %.
pub const RETRANSMIT_JITTER: f64 = 0.1;

/// Lifetime to ask for: two hours, like NAT-PMP (RFC 6886) and iroh's UPnP.
pub const RECOMMENDED_LIFETIME_SECS: u32 = 7200;

/// The next retransmission timeout (RFC 6887 §8.1.1).
///
/// `previous` is the last timeout (`None` before the first retransmission);
/// `jitter` is a random value in `[-0.1, 0.1]` chosen by the caller (values
/// outside are clamped, NaN counts as 0), which keeps this function
/// deterministic. First `(1 + jitter) * 3 s`, then `(1 + jitter) * 2 *
/// previous`, at most `(1 + jitter) * 1024 s`.
pub fn retransmit_timeout(previous: Option<Duration>, jitter: f64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-RETRANSMIT_JITTER, RETRANSMIT_JITTER)
    };
    let factor = 1.0 + jitter;
    let base = previous.map_or(INITIAL_RETRANSMIT, |p| p.saturating_mul(2));
    let capped = MAX_RETRANSMIT.mul_f64(factor);
    if base > MAX_RETRANSMIT {
        return capped;
    }
    base.mul_f64(factor).min(capped)
}

/// Why a PCP message was rejected, or could not be emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The message ended before a field it must carry.
    #[error("PCP message truncated in the {what}")]
    Truncated {
        /// Which part was cut short.
        what: &'static str,
    },
    /// Longer than [`MAX_MESSAGE_BYTES`].
    #[error("PCP message of {len} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The length is not a multiple of 4.
    #[error("PCP message of {len} bytes is not a multiple of 4 bytes long")]
    NotMultipleOf4 {
        /// Its length.
        len: usize,
    },
    /// The version byte is not 2. Version 0 means a NAT-PMP server answered
    /// (parse it with [`crate::natpmp::Response::parse`]).
    #[error("not PCP version 2: version {version}{}", if *version == 0 { " (a NAT-PMP server answered)" } else { "" })]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// Parsing a request but the R bit is set.
    #[error("PCP message is a response, not a request")]
    NotARequest,
    /// Parsing a response but the R bit is clear.
    #[error("PCP message is a request, not a response")]
    NotAResponse,
    /// An option is malformed.
    #[error("PCP option {code} is malformed: {reason}")]
    MalformedOption {
        /// The option code.
        code: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The value cannot be emitted as a message that parses back to it.
    #[error("PCP message cannot be emitted: {0}")]
    Unrepresentable(&'static str),
}

/// Why a response does not answer a request ([`Response::check_answers`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// Different opcodes.
    #[error("response is for opcode {response}, request was opcode {request}")]
    Opcode {
        /// The request's opcode.
        request: u8,
        /// The response's opcode.
        response: u8,
    },
    /// The MAP response has no opcode-specific data (a header-only error),
    /// so its nonce cannot be checked.
    #[error("MAP response carries no nonce to check")]
    MissingMapData,
    /// The nonce differs: the response is for another request (or forged).
    #[error("MAP response nonce does not match the request")]
    Nonce,
    /// The protocol differs.
    #[error("MAP response is for protocol {response}, request was protocol {request}")]
    Protocol {
        /// The request's protocol number.
        request: u8,
        /// The response's protocol number.
        response: u8,
    },
    /// The internal port differs.
    #[error("MAP response is for internal port {response}, request was port {request}")]
    InternalPort {
        /// The request's internal port.
        request: u16,
        /// The response's internal port.
        response: u16,
    },
}

/// The 96-bit MAP nonce. Keep it with the mapping: renewals and the final
/// delete must use the same nonce, and responses must echo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Nonce(pub [u8; NONCE_BYTES]);

impl Nonce {
    /// A nonce from the operating system's random source.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut n = [0; NONCE_BYTES];
        getrandom::fill(&mut n)?;
        Ok(Self(n))
    }
}

/// MAP opcode-specific data. In a request the external fields are
/// suggestions (zero for "no preference"); in a response they are what the
/// server assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapData {
    /// Ties the response to the request; constant over a mapping's life.
    pub nonce: Nonce,
    /// IANA protocol number: 6 TCP, 17 UDP, 0 all protocols.
    pub protocol: u8,
    /// Our port on the LAN (0 with protocol 0: all ports).
    pub internal_port: u16,
    /// Suggested (request) or assigned (response) external port.
    pub external_port: u16,
    /// Suggested (request) or assigned (response) external address,
    /// IPv4-mapped for IPv4; `::ffff:0.0.0.0` means "no preference".
    pub external_ip: Ipv6Addr,
}

impl MapData {
    /// The external address as IPv4, if the external IP is IPv4-mapped.
    pub fn external_v4(&self) -> Option<SocketAddrV4> {
        let ip = self.external_ip.to_ipv4_mapped()?;
        Some(SocketAddrV4::new(ip, self.external_port))
    }

    /// Appends the wire form.
    fn emit_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nonce.0);
        out.push(self.protocol);
        out.extend_from_slice(&[0; 3]);
        out.put_u16(self.internal_port);
        out.put_u16(self.external_port);
        out.extend_from_slice(&self.external_ip.octets());
    }

    /// Reads the wire form; reserved bytes are ignored.
    fn parse(r: &mut Reader<'_>) -> Option<Self> {
        let nonce = Nonce(r.array()?);
        let protocol = r.u8()?;
        r.take(3)?;
        Some(Self {
            nonce,
            protocol,
            internal_port: r.u16()?,
            external_port: r.u16()?,
            external_ip: r.ipv6()?,
        })
    }
}

/// The opcode and its opcode-specific data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpData {
    /// ANNOUNCE (opcode 0), no data.
    Announce,
    /// MAP (opcode 1).
    Map(MapData),
    /// Any other opcode (e.g. PEER), or a MAP error response too short to
    /// hold MAP data (fewer than [`MAP_DATA_BYTES`]). `data` is everything
    /// after the header, options included, since their position is unknown.
    Other {
        /// The opcode, 0-127; never ANNOUNCE.
        opcode: u8,
        /// The bytes after the header; a multiple of 4 long.
        data: Vec<u8>,
    },
}

impl OpData {
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Self::Announce => OP_ANNOUNCE,
            Self::Map(_) => OP_MAP,
            Self::Other { opcode, .. } => *opcode,
        }
    }

    /// The MAP data, if this is a MAP.
    pub fn map(&self) -> Option<&MapData> {
        match self {
            Self::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Bytes on the wire.
    fn wire_len(&self) -> usize {
        match self {
            Self::Announce => 0,
            Self::Map(_) => MAP_DATA_BYTES,
            Self::Other { data, .. } => data.len(),
        }
    }

    /// Checks that this, with `options`, emits to something that parses
    /// back to it.
    fn validate(&self, options: &[PcpOption]) -> Result<(), Error> {
        if let Self::Other { opcode, data } = self {
            if *opcode >= RESPONSE_BIT {
                return Err(Error::Unrepresentable("opcode over 127"));
            }
            if *opcode == OP_ANNOUNCE {
                return Err(Error::Unrepresentable("ANNOUNCE carried as Other"));
            }
            if *opcode == OP_MAP && data.len() >= MAP_DATA_BYTES {
                return Err(Error::Unrepresentable("full MAP data carried as Other"));
            }
            if !data.len().is_multiple_of(4) {
                return Err(Error::Unrepresentable("opcode data not a multiple of 4"));
            }
            if !options.is_empty() {
                return Err(Error::Unrepresentable(
                    "options with an opcode whose layout is unknown",
                ));
            }
        }
        options.iter().try_for_each(PcpOption::validate)
    }

    /// Appends the wire form.
    fn emit_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Announce => {}
            Self::Map(m) => m.emit_into(out),
            Self::Other { data, .. } => out.extend_from_slice(data),
        }
    }

    /// Parses the opcode-specific data and options that follow the header.
    fn parse(opcode: u8, rest: &[u8]) -> Result<(Self, Vec<PcpOption>), Error> {
        match opcode {
            OP_ANNOUNCE => Ok((Self::Announce, PcpOption::parse_all(rest)?)),
            OP_MAP if rest.len() >= MAP_DATA_BYTES => {
                let mut r = Reader::new(rest);
                let map = MapData::parse(&mut r).ok_or(Error::Truncated { what: "MAP data" })?;
                Ok((Self::Map(map), PcpOption::parse_all(r.rest())?))
            }
            _ => Ok((
                Self::Other {
                    opcode,
                    data: rest.to_vec(),
                },
                Vec::new(),
            )),
        }
    }
}

/// A PCP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// Requested lifetime in seconds; 0 deletes a mapping.
    pub lifetime_secs: u32,
    /// Our own address as we see it (IPv4-mapped for IPv4). The server
    /// answers ADDRESS_MISMATCH if it sees another source address.
    pub client_ip: Ipv6Addr,
    /// The opcode and its data.
    pub op: OpData,
    /// Options, in order.
    pub options: Vec<PcpOption>,
}

impl Request {
    /// A MAP request for `internal` (our LAN address), asking for
    /// `suggested` if given (our previous external address, to keep it
    /// stable) and `lifetime_secs`.
    pub fn map(
        nonce: Nonce,
        protocol: Protocol,
        internal: SocketAddrV4,
        suggested: Option<SocketAddrV4>,
        lifetime_secs: u32,
    ) -> Self {
        let suggested = suggested.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Self {
            lifetime_secs,
            client_ip: internal.ip().to_ipv6_mapped(),
            op: OpData::Map(MapData {
                nonce,
                protocol: protocol.iana_number(),
                internal_port: internal.port(),
                external_port: suggested.port(),
                external_ip: suggested.ip().to_ipv6_mapped(),
            }),
            options: Vec::new(),
        }
    }

    /// An ANNOUNCE request from `client`: a cheap probe for a PCP server.
    pub fn announce(client: Ipv4Addr) -> Self {
        Self {
            lifetime_secs: 0,
            client_ip: client.to_ipv6_mapped(),
            op: OpData::Announce,
            options: Vec::new(),
        }
    }

    /// The same request with lifetime 0: deletes the mapping it made.
    pub fn to_delete(&self) -> Self {
        Self {
            lifetime_secs: 0,
            ..self.clone()
        }
    }

    /// The wire form. Fails if the request is over [`MAX_MESSAGE_BYTES`] or
    /// could not parse back to itself (see [`OpData::Other`]).
    pub fn emit(&self) -> Result<Vec<u8>, Error> {
        let mut out = start_message(&self.op, &self.options)?;
        out.push(VERSION);
        out.push(self.op.opcode());
        out.put_u16(0);
        out.put_u32(self.lifetime_secs);
        out.extend_from_slice(&self.client_ip.octets());
        Ok(finish_message(out, &self.op, &self.options))
    }

    /// Parses a request.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(buf);
        let (is_response, opcode) = check_message(&mut r, buf.len())?;
        if is_response {
            return Err(Error::NotARequest);
        }
        let header = Error::Truncated { what: "header" };
        r.take(2).ok_or(header.clone())?;
        let lifetime_secs = r.u32().ok_or(header.clone())?;
        let client_ip = r.ipv6().ok_or(header)?;
        let (op, options) = OpData::parse(opcode, r.rest())?;
        Ok(Self {
            lifetime_secs,
            client_ip,
            op,
            options,
        })
    }
}

/// A PCP response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Response {
    /// The result.
    pub result: ResultCode,
    /// On success, the lifetime granted in seconds; on error, how long the
    /// error is expected to last.
    pub lifetime_secs: u32,
    /// Seconds since the server's start of epoch; feed it to
    /// [`LeaseScheduler::on_gateway_epoch`](crate::lease::LeaseScheduler::on_gateway_epoch).
    pub epoch_secs: u32,
    /// The opcode and its data.
    pub op: OpData,
    /// Options, in order.
    pub options: Vec<PcpOption>,
}

impl Response {
    /// The wire form. Fails if the response is over [`MAX_MESSAGE_BYTES`]
    /// or could not parse back to itself (see [`OpData::Other`]).
    pub fn emit(&self) -> Result<Vec<u8>, Error> {
        let mut out = start_message(&self.op, &self.options)?;
        out.push(VERSION);
        out.push(self.op.opcode() | RESPONSE_BIT);
        out.push(0);
        out.push(self.result.to_u8());
        out.put_u32(self.lifetime_secs);
        out.put_u32(self.epoch_secs);
        out.extend_from_slice(&[0; 12]);
        Ok(finish_message(out, &self.op, &self.options))
    }

    /// Parses a response. A NAT-PMP answer gives
    /// [`Error::UnsupportedVersion`] with version 0.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(buf);
        let (is_response, opcode) = check_message(&mut r, buf.len())?;
        if !is_response {
            return Err(Error::NotAResponse);
        }
        let header = Error::Truncated { what: "header" };
        r.take(1).ok_or(header.clone())?;
        let result = ResultCode::from_u8(r.u8().ok_or(header.clone())?);
        let lifetime_secs = r.u32().ok_or(header.clone())?;
        let epoch_secs = r.u32().ok_or(header.clone())?;
        r.take(12).ok_or(header)?;
        let (op, options) = OpData::parse(opcode, r.rest())?;
        Ok(Self {
            result,
            lifetime_secs,
            epoch_secs,
            op,
            options,
        })
    }

    /// Checks that this response answers `request` (RFC 6887 §11.3): same
    /// opcode, and for MAP the same nonce, protocol and internal port.
    /// Drop responses that fail: they are stale or forged.
    pub fn check_answers(&self, request: &Request) -> Result<(), Mismatch> {
        let (req_op, resp_op) = (request.op.opcode(), self.op.opcode());
        if req_op != resp_op {
            return Err(Mismatch::Opcode {
                request: req_op,
                response: resp_op,
            });
        }
        let Some(req) = request.op.map() else {
            return Ok(());
        };
        let resp = self.op.map().ok_or(Mismatch::MissingMapData)?;
        if req.nonce != resp.nonce {
            return Err(Mismatch::Nonce);
        }
        if req.protocol != resp.protocol {
            return Err(Mismatch::Protocol {
                request: req.protocol,
                response: resp.protocol,
            });
        }
        if req.internal_port != resp.internal_port {
            return Err(Mismatch::InternalPort {
                request: req.internal_port,
                response: resp.internal_port,
            });
        }
        Ok(())
    }
}

/// Validates what is about to be emitted and allocates the buffer.
fn start_message(op: &OpData, options: &[PcpOption]) -> Result<Vec<u8>, Error> {
    op.validate(options)?;
    let len = options
        .iter()
        .fold(HEADER_BYTES.saturating_add(op.wire_len()), |acc, o| {
            acc.saturating_add(o.wire_len())
        });
    if len > MAX_MESSAGE_BYTES {
        return Err(Error::TooLong { len });
    }
    Ok(Vec::with_capacity(len))
}

/// Appends opcode data and options to a header.
fn finish_message(mut out: Vec<u8>, op: &OpData, options: &[PcpOption]) -> Vec<u8> {
    op.emit_into(&mut out);
    for o in options {
        o.emit_into(&mut out);
    }
    out
}

/// Checks version and length; returns (R bit, opcode).
fn check_message(r: &mut Reader<'_>, len: usize) -> Result<(bool, u8), Error> {
    let version = r.u8().ok_or(Error::Truncated { what: "header" })?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion { version });
    }
    if len > MAX_MESSAGE_BYTES {
        return Err(Error::TooLong { len });
    }
    if len < HEADER_BYTES {
        return Err(Error::Truncated { what: "header" });
    }
    if !len.is_multiple_of(4) {
        return Err(Error::NotMultipleOf4 { len });
    }
    let op = r.u8().ok_or(Error::Truncated { what: "header" })?;
    Ok((op & RESPONSE_BIT != 0, op & !RESPONSE_BIT))
}

#[cfg(test)]
mod tests;
