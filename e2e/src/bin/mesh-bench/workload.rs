//! The in-pod side of the benchmark: the 1 KiB request/response server, the one-byte
//! new-connection server, the load generator (fixed rate or closed loop, over raw TCP, HTTP/1.1
//! or a new connection per exchange), and the idle-connection holder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::HttpConn;
use crate::MSG;

/// Serves 1 KiB request / 1 KiB response exchanges on `port` until killed (tokio, two
/// workers: 10,000 idle connections must not be 10,000 threads).
pub(crate) fn serve(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        println!("listening on 0.0.0.0:{port}");
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; MSG];
                let resp = [b'r'; MSG];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&resp).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// Serves one exchange per connection on `port` until killed: reads one byte, answers one
/// byte, then waits for the client to close (the client closes first, as a client would).
pub(crate) fn serve_conn(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        println!("conn listening on 0.0.0.0:{port}");
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() && s.write_all(&b).await.is_ok() {
                    let _ = s.read(&mut b).await;
                }
            });
        }
    })
}

/// What a load connection does once per request.
pub(crate) trait Exchange: Send + 'static {
    /// One request and its whole response.
    fn exchange(&mut self) -> std::io::Result<()>;
}

/// A raw TCP connection: `MSG` bytes out, `MSG` bytes back.
pub(crate) struct RawConn(TcpStream);

impl RawConn {
    pub(crate) fn connect(addr: SocketAddr) -> std::io::Result<RawConn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawConn(s))
    }
}

impl Exchange for RawConn {
    fn exchange(&mut self) -> std::io::Result<()> {
        self.0.write_all(&[b'q'; MSG])?;
        let mut buf = [0u8; MSG];
        self.0.read_exact(&mut buf)
    }
}

/// A new TCP connection per exchange: connect, one byte each way, close (the new-connection
/// rate).
pub(crate) struct NewConn(SocketAddr);

impl NewConn {
    pub(crate) fn new(addr: SocketAddr) -> std::io::Result<NewConn> {
        Ok(NewConn(addr))
    }
}

impl Exchange for NewConn {
    fn exchange(&mut self) -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&self.0, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"c")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
    }
}

impl Exchange for HttpConn {
    fn exchange(&mut self) -> std::io::Result<()> {
        HttpConn::exchange(self)
    }
}

/// The load generator on `conns` persistent connections (opened and warmed with one exchange
/// first: the mesh opens its HBONE connection lazily), for `secs`.
///
/// With `rate > 0` it is open loop: request `i` is due at `t0 + i/rate` and connection
/// `i % conns` sends it; latency counts from the due time, so a stalled connection's backlog
/// counts (no coordinated omission). With `rate == 0` it is closed loop: every connection sends
/// its next request as soon as the last is answered (the saturation rate). Prints
/// `count= errors= wall_s= rps= p50_us= p90_us= p99_us= max_us=`.
pub(crate) fn load<C: Exchange>(
    connect: impl Fn() -> std::io::Result<C>,
    rate: f64,
    secs: f64,
    conns: usize,
) -> anyhow::Result<()> {
    let total = if rate > 0.0 {
        (rate * secs) as u64
    } else {
        u64::MAX
    };
    let mut streams = Vec::new();
    for _ in 0..conns {
        let mut c = connect()?;
        c.exchange()?;
        streams.push(c);
    }
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(50);
    let end = t0 + Duration::from_secs_f64(secs);
    let period = if rate > 0.0 { 1.0 / rate } else { 0.0 };
    let mut handles = Vec::new();
    for (k, mut s) in streams.into_iter().enumerate() {
        let lat = lat.clone();
        let errors = errors.clone();
        handles.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            let mut i = k as u64;
            while i < total {
                let due = if rate > 0.0 {
                    t0 + Duration::from_secs_f64(i as f64 * period)
                } else {
                    Instant::now().max(t0)
                };
                if rate <= 0.0 && due >= end {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if s.exchange().is_err() {
                    let left = if rate > 0.0 {
                        total.saturating_sub(i).div_ceil(conns as u64)
                    } else {
                        1
                    };
                    errors.fetch_add(left, Ordering::Relaxed);
                    break;
                }
                mine.push(due.elapsed().as_micros() as u64);
                i += conns as u64;
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut lat = lat.lock().unwrap().clone();
    lat.sort_unstable();
    let p = |q: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)]
        }
    };
    println!(
        "count={} errors={} wall_s={wall:.3} rps={:.1} p50_us={} p90_us={} p99_us={} max_us={}",
        lat.len(),
        errors.load(Ordering::Relaxed),
        lat.len() as f64 / wall,
        p(0.50),
        p(0.90),
        p(0.99),
        lat.last().copied().unwrap_or(0)
    );
    Ok(())
}

/// Opens `n` connections to `addr` (8 threads), one 1 KiB exchange on each, prints `open n`,
/// and holds them until stdin closes.
pub(crate) fn idle(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    const THREADS: usize = 8;
    let opened: Vec<std::thread::JoinHandle<std::io::Result<Vec<TcpStream>>>> = (0..THREADS)
        .map(|t| {
            let mine = n / THREADS + usize::from(t < n % THREADS);
            std::thread::spawn(move || {
                let mut held = Vec::with_capacity(mine);
                for _ in 0..mine {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    // One exchange so the connection is really through end to end.
                    s.write_all(&[b'q'; MSG])?;
                    let mut buf = [0u8; MSG];
                    s.read_exact(&mut buf)?;
                    held.push(s);
                }
                Ok(held)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    for h in opened {
        let mine = h
            .join()
            .map_err(|_| anyhow::anyhow!("an opening thread panicked"))??;
        held.extend(mine);
    }
    println!("open {n}");
    // Held until stdin closes: the benchmark closes it once it has measured.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
    Ok(())
}
