//! The inputs, outputs and errors of the punch coordinator.

use std::net::SocketAddr;
use std::time::Duration;

#[cfg(doc)]
use super::Punch;
use super::wire::{CancelReason, Message, MessageType};
use super::{
    MAX_DIALS_PER_ATTEMPT, MAX_PUNCH_ATTEMPTS, PUNCH_DIAL_TIMEOUT, PUNCH_REPLY_TIMEOUT,
    PUNCH_TIMEOUT,
};

/// Knobs of a punch; [`Default`] uses the constants of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunchConfig {
    /// Attempts ([`MAX_PUNCH_ATTEMPTS`]).
    pub max_attempts: u8,
    /// Wait for a reply ([`PUNCH_REPLY_TIMEOUT`]).
    pub reply_timeout: Duration,
    /// Dials of one attempt ([`PUNCH_DIAL_TIMEOUT`]).
    pub dial_timeout: Duration,
    /// The whole punch ([`PUNCH_TIMEOUT`]).
    pub timeout: Duration,
    /// Addresses dialed per attempt ([`MAX_DIALS_PER_ATTEMPT`]).
    pub max_dials: usize,
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            max_attempts: MAX_PUNCH_ATTEMPTS,
            reply_timeout: PUNCH_REPLY_TIMEOUT,
            dial_timeout: PUNCH_DIAL_TIMEOUT,
            timeout: PUNCH_TIMEOUT,
            max_dials: MAX_DIALS_PER_ATTEMPT,
        }
    }
}

/// Which side of the punch we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunchRole {
    /// Sends `Connect` and `Sync`, measures the RTT, retries.
    Initiator,
    /// Answers `Connect`, dials on `Sync`.
    Responder,
}

/// How a dial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialResult {
    /// A connection to the peer is up (authenticated). Report it also when
    /// the peer's connection arrived at our listener during the punch.
    Connected,
    /// The dial failed (refused, unreachable, timed out, wrong key).
    Failed,
}

/// Why a punch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PunchFailure {
    /// [`PunchConfig::timeout`] passed.
    #[error("hole punch timed out")]
    Timeout,
    /// The peer stopped answering (no reply to `Connect`, or no `Sync` or
    /// next `Connect` after ours).
    #[error("the peer did not answer the hole punch")]
    NoReply,
    /// Every attempt's dials failed.
    #[error("all {0} hole punch attempts failed")]
    AttemptsExhausted(u8),
    /// Neither side knows a public address of its own for the other to dial
    /// (both on loopback, say, or neither seen by the DHT yet).
    #[error("neither side has a public address to punch to")]
    NoAddresses,
    /// The peer sent `Cancel`.
    #[error("the peer cancelled the hole punch ({0:?})")]
    PeerCancelled(CancelReason),
    /// [`Punch::cancel`] was called.
    #[error("hole punch cancelled here ({0:?})")]
    Cancelled(CancelReason),
    /// Both sides initiated; the peer's punch (with a larger id) goes on.
    #[error("superseded by the peer's own hole punch {by:#018x}")]
    Superseded {
        /// The correlation id of the peer's punch; answer its `Connect`.
        by: u64,
    },
}

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this message to the peer through the signalling channel.
    Send(Message),
    /// Dial these addresses now, all at once, from the listening port.
    Dial {
        /// The attempt (to match the results, if wanted).
        attempt: u8,
        /// Where.
        addrs: Vec<SocketAddr>,
    },
    /// A connection is up. Nothing more will come out.
    Succeeded {
        /// The attempt that made it.
        attempt: u8,
        /// The address the connection is with.
        addr: SocketAddr,
        /// The last measured RTT of the signalling channel (initiator only).
        rtt: Option<Duration>,
    },
    /// The punch is over without a connection. Nothing more will come out.
    Failed(PunchFailure),
}

/// Why a message was ignored (the state is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PunchError {
    /// The message belongs to another punch.
    #[error("message for punch {got:#018x}, this is {expected:#018x}")]
    WrongId {
        /// Our correlation id.
        expected: u64,
        /// The message's.
        got: u64,
    },
    /// The message is for an earlier attempt.
    #[error("message for attempt {got}, now in attempt {current}")]
    StaleAttempt {
        /// Our attempt.
        current: u8,
        /// The message's.
        got: u8,
    },
    /// Attempt number 0, or one beyond [`PunchConfig::max_attempts`].
    #[error("attempt {got} is outside 1..={max}")]
    AttemptOutOfRange {
        /// The message's.
        got: u8,
        /// The limit.
        max: u8,
    },
    /// A message this role does not expect now.
    #[error("unexpected {kind:?} for the {role:?}")]
    Unexpected {
        /// The message type.
        kind: MessageType,
        /// Our role.
        role: PunchRole,
    },
    /// Both sides initiated and ours has the larger id: the peer yields.
    #[error("competing punch {theirs:#018x} ignored: ours ({ours:#018x}) goes on")]
    Glare {
        /// Our id.
        ours: u64,
        /// Theirs.
        theirs: u64,
    },
    /// The punch is over.
    #[error("the punch is over")]
    Finished,
}
