//! The event hub: what a [`Net`](crate::Net) tells its users, in order.
//!
//! Two ways to listen, for the two APIs:
//! - an *activity counter* that moves whenever anything happens (a connection,
//!   lines, a disconnection); the event-loop API's `wait` sleeps on it;
//! - an *event queue* ([`NetEvent`]s: connected, line, disconnected), switched
//!   on by the first call to [`Net::next_event`](crate::Net::next_event) or
//!   [`Net::events`](crate::Net::events). Lines are not copied into it: it
//!   holds at most one "has lines" marker per connection and takes the lines
//!   from the connection's own bounded queue when the event is read. The queue
//!   holds at most `max_queued_events` entries; past that the oldest are
//!   dropped and counted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::conn::Connection;
use crate::error::CloseReason;

/// Something that happened on a [`Net`](crate::Net).
#[derive(Debug, Clone)]
pub enum NetEvent {
    /// A connection finished its handshake.
    Connected(Connection),
    /// A line arrived.
    Line(Connection, String),
    /// A connection ended; every line it received was delivered before this.
    Disconnected {
        /// The connection.
        conn: Connection,
        /// Why it ended.
        reason: CloseReason,
    },
}

enum Item {
    Connected(Connection),
    Ready(Connection),
    Disconnected(Connection, CloseReason),
}

pub(crate) struct Hub {
    enabled: AtomicBool,
    queue: Mutex<VecDeque<Item>>,
    max: usize,
    dropped: AtomicU64,
    notify: Notify,
    activity: AtomicU64,
    activity_notify: Notify,
    closed: AtomicBool,
}

impl Hub {
    pub(crate) fn new(max: usize) -> Self {
        Hub {
            enabled: AtomicBool::new(false),
            queue: Mutex::new(VecDeque::new()),
            max: max.max(1),
            dropped: AtomicU64::new(0),
            notify: Notify::new(),
            activity: AtomicU64::new(0),
            activity_notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches the event queue on; true the first time.
    pub(crate) fn enable(&self) -> bool {
        !self.enabled.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn bump(&self) {
        self.activity.fetch_add(1, Ordering::AcqRel);
        self.activity_notify.notify_waiters();
    }

    fn push(&self, item: Item) {
        if self.enabled.load(Ordering::Acquire) {
            let mut q = self.queue();
            if q.len() >= self.max {
                if let Some(Item::Ready(c)) = q.pop_front() {
                    c.0.scheduled.store(false, Ordering::Release);
                }
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(item);
            drop(q);
            self.notify.notify_one();
        }
        self.bump();
    }

    pub(crate) fn connected(&self, c: Connection) {
        self.push(Item::Connected(c));
    }

    pub(crate) fn lines_ready(&self, c: &Connection) {
        if self.enabled.load(Ordering::Acquire) && !c.0.scheduled.swap(true, Ordering::AcqRel) {
            self.push(Item::Ready(c.clone()));
        } else {
            self.bump();
        }
    }

    pub(crate) fn disconnected(&self, c: Connection, reason: CloseReason) {
        self.push(Item::Disconnected(c, reason));
    }

    /// The activity counter.
    pub(crate) fn activity(&self) -> u64 {
        self.activity.load(Ordering::Acquire)
    }

    /// Waits until the activity counter differs from `seen` (or `timeout`).
    pub(crate) async fn wait_activity(&self, seen: u64, timeout: std::time::Duration) {
        let n = self.activity_notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.activity() != seen {
            return;
        }
        let _ = tokio::time::timeout(timeout, n).await;
    }

    /// Stops the event queue: pending waiters get `None`.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
        self.notify.notify_one();
        self.bump();
    }

    /// The next event, or `None` once the Net is shut down and nothing is left.
    pub(crate) async fn next(&self) -> Option<NetEvent> {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(ev) = self.pop() {
                return Some(ev);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            n.await;
        }
    }

    fn pop(&self) -> Option<NetEvent> {
        let mut q = self.queue();
        // Each pass either returns or removes/rotates one item; a rotation only
        // happens when a connection still has lines, which the next Ready pop
        // takes, so this ends.
        let mut budget = q.len() * 2 + 2;
        while let Some(item) = q.pop_front() {
            budget = budget.saturating_sub(1);
            match item {
                Item::Connected(c) => return Some(NetEvent::Connected(c)),
                Item::Ready(c) => {
                    let (line, more) = c.0.pop_line_for_event();
                    if more {
                        q.push_back(Item::Ready(c.clone()));
                    }
                    if let Some(l) = line {
                        return Some(NetEvent::Line(c, l));
                    }
                }
                Item::Disconnected(c, reason) => {
                    if c.has_lines() && budget > 0 {
                        // Its lines come first (a second Ready marker is harmless).
                        c.0.scheduled.store(true, Ordering::Release);
                        q.push_back(Item::Ready(c.clone()));
                        q.push_back(Item::Disconnected(c, reason));
                        continue;
                    }
                    return Some(NetEvent::Disconnected { conn: c, reason });
                }
            }
        }
        None
    }

    /// Drops everything queued (breaks reference cycles at shutdown).
    pub(crate) fn clear(&self) {
        for item in self.queue().drain(..) {
            if let Item::Ready(c) = item {
                c.0.scheduled.store(false, Ordering::Release);
            }
        }
    }
}
