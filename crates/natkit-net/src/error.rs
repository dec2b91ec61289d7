//! Errors of the connection layer.

use std::net::SocketAddr;

use natkit_identity::NodeId;

use crate::frame::CloseCode;
use crate::handshake::HandshakeError;
use crate::lines::LineError;

/// Errors from [`Net`](crate::Net) operations.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration does not make sense.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A dial that must leave from the listen port (hole punching,
    /// [`Net::connect_with_role`](crate::Net::connect_with_role)) could not: the
    /// kernel refused to share it (the 4-tuple to this peer is taken, or the
    /// port cannot be reused).
    #[error("cannot dial {addr} from the listen port {local}: {source}")]
    PortReuse {
        /// The peer.
        addr: SocketAddr,
        /// Our listen address.
        local: SocketAddr,
        /// The kernel's refusal.
        source: std::io::Error,
    },
    /// Something took longer than its configured limit.
    #[error("{what} with {addr} timed out after {secs:.1} s")]
    Timeout {
        /// What timed out ("connect", "handshake").
        what: &'static str,
        /// The peer.
        addr: SocketAddr,
        /// The limit.
        secs: f64,
    },
    /// The handshake failed (wrong key, not natkit, ...).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        source: HandshakeError,
    },
    /// A connection limit is reached.
    #[error("too many {which} connections (limit {limit})")]
    Limit {
        /// "inbound" or "outbound".
        which: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Dialing our own node id.
    #[error("refusing to connect to ourselves ({0})")]
    SelfConnect(NodeId),
    /// The Net is shut down.
    #[error("the connection manager is shut down")]
    Shutdown,
    /// The connection closed before it could be used.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The runtime thread of the event-loop API could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Why a connection ended, seen from our side.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum CloseReason {
    /// We closed it.
    Local,
    /// Our [`Net`](crate::Net) shut down.
    Shutdown,
    /// The peer closed it and said why.
    Remote {
        /// The peer's reason code.
        code: CloseCode,
        /// The peer's words.
        message: String,
    },
    /// The peer went away without saying why (EOF or reset).
    PeerGone,
    /// The peer sent a line longer than our limit.
    LineTooLong {
        /// Our limit.
        limit: usize,
    },
    /// The peer sent a line that is not UTF-8.
    InvalidUtf8,
    /// The peer stopped answering keepalives.
    DeadPeer,
    /// We already had a connection to this node; the other one was kept.
    Duplicate,
    /// The peer broke the protocol.
    Protocol {
        /// What it did.
        detail: String,
    },
    /// The socket failed.
    Io {
        /// The error.
        detail: String,
    },
    /// The path under the connection went away, and the layer that knows why said so (a
    /// relay cut the circuit at one of its limits, or the relay itself went away).
    PathLost {
        /// Why.
        detail: String,
    },
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local => write!(f, "closed by us"),
            CloseReason::Shutdown => write!(f, "shutting down"),
            CloseReason::Remote { code, message } => {
                write!(f, "closed by the peer ({code:?}): {message}")
            }
            CloseReason::PeerGone => write!(f, "the peer went away"),
            CloseReason::LineTooLong { limit } => {
                write!(f, "the peer sent a line longer than {limit} bytes")
            }
            CloseReason::InvalidUtf8 => write!(f, "the peer sent a line that is not UTF-8"),
            CloseReason::DeadPeer => write!(f, "the peer stopped answering keepalives"),
            CloseReason::Duplicate => write!(f, "duplicate connection to the same node"),
            CloseReason::Protocol { detail } => write!(f, "protocol error: {detail}"),
            CloseReason::PathLost { detail } => write!(f, "path lost: {detail}"),
            CloseReason::Io { detail } => write!(f, "socket error: {detail}"),
        }
    }
}

impl CloseReason {
    /// The code and message we send to the peer when we close for this reason.
    pub(crate) fn to_wire(&self) -> (CloseCode, String) {
        let code = match self {
            CloseReason::Local => CloseCode::Normal,
            CloseReason::Shutdown => CloseCode::Shutdown,
            CloseReason::LineTooLong { .. } => CloseCode::LineTooLong,
            CloseReason::InvalidUtf8 => CloseCode::InvalidUtf8,
            CloseReason::Duplicate => CloseCode::Duplicate,
            CloseReason::DeadPeer => CloseCode::DeadPeer,
            CloseReason::Protocol { .. } => CloseCode::Protocol,
            CloseReason::Remote { .. }
            | CloseReason::PeerGone
            | CloseReason::Io { .. }
            | CloseReason::PathLost { .. } => CloseCode::Normal,
        };
        (code, self.to_string())
    }
}

/// Why a line could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send queue is full (event-loop API): try again after the peer has
    /// read some lines, or use the async API, which waits.
    #[error("send queue full")]
    QueueFull,
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The line itself is not acceptable.
    #[error(transparent)]
    Line(#[from] LineError),
}
