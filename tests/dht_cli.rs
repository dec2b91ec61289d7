//! `natkit dht run|put|get` on loopback: a running node, and put/get of
//! immutable and mutable items through it by short-lived nodes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;
use common::natkit;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
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

    // Missing items and bad input: exit 1 with one line.
    let missing = natkit(
        &key,
        &[&common[..], &["dht", "get", &"0".repeat(40)], &bind[..]].concat(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(text(&missing.stderr), "natkit: error: not found");
    let bad = natkit(&key, &[&common[..], &["dht", "get", "xyz"]].concat());
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(text(&bad.stderr).lines().count(), 1);
    let lonely = natkit(&key, &["dht", "put", "x"]);
    assert_eq!(lonely.status.code(), Some(1));
    assert!(text(&lonely.stderr).contains("--bootstrap"));

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
