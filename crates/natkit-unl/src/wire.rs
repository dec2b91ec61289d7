//! The binary layout and the text form of a UNL (specified in `docs/unl.md`).
//!
//! ```text
//! header      1   version << 4 | flags (bit 0: signed; bits 1-3 reserved, 0)
//! public key  32  ed25519
//! types       1   bits 0-2 NAT type, bits 4-5 node type (bits 3, 6, 7 reserved, 0)
//! delta       2   i16 big-endian, only when the NAT type is `incrementing`
//! timestamp   4   u32 big-endian, Unix seconds (0 = unset)
//! counts      1   addresses << 4 | rendezvous points
//! address     *   tag (bit 7: IPv6, bits 0-2: source, others 0), IP (4 | 16), port (2, BE)
//! rendezvous  *   tag (bit 7: IPv6, others 0), IP (4 | 16), port (2, BE)
//! signature   64  only when signed
//! ```
//!
//! Text form: `nk` + base32 (lowercase, no padding) of the binary form followed
//! by its CRC-32 (IEEE, big-endian).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use natkit_identity::{NodeId, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Signature, base32};

use crate::{AddrSource, Candidate, MAX_ADDRS, MAX_RENDEZVOUS, NatType, NodeType, Unl, UnlError};

/// The UNL version this crate reads and writes.
pub const VERSION: u8 = 1;
/// Every UNL's text form starts with this.
pub const TEXT_PREFIX: &str = "nk";
/// Domain separation for UNL signatures.
const SIGN_DOMAIN: &[u8] = b"natkit-unl-v1\0";

const FLAG_SIGNED: u8 = 0x01;
const TAG_V6: u8 = 0x80;
const CHECKSUM_BYTES: usize = 4;
const ENTRY_V6_BYTES: usize = 1 + 16 + 2;

/// Largest possible binary UNL: the fixed fields, a delta, [`MAX_ADDRS`]
/// IPv6 addresses, [`MAX_RENDEZVOUS`] IPv6 rendezvous points and a signature
/// (333 bytes).
pub const MAX_BINARY_BYTES: usize =
    FIXED_BYTES + DELTA_BYTES + (MAX_ADDRS + MAX_RENDEZVOUS) * ENTRY_V6_BYTES + SIGNATURE_BYTES;

/// Longest possible UNL text: the text form of [`MAX_BINARY_BYTES`] (542
/// characters). Longer input is refused before any decoding.
pub const MAX_TEXT_CHARS: usize = text_len(MAX_BINARY_BYTES);

/// Header, public key, types, timestamp and counts: what every UNL has.
const FIXED_BYTES: usize = 1 + PUBLIC_KEY_BYTES + 1 + 4 + 1;
/// The port delta of an `incrementing` NAT.
const DELTA_BYTES: usize = 2;
/// Smallest binary UNL: a key and nothing else.
const MIN_BINARY_BYTES: usize = FIXED_BYTES;
const ENTRY_V4_BYTES: usize = 1 + 4 + 2;

/// Length of the text form of a binary UNL of `binary` bytes: the prefix
/// and the base32 (5 bits a character, no padding) of the bytes and the
/// checksum.
pub const fn text_len(binary: usize) -> usize {
    TEXT_PREFIX.len() + ((binary + CHECKSUM_BYTES) * 8).div_ceil(5)
}

pub(crate) fn emit_text(unl: &Unl) -> String {
    let mut bin = encode(unl);
    let crc = crc32fast::hash(&bin);
    bin.extend_from_slice(&crc.to_be_bytes());
    let mut s = String::with_capacity(TEXT_PREFIX.len() + base32::encoded_len(bin.len()));
    s.push_str(TEXT_PREFIX);
    s.push_str(&base32::encode(&bin));
    s
}

pub(crate) fn parse_text(text: &str) -> Result<Unl, UnlError> {
    let text = text.trim();
    if text.len() > MAX_TEXT_CHARS {
        let len = text.chars().count();
        if len > MAX_TEXT_CHARS {
            return Err(UnlError::TooLong {
                len,
                max: MAX_TEXT_CHARS,
            });
        }
    }
    let body = text
        .get(..TEXT_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(TEXT_PREFIX))
        .and_then(|_| text.get(TEXT_PREFIX.len()..))
        .ok_or(UnlError::MissingPrefix)?;
    if let Some((i, character)) = body.chars().enumerate().find(|(_, c)| !is_base32(*c)) {
        return Err(UnlError::BadCharacter {
            position: TEXT_PREFIX.len() + i + 1,
            character,
        });
    }
    // Every character is in the alphabet now: decoding fails only on a length
    // no byte string has, or on non-zero trailing bits (a cut or a typo in the
    // last character); `diagnose` tells which.
    let bin = base32::decode(body).unwrap_or_default();
    let split = bin.len().checked_sub(CHECKSUM_BYTES);
    match split.map(|at| bin.split_at(at)) {
        Some((data, crc)) if crc32fast::hash(data).to_be_bytes() == crc => decode(data),
        _ => Err(diagnose(text.len(), body)),
    }
}

fn is_base32(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_uppercase() || ('2'..='7').contains(&c)
}

/// What is wrong with a text of `len` characters (all in the alphabet) that
/// does not decode to bytes with a matching checksum: it is shorter than its
/// own header says (cut when copied), longer (extra characters), or a
/// character in it is wrong.
fn diagnose(len: usize, body: &str) -> UnlError {
    // Whole groups of 8 characters (5 bytes) always decode.
    let whole = body.len() / 8 * 8;
    let start = body.get(..whole).and_then(|b| base32::decode(b).ok());
    match start.and_then(|b| needed_bytes(&b)) {
        Some(Needed::AtLeast(n)) if len < text_len(n) => UnlError::Incomplete {
            len,
            needs: text_len(n),
        },
        Some(Needed::Exactly(n)) if len < text_len(n) => UnlError::Incomplete {
            len,
            needs: text_len(n),
        },
        Some(Needed::Exactly(n)) if len > text_len(n) => UnlError::ExtraCharacters {
            len,
            expected: text_len(n),
        },
        _ => UnlError::BadChecksum,
    }
}

/// How long a binary UNL is, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    /// The bytes end before the field that fixes the length: at least this.
    AtLeast(usize),
    /// The header, types, counts and every entry tag were there: exactly this.
    Exactly(usize),
}

/// The length of the binary UNL that starts with `bytes` (without the
/// checksum), read from its header, types, counts and entry tags; `None` if
/// those are not a UNL's (a typo in them).
fn needed_bytes(bytes: &[u8]) -> Option<Needed> {
    let Some(&header) = bytes.first() else {
        return Some(Needed::AtLeast(MIN_BINARY_BYTES));
    };
    if header >> 4 != VERSION || header & 0x0f & !FLAG_SIGNED != 0 {
        return None;
    }
    let sig = if header & FLAG_SIGNED != 0 {
        SIGNATURE_BYTES
    } else {
        0
    };
    let Some(&types) = bytes.get(1 + PUBLIC_KEY_BYTES) else {
        return Some(Needed::AtLeast(MIN_BINARY_BYTES + sig));
    };
    let delta = if types & 0x07 == 3 { DELTA_BYTES } else { 0 };
    let counts_at = FIXED_BYTES - 1 + delta;
    let Some(&counts) = bytes.get(counts_at) else {
        return Some(Needed::AtLeast(FIXED_BYTES + delta + sig));
    };
    let (na, nr) = (usize::from(counts >> 4), usize::from(counts & 0x0f));
    if na > MAX_ADDRS || nr > MAX_RENDEZVOUS {
        return None;
    }
    let mut need = FIXED_BYTES + delta;
    for left in (1..=na + nr).rev() {
        let Some(&tag) = bytes.get(need) else {
            return Some(Needed::AtLeast(need + left * ENTRY_V4_BYTES + sig));
        };
        need += if tag & TAG_V6 != 0 {
            ENTRY_V6_BYTES
        } else {
            ENTRY_V4_BYTES
        };
    }
    Some(Needed::Exactly(need + sig))
}

/// The bytes a signature covers: a domain tag and the binary form without the
/// signature (with the signed flag set).
pub(crate) fn signed_message(unl: &Unl) -> Vec<u8> {
    let mut msg = SIGN_DOMAIN.to_vec();
    encode_body(unl, true, &mut msg);
    msg
}

pub(crate) fn encode(unl: &Unl) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_body(unl, unl.signature.is_some(), &mut out);
    if let Some(sig) = &unl.signature {
        out.extend_from_slice(&sig.to_bytes());
    }
    out
}

fn encode_body(unl: &Unl, signed: bool, out: &mut Vec<u8>) {
    out.push(VERSION << 4 | if signed { FLAG_SIGNED } else { 0 });
    out.extend_from_slice(unl.node_id.as_bytes());
    let (nat, delta) = match unl.nat {
        NatType::Unknown => (0, None),
        NatType::Open => (1, None),
        NatType::Consistent => (2, None),
        NatType::Incrementing { delta } => (3, Some(delta)),
        NatType::Random => (4, None),
    };
    let node = match unl.node {
        NodeType::Unknown => 0,
        NodeType::Reachable => 1,
        NodeType::HolePunch => 2,
        NodeType::OutboundOnly => 3,
    };
    out.push(nat | node << 4);
    if let Some(d) = delta {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(&unl.timestamp.to_be_bytes());
    // Counts are clamped to the nibble; `parse` refuses UNLs over the limits, and
    // `try_emit`/`sign` check them first.
    let na = unl.addrs.len().min(15) as u8;
    let nr = unl.rendezvous.len().min(15) as u8;
    out.push(na << 4 | nr);
    for c in unl.addrs.iter().take(15) {
        let src = AddrSource::ALL
            .iter()
            .position(|s| *s == c.source)
            .unwrap_or(0) as u8;
        put_addr(out, src, c.addr);
    }
    for a in unl.rendezvous.iter().take(15) {
        put_addr(out, 0, *a);
    }
}

fn put_addr(out: &mut Vec<u8>, low_bits: u8, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(low_bits);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(TAG_V6 | low_bits);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], UnlError> {
        if self.buf.len() < n {
            return Err(UnlError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], UnlError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, UnlError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn addr(&mut self, field: &'static str) -> Result<(u8, SocketAddr), UnlError> {
        let tag = self.u8(field)?;
        let ip = if tag & TAG_V6 != 0 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?))
        };
        let port = u16::from_be_bytes(self.array::<2>(field)?);
        if port == 0 {
            return Err(UnlError::ZeroPort { field });
        }
        Ok((tag & !TAG_V6, SocketAddr::new(ip, port)))
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Unl, UnlError> {
    let mut r = Reader { buf: bytes };
    let header = r.u8("header")?;
    let version = header >> 4;
    if version != VERSION {
        return Err(UnlError::UnknownVersion(version));
    }
    if header & 0x0f & !FLAG_SIGNED != 0 {
        return Err(UnlError::ReservedBits { field: "header" });
    }
    let key = r.array::<PUBLIC_KEY_BYTES>("public key")?;
    let node_id = NodeId::from_bytes(&key).map_err(|_| UnlError::BadPublicKey)?;
    let types = r.u8("NAT and node type")?;
    if types & 0b1100_1000 != 0 {
        return Err(UnlError::ReservedBits {
            field: "NAT and node type",
        });
    }
    let nat = match types & 0x07 {
        0 => NatType::Unknown,
        1 => NatType::Open,
        2 => NatType::Consistent,
        3 => NatType::Incrementing {
            delta: i16::from_be_bytes(r.array::<2>("NAT delta")?),
        },
        4 => NatType::Random,
        n => return Err(UnlError::UnknownNatType(n)),
    };
    let node = match (types >> 4) & 0x03 {
        0 => NodeType::Unknown,
        1 => NodeType::Reachable,
        2 => NodeType::HolePunch,
        _ => NodeType::OutboundOnly,
    };
    let timestamp = u32::from_be_bytes(r.array::<4>("timestamp")?);
    let counts = r.u8("address counts")?;
    let (na, nr) = ((counts >> 4) as usize, (counts & 0x0f) as usize);
    if na > MAX_ADDRS {
        return Err(UnlError::TooManyAddrs(na));
    }
    if nr > MAX_RENDEZVOUS {
        return Err(UnlError::TooManyRendezvous(nr));
    }
    let mut addrs = Vec::with_capacity(na);
    for _ in 0..na {
        let (tag, addr) = r.addr("address")?;
        if tag & !0x07 != 0 {
            return Err(UnlError::ReservedBits {
                field: "address tag",
            });
        }
        let source = *AddrSource::ALL
            .get(tag as usize)
            .ok_or(UnlError::UnknownAddrSource(tag))?;
        addrs.push(Candidate { source, addr });
    }
    let mut rendezvous = Vec::with_capacity(nr);
    for _ in 0..nr {
        let (tag, addr) = r.addr("rendezvous point")?;
        if tag != 0 {
            return Err(UnlError::ReservedBits {
                field: "rendezvous tag",
            });
        }
        rendezvous.push(addr);
    }
    let signature = if header & FLAG_SIGNED != 0 {
        let sig = r.array::<SIGNATURE_BYTES>("signature")?;
        Some(Signature::from_bytes(&sig))
    } else {
        None
    };
    if !r.buf.is_empty() {
        return Err(UnlError::TrailingBytes(r.buf.len()));
    }
    let unl = Unl {
        node_id,
        addrs,
        nat,
        node,
        rendezvous,
        timestamp,
        signature,
    };
    unl.verify()?;
    Ok(unl)
}
