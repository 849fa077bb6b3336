//! Named network namespaces (`/run/netns/<name>`): create, list, delete, and run code inside
//! one — a closure on a throwaway thread (`setns` switches only the calling thread), e.g. an
//! HTTP GET to a daemon that listens only inside a node.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::sys::{run, tool};

/// Where `ip netns` keeps its namespace files.
pub const NETNS_DIR: &str = "/run/netns";

/// The file of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Names of all network namespaces `ip netns` knows.
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Names starting with `prefix`.
pub fn list_with_prefix(prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(list()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Holds an exclusive lock serialising `ip netns add/del`: the first `ip netns add` on a
/// machine mounts `/run/netns`, and two racing stack mounts. The path is the e2e harness's, so
/// tests and meshctl running side by side take the same lock.
struct NetnsLock {
    _lock: nix::fcntl::Flock<File>,
}

impl NetnsLock {
    fn take() -> anyhow::Result<NetnsLock> {
        Ok(NetnsLock {
            _lock: crate::sys::lock_file(&std::env::temp_dir().join("e2e-netns.lock"))?,
        })
    }
}

/// Creates namespace `name` with its loopback up.
pub fn add(name: &str) -> anyhow::Result<()> {
    {
        let _lock = NetnsLock::take()?;
        run("ip", &["netns", "add", name])?;
    }
    crate::sys::ip_in(name, &["link", "set", "lo", "up"])
}

/// Process ids inside namespace `name` (none when it does not exist).
pub fn pids(name: &str) -> anyhow::Result<Vec<i32>> {
    if !exists(name) {
        return Ok(Vec::new());
    }
    Ok(run("ip", &["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Signals every process inside `name`: SIGTERM, up to `grace` for them to go, then SIGKILL.
/// Returns the pids still there afterwards (normally none).
pub fn kill_all(name: &str, grace: Duration) -> anyhow::Result<Vec<i32>> {
    let found = pids(name)?;
    if found.is_empty() {
        return Ok(found);
    }
    for pid in &found {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    if wait_empty(name, grace) {
        return Ok(Vec::new());
    }
    for pid in pids(name)? {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_empty(name, Duration::from_secs(2));
    pids(name)
}

fn wait_empty(name: &str, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if pids(name).map(|p| p.is_empty()).unwrap_or(true) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes namespace `name`, killing what still runs inside first. Absent: nothing to do.
pub fn delete(name: &str) -> anyhow::Result<()> {
    if !exists(name) {
        return Ok(());
    }
    let left = kill_all(name, Duration::from_secs(2))?;
    if !left.is_empty() {
        bail!("processes {left:?} in network namespace {name} survived SIGKILL");
    }
    let _lock = NetnsLock::take()?;
    run("ip", &["netns", "del", name]).map(drop)
}

/// Runs `f` on a new thread inside namespace `name`; returns its result. Processes that `f`
/// spawns start inside the namespace too.
pub fn run_in<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
    let file =
        File::open(path(name)).with_context(|| format!("opening network namespace {name}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {name}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside network namespace {name} panicked"))?
    })
}

/// Sets a sysctl under `/proc/sys/net/` inside namespace `name` (e.g. `ipv4/ip_forward`):
/// those files belong to the namespace of the thread that opens them, never the host's.
pub fn set_net_sysctl(name: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let file = format!("/proc/sys/net/{key}");
    run_in(name, || std::fs::write(&file, value))?
        .with_context(|| format!("setting {file} in {name}"))
}

/// An HTTP response: status code and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// `GET path` over HTTP/1.0 to `addr` from inside namespace `name` (HTTP/1.0 so the body ends
/// at close, never chunked).
pub fn http_get(
    name: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let raw = run_in(name, || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Ok(raw)
    })?
    .with_context(|| format!("GET http://{addr}{path} in {name}"))?;
    parse_response(&raw).with_context(|| format!("GET http://{addr}{path} in {name}"))
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the response has no header end")?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("the response has no status line")?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

/// `ip netns exec <name> <program> args...` as a [`std::process::Command`], not yet spawned.
/// `ip` execs the program, so the child's pid is the program's.
pub fn command_in(
    name: &str,
    program: impl AsRef<std::ffi::OsStr>,
) -> anyhow::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(tool("ip")?);
    cmd.args(["netns", "exec", name]).arg(program);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").expect("parses");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
        assert!(parse_response(b"garbage").is_err());
    }
}
