//! TCP hole punching (simultaneous open) through real Linux NAT (the NAT lab):
//! two `punch_peer` processes behind two NATs dial each other's public address
//! at the same moment, from their listen ports, with the Noise role agreed
//! from the node ids (`natkit_traversal::plan::noise_initiator`).
//!
//! Cone × cone (port-preserving masquerade, 20 ms one-way WAN delay): both
//! connect on one socket, exchange a line, exactly one was the initiator, and
//! both routers' conntrack shows the flow with the listen port on both ends.
//! Cone × symmetric: the symmetric NAT gives bob a random port, so neither SYN
//! matches the other NAT's mapping, and both fail cleanly within the bound.
//!
//! Needs root and the lab tools; skips loudly without them, fails under CI=true.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natkit_lab::{CmdOutput, Host, Lab, LabConfig, NatKind};

mod common;
use common::{build_examples, example, field, report_fields};

/// One-way delay on each NAT router's WAN link (alice↔bob RTT ≥ 80 ms).
const DELAY_MS: u32 = 20;

/// How long after spawning both peers they dial: room for both processes to start.
const START_IN_MS: u64 = 1500;

/// Each peer's dial budget (`--within-ms`).
const WITHIN_MS: u64 = 3000;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Runs the two peers at once: alice (seed 1) and bob (seed 2), each dialing the
/// other's NAT public address at `port`, bob `bob_late_ms` after alice.
/// Returns their outputs and the time from alice's start to the last exit.
fn punch(lab: &Lab, port: u16, bob_late_ms: u64) -> (CmdOutput, CmdOutput, Duration) {
    let bin = example("punch_peer");
    let bin = bin.to_str().unwrap();
    let listen = format!("0.0.0.0:{port}");
    let at = unix_ms() + START_IN_MS;
    let within = WITHIN_MS.to_string();
    let spawn = |h: Host, seed: &str, peer_seed: &str, peer: Host, at: u64| {
        let at_s = at.to_string();
        let to = format!("{}:{port}", lab.host(peer).public_ip);
        let line = format!("hello from {h}");
        lab.spawn(
            h,
            &[
                bin,
                "--listen",
                &listen,
                "--seed",
                seed,
                "--peer-seed",
                peer_seed,
                "--peer",
                &to,
                "--at",
                &at_s,
                "--within-ms",
                &within,
                "--line",
                &line,
            ],
        )
        .unwrap_or_else(|e| panic!("spawn punch_peer on {h}: {e}"))
    };
    let a = spawn(Host::Alice, "1", "2", Host::Bob, at);
    let b = spawn(Host::Bob, "2", "1", Host::Alice, at + bob_late_ms);
    let limit = Duration::from_millis(START_IN_MS + bob_late_ms + WITHIN_MS + 8000);
    let a = a.wait_timeout(limit).expect("alice's punch_peer ends");
    let b = b.wait_timeout(limit).expect("bob's punch_peer ends");
    let took = Duration::from_millis(unix_ms().saturating_sub(at));
    (a, b, took)
}

/// The `key=value` fields of the `connected ...` line.
fn connected(who: &str, out: &CmdOutput) -> Vec<(String, String)> {
    report_fields(&out.stdout, "connected ")
        .unwrap_or_else(|| panic!("{who} did not connect: {out:?}"))
}

/// Conntrack's TCP flows in `router`.
fn conntrack_tcp(lab: &Lab, router: Host) -> String {
    let out = lab
        .run(router, &["conntrack", "-L", "-p", "tcp"])
        .unwrap_or_else(|e| panic!("conntrack in {router}: {e}"));
    assert!(out.success(), "conntrack -L in {router}: {out:?}");
    out.stdout
}

#[test]
fn simultaneous_open_through_two_cone_nats() {
    if !natkit_lab::lab_or_skip("simultaneous_open_through_two_cone_nats") {
        return;
    }
    build_examples();
    let lab =
        Lab::up(LabConfig::new(NatKind::Cone, NatKind::Cone).delay_ms(DELAY_MS)).expect("lab up");
    lab.conntrack_flush().unwrap();
    let port = 41_000;
    let (a, b, took) = punch(&lab, port, 0);
    eprintln!("alice: {}{}", a.stdout, a.stderr);
    eprintln!("bob: {}{}", b.stdout, b.stderr);
    eprintln!("both done {} ms after the agreed start", took.as_millis());
    assert!(a.success(), "alice failed: {a:?}");
    assert!(b.success(), "bob failed: {b:?}");
    assert!(a.stdout.contains("got hello from bob"), "{a:?}");
    assert!(b.stdout.contains("got hello from alice"), "{b:?}");

    let fa = connected("alice", &a);
    let fb = connected("bob", &b);
    let roles = [field(&fa, "role"), field(&fb, "role")];
    assert_eq!(
        roles.iter().filter(|r| **r == "initiator").count(),
        1,
        "exactly one Noise initiator: {roles:?}"
    );
    assert!(roles.contains(&"responder"), "{roles:?}");
    // Both dialed, and the kernel joined the two dials into one connection.
    assert_eq!(field(&fa, "direction"), "outbound", "{fa:?}");
    assert_eq!(field(&fb, "direction"), "outbound", "{fb:?}");

    // The dials left from the listen port...
    let alice_lan = lab.ip(Host::Alice);
    let bob_lan = lab.ip(Host::Bob);
    let (nat_a, nat_b) = (lab.ip(Host::NatA), lab.ip(Host::NatB));
    assert_eq!(field(&fa, "local"), format!("{alice_lan}:{port}"));
    assert_eq!(field(&fb, "local"), format!("{bob_lan}:{port}"));
    assert_eq!(field(&fa, "remote"), format!("{nat_b}:{port}"));
    assert_eq!(field(&fb, "remote"), format!("{nat_a}:{port}"));
    assert_eq!(field(&fa, "observed"), format!("{nat_a}:{port}"));
    assert_eq!(field(&fb, "observed"), format!("{nat_b}:{port}"));
    // ...and each NAT mapped them to that same port: the routers' conntrack has
    // the flow with the listen port on both ends of both directions.
    let ct_a = conntrack_tcp(&lab, Host::NatA);
    let want_a = format!(
        "src={alice_lan} dst={nat_b} sport={port} dport={port} src={nat_b} dst={nat_a} sport={port} dport={port} [ASSURED]"
    );
    assert!(
        ct_a.contains(&want_a),
        "natA conntrack:\n{ct_a}\nwanted {want_a}"
    );
    let ct_b = conntrack_tcp(&lab, Host::NatB);
    let want_b = format!(
        "src={bob_lan} dst={nat_a} sport={port} dport={port} src={nat_a} dst={nat_b} sport={port} dport={port} [ASSURED]"
    );
    assert!(
        ct_b.contains(&want_b),
        "natB conntrack:\n{ct_b}\nwanted {want_b}"
    );
}

#[test]
fn simultaneous_open_with_a_symmetric_nat_fails_cleanly() {
    if !natkit_lab::lab_or_skip("simultaneous_open_with_a_symmetric_nat_fails_cleanly") {
        return;
    }
    build_examples();
    let lab = Lab::up(LabConfig::new(NatKind::Cone, NatKind::Symmetric).delay_ms(DELAY_MS))
        .expect("lab up");
    lab.conntrack_flush().unwrap();
    let started = Instant::now();
    let (a, b, took) = punch(&lab, 41_100, 0);
    eprintln!("alice: {}{}", a.stdout, a.stderr);
    eprintln!("bob: {}{}", b.stdout, b.stderr);
    eprintln!("both done {} ms after the agreed start", took.as_millis());
    for (who, out) in [("alice", &a), ("bob", &b)] {
        assert!(!out.success(), "{who} should not connect: {out:?}");
        assert!(!out.stdout.contains("connected "), "{who}: {out:?}");
        let err: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(err.len(), 1, "{who}: one error line: {out:?}");
        assert!(
            err[0].starts_with("error: no connection to "),
            "{who}: {err:?}"
        );
    }
    // The budget plus at most one attempt's overshoot (1.5 s) and slack.
    let bound = Duration::from_millis(WITHIN_MS + 1500 + 1500);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    assert!(
        started.elapsed() <= Duration::from_millis(START_IN_MS) + bound + Duration::from_secs(2)
    );
}

#[test]
fn simultaneous_open_survives_the_first_syn_being_dropped() {
    if !natkit_lab::lab_or_skip("simultaneous_open_survives_the_first_syn_being_dropped") {
        return;
    }
    build_examples();
    let lab =
        Lab::up(LabConfig::new(NatKind::Cone, NatKind::Cone).delay_ms(DELAY_MS)).expect("lab up");
    lab.conntrack_flush().unwrap();
    // Bob dials 1.2 s after alice: alice's first SYN reaches natB before bob's
    // SYN opened it, and natB drops it silently. Bob's SYN then meets alice's
    // socket still in SYN_SENT (same 4-tuple), which completes the open.
    let (a, b, took) = punch(&lab, 41_200, 1200);
    eprintln!("alice: {}{}", a.stdout, a.stderr);
    eprintln!("bob: {}{}", b.stdout, b.stderr);
    eprintln!("both done {} ms after alice's start", took.as_millis());
    assert!(a.success(), "alice failed: {a:?}");
    assert!(b.success(), "bob failed: {b:?}");
    assert!(a.stdout.contains("got hello from bob"), "{a:?}");
    assert!(b.stdout.contains("got hello from alice"), "{b:?}");
    let (fa, fb) = (connected("alice", &a), connected("bob", &b));
    assert_eq!(field(&fa, "direction"), "outbound", "{fa:?}");
    assert_eq!(field(&fb, "direction"), "outbound", "{fb:?}");
    let mut roles = [field(&fa, "role"), field(&fb, "role")];
    roles.sort_unstable();
    assert_eq!(roles, ["initiator", "responder"]);
    // Alice waited for bob: her connection came well after her start.
    let alice_ms: u64 = field(&fa, "ms").parse().unwrap();
    assert!(alice_ms >= 1200, "alice connected after {alice_ms} ms");
}
