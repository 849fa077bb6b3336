//! `churn`: many short connections in a row to an echo server, the client closing first, so
//! every connection leaves a TIME_WAIT behind (on the client, and on whatever sent the server
//! the first FIN on its behalf).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// `churn <ip:port> <n> [<source port>]`: `n` connections one after another, each sending one
/// byte, half-closing, and reading the echo to its end before closing. With a source port,
/// every connection leaves from it (SO_REUSEADDR: each takes over the last one's TIME_WAIT).
/// Prints `local=<ip:port>` per connection; fails at the first connection that fails.
pub fn churn(args: &[&str]) -> Result<(), String> {
    let (to, n, port) = match args {
        [to, n] => (*to, *n, None),
        [to, n, port] => (*to, *n, Some(*port)),
        _ => return Err("usage: churn IP:PORT N [SOURCE_PORT]".into()),
    };
    let to: SocketAddr = to.parse().map_err(|e| format!("bad address {to:?}: {e}"))?;
    let n: u32 = n.parse().map_err(|e| format!("bad count {n:?}: {e}"))?;
    let port: Option<u16> = port
        .map(|p| p.parse().map_err(|e| format!("bad port {p:?}: {e}")))
        .transpose()?;
    let mut out = String::new();
    for i in 0..n {
        let local = exchange(to, port).map_err(|e| format!("connection {i} to {to}: {e}"))?;
        out += &format!("local={local}\n");
    }
    print!("{out}");
    Ok(())
}

/// One connection: `c` out, half-close, the echo back to its end. Its local address.
fn exchange(to: SocketAddr, port: Option<u16>) -> std::io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(port) = port {
        socket.set_reuse_address(true)?;
        let any = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
        socket.bind(&any.into())?;
    }
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let local = stream.local_addr()?;
    stream.write_all(b"c")?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    if reply != b"c" {
        return Err(std::io::Error::other(format!(
            "from {local}: echo {reply:?}"
        )));
    }
    Ok(local)
}
