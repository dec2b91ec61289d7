//! Bob connects to Alice by her node id alone, sends a line and prints her
//! answer: the dialing half of the pyp2p README's pair, for natkit.
//!
//! ```sh
//! cargo run --example bob -- --bootstrap 203.0.113.100:4000 --to <alice's node id>
//! ```
//!
//! He joins the DHT through `--bootstrap`, looks Alice's UNL up, and lets
//! `Node::connect` find the way (LAN, direct, reverse connect or hole punch).
//! He prints
//!
//! ```text
//! connected path=<lan|mapped|direct|reverse|punched|relayed> addr=<ip:port> lookup_ms=<ms> connect_ms=<ms> signal_rtt_ms=<ms|-> retried=<bool> relay=<id|->
//! reply <Alice's answer>
//! first_line_ms=<ms from the connect call to her answer>
//! ```
//!
//! and exits 0; if no connection can be made, one line `error: ...` on stderr
//! and exit 1. With `--wait-mapped` he first waits (up to 20 s) for his node's
//! port mapping on his router.
//!
//! With `--count N` (and `--interval-ms M`, default 100) he sends `line 1` to
//! `line N` instead, one every M ms, each on the connection to Alice that is
//! current (a direct connection that replaced a relayed one, or a new one when
//! the old was lost), and collects her answers (`reply <answer>`). He prints `switched path=..`
//! when a new connection to her appears, `lost reason=..` when one ends,
//! `connected path=..` when he had to connect again, and at the end
//! `answered=<distinct answers> duplicates=<answers seen twice> missing=<k,..>`;
//! he exits 0 if every line was answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use natkit::Node;
use natkit::identity::NodeId;
use natkit::net::{Connection, NetEvent};
use natkit::node::Path;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
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
    let mut to: Option<NodeId> = None;
    let mut line = "hello from bob".to_string();
    let mut wait_mapped = false;
    let mut count = 0u64;
    let mut interval = Duration::from_millis(100);
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
            "--to" => to = Some(NodeId::parse_any(&val)?),
            "--line" => line = val,
            "--count" => count = val.parse()?,
            "--interval-ms" => interval = Duration::from_millis(val.parse()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let alice = to.ok_or("--to <node id> is required")?;
    let bob = Node::builder()
        .port(port)
        .bootstrap(&bootstrap)
        .build()
        .await?;
    if wait_mapped {
        // Until the UNL (remade when the mapping is made) lists it: the plan
        // then knows we are reachable through it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !bob.unl().addrs.iter().any(|c| c.source.is_mapping()) {
            if tokio::time::Instant::now() >= deadline {
                return Err("no port mapping in the UNL after 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if count > 0 {
        let r = counted(&bob, alice, count, interval).await;
        bob.shutdown().await;
        return r;
    }
    let result = async {
        let t0 = std::time::Instant::now();
        let (con, path) = bob.connect(alice).await?;
        print_connected(&path);
        con.send(&line).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), con.recv())
            .await
            .map_err(|_| "no answer from alice within 10 s")?
            .ok_or("alice closed without answering")?;
        println!("reply {reply}");
        println!("first_line_ms={}", ms(t0.elapsed()));
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    bob.shutdown().await;
    result
}

fn print_connected(path: &Path) {
    println!(
        "connected path={} addr={} lookup_ms={} connect_ms={} signal_rtt_ms={} retried={} relay={}",
        path.kind,
        path.addr,
        path.lookup.map_or("-".into(), ms),
        ms(path.elapsed),
        path.signal_rtt.map_or("-".into(), ms),
        path.retried,
        path.relay.map_or("-".into(), |r| r.to_string()),
    );
}

fn kind(c: &Connection) -> &'static str {
    if c.relay().is_some() {
        "relayed"
    } else {
        "direct"
    }
}

/// `--count`: numbered lines on whatever connection to alice is current, her answers
/// counted.
async fn counted(
    bob: &Node,
    alice: NodeId,
    count: u64,
    interval: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    // Before the first connect: every answer comes as an event.
    let mut events = std::pin::pin!(bob.events());
    let (_, path) = bob.connect(alice).await?;
    print_connected(&path);
    let mut answers: BTreeMap<u64, u32> = BTreeMap::new();
    let mut next = 1u64;
    let mut tick = tokio::time::interval(interval);
    let deadline = tokio::time::Instant::now() + interval * count as u32 + Duration::from_secs(30);
    while (answers.len() as u64) < count {
        tokio::select! {
            _ = tick.tick(), if next <= count => {
                let con = match bob.net().connection(&alice) {
                    Some(c) => c,
                    None => match bob.connect(alice).await {
                        Ok((c, path)) => {
                            print_connected(&path);
                            c
                        }
                        Err(e) => {
                            println!("reconnect failed error={e}");
                            continue;
                        }
                    },
                };
                // A connection being replaced refuses new lines: the next tick takes the
                // current one. A line refused is not sent, so it is sent again, once.
                if con.send_line(&format!("line {next}")).is_ok() {
                    next += 1;
                }
            }
            ev = events.next() => match ev {
                Some(NetEvent::Line(c, l)) if c.node_id() == alice => {
                    println!("reply {l}");
                    if let Some(k) = l.strip_prefix("alice got: line ").and_then(|k| k.parse().ok()) {
                        *answers.entry(k).or_insert(0) += 1;
                    }
                }
                Some(NetEvent::Connected(c)) if c.node_id() == alice => {
                    println!("switched path={} addr={}", kind(&c), c.remote_addr())
                }
                Some(NetEvent::Disconnected { conn, reason }) if conn.node_id() == alice => {
                    println!("lost path={} addr={} reason={reason}", kind(&conn), conn.remote_addr())
                }
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let duplicates = answers.values().filter(|n| **n > 1).count();
    let missing: Vec<String> = (1..=count)
        .filter(|k| !answers.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    println!(
        "answered={} duplicates={duplicates} missing={}",
        answers.len(),
        if missing.is_empty() {
            "-".to_string()
        } else {
            missing.join(",")
        }
    );
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{} lines unanswered", missing.len()).into())
    }
}
