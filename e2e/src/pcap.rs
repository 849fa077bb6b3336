//! Packet capture with `tcpdump` inside a namespace, to check what crosses the wire.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::process::Proc;
use crate::sys::{self, InNetns};
use crate::topology::Topology;

/// A running `tcpdump` writing a pcap file in the test's directory.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    path: PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` inside `netns` with the pcap `filter` (empty: everything),
    /// and returns once tcpdump is listening.
    ///
    /// Between nodes, capture on the underlay: `Capture::start(&topo,
    /// topo.underlay_netns().unwrap(), "br0", "tcp")`, or on a node's `ul0`.
    pub fn start(
        topo: &Topology,
        netns: &(impl InNetns + ?Sized),
        iface: &str,
        filter: &str,
    ) -> anyhow::Result<Capture> {
        let tcpdump = sys::tool("tcpdump")?;
        let n = std::fs::read_dir(topo.dir()).map_or(0, Iterator::count);
        let path = topo.dir().join(format!("capture-{iface}-{n}.pcap"));
        let path_str = path.to_str().context("temp dir path is not UTF-8")?;
        // -Z root: do not drop privileges, so the file in our root-owned dir can be written.
        // -U: write each packet as it comes, so nothing is lost to buffering.
        let mut args = vec![
            "-Z", "root", "-U", "-n", "-s", "0", "-i", iface, "-w", path_str,
        ];
        if !filter.is_empty() {
            args.push(filter);
        }
        let proc = topo.spawn_in(netns, tcpdump, &args, &[])?;
        proc.wait_for_log("listening on", Duration::from_secs(5))?;
        Ok(Capture { proc, path })
    }

    /// Where the pcap file is written.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Stops tcpdump and returns the pcap file's bytes (search them with [`contains`]).
    pub fn stop(self) -> anyhow::Result<Vec<u8>> {
        self.proc.stop()?;
        std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))
    }
}

/// Whether `needle` occurs in `haystack` (a payload marker in a pcap file, say).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn finds_markers() {
        assert!(contains(b"..abc..", b"abc"));
        assert!(!contains(b"..ab c..", b"abc"));
        assert!(contains(b"x", b""));
        assert!(!contains(b"", b"x"));
    }
}
