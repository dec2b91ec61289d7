//! `natkit unl` (this node's own UNL), `natkit unl decode` and `natkit unl encode`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use natkit_identity::NodeId;
use natkit_unl::{AddrSource, NatType, NodeType, Unl};

use super::identity::load_or_create_key;
use super::{Cli, UsageError, usage};

/// `natkit unl ...`
#[derive(Debug, Subcommand)]
pub enum UnlCommand {
    /// Print this node's own UNL (the default): with --bootstrap, once it is
    /// reachable by id (the UNL published in the DHT, with the address the
    /// DHT saw and rendezvous points); without, its LAN addresses only.
    Show(super::node::BindArgs),
    /// Print every field of a UNL (with --json: one JSON object).
    Decode {
        /// The UNL text (starts with "nk").
        unl: String,
    },
    /// Build a UNL from flags and print it (for scripts and tests).
    Encode(EncodeArgs),
}

/// `natkit unl [COMMAND]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UnlArgs {
    /// What to do (default `show`: this node's own UNL).
    #[command(subcommand)]
    pub command: Option<UnlCommand>,
}

/// Flags of `natkit unl encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The node id to put in the UNL (52 base32 characters, or the 64 hex
    /// digits of its public key). Default: this node's own (from the key file).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<NodeId>,
    /// A candidate address as SOURCE=IP:PORT (repeatable, best first).
    /// SOURCE: lan, observed, upnp, nat-pmp, pcp, manual, relay.
    #[arg(long = "addr", value_name = "SOURCE=IP:PORT", value_parser = parse_candidate)]
    pub addrs: Vec<(AddrSource, SocketAddr)>,
    /// NAT type.
    #[arg(long, value_enum, default_value_t = NatArg::Unknown)]
    pub nat: NatArg,
    /// Port delta of an incrementing NAT (needs --nat incrementing).
    #[arg(long, allow_negative_numbers = true)]
    pub delta: Option<i16>,
    /// Node type.
    #[arg(long, value_enum, default_value_t = NodeArg::Unknown)]
    pub node: NodeArg,
    /// A rendezvous point IP:PORT (repeatable).
    #[arg(long, value_name = "IP:PORT", value_parser = parse_addr)]
    pub rendezvous: Vec<SocketAddr>,
    /// Timestamp in Unix seconds, or "now".
    #[arg(long, default_value = "now", value_parser = parse_timestamp)]
    pub timestamp: u32,
    /// Sign the UNL with this node's key (the node id must be our own).
    #[arg(long)]
    pub sign: bool,
}

/// NAT types on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NatArg {
    /// Not measured.
    Unknown,
    /// No NAT.
    Open,
    /// Endpoint-independent mapping.
    Consistent,
    /// Ports step by --delta.
    Incrementing,
    /// Symmetric NAT.
    Random,
}

/// Node types on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NodeArg {
    /// Not measured.
    Unknown,
    /// Accepts inbound connections.
    Reachable,
    /// Can be hole-punched.
    HolePunch,
    /// Dials out only.
    OutboundOnly,
}

/// Runs a `natkit unl` command.
pub fn run(cli: &Cli, cmd: &UnlCommand) -> anyhow::Result<()> {
    match cmd {
        UnlCommand::Show(args) => super::node::own_unl(cli, args),
        UnlCommand::Decode { unl } => decode(cli, unl),
        UnlCommand::Encode(args) => encode(cli, args),
    }
}

fn decode(cli: &Cli, text: &str) -> anyhow::Result<()> {
    // A UNL that does not decode is a bad argument.
    let unl = Unl::parse(text).map_err(|e| UsageError(format!("cannot decode the UNL: {e}")))?;
    if cli.json {
        let mut v = serde_json::to_value(&unl)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("version".into(), natkit_unl::VERSION.into());
        }
        println!("{v}");
        return Ok(());
    }
    println!("version:    {}", natkit_unl::VERSION);
    println!("node id:    {}", unl.node_id);
    for c in &unl.addrs {
        println!("address:    {} {}", c.source, c.addr);
    }
    println!("nat type:   {}", nat_name(unl.nat));
    let node = serde_json::to_value(unl.node)?;
    println!("node type:  {}", node.as_str().unwrap_or("unknown"));
    for r in &unl.rendezvous {
        println!("rendezvous: {r}");
    }
    if unl.timestamp == 0 {
        println!("timestamp:  unset");
    } else {
        println!("timestamp:  {} (Unix seconds)", unl.timestamp);
    }
    println!(
        "signature:  {}",
        if unl.signature.is_some() {
            "valid (signed by the node id above)"
        } else {
            "none"
        }
    );
    Ok(())
}

fn encode(cli: &Cli, args: &EncodeArgs) -> anyhow::Result<()> {
    // Check everything before touching the key file.
    let nat = match (args.nat, args.delta) {
        (NatArg::Incrementing, Some(delta)) => NatType::Incrementing { delta },
        (NatArg::Incrementing, None) => return usage("--nat incrementing needs --delta N"),
        (_, Some(_)) => return usage("--delta is only for --nat incrementing"),
        (NatArg::Unknown, None) => NatType::Unknown,
        (NatArg::Open, None) => NatType::Open,
        (NatArg::Consistent, None) => NatType::Consistent,
        (NatArg::Random, None) => NatType::Random,
    };
    if args.addrs.len() > natkit_unl::MAX_ADDRS {
        return usage(format!(
            "{} --addr given; a UNL holds at most {}",
            args.addrs.len(),
            natkit_unl::MAX_ADDRS
        ));
    }
    if args.rendezvous.len() > natkit_unl::MAX_RENDEZVOUS {
        return usage(format!(
            "{} --rendezvous given; a UNL holds at most {}",
            args.rendezvous.len(),
            natkit_unl::MAX_RENDEZVOUS
        ));
    }
    let key = if args.sign || args.node_id.is_none() {
        Some(load_or_create_key(cli)?)
    } else {
        None
    };
    let node_id = match (args.node_id, &key) {
        (Some(id), _) => id,
        (None, Some(k)) => k.node_id(),
        (None, None) => anyhow::bail!("no node id"),
    };
    let mut unl = Unl::new(node_id);
    for (source, addr) in &args.addrs {
        unl.add_addr(*source, *addr)?;
    }
    for r in &args.rendezvous {
        unl.add_rendezvous(*r)?;
    }
    unl.nat = nat;
    unl.node = match args.node {
        NodeArg::Unknown => NodeType::Unknown,
        NodeArg::Reachable => NodeType::Reachable,
        NodeArg::HolePunch => NodeType::HolePunch,
        NodeArg::OutboundOnly => NodeType::OutboundOnly,
    };
    unl.timestamp = args.timestamp;
    if args.sign {
        let key = key.as_ref().context("signing needs the identity key")?;
        // Signing another node's UNL cannot work: a usage error.
        unl.sign(key)
            .map_err(|e| UsageError(format!("--sign: {e}")))?;
    }
    let text = unl.try_emit()?;
    if cli.json {
        println!("{}", serde_json::json!({ "event": "unl", "unl": text }));
    } else {
        println!("{text}");
    }
    Ok(())
}

fn parse_candidate(s: &str) -> Result<(AddrSource, SocketAddr), String> {
    let (src, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SOURCE=IP:PORT"))?;
    let source = src.parse::<AddrSource>()?;
    Ok((source, parse_addr(addr)?))
}

fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    let a = addr
        .parse::<SocketAddr>()
        .map_err(|_| format!("{addr:?} is not IP:PORT (IPv6 as [addr]:port)"))?;
    if a.port() == 0 {
        return Err(format!("{addr:?} has port 0"));
    }
    Ok(a)
}

fn parse_timestamp(s: &str) -> Result<u32, String> {
    if s == "now" {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_string())?
            .as_secs();
        return u32::try_from(secs).map_err(|_| "the clock is past 2106".to_string());
    }
    s.parse::<u32>()
        .map_err(|_| format!("{s:?} is not a Unix time in seconds (0-4294967295) or \"now\""))
}

/// A NAT type as `unl decode` prints it.
pub(crate) fn nat_name(nat: NatType) -> String {
    match nat {
        NatType::Unknown => "unknown".to_string(),
        NatType::Open => "open".into(),
        NatType::Consistent => "consistent".into(),
        NatType::Incrementing { delta } => format!("incrementing (delta {delta:+})"),
        NatType::Random => "random".into(),
    }
}
