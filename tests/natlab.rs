//! Self-tests of the NAT lab (`scripts/natlab.sh` + `natkit-lab`): every NAT type behaves as
//! documented in docs/natlab.md, miniupnpd really forwards, netem-style delay shows in the RTT,
//! and teardown leaves nothing behind.
//!
//! Needs root and the lab tools; without them the tests skip loudly, under `CI=true` they fail.
//! Every test builds its own lab (unique name), so they run in parallel.

use std::net::SocketAddrV4;
use std::time::Duration;

use natkit_lab::{CmdOutput, Host, Lab, LabChild, LabConfig, NatKind, Upnp};

/// How long a server probe may take to bind and print "ready".
const READY_TIMEOUT: Duration = Duration::from_secs(5);

fn lab(test: &str, cfg: LabConfig) -> Option<Lab> {
    if !natkit_lab::lab_or_skip(test) {
        return None;
    }
    let lab = Lab::up(cfg).unwrap_or_else(|e| panic!("{test}: lab up failed: {e}"));
    lab.conntrack_flush().expect("conntrack flush");
    Some(lab)
}

fn server(lab: &Lab, h: Host, args: &[&str]) -> LabChild {
    let mut c = lab.spawn_probe(h, args).expect("spawn probe");
    c.wait_for_stdout("ready", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("server on {h} not ready: {e}"));
    c
}

fn probe(lab: &Lab, h: Host, args: &[&str]) -> CmdOutput {
    lab.probe(h, args)
        .unwrap_or_else(|e| panic!("probe {args:?} on {h}: {e}"))
}

/// The address a reflector at `to` reported for us, from `udp-query` output (`to -> ip:port`).
fn observed(out: &CmdOutput, to: &str) -> SocketAddrV4 {
    let prefix = format!("{to} -> ");
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no answer from {to}: {out:?}"));
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("reflector {to} said {line:?}"))
}

fn ep(lab: &Lab, h: Host, port: u16) -> String {
    format!("{}:{port}", lab.ip(h))
}

#[test]
fn unsolicited_inbound_udp_and_tcp_are_dropped() {
    let Some(lab) = lab(
        "unsolicited_inbound",
        LabConfig::new(NatKind::Cone, NatKind::Cone),
    ) else {
        return;
    };
    let wan = lab.host(Host::NatA).ip;
    let rdv = ep(&lab, Host::Rendezvous, 4000);

    // UDP. Positive control first: alice's outbound query gets its answer through the NAT.
    let reflector = server(&lab, Host::Rendezvous, &["udp-reflect", "--bind", &rdv]);
    let out = probe(
        &lab,
        Host::Alice,
        &["udp-query", "--bind", "0.0.0.0:5000", "--to", &rdv],
    );
    assert_eq!(observed(&out, &rdv), SocketAddrV4::new(wan, 5000));
    drop(reflector);

    // The mapping wan:5000 now exists. Its own peer may send into it; anyone else is dropped.
    let listener = server(
        &lab,
        Host::Alice,
        &["udp-listen", "--bind", "0.0.0.0:5000", "--timeout", "2"],
    );
    let target = format!("{wan}:5000");
    let stranger = probe(
        &lab,
        Host::Public2,
        &["udp-send", "--to", &target, "--bind", "0.0.0.0:4000"],
    );
    assert!(stranger.success(), "{stranger:?}");
    let unmapped = probe(
        &lab,
        Host::Public2,
        &["udp-send", "--to", &format!("{wan}:5001")],
    );
    assert!(unmapped.success(), "{unmapped:?}");
    let peer = probe(
        &lab,
        Host::Rendezvous,
        &["udp-send", "--to", &target, "--bind", &rdv],
    );
    assert!(peer.success(), "{peer:?}");
    let got = listener
        .wait_timeout(Duration::from_secs(10))
        .expect("listener");
    let public2 = lab.ip(Host::Public2).to_string();
    assert!(
        got.stdout.contains(&format!("from {rdv}")),
        "the mapped peer's datagrams must arrive (positive control): {got:?}"
    );
    assert!(
        !got.stdout.contains(&public2),
        "an unsolicited datagram from public2 got through the cone NAT: {got:?}"
    );

    // TCP: alice listens, the internet connects to natA's WAN port: no answer at all (a drop, not
    // a RST), while alice's outbound connection works.
    let _alice_srv = server(
        &lab,
        Host::Alice,
        &["tcp-reflect", "--bind", "0.0.0.0:6000"],
    );
    let inbound = probe(
        &lab,
        Host::Public2,
        &[
            "tcp-connect",
            "--to",
            &format!("{wan}:6000"),
            "--timeout",
            "2",
        ],
    );
    assert!(!inbound.success(), "inbound TCP reached alice: {inbound:?}");
    assert_eq!(
        inbound.stdout.trim(),
        "timeout",
        "expected a silent drop: {inbound:?}"
    );
    let to_router = probe(
        &lab,
        Host::Public2,
        &[
            "tcp-connect",
            "--to",
            &format!("{wan}:22"),
            "--timeout",
            "1",
        ],
    );
    assert_eq!(
        to_router.stdout.trim(),
        "timeout",
        "the router answered: {to_router:?}"
    );

    let rdv_tcp = ep(&lab, Host::Rendezvous, 6001);
    let _rdv_srv = server(&lab, Host::Rendezvous, &["tcp-reflect", "--bind", &rdv_tcp]);
    let outbound = probe(&lab, Host::Alice, &["tcp-connect", "--to", &rdv_tcp]);
    assert!(outbound.success(), "outbound TCP failed: {outbound:?}");
    assert!(
        outbound.stdout.starts_with(&format!("{wan}:")),
        "{outbound:?}"
    );
}

/// Starts UDP reflectors on three distinct public endpoints and returns them with their guards.
fn three_reflectors(lab: &Lab) -> (Vec<String>, Vec<LabChild>) {
    let rdv2 = lab
        .host(Host::Rendezvous)
        .ip2
        .expect("rendezvous has a second address");
    let eps = vec![
        ep(lab, Host::Rendezvous, 4000),
        format!("{rdv2}:4000"),
        ep(lab, Host::Public2, 4000),
    ];
    let guards = [
        (Host::Rendezvous, &eps[0]),
        (Host::Rendezvous, &eps[1]),
        (Host::Public2, &eps[2]),
    ]
    .into_iter()
    .map(|(h, e)| server(lab, h, &["udp-reflect", "--bind", e]))
    .collect();
    (eps, guards)
}

fn query_all(lab: &Lab, h: Host, port: u16, eps: &[String]) -> Vec<SocketAddrV4> {
    let bind = format!("0.0.0.0:{port}");
    let mut args = vec!["udp-query", "--bind", bind.as_str()];
    for e in eps {
        args.extend(["--to", e.as_str()]);
    }
    let out = probe(lab, h, &args);
    assert!(out.success(), "{out:?}");
    eps.iter().map(|e| observed(&out, e)).collect()
}

#[test]
fn cone_keeps_source_port_for_every_destination() {
    let Some(lab) = lab("cone", LabConfig::new(NatKind::Cone, NatKind::Symmetric)) else {
        return;
    };
    let (eps, _guards) = three_reflectors(&lab);
    let wan = lab.host(Host::NatA).ip;
    for seen in query_all(&lab, Host::Alice, 5100, &eps) {
        assert_eq!(
            seen,
            SocketAddrV4::new(wan, 5100),
            "cone must preserve port and mapping"
        );
    }
}

#[test]
fn symmetric_gives_each_destination_its_own_port() {
    let Some(lab) = lab(
        "symmetric",
        LabConfig::new(NatKind::Cone, NatKind::Symmetric),
    ) else {
        return;
    };
    let (eps, _guards) = three_reflectors(&lab);
    let wan = lab.host(Host::NatB).ip;
    let seen = query_all(&lab, Host::Bob, 5200, &eps);
    assert!(seen.iter().all(|s| *s.ip() == wan), "{seen:?}");
    // Three random ports all equal would be a 1-in-4e9 accident; any two equal is allowed.
    assert!(
        seen.windows(2).any(|w| w[0].port() != w[1].port()),
        "symmetric NAT reused one external port for every destination: {seen:?}"
    );
}

#[test]
fn firewall_passes_outbound_and_drops_inbound() {
    let Some(lab) = lab("firewall", LabConfig::new(NatKind::Firewall, NatKind::Open)) else {
        return;
    };
    let alice = lab.ip(Host::Alice);
    assert_eq!(
        lab.host(Host::Alice).public_ip,
        alice,
        "firewall does not translate"
    );

    // Outbound: works, and the internet sees alice's own address.
    let rdv_tcp = ep(&lab, Host::Rendezvous, 6001);
    let _rdv_srv = server(&lab, Host::Rendezvous, &["tcp-reflect", "--bind", &rdv_tcp]);
    let out = probe(&lab, Host::Alice, &["tcp-connect", "--to", &rdv_tcp]);
    assert!(out.stdout.starts_with(&format!("{alice}:")), "{out:?}");

    // Inbound to alice: dropped. Inbound to bob behind the open router: arrives (control).
    let _a = server(
        &lab,
        Host::Alice,
        &["tcp-reflect", "--bind", "0.0.0.0:6000"],
    );
    let _b = server(&lab, Host::Bob, &["tcp-reflect", "--bind", "0.0.0.0:6000"]);
    let to_alice = probe(
        &lab,
        Host::Public2,
        &[
            "tcp-connect",
            "--to",
            &format!("{alice}:6000"),
            "--timeout",
            "2",
        ],
    );
    assert_eq!(to_alice.stdout.trim(), "timeout", "{to_alice:?}");
    let bob = lab.ip(Host::Bob);
    let to_bob = probe(
        &lab,
        Host::Public2,
        &["tcp-connect", "--to", &format!("{bob}:6000")],
    );
    assert!(
        to_bob
            .stdout
            .starts_with(&format!("{}:", lab.ip(Host::Public2))),
        "open router must pass inbound: {to_bob:?}"
    );

    // UDP inbound to alice: dropped, same test against bob delivers.
    let listen = ["udp-listen", "--bind", "0.0.0.0:5300", "--timeout", "2"];
    let la = server(&lab, Host::Alice, &listen);
    let lb = server(&lab, Host::Bob, &listen);
    probe(
        &lab,
        Host::Public2,
        &["udp-send", "--to", &format!("{alice}:5300")],
    );
    probe(
        &lab,
        Host::Public2,
        &["udp-send", "--to", &format!("{bob}:5300")],
    );
    let ga = la
        .wait_timeout(Duration::from_secs(10))
        .expect("alice listener");
    let gb = lb
        .wait_timeout(Duration::from_secs(10))
        .expect("bob listener");
    assert!(ga.stdout.contains("total 0"), "{ga:?}");
    assert!(!gb.stdout.contains("total 0"), "{gb:?}");
}

#[test]
fn upnp_mapping_forwards_and_disappears() {
    let cfg = LabConfig::new(NatKind::Cone, NatKind::Cone).upnp(Upnp::NatA);
    let Some(lab) = lab("upnp", cfg) else {
        return;
    };
    let gw = lab.host(Host::NatA).lan_ip.expect("router LAN address");
    let alice = lab.ip(Host::Alice).to_string();
    let url = format!("http://{gw}:2869/rootDesc.xml");
    let target = format!("{}:6100", lab.ip(Host::NatA));
    let _srv = server(
        &lab,
        Host::Alice,
        &["tcp-reflect", "--bind", "0.0.0.0:6100"],
    );

    let before = probe(
        &lab,
        Host::Public2,
        &["tcp-connect", "--to", &target, "--timeout", "1"],
    );
    assert_eq!(
        before.stdout.trim(),
        "timeout",
        "forwarded before mapping: {before:?}"
    );

    let add = lab
        .run(
            Host::Alice,
            &["upnpc", "-u", &url, "-a", &alice, "6100", "6100", "TCP"],
        )
        .expect("upnpc -a");
    assert!(
        add.success() && add.stdout.contains("is redirected"),
        "{add:?}"
    );
    let via = probe(&lab, Host::Public2, &["tcp-connect", "--to", &target]);
    assert!(
        via.stdout
            .starts_with(&format!("{}:", lab.ip(Host::Public2))),
        "mapping did not forward (alice must see the real source): {via:?}"
    );

    let del = lab
        .run(Host::Alice, &["upnpc", "-u", &url, "-d", "6100", "TCP"])
        .expect("upnpc -d");
    assert!(del.success(), "{del:?}");
    lab.conntrack_flush().expect("flush");
    let after = probe(
        &lab,
        Host::Public2,
        &["tcp-connect", "--to", &target, "--timeout", "1"],
    );
    assert_eq!(
        after.stdout.trim(),
        "timeout",
        "mapping still forwards: {after:?}"
    );

    // secure_mode: alice may not map a port to carol.
    let carol = lab.ip(Host::Carol).to_string();
    let foreign = lab
        .run(
            Host::Alice,
            &["upnpc", "-u", &url, "-a", &carol, "6101", "6101", "TCP"],
        )
        .expect("upnpc -a for carol");
    assert!(
        foreign.stdout.contains("718"),
        "secure_mode must refuse: {foreign:?}"
    );
}

#[test]
fn natpmp_mapping_forwards_and_disappears() {
    let cfg = LabConfig::new(NatKind::Cone, NatKind::Cone).upnp(Upnp::Both);
    let Some(lab) = lab("natpmp", cfg) else {
        return;
    };
    let gw = lab
        .host(Host::NatB)
        .lan_ip
        .expect("router LAN address")
        .to_string();
    let target = format!("{}:6200", lab.ip(Host::NatB));
    let _srv = server(&lab, Host::Bob, &["udp-reflect", "--bind", "0.0.0.0:6200"]);

    let add = lab
        .run(
            Host::Bob,
            &["natpmpc", "-g", &gw, "-a", "6200", "6200", "udp", "60"],
        )
        .expect("natpmpc -a");
    assert!(
        add.success() && add.stdout.contains("Mapped public port 6200"),
        "{add:?}"
    );
    let q = [
        "udp-query",
        "--bind",
        "0.0.0.0:4200",
        "--to",
        &target,
        "--timeout",
        "2",
    ];
    let via = probe(&lab, Host::Public2, &q);
    assert_eq!(
        observed(&via, &target),
        SocketAddrV4::new(lab.ip(Host::Public2), 4200),
        "bob must see the real source"
    );

    let del = lab
        .run(
            Host::Bob,
            &["natpmpc", "-g", &gw, "-a", "6200", "6200", "udp", "0"],
        )
        .expect("natpmpc delete");
    assert!(del.success(), "{del:?}");
    lab.conntrack_flush().expect("flush");
    let q2 = [
        "udp-query",
        "--bind",
        "0.0.0.0:4201",
        "--to",
        &target,
        "--timeout",
        "1",
    ];
    let after = probe(&lab, Host::Public2, &q2);
    assert!(
        !after.success() && after.stdout.contains("timeout"),
        "still mapped: {after:?}"
    );
}

#[test]
fn wan_delay_shows_in_rtt() {
    const DELAY_MS: u32 = 40;
    let Some(lab) = lab(
        "delay",
        LabConfig::new(NatKind::Cone, NatKind::Cone).delay_ms(DELAY_MS),
    ) else {
        return;
    };
    let rdv = ep(&lab, Host::Rendezvous, 4000);
    let _r = server(&lab, Host::Rendezvous, &["udp-reflect", "--bind", &rdv]);
    let out = probe(
        &lab,
        Host::Alice,
        &["udp-rtt", "--to", &rdv, "--count", "5"],
    );
    assert!(out.success(), "{out:?}");
    let min_ms: f64 = out
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad udp-rtt output {out:?}"));
    // One-way DELAY_MS in each direction of natA's WAN link: RTT >= 2 x DELAY_MS.
    assert!(
        min_ms >= f64::from(2 * DELAY_MS),
        "RTT {min_ms} ms < 2 x {DELAY_MS} ms"
    );
}

#[test]
fn double_nat_and_same_lan_hosts() {
    let Some(lab) = lab("double_nat", LabConfig::new(NatKind::Cone, NatKind::Cone)) else {
        return;
    };
    let rdv = ep(&lab, Host::Rendezvous, 4000);
    let _r = server(&lab, Host::Rendezvous, &["udp-reflect", "--bind", &rdv]);
    let out = probe(
        &lab,
        Host::Dave,
        &["udp-query", "--bind", "0.0.0.0:5400", "--to", &rdv],
    );
    let seen = observed(&out, &rdv);
    assert_eq!(*seen.ip(), lab.host(Host::Dave).public_ip);
    assert_eq!(*seen.ip(), lab.ip(Host::Cgnat));

    // carol reaches alice directly on their shared LAN.
    let alice_ep = ep(&lab, Host::Alice, 5500);
    let _a = server(&lab, Host::Alice, &["udp-reflect", "--bind", &alice_ep]);
    let out = probe(
        &lab,
        Host::Carol,
        &["udp-query", "--bind", "0.0.0.0:5501", "--to", &alice_ep],
    );
    assert_eq!(
        observed(&out, &alice_ep),
        SocketAddrV4::new(lab.ip(Host::Carol), 5501)
    );
}

fn namespaces() -> String {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn teardown_happens_on_drop_and_on_panic() {
    if !natkit_lab::lab_or_skip("teardown") {
        return;
    }
    let lab = Lab::up(LabConfig::new(NatKind::Symmetric, NatKind::Firewall)).expect("up");
    let prefix = format!("{}-", lab.name());
    assert!(namespaces().contains(&format!("{prefix}alice")));
    lab.down().expect("down");
    assert!(
        !namespaces().contains(&prefix),
        "left behind: {}",
        namespaces()
    );

    let name = std::panic::catch_unwind(|| {
        let lab = Lab::up(LabConfig::new(NatKind::Open, NatKind::Cone)).expect("up");
        let name = lab.name().to_owned();
        std::panic::panic_any(name);
    })
    .expect_err("closure panics")
    .downcast::<String>()
    .expect("lab name as panic payload");
    let prefix = format!("{name}-");
    assert!(
        !namespaces().contains(&prefix),
        "panic left: {}",
        namespaces()
    );
}
