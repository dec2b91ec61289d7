//! One side of a TCP hole punch (simultaneous open), for the NAT lab.
//!
//! ```sh
//! cargo run --example punch_peer -- --listen 0.0.0.0:41000 --seed 1 --peer-seed 2 \
//!     --peer 203.0.113.20:41000 --at <unix ms> --line "hello from 1"
//! ```
//!
//! Both peers run it at once, each with the other's public address. Identity
//! keys come from small seeds (`--seed N` → the 32-byte seed `N` as u64 LE,
//! zero-padded), so each side knows the other's node id in advance. The
//! Noise role comes from `natkit_traversal::plan::noise_initiator`, which both
//! sides compute identically from the two ids.
//!
//! It listens on `--listen`, waits until the Unix time `--at` (ms) so that
//! both dials cross, then dials the peer from the listen port
//! (`connect_with_role`). A dial that times out or is refused is retried until
//! `--within-ms` (default 5000) after the start time: the first SYN may be
//! dropped by the peer's NAT before the peer's own SYN opened it. Once
//! connected it prints
//!
//! ```text
//! connected role=<initiator|responder> direction=<outbound|inbound> local=<ip:port> remote=<ip:port> observed=<ip:port> attempts=N ms=T
//! got <the peer's line>
//! ```
//!
//! and exits 0. On failure it prints one line `error: ...` on stderr and
//! exits 1.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natkit::identity::{Keypair, NodeId};
use natkit::net::{Direction, Net, NetConfig, NetError, Role};
use natkit_traversal::plan::{Side, noise_initiator};

/// Time limit of one dial attempt: covers the kernel's first SYN retransmit
/// (1 s), after which a fresh dial sends a new SYN at once.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Pause between attempts after an immediate failure (a refusal).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

struct Args {
    listen: SocketAddr,
    seed: u64,
    peer_seed: u64,
    peer: SocketAddr,
    at_ms: Option<u64>,
    within: Duration,
    line: String,
}

fn usage() -> String {
    "usage: punch_peer --listen IP:PORT --seed N --peer-seed M --peer IP:PORT \
     [--at UNIX_MS] [--within-ms MS] [--line TEXT]"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut seed = None;
    let mut peer_seed = None;
    let mut peer = None;
    let mut at_ms = None;
    let mut within = Duration::from_secs(5);
    let mut line = None;
    let mut args = std::env::args().skip(1);
    while let Some(opt) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{opt} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{opt}: {e}");
        match opt.as_str() {
            "--listen" => listen = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--seed" => seed = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--peer-seed" => peer_seed = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--peer" => peer = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--at" => at_ms = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--within-ms" => within = Duration::from_millis(val()?.parse().map_err(|e| bad(&e))?),
            "--line" => line = Some(val()?),
            other => return Err(format!("unknown option {other}; {}", usage())),
        }
    }
    let seed: u64 = seed.ok_or_else(usage)?;
    Ok(Args {
        listen: listen.ok_or_else(usage)?,
        seed,
        peer_seed: peer_seed.ok_or_else(usage)?,
        peer: peer.ok_or_else(usage)?,
        at_ms,
        within,
        line: line.unwrap_or_else(|| format!("hello from {seed}")),
    })
}

/// The identity of seed `n`: `n` as u64 little-endian, zero-padded to 32 bytes.
fn keypair(n: u64) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    Keypair::from_seed(seed)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a failed dial is worth another attempt: nothing answered yet, or
/// the peer's stack refused (its SYN had not left yet).
fn retryable(e: &NetError) -> bool {
    match e {
        NetError::Timeout { what, .. } => *what == "connect",
        NetError::Connect { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::TimedOut
        ),
        _ => false,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let a = parse_args()?;
    let me = keypair(a.seed);
    let peer_id: NodeId = keypair(a.peer_seed).node_id();
    let role = match noise_initiator(&me.node_id(), &peer_id) {
        Some(Side::Local) => Role::Initiator,
        Some(Side::Remote) => Role::Responder,
        None => return Err("--seed and --peer-seed give the same node id".into()),
    };
    let config = NetConfig {
        listen: a.listen,
        connect_timeout: ATTEMPT_TIMEOUT,
        ..NetConfig::default()
    };
    let net = Net::bind(me, config)
        .await
        .map_err(|e| format!("listen: {e}"))?;
    println!("listening {} {}", net.local_addr(), net.node_id());

    if let Some(at) = a.at_ms {
        let now = unix_ms();
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
    }
    let start = Instant::now();
    let deadline = start + a.within;
    let mut attempts = 0u32;
    let con = loop {
        attempts += 1;
        match net.connect_with_role(a.peer, peer_id, role).await {
            Ok(c) => break c,
            Err(e) if retryable(&e) && Instant::now() + RETRY_PAUSE < deadline => {
                if !matches!(e, NetError::Timeout { .. }) {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            Err(e) => {
                return Err(format!(
                    "no connection to {} after {attempts} attempt(s) in {} ms: {e}",
                    a.peer,
                    start.elapsed().as_millis()
                ));
            }
        }
    };
    let ms = start.elapsed().as_millis();
    // A connection accepted on the listener (the peer's SYN arrived after our
    // own dial gave up) was answered as responder.
    let (role_name, dir) = match con.direction() {
        Direction::Outbound => (
            if role == Role::Initiator {
                "initiator"
            } else {
                "responder"
            },
            "outbound",
        ),
        Direction::Inbound => ("responder", "inbound"),
    };
    println!(
        "connected role={role_name} direction={dir} local={} remote={} observed={} attempts={attempts} ms={ms}",
        con.local_addr(),
        con.remote_addr(),
        con.observed_addr()
    );
    con.send(&a.line).await.map_err(|e| format!("send: {e}"))?;
    let got = tokio::time::timeout(Duration::from_secs(5), con.recv())
        .await
        .map_err(|_| "no line from the peer within 5 s".to_string())?
        .ok_or_else(|| "the peer closed before sending a line".to_string())?;
    println!("got {got}");
    // Give our line time to arrive before closing (shutdown flushes too).
    tokio::time::sleep(Duration::from_millis(200)).await;
    net.shutdown().await;
    Ok(())
}
