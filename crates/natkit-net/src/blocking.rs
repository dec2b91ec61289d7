//! The event-loop API: a [`Net`] that runs its own runtime thread, for
//! programs written as a loop (pyp2p's `for con in net: for line in con:`).
//!
//! Nothing here blocks for long: [`Net::wait`] sleeps until something happens
//! (or the timeout), [`Connection::lines`] takes what has arrived, and
//! [`Connection::send_line`] queues or says the queue is full.
//!
//! ```no_run
//! use std::time::Duration;
//! use natkit_identity::Keypair;
//! use natkit_net::{NetConfig, blocking::Net};
//!
//! let net = Net::start(Keypair::generate()?, NetConfig::default())?;
//! loop {
//!     net.wait(Duration::from_secs(1));
//!     for con in &net {
//!         for line in con.lines() {
//!             con.send_line(&format!("echo: {line}"))?;
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natkit_identity::{Keypair, NodeId};
use tokio::runtime::Runtime;

pub use crate::conn::Connection;
use crate::{NetConfig, NetError, NetEvent, NetStats};

/// The connection manager with its own runtime thread.
///
/// Use it from ordinary (non-async) code: its methods block on its own
/// runtime, so calling them, or dropping the `Net`, from inside another tokio
/// runtime panics (tokio forbids blocking there); async code uses
/// [`crate::Net`] instead.
pub struct Net {
    net: crate::Net,
    rt: Option<Runtime>,
    seen: AtomicU64,
}

impl Net {
    /// Starts the runtime thread and listens.
    pub fn start(identity: Keypair, config: NetConfig) -> Result<Net, NetError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("natkit-net")
            .enable_all()
            .build()
            .map_err(NetError::Runtime)?;
        let net = rt.block_on(crate::Net::bind(identity, config))?;
        let seen = AtomicU64::new(net.activity());
        Ok(Net {
            net,
            rt: Some(rt),
            seen,
        })
    }

    fn rt(&self) -> &Runtime {
        // Only `stop`/`drop` take the runtime, and they consume `self`.
        self.rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime present until stop"))
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.net.node_id()
    }

    /// The address we listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.net.local_addr()
    }

    /// Connects and authenticates (blocks up to the connect and handshake
    /// timeouts).
    pub fn connect(&self, addr: SocketAddr, expected: NodeId) -> Result<Connection, NetError> {
        self.rt().block_on(self.net.connect(addr, expected))
    }

    /// Every connection (open, or closed with lines still to take).
    pub fn connections(&self) -> Vec<Connection> {
        self.net.connections()
    }

    /// The connection to `node`, if any.
    pub fn connection(&self, node: &NodeId) -> Option<Connection> {
        self.net.connection(node)
    }

    /// Connections whose peer address is `addr`.
    pub fn connections_to(&self, addr: SocketAddr) -> Vec<Connection> {
        self.net.connections_to(addr)
    }

    /// Queues `line` on every open connection; returns how many took it.
    pub fn broadcast(&self, line: &str) -> usize {
        self.net.broadcast(line)
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        self.net.stats()
    }

    /// Sleeps until something happened since the last call (a connection
    /// came or went, lines arrived) or `timeout` passed. Returns at once if
    /// lines are waiting. Returns whether something happened.
    pub fn wait(&self, timeout: Duration) -> bool {
        let seen = self.seen.load(Ordering::Acquire);
        if self.net.activity() == seen && !self.connections().iter().any(|c| c.has_lines()) {
            self.rt().block_on(self.net.wait_activity(seen, timeout));
        }
        let now = self.net.activity();
        self.seen.store(now, Ordering::Release);
        now != seen || self.connections().iter().any(|c| c.has_lines())
    }

    /// Takes the events queued so far (they are queued from the first call
    /// on), without waiting.
    pub fn events(&self) -> Vec<NetEvent> {
        let mut out = Vec::new();
        self.rt().block_on(async {
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::ZERO, self.net.next_event()).await
            {
                out.push(ev);
            }
        });
        out
    }

    /// The async [`Net`](crate::Net) inside, for code that mixes both styles.
    pub fn as_async(&self) -> &crate::Net {
        &self.net
    }

    /// Closes every connection gracefully and stops the runtime thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.block_on(self.net.shutdown());
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl IntoIterator for &Net {
    type Item = Connection;
    type IntoIter = std::vec::IntoIter<Connection>;

    /// `for con in &net` iterates over [`Net::connections`].
    fn into_iter(self) -> Self::IntoIter {
        self.connections().into_iter()
    }
}
