//! Upstream side: pooled HTTP clients, endpoint choice, and forwarding one request.
//!
//! Clients (and so their connections) live in a [`ClientCache`] owned by the server and
//! survive reloads: a reload that keeps an upstream keeps its warm connections.
//!
//! An HTTP/1.1 endpoint has a pool of connections ([`h1::H1Pool`]), each carrying one request
//! at a time; the `Host` header carries the request's host. HTTP/2 has no such split: the
//! URI's authority *is* the request's host (`:authority`), and a pool keyed by it would open a
//! connection per host a client cares to send. So an h2c endpoint has exactly one connection
//! ([`H2cConn`]) that every request shares, whatever its host.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod h1;
pub mod headers;

use h1::H1Pool;
pub use h1::UpstreamBody;

use crate::body::{self, Body, BoxError};
use crate::error::{ProxyError, error_chain};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Connection pools by settings and endpoint; shared by every snapshot so pools outlive
/// reloads. Never pruned: a pool of an endpoint removed by a reload keeps nothing open past
/// `idle_timeout`.
#[derive(Default)]
pub struct ClientCache {
    h1: Mutex<HashMap<(ClientKey, Authority), Arc<H1Pool>>>,
    /// h2c connections by settings and endpoint. Never pruned: an endpoint removed by a reload
    /// leaves a holder whose connection closes after `idle_timeout`.
    h2c: Mutex<HashMap<(ClientKey, Authority), Arc<H2cConn>>>,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache").finish_non_exhaustive()
    }
}

impl ClientCache {
    /// The HTTP/1.1 connection pool of one endpoint.
    fn get_h1(&self, key: ClientKey, endpoint: &Authority) -> Arc<H1Pool> {
        let mut pools = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry((key, endpoint.clone()))
            .or_insert_with(|| Arc::new(H1Pool::new(key, endpoint.clone())))
            .clone()
    }

    /// The h2c connection holder for one endpoint.
    pub fn get_h2c(&self, key: ClientKey, endpoint: &Authority) -> Arc<H2cConn> {
        let mut conns = self.h2c.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .entry((key, endpoint.clone()))
            .or_insert_with(|| Arc::new(H2cConn::new(key, endpoint.clone())))
            .clone()
    }
}

const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The one HTTP/2 connection to an h2c endpoint, shared by every request to it (HTTP/2
/// multiplexes them). Dialled on first use and again once it has closed; dropped after
/// `idle_timeout` without a new request.
pub struct H2cConn {
    key: ClientKey,
    endpoint: Authority,
    state: tokio::sync::Mutex<H2cState>,
}

#[derive(Default)]
struct H2cState {
    open: Option<Open>,
    /// How many connections were dialled; numbers them for the idle check.
    dialled: u64,
    /// When and why the last dial failed: requests that waited for it share its failure
    /// rather than each waiting for a dial of its own.
    failed: Option<(Instant, String)>,
    /// The dial in progress, if any: set to `true` when it has finished.
    dialing: Option<tokio::sync::watch::Receiver<bool>>,
}

struct Open {
    sender: SendRequest<Body>,
    number: u64,
    last_used: Instant,
}

impl H2cConn {
    fn new(key: ClientKey, endpoint: Authority) -> Self {
        H2cConn {
            key,
            endpoint,
            state: Default::default(),
        }
    }

    /// Sends `req` on the connection, dialling it first if needed. A request that a closing
    /// connection did not take is sent once more, on a new connection.
    async fn send(
        self: &Arc<Self>,
        upstream: &str,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let mut retried = false;
        loop {
            let mut sender = self.sender(upstream).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(UpstreamBody::shared)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => (req, retried) = (unsent, true),
                    _ => return Err(ProxyError::from_upstream_error(upstream, e.error(), false)),
                },
            }
        }
    }

    /// The open connection's sender, or a new connection's. The dial runs as a task of its
    /// own and requests wait for it without holding the lock, so a request that gives up
    /// (client gone, request timeout) never abandons the dial the others are waiting for.
    async fn sender(self: &Arc<Self>, upstream: &str) -> Result<SendRequest<Body>, ProxyError> {
        let waiting_since = Instant::now();
        let connect_error = |reason: String| ProxyError::UpstreamConnect {
            upstream: upstream.to_string(),
            reason,
        };
        loop {
            let mut dialled = {
                let mut state = self.state.lock().await;
                if let Some(open) = state.open.as_mut().filter(|o| !o.sender.is_closed()) {
                    open.last_used = Instant::now();
                    return Ok(open.sender.clone());
                }
                if let Some((at, reason)) = &state.failed
                    && *at >= waiting_since
                {
                    return Err(connect_error(reason.clone()));
                }
                match &state.dialing {
                    Some(dialing) => dialing.clone(),
                    None => {
                        let (done, dialing) = tokio::sync::watch::channel(false);
                        state.dialing = Some(dialing.clone());
                        tokio::spawn(self.clone().dial_and_publish(done));
                        dialing
                    }
                }
            };
            if dialled.wait_for(|finished| *finished).await.is_err() {
                // The dial task ended without publishing (it cannot, short of a panic):
                // forget it so the next turn dials again.
                self.state.lock().await.dialing = None;
            }
        }
    }

    /// Dials under the connect timeout and records the connection or the failure.
    async fn dial_and_publish(self: Arc<Self>, done: tokio::sync::watch::Sender<bool>) {
        let result = tokio::time::timeout(self.key.connect_timeout, self.dial()).await;
        let mut state = self.state.lock().await;
        match result {
            Ok(Ok(sender)) => {
                state.dialled += 1;
                state.open = Some(Open {
                    sender,
                    number: state.dialled,
                    last_used: Instant::now(),
                });
                state.failed = None;
                self.drop_when_idle(state.dialled);
            }
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => error_chain(&*e),
                    _ => format!("connect timed out after {:?}", self.key.connect_timeout),
                };
                state.open = None;
                state.failed = Some((Instant::now(), reason));
            }
        }
        state.dialing = None;
        let _ = done.send(true);
    }

    async fn dial(&self) -> Result<SendRequest<Body>, BoxError> {
        let stream = TcpStream::connect(self.endpoint.as_str()).await?;
        stream.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        // One connection carries every stream to this endpoint: windows sized by BDP (so a few
        // slow readers cannot hold the whole connection window), and PINGs so a peer that
        // vanished without a RST is noticed in seconds, not when TCP gives up.
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await?;
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %error_chain(&e), "h2c upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Drops connection `number` once no request has used it for `idle_timeout`. Requests in
    /// flight keep it open until they end; new ones dial a new connection.
    fn drop_when_idle(self: &Arc<Self>, number: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut deadline = Instant::now() + this.key.idle_timeout;
            loop {
                tokio::time::sleep_until(deadline).await;
                let mut state = this.state.lock().await;
                let Some(open) = state.open.as_ref().filter(|o| o.number == number) else {
                    return;
                };
                deadline = open.last_used + this.key.idle_timeout;
                if deadline <= Instant::now() {
                    state.open = None;
                    return;
                }
            }
        });
    }
}

/// A named group of endpoints with its clients.
pub struct Upstream {
    pub name: Arc<str>,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    clients: Clients,
    pub request_timeout: Duration,
    /// This upstream's child of `portico_upstream_request_duration_seconds`, resolved on first
    /// use rather than by label on every request.
    duration: std::sync::OnceLock<prometheus::Histogram>,
}

// One per upstream and snapshot: its size does not matter, an extra indirection per request would.
#[allow(clippy::large_enum_variant)]
enum Clients {
    /// A pool of connections per endpoint, in the order of `endpoints`.
    Http1(Vec<Arc<H1Pool>>),
    /// One connection per endpoint, in the order of `endpoints`; the request URI names the
    /// host.
    H2c(Vec<Arc<H2cConn>>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream over `endpoints` (at least one), with clients from `cache`.
    pub fn new(
        name: String,
        endpoints: Vec<Authority>,
        cache: &ClientCache,
        key: ClientKey,
        request_timeout: Duration,
    ) -> Self {
        let clients = match key.protocol {
            UpstreamProtocol::Http1 => {
                Clients::Http1(endpoints.iter().map(|e| cache.get_h1(key, e)).collect())
            }
            UpstreamProtocol::H2c => {
                Clients::H2c(endpoints.iter().map(|e| cache.get_h2c(key, e)).collect())
            }
        };
        Upstream {
            name: name.into(),
            endpoints,
            next: AtomicUsize::new(0),
            clients,
            request_timeout,
            duration: std::sync::OnceLock::new(),
        }
    }

    /// The histogram of this upstream's response times.
    pub fn duration(&self, metrics: &crate::telemetry::metrics::Metrics) -> &prometheus::Histogram {
        self.duration
            .get_or_init(|| metrics.upstream_duration.with_label_values(&[&*self.name]))
    }

    /// Round robin over the endpoints; returns an index into `endpoints`.
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len()
    }

    /// Sends `req` (whose URI holds only path and query) to one endpoint, applying the
    /// request timeout to the wait for response headers.
    ///
    /// The timeout counts from the request body's last progress, not from the start: a slow
    /// but steady upload may take longer than the timeout, while a body that stops moving
    /// (or an upstream that stops reading it) still times out.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<UpstreamBody>, ProxyError> {
        let endpoint = self.pick();
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match &self.clients {
            Clients::Http1(_) => {
                // Origin form: the connection names the endpoint, `Host` the request's host
                // (an HTTP/1.1 request must have one: a plugin callout may not set it).
                *req.version_mut() = http::Version::HTTP_11;
                *req.uri_mut() = Uri::from(pq);
                if !req.headers().contains_key(header::HOST)
                    && let Ok(host) = http::HeaderValue::from_str(self.endpoints[endpoint].as_str())
                {
                    req.headers_mut().insert(header::HOST, host);
                }
            }
            Clients::H2c(_) => {
                // The host moves from the `Host` header to `:authority` (RFC 9113 §8.3.1).
                *req.version_mut() = http::Version::HTTP_2;
                let host = req.headers_mut().remove(header::HOST);
                let authority = host
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                    .filter(|a| !a.as_str().contains('@'))
                    .unwrap_or_else(|| self.endpoints[endpoint].clone());
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(Scheme::HTTP);
                parts.path_and_query = Some(pq);
                parts.authority = Some(authority);
                *req.uri_mut() = Uri::from_parts(parts)
                    .map_err(|e| ProxyError::internal(format!("building upstream URI: {e}")))?;
            }
        }
        let timeout = self.request_timeout;
        let progress = (!req.body().is_end_stream()).then(|| Arc::new(Progress::new()));
        if let Some(progress) = &progress {
            let progress = progress.clone();
            req = req.map(|inner| body::boxed(Watched { inner, progress }));
        }
        let response = match &self.clients {
            Clients::Http1(pools) => Either::Left(pools[endpoint].send(&self.name, req)),
            Clients::H2c(conns) => Either::Right(conns[endpoint].send(&self.name, req)),
        };
        tokio::pin!(response);
        let start = Instant::now();
        loop {
            let last = progress.as_ref().map_or(start, |p| p.last());
            match tokio::time::timeout_at(last + timeout, response.as_mut()).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => return Err(e),
                // The body moved since the deadline was set: wait from its last progress.
                Err(_) if progress.as_ref().is_some_and(|p| p.last() > last) => continue,
                // The client stopped sending its body: its fault (408), not the upstream's.
                Err(_) if progress.as_ref().is_some_and(|p| p.waiting_for_client()) => {
                    return Err(ProxyError::BodyIdle { after: timeout });
                }
                Err(_) => {
                    return Err(ProxyError::UpstreamTimeout {
                        upstream: self.name.to_string(),
                        after: timeout,
                    });
                }
            }
        }
    }
}

/// When a request body last produced a frame (or ended), and whether it is waiting for the
/// client.
struct Progress {
    origin: Instant,
    /// Milliseconds from `origin`.
    last_ms: AtomicU64,
    /// The body's last poll found no data yet: the client owes the next bytes. (Not polled at
    /// all, the body waits for the upstream to take more.)
    waiting_for_client: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_for_client: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn waiting_for_client(&self) -> bool {
        self.waiting_for_client.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

pin_project_lite::pin_project! {
    /// A request body that records its progress for the request timeout.
    struct Watched {
        #[pin]
        inner: Body,
        progress: Arc<Progress>,
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Ok(_)))) {
            this.progress.touch();
        }
        this.progress
            .waiting_for_client
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
