//! The one error type of the lab harness.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root (network namespaces, nftables, TAP devices).
    #[error("the NAT lab needs root (effective uid is {euid})")]
    NotRoot {
        /// The effective uid we run with.
        euid: u32,
    },
    /// A required program is not installed.
    #[error("required tool `{tool}` not found (install: {hint})")]
    MissingTool {
        /// Program name or path.
        tool: String,
        /// What to install to get it.
        hint: &'static str,
    },
    /// The lab script is not where the harness expects it.
    #[error("lab script not found at {0}")]
    ScriptMissing(PathBuf),
    /// A process could not be started.
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line, for the message.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Waiting for or talking to a process failed.
    #[error("I/O error with `{cmd}`: {source}")]
    Io {
        /// The command line, for the message.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command did not finish in time and was killed.
    #[error(
        "`{cmd}` did not finish within {timeout:?} and was killed; stdout: {stdout:?}, stderr: {stderr:?}"
    )]
    Timeout {
        /// The command line, for the message.
        cmd: String,
        /// The time limit that was exceeded.
        timeout: Duration,
        /// What it printed until then.
        stdout: String,
        /// What it printed to stderr until then.
        stderr: String,
    },
    /// `natlab.sh` failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Script {
        /// The command line, for the message.
        cmd: String,
        /// Exit status as text.
        status: String,
        /// The script's stderr.
        stderr: String,
    },
    /// The hosts file the script wrote could not be understood.
    #[error("bad lab hosts file {path}: {why}")]
    HostsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A background process did not print the expected text in time.
    #[error(
        "`{cmd}` did not print {needle:?} within {timeout:?}; stdout: {stdout:?}, stderr: {stderr:?}"
    )]
    NotReady {
        /// The command line, for the message.
        cmd: String,
        /// The text waited for.
        needle: String,
        /// The time limit.
        timeout: Duration,
        /// What it printed until then.
        stdout: String,
        /// What it printed to stderr until then.
        stderr: String,
    },
}
