//! TCP inside a namespace, through the `e2e-tcp` helper binary of this crate.

use std::net::SocketAddr;
use std::time::Duration;

use crate::process::Proc;
use crate::sys::InNetns;
use crate::topology::Topology;

/// How long a server may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

impl Topology {
    /// Path of the `e2e-tcp` helper (built with this crate's tests).
    pub fn tcp_tool() -> anyhow::Result<std::path::PathBuf> {
        Topology::binary("e2e-tcp")
    }

    fn tcp_server(&self, netns: &(impl InNetns + ?Sized), args: &[&str]) -> anyhow::Result<Proc> {
        let proc = self.spawn_in(netns, Topology::tcp_tool()?, args, &[])?;
        proc.wait_for_log("listening on", LISTEN_TIMEOUT)?;
        Ok(proc)
    }

    /// Starts an echo server on `0.0.0.0:port` inside `netns` and waits until it listens.
    ///
    /// Its log has one `accepted peer=<ip:port> local=<ip:port> orig_dst=<ip:port|->` line
    /// per connection (`orig_dst` is the destination before any NAT redirect), and a
    /// `closed peer=<ip:port> bytes=<n>` line when it ends.
    pub fn tcp_echo(&self, netns: &(impl InNetns + ?Sized), port: u16) -> anyhow::Result<Proc> {
        self.tcp_server(netns, &["echo", &port.to_string()])
    }

    /// Starts a server on `port` that writes `text` to every connection, half-closes, and reads
    /// until the peer closes. (A canned HTTP response in `text` makes a tiny HTTP server.)
    pub fn tcp_hello(
        &self,
        netns: &(impl InNetns + ?Sized),
        port: u16,
        text: &str,
    ) -> anyhow::Result<Proc> {
        self.tcp_server(netns, &["hello", &port.to_string(), text])
    }

    /// Starts a server on `port` that reads every connection to the end and logs
    /// `received <n> bytes from <peer>: <first 200 bytes, lossy>`.
    pub fn tcp_sink(&self, netns: &(impl InNetns + ?Sized), port: u16) -> anyhow::Result<Proc> {
        self.tcp_server(netns, &["sink", &port.to_string()])
    }

    /// From inside `netns`: connects to `to`, sends `payload`, half-closes, and returns
    /// everything received until the peer closes. Fails when the connection fails.
    pub fn tcp_send(
        &self,
        netns: &(impl InNetns + ?Sized),
        to: SocketAddr,
        payload: &str,
    ) -> anyhow::Result<String> {
        self.exec_in(
            netns,
            Topology::tcp_tool()?,
            &["send", &to.to_string(), payload],
        )
    }

    /// From inside `netns`: sends `n` bytes of a fixed pattern to an echo server at `to` and
    /// fails unless exactly the same `n` bytes come back.
    pub fn tcp_send_bytes(
        &self,
        netns: &(impl InNetns + ?Sized),
        to: SocketAddr,
        n: u64,
    ) -> anyhow::Result<()> {
        let out = self.exec_in(
            netns,
            Topology::tcp_tool()?,
            &["send-bytes", &to.to_string(), &n.to_string()],
        )?;
        anyhow::ensure!(
            out.trim() == format!("echoed {n} bytes"),
            "unexpected e2e-tcp output: {out}"
        );
        Ok(())
    }

    /// From inside `netns`: `n` short connections in a row to the echo server at `to`, the
    /// client closing each first; with `source_port`, all from that port. Each connection's
    /// local address, in order.
    pub fn tcp_churn(
        &self,
        netns: &(impl InNetns + ?Sized),
        to: SocketAddr,
        n: u32,
        source_port: Option<u16>,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let mut args = vec!["churn".to_string(), to.to_string(), n.to_string()];
        args.extend(source_port.map(|p| p.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.exec_in(netns, Topology::tcp_tool()?, &args)?;
        out.lines()
            .filter_map(|l| l.strip_prefix("local="))
            .map(|a| {
                a.parse()
                    .map_err(|e| anyhow::anyhow!("bad local address {a:?}: {e}"))
            })
            .collect()
    }

    /// From inside `netns`: `GET path` over HTTP/1.1 at `to` (ztunnel's admin, metrics and
    /// readiness endpoints). Any status is `Ok`; a connection failure is an error.
    pub fn http_get(
        &self,
        netns: &(impl InNetns + ?Sized),
        to: SocketAddr,
        path: &str,
    ) -> anyhow::Result<HttpResponse> {
        let out = self.exec_in(
            netns,
            Topology::tcp_tool()?,
            &["http-get", &to.to_string(), path],
        )?;
        let (first, body) = out.split_once('\n').unwrap_or((&out, ""));
        let status = first
            .strip_prefix("HTTP ")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected e2e-tcp output: {out}"))?;
        Ok(HttpResponse {
            status,
            body: body.to_string(),
        })
    }

    /// Waits until `GET path` at `to` from inside `netns` answers 200 (readiness).
    pub fn wait_http_ok(
        &self,
        netns: &(impl InNetns + ?Sized),
        to: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<HttpResponse> {
        crate::retry_until(
            &format!("GET http://{to}{path} to answer 200"),
            timeout,
            || {
                let resp = self.http_get(netns, to, path)?;
                anyhow::ensure!(resp.status == 200, "status {}: {}", resp.status, resp.body);
                Ok(resp)
            },
        )
    }
}

/// An HTTP response read by [`Topology::http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (lossy UTF-8, de-chunked).
    pub body: String,
}
