use std::net::{Ipv4Addr, SocketAddrV4};

use ed25519_dalek::SigningKey;

use super::*;
use crate::bep44::MutableItem;
use crate::krpc::{
    ERROR_CAS_MISMATCH, ERROR_INVALID_SIGNATURE, ERROR_SALT_TOO_BIG, ERROR_SEQ_TOO_LOW,
    ERROR_VALUE_TOO_BIG, Kind,
};
use crate::routing::{Contact, loopback_node};
use crate::storage::ITEM_TTL;

const ALICE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 4000));
const BOB: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000));

struct Fixture {
    server: Server,
    table: RoutingTable,
    now: Instant,
}

fn fixture() -> Fixture {
    let now = Instant::now();
    let own = Id([0x11; 20]);
    let mut table = RoutingTable::new(own, now);
    for i in 1..=20u8 {
        table.heard_from(
            loopback_node(Id([i.wrapping_mul(13); 20]), u16::from(i)),
            Contact::Response,
            now,
        );
    }
    Fixture {
        server: Server::new(own, [9; 20], now),
        table,
        now,
    }
}

impl Fixture {
    fn ask(&mut self, from: SocketAddr, q: Query) -> Message {
        let m = self
            .server
            .handle_query(from, b"tx01", &q, &self.table, self.now);
        assert_eq!(m.transaction_id, b"tx01");
        assert_eq!(
            m.ip,
            Some(from),
            "every answer carries the requester's address"
        );
        // What we send must parse back.
        assert_eq!(crate::krpc::parse(&m.emit()).as_ref(), Ok(&m));
        m
    }

    fn response(&mut self, from: SocketAddr, q: Query) -> Response {
        match self.ask(from, q).kind {
            Kind::Response(r) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn error_code(&mut self, from: SocketAddr, q: Query) -> i64 {
        match self.ask(from, q).kind {
            Kind::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn token(&mut self, from: SocketAddr, target: Id) -> Vec<u8> {
        self.response(
            from,
            Query::Get {
                id: Id([1; 20]),
                target,
                seq: None,
            },
        )
        .token
        .expect("get returns a token")
    }
}

#[test]
fn ping_and_find_node() {
    let mut f = fixture();
    let r = f.response(ALICE, Query::Ping { id: Id([1; 20]) });
    assert_eq!(r.id, f.server.id());
    let target = Id([0x42; 20]);
    let r = f.response(
        ALICE,
        Query::FindNode {
            id: Id([1; 20]),
            target,
        },
    );
    assert_eq!(r.nodes, Some(f.table.closest(&target, K, f.now)));
    assert_eq!(r.nodes.map(|n| n.len()), Some(K));
}

#[test]
fn announce_then_get_peers_with_ip_bound_tokens() {
    let mut f = fixture();
    let ih = Id([0x77; 20]);
    let r = f.response(
        ALICE,
        Query::GetPeers {
            id: Id([1; 20]),
            info_hash: ih,
        },
    );
    assert!(r.values.is_none());
    assert!(r.nodes.is_some());
    let token = r.token.expect("token");
    // Bob cannot use Alice's token.
    let announce = |token: Vec<u8>, implied_port| Query::AnnouncePeer {
        id: Id([1; 20]),
        info_hash: ih,
        port: 6881,
        token,
        implied_port,
    };
    assert_eq!(
        f.error_code(BOB, announce(token.clone(), false)),
        ERROR_PROTOCOL
    );
    f.response(ALICE, announce(token, false));
    let bob_token = f
        .response(
            BOB,
            Query::GetPeers {
                id: Id([2; 20]),
                info_hash: ih,
            },
        )
        .token
        .expect("token");
    f.response(BOB, announce(bob_token, true));
    let r = f.response(
        BOB,
        Query::GetPeers {
            id: Id([2; 20]),
            info_hash: ih,
        },
    );
    let mut values = r.values.expect("values");
    values.sort();
    assert_eq!(
        values,
        vec![SocketAddr::new(ALICE.ip(), 6881), BOB] // implied_port used Bob's source port
    );
}

#[test]
fn tokens_rotate_and_previous_is_accepted() {
    let now = Instant::now();
    let mut t = Tokens::new([3; 20], now);
    let ip = ALICE.ip();
    let tok = t.token(ip, now);
    assert!(t.check(&tok, ip, now));
    assert!(!t.check(&tok, BOB.ip(), now));
    assert!(t.check(&tok, ip, now + TOKEN_ROTATION + Duration::from_secs(1)));
    assert!(!t.check(&tok, ip, now + 2 * TOKEN_ROTATION + Duration::from_secs(1)));
    assert!(!t.check(b"short", ip, now));
}

#[test]
fn address_tokens_bind_ip_and_port_rotate_and_are_not_write_tokens() {
    let now = Instant::now();
    let mut t = Tokens::new([3; 20], now);
    let tok = t.address_token(ALICE, now);
    assert!(t.check_address(&tok, ALICE, now));
    let same_ip_other_port = SocketAddr::new(ALICE.ip(), ALICE.port().wrapping_add(1));
    assert!(!t.check_address(&tok, same_ip_other_port, now));
    assert!(!t.check_address(&tok, BOB, now));
    // Not interchangeable with the IP-bound write token.
    assert!(!t.check(&tok, ALICE.ip(), now));
    let write = t.token(ALICE.ip(), now);
    assert!(!t.check_address(&write, ALICE, now));
    let later = now + TOKEN_ROTATION + Duration::from_secs(1);
    assert!(t.check_address(&tok, ALICE, later));
    assert!(!t.check_address(&tok, ALICE, later + TOKEN_ROTATION));
}

#[test]
fn immutable_put_and_get() {
    let mut f = fixture();
    let v = Value::Bytes(b"Hello World!".to_vec());
    let target = bep44::immutable_target(&v);
    let token = f.token(ALICE, target);
    let put = |token: Vec<u8>, v: Value| Query::Put {
        id: Id([1; 20]),
        token,
        item: PutItem::Immutable { v },
    };
    assert_eq!(
        f.error_code(ALICE, put(b"nope".to_vec(), v.clone())),
        ERROR_PROTOCOL
    );
    f.response(ALICE, put(token.clone(), v.clone()));
    let r = f.response(
        BOB,
        Query::Get {
            id: Id([2; 20]),
            target,
            seq: None,
        },
    );
    assert_eq!(r.v, Some(v));
    let big = Value::Bytes(vec![0; 1001]);
    assert_eq!(f.error_code(ALICE, put(token, big)), ERROR_VALUE_TOO_BIG);
    // Expiry.
    f.now += ITEM_TTL;
    let r = f.response(
        BOB,
        Query::Get {
            id: Id([2; 20]),
            target,
            seq: None,
        },
    );
    assert_eq!(r.v, None);
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn put_mutable(item: &MutableItem, cas: Option<i64>, token: Vec<u8>) -> Query {
    Query::Put {
        id: Id([1; 20]),
        token,
        item: item.to_put_item(cas),
    }
}

#[test]
fn mutable_put_get_seq_cas_and_errors() {
    let mut f = fixture();
    let salt = b"salt".to_vec();
    let item1 = MutableItem::sign(&key(), &salt, 1, Value::Bytes(b"one".to_vec())).expect("sign");
    let target = item1.target();
    let token = f.token(ALICE, target);
    f.response(ALICE, put_mutable(&item1, None, token.clone()));

    let r = f.response(
        BOB,
        Query::Get {
            id: Id([2; 20]),
            target,
            seq: None,
        },
    );
    assert_eq!(
        (r.k, r.seq, r.sig, r.v.clone()),
        (
            Some(item1.k),
            Some(1),
            Some(item1.sig),
            Some(item1.v.clone())
        )
    );
    // A getter that already has seq 1 gets only the seq.
    let r = f.response(
        BOB,
        Query::Get {
            id: Id([2; 20]),
            target,
            seq: Some(1),
        },
    );
    assert_eq!((r.seq, r.v, r.k, r.sig), (Some(1), None, None, None));

    // Same seq and value: accepted (resets the timer). Same seq, other value: 302.
    f.response(ALICE, put_mutable(&item1, None, token.clone()));
    let other1 = MutableItem::sign(&key(), &salt, 1, Value::Bytes(b"uno".to_vec())).expect("sign");
    assert_eq!(
        f.error_code(ALICE, put_mutable(&other1, None, token.clone())),
        ERROR_SEQ_TOO_LOW
    );

    let item3 = MutableItem::sign(&key(), &salt, 3, Value::Bytes(b"three".to_vec())).expect("sign");
    // CAS mismatch: 301 (checked before seq).
    assert_eq!(
        f.error_code(ALICE, put_mutable(&item3, Some(2), token.clone())),
        ERROR_CAS_MISMATCH
    );
    f.response(ALICE, put_mutable(&item3, Some(1), token.clone()));
    let item2 = MutableItem::sign(&key(), &salt, 2, Value::Bytes(b"two".to_vec())).expect("sign");
    assert_eq!(
        f.error_code(ALICE, put_mutable(&item2, None, token.clone())),
        ERROR_SEQ_TOO_LOW
    );

    // Bad signature: 206.
    let mut forged = item3.clone();
    forged.seq = 4;
    assert_eq!(
        f.error_code(ALICE, put_mutable(&forged, None, token.clone())),
        ERROR_INVALID_SIGNATURE
    );
    // Salt too big: 207.
    let mut salty = item3.clone();
    salty.salt = vec![0; 65];
    assert_eq!(
        f.error_code(ALICE, put_mutable(&salty, None, token)),
        ERROR_SALT_TOO_BIG
    );
}

#[test]
fn cas_is_ignored_when_nothing_is_stored() {
    let mut f = fixture();
    let item = MutableItem::sign(&key(), b"", 5, Value::Int(5)).expect("sign");
    let token = f.token(ALICE, item.target());
    f.response(ALICE, put_mutable(&item, Some(99), token));
}

#[test]
fn unknown_methods_get_204_and_natkit_handlers_answer() {
    let mut f = fixture();
    let other = |m: &str| Query::Other {
        method: m.as_bytes().to_vec(),
        args: Value::dict(),
    };
    assert_eq!(f.error_code(ALICE, other("vote")), ERROR_METHOD_UNKNOWN);
    assert_eq!(
        f.error_code(ALICE, other("natkit.echo")),
        ERROR_METHOD_UNKNOWN
    );
    assert!(
        f.server
            .register(
                "vote",
                Box::new(|_: SocketAddr, _: &Value, _: Instant| Ok(BTreeMap::new()))
            )
            .is_err()
    );
    f.server
        .register(
            "natkit.echo",
            Box::new(|from: SocketAddr, _: &Value, _: Instant| {
                let mut r = BTreeMap::new();
                r.insert(b"port".to_vec(), Value::Int(i64::from(from.port())));
                Ok(r)
            }),
        )
        .expect("natkit method");
    let r = f.response(ALICE, other("natkit.echo"));
    assert_eq!(r.extra.get(&b"port"[..]), Some(&Value::Int(4000)));
}

#[test]
fn malformed_queries_get_203_with_ip() {
    let f = fixture();
    let err = crate::krpc::parse(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe").expect_err("malformed");
    let reply = f.server.reply_to_malformed(&err, ALICE).expect("answered");
    assert_eq!(reply.ip, Some(ALICE));
    match reply.kind {
        Kind::Error(e) => assert_eq!(e.code, ERROR_PROTOCOL),
        other => panic!("{other:?}"),
    }
    let noise = crate::krpc::parse(b"garbage").expect_err("noise");
    assert!(f.server.reply_to_malformed(&noise, ALICE).is_none());
}

#[test]
fn storage_limits_hold() {
    use crate::storage::{MAX_ITEMS, MAX_PEERS_PER_INFO_HASH, MAX_PEERS_PER_RESPONSE};
    let now = Instant::now();
    let mut s = Storage::new();
    let ih = Id([5; 20]);
    for i in 0..(MAX_PEERS_PER_INFO_HASH + 30) {
        let port = u16::try_from(i).expect("small") + 1;
        s.announce(
            ih,
            SocketAddr::new(ALICE.ip(), port),
            now + Duration::from_millis(i as u64),
        );
    }
    assert_eq!(
        s.peers(&ih, now + Duration::from_secs(1)).len(),
        MAX_PEERS_PER_RESPONSE
    );
    for i in 0..(MAX_ITEMS + 10) {
        let v = Value::Int(i as i64);
        s.put_immutable(
            bep44::immutable_target(&v),
            v,
            now + Duration::from_millis(i as u64),
        );
    }
    assert_eq!(s.item_count(), MAX_ITEMS);
    // The oldest went first.
    let first = Value::Int(0);
    assert!(s.get(&bep44::immutable_target(&first), now).is_none());
    s.expire(now + ITEM_TTL + Duration::from_secs(10));
    assert_eq!(s.item_count(), 0);
}
