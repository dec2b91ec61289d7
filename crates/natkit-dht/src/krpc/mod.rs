//! KRPC (BEP 5): the typed messages of the Mainline DHT and natkit's namespaced queries.
//!
//! Every datagram is one bencoded dictionary with `t` (transaction id), `y` (`q`, `r` or `e`)
//! and, optionally, `v` (client version), `ro` (BEP 43 read-only querier) and `ip` (BEP 42: the
//! *receiver's* address as the sender saw it, in responses). [`parse`] turns a datagram into a
//! [`Message`]; [`Message::emit`] is its exact inverse for every value `parse` returns.
//!
//! Reading rules (see the crate docs for why):
//! - any transaction id length is accepted and must be echoed verbatim; natkit *sends*
//!   [`TRANSACTION_ID_BYTES`] (the `mainline` crate drops other lengths);
//! - dictionary keys may be unsorted, unknown keys are ignored (responses keep them in
//!   [`Response::extra`] so natkit's own methods can carry fields), but every field a known
//!   query needs must be present and well-formed, or [`parse`] returns
//!   [`KrpcError::MalformedQuery`], which [`KrpcError::reply`] turns into error 203;
//! - a BEP 44 `v` must be canonical bencode, because its verbatim bytes are hashed and signed.

mod emit;
mod parse;
#[cfg(test)]
mod tests;

pub use parse::parse;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::bencode::{BencodeError, Value};
use crate::id::{Id, NodeInfo, NodeInfo6};

/// Length of the transaction ids natkit generates, in bytes. Any length is accepted and echoed,
/// but the `mainline` crate (v6+) silently drops queries whose `t` is not 4 bytes.
pub const TRANSACTION_ID_BYTES: usize = 4;

/// Length of an ed25519 public key (`k`), in bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Length of an ed25519 signature (`sig`), in bytes.
pub const SIGNATURE_BYTES: usize = 64;

/// BEP 5 error 201: generic error.
pub const ERROR_GENERIC: i64 = 201;
/// BEP 5 error 202: server error.
pub const ERROR_SERVER: i64 = 202;
/// BEP 5 error 203: protocol error (malformed packet, invalid arguments, bad token).
pub const ERROR_PROTOCOL: i64 = 203;
/// BEP 5 error 204: method unknown.
pub const ERROR_METHOD_UNKNOWN: i64 = 204;
/// BEP 44 error 205: `v` too big.
pub const ERROR_VALUE_TOO_BIG: i64 = 205;
/// BEP 44 error 206: invalid signature.
pub const ERROR_INVALID_SIGNATURE: i64 = 206;
/// BEP 44 error 207: `salt` too big.
pub const ERROR_SALT_TOO_BIG: i64 = 207;
/// BEP 44 error 301: the `cas` did not match the stored `seq`.
pub const ERROR_CAS_MISMATCH: i64 = 301;
/// BEP 44 error 302: `seq` lower than the stored one.
pub const ERROR_SEQ_TOO_LOW: i64 = 302;

/// What a KRPC error code means, in words, for messages to users: BEP 5's 201-204 and BEP
/// 44's 205-207, 301 and 302; "unknown error" for any other code (natkit's rendezvous codes are
/// named by [`crate::rendezvous::error_name`]).
///
/// ```
/// use natkit_dht::krpc::{ERROR_METHOD_UNKNOWN, error_name};
///
/// assert_eq!(error_name(ERROR_METHOD_UNKNOWN), "method unknown");
/// assert_eq!(error_name(999), "unknown error");
/// ```
pub fn error_name(code: i64) -> &'static str {
    match code {
        ERROR_GENERIC => "generic error",
        ERROR_SERVER => "server error",
        ERROR_PROTOCOL => "protocol error",
        ERROR_METHOD_UNKNOWN => "method unknown",
        ERROR_VALUE_TOO_BIG => "value too big",
        ERROR_INVALID_SIGNATURE => "invalid signature",
        ERROR_SALT_TOO_BIG => "salt too big",
        ERROR_CAS_MISMATCH => "the stored item changed (cas mismatch)",
        ERROR_SEQ_TOO_LOW => "a newer item is stored (seq too low)",
        _ => "unknown error",
    }
}

/// One KRPC datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `t`: chosen by the querier, echoed by the responder. Any length.
    pub transaction_id: Vec<u8>,
    /// `v`: client version, by convention 2 bytes of client id and 2 of version (BEP 20). Kept
    /// as bytes because others send other lengths.
    pub version: Option<Vec<u8>>,
    /// `ro: 1` (BEP 43): the sender is read-only; do not add it to the routing table. Only
    /// meaningful on queries.
    pub read_only: bool,
    /// `ip` (BEP 42): the address of the message's *receiver* as seen by its sender. Responses
    /// carry it; 6 bytes for IPv4, 18 for IPv6. A value of another length is ignored.
    pub ip: Option<SocketAddr>,
    /// `nkt` (natkit): an address token. In an answer, the token the responder hands to the
    /// querier's address; in a later query to the same node, that token echoed back, proving
    /// the querier receives datagrams at the address it sends from (see
    /// [`crate::server::Tokens::address_token`]). Other implementations ignore the key. At most
    /// [`MAX_ADDRESS_TOKEN_BYTES`] bytes; a longer value is ignored.
    pub address_token: Option<Vec<u8>>,
    /// What the message says.
    pub kind: Kind,
}

/// Longest `nkt` address token accepted in a message.
pub const MAX_ADDRESS_TOKEN_BYTES: usize = 20;

/// The three kinds of KRPC message (`y`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `y = q`.
    Query(Query),
    /// `y = r`.
    Response(Response),
    /// `y = e`.
    Error(ErrorMessage),
}

/// A query (`q` + `a`). Every standard query carries the querier's id (`a.id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// `ping`.
    Ping {
        /// Querier's id.
        id: Id,
    },
    /// `find_node`: the nodes closest to `target`.
    FindNode {
        /// Querier's id.
        id: Id,
        /// The id looked for.
        target: Id,
    },
    /// `get_peers`: peers for `info_hash`, or the closest nodes.
    GetPeers {
        /// Querier's id.
        id: Id,
        /// The torrent's info-hash.
        info_hash: Id,
    },
    /// `announce_peer`: the querier is a peer for `info_hash`.
    AnnouncePeer {
        /// Querier's id.
        id: Id,
        /// The torrent's info-hash.
        info_hash: Id,
        /// The peer's port (ignored when `implied_port`).
        port: u16,
        /// The token from an earlier `get_peers` response.
        token: Vec<u8>,
        /// `implied_port: 1`: use the UDP source port instead of `port` (NATed peers).
        implied_port: bool,
    },
    /// `get` (BEP 44): the item stored under `target`.
    Get {
        /// Querier's id.
        id: Id,
        /// SHA-1 of the immutable value, or of `k ‖ salt`.
        target: Id,
        /// Only send a mutable item whose `seq` is greater than this.
        seq: Option<i64>,
    },
    /// `put` (BEP 44).
    Put {
        /// Querier's id.
        id: Id,
        /// The token from an earlier `get` response.
        token: Vec<u8>,
        /// What to store.
        item: PutItem,
    },
    /// Any other method, e.g. natkit's namespaced `natkit.announce`. Answer with
    /// [`ERROR_METHOD_UNKNOWN`] if not handled.
    Other {
        /// `q`.
        method: Vec<u8>,
        /// `a` (a dictionary; an empty one if the query had none).
        args: Value,
    },
}

/// The item of a BEP 44 `put`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutItem {
    /// Stored under SHA-1 of the bencoded `v`.
    Immutable {
        /// The value (canonical bencode).
        v: Value,
    },
    /// Stored under SHA-1 of `k ‖ salt`, signed by `k`.
    Mutable {
        /// ed25519 public key.
        k: [u8; PUBLIC_KEY_BYTES],
        /// `salt`, if the message had the key (an empty salt means the same as none).
        salt: Option<Vec<u8>>,
        /// Sequence number.
        seq: i64,
        /// `cas`: only store if the stored item has this `seq`.
        cas: Option<i64>,
        /// ed25519 signature over [`crate::bep44::signable`].
        sig: [u8; SIGNATURE_BYTES],
        /// The value (canonical bencode).
        v: Value,
    },
}

/// A response (`r`). Responses do not name their query, so every field a response to any
/// known query may carry is optional; the caller knows which query it answers from the
/// transaction id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// `id`: the responder's id (always present).
    pub id: Id,
    /// `nodes`: IPv4 nodes close to the target.
    pub nodes: Option<Vec<NodeInfo>>,
    /// `nodes6` (BEP 32): IPv6 nodes close to the target.
    pub nodes6: Option<Vec<NodeInfo6>>,
    /// `token`: write token for a later `announce_peer` / `put`.
    pub token: Option<Vec<u8>>,
    /// `values`: peers for the info-hash (6- or 18-byte compact entries).
    pub values: Option<Vec<SocketAddr>>,
    /// `v` (BEP 44 `get`): the item's value (canonical bencode).
    pub v: Option<Value>,
    /// `k` (BEP 44 mutable `get`): public key.
    pub k: Option<[u8; PUBLIC_KEY_BYTES]>,
    /// `seq` (BEP 44 mutable `get`).
    pub seq: Option<i64>,
    /// `sig` (BEP 44 mutable `get`).
    pub sig: Option<[u8; SIGNATURE_BYTES]>,
    /// Every other key of `r`, verbatim: how natkit's own methods carry their results.
    /// Emitting a known key from here is not supported (the typed field wins).
    pub extra: BTreeMap<Vec<u8>, Value>,
}

impl Response {
    /// A response carrying only the responder's id (the answer to `ping`, `announce_peer`, `put`).
    pub fn new(id: Id) -> Self {
        Response {
            id,
            nodes: None,
            nodes6: None,
            token: None,
            values: None,
            v: None,
            k: None,
            seq: None,
            sig: None,
            extra: BTreeMap::new(),
        }
    }
}

/// An error message (`e = [code, message]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// One of the `ERROR_*` codes, or another.
    pub code: i64,
    /// Human-readable text; bytes because peers do not always send UTF-8.
    pub message: Vec<u8>,
}

impl ErrorMessage {
    /// An error with `code` and a text.
    pub fn new(code: i64, message: impl Into<Vec<u8>>) -> Self {
        ErrorMessage {
            code,
            message: message.into(),
        }
    }
}

impl Message {
    /// A query with no version, `ro` or `ip`.
    pub fn query(transaction_id: impl Into<Vec<u8>>, query: Query) -> Self {
        Self::bare(transaction_id.into(), Kind::Query(query))
    }

    /// A response with no version or `ip`.
    pub fn response(transaction_id: impl Into<Vec<u8>>, response: Response) -> Self {
        Self::bare(transaction_id.into(), Kind::Response(response))
    }

    /// An error message.
    pub fn error(transaction_id: impl Into<Vec<u8>>, code: i64, text: impl Into<Vec<u8>>) -> Self {
        Self::bare(
            transaction_id.into(),
            Kind::Error(ErrorMessage::new(code, text)),
        )
    }

    fn bare(transaction_id: Vec<u8>, kind: Kind) -> Self {
        Message {
            transaction_id,
            version: None,
            read_only: false,
            ip: None,
            address_token: None,
            kind,
        }
    }
}

impl Query {
    /// The `q` method name.
    pub fn method(&self) -> &[u8] {
        match self {
            Query::Ping { .. } => b"ping",
            Query::FindNode { .. } => b"find_node",
            Query::GetPeers { .. } => b"get_peers",
            Query::AnnouncePeer { .. } => b"announce_peer",
            Query::Get { .. } => b"get",
            Query::Put { .. } => b"put",
            Query::Other { method, .. } => method,
        }
    }

    /// The querier's id: `a.id` (for [`Query::Other`], if `a.id` is 20 bytes).
    pub fn sender_id(&self) -> Option<Id> {
        match self {
            Query::Ping { id }
            | Query::FindNode { id, .. }
            | Query::GetPeers { id, .. }
            | Query::AnnouncePeer { id, .. }
            | Query::Get { id, .. }
            | Query::Put { id, .. } => Some(*id),
            Query::Other { args, .. } => args
                .get(b"id")
                .and_then(Value::as_bytes)
                .and_then(Id::from_slice),
        }
    }
}

/// Why a datagram is not a KRPC message natkit can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    /// Not valid bencode (or over a [`crate::bencode`] limit). Drop it.
    #[error("not valid bencode: {0}")]
    Bencode(#[from] BencodeError),
    /// Valid bencode but not a dictionary. Drop it.
    #[error("not a dictionary")]
    NotADict,
    /// No byte-string `t`: nothing to answer to. Drop it.
    #[error("no transaction id")]
    MissingTransactionId,
    /// `y` missing or not one of `q`, `r`, `e`.
    #[error("message type `y` missing or unknown")]
    UnknownMessageType {
        /// The message's `t`.
        transaction_id: Vec<u8>,
    },
    /// A query whose method or arguments are malformed: answer with error 203 (see
    /// [`KrpcError::reply`]).
    #[error("malformed `{}` query: {reason}", String::from_utf8_lossy(method))]
    MalformedQuery {
        /// The message's `t`.
        transaction_id: Vec<u8>,
        /// `q`, if it was a byte string (empty otherwise).
        method: Vec<u8>,
        /// What is wrong.
        reason: &'static str,
    },
    /// A response with a missing or malformed field.
    #[error("malformed response: {reason}")]
    MalformedResponse {
        /// The message's `t`, to fail the matching request.
        transaction_id: Vec<u8>,
        /// What is wrong.
        reason: &'static str,
    },
    /// An error message whose `e` is not `[int, string]`.
    #[error("malformed error message: {reason}")]
    MalformedError {
        /// The message's `t`.
        transaction_id: Vec<u8>,
        /// What is wrong.
        reason: &'static str,
    },
}

impl KrpcError {
    /// The transaction id, if the datagram got far enough to have one.
    pub fn transaction_id(&self) -> Option<&[u8]> {
        match self {
            KrpcError::Bencode(_) | KrpcError::NotADict | KrpcError::MissingTransactionId => None,
            KrpcError::UnknownMessageType { transaction_id }
            | KrpcError::MalformedQuery { transaction_id, .. }
            | KrpcError::MalformedResponse { transaction_id, .. }
            | KrpcError::MalformedError { transaction_id, .. } => Some(transaction_id),
        }
    }

    /// The error 203 to send back for a malformed query; `None` for anything else (malformed
    /// responses and errors are never answered, so two nodes cannot ping-pong errors).
    pub fn reply(&self) -> Option<Message> {
        match self {
            KrpcError::MalformedQuery {
                transaction_id,
                reason,
                ..
            } => Some(Message::error(
                transaction_id.clone(),
                ERROR_PROTOCOL,
                *reason,
            )),
            _ => None,
        }
    }
}
