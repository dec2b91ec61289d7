//! `natkit map probe|add|list|remove`: port mapping on the home router with
//! PCP, NAT-PMP or UPnP IGD (`natkit-portmap`).
//!
//! `add` keeps the mapping alive (renewing its lease) until Ctrl-C or
//! SIGTERM, then removes it. With `--json` every result and event is one
//! JSON object per line. In human-readable output, the strings the gateway
//! sent (error texts, mapping descriptions, client names) are printed through
//! [`escape_controls`].

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use natkit_portmap::blocking::BlockingClient;
use natkit_portmap::gateway::{Method, Protocol};
use natkit_portmap::{Config, MappingEvent, MappingStatus};
use serde_json::json;

use super::text::escape_controls;
use super::{Cli, usage};

/// `natkit map ...`
#[derive(Debug, Args)]
pub struct MapCommand {
    /// The gateway to ask (default: the default route's gateway).
    #[arg(long, global = true, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,
    /// The UPnP device description URL, e.g. http://192.168.1.1:5000/rootDesc.xml (skips SSDP).
    #[arg(long, global = true, value_name = "URL")]
    pub upnp_url: Option<String>,
    /// How long each probe and request may wait for the gateway, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub action: MapAction,
}

/// The `map` subcommands.
#[derive(Debug, Subcommand)]
pub enum MapAction {
    /// Which protocols the gateway speaks, its external IP and how long each probe took.
    Probe,
    /// Map a port and keep it mapped until Ctrl-C / SIGTERM, then remove it.
    Add {
        /// The local port to map (the same external port is asked for first).
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Transport protocol.
        #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
        proto: ProtoArg,
        /// Lease to ask for, in seconds (renewed at half-life).
        #[arg(long, value_name = "SECS", default_value_t = 7200,
              value_parser = clap::value_parser!(u32).range(1..))]
        lease: u32,
        /// Mapping protocol; auto probes all and takes PCP, then NAT-PMP, then UPnP.
        #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
        method: MethodArg,
        /// Map to this LAN address instead of our own (gateways in secure mode refuse).
        #[arg(long, value_name = "IP")]
        internal_ip: Option<Ipv4Addr>,
    },
    /// List the gateway's mappings (UPnP only: NAT-PMP and PCP cannot list).
    List,
    /// Remove a mapping (UPnP: by external port; NAT-PMP: by internal port; PCP: only with the
    /// creating process's nonce). Auto tries every method.
    Remove {
        /// The port.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Transport protocol.
        #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
        proto: ProtoArg,
        /// Mapping protocol; auto tries all of PCP, NAT-PMP and UPnP.
        #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
        method: MethodArg,
    },
}

/// Transport protocols on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtoArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl From<ProtoArg> for Protocol {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Tcp => Protocol::Tcp,
            ProtoArg::Udp => Protocol::Udp,
        }
    }
}

/// Mapping methods on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Probe and take the best (PCP, NAT-PMP, UPnP).
    Auto,
    /// UPnP IGD.
    Upnp,
    /// NAT-PMP (RFC 6886).
    #[value(alias = "nat-pmp")]
    Natpmp,
    /// PCP (RFC 6887).
    Pcp,
}

impl MethodArg {
    fn method(self) -> Option<Method> {
        match self {
            MethodArg::Auto => None,
            MethodArg::Upnp => Some(Method::Upnp),
            MethodArg::Natpmp => Some(Method::NatPmp),
            MethodArg::Pcp => Some(Method::Pcp),
        }
    }
}

/// Runs `natkit map ...`.
pub fn run(cli: &Cli, cmd: &MapCommand) -> anyhow::Result<()> {
    if let Some(url) = &cmd.upnp_url
        && !url.to_ascii_lowercase().starts_with("http://")
    {
        return usage(format!(
            "--upnp-url {url:?} is not an http:// URL (a UPnP device description, e.g. http://192.168.1.1:5000/rootDesc.xml)"
        ));
    }
    let timeout = Duration::from_millis(cmd.timeout_ms.max(1));
    let mut config = Config {
        gateway: cmd.gateway,
        upnp_url: cmd.upnp_url.clone(),
        probe_timeout: timeout,
        request_timeout: timeout.saturating_mul(3),
        ..Config::default()
    };
    match &cmd.action {
        MapAction::Probe => probe(cli, config),
        MapAction::Add {
            port,
            proto,
            lease,
            method,
            internal_ip,
        } => {
            config.lease = Duration::from_secs(u64::from(*lease));
            config.internal_ip = *internal_ip;
            if let Some(m) = method.method() {
                config.methods = vec![m];
            }
            add(cli, config, (*proto).into(), *port)
        }
        MapAction::List => list(cli, config),
        MapAction::Remove {
            port,
            proto,
            method,
        } => {
            let client = BlockingClient::new(config).context("port mapping")?;
            let proto: Protocol = (*proto).into();
            let used = client
                .remove(proto, *port, method.method())
                .with_context(|| {
                    let why = if *method == MethodArg::Pcp {
                        " (a PCP mapping can be deleted only with the nonce of the process that made it)"
                    } else {
                        ""
                    };
                    format!("removing {} port {port}{why}", proto_name(proto))
                })?;
            let names: Vec<&str> = used.iter().map(|m| m.name()).collect();
            if cli.json {
                println!(
                    "{}",
                    json!({"event": "removed", "methods": names, "protocol": proto_name(proto), "port": port})
                );
            } else {
                println!(
                    "removed {} port {port} via {}",
                    proto_name(proto),
                    names.join(", ")
                );
            }
            Ok(())
        }
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn probe(cli: &Cli, config: Config) -> anyhow::Result<()> {
    let client = BlockingClient::new(config).context("port mapping probe")?;
    let report = client.probe();
    if cli.json {
        let mut v = serde_json::to_value(&report)?;
        v["event"] = json!("probe");
        v["best"] = json!(report.best().map(|m| m.name()));
        println!("{v}");
    } else {
        println!(
            "gateway {} (local address {})",
            report.gateway, report.local_ip
        );
        for m in &report.methods {
            let what = match (&m.error, m.external_ip) {
                (None, Some(ip)) => format!("yes, external IP {ip}"),
                (None, None) => "yes".to_string(),
                (Some(e), _) => format!("no ({})", escape_controls(e)),
            };
            println!(
                "{:<8} {what} [{} ms]",
                format!("{}:", m.method),
                m.elapsed_ms
            );
        }
        match (report.external_ip, report.external_is_global) {
            (Some(ip), Some(true)) => println!("external IP {ip} (public)"),
            (Some(ip), _) => println!(
                "external IP {ip} (not public: another NAT, e.g. carrier-grade NAT, is beyond this gateway)"
            ),
            (None, _) => println!("external IP unknown"),
        }
    }
    if report.best().is_none() {
        anyhow::bail!(
            "the gateway {} answered none of PCP, NAT-PMP and UPnP",
            report.gateway
        );
    }
    Ok(())
}

fn status_json(s: &MappingStatus) -> serde_json::Value {
    let mut v = json!({
        "event": s.event.name(),
        "external_is_global": s.external_is_global,
        "renewals": s.renewals,
        "recreations": s.recreations,
    });
    if let MappingEvent::Failed(e) = &s.event {
        v["error"] = json!(e);
    }
    if let Some(m) = s.mapping {
        v["method"] = json!(m.method.name());
        v["protocol"] = json!(proto_name(m.protocol));
        v["internal"] = json!(m.internal.to_string());
        v["external"] = json!(m.external.to_string());
        v["lifetime_secs"] = json!(m.lifetime.as_secs());
    }
    v
}

fn status_text(s: &MappingStatus) -> String {
    let Some(m) = s.mapping else {
        return match &s.event {
            MappingEvent::Failed(e) => format!("failed: {}", escape_controls(e)),
            other => other.name().to_string(),
        };
    };
    let mut line = format!(
        "{} {} {} -> {} via {}, lease {}s",
        s.event.name(),
        proto_name(m.protocol),
        m.internal,
        m.external,
        m.method,
        m.lifetime.as_secs()
    );
    if let MappingEvent::Failed(e) = &s.event {
        line.push_str(&format!(" (renewal failed: {})", escape_controls(e)));
    }
    if !s.external_is_global {
        line.push_str(" (external address not public: double NAT or carrier-grade NAT)");
    }
    line
}

fn add(cli: &Cli, config: Config, protocol: Protocol, port: u16) -> anyhow::Result<()> {
    let client = BlockingClient::new(config).context("port mapping")?;
    let print = |s: &MappingStatus| {
        if cli.json {
            println!("{}", status_json(s));
        } else {
            println!("{}", status_text(s));
        }
    };
    let mut mapping = client
        .map(protocol, port)
        .with_context(|| format!("mapping {} port {port}", proto_name(protocol)))?;
    if let Some(s) = mapping.status() {
        print(&s);
    }
    let signal = mapping.run_until_signal(print)?;
    tracing::info!("{signal:?}: removing the mapping");
    mapping.remove().context("removing the mapping")?;
    if cli.json {
        println!("{}", json!({"event": "removed"}));
    } else {
        println!("removed");
    }
    Ok(())
}

fn list(cli: &Cli, config: Config) -> anyhow::Result<()> {
    let client = BlockingClient::new(config).context("port mapping")?;
    let entries = client.list().with_context(|| {
        format!(
            "listing the mappings of {} (UPnP only: NAT-PMP and PCP cannot list mappings)",
            client.gateway()
        )
    })?;
    for e in &entries {
        if cli.json {
            let mut v = serde_json::to_value(e)?;
            v["event"] = json!("mapping");
            println!("{v}");
        } else {
            // Every string here is the gateway's.
            println!(
                "{} {} -> {}:{} lease {}s {}{}",
                escape_controls(&e.protocol),
                e.external_port,
                escape_controls(&e.internal_client),
                e.internal_port,
                e.lease_secs,
                escape_controls(&e.description),
                if e.enabled { "" } else { " (disabled)" }
            );
        }
    }
    if !cli.json {
        println!(
            "{} mapping(s) (UPnP; NAT-PMP and PCP mappings are listed only if the gateway shows them over UPnP)",
            entries.len()
        );
    }
    Ok(())
}
