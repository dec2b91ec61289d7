//! KRPC tests: the BEP 5 examples byte for byte, malformed input, and a round-trip property.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::prelude::*;

use super::*;
use crate::bencode;
use crate::id::{NodeInfo, NodeInfo6};

fn id(s: &[u8; 20]) -> Id {
    Id(*s)
}

/// Parses `bytes`, checks that emitting gives the same bytes back, and returns the message.
fn round_trip(bytes: &[u8]) -> Message {
    let m = parse(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)));
    assert_eq!(
        String::from_utf8_lossy(&m.emit()),
        String::from_utf8_lossy(bytes)
    );
    m
}

#[test]
fn bep5_examples() {
    let m = round_trip(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe");
    assert_eq!(m.transaction_id, b"aa");
    assert_eq!(
        m.kind,
        Kind::Query(Query::Ping {
            id: id(b"abcdefghij0123456789")
        })
    );

    let m = round_trip(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re");
    assert_eq!(
        m.kind,
        Kind::Response(Response::new(id(b"mnopqrstuvwxyz123456")))
    );

    let m = round_trip(b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee");
    assert_eq!(
        m.kind,
        Kind::Error(ErrorMessage::new(ERROR_GENERIC, "A Generic Error Ocurred"))
    );

    let m = round_trip(
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
    );
    assert_eq!(
        m.kind,
        Kind::Query(Query::FindNode {
            id: id(b"abcdefghij0123456789"),
            target: id(b"mnopqrstuvwxyz123456"),
        })
    );

    round_trip(
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
    );

    let m = round_trip(
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
    );
    let Kind::Response(r) = m.kind else {
        panic!("not a response")
    };
    assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
    assert_eq!(
        r.values,
        Some(vec![
            "97.120.106.101:11893".parse().unwrap(),
            "105.100.104.116:28269".parse().unwrap(),
        ])
    );

    let m = round_trip(
        b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
    );
    assert_eq!(
        m.kind,
        Kind::Query(Query::AnnouncePeer {
            id: id(b"abcdefghij0123456789"),
            info_hash: id(b"mnopqrstuvwxyz123456"),
            port: 6881,
            token: b"aoeusnth".to_vec(),
            implied_port: true,
        })
    );
}

#[test]
fn top_level_extras() {
    // ro (BEP 43), ip (BEP 42), v (version), any transaction id length.
    let bytes = b"d1:ad2:id20:abcdefghij0123456789e2:ip6:\x01\x02\x03\x04\x1a\xe11:q4:ping2:roi1e1:t7:1234567\
                  1:v4:NK011:y1:qe";
    let m = round_trip(bytes);
    assert!(m.read_only);
    assert_eq!(m.ip, Some("1.2.3.4:6881".parse().unwrap()));
    assert_eq!(m.version.as_deref(), Some(&b"NK01"[..]));
    assert_eq!(m.transaction_id, b"1234567");
}

#[test]
fn unsorted_and_unknown_keys_are_tolerated() {
    let m = parse(b"d1:y1:q1:t2:aa1:q4:ping1:ad2:id20:abcdefghij01234567895:extrai1eee").unwrap();
    assert_eq!(
        m.kind,
        Kind::Query(Query::Ping {
            id: id(b"abcdefghij0123456789")
        })
    );
    // Unknown response keys are kept, in `extra`.
    let m = round_trip(b"d1:rd2:id20:mnopqrstuvwxyz1234566:natkiti7ee1:t2:aa1:y1:re");
    let Kind::Response(r) = m.kind else {
        panic!("not a response")
    };
    assert_eq!(r.extra.get(&b"natkit"[..]), Some(&Value::Int(7)));
}

#[test]
fn unknown_methods_are_carried() {
    let m = round_trip(
        b"d1:ad2:id20:abcdefghij01234567893:msg5:helloe1:q10:natkit.msg1:t4:abcd1:y1:qe",
    );
    let Kind::Query(q) = &m.kind else {
        panic!("not a query")
    };
    assert_eq!(q.method(), b"natkit.msg");
    assert_eq!(q.sender_id(), Some(id(b"abcdefghij0123456789")));
    // No `a` at all: carried with empty args.
    let m = parse(b"d1:q3:foo1:t2:aa1:y1:qe").unwrap();
    assert_eq!(
        m.kind,
        Kind::Query(Query::Other {
            method: b"foo".to_vec(),
            args: Value::dict()
        })
    );
}

fn malformed_query(bytes: &[u8]) -> &'static str {
    match parse(bytes) {
        Err(e @ KrpcError::MalformedQuery { .. }) => {
            assert_eq!(e.transaction_id(), Some(&b"aa"[..]));
            let reply = e.reply().unwrap();
            assert_eq!(reply.transaction_id, b"aa");
            let Kind::Error(err) = reply.kind else {
                panic!("reply is not an error")
            };
            assert_eq!(err.code, ERROR_PROTOCOL);
            let KrpcError::MalformedQuery { reason, .. } = e else {
                unreachable!()
            };
            reason
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_queries_get_203() {
    assert!(malformed_query(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe").contains("a.id"));
    assert!(
        malformed_query(b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe")
            .contains("target")
    );
    assert!(malformed_query(b"d1:ai1e1:q4:ping1:t2:aa1:y1:qe").contains("`a`"));
    assert!(malformed_query(b"d1:qi1e1:t2:aa1:y1:qe").contains("`q`"));
    assert!(malformed_query(
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe"
    )
    .contains("port"));
    // A mutable put without seq is refused (libtorrent would store it as immutable).
    let no_seq = [
        &b"d1:ad2:id20:abcdefghij01234567891:k32:"[..],
        &[7u8; 32],
        b"3:sig64:",
        &[8u8; 64],
        b"5:token1:x1:vi1ee1:q3:put1:t2:aa1:y1:qe",
    ]
    .concat();
    assert!(malformed_query(&no_seq).contains("seq"));
    // A non-canonical `v` cannot be verified against its hash.
    assert!(
        malformed_query(
            b"d1:ad2:id20:abcdefghij01234567895:token1:x1:vd1:bi1e1:ai2eee1:q3:put1:t2:aa1:y1:qe"
        )
        .contains("canonical")
    );
}

#[test]
fn other_failures() {
    assert!(matches!(parse(b"i1e"), Err(KrpcError::NotADict)));
    assert!(matches!(parse(b"de"), Err(KrpcError::MissingTransactionId)));
    assert!(matches!(parse(b"d1:t"), Err(KrpcError::Bencode(_))));
    let e = parse(b"d1:t2:aa1:y1:xe").unwrap_err();
    assert_eq!(e.transaction_id(), Some(&b"aa"[..]));
    assert_eq!(e.reply(), None);
    assert!(matches!(
        parse(b"d1:rd2:id3:abce1:t2:aa1:y1:re"),
        Err(KrpcError::MalformedResponse { .. })
    ));
    assert!(matches!(
        parse(b"d1:rd2:id20:mnopqrstuvwxyz1234565:nodes3:abce1:t2:aa1:y1:re"),
        Err(KrpcError::MalformedResponse { .. })
    ));
    assert!(matches!(
        parse(b"d1:eli201ee1:t2:aa1:y1:ee"),
        Err(KrpcError::MalformedError { .. })
    ));
}

#[test]
fn put_and_get_round_trip() {
    let put = Message::query(
        *b"txid",
        Query::Put {
            id: id(b"abcdefghij0123456789"),
            token: b"tok".to_vec(),
            item: PutItem::Mutable {
                k: [1; 32],
                salt: Some(b"foobar".to_vec()),
                seq: 4,
                cas: Some(3),
                sig: [2; 64],
                v: Value::from("Hello world!"),
            },
        },
    );
    assert_eq!(parse(&put.emit()), Ok(put.clone()));
    let mut resp = Response::new(id(b"mnopqrstuvwxyz123456"));
    resp.v = Some(Value::List(vec![Value::Int(1), Value::from("x")]));
    resp.k = Some([3; 32]);
    resp.seq = Some(9);
    resp.sig = Some([4; 64]);
    resp.token = Some(b"t".to_vec());
    let mut m = Message::response(*b"txid", resp);
    m.ip = Some("[2001:db8::1]:6881".parse().unwrap());
    assert_eq!(parse(&m.emit()), Ok(m));
}

#[test]
fn doc_style_find_node() {
    let q = Message::query(
        *b"\x00\x00\x00\x01",
        Query::FindNode {
            id: Id([1; 20]),
            target: Id([2; 20]),
        },
    );
    let bytes = q.emit();
    assert_eq!(
        bencode::parse_strict(&bytes).map(|v| v.to_bytes()),
        Ok(bytes.clone())
    );
    assert_eq!(parse(&bytes), Ok(q));
}

fn arb_id() -> impl Strategy<Value = Id> {
    any::<[u8; 20]>().prop_map(Id)
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..8)
}

fn arb_v4() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
}

fn arb_v6() -> impl Strategy<Value = SocketAddrV6> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddrV6::new(ip.into(), p, 0, 0))
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        arb_v4().prop_map(SocketAddr::V4),
        arb_v6().prop_map(SocketAddr::V6)
    ]
}

fn arb_query() -> impl Strategy<Value = Query> {
    let v = crate::bencode::tests::arb_value;
    prop_oneof![
        arb_id().prop_map(|id| Query::Ping { id }),
        (arb_id(), arb_id()).prop_map(|(id, target)| Query::FindNode { id, target }),
        (arb_id(), arb_id()).prop_map(|(id, info_hash)| Query::GetPeers { id, info_hash }),
        (arb_id(), arb_id(), any::<u16>(), arb_bytes(), any::<bool>()).prop_map(
            |(id, info_hash, port, token, implied_port)| Query::AnnouncePeer {
                id,
                info_hash,
                port,
                token,
                implied_port
            }
        ),
        (arb_id(), arb_id(), any::<Option<i64>>()).prop_map(|(id, target, seq)| Query::Get {
            id,
            target,
            seq
        }),
        (arb_id(), arb_bytes(), v()).prop_map(|(id, token, v)| Query::Put {
            id,
            token,
            item: PutItem::Immutable { v }
        }),
        (
            arb_id(),
            arb_bytes(),
            (
                any::<[u8; 32]>(),
                proptest::option::of(arb_bytes()),
                any::<i64>()
            ),
            (any::<Option<i64>>(), any::<[u8; 32]>(), v())
        )
            .prop_map(|(id, token, (k, salt, seq), (cas, half, v))| Query::Put {
                id,
                token,
                item: PutItem::Mutable {
                    k,
                    salt,
                    seq,
                    cas,
                    sig: [half, half].concat().try_into().unwrap_or([0; 64]),
                    v
                }
            }),
        (
            "natkit\\.[a-z]{1,8}",
            proptest::collection::btree_map(arb_bytes(), v(), 0..4)
        )
            .prop_map(|(method, args)| Query::Other {
                method: method.into_bytes(),
                args: Value::Dict(args)
            }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let nodes = proptest::collection::vec(
        (arb_id(), arb_v4()).prop_map(|(id, addr)| NodeInfo { id, addr }),
        0..4,
    );
    let nodes6 = proptest::collection::vec(
        (arb_id(), arb_v6()).prop_map(|(id, addr)| NodeInfo6 { id, addr }),
        0..3,
    );
    let extra = proptest::collection::btree_map("x[a-z]{0,4}", any::<i64>(), 0..3);
    (
        arb_id(),
        (proptest::option::of(nodes), proptest::option::of(nodes6)),
        proptest::option::of(arb_bytes()),
        proptest::option::of(proptest::collection::vec(arb_addr(), 0..4)),
        proptest::option::of(crate::bencode::tests::arb_value()),
        (any::<Option<[u8; 32]>>(), any::<Option<i64>>(), extra),
    )
        .prop_map(
            |(id, (nodes, nodes6), token, values, v, (k, seq, extra))| Response {
                id,
                nodes,
                nodes6,
                token,
                values,
                v,
                k,
                seq,
                sig: k.map(|k| [k, k].concat().try_into().unwrap_or([0; 64])),
                extra: extra
                    .into_iter()
                    .map(|(key, n)| (key.into_bytes(), Value::Int(n)))
                    .collect::<BTreeMap<_, _>>(),
            },
        )
}

fn arb_message() -> impl Strategy<Value = Message> {
    let kind = prop_oneof![
        arb_query().prop_map(Kind::Query),
        arb_response().prop_map(Kind::Response),
        (any::<i64>(), arb_bytes())
            .prop_map(|(code, message)| Kind::Error(ErrorMessage { code, message })),
    ];
    (
        arb_bytes(),
        proptest::option::of(arb_bytes()),
        any::<bool>(),
        proptest::option::of(arb_addr()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=20)),
        kind,
    )
        .prop_map(
            |(transaction_id, version, read_only, ip, address_token, kind)| Message {
                transaction_id,
                version,
                read_only,
                ip,
                address_token,
                kind,
            },
        )
}

proptest! {
    #[test]
    fn emit_then_parse_is_identity(m in arb_message()) {
        let bytes = m.emit();
        prop_assert_eq!(parse(&bytes), Ok(m));
    }

    #[test]
    fn parse_never_panics_and_reparses(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        if let Ok(m) = parse(&bytes) {
            prop_assert_eq!(parse(&m.emit()), Ok(m));
        }
    }
}
