//! HBONE: TCP connections carried as HTTP/2 CONNECT streams over mutual TLS.
//!
//! - [`pool`]: the client side; HTTP/2 connections shared per [`pool::PoolKey`], one stream
//!   per proxied connection.
//! - [`server`]: the server side; accepts CONNECT streams and hands each to a handler with the
//!   verified peer identity.
//! - [`connect`]: the CONNECT request itself (pure, fuzzed).
//! - [`stream`]: an HTTP/2 stream as `AsyncRead + AsyncWrite`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub mod connect;
mod keepalive;
pub mod pool;
pub mod server;
pub mod stream;

pub use connect::{Baggage, ConnectMeta};
pub use pool::{ConnectFuture, Connector, Pool, PoolKey, PoolStats, TcpConnector};
pub use server::{no_guard, ConfigFuture, InboundRequest, Server, ServerCerts};
pub use stream::H2Stream;

/// The HBONE port on every meshed pod (and waypoint).
pub const HBONE_PORT: u16 = 15008;
/// Ports of the tunnel itself, never valid CONNECT targets: outbound capture, inbound
/// plaintext, HBONE.
pub const RESERVED_PORTS: [u16; 3] = [15001, 15006, HBONE_PORT];
/// Per-stream flow-control window.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow-control window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Streams per connection before the pool opens another.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Encrypted bytes a connection holds for the socket before its writer waits (rustls' default
/// is 64 KiB).
pub const TLS_WRITE_BUFFER: usize = 256 * 1024;

/// HTTP/2 and pool tuning. The HTTP/2 defaults are the values upstream uses.
#[derive(Debug, Clone)]
pub struct H2Config {
    /// Per-stream window.
    pub stream_window: u32,
    /// Per-connection window.
    pub connection_window: u32,
    /// Largest frame.
    pub max_frame_size: u32,
    /// Concurrent streams per connection.
    pub max_streams: usize,
    /// Largest header block the server accepts (oversized CONNECT headers are refused).
    pub max_header_list_size: u32,
    /// How often to PING an otherwise quiet connection.
    pub ping_interval: Duration,
    /// Drop the connection when a PING goes unanswered this long.
    pub ping_timeout: Duration,
    /// Close pooled connections that carried no stream for this long.
    pub idle_timeout: Duration,
    /// Client: the deadline of one [`Pool::connect`] as a whole (a new connection's TCP, TLS
    /// and HTTP/2 handshakes when one is needed, the CONNECT and its response), and of one
    /// connection attempt.
    pub connect_timeout: Duration,
    /// Client: how long a key fails fast after a failed connection attempt; doubles with each
    /// consecutive failure, up to `connect_backoff_max`.
    pub connect_backoff: Duration,
    /// Client: the longest back-off.
    pub connect_backoff_max: Duration,
    /// Server: the deadline of one connection's whole set-up (waiting for our certificate,
    /// TLS, HTTP/2 handshake).
    pub handshake_timeout: Duration,
    /// Server: connections in set-up at once per [`Server`]; one more is closed at once.
    pub max_handshakes: usize,
    /// Encrypted bytes held for the socket before HTTP/2's writes wait. Above rustls' 64 KiB
    /// one flush reaches the socket as one larger `writev`: fewer calls and fewer wake-ups of
    /// both proxies per byte in bulk. Only a connection with a backlog holds it.
    pub tls_write_buffer: usize,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
            max_frame_size: MAX_FRAME_SIZE,
            max_streams: MAX_STREAMS_PER_CONNECTION,
            max_header_list_size: 16 * 1024,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            connect_backoff: Duration::from_secs(1),
            connect_backoff_max: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
            tls_write_buffer: TLS_WRITE_BUFFER,
        }
    }
}

/// Why an HBONE connection or stream failed. [`HboneError::status`] says what to answer a
/// client with, [`HboneError::is_retryable`] whether another attempt could succeed.
///
/// Cloneable (sources are shared): one failed connection attempt is reported to every caller
/// that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HboneError {
    /// TCP connect to the HBONE endpoint failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The HBONE endpoint.
        addr: std::net::SocketAddr,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The TLS handshake failed (includes a peer that is not who we expected).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The HBONE endpoint.
        addr: std::net::SocketAddr,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The peer did not negotiate `h2`.
    #[error("peer did not negotiate ALPN h2")]
    Alpn,
    /// HTTP/2 protocol or connection error.
    #[error("HTTP/2: {0}")]
    H2(#[source] Arc<h2::Error>),
    /// The server answered the CONNECT with a non-200 status.
    #[error("CONNECT refused with {0}")]
    Status(StatusCode),
    /// A handshake or response did not arrive in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// No certificate is available to present.
    #[error("no certificate for this identity: {0}")]
    NoCertificate(String),
    /// The client pool was drained (its pod left): it opens nothing any more.
    #[error("the HBONE pool is closed: its workload left the mesh")]
    PoolClosed,
    /// The server refused the connection before serving it.
    #[error("HBONE connection refused: {0}")]
    Refused(&'static str),
}

impl From<h2::Error> for HboneError {
    fn from(e: h2::Error) -> Self {
        HboneError::H2(Arc::new(e))
    }
}

impl HboneError {
    /// The status to report for this failure on an inbound request.
    pub fn status(&self) -> StatusCode {
        match self {
            HboneError::Status(s) => *s,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether trying again (on a new connection) could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            HboneError::Connect { .. } | HboneError::Timeout(_) | HboneError::H2(_) => true,
            HboneError::Status(s) => *s == StatusCode::SERVICE_UNAVAILABLE,
            HboneError::Tls { .. }
            | HboneError::Alpn
            | HboneError::NoCertificate(_)
            | HboneError::PoolClosed
            | HboneError::Refused(_) => false,
        }
    }
}
