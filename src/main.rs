//! The `natkit` command-line tool. Everything lives in [`natkit::cli`].

fn main() {
    std::process::exit(natkit::cli::main());
}
