//! `scripts/bench.sh traversal [RUNS]`: how long `Node::connect(node id)`
//! takes across the NAT lab's NATs, and how often it works, per cell of the
//! traversal matrix (docs/traversal.md), with 20 ms one-way delay on every
//! router's WAN link. Needs root and the lab tools.
//!
//! Per cell: one lab, one bootstrap node (also a relay), one `examples/alice` waiting behind
//! natA, then RUNS times a fresh `examples/bob` (new key, new process) that
//! connects to alice by node id, sends a line and waits for her answer. From
//! bob's own report: the DHT lookup, the connect (plan start to authenticated
//! connection), the rendezvous round trip of a punch, and the time from the
//! connect call to alice's answer. The alice↔bob round trip is measured in
//! the same lab (a TCP connect from each side to the public rendezvous host, summed:
//! the path between them crosses the same two delayed links), and the
//! connect times are also given in multiples of it. The `direct` cell (a dial
//! to a public host) is the baseline the others are compared with.
//!
//! Prints one line per cell and, last, `traversal: key=value ...`.

use std::time::{Duration, Instant};

use natkit::identity::Keypair;
use natkit_lab::{CmdOutput, Host, Lab, LabChild, LabConfig, NatKind};

#[path = "common/mod.rs"]
mod common;
use common::example;

const DELAY_MS: u32 = 20;
const BOOT_PORT: u16 = 4000;
const ALICE_PORT: u16 = 41_000;

fn keypair(n: u64) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    Keypair::from_seed(seed)
}

struct Cell {
    name: &'static str,
    nat_a: NatKind,
    nat_b: NatKind,
    bob: Host,
    path: &'static str,
}

const CELLS: &[Cell] = &[
    Cell {
        name: "direct",
        nat_a: NatKind::Open,
        nat_b: NatKind::Cone,
        bob: Host::Bob,
        path: "direct",
    },
    Cell {
        name: "lan",
        nat_a: NatKind::Cone,
        nat_b: NatKind::Cone,
        bob: Host::Carol,
        path: "lan",
    },
    Cell {
        name: "reverse",
        nat_a: NatKind::Cone,
        nat_b: NatKind::Open,
        bob: Host::Bob,
        path: "reverse",
    },
    Cell {
        name: "punched",
        nat_a: NatKind::Cone,
        nat_b: NatKind::Cone,
        bob: Host::Bob,
        path: "punched",
    },
    Cell {
        name: "punched_cgnat",
        nat_a: NatKind::Cone,
        nat_b: NatKind::Cone,
        bob: Host::Dave,
        path: "punched",
    },
    Cell {
        name: "punched_firewall",
        nat_a: NatKind::Firewall,
        nat_b: NatKind::Cone,
        bob: Host::Bob,
        path: "punched",
    },
    Cell {
        name: "relayed",
        nat_a: NatKind::Symmetric,
        nat_b: NatKind::Symmetric,
        bob: Host::Bob,
        path: "relayed",
    },
    Cell {
        name: "relayed_cone",
        nat_a: NatKind::Cone,
        nat_b: NatKind::Symmetric,
        bob: Host::Bob,
        path: "relayed",
    },
];

fn spawn(lab: &Lab, h: Host, argv: &[&str]) -> LabChild {
    lab.spawn(h, argv)
        .unwrap_or_else(|e| panic!("spawn {argv:?} on {h}: {e}"))
}

/// Median round trip from `h` to the rendezvous host, ms: the time of a TCP
/// connect (SYN to SYN-ACK) to the bootstrap node's listener, 7 times.
fn rtt_ms(lab: &Lab, h: Host) -> f64 {
    let to = lab.ip(Host::Rendezvous).to_string();
    let script = format!(
        "import socket,time\nr=[]\nfor _ in range(7):\n s=socket.socket()\n t=time.monotonic()\n s.connect(('{to}',{BOOT_PORT}))\n r.append((time.monotonic()-t)*1000)\n s.close()\n time.sleep(0.05)\nr.sort()\nprint(r[3])"
    );
    let out = lab
        .run(h, &["/usr/bin/python3", "-c", &script])
        .expect("python3");
    out.stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no rtt measured on {h}: {out:?}"))
}

fn field(out: &CmdOutput, key: &str) -> Option<f64> {
    out.stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

fn path_of(out: &CmdOutput) -> Option<String> {
    out.stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("path="))
        .map(str::to_owned)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p90(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

struct Result {
    name: &'static str,
    ok: usize,
    runs: usize,
    rtt: f64,
    connect: f64,
    connect_p90: f64,
    signal: f64,
    lookup: f64,
    first_line: f64,
}

fn run_cell(cell: &Cell, runs: usize) -> Result {
    let lab = Lab::up(LabConfig::new(cell.nat_a, cell.nat_b).delay_ms(DELAY_MS)).expect("lab up");
    let dir =
        std::env::temp_dir().join(format!("natkit-bench-{}-{}", std::process::id(), cell.name));
    std::fs::create_dir_all(&dir).unwrap();
    let boot_key = dir.join("boot.key");
    let boot_ip = lab.ip(Host::Rendezvous).to_string();
    let boot = format!("{boot_ip}:{BOOT_PORT}");
    let mut b = spawn(
        &lab,
        Host::Rendezvous,
        &[
            env!("CARGO_BIN_EXE_natkit"),
            "--key",
            boot_key.to_str().unwrap(),
            "--port",
            &BOOT_PORT.to_string(),
            "--json",
            "bootstrap-node",
            "--bind",
            &boot_ip,
            "--relay",
        ],
    );
    b.wait_for_stdout("\"ready\"", Duration::from_secs(10))
        .expect("bootstrap ready");
    let alice_bin = example("alice");
    let mut alice = spawn(
        &lab,
        Host::Alice,
        &[
            alice_bin.to_str().unwrap(),
            "--bootstrap",
            &boot,
            "--port",
            &ALICE_PORT.to_string(),
            "--seed",
            "1",
        ],
    );
    alice
        .wait_for_stdout("ready id=", Duration::from_secs(40))
        .expect("alice ready");
    let rtt = rtt_ms(&lab, Host::Alice) + rtt_ms(&lab, cell.bob);
    let alice_id = keypair(1).node_id().to_string();
    let bob_bin = example("bob");
    let (mut connect, mut signal, mut lookup, mut first) = (vec![], vec![], vec![], vec![]);
    let mut ok = 0;
    for i in 0..runs {
        let port = (42_000 + i % 1000).to_string();
        let t = Instant::now();
        let out = spawn(
            &lab,
            cell.bob,
            &[
                bob_bin.to_str().unwrap(),
                "--bootstrap",
                &boot,
                "--port",
                &port,
                "--to",
                &alice_id,
            ],
        )
        .wait_timeout(Duration::from_secs(60))
        .expect("bob ends");
        let good = out.success()
            && path_of(&out).as_deref() == Some(cell.path)
            && out.stdout.contains("reply alice got: hello from bob");
        if !good {
            eprintln!(
                "{} run {i}: failed after {:?}: {}{}",
                cell.name,
                t.elapsed(),
                out.stdout,
                out.stderr
            );
            continue;
        }
        ok += 1;
        connect.extend(field(&out, "connect_ms"));
        lookup.extend(field(&out, "lookup_ms"));
        signal.extend(field(&out, "signal_rtt_ms"));
        first.extend(field(&out, "first_line_ms"));
    }
    drop(alice);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);
    Result {
        name: cell.name,
        ok,
        runs,
        rtt,
        connect: median(&mut connect.clone()),
        connect_p90: p90(&mut connect),
        signal: median(&mut signal),
        lookup: median(&mut lookup),
        first_line: median(&mut first),
    }
}

fn main() {
    let mut runs = 50;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--cell" => only = args.next(),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --runs N [--cell NAME]"),
        }
    }
    if let Err(e) = natkit_lab::prerequisites() {
        eprintln!("traversal bench needs the NAT lab: {e}");
        std::process::exit(2);
    }
    println!(
        "traversal across the NAT lab, {DELAY_MS} ms one-way delay per WAN link, {runs} runs per cell (a new bob each run)"
    );
    println!(
        "{:<17} {:>7} {:>7} {:>9} {:>9} {:>8} {:>9} {:>9} {:>11}",
        "cell", "ok", "rtt_ms", "lookup", "connect", "p90", "xRTT", "signal", "first_line"
    );
    let mut results = Vec::new();
    for cell in CELLS {
        if only.as_deref().is_some_and(|o| o != cell.name) {
            continue;
        }
        let r = run_cell(cell, runs);
        println!(
            "{:<17} {:>3}/{:<3} {:>7.1} {:>9.1} {:>9.1} {:>8.1} {:>9.2} {:>9} {:>11.1}",
            r.name,
            r.ok,
            r.runs,
            r.rtt,
            r.lookup,
            r.connect,
            r.connect_p90,
            r.connect / r.rtt,
            if r.signal.is_nan() {
                "-".to_string()
            } else {
                format!("{:.1}", r.signal)
            },
            r.first_line
        );
        results.push(r);
    }
    let base = results
        .iter()
        .find(|r| r.name == "direct")
        .map(|r| r.connect);
    let mut summary = vec![format!("runs={runs}"), format!("delay_ms={DELAY_MS}")];
    for r in &results {
        summary.push(format!("{}_ok={}/{}", r.name, r.ok, r.runs));
        summary.push(format!("{}_connect_ms={:.1}", r.name, r.connect));
        summary.push(format!("{}_rtts={:.2}", r.name, r.connect / r.rtt));
        if let Some(b) = base {
            summary.push(format!("{}_vs_direct={:.2}", r.name, r.connect / b));
        }
    }
    println!("traversal: {}", summary.join(" "));
}
