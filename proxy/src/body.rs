//! The one body type the proxy passes around, and the wrappers it puts on bodies.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

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
