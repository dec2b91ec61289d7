//! One connection: the handle users hold ([`Connection`]) and the task that
//! moves its bytes.
//!
//! Each connection runs one task made of three parts that run concurrently:
//! the *reader* (frames → lines → the receive queue), the *writer* (the send
//! queue → frames) and the *keeper* (keepalive pings, dead-peer detection, and
//! the deadline of a graceful close). Users never block the task: sending
//! appends to a bounded buffer, receiving drains a bounded queue.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use natkit_identity::NodeId;
use snow::StatelessTransportState;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::{CloseReason, SendError};
use crate::frame::{self, Frame, MAX_DATA_ENCRYPTED, MAX_DATA_PLAINTEXT, TAG_BYTES};
use crate::hub::Hub;
use crate::lines::{self, LineDecoder, LineError};

/// Bytes charged to the receive queue per line on top of its text, so that a
/// flood of empty lines is bounded too.
const LINE_OVERHEAD_BYTES: usize = 32;
/// Read size when data is flowing.
const READ_CHUNK: usize = 64 * 1024;

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConnStats {
    /// Lines received.
    pub lines_in: u64,
    /// Lines sent (queued).
    pub lines_out: u64,
    /// Line bytes received (with terminators).
    pub bytes_in: u64,
    /// Line bytes sent (with terminators).
    pub bytes_out: u64,
    /// When the handshake finished.
    pub connected_since: SystemTime,
}

pub(crate) struct Limits {
    pub max_line_bytes: usize,
    pub send_queue_bytes: usize,
    pub recv_queue_bytes: usize,
    pub ping_after: Duration,
    pub dead_after: Duration,
    pub close_timeout: Duration,
}

struct SendState {
    buf: Vec<u8>,
    pong_due: bool,
    ping_due: bool,
    /// Set when the connection is closing: nothing more is accepted.
    closing: bool,
}

struct RecvState {
    lines: VecDeque<String>,
    bytes: usize,
    ended: bool,
}

pub(crate) struct ConnShared {
    pub(crate) node_id: NodeId,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) local_addr: SocketAddr,
    pub(crate) observed_addr: SocketAddr,
    pub(crate) direction: Direction,
    pub(crate) handshake_hash: [u8; 32],
    pub(crate) plaintext: bool,
    /// The relay the connection runs through (its bytes are spliced by that node), if any.
    pub(crate) relay: Option<NodeId>,
    /// The relayed connection this direct one replaced: our lines are delivered only after
    /// every line of it was (see [`deliver`]).
    pub(crate) predecessor: Mutex<Option<Arc<ConnShared>>>,
    since: SystemTime,
    started: Instant,
    limits: Arc<Limits>,
    send: Mutex<SendState>,
    send_wake: Notify,
    send_space: Notify,
    keeper_wake: Notify,
    recv: Mutex<RecvState>,
    recv_space: Notify,
    recv_ready: Notify,
    reason: Mutex<Option<CloseReason>>,
    closing_since_ms: AtomicU64,
    last_recv_ms: AtomicU64,
    ended: AtomicBool,
    /// Every queued line and the close frame were written to the socket (a graceful close
    /// that completed its sending side).
    all_sent: AtomicBool,
    done: Notify,
    cancel: CancellationToken,
    pub(crate) scheduled: AtomicBool,
    lines_in: AtomicU64,
    lines_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    hub: Weak<Hub>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the state is still
    // consistent enough to close the connection, so ignore poisoning.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection to an authenticated peer. Cheap to clone; all clones are the
/// same connection.
///
/// Sending never blocks the caller in the event-loop style ([`send_line`]
/// returns [`SendError::QueueFull`]); the async [`send`] waits for room.
/// Received lines wait in a bounded queue until taken with [`lines`] (all at
/// once, never blocking) or [`recv`] (async).
///
/// [`send_line`]: Connection::send_line
/// [`send`]: Connection::send
/// [`lines`]: Connection::lines
/// [`recv`]: Connection::recv
#[derive(Clone)]
pub struct Connection(pub(crate) Arc<ConnShared>);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("node_id", &self.0.node_id)
            .field("remote_addr", &self.0.remote_addr)
            .field("direction", &self.0.direction)
            .finish()
    }
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Connection {}

impl Connection {
    /// The peer's node id (authenticated by the handshake).
    pub fn node_id(&self) -> NodeId {
        self.0.node_id
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.0.remote_addr
    }

    /// Our local address on this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr
    }

    /// Our address as the peer saw it (for NAT detection).
    pub fn observed_addr(&self) -> SocketAddr {
        self.0.observed_addr
    }

    /// Who dialed.
    pub fn direction(&self) -> Direction {
        self.0.direction
    }

    /// Whether lines travel without encryption (opt-in debugging mode).
    pub fn is_plaintext(&self) -> bool {
        self.0.plaintext
    }

    /// The relay this connection runs through ([`Net::connect_over`](crate::Net::connect_over),
    /// [`Net::accept_over`](crate::Net::accept_over)), `None` for a direct connection. A
    /// relayed connection is end-to-end encrypted and authenticated like any other: the relay
    /// forwards ciphertext. [`remote_addr`](Connection::remote_addr) is then the relay's
    /// address.
    pub fn relay(&self) -> Option<NodeId> {
        self.0.relay
    }

    /// Closes the connection gracefully (like [`close`](Connection::close)) with `reason`
    /// as its [close reason](Connection::close_reason), when it has none yet: for a layer
    /// above that knows why the path is going away (a relay that announced a cut).
    pub fn close_because(&self, reason: CloseReason) {
        self.0.begin_close(reason);
    }

    /// Counters.
    pub fn stats(&self) -> ConnStats {
        let s = &self.0;
        ConnStats {
            lines_in: s.lines_in.load(Ordering::Relaxed),
            lines_out: s.lines_out.load(Ordering::Relaxed),
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
            connected_since: s.since,
        }
    }

    /// Queues a line without waiting. The line must not contain `\n`; the
    /// terminator is added. Fails with [`SendError::QueueFull`] when the send
    /// queue is full.
    pub fn send_line(&self, line: &str) -> Result<(), SendError> {
        lines::check_outgoing(line, self.0.limits.max_line_bytes)?;
        match self.0.try_queue(line) {
            Ok(()) => Ok(()),
            Err(QueueErr::Full) => Err(SendError::QueueFull),
            Err(QueueErr::Closed) => Err(SendError::Closed(self.reason_or_local())),
        }
    }

    /// Queues a line, waiting while the send queue is full (backpressure).
    pub async fn send(&self, line: &str) -> Result<(), SendError> {
        lines::check_outgoing(line, self.0.limits.max_line_bytes)?;
        loop {
            let space = self.0.send_space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.0.try_queue(line) {
                Ok(()) => return Ok(()),
                Err(QueueErr::Closed) => return Err(SendError::Closed(self.reason_or_local())),
                Err(QueueErr::Full) => space.await,
            }
        }
    }

    /// Takes every line received so far (never waits). Empty lines are
    /// delivered as empty strings.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.0.take_lines(&mut out, usize::MAX);
        out
    }

    /// Takes up to `max` received lines into `out` (never waits); returns how many.
    pub fn take_lines(&self, out: &mut Vec<String>, max: usize) -> usize {
        self.0.take_lines(out, max)
    }

    /// The next line; `None` once the connection has ended and every line
    /// received before the end was taken.
    pub async fn recv(&self) -> Option<String> {
        loop {
            let ready = self.0.recv_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut st = lock(&self.0.recv);
                if let Some(l) = st.lines.pop_front() {
                    st.bytes -= l.len() + LINE_OVERHEAD_BYTES;
                    drop(st);
                    self.0.recv_space.notify_one();
                    return Some(l);
                }
                if st.ended {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// Waits until at least one line is there (or the connection ended), then
    /// takes up to `max` lines into `out`. Returns 0 only when the connection
    /// has ended and nothing is left.
    pub async fn recv_many(&self, out: &mut Vec<String>, max: usize) -> usize {
        loop {
            let ready = self.0.recv_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let n = self.0.take_lines(out, max);
            if n > 0 || lock(&self.0.recv).ended {
                return n;
            }
            ready.await;
        }
    }

    /// The received lines as a stream; it ends when the connection has ended
    /// and every line was taken.
    pub fn line_stream(&self) -> impl futures::Stream<Item = String> + Send + 'static {
        futures::stream::unfold(self.clone(), |c| async move {
            let l = c.recv().await?;
            Some((l, c))
        })
    }

    /// Starts a graceful close: lines already queued are sent (within the
    /// close timeout), then the peer is told, and the connection ends.
    pub fn close(&self) {
        self.0.begin_close(CloseReason::Local);
    }

    /// Whether a graceful [`close`](Connection::close) got every line queued before it, and
    /// the close frame, written to the socket (handed to the kernel, which delivers them
    /// unless the network fails). False while the close is running, and for good when it
    /// timed out or the connection broke first: then lines may not have reached the peer.
    pub fn all_sent(&self) -> bool {
        self.0.all_sent.load(Ordering::Acquire)
    }

    /// Whether the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.0.send).closing
    }

    /// Why the connection ended (or is ending), if it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.0.reason).clone()
    }

    /// Waits until the connection has fully ended; returns why.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let done = self.0.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.0.ended.load(Ordering::Acquire) {
                return self.reason_or_local();
            }
            done.await;
        }
    }

    /// Whether the task has ended and no received line is left to take.
    pub(crate) fn is_finished(&self) -> bool {
        self.0.ended.load(Ordering::Acquire) && lock(&self.0.recv).lines.is_empty()
    }

    /// Whether lines are waiting to be taken.
    pub fn has_lines(&self) -> bool {
        !lock(&self.0.recv).lines.is_empty()
    }

    fn reason_or_local(&self) -> CloseReason {
        self.close_reason().unwrap_or(CloseReason::Local)
    }
}

enum QueueErr {
    Full,
    Closed,
}

impl ConnShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node_id: NodeId,
        remote_addr: SocketAddr,
        local_addr: SocketAddr,
        observed_addr: SocketAddr,
        direction: Direction,
        handshake_hash: [u8; 32],
        plaintext: bool,
        relay: Option<NodeId>,
        limits: Arc<Limits>,
        hub: Weak<Hub>,
    ) -> Arc<Self> {
        Arc::new(ConnShared {
            node_id,
            remote_addr,
            local_addr,
            observed_addr,
            direction,
            handshake_hash,
            plaintext,
            relay,
            predecessor: Mutex::new(None),
            since: SystemTime::now(),
            started: Instant::now(),
            limits,
            send: Mutex::new(SendState {
                buf: Vec::new(),
                pong_due: false,
                ping_due: false,
                closing: false,
            }),
            send_wake: Notify::new(),
            send_space: Notify::new(),
            keeper_wake: Notify::new(),
            recv: Mutex::new(RecvState {
                lines: VecDeque::new(),
                bytes: 0,
                ended: false,
            }),
            recv_space: Notify::new(),
            recv_ready: Notify::new(),
            reason: Mutex::new(None),
            closing_since_ms: AtomicU64::new(u64::MAX),
            last_recv_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            all_sent: AtomicBool::new(false),
            done: Notify::new(),
            cancel: CancellationToken::new(),
            scheduled: AtomicBool::new(false),
            lines_in: AtomicU64::new(0),
            lines_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            hub,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn try_queue(&self, line: &str) -> Result<(), QueueErr> {
        let mut st = lock(&self.send);
        if st.closing {
            return Err(QueueErr::Closed);
        }
        let need = line.len() + 1;
        if !st.buf.is_empty() && st.buf.len() + need > self.limits.send_queue_bytes {
            return Err(QueueErr::Full);
        }
        let was_empty = st.buf.is_empty();
        st.buf.reserve(need);
        st.buf.extend_from_slice(line.as_bytes());
        st.buf.push(b'\n');
        drop(st);
        self.lines_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(need as u64, Ordering::Relaxed);
        if was_empty {
            self.send_wake.notify_one();
        }
        Ok(())
    }

    pub(crate) fn take_lines(&self, out: &mut Vec<String>, max: usize) -> usize {
        let mut st = lock(&self.recv);
        let n = st.lines.len().min(max);
        let mut freed = 0;
        for l in st.lines.drain(..n) {
            freed += l.len() + LINE_OVERHEAD_BYTES;
            out.push(l);
        }
        st.bytes -= freed;
        if st.lines.is_empty() {
            self.scheduled.store(false, Ordering::Release);
        }
        drop(st);
        if n > 0 {
            self.recv_space.notify_one();
        }
        n
    }

    /// Pops one line for the event stream; `(line, more_left)`.
    pub(crate) fn pop_line_for_event(&self) -> (Option<String>, bool) {
        let mut st = lock(&self.recv);
        let l = st.lines.pop_front();
        if let Some(l) = &l {
            st.bytes -= l.len() + LINE_OVERHEAD_BYTES;
        }
        let more = !st.lines.is_empty();
        if !more {
            self.scheduled.store(false, Ordering::Release);
        }
        drop(st);
        if l.is_some() {
            self.recv_space.notify_one();
        }
        (l, more)
    }

    fn set_reason(&self, r: CloseReason) {
        let mut g = lock(&self.reason);
        if g.is_none() {
            *g = Some(r);
        }
    }

    /// Marks the connection as closing for `reason` (first reason wins) and
    /// wakes the writer, which flushes what is queued and says goodbye.
    pub(crate) fn begin_close(&self, reason: CloseReason) {
        self.set_reason(reason);
        let mut st = lock(&self.send);
        if !st.closing {
            st.closing = true;
            let _ = self.closing_since_ms.compare_exchange(
                u64::MAX,
                self.now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        drop(st);
        self.send_wake.notify_one();
        self.send_space.notify_waiters();
        self.keeper_wake.notify_one();
    }

    /// Ends at once: the reader and the writer stop where they are.
    fn abort(&self, reason: CloseReason) {
        self.begin_close(reason);
        self.cancel.cancel();
    }
}

/// Runs a connection until its reader, writer and keeper have all stopped. The
/// caller then calls [`finish`].
pub(crate) async fn run(
    conn: Arc<ConnShared>,
    stream: TcpStream,
    transport: StatelessTransportState,
) {
    let (rd, wr) = stream.into_split();
    let transport = Arc::new(transport);
    let reader = read_loop(&conn, rd, &transport);
    let writer = write_loop(&conn, wr, &transport);
    let keeper = keep_loop(&conn);
    let rw = async {
        tokio::join!(reader, writer);
        conn.cancel.cancel();
    };
    tokio::join!(rw, keeper);
}

/// Marks the connection as ended, wakes everyone waiting on it and reports
/// the end to the event hub.
pub(crate) fn finish(conn: &Arc<ConnShared>) {
    conn.set_reason(CloseReason::PeerGone);
    {
        let mut st = lock(&conn.send);
        st.closing = true;
        st.buf = Vec::new();
    }
    lock(&conn.recv).ended = true;
    conn.ended.store(true, Ordering::Release);
    conn.recv_ready.notify_waiters();
    conn.send_space.notify_waiters();
    conn.done.notify_waiters();
    let reason = lock(&conn.reason).clone().unwrap_or(CloseReason::PeerGone);
    tracing::debug!(%reason, "connection ended");
    if let Some(hub) = conn.hub.upgrade() {
        hub.disconnected(Connection(conn.clone()), reason);
    }
}

async fn read_loop(conn: &Arc<ConnShared>, rd: OwnedReadHalf, transport: &StatelessTransportState) {
    let mut buf = BytesMut::new();
    let mut plain = Vec::new();
    let mut decoder = LineDecoder::new(conn.limits.max_line_bytes);
    let mut nonce: u64 = 0;
    let mut lines: Vec<String> = Vec::new();
    loop {
        // Wait for data without holding a buffer, so idle connections stay small.
        let ready = tokio::select! {
            r = rd.readable() => r,
            () = conn.cancel.cancelled() => return,
        };
        if let Err(e) = ready {
            conn.abort(CloseReason::Io {
                detail: e.to_string(),
            });
            return;
        }
        buf.reserve(READ_CHUNK);
        match rd.try_read_buf(&mut buf) {
            Ok(0) => {
                // EOF: the peer closed its side (without a close frame). Anything queued
                // still goes out. Through a relay, it is the relay that closed the stream.
                conn.begin_close(match conn.relay {
                    Some(relay) => CloseReason::PathLost {
                        detail: format!(
                            "relay {} closed the circuit (or the peer went away)",
                            relay.short()
                        ),
                    },
                    None => CloseReason::PeerGone,
                });
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                conn.abort(CloseReason::Io {
                    detail: e.to_string(),
                });
                return;
            }
        }
        conn.last_recv_ms.store(conn.now_ms(), Ordering::Relaxed);
        // Whole frames: 2-byte length, then the body.
        while buf.len() >= 2 {
            let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
            if buf.len() < 2 + len {
                break;
            }
            buf.advance(2);
            let body = buf.split_to(len);
            let content: &[u8] = if conn.plaintext {
                &body
            } else {
                if len < TAG_BYTES {
                    conn.abort(protocol("frame shorter than its tag"));
                    return;
                }
                plain.resize(len, 0);
                match transport.read_message(nonce, &body, &mut plain) {
                    Ok(n) => {
                        nonce += 1;
                        &plain[..n]
                    }
                    Err(_) => {
                        conn.abort(protocol(
                            "frame does not decrypt (tampered or out of order)",
                        ));
                        return;
                    }
                }
            };
            match frame::parse(content) {
                Ok(Frame::Data(d)) => {
                    if let Err(e) = decoder.feed(d, &mut lines) {
                        // Deliver the good lines before the bad one, then close.
                        deliver(conn, &mut lines).await;
                        let reason = match e {
                            LineError::TooLong { limit } => CloseReason::LineTooLong { limit },
                            LineError::InvalidUtf8 | LineError::Newline => CloseReason::InvalidUtf8,
                        };
                        tracing::info!(%reason, "closing connection");
                        conn.begin_close(reason);
                        return;
                    }
                }
                Ok(Frame::Ping) => {
                    lock(&conn.send).pong_due = true;
                    conn.send_wake.notify_one();
                }
                Ok(Frame::Pong) => {}
                Ok(Frame::Close { code, message }) => {
                    deliver(conn, &mut lines).await;
                    // CLOSE is the peer's last frame: answer with ours and end.
                    conn.begin_close(CloseReason::Remote { code, message });
                    return;
                }
                Err(e) => {
                    deliver(conn, &mut lines).await;
                    conn.abort(protocol(&e.to_string()));
                    return;
                }
            }
        }
        if !deliver(conn, &mut lines).await {
            return;
        }
        if buf.is_empty() {
            buf = BytesMut::new();
            if plain.capacity() > 0 {
                plain = Vec::new();
            }
        }
    }
}

fn protocol(detail: &str) -> CloseReason {
    CloseReason::Protocol {
        detail: detail.to_string(),
    }
}

/// How often a connection that replaced a relayed one looks whether the relayed one's
/// lines were all taken.
const PREDECESSOR_POLL: Duration = Duration::from_millis(10);

/// Waits until the relayed connection this one replaced has ended and every line it
/// received was taken (so the lines of the two reach the application in the order they
/// were sent), at most twice the close timeout (an application that never takes the old
/// connection's lines does not stall the new one for longer). Returns false if cancelled.
async fn after_predecessor(conn: &Arc<ConnShared>) -> bool {
    let Some(p) = lock(&conn.predecessor).clone() else {
        return true;
    };
    let until = Instant::now() + conn.limits.close_timeout * 2;
    while !(p.ended.load(Ordering::Acquire) && lock(&p.recv).lines.is_empty())
        && Instant::now() < until
    {
        tokio::select! {
            () = tokio::time::sleep(PREDECESSOR_POLL) => {}
            () = conn.cancel.cancelled() => return false,
        }
    }
    *lock(&conn.predecessor) = None;
    true
}

/// Moves decoded lines into the receive queue, waiting while it is full.
/// Returns false if the connection was cancelled meanwhile.
async fn deliver(conn: &Arc<ConnShared>, lines: &mut Vec<String>) -> bool {
    if lines.is_empty() {
        return true;
    }
    if !after_predecessor(conn).await {
        return false;
    }
    loop {
        let space = conn.recv_space.notified();
        tokio::pin!(space);
        space.as_mut().enable();
        {
            let mut st = lock(&conn.recv);
            if st.lines.is_empty() || st.bytes < conn.limits.recv_queue_bytes {
                let mut bytes = 0;
                let n = lines.len() as u64;
                for l in lines.drain(..) {
                    bytes += l.len();
                    st.bytes += l.len() + LINE_OVERHEAD_BYTES;
                    st.lines.push_back(l);
                }
                drop(st);
                conn.lines_in.fetch_add(n, Ordering::Relaxed);
                conn.bytes_in.fetch_add(bytes as u64 + n, Ordering::Relaxed);
                conn.recv_ready.notify_waiters();
                if let Some(hub) = conn.hub.upgrade() {
                    hub.lines_ready(&Connection(conn.clone()));
                }
                return true;
            }
        }
        tokio::select! {
            () = &mut space => {}
            () = conn.cancel.cancelled() => return false,
        }
    }
}

async fn write_loop(
    conn: &Arc<ConnShared>,
    mut wr: OwnedWriteHalf,
    transport: &StatelessTransportState,
) {
    let mut enc = Encoder {
        transport,
        nonce: 0,
        out: Vec::new(),
        content: Vec::new(),
    };
    loop {
        let (data, pong, ping, closing) = {
            let mut st = lock(&conn.send);
            let data = std::mem::take(&mut st.buf);
            let r = (data, st.pong_due, st.ping_due, st.closing);
            st.pong_due = false;
            st.ping_due = false;
            r
        };
        if !data.is_empty() {
            conn.send_space.notify_waiters();
        }
        let max = if conn.plaintext {
            MAX_DATA_PLAINTEXT
        } else {
            MAX_DATA_ENCRYPTED
        };
        enc.out.clear();
        for chunk in data.chunks(max) {
            enc.push(conn, &Frame::Data(chunk));
        }
        if pong {
            enc.push(conn, &Frame::Pong);
        }
        if ping {
            enc.push(conn, &Frame::Ping);
        }
        let mut close_sent = false;
        if closing {
            let (code, message) = lock(&conn.reason)
                .clone()
                .unwrap_or(CloseReason::Local)
                .to_wire();
            if !matches!(
                lock(&conn.reason).as_ref(),
                Some(CloseReason::PeerGone | CloseReason::Io { .. })
            ) {
                enc.push(conn, &Frame::Close { code, message });
                close_sent = true;
            }
        }
        if !enc.out.is_empty() {
            let res = tokio::select! {
                r = wr.write_all(&enc.out) => r,
                () = conn.cancel.cancelled() => return,
            };
            if let Err(e) = res {
                conn.abort(CloseReason::Io {
                    detail: e.to_string(),
                });
                return;
            }
        }
        if enc.out.capacity() > 4 * READ_CHUNK {
            enc.out = Vec::new();
            enc.content = Vec::new();
        }
        if closing {
            // Written without error, the lines and the close frame are the kernel's now.
            conn.all_sent.store(close_sent, Ordering::Release);
            let _ = tokio::select! {
                r = wr.shutdown() => r,
                () = conn.cancel.cancelled() => return,
            };
            return;
        }
        tokio::select! {
            () = conn.send_wake.notified() => {}
            () = conn.cancel.cancelled() => return,
        }
    }
}

/// Turns frames into wire bytes: length prefix, and encryption unless the
/// connection is in plaintext mode. Keeps the sending nonce.
struct Encoder<'a> {
    transport: &'a StatelessTransportState,
    nonce: u64,
    out: Vec<u8>,
    content: Vec<u8>,
}

impl Encoder<'_> {
    fn push(&mut self, conn: &ConnShared, f: &Frame<'_>) {
        self.content.clear();
        frame::emit(f, &mut self.content);
        let out = &mut self.out;
        if conn.plaintext {
            out.extend_from_slice(&(self.content.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.content);
            return;
        }
        let start = out.len();
        let clen = self.content.len() + TAG_BYTES;
        out.resize(start + 2 + clen, 0);
        out[start..start + 2].copy_from_slice(&(clen as u16).to_be_bytes());
        match self
            .transport
            .write_message(self.nonce, &self.content, &mut out[start + 2..])
        {
            Ok(n) => {
                self.nonce += 1;
                out.truncate(start + 2 + n);
            }
            Err(e) => {
                // Only possible with a frame over 65535 bytes, which the
                // chunking prevents.
                out.truncate(start);
                conn.abort(protocol(&format!("cannot encrypt a frame: {e}")));
            }
        }
    }
}

/// Keepalive, dead-peer detection and the graceful-close deadline. Sleeps
/// until the next thing that could be due (no periodic ticking, so idle
/// connections cost no CPU between pings).
async fn keep_loop(conn: &Arc<ConnShared>) {
    let l = &conn.limits;
    let ms = |d: Duration| d.as_millis() as u64;
    let mut pinged_at: Option<u64> = None;
    loop {
        let now = conn.now_ms();
        let closing_since = conn.closing_since_ms.load(Ordering::Acquire);
        if closing_since != u64::MAX && now.saturating_sub(closing_since) >= ms(l.close_timeout) {
            tracing::debug!("graceful close timed out");
            conn.cancel.cancel();
            return;
        }
        let last = conn.last_recv_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= ms(l.dead_after) {
            tracing::info!(
                idle_ms = now - last,
                "peer is dead: no answer to keepalives"
            );
            conn.abort(CloseReason::DeadPeer);
            return;
        }
        // Ping after `ping_after` of silence, and again every `ping_after`
        // while the silence lasts.
        let next_ping = match pinged_at {
            Some(p) if p >= last => p + ms(l.ping_after),
            _ => last + ms(l.ping_after),
        };
        if now >= next_ping {
            pinged_at = Some(now);
            lock(&conn.send).ping_due = true;
            conn.send_wake.notify_one();
            continue;
        }
        let mut next = next_ping.min(last + ms(l.dead_after));
        if closing_since != u64::MAX {
            next = next.min(closing_since + ms(l.close_timeout));
        }
        let sleep = Duration::from_millis(next.saturating_sub(now).max(1));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = conn.keeper_wake.notified() => {}
            () = conn.cancel.cancelled() => return,
        }
    }
}
