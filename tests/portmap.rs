//! `natkit map` in the NAT lab, against miniupnpd (UPnP IGD, NAT-PMP and PCP) on natA: for each
//! method forced alone and for auto, the mapping is created, a connection from the internet side
//! reaches a listener on alice, the real clients (`upnpc -l`, `natpmpc`) see the same mapping, and
//! SIGTERM removes it again. Also: leases are renewed, a mapping comes back after the router
//! restarts, and secure mode's refusal of another host's address is a clear error.
//!
//! The `natkit` binary runs inside alice's namespace, so the CLI and the library are tested
//! together and nothing touches the host's own network. Needs root and the lab tools; without
//! them the tests skip loudly, under `CI=true` they fail. Every test has its own lab, so they run
//! in parallel.

use std::time::Duration;

use natkit_lab::{CmdOutput, Host, Lab, LabChild, LabConfig, NatKind, Upnp};
use serde_json::Value;

/// How long a server probe may take to bind and print "ready".
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `natkit map add` may take to print its first mapping (probes are 1 s at most).
const MAPPED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `natkit map add` may take to remove the mapping and exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn natkit() -> &'static str {
    env!("CARGO_BIN_EXE_natkit")
}

fn lab(test: &str) -> Option<Lab> {
    if !natkit_lab::lab_or_skip(test) {
        return None;
    }
    let cfg = LabConfig::new(NatKind::Cone, NatKind::Cone).upnp(Upnp::NatA);
    let lab = Lab::up(cfg).unwrap_or_else(|e| panic!("{test}: lab up failed: {e}"));
    lab.conntrack_flush().expect("conntrack flush");
    Some(lab)
}

fn server(lab: &Lab, args: &[&str]) -> LabChild {
    let mut c = lab.spawn_probe(Host::Alice, args).expect("spawn probe");
    c.wait_for_stdout("ready", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("server on alice not ready: {e}"));
    c
}

fn gateway(lab: &Lab) -> String {
    lab.host(Host::NatA)
        .lan_ip
        .expect("router LAN address")
        .to_string()
}

fn upnp_url(lab: &Lab) -> String {
    format!("http://{}:2869/rootDesc.xml", gateway(lab))
}

/// Whether a connection (TCP) or datagram (UDP) from public2 to natA's WAN `port` reaches alice,
/// who must see public2's real address.
fn reaches_alice(lab: &Lab, udp: bool, port: u16, local_port: u16) -> bool {
    let target = format!("{}:{port}", lab.ip(Host::NatA));
    let out = if udp {
        let bind = format!("0.0.0.0:{local_port}");
        let args = [
            "udp-query",
            "--bind",
            &bind,
            "--to",
            &target,
            "--timeout",
            "1",
        ];
        lab.probe(Host::Public2, &args)
    } else {
        let args = ["tcp-connect", "--to", &target, "--timeout", "1"];
        lab.probe(Host::Public2, &args)
    }
    .expect("probe from public2");
    let public2 = lab.ip(Host::Public2).to_string();
    if out.stdout.contains(&format!("{public2}:")) {
        return true;
    }
    assert!(
        out.stdout.contains("timeout"),
        "neither forwarded nor dropped: {out:?}"
    );
    false
}

/// The mappings `upnpc -l` shows, one line each (`TCP  6100->10.0.1.2:6100 ...`).
fn upnpc_list(lab: &Lab) -> String {
    let out = lab
        .run(Host::Alice, &["upnpc", "-u", &upnp_url(lab), "-l"])
        .expect("upnpc -l");
    out.stdout
        .lines()
        .filter(|l| l.contains("->"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts `natkit --json map add ...` in alice and returns it with its first JSON event.
fn map_add(lab: &Lab, args: &[&str]) -> (LabChild, Value) {
    let mut argv = vec![natkit(), "--json", "map", "add"];
    argv.extend_from_slice(args);
    let mut child = lab.spawn(Host::Alice, &argv).expect("spawn natkit");
    child
        .wait_for_stdout("\"event\":\"created\"", MAPPED_TIMEOUT)
        .unwrap_or_else(|e| panic!("natkit map add {args:?} made no mapping: {e}"));
    let first = events(&child.stdout()).remove(0);
    (child, first)
}

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Sends SIGTERM and waits for a clean exit (the mapping removed).
fn terminate(child: LabChild) -> CmdOutput {
    let pid = child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success(), "kill -TERM {pid}");
    let out = child.wait_timeout(EXIT_TIMEOUT).expect("natkit exits");
    assert!(
        out.success(),
        "natkit map add must exit 0 on SIGTERM: {out:?}"
    );
    assert!(
        out.stdout.contains("\"event\":\"removed\""),
        "no removal reported: {out:?}"
    );
    out
}

/// One method end to end; `method` is the CLI's `--method` value.
fn method_end_to_end(test: &str, method: &str, expect: &str, udp: bool, port: u16) {
    let Some(lab) = lab(test) else {
        return;
    };
    let bind = format!("0.0.0.0:{port}");
    let _srv = if udp {
        server(&lab, &["udp-reflect", "--bind", &bind])
    } else {
        server(&lab, &["tcp-reflect", "--bind", &bind])
    };
    assert!(
        !reaches_alice(&lab, udp, port, 4100),
        "forwarded before any mapping"
    );

    let port_s = port.to_string();
    let proto = if udp { "udp" } else { "tcp" };
    let url = upnp_url(&lab);
    let mut args = vec![
        port_s.as_str(),
        "--proto",
        proto,
        "--method",
        method,
        "--lease",
        "120",
    ];
    if method == "auto" || method == "upnp" {
        args.extend(["--upnp-url", &url]);
    }
    let (child, ev) = map_add(&lab, &args);
    let wan = lab.ip(Host::NatA);
    assert_eq!(ev["method"], expect, "{ev}");
    assert_eq!(ev["protocol"], proto, "{ev}");
    assert_eq!(ev["external"], format!("{wan}:{port}"), "{ev}");
    assert_eq!(
        ev["internal"],
        format!("{}:{port}", lab.ip(Host::Alice)),
        "{ev}"
    );
    // The lab's internet is TEST-NET-3, which is not globally routable.
    assert_eq!(ev["external_is_global"], false, "{ev}");

    assert!(
        reaches_alice(&lab, udp, port, 4101),
        "the mapping does not forward"
    );
    // The real clients see the same mapping.
    let listed = upnpc_list(&lab);
    let entry = format!("{port}->{}:{port}", lab.ip(Host::Alice));
    assert!(listed.contains(&entry), "upnpc -l lacks {entry}: {listed}");
    let pmp = lab
        .run(Host::Alice, &["natpmpc", "-g", &gateway(&lab)])
        .expect("natpmpc");
    assert!(
        pmp.stdout.contains(&format!("Public IP address : {wan}")),
        "natpmpc disagrees on the external address: {pmp:?}"
    );

    terminate(child);
    lab.conntrack_flush().expect("flush");
    assert!(
        !reaches_alice(&lab, udp, port, 4102),
        "still forwarded after removal"
    );
    let listed = upnpc_list(&lab);
    assert!(
        !listed.contains(&entry),
        "upnpc -l still lists {entry}: {listed}"
    );
}

#[test]
fn pcp_maps_forwards_and_removes() {
    method_end_to_end("portmap_pcp", "pcp", "pcp", false, 6600);
}

#[test]
fn natpmp_maps_forwards_and_removes() {
    method_end_to_end("portmap_natpmp", "natpmp", "nat-pmp", true, 6601);
}

#[test]
fn upnp_maps_forwards_and_removes() {
    method_end_to_end("portmap_upnp", "upnp", "upnp", false, 6602);
}

#[test]
fn auto_picks_pcp_and_forwards() {
    method_end_to_end("portmap_auto", "auto", "pcp", false, 6603);
}

#[test]
fn probe_list_and_remove() {
    let Some(lab) = lab("portmap_probe_list") else {
        return;
    };
    let url = upnp_url(&lab);
    let probe = lab
        .run(Host::Alice, &[natkit(), "--json", "map", "probe"])
        .expect("natkit map probe");
    assert!(probe.success(), "{probe:?}");
    let report: Value = serde_json::from_str(probe.stdout.trim()).expect("one JSON object");
    assert_eq!(report["gateway"], gateway(&lab), "{report}");
    assert_eq!(report["best"], "pcp", "{report}");
    assert_eq!(report["external_ip"], lab.ip(Host::NatA).to_string());
    assert_eq!(report["external_is_global"], false);
    for m in report["methods"].as_array().expect("methods") {
        assert_eq!(m["available"], true, "{m}");
    }

    // A mapping made by upnpc, listed and removed by natkit.
    let alice = lab.ip(Host::Alice).to_string();
    let add = lab
        .run(
            Host::Alice,
            &[
                "upnpc", "-u", &url, "-a", &alice, "6604", "6604", "UDP", "600",
            ],
        )
        .expect("upnpc -a");
    assert!(add.success(), "{add:?}");
    let list = lab
        .run(
            Host::Alice,
            &[natkit(), "--json", "map", "--upnp-url", &url, "list"],
        )
        .expect("natkit map list");
    assert!(list.success(), "{list:?}");
    let entries = events(&list.stdout);
    assert!(
        entries
            .iter()
            .any(|e| e["external_port"] == 6604 && e["internal_client"] == alice.as_str()),
        "{list:?}"
    );
    let rm = lab
        .run(
            Host::Alice,
            &[
                natkit(),
                "map",
                "remove",
                "6604",
                "--proto",
                "udp",
                "--method",
                "upnp",
            ],
        )
        .expect("natkit map remove");
    assert!(rm.success(), "{rm:?}");
    assert!(
        !upnpc_list(&lab).contains("6604->"),
        "still listed after remove"
    );
}

/// Waits until `child` has printed a `renewed` (or `recreated`) event after `seen` events.
fn wait_for_event_after(child: &LabChild, seen: usize, timeout: Duration) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let evs = events(&child.stdout());
        if let Some(e) = evs
            .iter()
            .skip(seen)
            .find(|e| e["event"] == "renewed" || e["event"] == "recreated")
        {
            return e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal within {timeout:?}: {}\n{}",
            child.stdout(),
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Short lease: renewed at half-life; the router restarts (mappings lost) and the mapping
/// comes back.
fn renew_and_restart(test: &str, method: &str, port: u16) {
    let Some(lab) = lab(test) else {
        return;
    };
    let _srv = server(&lab, &["tcp-reflect", "--bind", &format!("0.0.0.0:{port}")]);
    let port_s = port.to_string();
    let url = upnp_url(&lab);
    let (child, _) = map_add(
        &lab,
        &[
            &port_s,
            "--method",
            method,
            "--lease",
            "4",
            "--upnp-url",
            &url,
        ],
    );
    let renewed = wait_for_event_after(&child, 1, Duration::from_secs(6));
    assert_eq!(
        renewed["external"],
        format!("{}:{port}", lab.ip(Host::NatA))
    );
    assert!(
        reaches_alice(&lab, false, port, 0),
        "not forwarded after renewal"
    );

    lab.restart_miniupnpd(Host::NatA)
        .expect("restart miniupnpd");
    let seen = events(&child.stdout()).len();
    let back = wait_for_event_after(&child, seen, Duration::from_secs(6));
    assert_eq!(back["external"], format!("{}:{port}", lab.ip(Host::NatA)));
    lab.conntrack_flush().expect("flush");
    assert!(
        reaches_alice(&lab, false, port, 0),
        "the mapping did not come back after the router restarted"
    );
    let entry = format!("{port}->{}:{port}", lab.ip(Host::Alice));
    assert!(
        upnpc_list(&lab).contains(&entry),
        "not listed after restart"
    );
    terminate(child);
}

#[test]
fn natpmp_lease_renews_and_survives_router_restart() {
    renew_and_restart("portmap_renew_natpmp", "natpmp", 6605);
}

#[test]
fn upnp_lease_renews_and_survives_router_restart() {
    renew_and_restart("portmap_renew_upnp", "upnp", 6606);
}

#[test]
fn secure_mode_refuses_another_hosts_address() {
    let Some(lab) = lab("portmap_secure_mode") else {
        return;
    };
    let url = upnp_url(&lab);
    let carol = lab.ip(Host::Carol).to_string();
    for (method, needle) in [
        ("upnp", "UPnP error 718"),
        ("pcp", "ADDRESS_MISMATCH"),
        ("natpmp", "another host"),
    ] {
        let out = lab
            .run(
                Host::Alice,
                &[
                    natkit(),
                    "map",
                    "--upnp-url",
                    &url,
                    "add",
                    "6607",
                    "--method",
                    method,
                    "--internal-ip",
                    &carol,
                ],
            )
            .expect("natkit map add");
        assert_eq!(out.status.code(), Some(1), "{method}: {out:?}");
        let err = out.stderr.trim();
        assert!(
            err.starts_with("natkit: error: ") && err.contains(needle) && !err.contains('\n'),
            "{method}: want one line with {needle:?}: {err:?}"
        );
    }
    assert!(
        !upnpc_list(&lab).contains("6607->"),
        "a refused mapping exists"
    );
}

#[test]
fn usage_errors_exit_2() {
    // No lab needed: clap rejects these before anything is sent.
    for args in [
        &["map", "add"][..],
        &["map", "add", "70000"],
        &["map", "add", "80", "--method", "carrier-pigeon"],
        &["map", "add", "80", "--lease", "0"],
        &["map", "remove", "80", "--proto", "sctp"],
    ] {
        let out = std::process::Command::new(natkit())
            .args(args)
            .output()
            .expect("run natkit");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("natkit: usage error: "), "{args:?}: {err}");
    }
}

#[test]
fn silent_gateway_is_a_clean_failure() {
    // Carol runs no gateway software: every probe must time out, quickly and cleanly.
    let Some(lab) = lab("portmap_silent_gateway") else {
        return;
    };
    let carol = lab.ip(Host::Carol).to_string();
    let t0 = std::time::Instant::now();
    // `natkit map --gateway <carol> --timeout-ms 300 <args>` in alice.
    let against_carol = |args: &[&str]| {
        let base = [natkit(), "map", "--gateway", &carol, "--timeout-ms", "300"];
        lab.run(Host::Alice, &[&base[..], args].concat())
    };
    let probe = against_carol(&["probe"]).expect("natkit map probe");
    assert_eq!(probe.status.code(), Some(1), "{probe:?}");
    assert!(probe.stdout.contains("pcp:     no"), "{probe:?}");
    assert!(
        probe.stderr.trim().starts_with("natkit: error: ") && !probe.stderr.trim().contains('\n'),
        "{probe:?}"
    );
    let add = against_carol(&["add", "6610"]).expect("natkit map add");
    assert_eq!(add.status.code(), Some(1), "{add:?}");
    assert!(add.stderr.contains("speaks none"), "{add:?}");
    // Two runs, each bounded by one probe timeout (plus process start).
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}
