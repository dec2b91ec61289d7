use super::*;

fn id_with_prefix(first: u8, n: u8) -> Id {
    let mut b = [0u8; ID_BYTES];
    b[0] = first;
    b[19] = n;
    Id(b)
}

fn node(id: Id, port: u16) -> NodeInfo {
    loopback_node(id, port)
}

#[test]
fn adds_and_updates_and_never_adds_own_id() {
    let now = Instant::now();
    let own = Id([0; 20]);
    let mut t = RoutingTable::new(own, now);
    assert_eq!(
        t.heard_from(node(own, 1), Contact::Response, now),
        Insert::Dropped
    );
    let a = node(id_with_prefix(0x80, 1), 2);
    assert_eq!(t.heard_from(a, Contact::Response, now), Insert::Added);
    assert_eq!(t.heard_from(a, Contact::Query, now), Insert::Updated);
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(&a.id).map(|e| e.status(now)), Some(Status::Good));
}

#[test]
fn only_the_own_bucket_splits() {
    let now = Instant::now();
    let own = Id([0; 20]);
    let mut t = RoutingTable::new(own, now);
    // 8 far nodes (first bit differs) fill the single bucket; a 9th near node splits it.
    for i in 0..K as u8 {
        t.heard_from(
            node(id_with_prefix(0x80, i), 10 + u16::from(i)),
            Contact::Response,
            now,
        );
    }
    assert_eq!(t.bucket_count(), 1);
    let near = node(id_with_prefix(0x01, 1), 200);
    assert_eq!(t.heard_from(near, Contact::Response, now), Insert::Added);
    assert!(t.bucket_count() >= 2);
    let buckets = t.bucket_count();
    // The far bucket no longer covers our id: a 9th far node (all good) is dropped, no split.
    let far = node(id_with_prefix(0xc0, 99), 201);
    assert_eq!(t.heard_from(far, Contact::Response, now), Insert::Dropped);
    assert_eq!(t.bucket_count(), buckets);
    assert_eq!(t.len(), K + 1);
}

#[test]
fn status_rules_follow_bep5() {
    let now = Instant::now();
    let mut t = RoutingTable::new(Id([0; 20]), now);
    let a = node(id_with_prefix(0x80, 1), 2);
    t.heard_from(a, Contact::Response, now);
    let later = now + GOOD_WINDOW;
    assert_eq!(
        t.get(&a.id).map(|e| e.status(later)),
        Some(Status::Questionable)
    );
    // It once answered; a query within the window makes it good again.
    t.heard_from(a, Contact::Query, later);
    assert_eq!(t.get(&a.id).map(|e| e.status(later)), Some(Status::Good));
    // A node that only ever queried us is questionable.
    let b = node(id_with_prefix(0x81, 1), 3);
    t.heard_from(b, Contact::Query, now);
    assert_eq!(
        t.get(&b.id).map(|e| e.status(now)),
        Some(Status::Questionable)
    );
    for _ in 0..BAD_AFTER_FAILURES {
        t.failed(&b.id, now);
    }
    assert_eq!(t.get(&b.id).map(|e| e.status(now)), Some(Status::Bad));
    t.heard_from(b, Contact::Response, now);
    assert_eq!(t.get(&b.id).map(|e| e.status(now)), Some(Status::Good));
}

fn full_far_bucket(now: Instant) -> RoutingTable {
    let own = Id([0; 20]);
    let mut t = RoutingTable::new(own, now);
    // Force a split so the far bucket (index 0) stops covering our id.
    t.heard_from(node(id_with_prefix(0x01, 200), 9), Contact::Response, now);
    for i in 0..K as u8 {
        t.heard_from(
            node(id_with_prefix(0x80, i), 100 + u16::from(i)),
            Contact::Response,
            now,
        );
    }
    t
}

#[test]
fn full_bucket_replaces_a_bad_node() {
    let now = Instant::now();
    let mut t = full_far_bucket(now);
    let victim = id_with_prefix(0x80, 3);
    for _ in 0..BAD_AFTER_FAILURES {
        t.failed(&victim, now);
    }
    let new = node(id_with_prefix(0x90, 1), 50);
    assert_eq!(
        t.heard_from(new, Contact::Response, now),
        Insert::Replaced(node(victim, 103))
    );
    assert!(t.get(&victim).is_none());
    assert!(t.get(&new.id).is_some());
}

#[test]
fn full_bucket_pings_least_recently_seen_questionable_then_replaces() {
    let now = Instant::now();
    let mut t = full_far_bucket(now);
    let later = now + GOOD_WINDOW + Duration::from_secs(1);
    // Refresh all but two; of those two, 0x80/5 was seen earliest.
    for i in 0..K as u8 {
        if i != 5 && i != 6 {
            t.heard_from(
                node(id_with_prefix(0x80, i), 100 + u16::from(i)),
                Contact::Response,
                later,
            );
        }
    }
    let new = node(id_with_prefix(0x90, 1), 50);
    let q = match t.heard_from(new, Contact::Response, later) {
        Insert::PingFirst(q) => q,
        other => panic!("expected PingFirst, got {other:?}"),
    };
    assert!(q.id == id_with_prefix(0x80, 5) || q.id == id_with_prefix(0x80, 6));
    assert!(t.get(&new.id).is_none());
    // The ping and its retry fail: the waiting node takes the slot.
    assert_eq!(t.failed(&q.id, later), None);
    assert_eq!(t.failed(&q.id, later), Some(new));
    assert!(t.get(&new.id).is_some());
    assert!(t.get(&q.id).is_none());
}

#[test]
fn hearsay_never_evicts() {
    let now = Instant::now();
    let mut t = full_far_bucket(now);
    let later = now + GOOD_WINDOW;
    let new = node(id_with_prefix(0x90, 1), 50);
    assert_eq!(t.heard_from(new, Contact::Hearsay, later), Insert::Dropped);
}

#[test]
fn closest_returns_sorted_non_bad_nodes() {
    let now = Instant::now();
    let own = Id([0; 20]);
    let mut t = RoutingTable::new(own, now);
    for i in 1..=40u8 {
        let mut b = [0u8; 20];
        b[0] = i.wrapping_mul(37);
        b[1] = i;
        t.heard_from(node(Id(b), u16::from(i)), Contact::Response, now);
    }
    let target = Id([0x55; 20]);
    let got = t.closest(&target, K, now);
    assert_eq!(got.len(), K);
    let mut all: Vec<NodeInfo> = t.entries().map(|e| e.node).collect();
    all.sort_by_key(|n| target.distance(&n.id));
    assert_eq!(got, all[..K].to_vec());
    t.failed(&got[0].id, now);
    t.failed(&got[0].id, now);
    assert!(!t.closest(&target, K, now).contains(&got[0]));
}

#[test]
fn refresh_deadlines_and_targets() {
    let now = Instant::now();
    let mut t = full_far_bucket(now);
    assert!(t.buckets_to_refresh(now).is_empty());
    let later = now + REFRESH_INTERVAL;
    let due = t.buckets_to_refresh(later);
    assert_eq!(due.len(), t.bucket_count());
    for &i in &due {
        let target = t.refresh_target(i, [0xa5; 20], later);
        let shared = Id([0; 20]).distance(&target).leading_zeros() as usize;
        if i + 1 < t.bucket_count() {
            assert_eq!(shared, i, "target of bucket {i}");
        } else {
            assert!(shared >= i);
        }
    }
    assert!(t.buckets_to_refresh(later).is_empty());
    assert_eq!(t.next_refresh(), later + REFRESH_INTERVAL);
}

#[test]
fn save_and_load_round_trip() {
    let now = Instant::now();
    let t = full_far_bucket(now);
    let saved = t.to_saved();
    let bytes = saved.to_bytes();
    let back = SavedTable::from_bytes(&bytes).expect("parses");
    assert_eq!(back, saved);
    let t2 = RoutingTable::from_saved(&back, now);
    assert_eq!(t2.len(), t.len());
    assert_eq!(t2.own_id(), t.own_id());
    assert!(t2.entries().all(|e| e.status(now) == Status::Questionable));

    let dir = std::env::temp_dir().join(format!("natkit-dht-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("table.bencode");
    saved.save(&path).expect("save");
    assert_eq!(SavedTable::load(&path).expect("load"), saved);
    std::fs::write(&path, b"garbage").expect("write");
    assert!(matches!(
        SavedTable::load(&path),
        Err(TableFileError::Malformed(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_files_are_typed_errors() {
    for bad in [
        &b""[..],
        b"de",
        b"d2:id3:abc5:nodes0:e",
        b"d2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes5:abcdee",
        b"d2:id20:aaaaaaaaaaaaaaaaaaaa5:nodesi1ee",
        b"l2:id20:aaaaaaaaaaaaaaaaaaaae",
    ] {
        assert!(
            matches!(
                SavedTable::from_bytes(bad),
                Err(TableFileError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    let huge = vec![b'x'; MAX_TABLE_FILE_BYTES + 1];
    assert!(matches!(
        SavedTable::from_bytes(&huge),
        Err(TableFileError::TooBig { .. })
    ));
}

#[test]
fn one_entry_per_address() {
    let now = Instant::now();
    let mut t = RoutingTable::new(Id([0; 20]), now);
    let a = node(id_with_prefix(0x80, 1), 7);
    let same_addr = node(id_with_prefix(0x40, 2), 7);
    assert_eq!(t.heard_from(a, Contact::Response, now), Insert::Added);
    assert_eq!(
        t.heard_from(same_addr, Contact::Query, now),
        Insert::Dropped
    );
    assert_eq!(t.len(), 1);
}

#[test]
fn good_in_bucket_counts_good_nodes_outside_the_own_bucket() {
    let now = Instant::now();
    let mut t = full_far_bucket(now);
    let far = id_with_prefix(0x80, 99);
    assert_eq!(t.good_in_bucket(&far, now), Some(K));
    // The own bucket splits instead of filling up: no count.
    assert_eq!(t.good_in_bucket(&id_with_prefix(0x01, 7), now), None);
    assert_eq!(t.good_in_bucket(&Id([0; 20]), now), None);
    // Bad (failed twice) or silent nodes are not good.
    for _ in 0..BAD_AFTER_FAILURES {
        t.failed(&id_with_prefix(0x80, 0), now);
    }
    assert_eq!(t.good_in_bucket(&far, now), Some(K - 1));
    assert_eq!(t.good_in_bucket(&far, now + GOOD_WINDOW), Some(0));
}

#[test]
fn unverified_queriers_are_neither_asked_nor_named_until_they_prove_their_address() {
    let now = Instant::now();
    let mut t = RoutingTable::new(Id([0; 20]), now);
    let answered = node(id_with_prefix(0x40, 1), 1);
    let queried = node(id_with_prefix(0x40, 2), 2);
    let heard = node(id_with_prefix(0x40, 3), 3);
    t.heard_from(answered, Contact::Response, now);
    t.heard_from(queried, Contact::Query, now);
    t.heard_from(heard, Contact::Hearsay, now);
    assert!(t.get(&queried.id).is_some_and(|e| e.unverified));
    let target = id_with_prefix(0x40, 2);
    // Our own lookups may ask what a third party or a saved table named, not a mere querier.
    assert_eq!(t.closest(&target, K, now), vec![heard, answered]);
    // Others are told only about good nodes.
    assert_eq!(t.closest_good(&target, K, now), vec![answered]);
    assert!(t.questionable(now).iter().all(|n| *n != queried));
    // Not saved either: a restart must not make it askable.
    assert!(!t.to_saved().nodes.contains(&queried));
    // Echoing our address token proves it.
    t.heard_from(queried, Contact::Proof, now);
    assert_eq!(t.closest_good(&target, K, now), vec![queried, answered]);
    assert_eq!(t.closest(&target, K, now), vec![queried, heard, answered]);
}

#[test]
fn a_query_never_asks_for_a_ping_and_proof_evicts_unverified_nodes_at_once() {
    let now = Instant::now();
    let own = Id([0; 20]);
    let mut t = RoutingTable::new(own, now);
    // Split once with a near node, then fill the far bucket with unverified queriers.
    t.heard_from(node(id_with_prefix(0x01, 0), 1), Contact::Response, now);
    for i in 0..K as u8 {
        let n = node(id_with_prefix(0x80, i), 10 + u16::from(i));
        assert_eq!(t.heard_from(n, Contact::Query, now), Insert::Added);
    }
    // Another querier: the bucket is full; nothing to ping, nothing replaced.
    let late = node(id_with_prefix(0x80, 50), 50);
    assert_eq!(t.heard_from(late, Contact::Query, now), Insert::Dropped);
    // A node that answered takes the oldest unverified node's place without a ping.
    let real = node(id_with_prefix(0x80, 60), 60);
    assert!(matches!(
        t.heard_from(real, Contact::Response, now),
        Insert::Replaced(_)
    ));
    // Once the bucket holds only verified-but-stale nodes, a newcomer asks for a ping.
    let later = now + GOOD_WINDOW;
    for i in 0..K as u8 {
        let n = node(id_with_prefix(0x80, 100 + i), 100 + u16::from(i));
        t.heard_from(n, Contact::Response, now);
    }
    let newcomer = node(id_with_prefix(0x80, 200), 200);
    assert_eq!(
        t.heard_from(newcomer, Contact::Query, later),
        Insert::Dropped
    );
    assert!(matches!(
        t.heard_from(newcomer, Contact::Response, later),
        Insert::PingFirst(_)
    ));
}
