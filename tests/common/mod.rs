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

/// Makes sure the example binaries exist. A plain `cargo test` builds them
/// before running any test; only when a single test file is run (`cargo test
/// --test examples`) are they missing or older than their sources, and then
/// this builds them (which takes a while: another feature set than the tests').
pub fn build_examples() {
    let fresh = ["line_listener", "line_dialer", "punch_peer", "alice", "bob"]
        .iter()
        .all(|name| {
            let bin = std::fs::metadata(example(name)).and_then(|m| m.modified());
            let src = std::fs::metadata(
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs")),
            )
            .and_then(|m| m.modified());
            matches!((bin, src), (Ok(b), Ok(s)) if b >= s)
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
