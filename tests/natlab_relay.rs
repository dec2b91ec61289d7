//! Relayed connections across real Linux NATs (the NAT lab, 20 ms one-way
//! delay on every router's WAN link): a relay that dies mid-session, and a
//! relayed connection that upgrades to a direct one when a port mapping
//! appears. The relayed cells of the traversal matrix are in
//! natlab_traversal.rs.
//!
//! `examples/alice.rs` answers every line; `examples/bob.rs --count N` sends
//! numbered lines on whatever connection to her is current and counts her
//! answers; both print their connections' paths.
//!
//! Needs root and the lab tools; skips loudly without them, fails under CI=true.

use std::path::Path;
use std::time::{Duration, Instant};

use natkit::identity::Keypair;
use natkit_lab::{Host, Lab, LabChild, LabConfig, NatKind, Upnp};

mod common;
use common::{build_examples, example, field, report_fields};

const DELAY_MS: u32 = 20;
const RELAY_PORT: &str = common::LAB_RELAY_PORT;

fn keypair(n: u64) -> Keypair {
    common::seed_keypair(n)
}

/// `natkit bootstrap-node --relay` on the rendezvous host.
fn start_bootstrap(lab: &Lab, dir: &Path) -> (LabChild, String) {
    common::lab_bootstrap(lab, Host::Rendezvous, lab.ip(Host::Rendezvous), dir)
}

/// A second relay: `natkit run --relay` on the public2 host, joined through `boot`.
fn start_relay(lab: &Lab, dir: &Path, boot: &str) -> LabChild {
    let key = dir.join("relay2.key");
    let ip = lab.ip(Host::Public2).to_string();
    let mut relay = lab
        .spawn(
            Host::Public2,
            &[
                env!("CARGO_BIN_EXE_natkit"),
                "--key",
                key.to_str().unwrap(),
                "--port",
                "4000",
                "--bootstrap",
                boot,
                "run",
                "--bind",
                &ip,
                "--relay",
                "--relay-port",
                RELAY_PORT,
            ],
        )
        .expect("spawn the second relay");
    relay
        .wait_for_stdout("relay: on ", Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("second relay not ready: {e}: {}", relay.stderr()));
    relay
}

fn start_alice(lab: &Lab, boot: &str, relays: usize) -> LabChild {
    let bin = example("alice");
    let relays = relays.to_string();
    let argv = [
        bin.to_str().unwrap(),
        "--bootstrap",
        boot,
        "--port",
        "41000",
        "--seed",
        "1",
        "--wait-relays",
        &relays,
    ];
    let mut alice = lab.spawn(Host::Alice, &argv).expect("spawn alice");
    alice
        .wait_for_stdout("ready id=", Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("alice not ready: {e}: {}", alice.stderr()));
    alice
}

fn start_bob(lab: &Lab, boot: &str, count: u64) -> LabChild {
    let bin = example("bob");
    let alice_id = keypair(1).node_id().to_string();
    let count = count.to_string();
    let argv = [
        bin.to_str().unwrap(),
        "--bootstrap",
        boot,
        "--port",
        "42000",
        "--to",
        &alice_id,
        "--count",
        &count,
        "--interval-ms",
        "100",
    ];
    lab.spawn(Host::Bob, &argv).expect("spawn bob")
}

/// Waits until `child`'s stdout has `needle`, or fails the test with both logs.
fn wait_for(child: &mut LabChild, needle: &str, secs: u64, what: &str) {
    child
        .wait_for_stdout(needle, Duration::from_secs(secs))
        .unwrap_or_else(|e| {
            panic!(
                "{what}: {e}\n--- stdout\n{}--- stderr\n{}",
                child.stdout(),
                child.stderr()
            )
        });
}

/// The numbers of the `line k` lines alice printed, in order.
fn alice_lines(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(" text=line ").map(|(_, k)| k))
        .filter_map(|k| k.parse().ok())
        .collect()
}

#[test]
fn a_relay_that_dies_is_reported_and_another_carries_on() {
    let name = "a_relay_that_dies_is_reported_and_another_carries_on";
    if !natkit_lab::lab_or_skip(name) {
        return;
    }
    build_examples();
    let config = LabConfig::new(NatKind::Symmetric, NatKind::Symmetric).delay_ms(DELAY_MS);
    let lab = Lab::up(config).expect("lab up");
    let dir = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(&lab, dir.path());
    let relay2 = start_relay(&lab, dir.path(), &boot_addr);
    let alice = start_alice(&lab, &boot_addr, 2);
    let count = 100;
    let mut bob = start_bob(&lab, &boot_addr, count);
    wait_for(&mut bob, "alice got: line", 40, "bob's first answer");
    // Wait for a few answers, then kill the relay bob's connection runs through.
    std::thread::sleep(Duration::from_secs(1));
    let first = report_fields(&bob.stdout(), "connected ").expect("bob connected");
    assert_eq!(field(&first, "path"), "relayed", "{first:?}");
    let used: std::net::SocketAddr = field(&first, "addr").parse().unwrap();
    let rendezvous_ip = lab.ip(Host::Rendezvous);
    let (killed, kept) = if used.ip() == rendezvous_ip {
        (boot, relay2)
    } else {
        (relay2, boot)
    };
    let t_kill = Instant::now();
    drop(killed.kill().expect("kill the relay"));
    let out = bob.wait_timeout(Duration::from_secs(60)).expect("bob ends");
    eprintln!(
        "bob (relay killed after {} ms)\n--- stdout\n{}--- stderr\n{}",
        t_kill.elapsed().as_millis(),
        out.stdout,
        out.stderr
    );
    let alice = alice.kill().unwrap();
    eprintln!(
        "--- alice stdout\n{}--- alice stderr\n{}",
        alice.stdout, alice.stderr
    );
    // The loss is reported with the relay as the reason...
    let lost = out
        .stdout
        .lines()
        .find(|l| l.starts_with("lost path=relayed"))
        .unwrap_or_else(|| panic!("no loss reported: {}", out.stdout));
    assert!(lost.contains("relay"), "{lost}");
    // ...and bob connects again, through the other relay.
    let again: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("connected "))
        .collect();
    assert_eq!(again.len(), 2, "{}", out.stdout);
    let second = report_fields(again[1], "connected ").unwrap();
    assert_eq!(field(&second, "path"), "relayed", "{second:?}");
    assert_ne!(field(&second, "addr"), used.to_string(), "{second:?}");
    // Lines in flight in the dead relay may be gone; the rest all came back, the last too.
    let answered: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("answered="))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(answered >= count - 20, "{}", out.stdout);
    drop(kept);
}

#[test]
fn a_relayed_connection_upgrades_to_direct_when_a_mapping_appears() {
    let name = "a_relayed_connection_upgrades_to_direct_when_a_mapping_appears";
    if !natkit_lab::lab_or_skip(name) {
        return;
    }
    build_examples();
    // Alice behind a cone NAT whose UPnP/NAT-PMP/PCP service is off at first, bob behind a
    // symmetric NAT: no direct path, until alice's router maps her port.
    let config = LabConfig::new(NatKind::Cone, NatKind::Symmetric)
        .upnp(Upnp::NatA)
        .delay_ms(DELAY_MS);
    let lab = Lab::up(config).expect("lab up");
    lab.stop_miniupnpd(Host::NatA).expect("stop miniupnpd");
    let dir = tempfile::tempdir().unwrap();
    let (boot, boot_addr) = start_bootstrap(&lab, dir.path());
    let alice = start_alice(&lab, &boot_addr, 1);
    let count = 300;
    let mut bob = start_bob(&lab, &boot_addr, count);
    wait_for(&mut bob, "alice got: line", 40, "bob's first answer");
    let first = report_fields(&bob.stdout(), "connected ").expect("bob connected");
    assert_eq!(field(&first, "path"), "relayed", "{first:?}");
    // The mapping service comes (back) on mid-session.
    lab.start_miniupnpd(Host::NatA).expect("start miniupnpd");
    let t_on = Instant::now();
    wait_for(&mut bob, "switched path=direct", 40, "the upgrade");
    eprintln!(
        "upgraded {} ms after miniupnpd started",
        t_on.elapsed().as_millis()
    );
    let out = bob.wait_timeout(Duration::from_secs(60)).expect("bob ends");
    let alice = alice.kill().unwrap();
    eprintln!(
        "--- bob stdout\n{}--- bob stderr\n{}--- alice stdout\n{}--- alice stderr\n{}",
        out.stdout, out.stderr, alice.stdout, alice.stderr
    );
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("answered={count} duplicates=0 missing=-")),
        "{}",
        out.stdout
    );
    // The relayed connection ended as replaced, not lost.
    let lost: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("lost "))
        .collect();
    assert!(lost.iter().all(|l| l.contains("duplicate")), "{lost:?}");
    // Alice got every line once, in order, across the switch.
    let got = alice_lines(&alice.stdout);
    assert_eq!(got, (1..=count).collect::<Vec<_>>(), "{}", alice.stdout);
    assert!(
        alice.stdout.contains("path=relayed") && alice.stdout.contains("path=direct"),
        "{}",
        alice.stdout
    );
    drop(boot);
}
