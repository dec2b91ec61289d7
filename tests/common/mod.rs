//! Helpers shared by integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of a built example binary.
pub fn example(name: &str) -> PathBuf {
    // Integration tests live in target/<profile>/deps; examples beside it.
    let mut p = std::env::current_exe().expect("test binary path");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("examples").join(name)
}

/// The newest modification time of the `.rs` files under `dir`.
fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

/// Makes sure the example binaries exist and are newer than every source
/// they are built from (the examples, the facade crate and the crates). A
/// plain `cargo test` builds them before running any test; only when a single
/// test file is run (`cargo test --test examples`) may they be missing or
/// stale, and then this builds them (which takes a while: another feature set
/// than the tests').
pub fn build_examples() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut sources = newest_source(&root.join("examples")).max(newest_source(&root.join("src")));
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        for c in crates.flatten() {
            sources = sources.max(newest_source(&c.path().join("src")));
        }
    }
    let fresh = ["line_listener", "line_dialer", "punch_peer", "alice", "bob"]
        .iter()
        .all(|name| {
            let bin = std::fs::metadata(example(name)).and_then(|m| m.modified());
            matches!((bin, sources), (Ok(b), Some(s)) if b >= s)
        });
    if fresh {
        return;
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--examples"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the examples failed");
}

/// Runs the `natkit` binary with `args` and the key file `key`.
pub fn natkit(key: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(args)
        .env("NATKIT_KEY", key)
        .env_remove("RUST_LOG")
        .output()
        .expect("run natkit")
}

/// The `key=value` fields of the first stdout line that starts with
/// `prefix` (the example programs report this way), if there is one.
pub fn report_fields(stdout: &str, prefix: &str) -> Option<Vec<(String, String)>> {
    let line = stdout.lines().find_map(|l| l.strip_prefix(prefix))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// The value of `key` among `fields`; panics without it.
pub fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}= in {fields:?}"))
}

/// The key the example programs make from `--seed n` (the 32-byte seed `n` as u64
/// little-endian, zero-padded).
pub fn seed_keypair(n: u64) -> natkit::identity::Keypair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    natkit::identity::Keypair::from_seed(seed)
}

/// The lab's bootstrap node port (TCP and UDP).
pub const LAB_BOOT_PORT: u16 = 4000;

/// The relay port of every lab bootstrap node.
pub const LAB_RELAY_PORT: &str = "4001";

/// `natkit bootstrap-node --relay` bound to `ip` in lab host `host` (key in `dir`), once
/// ready; returns it and its address.
pub fn lab_bootstrap(
    lab: &natkit_lab::Lab,
    host: natkit_lab::Host,
    ip: std::net::Ipv4Addr,
    dir: &Path,
) -> (natkit_lab::LabChild, String) {
    let key = dir.join(format!("boot-{ip}.key"));
    let ip = ip.to_string();
    let port = LAB_BOOT_PORT.to_string();
    let mut boot = lab
        .spawn(
            host,
            &[
                env!("CARGO_BIN_EXE_natkit"),
                "--key",
                key.to_str().unwrap(),
                "--port",
                &port,
                "--json",
                "bootstrap-node",
                "--bind",
                &ip,
                "--relay",
                "--relay-port",
                LAB_RELAY_PORT,
            ],
        )
        .expect("spawn a bootstrap node");
    boot.wait_for_stdout("\"ready\"", std::time::Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("bootstrap node not ready: {e}: {}", boot.stderr()));
    (boot, format!("{ip}:{LAB_BOOT_PORT}"))
}
