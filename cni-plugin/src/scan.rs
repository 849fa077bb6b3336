//! Finding a pod's network namespace by its IP, for pods whose CNI ADD the agent never saw
//! (they existed before it started, or it restarted).
//!
//! Like upstream istio-cni: every process's `/proc/<pid>/ns/net`, deduplicated by namespace
//! inode, skipping the agent's own namespace and the root one (`/proc/1/ns/net`); a pod's
//! namespace is found through any process in it (Kubernetes keeps a pause process there).
//! Each candidate is entered on a throwaway thread ([`crate::netns::run_in`]) to list the
//! addresses of its `eth0` with `getifaddrs`. Why not `/proc/<pid>/net/fib_trie`: it has no
//! interface names (a node-like namespace holding the address on a bridge would match too),
//! no IPv6, and its text format is not a stable interface; entering is cheap and already
//! how every rule change is made.
//!
//! An address alone is not proof: another node's pod (another local cluster on the same
//! machine, a test topology) can hold the same private IP in a namespace the scan also sees.
//! A candidate counts only when its `eth0` MAC is the one this node's neighbour table has for
//! the pod IP: the pod is then on this node's L2 segment, behind this node's bridge. The table
//! (`/proc/net/arp`) shows STALE entries as complete (flag 0x2), so an entry whose MAC is no
//! candidate's may be left from an earlier holder of a reused IP: then (as when there is no
//! entry) the agent sends one UDP datagram to the IP, which makes the kernel resolve (or
//! re-check) it, and polls the table again for up to [`NEIGHBOUR_WAIT`] before concluding.
//!
//! Addresses are cached per namespace inode for [`RECHECK_AFTER`], so reconcile passes that
//! look for a pod not there yet do not enter every namespace of the node each time; a new
//! namespace (new inode) is looked at right away.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::enrollment::PodKey;

/// The interface a pod's address is on.
pub const POD_INTERFACE: &str = "eth0";

/// How long the addresses read in a namespace are trusted (a sandbox being set up gets its
/// address after its namespace exists).
pub const RECHECK_AFTER: Duration = Duration::from_secs(3);

/// A network namespace identity: (device, inode) of its nsfs file.
pub type NsId = (u64, u64);

/// The namespace found for a pod.
#[derive(Debug)]
pub struct Found {
    /// Open handle on it.
    pub file: File,
    /// The `/proc/<pid>/ns/net` it was opened from (valid while that process lives).
    pub path: PathBuf,
    /// Its identity.
    pub id: NsId,
}

/// Why a pod's namespace was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanMiss {
    /// No namespace has one of the pod's addresses on `eth0`.
    #[error("no network namespace on this node has {ips} on {POD_INTERFACE}")]
    NotFound {
        /// The addresses looked for.
        ips: String,
    },
    /// More than one does: capturing a guess could capture the wrong pod.
    #[error("{count} network namespaces have {ips} on {POD_INTERFACE}; not guessing")]
    Ambiguous {
        /// The addresses looked for.
        ips: String,
        /// How many matched.
        count: usize,
    },
    /// The namespace went away (or the process holding it did) while being opened.
    #[error("the network namespace holding {ips} went away: {reason}")]
    Vanished {
        /// The addresses looked for.
        ips: String,
        /// The OS error.
        reason: String,
    },
}

#[derive(Debug)]
struct Seen {
    at: Instant,
    ips: Vec<IpAddr>,
    /// The MAC of its `eth0`.
    mac: Option<[u8; 6]>,
}

/// The scanner, with its per-namespace address cache.
#[derive(Debug, Default)]
pub struct Scanner {
    cache: HashMap<NsId, Seen>,
}

/// The identity of the namespace a `/proc/<pid>/ns/net`-like path (or open file) designates.
pub fn ns_id(meta: &std::fs::Metadata) -> NsId {
    (meta.dev(), meta.ino())
}

/// Every network namespace held by a process, but `skip`: identity → one path to it.
fn namespaces(proc_root: &Path, skip: &[NsId]) -> BTreeMap<NsId, PathBuf> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        // Processes come and go during the scan: those gone are simply not candidates.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let id = ns_id(&meta);
        if !skip.contains(&id) {
            found.entry(id).or_insert(path);
        }
    }
    found
}

/// The addresses and MAC of [`POD_INTERFACE`] in the current thread's namespace.
fn pod_interface() -> (Vec<IpAddr>, Option<[u8; 6]>) {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return (Vec::new(), None);
    };
    let mut ips = Vec::new();
    let mut mac = None;
    for a in addrs.filter(|a| a.interface_name == POD_INTERFACE) {
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            ips.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            ips.push(IpAddr::V6(v6.ip()));
        } else if let Some(link) = addr.as_link_addr() {
            mac = link.addr();
        }
    }
    (ips, mac)
}

/// How long the kernel gets to resolve a pod IP's MAC.
pub const NEIGHBOUR_WAIT: Duration = Duration::from_millis(500);

/// A link-layer address.
type Mac = [u8; 6];

/// Which of `candidates` the neighbour table (read with `read`) resolves an address to. An
/// entry naming one of them is trusted at once; none, or one naming no candidate (a STALE
/// entry of an earlier holder of the address looks complete), → `probe` once, then poll
/// every `poll` until `wait` has passed. `None`: no candidate is the one the node reaches.
fn confirmed_mac(
    mut read: impl FnMut() -> Option<Mac>,
    probe: impl FnOnce(),
    candidates: &[Mac],
    wait: Duration,
    poll: Duration,
) -> Option<Mac> {
    let known = |mac: Option<Mac>| mac.filter(|m| candidates.contains(m));
    if let Some(mac) = known(read()) {
        return Some(mac);
    }
    probe();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(poll);
        if let Some(mac) = known(read()) {
            return Some(mac);
        }
    }
    None
}

/// Which of `candidates` this thread's namespace (the node) reaches `ip` at, see
/// [`confirmed_mac`]; the probe is one UDP datagram to the discard port. IPv4 only
/// (`/proc/net/arp`).
fn neighbour_mac(ip: IpAddr, candidates: &[Mac]) -> Option<Mac> {
    let IpAddr::V4(v4) = ip else { return None };
    let probe = || {
        if let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") {
            let _ = socket.send_to(b"", (v4, 9));
        }
    };
    confirmed_mac(
        || arp_entry(v4),
        probe,
        candidates,
        NEIGHBOUR_WAIT,
        Duration::from_millis(10),
    )
}

/// A complete entry for `ip` in this thread's namespace's ARP table.
fn arp_entry(ip: std::net::Ipv4Addr) -> Option<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/thread-self/net/arp").ok()?;
    parse_arp(&table, ip)
}

/// `/proc/net/arp`: `IP address  HW type  Flags  HW address  Mask  Device`; flag 0x2 =
/// complete.
fn parse_arp(table: &str, ip: std::net::Ipv4Addr) -> Option<[u8; 6]> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [addr, _, flags, hw, ..] = cols.as_slice() else {
            return None;
        };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        if addr.parse::<std::net::Ipv4Addr>().ok()? != ip || flags & 0x2 == 0 {
            return None;
        }
        let mut mac = [0u8; 6];
        let mut parts = hw.split(':');
        for byte in &mut mac {
            *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        Some(mac)
    })
}

/// Opens `path` and checks it is still namespace `id` (the pid may have been reused).
pub fn open_checked(path: &Path, id: NsId) -> std::io::Result<File> {
    let file = File::open(path)?;
    if ns_id(&file.metadata()?) != id {
        return Err(std::io::Error::other("the process holding it exited"));
    }
    Ok(file)
}

fn shown(ips: &[IpAddr]) -> String {
    let all: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    all.join(",")
}

impl Scanner {
    /// Finds, for each wanted pod, the one namespace whose `eth0` holds one of its addresses.
    /// Blocking (reads `/proc`, enters namespaces): run it on the blocking pool.
    pub fn find(
        &mut self,
        wanted: &[(PodKey, Vec<IpAddr>)],
    ) -> BTreeMap<PodKey, Result<Found, ScanMiss>> {
        let proc_root = Path::new("/proc");
        if wanted.is_empty() {
            return BTreeMap::new();
        }
        // Never the agent's own namespace (the node's, with host networking) nor the root one.
        let skip: Vec<NsId> = ["self", "1"]
            .iter()
            .filter_map(|p| std::fs::metadata(proc_root.join(p).join("ns/net")).ok())
            .map(|m| ns_id(&m))
            .collect();
        let candidates = namespaces(proc_root, &skip);
        self.cache.retain(|id, _| candidates.contains_key(id));
        let now = Instant::now();
        for (id, path) in &candidates {
            if self
                .cache
                .get(id)
                .is_some_and(|s| now.duration_since(s.at) < RECHECK_AFTER)
            {
                continue;
            }
            let (ips, mac) = match open_checked(path, *id) {
                Ok(file) => crate::netns::run_in(&file, pod_interface).unwrap_or_else(|e| {
                    tracing::debug!(netns = %path.display(), error = %e, "cannot look into a network namespace");
                    (Vec::new(), None)
                }),
                Err(_) => continue, // exited meanwhile; the next scan sees what holds it now
            };
            self.cache.insert(*id, Seen { at: now, ips, mac });
        }
        wanted
            .iter()
            .map(|(key, ips)| {
                let mut matching: Vec<(NsId, Option<[u8; 6]>)> = self
                    .cache
                    .iter()
                    .filter(|(_, seen)| seen.ips.iter().any(|ip| ips.contains(ip)))
                    .map(|(id, seen)| (*id, seen.mac))
                    .collect();
                // Only the one behind this node: its MAC is what the node resolves the IP to.
                let macs: Vec<Mac> = matching.iter().filter_map(|(_, mac)| *mac).collect();
                let node_mac = if matching.is_empty() {
                    None
                } else {
                    ips.iter().find_map(|ip| neighbour_mac(*ip, &macs))
                };
                if let Some(node_mac) = node_mac {
                    matching.retain(|(_, mac)| *mac == Some(node_mac));
                } else if ips.iter().any(IpAddr::is_ipv4) {
                    // The node cannot reach the address: whatever holds it is not our pod.
                    matching.clear();
                }
                let matching: Vec<NsId> = matching.into_iter().map(|(id, _)| id).collect();
                let result = match matching.as_slice() {
                    [] => Err(ScanMiss::NotFound { ips: shown(ips) }),
                    [id] => {
                        let path = candidates[id].clone();
                        open_checked(&path, *id)
                            .map(|file| Found {
                                file,
                                path,
                                id: *id,
                            })
                            .map_err(|e| ScanMiss::Vanished {
                                ips: shown(ips),
                                reason: e.to_string(),
                            })
                    }
                    many => Err(ScanMiss::Ambiguous {
                        ips: shown(ips),
                        count: many.len(),
                    }),
                };
                (key.clone(), result)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_root_namespaces_are_never_candidates() {
        let own = ns_id(&std::fs::metadata("/proc/self/ns/net").expect("own netns"));
        let found = namespaces(Path::new("/proc"), &[own]);
        assert!(!found.contains_key(&own));
        // Our own process is a candidate when not skipped.
        assert!(namespaces(Path::new("/proc"), &[]).contains_key(&own));
    }

    #[test]
    fn arp_lines_give_complete_entries_only() {
        let table =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
            10.244.1.2       0x1         0x2         0a:58:0a:f4:01:02     *        cni0\n\
            10.244.1.3       0x1         0x0         00:00:00:00:00:00     *        cni0\n";
        assert_eq!(
            parse_arp(table, "10.244.1.2".parse().expect("ip")),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02])
        );
        assert_eq!(
            parse_arp(table, "10.244.1.3".parse().expect("ip")),
            None,
            "incomplete"
        );
        assert_eq!(
            parse_arp(table, "10.244.1.4".parse().expect("ip")),
            None,
            "absent"
        );
    }

    #[test]
    fn a_neighbour_entry_naming_no_candidate_is_probed_again() {
        use std::cell::{Cell, RefCell};
        let (ours, old) = ([0x0a, 0x58, 0, 0, 0, 1], [0x0a, 0x58, 0, 0, 0, 2]);
        let wait = Duration::from_millis(200);
        let poll = Duration::from_millis(1);
        let probes = Cell::new(0);
        let probe = || probes.set(probes.get() + 1);

        // The entry names a candidate: trusted, no probe.
        let got = confirmed_mac(|| Some(ours), probe, &[ours], wait, poll);
        assert_eq!((got, probes.get()), (Some(ours), 0));

        // A STALE entry of the IP's earlier holder: probed, and the re-resolved entry wins.
        let reads = RefCell::new(vec![Some(ours), Some(old), Some(old)]);
        let read = || reads.borrow_mut().pop().flatten();
        let got = confirmed_mac(read, probe, &[ours], wait, poll);
        assert_eq!((got, probes.get()), (Some(ours), 1));

        // It never changes: no candidate is the node's, after the wait.
        let started = Instant::now();
        let got = confirmed_mac(|| Some(old), probe, &[ours], wait, poll);
        assert_eq!((got, probes.get()), (None, 2));
        assert!(started.elapsed() >= wait);

        // No entry at first: probed; the answer comes.
        let reads = RefCell::new(vec![Some(ours), None]);
        let read = || reads.borrow_mut().pop().flatten();
        assert_eq!(confirmed_mac(read, probe, &[ours], wait, poll), Some(ours));
        assert_eq!(probes.get(), 3);
    }

    #[test]
    fn a_pod_address_not_on_the_node_is_not_found() {
        let key = ("demo".to_string(), "web".to_string());
        // TEST-NET-3: never assigned to a real interface.
        let ips = vec!["203.0.113.77".parse().expect("ip")];
        let mut scanner = Scanner::default();
        let found = scanner.find(&[(key.clone(), ips)]);
        assert!(matches!(found[&key], Err(ScanMiss::NotFound { .. })));
        assert!(scanner.find(&[]).is_empty());
    }
}
