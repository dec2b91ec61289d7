//! Helpers shared by the lab benchmarks.

/// The path of a built example binary (release examples beside the bench binary);
/// `"../natkit"` is the natkit binary.
pub fn example(name: &str) -> std::path::PathBuf {
    let mut p = std::env::current_exe().expect("bench binary path");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("examples").join(name)
}
