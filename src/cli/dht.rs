//! `natkit dht run|put|get`: a DHT node, and BEP 44 put/get through one.
//!
//! `run` keeps a node up until Ctrl-C or SIGTERM. `put` and `get` start a
//! short-lived node, join the network through `--bootstrap` (nothing is
//! contacted without it), do one operation and exit. Values are the text
//! given, stored as a bencoded byte string. Mutable items are signed with this
//! node's identity key (`--key`), so the ed25519 public key under which they
//! are stored is the node id.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use natkit_dht::bep44::MutableItem;
use natkit_dht::dht::Dht;
use natkit_dht::{Id, Value};
use natkit_identity::NodeId;

use super::Cli;
use super::identity::load_or_create_key;

/// `natkit dht ...`
#[derive(Debug, Subcommand)]
pub enum DhtCommand {
    /// Run a DHT node until Ctrl-C (prints its id and address first).
    Run(NodeArgs),
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
            DhtCommand::Run(node) => run_node(cli, node).await,
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
    let bind = node
        .bind
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], cli.port.unwrap_or(0))));
    let dht = Dht::builder()
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

async fn run_node(cli: &Cli, node: &NodeArgs) -> anyhow::Result<()> {
    let dht = start(cli, node).await?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "dht_running", "id": dht.id().to_hex(), "addr": dht.local_addr().to_string()})
        );
    } else {
        println!("dht node {} on {}", dht.id().to_hex(), dht.local_addr());
    }
    wait_for_signal().await?;
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
        println!("{text}");
    }
    Ok(())
}
