//! Long-running processes inside a network namespace, logging to a file.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long [`Proc::stop`] (and drop) waits after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// A process started with [`Topology::spawn_in`](crate::Topology::spawn_in): it runs as
/// `ip netns exec <netns> <cmd>` (which `exec`s, so the pid is the command's), its stdout and
/// stderr go to one log file, and it is stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    log: PathBuf,
    child: Mutex<Child>,
}

impl Proc {
    pub(crate) fn new(name: String, log: PathBuf, child: Child) -> Proc {
        Proc {
            name,
            log,
            child: Mutex::new(child),
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        // A panic while holding this lock leaves the child intact; keep using it.
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A short name for messages: `<netns>/<command>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Path of the log file (stdout and stderr interleaved).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits until the log contains `needle`. Fails early, with the log, when the process
    /// exits first; on timeout the error carries the end of the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                // It may have written the line just before exiting.
                if self.log().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "{} exited ({status}) before logging {needle:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The last 40 lines of the log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the process to exit by itself, for at most `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut status = None;
        crate::wait_until(&format!("{} to exit", self.name), timeout, || {
            status = self.exit_status();
            status.is_some()
        })?;
        status.context("exit status vanished")
    }

    /// Sends `signal` to the process (SIGKILL simulates a crash, SIGTERM a graceful stop).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let mut child = self.child();
        if child.try_wait()?.is_some() {
            bail!("{} has already exited", self.name);
        }
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Stops the process: SIGTERM, then SIGKILL if it is still running after 3 s. Returns its
    /// exit status (a process killed by a signal has no exit code).
    pub fn stop(&self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child();
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Ok(child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
