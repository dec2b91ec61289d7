//! NAT lab for natkit's integration tests: reproducible NAT topologies in Linux network namespaces.
//!
//! The topology itself has exactly one implementation, `scripts/natlab.sh`; this crate calls it,
//! parses the host/address table it writes, runs commands inside the namespaces and guarantees
//! teardown. `docs/natlab.md` has the diagram, the addresses and the quirks.
//!
//! # Layout
//! - [`topology`](crate::NatKind): what to build ([`LabConfig`], [`NatKind`], [`Upnp`]) and what
//!   you get ([`Host`], [`HostInfo`]).
//! - [`Lab`]: a running lab. [`Lab::up`] builds one with a unique name (`nk<pid>x<n>`) after
//!   removing labs whose owner process died; `Drop` tears it down, also on panic.
//! - [`LabChild`] / [`CmdOutput`]: background and finished commands inside a namespace.
//! - [`prerequisites`] / [`lab_or_skip`]: root + tools check, and the skip-or-fail policy
//!   (loud skip without root; panic under `CI=true`).
//! - `scripts/lab/probe.py` ([`probe_path`]): UDP/TCP probes (reflectors that tell a client its
//!   observed address, unsolicited senders, an RTT meter) run with Debian's [`PYTHON`].
//!
//! # Use
//! ```no_run
//! use natkit_lab::{Host, Lab, LabConfig, NatKind};
//! use std::time::Duration;
//!
//! if !natkit_lab::lab_or_skip("example") {
//!     return;
//! }
//! let lab = Lab::up(LabConfig::new(NatKind::Cone, NatKind::Symmetric)).unwrap();
//! let rdv = lab.ip(Host::Rendezvous).to_string();
//! let mut server = lab
//!     .spawn_probe(Host::Rendezvous, &["udp-reflect", "--bind", &format!("{rdv}:4000")])
//!     .unwrap();
//! server.wait_for_stdout("ready", Duration::from_secs(5)).unwrap();
//! let out = lab
//!     .probe(Host::Alice, &["udp-query", "--bind", "0.0.0.0:5000", "--to", &format!("{rdv}:4000")])
//!     .unwrap();
//! assert!(out.stdout.contains(&format!("{}:5000", lab.host(Host::Alice).public_ip)));
//! // `lab` is torn down when it goes out of scope.
//! ```
//!
//! Every lab has its own namespaces, so tests may run in parallel. The harness needs root, `ip`,
//! `tc`, `nft`, `conntrack`, `miniupnpd` (nftables build), `upnpc`, `natpmpc` and
//! `/usr/bin/python3`.

mod error;
mod lab;
mod prereq;
mod process;
mod topology;

use std::path::PathBuf;

pub use error::LabError;
pub use lab::{DOWN_TIMEOUT, Lab, RUN_TIMEOUT, STATE_ROOT, UP_TIMEOUT, gc};
pub use prereq::{in_ci, lab_or_skip, prerequisites};
pub use process::{CmdOutput, LabChild};
pub use topology::{Host, HostInfo, LabConfig, NatKind, Upnp};

/// The Python interpreter the probes run with (Debian's; `python3` on `PATH` may be another).
pub const PYTHON: &str = "/usr/bin/python3";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of `scripts/natlab.sh`.
pub fn script_path() -> PathBuf {
    repo_root().join("scripts/natlab.sh")
}

/// Path of `scripts/lab/probe.py`.
pub fn probe_path() -> PathBuf {
    repo_root().join("scripts/lab/probe.py")
}
