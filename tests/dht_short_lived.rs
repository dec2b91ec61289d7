//! Long-running `natkit dht run` nodes on loopback, then 50 one-shot CLI puts and 50 gets in a
//! row: the short-lived processes never end up in the long-running nodes' answers (they join
//! read-only, BEP 43, and answers name only nodes that answered recently), so the network does
//! not fill up with dead addresses and later gets stay as fast as the first (the times are
//! printed, not asserted: speed is the benchmarks' business).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natkit_dht::{Id, Kind, Message, Query, krpc};

mod common;
use common::natkit;

const RUNS: usize = 50;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// A `dht run` node; returns it and its address.
fn run_node(key: &std::path::Path, bootstrap: Option<&str>) -> (Child, String) {
    let mut args = vec!["--json"];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    args.extend(["dht", "run", "--bind", "127.0.0.1:0"]);
    let mut node = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(&args)
        .env("NATKIT_KEY", key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn natkit dht run");
    let mut first = String::new();
    BufReader::new(node.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    let v: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(v["event"], "dht_running", "{first}");
    let addr = v["addr"].as_str().expect("addr").to_string();
    (node, addr)
}

/// Every node `at` names in its answer to a `find_node` for `target`.
fn named(sock: &UdpSocket, at: SocketAddr, target: Id) -> Vec<SocketAddr> {
    let q = Query::FindNode {
        id: Id([0xee; 20]),
        target,
    };
    sock.send_to(&Message::query(*b"find", q).emit(), at)
        .expect("send");
    let mut buf = [0u8; 2048];
    let (len, _) = sock.recv_from(&mut buf).expect("an answer");
    let Ok(Message {
        kind: Kind::Response(r),
        ..
    }) = krpc::parse(&buf[..len])
    else {
        panic!("not an answer")
    };
    let nodes = r.nodes.unwrap_or_default();
    nodes.into_iter().map(|n| SocketAddr::V4(n.addr)).collect()
}

/// Whether something at `addr` answers a ping within a second.
fn alive(addr: SocketAddr) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let q = Query::Ping { id: Id([0xef; 20]) };
    sock.send_to(&Message::query(*b"ping", q).emit(), addr)
        .expect("send");
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf).is_ok()
}

#[test]
fn fifty_one_shot_puts_and_gets_leave_no_dead_address_in_the_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("{i}.key")))
        .collect();
    let (first, addr) = run_node(&keys[0], None);
    let mut nodes = vec![first];
    for key in &keys[1..3] {
        nodes.push(run_node(key, Some(&addr)).0);
    }
    let client = &keys[3];
    let common = ["--bootstrap", addr.as_str()];
    let bind = ["--bind", "127.0.0.1:0"];

    let mut get_times = Vec::new();
    for i in 0..RUNS {
        let value = format!("short-lived value {i}");
        let put = natkit(
            client,
            &[&common[..], &["dht", "put", &value], &bind[..]].concat(),
        );
        assert!(put.status.success(), "put {i}: {}", text(&put.stderr));
        let target = text(&put.stdout);
        let started = Instant::now();
        let get = natkit(
            client,
            &[&common[..], &["dht", "get", &target], &bind[..]].concat(),
        );
        get_times.push(started.elapsed());
        assert!(get.status.success(), "get {i}: {}", text(&get.stderr));
        assert_eq!(text(&get.stdout), value);
    }
    let first_get = get_times[0].as_secs_f64();
    let last_get = get_times[RUNS - 1].as_secs_f64();
    eprintln!(
        "{RUNS} put/get pairs: first get {first_get:.3} s, last get {last_get:.3} s \
         ({:.2}x), slowest {:.3} s",
        last_get / first_get,
        get_times.iter().max().expect("times").as_secs_f64(),
    );

    // The long-running nodes name only each other: every address they hand out answers.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let at: SocketAddr = addr.parse().expect("addr");
    let mut rng = natkit_dht::sim::SplitMix(50);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.extend(named(&sock, at, rng.id()));
    }
    assert!(!seen.is_empty(), "the first node knows the other two");
    assert!(
        seen.len() <= 2,
        "more than the two other long-running nodes: {seen:?}"
    );
    for a in &seen {
        assert!(alive(*a), "dead address {a} handed out");
    }

    for mut n in nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
}
