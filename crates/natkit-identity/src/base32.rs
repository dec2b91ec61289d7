//! The text encoding of node ids and UNLs: RFC 4648 base32, lowercase
//! alphabet `a-z2-7`, no padding. Decoding accepts upper case too, so a
//! string survives being shouted, and refuses non-zero trailing bits, so every
//! byte string has exactly one text form.

use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};

static LOWER_NOPAD: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.check_trailing_bits = true;
    // The specification above is a valid constant; `encoding()` cannot fail for it
    // (checked by the unit test below).
    spec.encoding()
        .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
});

/// Encodes bytes as lowercase base32 without padding.
pub fn encode(bytes: &[u8]) -> String {
    LOWER_NOPAD.encode(bytes)
}

/// Decodes lowercase or uppercase base32 without padding.
pub fn decode(text: &str) -> Result<Vec<u8>, data_encoding::DecodeError> {
    LOWER_NOPAD.decode(text.as_bytes())
}

/// Length of the text form of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    LOWER_NOPAD.encode_len(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_lowercase_rfc4648() {
        assert_eq!(encode(b"foobar"), "mzxw6ytboi");
        assert_eq!(decode("MZXW6YTBOI").unwrap(), b"foobar");
        assert_eq!(decode("mzxw6ytboi").unwrap(), b"foobar");
    }

    #[test]
    fn non_canonical_trailing_bits_are_refused() {
        // "my" is 'f' with zero trailing bits; "mz" sets a trailing bit.
        assert_eq!(decode("my").unwrap(), b"f");
        assert!(decode("mz").is_err());
        assert!(decode("my======").is_err());
    }
}
