//! A dialer that sends lines and prints the answers, with the event-loop API.
//!
//! ```sh
//! cargo run --example line_dialer -- <address> <node id> "hello" "quit"
//! ```
//!
//! It connects to the listener (authenticating it against the node id), sends
//! each argument as a line, prints each answer, and exits once it has one
//! answer per line (or after 10 s, with exit code 1).
//!
//! Options before the address: `--listen IP:PORT` (our own port; default
//! 127.0.0.1 with a free port) and `--show-observed` (first print
//! `observed <ip:port>`: our address as the listener saw it, which behind a NAT
//! is the NAT's public address and port).

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
    let mut args = std::env::args().skip(1).peekable();
    let mut listen = "127.0.0.1:0".parse()?;
    let mut show_observed = false;
    while let Some(opt) = args.next_if(|a| a.starts_with("--")) {
        match opt.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs IP:PORT")?.parse()?,
            "--show-observed" => show_observed = true,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let addr = args
        .next()
        .ok_or("usage: line_dialer [--listen IP:PORT] [--show-observed] <address> <node id> [lines...]")?
        .parse()?;
    let id: NodeId = args.next().ok_or("missing node id")?.parse()?;
    let lines: Vec<String> = args.collect();

    let config = NetConfig {
        listen,
        ..NetConfig::default()
    };
    let net = Net::start(Keypair::generate()?, config)?;
    let con = net.connect(addr, id)?;
    if show_observed {
        println!("observed {}", con.observed_addr());
    }
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
