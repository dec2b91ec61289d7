//! The answering side of a node, sans-I/O: takes a parsed query, the sender's address, the
//! routing table and `now`, and returns the message to send back.
//!
//! Every answer carries the BEP 42 top-level `ip` (the requester's address as we see it) and
//! natkit's client version. Write tokens ([`Tokens`]) are SHA-1 over the requester's IP and a
//! secret that rotates every [`TOKEN_ROTATION`]; the current and previous secrets are accepted.
//! Methods other than the BEP 5/44 ones get error 204 unless a [`QueryHandler`] is registered
//! for them (natkit's own methods, named `natkit.*`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use crate::bencode::Value;
use crate::bep44;
use crate::id::{ID_BYTES, Id};
use crate::krpc::{
    ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL, ErrorMessage, KrpcError, Message, PutItem, Query,
    Response,
};
use crate::routing::{K, RoutingTable};
use crate::storage::{Item, Storage};

/// How often the token secret rotates (BEP 5's reference implementation: 5 minutes). Tokens
/// made with the current or the previous secret are accepted, so a token lives 5–10 minutes.
pub const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);

/// Length of the write tokens natkit hands out: 8 bytes of SHA-1 are unguessable enough for a
/// token that lives 10 minutes, and short tokens keep responses small.
pub const TOKEN_BYTES: usize = 8;

/// natkit's `v` (BEP 20 style: 2 bytes of client id, 2 of version).
pub const CLIENT_VERSION: [u8; 4] = *b"NK\x00\x01";

/// Prefix of natkit's own query methods; only these can get a [`QueryHandler`].
pub const NATKIT_METHOD_PREFIX: &[u8] = b"natkit.";

/// Write tokens bound to the requester's IP.
#[derive(Clone, Debug)]
pub struct Tokens {
    seed: [u8; ID_BYTES],
    generation: u64,
    rotated_at: Instant,
}

impl Tokens {
    /// Tokens whose secrets derive from `seed` (random, kept private).
    pub fn new(seed: [u8; ID_BYTES], now: Instant) -> Self {
        Tokens {
            seed,
            generation: 0,
            rotated_at: now,
        }
    }

    fn rotate(&mut self, now: Instant) {
        while now.duration_since(self.rotated_at) >= TOKEN_ROTATION {
            self.generation += 1;
            self.rotated_at += TOKEN_ROTATION;
        }
    }

    /// SHA-1 over the secret of `generation` and the IP (and, for an address token, a domain
    /// string and the port), cut to [`TOKEN_BYTES`].
    fn make(&self, generation: u64, ip: IpAddr, port: Option<u16>) -> [u8; TOKEN_BYTES] {
        let mut h = Sha1::new();
        if port.is_some() {
            h.update(b"natkit address token");
        }
        h.update(self.seed);
        h.update(generation.to_be_bytes());
        match ip.to_canonical() {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        if let Some(port) = port {
            h.update(port.to_be_bytes());
        }
        let digest: [u8; 20] = h.finalize().into();
        let mut out = [0u8; TOKEN_BYTES];
        out.copy_from_slice(&digest[..TOKEN_BYTES]);
        out
    }

    /// Whether `token` was made for `ip` (and `port`) with the current or previous secret.
    fn matches(&mut self, token: &[u8], ip: IpAddr, port: Option<u16>, now: Instant) -> bool {
        self.rotate(now);
        token == self.make(self.generation, ip, port)
            || (self.generation > 0 && token == self.make(self.generation - 1, ip, port))
    }

    /// The address token for `addr` at `now`: like a write token, but bound to the port too
    /// and kept apart from write tokens by a domain string. natkit hands it to natkit queriers
    /// in the `nkt` key of its answers; a later query that echoes it proves that its sender
    /// receives what is sent to `addr`, which is what an answer to a ping proves (BEP 5's
    /// "good node"), without sending anything more toward `addr` than the answers to its own
    /// queries.
    pub fn address_token(&mut self, addr: SocketAddr, now: Instant) -> [u8; TOKEN_BYTES] {
        self.rotate(now);
        self.make(self.generation, addr.ip(), Some(addr.port()))
    }

    /// Whether `token` was handed to `addr` within the current or previous rotation.
    pub fn check_address(&mut self, token: &[u8], addr: SocketAddr, now: Instant) -> bool {
        self.matches(token, addr.ip(), Some(addr.port()), now)
    }

    /// The token for `ip` at `now`.
    pub fn token(&mut self, ip: IpAddr, now: Instant) -> [u8; TOKEN_BYTES] {
        self.rotate(now);
        self.make(self.generation, ip, None)
    }

    /// Whether `token` was handed to `ip` within the current or previous rotation.
    pub fn check(&mut self, token: &[u8], ip: IpAddr, now: Instant) -> bool {
        self.matches(token, ip, None, now)
    }
}

/// A handler for one of natkit's own query methods (`natkit.*`). It gets the requester's
/// address and the query's `a` dictionary and returns the keys of the response's `r` (natkit
/// adds `id`) or an error to send.
pub trait QueryHandler: Send {
    /// Answers one query.
    fn handle(
        &mut self,
        from: SocketAddr,
        args: &Value,
        now: Instant,
    ) -> Result<BTreeMap<Vec<u8>, Value>, ErrorMessage>;
}

impl<F> QueryHandler for F
where
    F: FnMut(SocketAddr, &Value, Instant) -> Result<BTreeMap<Vec<u8>, Value>, ErrorMessage> + Send,
{
    fn handle(
        &mut self,
        from: SocketAddr,
        args: &Value,
        now: Instant,
    ) -> Result<BTreeMap<Vec<u8>, Value>, ErrorMessage> {
        self(from, args, now)
    }
}

/// Why [`Server::register`] refused a handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Only `natkit.*` methods can be handled: the others belong to the BEPs.
    #[error("method `{0}` is not in the `natkit.` namespace")]
    NotNatkitMethod(String),
}

/// The answering side of a node.
pub struct Server {
    id: Id,
    tokens: Tokens,
    storage: Storage,
    handlers: HashMap<Vec<u8>, Box<dyn QueryHandler>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("id", &self.id)
            .field("storage", &self.storage)
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server answering as `id`, with token secrets derived from `token_seed`.
    pub fn new(id: Id, token_seed: [u8; ID_BYTES], now: Instant) -> Self {
        Server {
            id,
            tokens: Tokens::new(token_seed, now),
            storage: Storage::new(),
            handlers: HashMap::new(),
        }
    }

    /// Our id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Answers as `id` from now on (after adopting a BEP 42 secure id).
    pub fn set_id(&mut self, id: Id) {
        self.id = id;
    }

    /// The store (for stats and tests).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Mutable access to the store (e.g. to expire it, or to store our own puts locally).
    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// Answers `method` (which must start with `natkit.`) with `handler`.
    pub fn register(
        &mut self,
        method: &str,
        handler: Box<dyn QueryHandler>,
    ) -> Result<(), RegisterError> {
        if !method.as_bytes().starts_with(NATKIT_METHOD_PREFIX) {
            return Err(RegisterError::NotNatkitMethod(method.to_owned()));
        }
        self.handlers.insert(method.as_bytes().to_vec(), handler);
        Ok(())
    }

    /// The error 203 for a malformed query from `from`, with `ip` set; `None` for datagrams
    /// that must not be answered.
    pub fn reply_to_malformed(&self, err: &KrpcError, from: SocketAddr) -> Option<Message> {
        err.reply().map(|m| self.finish(m, from))
    }

    /// The write tokens (natkit's own methods check them too).
    pub fn tokens_mut(&mut self) -> &mut Tokens {
        &mut self.tokens
    }

    /// `m`, an answer to `from`, with the BEP 42 `ip` and our version set.
    pub fn finish(&self, mut m: Message, from: SocketAddr) -> Message {
        m.ip = Some(from);
        m.version = Some(CLIENT_VERSION.to_vec());
        m
    }

    /// The answer to `query` (transaction id `tid`) from `from` at `now`.
    pub fn handle_query(
        &mut self,
        from: SocketAddr,
        tid: &[u8],
        query: &Query,
        table: &RoutingTable,
        now: Instant,
    ) -> Message {
        let answer = match query {
            Query::Ping { .. } => Ok(Response::new(self.id)),
            Query::FindNode { target, .. } => {
                let mut r = Response::new(self.id);
                r.nodes = Some(table.closest_good(target, K, now));
                Ok(r)
            }
            Query::GetPeers { info_hash, .. } => {
                let mut r = Response::new(self.id);
                r.token = Some(self.tokens.token(from.ip(), now).to_vec());
                r.nodes = Some(table.closest_good(info_hash, K, now));
                let peers = self.storage.peers(info_hash, now);
                if !peers.is_empty() {
                    r.values = Some(peers);
                }
                Ok(r)
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                token,
                implied_port,
                ..
            } => {
                if self.tokens.check(token, from.ip(), now) {
                    let port = if *implied_port { from.port() } else { *port };
                    self.storage
                        .announce(*info_hash, SocketAddr::new(from.ip(), port), now);
                    Ok(Response::new(self.id))
                } else {
                    Err(ErrorMessage::new(ERROR_PROTOCOL, "bad token"))
                }
            }
            Query::Get { target, seq, .. } => Ok(self.get(from, target, *seq, table, now)),
            Query::Put { token, item, .. } => self.put(from, token, item, now),
            Query::Other { method, args } => match self.handlers.get_mut(method) {
                Some(h) => h.handle(from, args, now).map(|extra| {
                    let mut r = Response::new(self.id);
                    r.extra = extra;
                    r
                }),
                None => Err(ErrorMessage::new(ERROR_METHOD_UNKNOWN, "method unknown")),
            },
        };
        let m = match answer {
            Ok(r) => Message::response(tid.to_vec(), r),
            Err(e) => Message::error(tid.to_vec(), e.code, e.message),
        };
        self.finish(m, from)
    }

    /// What this node itself stores under `target` (peers, or a BEP 44 item), as a response
    /// would carry it, for our own lookups.
    pub fn local_answer(&self, target: &Id, now: Instant) -> Response {
        let mut r = Response::new(self.id);
        let peers = self.storage.peers(target, now);
        if !peers.is_empty() {
            r.values = Some(peers);
        }
        fill_item(&mut r, self.storage.get(target, now), None);
        r
    }

    fn get(
        &mut self,
        from: SocketAddr,
        target: &Id,
        seq: Option<i64>,
        table: &RoutingTable,
        now: Instant,
    ) -> Response {
        let mut r = Response::new(self.id);
        r.token = Some(self.tokens.token(from.ip(), now).to_vec());
        r.nodes = Some(table.closest_good(target, K, now));
        fill_item(&mut r, self.storage.get(target, now), seq);
        r
    }

    fn put(
        &mut self,
        from: SocketAddr,
        token: &[u8],
        item: &PutItem,
        now: Instant,
    ) -> Result<Response, ErrorMessage> {
        if !self.tokens.check(token, from.ip(), now) {
            return Err(ErrorMessage::new(ERROR_PROTOCOL, "bad token"));
        }
        let bep44_err = |e: bep44::Bep44Error| ErrorMessage::new(e.code(), e.to_string());
        let target = bep44::check_put(item).map_err(bep44_err)?;
        match bep44::Stored::of(item) {
            bep44::Stored::Immutable(v) => self.storage.put_immutable(target, v.clone(), now),
            bep44::Stored::Mutable(m, cas) => self
                .storage
                .put_mutable(target, m, cas, now)
                .map_err(bep44_err)?,
        }
        Ok(Response::new(self.id))
    }
}

/// Puts a stored item in an answer: an immutable value, or a mutable item's `seq` and, unless
/// the asker has one at least as new (`newer_than`, BEP 44's `seq` argument), its key,
/// signature and value.
fn fill_item(r: &mut Response, item: Option<&Item>, newer_than: Option<i64>) {
    match item {
        Some(Item::Immutable(v)) => r.v = Some(v.clone()),
        Some(Item::Mutable(item)) => {
            r.seq = Some(item.seq);
            if newer_than.is_none_or(|s| s < item.seq) {
                r.k = Some(item.k);
                r.sig = Some(item.sig);
                r.v = Some(item.v.clone());
            }
        }
        None => {}
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
