//! Malformed input in a network mixing natkit, libtorrent and `mainline` nodes, on 127.0.0.1
//! only: a raw UDP socket sends every node truncated, malformed and unknown queries, `natkit.*`
//! queries (which third-party nodes answer with an error or not at all) and stray responses and
//! errors; then natkit's nodes must still answer and their lookups through the mixed network must
//! still find the right nodes and items. libtorrent runs in `tests/libtorrent_peer.py` (skips
//! loudly without python3-libtorrent, fails under `CI=true`); `mainline` nodes are built with
//! `bind_address(LOCALHOST).port(0).server_mode()` and loopback bootstrap lists only.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_dht::dht::Dht;
use natkit_dht::krpc::{self, ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL};
use natkit_dht::{ErrorMessage, Id, Kind, Message, Query, Value};
use support::{Libtorrent, hex, libtorrent_or_skip, mainline_node, unhex};
use tokio::net::UdpSocket;

const LOOPBACK: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a silent node is given to answer one datagram.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Pause between datagrams to one node: below natkit's 100 queries/s per source, so every
/// datagram is judged on its content, not dropped by the rate limit.
const FLOOD_PACING: Duration = Duration::from_millis(12);

const ECHO: &str = "natkit.echo";

async fn natkit_node(bootstrap: &[SocketAddr]) -> Dht {
    let echo = |from: SocketAddr, _: &Value, _: Instant| {
        let mut r = BTreeMap::new();
        r.insert(b"port".to_vec(), Value::Int(i64::from(from.port())));
        Ok::<_, ErrorMessage>(r)
    };
    Dht::builder()
        .bind_addr(LOOPBACK)
        .bootstrap(bootstrap)
        .handler(ECHO, Box::new(echo))
        .build()
        .await
        .expect("natkit node")
}

fn query(tid: &[u8; 4], method: &str) -> Vec<u8> {
    let mut args = BTreeMap::new();
    args.insert(b"id".to_vec(), Value::Bytes(vec![9; 20]));
    Message::query(
        *tid,
        Query::Other {
            method: method.as_bytes().to_vec(),
            args: Value::Dict(args),
        },
    )
    .emit()
}

/// Datagrams that are not valid KRPC queries, or are stray responses and errors.
fn malformed() -> Vec<Vec<u8>> {
    let id = "i".repeat(20);
    let mut out: Vec<Vec<u8>> = [
        "",
        "\0",
        "x",
        "d",
        "de",
        "le",
        "i42e",
        "4:spam",
        "d1:t",
        "d1:t4:aaaa1:y1:qe",                                          // no method
        "d1:q4:ping1:t4:aaaa1:y1:qe",                                 // no arguments
        "d1:ad2:id3:abce1:q4:ping1:t4:aaaa1:y1:qe",                   // short id
        "d1:ali1ee1:q4:ping1:t4:aaaa1:y1:qe",                         // arguments not a dict
        "d1:ad2:id20:iiiiiiiiiiiiiiiiiiiie1:q4:ping1:t0:1:y1:qe",     // empty tid
        "d1:ad2:id20:iiiiiiiiiiiiiiiiiiiie1:q4:ping1:ti7e1:y1:qe",    // integer tid
        "d1:ad2:id20:iiiiiiiiiiiiiiiiiiiie1:q4:ping1:t4:aaaa1:y1:ze", // unknown y
        "d1:ad2:id20:iiiiiiiiiiiiiiiiiiiie1:q4:ping1:t4:aaaa1:y1:qe", // valid ping, for contrast
        "d1:eli201e5:oops!e1:t4:zzzz1:y1:ee",                         // stray error
        "d1:ei201e1:t4:zzzz1:y1:ee",                                  // error not a list
        "d1:rd2:id20:rrrrrrrrrrrrrrrrrrrr5:nodes3:abce1:t4:zzzz1:y1:re", // bad nodes
        "d1:rd2:id20:rrrrrrrrrrrrrrrrrrrre1:t4:zzzz1:y1:re",          // stray response
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    out.push(vec![0xff, 0xfe, 0x80, 0x00, 0x7f]);
    out.push(
        format!(
            "d1:ad2:id20:{id}6:target19:{}e1:q9:find_node1:t4:aaaa1:y1:qe",
            "t".repeat(19)
        )
        .into_bytes(),
    );
    out.push(
        format!(
            "d1:ad2:id20:{id}9:info_hash20:{id}4:porti70000e5:token2:xxe1:q13:announce_peer1:t4:aaaa1:y1:qe"
        )
        .into_bytes(),
    );
    out.push(
        format!("d1:ad2:id20:{id}3:seq1:x6:target20:{id}e1:q3:get1:t4:aaaa1:y1:qe").into_bytes(),
    );
    out.push(format!("d1:ad2:id20:{id}5:token2:xx1:vi03ee1:q3:put1:t4:aaaa1:y1:qe").into_bytes());
    // Deep nesting and a large datagram.
    let deep = format!(
        "d1:ad2:id20:{id}1:x{}{}e1:q4:ping1:t4:aaaa1:y1:qe",
        "l".repeat(5000),
        "e".repeat(5000)
    );
    out.push(deep.into_bytes());
    let big = format!(
        "d1:ad2:id20:{id}1:x60000:{}e1:q4:ping1:t4:aaaa1:y1:qe",
        "b".repeat(60000)
    );
    out.push(big.into_bytes());
    for method in ["vote", "sample_infohashes_x", ECHO, "natkit.announce"] {
        out.push(query(b"uuuu", method));
    }
    out
}

/// Every strict prefix of two valid queries: none is valid bencode.
fn truncated() -> Vec<Vec<u8>> {
    let find = Message::query(
        *b"ffff",
        Query::FindNode {
            id: Id([1; 20]),
            target: Id([2; 20]),
        },
    )
    .emit();
    let get = Message::query(
        *b"gggg",
        Query::Get {
            id: Id([1; 20]),
            target: Id([3; 20]),
            seq: Some(5),
        },
    )
    .emit();
    let mut out = Vec::new();
    for q in [find, get] {
        for n in 0..q.len() {
            out.push(q[..n].to_vec());
        }
    }
    out
}

/// Sends `datagrams` to `to` from a fresh socket, paced; every datagram that came back.
async fn flood(to: SocketAddr, datagrams: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let sock = UdpSocket::bind(LOOPBACK).await.expect("socket");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for d in &datagrams {
        // A send can fail (e.g. an ICMP error from an earlier one); the node must cope anyway.
        let _ = sock.send_to(d, to).await;
        let pause = tokio::time::sleep(FLOOD_PACING);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                r = sock.recv_from(&mut buf) => if let Ok((n, _)) = r { got.push(buf[..n].to_vec()) },
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

/// What each address answered to one datagram (skipping queries they send us), within
/// [`ANSWER_WAIT`]; silent addresses are missing.
async fn ask_all(
    sock: &UdpSocket,
    to: &[SocketAddr],
    datagram: &[u8],
) -> HashMap<SocketAddr, Vec<u8>> {
    for a in to {
        sock.send_to(datagram, a).await.expect("send");
    }
    let mut answers = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    while answers.len() < to.len() {
        let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
        else {
            break;
        };
        let bytes = buf[..n].to_vec();
        if matches!(
            krpc::parse(&bytes),
            Ok(Message {
                kind: Kind::Query(_),
                ..
            })
        ) {
            continue; // a node pinging the newcomer back
        }
        answers.insert(from, bytes);
    }
    answers
}

async fn pings_back(node: &Dht) -> bool {
    let sock = UdpSocket::bind(LOOPBACK).await.expect("socket");
    let ping = Message::query(*b"pppp", Query::Ping { id: Id([4; 20]) }).emit();
    let answers = ask_all(&sock, &[node.local_addr()], &ping).await;
    answers.get(&node.local_addr()).is_some_and(|a| {
        matches!(krpc::parse(a), Ok(Message { transaction_id, kind: Kind::Response(r), .. })
            if transaction_id == b"pppp" && r.id == node.id())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_in_a_mixed_network_does_not_break_natkit() {
    if !libtorrent_or_skip("malformed_input_in_a_mixed_network_does_not_break_natkit") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        // The mixed network: libtorrent lt0, lt1; natkit nk0 from lt0; mainline m0 from nk0, m1
        // from m0; natkit nk1 from one of each.
        let mut lt = Libtorrent::start(2).await;
        let nk0 = natkit_node(&[lt.addr(0)]).await;
        // An item libtorrent stores before mainline nodes join: `mainline` drops libtorrent's
        // queries (2-byte transaction ids), so libtorrent's lookups then wait on them.
        let r = lt
            .cmd(&format!("put_immutable 1 {}", hex(b"from lt")))
            .await;
        let lt_item = support::id_from_hex(&r["target"]);
        let m0 = mainline_node(Some(nk0.local_addr()));
        assert!(m0.bootstrapped().await, "mainline bootstraps from natkit");
        let m0_addr = SocketAddr::V4(m0.info().await.local_addr());
        let m0_id = Id(*m0.info().await.id().as_bytes());
        let m1 = mainline_node(Some(m0_addr));
        assert!(m1.bootstrapped().await);
        let m1_addr = SocketAddr::V4(m1.info().await.local_addr());
        let nk1 = natkit_node(&[nk0.local_addr(), lt.addr(0), m0_addr]).await;
        for i in 0..2 {
            lt.cmd(&format!("add_node {i} {}", nk0.local_addr().port()))
                .await;
            lt.cmd(&format!("add_node {i} {}", nk1.local_addr().port()))
                .await;
        }
        let lt_ids = lt.ids().await;
        let natkit = [nk0.local_addr(), nk1.local_addr()];
        let third_party = [lt.addr(0), lt.addr(1), m0_addr, m1_addr];

        // 1. Malformed and truncated datagrams to every node at once.
        let bad = malformed();
        let cut = truncated();
        let all: Vec<Vec<u8>> = bad.iter().chain(&cut).cloned().collect();
        let floods = natkit
            .iter()
            .chain(&third_party)
            .map(|to| tokio::spawn(flood(*to, all.clone())));
        let mut replies = Vec::new();
        for f in floods {
            replies.push(f.await.expect("flood task"));
        }
        // natkit's answers are well-formed errors (203/204), responses to the valid queries
        // among them, or the ping a node sends a newcomer.
        for (node, answers) in natkit.iter().zip(&replies) {
            let mut protocol_errors = 0;
            for a in answers {
                match krpc::parse(a) {
                    Ok(Message {
                        kind: Kind::Error(e),
                        ..
                    }) => {
                        assert!(
                            [ERROR_PROTOCOL, ERROR_METHOD_UNKNOWN].contains(&e.code),
                            "{node} answered {e:?}"
                        );
                        protocol_errors += usize::from(e.code == ERROR_PROTOCOL);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("{node} sent an invalid datagram ({e}): {a:?}"),
                }
            }
            assert!(
                protocol_errors >= 5,
                "{node}: only {protocol_errors} 203 answers"
            );
        }
        for node in [&nk0, &nk1] {
            let s = node.stats().await.expect("stats");
            assert!(
                s.malformed_in >= cut.len() as u64,
                "{} counted {} malformed of {} truncated",
                node.local_addr(),
                s.malformed_in,
                cut.len()
            );
            assert!(
                pings_back(node).await,
                "natkit answers ping after the flood"
            );
        }

        // 2. natkit.* queries: natkit nodes answer, third-party nodes answer 204 (or 203) or
        // nothing, never a response.
        let sock = UdpSocket::bind(LOOPBACK).await.expect("socket");
        let everyone: Vec<SocketAddr> = natkit.iter().chain(&third_party).copied().collect();
        let answers = ask_all(&sock, &everyone, &query(b"echo", ECHO)).await;
        for n in natkit {
            let a = answers.get(&n).expect("a natkit node answers natkit.echo");
            match krpc::parse(a).expect("valid").kind {
                Kind::Response(r) => assert!(r.extra.contains_key(&b"port"[..])),
                other => panic!("{n}: {other:?}"),
            }
        }
        let mut third_party_errors = Vec::new();
        for n in third_party {
            let Some(a) = answers.get(&n) else {
                eprintln!("{n} stays silent on {ECHO}");
                continue;
            };
            let m = krpc::parse(a).unwrap_or_else(|e| panic!("{n} answered garbage ({e})"));
            assert_eq!(m.transaction_id, b"echo");
            match m.kind {
                Kind::Error(e) => {
                    eprintln!(
                        "{n} answers {ECHO} with {} {}",
                        e.code,
                        String::from_utf8_lossy(&e.message)
                    );
                    assert!([ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL].contains(&e.code));
                    third_party_errors.push(a.clone());
                }
                other => panic!("{n} answered {ECHO} with {other:?}"),
            }
        }
        // Their errors, and everything the third parties sent back to the flood, arrive at
        // natkit's nodes as stray messages.
        for stray in third_party_errors
            .iter()
            .chain(replies[2..].iter().flatten())
        {
            for n in natkit {
                let _ = sock.send_to(stray, n).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        // 3. natkit still works, and so does the network around it.
        for node in [&nk0, &nk1] {
            assert!(
                pings_back(node).await,
                "natkit answers ping after stray errors"
            );
        }
        let found = nk1.find_node(lt_ids[1]).await.expect("find_node");
        assert_eq!(found.first().map(|n| n.id), Some(lt_ids[1]));
        // A mainline node is found through another natkit node's answer: m0 answered nk1 (its
        // bootstrap), so nk1 names it, and nk0 (which knows m0 only from its queries, so never
        // asks it on its own) finds it. (m1 has answered nobody's query: neither mainline nor
        // natkit nodes name it.)
        let found = nk0.find_node(m0_id).await.expect("find_node");
        assert_eq!(found.first().map(|n| n.id), Some(m0_id));
        // A newcomer that knows only libtorrent node 1 finds natkit node 0 and stores an item
        // that libtorrent and mainline nodes then return.
        let newcomer = natkit_node(&[lt.addr(1)]).await;
        let found = newcomer.find_node(nk0.id()).await.expect("find_node");
        assert_eq!(found.first().map(|n| n.id), Some(nk0.id()));
        let v = Value::Bytes(b"still working".to_vec());
        let target = newcomer.put_immutable(v.clone()).await.expect("put");
        let r = lt
            .cmd(&format!("get_immutable 0 {}", target.to_hex()))
            .await;
        assert_eq!(unhex(&r["item"]), b"13:still working");
        let got = m1
            .get_immutable(mainline::Id::from_bytes(target.0).expect("id"))
            .await;
        assert_eq!(got.as_deref(), Some(&b"still working"[..]));
        let got = nk0.get_immutable(lt_item).await.expect("get");
        assert_eq!(got, Some(Value::Bytes(b"from lt".to_vec())));

        newcomer.shutdown().await;
        nk1.shutdown().await;
        nk0.shutdown().await;
        lt.quit().await;
    })
    .await
    .expect("malformed interop test timed out");
}
