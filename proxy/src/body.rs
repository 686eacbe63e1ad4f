//! The one body type the proxy passes around, and the wrappers it puts on bodies.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
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

pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

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

pin_project_lite::pin_project! {
    /// Counts bytes, enforces a size limit, and ends the stream when `closing` fires.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        pub bytes: u64,
        limit: Option<u64>,
        #[pin]
        closing: Option<WaitForCancellationFutureOwned>,
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
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                    if let Some(limit) = *this.limit
                        && *this.bytes > limit
                    {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
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

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
