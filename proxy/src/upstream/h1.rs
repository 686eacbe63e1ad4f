//! Pooled HTTP/1.1 connections to one endpoint.
//!
//! A request takes an idle connection (the most recently used first, so surplus ones age out)
//! or dials a new one, and its response gives the connection back when its body has been read
//! to the end; a response dropped before that takes its connection with it, since hyper would
//! have to drain or close it anyway. A connection that is not yet ready for the next request
//! at that moment (the request body still going out, say) is given back once it is, by a task
//! of its own. A request that a connection closed before it was sent is sent once more, on a
//! new connection (an upstream's keep-alive timeout racing the checkout).
//!
//! Idle connections are dropped after `idle_timeout` by the checkout that finds them or by a
//! sweep that runs while the pool holds any; dropping the last handle of a connection closes
//! it. At most [`MAX_IDLE`] are kept.
//!
//! This replaces hyper-util's legacy client for HTTP/1.1 upstreams: that one boxes a 3 KB
//! future, looks the pool up by scheme and authority, and spawns a task for every response
//! with a body to put its connection back, all per request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ClientKey, TCP_KEEPALIVE};
use crate::body::{Body, BoxError};
use crate::error::{ProxyError, error_chain};

/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 1024;

pub struct H1Pool {
    key: ClientKey,
    endpoint: Authority,
    idle: Mutex<Vec<Idle>>,
    /// A sweep task is running (set and cleared under the `idle` lock).
    sweeping: AtomicBool,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl H1Pool {
    pub fn new(key: ClientKey, endpoint: Authority) -> Self {
        H1Pool {
            key,
            endpoint,
            idle: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends `req` (origin-form URI) on a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &str,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let mut dialled_once = false;
        loop {
            let (mut sender, fresh) = match self.take_idle() {
                Some(sender) => (sender, false),
                None => (self.dial(upstream).await?, true),
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(ProxyError::UpstreamConnect {
                        upstream: upstream.to_string(),
                        reason: "the connection closed right after it was opened".into(),
                    });
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let back = GiveBack {
                        pool: self.clone(),
                        sender,
                    };
                    return Ok(resp.map(|inner| UpstreamBody::pooled(inner, back)));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed under it. Once more, on a new one.
                    Some(unsent) if !(fresh && dialled_once) => {
                        dialled_once |= fresh;
                        req = unsent;
                    }
                    _ => return Err(ProxyError::from_upstream_error(upstream, e.error(), false)),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and not expired.
    fn take_idle(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && now < conn.since + self.key.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    async fn dial(&self, upstream: &str) -> Result<SendRequest<Body>, ProxyError> {
        let connect_error = |reason: String| ProxyError::UpstreamConnect {
            upstream: upstream.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(
            self.key.connect_timeout,
            TcpStream::connect(self.endpoint.as_str()),
        )
        .await
        .map_err(|_| {
            connect_error(format!(
                "connect to {} timed out after {:?}",
                self.endpoint, self.key.connect_timeout
            ))
        })?
        .map_err(|e| connect_error(format!("connect to {}: {e}", self.endpoint)))?;
        let setup = |stream: &TcpStream| -> std::io::Result<()> {
            stream.set_nodelay(true)?;
            let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
            socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
        };
        setup(&stream).map_err(|e| connect_error(format!("socket options: {e}")))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(error_chain(&e)))?;
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %error_chain(&e), "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Keeps a connection whose response has ended for the next request.
    fn put(self: &Arc<Self>, mut sender: SendRequest<Body>) {
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            let pool = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.push(sender);
                }
            });
        }
    }

    fn push(self: &Arc<Self>, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }
}

/// Drops expired and closed idle connections every `idle_timeout` until the pool is empty
/// (or gone).
async fn sweep(pool: Weak<H1Pool>) {
    loop {
        let Some(every) = pool.upgrade().map(|p| p.key.idle_timeout) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        idle.retain(|c| !c.sender.is_closed() && now < c.since + pool.key.idle_timeout);
        if idle.is_empty() {
            pool.sweeping.store(false, Ordering::Release);
            return;
        }
    }
}

/// A connection to give back when its response has ended.
struct GiveBack {
    pool: Arc<H1Pool>,
    sender: SendRequest<Body>,
}

pin_project_lite::pin_project! {
    /// An upstream response body; an HTTP/1.1 one gives its connection back to the pool when
    /// it has been read to the end.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        back: Option<GiveBack>,
    }
}

impl UpstreamBody {
    fn pooled(inner: Incoming, back: GiveBack) -> Self {
        let mut body = UpstreamBody {
            inner,
            back: Some(back),
        };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    /// A body with no connection to give back (HTTP/2: the connection is shared).
    pub fn shared(inner: Incoming) -> Self {
        UpstreamBody { inner, back: None }
    }

    fn give_back(&mut self) {
        give_back(&mut self.back);
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(None) => give_back(this.back),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => give_back(this.back),
            // An error: the connection is not reusable, drop it.
            Poll::Ready(Some(Err(_))) => drop(this.back.take()),
            _ => {}
        }
        polled.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn give_back(back: &mut Option<GiveBack>) {
    if let Some(GiveBack { pool, sender }) = back.take() {
        pool.put(sender);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::upstream::UpstreamProtocol;

    /// An HTTP/1.1 server that answers every request with `size` bytes (and `Connection:
    /// close` with `close`); counts the connections it accepted and reports each that ended.
    struct Server {
        endpoint: Authority,
        accepted: Arc<AtomicUsize>,
        ended: mpsc::UnboundedReceiver<()>,
    }

    async fn server(size: usize, close: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, ended) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req| async move {
                        let mut resp = Response::new(crate::body::full(vec![b'x'; size]));
                        if close {
                            resp.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    let _ = tx.send(());
                });
            }
        });
        Server {
            endpoint,
            accepted,
            ended,
        }
    }

    fn pool(endpoint: &Authority, idle_timeout: Duration) -> Arc<H1Pool> {
        let key = ClientKey {
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(5),
            idle_timeout,
        };
        Arc::new(H1Pool::new(key, endpoint.clone()))
    }

    fn get() -> Request<Body> {
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = http::Uri::from_static("/");
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("a"));
        req
    }

    async fn read_all(resp: Response<UpstreamBody>) -> usize {
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    /// `n` requests one after another, each response read whole; the bytes of each.
    async fn one_after_another(pool: &Arc<H1Pool>, n: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        for _ in 0..n {
            sizes.push(read_all(pool.send("up", get()).await.unwrap()).await);
        }
        sizes
    }

    /// Requests one after another share one connection, unless the upstream closes each.
    #[tokio::test]
    async fn a_connection_serves_one_request_after_another_unless_the_upstream_closes_it() {
        // (body size, upstream sends `Connection: close`, requests, connections expected)
        for (size, close, n, connections) in [(100_000, false, 5, 1), (10, true, 3, 3)] {
            let s = server(size, close).await;
            let pool = pool(&s.endpoint, Duration::from_secs(60));
            assert_eq!(one_after_another(&pool, n).await, vec![size; n]);
            assert_eq!(
                s.accepted.load(Ordering::SeqCst),
                connections,
                "close: {close}"
            );
        }
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_takes_its_connection_along() {
        let mut s = server(1_000_000, false).await;
        let pool = pool(&s.endpoint, Duration::from_secs(60));
        let resp = pool.send("up", get()).await.unwrap();
        drop(resp);
        // The dropped response's connection closes; the next request gets a new one.
        tokio::time::timeout(Duration::from_secs(5), s.ended.recv())
            .await
            .expect("the first connection closed");
        let resp = pool.send("up", get()).await.unwrap();
        assert_eq!(read_all(resp).await, 1_000_000);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own_then_share_them() {
        let s = server(1000, false).await;
        let pool = pool(&s.endpoint, Duration::from_secs(60));
        let (a, b) = tokio::join!(pool.send("up", get()), pool.send("up", get()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(read_all(a).await + read_all(b).await, 2000);
        assert_eq!(one_after_another(&pool, 4).await, [1000; 4]);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let mut s = server(10, false).await;
        let pool = pool(&s.endpoint, Duration::from_millis(500));
        assert_eq!(one_after_another(&pool, 2).await, [10; 2]);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
        // Nothing else uses the pool: its sweep drops the connection.
        tokio::time::timeout(Duration::from_secs(5), s.ended.recv())
            .await
            .expect("the idle connection was closed");
        assert!(pool.idle.lock().unwrap().is_empty());
        let resp = pool.send("up", get()).await.unwrap();
        assert_eq!(read_all(resp).await, 10);
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream that closes each connection after its response, without saying so (no
    /// `Connection: close`), once the connection is idle in the pool.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_sent_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let (close_tx, mut close) = mpsc::unbounded_channel::<()>();
        let (closed_tx, mut closed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed before its request");
                    head.extend_from_slice(&buf[..n]);
                }
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                close.recv().await.unwrap();
                drop(stream);
                closed_tx.send(()).unwrap();
            }
        });
        let pool = pool(&endpoint, Duration::from_secs(60));
        for _ in 0..3 {
            let resp = pool.send("up", get()).await.unwrap();
            assert_eq!(read_all(resp).await, 2);
            assert_eq!(pool.idle.lock().unwrap().len(), 1);
            close_tx.send(()).unwrap();
            closed.recv().await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        drop(listener);
        let pool = pool(&endpoint, Duration::from_secs(60));
        match pool.send("up", get()).await {
            Err(ProxyError::UpstreamConnect { upstream, reason }) => {
                assert_eq!(upstream, "up");
                assert!(reason.contains(endpoint.as_str()), "{reason}");
            }
            other => panic!(
                "expected a connect error, got {:?}",
                other.map(|r| r.status())
            ),
        }
    }
}
