//! A deterministic lease scheduler for one port mapping, and the gateway
//! epoch check that detects a restarted gateway.
//!
//! Nothing here reads a clock: every method takes `now`. The tokio client
//! calls [`LeaseScheduler::poll`] when [`LeaseScheduler::next_deadline`]
//! passes, performs the [`Action`] it returns, and reports the outcome with
//! [`LeaseScheduler::on_granted`] or [`LeaseScheduler::on_failure`].
//!
//! Rules it follows:
//! - Renew at half the granted lifetime (RFC 6886 §3.3, RFC 6887 §11.2.1;
//!   iroh and Tailscale do the same), report [`Action::Expired`] at the full
//!   lifetime if no renewal got through, then create the mapping afresh.
//! - After a failure, retry with exponential backoff ([`RetryPolicy`]), or
//!   later if the gateway said how long its error holds (PCP error lifetime).
//!   A failed renewal is retried while the old lease is still valid.
//! - Every NAT-PMP and PCP packet carries the gateway's "seconds since start
//!   of epoch". If it is lower than the time elapsed since the last packet
//!   allows, the gateway restarted and lost its mappings: the mapping is
//!   re-created at once ([`EpochTracker`], RFC 6886 §3.6, RFC 6887 §8.5).

use std::time::{Duration, Instant};

/// First delay before retrying a failed request. Short enough that a
/// gateway that dropped one request is retried promptly, long enough not to
/// hammer one that is refusing.
pub const INITIAL_RETRY_BACKOFF: Duration = Duration::from_secs(2);

/// Longest delay between retries: ten minutes, the interval at which iroh
/// and Tailscale re-probe a gateway anyway.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10 * 60);

/// Granted lifetimes and error hold times are capped at one week. Renewing a
/// mapping weekly costs nothing, and the cap keeps `Instant` arithmetic far
/// from overflow whatever a gateway sends (lifetimes are 32-bit seconds).
pub const MAX_LEASE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Slack in the NAT-PMP epoch check (RFC 6886 §3.6): two seconds.
const NATPMP_EPOCH_SLACK_MS: i128 = 2000;

/// Slack in the PCP epoch check (RFC 6887 §8.5): two seconds.
const PCP_EPOCH_SLACK_MS: i128 = 2000;

/// Which rule a gateway's epoch follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpochRule {
    /// RFC 6886 §3.6: the epoch must have advanced by at least 7/8 of the
    /// client's elapsed time, minus 2 s.
    NatPmp,
    /// RFC 6887 §8.5: the epoch may not go back by more than 1 s, and client
    /// and server deltas must agree within 1/16 plus 2 s, either way.
    Pcp,
}

/// What an epoch observation says about the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpochVerdict {
    /// The first epoch seen from this gateway: nothing to compare with.
    First,
    /// The epoch agrees with the time elapsed: the gateway kept its state.
    Consistent,
    /// The epoch went back, or advanced too little (or, for PCP, too much):
    /// the gateway restarted or lost its mappings. Re-create them all.
    Restarted,
}

/// Tracks one gateway's epoch across packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochTracker {
    rule: EpochRule,
    last: Option<(u32, Instant)>,
}

impl EpochTracker {
    /// A tracker that has seen nothing yet.
    pub const fn new(rule: EpochRule) -> Self {
        Self { rule, last: None }
    }

    /// Records the epoch of a packet received at `now` and says whether the
    /// gateway kept its state since the previous packet.
    pub fn observe(&mut self, now: Instant, epoch_secs: u32) -> EpochVerdict {
        let Some((prev, prev_at)) = self.last.replace((epoch_secs, now)) else {
            return EpochVerdict::First;
        };
        // Capped at u64::MAX ms (585 million years), so the i128 sums below
        // cannot overflow.
        let client_ms = i128::from(
            u64::try_from(now.saturating_duration_since(prev_at).as_millis()).unwrap_or(u64::MAX),
        );
        let (cur, prev) = (i128::from(epoch_secs), i128::from(prev));
        let lost = match self.rule {
            EpochRule::NatPmp => {
                // Conservative estimate: previous + 7/8 of elapsed - 2 s.
                let expected_ms = prev * 1000 + client_ms * 7 / 8 - NATPMP_EPOCH_SLACK_MS;
                cur * 1000 < expected_ms
            }
            EpochRule::Pcp => {
                let server_ms = (cur - prev) * 1000;
                cur < prev - 1
                    || client_ms + PCP_EPOCH_SLACK_MS < server_ms - server_ms / 16
                    || server_ms + PCP_EPOCH_SLACK_MS < client_ms - client_ms / 16
            }
        };
        if lost {
            EpochVerdict::Restarted
        } else {
            EpochVerdict::Consistent
        }
    }
}

/// How to back off after failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay; doubling stops here.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: INITIAL_RETRY_BACKOFF,
            max: MAX_RETRY_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// The delay after `failures` consecutive failures (1 = the first):
    /// `initial * 2^(failures - 1)`, at most `max`. No jitter: add it in the
    /// driver if many clients share a gateway.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// When the grant was received.
    pub granted_at: Instant,
    /// The lifetime granted (capped at [`MAX_LEASE_LIFETIME`]).
    pub lifetime: Duration,
}

impl Lease {
    /// When to renew: at half the lifetime.
    pub fn renew_at(&self) -> Instant {
        after(self.granted_at, self.lifetime / 2)
    }

    /// When the gateway drops the mapping unless renewed.
    pub fn expires_at(&self) -> Instant {
        after(self.granted_at, self.lifetime)
    }
}

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Ask the gateway for the mapping (first time, after a failure, after
    /// expiry or after a gateway restart). Ask for the previous external
    /// port, if there was one.
    Create,
    /// Send the same request again to extend the lease (PCP: same nonce).
    Renew,
    /// The lease ran out without a successful renewal: stop advertising the
    /// external address. The next poll returns [`Action::Create`].
    Expired,
}

/// Where the scheduler is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No mapping; create one at `retry_at`.
    Unmapped { retry_at: Instant },
    /// A create request is in flight.
    Creating,
    /// Mapped; renew at `renew_at` (half-life, or a retry after a failed renewal).
    Mapped { lease: Lease, renew_at: Instant },
    /// A renew request is in flight; the old lease holds until it expires.
    Renewing { lease: Lease },
    /// Stopped by the owner; does nothing more.
    Stopped,
}

/// The lease state machine for one mapping.
///
/// ```
/// use std::time::{Duration, Instant};
/// use natkit_portmap::lease::{Action, EpochRule, LeaseScheduler, RetryPolicy};
///
/// let t0 = Instant::now();
/// let mut lease = LeaseScheduler::new(t0, Some(EpochRule::NatPmp), RetryPolicy::default());
/// assert_eq!(lease.poll(t0), Some(Action::Create));
/// lease.on_granted(t0, Duration::from_secs(7200), Some(100));
/// assert_eq!(lease.next_deadline(), Some(t0 + Duration::from_secs(3600)));
/// assert_eq!(lease.poll(t0 + Duration::from_secs(3600)), Some(Action::Renew));
/// ```
#[derive(Debug, Clone)]
pub struct LeaseScheduler {
    state: State,
    policy: RetryPolicy,
    failures: u32,
    epoch: Option<EpochTracker>,
}

impl LeaseScheduler {
    /// A scheduler that wants to create the mapping at `now`. `epoch_rule`
    /// is [`Method::epoch_rule`](crate::gateway::Method::epoch_rule): `None`
    /// for UPnP, which has no epoch.
    pub fn new(now: Instant, epoch_rule: Option<EpochRule>, policy: RetryPolicy) -> Self {
        Self {
            state: State::Unmapped { retry_at: now },
            policy,
            failures: 0,
            epoch: epoch_rule.map(EpochTracker::new),
        }
    }

    /// What to do at `now`, if anything. Call it when
    /// [`LeaseScheduler::next_deadline`] has passed (calling it more often is
    /// harmless).
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        match self.state {
            State::Unmapped { retry_at } if now >= retry_at => {
                self.state = State::Creating;
                Some(Action::Create)
            }
            State::Mapped { lease, .. } | State::Renewing { lease }
                if now >= lease.expires_at() =>
            {
                self.state = State::Unmapped { retry_at: now };
                Some(Action::Expired)
            }
            State::Mapped { lease, renew_at } if now >= renew_at => {
                self.state = State::Renewing { lease };
                Some(Action::Renew)
            }
            _ => None,
        }
    }

    /// When [`LeaseScheduler::poll`] next has something to do, or `None` while
    /// a create request is in flight or after [`LeaseScheduler::stop`] (the
    /// driver's own request timeout then drives it, via
    /// [`LeaseScheduler::on_failure`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Unmapped { retry_at } => Some(retry_at),
            State::Mapped { lease, renew_at } => Some(renew_at.min(lease.expires_at())),
            State::Renewing { lease } => Some(lease.expires_at()),
            State::Creating | State::Stopped => None,
        }
    }

    /// The gateway granted (or renewed) the mapping at `now` for `lifetime`.
    /// Pass the response's epoch if the method has one; the verdict is
    /// returned so that the driver can re-create *other* mappings on the same
    /// gateway after a restart (this one was just granted, so it stands).
    /// A zero lifetime is a refusal and counts as a failure.
    pub fn on_granted(
        &mut self,
        now: Instant,
        lifetime: Duration,
        epoch_secs: Option<u32>,
    ) -> Option<EpochVerdict> {
        let verdict = self.observe_epoch(now, epoch_secs);
        if self.state == State::Stopped {
            return verdict;
        }
        if lifetime.is_zero() {
            self.on_failure(now, None);
            return verdict;
        }
        self.failures = 0;
        let lease = Lease {
            granted_at: now,
            lifetime: lifetime.min(MAX_LEASE_LIFETIME),
        };
        self.state = State::Mapped {
            lease,
            renew_at: lease.renew_at(),
        };
        verdict
    }

    /// A create or renew request failed at `now` (timeout, error result,
    /// unreachable gateway). `retry_after` is how long the gateway said the
    /// error holds (a PCP error response's lifetime), if it said.
    pub fn on_failure(&mut self, now: Instant, retry_after: Option<Duration>) {
        if self.state == State::Stopped {
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self
            .policy
            .delay(self.failures)
            .max(retry_after.unwrap_or(Duration::ZERO))
            .min(MAX_LEASE_LIFETIME);
        let retry_at = after(now, delay);
        self.state = match self.state {
            State::Renewing { lease } | State::Mapped { lease, .. } if now < lease.expires_at() => {
                State::Mapped {
                    lease,
                    renew_at: retry_at.min(lease.expires_at()),
                }
            }
            _ => State::Unmapped { retry_at },
        };
    }

    /// A packet from the gateway (any response, or an unsolicited ANNOUNCE
    /// or NAT-PMP address announcement) carried `epoch_secs` at `now`. If the
    /// gateway restarted, the mapping is gone: the next poll returns
    /// [`Action::Create`]. Returns `None` for methods without an epoch.
    pub fn on_gateway_epoch(&mut self, now: Instant, epoch_secs: u32) -> Option<EpochVerdict> {
        let verdict = self.observe_epoch(now, Some(epoch_secs));
        if verdict == Some(EpochVerdict::Restarted)
            && matches!(self.state, State::Mapped { .. } | State::Renewing { .. })
        {
            self.failures = 0;
            self.state = State::Unmapped { retry_at: now };
        }
        verdict
    }

    /// Stops scheduling. Returns the lease if a mapping may still exist on
    /// the gateway, so that the driver deletes it (lifetime 0) on the way out.
    pub fn stop(&mut self) -> Option<Lease> {
        let lease = self.lease();
        self.state = State::Stopped;
        lease
    }

    /// The current lease, if mapped (including while a renewal is in flight).
    pub fn lease(&self) -> Option<Lease> {
        match self.state {
            State::Mapped { lease, .. } | State::Renewing { lease } => Some(lease),
            _ => None,
        }
    }

    /// Failures since the last grant.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Feeds the epoch tracker, if there is one and an epoch was given.
    fn observe_epoch(&mut self, now: Instant, epoch_secs: Option<u32>) -> Option<EpochVerdict> {
        let tracker = self.epoch.as_mut()?;
        Some(tracker.observe(now, epoch_secs?))
    }
}

/// `t + d`, saturating instead of panicking. Durations here are capped at
/// [`MAX_LEASE_LIFETIME`], so the fallback is not reached in practice.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(MAX_LEASE_LIFETIME))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn sched(t0: Instant, rule: Option<EpochRule>) -> LeaseScheduler {
        LeaseScheduler::new(t0, rule, RetryPolicy::default())
    }

    #[test]
    fn create_renew_at_half_life() {
        let t0 = Instant::now();
        let mut s = sched(t0, Some(EpochRule::NatPmp));
        assert_eq!(s.next_deadline(), Some(t0));
        assert_eq!(s.poll(t0), Some(Action::Create));
        assert_eq!(s.poll(t0), None);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(
            s.on_granted(t0, secs(7200), Some(50)),
            Some(EpochVerdict::First)
        );
        assert_eq!(s.next_deadline(), Some(t0 + secs(3600)));
        assert_eq!(s.poll(t0 + secs(3599)), None);
        assert_eq!(s.poll(t0 + secs(3600)), Some(Action::Renew));
        assert_eq!(s.next_deadline(), Some(t0 + secs(7200)));
        let t1 = t0 + secs(3601);
        assert_eq!(
            s.on_granted(t1, secs(7200), Some(50 + 3601)),
            Some(EpochVerdict::Consistent)
        );
        assert_eq!(s.lease().map(|l| l.expires_at()), Some(t1 + secs(7200)));
        assert_eq!(s.next_deadline(), Some(t1 + secs(3600)));
    }

    #[test]
    fn expiry_without_renewal() {
        let t0 = Instant::now();
        let mut s = sched(t0, None);
        s.poll(t0);
        s.on_granted(t0, secs(100), None);
        assert_eq!(s.poll(t0 + secs(50)), Some(Action::Renew));
        assert_eq!(s.poll(t0 + secs(99)), None);
        assert_eq!(s.poll(t0 + secs(100)), Some(Action::Expired));
        assert_eq!(s.lease(), None);
        assert_eq!(s.poll(t0 + secs(100)), Some(Action::Create));
    }

    #[test]
    fn expiry_wins_over_late_renewal() {
        let t0 = Instant::now();
        let mut s = sched(t0, None);
        s.poll(t0);
        s.on_granted(t0, secs(100), None);
        // The driver slept through both deadlines.
        assert_eq!(s.poll(t0 + secs(500)), Some(Action::Expired));
    }

    #[test]
    fn failed_create_backs_off_exponentially() {
        let t0 = Instant::now();
        let mut s = sched(t0, None);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            assert_eq!(s.poll(now), Some(Action::Create));
            s.on_failure(now, None);
            let next = s.next_deadline().unwrap();
            delays.push((next - now).as_secs());
            assert_eq!(s.poll(next - Duration::from_millis(1)), None);
            now = next;
        }
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]);
        assert_eq!(s.failures(), 12);
        s.poll(now);
        s.on_granted(now, secs(60), None);
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn gateway_error_lifetime_delays_retry() {
        let t0 = Instant::now();
        let mut s = sched(t0, Some(EpochRule::Pcp));
        s.poll(t0);
        s.on_failure(t0, Some(secs(1800)));
        assert_eq!(s.next_deadline(), Some(t0 + secs(1800)));
    }

    #[test]
    fn failed_renewal_retries_within_lease() {
        let t0 = Instant::now();
        let mut s = sched(t0, None);
        s.poll(t0);
        s.on_granted(t0, secs(20), None);
        assert_eq!(s.poll(t0 + secs(10)), Some(Action::Renew));
        s.on_failure(t0 + secs(10), None);
        // Still mapped; retry 2 s later.
        assert!(s.lease().is_some());
        assert_eq!(s.next_deadline(), Some(t0 + secs(12)));
        assert_eq!(s.poll(t0 + secs(12)), Some(Action::Renew));
        s.on_failure(t0 + secs(12), None);
        assert_eq!(s.next_deadline(), Some(t0 + secs(16)));
        assert_eq!(s.poll(t0 + secs(16)), Some(Action::Renew));
        s.on_failure(t0 + secs(16), None);
        // The next retry (8 s) would be past expiry: expiry comes first.
        assert_eq!(s.next_deadline(), Some(t0 + secs(20)));
        assert_eq!(s.poll(t0 + secs(20)), Some(Action::Expired));
        assert_eq!(s.poll(t0 + secs(20)), Some(Action::Create));
    }

    #[test]
    fn zero_lifetime_grant_is_a_failure() {
        let t0 = Instant::now();
        let mut s = sched(t0, None);
        s.poll(t0);
        s.on_granted(t0, Duration::ZERO, None);
        assert_eq!(s.lease(), None);
        assert_eq!(s.failures(), 1);
        assert_eq!(s.next_deadline(), Some(t0 + secs(2)));
    }

    #[test]
    fn huge_lifetime_is_capped() {
        let t0 = Instant::now();
        let mut s = sched(t0, None);
        s.poll(t0);
        s.on_granted(t0, secs(u64::from(u32::MAX)), None);
        assert_eq!(s.lease().unwrap().lifetime, MAX_LEASE_LIFETIME);
        s.on_failure(t0, Some(Duration::MAX));
    }

    #[test]
    fn gateway_restart_recreates_mapping() {
        let t0 = Instant::now();
        let mut s = sched(t0, Some(EpochRule::NatPmp));
        s.poll(t0);
        s.on_granted(t0, secs(7200), Some(1000));
        // 100 s later the gateway says its epoch is 5 s: it rebooted.
        let t1 = t0 + secs(100);
        assert_eq!(s.on_gateway_epoch(t1, 5), Some(EpochVerdict::Restarted));
        assert_eq!(s.lease(), None);
        assert_eq!(s.poll(t1), Some(Action::Create));
    }

    #[test]
    fn stop_returns_lease_to_delete() {
        let t0 = Instant::now();
        let mut s = sched(t0, None);
        assert_eq!(s.stop(), None);
        let mut s = sched(t0, None);
        s.poll(t0);
        s.on_granted(t0, secs(60), None);
        assert!(s.stop().is_some());
        assert_eq!(s.poll(t0 + secs(1000)), None);
        assert_eq!(s.next_deadline(), None);
        s.on_granted(t0, secs(60), None);
        s.on_failure(t0, None);
        assert_eq!(s.lease(), None);
    }

    #[test]
    fn natpmp_epoch_rule() {
        let t0 = Instant::now();
        let mut e = EpochTracker::new(EpochRule::NatPmp);
        assert_eq!(e.observe(t0, 1000), EpochVerdict::First);
        // 80 s elapsed; estimate 1000 + 70 - 2 = 1068.
        assert_eq!(e.observe(t0 + secs(80), 1068), EpochVerdict::Consistent);
        // Next 80 s: estimate 1068 + 70 - 2 = 1136; 1135 is too little.
        assert_eq!(e.observe(t0 + secs(160), 1135), EpochVerdict::Restarted);
        // Going backwards is a restart; a fast server clock is not.
        assert_eq!(e.observe(t0 + secs(161), 3), EpochVerdict::Restarted);
        assert_eq!(e.observe(t0 + secs(162), 500), EpochVerdict::Consistent);
        // Same instant, same epoch.
        assert_eq!(e.observe(t0 + secs(162), 500), EpochVerdict::Consistent);
    }

    #[test]
    fn pcp_epoch_rule() {
        let t0 = Instant::now();
        let mut e = EpochTracker::new(EpochRule::Pcp);
        assert_eq!(e.observe(t0, 1000), EpochVerdict::First);
        // One second back is tolerated (rounding).
        assert_eq!(e.observe(t0, 999), EpochVerdict::Consistent);
        assert_eq!(e.observe(t0, 997), EpochVerdict::Restarted);
        // 160 s elapsed: server delta must be within 160 -/+ (1/16 + 2 s).
        let mut e = EpochTracker::new(EpochRule::Pcp);
        e.observe(t0, 1000);
        assert_eq!(e.observe(t0 + secs(160), 1160), EpochVerdict::Consistent);
        let mut slow = e.clone();
        // client 160 s, server 147 s: 147 + 2 < 160 - 10 = 150 -> lost.
        assert_eq!(slow.observe(t0 + secs(320), 1307), EpochVerdict::Restarted);
        // client 160 s, server 148 s: 150 < 150 is false -> consistent.
        let mut ok = e.clone();
        assert_eq!(ok.observe(t0 + secs(320), 1308), EpochVerdict::Consistent);
        // Server clock far ahead: client 160 s, server 180 s:
        // 160 + 2 < 180 - 11.25 -> lost.
        assert_eq!(e.observe(t0 + secs(320), 1340), EpochVerdict::Restarted);
    }

    #[test]
    fn retry_policy_saturates() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0), INITIAL_RETRY_BACKOFF);
        assert_eq!(p.delay(1), INITIAL_RETRY_BACKOFF);
        assert_eq!(p.delay(u32::MAX), MAX_RETRY_BACKOFF);
        let p = RetryPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(p.delay(40), Duration::MAX);
    }
}
