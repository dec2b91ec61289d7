//! `scripts/bench.sh dht`: a 1,000-node natkit DHT on loopback in one process against a
//! 1,000-node `mainline` (8.x) network in the same run, then the in-memory simulation of the
//! deterministic core at 10,000 and 100,000 nodes against the ideal-table figures in the notes.
//!
//! Each loopback network runs in its own child process (this binary re-run with `natkit` or
//! `mainline`), so that its RSS, CPU time and thread count are its own. As root, each child
//! also gets a private network namespace (`unshare -n`, loopback only): nothing else's traffic
//! lands on its ports, and the kernel's UDP counters (`/proc/net/snmp`) count exactly its
//! datagrams, the same way for both implementations (`mainline` has no message counters).
//!
//! Prints a table and, last, a summary `dht: key=value ...`.
//! `cargo bench -p natkit-dht --bench dht [-- --quick] [-- --nodes N]`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use natkit_dht::dht::Dht;
use natkit_dht::lookup::{K, LookupKind};
use natkit_dht::sim::{SimNetwork, SplitMix};
use natkit_dht::testnet::Testnet;
use natkit_dht::{Id, Value};

/// Figures a child prints on its last line, `result: key=value ...`.
type Figures = BTreeMap<String, f64>;

struct Config {
    nodes: usize,
    lookups: usize,
    items: usize,
    getters: usize,
    idle: Duration,
    sim_sizes: Vec<usize>,
    sim_lookups: usize,
}

impl Config {
    fn from_args(args: &[String]) -> Self {
        let quick = args.iter().any(|a| a == "--quick");
        let nodes = args
            .iter()
            .position(|a| a == "--nodes")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(if quick { 200 } else { 1000 });
        Config {
            nodes,
            lookups: if quick { 20 } else { 100 },
            items: if quick { 5 } else { 20 },
            getters: 5,
            idle: Duration::from_secs(if quick { 2 } else { 10 }),
            sim_sizes: if quick {
                vec![1_000, 10_000]
            } else {
                vec![1_000, 10_000, 100_000]
            },
            sim_lookups: if quick { 50 } else { 200 },
        }
    }

    fn child_args(&self) -> Vec<String> {
        vec![
            "--nodes".into(),
            self.nodes.to_string(),
            "--lookups".into(),
            self.lookups.to_string(),
            "--items".into(),
            self.items.to_string(),
            "--idle".into(),
            self.idle.as_secs().to_string(),
        ]
    }

    fn apply_child_args(&mut self, args: &[String]) {
        let get = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(v) = get("--lookups") {
            self.lookups = v as usize;
        }
        if let Some(v) = get("--items") {
            self.items = v as usize;
        }
        if let Some(v) = get("--idle") {
            self.idle = Duration::from_secs(v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process figures from /proc.

/// Resident set size in KiB.
fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

fn threads() -> u64 {
    status_field("Threads:")
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of the whole process (all threads), from `/proc/self/stat`
/// (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The kernel's UDP counters of this network namespace: (OutDatagrams, RcvbufErrors).
fn udp_counters() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/self/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return (0, 0);
    };
    let map: BTreeMap<&str, u64> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
        .collect();
    (
        map.get("OutDatagrams").copied().unwrap_or(0),
        map.get("RcvbufErrors").copied().unwrap_or(0),
    )
}

/// Datagrams sent since `before`, once the network is quiet again (no datagram for 150 ms,
/// at most 3 s): late answers to a finished lookup are counted with it.
async fn datagrams_since(before: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = udp_counters().0;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = udp_counters().0;
        if now == last || Instant::now() > deadline {
            return now.saturating_sub(before);
        }
        last = now;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Latencies (ms), messages and successes of one kind of operation.
#[derive(Default)]
struct OpFigures {
    ms: Vec<f64>,
    datagrams: Vec<f64>,
    ok: usize,
}

impl OpFigures {
    fn record(&mut self, into: &mut Figures, name: &str) {
        self.ms.sort_by(f64::total_cmp);
        into.insert(format!("{name}_p50_ms"), percentile(&self.ms, 0.5));
        into.insert(format!("{name}_p99_ms"), percentile(&self.ms, 0.99));
        into.insert(format!("{name}_msgs"), mean(&self.datagrams));
        into.insert(format!("{name}_ok"), self.ok as f64);
        into.insert(format!("{name}_n"), self.ms.len() as f64);
    }
}

/// Figures common to both networks, taken around `build` (which returns once every node has
/// bootstrapped) and an idle period.
struct Phases {
    rss0: u64,
    threads0: u64,
    out: Figures,
}

impl Phases {
    fn start() -> Self {
        Phases {
            rss0: rss_kib(),
            threads0: threads(),
            out: Figures::new(),
        }
    }

    fn built(&mut self, nodes: usize, took: Duration, cpu: Duration, udp0: (u64, u64)) {
        let (sent, rcvbuf_errors) = udp_counters();
        let (sent, rcvbuf_errors) = (
            sent.saturating_sub(udp0.0),
            rcvbuf_errors.saturating_sub(udp0.1),
        );
        let o = &mut self.out;
        o.insert("boot_dgrams_per_node".into(), sent as f64 / nodes as f64);
        o.insert("boot_s".into(), took.as_secs_f64());
        o.insert("boot_cpu_s".into(), cpu.as_secs_f64());
        o.insert(
            "rss_kib_per_node".into(),
            rss_kib().saturating_sub(self.rss0) as f64 / nodes as f64,
        );
        o.insert(
            "threads".into(),
            threads().saturating_sub(self.threads0) as f64,
        );
        o.insert("boot_rcvbuf_errors".into(), rcvbuf_errors as f64);
    }

    async fn idle(&mut self, idle: Duration) {
        let (c0, (d0, _)) = (cpu_time(), udp_counters());
        tokio::time::sleep(idle).await;
        let cpu = cpu_time().saturating_sub(c0);
        let d = udp_counters().0.saturating_sub(d0);
        self.out.insert(
            "idle_cpu_pct".into(),
            100.0 * cpu.as_secs_f64() / idle.as_secs_f64(),
        );
        self.out
            .insert("idle_dgrams_per_s".into(), d as f64 / idle.as_secs_f64());
    }

    /// `cpu0` and `t0`: CPU time and instant when the operations started. The network's idle
    /// CPU over that time (its timers, mainline's polling threads) is taken off, so the figure
    /// is the work the operations caused.
    fn finish(mut self, nodes: usize, cpu0: Duration, t0: Instant, ops: usize) {
        let idle = self.out.get("idle_cpu_pct").copied().unwrap_or(0.0) / 100.0;
        let cpu = cpu_time().saturating_sub(cpu0).as_secs_f64();
        let busy = (cpu - idle * t0.elapsed().as_secs_f64()).max(0.0);
        self.out
            .insert("op_cpu_ms".into(), busy * 1000.0 / ops.max(1) as f64);
        self.out.insert(
            "peak_rss_kib_per_node".into(),
            rss_kib() as f64 / nodes as f64,
        );
        let line: Vec<String> = self.out.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("result: {}", line.join(" "));
    }
}

/// The K ids closest to `target` among `ids` except `exclude`.
fn true_closest(ids: &[Id], target: &Id, exclude: &Id) -> Vec<Id> {
    let mut v: Vec<Id> = ids.iter().copied().filter(|i| i != exclude).collect();
    v.sort_by_key(|i| target.distance(i));
    v.truncate(K);
    v
}

// ---------------------------------------------------------------------------------------------
// natkit's network (child process).

async fn natkit_child(cfg: &Config) {
    let mut phases = Phases::start();
    let (c0, t0, udp0) = (cpu_time(), Instant::now(), udp_counters());
    let net = Testnet::new(cfg.nodes).await.expect("natkit testnet");
    phases.built(cfg.nodes, t0.elapsed(), cpu_time().saturating_sub(c0), udp0);
    let ids: Vec<Id> = net.nodes.iter().map(Dht::id).collect();
    let (mut tables, mut lookups) = (Vec::new(), Vec::new());
    for n in &net.nodes {
        let s = n.stats().await.expect("stats");
        tables.push(s.routing_table_size as f64);
        lookups.push(s.lookups as f64);
    }
    phases.out.insert("table_mean".into(), mean(&tables));
    // Lookups each node ran to join (its bootstrap and bucket refreshes).
    phases
        .out
        .insert("boot_lookups_per_node".into(), mean(&lookups));
    phases.idle(cfg.idle).await;

    let (cpu_ops, t_ops) = (cpu_time(), Instant::now());
    let mut rng = SplitMix(42);
    let (mut find, mut get, mut put) = (
        OpFigures::default(),
        OpFigures::default(),
        OpFigures::default(),
    );
    let mut k_sets = 0usize;
    let (mut rounds, mut stats_msgs) = (Vec::new(), Vec::new());
    for i in 0..cfg.lookups {
        let from = &net.nodes[(i * 7919) % cfg.nodes];
        let target = rng.id();
        let truth = true_closest(&ids, &target, &from.id());
        let s0 = from.stats().await.expect("stats");
        let d0 = udp_counters().0;
        let t = Instant::now();
        let found = from.find_node(target).await.expect("find_node");
        find.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        find.datagrams.push(datagrams_since(d0).await as f64);
        let s1 = from.stats().await.expect("stats");
        let sent: u64 = s1.queries_out.values().sum::<u64>() - s0.queries_out.values().sum::<u64>();
        stats_msgs.push((sent + s1.responses_in - s0.responses_in) as f64);
        if s1.lookups > s0.lookups {
            rounds.push(
                (s1.lookup_rounds - s0.lookup_rounds) as f64 / (s1.lookups - s0.lookups) as f64,
            );
        }
        let found: Vec<Id> = found.iter().map(|n| n.id).collect();
        if found.first() == truth.first() {
            find.ok += 1;
        }
        if found == truth {
            k_sets += 1;
        }
    }
    phases.out.insert("find_rounds".into(), mean(&rounds));
    phases
        .out
        .insert("find_msgs_own_counters".into(), mean(&stats_msgs));
    phases.out.insert("find_k_sets".into(), k_sets as f64);
    find.record(&mut phases.out, "find");

    for i in 0..cfg.items {
        let v = Value::Bytes(format!("benchmark item {i}").into_bytes());
        let from = &net.nodes[(i * 31 + 5) % cfg.nodes];
        let d0 = udp_counters().0;
        let t = Instant::now();
        let target = from.put_immutable(v.clone()).await;
        put.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        put.datagrams.push(datagrams_since(d0).await as f64);
        let Ok(target) = target else { continue };
        put.ok += 1;
        for j in 0..cfg.getters {
            let getter =
                &net.nodes[(i * 31 + 5 + (j + 1) * cfg.nodes / (cfg.getters + 1)) % cfg.nodes];
            let d0 = udp_counters().0;
            let t = Instant::now();
            let got = getter.get_immutable(target).await.expect("get");
            get.ms.push(t.elapsed().as_secs_f64() * 1000.0);
            get.datagrams.push(datagrams_since(d0).await as f64);
            if got.as_ref() == Some(&v) {
                get.ok += 1;
            }
        }
    }
    get.record(&mut phases.out, "get");
    put.record(&mut phases.out, "put");
    let ops = cfg.lookups + cfg.items * (1 + cfg.getters);
    phases.finish(cfg.nodes, cpu_ops, t_ops, ops);
    net.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// mainline's network (child process).

fn mainline_node(bootstrap: Option<SocketAddr>) -> mainline::async_dht::AsyncDht {
    // Loopback only: LOCALHOST, port 0, server mode, and no_bootstrap or a loopback list.
    let mut b = mainline::Dht::builder();
    b.bind_address(Ipv4Addr::LOCALHOST).port(0).server_mode();
    match bootstrap {
        Some(addr) => b.bootstrap(&[addr.to_string()]),
        None => b.no_bootstrap(),
    };
    b.build().expect("mainline node").as_async()
}

fn ours(id: &mainline::Id) -> Id {
    Id(*id.as_bytes())
}

fn theirs(id: Id) -> mainline::Id {
    mainline::Id::from_bytes(id.0).expect("20 bytes")
}

async fn mainline_child(cfg: &Config) {
    let mut phases = Phases::start();
    let (c0, t0, udp0) = (cpu_time(), Instant::now(), udp_counters());
    let first = mainline_node(None);
    let first_addr = SocketAddr::V4(first.info().await.local_addr());
    let mut nodes = vec![first];
    for _ in 1..cfg.nodes {
        nodes.push(mainline_node(Some(first_addr)));
    }
    // Each node starts its bootstrap (find_node on its own id) at once; `bootstrapped` waits
    // for a find_node on its own id to end.
    let done = futures::future::join_all(nodes.iter().map(|n| n.bootstrapped())).await;
    phases.built(cfg.nodes, t0.elapsed(), cpu_time().saturating_sub(c0), udp0);
    phases.out.insert(
        "boot_failed".into(),
        done.iter().filter(|ok| !**ok).count() as f64,
    );
    let (mut ids, mut tables) = (Vec::new(), Vec::new());
    for n in &nodes {
        ids.push(ours(n.info().await.id()));
        // Its routing table as a bootstrap list: one entry per node.
        tables.push(n.to_bootstrap().await.len() as f64);
    }
    phases.out.insert("table_mean".into(), mean(&tables));
    phases.idle(cfg.idle).await;

    let (cpu_ops, t_ops) = (cpu_time(), Instant::now());
    let mut rng = SplitMix(42);
    let (mut find, mut get, mut put) = (
        OpFigures::default(),
        OpFigures::default(),
        OpFigures::default(),
    );
    let mut k_sets = 0usize;
    for i in 0..cfg.lookups {
        let idx = (i * 7919) % cfg.nodes;
        let from = &nodes[idx];
        let target = rng.id();
        let truth = true_closest(&ids, &target, &ids[idx]);
        let d0 = udp_counters().0;
        let t = Instant::now();
        let found = from.find_node(theirs(target)).await;
        find.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        find.datagrams.push(datagrams_since(d0).await as f64);
        // It returns up to 20 nodes; the K closest of them are comparable with natkit's.
        let mut found: Vec<Id> = found.iter().map(|n| ours(n.id())).collect();
        found.sort_by_key(|id| target.distance(id));
        found.truncate(K);
        if found.first() == truth.first() {
            find.ok += 1;
        }
        if found == truth {
            k_sets += 1;
        }
    }
    phases.out.insert("find_k_sets".into(), k_sets as f64);
    find.record(&mut phases.out, "find");

    for i in 0..cfg.items {
        // The same bencoded values as natkit's.
        let v = format!("benchmark item {i}").into_bytes();
        let from = &nodes[(i * 31 + 5) % cfg.nodes];
        let d0 = udp_counters().0;
        let t = Instant::now();
        let target = from.put_immutable(&v).await;
        put.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        put.datagrams.push(datagrams_since(d0).await as f64);
        let Ok(target) = target else { continue };
        put.ok += 1;
        for j in 0..cfg.getters {
            let getter = &nodes[(i * 31 + 5 + (j + 1) * cfg.nodes / (cfg.getters + 1)) % cfg.nodes];
            let d0 = udp_counters().0;
            let t = Instant::now();
            let got = getter.get_immutable(target).await;
            get.ms.push(t.elapsed().as_secs_f64() * 1000.0);
            get.datagrams.push(datagrams_since(d0).await as f64);
            if got.as_deref() == Some(v.as_slice()) {
                get.ok += 1;
            }
        }
    }
    get.record(&mut phases.out, "get");
    put.record(&mut phases.out, "put");
    let ops = cfg.lookups + cfg.items * (1 + cfg.getters);
    phases.finish(cfg.nodes, cpu_ops, t_ops, ops);
}

// ---------------------------------------------------------------------------------------------
// The simulation.

/// The notes' ideal simulation (section 6, k = 8): rounds to closest (mean, max), rounds to
/// terminate, queries.
fn ideal(n: usize) -> Option<(f64, f64, f64, f64)> {
    match n {
        1_000 => Some((2.2, 3.0, 4.0, 11.0)),
        10_000 => Some((3.0, 4.0, 4.6, 13.0)),
        100_000 => Some((3.6, 5.0, 5.3, 15.0)),
        _ => None,
    }
}

struct SimFigures {
    n: usize,
    build_s: f64,
    to_closest: f64,
    to_closest_max: u32,
    to_terminate: f64,
    queries: f64,
    found: usize,
    lookups: usize,
}

fn sim(n: usize, lookups: usize) -> SimFigures {
    let t = Instant::now();
    let mut net = SimNetwork::new(n, 0x5eed + n as u64, 0);
    let build_s = t.elapsed().as_secs_f64();
    let mut rng = SplitMix(n as u64);
    let (mut closest, mut terminate, mut queries) = (Vec::new(), Vec::new(), Vec::new());
    let (mut max, mut found) = (0, 0);
    for _ in 0..lookups {
        let origin = (rng.next_u64() % n as u64) as usize;
        let target = rng.id();
        let mut l = net
            .lookup(origin, target, LookupKind::FindNode)
            .expect("node");
        let run = net.run_traced(origin, &mut l);
        let truth = net.true_closest(&target, origin).expect("nodes");
        if let Some(r) = run.rounds_to(&truth.id) {
            closest.push(f64::from(r));
            max = max.max(r);
        }
        if l.closest_answered().first() == Some(&truth) {
            found += 1;
        }
        terminate.push(f64::from(run.rounds_to_terminate()));
        queries.push(f64::from(l.stats().queries));
    }
    SimFigures {
        n,
        build_s,
        to_closest: mean(&closest),
        to_closest_max: max,
        to_terminate: mean(&terminate),
        queries: mean(&queries),
        found,
        lookups,
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the children and the simulation, prints the table.

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `unshare -n` works here (root, and the tool is installed).
fn can_unshare() -> bool {
    is_root()
        && Command::new("unshare")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

fn run_child(which: &str, cfg: &Config, private_netns: bool) -> Figures {
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = if private_netns {
        let mut c = Command::new("unshare");
        c.args(["-n", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"]);
        c.arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.arg(which).args(cfg.child_args());
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "{which} child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("result: "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut cfg = Config::from_args(&args);
    let rt = || {
        // One thread: natkit's 1,000 nodes share one core. mainline's nodes run on their own
        // threads whatever this runtime is.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    match args.first().map(String::as_str) {
        Some("natkit") => {
            cfg.apply_child_args(&args);
            return rt().block_on(natkit_child(&cfg));
        }
        Some("mainline") => {
            cfg.apply_child_args(&args);
            return rt().block_on(mainline_child(&cfg));
        }
        _ => {}
    }

    let netns = can_unshare();
    println!(
        "{} nodes per network, each network in its own process{}; {} find_node lookups, {} items put, each got from {} other nodes",
        cfg.nodes,
        if netns {
            " and private network namespace"
        } else {
            " (not root: the UDP counters include the rest of the machine)"
        },
        cfg.lookups,
        cfg.items,
        cfg.getters
    );
    let nk = run_child("natkit", &cfg, netns);
    let ml = run_child("mainline", &cfg, netns);
    let g = |f: &Figures, k: &str| f.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "\n{:<34} {:>12} {:>12} {:>8}",
        "loopback network", "natkit", "mainline", "ratio"
    );
    let rows: [(&str, &str, usize); 24] = [
        ("bootstrap all nodes, s", "boot_s", 2),
        ("datagrams sent per node at boot", "boot_dgrams_per_node", 1),
        ("bootstrap CPU time, s", "boot_cpu_s", 2),
        ("UDP receive-buffer drops at boot", "boot_rcvbuf_errors", 0),
        ("RSS per node, KiB", "rss_kib_per_node", 1),
        ("threads", "threads", 0),
        ("routing table size, mean", "table_mean", 1),
        (
            "lookups per node at boot (natkit)",
            "boot_lookups_per_node",
            1,
        ),
        ("idle CPU, % of a core", "idle_cpu_pct", 1),
        ("idle datagrams/s (whole network)", "idle_dgrams_per_s", 1),
        ("find_node p50, ms", "find_p50_ms", 2),
        ("find_node p99, ms", "find_p99_ms", 2),
        ("find_node datagrams per lookup", "find_msgs", 1),
        ("find_node found the true closest", "find_ok", 0),
        ("find_node found the true K closest", "find_k_sets", 0),
        ("find_node rounds (hops)", "find_rounds", 2),
        ("get p50, ms", "get_p50_ms", 2),
        ("get p99, ms", "get_p99_ms", 2),
        ("get datagrams per get", "get_msgs", 1),
        ("get found the item", "get_ok", 0),
        ("put p50, ms", "put_p50_ms", 2),
        ("put p99, ms", "put_p99_ms", 2),
        ("put datagrams per put", "put_msgs", 1),
        ("CPU per operation above idle, ms", "op_cpu_ms", 2),
    ];
    for (label, key, prec) in rows {
        let (a, b) = (g(&nk, key), g(&ml, key));
        println!("{label:<34} {a:>12.prec$} {b:>12.prec$} {:>8.2}", a / b);
    }
    println!(
        "(of {} lookups and {} gets; natkit's own counters say {:.1} messages per find_node)",
        g(&nk, "find_n"),
        g(&nk, "get_n"),
        g(&nk, "find_msgs_own_counters")
    );

    println!(
        "\n{:<9} {:>8} {:>22} {:>22} {:>14} {:>8}",
        "sim n", "build s", "rounds to closest", "rounds to terminate", "queries", "found"
    );
    println!(
        "{:<9} {:>8} {:>22} {:>22} {:>14} {:>8}",
        "", "", "mean/max (ideal)", "mean (ideal)", "mean (ideal)", ""
    );
    let mut sims = Vec::new();
    for &n in &cfg.sim_sizes {
        let s = sim(n, cfg.sim_lookups);
        let (ic, im, it, iq) = ideal(n).unwrap_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN));
        println!(
            "{:<9} {:>8.1} {:>22} {:>22} {:>14} {:>8}",
            s.n,
            s.build_s,
            format!("{:.2}/{} ({ic}/{im})", s.to_closest, s.to_closest_max),
            format!("{:.2} ({it})", s.to_terminate),
            format!("{:.1} ({iq})", s.queries),
            format!("{}/{}", s.found, s.lookups),
        );
        sims.push(s);
    }

    let mut summary = vec![format!("nodes={}", cfg.nodes)];
    for (key, short) in [
        ("boot_s", "boot_s"),
        ("boot_cpu_s", "boot_cpu_s"),
        ("boot_dgrams_per_node", "boot_dgrams"),
        ("rss_kib_per_node", "rss_kib"),
        ("idle_cpu_pct", "idle_cpu_pct"),
        ("find_p50_ms", "find_p50_ms"),
        ("find_p99_ms", "find_p99_ms"),
        ("find_msgs", "find_msgs"),
        ("get_p50_ms", "get_p50_ms"),
        ("get_p99_ms", "get_p99_ms"),
        ("get_msgs", "get_msgs"),
        ("put_p50_ms", "put_p50_ms"),
        ("op_cpu_ms", "op_cpu_ms"),
    ] {
        let (a, b) = (g(&nk, key), g(&ml, key));
        summary.push(format!(
            "natkit_{short}={a:.2} mainline_{short}={b:.2} {short}_ratio={:.2}",
            a / b
        ));
    }
    summary.push(format!(
        "natkit_find_ok={}/{} mainline_find_ok={}/{} natkit_get_ok={}/{} mainline_get_ok={}/{} natkit_rounds={:.2}",
        g(&nk, "find_ok"),
        g(&nk, "find_n"),
        g(&ml, "find_ok"),
        g(&ml, "find_n"),
        g(&nk, "get_ok"),
        g(&nk, "get_n"),
        g(&ml, "get_ok"),
        g(&ml, "get_n"),
        g(&nk, "find_rounds"),
    ));
    for s in &sims {
        summary.push(format!(
            "sim{}_closest={:.2} sim{}_terminate={:.2} sim{}_queries={:.1}",
            s.n, s.to_closest, s.n, s.to_terminate, s.n, s.queries
        ));
    }
    println!("dht: {}", summary.join(" "));
}
