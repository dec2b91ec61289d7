//! `natkit demo --lab`: the demo across two real NATs, in the NAT lab
//! (docs/natlab.md; root and the lab tools).
//!
//! It builds a lab with two port-preserving (`cone`) NATs and 20 ms one-way
//! delay on each router's WAN link, then runs this same program in three of
//! its hosts: `bootstrap-node` on the public `rendezvous` host, `run --echo`
//! as alice behind natA (until she is reachable by id), and `connect <alice's
//! node id>` as bob behind natB with one line on stdin. Bob's connect finds
//! alice in the DHT and punches through both NATs; alice's node echoes the
//! line. It prints alice's UNL, the path and timings bob reported, and the
//! lines each side got, then tears the lab down. It runs from a source
//! checkout (the lab script is found there).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use natkit_lab::{Host, Lab, LabChild, LabConfig, NatKind};
use serde_json::json;

use super::Cli;

/// One-way delay on each WAN link.
const DELAY_MS: u32 = 20;
/// The bootstrap node's port.
const BOOT_PORT: u16 = 4000;
/// Alice's and bob's ports.
const ALICE_PORT: u16 = 41_000;
const BOB_PORT: u16 = 42_000;
/// Bob's line.
const HELLO: &str = "hello alice, this is bob behind natB";
/// How long each side may take to start and to connect.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

/// Runs `natkit demo --lab`.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    if !cli.bootstrap.is_empty() || cli.port.is_some() {
        return super::usage(
            "natkit demo --lab picks its own addresses; it takes no --bootstrap or --port",
        );
    }
    natkit_lab::prerequisites()
        .context("natkit demo --lab needs the NAT lab (see docs/natlab.md)")?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let keys = KeyDir::new()?;
    let lab = Lab::up(LabConfig::new(NatKind::Cone, NatKind::Cone).delay_ms(DELAY_MS))
        .context("cannot build the NAT lab")?;
    let r = demo(cli.json, &lab, &exe, &keys.0);
    if let Err(e) = lab.down() {
        eprintln!("warning: tearing the lab down: {e}");
    }
    r
}

/// A private directory for the three key files, removed at the end.
struct KeyDir(PathBuf);

impl KeyDir {
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("natkit-demo-lab-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(KeyDir(dir))
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn say(json: bool, obj: serde_json::Value, text: String) {
    if json {
        println!("{obj}");
    } else {
        println!("{text}");
    }
}

fn wait_ready(child: &mut LabChild, who: &str) -> anyhow::Result<serde_json::Value> {
    child
        .wait_for_stdout("\"event\":\"ready\"", STEP_TIMEOUT)
        .with_context(|| format!("{who} did not start: {}", child.stderr().trim()))?;
    let line = child
        .stdout()
        .lines()
        .find(|l| l.contains("\"event\":\"ready\""))
        .map(str::to_owned)
        .unwrap_or_default();
    serde_json::from_str(&line).with_context(|| format!("{who} printed a bad ready line: {line}"))
}

fn demo(json: bool, lab: &Lab, exe: &Path, keys: &Path) -> anyhow::Result<()> {
    let exe = exe.to_str().context("this program's path is not UTF-8")?;
    let key = |name: &str| keys.join(name).to_string_lossy().into_owned();
    let boot_ip = lab.ip(Host::Rendezvous).to_string();
    let boot = format!("{boot_ip}:{BOOT_PORT}");
    say(
        json,
        json!({"step": "lab", "name": lab.name(), "nat_a": "cone", "nat_b": "cone", "delay_ms": DELAY_MS}),
        format!(
            "lab {}: alice behind natA (cone), bob behind natB (cone), {DELAY_MS} ms one-way delay per WAN link",
            lab.name()
        ),
    );

    let (boot_key, boot_port) = (key("boot.key"), BOOT_PORT.to_string());
    let mut bootstrap = lab.spawn(
        Host::Rendezvous,
        &[
            exe,
            "--key",
            &boot_key,
            "--port",
            &boot_port,
            "--json",
            "bootstrap-node",
            "--bind",
            &boot_ip,
        ],
    )?;
    wait_ready(&mut bootstrap, "the bootstrap node")?;
    say(
        json,
        json!({"step": "bootstrap", "addr": boot}),
        format!("bootstrap node on {boot} (the lab's public host)"),
    );

    let (alice_key, alice_port) = (key("alice.key"), ALICE_PORT.to_string());
    let mut alice = lab.spawn(
        Host::Alice,
        &[
            exe,
            "--key",
            &alice_key,
            "--port",
            &alice_port,
            "--bootstrap",
            &boot,
            "--json",
            "run",
            "--echo",
        ],
    )?;
    let ready = wait_ready(&mut alice, "alice")?;
    let alice_id = ready["id"].as_str().unwrap_or_default().to_owned();
    say(
        json,
        json!({"step": "alice", "id": alice_id, "unl": ready["unl"]}),
        format!(
            "alice ({}) is reachable by id; her UNL:\n  {}",
            lab.ip(Host::Alice),
            ready["unl"].as_str().unwrap_or_default()
        ),
    );

    // Bob's stdin: one line, then 2 s for him to start, connect and get
    // alice's echo back (about 1.5 s here) before his stdin ends.
    let (bob_key, bob_port) = (key("bob.key"), BOB_PORT.to_string());
    let script = format!(
        "(echo '{HELLO}'; sleep 2) | '{exe}' --key '{bob_key}' --port {bob_port} --bootstrap {boot} connect {alice_id}"
    );
    let bob = lab
        .spawn(Host::Bob, &["sh", "-c", &script])?
        .wait_timeout(STEP_TIMEOUT)
        .context("bob did not finish")?;
    let connected = bob
        .stderr
        .lines()
        .find(|l| l.starts_with("connected to "))
        .map(str::to_owned);
    let Some(connected) = connected.filter(|_| bob.success()) else {
        bail!("bob could not connect to alice: {}", bob.stderr.trim());
    };
    say(
        json,
        json!({"step": "bob", "connected": connected}),
        format!(
            "bob ({}) connected to alice by node id: {}",
            lab.ip(Host::Bob),
            connected.trim_start_matches("connected to ")
        ),
    );
    let alice_out = alice.kill()?;
    let got = alice_out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "line")
        .and_then(|v| v["line"].as_str().map(str::to_owned));
    let echoed = bob.stdout.lines().any(|l| l == HELLO);
    match got {
        Some(line) if line == HELLO && echoed => {}
        _ => bail!(
            "the lines did not go both ways (alice got {got:?}; bob got {:?})\n--- alice:\n{}\n--- bob:\n{}",
            bob.stdout.trim(),
            alice_out.stderr,
            bob.stderr
        ),
    }
    say(
        json,
        json!({"step": "lines", "alice_got": HELLO, "bob_got": HELLO}),
        format!("alice got {HELLO:?} and echoed it; bob got it back"),
    );
    drop(bootstrap);
    Ok(())
}
