//! Shared by the interop tests: the libtorrent driver (`tests/libtorrent_peer.py`, run with
//! Debian's `/usr/bin/python3`) and the skip-or-fail policy when it cannot run.
//!
//! Not every test file uses every helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use natkit_dht::Id;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The only interpreter that can `import libtorrent` (Debian's python3-libtorrent).
pub const PYTHON: &str = "/usr/bin/python3";

/// Longest wait for one driver answer: its own waits are bounded by 10 s.
pub const DRIVER_REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for the driver's `ready` line (it links its nodes within 10 s).
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The driver ends itself after this many seconds whatever happens.
const DRIVER_MAX_SECONDS: &str = "240";

fn driver_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/libtorrent_peer.py").to_owned()
}

/// Whether the environment asks for hard failures instead of skips (`CI=true` or `CI=1`).
pub use natkit_lab::in_ci;

fn libtorrent_missing() -> Option<String> {
    match std::process::Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`{PYTHON} -c 'import libtorrent'` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {PYTHON}: {e}")),
    }
}

/// Call first in every libtorrent test. `true` when libtorrent can run; otherwise outside CI a
/// loud SKIP on stderr and `false`, and under `CI=true` a panic (a CI run that skipped the
/// interop tests would prove nothing).
pub fn libtorrent_or_skip(test: &str) -> bool {
    let Some(why) = libtorrent_missing() else {
        return true;
    };
    if in_ci() {
        panic!(
            "libtorrent interop test `{test}` cannot run under CI=true: {why} (install python3-libtorrent)"
        );
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
    let msg = format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED libtorrent interop test `{test}`: {why}\n\
         !!! (apt-get install python3-libtorrent; CI=true turns this into a failure)\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    let _ = std::io::stderr().write_all(msg.as_bytes());
    false
}

/// libtorrent nodes on 127.0.0.1, run by the driver. Killed when dropped.
pub struct Libtorrent {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Their UDP (DHT) ports, by node index.
    pub ports: Vec<u16>,
}

/// One `ok key=value ...` answer.
pub type Reply = HashMap<String, String>;

impl Libtorrent {
    /// Starts `n` linked libtorrent nodes.
    pub async fn start(n: usize) -> Libtorrent {
        let mut child = Command::new(PYTHON)
            .arg(driver_script())
            .args([
                "--nodes",
                &n.to_string(),
                "--max-seconds",
                DRIVER_MAX_SECONDS,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the libtorrent driver");
        let stdin = child.stdin.take().expect("driver stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("driver stdout")).lines();
        let ready = tokio::time::timeout(DRIVER_START_TIMEOUT, lines.next_line())
            .await
            .expect("the libtorrent driver did not get ready in time")
            .expect("read the driver")
            .expect("the libtorrent driver ended before `ready`");
        let ports: Vec<u16> = ready
            .strip_prefix("ready")
            .unwrap_or_else(|| panic!("driver said {ready:?}"))
            .split_whitespace()
            .map(|p| p.parse().expect("port"))
            .collect();
        assert_eq!(ports.len(), n, "driver said {ready:?}");
        Libtorrent {
            child,
            stdin,
            lines,
            ports,
        }
    }

    /// The UDP address of node `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// Sends one command line; the reply's fields, or `Err` with the driver's error message.
    pub async fn try_cmd(&mut self, line: &str) -> Result<Reply, String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the driver");
        self.stdin.flush().await.expect("flush to the driver");
        let answer = tokio::time::timeout(DRIVER_REPLY_TIMEOUT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no driver answer to {line:?} in time"))
            .expect("read the driver")
            .unwrap_or_else(|| panic!("the driver ended at {line:?}"));
        if let Some(err) = answer.strip_prefix("err ") {
            return Err(err.to_owned());
        }
        let fields = answer
            .strip_prefix("ok")
            .unwrap_or_else(|| panic!("driver said {answer:?} to {line:?}"));
        Ok(fields
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Like [`Libtorrent::try_cmd`], panicking on an error answer.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        match self.try_cmd(line).await {
            Ok(r) => r,
            Err(e) => panic!("driver command {line:?} failed: {e}"),
        }
    }

    /// The node ids, by index.
    pub async fn ids(&mut self) -> Vec<Id> {
        let r = self.cmd("ids").await;
        list(&r["ids"]).iter().map(|h| id_from_hex(h)).collect()
    }

    /// The ids in node `i`'s routing table (its live nodes).
    pub async fn routing_table(&mut self, i: usize) -> Vec<(Id, u16)> {
        let r = self.cmd(&format!("routing_table {i}")).await;
        list(&r["nodes"])
            .iter()
            .map(|n| {
                let (h, p) = n.split_once(':').expect("id:port");
                (id_from_hex(h), p.parse().expect("port"))
            })
            .collect()
    }

    /// Polls node `i`'s routing table until `done` holds for it (or `timeout` passes); the
    /// last table seen.
    pub async fn routing_table_until(
        &mut self,
        i: usize,
        timeout: Duration,
        done: impl Fn(&[(Id, u16)]) -> bool,
    ) -> Vec<(Id, u16)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let table = self.routing_table(i).await;
            if done(&table) || tokio::time::Instant::now() >= deadline {
                return table;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the driver (politely, then by force).
    pub async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A comma-separated list (`-` is empty).
pub fn list(v: &str) -> Vec<&str> {
    if v == "-" || v.is_empty() {
        Vec::new()
    } else {
        v.split(',').collect()
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex (test input only).
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// An id from 40 hex digits.
pub fn id_from_hex(s: &str) -> Id {
    Id(unhex(s).try_into().expect("20-byte id"))
}

/// A `mainline` DHT node on 127.0.0.1 only: a free port, server mode (it answers queries), and
/// either no bootstrap at all or the one loopback node given (never its public routers).
pub fn mainline_node(bootstrap: Option<SocketAddr>) -> mainline::async_dht::AsyncDht {
    let mut b = mainline::Dht::builder();
    b.bind_address(std::net::Ipv4Addr::LOCALHOST)
        .port(0)
        .server_mode();
    match bootstrap {
        Some(addr) => b.bootstrap(&[addr.to_string()]),
        None => b.no_bootstrap(),
    };
    b.build().expect("mainline node").as_async()
}
