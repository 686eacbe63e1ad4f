//! The one body type the proxy passes around, and the wrappers it puts on bodies.
//!
//! # Stalled bodies (`limits.body_idle_timeout`)
//!
//! A body can stall on either of its two ends, and each end is watched where it can be seen:
//!
//! - **The source stops sending** (an upstream that sends response headers and then nothing, a
//!   client that stops uploading): the consumer keeps polling [`Tracked`] and gets `Pending`.
//!   `Tracked` notes when that wait began and polls one [`tokio::time::Sleep`] next to the
//!   inner body. The sleep is created at the first wait, never touched while frames flow, and
//!   re-armed only when it fires: then, if a frame came since, it is set to the current wait's
//!   start plus the timeout; if not, the body ends with [`BodyIdle`] — downstream, hyper resets
//!   the stream (HTTP/2) or closes the connection (HTTP/1.1); upstream, the client aborts the
//!   request and its connection. A body that always has a frame ready reads no clock at all.
//! - **The sink stops taking** (a client that does not read its response): hyper stops polling
//!   the body — the connection's write buffer is full, or the HTTP/2 stream has no window — so
//!   no timer inside the body would ever be polled. Instead each response body records on a
//!   [`Handoff`] when it handed hyper a frame and has not been asked for the next one yet, and
//!   the connection's own clock loop (see [`crate::listener`]) closes the connection once a
//!   handoff waits longer than the timeout. A slow reader that takes a byte now and then is
//!   not stalled; this is an idle timeout, not a minimum rate.
//!
//! An upstream that stops reading the request body is covered by the upstream's
//! `request_timeout` until response headers arrive, and by the response body's timeout after.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies, streamed, never buffered whole.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// The client's request body; a failure to read it (malformed chunked framing, the client
/// gone mid-body) is a [`ClientBody`] error, so that it is answered as the client's fault and
/// not the upstream's, through which it surfaces.
pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(|e| Box::new(ClientBody(e)) as BoxError)
        .boxed_unsync()
}

/// Reading the client's request body failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body: {0}")]
pub struct ClientBody(#[source] pub hyper::Error);

/// Boxes any body of the proxy's shape.
pub fn boxed<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Send + 'static,
{
    UnsyncBoxBody::new(b)
}

/// The request body grew past the configured `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Limits up to this size are enforced before the upstream is contacted, also for a body of
/// undeclared length: see [`prefetch`].
pub const PREFETCH_MAX: u64 = 64 * 1024;

/// Reads the start of a request body of undeclared length (HTTP/1.1 chunked, or HTTP/2
/// without `content-length`) before anything is sent upstream, so that a body over a small
/// `limit` is refused like a declared length over it is: before the upstream sees a byte.
///
/// Only when `limit` is at most [`PREFETCH_MAX`]: then at most `limit + 1` bytes are held.
/// Larger limits, declared lengths (already checked) and gRPC (whose streams may be
/// full-duplex, with the client waiting for the server) stream from the start, and a body is
/// cut off by [`Tracked`] when it crosses the limit. The wait is bounded by `wait` (the
/// upstream's request timeout); what has not arrived by then streams behind what has.
pub async fn prefetch(
    mut body: Body,
    headers: &http::HeaderMap,
    limit: Option<u64>,
    wait: Duration,
) -> Result<Body, BodyTooLarge> {
    let Some(limit) = limit.filter(|l| *l <= PREFETCH_MAX) else {
        return Ok(body);
    };
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if body.is_end_stream() || headers.contains_key(http::header::CONTENT_LENGTH) || grpc {
        return Ok(body);
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut held = Prefetched {
        frames: VecDeque::new(),
        error: None,
        rest: None,
    };
    let mut bytes = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                held.rest = Some(body);
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                held.error = Some(e);
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    if bytes > limit {
                        return Err(BodyTooLarge { limit });
                    }
                }
                held.frames.push_back(frame);
            }
        }
    }
    Ok(boxed(held))
}

/// The frames [`prefetch`] read, then an error it met or the rest of the body.
struct Prefetched {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<BoxError>,
    rest: Option<Body>,
}

impl HttpBody for Prefetched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        match &self.rest {
            None if self.error.is_none() => SizeHint::with_exact(held),
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower(held);
                hint
            }
        }
    }
}

/// The stream was closed because its route was removed by a reload (after `stream_grace`).
#[derive(Debug, thiserror::Error)]
#[error("route removed by a configuration reload")]
pub struct RouteClosed;

/// A body moved no data for `limits.body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("{what} moved no data for {after:?}")]
pub struct BodyIdle {
    pub what: &'static str,
    pub after: Duration,
}

/// When a response body last handed its connection a frame and has not been polled since:
/// the client-stall half of the body idle timeout (see the module docs). Written by
/// [`Tracked`], read by the connection's clock loop.
#[derive(Debug)]
pub struct Handoff {
    origin: std::time::Instant,
    /// Milliseconds from `origin`, plus one, of the frame handed over; 0 while none waits.
    at_ms: AtomicU64,
}

impl Handoff {
    /// A handoff whose times count from `origin` (the connection's accept time).
    pub fn new(origin: std::time::Instant) -> Self {
        Handoff {
            origin,
            at_ms: AtomicU64::new(0),
        }
    }

    fn handed(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    fn polled(&self) {
        if self.at_ms.load(Ordering::Relaxed) != 0 {
            self.at_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Since when a frame has waited for the connection to take the next one.
    pub fn waiting_since(&self) -> Option<std::time::Instant> {
        match self.at_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.origin + Duration::from_millis(ms - 1)),
        }
    }
}

/// The source-stall half of the body idle timeout (see the module docs).
struct IdleLimit {
    after: Duration,
    /// "request body" or "response body", for the error and the log.
    what: &'static str,
    /// The request's id, for the log.
    id: http::HeaderValue,
    /// When the current wait for the inner body began; `None` while frames flow.
    waiting_since: Option<Instant>,
    /// Once set, the limit no longer applies (a request body after the response started).
    until: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

pin_project_lite::pin_project! {
    /// Counts bytes, enforces a size limit and the body idle timeout, and ends the stream
    /// when `closing` fires.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        pub bytes: u64,
        limit: Option<u64>,
        #[pin]
        closing: Option<WaitForCancellationFutureOwned>,
        idle: Option<IdleLimit>,
        // Created at the first wait, re-armed only when it fires.
        #[pin]
        timer: Option<Sleep>,
        handoff: Option<std::sync::Arc<Handoff>>,
        on_end: Option<Box<dyn FnOnce(u64) + Send>>,
    }

    impl<B> PinnedDrop for Tracked<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_end.take() {
                f(*this.bytes);
            }
        }
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B) -> Self {
        Tracked {
            inner,
            bytes: 0,
            limit: None,
            closing: None,
            idle: None,
            timer: None,
            handoff: None,
            on_end: None,
        }
    }

    pub fn limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    pub fn closing(mut self, token: &tokio_util::sync::CancellationToken) -> Self {
        self.closing = Some(token.clone().cancelled_owned());
        self
    }

    /// Ends the body with [`BodyIdle`] when its source gives no frame for `after`; `what`
    /// and `id` name it in the log.
    pub fn idle(mut self, after: Duration, what: &'static str, id: http::HeaderValue) -> Self {
        self.idle = Some(IdleLimit {
            after,
            what,
            id,
            waiting_since: None,
            until: None,
        });
        self
    }

    /// Lifts the idle timeout once `done` is set. A request body stops being timed when the
    /// response starts: in a full-duplex stream (gRPC bidi, a subscription) the client's side
    /// may rightly stay quiet while the server's side flows.
    pub fn idle_until(mut self, done: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        if let Some(idle) = self.idle.as_mut() {
            idle.until = Some(done);
        }
        self
    }

    /// Records on `handoff` when a frame waits for the consumer to ask for the next.
    pub fn handoff(mut self, handoff: std::sync::Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Called once with the byte count when the body is finished or dropped.
    pub fn on_end(mut self, f: impl FnOnce(u64) + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }
}

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(closing) = this.closing.as_mut().as_pin_mut()
            && closing.poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(Box::new(RouteClosed))));
        }
        if let Some(handoff) = this.handoff {
            handoff.polled();
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.waiting_since = None;
                }
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                    if let Some(limit) = *this.limit
                        && *this.bytes > limit
                    {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                    }
                }
                if let Some(handoff) = this.handoff {
                    handoff.handed();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let Some(idle) = this.idle.as_mut() else {
                    return Poll::Pending;
                };
                if idle
                    .until
                    .as_ref()
                    .is_some_and(|done| done.load(std::sync::atomic::Ordering::Acquire))
                {
                    return Poll::Pending;
                }
                let deadline = *idle.waiting_since.get_or_insert_with(Instant::now) + idle.after;
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep_until(deadline)));
                }
                let Some(mut timer) = this.timer.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                while timer.as_mut().poll(cx).is_ready() {
                    // It fired at its deadline or later: past this wait's own deadline, the
                    // body is idle; otherwise frames came since it was armed.
                    if timer.deadline() >= deadline {
                        tracing::info!(
                            request_id = idle.id.to_str().unwrap_or(""),
                            "{} moved no data for {:?}; ending the stream",
                            idle.what,
                            idle.after
                        );
                        return Poll::Ready(Some(Err(Box::new(BodyIdle {
                            what: idle.what,
                            after: idle.after,
                        }))));
                    }
                    timer.as_mut().reset(deadline);
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request body that stalls after the response started is not timed out: only the
    /// response direction is (a gRPC bidi stream's quiet client side is legitimate).
    #[tokio::test]
    async fn idle_limit_lifts_once_answered() {
        let never = boxed(http_body_util::StreamBody::new(
            futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>(),
        ));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut timed = boxed(
            Tracked::new(never)
                .idle(
                    Duration::from_millis(20),
                    "request body",
                    http::HeaderValue::from_static("t"),
                )
                .idle_until(done.clone()),
        );
        done.store(true, std::sync::atomic::Ordering::Release);
        let waited = tokio::time::timeout(Duration::from_millis(80), timed.frame()).await;
        assert!(
            waited.is_err(),
            "the body must still be waiting, not failed"
        );

        let never = boxed(http_body_util::StreamBody::new(
            futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>(),
        ));
        let mut timed = boxed(Tracked::new(never).idle(
            Duration::from_millis(20),
            "request body",
            http::HeaderValue::from_static("t"),
        ));
        let got = tokio::time::timeout(Duration::from_secs(5), timed.frame()).await;
        assert!(
            matches!(got, Ok(Some(Err(_)))),
            "without the flag the idle limit fires"
        );
    }

    fn chunked(chunks: &[usize]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; *n]))))
            .collect();
        boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    async fn length(body: Body) -> usize {
        body.collect().await.expect("body").to_bytes().len()
    }

    #[tokio::test]
    async fn prefetch_refuses_a_body_over_a_small_limit() {
        let none = http::HeaderMap::new();
        let wait = Duration::from_secs(5);
        let over = prefetch(chunked(&[600, 600]), &none, Some(1024), wait).await;
        assert!(over.is_err());
        let at = prefetch(chunked(&[600, 424]), &none, Some(1024), wait).await;
        assert_eq!(length(at.expect("at the limit")).await, 1024);

        // Larger limits, declared lengths and gRPC stream (Tracked enforces the limit later).
        let big = PREFETCH_MAX + 1;
        let streamed = prefetch(chunked(&[70_000]), &none, Some(big), wait).await;
        assert_eq!(length(streamed.expect("streamed")).await, 70_000);
        let mut declared = http::HeaderMap::new();
        declared.insert(http::header::CONTENT_LENGTH, "1200".parse().unwrap());
        assert!(
            prefetch(chunked(&[1200]), &declared, Some(1024), wait)
                .await
                .is_ok()
        );
        let mut grpc = http::HeaderMap::new();
        grpc.insert(
            http::header::CONTENT_TYPE,
            "application/grpc".parse().unwrap(),
        );
        assert!(
            prefetch(chunked(&[1200]), &grpc, Some(1024), wait)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn prefetch_stops_waiting_and_streams_the_rest() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let body = boxed(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let none = http::HeaderMap::new();
        let body = prefetch(body, &none, Some(1024), Duration::from_millis(20))
            .await
            .expect("under the limit so far");
        tx.send(Ok(Frame::data(Bytes::from_static(b"def"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn tracked_ends_a_body_whose_source_stalls() {
        let after = Duration::from_millis(300);
        let id = http::HeaderValue::from_static("t");
        // Frames a little faster than the timeout keep it alive, across several timer firings.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            }
        });
        let steady = Tracked::new(boxed(http_body_util::StreamBody::new(tokio_stream_from(
            rx,
        ))))
        .idle(after, "test body", id.clone());
        assert_eq!(steady.collect().await.expect("steady").to_bytes().len(), 8);

        // Nothing at all: cut after the timeout.
        let pending = futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>();
        let stalled = Tracked::new(boxed(http_body_util::StreamBody::new(pending))).idle(
            after,
            "test body",
            id,
        );
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), stalled.collect())
            .await
            .expect("ends")
            .expect_err("an error");
        assert!(err.downcast_ref::<BodyIdle>().is_some(), "{err}");
        assert!(started.elapsed() >= after);
    }

    #[tokio::test]
    async fn handoff_tells_when_a_frame_waits_for_the_consumer() {
        let handoff = std::sync::Arc::new(Handoff::new(std::time::Instant::now()));
        let mut body = std::pin::pin!(Tracked::new(chunked(&[3, 3])).handoff(handoff.clone()));
        assert!(handoff.waiting_since().is_none());
        body.frame().await.expect("frame").expect("ok");
        assert!(handoff.waiting_since().is_some());
        body.frame().await.expect("frame").expect("ok");
        assert!(body.frame().await.is_none());
        assert!(handoff.waiting_since().is_none());
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
