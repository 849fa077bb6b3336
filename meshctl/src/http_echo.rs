//! `meshctl http-echo`: the demo's workload, a tiny HTTP/1.1 server that answers every request
//! with who it is, who called (the peer address the app sees) and the request head.
//!
//! It exists so the demo needs nothing beyond the machine: no container image, no Python.
//! One request per connection (`Connection: close`), heads up to 16 KiB.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `meshctl http-echo`.
#[derive(Debug, Clone, Args)]
pub struct HttpEchoArgs {
    /// Port to listen on (all addresses).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Name put in every answer (defaults to the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Wait this long before answering (a slow backend, for timeout tests).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Answer every Nth request with 503 instead (a flaky backend, for retry tests); 0 never.
    #[arg(long, default_value_t = 0)]
    pub fail_every: u64,
}

/// How this server behaves, shared by its connections.
#[derive(Debug)]
struct Behaviour {
    name: String,
    delay: Duration,
    fail_every: u64,
    served: std::sync::atomic::AtomicU64,
}

/// Serves until killed.
pub async fn run(args: HttpEchoArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", args.port))
        .await
        .with_context(|| format!("listening on port {}", args.port))?;
    let name = args.name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "http-echo".into())
    });
    tracing::info!(port = args.port, %name, "http-echo listening");
    let behaviour = std::sync::Arc::new(Behaviour {
        name,
        delay: Duration::from_millis(args.delay_ms),
        fail_every: args.fail_every,
        served: std::sync::atomic::AtomicU64::new(0),
    });
    loop {
        let (stream, peer) = listener.accept().await.context("accepting")?;
        let behaviour = behaviour.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, peer, &behaviour).await {
                tracing::debug!(%peer, error = %e, "http-echo connection failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, peer: SocketAddr, b: &Behaviour) -> anyhow::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .context("request head timed out")??;
    tokio::time::sleep(b.delay).await;
    let n = b.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let status = if b.fail_every > 0 && n.is_multiple_of(b.fail_every) {
        "503 Service Unavailable"
    } else {
        "200 OK"
    };
    let body = response_body(&b.name, peer, &head);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("closed before the end of the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        anyhow::ensure!(buf.len() <= MAX_HEAD, "request head over {MAX_HEAD} bytes");
    }
}

/// Index just past the blank line ending an HTTP/1 head, if present.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The text answer: server name, the caller as the app sees it, and the request head.
fn response_body(name: &str, peer: SocketAddr, head: &str) -> String {
    let mut body = format!("hello from {name}\nyou are {}\n", peer.ip());
    for line in head.lines().filter(|l| !l.is_empty()) {
        body.push_str("> ");
        body.push_str(line);
        body.push('\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"),
            Some(24)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn the_answer_names_the_server_the_caller_and_echoes_the_head() {
        let peer: SocketAddr = "10.244.1.2:40000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let body = response_body("server", peer, "GET / HTTP/1.1\r\nx-demo: 1\r\n\r\n");
        assert_eq!(
            body,
            "hello from server\nyou are 10.244.1.2\n> GET / HTTP/1.1\n> x-demo: 1\n"
        );
    }

    #[tokio::test]
    async fn it_answers_a_real_request_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let b = Behaviour {
                name: "t".into(),
                delay: Duration::ZERO,
                fail_every: 0,
                served: Default::default(),
            };
            let (s, peer) = listener.accept().await.expect("accept");
            answer(s, peer, &b).await.expect("answer");
        });
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("hello from t\nyou are 127.0.0.1\n> GET /x HTTP/1.1\n> host: a\n"));
    }

    #[tokio::test]
    async fn fail_every_answers_every_nth_request_with_503() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let b = std::sync::Arc::new(Behaviour {
            name: "t".into(),
            delay: Duration::ZERO,
            fail_every: 2,
            served: Default::default(),
        });
        tokio::spawn(async move {
            loop {
                let (s, peer) = listener.accept().await.expect("accept");
                answer(s, peer, &b).await.expect("answer");
            }
        });
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
            statuses.push(out.split(' ').nth(1).unwrap_or_default().to_string());
        }
        assert_eq!(statuses, ["200", "503", "200", "503"]);
    }
}
