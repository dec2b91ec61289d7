//! DHT rendezvous through real Linux NAT (the NAT lab): a node behind a NAT
//! registers with public DHT nodes and keeps its UDP mapping open; a node
//! behind another (symmetric) NAT sends it a message by node id alone, and it
//! arrives through the rendezvous node. With the NAT's UDP timeout cut to 3 s,
//! a registration refreshed every second keeps working while one refreshed
//! every 20 s goes silent: the keepalive is what keeps the path open.
//!
//! Needs root and the lab tools; skips loudly without them, fails under CI=true.

use std::path::Path;
use std::time::Duration;

use natkit_lab::{Host, Lab, LabChild, LabConfig, NatKind};

const NATKIT: &str = env!("CARGO_BIN_EXE_natkit");

fn key_arg(dir: &Path, name: &str) -> String {
    dir.join(format!("{name}.key"))
        .to_string_lossy()
        .into_owned()
}

fn node_id(dir: &Path, name: &str) -> String {
    let out = std::process::Command::new(NATKIT)
        .args(["--key", &key_arg(dir, name), "showid"])
        .output()
        .expect("natkit showid");
    assert!(out.status.success(), "showid: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `natkit dht run` on a public host, up and bound to `bind`.
fn dht_node(
    lab: &Lab,
    host: Host,
    dir: &Path,
    name: &str,
    bind: &str,
    bootstrap: Option<&str>,
) -> LabChild {
    let key = key_arg(dir, name);
    let mut argv = vec![NATKIT, "--key", &key];
    if let Some(b) = bootstrap {
        argv.extend(["--bootstrap", b]);
    }
    argv.extend(["dht", "run", "--bind", bind]);
    let mut child = lab.spawn(host, &argv).expect("spawn DHT node");
    child
        .wait_for_stdout("dht node", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{name} not up: {e}: {}", child.stderr()));
    child
}

fn listen(lab: &Lab, host: Host, dir: &Path, name: &str, keepalive: &str, rdv: &str) -> LabChild {
    let key = key_arg(dir, name);
    let argv = [
        NATKIT,
        "--key",
        &key,
        "--bootstrap",
        rdv,
        "dht",
        "listen",
        "--bind",
        "0.0.0.0:6881",
        "--keepalive",
        keepalive,
    ];
    let mut child = lab.spawn(host, &argv).expect("spawn listener");
    child
        .wait_for_stdout("registered", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{name} did not register: {e}: {}", child.stderr()));
    child
}

#[test]
fn a_message_reaches_a_node_behind_nat_through_its_rendezvous_node() {
    if !natkit_lab::lab_or_skip("dht_rendezvous_through_nat") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let lab = Lab::up(LabConfig::new(NatKind::Cone, NatKind::Symmetric)).expect("lab up");
    lab.conntrack_flush().unwrap();
    // natA forgets UDP mappings after 3 s without traffic (Linux's default is 30 s).
    for knob in [
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        let set = format!("net.netfilter.{knob}=3");
        let out = lab.run(Host::NatA, &["sysctl", "-w", &set]).unwrap();
        assert!(out.success(), "sysctl on natA: {out:?}");
    }

    // Three public DHT nodes (so a registered node has its three rendezvous nodes and does not
    // search again for minutes: a search would refresh its mapping too).
    let rdv = format!("{}:6881", lab.ip(Host::Rendezvous));
    let first = dht_node(&lab, Host::Rendezvous, dir.path(), "rdv", &rdv, None);
    let public2 = format!("{}:6881", lab.ip(Host::Public2));
    let second = dht_node(&lab, Host::Public2, dir.path(), "p2", &public2, Some(&rdv));
    let rdv2 = format!("{}:6882", lab.ip(Host::Rendezvous));
    let third = dht_node(&lab, Host::Rendezvous, dir.path(), "p3", &rdv2, Some(&rdv));

    // Alice refreshes every second, Carol (same NAT) every 20 s.
    let mut alice = listen(&lab, Host::Alice, dir.path(), "alice", "1", &rdv);
    let mut carol = listen(&lab, Host::Carol, dir.path(), "carol", "20", &rdv);
    let alice_id = node_id(dir.path(), "alice");
    let carol_id = node_id(dir.path(), "carol");
    let bob_id = node_id(dir.path(), "bob");
    let public_ips = [lab.ip(Host::Rendezvous), lab.ip(Host::Public2)];
    for out in [alice.stdout(), carol.stdout()] {
        // "registered <id> with <addr> <addr> <addr>"
        let points: Vec<&str> = out
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(3)
            .collect();
        assert_eq!(points.len(), 3, "three rendezvous nodes: {out}");
        assert!(!points.is_empty(), "no rendezvous nodes: {out}");
        assert!(
            points
                .iter()
                .all(|p| public_ips.iter().any(|ip| p.starts_with(&format!("{ip}:")))),
            "rendezvous nodes are the public nodes: {out}"
        );
    }

    let send = |to: &str, text: &str| {
        lab.run_timeout(
            Host::Bob,
            &[
                NATKIT,
                "--key",
                &key_arg(dir.path(), "bob"),
                "--bootstrap",
                &rdv,
                "dht",
                "send",
                to,
                text,
            ],
            Duration::from_secs(30),
        )
        .expect("run sender")
    };

    // Right away, both are reachable behind their NAT.
    let out = send(&alice_id, "hello alice");
    assert!(out.success(), "to alice: {out:?}");
    alice
        .wait_for_stdout("hello alice", Duration::from_secs(10))
        .expect("alice got it");
    let line = alice.stdout();
    assert!(line.contains(&format!("message from {bob_id}")), "{line}");
    assert!(
        line.contains(&format!("({}:", lab.ip(Host::NatB))),
        "the sender's address as the rendezvous node saw it (natB's public IP): {line}"
    );
    let out = send(&carol_id, "hello carol");
    assert!(out.success(), "to carol: {out:?}");
    carol
        .wait_for_stdout("hello carol", Duration::from_secs(10))
        .expect("carol got it");

    // Several NAT timeouts later only the node that kept its mapping alive is reachable.
    std::thread::sleep(Duration::from_secs(8));
    let out = send(&alice_id, "still there, alice?");
    assert!(out.success(), "to alice after 8 s: {out:?}");
    alice
        .wait_for_stdout("still there, alice?", Duration::from_secs(10))
        .expect("alice got the second message");
    let out = send(&carol_id, "still there, carol?");
    assert!(
        !out.success(),
        "carol's mapping expired, so she cannot be reached: {out:?}"
    );
    assert!(out.stderr.contains("not delivered"), "{out:?}");

    for child in [alice, carol, first, second, third] {
        let _ = child.kill();
    }
}
