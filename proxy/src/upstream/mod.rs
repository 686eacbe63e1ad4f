//! Upstream side: pooled HTTP clients, endpoint choice, and forwarding one request.
//!
//! Clients (and so their connection pools) live in a [`ClientCache`] owned by the server and
//! survive reloads: a reload that keeps an upstream keeps its warm connections.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

pub mod headers;

use crate::body::{self, Body, BoxError};
use crate::error::ProxyError;

pub type HttpClient = Client<HttpConnector, Body>;

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

/// Clients by their settings; shared by every snapshot so pools outlive reloads.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache").finish_non_exhaustive()
    }
}

impl ClientCache {
    pub fn get(&self, key: ClientKey) -> HttpClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(key)
            .or_insert_with(|| build_client(key))
            .clone()
    }
}

fn build_client(key: ClientKey) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(key.idle_timeout)
        .pool_max_idle_per_host(1024)
        .retry_canceled_requests(true)
        .set_host(false);
    if key.protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// A named group of endpoints with one client.
pub struct Upstream {
    pub name: String,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    client: HttpClient,
    pub request_timeout: Duration,
    protocol_h2: bool,
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
    pub fn new(
        name: String,
        endpoints: Vec<Authority>,
        client: HttpClient,
        request_timeout: Duration,
    ) -> Self {
        Upstream {
            name,
            endpoints,
            next: AtomicUsize::new(0),
            client,
            request_timeout,
            protocol_h2: false,
        }
    }

    pub fn with_h2(mut self, h2: bool) -> Self {
        self.protocol_h2 = h2;
        self
    }

    /// Round robin over the endpoints.
    fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Sends `req` (whose URI holds only path and query) to one endpoint, applying the
    /// request timeout to the wait for response headers.
    ///
    /// The timeout counts from the request body's last progress, not from the start: a slow
    /// but steady upload may take longer than the timeout, while a body that stops moving
    /// (or an upstream that stops reading it) still times out.
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        let endpoint = self.pick().clone();
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(endpoint);
        parts.path_and_query = Some(pq);
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| ProxyError::internal(format!("building upstream URI: {e}")))?;
        *req.version_mut() = if self.protocol_h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let timeout = self.request_timeout;
        let progress = (!req.body().is_end_stream()).then(|| Arc::new(Progress::new()));
        if let Some(progress) = &progress {
            let progress = progress.clone();
            req = req.map(|inner| body::boxed(Watched { inner, progress }));
        }
        let response = self.client.request(req);
        tokio::pin!(response);
        let start = Instant::now();
        loop {
            let last = progress.as_ref().map_or(start, |p| p.last());
            match tokio::time::timeout_at(last + timeout, response.as_mut()).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => return Err(ProxyError::from_client_error(&self.name, e)),
                // The body moved since the deadline was set: wait from its last progress.
                Err(_) if progress.as_ref().is_some_and(|p| p.last() > last) => continue,
                Err(_) => {
                    return Err(ProxyError::UpstreamTimeout {
                        upstream: self.name.clone(),
                        after: timeout,
                    });
                }
            }
        }
    }
}

/// When a request body last produced a frame (or ended).
struct Progress {
    origin: Instant,
    /// Milliseconds from `origin`.
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
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
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
