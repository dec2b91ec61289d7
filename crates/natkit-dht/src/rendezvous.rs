//! natkit's rendezvous queries, sans-I/O: how a node behind NAT stays reachable through the DHT.
//!
//! A node that cannot accept unsolicited datagrams (it is behind NAT or a firewall) registers
//! with a few natkit DHT nodes — its *rendezvous nodes* — and keeps the path to them open by
//! refreshing the registration every [`KEEPALIVE_INTERVAL`] from the same UDP socket, which
//! keeps its NAT mapping alive. Anyone holding the node's public key can then have a small,
//! signed message delivered to it: the rendezvous node forwards it over the kept-open path.
//!
//! # Queries (both answered with error 204 by DHTs that are not natkit)
//! - `natkit.announce` — `a`: `id`, `k` (the 32-byte ed25519 key being registered), `seq`,
//!   `token` (from a `get_peers` or an earlier `natkit.announce` answer, so the query's
//!   source IP is proven), `sig` = ed25519 over [`ANNOUNCE_DOMAIN`] ‖ the *rendezvous node's*
//!   id ‖ `seq` (8 bytes, big-endian). The signature binds the registration to one rendezvous
//!   node and `seq` must grow, so a captured announce cannot be replayed to another node or
//!   later. The registration points at the query's source address. `r`: `id`, `token` (for the
//!   next refresh) and `ttl` (seconds the registration lasts without a refresh).
//! - `natkit.message` — `a`: `id`, `to` (recipient key), `from` (sender key), `ts` (sender's
//!   Unix time, seconds), `n` (8-byte nonce), `v` (payload, at most [`MAX_PAYLOAD_BYTES`]),
//!   `ch` (the channel, absent for [`CHANNEL_USER`]: [`CHANNEL_TRAVERSAL`] carries natkit's
//!   own connection set-up, each channel has its own inbox and stream at the recipient),
//!   `sig` = ed25519 by `from` over [`MESSAGE_DOMAIN`] (or [`CHANNEL_MESSAGE_DOMAIN`] ‖ `ch`)
//!   ‖ `to` ‖ `from` ‖ `ts` ‖ `n` ‖ `v`,
//!   `hops` (how many more nodes may forward it toward the recipient; 0 if absent) and `src`
//!   (compact address of the original sender, set by the first forwarding node). A node that
//!   *is* `to` delivers it; a node holding a registration for `to` forwards it to the
//!   registered address with `hops` 0; otherwise, with `hops` > 0, a node forwards it to the
//!   node of its routing table closest to [`target`]`(to)` if that is closer than itself. The
//!   answer travels back along the same path: an empty `r` means delivered, an error says why
//!   not ([`ERROR_NOT_REGISTERED`], [`ERROR_UNDELIVERED`], ...).
//!
//! # Limits (no node becomes an open relay or an amplifier)
//! A node forwards only to addresses that registered themselves with a signed announce from
//! that very address, or to nodes in its routing table; a forwarded datagram is no larger than
//! the one received. Registrations, registrations per IP, messages per source IP and per
//! recipient, forwards in flight, the replay cache and the inbox are all bounded (constants
//! below). Signatures and freshness are checked before anything is forwarded or delivered.
//!
//! # Threat model
//! Payloads are signed, not encrypted: rendezvous nodes can read them (put only what you
//! would put in a UNL: addresses, nonces). An on-path attacker can drop messages (it can drop
//! anything); an off-path attacker cannot register someone else's key (the token proves the
//! source IP, the signature proves the key), forge a message, or replay one (nonce cache and
//! [`MAX_CLOCK_SKEW`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha1::{Digest, Sha1};

use crate::bencode::Value;
use crate::id::Id;
use crate::krpc::{PUBLIC_KEY_BYTES, SIGNATURE_BYTES};

/// Method of the registration query.
pub const ANNOUNCE_METHOD: &[u8] = b"natkit.announce";
/// Method of the message query.
pub const MESSAGE_METHOD: &[u8] = b"natkit.message";

/// Domain separation of announce signatures.
pub const ANNOUNCE_DOMAIN: &[u8] = b"natkit-rendezvous-announce/1\0";
/// Domain separation of message signatures.
pub const MESSAGE_DOMAIN: &[u8] = b"natkit-rendezvous-message/1\0";
/// Prefix of the signed bytes of a message on a channel other than [`CHANNEL_USER`], followed
/// by the channel's byte: neither domain is a prefix of the other, so a message signed for one
/// channel cannot be presented as one on another.
pub const CHANNEL_MESSAGE_DOMAIN: &[u8] = b"natkit-rendezvous-message/1/channel\0";

/// The channel of messages for the application (`natkit dht send`, [`crate::dht::Dht::messages`]).
/// A message without a `ch` key is on it.
pub const CHANNEL_USER: u8 = 0;
/// The channel of natkit's own connection set-up (reverse connect, hole punching): kept apart
/// from the application's messages so that neither can starve or read the other.
pub const CHANNEL_TRAVERSAL: u8 = 1;
/// Number of channels a node accepts ([`CHANNEL_USER`], [`CHANNEL_TRAVERSAL`]); a message on
/// another is refused ([`ERROR_REFUSED`]).
pub const CHANNELS: u8 = 2;

/// The key of a rendezvous node's answer to a registration that carries its
/// ed25519 public key (when it has an identity), so that the registrant can
/// address messages to it.
pub const RESPONSE_KEY: &[u8] = b"nkk";

/// Largest payload of a message. With the envelope a forwarded datagram stays under 1,000
/// bytes, well below any path MTU.
pub const MAX_PAYLOAD_BYTES: usize = 512;

/// Rendezvous nodes a registered node keeps (hyperdht keeps 3 too).
pub const RENDEZVOUS_NODES: usize = 3;

/// How often a registered node refreshes each registration. Linux forgets an unanswered UDP
/// mapping after 30 s and home routers after as little as 30-60 s, so 20 s keeps the path open.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a registration lasts without a refresh (several missed keepalives).
pub const REGISTRATION_TTL: Duration = Duration::from_secs(75);

/// Keepalives in a row that may fail before a rendezvous node is replaced.
pub const MAX_KEEPALIVE_FAILURES: u8 = 2;

/// How often a registered node searches for its rendezvous nodes again, to follow the DHT's
/// closest set as nodes come and go.
pub const RESEARCH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// After a search that found fewer than [`RENDEZVOUS_NODES`], how long before the next; it
/// doubles after each such search, up to [`RESEARCH_INTERVAL`].
pub const RETRY_INTERVAL: Duration = Duration::from_secs(15);

/// Registrations a rendezvous node holds at most.
pub const MAX_REGISTRATIONS: usize = 4096;

/// Most live registrations from one IP address: a carrier-grade NAT puts many users behind one.
/// When an IP is at the limit, its oldest registration (most likely a node that is gone: nodes
/// never unregister) makes room for the new one, so one IP can only ever crowd out itself.
pub const MAX_REGISTRATIONS_PER_IP: usize = 64;

/// Forwards waiting for the next hop's answer, at most.
pub const MAX_PENDING_FORWARDS: usize = 256;

/// Most hops a message may be forwarded (`hops` is clamped to this).
pub const MAX_HOPS: u8 = 8;

/// Messages accepted from one source IP per [`MESSAGE_WINDOW`] (to forward or deliver).
pub const MAX_MESSAGES_PER_IP: u32 = 30;
/// Messages forwarded to one recipient per [`MESSAGE_WINDOW`].
pub const MAX_MESSAGES_PER_RECIPIENT: u32 = 30;
/// The message rate limits' window.
pub const MESSAGE_WINDOW: Duration = Duration::from_secs(10);
/// Sources or recipients tracked by a message rate limit at most.
pub const MAX_TRACKED: usize = 4096;

/// How far a message's `ts` may be from the receiver's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Remembered (sender, nonce) pairs, to drop replays.
pub const MAX_REPLAY_ENTRIES: usize = 16_384;

/// Delivered messages waiting for the application; past this, messages are refused with
/// [`ERROR_BUSY`] so the sender knows.
pub const MAX_INBOX: usize = 1024;

/// natkit error: nobody registered under `to` here (and the message could not go further).
pub const ERROR_NOT_REGISTERED: i64 = 480;
/// natkit error: the recipient (or the next hop) did not answer.
pub const ERROR_UNDELIVERED: i64 = 481;
/// natkit error: rate limit or capacity reached; try later.
pub const ERROR_BUSY: i64 = 482;
/// natkit error: bad signature, stale `seq` or `ts`, or a replay.
pub const ERROR_REFUSED: i64 = 483;

/// What an error code from a rendezvous node or a recipient means, in words: natkit's 480-483,
/// else [`crate::krpc::error_name`] (204 from a node that is not a natkit node, say).
///
/// ```
/// use natkit_dht::rendezvous::{ERROR_NOT_REGISTERED, error_name};
///
/// assert_eq!(error_name(ERROR_NOT_REGISTERED), "no rendezvous node knows the recipient");
/// assert_eq!(error_name(204), "method unknown");
/// ```
pub fn error_name(code: i64) -> &'static str {
    match code {
        ERROR_NOT_REGISTERED => "no rendezvous node knows the recipient",
        ERROR_UNDELIVERED => "the recipient or the next hop did not answer",
        ERROR_BUSY => "busy (rate limit or capacity reached; try later)",
        ERROR_REFUSED => "refused (bad signature, stale timestamp or a replay)",
        other => crate::krpc::error_name(other),
    }
}

/// The error codes of the nodes tried, in words, one entry per code in the order first seen:
/// `[480, 480, 481]` is "no rendezvous node knows the recipient (480) from 2 nodes, the
/// recipient or the next hop did not answer (481) from 1 node". Empty for no codes.
pub fn describe_errors(codes: &[i64]) -> String {
    let mut counted: Vec<(i64, usize)> = Vec::new();
    for &code in codes {
        match counted.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => counted.push((code, 1)),
        }
    }
    counted
        .iter()
        .map(|&(code, n)| {
            let nodes = if n == 1 { "node" } else { "nodes" };
            format!("{} ({code}) from {n} {nodes}", error_name(code))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The DHT id a key's rendezvous nodes are close to: SHA-1 of a domain string and the key.
pub fn target(key: &[u8; PUBLIC_KEY_BYTES]) -> Id {
    let mut h = Sha1::new();
    h.update(b"natkit-rendezvous-target/1\0");
    h.update(key);
    Id(h.finalize().into())
}

/// The info-hash natkit nodes willing to serve as rendezvous nodes announce themselves on
/// (`announce_peer`), so they can be found in a DHT shared with other implementations.
pub fn service_info_hash() -> Id {
    let mut h = Sha1::new();
    h.update(b"natkit-rendezvous-service/1");
    Id(h.finalize().into())
}

/// The info-hash natkit relays announce themselves on (`announce_peer` with their relay
/// port), so that nodes that need one find relays without configuration.
pub fn relay_info_hash() -> Id {
    let mut h = Sha1::new();
    h.update(b"natkit-relay-service/1");
    Id(h.finalize().into())
}

/// Why a rendezvous query was refused or could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    /// A field is missing or has the wrong type or length.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {len} bytes is over the limit of {MAX_PAYLOAD_BYTES}")]
    PayloadTooBig {
        /// The payload's length.
        len: usize,
    },
    /// The key is not a valid ed25519 public key or the signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `seq` is not above the registration held.
    #[error("stale seq")]
    StaleSeq,
    /// `ts` is too far from our clock.
    #[error("message time is {0} s away from ours")]
    Stale(u64),
    /// The message was seen before.
    #[error("replayed message")]
    Replay,
    /// A limit was reached.
    #[error("{0}")]
    Full(&'static str),
}

impl RendezvousError {
    /// The KRPC error code to answer with.
    pub fn code(&self) -> i64 {
        match self {
            RendezvousError::Malformed(_) => crate::krpc::ERROR_PROTOCOL,
            RendezvousError::PayloadTooBig { .. } => crate::krpc::ERROR_VALUE_TOO_BIG,
            RendezvousError::Full(_) => ERROR_BUSY,
            _ => ERROR_REFUSED,
        }
    }
}

fn bytes<const N: usize>(args: &Value, key: &'static str) -> Result<[u8; N], RendezvousError> {
    args.get(key.as_bytes())
        .and_then(Value::as_bytes)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or(RendezvousError::Malformed(key))
}

fn int(args: &Value, key: &'static str) -> Result<i64, RendezvousError> {
    args.get(key.as_bytes())
        .and_then(Value::as_int)
        .ok_or(RendezvousError::Malformed(key))
}

/// Strict ed25519 verification (`verify_strict`: no weak keys, no malleable signatures), the
/// same check as the identity crate's and BEP 44's.
fn verify(key: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), RendezvousError> {
    let vk = VerifyingKey::from_bytes(key).map_err(|_| RendezvousError::BadSignature)?;
    vk.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| RendezvousError::BadSignature)
}

fn dict(entries: Vec<(&[u8], Value)>) -> Value {
    Value::Dict(entries.into_iter().map(|(k, v)| (k.to_vec(), v)).collect())
}

/// A signed registration (`natkit.announce`'s arguments without `id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The key being registered.
    pub k: [u8; PUBLIC_KEY_BYTES],
    /// Grows with every announce of this key.
    pub seq: i64,
    /// Write token from the rendezvous node.
    pub token: Vec<u8>,
    /// Signature by `k` over [`Announce::signable`].
    pub sig: [u8; SIGNATURE_BYTES],
}

impl Announce {
    /// The signed bytes.
    pub fn signable(rendezvous: &Id, seq: i64) -> Vec<u8> {
        let mut m = ANNOUNCE_DOMAIN.to_vec();
        m.extend_from_slice(&rendezvous.0);
        m.extend_from_slice(&seq.to_be_bytes());
        m
    }

    /// An announce of `key`'s public key to the rendezvous node `rendezvous`.
    pub fn sign(key: &SigningKey, rendezvous: &Id, seq: i64, token: Vec<u8>) -> Self {
        let sig = key.sign(&Self::signable(rendezvous, seq)).to_bytes();
        Announce {
            k: key.verifying_key().to_bytes(),
            seq,
            token,
            sig,
        }
    }

    /// Checks the signature, made for the rendezvous node `rendezvous`.
    pub fn verify(&self, rendezvous: &Id) -> Result<(), RendezvousError> {
        verify(&self.k, &Self::signable(rendezvous, self.seq), &self.sig)
    }

    /// The query's `a`, with the sender's id.
    pub fn to_args(&self, id: Id) -> Value {
        dict(vec![
            (b"id", Value::Bytes(id.0.to_vec())),
            (b"k", Value::Bytes(self.k.to_vec())),
            (b"seq", Value::Int(self.seq)),
            (b"sig", Value::Bytes(self.sig.to_vec())),
            (b"token", Value::Bytes(self.token.clone())),
        ])
    }

    /// Reads a query's `a` (the signature is not checked here).
    pub fn from_args(args: &Value) -> Result<Self, RendezvousError> {
        let token = args
            .get(b"token")
            .and_then(Value::as_bytes)
            .filter(|t| t.len() <= 64)
            .ok_or(RendezvousError::Malformed("token"))?;
        Ok(Announce {
            k: bytes(args, "k")?,
            seq: int(args, "seq")?,
            token: token.to_vec(),
            sig: bytes(args, "sig")?,
        })
    }
}

/// A signed message from one key to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Recipient's public key.
    pub to: [u8; PUBLIC_KEY_BYTES],
    /// Sender's public key.
    pub from: [u8; PUBLIC_KEY_BYTES],
    /// Sender's Unix time in seconds.
    pub ts: i64,
    /// Random, so equal payloads are distinct messages.
    pub nonce: [u8; 8],
    /// What the sender says (at most [`MAX_PAYLOAD_BYTES`]).
    pub payload: Vec<u8>,
    /// Which channel it is on ([`CHANNEL_USER`] unless set; signed).
    pub channel: u8,
    /// Signature by `from` over [`Envelope::signable_on`].
    pub sig: [u8; SIGNATURE_BYTES],
}

/// A `natkit.message` query's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageArgs {
    /// The signed message.
    pub envelope: Envelope,
    /// Forwards still allowed.
    pub hops: u8,
    /// The original sender's address as the first forwarding node saw it.
    pub src: Option<SocketAddrV4>,
}

impl Envelope {
    /// An envelope on [`CHANNEL_USER`] signed by `key`.
    pub fn sign(
        key: &SigningKey,
        to: [u8; PUBLIC_KEY_BYTES],
        ts: i64,
        nonce: [u8; 8],
        payload: Vec<u8>,
    ) -> Result<Self, RendezvousError> {
        Self::sign_on(key, CHANNEL_USER, to, ts, nonce, payload)
    }

    /// An envelope on `channel` signed by `key`.
    pub fn sign_on(
        key: &SigningKey,
        channel: u8,
        to: [u8; PUBLIC_KEY_BYTES],
        ts: i64,
        nonce: [u8; 8],
        payload: Vec<u8>,
    ) -> Result<Self, RendezvousError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(RendezvousError::PayloadTooBig { len: payload.len() });
        }
        let from = key.verifying_key().to_bytes();
        let signed = Self::signable_on(channel, &to, &from, ts, &nonce, &payload);
        let sig = key.sign(&signed).to_bytes();
        Ok(Envelope {
            to,
            from,
            ts,
            nonce,
            payload,
            channel,
            sig,
        })
    }

    /// The signed bytes of a message on [`CHANNEL_USER`].
    pub fn signable(to: &[u8; 32], from: &[u8; 32], ts: i64, nonce: &[u8; 8], v: &[u8]) -> Vec<u8> {
        Self::signable_on(CHANNEL_USER, to, from, ts, nonce, v)
    }

    /// The signed bytes: [`MESSAGE_DOMAIN`] (on [`CHANNEL_USER`]) or
    /// [`CHANNEL_MESSAGE_DOMAIN`] ‖ `channel`, then `to` ‖ `from` ‖ `ts` ‖ `nonce` ‖ `v`.
    pub fn signable_on(
        channel: u8,
        to: &[u8; 32],
        from: &[u8; 32],
        ts: i64,
        nonce: &[u8; 8],
        v: &[u8],
    ) -> Vec<u8> {
        let mut m = if channel == CHANNEL_USER {
            MESSAGE_DOMAIN.to_vec()
        } else {
            let mut d = CHANNEL_MESSAGE_DOMAIN.to_vec();
            d.push(channel);
            d
        };
        m.extend_from_slice(to);
        m.extend_from_slice(from);
        m.extend_from_slice(&ts.to_be_bytes());
        m.extend_from_slice(nonce);
        m.extend_from_slice(v);
        m
    }

    /// Checks the signature and that `ts` is within [`MAX_CLOCK_SKEW`] of `unix_now`.
    pub fn verify(&self, unix_now: i64) -> Result<(), RendezvousError> {
        let skew = unix_now.abs_diff(self.ts);
        if skew > MAX_CLOCK_SKEW.as_secs() {
            return Err(RendezvousError::Stale(skew));
        }
        let m = Self::signable_on(
            self.channel,
            &self.to,
            &self.from,
            self.ts,
            &self.nonce,
            &self.payload,
        );
        verify(&self.from, &m, &self.sig)
    }

    /// The query's `a`.
    pub fn to_args(&self, id: Id, hops: u8, src: Option<SocketAddrV4>) -> Value {
        let mut d = vec![
            (b"id".as_slice(), Value::Bytes(id.0.to_vec())),
            (b"to", Value::Bytes(self.to.to_vec())),
            (b"from", Value::Bytes(self.from.to_vec())),
            (b"ts", Value::Int(self.ts)),
            (b"n", Value::Bytes(self.nonce.to_vec())),
            (b"v", Value::Bytes(self.payload.clone())),
            (b"sig", Value::Bytes(self.sig.to_vec())),
        ];
        if hops > 0 {
            d.push((b"hops", Value::Int(i64::from(hops))));
        }
        if self.channel != CHANNEL_USER {
            d.push((b"ch", Value::Int(i64::from(self.channel))));
        }
        if let Some(src) = src {
            let mut c = src.ip().octets().to_vec();
            c.extend_from_slice(&src.port().to_be_bytes());
            d.push((b"src", Value::Bytes(c)));
        }
        dict(d)
    }
}

impl MessageArgs {
    /// Reads a query's `a` (the signature is not checked here).
    pub fn from_args(args: &Value) -> Result<Self, RendezvousError> {
        let payload = args
            .get(b"v")
            .and_then(Value::as_bytes)
            .ok_or(RendezvousError::Malformed("v"))?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(RendezvousError::PayloadTooBig { len: payload.len() });
        }
        let hops = match args.get(b"hops") {
            None => 0,
            Some(v) => {
                let h = v.as_int().ok_or(RendezvousError::Malformed("hops"))?;
                u8::try_from(h.clamp(0, i64::from(MAX_HOPS))).unwrap_or(0)
            }
        };
        let src = match args.get(b"src") {
            None => None,
            Some(v) => {
                let c: [u8; 6] = v
                    .as_bytes()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(RendezvousError::Malformed("src"))?;
                let [a, b, c2, d, p0, p1] = c;
                Some(SocketAddrV4::new(
                    [a, b, c2, d].into(),
                    u16::from_be_bytes([p0, p1]),
                ))
            }
        };
        let channel = match args.get(b"ch") {
            None => CHANNEL_USER,
            Some(v) => v
                .as_int()
                .and_then(|c| u8::try_from(c).ok())
                .ok_or(RendezvousError::Malformed("ch"))?,
        };
        Ok(MessageArgs {
            envelope: Envelope {
                to: bytes(args, "to")?,
                from: bytes(args, "from")?,
                ts: int(args, "ts")?,
                nonce: bytes(args, "n")?,
                payload: payload.to_vec(),
                channel,
                sig: bytes(args, "sig")?,
            },
            hops,
            src,
        })
    }
}

/// A message delivered to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The sender's public key (the signature was checked).
    pub from: [u8; PUBLIC_KEY_BYTES],
    /// The channel it came on ([`CHANNEL_USER`], [`CHANNEL_TRAVERSAL`]; signed).
    pub channel: u8,
    /// What it says.
    pub payload: Vec<u8>,
    /// The sender's Unix time.
    pub ts: i64,
    /// The sender's address as the first node on the path saw it (the sender itself if it
    /// sent the message to us directly). Not signed: a hint, e.g. for hole punching.
    pub sender_addr: Option<SocketAddr>,
    /// The node that handed the message to us (a rendezvous node, or the sender).
    pub via: SocketAddr,
}

#[derive(Clone, Debug)]
struct Registration {
    addr: SocketAddr,
    seq: i64,
    expires: Instant,
}

/// The registrations a rendezvous node holds: key → the address that announced it.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    by_key: HashMap<[u8; PUBLIC_KEY_BYTES], Registration>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Registry {
    /// Registers `a` (already verified) at `from`. A key already registered moves to the new
    /// address if `seq` grew.
    pub fn register(
        &mut self,
        a: &Announce,
        from: SocketAddr,
        now: Instant,
    ) -> Result<(), RendezvousError> {
        let expires = now + REGISTRATION_TTL;
        if let Some(r) = self.by_key.get(&a.k) {
            if r.expires > now && a.seq <= r.seq {
                return Err(RendezvousError::StaleSeq);
            }
            let old_ip = r.addr.ip();
            if old_ip != from.ip() {
                self.make_room(from.ip(), now);
            }
            self.release(old_ip);
        } else {
            if self.by_key.len() >= MAX_REGISTRATIONS {
                self.expire(now);
            }
            self.make_room(from.ip(), now);
            if self.by_key.len() >= MAX_REGISTRATIONS {
                return Err(RendezvousError::Full("registrations full"));
            }
        }
        *self.per_ip.entry(from.ip()).or_default() += 1;
        let reg = Registration {
            addr: from,
            seq: a.seq,
            expires,
        };
        self.by_key.insert(a.k, reg);
        Ok(())
    }

    fn ip_count(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Keeps `ip` under [`MAX_REGISTRATIONS_PER_IP`]: drops its expired registrations, then,
    /// if it is still at the limit, its oldest one.
    fn make_room(&mut self, ip: IpAddr, now: Instant) {
        if self.ip_count(ip) < MAX_REGISTRATIONS_PER_IP {
            return;
        }
        let mut gone: Vec<[u8; PUBLIC_KEY_BYTES]> = self
            .by_key
            .iter()
            .filter(|(_, r)| r.addr.ip() == ip && r.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        if gone.is_empty() {
            gone.extend(
                self.by_key
                    .iter()
                    .filter(|(_, r)| r.addr.ip() == ip)
                    .min_by_key(|(_, r)| r.expires)
                    .map(|(k, _)| *k),
            );
        }
        for k in gone {
            self.by_key.remove(&k);
            self.release(ip);
        }
    }

    fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Where `key` is registered, if it is and has not expired.
    pub fn lookup(&self, key: &[u8; PUBLIC_KEY_BYTES], now: Instant) -> Option<SocketAddr> {
        self.by_key
            .get(key)
            .filter(|r| r.expires > now)
            .map(|r| r.addr)
    }

    /// Drops expired registrations.
    pub fn expire(&mut self, now: Instant) {
        let gone: Vec<_> = self
            .by_key
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(k, r)| (*k, r.addr.ip()))
            .collect();
        for (k, ip) in gone {
            self.by_key.remove(&k);
            self.release(ip);
        }
    }

    /// Registrations held (expired ones included until [`Registry::expire`]).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// (sender, nonce) pairs seen within twice [`MAX_CLOCK_SKEW`]: anything older is refused as
/// stale anyway.
#[derive(Clone, Debug, Default)]
pub struct ReplayCache {
    seen: HashSet<([u8; PUBLIC_KEY_BYTES], [u8; 8])>,
    order: VecDeque<(Instant, [u8; PUBLIC_KEY_BYTES], [u8; 8])>,
}

impl ReplayCache {
    /// Records a message; `Err(Replay)` if it was seen, `Err(Full)` if the cache cannot take
    /// it (refusing is safer than forgetting a nonce that is still fresh).
    pub fn check(&mut self, e: &Envelope, now: Instant) -> Result<(), RendezvousError> {
        while let Some((t, from, n)) = self.order.front().copied() {
            if now.duration_since(t) < 2 * MAX_CLOCK_SKEW {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&(from, n));
        }
        if self.seen.contains(&(e.from, e.nonce)) {
            return Err(RendezvousError::Replay);
        }
        if self.seen.len() >= MAX_REPLAY_ENTRIES {
            return Err(RendezvousError::Full("replay cache full"));
        }
        self.seen.insert((e.from, e.nonce));
        self.order.push_back((now, e.from, e.nonce));
        Ok(())
    }

    /// Whether a message was seen.
    pub fn contains(&self, e: &Envelope) -> bool {
        self.seen.contains(&(e.from, e.nonce))
    }
}

/// Counts events per key over fixed windows, tracking at most [`MAX_TRACKED`] keys.
#[derive(Clone, Debug)]
pub struct WindowLimit<K> {
    max: u32,
    counts: HashMap<K, (Instant, u32)>,
}

impl<K: Hash + Eq + Clone> WindowLimit<K> {
    /// At most `max` events per key per [`MESSAGE_WINDOW`].
    pub fn new(max: u32) -> Self {
        WindowLimit {
            max,
            counts: HashMap::new(),
        }
    }

    /// Counts one event for `key`; false if over the limit (or too many keys are active).
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.counts.contains_key(key) && self.counts.len() >= MAX_TRACKED {
            self.counts
                .retain(|_, (t, _)| now.duration_since(*t) < MESSAGE_WINDOW);
            if self.counts.len() >= MAX_TRACKED {
                return false;
            }
        }
        let (start, n) = self.counts.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(*start) >= MESSAGE_WINDOW {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= self.max
    }
}

#[cfg(test)]
mod tests;
