//! The downstream connection's byte stream, watched: it tells the connection's
//! [`Activity`](super::Activity) when the bytes of a request head start to arrive (the header
//! clock) and whether the connection speaks HTTP/2.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ConnInfo;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted connection's IO (TCP or TLS), passed through unchanged.
pub struct Watched<IO> {
    inner: IO,
    conn: Arc<ConnInfo>,
    /// Bytes of the HTTP/2 preface matched so far; `None` once decided.
    preface: Option<usize>,
    h2: bool,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, conn: Arc<ConnInfo>) -> Self {
        Watched {
            inner,
            conn,
            preface: Some(0),
            h2: false,
        }
    }

    fn observe(&mut self, bytes: &[u8]) {
        if let Some(matched) = self.preface {
            let want = &H2_PREFACE[matched..];
            let n = want.len().min(bytes.len());
            if bytes[..n] != want[..n] {
                self.preface = None;
            } else if matched + n == H2_PREFACE.len() {
                self.preface = None;
                self.h2 = true;
                self.conn.activity.set_h2();
            } else {
                self.preface = Some(matched + n);
            }
        }
        if !self.h2 {
            self.conn.activity.head_bytes();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && buf.filled().len() > before
        {
            let this = &mut *self;
            this.observe(&buf.filled()[before..]);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
