//! Hand-built vectors from the RFC 6886 layouts, and property tests.

use super::*;
use proptest::prelude::*;

#[test]
fn external_address_request_bytes() {
    assert_eq!(Request::ExternalAddress.emit(), [0, 0]);
    assert_eq!(Request::parse(&[0, 0]), Ok(Request::ExternalAddress));
}

#[test]
fn map_request_bytes() {
    let req = Request::Map {
        protocol: Protocol::Tcp,
        internal_port: 0x1234,
        suggested_external_port: 0xabcd,
        lifetime_secs: 7200,
    };
    let bytes = [0, 2, 0, 0, 0x12, 0x34, 0xab, 0xcd, 0, 0, 0x1c, 0x20];
    assert_eq!(req.emit(), bytes);
    assert_eq!(Request::parse(&bytes), Ok(req));
    let udp = [0, 1, 0, 0, 0, 80, 0, 0, 0, 0, 0, 0];
    assert_eq!(Request::parse(&udp), Ok(Request::delete(Protocol::Udp, 80)));
}

#[test]
fn request_errors() {
    assert_eq!(
        Request::parse(&[]),
        Err(Error::Truncated { len: 0, needed: 2 })
    );
    assert_eq!(Request::parse(&[2, 1]), Err(Error::UnsupportedVersion(2)));
    assert_eq!(Request::parse(&[0, 3]), Err(Error::UnknownOpcode(3)));
    assert_eq!(Request::parse(&[0, 128]), Err(Error::NotARequest(128)));
    assert!(matches!(
        Request::parse(&[0, 0, 0]),
        Err(Error::BadLength { opcode: 0, .. })
    ));
    assert!(matches!(
        Request::parse(&[0, 1, 0, 0, 0]),
        Err(Error::Truncated { needed: 12, .. })
    ));
    assert_eq!(
        Request::parse(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(Error::ReservedNotZero(1))
    );
}

#[test]
fn external_address_response_bytes() {
    let bytes = [0, 128, 0, 0, 0, 0, 0x01, 0x00, 203, 0, 113, 10];
    let resp = Response::parse(&bytes).unwrap();
    assert_eq!(
        resp,
        Response::ExternalAddress {
            result: ResultCode::Success,
            epoch_secs: 256,
            address: Ipv4Addr::new(203, 0, 113, 10),
        }
    );
    assert_eq!(resp.emit(), bytes);
    assert!(resp.answers(&Request::ExternalAddress));
}

#[test]
fn map_response_bytes() {
    // UDP (129), success, epoch 10, 5000 -> 6000, 3600 s.
    let bytes = [
        0, 129, 0, 0, 0, 0, 0, 10, 0x13, 0x88, 0x17, 0x70, 0, 0, 0x0e, 0x10,
    ];
    let resp = Response::parse(&bytes).unwrap();
    assert_eq!(
        resp,
        Response::Map {
            protocol: Protocol::Udp,
            result: ResultCode::Success,
            epoch_secs: 10,
            internal_port: 5000,
            external_port: 6000,
            lifetime_secs: 3600,
        }
    );
    assert_eq!(resp.emit(), bytes);
    let req = Request::Map {
        protocol: Protocol::Udp,
        internal_port: 5000,
        suggested_external_port: 5000,
        lifetime_secs: 7200,
    };
    assert!(resp.answers(&req));
    assert!(!resp.answers(&Request::delete(Protocol::Tcp, 5000)));
    assert!(!resp.answers(&Request::ExternalAddress));
}

#[test]
fn short_error_response_bytes() {
    // "Unsupported version" answer to a PCP MAP (opcode 1): 128 + 1.
    let bytes = [0, 129, 0, 1, 0, 0, 0, 42];
    let resp = Response::parse(&bytes).unwrap();
    assert_eq!(
        resp,
        Response::Short {
            request_opcode: 1,
            result: ResultCode::UnsupportedVersion,
            epoch_secs: 42,
        }
    );
    assert_eq!(resp.emit(), bytes);
    assert_eq!(
        resp.result().advice(),
        ResultCode::UnsupportedVersion.advice()
    );
    // Unsupported opcode 9 answered in short form.
    let resp = Response::parse(&[0, 137, 0, 5, 0, 0, 0, 1]).unwrap();
    assert_eq!(resp.result(), ResultCode::UnsupportedOpcode);
}

#[test]
fn response_errors() {
    assert!(matches!(
        Response::parse(&[0]),
        Err(Error::Truncated { .. })
    ));
    assert_eq!(Response::parse(&[0, 1]), Err(Error::NotAResponse(1)));
    assert_eq!(
        Response::parse(&[2, 129, 0, 0, 0, 0, 0, 0]),
        Err(Error::UnsupportedVersion(2))
    );
    assert!(matches!(
        Response::parse(&[0, 128, 0, 0, 0, 0, 0]),
        Err(Error::Truncated { needed: 8, .. })
    ));
    assert!(matches!(
        Response::parse(&[0, 128, 0, 0, 0, 0, 0, 0, 1, 2]),
        Err(Error::BadLength { expected: 12, .. })
    ));
    assert!(matches!(
        Response::parse(&[0, 128, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]),
        Err(Error::BadLength { expected: 12, .. })
    ));
    assert!(matches!(
        Response::parse(&[0, 130, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
        Err(Error::BadLength { expected: 16, .. })
    ));
    assert!(matches!(
        Response::parse(&[0, 140, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
        Err(Error::BadLength { expected: 8, .. })
    ));
}

#[test]
fn result_codes() {
    for v in 0..=7u16 {
        let code = ResultCode::from_u16(v);
        assert_eq!(code.to_u16(), v);
        assert!(!code.advice().is_empty());
    }
    assert!(ResultCode::Success.is_success());
    assert!(!ResultCode::NotAuthorized.is_success());
    assert_eq!(ResultCode::from_u16(9), ResultCode::Unknown(9));
    assert!(ResultCode::NotAuthorized.to_string().contains("result 2"));
}

#[test]
fn retransmit_schedule_doubles_from_250ms() {
    assert_eq!(RETRANSMIT_SCHEDULE.len(), 9);
    assert_eq!(RETRANSMIT_SCHEDULE[0], Duration::from_millis(250));
    assert_eq!(RETRANSMIT_SCHEDULE[8], Duration::from_secs(64));
    for w in RETRANSMIT_SCHEDULE.windows(2) {
        assert_eq!(w[1], w[0] * 2);
    }
    let total: Duration = RETRANSMIT_SCHEDULE.iter().sum();
    assert_eq!(total, Duration::from_millis(127_750));
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::ExternalAddress),
        (protocol(), any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(p, i, e, l)| {
            Request::Map {
                protocol: p,
                internal_port: i,
                suggested_external_port: e,
                lifetime_secs: l,
            }
        }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let result = any::<u16>().prop_map(ResultCode::from_u16);
    prop_oneof![
        (result.clone(), any::<u32>(), any::<[u8; 4]>()).prop_map(|(result, e, a)| {
            Response::ExternalAddress {
                result,
                epoch_secs: e,
                address: Ipv4Addr::from(a),
            }
        }),
        (
            protocol(),
            result.clone(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(|(protocol, result, epoch_secs, i, e, l)| Response::Map {
                protocol,
                result,
                epoch_secs,
                internal_port: i,
                external_port: e,
                lifetime_secs: l,
            }),
        (0u8..128, result, any::<u32>()).prop_map(|(op, result, epoch_secs)| {
            Response::Short {
                request_opcode: op,
                result,
                epoch_secs,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn request_round_trip(req in request()) {
        prop_assert_eq!(Request::parse(&req.emit()), Ok(req));
    }

    #[test]
    fn response_round_trip(resp in response()) {
        prop_assert_eq!(Response::parse(&resp.emit()), Ok(resp));
    }

    #[test]
    fn parse_never_panics_and_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Ok(req) = Request::parse(&bytes) {
            prop_assert_eq!(req.emit(), bytes.clone());
        }
        if let Ok(resp) = Response::parse(&bytes) {
            prop_assert_eq!(resp.emit(), bytes);
        }
    }
}
