//! Nodes and pods as network namespaces, and their cleanup.
//!
//! Layout (node `i` counts from 1 in the order nodes are added):
//!
//! ```text
//!  <prefix>-ul (underlay)        <prefix>-<node>                <prefix>-<ns>-<pod>
//!  br0 ── n<i> ══ veth ══ ul0 10.250.0.i/24
//!                          br0 10.(10+i).S.1/24 ── p<k> ══ veth ══ eth0 10.(10+i).S.k/24
//! ```
//!
//! Every link is created inside a namespace of the topology, so interface names (at most
//! 4 characters) never collide between tests, and deleting the namespaces removes them all.
//! Each node routes the other nodes' pod CIDRs via their underlay address.

#![allow(clippy::print_stderr)] // Drop reports what it could not clean up.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, ensure, Context};

use crate::process::Proc;
use crate::sys::{self, run, run_with_stdin, InNetns, NetnsLock};

/// The underlay network joining the nodes.
pub const UNDERLAY_CIDR: &str = "10.250.0.0/24";

/// Every name the harness makes starts with this, then `<pid>-`.
const NAME_PREFIX: &str = "e2e-";

/// Topologies made by this process so far (names stay unique between parallel tests).
static SEQ: AtomicU32 = AtomicU32::new(0);

/// A node: a network namespace with IP forwarding, a bridge for its pods and a link to the
/// underlay. ztunnel for this node runs here (see [`Topology::spawn_in`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The name given to [`Topology::add_node`] (`n1`...), used as ztunnel's node name.
    pub name: String,
    /// Its network namespace.
    pub netns_name: String,
    /// 1-based position in the order nodes were added.
    pub index: u8,
    /// Address on the underlay, `10.250.0.<index>`.
    pub underlay_ip: Ipv4Addr,
    /// The pods' subnet, `10.(10+index).S.0/24` (`S` differs per topology).
    pub pod_cidr: String,
    /// The pods' default gateway (the node's bridge), `10.(10+index).S.1`.
    pub gateway: Ipv4Addr,
}

/// How to make a pod.
#[derive(Debug, Clone)]
pub struct PodOpts {
    /// Service account (identity `spiffe://cluster.local/ns/<ns>/sa/<sa>`).
    pub sa: String,
    /// Labels, for tests that publish the pod to the control plane.
    pub labels: BTreeMap<String, String>,
    /// Apply the capture rules ([`Pod::capture`]) right away.
    pub captured: bool,
}

impl Default for PodOpts {
    fn default() -> Self {
        PodOpts {
            sa: "default".into(),
            labels: BTreeMap::new(),
            captured: false,
        }
    }
}

/// A pod: a network namespace with one interface `eth0` on its node's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Its network namespace (what the fake CNI agent hands to ztunnel).
    pub netns_name: String,
    /// Its IP on `eth0`.
    pub ip: Ipv4Addr,
    /// The name of the node it runs on.
    pub node: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Service account.
    pub sa: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Workload uid as ztunnel and the control plane know it: `Kubernetes//v1/Pod/<ns>/<name>`.
    pub uid: String,
}

impl InNetns for Node {
    fn netns_name(&self) -> &str {
        &self.netns_name
    }
}

impl InNetns for Pod {
    fn netns_name(&self) -> &str {
        &self.netns_name
    }
}

impl Pod {
    /// `ip:port` of this pod.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    /// The SPIFFE identity this pod should get in the default trust domain.
    pub fn identity(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.sa
        )
    }

    /// Applies the in-pod capture rules inside the pod's namespace, exactly as
    /// [`mesh::capture`] builds them: `iptables-restore --noflush` with
    /// [`iptables_rules_v4`](mesh::capture::iptables_rules_v4) and the `ip rule/route` commands
    /// of [`ip_route_setup_v4`](mesh::capture::ip_route_setup_v4).
    pub fn capture(&self) -> anyhow::Result<()> {
        let rules = mesh::capture::iptables_rules_v4(&Default::default());
        self.iptables_restore(&rules)
            .with_context(|| format!("applying capture rules in {}", self.netns_name))?;
        for args in mesh::capture::ip_route_setup_v4() {
            let mut full = vec!["-n".to_string(), self.netns_name.clone()];
            full.extend(args);
            run("ip", &full)?;
        }
        Ok(())
    }

    /// Removes what [`Pod::capture`] installed (the pod opts out of the mesh).
    pub fn uncapture(&self) -> anyhow::Result<()> {
        self.iptables_restore(&mesh::capture::iptables_cleanup_v4())
            .with_context(|| format!("removing capture rules in {}", self.netns_name))?;
        for args in mesh::capture::ip_route_cleanup_v4() {
            let mut full = vec!["-n".to_string(), self.netns_name.clone()];
            full.extend(args);
            run("ip", &full)?;
        }
        Ok(())
    }

    /// `iptables-save` inside the pod's namespace.
    pub fn iptables_save(&self) -> anyhow::Result<String> {
        sys::exec_in(self, sys::tool("iptables-save")?, &[])
    }

    fn iptables_restore(&self, input: &str) -> anyhow::Result<()> {
        let restore = sys::tool("iptables-restore")?;
        let args: Vec<&OsStr> = vec![
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&self.netns_name),
            restore.as_os_str(),
            OsStr::new("--noflush"),
        ];
        run_with_stdin("ip", &args, Some(input)).map(drop)
    }
}

/// A set of nodes and pods made of network namespaces, with unique names, torn down on drop.
///
/// Names: every namespace is `e2e-<pid>-<seq>-<test>-...`, so parallel tests (threads of one
/// test binary, or nextest's processes) never collide, and leftovers of a process that died
/// are recognised and removed by the next [`Topology::new`].
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    dir: PathBuf,
    /// Third octet of every pod address of this topology.
    subnet: u8,
    underlay: Option<String>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Every namespace made, in creation order.
    made: Vec<String>,
    procs: AtomicU32,
}

impl Topology {
    /// A new, empty topology for the test named `test_name` (used in names and the temp dir).
    ///
    /// Panics unless running as root; fails naming the package when a tool is missing. Also
    /// removes namespaces left by earlier harness processes that no longer run.
    pub fn new(test_name: &str) -> anyhow::Result<Topology> {
        crate::require_root();
        sys::require_tools(&["ip", "iptables-restore", "iptables-save", "sysctl"])?;
        cleanup_dead_owners()?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!(
            "{NAME_PREFIX}{}-{seq}-{}",
            std::process::id(),
            short_tag(test_name)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Pod addresses differ between topologies of concurrent test processes (as far as 250
        // values allow): a CNI node agent finds pods by IP across the whole machine.
        let subnet = u8::try_from((u64::from(std::process::id()) * 31 + u64::from(seq)) % 250)?;
        Ok(Topology {
            prefix,
            dir,
            subnet,
            underlay: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            made: Vec::new(),
            procs: AtomicU32::new(0),
        })
    }

    /// [`Topology::new`] named after the running test (the test harness names each test's
    /// thread after it).
    pub fn for_this_test() -> anyhow::Result<Topology> {
        let thread = std::thread::current();
        Topology::new(thread.name().unwrap_or("test"))
    }

    /// The prefix of every name this topology makes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A temp directory for this test: logs, sockets, config. Removed on drop unless the test
    /// panicked (or `E2E_KEEP=1`), so failed runs can be inspected.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlay's namespace (its bridge `br0` sees all traffic between nodes), once a
    /// node exists.
    pub fn underlay_netns(&self) -> Option<&str> {
        self.underlay.as_deref()
    }

    /// Every network namespace made so far.
    pub fn netns_names(&self) -> &[String] {
        &self.made
    }

    /// The nodes, in the order they were added.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The pods, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    fn add_netns(&mut self, name: String) -> anyhow::Result<String> {
        {
            let _lock = NetnsLock::take()?;
            run("ip", &["netns", "add", &name])?;
        }
        self.made.push(name.clone());
        ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn ensure_underlay(&mut self) -> anyhow::Result<String> {
        if let Some(ul) = &self.underlay {
            return Ok(ul.clone());
        }
        let ul = self.add_netns(format!("{}-ul", self.prefix))?;
        ip(&ul, &["link", "add", "br0", "type", "bridge"])?;
        ip(&ul, &["link", "set", "br0", "up"])?;
        self.underlay = Some(ul.clone());
        Ok(ul)
    }

    /// Adds a node named `name` (lowercase letters, digits, `-`; at most 12 characters).
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<Node> {
        check_name("node name", name, 12)?;
        ensure!(
            self.nodes.iter().all(|n| n.name != name),
            "node {name} exists already"
        );
        ensure!(self.nodes.len() < 200, "too many nodes");
        let index = u8::try_from(self.nodes.len() + 1)?;
        let ul = self.ensure_underlay()?;
        let netns = self.add_netns(format!("{}-{name}", self.prefix))?;
        let node = Node {
            name: name.to_string(),
            netns_name: netns.clone(),
            index,
            underlay_ip: Ipv4Addr::new(10, 250, 0, index),
            pod_cidr: format!("10.{}.{}.0/24", 10 + u16::from(index), self.subnet),
            gateway: Ipv4Addr::new(10, 10 + index, self.subnet, 1),
        };
        // Forwarding inside the node's namespace only; never on the host.
        sys::exec_in(
            &netns,
            sys::tool("sysctl")?,
            &["-qw", "net.ipv4.ip_forward=1"],
        )?;

        let port = format!("n{index}");
        ip(
            &ul,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &netns,
            ],
        )?;
        ip(&ul, &["link", "set", &port, "master", "br0", "up"])?;
        ip(
            &netns,
            &[
                "addr",
                "add",
                &format!("{}/24", node.underlay_ip),
                "dev",
                "ul0",
            ],
        )?;
        ip(&netns, &["link", "set", "ul0", "up"])?;

        ip(&netns, &["link", "add", "br0", "type", "bridge"])?;
        ip(
            &netns,
            &["addr", "add", &format!("{}/24", node.gateway), "dev", "br0"],
        )?;
        ip(&netns, &["link", "set", "br0", "up"])?;

        for other in &self.nodes {
            let via_other = other.underlay_ip.to_string();
            ip(
                &netns,
                &["route", "add", &other.pod_cidr, "via", &via_other],
            )?;
            let via_new = node.underlay_ip.to_string();
            ip(
                &other.netns_name,
                &["route", "add", &node.pod_cidr, "via", &via_new],
            )?;
        }
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Adds pod `ns/name` on `node`, with an IP from the node's pod CIDR and a default route
    /// via the node's bridge; applies the capture rules when `opts.captured`.
    pub fn add_pod(
        &mut self,
        node: &Node,
        ns: &str,
        name: &str,
        opts: PodOpts,
    ) -> anyhow::Result<Pod> {
        check_name("namespace", ns, 63)?;
        check_name("pod name", name, 63)?;
        ensure!(
            self.nodes.contains(node),
            "node {} is not part of this topology",
            node.name
        );
        ensure!(
            self.pods
                .iter()
                .all(|p| p.namespace != ns || p.name != name),
            "pod {ns}/{name} exists already"
        );
        let host = self.pods.iter().filter(|p| p.node == node.name).count() + 2;
        ensure!(host < 255, "node {} has no free pod address", node.name);
        let host = u8::try_from(host)?;
        let [a, b, c, _] = node.gateway.octets();
        let pod_ip = Ipv4Addr::new(a, b, c, host);
        let netns = self.add_netns(format!("{}-{ns}-{name}", self.prefix))?;
        let port = format!("p{host}");
        ip(
            &node.netns_name,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        ip(
            &node.netns_name,
            &["link", "set", &port, "master", "br0", "up"],
        )?;
        ip(
            &netns,
            &["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"],
        )?;
        ip(&netns, &["link", "set", "eth0", "up"])?;
        ip(
            &netns,
            &["route", "add", "default", "via", &node.gateway.to_string()],
        )?;
        let pod = Pod {
            netns_name: netns,
            ip: pod_ip,
            node: node.name.clone(),
            namespace: ns.to_string(),
            name: name.to_string(),
            sa: opts.sa,
            labels: opts.labels,
            uid: format!("Kubernetes//v1/Pod/{ns}/{name}"),
        };
        if opts.captured {
            pod.capture()?;
        }
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Starts `cmd args` inside `netns` with extra environment `env`. Its stdout and stderr go
    /// to `<dir>/<netns>-<cmd>-<n>.log`; it is stopped when the returned [`Proc`] drops.
    pub fn spawn_in(
        &self,
        netns: &(impl InNetns + ?Sized),
        cmd: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let netns = netns.netns_name();
        let cmd = cmd.as_ref();
        let short_ns = netns
            .strip_prefix(&self.prefix)
            .map_or(netns, |s| s.trim_start_matches('-'));
        let base = Path::new(cmd)
            .file_name()
            .map_or_else(|| "cmd".into(), |b| b.to_string_lossy());
        let n = self.procs.fetch_add(1, Ordering::Relaxed);
        let name = format!("{short_ns}/{base}");
        let log = self.dir.join(format!("{short_ns}-{base}-{n}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(sys::tool("ip")?)
            .args(["netns", "exec", netns])
            .arg(cmd)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc::new(name, log, child))
    }

    /// Runs `cmd args` inside `netns` to completion; its stdout (see [`crate::exec_in`]).
    pub fn exec_in(
        &self,
        netns: &(impl InNetns + ?Sized),
        cmd: impl AsRef<OsStr>,
        args: &[&str],
    ) -> anyhow::Result<String> {
        sys::exec_in(netns, cmd, args)
    }

    /// Path of a workspace binary built into the same target directory as the running test
    /// (`target/<profile>/<name>`), or in `$E2E_BIN_DIR` when set.
    ///
    /// Cargo builds only the binaries of the package under test, so build the others first:
    /// the error says how.
    pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
        let dir = match std::env::var_os("E2E_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().context("locating the test executable")?;
                let mut dir = exe
                    .parent()
                    .context("the test executable has no directory")?
                    .to_path_buf();
                if dir.file_name() == Some(OsStr::new("deps")) {
                    dir.pop();
                }
                dir
            }
        };
        let path = dir.join(name);
        if !path.is_file() {
            let package = if name == "e2e-tcp" { "e2e" } else { name };
            bail!(
                "{} is missing: build it first: cargo build -p {package}",
                path.display()
            );
        }
        Ok(path)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Kill everything first: a namespace whose processes still run outlives its name.
        for netns in self.made.iter().rev() {
            if let Err(e) = sys::kill_netns_pids(netns) {
                eprintln!("e2e: cleanup of {netns}: {e:#}");
            }
        }
        for netns in self.made.iter().rev() {
            if let Err(e) = sys::delete_netns(netns) {
                eprintln!("e2e: cleanup of {netns}: {e:#}");
            }
        }
        let keep =
            std::thread::panicking() || std::env::var_os("E2E_KEEP").is_some_and(|v| v == "1");
        if keep {
            eprintln!(
                "e2e: logs of {} kept in {}",
                self.prefix,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Deletes every network namespace whose name starts with `prefix` (killing what runs in
/// them first); returns the names removed. `cleanup_stale("e2e-")` clears every harness
/// leftover on the machine, including those of running tests: use it by hand only.
pub fn cleanup_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
    ensure!(!prefix.is_empty(), "refusing to clean up every namespace");
    let mut removed = Vec::new();
    for netns in sys::netns_list()? {
        if netns.starts_with(prefix) {
            sys::delete_netns(&netns)?;
            removed.push(netns);
        }
    }
    Ok(removed)
}

/// Whether `name` is `e2e-<pid>-...` for a process that no longer runs.
fn owner_is_dead(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes namespaces `e2e-<pid>-...` whose process is gone (a test killed by a timeout), and
/// such temp dirs once they are a day old (kept that long for inspection).
fn cleanup_dead_owners() -> anyhow::Result<()> {
    for netns in sys::netns_list()? {
        if owner_is_dead(&netns) {
            // Another process may be cleaning the same leftovers: losing that race is fine.
            let _ = sys::delete_netns(&netns);
        }
    }
    let day = std::time::Duration::from_secs(24 * 3600);
    for entry in std::fs::read_dir(std::env::temp_dir())?.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
        if old && owner_is_dead(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// `ip -n <netns> args...`.
fn ip(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full).map(drop)
}

fn check_name(what: &str, name: &str, max: usize) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= max
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{what} {name:?}: use 1 to {max} lowercase letters, digits or '-'"
    );
    Ok(())
}

/// The last path segment of a test name, reduced to `[a-z0-9-]` and 20 characters.
fn short_tag(test_name: &str) -> String {
    let last = test_name.rsplit("::").next().unwrap_or(test_name);
    let tag: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(20)
        .collect();
    let tag = tag.trim_matches('-');
    if tag.is_empty() {
        "test".into()
    } else {
        tag.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_and_safe() {
        assert_eq!(short_tag("harness::two_nodes_echo"), "two-nodes-echo");
        assert_eq!(
            short_tag("a_very_long_test_name_indeed_yes"),
            "a-very-long-test-nam"
        );
        assert_eq!(short_tag("::"), "test");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("node", "n1", 12).is_ok());
        assert!(check_name("node", "N1", 12).is_err());
        assert!(check_name("node", "", 12).is_err());
        assert!(check_name("node", "a-b_c", 12).is_err());
    }
}
