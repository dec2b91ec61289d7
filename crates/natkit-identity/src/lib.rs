//! Node identity for natkit.
//!
//! A natkit node is identified by an **ed25519 keypair**. Its public key is the
//! node's id: everything else (connections, UNLs, DHT records) is authenticated
//! against it. Users see and type the id in its text form: 52 characters of
//! lowercase RFC 4648 base32 without padding (case-insensitive on input).
//! Parsing also accepts the 64 hexadecimal digits of the ed25519 public key,
//! the form other BEP 44 tools print, and explains that a 40-hex-digit DHT id
//! is not a public key.
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
/// Length in characters of a public key in hexadecimal (also accepted as a
/// node id).
pub const PUBLIC_KEY_HEX_LEN: usize = 64;
/// Length in hexadecimal digits of a 160-bit DHT id or target, which is
/// not a public key: named so that parsing can say so.
pub const DHT_ID_HEX_LEN: usize = 40;

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

    /// The public key as 64 lowercase hexadecimal digits (the form BEP 44
    /// tools print).
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(self.as_bytes())
    }

    /// Parses a node id in either form: 52 base32 characters (as natkit
    /// prints it) or 64 hexadecimal digits. Surrounding whitespace is ignored,
    /// both forms are case-insensitive. A 40-hex-digit DHT id is refused with
    /// an error that says it is not a public key. Same as [`str::parse`].
    ///
    /// ```
    /// use natkit_identity::{Keypair, NodeId};
    ///
    /// let id = Keypair::from_seed([7; 32]).node_id();
    /// assert_eq!(NodeId::parse_any(&id.to_string()).unwrap(), id);
    /// assert_eq!(NodeId::parse_any(&id.to_hex().to_uppercase()).unwrap(), id);
    /// let dht_id = "0123456789abcdef0123456789abcdef01234567";
    /// assert!(NodeId::parse_any(dht_id).unwrap_err().to_string().contains("not a public key"));
    /// ```
    pub fn parse_any(text: &str) -> Result<Self, IdentityError> {
        let s = text.trim();
        let bad = |why| IdentityError::BadNodeIdText {
            text: text.chars().take(80).collect(),
            why,
        };
        let is_hex = !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        let bytes = match s.len() {
            NODE_ID_TEXT_LEN => base32::decode(s).map_err(|_| bad("not base32 (a-z, 2-7)"))?,
            PUBLIC_KEY_HEX_LEN if is_hex => data_encoding::HEXLOWER_PERMISSIVE
                .decode(s.as_bytes())
                .map_err(|_| bad("not hexadecimal"))?,
            DHT_ID_HEX_LEN if is_hex => return Err(bad(DHT_ID_IS_NOT_A_KEY)),
            PUBLIC_KEY_HEX_LEN => return Err(bad("64 characters but not hexadecimal")),
            _ => return Err(bad(EXPECTED_FORMS)),
        };
        let arr: [u8; PUBLIC_KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| bad("expected 32 bytes of key"))?;
        NodeId::from_bytes(&arr).map_err(|_| bad("not a valid ed25519 public key"))
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

const EXPECTED_FORMS: &str = "expected a node id: 52 base32 characters (as `natkit showid` prints it) or the 64 hex digits of an ed25519 public key";

const DHT_ID_IS_NOT_A_KEY: &str = "40 hex digits is a DHT id (a routing id or a target), not a public key; \
     give the node id (52 base32 characters, as `natkit showid` prints it) or the 64-hex-digit ed25519 public key";

impl FromStr for NodeId {
    type Err = IdentityError;

    /// [`NodeId::parse_any`]: base32 or hexadecimal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse_any(s)
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
    fn hex_public_keys_are_node_ids_too() {
        // RFC 8032 TEST 1's public key, in both forms and both cases.
        let hex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let id = NodeId::parse_any(hex).unwrap();
        assert_eq!(id.to_hex(), hex);
        assert_eq!(NodeId::parse_any(&hex.to_uppercase()).unwrap(), id);
        assert_eq!(format!(" {hex}\n").parse::<NodeId>().unwrap(), id);
        assert_eq!(NodeId::parse_any(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn a_dht_id_is_not_taken_for_a_public_key() {
        let err = NodeId::parse_any("0123456789abcdef0123456789ABCDEF01234567").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("DHT id"), "{text}");
        assert!(text.contains("not a public key"), "{text}");
        // Other lengths and characters say what is expected.
        for bad in [
            "",
            "xyz",
            &"g".repeat(64),
            &"ab".repeat(20).replace('a', "z"),
        ] {
            let text = NodeId::parse_any(bad).unwrap_err().to_string();
            assert!(!text.contains("DHT id"), "{bad:?}: {text}");
        }
        let text = NodeId::parse_any("xyz").unwrap_err().to_string();
        assert!(
            text.contains("52 base32") && text.contains("64 hex"),
            "{text}"
        );
        // 64 hex digits that are not a curve point (a small-order point here).
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let text = NodeId::parse_any(&data_encoding::HEXLOWER.encode(&weak))
            .unwrap_err()
            .to_string();
        assert!(text.contains("not a valid ed25519 public key"), "{text}");
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

        #[test]
        fn hex_and_base32_forms_agree(seed in any::<[u8; 32]>()) {
            let id = Keypair::from_seed(seed).node_id();
            prop_assert_eq!(NodeId::parse_any(&id.to_hex()).unwrap(), id);
            prop_assert_eq!(id.to_hex().len(), PUBLIC_KEY_HEX_LEN);
        }
    }
}
