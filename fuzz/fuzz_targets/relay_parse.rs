//! Fuzzes the relay protocol's decoders: control lines (requests and replies) and the
//! circuit preface. None may panic; whatever parses emits to a line that parses back to the
//! same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natkit_relay::wire;

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_preface(data);
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = wire::parse_request(line) {
        let again = wire::parse_request(&wire::emit_request(&r)).expect("an emitted request parses");
        assert_eq!(again, r);
    }
    if let Ok(r) = wire::parse_reply(line) {
        let again = wire::parse_reply(&wire::emit_reply(&r)).expect("an emitted reply parses");
        assert_eq!(again, r);
    }
});
