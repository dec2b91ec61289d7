//! The Universal Node Locator (UNL): a short string that says how to reach a
//! natkit node.
//!
//! A UNL carries the node's public key (its id), its candidate addresses and how
//! each was learned, its NAT type, its node type, the rendezvous points that
//! forward messages to it, a timestamp and, optionally, a signature by the node's
//! identity key so that a UNL passed on by others can be checked.
//!
//! This crate does no I/O. The binary layout and the text form are specified in
//! `docs/unl.md`; this crate is the reference implementation of that document.
//!
//! # Layout
//! - [`Unl`] and its parts ([`Candidate`], [`AddrSource`], [`NatType`], [`NodeType`]).
//! - [`Unl::parse`] / [`Unl::emit`]: the text form (`nk` + base32 of the binary
//!   form and a CRC-32), exact inverses of each other.
//! - [`Unl::decode`] / [`Unl::encode`]: the binary form, for embedding in other
//!   messages.
//! - [`Unl::dials_first`]: the rule that decides which side of a pair dials.
//!
//! # Example
//! ```
//! use natkit_identity::Keypair;
//! use natkit_unl::{AddrSource, NatType, NodeType, Unl};
//!
//! let key = Keypair::from_seed([3; 32]);
//! let mut unl = Unl::new(key.node_id());
//! unl.add_addr(AddrSource::Lan, "10.0.1.2:50500".parse().unwrap()).unwrap();
//! unl.add_addr(AddrSource::Observed, "203.0.113.10:50500".parse().unwrap()).unwrap();
//! unl.nat = NatType::Consistent;
//! unl.node = NodeType::HolePunch;
//!
//! let text = unl.emit();
//! assert!(text.len() <= 100);
//! assert_eq!(Unl::parse(&text).unwrap(), unl);
//!
//! // Signed, so that others can pass it on without being able to change it.
//! unl.sign(&key).unwrap();
//! assert!(Unl::parse(&unl.emit()).unwrap().signature.is_some());
//! ```

use std::fmt;
use std::net::SocketAddr;

use natkit_identity::{Keypair, NodeId, Signature};
use serde::{Deserialize, Serialize};

mod dial;
mod wire;

pub use wire::{MAX_BINARY_BYTES, MAX_TEXT_CHARS, TEXT_PREFIX, VERSION, text_len};

/// Most candidate addresses a UNL may carry. Enough for LAN IPv4 and IPv6, an
/// observed address, a mapped one and a manual one with room to spare, while
/// keeping the string pasteable.
pub const MAX_ADDRS: usize = 8;
/// Most rendezvous points a UNL may carry (hyperdht keeps 3 relay nodes; one
/// spare).
pub const MAX_RENDEZVOUS: usize = 4;

/// Everything that can be wrong with a UNL. Parsing never panics; it returns one
/// of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnlError {
    /// The text does not start with `nk`.
    #[error("not a UNL: it must start with \"{TEXT_PREFIX}\"")]
    MissingPrefix,
    /// The text is longer than any UNL can be.
    #[error("UNL text is {len} characters long; no UNL is longer than {max}")]
    TooLong {
        /// Characters given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character that is not in the base32 alphabet (`a-z`, `2-7`).
    #[error(
        "UNL has a character that cannot be in a UNL at position {position}: {character:?} (after \"{TEXT_PREFIX}\" a UNL has only a-z and 2-7)"
    )]
    BadCharacter {
        /// Position of the character in the text, counting from 1 and
        /// counting the prefix.
        position: usize,
        /// The character.
        character: char,
    },
    /// The text is shorter than the UNL its first characters describe: a
    /// copy that was cut short.
    #[error(
        "UNL is incomplete: it has {len} characters, and the UNL it starts needs at least {needs} (cut short when copied?)"
    )]
    Incomplete {
        /// Characters given.
        len: usize,
        /// Characters the UNL needs, as far as its first characters tell.
        needs: usize,
    },
    /// The text is longer than the UNL its first characters describe.
    #[error(
        "UNL has {len} characters, but its fields fill {expected}: extra characters at its end, or a typo"
    )]
    ExtraCharacters {
        /// Characters given.
        len: usize,
        /// Characters the UNL has, by its header and counts.
        expected: usize,
    },
    /// The checksum does not match although the length is right: a
    /// character is wrong.
    #[error("UNL checksum does not match: a character is wrong (a typo?)")]
    BadChecksum,
    /// The binary form ends before the field that was being read.
    #[error("UNL is truncated: {field} is missing")]
    Truncated {
        /// The field that could not be read.
        field: &'static str,
    },
    /// A version this implementation does not know.
    #[error("unknown UNL version {0} (this natkit reads version {VERSION})")]
    UnknownVersion(u8),
    /// Bits that must be zero were set.
    #[error("reserved bits set in {field}")]
    ReservedBits {
        /// The field.
        field: &'static str,
    },
    /// An unknown address source tag.
    #[error("unknown address source {0}")]
    UnknownAddrSource(u8),
    /// An unknown NAT type.
    #[error("unknown NAT type {0}")]
    UnknownNatType(u8),
    /// A candidate or rendezvous address with port 0.
    #[error("{field} has port 0")]
    ZeroPort {
        /// Which list the address is in.
        field: &'static str,
    },
    /// More candidate addresses than [`MAX_ADDRS`].
    #[error("too many addresses: {0} (at most {MAX_ADDRS})")]
    TooManyAddrs(usize),
    /// More rendezvous points than [`MAX_RENDEZVOUS`].
    #[error("too many rendezvous points: {0} (at most {MAX_RENDEZVOUS})")]
    TooManyRendezvous(usize),
    /// The public key is not a valid ed25519 key.
    #[error("the UNL's public key is not a valid ed25519 key")]
    BadPublicKey,
    /// The signature does not verify against the UNL's key.
    #[error("the UNL's signature does not verify (it was changed after signing)")]
    BadSignature,
    /// Signing with a key that is not the UNL's key.
    #[error("cannot sign a UNL for node {unl} with the key of node {key}")]
    WrongSigningKey {
        /// The UNL's node id.
        unl: NodeId,
        /// The key offered.
        key: NodeId,
    },
    /// Bytes after the last field.
    #[error("{0} unexpected bytes after the end of the UNL")]
    TrailingBytes(usize),
}

/// How a candidate address was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddrSource {
    /// An address of a local interface.
    Lan,
    /// The public address that other nodes saw us connect from.
    Observed,
    /// A mapping made with UPnP IGD.
    Upnp,
    /// A mapping made with NAT-PMP.
    NatPmp,
    /// A mapping made with PCP.
    Pcp,
    /// Configured by the user (a manual port forward, a known public IP).
    Manual,
    /// An address on a relay that forwards to this node.
    Relay,
}

impl AddrSource {
    /// All sources, in wire order.
    pub const ALL: [AddrSource; 7] = [
        AddrSource::Lan,
        AddrSource::Observed,
        AddrSource::Upnp,
        AddrSource::NatPmp,
        AddrSource::Pcp,
        AddrSource::Manual,
        AddrSource::Relay,
    ];

    /// Whether the address is a forwarding on the router: mapped with UPnP,
    /// NAT-PMP or PCP, or configured by hand. It reaches the node whatever its
    /// NAT type.
    ///
    /// ```
    /// use natkit_unl::AddrSource;
    ///
    /// assert!(AddrSource::Pcp.is_mapping());
    /// assert!(!AddrSource::Observed.is_mapping());
    /// ```
    pub fn is_mapping(self) -> bool {
        matches!(
            self,
            AddrSource::Upnp | AddrSource::NatPmp | AddrSource::Pcp | AddrSource::Manual
        )
    }

    /// The name used in text and JSON (`lan`, `observed`, `upnp`, `nat-pmp`, `pcp`, `manual`, `relay`).
    pub fn name(self) -> &'static str {
        match self {
            AddrSource::Lan => "lan",
            AddrSource::Observed => "observed",
            AddrSource::Upnp => "upnp",
            AddrSource::NatPmp => "nat-pmp",
            AddrSource::Pcp => "pcp",
            AddrSource::Manual => "manual",
            AddrSource::Relay => "relay",
        }
    }
}

impl fmt::Display for AddrSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AddrSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AddrSource::ALL
            .into_iter()
            .find(|a| a.name() == s || (s == "natpmp" && *a == AddrSource::NatPmp))
            .ok_or_else(|| {
                format!(
                    "unknown address source {s:?} (one of lan, observed, upnp, nat-pmp, pcp, manual, relay)"
                )
            })
    }
}

/// A candidate address: where the node may be reached, and how we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// How the address was learned.
    pub source: AddrSource,
    /// IP address and TCP port.
    pub addr: SocketAddr,
}

/// How the node's NAT maps ports (see `docs/unl.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum NatType {
    /// Not measured.
    #[default]
    Unknown,
    /// No NAT: the node's own address is public.
    Open,
    /// Endpoint-independent mapping: the same external port for every
    /// destination (port-preserving or not).
    Consistent,
    /// Each new mapping's external port is the previous one plus `delta`.
    Incrementing {
        /// The step between consecutive mappings.
        delta: i16,
    },
    /// A random external port per destination (symmetric NAT).
    Random,
}

/// What the node can do about inbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeType {
    /// Not measured.
    #[default]
    Unknown,
    /// Accepts inbound connections directly (public, forwarded or mapped).
    Reachable,
    /// Behind a NAT that TCP hole punching can cross.
    HolePunch,
    /// Can only dial out; reach it by reverse connect or through a relay.
    OutboundOnly,
}

/// A Universal Node Locator. See the [crate docs](crate) for an example.
///
/// The fields are public; if the UNL is signed, call [`Unl::sign`] again after
/// changing any of them, or [`Unl::parse`] of its text will refuse the stale
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unl {
    /// The node's public key: its id.
    pub node_id: NodeId,
    /// Candidate addresses, best first (at most [`MAX_ADDRS`]).
    pub addrs: Vec<Candidate>,
    /// The node's NAT type.
    pub nat: NatType,
    /// The node's type.
    pub node: NodeType,
    /// Rendezvous points: nodes that forward messages to this node (at most
    /// [`MAX_RENDEZVOUS`]).
    pub rendezvous: Vec<SocketAddr>,
    /// When the UNL was made, in seconds since the Unix epoch; 0 when unset.
    pub timestamp: u32,
    /// A signature by `node_id` over the rest of the UNL (see `docs/unl.md`).
    #[serde(with = "sig_hex")]
    pub signature: Option<Signature>,
}

impl Unl {
    /// A UNL with only a node id: no addresses, unknown NAT and node type.
    pub fn new(node_id: NodeId) -> Self {
        Unl {
            node_id,
            addrs: Vec::new(),
            nat: NatType::Unknown,
            node: NodeType::Unknown,
            rendezvous: Vec::new(),
            timestamp: 0,
            signature: None,
        }
    }

    /// Adds a candidate address (refusing port 0 and more than [`MAX_ADDRS`]).
    pub fn add_addr(&mut self, source: AddrSource, addr: SocketAddr) -> Result<(), UnlError> {
        if addr.port() == 0 {
            return Err(UnlError::ZeroPort { field: "address" });
        }
        if self.addrs.len() >= MAX_ADDRS {
            return Err(UnlError::TooManyAddrs(self.addrs.len() + 1));
        }
        self.addrs.push(Candidate { source, addr });
        Ok(())
    }

    /// Adds a rendezvous point (refusing port 0 and more than [`MAX_RENDEZVOUS`]).
    pub fn add_rendezvous(&mut self, addr: SocketAddr) -> Result<(), UnlError> {
        if addr.port() == 0 {
            return Err(UnlError::ZeroPort {
                field: "rendezvous point",
            });
        }
        if self.rendezvous.len() >= MAX_RENDEZVOUS {
            return Err(UnlError::TooManyRendezvous(self.rendezvous.len() + 1));
        }
        self.rendezvous.push(addr);
        Ok(())
    }

    /// Signs the UNL with the node's key. The key must be the UNL's own.
    pub fn sign(&mut self, key: &Keypair) -> Result<(), UnlError> {
        if key.node_id() != self.node_id {
            return Err(UnlError::WrongSigningKey {
                unl: self.node_id,
                key: key.node_id(),
            });
        }
        self.check_limits()?;
        let msg = wire::signed_message(self);
        self.signature = Some(key.sign(&msg));
        Ok(())
    }

    /// Checks the signature, if there is one. `Ok(false)` means unsigned.
    pub fn verify(&self) -> Result<bool, UnlError> {
        match &self.signature {
            None => Ok(false),
            Some(sig) => {
                let msg = wire::signed_message(self);
                self.node_id
                    .verify(&msg, sig)
                    .map(|()| true)
                    .map_err(|_| UnlError::BadSignature)
            }
        }
    }

    /// Parses the text form. Never panics; every failure is a typed error. A
    /// signature, if present, is verified.
    pub fn parse(text: &str) -> Result<Unl, UnlError> {
        wire::parse_text(text)
    }

    /// The text form. Panics never; a UNL that breaks the limits (too many
    /// addresses, port 0) is still emitted, and [`Unl::parse`] will refuse it:
    /// use [`Unl::try_emit`] to be told at once.
    pub fn emit(&self) -> String {
        wire::emit_text(self)
    }

    /// The text form, after checking the limits.
    pub fn try_emit(&self) -> Result<String, UnlError> {
        self.check_limits()?;
        Ok(self.emit())
    }

    /// Decodes the binary form (no prefix, no checksum). A signature, if
    /// present, is verified.
    pub fn decode(bytes: &[u8]) -> Result<Unl, UnlError> {
        wire::decode(bytes)
    }

    /// The binary form (no prefix, no checksum).
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Whether this node dials first when connecting to `other` (see
    /// `docs/unl.md`, "Who dials first"). For two different nodes exactly one of
    /// `a.dials_first(&b)` and `b.dials_first(&a)` is true; both sides reach
    /// the same answer from the two UNLs alone. For the same node id it is false.
    pub fn dials_first(&self, other: &Unl) -> bool {
        dial::dials_first(self, other)
    }

    fn check_limits(&self) -> Result<(), UnlError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(UnlError::TooManyAddrs(self.addrs.len()));
        }
        if self.rendezvous.len() > MAX_RENDEZVOUS {
            return Err(UnlError::TooManyRendezvous(self.rendezvous.len()));
        }
        if self.addrs.iter().any(|c| c.addr.port() == 0) {
            return Err(UnlError::ZeroPort { field: "address" });
        }
        if self.rendezvous.iter().any(|a| a.port() == 0) {
            return Err(UnlError::ZeroPort {
                field: "rendezvous point",
            });
        }
        Ok(())
    }
}

impl fmt::Display for Unl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.emit())
    }
}

impl std::str::FromStr for Unl {
    type Err = UnlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Unl::parse(s)
    }
}

mod sig_hex {
    use natkit_identity::Signature;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &Option<Signature>, s: S) -> Result<S::Ok, S::Error> {
        match sig {
            None => s.serialize_none(),
            Some(sig) => s.serialize_str(&data_encoding::HEXLOWER.encode(&sig.to_bytes())),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Signature>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("a signature is hexadecimal"))?;
        let arr: [u8; 64] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))?;
        Ok(Some(Signature::from_bytes(&arr)))
    }
}

#[cfg(test)]
mod tests;
