//! Bidirectional copy between two byte streams, with half-close and growing buffers.
//!
//! Each direction starts with a 16 KiB buffer and doubles it (up to 256 KiB) whenever a read
//! fills it, so idle connections stay small and bulk transfers make few syscalls. When one
//! side reaches EOF, the other side's write half is shut down (a TCP FIN, or an HTTP/2
//! END_STREAM) and the opposite direction keeps flowing until it ends too.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First buffer size of each direction.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest buffer a direction grows to.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Which side failed, and how.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading from or writing to side `a` failed.
    #[error("copy failed on the {side} side after {transferred:?}: {source}")]
    Io {
        /// `"a"` or `"b"`: whose read or write failed.
        side: &'static str,
        /// What had been moved before the failure.
        transferred: Transferred,
        /// The I/O error.
        source: io::Error,
    },
}

/// Copies `a → b` and `b → a` until both directions have reached EOF.
pub async fn copy_bidirectional<A, B>(a: A, b: B) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let forward = copy_one_way(&mut a_read, &mut b_write);
    let backward = copy_one_way(&mut b_read, &mut a_write);
    let (forward, backward) = tokio::join!(forward, backward);
    let transferred = Transferred {
        a_to_b: *forward.as_ref().unwrap_or_else(|(n, _, _)| n),
        b_to_a: *backward.as_ref().unwrap_or_else(|(n, _, _)| n),
    };
    match (forward, backward) {
        (Ok(_), Ok(_)) => Ok(transferred),
        (Err((_, reader_failed, source)), _) => Err(CopyError::Io {
            side: if reader_failed { "a" } else { "b" },
            transferred,
            source,
        }),
        (_, Err((_, reader_failed, source))) => Err(CopyError::Io {
            side: if reader_failed { "b" } else { "a" },
            transferred,
            source,
        }),
    }
}

/// Copies until EOF, then shuts the writer down. On error returns (bytes so far, whether the
/// read side failed, the error).
async fn copy_one_way<R, W>(reader: &mut R, writer: &mut W) -> Result<u64, (u64, bool, io::Error)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err((total, true, e)),
        };
        if let Err(e) = writer.write_all(&buf[..n]).await {
            return Err((total, false, e));
        }
        total += n as u64;
        if n == buf.len() && buf.len() < MAX_BUFFER {
            buf.resize(buf.len() * 2, 0);
        }
    }
    writer.flush().await.map_err(|e| (total, false, e))?;
    // Half-close: the peer sees EOF in this direction only.
    match writer.shutdown().await {
        Ok(()) => Ok(total),
        // The peer already went away entirely; nothing more to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(total),
        Err(e) => Err((total, false, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_both_ways_and_propagates_half_close() {
        let (client, proxy_a) = tokio::io::duplex(1024);
        let (proxy_b, server) = tokio::io::duplex(1024);
        let proxy = tokio::spawn(copy_bidirectional(proxy_a, proxy_b));

        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut got = Vec::new();
        let send = async {
            client_w.write_all(&payload).await.expect("write");
            client_w.shutdown().await.expect("client half-close");
        };
        let (_, read) = tokio::join!(send, server_r.read_to_end(&mut got));
        read.expect("server reads to EOF");
        assert_eq!(got, payload);

        // The other direction still works after the first one closed.
        server_w.write_all(b"reply").await.expect("reply");
        server_w.shutdown().await.expect("server half-close");
        let mut reply = Vec::new();
        client_r
            .read_to_end(&mut reply)
            .await
            .expect("client reads");
        assert_eq!(reply, b"reply");

        let moved = proxy.await.expect("join").expect("copy ok");
        assert_eq!(moved.a_to_b, payload.len() as u64);
        assert_eq!(moved.b_to_a, 5);
    }
}
