//! Upstream side: pooled HTTP clients, endpoint choice, and forwarding one request.
//!
//! Clients (and so their connection pools) live in a [`ClientCache`] owned by the server and
//! survive reloads: a reload that keeps an upstream keeps its warm connections.
//!
//! HTTP/1.1 upstreams share one client per settings, which connects to the endpoint named in
//! the request URI; the `Host` header carries the request's host. HTTP/2 has no such split:
//! the URI's authority *is* the request's host (`:authority`), so an h2c upstream has one
//! client per endpoint whose connector ([`Dial`]) always dials that endpoint, and the URI
//! names the request's host.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

pub mod headers;

use crate::body::{self, Body, BoxError};
use crate::error::ProxyError;

pub type HttpClient = Client<HttpConnector, Body>;
/// An h2c client bound to one endpoint.
pub type H2cClient = Client<Dial, Body>;

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
    /// h2c clients by settings and endpoint. Never pruned: an endpoint removed by a reload
    /// leaves a client whose idle connections close after `idle_timeout`.
    h2c: Mutex<HashMap<(ClientKey, Authority), H2cClient>>,
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
            .or_insert_with(|| client_builder(key).build(connector(key)))
            .clone()
    }

    /// The h2c client for one endpoint.
    pub fn get_h2c(&self, key: ClientKey, endpoint: &Authority) -> H2cClient {
        let mut clients = self.h2c.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((key, endpoint.clone()))
            .or_insert_with(|| {
                let endpoint = Uri::from_parts({
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(Scheme::HTTP);
                    parts.authority = Some(endpoint.clone());
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                    parts
                })
                .expect("scheme, authority and path make a URI");
                client_builder(key).build(Dial {
                    inner: connector(key),
                    endpoint,
                })
            })
            .clone()
    }
}

fn connector(key: ClientKey) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector
}

fn client_builder(key: ClientKey) -> hyper_util::client::legacy::Builder {
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
    builder
}

/// A connector that dials one endpoint, whatever host the request URI names.
#[derive(Clone)]
pub struct Dial {
    inner: HttpConnector,
    endpoint: Uri,
}

impl Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _host: Uri) -> Self::Future {
        let connecting = self.inner.call(self.endpoint.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// A named group of endpoints with its clients.
pub struct Upstream {
    pub name: String,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    clients: Clients,
    pub request_timeout: Duration,
}

// One per upstream and snapshot: its size does not matter, an extra indirection per request would.
#[allow(clippy::large_enum_variant)]
enum Clients {
    /// One client for every endpoint; the request URI names the endpoint.
    Http1(HttpClient),
    /// One client per endpoint, in the order of `endpoints`; the request URI names the host.
    H2c(Vec<H2cClient>),
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
            UpstreamProtocol::Http1 => Clients::Http1(cache.get(key)),
            UpstreamProtocol::H2c => {
                Clients::H2c(endpoints.iter().map(|e| cache.get_h2c(key, e)).collect())
            }
        };
        Upstream {
            name,
            endpoints,
            next: AtomicUsize::new(0),
            clients,
            request_timeout,
        }
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
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        let endpoint = self.pick();
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.path_and_query = Some(pq);
        parts.authority = Some(match &self.clients {
            Clients::Http1(_) => {
                *req.version_mut() = http::Version::HTTP_11;
                self.endpoints[endpoint].clone()
            }
            Clients::H2c(_) => {
                // The host moves from the `Host` header to `:authority` (RFC 9113 §8.3.1).
                *req.version_mut() = http::Version::HTTP_2;
                let host = req.headers_mut().remove(header::HOST);
                host.and_then(|h| Authority::try_from(h.as_bytes()).ok())
                    .filter(|a| !a.as_str().contains('@'))
                    .unwrap_or_else(|| self.endpoints[endpoint].clone())
            }
        });
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| ProxyError::internal(format!("building upstream URI: {e}")))?;
        let timeout = self.request_timeout;
        let progress = (!req.body().is_end_stream()).then(|| Arc::new(Progress::new()));
        if let Some(progress) = &progress {
            let progress = progress.clone();
            req = req.map(|inner| body::boxed(Watched { inner, progress }));
        }
        let response = match &self.clients {
            Clients::Http1(client) => client.request(req),
            Clients::H2c(clients) => clients[endpoint].request(req),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dial_connects_to_its_endpoint_whatever_the_uri_names() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let key = ClientKey {
            protocol: UpstreamProtocol::H2c,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let mut dial = Dial {
            inner: connector(key),
            endpoint: format!("http://{endpoint}/").parse().unwrap(),
        };
        std::future::poll_fn(|cx| dial.poll_ready(cx))
            .await
            .unwrap();
        let connecting = dial.call("http://orders.example:443/".parse().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connecting);
        let (_, peer) = accepted.unwrap();
        let stream = connected.unwrap();
        assert_eq!(stream.inner().local_addr().unwrap(), peer);
    }
}
