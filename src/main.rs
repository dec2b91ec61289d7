//! The `natkit` command-line tool. Everything lives in [`natkit::cli`].

fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`natkit ... | head -1`) instead of failing to print. Rust ignores
    // SIGPIPE by default, which turns every later `println!` into a panic.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; setting a
    // signal's disposition to SIG_DFL has no other effect on this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(natkit::cli::main());
}
