//! natkit's DHT: Kademlia over UDP speaking the BitTorrent Mainline KRPC wire format
//! (BEP 5), with secure node ids (BEP 42), read-only nodes (BEP 43) and arbitrary items
//! (BEP 44), plus natkit's own namespaced queries (methods such as `natkit.announce`) carried in
//! the same messages. Speaking the Mainline format means natkit nodes can use, and be found
//! through, the public BitTorrent DHT as well as a private one.
//!
//! Everything but [`dht`] is sans-I/O: no sockets, no clocks, no tasks; time comes in as
//! `now: Instant`. Every decoder takes bytes and returns a typed value or a typed error, never
//! panics on any input, and has an `emit` that is its exact inverse. [`core::Core`] combines
//! the routing table, server, lookups and storage into one state machine that [`dht::Dht`]
//! drives with one tokio task and one UDP socket.
//!
//! # Layout
//! - [`bencode`]: the [`bencode::Value`] type, a lenient [`bencode::parse`] for datagrams from
//!   other implementations, a canonical-only [`bencode::parse_strict`] for BEP 44 values,
//!   [`bencode::emit`], and the size/depth/count limits.
//! - [`id`]: the 160-bit [`Id`], XOR [`Distance`] with bucket-index helpers, and the compact
//!   node (26/38-byte) and peer (6/18-byte) encodings.
//! - [`krpc`]: typed messages ([`Message`], [`Query`], [`Response`], [`ErrorMessage`]),
//!   [`krpc::parse`] / [`Message::emit`], the error codes, and [`KrpcError`], which tells a
//!   malformed query (answer 203) from noise (drop).
//! - [`bep44`]: item targets, the signed buffer, [`bep44::MutableItem`] signing and
//!   verification, and the limits mapped to BEP 44 error codes.
//! - [`bep42`]: secure node ids from an external IP, the compliance check and exempt ranges.
//! - [`routing`]: the BEP 5 routing table (k-buckets, good/questionable/bad, refresh, save/load).
//! - [`storage`]: announced peers and BEP 44 items with limits and expiry.
//! - [`server`]: answers queries (tokens, BEP 44 rules, `ip`, custom `natkit.*` handlers).
//! - [`lookup`]: iterative lookups (α in flight, RTT timeouts) for find_node/get_peers/get.
//! - [`stats`]: counters, observed address, per-source rate limit.
//! - [`core`]: the whole node as one deterministic state machine (datagrams, requests, time),
//!   including puts/announces after lookups, bucket refresh and hourly republish.
//! - [`sim`]: an in-memory network of sans-I/O nodes for tests and benchmarks.
//! - [`dht`]: the tokio driver and API ([`dht::Dht::builder`]); [`testnet`]: n nodes on loopback.
//! - [`rendezvous`]: natkit's `natkit.announce` / `natkit.message` queries, which keep nodes
//!   behind NAT reachable: registrations with a few nodes close to a key's target, kept alive
//!   by keepalives, and signed messages forwarded to them ([`dht::Dht::register`],
//!   [`dht::Dht::send_message`], [`dht::Dht::relay_message`], [`dht::Dht::messages`]).
//!
//! # Who is named to whom
//! Answers name only good nodes (BEP 5): ones that answered one of our queries, or proved
//! their address, within 15 minutes. A node known only from its own queries is never named,
//! asked or pinged, so a spoofed query gets one answer and nothing else. natkit nodes prove
//! their address without an extra round trip: every answer to a natkit querier carries an
//! address token in the top-level key `nkt`, and the querier echoes it in its next query to
//! that node ([`server::Tokens::address_token`], [`routing`]). Other implementations ignore
//! the key; they are verified the BEP 5 way, when one of our lookups reaches them through
//! another node's answer.
//!
//! # Not yet
//! IPv4 only (no BEP 32 `nodes6` lookups). natkit takes a BEP 42 secure id once
//! [`core::SECURE_ID_VOTES`] nodes agree on its public IP, but does not yet refuse stores from
//! nodes whose ids are not compliant (libtorrent does not by default either).
//!
//! # Example
//! ```
//! use natkit_dht::{Id, Kind, Message, Query, krpc};
//!
//! let query = Message::query(
//!     *b"\x00\x00\x00\x01", // natkit sends 4-byte transaction ids
//!     Query::FindNode { id: Id([1; 20]), target: Id([2; 20]) },
//! );
//! let datagram = query.emit();
//! assert!(datagram.starts_with(b"d1:ad2:id20:"));
//!
//! let parsed = krpc::parse(&datagram)?;
//! assert_eq!(parsed, query);
//! match parsed.kind {
//!     Kind::Query(Query::FindNode { target, .. }) => assert_eq!(target, Id([2; 20])),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), natkit_dht::KrpcError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bencode;
pub mod bep42;
pub mod bep44;
pub mod core;
pub mod dht;
pub mod id;
pub mod krpc;
pub mod lookup;
pub mod rendezvous;
pub mod routing;
pub mod server;
pub mod sim;
pub mod stats;
pub mod storage;
pub mod testnet;

pub use bencode::Value;
pub use id::{Distance, Id, NodeInfo, NodeInfo6};
pub use krpc::{ErrorMessage, Kind, KrpcError, Message, PutItem, Query, Response};
