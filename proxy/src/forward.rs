//! Forwarding to an upstream: the outgoing request's head, the exchange, and HTTP/1.1
//! upgrades (WebSocket and any other protocol) tunnelled byte for byte.
//!
//! Every protocol an upgrade request offers is passed on except `h2c`, which is dropped (an
//! h2c tunnel would carry requests past the router); with nothing left, the request is
//! forwarded as a plain one. The upstream's `101` must switch to a protocol offered. A tunnel
//! keeps its downstream connection's [`ConnInfo`], and so the connection's slot under
//! `max_connections`, until it ends; it ends when either side closes, its route or listener
//! goes away, shutdown's hard stop fires, or no byte moves for `limits.tunnel_idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::actions;
use crate::body::{self, Body, Tracked};
use crate::error::ProxyError;
use crate::listener::ConnInfo;
use crate::server::Shared;
use crate::snapshot::{Limits, Snapshot, Target};
use crate::upstream::Upstream;
use crate::upstream::headers::{
    set_forwarded, strip_hop_by_hop, tunnelled_upgrade, upgraded_to_offered,
};

/// Rewrites the request head in place for the upstream: normalised (and rewritten) path,
/// `Host`, forwarding headers, no hop-by-hop headers.
pub fn prepare(
    req: &mut Request<Incoming>,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    host: &str,
    normalised: &str,
    target: &Target,
) -> Result<(), ProxyError> {
    let route = &target.route;
    let uri_authority = req.uri().authority().is_some();
    let upgrade = match req.version() {
        http::Version::HTTP_11 => tunnelled_upgrade(req.headers()),
        _ => None,
    };
    let h2 = req.version() == http::Version::HTTP_2;
    let headers = req.headers_mut();
    // The id survives even a `Connection: x-request-id` from the client.
    let request_id = headers.get(&X_REQUEST_ID).cloned();
    strip_hop_by_hop(headers, upgrade.is_some());
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID.clone(), id);
    }
    if h2 {
        merge_cookies(headers);
    }
    if let Some(protocols) = upgrade {
        // What the client offered, `h2c` left out.
        headers.insert(header::UPGRADE, protocols);
    }
    set_forwarded(
        headers,
        &conn.peer_ip,
        conn.tls.is_some(),
        host,
        snapshot.settings.trust_forwarded,
    );

    // `Host` stays as the client sent it unless rewritten, or unless the host came from the
    // request target (HTTP/2 `:authority`, HTTP/1.1 absolute form), which wins over `Host`.
    match route.rewrite.as_ref().and_then(|r| r.host.clone()) {
        Some(h) => {
            headers.insert(header::HOST, h);
        }
        None if uri_authority || !headers.contains_key(header::HOST) => {
            let value = HeaderValue::from_str(host)
                .map_err(|_| ProxyError::BadRequest("invalid host".into()))?;
            headers.insert(header::HOST, value);
        }
        None => {}
    }

    let path = match route.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
        Some(p) => actions::replace_path(p, normalised, target.prefix.as_deref()),
        // Unchanged by normalisation: the upstream gets the target as it came.
        None if normalised == req.uri().path() => return Ok(()),
        None => normalised.to_string(),
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let pq: PathAndQuery = pq
        .parse()
        .map_err(|_| ProxyError::BadRequest("invalid path".into()))?;
    *req.uri_mut() = http::Uri::from(pq);
    Ok(())
}

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// HTTP/2 sends each cookie as its own field; an HTTP/1.1 upstream expects one `cookie` line
/// (RFC 9113 §8.2.3), so they are joined with `"; "`.
fn merge_cookies(headers: &mut http::HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let joined = joined.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Sends the prepared request and returns the upstream's response for the client. A `101`
/// answer to an upgrade request starts a tunnel task between the two upgraded connections.
pub async fn send(
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    limits: &Limits,
    upstream: &Upstream,
    mut req: Request<Incoming>,
    target: &Target,
    filter_body: Option<Box<dyn FnOnce(Body) -> Body + Send>>,
) -> Result<Response<Body>, ProxyError> {
    // `prepare` left an `Upgrade` header only on an upgrade it tunnels: the protocols offered.
    let offered = req.headers().get(header::UPGRADE).cloned();
    let downstream_upgrade = offered.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let limit = target.route.max_body;
    let body = body::prefetch(
        body::incoming(incoming),
        &parts.headers,
        limit,
        upstream.request_timeout,
    )
    .await?;
    let id = parts
        .headers
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = Tracked::new(body)
        .limit(limit)
        .idle(limits.body_idle_timeout, "request body", id)
        .idle_until(answered.clone());
    let body = match filter_body {
        Some(filter) => filter(body::boxed(body)),
        None => body::boxed(body),
    };
    let mut resp = upstream.send(Request::from_parts(parts, body)).await?;
    answered.store(true, std::sync::atomic::Ordering::Release);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(downstream) = downstream_upgrade else {
            return Err(ProxyError::UpstreamFailed {
                upstream: upstream.name.to_string(),
                reason: "101 Switching Protocols to a request that asked for no upgrade".into(),
            });
        };
        if !offered.is_some_and(|o| upgraded_to_offered(resp.headers(), &o)) {
            return Err(ProxyError::UpstreamFailed {
                upstream: upstream.name.to_string(),
                reason: "101 Switching Protocols to a protocol the request did not offer".into(),
            });
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let idle = limits.tunnel_idle_timeout;
        spawn_tunnel(shared, conn, downstream, upstream_upgrade, target, idle);
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, body::empty()));
    }

    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}

fn spawn_tunnel(
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    target: &Target,
    idle_limit: Duration,
) {
    // Holds the downstream connection's slot until the tunnel ends.
    let conn = conn.clone();
    let closing = target.route.closing.clone();
    let hard_stop = shared.hard_stop.clone();
    let listener_removed = conn.kill.clone();
    let peer = conn.peer;
    let metrics = shared.metrics.clone();
    let route = target.route.name.clone();
    let listener = conn.listener.name.clone();
    shared.tunnels.spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(%route, "upgrade failed: {e}");
                return;
            }
        };
        // Every byte either way passes the downstream side: one clock there sees them all.
        let clock = Arc::new(Moved::new());
        let mut down = Metered {
            inner: TokioIo::new(down),
            clock: clock.clone(),
        };
        let mut up = TokioIo::new(up);
        // Biased: when shutdown's hard stop also kills the listeners, say it was the shutdown.
        tokio::select! {
            biased;
            r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                if let Err(e) = r {
                    tracing::debug!(%route, %listener, "tunnel ended: {e}");
                }
            }
            _ = closing.cancelled() => {
                metrics.streams_closed_by_reload.inc();
                tracing::info!(%route, %listener, "closing tunnel: its route was removed or changed");
            }
            _ = hard_stop.cancelled() => {
                tracing::info!(%route, %listener, "closing tunnel: shutdown timeout reached");
            }
            _ = listener_removed.cancelled() => {
                metrics.streams_closed_by_reload.inc();
                tracing::info!(%route, %listener, "closing tunnel: its listener was removed");
            }
            _ = clock.idle_for(idle_limit) => {
                tracing::info!(%route, %listener, %peer, "closing tunnel: no data either way for {idle_limit:?}");
            }
        }
        drop(conn);
    });
}

/// When bytes last moved through a tunnel.
struct Moved {
    origin: Instant,
    /// Milliseconds from `origin`.
    last_ms: AtomicU64,
}

impl Moved {
    fn new() -> Self {
        Moved {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Completes once no byte has moved for `limit`. One timer, re-armed only when it fires.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// IO that records on a [`Moved`] every read or write that moves bytes.
struct Metered<IO> {
    inner: IO,
    clock: Arc<Moved>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Metered<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Metered<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
