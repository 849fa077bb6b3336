//! `e2e-tcp hold <ip:port> <n> <until-file>`: many concurrent connections to an echo server.
//!
//! Opens `n` connections (from 64 threads), sends each its own 8-byte tag and checks the echo,
//! keeps every one open and prints `held ok=<n> failed=<n>` (plus a `fail <i>: <why>` line for
//! each of the first failures). Then waits for `until-file` to exist, sends a second tag on
//! every held connection, checks it, and prints `verified ok=<n> failed=<n>`. Exits 0 either way:
//! the caller asserts on the counts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

const THREADS: usize = 64;
const FAILURES_SHOWN: usize = 10;
const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn hold(addr: &str, n: &str, until: &str) -> Result<(), String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let n: usize = n.parse().map_err(|e| format!("bad count {n:?}: {e}"))?;
    let until = Path::new(until).to_path_buf();
    let open: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                (t..n)
                    .step_by(THREADS)
                    .map(|i| (i, open_one(addr, i)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for t in open {
        for (i, r) in t.join().map_err(|_| "an opening thread panicked")? {
            match r {
                Ok(s) => held.push((i, s)),
                Err(e) => failures.push(format!("fail {i}: open: {e}")),
            }
        }
    }
    report("held", held.len(), &failures);
    while !until.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ok = 0;
    let mut failures = Vec::new();
    for (i, s) in &mut held {
        match exchange(s, tag(*i, b'v')) {
            Ok(()) => ok += 1,
            Err(e) => failures.push(format!("fail {i}: verify: {e}")),
        }
    }
    report("verified", ok, &failures);
    Ok(())
}

fn report(what: &str, ok: usize, failures: &[String]) {
    println!("{what} ok={ok} failed={}", failures.len());
    for f in failures.iter().take(FAILURES_SHOWN) {
        println!("{f}");
    }
}

/// A tag no other connection sends: a crossed or corrupted stream cannot pass the check.
fn tag(i: usize, phase: u8) -> [u8; 8] {
    let mut t = [phase; 8];
    t[..4].copy_from_slice(&(i as u32).to_be_bytes());
    t
}

fn open_one(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    exchange(&mut s, tag(i, b'o'))?;
    Ok(s)
}

fn exchange(s: &mut TcpStream, tag: [u8; 8]) -> std::io::Result<()> {
    s.write_all(&tag)?;
    let mut back = [0u8; 8];
    s.read_exact(&mut back)?;
    if back == tag {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "echo {back:?} is not what was sent ({tag:?})"
        )))
    }
}

/// `e2e-tcp silent <ip:port> <secs>`: connects, sends nothing, and reports how the server ends
/// it: `silent ended=<eof|reset|data|timeout|error> ms=<n>` (`timeout`: still open after
/// `secs`).
pub fn silent(addr: &str, secs: &str) -> Result<(), String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let secs: u64 = secs
        .parse()
        .map_err(|e| format!("bad seconds {secs:?}: {e}"))?;
    let start = std::time::Instant::now();
    let mut s =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(secs)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1];
    let ended = match s.read(&mut buf) {
        Ok(0) => "eof",
        Ok(_) => "data",
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "timeout"
        }
        Err(_) => "error",
    };
    println!("silent ended={ended} ms={}", start.elapsed().as_millis());
    Ok(())
}
