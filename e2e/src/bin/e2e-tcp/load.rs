//! Clients that run through a whole fault: `rate` (fixed-rate HTTP/1.1, a new connection per
//! request) and `stream` (one long-lived connection to an echo server, every byte checked).
//! Both run until a stop file exists, so a test can start one, make the fault happen, and then
//! stop it and read its last line.
//!
//! `rate` prints `fail n=<i> at_ms=<ms> err=<why>` at once for every failed request,
//! `progress sent= ok= failed=` every second and `rate done sent= ok= failed= max_ms= p99_ms=`
//! at the end. `stream` prints `stream open`, `progress sent= verified=` every second and
//! `stream done sent= verified=`, or fails (exit 1) at the first wrong, missing or late byte.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{connect, pattern};

/// Requests in flight at most (a request that hangs ties up one of these).
const WORKERS: usize = 64;

/// Options shared by both clients: `--until-file PATH` and one numeric rate flag.
struct Opts {
    addr: String,
    until: String,
    rate: u64,
}

impl Opts {
    fn parse(args: &[&str], rate_flag: &str, default_rate: u64) -> Result<Opts, String> {
        let (addr, rest) = args.split_first().ok_or("missing address")?;
        let mut opts = Opts {
            addr: (*addr).to_string(),
            until: String::new(),
            rate: default_rate,
        };
        let mut it = rest.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match *flag {
                "--until-file" => opts.until = (*value).to_string(),
                f if f == rate_flag => {
                    opts.rate = value
                        .parse()
                        .ok()
                        .filter(|r| *r > 0)
                        .ok_or_else(|| format!("bad {rate_flag} {value:?}"))?;
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if opts.until.is_empty() {
            return Err("--until-file is required".into());
        }
        Ok(opts)
    }

    fn stopped(&self) -> bool {
        Path::new(&self.until).exists()
    }
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_ms: Mutex<Vec<u64>>,
}

/// `e2e-tcp rate <ip:port> --rps N --until-file PATH`.
pub fn rate(args: &[&str]) -> Result<(), String> {
    let opts = Arc::new(Opts::parse(args, "--rps", 200)?);
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<u64>();
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (rx, opts, counts) = (rx.clone(), opts.clone(), counts.clone());
            std::thread::spawn(move || loop {
                let next = rx
                    .lock()
                    .map_err(|_| ())
                    .and_then(|r| r.recv().map_err(|_| ()));
                let Ok(n) = next else { return };
                let began = Instant::now();
                match request(&opts.addr) {
                    Ok(()) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = counts.latencies_ms.lock() {
                            l.push(began.elapsed().as_millis() as u64);
                        }
                    }
                    Err(e) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        let at = began.duration_since(start).as_millis();
                        println!("fail n={n} at_ms={at} err={e}");
                        let _ = std::io::stdout().flush();
                    }
                }
            })
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / opts.rate as f64);
    let mut n = 0u64;
    let mut next_progress = start + Duration::from_secs(1);
    while !opts.stopped() {
        let due = start + period.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if tx.send(n).is_err() {
            break;
        }
        counts.sent.fetch_add(1, Ordering::Relaxed);
        n += 1;
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            print_counts("progress", &counts);
        }
    }
    drop(tx);
    for worker in workers {
        let _ = worker.join();
    }
    let mut latencies = counts
        .latencies_ms
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let max = latencies.last().copied().unwrap_or(0);
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0);
    println!(
        "rate done sent={} ok={} failed={} max_ms={max} p99_ms={p99}",
        counts.sent.load(Ordering::Relaxed),
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    Ok(())
}

fn print_counts(what: &str, counts: &Counts) {
    println!(
        "{what} sent={} ok={} failed={}",
        counts.sent.load(Ordering::Relaxed),
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    let _ = std::io::stdout().flush();
}

/// One `GET /` on a new connection; `Ok` only for a whole `200` response.
fn request(addr: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read after {} bytes: {e}", reply.len()))?;
    let head = String::from_utf8_lossy(&reply[..reply.len().min(64)]).into_owned();
    let status_ok = head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200");
    if !status_ok {
        return Err(format!("reply {head:?} ({} bytes)", reply.len()));
    }
    Ok(())
}

/// `e2e-tcp stream <ip:port> --until-file PATH [--bytes-per-sec N]`.
pub fn stream(args: &[&str]) -> Result<(), String> {
    let opts = Opts::parse(args, "--bytes-per-sec", 64 * 1024)?;
    let stream = connect(&opts.addr)?;
    println!("stream open");
    let _ = std::io::stdout().flush();
    let sent = Arc::new(AtomicU64::new(0));
    let verified = Arc::new(AtomicU64::new(0));
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let read = {
        let verified = verified.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut at = 0u64;
            loop {
                let k = reader
                    .read(&mut buf)
                    .map_err(|e| format!("read after {at} bytes: {e}"))?;
                if k == 0 {
                    return Ok(());
                }
                for (j, b) in buf[..k].iter().enumerate() {
                    let i = at + j as u64;
                    if *b != pattern(i) {
                        return Err(format!("byte {i} is {b:#04x}, not {:#04x}", pattern(i)));
                    }
                }
                at += k as u64;
                verified.store(at, Ordering::Relaxed);
            }
        })
    };
    // 20 writes a second, so a stall shows within 50 ms of traffic.
    let chunk = (opts.rate / 20).max(1);
    let mut writer = stream;
    let mut buf = vec![0u8; usize::try_from(chunk).map_err(|e| e.to_string())?];
    let start = Instant::now();
    let mut next_progress = start + Duration::from_secs(1);
    let mut ticks = 0u32;
    while !opts.stopped() && !read.is_finished() {
        let at = sent.load(Ordering::Relaxed);
        for (j, b) in buf.iter_mut().enumerate() {
            *b = pattern(at + j as u64);
        }
        writer
            .write_all(&buf)
            .map_err(|e| format!("write after {at} bytes: {e}"))?;
        sent.store(at + chunk, Ordering::Relaxed);
        ticks += 1;
        if let Some(wait) =
            (start + Duration::from_millis(50) * ticks).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(1);
            println!(
                "progress sent={} verified={}",
                sent.load(Ordering::Relaxed),
                verified.load(Ordering::Relaxed)
            );
            let _ = std::io::stdout().flush();
        }
    }
    writer
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))?;
    read.join().map_err(|_| "reader panicked".to_string())??;
    let (sent, verified) = (
        sent.load(Ordering::Relaxed),
        verified.load(Ordering::Relaxed),
    );
    if verified != sent {
        return Err(format!("sent {sent} bytes, {verified} came back"));
    }
    println!("stream done sent={sent} verified={verified}");
    Ok(())
}
