//! Port mapping for natkit: ask the home router (the gateway) to forward an
//! external port to us, so that peers can connect in directly.
//!
//! natkit maps ports with whichever of three protocols the gateway speaks,
//! preferring PCP (RFC 6887), then NAT-PMP (RFC 6886), then UPnP IGD. The
//! full client finds the default gateway, probes all three in parallel, asks
//! for a mapping (the previous external port first), keeps the lease alive by
//! renewing at half its lifetime, re-creates it when the gateway restarts and
//! removes it cleanly on shutdown. It also reports whether the external
//! address is public, to detect double NAT and carrier-grade NAT.
//!
//! The protocol logic is sans-I/O: the NAT-PMP and PCP wire codecs, the
//! gateway types and a deterministic lease scheduler open no socket and read
//! no clock. The tokio [`Client`] is a thin driver around them (UPnP through
//! `igd-next`, gateway discovery through `netdev`), with a blocking facade
//! for programs without a runtime. Nothing is sent until a client method is
//! called.
//!
//! # Layout
//! - [`natpmp`]: NAT-PMP requests and responses ([`natpmp::Request`],
//!   [`natpmp::Response`], [`natpmp::ResultCode`]) and the RFC's
//!   retransmission schedule ([`natpmp::RETRANSMIT_SCHEDULE`]).
//! - [`pcp`]: PCP requests and responses with the MAP and ANNOUNCE opcodes
//!   ([`pcp::Request`], [`pcp::Response`], [`pcp::OpData`]), options
//!   ([`pcp::PcpOption`]), result codes ([`pcp::ResultCode`]), response
//!   matching ([`pcp::Response::check_answers`]) and retransmission timers.
//! - [`lease`]: [`lease::LeaseScheduler`], the state machine that says when to
//!   create, renew and give up on one mapping, with retry backoff and the
//!   gateway-restart check ([`lease::EpochTracker`]).
//! - [`gateway`]: [`gateway::Protocol`], [`gateway::Method`] (in preference
//!   order), [`gateway::Mapping`] and [`gateway::is_global_ipv4`].
//! - [`Client`] (`client/`): the tokio client: [`Config`], [`Client::probe`],
//!   [`Client::map`] returning a [`MappingHandle`] whose task renews the
//!   lease and whose external address is watchable, [`Client::remove`],
//!   [`Client::list`] (UPnP only). Every wait has a timeout.
//! - [`blocking`]: [`blocking::BlockingClient`], the same without a runtime
//!   (the `natkit map` CLI uses it).
//! - [`Error`]: typed errors (timeouts, NAT-PMP/PCP result codes, UPnP error
//!   codes), each with advice.
//!
//! Every `parse` in this crate never panics on any input, and `emit` is its
//! inverse (property tests and the `pcp_parse` fuzz target check both).
//!
//! # Example
//! ```
//! use natkit_portmap::gateway::Protocol;
//! use natkit_portmap::natpmp::{Request, Response, ResultCode};
//!
//! // Ask for UDP 5000 -> 5000 for two hours; send this to gateway:5351.
//! let req = Request::Map {
//!     protocol: Protocol::Udp,
//!     internal_port: 5000,
//!     suggested_external_port: 5000,
//!     lifetime_secs: 7200,
//! };
//! assert_eq!(req.emit(), [0, 1, 0, 0, 0x13, 0x88, 0x13, 0x88, 0, 0, 0x1c, 0x20]);
//!
//! // The gateway's answer: mapped to external port 6000 for one hour.
//! let bytes = [0, 129, 0, 0, 0, 0, 0, 42, 0x13, 0x88, 0x17, 0x70, 0, 0, 0x0e, 0x10];
//! let resp = Response::parse(&bytes).unwrap();
//! assert!(resp.answers(&req));
//! assert_eq!(resp.result(), ResultCode::Success);
//! let Response::Map { external_port, lifetime_secs, epoch_secs, .. } = resp else {
//!     panic!("not a mapping response");
//! };
//! assert_eq!((external_port, lifetime_secs, epoch_secs), (6000, 3600, 42));
//! ```

//!
//! # Client example
//! ```no_run
//! use natkit_portmap::{Client, Config, gateway::Protocol};
//!
//! # async fn demo() -> Result<(), natkit_portmap::Error> {
//! // Reads the routing table; sends nothing yet.
//! let client = Client::new(Config::default()).await?;
//! // PCP, NAT-PMP and UPnP in parallel, each with a timeout.
//! let report = client.probe().await;
//! println!("best: {:?}, external IP {:?}", report.best(), report.external_ip);
//! // The first grant is done when this returns; a task renews the lease.
//! let mapping = client.map(Protocol::Tcp, 8080).await?;
//! let mut changes = mapping.watch();
//! println!("reachable at {:?}", mapping.external());
//! changes.changed().await.ok(); // the next renewal, loss or re-creation
//! mapping.remove().await?; // deletes it (dropping the handle does too)
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
mod client;
mod error;
pub mod gateway;
pub mod lease;
pub mod natpmp;
pub mod pcp;
mod wire;

pub use client::{
    Client, Config, DEFAULT_DESCRIPTION, DEFAULT_LEASE, DEFAULT_PROBE_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT, MappingEvent, MappingHandle, MappingStatus, MethodProbe, ProbeReport,
    UpnpEntry,
};
pub use error::{Error, upnp_advice};
