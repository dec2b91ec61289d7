//! Fuzzes the DHT wire decoders: bencode (lenient and strict) and KRPC. None may panic; a
//! strictly parsed value must re-emit to the input byte for byte; and whatever parses as KRPC
//! must re-emit to a datagram that parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natkit_dht::{bencode, krpc};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::parse_strict(data) {
        assert_eq!(bencode::emit(&v), data, "strict bencode is not canonical");
    }
    if let Ok(v) = bencode::parse(data) {
        assert_eq!(bencode::parse_strict(&bencode::emit(&v)), Ok(v));
    }
    match krpc::parse(data) {
        Ok(m) => {
            let again = krpc::parse(&m.emit());
            assert_eq!(again.as_ref(), Ok(&m), "KRPC round trip changed the message");
        }
        Err(e) => {
            if let Some(reply) = e.reply() {
                assert_eq!(krpc::parse(&reply.emit()), Ok(reply));
            }
        }
    }
});
