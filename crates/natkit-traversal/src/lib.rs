//! The sans-I/O cores of natkit's NAT traversal: deciding how to reach a
//! peer and coordinating a TCP hole punch, without sockets, clocks or tasks.
//!
//! Every type here is a deterministic state machine or a pure function in
//! the style of `quinn-proto`: time comes in as `now: Instant` arguments,
//! inputs are `handle_*` calls, outputs are `poll_*` calls (messages to send,
//! addresses to dial, the next deadline, the result). The tokio driver that
//! moves the bytes lives elsewhere: it connects with `natkit-net` (TCP with
//! port reuse), carries punch messages as `natkit-dht` rendezvous messages,
//! and gets port mappings from `natkit-portmap`. Everything here is tested
//! without the network and without sleeping.
//!
//! # Layout
//! - [`classify`]: the NAT classifier. [`classify::Classifier`] turns the
//!   addresses other nodes saw us at into a [`classify::NatClass`] per
//!   transport (open, consistent, incrementing, random or unknown), with the
//!   evidence, and dial-back results into a [`classify::Reachability`]; both
//!   map to the UNL's `NatType` and `NodeType`.
//! - [`plan`]: the connect planner. [`plan::plan`] turns our
//!   [`plan::LocalSituation`] and the peer's UNL into staggered
//!   [`plan::Attempt`]s (LAN, mapped, direct, reverse connect, hole punch)
//!   or a typed [`plan::NoPath`]; [`plan::noise_initiator`] decides the
//!   handshake roles on a simultaneously opened socket.
//! - [`punch`]: the hole-punch coordinator. [`punch::Punch`] runs one
//!   DCUtR-style punch in either role; [`punch::wire`] is its message codec.
//! - [`limits`]: [`limits::Limiter`], the token buckets that stop dial-back
//!   and punch requests from turning us into a SYN reflector.
//!
//! # Example
//! Alice (behind a port-preserving NAT) plans a connection to Bob (behind
//! another one); the plan says to punch. Both sides then run the punch, with
//! this test standing in for the rendezvous channel and the sockets.
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use natkit_identity::Keypair;
//! use natkit_traversal::plan::{self, AttemptKind, LocalSituation};
//! use natkit_traversal::punch::{DialResult, Output, Punch, PunchConfig};
//! use natkit_unl::{AddrSource, NatType, NodeType, Unl};
//!
//! let t0 = Instant::now();
//! let alice = LocalSituation {
//!     node_id: Keypair::from_seed([1; 32]).node_id(),
//!     lan: vec!["10.0.1.2:50500".parse()?],
//!     nat: NatType::Consistent,
//!     reachable: false,
//!     port_mapped: false,
//! };
//! let mut bob = Unl::new(Keypair::from_seed([2; 32]).node_id());
//! bob.add_addr(AddrSource::Lan, "10.0.2.2:50500".parse()?)?;
//! bob.add_addr(AddrSource::Observed, "203.0.113.20:50500".parse()?)?;
//! bob.nat = NatType::Consistent;
//! bob.node = NodeType::HolePunch;
//!
//! let plan = plan::plan(&alice, &bob, t0)?;
//! let AttemptKind::Punch { .. } = &plan.attempts[0].kind else { panic!("{plan:?}") };
//!
//! // Alice initiates; the correlation id comes from the driver's RNG.
//! let alice_public = ["203.0.113.10:50500".parse()?];
//! let mut a = Punch::initiate(0x5eed, &alice_public, PunchConfig::default(), t0);
//! let Some(Output::Send(connect)) = a.poll_output() else { panic!() };
//!
//! // 20 ms later the Connect reaches Bob, who answers.
//! let one_way = Duration::from_millis(20);
//! let bob_public = ["203.0.113.20:50500".parse()?];
//! let mut b = Punch::respond(&connect, &bob_public, PunchConfig::default(), t0 + one_way)?;
//! let Some(Output::Send(reply)) = b.poll_output() else { panic!() };
//!
//! // Alice measures a 40 ms RTT, sends Sync and dials 20 ms later ...
//! a.handle_message(&reply, t0 + 2 * one_way)?;
//! let Some(Output::Send(sync)) = a.poll_output() else { panic!() };
//! let dial_at = a.poll_timeout().unwrap();
//! assert_eq!(dial_at, t0 + 3 * one_way);
//! a.handle_timeout(dial_at);
//! let Some(Output::Dial { addrs, .. }) = a.poll_output() else { panic!() };
//! assert_eq!(addrs, bob_public);
//!
//! // ... just when Sync reaches Bob, who dials at once: the SYNs cross.
//! b.handle_message(&sync, t0 + 3 * one_way)?;
//! let Some(Output::Dial { addrs, .. }) = b.poll_output() else { panic!() };
//! assert_eq!(addrs, alice_public);
//!
//! // The driver reports the connection (after the handshake authenticated Bob).
//! a.handle_dial_result(bob_public[0], DialResult::Connected, t0 + 4 * one_way);
//! assert!(matches!(a.poll_output(), Some(Output::Succeeded { attempt: 1, .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod classify;
pub mod limits;
pub mod plan;
pub mod punch;
