//! A relay's limits ([`RelayLimits`]), the part of them each circuit carries to its two
//! ends ([`CircuitLimits`]), and the pacing of a circuit's bytes ([`Pacer`]).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Every limit of a relay, each with its unit. The defaults are for a relay that carries
/// real traffic for a few dozen nodes (libp2p's relay v2 defaults, 2 min and 128 KiB per
/// circuit, only carry a hole-punch's coordination; natkit's relay is the path of last
/// resort and has to carry the connection itself).
///
/// ```
/// use natkit_relay::RelayLimits;
///
/// let limits = RelayLimits { max_circuits: 8, ..RelayLimits::default() };
/// assert!(limits.validate().is_ok());
/// assert!(RelayLimits { max_reservations: 0, ..limits }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    /// Most reservations held at once (default 128).
    pub max_reservations: usize,
    /// Most reservations from one IP address (default 8: a few nodes behind one NAT).
    pub max_reservations_per_ip: usize,
    /// How long a reservation lasts unless renewed, seconds (default 3600; clients renew at
    /// half-time).
    pub reservation_ttl_s: u64,
    /// Most circuits at once, joined or waiting to be (default 64).
    pub max_circuits: usize,
    /// Most circuits to one reserved node (default 8).
    pub max_circuits_per_reservation: usize,
    /// Most circuits asked for by one node (default 4).
    pub max_circuits_per_peer: usize,
    /// Most circuits asked for from one IP address, whatever the node ids (default 8: keys
    /// cost nothing, addresses do).
    pub max_circuits_per_ip: usize,
    /// Longest a circuit runs, seconds (default 3600).
    pub circuit_duration_s: u64,
    /// Most bytes a circuit carries, both directions together (default 1 GiB).
    pub circuit_data_bytes: u64,
    /// Most bytes per second a circuit carries in each direction (default 4 MiB/s).
    pub circuit_bytes_per_sec: u64,
    /// How long the relay waits for both ends of a circuit to join, seconds (default 10).
    pub join_timeout_s: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: 128,
            max_reservations_per_ip: 8,
            reservation_ttl_s: 3600,
            max_circuits: 64,
            max_circuits_per_reservation: 8,
            max_circuits_per_peer: 4,
            max_circuits_per_ip: 8,
            circuit_duration_s: 3600,
            circuit_data_bytes: 1 << 30,
            circuit_bytes_per_sec: 4 << 20,
            join_timeout_s: 10,
        }
    }
}

/// A limit set to a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("relay limit {name} must be at least 1")]
pub struct LimitError {
    /// The limit's name.
    pub name: &'static str,
}

impl RelayLimits {
    /// Checks that every limit is at least 1.
    pub fn validate(&self) -> Result<(), LimitError> {
        let all: [(&'static str, u64); 11] = [
            ("max_reservations", self.max_reservations as u64),
            (
                "max_reservations_per_ip",
                self.max_reservations_per_ip as u64,
            ),
            ("reservation_ttl_s", self.reservation_ttl_s),
            ("max_circuits", self.max_circuits as u64),
            (
                "max_circuits_per_reservation",
                self.max_circuits_per_reservation as u64,
            ),
            ("max_circuits_per_peer", self.max_circuits_per_peer as u64),
            ("max_circuits_per_ip", self.max_circuits_per_ip as u64),
            ("circuit_duration_s", self.circuit_duration_s),
            ("circuit_data_bytes", self.circuit_data_bytes),
            ("circuit_bytes_per_sec", self.circuit_bytes_per_sec),
            ("join_timeout_s", self.join_timeout_s),
        ];
        match all.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(LimitError { name }),
            None => Ok(()),
        }
    }

    /// What each circuit's ends are told.
    pub fn circuit(&self) -> CircuitLimits {
        CircuitLimits {
            duration_s: self.circuit_duration_s,
            data_bytes: self.circuit_data_bytes,
            bytes_per_sec: self.circuit_bytes_per_sec,
            join_timeout_s: self.join_timeout_s,
        }
    }
}

/// The limits of one circuit, reported to both its ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitLimits {
    /// Longest it runs, seconds.
    pub duration_s: u64,
    /// Most bytes it carries, both directions together.
    pub data_bytes: u64,
    /// Most bytes per second in each direction.
    pub bytes_per_sec: u64,
    /// How long the relay waits for both ends to join, seconds.
    pub join_timeout_s: u64,
}

/// A token bucket for one direction of a circuit: `rate` bytes per second, bursts of
/// [`Pacer::burst`]. Deterministic: the caller passes the time.
///
/// ```
/// use std::time::{Duration, Instant};
/// use natkit_relay::limits::Pacer;
///
/// let t0 = Instant::now();
/// let mut p = Pacer::new(1000, t0);
/// assert_eq!(p.take(p.burst(), t0), Duration::ZERO); // the burst is free
/// assert_eq!(p.take(500, t0), Duration::from_millis(500)); // then 1000 bytes/s
/// ```
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    burst: u64,
    /// Bytes that may pass now (negative: owed).
    credit: i64,
    at: Instant,
}

impl Pacer {
    /// A full bucket: bursts of a tenth of a second's bytes, at least 64 KiB.
    pub fn new(rate: u64, now: Instant) -> Pacer {
        let rate = rate.max(1);
        let burst = (rate / 10).max(64 * 1024);
        Pacer {
            rate,
            burst,
            credit: burst as i64,
            at: now,
        }
    }

    /// The largest burst.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Accounts `n` bytes passed at `now`; returns how long to wait before passing more.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.at);
        self.at = now;
        let earned = (dt.as_secs_f64() * self.rate as f64) as i64;
        self.credit = (self.credit.saturating_add(earned)).min(self.burst as i64);
        self.credit = self.credit.saturating_sub(n.min(i64::MAX as u64) as i64);
        if self.credit >= 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.credit) as f64 / self.rate as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_holds_the_rate_over_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1 << 20, t0);
        let mut now = t0;
        let mut sent = 0u64;
        // Send 16 KiB chunks as fast as the pacer allows for 10 simulated seconds.
        while now < t0 + Duration::from_secs(10) {
            let wait = p.take(16 * 1024, now);
            sent += 16 * 1024;
            now += wait;
        }
        let rate = sent as f64 / (now - t0).as_secs_f64();
        let target = (1u64 << 20) as f64;
        assert!((rate - target).abs() / target < 0.02, "{rate}");
    }

    #[test]
    fn every_zero_limit_is_named() {
        let l = RelayLimits {
            circuit_bytes_per_sec: 0,
            ..RelayLimits::default()
        };
        assert_eq!(
            l.validate(),
            Err(LimitError {
                name: "circuit_bytes_per_sec"
            })
        );
    }
}
