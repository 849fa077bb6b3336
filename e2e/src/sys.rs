//! Running the system tools the harness shells out to (`ip`, `iptables-restore`, `sysctl`...).

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// Something that names a network namespace made by the harness (or any `ip netns` name).
pub trait InNetns {
    /// The name under `/var/run/netns/`.
    fn netns_name(&self) -> &str;
}

impl InNetns for str {
    fn netns_name(&self) -> &str {
        self
    }
}

impl InNetns for String {
    fn netns_name(&self) -> &str {
        self
    }
}

impl<T: InNetns + ?Sized> InNetns for &T {
    fn netns_name(&self) -> &str {
        (**self).netns_name()
    }
}

/// Debian package that ships each tool the harness runs.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
    ("sysctl", "procps"),
    ("tcpdump", "tcpdump"),
];

/// Full path of a system tool, searching `PATH` and the sbin directories (which a
/// non-login `PATH` may lack). The error names the Debian package to install.
pub(crate) fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let package = PACKAGES
        .iter()
        .find(|(tool, _)| *tool == name)
        .map_or(name, |(_, package)| package);
    bail!("`{name}` not found: install the Debian package {package} (apt-get install {package})")
}

/// Checks that every tool in `names` is installed.
pub(crate) fn require_tools(names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        tool(name)?;
    }
    Ok(())
}

fn describe(prog: &str, args: &[&OsStr]) -> String {
    let mut s = prog.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a tool to completion; its stdout, or an error carrying its stderr.
pub(crate) fn run<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> anyhow::Result<String> {
    run_with_stdin(prog, args, None)
}

/// Runs a tool with `stdin` fed in; its stdout, or an error carrying its stderr.
pub(crate) fn run_with_stdin<S: AsRef<OsStr>>(
    prog: &str,
    args: &[S],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let what = describe(prog, &args);
    let out = output(Command::new(tool(prog)?).args(&args), stdin)
        .with_context(|| format!("running `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn output(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Runs `cmd args` inside network namespace `netns` (`ip netns exec`) to completion and
/// returns its stdout; an error carries the exit status and stderr.
///
/// `cmd` is looked up in `PATH` inside the namespace, so pass a full path for binaries that
/// are not installed (see [`Topology::binary`](crate::Topology::binary)).
pub fn exec_in(
    netns: &(impl InNetns + ?Sized),
    cmd: impl AsRef<OsStr>,
    args: &[&str],
) -> anyhow::Result<String> {
    let mut full: Vec<&OsStr> = vec![
        OsStr::new("netns"),
        OsStr::new("exec"),
        OsStr::new(netns.netns_name()),
        cmd.as_ref(),
    ];
    full.extend(args.iter().map(OsStr::new));
    run("ip", &full)
}

/// Holds an exclusive lock serializing `ip netns add/del` across test processes: the first
/// `ip netns add` on a machine mounts `/var/run/netns`, and two of them racing stack mounts.
pub(crate) struct NetnsLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl NetnsLock {
    pub(crate) fn take() -> anyhow::Result<NetnsLock> {
        let path = std::env::temp_dir().join("e2e-netns.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))?;
        Ok(NetnsLock { _lock: lock })
    }
}

/// Names of all network namespaces `ip netns` knows.
pub(crate) fn netns_list() -> anyhow::Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// SIGKILLs every process inside `netns` and waits (up to 2 s) for them to be gone.
pub(crate) fn kill_netns_pids(netns: &str) -> anyhow::Result<()> {
    let pids = |s: String| -> Vec<i32> {
        s.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let found = pids(run("ip", &["netns", "pids", netns])?);
    for pid in &found {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if found.is_empty() {
        return Ok(());
    }
    crate::wait_until(
        &format!("the processes in {netns} to exit"),
        Duration::from_secs(2),
        || {
            run("ip", &["netns", "pids", netns])
                .map(|s| pids(s).is_empty())
                .unwrap_or(true)
        },
    )
}

/// Deletes one network namespace, killing what runs inside first.
pub(crate) fn delete_netns(netns: &str) -> anyhow::Result<()> {
    kill_netns_pids(netns)?;
    let _lock = NetnsLock::take()?;
    run("ip", &["netns", "del", netns]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let err = tool("tcpdump-surely-missing").expect_err("missing");
        assert!(err.to_string().contains("apt-get install"), "{err}");
        assert!(tool("sh").is_ok());
    }

    #[test]
    fn netns_names_from_refs_and_owned() {
        fn name(n: &(impl InNetns + ?Sized)) -> &str {
            n.netns_name()
        }
        assert_eq!(name("a"), "a");
        assert_eq!(name(&String::from("b")), "b");
    }
}
