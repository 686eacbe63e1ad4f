//! The downstream connection's byte stream, watched: it tells the connection's
//! [`Activity`](super::Activity) when the bytes of a request head start to arrive (the header
//! clock), whether the connection speaks HTTP/2, and, for each HTTP/1 request head in turn,
//! whether it had both `Content-Length` and `Transfer-Encoding` — a check hyper cannot do, as
//! it drops the `Content-Length` before the proxy sees the request (see
//! [`crate::actions::check_framing`]).
//!
//! No bytes are kept: a [`Scanner`] follows the request stream as hyper frames it (RFC 9112
//! §2.2, §6.3, §7.1) — a head, then a body of `Content-Length` bytes or chunks — so it knows
//! where each head starts even when requests are pipelined, and numbers them in arrival order.
//! Where it cannot follow (input hyper refuses, which ends the connection; a head with both
//! fields, after which hyper closes the connection; HTTP/2) it stops, and later heads have no
//! record: [`check_framing`](crate::actions::check_framing) refuses them.

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
    scanner: Scanner,
}

impl<IO> Watched<IO> {
    /// `max_head`: the bytes an HTTP/1 request head may have (`limits.max_header_bytes`).
    pub fn new(inner: IO, conn: Arc<ConnInfo>, max_head: usize) -> Self {
        Watched {
            inner,
            conn,
            preface: Some(0),
            h2: false,
            scanner: Scanner {
                max_head: max_head as u64,
                ..Scanner::default()
            },
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
        self.conn.activity.head_bytes();
        let activity = &self.conn.activity;
        self.scanner.scan(bytes, |head| activity.head_scanned(head));
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

/// What the scanner learned about one request head, numbered from 1 in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Head {
    /// Read whole, without both framing fields.
    Clean(u64),
    /// Read whole, with both `Content-Length` and `Transfer-Encoding`.
    Both(u64),
    /// Read whole, and longer than `max_head` bytes (reported before `Clean` or `Both`).
    /// hyper enforces its own limit only while a head arrives over several reads: once its
    /// buffer has grown on a kept-alive connection, a longer head that arrives whole passes.
    TooLarge(u64),
}

/// Follows an HTTP/1 request stream byte by byte, as hyper (httparse and its body decoders)
/// frames it, holding only this fixed state. Where hyper accepts the input the two agree on
/// where each message ends; where hyper refuses it, hyper ends the connection, so the scanner
/// only has to stop ([`State::Lost`]) — it never guesses.
#[derive(Debug, Default)]
pub(super) struct Scanner {
    state: State,
    /// Heads begun (the number of the current or last head).
    heads: u64,
    /// The current head has a `Content-Length` field / a `Transfer-Encoding` field.
    cl: bool,
    te: bool,
    /// The current head's `Content-Length` (all its fields must agree, as hyper requires).
    length: Length,
    /// In a field name: bytes of it read, and which names it can still be (`NAME_*` bits).
    name_len: u8,
    names: u8,
    /// Digits of the `Content-Length` value or chunk size being read; bytes of a body or
    /// chunk left.
    number: Option<u64>,
    left: u64,
    /// Bytes of the stream scanned before the current call; where the current head began.
    scanned: u64,
    head_start: u64,
    /// A head longer than this is reported [`Head::TooLarge`] (0: no limit).
    max_head: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Length {
    #[default]
    Absent,
    Valid(u64),
    Invalid,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: empty lines before a request line are skipped (RFC 9112 §2.2).
    #[default]
    Idle,
    RequestLine,
    /// At the start of a field line, or of the empty line that ends the head.
    LineStart,
    /// A CR at a line start: the head ends with the LF.
    EndLf,
    Name,
    /// In a field value this scanner does not read.
    Value,
    /// In a `Content-Length` value: before its digits, in them, after them.
    LengthBefore,
    LengthDigits,
    LengthAfter,
    /// In a `Content-Length` body (`left` bytes to go).
    Body,
    /// Chunked body (RFC 9112 §7.1), in the states of hyper's decoder.
    ChunkStart,
    ChunkSize,
    ChunkSizeLws,
    ChunkExtension,
    ChunkSizeLf,
    ChunkData,
    ChunkDataCr,
    ChunkDataLf,
    LastCr,
    Trailer,
    TrailerLf,
    LastLf,
    /// Not following the stream any more: no later head gets a record.
    Lost,
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const NAME_CL: u8 = 1;
const NAME_TE: u8 = 2;

impl Scanner {
    /// Reads the next bytes of the stream; `head` hears of each head as its last byte passes.
    pub(super) fn scan(&mut self, bytes: &[u8], mut head: impl FnMut(Head)) {
        let mut i = 0;
        while i < bytes.len() && self.state != State::Lost {
            let b = bytes[i];
            i += 1;
            self.state = match self.state {
                State::Idle => match b {
                    b'\r' | b'\n' => State::Idle,
                    _ => {
                        self.heads += 1;
                        self.cl = false;
                        self.te = false;
                        self.length = Length::Absent;
                        self.head_start = self.scanned + (i - 1) as u64;
                        State::RequestLine
                    }
                },
                // Lines this scanner does not read: skip to their end at once.
                State::RequestLine | State::Value => match memchr(b'\n', &bytes[i - 1..]) {
                    Some(at) => {
                        i += at;
                        State::LineStart
                    }
                    None => {
                        i = bytes.len();
                        self.state
                    }
                },
                State::LineStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => self.head_end(self.scanned + i as u64, &mut head),
                    _ => {
                        self.name_len = 0;
                        self.names = NAME_CL | NAME_TE;
                        self.name_byte(b);
                        State::Name
                    }
                },
                State::EndLf => match b {
                    b'\n' => self.head_end(self.scanned + i as u64, &mut head),
                    _ => State::Lost,
                },
                State::Name => match b {
                    b':' => self.field(),
                    b'\r' | b'\n' => State::Lost,
                    _ => {
                        self.name_byte(b);
                        State::Name
                    }
                },
                State::LengthBefore => match b {
                    b' ' | b'\t' => State::LengthBefore,
                    b'0'..=b'9' => {
                        self.number = Some(u64::from(b - b'0'));
                        State::LengthDigits
                    }
                    b'\r' | b'\n' => self.length_end(b),
                    _ => {
                        self.length = Length::Invalid;
                        State::Value
                    }
                },
                State::LengthDigits => match b {
                    b'0'..=b'9' => {
                        self.number = self
                            .number
                            .and_then(|n| n.checked_mul(10))
                            .and_then(|n| n.checked_add(u64::from(b - b'0')));
                        State::LengthDigits
                    }
                    b' ' | b'\t' => State::LengthAfter,
                    b'\r' | b'\n' => self.length_end(b),
                    _ => {
                        self.length = Length::Invalid;
                        State::Value
                    }
                },
                State::LengthAfter => match b {
                    b' ' | b'\t' => State::LengthAfter,
                    b'\r' | b'\n' => self.length_end(b),
                    _ => {
                        self.length = Length::Invalid;
                        State::Value
                    }
                },
                State::Body | State::ChunkData => {
                    // Skip the body's bytes at once.
                    let n = (bytes.len() - i + 1).min(self.left.min(usize::MAX as u64) as usize);
                    i += n - 1;
                    self.left -= n as u64;
                    match (self.state, self.left) {
                        (State::Body, 0) => State::Idle,
                        (State::ChunkData, 0) => State::ChunkDataCr,
                        (state, _) => state,
                    }
                }
                State::ChunkStart => match hex(b) {
                    Some(d) => {
                        self.number = Some(u64::from(d));
                        State::ChunkSize
                    }
                    None => State::Lost,
                },
                State::ChunkSize => match (hex(b), b) {
                    (Some(d), _) => {
                        self.number = self
                            .number
                            .and_then(|n| n.checked_mul(16))
                            .and_then(|n| n.checked_add(u64::from(d)));
                        if self.number.is_some() {
                            State::ChunkSize
                        } else {
                            State::Lost
                        }
                    }
                    (None, b' ' | b'\t') => State::ChunkSizeLws,
                    (None, b';') => State::ChunkExtension,
                    (None, b'\r') => State::ChunkSizeLf,
                    _ => State::Lost,
                },
                State::ChunkSizeLws => match b {
                    b' ' | b'\t' => State::ChunkSizeLws,
                    b';' => State::ChunkExtension,
                    b'\r' => State::ChunkSizeLf,
                    _ => State::Lost,
                },
                State::ChunkExtension => match b {
                    b'\r' => State::ChunkSizeLf,
                    b'\n' => State::Lost,
                    _ => State::ChunkExtension,
                },
                State::ChunkSizeLf => match (b, self.number) {
                    (b'\n', Some(0)) => State::LastCr,
                    (b'\n', Some(size)) => {
                        self.left = size;
                        State::ChunkData
                    }
                    _ => State::Lost,
                },
                State::ChunkDataCr => match b {
                    b'\r' => State::ChunkDataLf,
                    _ => State::Lost,
                },
                State::ChunkDataLf => match b {
                    b'\n' => State::ChunkStart,
                    _ => State::Lost,
                },
                State::LastCr => match b {
                    b'\r' => State::LastLf,
                    _ => State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => State::TrailerLf,
                    _ => State::Trailer,
                },
                State::TrailerLf => match b {
                    b'\n' => State::LastCr,
                    _ => State::Lost,
                },
                State::LastLf => match b {
                    b'\n' => State::Idle,
                    _ => State::Lost,
                },
                State::Lost => State::Lost,
            };
        }
        self.scanned += bytes.len() as u64;
    }

    /// One more byte of a field name, compared without case with the names looked for.
    fn name_byte(&mut self, b: u8) {
        let at = usize::from(self.name_len);
        let b = b.to_ascii_lowercase();
        if CONTENT_LENGTH.get(at) != Some(&b) {
            self.names &= !NAME_CL;
        }
        if TRANSFER_ENCODING.get(at) != Some(&b) {
            self.names &= !NAME_TE;
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    /// The colon after a field name.
    fn field(&mut self) -> State {
        let len = usize::from(self.name_len);
        if self.names & NAME_CL != 0 && len == CONTENT_LENGTH.len() {
            self.cl = true;
            self.number = None;
            State::LengthBefore
        } else {
            if self.names & NAME_TE != 0 && len == TRANSFER_ENCODING.len() {
                self.te = true;
            }
            State::Value
        }
    }

    /// The end (CR or LF) of a `Content-Length` value: hyper takes one run of digits, and
    /// every such field must give the same length.
    fn length_end(&mut self, b: u8) -> State {
        self.length = match (self.length, self.number) {
            (Length::Absent, Some(n)) => Length::Valid(n),
            (Length::Valid(a), Some(n)) if a == n => Length::Valid(a),
            _ => Length::Invalid,
        };
        if b == b'\n' {
            State::LineStart
        } else {
            State::Value
        }
    }

    /// The empty line ending a head: report it, then frame its body as hyper does (RFC 9112
    /// §6.3 for a request: chunked, else `Content-Length`, else none).
    /// `end`: the stream offset just past the head.
    fn head_end(&mut self, end: u64, head: &mut impl FnMut(Head)) -> State {
        if self.max_head > 0 && end - self.head_start > self.max_head {
            head(Head::TooLarge(self.heads));
        }
        if self.cl && self.te {
            // hyper frames it by chunks and closes the connection after its response.
            head(Head::Both(self.heads));
            return State::Lost;
        }
        head(Head::Clean(self.heads));
        match (self.te, self.length) {
            (true, _) => {
                self.number = None;
                State::ChunkStart
            }
            (false, Length::Absent | Length::Valid(0)) => State::Idle,
            (false, Length::Valid(n)) => {
                self.left = n;
                State::Body
            }
            // hyper refuses the request and ends the connection.
            (false, Length::Invalid) => State::Lost,
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heads reported for `stream`, fed in pieces of `step` bytes.
    fn heads(stream: &[u8], step: usize) -> Vec<Head> {
        heads_limited(stream, step, 0)
    }

    /// [`heads`], with heads over `max_head` bytes reported.
    fn heads_limited(stream: &[u8], step: usize, max_head: u64) -> Vec<Head> {
        let mut scanner = Scanner {
            max_head,
            ..Scanner::default()
        };
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            scanner.scan(piece, |h| out.push(h));
        }
        out
    }

    /// The same heads whether the stream comes whole, byte by byte, or in any pieces.
    fn assert_heads(stream: &[u8], want: &[Head]) {
        for step in [stream.len().max(1), 1, 2, 3, 7, 16] {
            assert_eq!(
                heads(stream, step),
                want,
                "{:?} in pieces of {step}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    /// A head over the limit is reported, whatever the reads; the length counts from the
    /// request line's first byte to the empty line's LF (blank lines before it excluded), and
    /// bodies between heads do not count.
    #[test]
    fn heads_over_the_limit_are_reported() {
        let small = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"; // 27 bytes
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(40));
        let post = "POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\n"; // 39 bytes
        let stream = format!("{small}\r\n{post}{}{big}{small}", "b".repeat(30));
        for step in [stream.len(), 1, 2, 5, 16] {
            assert_eq!(
                heads_limited(stream.as_bytes(), step, 39),
                [
                    Head::Clean(1),
                    Head::Clean(2),
                    Head::TooLarge(3),
                    Head::Clean(3),
                    Head::Clean(4)
                ],
                "pieces of {step}"
            );
        }
        assert_eq!(
            heads_limited(stream.as_bytes(), 3, 38),
            [
                Head::Clean(1),
                Head::TooLarge(2),
                Head::Clean(2),
                Head::TooLarge(3),
                Head::Clean(3),
                Head::Clean(4)
            ],
        );
    }

    #[test]
    fn finds_both_fields_in_any_case_and_order() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-LENGTH:5\r\nTRANSFER-encoding:chunked\r\n\r\n",
            "\r\n\r\nPOST HTTP://a/y HTTP/1.1\nHost: a\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
            // Invalid lengths still count as a Content-Length field.
            "POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_heads(head.as_bytes(), &[Head::Both(1)]);
        }
    }

    #[test]
    fn other_fields_and_lookalikes_are_not_framing_fields() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Lengthy: 5\r\nX-Transfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Lengt: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // Names inside values or the request line.
            "POST /Content-Length: HTTP/1.1\r\nX: Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_heads(head.as_bytes(), &[Head::Clean(1)]);
        }
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        let fake = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "{}{}{}{}{}{}{}{}",
            // A sized body that looks like a head.
            format_args!(
                "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{fake}",
                fake.len()
            ),
            // A chunked body with an extension, a chunk that looks like a head, trailers.
            "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            format_args!("3;x=y\r\nabc\r\n{:X} \r\n{fake}\r\n", fake.len()),
            "0\r\nX-Trailer: 1\r\nContent-Length: 9\r\n\r\n",
            // No body, then the same length given twice.
            "GET /c HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST /d HTTP/1.1\r\nContent-Length:  3 \r\ncontent-length: 3\r\n\r\nabc",
            "\r\nPOST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            // Nothing after a head with both: hyper closes the connection.
            "GET /f HTTP/1.1\r\n\r\n",
        );
        assert_heads(
            stream.as_bytes(),
            &[
                Head::Clean(1),
                Head::Clean(2),
                Head::Clean(3),
                Head::Clean(4),
                Head::Both(5),
            ],
        );
    }

    #[test]
    fn stops_where_hyper_would_refuse() {
        for stream in [
            // Lengths hyper refuses: then it ends the connection.
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length:\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            // Bad chunks.
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            assert_heads(stream.as_bytes(), &[Head::Clean(1)]);
        }
        // A field line without a colon.
        assert_heads(b"GET / HTTP/1.1\r\nHost\r\n\r\nGET / HTTP/1.1\r\n\r\n", &[]);
    }

    #[test]
    fn large_bodies_are_skipped_not_scanned() {
        let mut scanner = Scanner::default();
        let mut out = Vec::new();
        scanner.scan(b"PUT / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", |h| {
            out.push(h)
        });
        let body = vec![b'\n'; 1000];
        for _ in 0..1000 {
            scanner.scan(&body, |h| out.push(h));
        }
        scanner.scan(b"GET / HTTP/1.1\r\n\r\n", |h| out.push(h));
        assert_eq!(out, [Head::Clean(1), Head::Clean(2)]);
    }

    #[test]
    fn the_scanner_is_small() {
        // Per connection, next to hyper's buffers of several KiB.
        assert!(size_of::<Scanner>() <= 96, "{}", size_of::<Scanner>());
    }
}
