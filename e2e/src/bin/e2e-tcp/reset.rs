//! Modes that check how a connection ends: with a reset, a clean EOF, or not at all.
//!
//! Each prints one line `outcome=<reset|eof|data|refused|timeout|error:..> ms=<n>`, the time
//! from the moment the other end acted (or the request was sent) until this end learnt of it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long an end waits to learn how the connection ended.
const AWAIT: Duration = Duration::from_secs(10);

/// Reads once and says what happened, timed from `since`.
fn outcome(stream: &mut TcpStream, since: Instant) -> String {
    let _ = stream.set_read_timeout(Some(AWAIT));
    let mut buf = [0u8; 256];
    let res = stream.read(&mut buf);
    let ms = since.elapsed().as_millis();
    let what = match res {
        Ok(0) => "eof".to_string(),
        Ok(n) => format!("data:{}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => "reset".to_string(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            "timeout".to_string()
        }
        Err(e) => format!("error:{e}"),
    };
    format!("outcome={what} ms={ms}")
}

/// Closes `stream` with a reset (SO_LINGER 0), as an application that aborts does.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

/// Reads until the request's first bytes arrived.
fn read_request(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 256];
    stream.set_read_timeout(Some(AWAIT))?;
    match stream.read(&mut buf)? {
        0 => Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "closed before any request",
        )),
        _ => Ok(()),
    }
}

/// Server: waits for a request, then resets the connection.
pub fn reset_server(mut stream: TcpStream) -> std::io::Result<()> {
    read_request(&mut stream)?;
    reset(stream)?;
    println!("reset sent");
    Ok(())
}

/// Server: waits for a request, answers `ready`, then reports how the client ended.
pub fn await_server(mut stream: TcpStream) -> std::io::Result<()> {
    read_request(&mut stream)?;
    stream.write_all(b"ready")?;
    let since = Instant::now();
    println!("{}", outcome(&mut stream, since));
    Ok(())
}

/// Client: sends `text`, then reports how the server ended the connection. A refused
/// connect is reported too (`outcome=refused`), as what a client sees without a mesh.
pub fn await_reply(addr: &str, text: &str) -> Result<(), String> {
    let mut stream = match super::connect(addr) {
        Ok(s) => s,
        Err(e) if e.contains("refused") => {
            println!("outcome=refused ms=0");
            return Ok(());
        }
        // The reset came before connect() returned: the peer answered the SYN, then reset.
        Err(e) if e.contains("reset") => {
            println!("outcome=reset ms=0");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    stream
        .write_all(text.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let since = Instant::now();
    println!("{}", outcome(&mut stream, since));
    Ok(())
}

/// Client: sends `text`, waits for the server's `ready`, then resets the connection.
pub fn reset_client(addr: &str, text: &str) -> Result<(), String> {
    let mut stream = super::connect(addr)?;
    stream
        .write_all(text.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut ready = [0u8; 5];
    stream
        .read_exact(&mut ready)
        .map_err(|e| format!("waiting for ready from {addr}: {e}"))?;
    reset(stream).map_err(|e| format!("reset: {e}"))?;
    println!("reset sent");
    Ok(())
}
