use super::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn key(n: u8) -> Keypair {
    Keypair::from_seed([n; 32])
}

fn sample() -> Unl {
    let mut u = Unl::new(key(1).node_id());
    u.add_addr(AddrSource::Lan, "10.0.1.2:50500".parse().unwrap())
        .unwrap();
    u.add_addr(AddrSource::Observed, "203.0.113.10:50500".parse().unwrap())
        .unwrap();
    u.nat = NatType::Consistent;
    u.node = NodeType::HolePunch;
    u.timestamp = 1_795_000_000;
    u
}

#[test]
fn lan_plus_public_ipv4_fits_in_100_characters() {
    let text = sample().emit();
    assert!(text.len() <= 100, "{} chars: {text}", text.len());
    // Copy-paste safe: only the base32 alphabet after the prefix.
    assert!(
        text.chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
    );
}

#[test]
fn case_insensitive_and_whitespace_tolerant() {
    let u = sample();
    let text = u.emit();
    assert_eq!(Unl::parse(&text.to_uppercase()).unwrap(), u);
    assert_eq!(Unl::parse(&format!("  {text}\n")).unwrap(), u);
}

#[test]
fn every_single_character_typo_is_caught() {
    let text = sample().emit();
    let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
    for i in 2..text.len() {
        for c in alphabet.chars() {
            let mut t: Vec<char> = text.chars().collect();
            if t[i] == c {
                continue;
            }
            t[i] = c;
            let t: String = t.into_iter().collect();
            assert!(Unl::parse(&t).is_err(), "typo at {i} accepted: {t}");
        }
    }
}

#[test]
fn swapped_neighbours_are_caught() {
    let text = sample().emit();
    let b = text.as_bytes();
    for i in 2..b.len() - 1 {
        if b[i] == b[i + 1] {
            continue;
        }
        let mut t = b.to_vec();
        t.swap(i, i + 1);
        assert!(Unl::parse(std::str::from_utf8(&t).unwrap()).is_err());
    }
}

#[test]
fn typed_errors() {
    assert_eq!(Unl::parse(""), Err(UnlError::MissingPrefix));
    assert_eq!(Unl::parse("hello"), Err(UnlError::MissingPrefix));
    assert_eq!(
        Unl::parse("nk!!"),
        Err(UnlError::BadCharacter {
            position: 3,
            character: '!'
        })
    );
    assert!(matches!(
        Unl::parse(&"nk".repeat(400)),
        Err(UnlError::TooLong { .. })
    ));
    assert_eq!(
        Unl::parse("nkaaaa"),
        Err(UnlError::Incomplete {
            len: 6,
            needs: text_len(39)
        })
    );
}

#[test]
fn a_cut_copy_is_reported_as_incomplete() {
    // Every truncated copy is refused as incomplete, never as a bad character
    // or a typo; once the counts and entry tags are there, with the full length.
    for good in [sample().emit(), longest_unl().emit()] {
        for len in 2..good.len() {
            let err = Unl::parse(&good[..len]).unwrap_err();
            let UnlError::Incomplete { len: l, needs } = err else {
                panic!("cut to {len}: {err}");
            };
            assert_eq!(l, len);
            assert!(needs > len && needs <= good.len(), "cut to {len}: {err}");
            if len >= good.len() - 8 {
                assert_eq!(needs, good.len(), "cut to {len}");
            }
        }
    }
    // The case from the issue: the docs' first vector cut to 60 characters.
    let v1 = "nkccfiry65oqe7dfp5klns2pf2lvzmuzyjx4ozieq36n2iqanub5xvyitk7wdmaiaabiaacawfiqa4wadrblcuirrfsria";
    let text = Unl::parse(&v1[..60]).unwrap_err().to_string();
    assert!(
        text.contains("incomplete") && text.contains("60 characters"),
        "{text}"
    );
    assert!(!text.contains("base32"), "{text}");
}

#[test]
fn bad_characters_extra_characters_and_typos_are_told_apart() {
    let good = sample().emit();
    // A character outside the alphabet: its position (from 1) and itself.
    for (at, c) in [(10, '1'), (40, '8'), (good.len() - 1, 'é'), (2, ' ')] {
        let mut t: Vec<char> = good.chars().collect();
        t[at] = c;
        let t: String = t.into_iter().collect();
        assert_eq!(
            Unl::parse(&t),
            Err(UnlError::BadCharacter {
                position: at + 1,
                character: c
            }),
            "{t}"
        );
    }
    let shown = Unl::parse("nkab\u{1b}[31m").unwrap_err().to_string();
    assert!(
        shown.contains("position 5") && shown.contains("\\u{1b}"),
        "{shown}"
    );
    // Extra characters at the end.
    for extra in ["a", "aaaaaaaa", "q"] {
        let t = format!("{good}{extra}");
        assert_eq!(
            Unl::parse(&t),
            Err(UnlError::ExtraCharacters {
                len: t.len(),
                expected: good.len()
            }),
            "{t}"
        );
    }
    // A typo that keeps the length (in a field that does not change it).
    let mut t = good.clone().into_bytes();
    t[70] = if t[70] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        Unl::parse(std::str::from_utf8(&t).unwrap()),
        Err(UnlError::BadChecksum)
    );
}

/// Builds text from raw binary with a correct checksum, to reach the decoder's
/// own checks.
fn text_of(bin: &[u8]) -> String {
    let mut b = bin.to_vec();
    b.extend_from_slice(&crc32fast::hash(bin).to_be_bytes());
    format!("nk{}", natkit_identity::base32::encode(&b))
}

#[test]
fn decoder_errors_are_typed() {
    let bin = sample().encode();
    let mut v2 = bin.clone();
    v2[0] = 0x20;
    assert_eq!(Unl::parse(&text_of(&v2)), Err(UnlError::UnknownVersion(2)));
    let mut reserved = bin.clone();
    reserved[0] |= 0x02;
    assert!(matches!(
        Unl::parse(&text_of(&reserved)),
        Err(UnlError::ReservedBits { .. })
    ));
    let mut nat = bin.clone();
    nat[33] = (nat[33] & 0xf8) | 5;
    assert_eq!(Unl::parse(&text_of(&nat)), Err(UnlError::UnknownNatType(5)));
    let mut many = bin.clone();
    many[38] = 9 << 4;
    assert_eq!(Unl::parse(&text_of(&many)), Err(UnlError::TooManyAddrs(9)));
    let mut src = bin.clone();
    src[39] = 7;
    assert_eq!(
        Unl::parse(&text_of(&src)),
        Err(UnlError::UnknownAddrSource(7))
    );
    let mut trailing = bin.clone();
    trailing.push(0);
    assert_eq!(
        Unl::parse(&text_of(&trailing)),
        Err(UnlError::TrailingBytes(1))
    );
    assert_eq!(
        Unl::parse(&text_of(&bin[..bin.len() - 1])),
        Err(UnlError::Truncated { field: "address" })
    );
    // A public key that is not a curve point.
    let not_a_point = (0u8..=255)
        .map(|n| {
            let mut k = [0u8; 32];
            k[0] = n;
            k
        })
        .find(|k| NodeId::from_bytes(k).is_err())
        .expect("some y has no x on the curve");
    let mut badkey = bin.clone();
    badkey[1..33].copy_from_slice(&not_a_point);
    assert_eq!(Unl::parse(&text_of(&badkey)), Err(UnlError::BadPublicKey));
}

#[test]
fn signature_is_checked() {
    let mut u = sample();
    u.sign(&key(1)).unwrap();
    let parsed = Unl::parse(&u.emit()).unwrap();
    assert_eq!(parsed, u);
    assert_eq!(parsed.verify(), Ok(true));
    // Change a field after signing: the stale signature is refused.
    u.timestamp += 1;
    assert_eq!(Unl::parse(&u.emit()), Err(UnlError::BadSignature));
    // Signing with another node's key is refused.
    assert!(matches!(
        u.sign(&key(2)),
        Err(UnlError::WrongSigningKey { .. })
    ));
}

#[test]
fn limits_are_enforced_when_building() {
    let mut u = Unl::new(key(1).node_id());
    for i in 0..MAX_ADDRS {
        u.add_addr(AddrSource::Lan, SocketAddr::from(([10, 0, 0, i as u8], 1)))
            .unwrap();
    }
    assert_eq!(
        u.add_addr(AddrSource::Lan, "10.0.0.99:1".parse().unwrap()),
        Err(UnlError::TooManyAddrs(MAX_ADDRS + 1))
    );
    assert!(matches!(
        u.add_rendezvous("1.2.3.4:0".parse().unwrap()),
        Err(UnlError::ZeroPort { .. })
    ));
    u.addrs.push(Candidate {
        source: AddrSource::Lan,
        addr: "10.0.0.100:1".parse().unwrap(),
    });
    assert_eq!(u.try_emit(), Err(UnlError::TooManyAddrs(MAX_ADDRS + 1)));
    // emit still does not panic, and parse refuses what it made.
    assert!(Unl::parse(&u.emit()).is_err());
}

/// The largest UNL the format allows: docs/unl.md lists what it holds.
fn longest_unl() -> Unl {
    let k = key(5);
    let mut u = Unl::new(k.node_id());
    for i in 0..MAX_ADDRS {
        u.add_addr(
            AddrSource::Manual,
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)),
                65535,
            ),
        )
        .unwrap();
    }
    for i in 0..MAX_RENDEZVOUS {
        u.add_rendezvous(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i as u16)),
            1,
        ))
        .unwrap();
    }
    u.nat = NatType::Incrementing { delta: -3 };
    u.timestamp = u32::MAX;
    u.sign(&k).unwrap();
    u
}

#[test]
fn the_longest_unl_is_exactly_the_documented_maximum() {
    let u = longest_unl();
    assert_eq!(u.encode().len(), MAX_BINARY_BYTES);
    assert_eq!(MAX_BINARY_BYTES, 333);
    let text = u.emit();
    assert_eq!(text.len(), MAX_TEXT_CHARS);
    assert_eq!(MAX_TEXT_CHARS, 542);
    assert_eq!(Unl::parse(&text).unwrap(), u);
    // docs/unl.md states both numbers.
    let doc = include_str!("../../../docs/unl.md");
    assert!(doc.contains(&format!("at most {MAX_TEXT_CHARS} characters")));
    assert!(doc.contains(&format!("is {MAX_BINARY_BYTES} bytes")));
    // One character more is refused before decoding.
    assert!(matches!(
        Unl::parse(&format!("{text}a")),
        Err(UnlError::TooLong { len: 543, max: 542 })
    ));
}

#[test]
fn the_smallest_unl_has_the_documented_length() {
    let u = Unl::new(key(3).node_id());
    assert_eq!(u.emit().len(), text_len(39));
    assert_eq!(text_len(39), 71);
}

// ---- test vectors in docs/unl.md --------------------------------------------

/// Pairs each ```text block in the document with the ```json block after it.
fn doc_vectors() -> Vec<(String, String)> {
    let doc = include_str!("../../../docs/unl.md");
    let mut out = Vec::new();
    let mut pending_text: Option<String> = None;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let kind = match line.trim() {
            "```text" => "text",
            "```json" => "json",
            _ => continue,
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let body = body.join("\n");
        if kind == "text" && body.trim().starts_with("nk") {
            pending_text = Some(body.trim().to_string());
        } else if kind == "json"
            && let Some(t) = pending_text.take()
        {
            out.push((t, body));
        }
    }
    out
}

#[test]
fn docs_test_vectors_decode_to_their_listed_fields() {
    let vectors = doc_vectors();
    assert!(vectors.len() >= 3, "docs/unl.md lists too few vectors");
    for (text, json) in vectors {
        let parsed = Unl::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let listed: Unl = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(parsed, listed, "vector {text}");
        assert_eq!(listed.emit(), text, "emit of the listed fields");
    }
}

/// Prints vectors for the document: `cargo test -p natkit-unl print_vectors -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_vectors() {
    let mut a = sample();
    a.node_id = key(1).node_id();
    println!(
        "{}\n{}\n",
        a.emit(),
        serde_json::to_string_pretty(&a).unwrap()
    );
    let k = key(2);
    let mut b = Unl::new(k.node_id());
    b.add_addr(AddrSource::Upnp, "198.51.100.7:4242".parse().unwrap())
        .unwrap();
    b.add_addr(AddrSource::Lan, "[fd00::2]:4242".parse().unwrap())
        .unwrap();
    b.nat = NatType::Incrementing { delta: 2 };
    b.node = NodeType::Reachable;
    b.add_rendezvous("203.0.113.100:6881".parse().unwrap())
        .unwrap();
    b.timestamp = 1_795_000_000;
    b.sign(&k).unwrap();
    println!(
        "{}\n{}\n",
        b.emit(),
        serde_json::to_string_pretty(&b).unwrap()
    );
    let c = Unl::new(key(3).node_id());
    println!(
        "{}\n{}\n",
        c.emit(),
        serde_json::to_string_pretty(&c).unwrap()
    );
}

// ---- who dials first ----------------------------------------------------------

#[test]
fn the_unreachable_side_dials_the_reachable_one() {
    let mut a = Unl::new(key(1).node_id());
    let mut b = Unl::new(key(2).node_id());
    a.node = NodeType::Reachable;
    b.node = NodeType::OutboundOnly;
    assert!(b.dials_first(&a));
    assert!(!a.dials_first(&b));
}

#[test]
fn same_node_never_dials_itself() {
    let a = sample();
    assert!(!a.dials_first(&a.clone()));
}

#[test]
fn dialing_work_is_spread() {
    // With a hash of the pair, about half the pairs have the smaller key dial.
    let mut lo_dials = 0;
    for i in 0..200u8 {
        let a = Unl::new(key(i).node_id());
        let b = Unl::new(key(i.wrapping_add(101)).node_id());
        let lo = if a.node_id < b.node_id { &a } else { &b };
        let hi = if std::ptr::eq(lo, &a) { &b } else { &a };
        if lo.dials_first(hi) {
            lo_dials += 1;
        }
    }
    assert!((60..=140).contains(&lo_dials), "{lo_dials}/200");
}

// ---- properties ---------------------------------------------------------------

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn arb_sockaddr() -> impl Strategy<Value = SocketAddr> {
    (arb_ip(), 1u16..).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn arb_unl() -> impl Strategy<Value = (Unl, bool, [u8; 32])> {
    (
        any::<[u8; 32]>(),
        proptest::collection::vec(
            (0usize..AddrSource::ALL.len(), arb_sockaddr()),
            0..=MAX_ADDRS,
        ),
        prop_oneof![
            Just(NatType::Unknown),
            Just(NatType::Open),
            Just(NatType::Consistent),
            any::<i16>().prop_map(|delta| NatType::Incrementing { delta }),
            Just(NatType::Random),
        ],
        prop_oneof![
            Just(NodeType::Unknown),
            Just(NodeType::Reachable),
            Just(NodeType::HolePunch),
            Just(NodeType::OutboundOnly),
        ],
        proptest::collection::vec(arb_sockaddr(), 0..=MAX_RENDEZVOUS),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(seed, addrs, nat, node, rendezvous, timestamp, signed)| {
            let mut u = Unl::new(Keypair::from_seed(seed).node_id());
            u.addrs = addrs
                .into_iter()
                .map(|(s, addr)| Candidate {
                    source: AddrSource::ALL[s],
                    addr,
                })
                .collect();
            u.nat = nat;
            u.node = node;
            u.rendezvous = rendezvous;
            u.timestamp = timestamp;
            (u, signed, seed)
        })
}

proptest! {
    #[test]
    fn parse_emit_round_trip((mut unl, signed, seed) in arb_unl()) {
        if signed {
            unl.sign(&Keypair::from_seed(seed)).unwrap();
        }
        let text = unl.try_emit().unwrap();
        prop_assert_eq!(Unl::parse(&text).unwrap(), unl.clone());
        prop_assert_eq!(Unl::parse(&text).unwrap().emit(), text);
        prop_assert_eq!(Unl::decode(&unl.encode()).unwrap(), unl.clone());
        let json = serde_json::to_string(&unl).unwrap();
        prop_assert_eq!(serde_json::from_str::<Unl>(&json).unwrap(), unl);
    }

    #[test]
    fn parse_never_panics_on_text(s in "(nk|NK)?[a-z2-7!=+/ ]{0,200}") {
        let _ = Unl::parse(&s);
    }

    #[test]
    fn decode_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Unl::decode(&b);
        let _ = Unl::parse(&text_of(&b));
    }

    #[test]
    fn exactly_one_side_dials((a, _, _) in arb_unl(), (b, _, _) in arb_unl()) {
        prop_assume!(a.node_id != b.node_id);
        prop_assert!(a.dials_first(&b) != b.dials_first(&a));
    }
}
