//! TCP keepalive on proxied sockets: a peer that vanished (a node powered off, a NAT entry
//! dropped) is noticed by the kernel, and the error then tears the connection down end to end
//! like any other ([`crate::copy`]).
//!
//! On Linux an accepted socket inherits these options from its listener, so setting them on a
//! listener covers every connection it accepts.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive as SockKeepalive};

/// Keepalive probe timing. `None` where it is used means keepalive is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub time: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead.
    pub retries: u32,
}

impl Default for TcpKeepalive {
    /// Upstream ztunnel's defaults: first probe after 180 s idle, then every 180 s, 9 tries.
    fn default() -> Self {
        TcpKeepalive {
            time: Duration::from_secs(180),
            interval: Duration::from_secs(180),
            retries: 9,
        }
    }
}

impl TcpKeepalive {
    /// Turns keepalive on for `socket` with these timings.
    pub fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        let params = SockKeepalive::new()
            .with_time(self.time)
            .with_interval(self.interval)
            .with_retries(self.retries);
        socket.set_tcp_keepalive(&params)
    }
}

/// Parses a duration as Istio's environment variables write them: `180s`, `3m`, `500ms`,
/// `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 180s, 3m, 500ms)"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_istio_writes_them() {
        assert_eq!(parse_duration("180s"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn keepalive_is_set_on_the_socket() {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        let ka = TcpKeepalive {
            time: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            retries: 4,
        };
        ka.apply(SockRef::from(&socket)).expect("apply");
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(7)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(3)
        );
        assert_eq!(socket.tcp_keepalive_retries().expect("retries"), 4);
    }
}
