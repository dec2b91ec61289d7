//! Checking that this machine can run the lab, and the skip-or-fail policy for tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{LabError, PYTHON, script_path};

/// Programs the lab needs, with the Debian package that provides each.
const TOOLS: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("miniupnpd", "miniupnpd miniupnpd-nftables"),
    ("upnpc", "miniupnpc"),
    ("natpmpc", "natpmpc"),
];

/// Directories searched besides `$PATH` (sbin is often missing from a non-login root PATH).
const EXTRA_TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    line.split_whitespace().nth(2)?.parse().ok()
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_TOOL_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Checks everything the lab needs: root, the tools, Debian's python3 and the lab script.
pub fn prerequisites() -> Result<(), LabError> {
    match effective_uid() {
        Some(0) => {}
        Some(euid) => return Err(LabError::NotRoot { euid }),
        None => return Err(LabError::NotRoot { euid: u32::MAX }),
    }
    for (tool, hint) in TOOLS {
        if find_tool(tool).is_none() {
            return Err(LabError::MissingTool {
                tool: tool.to_owned(),
                hint,
            });
        }
    }
    if !Path::new(PYTHON).is_file() {
        return Err(LabError::MissingTool {
            tool: PYTHON.to_owned(),
            hint: "python3 (Debian's)",
        });
    }
    let script = script_path();
    if !script.is_file() {
        return Err(LabError::ScriptMissing(script));
    }
    Ok(())
}

/// Whether the environment asks for hard failures instead of skips (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1")
    )
}

/// Decides whether a lab test can run. Call it first in every lab test:
///
/// ```no_run
/// if !natkit_lab::lab_or_skip("cone_keeps_port") {
///     return;
/// }
/// ```
///
/// Returns `true` when the prerequisites are met. Otherwise, outside CI it prints a loud SKIP
/// message to stderr and returns `false`; under `CI=true` it panics with the reason, because a CI
/// run that silently skipped the NAT lab would prove nothing.
pub fn lab_or_skip(test: &str) -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(e) if in_ci() => {
            panic!("NAT lab test `{test}` cannot run under CI=true: {e}")
        }
        Err(e) => {
            // Written to the stderr handle directly, not with `eprintln!`: libtest captures the
            // macros' output of passing tests, and a skip must be seen.
            let msg = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED NAT lab test `{test}`: {e}\n\
                 !!! (run as root with the tools installed; CI=true turns this into a failure)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            // Nothing sensible to do if stderr is gone.
            let _ = std::io::stderr().write_all(msg.as_bytes());
            false
        }
    }
}
