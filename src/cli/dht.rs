//! `natkit dht run|put|get|listen|send`: a DHT node, BEP 44 put/get through
//! one, and rendezvous messages.
//!
//! `run` keeps a node up until Ctrl-C or SIGTERM. `put`, `get` and `send`
//! start a short-lived, read-only node (BEP 43: it asks, and answers nobody),
//! join the network through `--bootstrap` (nothing is contacted without it), do
//! one operation and exit. Values are the text given, stored as a bencoded
//! byte string. Mutable items are signed with this node's identity key
//! (`--key`), so the ed25519 public key under which they are stored is the
//! node id.
//!
//! `listen` registers this node's identity with rendezvous nodes (so it can be
//! reached behind NAT), prints them, then prints every message delivered to it
//! until Ctrl-C. `send` delivers one signed message to a node id.
//!
//! Two kinds of id: the **DHT id** (40 hex digits) is a node's place in the
//! DHT's routing, and a target (what `put` prints) is a DHT id too; the **node
//! id** is the identity's ed25519 public key (52 base32 characters, or its 64
//! hex digits), under which mutable items are stored and messages delivered.
//! Commands that want a public key refuse a DHT id, saying so.
//!
//! Every argument is checked before the node starts: a mistake is a usage
//! error (exit 2), never a network failure. The DHT speaks IPv4 only for now,
//! so IPv6 bootstrap, bind and `--via` addresses are usage errors too.

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use natkit_dht::bep44::{self, MutableItem};
use natkit_dht::dht::{Dht, DhtBuilder};
use natkit_dht::rendezvous::MAX_PAYLOAD_BYTES;
use natkit_dht::{Id, Value};
use natkit_identity::{DHT_ID_HEX_LEN, Keypair, NodeId};

use super::identity::load_or_create_key;
use super::text::escape_controls;
use super::{Cli, UsageError, usage};

/// `natkit dht ...`
#[derive(Debug, Subcommand)]
pub enum DhtCommand {
    /// Run a DHT node until Ctrl-C (prints its DHT id, the node id of --key
    /// and its address first). It serves as a rendezvous node for nodes behind
    /// NAT.
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
    /// --mutable the item of a node id (its public key: 52 base32 characters or
    /// 64 hex digits) and --salt.
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
        /// The recipient's node id (52 base32 characters, or the 64 hex digits
        /// of its public key).
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

/// What a node needs to start, checked before any network work.
struct Join {
    bind: SocketAddr,
    bootstrap: Vec<SocketAddr>,
}

/// Checks `--bind`, `--port` and that `--bootstrap` is given (unless
/// `bootstrap_optional`); returns the address to bind. No network work.
fn bind_addr(cli: &Cli, node: &NodeArgs, bootstrap_optional: bool) -> anyhow::Result<SocketAddr> {
    if cli.bootstrap.is_empty() && !bootstrap_optional {
        return usage("this command needs --bootstrap HOST:PORT (a node of the DHT to join)");
    }
    let bind = match (node.bind, cli.port) {
        (Some(b), Some(p)) if b.port() != p => {
            return usage(format!(
                "--port {p} and --bind {b} disagree; give one of them"
            ));
        }
        (Some(b), _) => b,
        (None, port) => SocketAddr::from(([0, 0, 0, 0], port.unwrap_or(0))),
    };
    if bind.is_ipv6() {
        return usage(format!(
            "--bind {bind} is an IPv6 address: the DHT speaks IPv4 only for now"
        ));
    }
    Ok(bind)
}

/// Resolves the bootstrap nodes (the last check, after every other argument's).
fn resolve(cli: &Cli, bind: SocketAddr) -> anyhow::Result<Join> {
    let mut bootstrap = Vec::new();
    for b in &cli.bootstrap {
        let addrs: Vec<SocketAddr> = b
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve bootstrap node {b}"))?
            .collect();
        bootstrap.extend(ipv4_only(b, &addrs)?.into_iter().map(SocketAddr::V4));
    }
    Ok(Join { bind, bootstrap })
}

/// The IPv4 addresses a bootstrap node `name` resolved to; a usage error if
/// there is none (the DHT speaks IPv4 only for now).
fn ipv4_only(name: &str, addrs: &[SocketAddr]) -> Result<Vec<SocketAddrV4>, UsageError> {
    let v4: Vec<SocketAddrV4> = addrs
        .iter()
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4),
            SocketAddr::V6(_) => None,
        })
        .collect();
    if v4.is_empty() {
        return Err(UsageError(format!(
            "bootstrap node {name} has no IPv4 address (only IPv6): the DHT speaks IPv4 only for now"
        )));
    }
    Ok(v4)
}

/// Starts a node and joins the DHT through the bootstrap nodes, if any.
async fn start_with(join: &Join, builder: DhtBuilder) -> anyhow::Result<Dht> {
    let dht = builder
        .bind_addr(join.bind)
        .bootstrap(&join.bootstrap)
        .build()
        .await
        .with_context(|| format!("cannot start a DHT node on {}", join.bind))?;
    // `build` bootstrapped already.
    if !join.bootstrap.is_empty() {
        let known = dht.stats().await.context("bootstrap failed")?;
        if known.routing_table_size == 0 {
            bail!("no bootstrap node answered");
        }
    }
    Ok(dht)
}

/// A short-lived read-only node (BEP 43) for one request: other nodes do not
/// add it to their routing tables, and it answers nobody.
fn one_shot() -> DhtBuilder {
    Dht::builder().read_only(true)
}

/// Parses a public key argument: the node id (base32) or the 64-hex ed25519
/// key; a DHT id is a usage error that says why.
fn public_key_arg(text: &str, what: &str) -> anyhow::Result<NodeId> {
    NodeId::parse_any(text).map_err(|e| UsageError(format!("{what}: {e}")).into())
}

async fn run_node(cli: &Cli, node: &NodeArgs, announce_service: bool) -> anyhow::Result<()> {
    let join = resolve(cli, bind_addr(cli, node, true)?)?;
    // Not used by the node itself: printed so that the two ids are not confused.
    let node_id = load_or_create_key(cli)?.node_id();
    let dht = start_with(&join, Dht::builder()).await?;
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
    let dht_id = dht.id().to_hex();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "dht_running", "id": dht_id, "addr": dht.local_addr().to_string(),
                "dht_id": dht_id, "node_id": node_id.to_string(), "public_key": node_id.to_hex()})
        );
    } else {
        println!(
            "dht node id {dht_id} (DHT routing id), node id {node_id} (public key) on {}",
            dht.local_addr()
        );
    }
    tokio::select! {
        r = wait_for_signal() => r?,
        () = announcing => {}
    }
    dht.shutdown().await;
    Ok(())
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
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

/// What `dht put` stores: checked (and signed) before the node starts.
enum PutItem {
    Immutable(Value),
    Mutable(NodeId, MutableItem),
}

async fn put(
    cli: &Cli,
    node: &NodeArgs,
    value: &str,
    mutable: bool,
    salt: &str,
    seq: i64,
) -> anyhow::Result<()> {
    let v = Value::Bytes(value.as_bytes().to_vec());
    let bind = bind_addr(cli, node, false)?;
    let item = if mutable {
        let key = load_or_create_key(cli)?;
        let item = MutableItem::sign(key.signing_key(), salt.as_bytes(), seq, v)
            .map_err(|e| UsageError(format!("cannot store this item: {e}")))?;
        PutItem::Mutable(key.node_id(), item)
    } else {
        let len = natkit_dht::bencode::emit(&v).len();
        if len > bep44::MAX_VALUE_BYTES {
            return usage(format!(
                "the value is {len} bytes bencoded, over the DHT's {}-byte limit",
                bep44::MAX_VALUE_BYTES
            ));
        }
        PutItem::Immutable(v)
    };
    let dht = start_with(&resolve(cli, bind)?, one_shot()).await?;
    let target = match &item {
        PutItem::Immutable(v) => dht.put_immutable(v.clone()).await,
        PutItem::Mutable(_, item) => dht.put_mutable(item.clone(), None).await,
    };
    dht.shutdown().await;
    let target = target.context("put failed")?.to_hex();
    match (&item, cli.json) {
        (PutItem::Immutable(_), true) => println!(
            "{}",
            serde_json::json!({"event": "put", "target": target, "mutable": false})
        ),
        (PutItem::Immutable(_), false) => println!("{target}"),
        (PutItem::Mutable(id, _), true) => println!(
            "{}",
            serde_json::json!({"event": "put", "target": target, "mutable": true,
                "node_id": id.to_string(), "public_key": id.to_hex(), "salt": salt, "seq": seq})
        ),
        (PutItem::Mutable(id, _), false) => println!(
            "{target} (target), stored under node id {id} (public key), salt {salt:?}, seq {seq}"
        ),
    }
    Ok(())
}

/// What `dht get` fetches.
enum GetWhat {
    Immutable(Id),
    Mutable(NodeId),
}

/// Parses `dht get`'s argument: a target, or with `--mutable` a public key.
fn get_what(text: &str, mutable: bool) -> anyhow::Result<GetWhat> {
    if mutable {
        return public_key_arg(
            text,
            "--mutable needs the node id (public key) the item is stored under",
        )
        .map(GetWhat::Mutable);
    }
    if let Some(target) = Id::from_hex(text.trim()) {
        return Ok(GetWhat::Immutable(target));
    }
    if NodeId::parse_any(text).is_ok() {
        return usage(format!(
            "{text:?} is a node id (a public key), not a target: add --mutable to get the item stored under it"
        ));
    }
    usage(format!(
        "{:?} is not a target: a target is {DHT_ID_HEX_LEN} hexadecimal digits, as dht put prints it",
        text.chars().take(80).collect::<String>()
    ))
}

async fn get(
    cli: &Cli,
    node: &NodeArgs,
    key: &str,
    mutable: bool,
    salt: &str,
) -> anyhow::Result<()> {
    // Check everything before starting anything.
    let bind = bind_addr(cli, node, false)?;
    let what = get_what(key, mutable)?;
    if salt.len() > bep44::MAX_SALT_BYTES {
        return usage(format!(
            "the salt is {} bytes, over the {}-byte limit",
            salt.len(),
            bep44::MAX_SALT_BYTES
        ));
    }
    let dht = start_with(&resolve(cli, bind)?, one_shot()).await?;
    let found = match &what {
        GetWhat::Immutable(target) => dht
            .get_immutable(*target)
            .await
            .map(|v| v.map(|v| (v, None))),
        GetWhat::Mutable(id) => dht
            .get_mutable(*id.as_bytes(), salt.as_bytes(), None)
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
/// rendezvous node (a node behind NAT could not); read-only for a one-shot
/// command.
async fn identity_node(
    join: &Join,
    key: &Keypair,
    keepalive: u64,
    read_only: bool,
) -> anyhow::Result<Dht> {
    let builder = Dht::builder()
        .read_only(read_only)
        .identity(key.signing_key().clone())
        .rendezvous_server(false)
        .keepalive_interval(std::time::Duration::from_secs(keepalive));
    start_with(join, builder).await
}

async fn listen(cli: &Cli, node: &NodeArgs, keepalive: u64) -> anyhow::Result<()> {
    let join = resolve(cli, bind_addr(cli, node, false)?)?;
    let key = load_or_create_key(cli)?;
    let dht = identity_node(&join, &key, keepalive, false).await?;
    let mut messages = dht.messages().await.context("cannot receive messages")?;
    let points = dht.register().await.context("cannot register")?;
    let id = key.node_id();
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
    let bind = bind_addr(cli, node, false)?;
    let to = public_key_arg(to, "the recipient must be a node id")?;
    if text.len() > MAX_PAYLOAD_BYTES {
        return usage(format!(
            "the message is {} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
            text.len()
        ));
    }
    if let Some(v6) = via.iter().find(|a| a.is_ipv6()) {
        return usage(format!(
            "--via {v6} is an IPv6 address: the DHT speaks IPv4 only for now"
        ));
    }
    let join = resolve(cli, bind)?;
    let key = load_or_create_key(cli)?;
    let dht = identity_node(&join, &key, 20, true).await?;
    let to_key = *to.as_bytes();
    let sent = if !via.is_empty() {
        dht.send_message_via(to_key, text.as_bytes(), via).await
    } else if relay {
        dht.relay_message(to_key, text.as_bytes()).await
    } else {
        dht.send_message(to_key, text.as_bytes()).await
    };
    dht.shutdown().await;
    sent.with_context(|| format!("sending to {to}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_name_with_only_ipv6_addresses_is_a_usage_error() {
        let v6: SocketAddr = "[::1]:6881".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let err = ipv4_only("six.example:6881", &[v6]).unwrap_err();
        assert!(err.0.contains("IPv4 only"), "{err}");
        assert!(ipv4_only("none.example:6881", &[]).is_err());
        let ok = ipv4_only("both.example:6881", &[v6, v4]).unwrap();
        assert_eq!(ok, ["127.0.0.1:6881".parse::<SocketAddrV4>().unwrap()]);
    }

    #[test]
    fn get_tells_targets_node_ids_and_garbage_apart() {
        let id = Keypair::from_seed([1; 32]).node_id();
        let target = "ab".repeat(20);
        assert!(matches!(
            get_what(&target, false),
            Ok(GetWhat::Immutable(_))
        ));
        assert!(matches!(get_what(&id.to_string(), true), Ok(GetWhat::Mutable(m)) if m == id));
        assert!(matches!(get_what(&id.to_hex(), true), Ok(GetWhat::Mutable(m)) if m == id));
        for (text, mutable, says) in [
            ("xyz", false, "not a target"),
            (&id.to_string()[..], false, "add --mutable"),
            (&target[..], true, "not a public key"),
            ("xyz", true, "node id"),
        ] {
            let err = get_what(text, mutable).err().unwrap();
            assert!(super::super::is_usage_error(&err), "{text}: {err}");
            assert!(format!("{err}").contains(says), "{text}: {err}");
        }
    }
}
