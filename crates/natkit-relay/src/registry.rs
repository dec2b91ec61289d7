//! A relay's state, without I/O: reservations, circuits, their tokens and every limit of
//! [`RelayLimits`]. The server (`server.rs`) feeds it what happens and does what it says.
//!
//! ```
//! use std::time::Instant;
//! use natkit_identity::Keypair;
//! use natkit_relay::registry::{End, Registry};
//! use natkit_relay::wire::{Refusal, Token};
//! use natkit_relay::RelayLimits;
//!
//! let (alice, bob) = (Keypair::from_seed([1; 32]).node_id(), Keypair::from_seed([2; 32]).node_id());
//! let now = Instant::now();
//! let mut reg = Registry::new(RelayLimits::default());
//! // Nobody reaches alice until she reserves.
//! let tokens = (Token::random(), Token::random());
//! let ip = "192.0.2.2".parse().unwrap();
//! assert_eq!(reg.open(bob, 2, ip, alice, now, tokens).unwrap_err(), Refusal::NotReserved { node: alice });
//! reg.reserve(alice, 1, "192.0.2.1".parse().unwrap(), now).unwrap();
//! let c = reg.open(bob, 2, ip, alice, now, (Token::random(), Token::random())).unwrap();
//! assert_eq!(c.target_session, 1);
//! assert_eq!(reg.join(&c.dialer_token, now).unwrap().end, End::Dialer);
//! assert!(reg.join(&c.target_token, now).unwrap().both);
//! assert!(reg.join(&c.target_token, now).is_none(), "a token works once");
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use natkit_identity::NodeId;

use crate::limits::RelayLimits;
use crate::wire::{CircuitId, Refusal, Token};

/// A control connection's number on the relay.
pub type SessionId = u64;

/// One end of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The node that asked for the circuit.
    Dialer,
    /// The reserved node.
    Target,
}

#[derive(Debug, Clone)]
struct Reservation {
    session: SessionId,
    ip: IpAddr,
    expires: Instant,
}

/// A circuit as the registry knows it.
#[derive(Debug, Clone)]
pub struct Circuit {
    /// Its number.
    pub id: CircuitId,
    /// The node that asked for it.
    pub dialer: NodeId,
    /// The reserved node.
    pub target: NodeId,
    /// The dialer's control connection.
    pub dialer_session: SessionId,
    /// The dialer's IP address.
    pub dialer_ip: IpAddr,
    /// The target's control connection.
    pub target_session: SessionId,
    /// When it was opened.
    pub opened: Instant,
    /// Which ends have joined.
    joined: [bool; 2],
}

impl Circuit {
    /// Whether both ends joined.
    pub fn spliced(&self) -> bool {
        self.joined == [true, true]
    }
}

/// A circuit just opened: tell the target (`target_session`) with `target_token`, answer
/// the dialer with `dialer_token`.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The circuit.
    pub id: CircuitId,
    /// The target's control connection.
    pub target_session: SessionId,
    /// The dialer's token.
    pub dialer_token: Token,
    /// The target's token.
    pub target_token: Token,
}

/// A circuit stream that presented a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The circuit.
    pub id: CircuitId,
    /// Which end it is.
    pub end: End,
    /// Whether the other end is there already: splice now.
    pub both: bool,
}

/// The relay's state. See the [module docs](self).
#[derive(Debug)]
pub struct Registry {
    limits: RelayLimits,
    reservations: HashMap<NodeId, Reservation>,
    circuits: HashMap<CircuitId, Circuit>,
    tokens: HashMap<Token, (CircuitId, End)>,
    next_id: CircuitId,
}

impl Registry {
    /// An empty registry with these limits.
    pub fn new(limits: RelayLimits) -> Registry {
        Registry {
            limits,
            reservations: HashMap::new(),
            circuits: HashMap::new(),
            tokens: HashMap::new(),
            next_id: 1,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// Reservations held.
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Circuits open (joined or not).
    pub fn circuits(&self) -> usize {
        self.circuits.len()
    }

    /// The circuit `id`.
    pub fn circuit(&self, id: CircuitId) -> Option<&Circuit> {
        self.circuits.get(&id)
    }

    /// Reserves for `node` (on control connection `session`, from `ip`), or renews its
    /// reservation; returns how long it lasts.
    pub fn reserve(
        &mut self,
        node: NodeId,
        session: SessionId,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Duration, Refusal> {
        self.expire(now);
        let ttl = Duration::from_secs(self.limits.reservation_ttl_s);
        let renewing = self.reservations.contains_key(&node);
        if !renewing {
            if self.reservations.len() >= self.limits.max_reservations {
                return Err(Refusal::Reservations {
                    limit: self.limits.max_reservations,
                });
            }
            let from_ip = self.reservations.values().filter(|r| r.ip == ip).count();
            if from_ip >= self.limits.max_reservations_per_ip {
                return Err(Refusal::ReservationsPerIp {
                    limit: self.limits.max_reservations_per_ip,
                });
            }
        }
        self.reservations.insert(
            node,
            Reservation {
                session,
                ip,
                expires: now + ttl,
            },
        );
        Ok(ttl)
    }

    /// Opens a circuit from `from` (on control connection `from_session`, from `from_ip`)
    /// to the reserved node `to`, with the two tokens given (random, from the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &mut self,
        from: NodeId,
        from_session: SessionId,
        from_ip: IpAddr,
        to: NodeId,
        now: Instant,
        tokens: (Token, Token),
    ) -> Result<Opened, Refusal> {
        self.expire(now);
        if from == to {
            return Err(Refusal::SelfCircuit);
        }
        let Some(target_session) = self.reservations.get(&to).map(|r| r.session) else {
            return Err(Refusal::NotReserved { node: to });
        };
        let l = &self.limits;
        if self.circuits.len() >= l.max_circuits {
            return Err(Refusal::Circuits {
                limit: l.max_circuits,
            });
        }
        if self.circuits.values().filter(|c| c.target == to).count()
            >= l.max_circuits_per_reservation
        {
            return Err(Refusal::CircuitsPerReservation {
                limit: l.max_circuits_per_reservation,
            });
        }
        if self.circuits.values().filter(|c| c.dialer == from).count() >= l.max_circuits_per_peer {
            return Err(Refusal::CircuitsPerPeer {
                limit: l.max_circuits_per_peer,
            });
        }
        if self
            .circuits
            .values()
            .filter(|c| c.dialer_ip == from_ip)
            .count()
            >= l.max_circuits_per_ip
        {
            return Err(Refusal::CircuitsPerIp {
                limit: l.max_circuits_per_ip,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.circuits.insert(
            id,
            Circuit {
                id,
                dialer: from,
                target: to,
                dialer_session: from_session,
                dialer_ip: from_ip,
                target_session,
                opened: now,
                joined: [false, false],
            },
        );
        self.tokens.insert(tokens.0, (id, End::Dialer));
        self.tokens.insert(tokens.1, (id, End::Target));
        Ok(Opened {
            id,
            target_session,
            dialer_token: tokens.0,
            target_token: tokens.1,
        })
    }

    /// A circuit stream presented `token`: which circuit and end it joins (each token works
    /// once, and only within the join timeout).
    pub fn join(&mut self, token: &Token, now: Instant) -> Option<Joined> {
        let (id, end) = self.tokens.remove(token)?;
        let join_by = Duration::from_secs(self.limits.join_timeout_s);
        let c = self.circuits.get_mut(&id)?;
        if now.saturating_duration_since(c.opened) > join_by {
            return None;
        }
        c.joined[end as usize] = true;
        Some(Joined {
            id,
            end,
            both: c.spliced(),
        })
    }

    /// Forgets the circuit (ended, or cut); returns it.
    pub fn end(&mut self, id: CircuitId) -> Option<Circuit> {
        self.tokens.retain(|_, (c, _)| *c != id);
        self.circuits.remove(&id)
    }

    /// A control connection closed: its reservations end, and the circuits not yet joined
    /// that it is an end of are returned, to be cut. Joined circuits run on: their streams
    /// do not need the control connection.
    pub fn session_closed(&mut self, session: SessionId) -> Vec<Circuit> {
        self.reservations.retain(|_, r| r.session != session);
        let cut: Vec<CircuitId> = self
            .circuits
            .values()
            .filter(|c| {
                !c.spliced() && (c.dialer_session == session || c.target_session == session)
            })
            .map(|c| c.id)
            .collect();
        cut.into_iter().filter_map(|id| self.end(id)).collect()
    }

    /// Circuits whose ends did not both join within the join timeout, at `now`: forgotten,
    /// and returned to be cut.
    pub fn unjoined(&mut self, now: Instant) -> Vec<Circuit> {
        let join_by = Duration::from_secs(self.limits.join_timeout_s);
        let late: Vec<CircuitId> = self
            .circuits
            .values()
            .filter(|c| !c.spliced() && now.saturating_duration_since(c.opened) > join_by)
            .map(|c| c.id)
            .collect();
        late.into_iter().filter_map(|id| self.end(id)).collect()
    }

    fn expire(&mut self, now: Instant) {
        self.reservations.retain(|_, r| r.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_identity::Keypair;

    fn id(n: u8) -> NodeId {
        Keypair::from_seed([n; 32]).node_id()
    }

    fn tokens() -> (Token, Token) {
        (Token::random(), Token::random())
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn reservation_limits_name_their_values() {
        let now = Instant::now();
        let mut reg = Registry::new(RelayLimits {
            max_reservations: 3,
            max_reservations_per_ip: 2,
            ..RelayLimits::default()
        });
        reg.reserve(id(1), 1, ip(1), now).unwrap();
        reg.reserve(id(2), 2, ip(1), now).unwrap();
        assert_eq!(
            reg.reserve(id(3), 3, ip(1), now),
            Err(Refusal::ReservationsPerIp { limit: 2 })
        );
        // Renewing is not a new reservation.
        reg.reserve(id(2), 2, ip(1), now).unwrap();
        reg.reserve(id(3), 3, ip(2), now).unwrap();
        assert_eq!(
            reg.reserve(id(4), 4, ip(3), now),
            Err(Refusal::Reservations { limit: 3 })
        );
        // A reservation expires, and makes room.
        let later = now + Duration::from_secs(3601);
        reg.reserve(id(4), 4, ip(3), later).unwrap();
        assert_eq!(reg.reservations(), 1);
    }

    #[test]
    fn circuit_limits_name_their_values() {
        let now = Instant::now();
        let mut reg = Registry::new(RelayLimits {
            max_circuits: 4,
            max_circuits_per_reservation: 3,
            max_circuits_per_peer: 2,
            ..RelayLimits::default()
        });
        reg.reserve(id(1), 1, ip(1), now).unwrap();
        reg.reserve(id(2), 2, ip(2), now).unwrap();
        assert_eq!(
            reg.open(id(1), 1, ip(1), id(1), now, tokens()).unwrap_err(),
            Refusal::SelfCircuit
        );
        reg.open(id(10), 10, ip(10), id(1), now, tokens()).unwrap();
        reg.open(id(10), 10, ip(10), id(1), now, tokens()).unwrap();
        assert_eq!(
            reg.open(id(10), 10, ip(10), id(1), now, tokens())
                .unwrap_err(),
            Refusal::CircuitsPerPeer { limit: 2 }
        );
        reg.open(id(11), 11, ip(11), id(1), now, tokens()).unwrap();
        assert_eq!(
            reg.open(id(12), 12, ip(12), id(1), now, tokens())
                .unwrap_err(),
            Refusal::CircuitsPerReservation { limit: 3 }
        );
        reg.open(id(12), 12, ip(12), id(2), now, tokens()).unwrap();
        assert_eq!(
            reg.open(id(13), 13, ip(13), id(2), now, tokens())
                .unwrap_err(),
            Refusal::Circuits { limit: 4 }
        );
    }

    #[test]
    fn circuits_from_one_ip_are_limited_whatever_the_keys() {
        let now = Instant::now();
        let mut reg = Registry::new(RelayLimits {
            max_circuits_per_ip: 3,
            ..RelayLimits::default()
        });
        reg.reserve(id(1), 1, ip(1), now).unwrap();
        for n in 20..23 {
            reg.open(id(n), n as u64, ip(9), id(1), now, tokens())
                .unwrap();
        }
        assert_eq!(
            reg.open(id(23), 23, ip(9), id(1), now, tokens())
                .unwrap_err(),
            Refusal::CircuitsPerIp { limit: 3 }
        );
        reg.open(id(24), 24, ip(10), id(1), now, tokens()).unwrap();
    }

    #[test]
    fn tokens_join_once_and_in_time() {
        let now = Instant::now();
        let mut reg = Registry::new(RelayLimits::default());
        reg.reserve(id(1), 1, ip(1), now).unwrap();
        let c = reg.open(id(2), 2, ip(2), id(1), now, tokens()).unwrap();
        let j = reg.join(&c.target_token, now).unwrap();
        assert_eq!((j.end, j.both), (End::Target, false));
        assert!(reg.join(&Token::random(), now).is_none());
        // The dialer comes too late: the circuit is cut.
        let late = now + Duration::from_secs(11);
        assert!(reg.join(&c.dialer_token, late).is_none());
        assert_eq!(
            reg.unjoined(late).iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![c.id]
        );
        assert_eq!(reg.circuits(), 0);
    }

    #[test]
    fn a_closed_control_connection_ends_its_reservation_and_pending_circuits() {
        let now = Instant::now();
        let mut reg = Registry::new(RelayLimits::default());
        reg.reserve(id(1), 1, ip(1), now).unwrap();
        let joined = reg.open(id(2), 2, ip(2), id(1), now, tokens()).unwrap();
        reg.join(&joined.dialer_token, now).unwrap();
        reg.join(&joined.target_token, now).unwrap();
        let pending = reg.open(id(3), 3, ip(3), id(1), now, tokens()).unwrap();
        assert_eq!(
            reg.session_closed(1)
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>(),
            vec![pending.id]
        );
        assert!(reg.circuit(joined.id).is_some(), "a joined circuit runs on");
        assert_eq!(
            reg.open(id(3), 3, ip(3), id(1), now, tokens()).unwrap_err(),
            Refusal::NotReserved { node: id(1) }
        );
    }
}
