//! The downstream connection's byte stream, watched: it tells the connection's
//! [`Activity`](super::Activity) when the bytes of a request head start to arrive (the header
//! clock) and whether the connection speaks HTTP/2, and keeps a bounded copy of the raw head of
//! the next HTTP/1 request for a check hyper cannot do: hyper drops a `Content-Length` sent
//! along with `Transfer-Encoding` before the proxy sees the request (see
//! [`crate::actions::check_framing`]).

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
    /// At most this many bytes of a head are kept.
    cap: usize,
    /// Bytes of the HTTP/2 preface matched so far; `None` once decided.
    preface: Option<usize>,
    h2: bool,
    /// Bytes kept of the head being received.
    captured: usize,
    /// Where that head ends; nothing is kept after it.
    end: HeadEnd,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, conn: Arc<ConnInfo>, cap: usize) -> Self {
        Watched {
            inner,
            conn,
            cap,
            preface: Some(0),
            h2: false,
            captured: 0,
            end: HeadEnd::default(),
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
        if self.h2 {
            return;
        }
        match self.conn.activity.head_bytes() {
            HeadBytes::Ignore => {}
            HeadBytes::First => {
                self.captured = 0;
                self.end = HeadEnd::default();
                self.keep(bytes);
            }
            HeadBytes::More => self.keep(bytes),
        }
    }

    /// Keeps bytes of the head, up to its blank line and at most `cap` in all, so a
    /// connection holds no more than one head.
    fn keep(&mut self, bytes: &[u8]) {
        if self.end.found {
            return;
        }
        let mut take = bytes.len().min(self.cap.saturating_sub(self.captured));
        if let Some(end) = self.end.scan(&bytes[..take]) {
            take = end;
        }
        if take > 0 {
            self.conn
                .activity
                .keep_head(&bytes[..take], self.captured == 0);
            self.captured += take;
        }
    }
}

/// Finds the blank line that ends a head, across reads.
#[derive(Debug, Default)]
struct HeadEnd {
    /// A non-empty line was seen (empty lines before the request line do not end a head).
    text: bool,
    /// At the start of a line (only a CR seen on it, if anything).
    line_start: bool,
    found: bool,
}

impl HeadEnd {
    /// How much of `bytes` belongs to the head, if the head ends in them.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, b) in bytes.iter().enumerate() {
            match b {
                b'\n' if self.text && self.line_start => {
                    self.found = true;
                    return Some(i + 1);
                }
                b'\n' => self.line_start = true,
                b'\r' => {}
                _ => {
                    self.text = true;
                    self.line_start = false;
                }
            }
        }
        None
    }
}

/// What bytes read now are, for the header clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadBytes {
    /// A request is in progress (body bytes, or a pipelined head read early).
    Ignore,
    /// The first bytes of a request head: the header clock starts.
    First,
    /// More of the head whose clock is running.
    More,
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

/// Does the raw HTTP/1 head `raw`, whose request line must be `request_line`, have a
/// `Content-Length` field? `None` when `raw` does not hold that whole head.
pub(super) fn head_has_content_length(raw: &[u8], request_line: &str) -> Option<bool> {
    // Whole lines only: the last one may be cut by the capture's cap.
    let mut lines = raw.split_inclusive(|b| *b == b'\n').map(|l| {
        l.strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
    });
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    let first = lines.by_ref().find(|l| l != &Some(&b""[..]))??;
    if first != request_line.as_bytes() {
        return None;
    }
    let mut found = false;
    for line in lines {
        let line = line?;
        if line.is_empty() {
            return Some(found);
        }
        let name = line.split(|b| *b == b':').next().unwrap_or(line);
        found |= name.eq_ignore_ascii_case(b"content-length");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        let mut end = HeadEnd::default();
        assert_eq!(end.scan(b"\r\nGET / HTTP/1.1\r\nHost: a\r"), None);
        assert_eq!(end.scan(b"\n"), None);
        assert_eq!(end.scan(b"\r\nbody"), Some(2));
        assert!(end.found);
        let mut end = HeadEnd::default();
        assert_eq!(end.scan(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
    }

    #[test]
    fn finds_content_length_in_a_complete_head() {
        let line = "POST /x HTTP/1.1";
        let cases: &[(&[u8], Option<bool>)] = &[
            (
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                Some(true),
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: a\r\ncontent-LENGTH:5\r\n\r\n",
                Some(true),
            ),
            (
                b"\r\nPOST /x HTTP/1.1\nHost: a\nContent-Length: 5\n\n",
                Some(true),
            ),
            (
                b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some(false),
            ),
            // In the body, not the head.
            (
                b"POST /x HTTP/1.1\r\nHost: a\r\n\r\nContent-Length: 5\r\n\r\n",
                Some(false),
            ),
            // Another request's head, or a head cut short.
            (b"GET /y HTTP/1.1\r\nContent-Length: 5\r\n\r\n", None),
            (
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n",
                None,
            ),
            (b"", None),
        ];
        for (raw, want) in cases {
            assert_eq!(
                head_has_content_length(raw, line),
                *want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
