//! What [`super::Core::start`] takes and what comes out of [`super::Core::poll_event`].

use std::net::{SocketAddr, SocketAddrV4};

use crate::bencode::Value;
use crate::bep44::MutableItem;
use crate::id::{Id, NodeInfo};
use crate::krpc::PUBLIC_KEY_BYTES;

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `find_node` on our own id, starting from these addresses (ids unknown) and the table.
    Bootstrap(Vec<SocketAddrV4>),
    /// The closest nodes to a target.
    FindNode(Id),
    /// Peers for an info-hash.
    GetPeers(Id),
    /// Announce ourselves as a peer for an info-hash (`None`: the UDP source port).
    Announce(Id, Option<u16>),
    /// Store a peer for an info-hash in our own store only (no lookup), so that `get_peers`
    /// queries reaching us return it: a service announcing itself where it is looked up.
    AnnounceHere(Id, std::net::SocketAddr),
    /// A BEP 44 immutable item.
    GetImmutable(Id),
    /// A BEP 44 mutable item.
    GetMutable {
        /// Public key.
        k: [u8; PUBLIC_KEY_BYTES],
        /// Salt (empty for none).
        salt: Vec<u8>,
        /// Only an item with a higher `seq` is wanted.
        more_recent_than: Option<i64>,
    },
    /// Store an immutable value on the closest nodes.
    PutImmutable(Value),
    /// Store a signed item on the closest nodes.
    PutMutable(MutableItem, Option<i64>),
    /// Register our identity with rendezvous nodes and keep the registrations alive from then
    /// on (see [`crate::rendezvous`]); reports the rendezvous nodes after the first round.
    Register,
    /// Send a signed message to the node with public key `to`.
    SendMessage {
        /// The recipient's ed25519 public key.
        to: [u8; PUBLIC_KEY_BYTES],
        /// At most [`crate::rendezvous::MAX_PAYLOAD_BYTES`].
        payload: Vec<u8>,
        /// Send it to these addresses (the recipient's rendezvous points from its UNL, or the
        /// recipient itself). Empty: find the nodes closest to the recipient's rendezvous
        /// target and send it to them.
        via: Vec<SocketAddrV4>,
        /// With `via` empty: route it hop by hop toward the recipient's rendezvous target
        /// instead of looking the nodes up first.
        relay: bool,
        /// The channel ([`crate::rendezvous::CHANNEL_USER`] for the application's messages).
        channel: u8,
    },
}

/// The result of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Closest nodes that answered.
    Nodes(Vec<NodeInfo>),
    /// Peers found.
    Peers(Vec<SocketAddr>),
    /// The immutable value, if found.
    Immutable(Option<Value>),
    /// The mutable item with the highest `seq` found.
    Mutable(Option<MutableItem>),
    /// A put or announce: how many nodes accepted it, and the error codes of those that did not.
    Stored {
        /// The item's target (the info-hash for an announce).
        target: Id,
        /// Nodes that accepted.
        accepted: usize,
        /// Error codes returned by the others.
        errors: Vec<i64>,
    },
    /// Registered: our rendezvous nodes (empty if none accepted, or no identity is set).
    Registered(Vec<SocketAddr>),
    /// A message was acknowledged by its recipient.
    Delivered,
    /// A message was not delivered: the error codes of the nodes it was given to (a lost
    /// answer counts as [`crate::rendezvous::ERROR_UNDELIVERED`]); empty if it could not even
    /// be sent (no identity or clock, payload too big, nobody to send it to).
    NotDelivered {
        /// One code per node tried.
        errors: Vec<i64>,
    },
    /// The request was not started: [`super::MAX_OPERATIONS`] are already running.
    Busy,
}
