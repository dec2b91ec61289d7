//! `natkit bootstrap-node`, `natkit run` and `natkit connect`: a
//! [`Node`] from the command line.
//!
//! - `bootstrap-node` is a public node that others join through: a [`Node`]
//!   without bootstrap nodes (DHT node and rendezvous server), up until
//!   SIGINT or SIGTERM.
//! - `run` joins through `--bootstrap`, says `ready` once its UNL is
//!   published in the DHT (so it can be reached by its node id alone), then
//!   prints every connection event and every line any peer sends it.
//! - `connect <UNL|ID>` is a netcat over natkit: stdin lines go to the peer,
//!   the peer's lines go to stdout (raw, one per line), the path and timings
//!   go to stderr. At the end of stdin everything queued is flushed, the
//!   connection is closed cleanly and it exits 0.
//! - `showtype` joins through `--bootstrap`, waits at most
//!   [`SHOWTYPE_WAIT`] for [`SHOWTYPE_REPORTERS`] DHT nodes to report the
//!   address they saw us at, and prints the UDP classification
//!   ([`Node::udp_classification`]) with each report as evidence.
//!
//! Every argument (the target, `--bootstrap`, `--bind`) is checked before any
//! network work: a mistake is a usage error (exit 2). Human-readable output
//! escapes text that came from the network; `--json` carries it exactly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use natkit_net::{CloseCode, CloseReason, Connection, Direction, NetEvent};
use serde_json::json;

use super::identity::load_or_create_key;
use super::text::escape_controls;
use super::{Cli, usage};
use crate::node::{Node, NodeBuilder, Target};

/// How long `run` tries to become reachable by id (publish its UNL, with
/// rendezvous points) before giving up (exit 1).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait of `showtype` for reports.
pub const SHOWTYPE_WAIT: Duration = Duration::from_secs(3);

/// Reporters after which `showtype` stops waiting (what the classifier needs).
pub const SHOWTYPE_REPORTERS: usize = natkit_traversal::classify::MIN_REPORTER_IPS;

/// Where a node binds (the port is the global `--port`).
#[derive(Debug, Default, Args)]
pub struct BindArgs {
    /// Local IPv4 address to bind, TCP and UDP (default 0.0.0.0: every
    /// interface, whose addresses the UNL lists).
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
}

/// Serving as a relay (`bootstrap-node`, `run`).
#[derive(Debug, Default, Args)]
pub struct RelayArgs {
    /// Serve as a relay for nodes that cannot be reached directly (announced
    /// in the DHT; only for a node reachable from the internet).
    #[arg(long)]
    pub relay: bool,
    /// The relay's TCP port (default: any free port; the DHT announcement
    /// carries it).
    #[arg(long, value_name = "PORT", requires = "relay")]
    pub relay_port: Option<u16>,
}

impl RelayArgs {
    fn apply(&self, b: NodeBuilder) -> NodeBuilder {
        b.relay(self.relay).relay_port(self.relay_port.unwrap_or(0))
    }
}

/// `natkit bootstrap-node` arguments.
#[derive(Debug, Default, Args)]
pub struct BootstrapArgs {
    /// Where to bind.
    #[command(flatten)]
    pub bind: BindArgs,
    /// Relaying.
    #[command(flatten)]
    pub relay: RelayArgs,
}

/// `natkit run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where to bind.
    #[command(flatten)]
    pub bind: BindArgs,
    /// Relaying.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Send every line received back to its sender.
    #[arg(long)]
    pub echo: bool,
}

/// `natkit connect` arguments.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Whom to connect to: a UNL, or a node id (its UNL is looked up in the DHT).
    #[arg(value_name = "UNL|ID")]
    pub target: String,
    #[command(flatten)]
    pub bind: BindArgs,
}

/// The bind address, checked (IPv4 only).
fn bind_ip(args: &BindArgs) -> anyhow::Result<IpAddr> {
    match args.bind {
        Some(ip) if ip.is_ipv6() => usage(format!(
            "--bind {ip} is an IPv6 address: natkit nodes speak IPv4 only for now"
        )),
        Some(ip) => Ok(ip),
        None => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    }
}

/// Resolves `--bootstrap` (required) to IPv4 addresses.
fn bootstrap_nodes(cli: &Cli) -> anyhow::Result<Vec<SocketAddr>> {
    if cli.bootstrap.is_empty() {
        return usage("this command needs --bootstrap HOST:PORT (a node of the network to join)");
    }
    let mut out = Vec::new();
    for b in &cli.bootstrap {
        let addrs: Vec<SocketAddr> = b
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve bootstrap node {b}"))?
            .filter(SocketAddr::is_ipv4)
            .collect();
        if addrs.is_empty() {
            bail!("bootstrap node {b} has no IPv4 address (the DHT speaks IPv4 only for now)");
        }
        out.extend(addrs);
    }
    Ok(out)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn builder(cli: &Cli, ip: IpAddr) -> anyhow::Result<NodeBuilder> {
    let key = load_or_create_key(cli)?;
    Ok(Node::builder()
        .key(key)
        .bind_ip(ip)
        .port(cli.port.unwrap_or(0)))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs `natkit bootstrap-node`.
pub fn bootstrap_node(cli: &Cli, args: &BootstrapArgs) -> anyhow::Result<()> {
    if !cli.bootstrap.is_empty() {
        return usage("bootstrap-node is where others join; it takes no --bootstrap");
    }
    let ip = bind_ip(&args.bind)?;
    let builder = args.relay.apply(builder(cli, ip)?);
    runtime()?.block_on(async {
        let node = builder.build().await.context("cannot start the node")?;
        let addr = SocketAddr::new(ip, node.port());
        let unl = node.unl().emit();
        let relay = node.relay_addr().map(|a| a.to_string());
        if cli.json {
            println!(
                "{}",
                json!({"event": "ready", "id": node.id(), "unl": unl, "addr": addr.to_string(), "relay": relay})
            );
        } else {
            println!("ready: node id {} on {addr}", node.id());
            println!("unl: {unl}");
            if let Some(r) = relay {
                println!("relay: on {r}");
            }
        }
        let r = super::dht::wait_for_signal().await;
        node.shutdown().await;
        r
    })
}

/// Runs `natkit run`.
pub fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<()> {
    let ip = bind_ip(&args.bind)?;
    let echo = args.echo;
    let bootstrap = bootstrap_nodes(cli)?;
    let builder = args.relay.apply(builder(cli, ip)?.bootstrap(&bootstrap));
    runtime()?.block_on(async {
        let node = builder.build().await.context("cannot start the node")?;
        let signal = super::dht::wait_for_signal();
        tokio::pin!(signal);
        let r = tokio::select! {
            r = &mut signal => r,
            r = run_events(cli.json, echo, &node) => r,
        };
        node.shutdown().await;
        r
    })
}

/// Publishes the UNL, says `ready`, then prints events until the node ends.
async fn run_events(json: bool, echo: bool, node: &Node) -> anyhow::Result<()> {
    // Events are queued from here on: nothing that happens after `ready` is lost.
    let mut events = std::pin::pin!(node.events());
    node.wait_reachable(PUBLISH_TIMEOUT)
        .await
        .with_context(|| {
            format!(
                "gave up making this node reachable by id after {} s",
                PUBLISH_TIMEOUT.as_secs()
            )
        })?;
    let unl = node.unl().emit();
    let relay = node.relay_addr().map(|a| a.to_string());
    let relays: Vec<String> = node.relays().iter().map(|r| r.addr.to_string()).collect();
    if json {
        println!(
            "{}",
            json!({"event": "ready", "id": node.id(), "unl": unl, "relay": relay, "relays": relays})
        );
    } else {
        println!("ready: node id {}, UNL published in the DHT", node.id());
        println!("unl: {unl}");
        if let Some(r) = relay {
            println!("relay: on {r}");
        }
        if !relays.is_empty() {
            println!("reachable through relays: {}", relays.join(", "));
        }
    }
    while let Some(event) = events.next().await {
        print_event(json, &event);
        if let (true, NetEvent::Line(c, line)) = (echo, &event)
            && let Err(e) = c.send_line(line)
        {
            tracing::info!(peer = %c.node_id().short(), error = %e, "cannot echo a line");
        }
    }
    Ok(())
}

fn direction(c: &Connection) -> &'static str {
    match c.direction() {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

fn print_event(json: bool, event: &NetEvent) {
    match event {
        NetEvent::Connected(c) => {
            let (id, addr, dir) = (c.node_id(), c.remote_addr(), direction(c));
            if json {
                println!(
                    "{}",
                    json!({"event": "connected", "id": id, "addr": addr.to_string(), "direction": dir, "relay": c.relay()})
                );
            } else if let Some(relay) = c.relay() {
                println!("connected: {id} through relay {relay} at {addr} ({dir})");
            } else {
                println!("connected: {id} at {addr} ({dir})");
            }
        }
        NetEvent::Line(c, line) => {
            let id = c.node_id();
            if json {
                println!("{}", json!({"event": "line", "from": id, "line": line}));
            } else {
                println!("line from {id}: {}", escape_controls(line));
            }
        }
        NetEvent::Disconnected { conn, reason } => {
            let (id, reason) = (conn.node_id(), reason.to_string());
            if json {
                println!(
                    "{}",
                    json!({"event": "disconnected", "id": id, "reason": reason})
                );
            } else {
                println!("disconnected: {id} ({})", escape_controls(&reason));
            }
        }
    }
}

/// Runs `natkit unl` (no subcommand): this node's own UNL. With
/// `--bootstrap`, once the node is reachable by id (its UNL, with the address
/// the DHT saw and rendezvous points, is in the DHT); without, at once (LAN
/// addresses only).
pub fn own_unl(cli: &Cli, args: &BindArgs) -> anyhow::Result<()> {
    let ip = bind_ip(args)?;
    let bootstrap = if cli.bootstrap.is_empty() {
        Vec::new()
    } else {
        bootstrap_nodes(cli)?
    };
    // No port mapping: it would be removed again when this command exits.
    let builder = builder(cli, ip)?.bootstrap(&bootstrap).port_mapping(false);
    runtime()?.block_on(async {
        let node = builder.build().await.context("cannot start the node")?;
        let r = if bootstrap.is_empty() {
            Ok(())
        } else {
            node.wait_reachable(PUBLISH_TIMEOUT).await.with_context(|| {
                format!(
                    "gave up making this node reachable by id after {} s",
                    PUBLISH_TIMEOUT.as_secs()
                )
            })
        };
        if r.is_ok() {
            let unl = node.unl();
            if cli.json {
                println!(
                    "{}",
                    json!({"id": node.id(), "unl": unl.emit(), "published": node.published_seq().is_some()})
                );
            } else {
                println!("{}", unl.emit());
            }
        }
        node.shutdown().await;
        r
    })
}

/// Runs `natkit connect`.
pub fn connect(cli: &Cli, args: &ConnectArgs) -> anyhow::Result<()> {
    let target: Target = match args.target.parse() {
        Ok(t) => t,
        Err(e) => return usage(format!("bad target: {e}")),
    };
    let ip = bind_ip(&args.bind)?;
    let bootstrap = bootstrap_nodes(cli)?;
    let builder = builder(cli, ip)?.bootstrap(&bootstrap);
    let rt = runtime()?;
    let r = rt.block_on(async {
        let node = builder.build().await.context("cannot start the node")?;
        let r = netcat(&node, target).await;
        node.shutdown().await;
        r
    });
    // The stdin thread may still be blocked in a read; the process ends anyway.
    rt.shutdown_background();
    r
}

/// Lines read from stdin by a thread: `None` at the end of stdin.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let stop = line.is_err();
            if tx.blocking_send(line).is_err() || stop {
                return;
            }
        }
    });
    rx
}

async fn netcat(node: &Node, target: Target) -> anyhow::Result<()> {
    let to = target.node_id();
    let (con, path) = node
        .connect(target)
        .await
        .with_context(|| format!("cannot connect to {to}"))?;
    let lookup = match path.lookup {
        Some(l) => format!(" (lookup {:.1} ms)", ms(l)),
        None => String::new(),
    };
    eprintln!(
        "connected to {to} over {path} in {:.1} ms{lookup}",
        ms(path.elapsed)
    );
    let mut input = stdin_lines();
    loop {
        tokio::select! {
            line = con.recv() => match line {
                Some(line) => println!("{line}"),
                None => {
                    let reason = con.closed().await;
                    return peer_ended(&reason);
                }
            },
            line = input.recv() => match line {
                Some(Ok(line)) => {
                    if let Err(e) = con.send(&line).await {
                        bail!("cannot send to {to}: {e}");
                    }
                }
                Some(Err(e)) => bail!("cannot read stdin: {e}"),
                None => break,
            },
        }
    }
    // Closing flushes every queued line first, then says goodbye.
    con.close();
    // Lines the peer sent before our close still reach stdout.
    while let Some(line) = con.recv().await {
        println!("{line}");
    }
    match con.closed().await {
        CloseReason::Local | CloseReason::Shutdown if con.all_sent() => Ok(()),
        CloseReason::Local | CloseReason::Shutdown => {
            bail!(
                "the connection to {to} closed before every line was sent (the peer did not read them in time)"
            )
        }
        reason => bail!("the connection to {to} ended before every line was sent: {reason}"),
    }
}

/// The peer ended the connection before our stdin did.
fn peer_ended(reason: &CloseReason) -> anyhow::Result<()> {
    match reason {
        CloseReason::Remote {
            code: CloseCode::Normal | CloseCode::Shutdown,
            ..
        } => {
            eprintln!("{}", escape_controls(&reason.to_string()));
            Ok(())
        }
        reason => bail!("connection lost: {reason}"),
    }
}

/// Runs `natkit showtype`.
pub fn showtype(cli: &Cli, args: &BindArgs) -> anyhow::Result<()> {
    let ip = bind_ip(args)?;
    let bootstrap = bootstrap_nodes(cli)?;
    let builder = builder(cli, ip)?.bootstrap(&bootstrap);
    runtime()?.block_on(async {
        let node = builder.build().await.context("cannot start the node")?;
        let r = showtype_report(cli.json, &node).await;
        node.shutdown().await;
        r
    })
}

async fn showtype_report(json: bool, node: &Node) -> anyhow::Result<()> {
    let deadline = Instant::now() + SHOWTYPE_WAIT;
    let observations = loop {
        let obs = node
            .dht()
            .observations()
            .await
            .context("the DHT node stopped")?;
        if obs.len() >= SHOWTYPE_REPORTERS || Instant::now() >= deadline {
            break obs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = node
        .udp_classification()
        .await
        .context("the DHT node stopped")?;
    // A report is counted when the classifier compared it; reports from
    // loopback or our LAN are refused (they see us without the NAT).
    let counted = |o: &natkit_dht::stats::Observation| {
        c.votes.iter().any(|v| {
            v.counted && v.reporter_ip == IpAddr::V4(*o.reporter.ip()) && v.observed == o.observed
        })
    };
    let class = c.class.to_string();
    let nat = crate::cli::unl::nat_name(c.class.nat_type());
    // TCP reachability: register with rendezvous nodes, ask them to dial back.
    // Registered with as many rendezvous nodes as there will be (a round may
    // answer before every node did), then the check: its helpers are those.
    let deadline = Instant::now() + SHOWTYPE_WAIT;
    let mut registered = false;
    loop {
        match node.register_rendezvous().await {
            Ok(points) => {
                registered = true;
                if points.len() >= natkit_dht::rendezvous::RENDEZVOUS_NODES {
                    break;
                }
            }
            Err(_) => break,
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let tcp = if registered {
        node.check_reachability().await
    } else {
        None
    };
    // The TCP reports come from the rendezvous nodes the check connected to.
    let t = node.tcp_classification();
    let tcp_class = t.class.to_string();
    let tcp_nat = crate::cli::unl::nat_name(t.class.nat_type());
    if json {
        let evidence: Vec<_> = observations
            .iter()
            .map(|o| {
                json!({
                    "reporter": o.reporter.to_string(),
                    "observed": o.observed.to_string(),
                    "age_ms": ms(o.at.elapsed()),
                    "counted": counted(o),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "transport": "udp",
                "class": class,
                "nat": nat,
                "local_port": node.port(),
                "external": c.external.map(|a| a.to_string()),
                "evidence": evidence,
                "tcp_reachable": tcp,
                "tcp": {
                    "class": tcp_class,
                    "nat": tcp_nat,
                    "external": t.external.map(|a| a.to_string()),
                    "evidence": t.votes.iter().map(|v| json!({
                        "reporter": v.reporter,
                        "reporter_ip": v.reporter_ip.to_string(),
                        "observed": v.observed.to_string(),
                        "counted": v.counted,
                    })).collect::<Vec<_>>(),
                },
            })
        );
    } else {
        println!("udp: {class} (UNL nat type {nat})");
        println!("tcp: {tcp_class} (UNL nat type {tcp_nat})");
        for v in &t.votes {
            let note = if v.counted { "" } else { " (not counted)" };
            println!(
                "node {} at {} saw our TCP connection come from {}{note}",
                v.reporter, v.reporter_ip, v.observed
            );
        }
        println!(
            "tcp reachability: {}",
            match tcp {
                Some(true) => "reachable (a rendezvous node dialed us back)",
                Some(false) => "not reachable unsolicited (no dial-back arrived within 3 s)",
                None => "unknown (no natkit rendezvous node off our network to ask)",
            }
        );
        if let Some(e) = c.external {
            println!("external address: {e}");
        }
        if observations.is_empty() {
            println!(
                "no DHT node reported our address within {} s",
                SHOWTYPE_WAIT.as_secs()
            );
        }
        for o in &observations {
            let note = if counted(o) {
                ""
            } else {
                " (not counted: on our own network)"
            };
            println!("{} saw us at {}{note}", o.reporter, o.observed);
        }
    }
    Ok(())
}
