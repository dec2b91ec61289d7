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

use std::net::SocketAddr;
use std::time::Duration;

use natkit::Node;
use natkit::identity::NodeId;

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
    let mut bootstrap: Vec<SocketAddr> = Vec::new();
    let mut port = 0u16;
    let mut to: Option<NodeId> = None;
    let mut line = "hello from bob".to_string();
    let mut wait_mapped = false;
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
    let result = async {
        let t0 = std::time::Instant::now();
        let (con, path) = bob.connect(alice).await?;
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
