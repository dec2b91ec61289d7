//! The relay protocol's messages, without I/O.
//!
//! Two kinds of stream reach a relay, both on its listen port:
//! - a **control connection**: an ordinary natkit connection (Noise XX, both sides
//!   authenticated), whose lines are the JSON messages [`Request`] (client to relay) and
//!   [`Reply`] (relay to client), one per line ([`parse_request`]/[`emit_request`],
//!   [`parse_reply`]/[`emit_reply`]);
//! - a **circuit stream**: a plain TCP connection that starts with [`MAGIC`] and a one-time
//!   [`Token`] handed out on a control connection ([`emit_preface`]/[`parse_preface`]). When
//!   both ends of a circuit have arrived, the relay writes [`SPLICED`] to each and from then
//!   on copies bytes between them: the two nodes run their own natkit handshake through it,
//!   so the relay sees only ciphertext.
//!
//! ```
//! use natkit_relay::wire::{Request, emit_request, parse_request};
//!
//! let line = emit_request(&Request::Reserve { req: 1 });
//! assert_eq!(line, r#"{"op":"reserve","req":1}"#);
//! assert_eq!(parse_request(&line).unwrap(), Request::Reserve { req: 1 });
//! assert!(parse_request("{\"op\":\"dial\",\"addr\":\"192.0.2.1:80\"}").is_err());
//! ```

use natkit_identity::NodeId;
use serde::{Deserialize, Serialize};

use crate::limits::CircuitLimits;

/// The first bytes of a circuit stream.
pub const MAGIC: &[u8; 8] = b"NKRELAY1";

/// Bytes in a circuit token.
pub const TOKEN_BYTES: usize = 16;

/// Bytes in a circuit preface: [`MAGIC`] and the token.
pub const PREFACE_BYTES: usize = MAGIC.len() + TOKEN_BYTES;

/// What the relay writes to both ends of a circuit once they are joined.
pub const SPLICED: u8 = 1;

/// Longest control line either side accepts (a message is well under 1 KiB).
pub const MAX_CONTROL_LINE: usize = 2048;

/// A one-time secret that joins a circuit stream to the circuit it was issued for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; TOKEN_BYTES]);

impl Token {
    /// A random token (from the OS).
    pub fn random() -> Token {
        let mut t = [0u8; TOKEN_BYTES];
        // The OS's generator failing is not something to go on after.
        getrandom::fill(&mut t).expect("the OS random number generator failed");
        Token(t)
    }

    fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(s: &str) -> Option<Token> {
        if s.len() != TOKEN_BYTES * 2 || !s.is_ascii() {
            return None;
        }
        let mut t = [0u8; TOKEN_BYTES];
        for (i, b) in t.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Token(t))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: show only its first bytes.
        write!(f, "Token({}..)", &self.to_hex()[..4])
    }
}

impl Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Token::from_hex(&s).ok_or_else(|| serde::de::Error::custom("a token is 32 hex digits"))
    }
}

/// A circuit's number on its relay.
pub type CircuitId = u64;

/// A client's request on its control connection. `req` is the client's number for it,
/// echoed in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Reserve: forward circuits that others ask for to us, until the reservation expires
    /// (renew by reserving again) or this control connection closes.
    Reserve {
        /// The request's number.
        req: u32,
    },
    /// Open a circuit to the node `to`, which must hold a reservation here.
    Connect {
        /// The request's number.
        req: u32,
        /// The node to reach.
        to: NodeId,
    },
}

/// The relay's messages on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Reply {
    /// The reservation is held.
    Reserved {
        /// The request answered.
        req: u32,
        /// Seconds until it expires unless renewed.
        expires_in_s: u64,
        /// The limits every circuit to us will have.
        limits: CircuitLimits,
    },
    /// The circuit is set up on the relay: join it with `token` within
    /// [`CircuitLimits::join_timeout_s`].
    Circuit {
        /// The request answered.
        req: u32,
        /// The circuit.
        id: CircuitId,
        /// The dialer's token.
        token: Token,
        /// Its limits.
        limits: CircuitLimits,
    },
    /// A request was refused.
    Refused {
        /// The request answered (0 for a line that could not be read).
        req: u32,
        /// Why.
        reason: Refusal,
    },
    /// To a reserved node: `from` asked for a circuit to us; join it with `token`.
    Incoming {
        /// The circuit.
        id: CircuitId,
        /// The node that asked (authenticated on its own control connection).
        from: NodeId,
        /// Our token.
        token: Token,
        /// Its limits.
        limits: CircuitLimits,
    },
    /// A circuit ended at the relay, and why (sent to both ends before the relay closes
    /// their streams).
    Cut {
        /// The circuit.
        id: CircuitId,
        /// Why.
        reason: Cut,
    },
}

/// Why a relay refused a request. Each limit names its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Refusal {
    /// The node asked for holds no reservation here.
    #[error("node {node} has no reservation on this relay")]
    NotReserved {
        /// The node.
        node: NodeId,
    },
    /// A circuit to ourselves.
    #[error("a circuit to oneself")]
    SelfCircuit,
    /// The relay holds its most reservations.
    #[error("the relay holds its most reservations ({limit})")]
    Reservations {
        /// The limit.
        limit: usize,
    },
    /// Too many reservations from one IP address.
    #[error("too many reservations from one IP address (limit {limit})")]
    ReservationsPerIp {
        /// The limit.
        limit: usize,
    },
    /// The relay runs its most circuits.
    #[error("the relay runs its most circuits ({limit})")]
    Circuits {
        /// The limit.
        limit: usize,
    },
    /// The reserved node has its most circuits.
    #[error("the node has its most circuits on this relay ({limit})")]
    CircuitsPerReservation {
        /// The limit.
        limit: usize,
    },
    /// The asking node has its most circuits.
    #[error("too many circuits from one node (limit {limit})")]
    CircuitsPerPeer {
        /// The limit.
        limit: usize,
    },
    /// The asking node's IP address has its most circuits.
    #[error("too many circuits from one IP address (limit {limit})")]
    CircuitsPerIp {
        /// The limit.
        limit: usize,
    },
    /// The line was not a request.
    #[error("malformed request: {detail}")]
    Malformed {
        /// What is wrong.
        detail: String,
    },
}

/// Why a relay ended a circuit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Cut {
    /// The circuit ran for its longest time.
    #[error("the relay's circuit duration limit ({secs} s) was reached")]
    Duration {
        /// The limit, in seconds.
        secs: u64,
    },
    /// The circuit carried its most bytes.
    #[error("the relay's circuit data limit ({bytes} bytes) was reached")]
    Data {
        /// The limit, in bytes (both directions together).
        bytes: u64,
    },
    /// The other end did not join in time.
    #[error("the other end did not join the circuit within {secs} s")]
    NotJoined {
        /// The limit, in seconds.
        secs: u64,
    },
    /// One end closed its stream.
    #[error("one end closed the circuit")]
    Closed,
    /// The reserved node's control connection or reservation ended.
    #[error("the reservation ended")]
    ReservationEnded,
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    Shutdown,
}

/// Why a control line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed relay message: {0}")]
pub struct WireError(pub String);

fn parse<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, WireError> {
    if line.len() > MAX_CONTROL_LINE {
        return Err(WireError(format!(
            "{} bytes, over the {MAX_CONTROL_LINE}-byte limit",
            line.len()
        )));
    }
    serde_json::from_str(line).map_err(|e| WireError(e.to_string()))
}

fn emit<T: Serialize>(m: &T) -> String {
    // These types serialize to JSON without fail (no maps with non-string keys).
    serde_json::to_string(m).unwrap_or_default()
}

/// Parses a client's request.
pub fn parse_request(line: &str) -> Result<Request, WireError> {
    parse(line)
}

/// Emits a client's request.
pub fn emit_request(r: &Request) -> String {
    emit(r)
}

/// Parses a relay's message.
pub fn parse_reply(line: &str) -> Result<Reply, WireError> {
    parse(line)
}

/// Emits a relay's message.
pub fn emit_reply(r: &Reply) -> String {
    emit(r)
}

/// The first bytes of a circuit stream.
pub fn emit_preface(token: &Token) -> [u8; PREFACE_BYTES] {
    let mut p = [0u8; PREFACE_BYTES];
    p[..MAGIC.len()].copy_from_slice(MAGIC);
    p[MAGIC.len()..].copy_from_slice(&token.0);
    p
}

/// Reads a circuit stream's preface: its token, or `None` if the bytes are not a preface.
pub fn parse_preface(b: &[u8]) -> Option<Token> {
    if b.len() != PREFACE_BYTES || &b[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut t = [0u8; TOKEN_BYTES];
    t.copy_from_slice(&b[MAGIC.len()..]);
    Some(Token(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_identity::Keypair;
    use proptest::prelude::*;

    fn limits() -> CircuitLimits {
        CircuitLimits {
            duration_s: 60,
            data_bytes: 1 << 20,
            bytes_per_sec: 1 << 16,
            join_timeout_s: 10,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let id = Keypair::from_seed([3; 32]).node_id();
        let token = Token([7; TOKEN_BYTES]);
        for r in [
            Request::Reserve { req: 1 },
            Request::Connect { req: 2, to: id },
        ] {
            assert_eq!(parse_request(&emit_request(&r)).unwrap(), r);
        }
        for r in [
            Reply::Reserved {
                req: 1,
                expires_in_s: 3600,
                limits: limits(),
            },
            Reply::Circuit {
                req: 2,
                id: 9,
                token,
                limits: limits(),
            },
            Reply::Refused {
                req: 3,
                reason: Refusal::CircuitsPerPeer { limit: 4 },
            },
            Reply::Incoming {
                id: 9,
                from: id,
                token,
                limits: limits(),
            },
            Reply::Cut {
                id: 9,
                reason: Cut::Duration { secs: 60 },
            },
        ] {
            assert_eq!(parse_reply(&emit_reply(&r)).unwrap(), r);
        }
        let p = emit_preface(&token);
        assert_eq!(parse_preface(&p), Some(token));
        assert_eq!(parse_preface(&p[..10]), None);
        assert!(
            format!("{token:?}").len() < 16,
            "a token is not printed whole"
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        for bad in [
            "",
            "{}",
            "{\"op\":\"reserve\"}",
            "{\"op\":\"reserve\",\"req\":1,\"extra\":2}",
            "{\"op\":\"connect\",\"req\":1,\"to\":\"not an id\"}",
            "[1,2]",
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
        let long = format!(
            "{{\"op\":\"reserve\",\"req\":1{}}}",
            " ".repeat(MAX_CONTROL_LINE)
        );
        assert!(parse_request(&long).is_err());
        assert!(parse_reply("{\"op\":\"circuit\",\"req\":1,\"id\":1,\"token\":\"zz\"}").is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,300}") {
            let _ = parse_request(&s);
            let _ = parse_reply(&s);
            let _ = parse_preface(s.as_bytes());
        }
    }
}
