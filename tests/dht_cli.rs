//! `natkit dht run|put|get|listen|send` on loopback: a running node, put/get of
//! immutable and mutable items and messages through it by short-lived nodes,
//! usage errors, read-only one-shot nodes and progress logs.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::natkit;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// A `natkit dht ...` process that keeps running (a node, a listener); killed
/// when dropped, also when a test fails.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn spawn(key: &Path, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_natkit"))
            .args(args)
            .env("NATKIT_KEY", key)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Running { child, stdout }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// A running DHT node: its address and its first line, as JSON.
    fn node(key: &Path) -> (Running, String, serde_json::Value) {
        let mut node = Running::spawn(key, &["--json", "dht", "run", "--bind", "127.0.0.1:0"]);
        let v: serde_json::Value = serde_json::from_str(&node.line()).unwrap();
        assert_eq!(v["event"], "dht_running");
        let addr = v["addr"].as_str().unwrap().to_string();
        (node, addr, v)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs natkit through `bootstrap` with a loopback bind.
fn through(key: &Path, bootstrap: &str, args: &[&str]) -> Output {
    let mut all = vec!["--bootstrap", bootstrap];
    all.extend_from_slice(args);
    all.extend(["--bind", "127.0.0.1:0"]);
    natkit(key, &all)
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
    let (node, addr, _) = Running::node(&key);
    let put_get = |args: &[&str]| through(&key, &addr, args);

    // Immutable: the target is the SHA-1 of the bencoded value.
    let put = put_get(&["dht", "put", "hello dht"]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    let target = text(&put.stdout);
    assert_eq!(target.len(), 40);
    let get = put_get(&["dht", "get", &target]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(text(&get.stdout), "hello dht");

    // Mutable: signed by our key, found under our node id and salt; a higher
    // seq replaces it. put says which key it is stored under.
    let id = text(&natkit(&key, &["showid"]).stdout);
    for (seq, value) in [("1", "first"), ("2", "second")] {
        let put = put_get(&[
            "dht",
            "put",
            value,
            "--mutable",
            "--salt",
            "s",
            "--seq",
            seq,
        ]);
        assert!(put.status.success(), "{}", text(&put.stderr));
        let out = text(&put.stdout);
        assert!(
            out.contains(&format!("stored under node id {id} (public key)")),
            "{out}"
        );
    }
    let get = put_get(&["--json", "dht", "get", &id, "--mutable", "--salt", "s"]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&get.stdout)).unwrap();
    assert_eq!(v["value"], "second");
    assert_eq!(v["seq"], 2);
    // The same key as 64 hex digits (the form other BEP 44 tools print).
    let shown: serde_json::Value =
        serde_json::from_str(&text(&natkit(&key, &["--json", "showid"]).stdout)).unwrap();
    let hex = shown["public_key"].as_str().unwrap().to_string();
    assert_eq!(hex.len(), 64);
    let get = put_get(&["dht", "get", &hex, "--mutable", "--salt", "s"]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(text(&get.stdout), "second");

    // A value from the network is printed with its control characters
    // escaped; --json keeps it exact.
    let nasty = "line one\nmessage from someone: FORGED \x1b[31mred\x07";
    let put = put_get(&["dht", "put", nasty]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    let target = text(&put.stdout);
    let get = put_get(&["dht", "get", &target]);
    let out = String::from_utf8_lossy(&get.stdout).into_owned();
    assert_eq!(
        out,
        "line one\\nmessage from someone: FORGED \\x1b[31mred\\x07\n"
    );
    let get = put_get(&["--json", "dht", "get", &target]);
    let v: serde_json::Value = serde_json::from_str(&text(&get.stdout)).unwrap();
    assert_eq!(v["value"], nasty);

    // Missing items: exit 1 with one line. Bad input: exit 2 (usage).
    let missing = put_get(&["dht", "get", &"0".repeat(40)]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(text(&missing.stderr), "natkit: error: not found");
    let bad = natkit(&key, &["--bootstrap", &addr, "dht", "get", "xyz"]);
    assert_usage_error(&bad, "get xyz");
    let lonely = natkit(&key, &["dht", "put", "x"]);
    assert!(assert_usage_error(&lonely, "put without --bootstrap").contains("--bootstrap"));

    // The node stops cleanly on SIGTERM.
    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut node = node;
    let status = node.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn run_names_both_ids() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let id = text(&natkit(&key, &["showid"]).stdout);
    let (_node, _, v) = Running::node(&key);
    let dht_id = v["id"].as_str().unwrap();
    assert_eq!(dht_id.len(), 40);
    assert_eq!(v["dht_id"], dht_id);
    assert_eq!(v["node_id"], id.as_str());
    assert_eq!(v["public_key"].as_str().map(str::len), Some(64));
    let mut human = Running::spawn(&key, &["dht", "run", "--bind", "127.0.0.1:0"]);
    let line = human.line();
    assert!(line.starts_with("dht node id "), "{line}");
    assert!(line.contains(" (DHT routing id), node id "), "{line}");
    assert!(
        line.contains(&format!("{id} (public key) on 127.0.0.1:")),
        "{line}"
    );

    // A DHT id where a public key is wanted: a usage error that says so.
    let no_net = "127.0.0.1:9";
    for args in [
        &["dht", "get", dht_id, "--mutable"][..],
        &["dht", "send", dht_id, "hi"],
    ] {
        let err = assert_usage_error(&through(&key, no_net, args), &format!("{args:?}"));
        assert!(
            err.contains("DHT id") && err.contains("not a public key"),
            "{err}"
        );
    }
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

#[test]
fn one_shot_commands_join_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let id = text(&natkit(&key, &["showid"]).stdout);
    let target = "0".repeat(40);
    let first_query = |args: &[&str]| {
        let (sock, boot) = silent_bootstrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut all = vec!["--bootstrap", &boot];
        all.extend_from_slice(args);
        all.extend(["--bind", "127.0.0.1:0"]);
        let _running = Running::spawn(&key, &all);
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf).expect("a bootstrap query");
        buf[..n].to_vec()
    };
    let read_only = |q: &[u8]| q.windows(7).any(|w| w == b"2:roi1e");
    for args in [
        &["dht", "get", &target][..],
        &["dht", "put", "x"],
        &["dht", "send", &id, "hi"],
    ] {
        let q = first_query(args);
        assert!(read_only(&q), "{args:?}: {}", String::from_utf8_lossy(&q));
    }
    // listen and run stay full nodes.
    assert!(!read_only(&first_query(&["dht", "listen"])));
    assert!(!read_only(&first_query(&["dht", "run"])));
}

#[test]
fn verbose_shows_the_lookup_progress() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let (_node, addr, _) = Running::node(&key);
    let o = through(&key, &addr, &["-v", "dht", "get", &"0".repeat(40)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("DHT bootstrap done") && err.contains("nodes_known=1"),
        "{err}"
    );
    assert!(
        err.contains("DHT request done") && err.contains("get immutable"),
        "{err}"
    );
    assert!(
        err.contains("not found") && err.contains("answered=1"),
        "{err}"
    );
    assert!(
        !err.contains("DHT lookup reply"),
        "replies are for -vv: {err}"
    );
    let o = through(&key, &addr, &["-vv", "dht", "get", &"0".repeat(40)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("DHT lookup reply") && err.contains("log2_distance="),
        "{err}"
    );
}

#[test]
fn messages_arrive_escaped_and_failures_name_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr, _) = Running::node(&dir.path().join("node.key"));
    let alice = dir.path().join("alice.key");
    let bob = dir.path().join("bob.key");
    let alice_id = text(&natkit(&alice, &["showid"]).stdout);
    let bob_id = text(&natkit(&bob, &["showid"]).stdout);

    // Nobody registered as bob: the rendezvous node says so, in words.
    let o = through(&alice, &addr, &["dht", "send", &bob_id, "hello?"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("not delivered: no rendezvous node knows the recipient (480) from 1 node"),
        "{err}"
    );
    assert!(!err.contains("error codes"), "{err}");

    // Alice listens; bob's message tries to forge a second line and colours.
    let mut listener = Running::spawn(
        &alice,
        &[
            "--bootstrap",
            &addr,
            "dht",
            "listen",
            "--bind",
            "127.0.0.1:0",
        ],
    );
    let registered = listener.line();
    assert!(
        registered.starts_with(&format!("registered {alice_id} with ")),
        "{registered}"
    );
    let forged =
        format!("hi\nmessage from {bob_id} (1.2.3.4:5 via {addr}): FORGED \x1b[31mred\u{9b}");
    let o = through(&bob, &addr, &["dht", "send", &alice_id, &forged]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let line = listener.line();
    assert!(
        line.starts_with(&format!("message from {bob_id} (127.0.0.1:")),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            "hi\\nmessage from {bob_id} (1.2.3.4:5 via {addr}): FORGED \\x1b[31mred\\u{{9b}}\n"
        )),
        "{line}"
    );
    assert!(!line.contains('\x1b') && !line.contains('\u{9b}'));
}
