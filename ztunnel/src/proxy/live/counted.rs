//! A stream that counts the bytes read from and written to it into its connection's
//! [`Counts`], which the admin endpoint reads while the copy runs.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use mesh::copy::Abort;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Counts;

/// A stream that counts its bytes into [`Counts`].
pub(super) struct Counted<'c, S> {
    pub(super) inner: S,
    pub(super) counts: &'c Counts,
}

impl<S: Abort> Abort for Counted<'_, S> {
    fn abort(&mut self) {
        self.inner.abort();
    }

    fn poll_write_owned(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Bytes,
    ) -> Option<Poll<io::Result<usize>>> {
        let res = self.inner.poll_write_owned(cx, buf)?;
        if let Poll::Ready(Ok(n)) = res {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        Some(res)
    }

    fn poll_read_owned(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Option<Bytes>>>> {
        let res = self.inner.poll_read_owned(cx)?;
        if let Poll::Ready(Ok(Some(b))) = &res {
            self.counts
                .read
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Some(res)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = (buf.filled().len() - before) as u64;
            this.counts.read.fetch_add(n, Ordering::Relaxed);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
