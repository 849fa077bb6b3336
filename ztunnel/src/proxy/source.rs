//! The source address of ztunnel's connection to a pod's application.
//!
//! Inbound, ztunnel connects to the application from inside its pod with the client's address
//! (IP_TRANSPARENT), so the application sees the real client. When the client closes first,
//! ztunnel sends the application the first FIN, so the TIME_WAIT of that connection lands on
//! ztunnel's socket in the *server* pod. Binding `(client ip, 0)` would then draw every
//! connection's port from the server pod's ephemeral range, and one client closing first at a
//! few hundred connections per second to one server would run it out in a minute (the kernel
//! searches ever longer for a free port, then gives up).
//!
//! So, in order:
//! 1. [`Source::Client`]: the client's own port too, when the HBONE request says it. The
//!    connection has the very 4-tuple it would have without the mesh; a TIME_WAIT of an earlier
//!    connection on it is taken over just as the client's kernel takes over its own (a bound
//!    port, TCP timestamps), and the server pod's range is never touched.
//! 2. [`Source::ClientIp`]: the client's address with the port chosen at connect
//!    (IP_BIND_ADDRESS_NO_PORT), so a port is only refused when that very 4-tuple is taken.
//! 3. [`Source::Pod`]: the pod's own address, when the kernel refuses both.
//!
//! Each step falls to the next when its bind is refused (the port is held, or IP_TRANSPARENT is
//! not allowed) or connect finds its address taken; never after the application could have
//! seen a connection attempt.

use std::io;
use std::net::{IpAddr, SocketAddr};

use nix::sys::socket::{setsockopt, sockopt};
use socket2::Socket;

/// Where a connection to the application leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address and port.
    Client(SocketAddr),
    /// The client's address; the port is chosen at connect, unique for the 4-tuple.
    ClientIp(IpAddr),
    /// The pod's own address (the kernel's choice).
    Pod,
}

impl Source {
    /// The best source for a client at `ip`, `port` when known (0: unknown), toward `dst`:
    /// the pod's own when the families differ or the client is the destination itself.
    pub fn for_client(ip: IpAddr, port: Option<u16>, dst: SocketAddr) -> Source {
        if ip.is_ipv4() != dst.is_ipv4() || ip == dst.ip() {
            return Source::Pod;
        }
        match port {
            Some(port) if port != 0 => Source::Client(SocketAddr::new(ip, port)),
            _ => Source::ClientIp(ip),
        }
    }

    /// The source to try when this one clashes; `None` after the pod's own.
    pub fn fallback(self) -> Option<Source> {
        match self {
            Source::Client(addr) => Some(Source::ClientIp(addr.ip())),
            Source::ClientIp(_) => Some(Source::Pod),
            Source::Pod => None,
        }
    }

    /// Binds `socket` (not yet connected) to this source.
    pub fn bind(self, socket: &Socket) -> io::Result<()> {
        match self {
            Source::Pod => Ok(()),
            Source::ClientIp(ip) => {
                socket.set_ip_transparent_v4(true)?;
                setsockopt(socket, sockopt::IpBindAddressNoPort, &true)?;
                socket.bind(&SocketAddr::new(ip, 0).into())
            }
            Source::Client(addr) => {
                socket.set_ip_transparent_v4(true)?;
                // Lets the bind share the port with a TIME_WAIT of the same 4-tuple (ours
                // carry SO_REUSEADDR too); connect then decides whether it may take it over.
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())
            }
        }
    }
}

/// Whether a failed connect only means the source address or port was taken (nothing was
/// sent): the next [`Source`] may succeed.
pub fn is_address_clash(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn a_known_client_port_is_tried_first_then_the_ip_then_the_pod() {
        let first = Source::for_client(addr("10.0.0.1:4242").ip(), Some(4242), addr("10.0.0.2:80"));
        assert_eq!(first, Source::Client(addr("10.0.0.1:4242")));
        let second = first.fallback().expect("second");
        assert_eq!(second, Source::ClientIp(addr("10.0.0.1:1").ip()));
        assert_eq!(second.fallback(), Some(Source::Pod));
        assert_eq!(Source::Pod.fallback(), None);
    }

    #[test]
    fn an_unknown_or_zero_port_starts_from_the_client_ip() {
        let ip = addr("10.0.0.1:1").ip();
        let dst = addr("10.0.0.2:80");
        assert_eq!(Source::for_client(ip, None, dst), Source::ClientIp(ip));
        assert_eq!(Source::for_client(ip, Some(0), dst), Source::ClientIp(ip));
    }

    #[test]
    fn another_family_or_the_destination_itself_leaves_from_the_pod() {
        let v6 = addr("[fd00::1]:1").ip();
        assert_eq!(
            Source::for_client(v6, Some(5), addr("10.0.0.2:80")),
            Source::Pod
        );
        let dst = addr("10.0.0.2:80");
        assert_eq!(Source::for_client(dst.ip(), Some(5), dst), Source::Pod);
    }

    #[test]
    fn only_address_errors_move_to_the_next_source() {
        assert!(is_address_clash(&io::Error::from(io::ErrorKind::AddrInUse)));
        assert!(is_address_clash(&io::Error::from(
            io::ErrorKind::AddrNotAvailable
        )));
        assert!(!is_address_clash(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(!is_address_clash(&io::Error::from(io::ErrorKind::TimedOut)));
    }
}
