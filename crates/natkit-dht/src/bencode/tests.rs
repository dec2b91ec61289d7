//! Bencode tests: each error case, the limits, and the emit/parse round-trip property.

use super::*;
use proptest::prelude::*;

fn err(input: &[u8]) -> BencodeError {
    match parse(input) {
        Ok(v) => panic!("{:?} parsed as {v:?}", String::from_utf8_lossy(input)),
        Err(e) => e,
    }
}

#[test]
fn parses_each_kind() {
    assert_eq!(parse(b"i42e"), Ok(Value::Int(42)));
    assert_eq!(parse(b"i-7e"), Ok(Value::Int(-7)));
    assert_eq!(parse(b"i0e"), Ok(Value::Int(0)));
    assert_eq!(parse(b"4:spam"), Ok(Value::from("spam")));
    assert_eq!(parse(b"0:"), Ok(Value::from("")));
    assert_eq!(
        parse(b"l4:spami1ee"),
        Ok(Value::List(vec![Value::from("spam"), Value::Int(1)]))
    );
    let d = parse(b"d3:cow3:moo4:spaml1:a1:bee").unwrap();
    assert_eq!(d.get(b"cow"), Some(&Value::from("moo")));
    assert_eq!(emit(&d), b"d3:cow3:moo4:spaml1:a1:bee");
}

#[test]
fn integer_extremes() {
    assert_eq!(parse(b"i9223372036854775807e"), Ok(Value::Int(i64::MAX)));
    assert_eq!(parse(b"i-9223372036854775808e"), Ok(Value::Int(i64::MIN)));
    assert!(matches!(
        err(b"i9223372036854775808e"),
        BencodeError::NumberOutOfRange { .. }
    ));
    assert!(matches!(
        err(b"i-9223372036854775809e"),
        BencodeError::NumberOutOfRange { .. }
    ));
    assert_eq!(emit(&Value::Int(i64::MIN)), b"i-9223372036854775808e");
}

#[test]
fn refuses_non_canonical_numbers() {
    for bad in [&b"i03e"[..], b"i-0e", b"i00e", b"i-03e", b"03:abc", b"00:"] {
        assert!(
            matches!(err(bad), BencodeError::NonCanonicalNumber { .. }),
            "{bad:?}"
        );
    }
}

#[test]
fn refuses_malformed() {
    assert!(matches!(
        err(b""),
        BencodeError::UnexpectedEnd { offset: 0 }
    ));
    assert!(matches!(
        err(b"ie"),
        BencodeError::UnexpectedByte { offset: 1, .. }
    ));
    assert!(matches!(
        err(b"i-e"),
        BencodeError::UnexpectedByte { offset: 2, .. }
    ));
    assert!(matches!(
        err(b"i1"),
        BencodeError::UnexpectedEnd { offset: 2 }
    ));
    assert!(matches!(err(b"i+1e"), BencodeError::UnexpectedByte { .. }));
    assert!(matches!(err(b"-1:a"), BencodeError::UnexpectedByte { .. }));
    assert!(matches!(
        err(b"5:abc"),
        BencodeError::StringPastEnd { len: 5, .. }
    ));
    assert!(matches!(
        err(b"99999999999999999999:a"),
        BencodeError::NumberOutOfRange { .. }
    ));
    assert!(matches!(
        err(b"l"),
        BencodeError::UnexpectedEnd { offset: 1 }
    ));
    assert!(matches!(
        err(b"di1e1:ae"),
        BencodeError::KeyNotString { offset: 1 }
    ));
    assert!(matches!(
        err(b"d1:ae"),
        BencodeError::UnexpectedByte { offset: 4, .. }
    ));
    assert!(matches!(
        err(b"x"),
        BencodeError::UnexpectedByte {
            offset: 0,
            byte: b'x'
        }
    ));
    assert!(matches!(
        err(b"i1ei2e"),
        BencodeError::TrailingBytes {
            offset: 3,
            extra: 3
        }
    ));
}

#[test]
fn duplicate_and_unsorted_keys() {
    assert!(matches!(
        err(b"d1:ai1e1:ai2ee"),
        BencodeError::DuplicateKey { offset: 7 }
    ));
    assert!(matches!(
        parse_strict(b"d1:ai1e1:ai2ee"),
        Err(BencodeError::DuplicateKey { offset: 7 })
    ));
    // Lenient mode sorts; strict mode refuses.
    let v = parse(b"d1:bi1e1:ai2ee").unwrap();
    assert_eq!(emit(&v), b"d1:ai2e1:bi1ee");
    assert!(matches!(
        parse_strict(b"d1:bi1e1:ai2ee"),
        Err(BencodeError::UnsortedKeys { offset: 7 })
    ));
    assert!(matches!(
        parse_strict(b"d1:bi1e1:ai2ee"),
        Err(BencodeError::UnsortedKeys { .. })
    ));
    // Unsorted keys inside a nested dict are caught too.
    assert!(parse_strict(b"ld1:bi1e1:ai2eee").is_err());
    assert!(parse(b"ld1:bi1e1:ai2eee").is_ok());
}

#[test]
fn limits() {
    let deep_ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
    assert!(parse(&deep_ok).is_ok());
    let too_deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
    assert!(matches!(
        parse(&too_deep),
        Err(BencodeError::TooDeep { offset }) if offset == MAX_DEPTH
    ));
    // A deep unterminated input must not recurse past the limit either.
    assert!(matches!(
        parse(&[b'l'; 60_000]),
        Err(BencodeError::TooDeep { .. })
    ));
    let big = vec![b'0'; MAX_INPUT_BYTES + 1];
    assert!(matches!(parse(&big), Err(BencodeError::TooLarge { .. })));
    let many = [b"l".as_slice(), &b"i0e".repeat(MAX_VALUES), b"e"].concat();
    assert_eq!(parse(&many), Err(BencodeError::TooManyValues));
}

#[test]
fn prefix_and_raw_entries() {
    assert_eq!(parse_prefix(b"i1eXYZ"), Ok((Value::Int(1), 3)));
    let raw = dict_raw_entries(b"d1:bli1ee1:a3:xyze").unwrap();
    assert_eq!(
        raw,
        vec![(&b"b"[..], &b"li1ee"[..]), (&b"a"[..], &b"3:xyz"[..])]
    );
    assert!(dict_raw_entries(b"li1ee").is_err());
}

pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..6),
                inner,
                0..6
            )
            .prop_map(Value::Dict),
        ]
    })
}

proptest! {
    #[test]
    fn emit_then_parse_is_identity(v in arb_value()) {
        let bytes = emit(&v);
        prop_assert_eq!(parse_strict(&bytes), Ok(v.clone()));
        prop_assert_eq!(parse(&bytes), Ok(v));
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(v) = parse_strict(&bytes) {
            prop_assert_eq!(emit(&v), bytes.clone());
        }
        let _ = parse(&bytes);
    }
}
