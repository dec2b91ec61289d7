use super::*;

use std::net::Ipv4Addr;

use crate::bencode;

fn key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[test]
fn announce_round_trips_and_is_bound_to_one_rendezvous_node() {
    let rv = Id([7; 20]);
    let a = Announce::sign(&key(1), &rv, 42, b"tok".to_vec());
    let args = bencode::parse(&bencode::emit(&a.to_args(Id([1; 20])))).expect("bencode");
    let back = Announce::from_args(&args).expect("parses");
    assert_eq!(back, a);
    assert_eq!(back.verify(&rv), Ok(()));
    assert_eq!(
        back.verify(&Id([8; 20])),
        Err(RendezvousError::BadSignature),
        "an announce cannot be replayed to another rendezvous node"
    );
    let mut later = back.clone();
    later.seq += 1;
    assert_eq!(later.verify(&rv), Err(RendezvousError::BadSignature));
}

#[test]
fn announce_fields_are_checked() {
    let a = Announce::sign(&key(1), &Id([7; 20]), 1, vec![1; 8]).to_args(Id([1; 20]));
    for field in ["k", "seq", "sig", "token"] {
        let Value::Dict(mut d) = a.clone() else {
            unreachable!()
        };
        d.remove(field.as_bytes());
        assert!(
            matches!(
                Announce::from_args(&Value::Dict(d)),
                Err(RendezvousError::Malformed(_))
            ),
            "{field} missing"
        );
    }
    let Value::Dict(mut d) = a else {
        unreachable!()
    };
    d.insert(b"k".to_vec(), Value::Bytes(vec![0; 31]));
    assert_eq!(
        Announce::from_args(&Value::Dict(d)),
        Err(RendezvousError::Malformed("k"))
    );
}

fn envelope(ts: i64, payload: &[u8]) -> Envelope {
    let to = key(2).verifying_key().to_bytes();
    Envelope::sign(&key(1), to, ts, [9; 8], payload.to_vec()).expect("signs")
}

#[test]
fn message_round_trips_with_hops_and_source() {
    let e = envelope(1_000, b"connect to me");
    let src = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 5), 4000);
    let args = e.to_args(Id([1; 20]), 3, Some(src));
    let back = MessageArgs::from_args(&bencode::parse(&bencode::emit(&args)).expect("bencode"))
        .expect("parses");
    assert_eq!(back.envelope, e);
    assert_eq!(back.hops, 3);
    assert_eq!(back.src, Some(src));
    assert_eq!(back.envelope.verify(1_000), Ok(()));

    let plain = MessageArgs::from_args(&e.to_args(Id([1; 20]), 0, None)).expect("parses");
    assert_eq!((plain.hops, plain.src), (0, None));
}

#[test]
fn messages_are_signed_fresh_and_bounded() {
    let e = envelope(1_000, b"hi");
    let skew = i64::try_from(MAX_CLOCK_SKEW.as_secs()).expect("fits");
    assert_eq!(e.verify(1_000 + skew), Ok(()));
    assert_eq!(e.verify(1_000 + skew + 1), Err(RendezvousError::Stale(301)));
    assert!(matches!(
        e.verify(1_000 - skew - 1),
        Err(RendezvousError::Stale(_))
    ));

    let mut tampered = e.clone();
    tampered.payload = b"ho".to_vec();
    assert_eq!(tampered.verify(1_000), Err(RendezvousError::BadSignature));
    let mut redirected = e.clone();
    redirected.to = key(3).verifying_key().to_bytes();
    assert_eq!(redirected.verify(1_000), Err(RendezvousError::BadSignature));

    let big = vec![0; MAX_PAYLOAD_BYTES + 1];
    assert_eq!(
        Envelope::sign(&key(1), [0; 32], 0, [0; 8], big.clone()),
        Err(RendezvousError::PayloadTooBig { len: big.len() })
    );
    let mut args = envelope(0, b"x").to_args(Id([1; 20]), 0, None);
    if let Value::Dict(d) = &mut args {
        d.insert(b"v".to_vec(), Value::Bytes(big));
    }
    assert!(matches!(
        MessageArgs::from_args(&args),
        Err(RendezvousError::PayloadTooBig { .. })
    ));
    let mut args = envelope(0, b"x").to_args(Id([1; 20]), 0, None);
    if let Value::Dict(d) = &mut args {
        d.insert(b"hops".to_vec(), Value::Int(1_000));
    }
    assert_eq!(
        MessageArgs::from_args(&args).expect("parses").hops,
        MAX_HOPS
    );
}

#[test]
fn weak_keys_never_verify() {
    // The identity point signs "anything" with a zero-ish signature in naive verifiers.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let msg = Envelope::signable(&[0; 32], &identity, 0, &[0; 8], b"");
    let mut sig = [0u8; 64];
    sig[0] = 1;
    assert_eq!(
        verify(&identity, &msg, &sig),
        Err(RendezvousError::BadSignature)
    );
}

#[test]
fn registry_needs_growing_seq_and_bounds_each_ip() {
    let now = Instant::now();
    let mut r = Registry::default();
    let rv = Id([7; 20]);
    let a1 = Announce::sign(&key(1), &rv, 5, vec![]);
    let home = addr([198, 51, 100, 1], 1000);
    assert_eq!(r.register(&a1, home, now), Ok(()));
    assert_eq!(r.lookup(&a1.k, now), Some(home));
    assert_eq!(r.register(&a1, home, now), Err(RendezvousError::StaleSeq));
    let moved = addr([198, 51, 100, 2], 2000);
    let a2 = Announce::sign(&key(1), &rv, 6, vec![]);
    assert_eq!(r.register(&a2, moved, now), Ok(()));
    assert_eq!(
        r.lookup(&a1.k, now),
        Some(moved),
        "a newer announce moves the key"
    );
    assert_eq!(r.lookup(&a1.k, now + REGISTRATION_TTL), None, "expires");
    r.expire(now + REGISTRATION_TTL);
    assert!(r.is_empty());

    let cgnat = addr([100, 64, 0, 1], 0);
    let mut keys = Vec::new();
    for i in 0..MAX_REGISTRATIONS_PER_IP {
        let a = Announce::sign(&key(10 + i as u8), &rv, 1, vec![]);
        let from = SocketAddr::new(cgnat.ip(), 1000 + i as u16);
        // One a millisecond: the first is the oldest.
        let at = now + Duration::from_millis(i as u64);
        assert_eq!(r.register(&a, from, at), Ok(()));
        keys.push(a.k);
    }
    let late = now + Duration::from_secs(1);
    let one_more = Announce::sign(&key(200), &rv, 1, vec![]);
    let from = SocketAddr::new(cgnat.ip(), 9);
    assert_eq!(r.register(&one_more, from, late), Ok(()));
    assert_eq!(r.lookup(&one_more.k, late), Some(from));
    assert_eq!(r.lookup(&keys[0], late), None, "the IP's oldest made room");
    assert!(r.lookup(&keys[1], late).is_some(), "only the oldest");
    assert_eq!(
        r.len(),
        MAX_REGISTRATIONS_PER_IP,
        "the IP stays at its limit"
    );
    // Expired ones make room first, and another IP is never touched.
    let other = Announce::sign(&key(201), &rv, 1, vec![]);
    assert_eq!(r.register(&other, home, late), Ok(()));
    let much_later = late + REGISTRATION_TTL;
    let newest = Announce::sign(&key(202), &rv, 1, vec![]);
    assert_eq!(r.register(&newest, from, much_later), Ok(()));
    assert_eq!(r.lookup(&newest.k, much_later), Some(from));
    assert_eq!(r.len(), 2, "the expired registrations of the IP are gone");
}

#[test]
fn registry_is_bounded() {
    let now = Instant::now();
    let mut r = Registry::default();
    let rv = Id([7; 20]);
    let mut a = Announce::sign(&key(1), &rv, 1, vec![]);
    for i in 0..MAX_REGISTRATIONS {
        a.k[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let from = addr([10, (i >> 8) as u8, i as u8, 1], 1);
        assert_eq!(r.register(&a, from, now), Ok(()));
    }
    a.k[..8].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        r.register(&a, addr([10, 99, 0, 1], 1), now),
        Err(RendezvousError::Full(_))
    ));
    assert_eq!(r.len(), MAX_REGISTRATIONS);
}

#[test]
fn replays_are_caught_until_they_are_stale_anyway() {
    let now = Instant::now();
    let mut c = ReplayCache::default();
    let e = envelope(0, b"a");
    assert_eq!(c.check(&e, now), Ok(()));
    assert!(c.contains(&e));
    assert_eq!(c.check(&e, now), Err(RendezvousError::Replay));
    let mut other = e.clone();
    other.nonce = [1; 8];
    assert_eq!(c.check(&other, now), Ok(()));
    assert_eq!(
        c.check(&e, now + 2 * MAX_CLOCK_SKEW),
        Ok(()),
        "forgotten once stale"
    );
}

#[test]
fn window_limit_counts_per_key() {
    let now = Instant::now();
    let mut l = WindowLimit::new(3);
    for _ in 0..3 {
        assert!(l.allow(&1u8, now));
    }
    assert!(!l.allow(&1u8, now));
    assert!(l.allow(&2u8, now));
    assert!(l.allow(&1u8, now + MESSAGE_WINDOW));
}

#[test]
fn targets_are_distinct_per_key_and_from_the_service_hash() {
    let a = target(&key(1).verifying_key().to_bytes());
    let b = target(&key(2).verifying_key().to_bytes());
    assert_ne!(a, b);
    assert_ne!(a, service_info_hash());
}

#[test]
fn error_codes_are_named_and_counted() {
    assert_eq!(
        describe_errors(&[ERROR_NOT_REGISTERED, ERROR_NOT_REGISTERED]),
        "no rendezvous node knows the recipient (480) from 2 nodes"
    );
    assert_eq!(
        describe_errors(&[
            ERROR_UNDELIVERED,
            crate::krpc::ERROR_METHOD_UNKNOWN,
            ERROR_UNDELIVERED
        ]),
        "the recipient or the next hop did not answer (481) from 2 nodes, method unknown (204) from 1 node"
    );
    assert_eq!(describe_errors(&[]), "");
    for code in [
        ERROR_NOT_REGISTERED,
        ERROR_UNDELIVERED,
        ERROR_BUSY,
        ERROR_REFUSED,
        201,
        202,
        203,
        204,
        205,
        206,
        207,
        301,
        302,
    ] {
        assert_ne!(error_name(code), "unknown error", "{code}");
    }
    assert_eq!(error_name(-1), "unknown error");
    let e = crate::dht::DhtError::NotDelivered {
        errors: vec![ERROR_NOT_REGISTERED, ERROR_NOT_REGISTERED],
    };
    assert_eq!(
        e.to_string(),
        "message not delivered: no rendezvous node knows the recipient (480) from 2 nodes"
    );
    let e = crate::dht::DhtError::NotDelivered { errors: vec![] };
    assert!(e.to_string().contains("no rendezvous node found"), "{e}");
}

#[test]
fn a_channel_is_carried_and_signed_and_cannot_be_changed() {
    let to = key(2).verifying_key().to_bytes();
    let e = Envelope::sign_on(
        &key(1),
        CHANNEL_TRAVERSAL,
        to,
        1_000,
        [9; 8],
        b"punch".to_vec(),
    )
    .expect("signs");
    let args = e.to_args(Id([1; 20]), 0, None);
    assert_eq!(
        args.get(b"ch").and_then(Value::as_int),
        Some(i64::from(CHANNEL_TRAVERSAL))
    );
    let back = MessageArgs::from_args(&bencode::parse(&bencode::emit(&args)).expect("bencode"))
        .expect("parses");
    assert_eq!(back.envelope, e);
    assert_eq!(back.envelope.verify(1_000), Ok(()));
    // Moved to the application's channel (or any other), the signature no longer holds.
    let mut moved = e.clone();
    moved.channel = CHANNEL_USER;
    assert_eq!(moved.verify(1_000), Err(RendezvousError::BadSignature));
    let mut user = envelope(1_000, b"punch");
    assert_eq!(user.channel, CHANNEL_USER);
    user.channel = CHANNEL_TRAVERSAL;
    assert_eq!(user.verify(1_000), Err(RendezvousError::BadSignature));
    // The application's channel has no `ch` key (messages as before channels existed).
    let plain = envelope(1_000, b"hi").to_args(Id([1; 20]), 0, None);
    assert!(plain.get(b"ch").is_none());
    // A `ch` that is not a byte is malformed.
    let mut bad = args.clone();
    if let Value::Dict(d) = &mut bad {
        d.insert(b"ch".to_vec(), Value::Int(256));
    }
    assert_eq!(
        MessageArgs::from_args(&bad),
        Err(RendezvousError::Malformed("ch"))
    );
}
