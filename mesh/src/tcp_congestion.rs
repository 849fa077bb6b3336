//! The congestion control of a socket (`TCP_CONGESTION`): a name the kernel knows, checked once
//! at start and set per socket. ztunnel sets one on the sockets whose bytes never leave the node,
//! where a pacing algorithm (BBR, the default of many nodes) has no bottleneck to pace for.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use socket2::Socket;

/// A TCP congestion control algorithm's name, as `TCP_CONGESTION` takes it (1 to 15 bytes of
/// ASCII letters, digits, `_` and `-`).
#[derive(Clone, PartialEq, Eq)]
pub struct CongestionControl(Arc<str>);

impl FromStr for CongestionControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // TCP_CA_NAME_MAX is 16 with the terminating NUL.
        let valid = (1..=15).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(CongestionControl(s.into()))
        } else {
            Err(format!(
                "{s:?} is not a congestion control name (1 to 15 letters, digits, '_' or '-'; \
                 `sysctl net.ipv4.tcp_available_congestion_control` lists this kernel's)"
            ))
        }
    }
}

impl fmt::Display for CongestionControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CongestionControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl CongestionControl {
    /// Sets it on `socket`.
    pub fn apply(&self, socket: &Socket) -> io::Result<()> {
        socket.set_tcp_congestion(self.0.as_bytes())
    }

    /// It, when this kernel lets ztunnel set it (tried once on a fresh socket at start: the
    /// algorithm may not be built or loaded, or not allowed without `CAP_NET_ADMIN`); `None`,
    /// with a warning, when not: sockets then keep the node's default.
    pub fn usable(self) -> Option<CongestionControl> {
        let tried = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .and_then(|s| self.apply(&s));
        match tried {
            Ok(()) => Some(self),
            Err(e) => {
                tracing::warn!(
                    congestion_control = %self,
                    error = %e,
                    "cannot set this congestion control: sockets keep the node's default"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        assert_eq!(
            "reno"
                .parse::<CongestionControl>()
                .expect("reno")
                .to_string(),
            "reno"
        );
        for bad in ["", "a-name-too-long-x", "re no", "reno\0", "cubic;"] {
            assert!(bad.parse::<CongestionControl>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_algorithm_the_kernel_does_not_have_is_dropped_at_start() {
        let none: CongestionControl = "no-such-cc".parse().expect("a valid name");
        assert!(none.usable().is_none());
        // Reno is built into every kernel and allowed to every process.
        let reno: CongestionControl = "reno".parse().expect("reno");
        assert!(reno.usable().is_some());
    }
}
