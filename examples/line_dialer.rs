//! A dialer that sends lines and prints the answers, with the event-loop API.
//!
//! ```sh
//! cargo run --example line_dialer -- <address> <node id> "hello" "quit"
//! ```
//!
//! It connects to the listener (authenticating it against the node id), sends
//! each argument as a line, prints each answer, and exits once it has one
//! answer per line (or after 10 s, with exit code 1).

use std::time::{Duration, Instant};

use natkit::identity::{Keypair, NodeId};
use natkit::net::{NetConfig, blocking::Net};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: line_dialer <address> <node id> [lines...]")?
        .parse()?;
    let id: NodeId = args.next().ok_or("missing node id")?.parse()?;
    let lines: Vec<String> = args.collect();

    let config = NetConfig {
        listen: "127.0.0.1:0".parse()?,
        ..NetConfig::default()
    };
    let net = Net::start(Keypair::generate()?, config)?;
    let con = net.connect(addr, id)?;
    for l in &lines {
        con.send_line(l)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answers = 0;
    while answers < lines.len() {
        if Instant::now() > deadline {
            eprintln!("line_dialer: timed out waiting for answers");
            std::process::exit(1);
        }
        net.wait(Duration::from_millis(500));
        for answer in con.lines() {
            println!("{answer}");
            answers += 1;
        }
    }
    net.stop();
    Ok(())
}
