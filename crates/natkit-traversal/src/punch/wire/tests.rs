use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn connect_has_the_documented_layout() {
    let msg = Message::Connect {
        id: 0x0102_0304_0506_0708,
        attempt: 1,
        addrs: vec![sa("203.0.113.10:50500"), sa("[2001:db8::1]:443")],
    };
    let bytes = msg.emit().unwrap();
    let mut want = vec![1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2];
    want.extend_from_slice(&[4, 203, 0, 113, 10, 0xc5, 0x44]);
    want.extend_from_slice(&[
        6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb,
    ]);
    assert_eq!(bytes, want);
    assert_eq!(Message::parse(&bytes).unwrap(), msg);
}

#[test]
fn sync_and_cancel_are_short() {
    let sync = Message::Sync { id: 7, attempt: 2 };
    assert_eq!(sync.emit().unwrap(), vec![1, 3, 0, 0, 0, 0, 0, 0, 0, 7, 2]);
    let cancel = Message::Cancel {
        id: 7,
        attempt: 3,
        reason: CancelReason::Refused,
    };
    assert_eq!(
        cancel.emit().unwrap(),
        vec![1, 4, 0, 0, 0, 0, 0, 0, 0, 7, 3, 3]
    );
}

#[test]
fn reverse_is_type_5_with_addresses() {
    let msg = Message::Reverse {
        id: 9,
        attempt: 1,
        addrs: vec![sa("203.0.113.10:50500")],
    };
    let bytes = msg.emit().unwrap();
    assert_eq!(
        bytes,
        vec![
            1, 5, 0, 0, 0, 0, 0, 0, 0, 9, 1, 1, 4, 203, 0, 113, 10, 0xc5, 0x44
        ]
    );
    assert_eq!(Message::parse(&bytes).unwrap(), msg);
    assert_eq!(msg.kind(), MessageType::Reverse);
}

#[test]
fn a_signal_is_the_reply_via_list_then_the_message() {
    let sig = Signal {
        reply_via: vec![sa("203.0.113.100:4000")],
        message: Message::Sync { id: 7, attempt: 2 },
    };
    let bytes = sig.emit().unwrap();
    assert_eq!(
        bytes,
        vec![
            1, 4, 203, 0, 113, 100, 0x0f, 0xa0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 7, 2
        ]
    );
    assert_eq!(Signal::parse(&bytes).unwrap(), sig);
    assert_eq!(Signal::parse(&[5]), Err(WireError::TooManyVia(5)));
    assert_eq!(
        Signal::parse(&[0]),
        Err(WireError::Truncated { field: "version" })
    );
    let five = Signal {
        reply_via: vec![sa("203.0.113.100:4000"); 5],
        message: Message::Sync { id: 7, attempt: 2 },
    };
    assert_eq!(five.emit(), Err(WireError::TooManyVia(5)));
}

#[test]
fn the_largest_message_fits_a_rendezvous_payload() {
    let addrs = (1..=8)
        .map(|p| SocketAddr::new(IpAddr::from([0x20; 16]), p))
        .collect();
    let msg = Message::ConnectReply {
        id: u64::MAX,
        attempt: 3,
        addrs,
    };
    let len = msg.emit().unwrap().len();
    assert_eq!(len, 164);
    assert!(len <= MAX_MESSAGE_BYTES);
}

#[test]
fn every_error_is_typed() {
    let good = Message::Sync { id: 1, attempt: 1 }.emit().unwrap();
    assert_eq!(
        Message::parse(&[]),
        Err(WireError::Truncated { field: "version" })
    );
    assert_eq!(Message::parse(&[2]), Err(WireError::UnknownVersion(2)));
    assert_eq!(Message::parse(&[1, 9]), Err(WireError::UnknownType(9)));
    assert_eq!(
        Message::parse(&good[..5]),
        Err(WireError::Truncated {
            field: "correlation id"
        })
    );
    let mut zero = good.clone();
    zero[10] = 0;
    assert_eq!(Message::parse(&zero), Err(WireError::ZeroAttempt));
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(Message::parse(&trailing), Err(WireError::TrailingBytes(1)));
    assert!(matches!(
        Message::parse(&[0; 600]),
        Err(WireError::TooLong { len: 600, max: 512 })
    ));

    let header = [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    let with = |body: &[u8]| [&header[..], body].concat();
    assert_eq!(Message::parse(&with(&[9])), Err(WireError::TooManyAddrs(9)));
    assert_eq!(
        Message::parse(&with(&[1, 5])),
        Err(WireError::UnknownFamily(5))
    );
    assert_eq!(
        Message::parse(&with(&[1, 4, 1, 2])),
        Err(WireError::Truncated {
            field: "IPv4 address"
        })
    );
    assert_eq!(
        Message::parse(&with(&[1, 4, 1, 2, 3, 4, 0, 0])),
        Err(WireError::ZeroPort)
    );
    let mut cancel = header;
    cancel[1] = 4;
    assert_eq!(
        Message::parse(&[&cancel[..], &[0]].concat()),
        Err(WireError::UnknownCancelReason(0))
    );
    assert_eq!(
        Message::parse(&cancel),
        Err(WireError::Truncated {
            field: "cancel reason"
        })
    );
}

#[test]
fn emit_refuses_what_parse_would_refuse() {
    let zero_attempt = Message::Sync { id: 1, attempt: 0 };
    assert_eq!(zero_attempt.emit(), Err(WireError::ZeroAttempt));
    let zero_port = Message::Connect {
        id: 1,
        attempt: 1,
        addrs: vec![sa("203.0.113.1:0")],
    };
    assert_eq!(zero_port.emit(), Err(WireError::ZeroPort));
    let many = Message::Connect {
        id: 1,
        attempt: 1,
        addrs: vec![sa("203.0.113.1:1"); 9],
    };
    assert_eq!(many.emit(), Err(WireError::TooManyAddrs(9)));
    let lots = Message::Connect {
        id: 1,
        attempt: 1,
        addrs: vec![sa("203.0.113.1:1"); 300],
    };
    assert_eq!(lots.emit(), Err(WireError::TooManyAddrs(300)));
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ];
    (ip, 1u16..).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn reason() -> impl Strategy<Value = CancelReason> {
    prop_oneof![
        Just(CancelReason::Timeout),
        Just(CancelReason::AttemptsExhausted),
        Just(CancelReason::Refused),
        Just(CancelReason::Connected),
        Just(CancelReason::Aborted),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let addrs = || proptest::collection::vec(addr(), 0..=MAX_PUNCH_ADDRS);
    let attempt = 1u8..;
    prop_oneof![
        (any::<u64>(), attempt.clone(), addrs())
            .prop_map(|(id, attempt, addrs)| Message::Connect { id, attempt, addrs }),
        (any::<u64>(), attempt.clone(), addrs())
            .prop_map(|(id, attempt, addrs)| Message::ConnectReply { id, attempt, addrs }),
        (any::<u64>(), attempt.clone()).prop_map(|(id, attempt)| Message::Sync { id, attempt }),
        (any::<u64>(), attempt.clone(), reason()).prop_map(|(id, attempt, reason)| {
            Message::Cancel {
                id,
                attempt,
                reason,
            }
        }),
        (any::<u64>(), attempt, addrs()).prop_map(|(id, attempt, addrs)| Message::Reverse {
            id,
            attempt,
            addrs
        }),
    ]
}

proptest! {
    #[test]
    fn parse_inverts_emit(msg in message()) {
        let bytes = msg.emit().unwrap();
        prop_assert!(bytes.len() <= MAX_MESSAGE_BYTES);
        prop_assert_eq!(Message::parse(&bytes).unwrap(), msg);
    }

    #[test]
    fn parse_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = Message::parse(&bytes);
        let _ = Signal::parse(&bytes);
    }

    #[test]
    fn signal_parse_inverts_emit(
        msg in message(),
        reply_via in proptest::collection::vec(addr(), 0..=MAX_REPLY_VIA),
    ) {
        let sig = Signal { reply_via, message: msg };
        let bytes = sig.emit().unwrap();
        prop_assert_eq!(Signal::parse(&bytes).unwrap(), sig);
    }

    #[test]
    fn parse_never_panics_on_damaged_messages(
        msg in message(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = msg.emit().unwrap();
        for (at, x) in flips {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        let _ = Message::parse(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        if let Ok(parsed) = Message::parse(&bytes) {
            // Whatever parses emits back to the same bytes.
            prop_assert_eq!(parsed.emit().unwrap(), bytes);
        }
    }
}
