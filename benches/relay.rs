//! `scripts/bench.sh relay [MIB]`: what a natkit relay costs, in the NAT lab
//! (20 ms one-way delay on each router's WAN link; alice and bob are public
//! hosts behind natA and natB, the relay is on the rendezvous host, so the
//! relayed path crosses the same two delayed links as the direct one).
//! Needs root and the lab tools.
//!
//! One process, one thread per lab host (each thread joins its host's
//! network namespace with `setns`, and runs its own tokio runtime): a
//! `RelayServer` (limits opened up, so that the figures are the relay's and
//! not its rate limit), alice (reserved on the relay, echoes pings, counts
//! bulk lines), and two bobs, one direct and one relayed (a node keeps one
//! connection per peer, so a direct and a relayed connection to alice need
//! two identities). In the same run, alternating direct and relayed:
//!
//! - **latency**: 200 sequential ping/pong lines on each, median round trip;
//!   the relay's added latency is the difference;
//! - **throughput**: MIB MiB (default 64) of 1 KiB lines, and a quarter of
//!   that in 64 B lines, each way timed from the first line sent to alice's
//!   report that the last arrived;
//! - **relay CPU**: the relay thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//!   over the relayed runs, per GB of ciphertext it forwarded (its own byte
//!   counter), and GB forwarded per CPU-second.
//!
//! - **upgrade**: the time from "a port mapping appeared" to "upgraded to
//!   direct", UPGRADES (default 3) times: alice (`examples/alice`, release)
//!   behind a cone NAT whose miniupnpd is stopped, bob (`examples/bob
//!   --count`) behind a symmetric NAT, relayed through the bootstrap node;
//!   miniupnpd is started (timed from when it answers NAT-PMP) and bob reports
//!   `switched path=direct`.
//!
//! Prints one line per measure and, last, `relay: key=value ...`.

use std::os::fd::AsRawFd;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use natkit::identity::{Keypair, NodeId};
use natkit::net::{Net, NetConfig, NetEvent, Role};
use natkit::relay::{Notice, RelayClient, RelayLimits, RelayServer};
use natkit_lab::{Host, Lab, LabConfig, NatKind, Upnp};

#[path = "common/mod.rs"]
mod common;
use common::example;

const DELAY_MS: u32 = 20;
const RELAY_PORT: u16 = 4001;
const ALICE_PORT: u16 = 41_000;
const PINGS: usize = 200;

/// Joins the network namespace `netns` (this thread only).
fn enter(netns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{netns}"))
        .unwrap_or_else(|e| panic!("open netns {netns}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {netns}: {}", std::io::Error::last_os_error());
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn config(ip: std::net::Ipv4Addr, port: u16) -> NetConfig {
    NetConfig {
        listen: std::net::SocketAddr::new(ip.into(), port),
        ..NetConfig::default()
    }
}

enum RelayCmd {
    /// Report (cpu, bytes) so far.
    Sample(std_mpsc::Sender<(Duration, u64)>),
    Stop,
}

fn main() {
    let mib: u64 = std::env::args()
        .skip_while(|a| a != "--mib")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    if let Err(e) = natkit_lab::prerequisites() {
        eprintln!("relay bench needs the NAT lab: {e}");
        std::process::exit(2);
    }
    println!("== lab with {DELAY_MS} ms one-way delay on each WAN link (latency, WAN throughput)");
    let wan = measure(DELAY_MS, mib);
    println!("== lab without delay (CPU-bound throughput, relay CPU)");
    let cpu = measure(0, mib);
    let upgrades: usize = std::env::args()
        .skip_while(|a| a != "--upgrades")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!("== upgrade from relayed to direct when a mapping appears ({upgrades} runs)");
    let mut ups: Vec<Duration> = (0..upgrades).map(|i| upgrade_once(i + 1)).collect();
    ups.sort();
    let r = |f: &Figures, size: usize, name: &'static str| f.rates[&(size, name)];
    let gb = cpu.relay_bytes as f64 / 1e9;
    let cpu_s = cpu.relay_cpu.as_secs_f64();
    println!(
        "relay: rtt_direct_ms={:.2} rtt_relayed_ms={:.2} added_ms={:.2} wan_1k_direct_mbs={:.1} wan_1k_relayed_mbs={:.1} direct_1k_mbs={:.1} relayed_1k_mbs={:.1} ratio_1k={:.2} direct_64b_mbs={:.1} relayed_64b_mbs={:.1} ratio_64b={:.2} relay_ms_per_gb={:.0} relay_gb_per_core_s={:.2} upgrade_median_s={:.1} upgrade_max_s={:.1}",
        wan.rtt.0.as_secs_f64() * 1e3,
        wan.rtt.1.as_secs_f64() * 1e3,
        (wan.rtt.1.as_secs_f64() - wan.rtt.0.as_secs_f64()) * 1e3,
        r(&wan, 1024, "direct"),
        r(&wan, 1024, "relayed"),
        r(&cpu, 1024, "direct"),
        r(&cpu, 1024, "relayed"),
        r(&cpu, 1024, "relayed") / r(&cpu, 1024, "direct"),
        r(&cpu, 64, "direct"),
        r(&cpu, 64, "relayed"),
        r(&cpu, 64, "relayed") / r(&cpu, 64, "direct"),
        cpu_s * 1e3 / gb,
        gb / cpu_s,
        ups.get(ups.len() / 2)
            .map_or(f64::NAN, Duration::as_secs_f64),
        ups.last().map_or(f64::NAN, Duration::as_secs_f64),
    );
}

/// Waits until `child` printed `needle`; panics with its output if not within `secs`.
fn wait_out(child: &mut natkit_lab::LabChild, needle: &str, secs: u64) {
    if let Err(e) = child.wait_for_stdout(needle, Duration::from_secs(secs)) {
        panic!(
            "{e}\n--- stdout\n{}--- stderr\n{}",
            child.stdout(),
            child.stderr()
        );
    }
}

/// One upgrade run; returns the time from miniupnpd answering to bob's switch.
fn upgrade_once(run: usize) -> Duration {
    let lab = Lab::up(
        LabConfig::new(NatKind::Cone, NatKind::Symmetric)
            .upnp(Upnp::NatA)
            .delay_ms(DELAY_MS),
    )
    .expect("lab up");
    lab.stop_miniupnpd(Host::NatA).expect("stop miniupnpd");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("boot.key");
    let boot_ip = lab.ip(Host::Rendezvous).to_string();
    let natkit = example("../natkit");
    let mut boot = lab
        .spawn(
            Host::Rendezvous,
            &[
                natkit.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "--port",
                "4000",
                "bootstrap-node",
                "--bind",
                &boot_ip,
                "--relay",
            ],
        )
        .unwrap();
    wait_out(&mut boot, "ready", 10);
    let boot_addr = format!("{boot_ip}:4000");
    let alice_bin = example("alice");
    let mut alice = lab
        .spawn(
            Host::Alice,
            &[
                alice_bin.to_str().unwrap(),
                "--bootstrap",
                &boot_addr,
                "--port",
                "41000",
                "--seed",
                "1",
                "--wait-relays",
                "1",
            ],
        )
        .unwrap();
    wait_out(&mut alice, "ready id=", 40);
    let mut seed = [0u8; 32];
    seed[0] = 1;
    let alice_id = Keypair::from_seed(seed).node_id().to_string();
    let bob_bin = example("bob");
    let mut bob = lab
        .spawn(
            Host::Bob,
            &[
                bob_bin.to_str().unwrap(),
                "--bootstrap",
                &boot_addr,
                "--to",
                &alice_id,
                "--count",
                "600",
            ],
        )
        .unwrap();
    wait_out(&mut bob, "connected path=relayed", 40);
    lab.start_miniupnpd(Host::NatA).expect("start miniupnpd");
    let t = Instant::now();
    wait_out(&mut bob, "switched path=direct", 60);
    let took = t.elapsed();
    println!(
        "upgrade run {run}: direct {:.1} s after the mapping service answered",
        took.as_secs_f64()
    );
    drop((bob, alice, boot));
    took
}

/// What one lab run measured.
struct Figures {
    /// Median round trip, direct and relayed.
    rtt: (Duration, Duration),
    /// MB/s by (line size, "direct" | "relayed").
    rates: std::collections::HashMap<(usize, &'static str), f64>,
    /// The relay thread's CPU time over the relayed throughput runs.
    relay_cpu: Duration,
    /// Bytes it forwarded meanwhile.
    relay_bytes: u64,
}

/// One lab (`delay_ms` on each WAN link), every measure.
fn measure(delay_ms: u32, mib: u64) -> Figures {
    let lab =
        Lab::up(LabConfig::new(NatKind::Open, NatKind::Open).delay_ms(delay_ms)).expect("lab up");
    let relay_ip = lab.ip(Host::Rendezvous);
    let alice_ip = lab.ip(Host::Alice);
    let bob_ip = lab.ip(Host::Bob);
    let relay_addr = std::net::SocketAddr::new(relay_ip.into(), RELAY_PORT);

    // The relay.
    let (relay_tx, relay_rx) = std_mpsc::channel::<RelayCmd>();
    let (relay_id_tx, relay_id_rx) = std_mpsc::channel::<NodeId>();
    let relay_ns = lab.host(Host::Rendezvous).netns.clone();
    let relay_thread = std::thread::spawn(move || {
        enter(&relay_ns);
        runtime().block_on(async move {
            let limits = RelayLimits {
                circuit_bytes_per_sec: u64::MAX / 4,
                circuit_data_bytes: u64::MAX / 4,
                ..RelayLimits::default()
            };
            let net = Net::bind(Keypair::from_seed([90; 32]), config(relay_ip, RELAY_PORT))
                .await
                .unwrap();
            let relay = RelayServer::start(net, limits).await.unwrap();
            relay_id_tx.send(relay.node_id()).unwrap();
            // Commands come from a std channel: poll it without blocking the runtime.
            loop {
                match relay_rx.try_recv() {
                    Ok(RelayCmd::Sample(tx)) => {
                        let _ = tx.send((thread_cpu(), relay.stats().bytes));
                    }
                    Ok(RelayCmd::Stop) | Err(std_mpsc::TryRecvError::Disconnected) => break,
                    Err(std_mpsc::TryRecvError::Empty) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                }
            }
            relay.shutdown().await;
        });
    });
    let relay_id = relay_id_rx.recv().unwrap();

    // Alice: reserved on the relay; echoes `ping` lines; answers `done <n>` after n bulk lines.
    let alice_key = Keypair::from_seed([91; 32]);
    let alice_id = alice_key.node_id();
    let alice_ns = lab.host(Host::Alice).netns.clone();
    let (ready_tx, ready_rx) = std_mpsc::channel::<()>();
    let (alice_stop_tx, alice_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let alice_thread = std::thread::spawn(move || {
        enter(&alice_ns);
        runtime().block_on(async move {
            let net = Net::bind(alice_key.clone(), config(alice_ip, ALICE_PORT))
                .await
                .unwrap();
            let relays = RelayClient::bind(alice_key, alice_ip.into()).await.unwrap();
            let (session, mut notices) = relays.open(relay_addr).await.unwrap();
            session.reserve().await.unwrap();
            ready_tx.send(()).unwrap();
            let accept_net = net.clone();
            let accepting = tokio::spawn(async move {
                while let Some(n) = notices.recv().await {
                    if let Notice::Incoming {
                        from,
                        token,
                        limits,
                        ..
                    } = n
                    {
                        let stream = session.join(&token, limits).await.unwrap();
                        accept_net
                            .connect_over(stream, Some(from), Role::Responder, session.relay_id())
                            .await
                            .unwrap();
                    }
                }
            });
            let mut counts: std::collections::HashMap<NodeId, u64> = Default::default();
            let mut stop = alice_stop_rx;
            loop {
                let ev = tokio::select! {
                    _ = &mut stop => break,
                    ev = net.next_event() => match ev { Some(ev) => ev, None => break },
                };
                if let NetEvent::Line(c, l) = ev {
                    if l.starts_with("ping") {
                        let _ = c.send_line(&l);
                    } else if let Some(n) = l.strip_prefix("end ") {
                        let n: u64 = n.parse().unwrap();
                        let got = counts.remove(&c.node_id()).unwrap_or(0);
                        let _ = c.send_line(&format!("done {got} of {n}"));
                    } else {
                        *counts.entry(c.node_id()).or_insert(0) += 1;
                    }
                }
            }
            accepting.abort();
            net.shutdown().await;
            relays.shutdown().await;
        });
    });
    ready_rx.recv().unwrap();

    // The two bobs, in bob's namespace (their own thread: the main one stays where the lab
    // is torn down from).
    let bob_ns = lab.host(Host::Bob).netns.clone();
    let sampler = relay_tx.clone();
    let bob_thread = std::thread::spawn(move || {
        enter(&bob_ns);
        runtime().block_on(async {
        let direct_net = Net::bind(Keypair::from_seed([92; 32]), config(bob_ip, 42_000))
            .await
            .unwrap();
        let relayed_key = Keypair::from_seed([93; 32]);
        let relayed_net = Net::bind(relayed_key.clone(), config(bob_ip, 42_001))
            .await
            .unwrap();
        let relays = RelayClient::bind(relayed_key, bob_ip.into()).await.unwrap();
        let direct = direct_net
            .connect(std::net::SocketAddr::new(alice_ip.into(), ALICE_PORT), alice_id)
            .await
            .unwrap();
        let (session, _notices) = relays.open(relay_addr).await.unwrap();
        let circuit = session.connect(alice_id).await.unwrap();
        let relayed = relayed_net
            .connect_over(circuit.stream, Some(alice_id), Role::Initiator, relay_id)
            .await
            .unwrap();
        assert_eq!(relayed.relay(), Some(relay_id));

        // Latency.
        let mut lat = Vec::new();
        for (name, con) in [("direct", &direct), ("relayed", &relayed)] {
            let mut rtts = Vec::with_capacity(PINGS);
            for k in 0..PINGS {
                let t = Instant::now();
                con.send(&format!("ping {k}")).await.unwrap();
                let back = con.recv().await.unwrap();
                assert_eq!(back, format!("ping {k}"));
                rtts.push(t.elapsed());
            }
            rtts.sort();
            let median = rtts[PINGS / 2];
            println!(
                "latency {name:<8} median {:7.2} ms  p90 {:7.2} ms  ({PINGS} pings)",
                median.as_secs_f64() * 1e3,
                rtts[PINGS * 9 / 10].as_secs_f64() * 1e3
            );
            lat.push(median);
        }
        let added_ms = (lat[1].as_secs_f64() - lat[0].as_secs_f64()) * 1e3;
        println!("latency  the relay adds {added_ms:.2} ms per round trip");

        // Throughput, alternating, with the relay's CPU over the relayed runs.
        let sample = || {
            let (tx, rx) = std_mpsc::channel();
            sampler.send(RelayCmd::Sample(tx)).unwrap();
            rx.recv().unwrap()
        };
        let mut rates = std::collections::HashMap::new();
        let (mut relay_cpu, mut relay_bytes) = (Duration::ZERO, 0u64);
        for (size, total) in [(1024usize, mib << 20), (64, (mib << 20) / 4)] {
            let line = "x".repeat(size - 1);
            let n = total / size as u64;
            for (name, con) in [("direct", &direct), ("relayed", &relayed)] {
                let before = sample();
                let t = Instant::now();
                for _ in 0..n {
                    con.send(&line).await.unwrap();
                }
                con.send(&format!("end {n}")).await.unwrap();
                let done = con.recv().await.unwrap();
                let took = t.elapsed();
                assert_eq!(done, format!("done {n} of {n}"));
                let after = sample();
                let mbs = total as f64 / took.as_secs_f64() / 1e6;
                println!(
                    "throughput {size:>4} B lines {name:<8} {mbs:8.1} MB/s  ({} MiB in {:.2} s)",
                    total >> 20,
                    took.as_secs_f64()
                );
                rates.insert((size, name), mbs);
                if name == "relayed" {
                    relay_cpu += after.0 - before.0;
                    relay_bytes += after.1 - before.1;
                }
            }
        }
        let gb = relay_bytes as f64 / 1e9;
        let cpu_s = relay_cpu.as_secs_f64();
        println!(
            "relay CPU {:.1} ms for {:.3} GB of ciphertext: {:.0} ms per GB, {:.2} GB/s per core",
            cpu_s * 1e3,
            gb,
            cpu_s * 1e3 / gb,
            gb / cpu_s
        );
        direct_net.shutdown().await;
        relayed_net.shutdown().await;
        relays.shutdown().await;
        Figures {
            rtt: (lat[0], lat[1]),
            rates,
            relay_cpu,
            relay_bytes,
        }
    })
    });
    let report = bob_thread.join().unwrap();
    let _ = alice_stop_tx.send(());
    relay_tx.send(RelayCmd::Stop).unwrap();
    alice_thread.join().unwrap();
    relay_thread.join().unwrap();
    drop(lab);
    report
}
