//! The connection handshake: Noise XX, authenticated to ed25519 identities.
//!
//! Pattern `Noise_XX_25519_ChaChaPoly_BLAKE2s`, prologue `natkit/1`. Each
//! [`Net`](crate::Net) makes a fresh X25519 static key when it starts and signs
//! it with its ed25519 identity key; the signature travels inside the encrypted
//! handshake. So a peer proves that it holds the identity key (it signed the
//! static key) and the static key (Noise's `es`/`se` DH), and nothing links two
//! runs of the same node except its identity. This is the construction of
//! libp2p's Noise handshake, with natkit's own domain string.
//!
//! Handshake messages are framed like transport frames (2-byte length) and
//! limited to [`MAX_HANDSHAKE_MESSAGE_BYTES`]. Payloads:
//!
//! ```text
//! -> e                      hello:    "natkit" | max version (1) | flags (bit 0: plaintext transport)
//! <- e, ee, s, es           identity: version | ed25519 key (32) | signature (64) | observed address
//! -> s, se                  identity: version | ed25519 key (32) | signature (64) | observed address
//! ```
//!
//! The signature is over `"natkit-noise-static-v1" || X25519 static public key`.
//! The observed address is the other side's address as the sender sees it
//! (tag 4 or 6, IP, port), which a node behind NAT uses to learn its public
//! address. The dialer states whose key it expects and aborts on a mismatch.
//!
//! Threat model: an active attacker on the path cannot read or change lines,
//! nor impersonate either side without its identity key; it can learn that two
//! addresses talk natkit (the first message is clear) and cut connections. In
//! plaintext mode (opt-in on both sides, for debugging), the peer is still
//! authenticated during the handshake, but lines afterwards are neither secret
//! nor protected against changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use natkit_identity::{Keypair, NodeId, Signature};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake: both sides must speak natkit's line protocol v1.
pub const PROLOGUE: &[u8] = b"natkit/1";
/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest handshake message accepted; ours are under 200 bytes.
pub const MAX_HANDSHAKE_MESSAGE_BYTES: usize = 1024;

const HELLO_MAGIC: &[u8; 6] = b"natkit";
const FLAG_PLAINTEXT: u8 = 1;
const STATIC_SIG_DOMAIN: &[u8] = b"natkit-noise-static-v1";

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The Noise layer refused a message (bad key material or tampering).
    #[error("noise handshake failed: {0}")]
    Noise(String),
    /// A message that is not natkit's.
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// No protocol version in common.
    #[error("peer speaks protocol version {0}; this natkit speaks {PROTOCOL_VERSION}")]
    Version(u8),
    /// The peer is not the node we meant to reach.
    #[error("peer is node {got}, not the expected {expected}")]
    KeyMismatch {
        /// The node id we dialed for.
        expected: NodeId,
        /// The node id that answered.
        got: NodeId,
    },
    /// The peer's identity signature over its Noise key does not verify.
    #[error("peer's identity signature does not verify")]
    BadIdentitySignature,
    /// One side asked for plaintext and the other does not allow it.
    #[error("plaintext mode refused: {0}")]
    Plaintext(&'static str),
    /// We reached ourselves.
    #[error("connected to ourselves")]
    SelfConnection,
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        HandshakeError::Noise(e.to_string())
    }
}

/// A node's handshake credentials: the identity and a signed X25519 static key.
pub struct LocalIdentity {
    identity: Keypair,
    static_private: Vec<u8>,
    static_signature: Signature,
}

impl LocalIdentity {
    /// Makes a fresh static key and signs it with `identity`.
    pub fn new(identity: Keypair) -> Result<Self, HandshakeError> {
        let builder = snow::Builder::new(params());
        let kp = builder.generate_keypair()?;
        let mut msg = STATIC_SIG_DOMAIN.to_vec();
        msg.extend_from_slice(&kp.public);
        let static_signature = identity.sign(&msg);
        Ok(LocalIdentity {
            identity,
            static_private: kp.private,
            static_signature,
        })
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }
}

fn params() -> snow::params::NoiseParams {
    // A constant that parses; the unit test `params_parse` checks it.
    NOISE_PARAMS
        .parse()
        .unwrap_or_else(|_| unreachable!("NOISE_PARAMS is a valid Noise protocol name"))
}

/// Which side of the handshake we are. Normally the dialer initiates; after a
/// TCP simultaneous open both sides dialed, and the roles are agreed otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends the first message.
    Initiator,
    /// Answers.
    Responder,
}

/// What the handshake gives the connection.
pub struct Established {
    /// The authenticated peer.
    pub peer: NodeId,
    /// Our address as the peer saw it.
    pub observed: SocketAddr,
    /// The Noise transport (cipher states; the caller keeps the nonces).
    pub transport: StatelessTransportState,
    /// The Noise handshake hash: the same on both sides, unique per connection.
    pub handshake_hash: [u8; 32],
    /// Lines travel without encryption.
    pub plaintext: bool,
}

/// Options for one handshake.
pub struct HandshakeOptions<'a> {
    /// Our credentials.
    pub local: &'a LocalIdentity,
    /// Initiator or responder.
    pub role: Role,
    /// The node we mean to reach (dialer); `None` accepts anyone (listener).
    pub expected: Option<NodeId>,
    /// The peer's address as we see it (sent to the peer as its observed address).
    pub peer_addr: SocketAddr,
    /// Ask for plaintext transport (initiator only).
    pub want_plaintext: bool,
    /// Accept a peer's request for plaintext transport (responder only).
    pub allow_plaintext: bool,
}

/// Runs the handshake on `stream`. The caller applies the timeout.
pub async fn run<S>(stream: &mut S, o: HandshakeOptions<'_>) -> Result<Established, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let builder = snow::Builder::new(params())
        .local_private_key(&o.local.static_private)?
        .prologue(PROLOGUE)?;
    let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE_BYTES];
    let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE_BYTES];
    let (peer, observed, plaintext, hs) = match o.role {
        Role::Initiator => {
            let mut hs = builder.build_initiator()?;
            let hello = emit_hello(o.want_plaintext);
            let n = hs.write_message(&hello, &mut buf)?;
            write_msg(stream, &buf[..n]).await?;
            let msg = read_msg(stream).await?;
            let n = hs.read_message(&msg, &mut payload)?;
            let theirs = parse_identity(&payload[..n])?;
            let peer = check_identity(&hs, &theirs, o.local, o.expected)?;
            let mine = emit_identity(o.local, o.peer_addr);
            let n = hs.write_message(&mine, &mut buf)?;
            write_msg(stream, &buf[..n]).await?;
            (peer, theirs.observed, o.want_plaintext, hs)
        }
        Role::Responder => {
            let mut hs = builder.build_responder()?;
            let msg = read_msg(stream).await?;
            let n = hs.read_message(&msg, &mut payload)?;
            let hello = parse_hello(&payload[..n])?;
            if hello.max_version < PROTOCOL_VERSION {
                return Err(HandshakeError::Version(hello.max_version));
            }
            if hello.plaintext && !o.allow_plaintext {
                return Err(HandshakeError::Plaintext(
                    "the peer asked for plaintext and we do not allow it",
                ));
            }
            let mine = emit_identity(o.local, o.peer_addr);
            let n = hs.write_message(&mine, &mut buf)?;
            write_msg(stream, &buf[..n]).await?;
            let msg = read_msg(stream).await?;
            let n = hs.read_message(&msg, &mut payload)?;
            let theirs = parse_identity(&payload[..n])?;
            let peer = check_identity(&hs, &theirs, o.local, o.expected)?;
            (peer, theirs.observed, hello.plaintext, hs)
        }
    };
    let mut handshake_hash = [0u8; 32];
    let h = hs.get_handshake_hash();
    let len = h.len().min(32);
    handshake_hash[..len].copy_from_slice(&h[..len]);
    let transport = hs.into_stateless_transport_mode()?;
    Ok(Established {
        peer,
        observed,
        transport,
        handshake_hash,
        plaintext,
    })
}

/// Checks the peer's identity payload: version, the identity signature over
/// the Noise static key, not ourselves, and the key we expected (if any).
fn check_identity(
    hs: &snow::HandshakeState,
    theirs: &IdentityPayload,
    local: &LocalIdentity,
    expected: Option<NodeId>,
) -> Result<NodeId, HandshakeError> {
    if theirs.version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version(theirs.version));
    }
    let remote_static = hs
        .get_remote_static()
        .ok_or(HandshakeError::Malformed("no remote static key"))?;
    let mut msg = STATIC_SIG_DOMAIN.to_vec();
    msg.extend_from_slice(remote_static);
    theirs
        .identity
        .verify(&msg, &theirs.signature)
        .map_err(|_| HandshakeError::BadIdentitySignature)?;
    if theirs.identity == local.node_id() {
        return Err(HandshakeError::SelfConnection);
    }
    match expected {
        Some(expected) if expected != theirs.identity => Err(HandshakeError::KeyMismatch {
            expected,
            got: theirs.identity,
        }),
        _ => Ok(theirs.identity),
    }
}

async fn write_msg<S: AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await?;
    s.flush().await
}

async fn read_msg<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, HandshakeError> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MESSAGE_BYTES {
        return Err(HandshakeError::Malformed("handshake message too large"));
    }
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

/// The first message's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the dialer speaks.
    pub max_version: u8,
    /// The dialer asks for plaintext transport.
    pub plaintext: bool,
}

/// Emits the hello payload.
pub fn emit_hello(plaintext: bool) -> Vec<u8> {
    let mut v = HELLO_MAGIC.to_vec();
    v.push(PROTOCOL_VERSION);
    v.push(if plaintext { FLAG_PLAINTEXT } else { 0 });
    v
}

/// Parses the hello payload. Unknown flag bits are ignored (for future use).
pub fn parse_hello(b: &[u8]) -> Result<Hello, HandshakeError> {
    match b {
        [m0, m1, m2, m3, m4, m5, version, flags]
            if [*m0, *m1, *m2, *m3, *m4, *m5] == *HELLO_MAGIC =>
        {
            Ok(Hello {
                max_version: *version,
                plaintext: flags & FLAG_PLAINTEXT != 0,
            })
        }
        _ => Err(HandshakeError::Malformed("not a natkit hello")),
    }
}

/// The identity payload of messages 2 and 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPayload {
    /// Protocol version.
    pub version: u8,
    /// The sender's identity.
    pub identity: NodeId,
    /// The sender's signature over its Noise static key.
    pub signature: Signature,
    /// The receiver's address as the sender sees it.
    pub observed: SocketAddr,
}

fn emit_identity(local: &LocalIdentity, peer_addr: SocketAddr) -> Vec<u8> {
    let p = IdentityPayload {
        version: PROTOCOL_VERSION,
        identity: local.node_id(),
        signature: local.static_signature,
        observed: peer_addr,
    };
    emit_identity_payload(&p)
}

/// Emits an identity payload.
pub fn emit_identity_payload(p: &IdentityPayload) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + 32 + 64 + 19);
    v.push(p.version);
    v.extend_from_slice(p.identity.as_bytes());
    v.extend_from_slice(&p.signature.to_bytes());
    match p.observed.ip() {
        IpAddr::V4(ip) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(6);
            v.extend_from_slice(&ip.octets());
        }
    }
    v.extend_from_slice(&p.observed.port().to_be_bytes());
    v
}

/// Parses an identity payload. Never panics.
pub fn parse_identity(b: &[u8]) -> Result<IdentityPayload, HandshakeError> {
    let bad = HandshakeError::Malformed("bad identity payload");
    let (&version, rest) = b
        .split_first()
        .ok_or(HandshakeError::Malformed("empty identity payload"))?;
    let key: [u8; 32] = rest
        .get(..32)
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::Malformed("short identity payload"))?;
    let identity =
        NodeId::from_bytes(&key).map_err(|_| HandshakeError::Malformed("invalid identity key"))?;
    let sig: [u8; 64] = rest
        .get(32..96)
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::Malformed("short identity payload"))?;
    let rest = rest.get(96..).unwrap_or_default();
    let (ip, rest) = match rest.split_first() {
        Some((4, r)) if r.len() == 4 + 2 => {
            let o: [u8; 4] = r[..4]
                .try_into()
                .map_err(|_| HandshakeError::Malformed("bad address"))?;
            (IpAddr::V4(Ipv4Addr::from(o)), &r[4..])
        }
        Some((6, r)) if r.len() == 16 + 2 => {
            let o: [u8; 16] = r[..16]
                .try_into()
                .map_err(|_| HandshakeError::Malformed("bad address"))?;
            (IpAddr::V6(Ipv6Addr::from(o)), &r[16..])
        }
        _ => return Err(bad),
    };
    let port = u16::from_be_bytes([rest[0], rest[1]]);
    Ok(IdentityPayload {
        version,
        identity,
        signature: Signature::from_bytes(&sig),
        observed: SocketAddr::new(ip, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn params_parse() {
        assert!(NOISE_PARAMS.parse::<snow::params::NoiseParams>().is_ok());
    }

    #[test]
    fn hello_round_trip_and_garbage() {
        for p in [true, false] {
            let h = parse_hello(&emit_hello(p)).unwrap();
            assert_eq!(h.plaintext, p);
            assert_eq!(h.max_version, PROTOCOL_VERSION);
        }
        assert!(parse_hello(b"GET / HTTP/1.1").is_err());
        assert!(parse_hello(b"").is_err());
    }

    #[test]
    fn identity_round_trip() {
        let k = Keypair::from_seed([4; 32]);
        for observed in ["203.0.113.9:4000", "[2001:db8::1]:1"] {
            let p = IdentityPayload {
                version: 1,
                identity: k.node_id(),
                signature: k.sign(b"x"),
                observed: observed.parse().unwrap(),
            };
            assert_eq!(parse_identity(&emit_identity_payload(&p)).unwrap(), p);
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_hello(&b);
            let _ = parse_identity(&b);
        }
    }

    /// Runs both sides of a handshake over an in-memory pipe; each side hangs
    /// up when it is done, so a failure on one side ends the other.
    async fn pair(
        a: (&LocalIdentity, Option<NodeId>, bool),
        b: (&LocalIdentity, bool),
    ) -> (
        Result<Established, HandshakeError>,
        Result<Established, HandshakeError>,
    ) {
        let (mut sa, mut sb) = tokio::io::duplex(4096);
        let addr_a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let addr_b: SocketAddr = "10.0.0.2:2".parse().unwrap();
        tokio::join!(
            async {
                let o = HandshakeOptions {
                    local: a.0,
                    role: Role::Initiator,
                    expected: a.1,
                    peer_addr: addr_b,
                    want_plaintext: a.2,
                    allow_plaintext: false,
                };
                let r = run(&mut sa, o).await;
                drop(sa);
                r
            },
            async {
                let o = HandshakeOptions {
                    local: b.0,
                    role: Role::Responder,
                    expected: None,
                    peer_addr: addr_a,
                    want_plaintext: false,
                    allow_plaintext: b.1,
                };
                let r = run(&mut sb, o).await;
                drop(sb);
                r
            },
        )
    }

    fn ids() -> (LocalIdentity, LocalIdentity) {
        (
            LocalIdentity::new(Keypair::from_seed([1; 32])).unwrap(),
            LocalIdentity::new(Keypair::from_seed([2; 32])).unwrap(),
        )
    }

    #[tokio::test]
    async fn handshake_over_a_pipe_authenticates_both_sides() {
        let (a, b) = ids();
        let (ra, rb) = pair((&a, Some(b.node_id()), false), (&b, false)).await;
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.peer, b.node_id());
        assert_eq!(rb.peer, a.node_id());
        assert_eq!(ra.observed, "10.0.0.1:1".parse().unwrap());
        assert_eq!(rb.observed, "10.0.0.2:2".parse().unwrap());
        assert_eq!(ra.handshake_hash, rb.handshake_hash);
        assert!(!ra.plaintext && !rb.plaintext);
    }

    #[tokio::test]
    async fn wrong_expected_key_is_refused() {
        let (a, b) = ids();
        let c = Keypair::from_seed([3; 32]).node_id();
        let (ra, rb) = pair((&a, Some(c), false), (&b, false)).await;
        assert!(matches!(ra, Err(HandshakeError::KeyMismatch { .. })));
        assert!(rb.is_err(), "the responder must not finish either");
    }

    #[tokio::test]
    async fn plaintext_needs_consent() {
        let (a, b) = ids();
        let (_, rb) = pair((&a, None, true), (&b, false)).await;
        assert!(matches!(rb, Err(HandshakeError::Plaintext(_))));
        let (ra, rb) = pair((&a, None, true), (&b, true)).await;
        assert!(ra.unwrap().plaintext && rb.unwrap().plaintext);
    }

    #[tokio::test]
    async fn connecting_to_ourselves_is_refused() {
        let a = LocalIdentity::new(Keypair::from_seed([1; 32])).unwrap();
        let a2 = LocalIdentity::new(Keypair::from_seed([1; 32])).unwrap();
        let (ra, _) = pair((&a, None, false), (&a2, false)).await;
        assert!(matches!(ra, Err(HandshakeError::SelfConnection)));
    }
}
