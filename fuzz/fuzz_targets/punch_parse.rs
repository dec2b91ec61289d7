//! Fuzzes the hole-punch message decoder and the signal envelope around it
//! (reply-via addresses, then a message). Neither may panic, whatever they
//! accept must emit back to the same bytes (canonical form), and a punch
//! responder fed the message must not panic either.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use natkit_traversal::punch::{Message, Punch, PunchConfig, Signal};

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = Signal::parse(data) {
        assert_eq!(sig.emit().as_deref(), Ok(data), "signal is not canonical");
    }
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    assert_eq!(msg.emit().as_deref(), Ok(data), "punch message is not canonical");
    let ours = ["203.0.113.20:50500".parse().unwrap()];
    let now = Instant::now();
    if let Ok(mut p) = Punch::respond(&msg, &ours, PunchConfig::default(), now) {
        let _ = p.handle_message(&msg, now);
        while p.poll_output().is_some() {}
    }
});
