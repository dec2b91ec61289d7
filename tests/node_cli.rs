//! `natkit bootstrap-node`, `natkit run` and `natkit connect` on loopback: a
//! bootstrap node, a `run` node that prints what it receives, and `connect`
//! by node id and by UNL feeding it lines from stdin; failures and usage
//! errors.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use natkit::Node;
use natkit::net::NetEvent;

mod common;
use common::natkit;

/// Longest wait for one line or one exit (loopback takes milliseconds; a
/// lookup that misses ends within the node's lookup timeout).
const WAIT: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// A natkit process, killed when dropped (also when a test fails). Its stdout
/// lines arrive through a thread, so that reading one can time out.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(key: &Path, args: &[&str], stdin: Stdio) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_natkit"))
            .args(args)
            .env("NATKIT_KEY", key)
            .env_remove("RUST_LOG")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next stdout line as JSON.
    fn event(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .expect("no line from natkit in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Waits for the exit (at most [`WAIT`]); returns the code and stderr.
    fn wait(&mut self) -> (Option<i32>, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < WAIT, "natkit did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err);
        (status.code(), err.trim().to_string())
    }

    /// The next stdout line, raw.
    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("no line from natkit in time")
    }

    /// Sends `signal` and waits for the exit; returns the code.
    fn stop(&mut self, signal: libc::c_int) -> Option<i32> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        self.wait().0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key file in `dir`, created now (so that no process says it created one)
/// and its node id.
fn make_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let o = natkit(&path, &["showid"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    (path, text(&o.stdout))
}

/// A bootstrap node and a `run` node joined through it: (bootstrap, its
/// address, run node, its ready event).
fn network(dir: &Path) -> (Proc, String, Proc, serde_json::Value) {
    let (boot_key, boot_id) = make_key(dir, "boot.key");
    let mut boot = Proc::spawn(
        &boot_key,
        &["--json", "bootstrap-node", "--bind", "127.0.0.1"],
        Stdio::null(),
    );
    let ready = boot.event();
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["id"], boot_id.as_str());
    assert!(ready["unl"].as_str().unwrap().starts_with("nk"), "{ready}");
    let addr = ready["addr"].as_str().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(ready["relay"].is_null(), "relaying is opt-in: {ready}");

    let (run_key, run_id) = make_key(dir, "run.key");
    let mut run = Proc::spawn(
        &run_key,
        &["--bootstrap", &addr, "--json", "run", "--bind", "127.0.0.1"],
        Stdio::null(),
    );
    let ready = run.event();
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["id"], run_id.as_str());
    // Reachable on loopback: no relay needed, none reserved.
    assert_eq!(ready["relays"], serde_json::json!([]), "{ready}");
    (boot, addr, run, ready)
}

/// `connect` with `lines` on stdin; returns its exit code, stderr, stdout.
fn connect(key: &Path, bootstrap: &str, target: &str, lines: &[String]) -> (Option<i32>, String) {
    let mut p = Proc::spawn(
        key,
        &[
            "--bootstrap",
            bootstrap,
            "connect",
            target,
            "--bind",
            "127.0.0.1",
        ],
        Stdio::piped(),
    );
    let mut stdin = p.child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin); // end of stdin: connect flushes, closes and exits
    p.wait()
}

/// The run node's events for one connection from `from`: connected
/// (inbound), the lines (returned), disconnected.
fn lines_at_run(run: &mut Proc, from: &str) -> Vec<String> {
    let ev = run.event();
    assert_eq!(ev["event"], "connected", "{ev}");
    assert_eq!(ev["id"], from);
    assert_eq!(ev["direction"], "inbound");
    assert!(
        ev["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ev}"
    );
    let mut got = Vec::new();
    loop {
        let ev = run.event();
        match ev["event"].as_str().unwrap() {
            "line" => {
                assert_eq!(ev["from"], from, "{ev}");
                got.push(ev["line"].as_str().unwrap().to_string());
            }
            "disconnected" => {
                assert_eq!(ev["id"], from, "{ev}");
                assert!(ev["reason"].is_string(), "{ev}");
                return got;
            }
            other => panic!("unexpected event {other}: {ev}"),
        }
    }
}

#[test]
fn connect_by_node_id_sends_stdin_lines_to_a_run_node() {
    let dir = tempfile::tempdir().unwrap();
    let (mut boot, addr, mut run, ready) = network(dir.path());
    let run_id = ready["id"].as_str().unwrap();

    let (key, id) = make_key(dir.path(), "alice.key");
    let lines: Vec<String> = ["hello", "", "tab\there \x1b[31m", "last"]
        .map(String::from)
        .to_vec();
    let (code, err) = connect(&key, &addr, run_id, &lines);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("connected to {run_id} over lan 127.0.0.1:")),
        "{err}"
    );
    assert!(err.contains(" ms (lookup "), "{err}");
    assert_eq!(lines_at_run(&mut run, &id), lines);

    // Both long-running commands end cleanly on a signal.
    assert_eq!(run.stop(libc::SIGTERM), Some(0));
    assert_eq!(boot.stop(libc::SIGINT), Some(0));
}

#[test]
fn connect_by_unl_flushes_every_line_in_order_before_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, addr, mut run, ready) = network(dir.path());
    let unl = ready["unl"].as_str().unwrap();

    let (key, id) = make_key(dir.path(), "bob.key");
    let lines: Vec<String> = (0..2000)
        .map(|i| format!("line {i} {}", "x".repeat(i % 300)))
        .collect();
    let (code, err) = connect(&key, &addr, unl, &lines);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.starts_with(&format!(
            "connected to {} over lan",
            ready["id"].as_str().unwrap()
        )),
        "{err}"
    );
    assert!(!err.contains("lookup"), "a UNL needs no lookup: {err}");
    assert_eq!(lines_at_run(&mut run, &id), lines);
}

#[test]
fn connect_prints_the_peers_lines_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, addr, _run, _) = network(dir.path());
    // A peer that answers: an echo node in this process, joined through the
    // bootstrap node, its UNL published.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = rt.block_on(async {
        let node = Node::builder()
            .bind_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .bootstrap(&[addr.parse().unwrap()])
            .build()
            .await
            .unwrap();
        if node.published_seq().is_none() {
            node.publish().await.unwrap();
        }
        node
    });
    let mut events = Box::pin(echo.events());
    rt.spawn(async move {
        while let Some(ev) = events.next().await {
            if let NetEvent::Line(con, line) = ev {
                let _ = con.send(&format!("echo: {line}")).await;
            }
        }
    });

    let (key, _) = make_key(dir.path(), "dave.key");
    let mut p = Proc::spawn(
        &key,
        &[
            "--bootstrap",
            &addr,
            "connect",
            &echo.id().to_string(),
            "--bind",
            "127.0.0.1",
        ],
        Stdio::piped(),
    );
    let mut stdin = p.child.stdin.take().unwrap();
    // Raw on stdout: what the peer sent, exactly, one line each.
    for line in ["one", "two \x1b[1m", ""] {
        writeln!(stdin, "{line}").unwrap();
        assert_eq!(p.line(), format!("echo: {line}"));
    }
    drop(stdin);
    let (code, err) = p.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.starts_with(&format!("connected to {} over lan", echo.id())),
        "{err}"
    );
    rt.block_on(echo.shutdown());
}

#[test]
fn connect_to_an_unknown_node_id_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, addr, _run, _) = network(dir.path());
    let (key, _) = make_key(dir.path(), "carol.key");
    let (_, nobody) = make_key(dir.path(), "nobody.key"); // never started
    let (code, err) = connect(&key, &addr, &nobody, &["hi".into()]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("natkit: error: "), "{err}");
    assert!(err.contains(&nobody), "{err}");
}

/// A usage error: exit 2, one line on stderr, nothing on stdout.
fn assert_usage_error(o: &Output, what: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(err.starts_with("natkit: usage error: "), "{what}: {err}");
    assert!(o.stdout.is_empty(), "{what}");
}

#[test]
fn usage_errors_come_before_any_network_work() {
    let dir = tempfile::tempdir().unwrap();
    // Not created: a usage error must not even create the key file.
    let key = dir.path().join("never.key");
    // A closed port: nothing listens there, and nothing is sent to it.
    let boot = "127.0.0.1:9";
    let (_, id) = make_key(dir.path(), "other.key");
    let cases: &[(&str, &[&str])] = &[
        (
            "malformed target",
            &["--bootstrap", boot, "connect", "not-a-target"],
        ),
        (
            "DHT id as target",
            &[
                "--bootstrap",
                boot,
                "connect",
                "0123456789abcdef0123456789abcdef01234567",
            ],
        ),
        ("connect without --bootstrap", &["connect", id.as_str()]),
        ("run without --bootstrap", &["run"]),
        (
            "bootstrap-node with --bootstrap",
            &["--bootstrap", boot, "bootstrap-node"],
        ),
        ("IPv6 bind", &["--bootstrap", boot, "run", "--bind", "::1"]),
    ];
    for (what, args) in cases {
        assert_usage_error(&natkit(&key, args), what);
    }
    assert!(!key.exists());
}

#[test]
fn a_bootstrap_node_relays_when_asked_on_the_port_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = make_key(dir.path(), "relay.key");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = port.to_string();
    let mut boot = Proc::spawn(
        &key,
        &[
            "--json",
            "bootstrap-node",
            "--bind",
            "127.0.0.1",
            "--relay",
            "--relay-port",
            &port,
        ],
        Stdio::null(),
    );
    let ready = boot.event();
    assert_eq!(ready["event"], "ready", "{ready}");
    let relay = ready["relay"].as_str().expect("the relay's address");
    assert_eq!(relay, format!("127.0.0.1:{port}"));
    // A relay serves reservations there.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let me = natkit::identity::Keypair::from_seed([7; 32]);
        let client = natkit::relay::RelayClient::bind(me, "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        let (session, _) = client.open(relay.parse().unwrap()).await.unwrap();
        let r = session.reserve().await.unwrap();
        assert_eq!(r.limits, natkit::relay::RelayLimits::default().circuit());
        assert_eq!(r.ttl.as_secs(), 3600);
        client.shutdown().await;
    });
}

#[test]
fn unl_prints_this_nodes_own_unl() {
    let dir = tempfile::tempdir().unwrap();
    let (_boot, addr, _run, _) = network(dir.path());
    let (key, id) = make_key(dir.path(), "me.key");
    // Joined: published, with the address the DHT saw and a rendezvous point.
    let o = natkit(
        &key,
        &[
            "--bootstrap",
            &addr,
            "--json",
            "unl",
            "show",
            "--bind",
            "127.0.0.1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["published"], true);
    let unl: natkit::unl::Unl = v["unl"].as_str().unwrap().parse().unwrap();
    assert_eq!(unl.node_id.to_string(), id);
    assert!(unl.verify().unwrap(), "signed");
    assert!(!unl.rendezvous.is_empty(), "{unl:?}");
    assert!(
        unl.addrs
            .iter()
            .any(|c| c.source == natkit::unl::AddrSource::Observed),
        "{unl:?}"
    );
    // Alone: its LAN address only, printed as the bare UNL text.
    let o = natkit(&key, &["unl", "show", "--bind", "127.0.0.1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let unl: natkit::unl::Unl = text(&o.stdout).parse().unwrap();
    assert_eq!(unl.addrs.len(), 1, "{unl:?}");
    assert!(unl.rendezvous.is_empty());
}
