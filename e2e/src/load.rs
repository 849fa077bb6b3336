//! Clients that run through a whole fault, for the reliability matrix: a fixed-rate HTTP client
//! ([`RateClient`], a new connection per request) and a long-lived byte-checking stream
//! ([`StreamClient`]). Each is an `e2e-tcp` process in a pod; [`RateClient::finish`] and
//! [`StreamClient::finish`] stop it and return what it saw.
//!
//! The servers they need: any HTTP server answering `200` for the rate client (e.g.
//! [`Topology::tcp_hello`] with a canned response), an echo server ([`Topology::tcp_echo`]) for
//! the stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::process::Proc;
use crate::sys::InNetns;
use crate::topology::Topology;

/// A canned `200` response for [`Topology::tcp_hello`], so it serves the rate client.
pub const HTTP_OK: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok";

/// How long a stopped client may take to finish its last requests.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

fn stop_file(topo: &Topology, what: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    topo.dir().join(format!("stop-{what}-{n}"))
}

/// The `key=value` fields of the last line of `log` that starts with `prefix`.
fn fields(log: &str, prefix: &str) -> Option<Vec<(String, u64)>> {
    let line = log.lines().rev().find(|l| l.starts_with(prefix))?;
    Some(
        line[prefix.len()..]
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

fn field(fields: &[(String, u64)], key: &str) -> u64 {
    fields.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

/// What a [`RateClient`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateReport {
    /// Requests started.
    pub sent: u64,
    /// Requests answered `200` in full.
    pub ok: u64,
    /// Requests that failed (refused, reset, timed out, wrong answer).
    pub failed: u64,
    /// Slowest successful request, in milliseconds (0 in a progress report).
    pub max_ms: u64,
    /// 99th percentile of successful requests, in milliseconds (0 in a progress report).
    pub p99_ms: u64,
    /// One line per failure: `fail n=<i> at_ms=<ms since start> err=<why>`.
    pub failures: Vec<String>,
}

/// A fixed-rate HTTP/1.1 client (`e2e-tcp rate`): a new TCP connection per `GET /`.
pub struct RateClient {
    proc: Proc,
    stop: PathBuf,
}

impl RateClient {
    /// Starts `rps` requests a second from `netns` to `addr`.
    pub fn start(
        topo: &Topology,
        netns: &(impl InNetns + ?Sized),
        addr: SocketAddr,
        rps: u32,
    ) -> anyhow::Result<RateClient> {
        let stop = stop_file(topo, "rate");
        let stop_arg = stop.to_string_lossy().into_owned();
        let proc = topo.spawn_in(
            netns,
            Topology::tcp_tool()?,
            &[
                "rate",
                &addr.to_string(),
                "--rps",
                &rps.to_string(),
                "--until-file",
                &stop_arg,
            ],
            &[],
        )?;
        Ok(RateClient { proc, stop })
    }

    /// Counts so far (from the last progress line, about a second old).
    pub fn progress(&self) -> RateReport {
        let log = self.proc.log();
        let f = fields(&log, "progress ").unwrap_or_default();
        RateReport {
            sent: field(&f, "sent"),
            ok: field(&f, "ok"),
            failed: field(&f, "failed"),
            failures: failures(&log),
            ..RateReport::default()
        }
    }

    /// Waits until at least `n` more requests succeeded than now (traffic is flowing).
    pub fn wait_for_successes(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let base = self.progress().ok;
        crate::wait_until(&format!("{n} more successful requests"), timeout, || {
            self.progress().ok >= base + n
        })
    }

    /// Stops sending, waits for the requests in flight and returns the totals.
    pub fn finish(self) -> anyhow::Result<RateReport> {
        std::fs::write(&self.stop, b"")?;
        let status = self.proc.wait_exit(FINISH_TIMEOUT)?;
        let log = self.proc.log();
        let Some(f) = fields(&log, "rate done ") else {
            bail!(
                "rate client ended ({status}) without a report:\n{}",
                self.proc.log_tail()
            );
        };
        Ok(RateReport {
            sent: field(&f, "sent"),
            ok: field(&f, "ok"),
            failed: field(&f, "failed"),
            max_ms: field(&f, "max_ms"),
            p99_ms: field(&f, "p99_ms"),
            failures: failures(&log),
        })
    }
}

fn failures(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("fail "))
        .map(str::to_string)
        .collect()
}

/// What a [`StreamClient`] saw: every byte sent came back, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Bytes written.
    pub sent: u64,
    /// Bytes that came back and matched.
    pub verified: u64,
}

/// One long-lived connection to an echo server (`e2e-tcp stream`) that writes a known pattern
/// at a steady rate and checks every byte that comes back.
pub struct StreamClient {
    proc: Proc,
    stop: PathBuf,
}

impl StreamClient {
    /// Opens the connection from `netns` to the echo server at `addr`, writing `bytes_per_sec`.
    pub fn start(
        topo: &Topology,
        netns: &(impl InNetns + ?Sized),
        addr: SocketAddr,
        bytes_per_sec: u64,
    ) -> anyhow::Result<StreamClient> {
        let stop = stop_file(topo, "stream");
        let stop_arg = stop.to_string_lossy().into_owned();
        let proc = topo.spawn_in(
            netns,
            Topology::tcp_tool()?,
            &[
                "stream",
                &addr.to_string(),
                "--bytes-per-sec",
                &bytes_per_sec.to_string(),
                "--until-file",
                &stop_arg,
            ],
            &[],
        )?;
        proc.wait_for_log("stream open", Duration::from_secs(10))
            .context("the stream did not open")?;
        Ok(StreamClient { proc, stop })
    }

    /// Bytes verified so far (from the last progress line, about a second old).
    pub fn verified(&self) -> u64 {
        let f = fields(&self.proc.log(), "progress ").unwrap_or_default();
        field(&f, "verified")
    }

    /// Whether the stream is still open and correct.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Half-closes, waits for the echo of everything sent and returns the totals; an error if
    /// any byte was wrong, missing or late, or the connection broke.
    pub fn finish(self) -> anyhow::Result<StreamReport> {
        std::fs::write(&self.stop, b"")?;
        let status = self.proc.wait_exit(FINISH_TIMEOUT)?;
        let log = self.proc.log();
        match fields(&log, "stream done ") {
            Some(f) if status.success() => Ok(StreamReport {
                sent: field(&f, "sent"),
                verified: field(&f, "verified"),
            }),
            _ => bail!("the stream failed ({status}):\n{}", self.proc.log_tail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_last_matching_line() {
        let log = "progress sent=1 ok=1 failed=0\nfail n=3 at_ms=9 err=x\nprogress sent=5 ok=4 failed=1\n";
        let f = fields(log, "progress ").unwrap_or_default();
        assert_eq!(
            (field(&f, "sent"), field(&f, "ok"), field(&f, "failed")),
            (5, 4, 1)
        );
        assert_eq!(failures(log), vec!["fail n=3 at_ms=9 err=x".to_string()]);
        assert!(fields(log, "rate done ").is_none());
    }
}
