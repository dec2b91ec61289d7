//! The punch messages on the wire: a compact binary form that fits a
//! rendezvous message payload (at most [`MAX_MESSAGE_BYTES`]).
//!
//! All integers are big-endian.
//!
//! | field | bytes | contents |
//! |---|---|---|
//! | version | 1 | [`WIRE_VERSION`] |
//! | type | 1 | [`MessageType`]: 1 `Connect`, 2 `ConnectReply`, 3 `Sync`, 4 `Cancel`, 5 `Reverse` |
//! | correlation id | 8 | chosen by the initiator, the same in every message of one punch |
//! | attempt | 1 | 1 for the first attempt, never 0 |
//! | body | | `Connect`/`ConnectReply`/`Reverse`: a count (0 to [`MAX_PUNCH_ADDRS`]), then per address a family byte (4 or 6), the IP (4 or 16 bytes) and the TCP port (2, never 0). `Sync`: empty. `Cancel`: one [`CancelReason`] byte. |
//!
//! Nothing may follow the body. The largest message (8 IPv6 addresses) is
//! 164 bytes. [`Message::parse`] never panics; every failure is a
//! [`WireError`]. [`Message::emit`] is its exact inverse.
//!
//! On the rendezvous channel each message travels in a [`Signal`]: first the
//! sender's rendezvous points to answer through (a count, 0 to
//! [`MAX_REPLY_VIA`], then addresses as above, UDP ports), then the message.
//! A node behind NAT can only be reached through the rendezvous nodes it
//! registered with, and the receiver would otherwise have to look them up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version this implementation writes and reads.
pub const WIRE_VERSION: u8 = 1;

/// Largest punch message accepted or written: the payload limit of a natkit
/// rendezvous message.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// Most addresses in one `Connect` or `ConnectReply`: the UNL's limit.
pub const MAX_PUNCH_ADDRS: usize = 8;

/// Most rendezvous points in a [`Signal`] (the UNL's limit).
pub const MAX_REPLY_VIA: usize = 4;

const HEADER_BYTES: usize = 11;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// The type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Initiator to responder: my addresses; starts an attempt.
    Connect = 1,
    /// Responder to initiator: my addresses.
    ConnectReply = 2,
    /// Initiator to responder: dial now.
    Sync = 3,
    /// Either way: I give up this punch.
    Cancel = 4,
    /// A reachable node to one that is not: dial me (a reverse connect; no
    /// simultaneous open). Answered only by `Cancel` when refused.
    Reverse = 5,
}

impl MessageType {
    fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(MessageType::Connect),
            2 => Ok(MessageType::ConnectReply),
            3 => Ok(MessageType::Sync),
            4 => Ok(MessageType::Cancel),
            5 => Ok(MessageType::Reverse),
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Why a side gave up (carried by `Cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// The punch ran out of time.
    Timeout = 1,
    /// Every attempt failed.
    AttemptsExhausted = 2,
    /// The request was refused by an abuse limit.
    Refused = 3,
    /// The connection was made some other way (another attempt of the plan).
    Connected = 4,
    /// The application stopped the connect.
    Aborted = 5,
}

impl CancelReason {
    fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(CancelReason::Timeout),
            2 => Ok(CancelReason::AttemptsExhausted),
            3 => Ok(CancelReason::Refused),
            4 => Ok(CancelReason::Connected),
            5 => Ok(CancelReason::Aborted),
            other => Err(WireError::UnknownCancelReason(other)),
        }
    }
}

/// A punch message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// Starts attempt `attempt`: the initiator's public TCP addresses.
    Connect {
        /// Correlation id of the punch.
        id: u64,
        /// Attempt number, from 1.
        attempt: u8,
        /// Observed (and predicted) addresses to dial.
        addrs: Vec<SocketAddr>,
    },
    /// The responder's answer to `Connect`: its addresses.
    ConnectReply {
        /// Correlation id of the punch.
        id: u64,
        /// The attempt being answered.
        attempt: u8,
        /// Observed (and predicted) addresses to dial.
        addrs: Vec<SocketAddr>,
    },
    /// The responder dials when this arrives; the initiator half an RTT later.
    Sync {
        /// Correlation id of the punch.
        id: u64,
        /// The attempt.
        attempt: u8,
    },
    /// The sender gave up the punch.
    Cancel {
        /// Correlation id of the punch.
        id: u64,
        /// The attempt it gave up in.
        attempt: u8,
        /// Why.
        reason: CancelReason,
    },
    /// Dial me: the sender is reachable at these public TCP addresses.
    Reverse {
        /// Correlation id (for a `Cancel` back).
        id: u64,
        /// 1 (a reverse connect has one attempt; the field keeps the header
        /// the same for every type).
        attempt: u8,
        /// The sender's public addresses (the receiver dials only those on
        /// the IP address the message came from).
        addrs: Vec<SocketAddr>,
    },
}

/// Everything that can be wrong with a punch message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MAX_MESSAGE_BYTES`].
    #[error("punch message of {len} bytes; at most {max}")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes end before `field`.
    #[error("punch message truncated: {field} is missing")]
    Truncated {
        /// The missing field.
        field: &'static str,
    },
    /// A version this implementation does not read.
    #[error("unknown punch message version {0} (this natkit reads {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// An unknown type byte.
    #[error("unknown punch message type {0}")]
    UnknownType(u8),
    /// Attempt number 0.
    #[error("punch attempt number 0 (attempts count from 1)")]
    ZeroAttempt,
    /// More addresses than [`MAX_PUNCH_ADDRS`].
    #[error("{0} addresses in a punch message; at most {MAX_PUNCH_ADDRS}")]
    TooManyAddrs(usize),
    /// An address family byte other than 4 or 6.
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
    /// An address with port 0.
    #[error("address with port 0 in a punch message")]
    ZeroPort,
    /// An unknown cancel reason.
    #[error("unknown cancel reason {0}")]
    UnknownCancelReason(u8),
    /// Bytes after the end of the message.
    #[error("{0} unexpected bytes after the punch message")]
    TrailingBytes(usize),
    /// More reply-via addresses than [`MAX_REPLY_VIA`].
    #[error("{0} reply-via addresses in a signal; at most {MAX_REPLY_VIA}")]
    TooManyVia(usize),
}

/// A message with the sender's rendezvous points, as carried on the
/// rendezvous channel (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signal {
    /// Where to send the answer: the sender's rendezvous points (UDP).
    pub reply_via: Vec<SocketAddr>,
    /// The message.
    pub message: Message,
}

impl Signal {
    /// Parses a signal. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Signal, WireError> {
        let max = MAX_MESSAGE_BYTES + 1 + MAX_REPLY_VIA * 19;
        if bytes.len() > max {
            return Err(WireError::TooLong {
                len: bytes.len(),
                max,
            });
        }
        let mut r = Reader { rest: bytes };
        let count = usize::from(r.u8("reply-via count")?);
        if count > MAX_REPLY_VIA {
            return Err(WireError::TooManyVia(count));
        }
        let reply_via = (0..count)
            .map(|_| read_addr(&mut r))
            .collect::<Result<_, _>>()?;
        Ok(Signal {
            reply_via,
            message: Message::parse(r.rest)?,
        })
    }

    /// The wire form; refuses what [`parse`](Signal::parse) would refuse.
    pub fn emit(&self) -> Result<Vec<u8>, WireError> {
        if self.reply_via.len() > MAX_REPLY_VIA {
            return Err(WireError::TooManyVia(self.reply_via.len()));
        }
        let mut out = Vec::new();
        write_addrs(&mut out, &self.reply_via)?;
        out.extend_from_slice(&self.message.emit()?);
        Ok(out)
    }
}

impl Message {
    /// The correlation id.
    pub fn id(&self) -> u64 {
        match self {
            Message::Connect { id, .. }
            | Message::ConnectReply { id, .. }
            | Message::Sync { id, .. }
            | Message::Cancel { id, .. }
            | Message::Reverse { id, .. } => *id,
        }
    }

    /// The attempt number.
    pub fn attempt(&self) -> u8 {
        match self {
            Message::Connect { attempt, .. }
            | Message::ConnectReply { attempt, .. }
            | Message::Sync { attempt, .. }
            | Message::Cancel { attempt, .. }
            | Message::Reverse { attempt, .. } => *attempt,
        }
    }

    /// The type.
    pub fn kind(&self) -> MessageType {
        match self {
            Message::Connect { .. } => MessageType::Connect,
            Message::ConnectReply { .. } => MessageType::ConnectReply,
            Message::Sync { .. } => MessageType::Sync,
            Message::Cancel { .. } => MessageType::Cancel,
            Message::Reverse { .. } => MessageType::Reverse,
        }
    }

    /// Parses a message. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLong {
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let mut r = Reader { rest: bytes };
        let version = r.u8("version")?;
        if version != WIRE_VERSION {
            return Err(WireError::UnknownVersion(version));
        }
        let kind = MessageType::from_byte(r.u8("type")?)?;
        let id = r.u64("correlation id")?;
        let attempt = r.u8("attempt")?;
        if attempt == 0 {
            return Err(WireError::ZeroAttempt);
        }
        let msg = match kind {
            MessageType::Connect => Message::Connect {
                id,
                attempt,
                addrs: read_addrs(&mut r)?,
            },
            MessageType::ConnectReply => Message::ConnectReply {
                id,
                attempt,
                addrs: read_addrs(&mut r)?,
            },
            MessageType::Sync => Message::Sync { id, attempt },
            MessageType::Cancel => Message::Cancel {
                id,
                attempt,
                reason: CancelReason::from_byte(r.u8("cancel reason")?)?,
            },
            MessageType::Reverse => Message::Reverse {
                id,
                attempt,
                addrs: read_addrs(&mut r)?,
            },
        };
        match r.rest.len() {
            0 => Ok(msg),
            n => Err(WireError::TrailingBytes(n)),
        }
    }

    /// The wire form. Refuses what [`parse`](Message::parse) would refuse
    /// (attempt 0, too many addresses, port 0).
    pub fn emit(&self) -> Result<Vec<u8>, WireError> {
        if self.attempt() == 0 {
            return Err(WireError::ZeroAttempt);
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + 1);
        out.push(WIRE_VERSION);
        out.push(self.kind() as u8);
        out.extend_from_slice(&self.id().to_be_bytes());
        out.push(self.attempt());
        match self {
            Message::Connect { addrs, .. }
            | Message::ConnectReply { addrs, .. }
            | Message::Reverse { addrs, .. } => {
                write_addrs(&mut out, addrs)?;
            }
            Message::Sync { .. } => {}
            Message::Cancel { reason, .. } => out.push(*reason as u8),
        }
        Ok(out)
    }
}

fn read_addrs(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, WireError> {
    let count = usize::from(r.u8("address count")?);
    if count > MAX_PUNCH_ADDRS {
        return Err(WireError::TooManyAddrs(count));
    }
    (0..count).map(|_| read_addr(r)).collect()
}

fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, WireError> {
    let ip = match r.u8("address family")? {
        FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("IPv4 address")?)),
        FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("IPv6 address")?)),
        other => return Err(WireError::UnknownFamily(other)),
    };
    let port = u16::from_be_bytes(r.array::<2>("port")?);
    if port == 0 {
        return Err(WireError::ZeroPort);
    }
    Ok(SocketAddr::new(ip, port))
}

fn write_addrs(out: &mut Vec<u8>, addrs: &[SocketAddr]) -> Result<(), WireError> {
    let count = u8::try_from(addrs.len())
        .ok()
        .filter(|c| usize::from(*c) <= MAX_PUNCH_ADDRS)
        .ok_or(WireError::TooManyAddrs(addrs.len()))?;
    out.push(count);
    for a in addrs {
        if a.port() == 0 {
            return Err(WireError::ZeroPort);
        }
        match a.ip() {
            IpAddr::V4(v4) => {
                out.push(FAMILY_V4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(FAMILY_V6);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&a.port().to_be_bytes());
    }
    Ok(())
}

/// A cursor that never reads past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated { field })?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.array::<8>(field).map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests;
