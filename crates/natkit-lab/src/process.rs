//! Running commands inside lab namespaces: to completion with a timeout, or in the background.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::LabError;

/// How often a waiting caller looks at a child process or its output. Small against every timeout
/// we use (hundreds of ms and more), large enough not to burn a core.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a command that ran to completion printed, and how it ended.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// A growing byte buffer filled by a reader thread.
type Shared = Arc<Mutex<Vec<u8>>>;

fn snapshot(buf: &Shared) -> String {
    match buf.lock() {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(poisoned) => String::from_utf8_lossy(&poisoned.into_inner()).into_owned(),
    }
}

fn pump(mut src: impl Read + Send + 'static, dst: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match src.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => match dst.lock() {
                    Ok(mut b) => b.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                },
            }
        }
    })
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A process running in the background inside a lab namespace.
///
/// Its stdout and stderr are collected as they come. Dropping it kills the process (and reaps
/// it), so a failing test cannot leave it running; the lab's teardown kills anything left anyway.
#[derive(Debug)]
pub struct LabChild {
    cmd: String,
    child: Child,
    stdout: Shared,
    stderr: Shared,
    readers: Vec<JoinHandle<()>>,
}

impl LabChild {
    pub(crate) fn start(mut command: Command) -> Result<LabChild, LabError> {
        let cmd = describe(&command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| LabError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
        let stdout: Shared = Arc::default();
        let stderr: Shared = Arc::default();
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(pump(out, Arc::clone(&stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(err, Arc::clone(&stderr)));
        }
        Ok(LabChild {
            cmd,
            child,
            stdout,
            stderr,
            readers,
        })
    }

    /// The command line, for messages.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// The process id (of the program itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Standard output so far.
    pub fn stdout(&self) -> String {
        snapshot(&self.stdout)
    }

    /// Standard error so far.
    pub fn stderr(&self) -> String {
        snapshot(&self.stderr)
    }

    /// Waits until stdout contains `needle` (e.g. a server's "ready" line).
    ///
    /// Fails if the process exits first or `timeout` passes.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) {
                return Ok(());
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                // Give the reader threads a moment to drain what the process printed last.
                if exited {
                    std::thread::sleep(POLL_INTERVAL);
                    if self.stdout().contains(needle) {
                        return Ok(());
                    }
                }
                return Err(LabError::NotReady {
                    cmd: self.cmd.clone(),
                    needle: needle.to_owned(),
                    timeout,
                    stdout: self.stdout(),
                    stderr: self.stderr(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for the process to exit on its own, at most `timeout`; kills it when time is up.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<CmdOutput, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return self.finish(),
                Ok(None) if Instant::now() >= deadline => {
                    self.kill_now();
                    let stdout = self.stdout();
                    let stderr = self.stderr();
                    return Err(LabError::Timeout {
                        cmd: self.cmd.clone(),
                        timeout,
                        stdout,
                        stderr,
                    });
                }
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(source) => {
                    return Err(LabError::Io {
                        cmd: self.cmd.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Kills the process and returns everything it printed.
    pub fn kill(mut self) -> Result<CmdOutput, LabError> {
        self.kill_now();
        self.finish()
    }

    fn kill_now(&mut self) {
        // Errors mean it has already exited, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn finish(&mut self) -> Result<CmdOutput, LabError> {
        let status = self.child.wait().map_err(|source| LabError::Io {
            cmd: self.cmd.clone(),
            source,
        })?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(CmdOutput {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_now();
        }
        // Readers end at EOF, which the process' exit produced. A grandchild holding the pipe
        // open could block them, so they are not joined here.
    }
}
