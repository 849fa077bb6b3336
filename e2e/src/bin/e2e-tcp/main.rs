//! `e2e-tcp`: tiny TCP servers and clients that the e2e harness runs inside network
//! namespaces (`ip netns exec <ns> e2e-tcp ...`).
//!
//! ```text
//! e2e-tcp echo <port>               echo every connection back, then half-close
//! e2e-tcp hello <port> <text>       write <text> to every connection, then half-close
//! e2e-tcp sink <port>               read every connection to the end, log what came
//! e2e-tcp send <ip:port> <text>     send <text>, half-close, print the whole reply
//! e2e-tcp send-bytes <ip:port> <n>  send n pattern bytes to an echo server, check them
//! e2e-tcp http-get <ip:port> <path> HTTP/1.1 GET; prints `HTTP <status>`, then the body
//! e2e-tcp send-forged --to <ip:port> [--mark <n>] [--source <ip[:port]>] [--data <text>]
//!                     [--timeout-ms <n>]
//!                                   the attacker's client: see `send_forged`
//! e2e-tcp reset-server <port>       wait for a request, then reset the connection
//! e2e-tcp await-server <port>       wait for a request, answer `ready`, report how it ends
//! e2e-tcp await-reply <ip:port> <text>   send <text>, report how the server ends it
//! e2e-tcp reset-client <ip:port> <text>  send <text>, wait for `ready`, then reset
//! e2e-tcp hold <ip:port> <n> <until-file>  hold n verified connections open (see `hold.rs`)
//! e2e-tcp silent <ip:port> <secs>   connect, send nothing, report how the server ends it
//! e2e-tcp churn <ip:port> <n> [<source port>]
//!                                   n short connections in a row, the client closing first
//! e2e-tcp rate <ip:port> --until-file <path> [--rps <n>]
//!                                   fixed-rate HTTP/1.1 GETs, a new connection each (`load.rs`)
//! e2e-tcp stream <ip:port> --until-file <path> [--bytes-per-sec <n>]
//!                                   one long-lived connection to an echo server, every byte checked
//! ```
//!
//! The last four print `outcome=<reset|eof|data:..|refused|timeout|error:..> ms=<n>` (see
//! `reset.rs`).
//!
//! Servers listen on 0.0.0.0, print `listening on 0.0.0.0:<port>` once bound, then one line per
//! event. Clients exit 1 with a message on stderr when anything fails, except `send-forged`,
//! which reports what the network did (refused, reset, timeout) on stdout and exits 0.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod churn;
mod hold;
mod load;
mod reset;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["echo", port] => serve(port, echo),
        ["hello", port, text] => {
            let text = text.to_string();
            serve(port, move |s| hello(s, &text))
        }
        ["sink", port] => serve(port, sink),
        ["send", addr, text] => send(addr, text.as_bytes()),
        ["send-bytes", addr, n] => match n.parse() {
            Ok(n) => send_bytes(addr, n),
            Err(e) => Err(format!("bad byte count {n:?}: {e}")),
        },
        ["http-get", addr, path] => http_get(addr, path),
        ["send-gated", addr, first, gate, second] => send_gated(addr, first, gate, second),
        ["send-forged", flags @ ..] => ForgedOpts::parse(flags).and_then(|o| send_forged(&o)),
        ["reset-server", port] => serve(port, reset::reset_server),
        ["await-server", port] => serve(port, reset::await_server),
        ["await-reply", addr, text] => reset::await_reply(addr, text),
        ["reset-client", addr, text] => reset::reset_client(addr, text),
        ["hold", addr, n, until] => hold::hold(addr, n, until),
        ["silent", addr, secs] => hold::silent(addr, secs),
        ["churn", rest @ ..] => churn::churn(rest),
        ["rate", rest @ ..] => load::rate(rest),
        ["stream", rest @ ..] => load::stream(rest),
        _ => Err("usage: e2e-tcp echo PORT | hello PORT TEXT | sink PORT | \
                  send IP:PORT TEXT | send-bytes IP:PORT N | http-get IP:PORT PATH | \
                  send-gated IP:PORT FIRST GATE SECOND | \
                  send-forged --to IP:PORT [--mark N] [--source IP[:PORT]] [--data TEXT] \
                  [--timeout-ms N] | reset-server PORT | await-server PORT | \
                  await-reply IP:PORT TEXT | reset-client IP:PORT TEXT | \
                  hold IP:PORT N FILE | silent IP:PORT SECS | churn IP:PORT N [PORT] | \
                  rate IP:PORT --until-file PATH [--rps N] | \
                  stream IP:PORT --until-file PATH [--bytes-per-sec N]"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-tcp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve<F>(port: &str, handle: F) -> Result<(), String>
where
    F: Fn(TcpStream) -> std::io::Result<()> + Send + Sync + Clone + 'static,
{
    let port: u16 = port
        .parse()
        .map_err(|e| format!("bad port {port:?}: {e}"))?;
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind port {port}: {e}"))?;
    println!("listening on 0.0.0.0:{port}");
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                println!("accept error: {e}");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "-".to_string(), |a| a.to_string());
        let local = stream
            .local_addr()
            .map_or_else(|_| "-".to_string(), |a| a.to_string());
        println!(
            "accepted peer={peer} local={local} orig_dst={}",
            original_dst(&stream)
        );
        let handle = handle.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(stream) {
                println!("error peer={peer}: {e}");
            }
        });
    }
    Ok(())
}

/// The destination before NAT (SO_ORIGINAL_DST), or `-` when conntrack has none.
fn original_dst(stream: &TcpStream) -> String {
    match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst) {
        Ok(sin) => SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        ))
        .to_string(),
        Err(_) => "-".into(),
    }
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    println!("closed peer={peer} bytes={total}");
    Ok(())
}

fn hello(mut stream: TcpStream, text: &str) -> std::io::Result<()> {
    stream.write_all(text.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    // Drain what the peer sends until it closes: closing with unread data would reset the
    // connection and could destroy the reply before the peer reads it.
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    std::io::copy(&mut stream, &mut std::io::sink()).map(drop)
}

fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data)?;
    let head = &data[..data.len().min(200)];
    println!(
        "received {} bytes from {peer}: {}",
        data.len(),
        String::from_utf8_lossy(head)
    );
    Ok(())
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let to = addr
        .to_socket_addrs()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("bad address {addr:?}"))?;
    let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {to}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// A long-lived connection: sends `first`, logs `first sent`, waits until the file `gate`
/// exists (the test changes the world meanwhile), sends `second`, half-closes and prints the
/// whole reply.
fn send_gated(addr: &str, first: &str, gate: &str, second: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(first.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    println!("first sent");
    let _ = std::io::stdout().flush();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(gate).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("gate {gate} never opened"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stream
        .write_all(second.as_bytes())
        .map_err(|e| format!("write after the gate to {addr}: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close to {addr}: {e}"))?;
    let mut reply = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    println!("reply: {}", String::from_utf8_lossy(&reply));
    Ok(())
}

fn send(addr: &str, payload: &[u8]) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(payload)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close to {addr}: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    std::io::stdout()
        .write_all(&reply)
        .map_err(|e| e.to_string())
}

/// Byte `i` of the test pattern: not periodic over small windows, so a dropped, duplicated or
/// reordered chunk shows.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

fn send_bytes(addr: &str, n: u64) -> Result<(), String> {
    let stream = connect(addr)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let write = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < n {
            let len = (n - sent).min(buf.len() as u64) as usize;
            for (j, b) in buf[..len].iter_mut().enumerate() {
                *b = pattern(sent + j as u64);
            }
            writer.write_all(&buf[..len])?;
            sent += len as u64;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let k = reader
            .read(&mut buf)
            .map_err(|e| format!("read from {addr} after {got} bytes: {e}"))?;
        if k == 0 {
            break;
        }
        for (j, b) in buf[..k].iter().enumerate() {
            let at = got + j as u64;
            if *b != pattern(at) {
                return Err(format!("byte {at} differs in the echo"));
            }
        }
        got += k as u64;
        if got > n {
            return Err(format!("echo returned more than the {n} bytes sent"));
        }
    }
    write
        .join()
        .map_err(|_| "writer thread panicked".to_string())?
        .map_err(|e| format!("write to {addr}: {e}"))?;
    if got != n {
        return Err(format!("echo returned {got} of {n} bytes"));
    }
    println!("echoed {n} bytes");
    Ok(())
}

fn http_get(addr: &str, path: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| format!("no status line in {head:?}"))?
        .to_string();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    let mut out = std::io::stdout();
    writeln!(out, "HTTP {status}")
        .and_then(|()| out.write_all(&body))
        .map_err(|e| e.to_string())
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| format!("bad chunk size {size_hex:?}: {e}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if raw.len() < size {
            return Err("truncated chunk".into());
        }
        body.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// Options of `send-forged`.
struct ForgedOpts {
    to: std::net::SocketAddrV4,
    mark: Option<u32>,
    source: Option<std::net::SocketAddrV4>,
    data: String,
    timeout: Duration,
}

impl ForgedOpts {
    fn parse(flags: &[&str]) -> Result<ForgedOpts, String> {
        let (mut to, mut mark, mut source) = (None, None, None);
        let (mut data, mut timeout) = ("forged".to_string(), Duration::from_secs(2));
        let mut it = flags.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("bad {flag} {value:?}: {e}");
            match *flag {
                "--to" => to = Some(value.parse().map_err(|e| bad(&e))?),
                "--mark" => {
                    let parsed = match value.strip_prefix("0x") {
                        Some(hex) => u32::from_str_radix(hex, 16),
                        None => value.parse(),
                    };
                    mark = Some(parsed.map_err(|e| bad(&e))?);
                }
                "--source" => {
                    source = Some(match value.parse::<std::net::Ipv4Addr>() {
                        Ok(ip) => std::net::SocketAddrV4::new(ip, 0),
                        Err(_) => value.parse().map_err(|e| bad(&e))?,
                    });
                }
                "--data" => data = value.to_string(),
                "--timeout-ms" => {
                    timeout = Duration::from_millis(value.parse().map_err(|e| bad(&e))?);
                }
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        Ok(ForgedOpts {
            to: to.ok_or("--to IP:PORT is required")?,
            mark,
            source,
            data,
            timeout,
        })
    }
}

/// The attacker's client, run as root in a captured pod: a TCP connection that can carry
/// ztunnel's own socket mark (so the pod's outbound capture lets it pass) and leave from any
/// source address, even one that is not the pod's (IP_TRANSPARENT + IP_FREEBIND).
///
/// Prints what happened, one line each, and exits 0 whatever the network did:
/// `not connected: timeout|refused|reset|unreachable|<error>`, or
/// `connected local=<ip:port>`, `sent <n> bytes` (or `send failed: <error>`),
/// `reply <n> bytes: <lossy text>`, `ended: closed|reset|timeout|<error>`.
fn send_forged(opts: &ForgedOpts) -> Result<(), String> {
    use nix::errno::Errno;
    use nix::sys::socket::{self as sock, sockopt};
    use std::os::fd::AsRawFd;

    let setup = |what: &str, e: Errno| format!("{what}: {e}");
    let fd = sock::socket(
        sock::AddressFamily::Inet,
        sock::SockType::Stream,
        sock::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| setup("socket", e))?;
    if let Some(mark) = opts.mark {
        sock::setsockopt(&fd, sockopt::Mark, &mark).map_err(|e| setup("SO_MARK", e))?;
    }
    if let Some(src) = opts.source {
        // Transparent and freebind: the kernel lets us leave from an address we do not own.
        sock::setsockopt(&fd, sockopt::IpTransparent, &true)
            .map_err(|e| setup("IP_TRANSPARENT", e))?;
        sock::setsockopt(&fd, sockopt::IpFreebind, &true).map_err(|e| setup("IP_FREEBIND", e))?;
        sock::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| setup("SO_REUSEADDR", e))?;
        sock::bind(fd.as_raw_fd(), &sock::SockaddrIn::from(src))
            .map_err(|e| setup(&format!("bind {src}"), e))?;
    }
    // A blocking connect gives up after SO_SNDTIMEO (with EINPROGRESS).
    let ms = i64::try_from(opts.timeout.as_millis()).unwrap_or(i64::MAX);
    let timeout = <nix::sys::time::TimeVal as nix::sys::time::TimeValLike>::milliseconds(ms);
    sock::setsockopt(&fd, sockopt::SendTimeout, &timeout).map_err(|e| setup("SO_SNDTIMEO", e))?;
    if let Err(e) = sock::connect(fd.as_raw_fd(), &sock::SockaddrIn::from(opts.to)) {
        let what = match e {
            Errno::EINPROGRESS | Errno::EAGAIN | Errno::ETIMEDOUT => "timeout".to_string(),
            Errno::ECONNREFUSED => "refused".to_string(),
            Errno::ECONNRESET => "reset".to_string(),
            Errno::EHOSTUNREACH | Errno::ENETUNREACH => "unreachable".to_string(),
            other => other.to_string(),
        };
        println!("not connected: {what}");
        return Ok(());
    }
    let mut stream = TcpStream::from(fd);
    let local = stream
        .local_addr()
        .map_or_else(|_| "-".to_string(), |a| a.to_string());
    println!("connected local={local}");
    stream
        .set_read_timeout(Some(opts.timeout))
        .and_then(|()| stream.set_write_timeout(Some(opts.timeout)))
        .map_err(|e| e.to_string())?;
    // Send, then half-close so a sink behind the listener sees the end and logs what came.
    match stream
        .write_all(opts.data.as_bytes())
        .and_then(|()| stream.shutdown(Shutdown::Write))
    {
        Ok(()) => println!("sent {} bytes", opts.data.len()),
        Err(e) => println!("send failed: {}", io_outcome(&e)),
    }
    let mut reply = Vec::new();
    let end = match stream.read_to_end(&mut reply) {
        Ok(_) => "closed".to_string(),
        Err(e) => io_outcome(&e),
    };
    println!(
        "reply {} bytes: {}",
        reply.len(),
        String::from_utf8_lossy(&reply)
    );
    println!("ended: {end}");
    Ok(())
}

/// `reset`, `timeout`, or the error itself.
fn io_outcome(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "reset".into(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}
