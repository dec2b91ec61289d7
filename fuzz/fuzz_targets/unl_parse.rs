//! Fuzzes the UNL decoders: text and binary. Neither may panic, and whatever
//! they accept must emit back to the same input (canonical form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natkit_unl::Unl;

fuzz_target!(|data: &[u8]| {
    if let Ok(unl) = Unl::decode(data) {
        assert_eq!(unl.encode(), data, "binary form is not canonical");
        let text = unl.emit();
        assert_eq!(Unl::parse(&text).as_ref(), Ok(&unl));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(unl) = Unl::parse(text) {
            assert_eq!(unl.emit(), text.trim().to_ascii_lowercase());
        }
    }
});
