//! natkit relays: the path of last resort, for two nodes that cannot reach each other
//! directly (symmetric NAT on both sides, a firewall that drops every inbound SYN).
//!
//! A relay is an ordinary public natkit node that opts in. A node that cannot be reached
//! directly **reserves** on one or two relays: it keeps a control connection to each (an
//! authenticated natkit connection) and lists them in its UNL. A node that wants to reach
//! it asks one of those relays for a **circuit** to it *by node id*; the relay tells the
//! reserved node, hands both a one-time token, and when both have opened a circuit stream
//! with their token it copies bytes between the two streams. The two nodes then run their
//! own natkit handshake through the circuit: the relay forwards ciphertext only and cannot
//! impersonate either side.
//!
//! A relay forwards only between a reserved node and a node that asked for it by id: there
//! is no way to make it send to an address. Every limit is a named value of
//! [`RelayLimits`]; a refused request gets a [`Refusal`](wire::Refusal) naming the limit, a
//! circuit cut at a limit a [`Cut`](wire::Cut) sent to both ends before their streams close.
//!
//! # Layout
//! - [`wire`]: the messages (JSON lines on the control connection; the circuit preface);
//! - [`limits`]: [`RelayLimits`], [`CircuitLimits`](limits::CircuitLimits), the byte
//!   [`Pacer`](limits::Pacer);
//! - [`registry`]: the relay's state without I/O (reservations, circuits, tokens, limits);
//! - [`server`]: [`RelayServer`], the service on a [`Net`](natkit_net::Net) of its own;
//! - [`client`]: [`RelayClient`] and its [`Session`]s with relays.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use natkit_identity::Keypair;
//! use natkit_net::{Net, NetConfig, NetEvent, Role};
//! use natkit_relay::{Notice, RelayClient, RelayLimits, RelayServer};
//!
//! let lo = "127.0.0.1".parse()?;
//! let config = NetConfig { listen: "127.0.0.1:0".parse()?, ..NetConfig::default() };
//! let relay_key = Keypair::from_seed([9; 32]);
//! let relay = RelayServer::start(Net::bind(relay_key, config.clone()).await?, RelayLimits::default()).await?;
//!
//! // Alice reserves.
//! let (alice_key, bob_key) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
//! let alice = Net::bind(alice_key.clone(), config.clone()).await?;
//! let alice_relays = RelayClient::bind(alice_key, lo).await?;
//! let (session, mut notices) = alice_relays.open(relay.local_addr()).await?;
//! session.reserve().await?;
//!
//! // Bob asks the relay for a circuit to alice, by her id, and connects through it.
//! let bob = Net::bind(bob_key.clone(), config).await?;
//! let bob_relays = RelayClient::bind(bob_key, lo).await?;
//! let (bob_session, _) = bob_relays.open(relay.local_addr()).await?;
//! let dial = async {
//!     let circuit = bob_session.connect(alice.node_id()).await.unwrap();
//!     bob.connect_over(circuit.stream, Some(alice.node_id()), Role::Initiator, bob_session.relay_id()).await.unwrap()
//! };
//! let accept = async {
//!     let Some(Notice::Incoming { from, token, limits, .. }) = notices.recv().await else { panic!() };
//!     let stream = session.join(&token, limits).await.unwrap();
//!     alice.connect_over(stream, Some(from), Role::Responder, session.relay_id()).await.unwrap()
//! };
//! let (con, at_alice) = tokio::join!(dial, accept);
//! con.send("hello through the relay").await?;
//! assert_eq!(at_alice.recv().await.as_deref(), Some("hello through the relay"));
//! assert_eq!(con.relay(), Some(relay.node_id()));
//! # for n in [&alice, &bob] { n.shutdown().await; }
//! # alice_relays.shutdown().await; bob_relays.shutdown().await; relay.shutdown().await;
//! # Ok(()) }
//! ```

pub mod client;
pub mod limits;
pub mod registry;
pub mod server;
pub mod wire;

pub use client::{Circuit, Notice, RelayClient, Reservation, Session};
pub use limits::RelayLimits;
pub use server::{RelayServer, RelayStats};

use natkit_identity::NodeId;

/// Why a relay operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A limit is set to a value that cannot work.
    #[error(transparent)]
    Limits(#[from] limits::LimitError),
    /// The relay's or the client's Net failed.
    #[error("relay network: {0}")]
    Net(#[source] natkit_net::NetError),
    /// The relay could not be reached.
    #[error("cannot reach the relay at {addr}: {source}")]
    Connect {
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        source: natkit_net::NetError,
    },
    /// A session with this relay is open already (one per relay).
    #[error("a session with the relay at {addr} is open already (one per relay)")]
    SessionOpen {
        /// The relay's address.
        addr: std::net::SocketAddr,
    },
    /// The relay refused, and said why.
    #[error("relay {relay} refused: {reason}")]
    Refused {
        /// The relay.
        relay: NodeId,
        /// Its reason.
        reason: wire::Refusal,
    },
    /// The relay did not answer in time.
    #[error("relay {relay} did not answer within {secs:.1} s")]
    Timeout {
        /// The relay.
        relay: NodeId,
        /// The limit, in seconds.
        secs: f64,
    },
    /// The circuit was not joined: the other end did not come, or the token was refused.
    #[error("the circuit on relay {relay} was not joined (the other end did not come in time)")]
    NotJoined {
        /// The relay.
        relay: NodeId,
    },
    /// The session with the relay ended.
    #[error("the session with relay {relay} ended: {detail}")]
    Gone {
        /// The relay.
        relay: NodeId,
        /// Why.
        detail: String,
    },
    /// The relay broke the protocol.
    #[error("relay {relay} broke the protocol: {detail}")]
    Protocol {
        /// The relay.
        relay: NodeId,
        /// What it did.
        detail: String,
    },
}
