//! `natkit dht run|put|get` on loopback: a running node, and put/get of
//! immutable and mutable items through it by short-lived nodes.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Output, Stdio};

mod common;
use common::natkit;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// A usage error: exit 2, one line on stderr, nothing on stdout.
fn assert_usage_error(o: &Output, what: &str) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(err.starts_with("natkit: usage error: "), "{what}: {err}");
    assert!(o.stdout.is_empty(), "{what}");
    err
}

#[test]
fn put_and_get_through_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let mut node = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(["--json", "dht", "run", "--bind", "127.0.0.1:0"])
        .env("NATKIT_KEY", &key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["event"], "dht_running");
    let addr = v["addr"].as_str().unwrap().to_string();
    let common = ["--bootstrap", &addr];
    let bind = ["--bind", "127.0.0.1:0"];

    // Immutable: the target is the SHA-1 of the bencoded value.
    let put = natkit(
        &key,
        &[&common[..], &["dht", "put", "hello dht"], &bind[..]].concat(),
    );
    assert!(put.status.success(), "{}", text(&put.stderr));
    let target = text(&put.stdout);
    assert_eq!(target.len(), 40);
    let get = natkit(
        &key,
        &[&common[..], &["dht", "get", &target], &bind[..]].concat(),
    );
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(text(&get.stdout), "hello dht");

    // Mutable: signed by our key, found under our node id and salt; a higher
    // seq replaces it.
    let id = text(&natkit(&key, &["showid"]).stdout);
    for (seq, value) in [("1", "first"), ("2", "second")] {
        let put = natkit(
            &key,
            &[
                &common[..],
                &[
                    "dht",
                    "put",
                    value,
                    "--mutable",
                    "--salt",
                    "s",
                    "--seq",
                    seq,
                ],
                &bind[..],
            ]
            .concat(),
        );
        assert!(put.status.success(), "{}", text(&put.stderr));
    }
    let get = natkit(
        &key,
        &[
            &common[..],
            &["--json", "dht", "get", &id, "--mutable", "--salt", "s"],
            &bind[..],
        ]
        .concat(),
    );
    assert!(get.status.success(), "{}", text(&get.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&get.stdout)).unwrap();
    assert_eq!(v["value"], "second");
    assert_eq!(v["seq"], 2);

    // A value from the network is printed with its control characters
    // escaped; --json keeps it exact.
    let nasty = "line one\nmessage from someone: FORGED \x1b[31mred\x07";
    let put = natkit(
        &key,
        &[&common[..], &["dht", "put", nasty], &bind[..]].concat(),
    );
    assert!(put.status.success(), "{}", text(&put.stderr));
    let nasty_target = text(&put.stdout);
    let get = natkit(
        &key,
        &[&common[..], &["dht", "get", &nasty_target], &bind[..]].concat(),
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout),
        "line one\\nmessage from someone: FORGED \\x1b[31mred\\x07\n"
    );
    let get = natkit(
        &key,
        &[
            &common[..],
            &["--json", "dht", "get", &nasty_target],
            &bind[..],
        ]
        .concat(),
    );
    let v: serde_json::Value = serde_json::from_str(&text(&get.stdout)).unwrap();
    assert_eq!(v["value"], nasty);

    // Missing items: exit 1 with one line. Bad input: exit 2 (usage).
    let missing = natkit(
        &key,
        &[&common[..], &["dht", "get", &"0".repeat(40)], &bind[..]].concat(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(text(&missing.stderr), "natkit: error: not found");
    let bad = natkit(&key, &[&common[..], &["dht", "get", "xyz"]].concat());
    assert_usage_error(&bad, "get xyz");
    let lonely = natkit(&key, &["dht", "put", "x"]);
    assert!(assert_usage_error(&lonely, "put without --bootstrap").contains("--bootstrap"));

    // The node stops cleanly on SIGTERM.
    let pid = node.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = node.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A UDP socket standing in for a bootstrap node: it only listens.
fn silent_bootstrap() -> (UdpSocket, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    (s, addr)
}

#[test]
fn usage_errors_exit_2_before_any_network_work() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let (sock, boot) = silent_bootstrap();
    let id = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(["showid"])
        .env("NATKIT_KEY", &key)
        .output()
        .unwrap();
    let id = text(&id.stdout);
    let long_text = "m".repeat(513);
    let long_value = "v".repeat(1000);
    let long_salt = "s".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["dht", "get", "xyz"], "not a target"),
        (vec!["dht", "get", &id], "add --mutable"),
        (vec!["dht", "get", "xyz", "--mutable"], "node id"),
        (vec!["dht", "send", "xyz", "hi"], "recipient"),
        (vec!["dht", "send", &id, &long_text], "512-byte limit"),
        (
            vec!["dht", "send", &id, "hi", "--via", "[::1]:6881"],
            "IPv4 only",
        ),
        (vec!["dht", "put", &long_value], "1000-byte limit"),
        (
            vec!["dht", "put", "x", "--mutable", "--salt", &long_salt],
            "salt",
        ),
        (
            vec!["dht", "get", &id, "--mutable", "--salt", &long_salt],
            "salt",
        ),
        (vec!["dht", "run", "--bind", "[::1]:0"], "IPv4 only"),
        (
            vec!["--port", "7", "dht", "run", "--bind", "127.0.0.1:8"],
            "disagree",
        ),
    ];
    for (args, says) in &cases {
        let mut all = vec!["--bootstrap", &boot];
        all.extend_from_slice(args);
        let o = natkit(&key, &all);
        let err = assert_usage_error(&o, &format!("{args:?}"));
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Without --bootstrap.
    for cmd in [
        &["dht", "put", "x"][..],
        &["dht", "get", &id, "--mutable"],
        &["dht", "listen"],
        &["dht", "send", &id, "hi"],
    ] {
        let err = assert_usage_error(&natkit(&key, cmd), &format!("{cmd:?}"));
        assert!(err.contains("needs --bootstrap"), "{err}");
    }
    // Nothing reached the bootstrap node.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1500];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a usage error sent a datagram"
    );
}

#[test]
fn an_ipv6_bootstrap_node_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    for boot in ["[::1]:6881", "::1:6881", "[2001:db8::1]:6881"] {
        let o = natkit(&key, &["--bootstrap", boot, "dht", "get", &"0".repeat(40)]);
        let err = assert_usage_error(&o, boot);
        assert!(err.contains("IPv4 only for now"), "{boot}: {err}");
    }
}
