//! Alice waits for peers, prints every line they send and answers each one:
//! the listening half of the pyp2p README's pair, for natkit.
//!
//! ```sh
//! cargo run --example alice -- --bootstrap 203.0.113.100:4000 --port 41000 --seed 1
//! ```
//!
//! She joins the DHT through `--bootstrap`, publishes her UNL (with rendezvous
//! points, so that she can be reached behind a NAT) and prints
//! `ready id=<node id> unl=<UNL>`. Then, for every line from any peer, she
//! prints `line from=<id> text=<line>` and answers `alice got: <line>` (on the
//! peer's current connection), and for every new connection
//! `connected from=<id> path=<relayed|direct>`.
//! She runs until killed, or until `--lines N` lines have come and been
//! answered. With `--wait-mapped`, `ready` waits (up to 20 s) until her UNL
//! in the DHT also lists the port mapping her node made on the router; with
//! `--wait-relays N`, until it lists N relays she holds reservations with. `--seed N` makes the key from a small number (the 32-byte seed
//! `N` as u64 little-endian, zero-padded), so that a script knows her node id
//! in advance; without it the key is random.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use natkit::Node;
use natkit::identity::Keypair;
use natkit::net::NetEvent;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The key of seed `n`.
fn keypair(n: u64) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    Keypair::from_seed(seed)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Logs on stderr when RUST_LOG asks for them (e.g. RUST_LOG=natkit=debug).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut bootstrap: Vec<SocketAddr> = Vec::new();
    let mut port = 0u16;
    let mut key = None;
    let mut lines: Option<usize> = None;
    let mut wait_mapped = false;
    let mut wait_relays = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(opt) = args.next() {
        if opt == "--wait-mapped" {
            wait_mapped = true;
            continue;
        }
        let val = args.next().ok_or(format!("{opt} needs a value"))?;
        match opt.as_str() {
            "--bootstrap" => bootstrap.push(val.parse()?),
            "--port" => port = val.parse()?,
            "--seed" => key = Some(keypair(val.parse()?)),
            "--lines" => lines = Some(val.parse()?),
            "--wait-relays" => wait_relays = val.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let mut builder = Node::builder().port(port).bootstrap(&bootstrap);
    if let Some(k) = key {
        builder = builder.key(k);
    }
    let alice = builder.build().await?;
    // Events from here on are kept: nothing a fast peer sends is missed.
    let mut events = std::pin::pin!(alice.events());
    alice.wait_reachable(Duration::from_secs(30)).await?;
    if wait_mapped {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !alice
            .published_unl()
            .is_some_and(|u| u.addrs.iter().any(|c| c.source.is_mapping()))
        {
            if tokio::time::Instant::now() >= deadline {
                return Err("no port mapping in the UNL after 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if wait_relays > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !alice.published_unl().is_some_and(|u| {
            u.addrs
                .iter()
                .filter(|c| c.source == natkit::unl::AddrSource::Relay)
                .count()
                >= wait_relays
        }) {
            if tokio::time::Instant::now() >= deadline {
                return Err(
                    format!("fewer than {wait_relays} relays in the UNL after 20 s").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("ready id={} unl={}", alice.id(), alice.unl().emit());

    let mut answered = 0;
    while let Some(event) = events.next().await {
        match event {
            NetEvent::Connected(con) => println!(
                "connected from={} path={}",
                con.node_id(),
                if con.relay().is_some() {
                    "relayed"
                } else {
                    "direct"
                }
            ),
            NetEvent::Line(con, line) => {
                println!("line from={} text={line}", con.node_id());
                let answer = format!("alice got: {line}");
                // A relayed connection replaced by a direct one refuses new lines: answer
                // on the peer's current connection.
                let sent = con.send(&answer).await.is_ok()
                    || match alice.net().connection(&con.node_id()) {
                        Some(now) => now.send(&answer).await.is_ok(),
                        None => false,
                    };
                if !sent {
                    println!("unanswered text={line}");
                }
                answered += 1;
                if lines.is_some_and(|n| answered >= n) {
                    break;
                }
            }
            NetEvent::Disconnected { .. } => {}
        }
    }
    // Shutdown closes each connection gracefully: queued lines go out first.
    alice.shutdown().await;
    Ok(())
}
