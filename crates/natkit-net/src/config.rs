//! Configuration of a [`Net`](crate::Net): every limit and timeout, with the
//! reason for its default.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default longest line: big enough for a JSON message with a small payload,
/// small enough that a thousand connections each holding one partial line stay
/// under 64 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
/// Default send queue per connection: 16 maximal lines. Senders beyond it wait
/// (async) or get `QueueFull` (event loop).
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 1024 * 1024;
/// Default received-but-unread lines per connection, in bytes; beyond it natkit
/// stops reading from the socket, and TCP slows the sender down.
pub const DEFAULT_RECV_QUEUE_BYTES: usize = 1024 * 1024;
/// Default for how long a peer may take to finish the handshake. A handshake is
/// 1.5 round trips; 5 s allows for slow links while keeping half-open
/// connections from piling up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for how long a TCP connect may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle time after which we ping the peer. NATs commonly forget TCP
/// mappings after minutes; 15 s of traffic keeps them and detects loss early.
pub const DEFAULT_PING_AFTER: Duration = Duration::from_secs(15);
/// Default silence after which the peer is considered dead (3 pings' worth).
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(45);
/// Default time a graceful close waits for queued lines to be sent.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Configuration of a [`Net`](crate::Net). Build with `NetConfig::default()` and
/// change what you need.
///
/// ```
/// use natkit_net::NetConfig;
/// use std::time::Duration;
///
/// let config = NetConfig {
///     listen: "127.0.0.1:0".parse().unwrap(),
///     max_inbound: 50,
///     ping_after: Duration::from_secs(5),
///     dead_after: Duration::from_secs(15),
///     ..NetConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NetConfig {
    /// Address to listen on; outgoing connections leave from the same port.
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Most inbound connections at once; more are refused at once.
    pub max_inbound: usize,
    /// Most outbound connections at once; `connect` beyond it fails.
    pub max_outbound: usize,
    /// Most handshakes in progress at once; more connections wait in the
    /// kernel's accept queue.
    pub max_pending_handshakes: usize,
    /// Longest line, in bytes without the terminator.
    pub max_line_bytes: usize,
    /// Send queue per connection, in bytes.
    pub send_queue_bytes: usize,
    /// Received-but-unread lines per connection, in bytes.
    pub recv_queue_bytes: usize,
    /// Handshake deadline.
    #[serde(with = "secs")]
    pub handshake_timeout: Duration,
    /// TCP connect deadline.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Ping a peer after this much silence.
    #[serde(with = "secs")]
    pub ping_after: Duration,
    /// Drop a peer after this much silence.
    #[serde(with = "secs")]
    pub dead_after: Duration,
    /// How long a graceful close waits for queued lines.
    #[serde(with = "secs")]
    pub close_timeout: Duration,
    /// Send lines without encryption (still authenticated at the start). Both
    /// sides must opt in: debugging only.
    pub plaintext: bool,
    /// Accept peers that ask for plaintext.
    pub allow_plaintext: bool,
    /// Most queued `Connected`/`Disconnected` events not yet taken; beyond it the
    /// oldest are dropped (and counted).
    pub max_queued_events: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            max_inbound: 256,
            max_outbound: 256,
            max_pending_handshakes: 128,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
            recv_queue_bytes: DEFAULT_RECV_QUEUE_BYTES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_after: DEFAULT_PING_AFTER,
            dead_after: DEFAULT_DEAD_AFTER,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            plaintext: false,
            allow_plaintext: false,
            max_queued_events: 16 * 1024,
        }
    }
}

impl NetConfig {
    /// Checks that the values fit together.
    pub fn validate(&self) -> Result<(), crate::NetError> {
        let bad = |why: &'static str| Err(crate::NetError::Config(why));
        if self.max_line_bytes == 0 {
            return bad("max_line_bytes must be at least 1");
        }
        if self.send_queue_bytes <= self.max_line_bytes {
            return bad("send_queue_bytes must be larger than max_line_bytes");
        }
        if self.recv_queue_bytes == 0 {
            return bad("recv_queue_bytes must be at least 1");
        }
        if self.max_pending_handshakes == 0 {
            return bad("max_pending_handshakes must be at least 1");
        }
        if self.ping_after.is_zero() || self.dead_after <= self.ping_after {
            return bad("dead_after must be longer than ping_after, and both non-zero");
        }
        if self.handshake_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be non-zero");
        }
        Ok(())
    }
}

/// Durations as (fractional) seconds in configuration files.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}
