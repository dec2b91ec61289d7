//! Interop with libtorrent 2.0 (the reference Mainline DHT), on 127.0.0.1 only. The libtorrent
//! nodes run in `tests/libtorrent_peer.py` under Debian's `/usr/bin/python3`, bound to
//! 127.0.0.1 with no default bootstrap router and no LSD/UPnP/NAT-PMP; only loopback ports are
//! ever passed to it. Without python3-libtorrent these tests skip loudly (fail under `CI=true`).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use natkit_dht::bencode;
use natkit_dht::bep44::{self, MutableItem};
use natkit_dht::dht::{Dht, DhtError};
use natkit_dht::krpc::{ERROR_CAS_MISMATCH, ERROR_SEQ_TOO_LOW};
use natkit_dht::testnet::Testnet;
use natkit_dht::{Id, Value};
use sha2::{Digest, Sha512};
use support::{Libtorrent, hex, id_from_hex, libtorrent_or_skip, list, unhex};

const LOOPBACK: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// Generous: libtorrent answers in milliseconds, but a lost datagram costs a 2-4 s timeout.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// How long libtorrent gets to learn about nodes or announces (it works in the background).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("interop test timed out")
}

async fn natkit_node(bootstrap: &[SocketAddr]) -> Dht {
    Dht::builder()
        .bind_addr(LOOPBACK)
        .bootstrap(bootstrap)
        .build()
        .await
        .expect("natkit node")
}

/// libtorrent's 64-byte secret key for an ed25519 seed: SHA-512(seed), first half clamped.
fn libtorrent_secret_key(seed: &[u8; 32]) -> [u8; 64] {
    let mut sk: [u8; 64] = Sha512::digest(seed).into();
    sk[0] &= 248;
    sk[31] &= 63;
    sk[31] |= 64;
    sk
}

/// A mutable item signed with a libtorrent-style expanded secret key (no seed needed).
fn sign_expanded(sk: &[u8; 64], salt: &[u8], seq: i64, v: Value) -> MutableItem {
    let esk = ExpandedSecretKey::from_bytes(sk);
    let vk = VerifyingKey::from(&esk);
    let msg = bep44::signable(salt, seq, &bencode::emit(&v));
    let sig = raw_sign::<Sha512>(&esk, &msg, &vk);
    MutableItem {
        k: vk.to_bytes(),
        salt: salt.to_vec(),
        seq,
        v,
        sig: sig.to_bytes(),
    }
}

fn peer(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_find_node_both_ways() {
    if !libtorrent_or_skip("bootstrap_and_find_node_both_ways") {
        return;
    }
    timed(async {
        let mut lt = Libtorrent::start(3).await;
        let lt_ids = lt.ids().await;

        // Ours from theirs: a natkit node given only libtorrent node 0 learns all three.
        let a = natkit_node(&[lt.addr(0)]).await;
        assert!(a.stats().await.expect("stats").routing_table_size >= 3);
        for (i, id) in lt_ids.iter().enumerate() {
            let found = a.find_node(*id).await.expect("find_node");
            assert_eq!(found.first().map(|n| n.id), Some(*id), "natkit finds lt{i}");
            assert_eq!(found.first().map(|n| n.addr.port()), Some(lt.ports[i]));
        }
        // libtorrent put the natkit node that queried it into its routing table.
        let table = lt
            .routing_table_until(0, SETTLE_TIMEOUT, |t| t.iter().any(|n| n.0 == a.id()))
            .await;
        assert!(
            table.contains(&(a.id(), a.local_addr().port())),
            "lt0's table lacks our node: {table:?}"
        );

        // Theirs from ours: a libtorrent node whose only bootstrap node is natkit node 0 finds
        // the other natkit nodes through natkit's find_node answers.
        let net = Testnet::new(5).await.expect("natkit testnet");
        let spawned = lt
            .cmd(&format!("spawn {}", net.nodes[0].local_addr().port()))
            .await;
        let l: usize = spawned["node"].parse().expect("index");
        let natkit_ids: Vec<Id> = net.nodes.iter().map(Dht::id).collect();
        let table = lt
            .routing_table_until(l, SETTLE_TIMEOUT, |t| {
                t.iter().filter(|n| natkit_ids.contains(&n.0)).count() >= 4
            })
            .await;
        for (id, port) in &table {
            let node = net.nodes.iter().find(|n| n.id() == *id);
            assert_eq!(node.map(|n| n.local_addr().port()), Some(*port));
        }
        assert!(
            table.len() >= 4,
            "libtorrent learned only {table:?} from natkit"
        );
        // natkit neither names nor asks a node it knows only from its queries (they may be
        // spoofed): the spawned node has queried natkit nodes but never answered one, and no
        // libtorrent node knows it, so natkit's lookups do not return it ...
        let l_id = lt.ids().await[l];
        let l_port: u16 = spawned["port"].parse().expect("port");
        let found = net.nodes[4].find_node(l_id).await.expect("find_node");
        assert!(
            found.iter().all(|n| n.id != l_id),
            "a node that never answered was handed out: {found:?}"
        );
        // ... until it has answered one: a natkit node bootstrapping from it finds it, and
        // from then on names it.
        let b = natkit_node(&[SocketAddr::from(([127, 0, 0, 1], l_port))]).await;
        let found = b.find_node(l_id).await.expect("find_node");
        assert_eq!(
            found.first().map(|n| (n.id, n.addr.port())),
            Some((l_id, l_port))
        );
        // ... and with one natkit node bridging the two groups, a natkit lookup that starts at
        // the spawned libtorrent node crosses both implementations to the right nodes.
        let bridge = natkit_node(&[lt.addr(0), net.nodes[0].local_addr()]).await;
        let found = b.find_node(lt_ids[2]).await.expect("find_node");
        assert_eq!(found.first().map(|n| n.id), Some(lt_ids[2]));
        let found = b.find_node(natkit_ids[3]).await.expect("find_node");
        assert_eq!(found.first().map(|n| n.id), Some(natkit_ids[3]));

        b.shutdown().await;
        bridge.shutdown().await;
        a.shutdown().await;
        net.shutdown().await;
        lt.quit().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bep44_items_both_ways() {
    if !libtorrent_or_skip("bep44_items_both_ways") {
        return;
    }
    timed(async {
        let mut lt = Libtorrent::start(3).await;
        let a = natkit_node(&[lt.addr(0)]).await;
        let b = natkit_node(&[lt.addr(1), a.local_addr()]).await;
        for i in 0..3 {
            lt.cmd(&format!("add_node {i} {}", a.local_addr().port()))
                .await;
            lt.cmd(&format!("add_node {i} {}", b.local_addr().port()))
                .await;
        }

        // Immutable: libtorrent's put, got and verified by natkit ...
        let v = Value::Bytes(b"from libtorrent".to_vec());
        let r = lt
            .cmd(&format!("put_immutable 1 {}", hex(b"from libtorrent")))
            .await;
        let target = id_from_hex(&r["target"]);
        assert_eq!(target, bep44::immutable_target(&v));
        assert!(r["num_success"].parse::<u32>().expect("count") >= 1);
        assert_eq!(b.get_immutable(target).await.expect("get"), Some(v));
        // ... and natkit's, got by libtorrent.
        let v = Value::Bytes(b"from natkit".to_vec());
        let target = a.put_immutable(v.clone()).await.expect("natkit put");
        let r = lt
            .cmd(&format!("get_immutable 2 {}", target.to_hex()))
            .await;
        assert_eq!(r["found"], "1");
        assert_eq!(unhex(&r["item"]), bencode::emit(&v));
        // Nothing under a target nobody put.
        let r = lt
            .cmd(&format!("get_immutable 0 {}", "ee".repeat(20)))
            .await;
        assert_eq!(r["found"], "0");

        // Mutable with salt, key from a seed: libtorrent puts seq 1 ...
        let seed = [7u8; 32];
        let key = SigningKey::from_bytes(&seed);
        let k = key.verifying_key().to_bytes();
        let sk = libtorrent_secret_key(&seed);
        // (Our expanded key is the one ed25519-dalek derives from the seed.)
        let probe = b"expanded key check";
        let esk = ExpandedSecretKey::from_bytes(&sk);
        assert_eq!(
            raw_sign::<Sha512>(&esk, probe, &key.verifying_key()),
            key.sign(probe)
        );
        let salt = b"interop";
        let put = |seq_data: &str| {
            format!(
                "put_mutable 0 {} {} {} {}",
                hex(&sk),
                hex(&k),
                hex(salt),
                hex(seq_data.as_bytes())
            )
        };
        let r = lt.cmd(&put("v1")).await;
        assert_eq!(r["seq"], "1");
        // ... natkit gets and verifies it (the signature is the standard one) ...
        let got = a
            .get_mutable(k, salt, None)
            .await
            .expect("get")
            .expect("natkit finds libtorrent's item");
        let expected =
            MutableItem::sign(&key, salt, 1, Value::Bytes(b"v1".to_vec())).expect("sign");
        assert_eq!(got, expected);
        assert_eq!(got.target(), bep44::mutable_target(&k, salt));
        // ... natkit updates it with cas 1 ...
        let two = MutableItem::sign(&key, salt, 2, Value::Bytes(b"v2".to_vec())).expect("sign");
        b.put_mutable(two.clone(), Some(1))
            .await
            .expect("natkit update with cas 1");
        // ... libtorrent gets seq 2 with natkit's signature ...
        let r = lt
            .cmd(&format!("get_mutable 2 {} {}", hex(&k), hex(salt)))
            .await;
        assert_eq!((r["found"].as_str(), r["seq"].as_str()), ("1", "2"));
        assert_eq!(unhex(&r["item"]), b"2:v2");
        assert_eq!(unhex(&r["sig"]), two.sig);
        // ... libtorrent updates it again (it reads seq 2 and writes 3) ...
        let r = lt
            .cmd(&put("v3").replace("put_mutable 0", "put_mutable 1"))
            .await;
        assert_eq!(r["seq"], "3");
        // ... and natkit sees seq 3, nothing newer than that, and is refused stale writes.
        let got = b
            .get_mutable(k, salt, Some(2))
            .await
            .expect("get")
            .expect("newer than 2");
        assert_eq!((got.seq, got.v), (3, Value::Bytes(b"v3".to_vec())));
        assert_eq!(a.get_mutable(k, salt, Some(3)).await.expect("get"), None);
        let four = MutableItem::sign(&key, salt, 4, Value::Bytes(b"v4".to_vec())).expect("sign");
        match a.put_mutable(four, Some(2)).await {
            Err(DhtError::Conflict { code, .. }) => assert_eq!(code, ERROR_CAS_MISMATCH),
            other => panic!("expected a CAS refusal, got {other:?}"),
        }
        match a.put_mutable(two, None).await {
            Err(DhtError::Conflict { code, .. }) => assert_eq!(code, ERROR_SEQ_TOO_LOW),
            other => panic!("expected a seq refusal, got {other:?}"),
        }

        // The BEP 44 test vector's key pair, which exists only as an expanded secret key:
        // natkit signs with it through ed25519-dalek's hazmat API, libtorrent with it directly.
        let vector_sk: [u8; 64] = unhex(
            "e06d3183d14159228433ed599221b80bd0a5ce8352e4bdf0262f76786ef1c74d\
             b7e7a9fea2c0eb269d61e3b38e450a22e754941ac78479d6c54e1faf6037881d",
        )
        .try_into()
        .expect("64 bytes");
        let ours = sign_expanded(&vector_sk, b"", 1, Value::from("Hello World!"));
        assert_eq!(
            hex(&ours.k),
            "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548"
        );
        assert_eq!(
            ours.target().to_hex(),
            "4a533d47ec9c7d95b1ad75f576cffc641853b750",
            "BEP 44 vector target"
        );
        a.put_mutable(ours.clone(), None).await.expect("natkit put");
        let r = lt.cmd(&format!("get_mutable 1 {} -", hex(&ours.k))).await;
        assert_eq!((r["found"].as_str(), r["seq"].as_str()), ("1", "1"));
        assert_eq!(unhex(&r["sig"]), ours.sig, "BEP 44 vector signature");
        let r = lt
            .cmd(&format!(
                "put_mutable 2 {} {} - {}",
                hex(&vector_sk),
                hex(&ours.k),
                hex(b"next")
            ))
            .await;
        assert_eq!(r["seq"], "2");
        let got = b
            .get_mutable(ours.k, b"", None)
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got, sign_expanded(&vector_sk, b"", 2, Value::from("next")));

        b.shutdown().await;
        a.shutdown().await;
        lt.quit().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_and_get_peers_both_ways() {
    if !libtorrent_or_skip("announce_and_get_peers_both_ways") {
        return;
    }
    timed(async {
        let mut lt = Libtorrent::start(3).await;
        let a = natkit_node(&[lt.addr(0)]).await;
        let b = natkit_node(&[lt.addr(2), a.local_addr()]).await;
        for i in 0..3 {
            lt.cmd(&format!("add_node {i} {}", a.local_addr().port()))
                .await;
        }

        // natkit announces (an explicit port and the implied one); libtorrent finds both.
        let ih = Id([0x5a; 20]);
        assert!(a.announce_peer(ih, Some(6969)).await.expect("announce") > 0);
        assert!(b.announce_peer(ih, None).await.expect("announce") > 0);
        let r = lt.cmd(&format!("get_peers 1 {}", ih.to_hex())).await;
        let mut expected = vec![peer(6969), peer(b.local_addr().port())];
        expected.sort();
        assert_eq!(list(&r["peers"]), expected);

        // libtorrent announces (a torrent on its listen port); natkit finds it.
        let ih = Id([0xa5; 20]);
        let r = lt.cmd(&format!("announce 2 {}", ih.to_hex())).await;
        let port: u16 = r["port"].parse().expect("port");
        let want = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        let mut peers = Vec::new();
        while tokio::time::Instant::now() < deadline {
            peers = a.get_peers(ih).await.expect("get_peers");
            if peers.contains(&want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(peers, vec![want], "natkit finds libtorrent's announce");
        // Nobody announced this one.
        assert!(
            a.get_peers(Id([0x11; 20]))
                .await
                .expect("get_peers")
                .is_empty()
        );
        let r = lt.cmd(&format!("get_peers 0 {}", "11".repeat(20))).await;
        assert!(list(&r["peers"]).is_empty());

        b.shutdown().await;
        a.shutdown().await;
        lt.quit().await;
    })
    .await;
}
