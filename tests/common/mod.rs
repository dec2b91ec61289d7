//! Helpers shared by integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

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

/// Builds the examples (a no-op when `cargo test` already built them).
pub fn build_examples() {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--examples"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the examples failed");
}
