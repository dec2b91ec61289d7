//! Node identity for natkit.
//!
//! A natkit node is identified by an **ed25519 keypair**. Its public key is the
//! node's id: everything else (connections, UNLs, DHT records) is authenticated
//! against it. Users see and type the id in its text form: 52 characters of
//! lowercase RFC 4648 base32 without padding (case-insensitive on input).
//!
//! # Layout
//! - [`Keypair`]: the secret identity; signs.
//! - [`NodeId`]: the public key; verifies, prints and parses as text.
//! - [`keyfile`]: reading and creating the key file (mode `0600`, refused when
//!   others can read it).
//! - [`base32`]: the text encoding shared by node ids and UNLs.
//!
//! # Example
//! ```
//! use natkit_identity::{Keypair, NodeId};
//!
//! let key = Keypair::from_seed([7; 32]);
//! let id: NodeId = key.node_id();
//! let text = id.to_string();
//! assert_eq!(text.len(), 52);
//! assert_eq!(text.to_uppercase().parse::<NodeId>().unwrap(), id);
//!
//! let sig = key.sign(b"hello");
//! assert!(id.verify(b"hello", &sig).is_ok());
//! assert!(id.verify(b"hellO", &sig).is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

pub mod base32;
pub mod keyfile;

pub use ed25519_dalek::Signature;

/// Length in bytes of a public key (and of a node id).
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Length in bytes of a signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Length in characters of a node id's text form.
pub const NODE_ID_TEXT_LEN: usize = 52;

/// Errors from identity handling.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A node id in text form was not 52 base32 characters.
    #[error("invalid node id {text:?}: {why}")]
    BadNodeIdText {
        /// What was given (truncated to 80 characters).
        text: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("invalid ed25519 public key")]
    BadPublicKey,
    /// A signature did not verify.
    #[error("signature does not verify for node {0}")]
    BadSignature(NodeId),
    /// A key file problem.
    #[error(transparent)]
    KeyFile(#[from] keyfile::KeyFileError),
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
}

/// A node's secret identity: an ed25519 signing key.
///
/// The secret is zeroized when the keypair is dropped.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// Generates a new keypair from the operating system's random number generator.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// Builds the keypair from its 32-byte secret seed (RFC 8032 private key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed. Handle with care.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half: the node id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `msg` (pure ed25519, RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }

    /// The underlying `ed25519-dalek` signing key, for protocols that need it.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Keypair")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

/// A node id: an ed25519 public key, validated (it decompresses to a curve point
/// that is not of small order). 32 bytes; cheap to copy, hash and compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId([u8; PUBLIC_KEY_BYTES]);

impl NodeId {
    /// Validates 32 bytes as an ed25519 public key. Keys that are not curve
    /// points, and weak keys (small order points, for which a signature proves
    /// nothing), are refused.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_BYTES]) -> Result<Self, IdentityError> {
        match VerifyingKey::from_bytes(bytes) {
            Ok(k) if !k.is_weak() => Ok(NodeId(*bytes)),
            _ => Err(IdentityError::BadPublicKey),
        }
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.0
    }

    /// Verifies a signature by this node over `msg` (strict: rejects
    /// malleable signatures and small-order keys).
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), IdentityError> {
        self.verifying_key()
            .and_then(|k| k.verify_strict(msg, sig))
            .map_err(|_| IdentityError::BadSignature(*self))
    }

    /// The `ed25519-dalek` verifying key (decompresses the point: keep it if
    /// you verify many signatures by the same node).
    pub fn verifying_key(&self) -> Result<VerifyingKey, ed25519_dalek::SignatureError> {
        VerifyingKey::from_bytes(&self.0)
    }

    /// A short form for logs: the first 8 characters of the text form.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    /// Orders by the key bytes (lexicographically).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32::encode(self.as_bytes()))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| IdentityError::BadNodeIdText {
            text: s.chars().take(80).collect(),
            why,
        };
        let s = s.trim();
        if s.len() != NODE_ID_TEXT_LEN {
            return Err(bad("expected 52 base32 characters"));
        }
        let bytes = base32::decode(s).map_err(|_| bad("not base32 (a-z, 2-7)"))?;
        let arr: [u8; PUBLIC_KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| bad("expected 32 bytes of key"))?;
        NodeId::from_bytes(&arr).map_err(|_| bad("not a valid ed25519 public key"))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = Keypair::from_seed(seed.try_into().unwrap());
        assert_eq!(
            key.node_id().as_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = key.sign(b"");
        assert_eq!(
            sig.to_bytes().to_vec(),
            hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    #[test]
    fn text_form_is_lowercase_and_case_insensitive() {
        let id = Keypair::from_seed([1; 32]).node_id();
        let t = id.to_string();
        assert_eq!(t.len(), NODE_ID_TEXT_LEN);
        assert!(
            t.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(t.to_uppercase().parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn bad_text_is_a_typed_error() {
        for bad in ["", "abc", &"a".repeat(52), &"1".repeat(52), &"é".repeat(26)] {
            assert!(matches!(
                bad.parse::<NodeId>(),
                Err(IdentityError::BadNodeIdText { .. })
            ));
        }
    }

    #[test]
    fn wrong_signature_is_refused() {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let sig = a.sign(b"m");
        assert!(matches!(
            b.node_id().verify(b"m", &sig),
            Err(IdentityError::BadSignature(_))
        ));
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let k = Keypair::from_seed([0xAB; 32]);
        let dbg = format!("{k:?}");
        assert!(!dbg.to_lowercase().contains("abab"));
    }

    proptest! {
        #[test]
        fn node_id_text_round_trips(seed in any::<[u8; 32]>()) {
            let id = Keypair::from_seed(seed).node_id();
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<NodeId>();
        }
    }
}
