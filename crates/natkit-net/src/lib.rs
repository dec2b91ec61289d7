//! natkit connections: authenticated, line-based TCP connections.
//!
//! Every connection starts with a Noise XX handshake that authenticates both
//! sides to their ed25519 identities (the dialer names the key it expects,
//! from the peer's UNL), tells each side the address the other saw it from, and
//! agrees the protocol version; then lines flow, encrypted by default. See
//! [`handshake`] for the construction and the threat model.
//!
//! # Layout
//! - [`Net`]: the connection manager (async API): listen, [`Net::connect`],
//!   limits, one connection per node, keepalive, events, [`Net::shutdown`];
//!   connections through a relay ([`Net::connect_over`]: the handshake runs
//!   end to end over a stream the relay splices; a direct connection to the
//!   same node replaces a relayed one, its lines delivered after the relayed
//!   one's), and a second protocol on the listen port ([`Net::take_prefaced`]).
//! - [`blocking::Net`]: the same with its own runtime thread, for event loops.
//! - [`Connection`]: one authenticated peer: send and receive lines, stats, close.
//! - [`NetConfig`]: every limit and timeout, with the reasons for the defaults.
//! - Codecs without I/O: [`lines`] (the line splitter), [`frame`] (frames after
//!   the handshake), [`handshake`] (payloads, and the handshake driver).
//! - [`socket`]: TCP sockets with port reuse (listen and dial from one port).
//!
//! # Lines
//! A line is UTF-8 text ending in `\n` (`\r\n` accepted). Empty lines are
//! delivered. A line longer than `max_line_bytes` (64 KiB by default), or one
//! that is not UTF-8, closes that connection with a reason; other connections
//! are untouched. Send and receive queues are bounded in bytes.
//!
//! # Example (async)
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use natkit_identity::Keypair;
//! use natkit_net::{Net, NetConfig};
//!
//! let config = NetConfig { listen: "127.0.0.1:0".parse()?, ..NetConfig::default() };
//! let alice = Net::bind(Keypair::from_seed([1; 32]), config.clone()).await?;
//! let bob = Net::bind(Keypair::from_seed([2; 32]), config).await?;
//!
//! let con = alice.connect(bob.local_addr(), bob.node_id()).await?;
//! con.send("hello bob").await?;
//!
//! let NetEvent::Connected(at_bob) = bob.next_event().await.unwrap() else { panic!() };
//! # use natkit_net::NetEvent;
//! assert_eq!(at_bob.node_id(), alice.node_id());
//! assert_eq!(at_bob.recv().await.as_deref(), Some("hello bob"));
//!
//! alice.shutdown().await;
//! bob.shutdown().await;
//! # Ok(()) }
//! ```

pub mod blocking;
mod config;
mod conn;
mod error;
pub mod frame;
pub mod handshake;
mod hub;
pub mod lines;
mod net;
pub mod socket;

pub use config::*;
pub use conn::{ConnStats, Connection, Direction};
pub use error::{CloseReason, NetError, SendError};
pub use frame::CloseCode;
pub use handshake::Role;
pub use hub::NetEvent;
pub use net::{MAX_EXPECTED_INBOUND, MAX_PREFACE_BYTES, Net, NetStats};
