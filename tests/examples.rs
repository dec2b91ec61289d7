//! The examples run as a user would run them, and the dead-peer check against
//! a real stopped process (SIGSTOP).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use natkit::identity::Keypair;
use natkit::net::{CloseReason, Net, NetConfig, NetEvent};

mod common;
use common::{build_examples, example};

struct Listener {
    child: Child,
    addr: String,
    id: String,
    out: BufReader<std::process::ChildStdout>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_listener(extra: &[&str]) -> Listener {
    let mut child = Command::new(example("line_listener"))
        .arg("127.0.0.1:0")
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let mut parts = first.split_whitespace();
    assert_eq!(parts.next(), Some("listening"), "{first}");
    let addr = parts.next().unwrap().to_string();
    let id = parts.next().unwrap().to_string();
    Listener {
        child,
        addr,
        id,
        out,
    }
}

#[test]
fn listener_and_dialer_exchange_lines() {
    build_examples();
    let mut l = start_listener(&[]);
    let out = Command::new(example("line_dialer"))
        .args([&l.addr, &l.id, "hello", "wörld", "quit"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers = String::from_utf8(out.stdout).unwrap();
    assert_eq!(answers, "echo: hello\necho: wörld\necho: quit\n");
    // The listener printed what it got and exits on "quit".
    let mut seen = String::new();
    for _ in 0..3 {
        l.out.read_line(&mut seen).unwrap();
    }
    assert!(
        seen.contains(": hello") && seen.contains(": quit"),
        "{seen}"
    );
    let status = l.child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn dialer_refuses_a_listener_with_another_key() {
    build_examples();
    let l = start_listener(&[]);
    let other = Keypair::generate().unwrap().node_id().to_string();
    let out = Command::new(example("line_dialer"))
        .args([&l.addr, &other, "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: handshake") && err.contains("not the expected"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stopped_process_is_detected_as_dead() {
    build_examples();
    let l = start_listener(&["--ping-after-ms", "200", "--dead-after-ms", "1000"]);
    let net = Net::bind(
        Keypair::generate().unwrap(),
        NetConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ping_after: Duration::from_millis(200),
            dead_after: Duration::from_millis(1000),
            ..NetConfig::default()
        },
    )
    .await
    .unwrap();
    let _ = net.events();
    let con = net
        .connect(l.addr.parse().unwrap(), l.id.parse().unwrap())
        .await
        .unwrap();
    con.send("are you there").await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), con.recv())
            .await
            .unwrap()
            .as_deref(),
        Some("echo: are you there")
    );
    // Alive and idle for longer than dead_after: keepalives keep it up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!con.is_closed(), "an idle but alive peer was dropped");
    // Freeze the process: the kernel still ACKs, but nobody answers pings.
    let pid = l.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(5), net.next_event())
            .await
            .unwrap()
        {
            Some(NetEvent::Disconnected { reason, .. }) => break reason,
            Some(_) => {}
            None => panic!("shut down"),
        }
    };
    assert_eq!(reason, CloseReason::DeadPeer);
    net.shutdown().await;
}
