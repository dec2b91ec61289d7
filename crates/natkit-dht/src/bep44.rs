//! BEP 44: storing arbitrary items in the DHT — targets, the signed buffer, signing and checks.
//!
//! - An **immutable** item is stored under SHA-1 of its bencoded value.
//! - A **mutable** item is stored under SHA-1 of `k ‖ salt` (`k` the 32-byte ed25519 public key)
//!   and signed over `[4:salt<len>:<salt>]3:seqi<seq>e1:v<len>:<bencoded v>`; the salt part is
//!   present only for a non-empty salt (an empty salt means the same as none).
//!
//! The hashes and signatures cover the *verbatim* encoding of `v`. [`crate::krpc::parse`] only
//! accepts a canonical `v`, so `bencode::emit(v)` is that verbatim encoding.
//!
//! Keys are plain `ed25519-dalek` types; a natkit identity's key is
//! `natkit_identity::Keypair::signing_key()`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha1::{Digest, Sha1};

use crate::bencode::{self, Value};
use crate::id::Id;
use crate::krpc::{
    ERROR_CAS_MISMATCH, ERROR_INVALID_SIGNATURE, ERROR_PROTOCOL, ERROR_SALT_TOO_BIG,
    ERROR_SEQ_TOO_LOW, ERROR_VALUE_TOO_BIG, PUBLIC_KEY_BYTES, PutItem, SIGNATURE_BYTES,
};

/// Largest bencoded `v` accepted or produced, in bytes: BEP 44 lets storing nodes reject
/// anything longer, so a larger item would not reliably be stored.
pub const MAX_VALUE_BYTES: usize = 1000;

/// Longest `salt`, in bytes: BEP 44 says it "MUST NOT be longer than 64 bytes".
pub const MAX_SALT_BYTES: usize = 64;

/// Why an item cannot be stored, each mapped to its BEP 44 error code by [`Bep44Error::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bep44Error {
    /// 205: the bencoded `v` is longer than [`MAX_VALUE_BYTES`].
    #[error("bencoded value is {len} bytes, over the {MAX_VALUE_BYTES}-byte limit")]
    ValueTooBig {
        /// Its length in bytes.
        len: usize,
    },
    /// 207: the salt is longer than [`MAX_SALT_BYTES`].
    #[error("salt is {len} bytes, over the {MAX_SALT_BYTES}-byte limit")]
    SaltTooBig {
        /// Its length in bytes.
        len: usize,
    },
    /// 206: `k` is not a valid ed25519 public key.
    #[error("public key is not a valid ed25519 point")]
    InvalidPublicKey,
    /// 206: the signature does not verify.
    #[error("signature does not verify")]
    InvalidSignature,
    /// 301: the put's `cas` is not the stored `seq`.
    #[error("cas {cas} does not match the stored seq {stored}")]
    CasMismatch {
        /// The put's `cas`.
        cas: i64,
        /// The stored item's `seq`.
        stored: i64,
    },
    /// 302: the put's `seq` is lower than the stored one.
    #[error("seq {seq} is lower than the stored seq {stored}")]
    SeqTooLow {
        /// The put's `seq`.
        seq: i64,
        /// The stored item's `seq`.
        stored: i64,
    },
    /// 203: a negative `seq` (BEP 44 allows refusing them; natkit does).
    #[error("seq {seq} is negative")]
    NegativeSeq {
        /// The put's `seq`.
        seq: i64,
    },
}

impl Bep44Error {
    /// The KRPC error code to answer a `put` with.
    pub fn code(&self) -> i64 {
        match self {
            Bep44Error::ValueTooBig { .. } => ERROR_VALUE_TOO_BIG,
            Bep44Error::SaltTooBig { .. } => ERROR_SALT_TOO_BIG,
            Bep44Error::InvalidPublicKey | Bep44Error::InvalidSignature => ERROR_INVALID_SIGNATURE,
            Bep44Error::CasMismatch { .. } => ERROR_CAS_MISMATCH,
            Bep44Error::SeqTooLow { .. } => ERROR_SEQ_TOO_LOW,
            Bep44Error::NegativeSeq { .. } => ERROR_PROTOCOL,
        }
    }
}

fn sha1(parts: &[&[u8]]) -> Id {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    Id(h.finalize().into())
}

/// Target of an immutable item: SHA-1 of its bencoded value.
pub fn immutable_target(v: &Value) -> Id {
    sha1(&[&bencode::emit(v)])
}

/// Target of a mutable item: SHA-1 of `k ‖ salt` (an empty salt adds nothing).
pub fn mutable_target(k: &[u8; PUBLIC_KEY_BYTES], salt: &[u8]) -> Id {
    sha1(&[k, salt])
}

/// The bytes a mutable item's signature covers, given the *encoded* value.
pub fn signable(salt: &[u8], seq: i64, encoded_v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(salt.len() + encoded_v.len() + 40);
    if !salt.is_empty() {
        out.extend_from_slice(b"4:salt");
        bencode::emit_bytes(salt, &mut out);
    }
    out.extend_from_slice(b"3:seqi");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b"e1:v");
    out.extend_from_slice(encoded_v);
    out
}

/// A signed mutable item, as put into or got from the DHT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutableItem {
    /// The signer's ed25519 public key.
    pub k: [u8; PUBLIC_KEY_BYTES],
    /// Salt (empty for none).
    pub salt: Vec<u8>,
    /// Sequence number; higher replaces lower.
    pub seq: i64,
    /// The value.
    pub v: Value,
    /// Signature over [`signable`]`(salt, seq, emit(v))`.
    pub sig: [u8; SIGNATURE_BYTES],
}

impl MutableItem {
    /// Signs `v` at `seq` under `key` and `salt`, after checking the BEP 44 limits.
    pub fn sign(key: &SigningKey, salt: &[u8], seq: i64, v: Value) -> Result<Self, Bep44Error> {
        let encoded = check_limits(&v, salt, seq)?;
        let sig = key.sign(&signable(salt, seq, &encoded));
        Ok(MutableItem {
            k: key.verifying_key().to_bytes(),
            salt: salt.to_vec(),
            seq,
            v,
            sig: sig.to_bytes(),
        })
    }

    /// Where the item is stored.
    pub fn target(&self) -> Id {
        mutable_target(&self.k, &self.salt)
    }

    /// Checks the limits and the signature (what a storing node must do before storing, and a
    /// getter before believing a `get` response).
    pub fn verify(&self) -> Result<(), Bep44Error> {
        let encoded = check_limits(&self.v, &self.salt, self.seq)?;
        verify_signature(
            &self.k,
            &self.sig,
            &signable(&self.salt, self.seq, &encoded),
        )
    }

    /// The `put` item for this, with an optional `cas`. The salt key is sent only when
    /// non-empty.
    pub fn to_put_item(&self, cas: Option<i64>) -> PutItem {
        PutItem::Mutable {
            k: self.k,
            salt: (!self.salt.is_empty()).then(|| self.salt.clone()),
            seq: self.seq,
            cas,
            sig: self.sig,
            v: self.v.clone(),
        }
    }
}

/// What a `put` stores: an immutable value, or a mutable item with the put's `cas`.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored<'a> {
    /// An immutable item: the value itself.
    Immutable(&'a Value),
    /// A mutable item, and the `cas` (expected stored `seq`) the put carried.
    Mutable(MutableItem, Option<i64>),
}

impl<'a> Stored<'a> {
    /// The item a `put` carries (nothing is checked: see [`check_put`]). An empty
    /// salt means the same as none.
    pub fn of(item: &'a PutItem) -> Self {
        match item {
            PutItem::Immutable { v } => Stored::Immutable(v),
            PutItem::Mutable {
                k,
                salt,
                seq,
                cas,
                sig,
                v,
            } => Stored::Mutable(
                MutableItem {
                    k: *k,
                    salt: salt.clone().unwrap_or_default(),
                    seq: *seq,
                    v: v.clone(),
                    sig: *sig,
                },
                *cas,
            ),
        }
    }
}

/// Checks a received `put` item (limits, and the signature of a mutable one) and returns the
/// target to store it under. Storage rules (`seq`, `cas`) are up to the store; it reports them
/// with [`Bep44Error::SeqTooLow`] and [`Bep44Error::CasMismatch`].
pub fn check_put(item: &PutItem) -> Result<Id, Bep44Error> {
    match Stored::of(item) {
        Stored::Immutable(v) => {
            let encoded = bencode::emit(v);
            if encoded.len() > MAX_VALUE_BYTES {
                return Err(Bep44Error::ValueTooBig { len: encoded.len() });
            }
            Ok(sha1(&[&encoded]))
        }
        Stored::Mutable(item, _cas) => {
            item.verify()?;
            Ok(item.target())
        }
    }
}

fn check_limits(v: &Value, salt: &[u8], seq: i64) -> Result<Vec<u8>, Bep44Error> {
    if salt.len() > MAX_SALT_BYTES {
        return Err(Bep44Error::SaltTooBig { len: salt.len() });
    }
    if seq < 0 {
        return Err(Bep44Error::NegativeSeq { seq });
    }
    let encoded = bencode::emit(v);
    if encoded.len() > MAX_VALUE_BYTES {
        return Err(Bep44Error::ValueTooBig { len: encoded.len() });
    }
    Ok(encoded)
}

fn verify_signature(
    k: &[u8; PUBLIC_KEY_BYTES],
    sig: &[u8; SIGNATURE_BYTES],
    msg: &[u8],
) -> Result<(), Bep44Error> {
    let key = VerifyingKey::from_bytes(k).map_err(|_| Bep44Error::InvalidPublicKey)?;
    key.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| Bep44Error::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const PK: &str = "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548";
    // libtorrent-style expanded secret key (SHA-512(seed), clamped), as printed in BEP 44.
    const SK: &str = "e06d3183d14159228433ed599221b80bd0a5ce8352e4bdf0262f76786ef1c74d\
                      b7e7a9fea2c0eb269d61e3b38e450a22e754941ac78479d6c54e1faf6037881d";
    const SIG1: &str = "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff\
                        1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01";
    const SIG2: &str = "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d\
                        df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08";

    fn vector_item(salt: &str, sig: &str) -> MutableItem {
        MutableItem {
            k: hex(PK).try_into().unwrap(),
            salt: salt.as_bytes().to_vec(),
            seq: 1,
            v: Value::from("Hello World!"),
            sig: hex(sig).try_into().unwrap(),
        }
    }

    #[test]
    fn bep44_test_1_mutable() {
        let item = vector_item("", SIG1);
        assert_eq!(
            signable(b"", 1, &bencode::emit(&item.v)),
            b"3:seqi1e1:v12:Hello World!"
        );
        assert_eq!(
            item.target().to_hex(),
            "4a533d47ec9c7d95b1ad75f576cffc641853b750"
        );
        assert_eq!(item.verify(), Ok(()));
        assert_eq!(check_put(&item.to_put_item(None)), Ok(item.target()));
    }

    #[test]
    fn bep44_test_2_mutable_with_salt() {
        let item = vector_item("foobar", SIG2);
        assert_eq!(
            signable(b"foobar", 1, &bencode::emit(&item.v)),
            b"4:salt6:foobar3:seqi1e1:v12:Hello World!"
        );
        assert_eq!(
            item.target().to_hex(),
            "411eba73b6f087ca51a3795d9c8c938d365e32c1"
        );
        assert_eq!(item.verify(), Ok(()));
        // The unsalted signature does not cover the salted item.
        assert_eq!(
            vector_item("foobar", SIG1).verify(),
            Err(Bep44Error::InvalidSignature)
        );
    }

    #[test]
    fn bep44_test_3_immutable() {
        let v = Value::from("Hello World!");
        assert_eq!(
            immutable_target(&v).to_hex(),
            "e5f96f6f38320f0f33959cb4d3d656452117aadb"
        );
        let target = immutable_target(&v);
        assert_eq!(check_put(&PutItem::Immutable { v }), Ok(target));
    }

    #[test]
    fn reproduces_vector_signatures_from_expanded_key() {
        let esk = ExpandedSecretKey::from_bytes(&hex(SK).try_into().unwrap());
        let vk = VerifyingKey::from(&esk);
        assert_eq!(vk.to_bytes().to_vec(), hex(PK));
        let enc = bencode::emit(&Value::from("Hello World!"));
        let s1 = raw_sign::<sha2::Sha512>(&esk, &signable(b"", 1, &enc), &vk);
        assert_eq!(s1.to_bytes().to_vec(), hex(SIG1));
        let s2 = raw_sign::<sha2::Sha512>(&esk, &signable(b"foobar", 1, &enc), &vk);
        assert_eq!(s2.to_bytes().to_vec(), hex(SIG2));
    }

    #[test]
    fn sign_verify_and_limits() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let item = MutableItem::sign(&key, b"s", 5, Value::Int(9)).unwrap();
        assert_eq!(item.verify(), Ok(()));
        let mut tampered = item.clone();
        tampered.seq = 6;
        assert_eq!(tampered.verify(), Err(Bep44Error::InvalidSignature));
        assert_eq!(tampered.verify().unwrap_err().code(), 206);

        let big = Value::Bytes(vec![0; MAX_VALUE_BYTES]);
        let err = MutableItem::sign(&key, b"", 1, big.clone()).unwrap_err();
        assert_eq!(
            err,
            Bep44Error::ValueTooBig {
                len: MAX_VALUE_BYTES + 5
            }
        );
        assert_eq!(err.code(), 205);
        assert_eq!(
            check_put(&PutItem::Immutable { v: big })
                .unwrap_err()
                .code(),
            205
        );
        // 995 bytes + "995:" = 999 bytes: fits.
        assert!(
            check_put(&PutItem::Immutable {
                v: Value::Bytes(vec![0; 995])
            })
            .is_ok()
        );

        let err = MutableItem::sign(&key, &[0; MAX_SALT_BYTES + 1], 1, Value::Int(1)).unwrap_err();
        assert_eq!(err, Bep44Error::SaltTooBig { len: 65 });
        assert_eq!(err.code(), 207);
        assert!(MutableItem::sign(&key, &[0; MAX_SALT_BYTES], 1, Value::Int(1)).is_ok());
        assert_eq!(
            MutableItem::sign(&key, b"", -1, Value::Int(1))
                .unwrap_err()
                .code(),
            203
        );

        let mut bad_key = item.clone();
        bad_key.k = [0xff; 32];
        assert!(bad_key.verify().is_err());
        assert_eq!(Bep44Error::CasMismatch { cas: 1, stored: 2 }.code(), 301);
        assert_eq!(Bep44Error::SeqTooLow { seq: 1, stored: 2 }.code(), 302);
    }
}
