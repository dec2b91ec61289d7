//! `Node::connect(node id)` across real Linux NATs (the NAT lab), 20 ms
//! one-way delay on every router's WAN link: the traversal matrix of
//! docs/traversal.md.
//!
//! In each cell a bootstrap node (`natkit bootstrap-node`) runs on the lab's
//! public `rendezvous` host; `examples/alice.rs` waits behind natA until she
//! is reachable by id, and `examples/bob.rs` (behind natB, or on another host
//! of the cell) connects to her by her node id alone, sends a line and waits
//! for her answer. Each cell asserts the path bob's connect took and the
//! lines both ways; the cells that cannot connect without a relay assert a
//! clean, bounded failure.
//!
//! Needs root and the lab tools; skips loudly without them, fails under CI=true.

use std::path::Path;
use std::time::{Duration, Instant};

use natkit::identity::Keypair;
use natkit_lab::{CmdOutput, Host, Lab, LabChild, LabConfig, NatKind, Upnp};

mod common;
use common::{build_examples, example, field, report_fields};

/// One-way delay on each router's WAN link.
const DELAY_MS: u32 = 20;

/// Alice's port (TCP and UDP).
const ALICE_PORT: u16 = 41_000;

/// Bob's port.
const BOB_PORT: u16 = 42_000;

/// Longest bob may take, lookup and every attempt included (a failing cell
/// runs out the punch's 20 s).
const BOB_LIMIT: Duration = Duration::from_secs(45);

/// The key of seed `n`, as the examples make it.
fn keypair(n: u64) -> Keypair {
    common::seed_keypair(n)
}

/// The bootstrap node on the rendezvous host; returns it once ready.
fn start_bootstrap(lab: &Lab, dir: &Path) -> (LabChild, String) {
    bootstrap_at(lab, Host::Rendezvous, lab.ip(Host::Rendezvous), dir)
}

/// Alice on `host`, once she is reachable by id (and, when the lab has
/// miniupnpd on her router, once her UNL lists her port mapping).
fn start_alice(lab: &Lab, host: Host, boot: &str) -> LabChild {
    let bin = example("alice");
    let port = ALICE_PORT.to_string();
    let mut argv = vec![
        bin.to_str().unwrap(),
        "--bootstrap",
        boot,
        "--port",
        &port,
        "--seed",
        "1",
        "--lines",
        "1",
    ];
    if matches!(lab.config().upnp, Upnp::NatA | Upnp::Both) {
        argv.push("--wait-mapped");
    }
    let mut alice = lab.spawn(host, &argv).expect("spawn alice");
    alice
        .wait_for_stdout("ready id=", Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("alice not ready: {e}: {}", alice.stderr()));
    alice
}

/// Bob on `host`, connecting to alice by id; waits for him to end.
fn run_bob(lab: &Lab, host: Host, boot: &str) -> (CmdOutput, Duration) {
    let bin = example("bob");
    let port = BOB_PORT.to_string();
    let alice_id = keypair(1).node_id().to_string();
    let mut argv = vec![
        bin.to_str().unwrap(),
        "--bootstrap",
        boot,
        "--port",
        &port,
        "--to",
        &alice_id,
    ];
    if host == Host::Bob && matches!(lab.config().upnp, Upnp::NatB | Upnp::Both) {
        argv.push("--wait-mapped");
    }
    let t = Instant::now();
    let bob = lab.spawn(host, &argv).expect("spawn bob");
    let out = bob.wait_timeout(BOB_LIMIT).expect("bob ends in time");
    (out, t.elapsed())
}

/// The `key=value` fields of bob's `connected ...` line.
fn connected(out: &CmdOutput) -> Option<Vec<(String, String)>> {
    report_fields(&out.stdout, "connected ")
}

/// What a cell expects.
enum Expect {
    /// Connected over this path, lines both ways.
    Path(&'static str),
}

/// Runs one cell: alice on `alice_host`, bob on `bob_host`.
fn cell(name: &str, config: LabConfig, alice_host: Host, bob_host: Host, expect: Expect) {
    if !natkit_lab::lab_or_skip(name) {
        return;
    }
    build_examples();
    let lab = Lab::up(config.delay_ms(DELAY_MS)).expect("lab up");
    let dir = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(&lab, dir.path());
    let alice = start_alice(&lab, alice_host, &boot_addr);
    let (bob, took) = run_bob(&lab, bob_host, &boot_addr);
    eprintln!(
        "{name}: bob took {} ms\n--- bob stdout\n{}--- bob stderr\n{}",
        took.as_millis(),
        bob.stdout,
        bob.stderr
    );
    match expect {
        Expect::Path(path) => {
            let alice = alice
                .wait_timeout(Duration::from_secs(10))
                .expect("alice ends after answering");
            eprintln!(
                "--- alice stdout\n{}--- alice stderr\n{}",
                alice.stdout, alice.stderr
            );
            assert!(bob.success(), "{name}: bob failed: {bob:?}");
            let fields = connected(&bob).unwrap_or_else(|| panic!("{name}: {bob:?}"));
            assert_eq!(field(&fields, "path"), path, "{name}: {fields:?}");
            assert!(
                bob.stdout.contains("reply alice got: hello from bob"),
                "{name}: {bob:?}"
            );
            let bob_id = bob_node_id(&alice.stdout);
            assert!(
                alice
                    .stdout
                    .contains(&format!("line from={bob_id} text=hello from bob")),
                "{name}: {alice:?}"
            );
        }
    }
    drop(boot);
}

/// The node id alice printed a line from.
fn bob_node_id(alice_stdout: &str) -> String {
    alice_stdout
        .lines()
        .find_map(|l| l.strip_prefix("line from="))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("alice got no line: {alice_stdout}"))
        .to_owned()
}

fn nats(a: NatKind, b: NatKind) -> LabConfig {
    LabConfig::new(a, b)
}

#[test]
fn cone_to_cone_is_punched() {
    cell(
        "cone_to_cone_is_punched",
        nats(NatKind::Cone, NatKind::Cone),
        Host::Alice,
        Host::Bob,
        Expect::Path("punched"),
    );
}

#[test]
fn cone_to_open_is_direct() {
    cell(
        "cone_to_open_is_direct",
        nats(NatKind::Open, NatKind::Cone),
        Host::Alice,
        Host::Bob,
        Expect::Path("direct"),
    );
}

#[test]
fn symmetric_to_open_is_direct() {
    cell(
        "symmetric_to_open_is_direct",
        nats(NatKind::Open, NatKind::Symmetric),
        Host::Alice,
        Host::Bob,
        Expect::Path("direct"),
    );
}

#[test]
fn open_to_cone_is_a_reverse_connect() {
    cell(
        "open_to_cone_is_a_reverse_connect",
        nats(NatKind::Cone, NatKind::Open),
        Host::Alice,
        Host::Bob,
        Expect::Path("reverse"),
    );
}

#[test]
fn open_to_symmetric_is_a_reverse_connect() {
    cell(
        "open_to_symmetric_is_a_reverse_connect",
        nats(NatKind::Symmetric, NatKind::Open),
        Host::Alice,
        Host::Bob,
        Expect::Path("reverse"),
    );
}

#[test]
fn cone_to_firewall_is_punched() {
    cell(
        "cone_to_firewall_is_punched",
        nats(NatKind::Firewall, NatKind::Cone),
        Host::Alice,
        Host::Bob,
        Expect::Path("punched"),
    );
}

#[test]
fn firewall_to_cone_is_punched() {
    cell(
        "firewall_to_cone_is_punched",
        nats(NatKind::Cone, NatKind::Firewall),
        Host::Alice,
        Host::Bob,
        Expect::Path("punched"),
    );
}

/// Both public, and in one /24 (the lab gives the open hosts 198.51.100.2
/// and .130): the planner takes that for a LAN and dials there first, which
/// is the same address a direct dial would take.
#[test]
fn open_to_open_in_one_slash_24_is_dialed_as_lan() {
    cell(
        "open_to_open_in_one_slash_24_is_dialed_as_lan",
        nats(NatKind::Open, NatKind::Open),
        Host::Alice,
        Host::Bob,
        Expect::Path("lan"),
    );
}

#[test]
fn firewall_to_firewall_is_punched() {
    cell(
        "firewall_to_firewall_is_punched",
        nats(NatKind::Firewall, NatKind::Firewall),
        Host::Alice,
        Host::Bob,
        Expect::Path("punched"),
    );
}

#[test]
fn mapped_cone_to_cone_is_a_reverse_connect() {
    cell(
        "mapped_cone_to_cone_is_a_reverse_connect",
        nats(NatKind::Cone, NatKind::Cone).upnp(Upnp::NatB),
        Host::Alice,
        Host::Bob,
        Expect::Path("reverse"),
    );
}

#[test]
fn symmetric_to_symmetric_is_relayed() {
    cell(
        "symmetric_to_symmetric_is_relayed",
        nats(NatKind::Symmetric, NatKind::Symmetric),
        Host::Alice,
        Host::Bob,
        Expect::Path("relayed"),
    );
}

#[test]
fn firewall_to_symmetric_is_relayed() {
    cell(
        "firewall_to_symmetric_is_relayed",
        nats(NatKind::Symmetric, NatKind::Firewall),
        Host::Alice,
        Host::Bob,
        Expect::Path("relayed"),
    );
}

#[test]
fn cone_to_cone_with_upnp_is_mapped() {
    cell(
        "cone_to_cone_with_upnp_is_mapped",
        nats(NatKind::Cone, NatKind::Cone).upnp(Upnp::NatA),
        Host::Alice,
        Host::Bob,
        Expect::Path("mapped"),
    );
}

#[test]
fn two_hosts_behind_one_nat_use_the_lan() {
    cell(
        "two_hosts_behind_one_nat_use_the_lan",
        nats(NatKind::Cone, NatKind::Cone),
        Host::Alice,
        Host::Carol,
        Expect::Path("lan"),
    );
}

#[test]
fn double_nat_to_cone_is_punched() {
    cell(
        "double_nat_to_cone_is_punched",
        nats(NatKind::Cone, NatKind::Cone),
        Host::Alice,
        Host::Dave,
        Expect::Path("punched"),
    );
}

#[test]
fn cone_to_symmetric_is_relayed() {
    cell(
        "cone_to_symmetric_is_relayed",
        nats(NatKind::Cone, NatKind::Symmetric),
        Host::Alice,
        Host::Bob,
        Expect::Path("relayed"),
    );
}

/// `natkit demo --lab --json`, as a user would run it: the CLI's
/// `bootstrap-node`, `run --echo` and `connect` across two cone NATs.
#[test]
fn the_lab_demo_punches_with_the_cli() {
    if !natkit_lab::lab_or_skip("the_lab_demo_punches_with_the_cli") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(["--json", "demo", "--lab"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run natkit demo --lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{out:?}");
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(names, ["lab", "bootstrap", "alice", "bob", "lines"]);
    let connected = steps[3]["connected"].as_str().unwrap();
    assert!(
        connected.contains(" over punched 203.0.113.10:"),
        "{connected}"
    );
    assert!(steps[2]["unl"].as_str().unwrap().starts_with("nk"));
}

/// Alice stops answering (her process frozen) after she became reachable:
/// bob's punch request cannot be delivered, and he fails cleanly and soon.
/// Thawed, alice is unharmed: the next bob connects.
#[test]
fn a_peer_that_vanishes_mid_connect_is_a_clean_error_and_nothing_leaks() {
    let name = "a_peer_that_vanishes_mid_connect_is_a_clean_error_and_nothing_leaks";
    if !natkit_lab::lab_or_skip(name) {
        return;
    }
    build_examples();
    let lab = Lab::up(nats(NatKind::Cone, NatKind::Cone).delay_ms(DELAY_MS)).expect("lab up");
    let dir = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(&lab, dir.path());
    let alice = start_alice(&lab, Host::Alice, &boot_addr);
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &alice.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let (bob, took) = run_bob(&lab, Host::Bob, &boot_addr);
    eprintln!(
        "frozen alice: bob took {took:?}: {}{}",
        bob.stdout, bob.stderr
    );
    assert!(!bob.success(), "{bob:?}");
    let err: Vec<&str> = bob.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(err.len(), 1, "one error line: {bob:?}");
    assert!(
        err[0].starts_with("error: cannot connect to node "),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");

    signal("-CONT");
    let (bob, _) = run_bob(&lab, Host::Bob, &boot_addr);
    eprintln!("thawed alice: {}{}", bob.stdout, bob.stderr);
    assert!(bob.success(), "{bob:?}");
    assert!(
        bob.stdout.contains("reply alice got: hello from bob"),
        "{bob:?}"
    );
    drop(boot);
}

/// `natkit showtype` on `host`: its JSON report.
fn showtype(lab: &Lab, host: Host, boot: &str, dir: &Path) -> serde_json::Value {
    let key = dir.join(format!("{host}.key"));
    let out = lab
        .run(
            host,
            &[
                env!("CARGO_BIN_EXE_natkit"),
                "--key",
                key.to_str().unwrap(),
                "--port",
                "43000",
                "--bootstrap",
                boot,
                "--json",
                "showtype",
            ],
        )
        .expect("run showtype");
    assert!(out.success(), "showtype on {host}: {out:?}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// The dial-back check: a rendezvous node dials the node back, and only a
/// node that unsolicited connections reach hears from it.
#[test]
fn dial_back_tells_reachable_from_not() {
    if !natkit_lab::lab_or_skip("dial_back_tells_reachable_from_not") {
        return;
    }
    for (a, b, want_a, want_b) in [
        (NatKind::Open, NatKind::Cone, true, false),
        (NatKind::Firewall, NatKind::Symmetric, false, false),
    ] {
        let lab = Lab::up(nats(a, b).delay_ms(DELAY_MS)).expect("lab up");
        let dir = tempfile::tempdir().unwrap();
        let (boot, boot_addr) = start_bootstrap(&lab, dir.path());
        for (host, kind, want) in [(Host::Alice, a, want_a), (Host::Bob, b, want_b)] {
            let report = showtype(&lab, host, &boot_addr, dir.path());
            eprintln!("{kind:?}: {report}");
            assert_eq!(report["tcp_reachable"], want, "{kind:?}: {report}");
        }
        drop(boot);
    }
}

/// A bootstrap node (and relay) bound to `ip` in `host`.
fn bootstrap_at(lab: &Lab, host: Host, ip: std::net::Ipv4Addr, dir: &Path) -> (LabChild, String) {
    common::lab_bootstrap(lab, host, ip, dir)
}

/// TCP classification: three natkit nodes on three public IPs report the
/// address each saw a TCP connection of ours come from. Behind the cone NAT
/// they agree (the listening port kept); behind the symmetric NAT each sees
/// another port.
#[test]
fn three_tcp_reporters_classify_the_nat() {
    if !natkit_lab::lab_or_skip("three_tcp_reporters_classify_the_nat") {
        return;
    }
    let lab = Lab::up(nats(NatKind::Cone, NatKind::Symmetric).delay_ms(DELAY_MS)).expect("lab up");
    let dir = tempfile::tempdir().unwrap();
    let r = lab.host(Host::Rendezvous);
    let ips = [
        r.ip,
        r.ip2.expect("the rendezvous host has a second IP"),
        lab.ip(Host::Public2),
    ];
    let hosts = [Host::Rendezvous, Host::Rendezvous, Host::Public2];
    let boots: Vec<(LabChild, String)> = hosts
        .iter()
        .zip(ips)
        .map(|(h, ip)| bootstrap_at(&lab, *h, ip, dir.path()))
        .collect();
    for (host, want) in [(Host::Alice, "consistent"), (Host::Bob, "random")] {
        let key = dir.path().join(format!("{host}.key"));
        let mut argv = vec![
            env!("CARGO_BIN_EXE_natkit").to_string(),
            "--key".into(),
            key.to_str().unwrap().into(),
            "--port".into(),
            "43000".into(),
        ];
        for (_, addr) in &boots {
            argv.extend(["--bootstrap".into(), addr.clone()]);
        }
        argv.extend(["--json".into(), "showtype".into()]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = lab.run(host, &argv).expect("run showtype");
        assert!(out.success(), "showtype on {host}: {out:?}");
        let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        eprintln!("{host}: {}", report["tcp"]);
        let tcp = &report["tcp"];
        let counted = tcp["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["counted"] == true)
            .count();
        assert_eq!(counted, 3, "{host}: three reporters: {tcp}");
        let class = tcp["class"].as_str().unwrap();
        assert!(class.starts_with(want), "{host}: {class}: {tcp}");
    }
    drop(boots);
}
