//! The system tools meshctl shells out to (`ip`, `iptables-save`, the CNI plugins), found
//! with an error that names the Debian package, and run to completion.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// Where Debian's containernetworking-plugins installs the reference CNI plugins.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// Debian package that ships each tool.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
    ("sleep", "coreutils"),
];

/// Fails unless meshctl runs as root.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("meshctl cluster needs root (network namespaces, iptables)");
    }
    Ok(())
}

/// Full path of a system tool, searching `PATH` and the sbin directories (which a non-login
/// `PATH` may lack). The error names the Debian package to install.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
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

/// Checks everything a cluster needs on this machine: root, `ip`, the iptables tools the node
/// agent runs, and the reference CNI plugins the node's network uses.
pub fn preflight() -> anyhow::Result<()> {
    require_root()?;
    for name in ["ip", "iptables-restore", "iptables-save", "sleep"] {
        tool(name)?;
    }
    for plugin in ["bridge", "host-local"] {
        let path = Path::new(SYSTEM_CNI_DIR).join(plugin);
        if !path.is_file() {
            bail!(
                "{} not found: install the Debian package containernetworking-plugins \
                 (apt-get install containernetworking-plugins)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Runs a tool to completion; its stdout, or an error carrying its stderr.
pub fn run<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> anyhow::Result<String> {
    run_with_stdin(prog, args, None)
}

/// Runs a tool with `stdin` fed in; its stdout, or an error carrying its stderr.
pub fn run_with_stdin<S: AsRef<OsStr>>(
    prog: &str,
    args: &[S],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let what = std::iter::once(prog.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(tool(prog)?)
        .args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `{what}`"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing to `{what}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("running `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <netns> args...`.
pub fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full).map(drop)
}

/// Runs `cmd args` inside `netns` (`ip netns exec`) to completion; its stdout.
pub fn exec_in(netns: &str, cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let tool = tool(cmd)?;
    let mut full: Vec<&OsStr> = vec![
        OsStr::new("netns"),
        OsStr::new("exec"),
        OsStr::new(netns),
        tool.as_os_str(),
    ];
    full.extend(args.iter().map(OsStr::new));
    run("ip", &full)
}

/// Opens (creating) `path` and takes an exclusive `flock` on it, blocking; released on drop.
pub fn lock_file(path: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use anyhow::Context as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let err = tool("iptables-save-surely-missing").expect_err("missing");
        assert!(err.to_string().contains("apt-get install"), "{err}");
        assert!(tool("sh").is_ok());
    }
}
