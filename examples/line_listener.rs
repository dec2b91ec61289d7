//! A listener that answers every line, written with the event-loop API.
//!
//! ```sh
//! cargo run --example line_listener -- 127.0.0.1:50500
//! ```
//!
//! It prints `listening <address> <node id>` on its first line; give both to
//! `line_dialer`. Every line received is answered with `echo: <line>`; the
//! line `quit` makes it exit after answering.
//!
//! Options (after the address): `--ping-after-ms N` and `--dead-after-ms N`
//! for keepalive (tests use short values).

use std::time::Duration;

use natkit::identity::Keypair;
use natkit::net::{NetConfig, blocking::Net};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut config = NetConfig {
        listen: args
            .next()
            .unwrap_or_else(|| "127.0.0.1:0".into())
            .parse()?,
        ..NetConfig::default()
    };
    while let Some(flag) = args.next() {
        let ms: u64 = args.next().ok_or("missing value")?.parse()?;
        match flag.as_str() {
            "--ping-after-ms" => config.ping_after = Duration::from_millis(ms),
            "--dead-after-ms" => config.dead_after = Duration::from_millis(ms),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let net = Net::start(Keypair::generate()?, config)?;
    println!("listening {} {}", net.local_addr(), net.node_id());

    let mut quit = false;
    while !quit {
        net.wait(Duration::from_secs(1));
        for con in &net {
            for line in con.lines() {
                println!("{}: {line}", con.node_id().short());
                con.send_line(&format!("echo: {line}"))?;
                quit |= line == "quit";
            }
        }
    }
    // Let the last answers go out before stopping.
    std::thread::sleep(Duration::from_millis(200));
    net.stop();
    Ok(())
}
