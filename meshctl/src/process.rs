//! Detached processes that outlive the meshctl command that started them (daemons, pod
//! processes), and how to find and stop them again from a later command.
//!
//! Each runs in its own process group (so a ctrl-c at meshctl's terminal does not reach it),
//! inside a network namespace through `ip netns exec` (which execs: the recorded pid is the
//! program's), with stdout and stderr appended to a log file. A [`ProcRecord`] keeps the pid
//! *and* its start time (`/proc/<pid>/stat` field 22), so a recycled pid is never signalled.
//! A zombie counts as gone: the machine's PID 1 may not reap orphans.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How long a stop waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A process started by meshctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    /// Process id (also its process group id).
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// What to start.
#[derive(Debug)]
pub struct Spawn<'a> {
    /// Network namespace to run in; empty: meshctl's own (the host's).
    pub netns: &'a str,
    /// Program and arguments.
    pub argv: &'a [&'a OsStr],
    /// Extra environment.
    pub env: &'a [(&'a str, &'a str)],
    /// Log file, appended to.
    pub log: &'a Path,
}

/// Starts a detached process; returns its record.
pub fn spawn_detached(spec: &Spawn<'_>) -> anyhow::Result<ProcRecord> {
    use std::os::unix::process::CommandExt as _;
    let (program, args) = spec.argv.split_first().context("empty command line")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;
    let log_err = log.try_clone().context("duplicating the log handle")?;
    let mut command = if spec.netns.is_empty() {
        std::process::Command::new(program)
    } else {
        crate::netns::command_in(spec.netns, program)?
    };
    let child = command
        .args(args)
        .envs(spec.env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} in {}",
                Path::new(program).display(),
                spec.netns
            )
        })?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // The start time is set at fork and kept across exec: reading it now is race-free.
    let (_, start_time) =
        read_stat(pid).with_context(|| format!("reading /proc/{pid}/stat of a new process"))?;
    Ok(ProcRecord { pid, start_time })
}

/// `(state, start time)` from `/proc/<pid>/stat`.
fn read_stat(pid: i32) -> Option<(char, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `(state, start time)` from the text of `/proc/<pid>/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field 22 (starttime) is `fields[19]`.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcRecord {
    /// Whether this very process still runs (same pid, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// SIGTERM to its process group, up to [`STOP_GRACE`] to go, then SIGKILL. Returns whether
    /// it was running.
    pub fn stop(&self) -> anyhow::Result<bool> {
        if !self.is_alive() {
            return Ok(false);
        }
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGTERM);
        if self.wait_gone(STOP_GRACE) {
            return Ok(true);
        }
        if self.is_alive() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        anyhow::ensure!(
            self.wait_gone(Duration::from_secs(2)),
            "process {} survived SIGKILL",
            self.pid
        );
        Ok(true)
    }

    /// SIGTERM to its process group, without waiting (see [`ProcRecord::wait_gone`]).
    pub fn terminate(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
    }

    /// SIGKILL to its process group.
    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }

    /// Waits up to `timeout` for it to be gone; whether it is.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (init) Z 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        let (_, start_time) = read_stat(pid).expect("own stat");
        assert!(ProcRecord { pid, start_time }.is_alive());
        assert!(!ProcRecord {
            pid,
            start_time: start_time + 1
        }
        .is_alive());
    }
}
