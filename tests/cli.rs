//! The `natkit` command line: identity, UNL encode/decode, exit codes and errors.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

mod common;
use common::natkit;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure: exit code 1 or 2, and exactly one line on stderr, no panic.
fn assert_clean_failure(o: &Output, what: &str) {
    let code = o.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "{what}: exit {code:?}, stderr {}",
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(
        err.lines().count(),
        1,
        "{what}: stderr is not one line: {err}"
    );
    assert!(err.starts_with("natkit: "), "{what}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{what}: {err}"
    );
    assert!(o.stdout.is_empty(), "{what}: printed to stdout on failure");
}

#[test]
fn showid_creates_a_private_key_once_and_prints_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("conf/id.key");
    let first = natkit(&key, &["showid"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let id = stdout(&first).trim().to_string();
    assert_eq!(id.len(), 52);
    assert!(stderr(&first).contains("created a new identity key"));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let second = natkit(&key, &["showid"]);
    assert_eq!(stdout(&second).trim(), id);
    assert!(stderr(&second).is_empty());
    let json = natkit(&key, &["showid", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(v["node_id"], id.as_str());
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    assert!(natkit(&key, &["showid"]).status.success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = natkit(&key, &["showid"]);
    assert_clean_failure(&o, "insecure key");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chmod 600"));
}

#[test]
fn a_key_path_that_is_not_a_regular_file_is_refused_as_such() {
    // /dev/null is mode 666: the file type is checked first, so nobody is
    // told to chmod it.
    let dir = tempfile::tempdir().unwrap();
    for path in [std::path::Path::new("/dev/null"), dir.path()] {
        let o = natkit(path, &["showid"]);
        assert_clean_failure(&o, &path.display().to_string());
        let err = stderr(&o);
        assert!(err.contains("not a regular file"), "{err}");
        assert!(!err.contains("chmod"), "{err}");
    }
}

#[test]
fn a_malformed_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = natkit(&key, &["showid"]);
    assert_clean_failure(&o, "malformed key");
    assert!(stderr(&o).contains("malformed"));
}

#[test]
fn decode_accepts_what_encode_builds() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let id = stdout(&natkit(&key, &["showid"])).trim().to_string();
    let enc = natkit(
        &key,
        &[
            "unl",
            "encode",
            "--addr",
            "lan=10.0.1.2:50500",
            "--addr",
            "observed=203.0.113.10:50500",
            "--addr",
            "upnp=[2001:db8::1]:4000",
            "--nat",
            "incrementing",
            "--delta",
            "-2",
            "--node",
            "hole-punch",
            "--rendezvous",
            "203.0.113.100:6881",
            "--timestamp",
            "1795000000",
            "--sign",
        ],
    );
    assert!(enc.status.success(), "{}", stderr(&enc));
    let unl = stdout(&enc).trim().to_string();
    let dec = natkit(&key, &["unl", "decode", &unl, "--json"]);
    assert!(dec.status.success(), "{}", stderr(&dec));
    let v: serde_json::Value = serde_json::from_str(stdout(&dec).trim()).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["node_id"], id.as_str());
    assert_eq!(v["addrs"][0]["source"], "lan");
    assert_eq!(v["addrs"][0]["addr"], "10.0.1.2:50500");
    assert_eq!(v["addrs"][1]["source"], "observed");
    assert_eq!(v["addrs"][2]["addr"], "[2001:db8::1]:4000");
    assert_eq!(v["nat"]["type"], "incrementing");
    assert_eq!(v["nat"]["delta"], -2);
    assert_eq!(v["node"], "hole-punch");
    assert_eq!(v["rendezvous"][0], "203.0.113.100:6881");
    assert_eq!(v["timestamp"], 1795000000u32);
    assert!(v["signature"].is_string());

    // Human-readable form has every field.
    let human = stdout(&natkit(&key, &["unl", "decode", &unl]));
    for needle in [
        "node id:",
        "lan 10.0.1.2:50500",
        "incrementing (delta -2)",
        "hole-punch",
        "203.0.113.100:6881",
        "valid",
    ] {
        assert!(human.contains(needle), "missing {needle:?} in {human}");
    }

    // Encoding someone else's id needs no key; signing it is refused.
    let other = "rkeohxlubhyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5oa";
    let o = natkit(
        &key,
        &["unl", "encode", "--node-id", other, "--timestamp", "0"],
    );
    assert!(o.status.success());
    let o = natkit(&key, &["unl", "encode", "--node-id", other, "--sign"]);
    assert_clean_failure(&o, "sign another node's UNL");
}

#[test]
fn decode_accepts_every_test_vector_in_the_docs() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/unl.md")).unwrap();
    let vectors: Vec<&str> = doc
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("nk") && l.len() > 40)
        .collect();
    assert!(vectors.len() >= 3);
    for v in vectors {
        let o = natkit(&key, &["unl", "decode", v, "--json"]);
        assert!(o.status.success(), "{v}: {}", stderr(&o));
        let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert!(json["node_id"].is_string());
        // And it encodes back to the same text.
        let mut args = vec!["unl", "encode"];
        let id = json["node_id"].as_str().unwrap().to_string();
        args.extend(["--node-id", &id]);
        let addrs: Vec<String> = json["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{}={}",
                    a["source"].as_str().unwrap(),
                    a["addr"].as_str().unwrap()
                )
            })
            .collect();
        for a in &addrs {
            args.extend(["--addr", a]);
        }
        if json["signature"].is_null() {
            let nat = json["nat"]["type"].as_str().unwrap().to_string();
            let delta = json["nat"]["delta"].to_string();
            let node = json["node"].as_str().unwrap().to_string();
            let ts = json["timestamp"].to_string();
            let rdv: Vec<String> = json["rendezvous"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            args.extend(["--nat", &nat, "--node", &node, "--timestamp", &ts]);
            if nat == "incrementing" {
                args.extend(["--delta", &delta]);
            }
            for r in &rdv {
                args.extend(["--rendezvous", r]);
            }
            let o = natkit(&key, &args);
            assert_eq!(stdout(&o).trim(), v, "re-encode of {v}");
        }
    }
}

#[test]
fn garbage_gives_a_one_line_error_and_exit_1_or_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let long = "nk".to_string() + &"a".repeat(5000);
    let cases: Vec<Vec<&str>> = vec![
        vec!["unl", "decode", "garbage"],
        vec!["unl", "decode", ""],
        vec!["unl", "decode", "nk"],
        vec!["unl", "decode", "nk!!!!"],
        vec!["unl", "decode", "nkaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        vec![
            "unl",
            "decode",
            "nkccfiry65oqe7dfp5klns2pf2lvzmuzyjx4ozieq36n2iqanub5xvyitk7wdmaiaabiaacawfiqa4wadrblcuirrfsrib",
        ],
        vec!["unl", "decode", &long],
        vec!["unl", "decode", "💥"],
        vec!["unl", "decode"],
        vec!["unl", "encode", "--addr", "nowhere"],
        vec!["unl", "encode", "--addr", "lan=1.2.3.4:0"],
        vec!["unl", "encode", "--nat", "incrementing"],
        vec!["unl", "encode", "--node-id", "xyz"],
        vec!["unl", "encode", "--timestamp", "yesterday"],
        vec!["--port", "70000", "showid"],
        vec!["--bootstrap", "nohost", "showid"],
        vec!["frobnicate"],
    ];
    for args in cases {
        let o = natkit(&key, &args);
        assert_clean_failure(&o, &format!("{args:?}"));
    }
}

/// A usage error: exit 2, one line on stderr starting "natkit: usage error: ".
fn assert_usage_error(o: &Output, what: &str) -> String {
    assert_clean_failure(o, what);
    assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(o));
    let err = stderr(o);
    assert!(err.starts_with("natkit: usage error: "), "{what}: {err}");
    err
}

#[test]
fn mistakes_in_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    assert!(natkit(&key, &["showid"]).status.success());
    let other = "rkeohxlubhyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5oa";
    let mut nine = vec!["unl", "encode", "--node-id", other];
    let addrs: Vec<String> = (1..=9).map(|i| format!("lan=10.0.0.{i}:1")).collect();
    for a in &addrs {
        nine.extend(["--addr", a]);
    }
    let dht_id = "ab".repeat(20);
    let mut five = vec!["unl", "encode", "--node-id", other];
    let points: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}:1")).collect();
    for p in &points {
        five.extend(["--rendezvous", p]);
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (nine, "at most 8"),
        (five, "at most 4"),
        (vec!["unl", "encode", "--nat", "incrementing"], "--delta"),
        (vec!["unl", "encode", "--delta", "2"], "--delta"),
        (
            vec!["unl", "encode", "--node-id", other, "--sign"],
            "--sign",
        ),
        (
            vec!["unl", "encode", "--node-id", &dht_id],
            "not a public key",
        ),
        (vec!["unl", "decode", "garbage"], "cannot decode"),
        (vec!["map", "add", "0"], "0"),
        (vec!["map", "--timeout-ms", "0", "probe"], "0"),
        (
            vec!["map", "--upnp-url", "ftp://192.168.1.1/x", "probe"],
            "http://",
        ),
    ];
    for (args, says) in cases {
        let err = assert_usage_error(&natkit(&key, &args), &format!("{args:?}"));
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // The 64-hex form of a public key is a node id too.
    let hex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let o = natkit(
        &key,
        &["unl", "encode", "--node-id", hex, "--timestamp", "0"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_cut_unl_is_reported_as_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let unl = "nkccfiry65oqe7dfp5klns2pf2lvzmuzyjx4ozieq36n2iqanub5xvyitk7wdmaiaabiaacawfiqa4wadrblcuirrfsria";
    let err = assert_usage_error(&natkit(&key, &["unl", "decode", &unl[..60]]), "cut");
    assert!(err.contains("incomplete: it has 60 characters"), "{err}");
    let mut typo = unl.to_string();
    typo.replace_range(70..71, "q");
    let err = assert_usage_error(&natkit(&key, &["unl", "decode", &typo]), "typo");
    assert!(err.contains("checksum"), "{err}");
    let bad = format!("{}!{}", &unl[..20], &unl[21..]);
    let err = assert_usage_error(&natkit(&key, &["unl", "decode", &bad]), "bad character");
    assert!(err.contains("position 21: '!'"), "{err}");
}

#[test]
fn error_lines_cannot_carry_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let o = natkit(&key, &["unl", "encode", "--node-id", "bad\x1b[31mid"]);
    assert_clean_failure(&o, "escape in an argument");
    assert!(!stderr(&o).contains('\x1b'), "{}", stderr(&o));
    let o = natkit(&key, &["unl", "decode", "nk\u{9b}31m"]);
    assert_clean_failure(&o, "C1 in a UNL");
    assert!(!stderr(&o).contains('\u{9b}'), "{}", stderr(&o));
}

#[test]
fn version_and_help_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    let v = natkit(&key, &["--version"]);
    assert!(v.status.success());
    assert!(stdout(&v).starts_with("natkit "));
    let h = natkit(&key, &["--help"]);
    assert!(h.status.success());
    assert!(stdout(&h).contains("showid"));
}

#[test]
fn a_closed_output_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.key");
    // `natkit showid | true`: the reader is gone before natkit prints (it
    // closes its end right after the process starts, while natkit is still
    // creating its key file).
    let mut child = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .arg("showid")
        .env("NATKIT_KEY", &key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        !err.contains("internal error") && !err.contains("panicked"),
        "{err}"
    );
    // Killed by SIGPIPE like any Unix tool (or, if it printed before the
    // reader left, a normal exit).
    assert!(
        status.signal() == Some(13) || status.success(),
        "{status:?}"
    );
}
