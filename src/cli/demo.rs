//! `natkit demo`: two nodes find each other through the DHT and talk, in one
//! process, on loopback.
//!
//! It starts a DHT bootstrap node, then bob and alice (each a [`Node`]
//! joining through it), prints bob's UNL, and has alice connect to bob by his
//! node id alone: alice looks his UNL up in the DHT, the planner picks the
//! path, the connection is authenticated to bob's key. One line goes each way;
//! the path and the timings are printed, and everything is shut down. With
//! `--json`, one JSON object per step.
//!
//! The demo makes its own keys (it never reads or creates the `--key` file)
//! and its own bootstrap node, so `--bootstrap` and `--port` are usage errors.
//! It sends nothing beyond 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use natkit_dht::dht::Dht;
use natkit_net::NetEvent;
use serde_json::json;

use super::text::escape_controls;
use super::{Cli, usage};
use crate::node::{Node, Target};

/// The whole demo gives up after this (it takes well under a second on
/// loopback; a DHT lookup that loses datagrams retries within seconds).
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(30);

/// The line alice sends.
const HELLO_BOB: &str = "hello bob, this is alice";
/// The line bob answers.
const HELLO_ALICE: &str = "hello alice, bob here";

/// `natkit demo` arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run the demo across two real NATs in the NAT lab (network namespaces
    /// and nftables; needs root and the lab tools, see docs/natlab.md): alice
    /// and bob behind port-preserving NATs with 20 ms one-way delay on each
    /// WAN link, connected by a hole punch.
    #[arg(long)]
    pub lab: bool,
}

/// Runs `natkit demo`.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    if !cli.bootstrap.is_empty() {
        return usage(
            "natkit demo runs its own bootstrap node on loopback; it takes no --bootstrap",
        );
    }
    if cli.port.is_some() {
        return usage("natkit demo picks free ports on loopback; it takes no --port");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        match tokio::time::timeout(DEMO_TIMEOUT, demo(cli.json)).await {
            Ok(r) => r,
            Err(_) => bail!("the demo did not finish in {} s", DEMO_TIMEOUT.as_secs()),
        }
    })
}

/// Prints one step: the JSON object with `--json`, else the text.
fn step(json: bool, obj: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{obj}");
    } else {
        println!("{}", text());
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn demo(json: bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let boot = Dht::builder()
        .bind_addr(SocketAddr::new(loopback, 0))
        .build()
        .await
        .context("cannot start the bootstrap node")?;
    let boot_addr = boot.local_addr();
    step(
        json,
        json!({"event": "bootstrap", "addr": boot_addr.to_string()}),
        || format!("bootstrap  DHT node on {boot_addr}"),
    );
    let start = |name: &'static str| async move {
        Node::builder()
            .bind_ip(loopback)
            .bootstrap(&[boot_addr])
            .build()
            .await
            .with_context(|| format!("cannot start {name}"))
    };
    let bob = start("bob").await?;
    let bob_seq = match bob.published_seq() {
        Some(seq) => seq,
        None => bob.publish().await.context("bob cannot publish his UNL")?,
    };
    let bob_unl = bob.unl().emit();
    step(
        json,
        json!({"event": "node", "name": "bob", "node_id": bob.id(), "port": bob.port(),
               "unl": bob_unl, "published_seq": bob_seq}),
        || {
            format!(
                "bob        node id {} on 127.0.0.1:{} (TCP and UDP), UNL published in the DHT (seq {bob_seq})\nbob's UNL  {bob_unl}",
                bob.id(),
                bob.port()
            )
        },
    );
    let alice = start("alice").await?;
    step(
        json,
        json!({"event": "node", "name": "alice", "node_id": alice.id(), "port": alice.port(),
               "unl": alice.unl().emit()}),
        || {
            format!(
                "alice      node id {} on 127.0.0.1:{}",
                alice.id(),
                alice.port()
            )
        },
    );

    // Bob's events start now, before alice connects.
    let mut bob_events = Box::pin(bob.events());
    let (con, path) = alice
        .connect(Target::NodeId(bob.id()))
        .await
        .context("alice cannot connect to bob by his node id")?;
    let lookup = path.lookup.unwrap_or_default();
    step(
        json,
        json!({"event": "lookup", "by": "alice", "node_id": bob.id(), "lookup_ms": ms(lookup)}),
        || {
            format!(
                "lookup     alice found bob's UNL in the DHT by his node id in {:.1} ms",
                ms(lookup)
            )
        },
    );
    step(
        json,
        json!({"event": "connected", "from": "alice", "to": "bob", "path": path.kind,
               "addr": path.addr.to_string(), "connect_ms": ms(path.elapsed),
               "lookup_ms": ms(lookup), "encrypted": !con.is_plaintext()}),
        || {
            format!(
                "connect    alice -> bob over path {path} in {:.1} ms (authenticated to bob's key, encrypted)",
                ms(path.elapsed)
            )
        },
    );

    con.send(HELLO_BOB).await.context("alice cannot send")?;
    let (at_bob, line) = loop {
        match bob_events.next().await {
            Some(NetEvent::Line(c, line)) => break (c, line),
            Some(NetEvent::Connected(_)) => {}
            Some(NetEvent::Disconnected { reason, .. }) => {
                bail!("alice's connection to bob closed: {reason}")
            }
            None => bail!("bob shut down"),
        }
    };
    step(
        json,
        json!({"event": "line", "from": "alice", "to": "bob", "text": line}),
        || format!("line       alice -> bob: {}", escape_controls(&line)),
    );
    at_bob
        .send(HELLO_ALICE)
        .await
        .context("bob cannot answer")?;
    let reply = match con.recv().await {
        Some(l) => l,
        None => bail!("bob's connection to alice closed before his answer"),
    };
    step(
        json,
        json!({"event": "line", "from": "bob", "to": "alice", "text": reply}),
        || format!("line       bob -> alice: {}", escape_controls(&reply)),
    );

    alice.shutdown().await;
    bob.shutdown().await;
    boot.shutdown().await;
    let total = t0.elapsed();
    step(
        json,
        json!({"event": "done", "total_ms": ms(total)}),
        || format!("done       in {:.0} ms", ms(total)),
    );
    Ok(())
}
