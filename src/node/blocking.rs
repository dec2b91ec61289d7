//! The event-loop form of the node: a [`BlockingNode`] runs its own runtime
//! thread, for programs written as a loop (pyp2p's `for con in net: for line
//! in con:`), on top of the same [`Node`].
//!
//! ```no_run
//! use std::time::Duration;
//! use natkit::Node;
//!
//! let node = Node::builder()
//!     .bootstrap(&["203.0.113.1:6881".parse()?])
//!     .build_blocking()?;
//! node.wait_reachable(Duration::from_secs(30))?;
//! println!("my node id: {}", node.id());
//! loop {
//!     node.wait(Duration::from_secs(1));
//!     for con in &node {
//!         for line in con.lines() {
//!             con.send_line(&format!("echo: {line}"))?;
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natkit_identity::NodeId;
use natkit_net::{Connection, NetEvent};
use natkit_unl::Unl;
use tokio::runtime::Runtime;

use super::{ConnectError, Node, NodeBuilder, NodeError, Path, Target};

/// A [`Node`] with its own runtime thread. Its methods block on that runtime,
/// so call them (and drop it) from ordinary code, never from inside another
/// tokio runtime; async code uses [`Node`].
pub struct BlockingNode {
    node: Node,
    rt: Option<Runtime>,
    seen: AtomicU64,
}

impl NodeBuilder {
    /// Builds the node on a runtime thread of its own: the event-loop form.
    ///
    /// ```
    /// let node = natkit::Node::builder()
    ///     .bind_ip("127.0.0.1".parse().unwrap())
    ///     .build_blocking()?;
    /// assert_eq!(node.unl().node_id, node.id());
    /// node.stop();
    /// # Ok::<(), natkit::node::NodeError>(())
    /// ```
    pub fn build_blocking(self) -> Result<BlockingNode, NodeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("natkit-node")
            .enable_all()
            .build()
            .map_err(NodeError::Runtime)?;
        let node = rt.block_on(self.build())?;
        let seen = AtomicU64::new(node.net().activity());
        Ok(BlockingNode {
            node,
            rt: Some(rt),
            seen,
        })
    }
}

impl BlockingNode {
    fn rt(&self) -> &Runtime {
        // Only `stop`/`drop` take the runtime, and they consume `self`.
        self.rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime present until stop"))
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.node.id()
    }

    /// Our current UNL.
    pub fn unl(&self) -> Unl {
        self.node.unl()
    }

    /// [`Node::wait_reachable`], blocking.
    pub fn wait_reachable(&self, limit: Duration) -> Result<(), NodeError> {
        self.rt().block_on(self.node.wait_reachable(limit))
    }

    /// [`Node::connect`], blocking: a UNL or a node id (`"nk..."` or the
    /// 52-character id, parsed into a [`Target`]).
    pub fn connect(&self, target: impl Into<Target>) -> Result<(Connection, Path), ConnectError> {
        self.rt().block_on(self.node.connect(target))
    }

    /// Every connection that is open, or closed with lines not yet taken.
    pub fn connections(&self) -> Vec<Connection> {
        self.node.net().connections()
    }

    /// Sleeps until something happened since the last call (a connection
    /// came or went, lines arrived) or `timeout` passed; at once if lines are
    /// waiting. Returns whether something happened.
    pub fn wait(&self, timeout: Duration) -> bool {
        let net = self.node.net();
        let seen = self.seen.load(Ordering::Acquire);
        if net.activity() == seen && !self.connections().iter().any(|c| c.has_lines()) {
            self.rt().block_on(net.wait_activity(seen, timeout));
        }
        let now = net.activity();
        self.seen.store(now, Ordering::Release);
        now != seen || self.connections().iter().any(|c| c.has_lines())
    }

    /// Takes the connection events queued so far (queued from the first
    /// call on), without waiting.
    pub fn events(&self) -> Vec<NetEvent> {
        let net = self.node.net();
        let mut out = Vec::new();
        self.rt().block_on(async {
            while let Ok(Some(ev)) = tokio::time::timeout(Duration::ZERO, net.next_event()).await {
                out.push(ev);
            }
        });
        out
    }

    /// The async [`Node`] inside, for code that mixes both styles.
    pub fn as_async(&self) -> &Node {
        &self.node
    }

    /// Closes every connection gracefully, stops the node (removing its port
    /// mappings) and the runtime thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.block_on(self.node.shutdown());
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for BlockingNode {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl IntoIterator for &BlockingNode {
    type Item = Connection;
    type IntoIter = std::vec::IntoIter<Connection>;

    /// `for con in &node` iterates over [`BlockingNode::connections`].
    fn into_iter(self) -> Self::IntoIter {
        self.connections().into_iter()
    }
}
