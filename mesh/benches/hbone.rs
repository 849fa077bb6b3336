//! HBONE against direct TCP and a plain TCP proxy over loopback, in one process: bulk
//! throughput and 1-byte round-trip latency with 1 and 8 concurrent streams.
//!
//! ```text
//! cargo bench -p mesh --features testing --bench hbone
//! ```
//!
//! The application is a TCP sink (reads to EOF, answers the byte count) and a TCP echo.
//! *direct* connects to it with TCP; *TCP proxy* connects to an in-process listener that
//! connects to the application and runs [`mesh::copy::copy_bidirectional`] (the same two TCP
//! hops as HBONE, without TLS and HTTP/2); *HBONE* opens a CONNECT stream through
//! [`mesh::hbone::Pool`] (mutual TLS with certificates from [`mesh::testing::TestCa`]) to a
//! [`mesh::hbone::Server`] whose handler connects to the application with TCP and runs
//! [`mesh::copy::copy_bidirectional`]. Streams are opened before the clock starts; all streams
//! of a path share one pooled HTTP/2 connection, as they would in ztunnel.
//!
//! Client, tunnel and application share one multi-threaded tokio runtime (a worker per core),
//! so the numbers are what the whole path costs on this machine, not what a node tunnel alone
//! would sustain. Run without `--bench` (as `cargo test --all-targets` does) it makes a quick
//! pass with small sizes, to check that the paths still work.
#![allow(clippy::print_stdout)] // The table on stdout is the point of a benchmark.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use mesh::cert::WorkloadCertificate;
use mesh::hbone::{ConnectMeta, H2Config, InboundRequest, Pool, PoolKey, Server, TcpConnector};
use mesh::testing::TestCa;
use mesh::Identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How much work each measurement does.
struct Sizes {
    /// Bytes sent per bulk run, split evenly across the streams.
    bulk_bytes: u64,
    /// Bulk runs per cell; the median is reported.
    bulk_runs: usize,
    /// 1-byte round trips per latency cell, split across the streams.
    round_trips: usize,
    /// Unrecorded round trips per stream before the clock starts.
    warmup_round_trips: usize,
}

const FULL: Sizes = Sizes {
    bulk_bytes: 256 << 20,
    bulk_runs: 7,
    round_trips: 20_000,
    warmup_round_trips: 200,
};

const SMOKE: Sizes = Sizes {
    bulk_bytes: 4 << 20,
    bulk_runs: 1,
    round_trips: 400,
    warmup_round_trips: 10,
};

const STREAMS: [usize; 2] = [1, 8];
const WRITE_CHUNK: usize = 256 * 1024;

/// A connected byte stream, whichever path it took.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Proxy,
    Hbone,
}

/// Everything a client needs to reach the application on either path.
struct Bench {
    sink: SocketAddr,
    echo: SocketAddr,
    /// The plain TCP proxies, one per application.
    proxy: Proxies,
    pool: Pool,
    key: PoolKey,
    cert: WorkloadCertificate,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let sink = spawn_app(serve_sink).await?;
        let echo = spawn_app(serve_echo).await?;
        let proxy = Proxies {
            sink: spawn_app(move |tcp| forward_tcp(tcp, sink)).await?,
            echo: spawn_app(move |tcp| forward_tcp(tcp, echo)).await?,
        };

        let ca = TestCa::new("cluster.local", Duration::from_secs(3600));
        let server_id: Identity = "spiffe://cluster.local/ns/bench/sa/server".parse()?;
        let client_id: Identity = "spiffe://cluster.local/ns/bench/sa/client".parse()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let hbone = listener.local_addr()?;
        let server = Arc::new(Server::new(
            H2Config::default(),
            Arc::new(Arc::new(ca.issue(&server_id))),
        ));
        tokio::spawn(server.serve(listener, forward_to_app));

        Ok(Bench {
            sink,
            echo,
            proxy,
            pool: Pool::new(H2Config::default(), Arc::new(TcpConnector)),
            key: PoolKey::new(client_id.clone(), vec![server_id], hbone, None),
            cert: ca.issue(&client_id),
        })
    }

    async fn open(&self, path: Path, app: SocketAddr) -> anyhow::Result<Box<dyn Io>> {
        Ok(match path {
            Path::Direct | Path::Proxy => {
                let to = match path {
                    Path::Proxy if app == self.sink => self.proxy.sink,
                    Path::Proxy => self.proxy.echo,
                    _ => app,
                };
                let tcp = TcpStream::connect(to).await?;
                tcp.set_nodelay(true)?;
                Box::new(tcp)
            }
            Path::Hbone => Box::new(
                self.pool
                    .connect(&self.key, &self.cert, app, &ConnectMeta::default())
                    .await?,
            ),
        })
    }

    async fn open_many(
        &self,
        path: Path,
        app: SocketAddr,
        n: usize,
    ) -> anyhow::Result<Vec<Box<dyn Io>>> {
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            streams.push(self.open(path, app).await?);
        }
        Ok(streams)
    }

    /// Sends `total` bytes split across `n` streams; returns Gbit/s, timed from the first byte
    /// to the last stream's byte count coming back from the sink.
    async fn bulk(&self, path: Path, n: usize, total: u64) -> anyhow::Result<f64> {
        let per_stream = total / n as u64;
        let streams = self.open_many(path, self.sink, n).await?;
        let start = Instant::now();
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let chunk = vec![0x5a_u8; WRITE_CHUNK];
                    let mut left = per_stream;
                    while left > 0 {
                        let len = left.min(WRITE_CHUNK as u64) as usize;
                        s.write_all(&chunk[..len]).await?;
                        left -= len as u64;
                    }
                    s.shutdown().await?;
                    let received = s.read_u64().await?;
                    ensure!(
                        received == per_stream,
                        "sink got {received} of {per_stream} bytes"
                    );
                    Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        let elapsed = start.elapsed().as_secs_f64();
        Ok((per_stream * n as u64) as f64 * 8.0 / elapsed / 1e9)
    }

    /// `total` 1-byte round trips split across `n` concurrent streams.
    async fn latency(&self, path: Path, n: usize, sizes: &Sizes) -> anyhow::Result<Latency> {
        let per_stream = sizes.round_trips / n;
        let warmup = sizes.warmup_round_trips;
        let mut streams = self.open_many(path, self.echo, n).await?;
        for s in &mut streams {
            for _ in 0..warmup {
                round_trip(s).await?;
            }
        }
        let start = Instant::now();
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_stream);
                    for _ in 0..per_stream {
                        let t = Instant::now();
                        round_trip(&mut s).await?;
                        samples.push(t.elapsed());
                    }
                    s.shutdown().await?;
                    Ok::<_, anyhow::Error>(samples)
                })
            })
            .collect();
        let mut samples = Vec::with_capacity(per_stream * n);
        for task in tasks {
            samples.extend(task.await??);
        }
        let elapsed = start.elapsed().as_secs_f64();
        samples.sort_unstable();
        let pct = |p: f64| {
            let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e6
        };
        Ok(Latency {
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            per_sec: samples.len() as f64 / elapsed,
        })
    }
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
}

async fn round_trip(s: &mut Box<dyn Io>) -> anyhow::Result<()> {
    s.write_all(&[1]).await?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).await?;
    Ok(())
}

/// Plain TCP proxies in front of the sink and the echo.
struct Proxies {
    sink: SocketAddr,
    echo: SocketAddr,
}

/// The plain proxy: connect to `app`, copy both ways.
async fn forward_tcp(mut tcp: TcpStream, app: SocketAddr) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(app).await?;
    upstream.set_nodelay(true)?;
    mesh::copy::copy_bidirectional(&mut tcp, &mut upstream)
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// The HBONE server's handler: connect to the application, answer 200, copy both ways.
async fn forward_to_app(req: InboundRequest) {
    let mut tcp = match TcpStream::connect(req.target()).await {
        Ok(tcp) => tcp,
        Err(_) => return req.reject(http::StatusCode::SERVICE_UNAVAILABLE),
    };
    let _ = tcp.set_nodelay(true);
    if let Ok(mut stream) = req.accept() {
        let _ = mesh::copy::copy_bidirectional(&mut stream, &mut tcp).await;
    }
}

async fn spawn_app<F, Fut>(serve: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp));
        }
    });
    Ok(addr)
}

/// Reads to EOF, then answers the byte count (u64, big-endian) and closes.
async fn serve_sink(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut total = 0u64;
    loop {
        match tcp.read(&mut buf).await? {
            0 => break,
            n => total += n as u64,
        }
    }
    tcp.write_u64(total).await?;
    tcp.shutdown().await
}

/// Echoes every byte until EOF.
async fn serve_echo(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    loop {
        match tcp.read(&mut buf).await? {
            0 => return tcp.shutdown().await,
            n => tcp.write_all(&buf[..n]).await?,
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One line of the table.
struct Row {
    test: &'static str,
    streams: usize,
    metric: &'static str,
    direct: f64,
    proxy: f64,
    hbone: f64,
    decimals: usize,
}

const PATHS: [Path; 3] = [Path::Direct, Path::Proxy, Path::Hbone];

async fn measure(bench: &Bench, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in STREAMS {
        let mut gbps = [0.0; 3];
        for (i, path) in PATHS.into_iter().enumerate() {
            let mut runs = Vec::with_capacity(sizes.bulk_runs);
            for _ in 0..sizes.bulk_runs {
                runs.push(bench.bulk(path, n, sizes.bulk_bytes).await?);
            }
            gbps[i] = median(runs);
        }
        rows.push(Row {
            test: "bulk",
            streams: n,
            metric: "Gbit/s",
            direct: gbps[0],
            proxy: gbps[1],
            hbone: gbps[2],
            decimals: 2,
        });
    }
    for n in STREAMS {
        let mut lat = Vec::with_capacity(PATHS.len());
        for path in PATHS {
            lat.push(bench.latency(path, n, sizes).await?);
        }
        let row = |metric, f: fn(&Latency) -> f64, decimals| Row {
            test: "1-byte rr",
            streams: n,
            metric,
            direct: f(&lat[0]),
            proxy: f(&lat[1]),
            hbone: f(&lat[2]),
            decimals,
        };
        rows.push(row("p50 µs", |l| l.p50_us, 1));
        rows.push(row("p99 µs", |l| l.p99_us, 1));
        rows.push(row("round trips/s", |l| l.per_sec, 0));
    }
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "| {:<9} | {:>7} | {:<13} | {:>10} | {:>10} | {:>10} | {:>12} |",
        "test", "streams", "metric", "direct", "TCP proxy", "HBONE", "HBONE/direct"
    );
    println!(
        "|-----------|--------:|---------------|-----------:|-----------:|-----------:|-------------:|"
    );
    for r in rows {
        println!(
            "| {:<9} | {:>7} | {:<13} | {:>10.*} | {:>10.*} | {:>10.*} | {:>12.2} |",
            r.test,
            r.streams,
            r.metric,
            r.decimals,
            r.direct,
            r.decimals,
            r.proxy,
            r.decimals,
            r.hbone,
            r.hbone / r.direct
        );
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` runs bench targets without it.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full { &FULL } else { &SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let started = Instant::now();
    let rows = runtime.block_on(async {
        let bench = Bench::start().await?;
        measure(&bench, sizes).await
    })?;
    println!(
        "hbone bench: {} MiB per bulk run (median of {}), {} round trips per latency cell, {} worker threads",
        sizes.bulk_bytes >> 20,
        sizes.bulk_runs,
        sizes.round_trips,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    print_table(&rows);
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
