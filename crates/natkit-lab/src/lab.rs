//! A running lab: build it with [`Lab::up`], use it, and let `Drop` tear it down.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{CmdOutput, LabChild, describe};
use crate::{Host, HostInfo, LabConfig, LabError, PYTHON, probe_path, script_path};

/// Where `natlab.sh` keeps per-lab state (owner pid, topology, hosts file, daemon logs).
pub const STATE_ROOT: &str = "/run/natkit-lab";

/// Time limit for `natlab.sh up`. A lab builds in ~1 s; miniupnpd's start-up STUN test can take
/// up to 3 s more; the script's own waits are bounded below this.
pub const UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Time limit for `natlab.sh down` and `gc` (the script gives processes 0.5 s before KILL).
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Default time limit for [`Lab::run`]. Probes bound their own waits to a few seconds.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// Labs built by this process so far; part of each lab's unique name.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A lab of network namespaces built by `scripts/natlab.sh`.
///
/// Dropping it tears the lab down (also while unwinding from a failed assertion). If the process
/// is killed instead, the next [`Lab::up`] in any process removes the orphaned lab (its owner pid
/// is dead).
#[derive(Debug)]
pub struct Lab {
    name: String,
    config: LabConfig,
    hosts: Vec<HostInfo>,
}

fn script_cmd() -> Command {
    Command::new(script_path())
}

/// Runs a command to completion with a timeout, collecting its output.
pub(crate) fn run_command(cmd: Command, timeout: Duration) -> Result<CmdOutput, LabError> {
    LabChild::start(cmd)?.wait_timeout(timeout)
}

fn run_script(cmd: Command, timeout: Duration) -> Result<CmdOutput, LabError> {
    let text = describe(&cmd);
    let out = run_command(cmd, timeout)?;
    if out.success() {
        Ok(out)
    } else {
        Err(LabError::Script {
            cmd: text,
            status: out.status.to_string(),
            stderr: out.stderr,
        })
    }
}

/// Removes labs whose owner process has died (e.g. a test run killed half-way).
pub fn gc() -> Result<(), LabError> {
    let mut cmd = script_cmd();
    cmd.arg("gc");
    run_script(cmd, DOWN_TIMEOUT).map(|_| ())
}

impl Lab {
    /// Builds a lab with a name unique to this process and call, after removing dead labs.
    pub fn up(config: LabConfig) -> Result<Lab, LabError> {
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("nk{}x{}", std::process::id(), n);
        Lab::up_named(&name, config)
    }

    /// Builds a lab with an explicit name (1–20 of `[A-Za-z0-9_]`). An existing lab of that name
    /// is removed first.
    pub fn up_named(name: &str, config: LabConfig) -> Result<Lab, LabError> {
        gc()?;
        let mut cmd = script_cmd();
        cmd.args([
            "--name",
            name,
            "up",
            config.nat_a.as_str(),
            config.nat_b.as_str(),
        ])
        .args(["--delay", &config.delay_ms.to_string()])
        .args(["--upnp", config.upnp.as_str()])
        .args(["--owner", &std::process::id().to_string()]);
        // From here on the guard owns the lab: a failed `up` or hosts file still gets torn down.
        let mut lab = Lab {
            name: name.to_owned(),
            config,
            hosts: Vec::new(),
        };
        run_script(cmd, UP_TIMEOUT)?;
        lab.hosts = parse_hosts(&lab.state_dir().join("hosts"))?;
        Ok(lab)
    }

    /// The lab's name; its namespaces are `<name>-<host>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topology it was built with.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// The lab's state directory (miniupnpd configs and logs live there).
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.name)
    }

    /// Namespace and addresses of a host.
    pub fn host(&self, h: Host) -> &HostInfo {
        // `parse_hosts` guarantees one entry per `Host::ALL` element, in that order.
        &self.hosts[h.index()]
    }

    /// Shorthand for `self.host(h).ip`.
    pub fn ip(&self, h: Host) -> Ipv4Addr {
        self.host(h).ip
    }

    /// The `ip netns exec` command for `argv` inside host `h` (not started).
    pub fn command(&self, h: Host, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(h).netns]).args(argv);
        cmd
    }

    /// Runs `argv` inside host `h` to completion ([`RUN_TIMEOUT`]). A non-zero exit is not an
    /// error: look at [`CmdOutput::status`].
    pub fn run(&self, h: Host, argv: &[&str]) -> Result<CmdOutput, LabError> {
        self.run_timeout(h, argv, RUN_TIMEOUT)
    }

    /// Like [`Lab::run`] with an explicit time limit.
    pub fn run_timeout(
        &self,
        h: Host,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<CmdOutput, LabError> {
        run_command(self.command(h, argv), timeout)
    }

    /// Starts `argv` inside host `h` in the background.
    pub fn spawn(&self, h: Host, argv: &[&str]) -> Result<LabChild, LabError> {
        LabChild::start(self.command(h, argv))
    }

    /// Runs `scripts/lab/probe.py <args>` inside host `h` to completion.
    pub fn probe(&self, h: Host, args: &[&str]) -> Result<CmdOutput, LabError> {
        let probe = probe_path();
        let probe = probe.to_string_lossy();
        let mut argv = vec![PYTHON, probe.as_ref()];
        argv.extend_from_slice(args);
        self.run(h, &argv)
    }

    /// Starts `scripts/lab/probe.py <args>` inside host `h` in the background.
    pub fn spawn_probe(&self, h: Host, args: &[&str]) -> Result<LabChild, LabError> {
        let probe = probe_path();
        let probe = probe.to_string_lossy();
        let mut argv = vec![PYTHON, probe.as_ref()];
        argv.extend_from_slice(args);
        self.spawn(h, &argv)
    }

    /// Empties the conntrack table of every router, so no entry from an earlier flow can make a
    /// test pass or fail by accident.
    pub fn conntrack_flush(&self) -> Result<(), LabError> {
        for h in Host::ALL.into_iter().filter(|h| h.is_router()) {
            let out = self.run(h, &["conntrack", "-F"])?;
            if !out.success() {
                return Err(LabError::Script {
                    cmd: format!("conntrack -F in {h}"),
                    status: out.status.to_string(),
                    stderr: out.stderr,
                });
            }
        }
        Ok(())
    }

    /// Restarts miniupnpd in `router` ([`Host::NatA`] or [`Host::NatB`]) like a router reboot:
    /// stops it, empties its forwarding chains, conntrack table and lease file, starts it again
    /// and waits until it answers NAT-PMP (`natlab.sh miniupnpd-restart`).
    pub fn restart_miniupnpd(&self, router: Host) -> Result<(), LabError> {
        let mut cmd = script_cmd();
        cmd.args([
            "--name",
            &self.name,
            "miniupnpd-restart",
            &router.to_string(),
        ]);
        run_script(cmd, UP_TIMEOUT).map(|_| ())
    }

    /// Stops miniupnpd in `router` ([`Host::NatA`] or [`Host::NatB`]) like a router whose
    /// UPnP/NAT-PMP/PCP service went away: its forwardings, conntrack table and lease file are
    /// gone (`natlab.sh miniupnpd-stop`); [`Lab::start_miniupnpd`] starts it again.
    pub fn stop_miniupnpd(&self, router: Host) -> Result<(), LabError> {
        let mut cmd = script_cmd();
        cmd.args(["--name", &self.name, "miniupnpd-stop", &router.to_string()]);
        run_script(cmd, UP_TIMEOUT).map(|_| ())
    }

    /// Starts a stopped miniupnpd in `router` ([`Lab::stop_miniupnpd`]) like a router whose
    /// mapping service is switched on: nothing else is touched (connections through the router
    /// live on), and it returns once miniupnpd answers NAT-PMP (`natlab.sh miniupnpd-start`).
    pub fn start_miniupnpd(&self, router: Host) -> Result<(), LabError> {
        let mut cmd = script_cmd();
        cmd.args(["--name", &self.name, "miniupnpd-start", &router.to_string()]);
        run_script(cmd, UP_TIMEOUT).map(|_| ())
    }

    /// Tears the lab down now and reports failures (dropping does the same, silently).
    pub fn down(mut self) -> Result<(), LabError> {
        let r = self.teardown();
        self.name.clear();
        r
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        if self.name.is_empty() {
            return Ok(());
        }
        let mut cmd = script_cmd();
        cmd.args(["--name", &self.name, "down"]);
        run_script(cmd, DOWN_TIMEOUT).map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            // Test-support code: stderr is where a test author will look. The next `Lab::up`
            // retries the removal through `gc` once this process is gone.
            eprintln!("natkit-lab: teardown of lab {} failed: {e}", self.name);
        }
    }
}

fn parse_addr(path: &Path, field: &str) -> Result<Option<Ipv4Addr>, LabError> {
    if field == "-" {
        return Ok(None);
    }
    field.parse().map(Some).map_err(|_| LabError::HostsFile {
        path: path.to_owned(),
        why: format!("bad IPv4 address {field:?}"),
    })
}

/// Parses the `hosts` file `natlab.sh up` writes: `host netns ip ip2|- lan|- public` per line.
fn parse_hosts(path: &Path) -> Result<Vec<HostInfo>, LabError> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::HostsFile {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let bad = |why: String| LabError::HostsFile {
        path: path.to_owned(),
        why,
    };
    let mut hosts = Vec::with_capacity(Host::ALL.len());
    for h in Host::ALL {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(h.as_str()))
            .ok_or_else(|| bad(format!("no line for host {h}")))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, netns, ip, ip2, lan, public] = f.as_slice() else {
            return Err(bad(format!("expected 6 fields in {line:?}")));
        };
        let need = |field: &str| {
            parse_addr(path, field)?.ok_or_else(|| bad(format!("missing address in {line:?}")))
        };
        hosts.push(HostInfo {
            host: h,
            netns: (*netns).to_owned(),
            ip: need(ip)?,
            ip2: parse_addr(path, ip2)?,
            lan_ip: parse_addr(path, lan)?,
            public_ip: need(public)?,
        });
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_file_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("natkit-lab-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        let mut text = String::new();
        for (i, h) in Host::ALL.iter().enumerate() {
            text.push_str(&format!(
                "{h} x-{h} 10.0.0.{i} - 10.1.0.{i} 203.0.113.{i}\n"
            ));
        }
        std::fs::write(&path, &text).unwrap();
        let hosts = parse_hosts(&path).unwrap();
        assert_eq!(hosts.len(), Host::ALL.len());
        assert_eq!(hosts[Host::Bob.index()].netns, "x-bob");
        assert_eq!(hosts[Host::Bob.index()].ip2, None);

        std::fs::write(&path, text.replace("10.0.0.3", "10.0.0.999")).unwrap();
        assert!(matches!(
            parse_hosts(&path),
            Err(LabError::HostsFile { .. })
        ));
        std::fs::write(&path, "alice nk-alice\n").unwrap();
        assert!(parse_hosts(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
