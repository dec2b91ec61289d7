//! Fuzzes the NAT-PMP and PCP decoders (requests and responses). None may
//! panic. NAT-PMP is strict, so whatever parses must emit back to the same
//! bytes. PCP ignores reserved bits and option padding on receipt (RFC 6887),
//! so what parses must emit to a message of the same length that parses back
//! to the same value and is itself canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natkit_portmap::{natpmp, pcp};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = natpmp::Request::parse(data) {
        assert_eq!(req.emit(), data, "NAT-PMP request is not canonical");
    }
    if let Ok(resp) = natpmp::Response::parse(data) {
        assert_eq!(resp.emit(), data, "NAT-PMP response is not canonical");
    }
    if let Ok(req) = pcp::Request::parse(data) {
        let bytes = req.emit().expect("a parsed PCP request emits");
        assert_eq!(bytes.len(), data.len());
        let again = pcp::Request::parse(&bytes).expect("an emitted PCP request parses");
        assert_eq!(again, req);
        assert_eq!(again.emit().as_ref(), Ok(&bytes));
    }
    if let Ok(resp) = pcp::Response::parse(data) {
        let bytes = resp.emit().expect("a parsed PCP response emits");
        assert_eq!(bytes.len(), data.len());
        let again = pcp::Response::parse(&bytes).expect("an emitted PCP response parses");
        assert_eq!(again, resp);
        assert_eq!(again.emit().as_ref(), Ok(&bytes));
    }
});
