//! The hole-punch coordinator: one state machine per punch, for a TCP
//! simultaneous open timed like libp2p's DCUtR.
//!
//! # Protocol
//! The two sides exchange [`Message`]s through a signalling channel (natkit
//! rendezvous messages); the correlation id ties the messages of one punch
//! together.
//!
//! 1. The **initiator** (the side that wants the connection) sends
//!    `Connect{id, attempt, its addresses}` and starts an RTT timer.
//! 2. The **responder** answers `ConnectReply{id, attempt, its addresses}`.
//! 3. The initiator measures the round trip, sends `Sync` and dials the
//!    responder's addresses `RTT / 2` later.
//! 4. The responder dials the initiator's addresses the moment `Sync`
//!    arrives, so both SYNs leave at about the same time and cross.
//! 5. When every dial of an attempt failed (or [`PUNCH_DIAL_TIMEOUT`]
//!    passed), the initiator starts the next attempt with a fresh `Connect`
//!    and a fresh RTT measurement, up to [`MAX_PUNCH_ATTEMPTS`]. The whole
//!    punch ends at [`PUNCH_TIMEOUT`].
//!
//! A side that gives up sends `Cancel`, so the other stops too. When both
//! sides initiate at once (each sent a `Connect`), the punch with the larger
//! correlation id wins: the other initiator reports
//! [`PunchFailure::Superseded`] (when [`Punch::handle_message`] is given the
//! winner's `Connect`), and its driver answers that `Connect` with a
//! responder ([`Punch::respond`]).
//!
//! # Driving it (sans-I/O)
//! Inputs: [`Punch::handle_message`], [`Punch::handle_dial_result`],
//! [`Punch::handle_timeout`] (at [`Punch::poll_timeout`]). Outputs, in order,
//! from [`Punch::poll_output`]: [`Output::Send`] a message to the peer,
//! [`Output::Dial`] addresses now (from the listening port, with port reuse;
//! the Noise role comes from [`crate::plan::noise_initiator`]), and finally
//! [`Output::Succeeded`] or [`Output::Failed`].
//!
//! Addresses from the peer are cleaned before they are dialed: duplicates,
//! loopback, unspecified, multicast and broadcast addresses are dropped, and
//! at most [`PunchConfig::max_dials`] ([`MAX_DIALS_PER_ATTEMPT`]) are kept, so
//! one punch request yields at most `MAX_PUNCH_ATTEMPTS * MAX_DIALS_PER_ATTEMPT`
//! SYNs; [`crate::limits`] bounds them across requests.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod types;
pub mod wire;

pub use types::{DialResult, Output, PunchConfig, PunchError, PunchFailure, PunchRole};
pub use wire::{CancelReason, Message, MessageType, Signal};

/// Attempts per punch (DCUtR: 3; 97.6% of the successes measured in the
/// wild came on the first).
pub const MAX_PUNCH_ATTEMPTS: u8 = 3;

/// How long the initiator waits for the peer's reply to its `Connect`. The
/// messages travel through rendezvous nodes (a few UDP hops with
/// retransmits).
pub const PUNCH_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the dials of one attempt may take. A SYN that reaches the peer's
/// NAT before the peer's own SYN left is dropped; the kernel retransmits after
/// 1 s, so 3 s covers one retransmit and the handshake.
pub const PUNCH_DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Overall limit of one punch, all attempts together: two full attempts
/// (reply, half an RTT, dials) fit; the third gets what is left.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Most addresses dialed in one attempt. The peer's observed address and a
/// few predicted ports; more would make a punch request a SYN flood.
pub const MAX_DIALS_PER_ATTEMPT: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Initiator: `Connect` sent at `sent_at`.
    AwaitReply {
        sent_at: Instant,
    },
    /// Initiator: `Sync` sent; dial at `dial_at`.
    SyncWait {
        dial_at: Instant,
    },
    /// Responder: reply sent; waiting for `Sync` (or a newer `Connect`).
    AwaitSync {
        until: Instant,
    },
    /// Responder: an attempt failed; waiting for the next `Connect`.
    AwaitConnect {
        until: Instant,
    },
    /// Both: dials out; `pending` have not failed yet.
    Dialing {
        until: Instant,
        pending: Vec<SocketAddr>,
    },
    Done,
}

/// One hole punch, either role. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Punch {
    role: PunchRole,
    id: u64,
    attempt: u8,
    config: PunchConfig,
    our_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    state: State,
    deadline: Instant,
    rtt: Option<Duration>,
    replied: bool,
    outputs: VecDeque<Output>,
}

impl Punch {
    /// Starts a punch as initiator: queues the first `Connect` carrying
    /// `our_addrs` (observed and predicted public TCP addresses). `id` must be
    /// random (the driver draws it), so that punches are told apart.
    pub fn initiate(id: u64, our_addrs: &[SocketAddr], config: PunchConfig, now: Instant) -> Punch {
        let mut p = Punch::new(PunchRole::Initiator, id, our_addrs, config, now);
        p.send_connect(now);
        p
    }

    /// Answers a peer's `Connect` as responder: queues the `ConnectReply`
    /// carrying `our_addrs`.
    pub fn respond(
        connect: &Message,
        our_addrs: &[SocketAddr],
        config: PunchConfig,
        now: Instant,
    ) -> Result<Punch, PunchError> {
        let Message::Connect { id, attempt, addrs } = connect else {
            return Err(PunchError::Unexpected {
                kind: connect.kind(),
                role: PunchRole::Responder,
            });
        };
        let mut p = Punch::new(PunchRole::Responder, *id, our_addrs, config, now);
        p.check_attempt_limit(*attempt)?;
        p.answer_connect(*attempt, addrs, now);
        Ok(p)
    }

    fn new(
        role: PunchRole,
        id: u64,
        our_addrs: &[SocketAddr],
        config: PunchConfig,
        now: Instant,
    ) -> Punch {
        let deadline = now + config.timeout;
        Punch {
            role,
            id,
            attempt: 1,
            our_addrs: clean_addrs(our_addrs, wire::MAX_PUNCH_ADDRS),
            config,
            peer_addrs: Vec::new(),
            state: State::Done,
            deadline,
            rtt: None,
            replied: false,
            outputs: VecDeque::new(),
        }
    }

    /// The correlation id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Our role.
    pub fn role(&self) -> PunchRole {
        self.role
    }

    /// The current attempt (from 1).
    pub fn attempt(&self) -> u8 {
        self.attempt
    }

    /// The last measured RTT (initiator, after a reply).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Whether the punch is over (the last output is `Succeeded` or `Failed`).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Replaces our addresses for the following messages (fresher observed
    /// or predicted addresses before a retry).
    pub fn set_our_addrs(&mut self, our_addrs: &[SocketAddr]) {
        self.our_addrs = clean_addrs(our_addrs, wire::MAX_PUNCH_ADDRS);
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Punch::handle_timeout) is due; `None` when
    /// the punch is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = match &self.state {
            State::Done => return None,
            State::AwaitReply { sent_at } => *sent_at + self.config.reply_timeout,
            State::SyncWait { dial_at } => *dial_at,
            State::AwaitSync { until } | State::AwaitConnect { until } => *until,
            State::Dialing { until, .. } => *until,
        };
        Some(timer.min(self.deadline))
    }

    /// Stops the punch here (the connection was made another way, or the
    /// application gave up): queues `Cancel` and [`Output::Failed`].
    pub fn cancel(&mut self, reason: CancelReason) {
        if !self.is_done() {
            self.fail(PunchFailure::Cancelled(reason), Some(reason));
        }
    }

    /// Feeds a message from the peer. An `Err` means it was ignored.
    pub fn handle_message(&mut self, msg: &Message, now: Instant) -> Result<(), PunchError> {
        if self.is_done() {
            return Err(PunchError::Finished);
        }
        if msg.id() != self.id {
            return self.foreign_message(msg);
        }
        if let Message::Cancel { reason, .. } = msg {
            self.fail(PunchFailure::PeerCancelled(*reason), None);
            return Ok(());
        }
        match self.role {
            PunchRole::Initiator => self.initiator_message(msg, now),
            PunchRole::Responder => self.responder_message(msg, now),
        }
    }

    /// Feeds the result of dialing `addr`. A connection counts whenever it
    /// comes, even from an earlier attempt's dial.
    pub fn handle_dial_result(&mut self, addr: SocketAddr, result: DialResult, now: Instant) {
        if self.is_done() {
            return;
        }
        match result {
            DialResult::Connected => self.succeed(addr),
            DialResult::Failed => self.dial_failed(addr, now),
        }
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        if now >= self.deadline {
            self.fail(PunchFailure::Timeout, Some(CancelReason::Timeout));
            return;
        }
        match self.state.clone() {
            State::AwaitReply { sent_at } if now >= sent_at + self.config.reply_timeout => {
                self.attempt_failed(now);
            }
            State::SyncWait { dial_at } if now >= dial_at => self.start_dialing(now),
            State::AwaitSync { until } | State::AwaitConnect { until } if now >= until => {
                self.fail(PunchFailure::NoReply, Some(CancelReason::Timeout));
            }
            State::Dialing { until, .. } if now >= until => self.attempt_failed(now),
            _ => {}
        }
    }

    /// A message with another correlation id. For an initiator, a `Connect`
    /// means both sides initiated: the larger id goes on ([`yields_to`]).
    fn foreign_message(&mut self, msg: &Message) -> Result<(), PunchError> {
        let theirs = msg.id();
        let competing = self.role == PunchRole::Initiator && msg.kind() == MessageType::Connect;
        if !competing {
            return Err(PunchError::WrongId {
                expected: self.id,
                got: theirs,
            });
        }
        if !yields_to(self.id, theirs) {
            return Err(PunchError::Glare {
                ours: self.id,
                theirs,
            });
        }
        // No Cancel: the peer's punch goes on, answered by a responder.
        self.fail(PunchFailure::Superseded { by: theirs }, None);
        Ok(())
    }

    fn initiator_message(&mut self, msg: &Message, now: Instant) -> Result<(), PunchError> {
        match msg {
            Message::ConnectReply { attempt, addrs, .. } => {
                self.check_current(*attempt)?;
                let State::AwaitReply { sent_at } = self.state else {
                    // A duplicate reply: the RTT is already measured.
                    return Ok(());
                };
                self.on_reply(sent_at, addrs, now);
                Ok(())
            }
            other => Err(PunchError::Unexpected {
                kind: other.kind(),
                role: self.role,
            }),
        }
    }

    fn on_reply(&mut self, sent_at: Instant, addrs: &[SocketAddr], now: Instant) {
        let rtt = now.saturating_duration_since(sent_at);
        self.rtt = Some(rtt);
        self.replied = true;
        self.peer_addrs = clean_addrs(addrs, self.config.max_dials);
        self.outputs.push_back(Output::Send(Message::Sync {
            id: self.id,
            attempt: self.attempt,
        }));
        let dial_at = now + rtt / 2;
        self.state = State::SyncWait { dial_at };
        if dial_at <= now {
            self.start_dialing(now);
        }
    }

    fn responder_message(&mut self, msg: &Message, now: Instant) -> Result<(), PunchError> {
        match msg {
            Message::Connect { attempt, addrs, .. } => self.responder_connect(*attempt, addrs, now),
            Message::Sync { attempt, .. } => {
                self.check_current(*attempt)?;
                if matches!(self.state, State::AwaitSync { .. }) {
                    self.start_dialing(now);
                }
                Ok(())
            }
            other => Err(PunchError::Unexpected {
                kind: other.kind(),
                role: self.role,
            }),
        }
    }

    fn responder_connect(
        &mut self,
        attempt: u8,
        addrs: &[SocketAddr],
        now: Instant,
    ) -> Result<(), PunchError> {
        self.check_attempt_limit(attempt)?;
        if attempt < self.attempt {
            return Err(PunchError::StaleAttempt {
                current: self.attempt,
                got: attempt,
            });
        }
        let repeat = attempt == self.attempt;
        if repeat && !matches!(self.state, State::AwaitSync { .. }) {
            // A late duplicate of a Connect already acted on.
            return Ok(());
        }
        self.answer_connect(attempt, addrs, now);
        Ok(())
    }

    fn answer_connect(&mut self, attempt: u8, addrs: &[SocketAddr], now: Instant) {
        self.attempt = attempt;
        self.peer_addrs = clean_addrs(addrs, self.config.max_dials);
        self.outputs.push_back(Output::Send(Message::ConnectReply {
            id: self.id,
            attempt,
            addrs: self.our_addrs.clone(),
        }));
        self.state = State::AwaitSync {
            until: now + self.responder_wait(),
        };
    }

    /// How long a responder waits for the initiator's next message: the
    /// initiator may itself be waiting for a reply and then dialing.
    fn responder_wait(&self) -> Duration {
        self.config.reply_timeout + self.config.dial_timeout
    }

    fn check_current(&self, attempt: u8) -> Result<(), PunchError> {
        if attempt == self.attempt {
            Ok(())
        } else {
            Err(PunchError::StaleAttempt {
                current: self.attempt,
                got: attempt,
            })
        }
    }

    fn check_attempt_limit(&self, attempt: u8) -> Result<(), PunchError> {
        if attempt == 0 || attempt > self.config.max_attempts {
            return Err(PunchError::AttemptOutOfRange {
                got: attempt,
                max: self.config.max_attempts,
            });
        }
        Ok(())
    }

    fn send_connect(&mut self, now: Instant) {
        self.outputs.push_back(Output::Send(Message::Connect {
            id: self.id,
            attempt: self.attempt,
            addrs: self.our_addrs.clone(),
        }));
        self.state = State::AwaitReply { sent_at: now };
    }

    fn start_dialing(&mut self, now: Instant) {
        let pending = self.peer_addrs.clone();
        if pending.is_empty() && self.our_addrs.is_empty() {
            // Nobody has an address the other could dial: no attempt can work.
            self.fail(
                PunchFailure::NoAddresses,
                Some(CancelReason::AttemptsExhausted),
            );
            return;
        }
        if !pending.is_empty() {
            self.outputs.push_back(Output::Dial {
                attempt: self.attempt,
                addrs: pending.clone(),
            });
        }
        // With no address to dial we still wait: the peer's dial may reach us.
        self.state = State::Dialing {
            until: now + self.config.dial_timeout,
            pending,
        };
    }

    fn dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        let State::Dialing { pending, .. } = &mut self.state else {
            return;
        };
        let before = pending.len();
        pending.retain(|a| *a != addr);
        if before > 0 && pending.is_empty() {
            self.attempt_failed(now);
        }
    }

    /// The current attempt is over without a connection.
    fn attempt_failed(&mut self, now: Instant) {
        let more = self.attempt < self.config.max_attempts;
        match (self.role, more) {
            (PunchRole::Initiator, true) => {
                self.attempt += 1;
                self.send_connect(now);
            }
            (PunchRole::Responder, true) => {
                self.state = State::AwaitConnect {
                    until: now + self.responder_wait(),
                };
            }
            (_, false) => {
                let failure = if self.replied || self.role == PunchRole::Responder {
                    PunchFailure::AttemptsExhausted(self.attempt)
                } else {
                    PunchFailure::NoReply
                };
                self.fail(failure, Some(CancelReason::AttemptsExhausted));
            }
        }
    }

    fn succeed(&mut self, addr: SocketAddr) {
        self.outputs.push_back(Output::Succeeded {
            attempt: self.attempt,
            addr,
            rtt: self.rtt,
        });
        self.state = State::Done;
    }

    fn fail(&mut self, failure: PunchFailure, tell_peer: Option<CancelReason>) {
        if let Some(reason) = tell_peer {
            self.outputs.push_back(Output::Send(Message::Cancel {
                id: self.id,
                attempt: self.attempt,
                reason,
            }));
        }
        self.outputs.push_back(Output::Failed(failure));
        self.state = State::Done;
    }
}

/// Whether an initiator gives up its punch `ours` for the peer's competing
/// punch `theirs` (both sides sent `Connect`): the larger id wins. Equal ids
/// (a 2^-64 chance) make neither yield; both time out.
pub fn yields_to(ours: u64, theirs: u64) -> bool {
    theirs > ours
}

/// Addresses worth dialing, deduplicated, at most `max`.
fn clean_addrs(addrs: &[SocketAddr], max: usize) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if out.len() >= max {
            break;
        }
        if dialable(a) && !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

fn dialable(a: &SocketAddr) -> bool {
    let ip = a.ip();
    let bad = ip.is_loopback() || ip.is_unspecified() || ip.is_multicast();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    a.port() != 0 && !bad && !broadcast
}

#[cfg(test)]
mod tests;
