//! The `natkit` command-line tool.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error. Errors are one line
//! on stderr (`natkit: error: ...`, or `natkit: usage error: ...`); logs
//! (tracing) go to stderr too, controlled by `-v` or `RUST_LOG`; results go to
//! stdout, as JSON lines with `--json`.
//!
//! A usage error is a mistake in how natkit was called: clap's, or a
//! [`UsageError`] that a command returns after checking its arguments, always
//! before any network work. Anything that came from the network is printed
//! through [`text::escape_controls`] in human-readable output.
//!
//! Each command has its own module: [`identity`] (`showid`), [`unl`]
//! (`unl decode`, `unl encode`), [`map`] (`map ...`), [`dht`] (`dht ...`) and
//! [`demo`] (`demo`: two nodes finding each other through the DHT, on loopback)
//! and [`node`] (`bootstrap-node`, `run`, `connect`, `showtype`: a
//! [`Node`](crate::Node)).

use std::fmt;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod demo;
pub mod demo_lab;
pub mod dht;
pub mod identity;
pub mod map;
pub mod node;
pub mod text;
pub mod unl;

/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a usage error (bad flags or arguments).
pub const EXIT_USAGE: i32 = 2;

/// A mistake in how natkit was called (a malformed argument, a missing flag,
/// a value over a limit, flags that cannot go together), found before any
/// network work. [`main`] finds it anywhere in an error's chain and exits with
/// [`EXIT_USAGE`]; every other error is a runtime failure.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `Err` with a [`UsageError`] saying `msg`.
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(msg.into()).into())
}

/// Whether `e` is a usage error (a [`UsageError`] anywhere in its chain).
pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<UsageError>())
}

/// natkit: find peers behind NATs and open direct, authenticated connections.
#[derive(Debug, Parser)]
#[command(name = "natkit", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Identity key file (created on first use, mode 0600).
    /// Default: $XDG_CONFIG_HOME/natkit/identity.key or ~/.config/natkit/identity.key.
    #[arg(long, global = true, env = "NATKIT_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Port to listen on (TCP and UDP). 0 picks a free port.
    #[arg(long, global = true, value_name = "P")]
    pub port: Option<u16>,

    /// A node to bootstrap from (repeatable). Nothing is contacted unless you give one.
    #[arg(long, global = true, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub bootstrap: Vec<String>,

    /// Print every result and event as one JSON object per line on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// More logging on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Two nodes on loopback find each other by node id through a DHT and
    /// exchange a line each way; prints the path and the timings. With
    /// --lab, the same across two real NATs in the NAT lab (root).
    Demo(demo::DemoArgs),
    /// Print this node's id (its public key), creating the key file on first use.
    Showid,
    /// This node's own UNL (Universal Node Locator); build and read UNLs.
    Unl(unl::UnlArgs),
    /// Map a port on the home router (PCP, NAT-PMP or UPnP).
    Map(map::MapCommand),
    /// Run a DHT node, or put and get values through one (BEP 44).
    #[command(subcommand)]
    Dht(dht::DhtCommand),
    /// Run a public node that others join through (--bootstrap): a DHT node
    /// and rendezvous server, until Ctrl-C or SIGTERM.
    BootstrapNode(node::BootstrapArgs),
    /// Join through --bootstrap, publish this node's UNL in the DHT, then
    /// print every connection and every line received, until Ctrl-C.
    Run(node::RunArgs),
    /// Connect to a node by UNL or node id: stdin lines go to it, its lines
    /// come out on stdout (a netcat); path and timings on stderr.
    Connect(node::ConnectArgs),
    /// Join through --bootstrap, wait a few seconds for DHT nodes to report
    /// the address they see us at, and print what our NAT does to UDP, with
    /// the evidence.
    Showtype(node::BindArgs),
}

/// Runs the tool with the process's arguments and returns the exit code.
pub fn main() -> i32 {
    // A panic is a bug; still, the user gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        eprintln!("natkit: internal error (please report): {msg}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.verbose);
    match run(&cli) {
        Ok(()) => 0,
        Err(e) if is_usage_error(&e) => {
            eprintln!("natkit: usage error: {} (see natkit --help)", one_line(&e));
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("natkit: error: {}", one_line(&e));
            EXIT_FAILURE
        }
    }
}

/// Prints a clap error: help and version in full; a usage error as one line.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return EXIT_USAGE;
    }
    // clap's message is a paragraph, then usage; keep the paragraph, on one line.
    let text = e.render().to_string();
    let para: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let msg = para.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    // clap quotes the offending argument as it was given.
    let msg = text::escape_controls(msg);
    eprintln!("natkit: usage error: {msg} (see natkit --help)");
    EXIT_USAGE
}

/// Runs a parsed command.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Demo(args) if args.lab => demo_lab::run(cli),
        Command::Demo(_) => demo::run(cli),
        Command::Showid => identity::showid(cli),
        Command::Unl(args) => unl::run(
            cli,
            args.command
                .as_ref()
                .unwrap_or(&unl::UnlCommand::Show(Default::default())),
        ),
        Command::Map(cmd) => map::run(cli, cmd),
        Command::Dht(cmd) => dht::run(cli, cmd),
        Command::BootstrapNode(args) => node::bootstrap_node(cli, args),
        Command::Run(args) => node::run(cli, args),
        Command::Connect(args) => node::connect(cli, args),
        Command::Showtype(args) => node::showtype(cli, args),
    }
}

/// The error and its causes on one line; text in them that came from the
/// network (or from a file) cannot break the line or reach the terminal as
/// control characters.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string().replace('\n', " ");
        let s = text::escape_controls(&s).into_owned();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// A `--bootstrap` value: HOST:PORT with an IPv4 address or a host name. An
/// IPv6 address is refused here (the DHT speaks IPv4 only for now); a name
/// that resolves only to IPv6 is refused when it is resolved.
fn parse_host_port(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if host.contains(':') || host.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "{s:?} is an IPv6 address: the DHT speaks IPv4 only for now; give an IPv4 bootstrap node"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(s.to_string()),
        _ => Err(format!("{s:?} has no valid port (1-65535)")),
    }
}

/// The key file to use: `--key`, else the default location.
pub fn key_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cli.key {
        return Ok(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find a place for the key file: set --key, HOME or XDG_CONFIG_HOME"
            )
        })?;
    Ok(base.join("natkit").join("identity.key"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definition_is_consistent() {
        // Catches clashing names (a subcommand argument named like a global
        // flag) that clap would otherwise only report when the argument is used.
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
