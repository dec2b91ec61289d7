//! `natkit dht run|put|get|listen|send`: a DHT node, BEP 44 put/get through
//! one, and rendezvous messages.
//!
//! `run` keeps a node up until Ctrl-C or SIGTERM. `put` and `get` start a
//! short-lived node, join the network through `--bootstrap` (nothing is
//! contacted without it), do one operation and exit. Values are the text
//! given, stored as a bencoded byte string. Mutable items are signed with this
//! node's identity key (`--key`), so the ed25519 public key under which they
//! are stored is the node id.
//!
//! `listen` registers this node's identity with rendezvous nodes (so it can be
//! reached behind NAT), prints them, then prints every message delivered to it
//! until Ctrl-C. `send` delivers one signed message to a node id.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use natkit_dht::bep44::MutableItem;
use natkit_dht::dht::{Dht, DhtBuilder};
use natkit_dht::{Id, Value};
use natkit_identity::NodeId;

use super::Cli;
use super::identity::load_or_create_key;
use super::text::escape_controls;

/// `natkit dht ...`
#[derive(Debug, Subcommand)]
pub enum DhtCommand {
    /// Run a DHT node until Ctrl-C (prints its id and address first). It
    /// serves as a rendezvous node for nodes behind NAT.
    Run {
        /// Also announce it on natkit's rendezvous service info-hash (every 15
        /// minutes), so nodes find it in a DHT shared with other clients. Only
        /// for nodes reachable from the internet.
        #[arg(long)]
        announce_service: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Store a value in the DHT; prints its target (the key to get it with).
    Put {
        /// The value (text; at most 1000 bytes once bencoded).
        value: String,
        /// Store a mutable item signed by this node's key instead.
        #[arg(long)]
        mutable: bool,
        /// Salt of a mutable item (several items under one key).
        #[arg(long, default_value = "", requires = "mutable")]
        salt: String,
        /// Sequence number of a mutable item (higher replaces lower).
        #[arg(long, default_value_t = 1, requires = "mutable")]
        seq: i64,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Fetch a value: an immutable item by its target (40 hex digits), or with
    /// --mutable the item of a node id (and --salt).
    Get {
        /// The target (immutable) or the node id (mutable).
        #[arg(value_name = "TARGET|NODE_ID")]
        what: String,
        /// Fetch a mutable item.
        #[arg(long)]
        mutable: bool,
        /// Salt of a mutable item.
        #[arg(long, default_value = "", requires = "mutable")]
        salt: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Register with rendezvous nodes and print the messages delivered to this
    /// node id until Ctrl-C.
    Listen {
        /// Seconds between keepalives to the rendezvous nodes (below the NAT's
        /// UDP timeout).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=37))]
        keepalive: u64,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Send a short signed message to a node id (delivered through its
    /// rendezvous nodes).
    Send {
        /// The recipient's node id.
        to: String,
        /// The message (text, at most 512 bytes).
        text: String,
        /// The recipient's rendezvous point(s), e.g. from its UNL: no lookup.
        #[arg(long, value_name = "IP:PORT")]
        via: Vec<SocketAddr>,
        /// Route it hop by hop toward the recipient instead of looking up.
        #[arg(long, conflicts_with = "via")]
        relay: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// Where the local node binds.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// UDP address to bind (default 0.0.0.0 with --port, or a free port).
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
}

/// Runs a `natkit dht` command.
pub fn run(cli: &Cli, cmd: &DhtCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        match cmd {
            DhtCommand::Run {
                announce_service,
                node,
            } => run_node(cli, node, *announce_service).await,
            DhtCommand::Put {
                value,
                mutable,
                salt,
                seq,
                node,
            } => put(cli, node, value, *mutable, salt, *seq).await,
            DhtCommand::Get {
                what,
                mutable,
                salt,
                node,
            } => get(cli, node, what, *mutable, salt).await,
            DhtCommand::Listen { keepalive, node } => listen(cli, node, *keepalive).await,
            DhtCommand::Send {
                to,
                text,
                via,
                relay,
                node,
            } => send(cli, node, to, text, via, *relay).await,
        }
    })
}

fn bootstrap_addrs(cli: &Cli) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for b in &cli.bootstrap {
        let addrs = b
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve bootstrap node {b}"))?;
        out.extend(addrs.filter(SocketAddr::is_ipv4));
    }
    Ok(out)
}

async fn start(cli: &Cli, node: &NodeArgs) -> anyhow::Result<Dht> {
    start_with(cli, node, Dht::builder()).await
}

async fn start_with(cli: &Cli, node: &NodeArgs, builder: DhtBuilder) -> anyhow::Result<Dht> {
    let bind = node
        .bind
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], cli.port.unwrap_or(0))));
    let dht = builder
        .bind_addr(bind)
        .bootstrap(&bootstrap_addrs(cli)?)
        .build()
        .await
        .with_context(|| format!("cannot start a DHT node on {bind}"))?;
    if !cli.bootstrap.is_empty() {
        let known = dht.bootstrap().await.context("bootstrap failed")?;
        if known == 0 {
            bail!("no bootstrap node answered");
        }
    }
    Ok(dht)
}

async fn run_node(cli: &Cli, node: &NodeArgs, announce_service: bool) -> anyhow::Result<()> {
    let dht = start(cli, node).await?;
    let announcing = async {
        if !announce_service {
            return std::future::pending().await;
        }
        let mut every = tokio::time::interval(std::time::Duration::from_secs(15 * 60));
        loop {
            every.tick().await;
            if let Err(e) = dht.announce_rendezvous_service().await {
                eprintln!("natkit: rendezvous service announce: {e}");
            }
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "dht_running", "id": dht.id().to_hex(), "addr": dht.local_addr().to_string()})
        );
    } else {
        println!("dht node {} on {}", dht.id().to_hex(), dht.local_addr());
    }
    tokio::select! {
        r = wait_for_signal() => r?,
        () = announcing => {}
    }
    dht.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}

async fn put(
    cli: &Cli,
    node: &NodeArgs,
    value: &str,
    mutable: bool,
    salt: &str,
    seq: i64,
) -> anyhow::Result<()> {
    if cli.bootstrap.is_empty() {
        bail!("put needs --bootstrap HOST:PORT (a node of the DHT to join)");
    }
    let v = Value::Bytes(value.as_bytes().to_vec());
    let key = if mutable {
        Some(load_or_create_key(cli)?)
    } else {
        None
    };
    let dht = start(cli, node).await?;
    let target = match &key {
        None => dht.put_immutable(v).await,
        Some(k) => {
            let item = MutableItem::sign(k.signing_key(), salt.as_bytes(), seq, v)
                .context("cannot sign the item")?;
            dht.put_mutable(item, None).await
        }
    };
    dht.shutdown().await;
    let target = target.context("put failed")?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "put", "target": target.to_hex(), "mutable": mutable})
        );
    } else {
        println!("{}", target.to_hex());
    }
    Ok(())
}

async fn get(
    cli: &Cli,
    node: &NodeArgs,
    key: &str,
    mutable: bool,
    salt: &str,
) -> anyhow::Result<()> {
    if cli.bootstrap.is_empty() {
        bail!("get needs --bootstrap HOST:PORT (a node of the DHT to join)");
    }
    // Check the key before starting anything.
    let what = if mutable {
        let id: NodeId = key.parse().context("--mutable needs a node id")?;
        Err(*id.as_bytes())
    } else {
        Ok(Id::from_hex(key).context("a target is 40 hexadecimal digits")?)
    };
    let dht = start(cli, node).await?;
    let found = match what {
        Ok(target) => dht
            .get_immutable(target)
            .await
            .map(|v| v.map(|v| (v, None))),
        Err(k) => dht
            .get_mutable(k, salt.as_bytes(), None)
            .await
            .map(|m| m.map(|m| (m.v, Some(m.seq)))),
    };
    dht.shutdown().await;
    let Some((value, seq)) = found.context("get failed")? else {
        bail!("not found");
    };
    let text = match &value {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "get", "value": text, "seq": seq})
        );
    } else {
        println!("{}", escape_controls(&text));
    }
    Ok(())
}

/// A node speaking for this identity that does not serve others as a
/// rendezvous node (a node behind NAT could not).
async fn identity_node(cli: &Cli, node: &NodeArgs, keepalive: u64) -> anyhow::Result<Dht> {
    if cli.bootstrap.is_empty() {
        bail!("this command needs --bootstrap HOST:PORT (a node of the DHT to join)");
    }
    let key = load_or_create_key(cli)?;
    let builder = Dht::builder()
        .identity(key.signing_key().clone())
        .rendezvous_server(false)
        .keepalive_interval(std::time::Duration::from_secs(keepalive));
    start_with(cli, node, builder).await
}

async fn listen(cli: &Cli, node: &NodeArgs, keepalive: u64) -> anyhow::Result<()> {
    let dht = identity_node(cli, node, keepalive).await?;
    let mut messages = dht.messages().await.context("cannot receive messages")?;
    let points = dht.register().await.context("cannot register")?;
    let id = load_or_create_key(cli)?.node_id();
    let list: Vec<String> = points.iter().map(ToString::to_string).collect();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "registered", "id": id.to_string(), "rendezvous": list})
        );
    } else {
        println!("registered {id} with {}", list.join(" "));
    }
    if points.is_empty() {
        eprintln!("natkit: no rendezvous node accepted yet; still trying");
    }
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => { r?; break; }
            m = messages.recv() => {
                let Some(m) = m else { break };
                let from = NodeId::from_bytes(&m.from)
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string());
                let text = String::from_utf8_lossy(&m.payload);
                let sender = m.sender_addr.map(|a| a.to_string()).unwrap_or_default();
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "message", "from": from, "text": text,
                            "sender_addr": sender, "via": m.via.to_string()})
                    );
                } else {
                    // The text is the sender's: it cannot start a line or reach the terminal.
                    let text = escape_controls(&text);
                    println!("message from {from} ({sender} via {}): {text}", m.via);
                }
            }
        }
    }
    dht.shutdown().await;
    Ok(())
}

async fn send(
    cli: &Cli,
    node: &NodeArgs,
    to: &str,
    text: &str,
    via: &[SocketAddr],
    relay: bool,
) -> anyhow::Result<()> {
    let to: NodeId = to.parse().context("the recipient must be a node id")?;
    let dht = identity_node(cli, node, 20).await?;
    let to_key = *to.as_bytes();
    let sent = if !via.is_empty() {
        dht.send_message_via(to_key, text.as_bytes(), via).await
    } else if relay {
        dht.relay_message(to_key, text.as_bytes()).await
    } else {
        dht.send_message(to_key, text.as_bytes()).await
    };
    dht.shutdown().await;
    sent.with_context(|| format!("message to {to} not delivered"))?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "delivered", "to": to.to_string()})
        );
    } else {
        println!("delivered to {to}");
    }
    Ok(())
}
