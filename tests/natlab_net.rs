//! natkit connections through real Linux NAT (the NAT lab): a node behind a
//! NAT connects out to a public node, lines flow, and the observed address it
//! learns from the handshake is its NAT's public address (port preserved by a
//! cone NAT, random behind a symmetric one, the outer NAT's behind two).
//!
//! Needs root and the lab tools; skips loudly without them, fails under CI=true.

use std::net::SocketAddrV4;
use std::time::Duration;

use natkit_lab::{Host, Lab, LabConfig, NatKind};

mod common;
use common::{build_examples, example};

fn dial(lab: &Lab, from: Host, listen_port: u16, to: &str, id: &str) -> (SocketAddrV4, String) {
    let dialer = example("line_dialer");
    let listen = format!("0.0.0.0:{listen_port}");
    let out = lab
        .run_timeout(
            from,
            &[
                dialer.to_str().unwrap(),
                "--listen",
                &listen,
                "--show-observed",
                to,
                id,
                "hello through the NAT",
            ],
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("dialer on {from}: {e}"));
    assert!(out.success(), "dialer on {from} failed: {out:?}");
    let mut lines = out.stdout.lines();
    let observed = lines
        .next()
        .and_then(|l| l.strip_prefix("observed "))
        .unwrap_or_else(|| panic!("no observed address from {from}: {out:?}"))
        .parse()
        .unwrap();
    (observed, lines.next().unwrap_or_default().to_string())
}

#[test]
fn connections_through_cone_symmetric_and_double_nat_learn_their_public_address() {
    if !natkit_lab::lab_or_skip("connections_through_nat") {
        return;
    }
    build_examples();
    let lab = Lab::up(LabConfig::new(NatKind::Cone, NatKind::Symmetric)).expect("lab up");
    lab.conntrack_flush().unwrap();

    let listener = example("line_listener");
    let mut server = lab
        .spawn(
            Host::Rendezvous,
            &[listener.to_str().unwrap(), "0.0.0.0:7000"],
        )
        .expect("spawn listener");
    server
        .wait_for_stdout("listening", Duration::from_secs(10))
        .expect("listener up");
    let first = server.stdout();
    let id = first
        .split_whitespace()
        .nth(2)
        .expect("listening <addr> <id>")
        .to_string();
    let to = format!("{}:7000", lab.ip(Host::Rendezvous));

    // Cone (masquerade): port-preserving, so the observed address is natA's
    // public IP with our own listen port.
    let (seen, echo) = dial(&lab, Host::Alice, 40_000, &to, &id);
    assert_eq!(echo, "echo: hello through the NAT");
    assert_eq!(*seen.ip(), lab.host(Host::Alice).public_ip);
    assert_eq!(*seen.ip(), lab.ip(Host::NatA));
    assert_eq!(seen.port(), 40_000, "a cone NAT keeps the source port");

    // Symmetric: natB's public IP, a random port.
    let (seen, echo) = dial(&lab, Host::Bob, 40_001, &to, &id);
    assert_eq!(echo, "echo: hello through the NAT");
    assert_eq!(*seen.ip(), lab.ip(Host::NatB));

    // Two NATs: the carrier NAT's address is what the world sees.
    let (seen, echo) = dial(&lab, Host::Dave, 40_002, &to, &id);
    assert_eq!(echo, "echo: hello through the NAT");
    assert_eq!(*seen.ip(), lab.host(Host::Dave).public_ip);
    assert_eq!(*seen.ip(), lab.ip(Host::Cgnat));

    let _ = server.kill();
}
