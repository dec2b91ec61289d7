//! natkit: find peers behind NATs and open direct, authenticated connections.
//!
//! This is the facade crate: it re-exports the capability crates under short
//! names and owns the `natkit` command-line tool.
//!
//! # Layout
//! - [`identity`] (`natkit-identity`): ed25519 node identity, node ids, key files.
//! - [`unl`] (`natkit-unl`): the Universal Node Locator codec and the
//!   "who dials first" rule.
//! - [`net`] (`natkit-net`): authenticated, line-based connections and the
//!   connection manager (async and event-loop APIs).
//! - [`dht`] (`natkit-dht`): the Kademlia DHT (BEP 5/42/43/44), rendezvous.
//! - [`traversal`] (`natkit-traversal`): the sans-I/O NAT traversal cores
//!   (classifier, connect planner, hole-punch coordinator).
//! - [`node`]: the [`Node`], joining a connection manager and a DHT node on
//!   one port and one key: it maps its port, learns its NAT type and
//!   reachability, publishes its UNL in the DHT, and connects to a UNL or to
//!   a bare node id across NATs (LAN, mapped, direct, reverse connect, TCP
//!   hole punch; docs/traversal.md). [`node::BlockingNode`] is its event-loop
//!   form.
//! - [`portmap`] (`natkit-portmap`): port mapping with PCP, NAT-PMP and UPnP IGD.
//! - `natkit-lab` (test support, not re-exported): the NAT lab in Linux network
//!   namespaces that integration tests and `natkit demo --lab` use.
//! - [`cli`]: the `natkit` command-line tool (`src/main.rs` only calls it).
//!
//! # Example
//! ```
//! use natkit::identity::Keypair;
//! use natkit::unl::{AddrSource, Unl};
//!
//! let key = Keypair::from_seed([1; 32]);
//! let mut unl = Unl::new(key.node_id());
//! unl.add_addr(AddrSource::Lan, "192.168.1.20:50500".parse().unwrap()).unwrap();
//! let text = unl.emit();
//! assert_eq!(text.parse::<Unl>().unwrap().node_id, key.node_id());
//! ```

pub mod cli;
pub mod node;

pub use node::Node;

pub use natkit_dht as dht;
pub use natkit_identity as identity;
pub use natkit_net as net;
pub use natkit_portmap as portmap;
pub use natkit_relay as relay;
pub use natkit_traversal as traversal;
pub use natkit_unl as unl;
