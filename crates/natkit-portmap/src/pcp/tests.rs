//! Hand-built vectors from the RFC 6887 layouts, and property tests.

use super::*;
use proptest::prelude::*;

const NONCE: Nonce = Nonce([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

fn map_request() -> Request {
    Request::map(
        NONCE,
        Protocol::Udp,
        "10.0.1.2:5000".parse().unwrap(),
        Some("203.0.113.10:6000".parse().unwrap()),
        7200,
    )
}

/// MAP request: header, then MAP data.
fn map_request_bytes() -> Vec<u8> {
    let mut b = vec![2, 1, 0, 0, 0, 0, 0x1c, 0x20];
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2]);
    b.extend_from_slice(&NONCE.0);
    b.extend_from_slice(&[17, 0, 0, 0, 0x13, 0x88, 0x17, 0x70]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 10]);
    b
}

#[test]
fn map_request_vector() {
    let bytes = map_request_bytes();
    assert_eq!(bytes.len(), HEADER_BYTES + MAP_DATA_BYTES);
    assert_eq!(map_request().emit().unwrap(), bytes);
    assert_eq!(Request::parse(&bytes).unwrap(), map_request());
}

#[test]
fn map_request_without_suggestion_and_delete() {
    let req = Request::map(
        NONCE,
        Protocol::Tcp,
        "10.0.1.2:5000".parse().unwrap(),
        None,
        3600,
    );
    let bytes = req.emit().unwrap();
    // Suggested external address ::ffff:0.0.0.0, port 0.
    assert_eq!(bytes[HEADER_BYTES + 12], 6);
    assert_eq!(&bytes[HEADER_BYTES + 18..HEADER_BYTES + 20], &[0, 0]);
    assert_eq!(
        &bytes[HEADER_BYTES + 20..],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
    );
    let del = req.to_delete();
    assert_eq!(del.lifetime_secs, 0);
    assert_eq!(del.op, req.op);
}

#[test]
fn map_response_vector() {
    // Success, lifetime 3600, epoch 1000, assigned 203.0.113.10:6001, with
    // an unknown optional option (code 200, 2 data bytes, 2 padding bytes).
    let mut b = vec![2, 0x81, 0, 0, 0, 0, 0x0e, 0x10, 0, 0, 0x03, 0xe8];
    b.extend_from_slice(&[0; 12]);
    b.extend_from_slice(&NONCE.0);
    b.extend_from_slice(&[17, 0, 0, 0, 0x13, 0x88, 0x17, 0x71]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 10]);
    b.extend_from_slice(&[200, 0, 0, 2, 0xaa, 0xbb, 0, 0]);
    let resp = Response::parse(&b).unwrap();
    assert_eq!(resp.result, ResultCode::Success);
    assert_eq!(resp.lifetime_secs, 3600);
    assert_eq!(resp.epoch_secs, 1000);
    let map = resp.op.map().unwrap();
    assert_eq!(
        map.external_v4(),
        Some("203.0.113.10:6001".parse().unwrap())
    );
    assert_eq!(
        resp.options,
        vec![PcpOption::Unknown {
            code: 200,
            data: vec![0xaa, 0xbb]
        }]
    );
    assert_eq!(resp.emit().unwrap(), b);
    assert_eq!(resp.check_answers(&map_request()), Ok(()));
}

#[test]
fn reserved_bits_are_ignored() {
    let mut b = map_request_bytes();
    b[2] = 0xff; // request reserved
    b[HEADER_BYTES + 13] = 0xff; // MAP reserved
    let req = Request::parse(&b).unwrap();
    assert_eq!(req, map_request());
    assert_eq!(req.emit().unwrap(), map_request_bytes());
}

#[test]
fn announce_vectors() {
    let req = Request::announce("10.0.1.2".parse().unwrap());
    let bytes = req.emit().unwrap();
    assert_eq!(bytes.len(), HEADER_BYTES);
    assert_eq!(&bytes[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(Request::parse(&bytes).unwrap(), req);

    let mut b = vec![2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    b.extend_from_slice(&[0; 12]);
    let resp = Response::parse(&b).unwrap();
    assert_eq!(resp.op, OpData::Announce);
    assert_eq!(resp.epoch_secs, 5);
    assert_eq!(resp.check_answers(&req), Ok(()));
    assert_eq!(resp.emit().unwrap(), b);
}

#[test]
fn header_only_error_response() {
    // NOT_AUTHORIZED for a MAP, header only, error valid for 1800 s.
    let mut b = vec![2, 0x81, 0, 2, 0, 0, 0x07, 0x08, 0, 0, 0, 9];
    b.extend_from_slice(&[0; 12]);
    let resp = Response::parse(&b).unwrap();
    assert_eq!(resp.result, ResultCode::NotAuthorized);
    assert_eq!(
        resp.op,
        OpData::Other {
            opcode: OP_MAP,
            data: vec![]
        }
    );
    assert_eq!(
        resp.check_answers(&map_request()),
        Err(Mismatch::MissingMapData)
    );
    assert_eq!(resp.emit().unwrap(), b);
}

#[test]
fn mismatches() {
    let req = map_request();
    let good = *req.op.map().unwrap();
    let answer = |m: MapData| Response {
        result: ResultCode::Success,
        lifetime_secs: 7200,
        epoch_secs: 1,
        op: OpData::Map(m),
        options: vec![],
    };
    assert_eq!(answer(good).check_answers(&req), Ok(()));
    let mut m = good;
    m.nonce.0[0] ^= 1;
    assert_eq!(answer(m).check_answers(&req), Err(Mismatch::Nonce));
    let mut m = good;
    m.protocol = 6;
    assert!(matches!(
        answer(m).check_answers(&req),
        Err(Mismatch::Protocol { .. })
    ));
    let mut m = good;
    m.internal_port = 1;
    assert!(matches!(
        answer(m).check_answers(&req),
        Err(Mismatch::InternalPort { .. })
    ));
    let mut resp = answer(good);
    resp.op = OpData::Announce;
    assert_eq!(
        resp.check_answers(&req),
        Err(Mismatch::Opcode {
            request: 1,
            response: 0
        })
    );
}

#[test]
fn parse_errors() {
    assert_eq!(
        Request::parse(&[]),
        Err(Error::Truncated { what: "header" })
    );
    // A NAT-PMP answer to a PCP request.
    assert_eq!(
        Response::parse(&[0, 129, 0, 1, 0, 0, 0, 7]),
        Err(Error::UnsupportedVersion { version: 0 })
    );
    assert_eq!(
        Response::parse(&[2, 0x81, 0, 0]),
        Err(Error::Truncated { what: "header" })
    );
    let mut b = map_request_bytes();
    assert_eq!(Response::parse(&b), Err(Error::NotAResponse));
    b.push(0);
    assert_eq!(Request::parse(&b), Err(Error::NotMultipleOf4 { len: 61 }));
    b.resize(1104, 0);
    assert_eq!(Request::parse(&b), Err(Error::TooLong { len: 1104 }));
    let mut resp = vec![2, 0x80];
    resp.resize(24, 0);
    assert_eq!(Request::parse(&resp), Err(Error::NotARequest));
    // MAP followed by an option whose length runs past the end.
    let mut b = map_request_bytes();
    b.extend_from_slice(&[200, 0, 0, 8, 0, 0, 0, 0]);
    assert!(matches!(
        Request::parse(&b),
        Err(Error::MalformedOption { code: 200, .. })
    ));
}

#[test]
fn emit_rejects_unrepresentable() {
    let mut req = map_request();
    req.options = vec![
        PcpOption::Unknown {
            code: 200,
            data: vec![0; 1000]
        };
        2
    ];
    assert!(matches!(req.emit(), Err(Error::TooLong { .. })));
    req.options = vec![];
    req.op = OpData::Other {
        opcode: OP_MAP,
        data: vec![0; 36],
    };
    assert!(matches!(req.emit(), Err(Error::Unrepresentable(_))));
    req.op = OpData::Other {
        opcode: OP_PEER,
        data: vec![0; 3],
    };
    assert!(matches!(req.emit(), Err(Error::Unrepresentable(_))));
    req.op = OpData::Other {
        opcode: 0x90,
        data: vec![],
    };
    assert!(matches!(req.emit(), Err(Error::Unrepresentable(_))));
}

#[test]
fn retransmit_timers() {
    assert_eq!(retransmit_timeout(None, 0.0), Duration::from_secs(3));
    assert_eq!(
        retransmit_timeout(Some(Duration::from_secs(3)), 0.0),
        Duration::from_secs(6)
    );
    assert_eq!(
        retransmit_timeout(Some(Duration::from_secs(768)), 0.0),
        Duration::from_secs(1024)
    );
    assert_eq!(
        retransmit_timeout(Some(Duration::MAX), 0.1),
        Duration::from_secs(1024).mul_f64(1.1)
    );
    assert_eq!(
        retransmit_timeout(None, 5.0),
        Duration::from_secs(3).mul_f64(1.1)
    );
    assert_eq!(retransmit_timeout(None, f64::NAN), Duration::from_secs(3));
    assert_eq!(
        retransmit_timeout(None, -1.0),
        Duration::from_secs(3).mul_f64(0.9)
    );
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> + Clone {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
        any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_ipv6_mapped()),
    ]
}

fn option() -> impl Strategy<Value = PcpOption> + Clone {
    prop_oneof![
        ipv6().prop_map(|internal_ip| PcpOption::ThirdParty { internal_ip }),
        Just(PcpOption::PreferFailure),
        (0u8..=128, any::<u16>(), ipv6()).prop_map(|(prefix_len, remote_port, remote_ip)| {
            PcpOption::Filter {
                prefix_len,
                remote_port,
                remote_ip,
            }
        }),
        (
            any::<u8>().prop_filter("unknown code", |c| !(1..=3).contains(c)),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(code, data)| PcpOption::Unknown { code, data }),
    ]
}

fn map_data() -> impl Strategy<Value = MapData> {
    (
        any::<[u8; 12]>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        ipv6(),
    )
        .prop_map(
            |(n, protocol, internal_port, external_port, external_ip)| MapData {
                nonce: Nonce(n),
                protocol,
                internal_port,
                external_port,
                external_ip,
            },
        )
}

/// Opcode data with options that go with it.
fn op_and_options() -> impl Strategy<Value = (OpData, Vec<PcpOption>)> {
    let opts = proptest::collection::vec(option(), 0..6);
    prop_oneof![
        opts.clone().prop_map(|o| (OpData::Announce, o)),
        (map_data(), opts).prop_map(|(m, o)| (OpData::Map(m), o)),
        (2u8..128, proptest::collection::vec(any::<[u8; 4]>(), 0..20)).prop_map(|(opcode, d)| {
            (
                OpData::Other {
                    opcode,
                    data: d.concat(),
                },
                vec![],
            )
        }),
        proptest::collection::vec(any::<[u8; 4]>(), 0..9).prop_map(|d| (
            OpData::Other {
                opcode: OP_MAP,
                data: d.concat(),
            },
            vec![]
        )),
    ]
}

proptest! {
    #[test]
    fn request_round_trip(lifetime in any::<u32>(), ip in ipv6(), (op, options) in op_and_options()) {
        let req = Request { lifetime_secs: lifetime, client_ip: ip, op, options };
        let bytes = req.emit().unwrap();
        prop_assert!(bytes.len().is_multiple_of(4) && bytes.len() <= MAX_MESSAGE_BYTES);
        prop_assert_eq!(Request::parse(&bytes), Ok(req));
    }

    #[test]
    fn response_round_trip(
        result in any::<u8>(),
        lifetime in any::<u32>(),
        epoch in any::<u32>(),
        (op, options) in op_and_options(),
    ) {
        let resp = Response {
            result: ResultCode::from_u8(result),
            lifetime_secs: lifetime,
            epoch_secs: epoch,
            op,
            options,
        };
        let bytes = resp.emit().unwrap();
        prop_assert_eq!(Response::parse(&bytes), Ok(resp));
    }

    #[test]
    fn parse_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), r in any::<bool>()) {
        if let Some(b) = bytes.first_mut() { *b = VERSION; }
        if r && let Some(b) = bytes.get_mut(1) { *b |= RESPONSE_BIT; }
        if let Ok(req) = Request::parse(&bytes) {
            let again = req.emit().unwrap();
            prop_assert_eq!(again.len(), bytes.len());
            prop_assert_eq!(Request::parse(&again), Ok(req));
        }
        if let Ok(resp) = Response::parse(&bytes) {
            let again = resp.emit().unwrap();
            prop_assert_eq!(again.len(), bytes.len());
            prop_assert_eq!(Response::parse(&again), Ok(resp));
        }
    }
}
