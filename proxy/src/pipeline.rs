//! A request's whole life, one line per phase. Each phase lives in its own module; this file
//! only calls them, so it reads top-down like the access log it ends with.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, Body, Tracked};
use crate::error::{ProxyError, Side};
use crate::filter::{self, Decision, Filter};
use crate::listener::ConnInfo;
use crate::route::RouteRequest;
use crate::route::path;
use crate::server::Shared;
use crate::snapshot::{Action, Snapshot, Target};
use crate::telemetry::metrics::{method_label, status_class};
use crate::{actions, forward};

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What the access log and metrics record about one request.
#[derive(Debug)]
pub struct Exchange {
    pub id: HeaderValue,
    pub started: Instant,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub route: Option<Arc<crate::snapshot::Route>>,
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    pub error: Option<(Side, String)>,
}

/// Whether a response came from the route's upstream: an open-ended one (no length) then
/// ends when its route is removed or changed by a reload (the route's `closing` token, looked
/// up only then: a clone of the token per request takes its lock twice).
#[derive(Debug, Clone, Copy)]
struct Forwarded(bool);

/// hyper's service entry point: never fails, every error becomes a response.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snapshot = shared.current.load_full();
    let mut pending = Pending::begin(&shared, &conn, &snapshot, &req);

    let result = if pending.over_limit {
        shared
            .metrics
            .requests_rejected
            .with_label_values(&["max_inflight"])
            .inc();
        Err(ProxyError::Overloaded)
    } else {
        proxy(&shared, &snapshot, &conn, req, &mut pending.ex).await
    };

    let (mut resp, forwarded) = match result {
        Ok((resp, forwarded)) => (resp, forwarded),
        Err(e) => {
            pending.ex.error = Some((e.side(), e.to_string()));
            (e.to_response(), Forwarded(false))
        }
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), pending.ex.id.clone());
    Ok(finish(pending, resp, forwarded))
}

/// The phases between "request received" and "response headers ready".
async fn proxy(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    ex: &mut Exchange,
) -> Result<(Response<Body>, Forwarded), ProxyError> {
    let limits = &snapshot.settings.limits;
    // Whatever runs next, upstream included, sees the id the client gets back.
    req.headers_mut()
        .insert(X_REQUEST_ID.clone(), ex.id.clone());
    actions::check_request(&req, limits)?;
    if conn.activity.head_too_large() {
        return Err(ProxyError::HeadTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    actions::check_framing(&req, conn)?;
    ex.host = actions::request_host(&req)?.to_string();
    if snapshot.settings.access_log {
        ex.path = req.uri().path().to_string();
    }
    actions::check_misdirected(conn, &ex.host)?;
    // The listener as this request's snapshot has it: a reload that changes its plugins or
    // its redirect applies to connections accepted before it too. (A listener the snapshot
    // no longer has is draining; its connections finish as they were accepted.)
    let listener = snapshot
        .listener(&conn.listener.key)
        .unwrap_or(&conn.listener);
    if let Some(port) = listener.redirect_https {
        return Ok((
            actions::https_redirect(&req, &ex.host, port),
            Forwarded(false),
        ));
    }
    // A `Uri` clone shares its bytes; the normalised path borrows from it when unchanged.
    let uri = req.uri().clone();
    let normalised =
        path::normalize(uri.path()).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let target = route(snapshot, &req, &ex.host, &normalised)?;
    ex.route = Some(target.route.clone());
    let upstream = match &target.route.action {
        Action::Forward(backends) => Some(backends.pick().clone()),
        _ => None,
    };
    ex.upstream = upstream.clone();
    // The plugin phases wrap the action when the route has a chain.
    let chain = filter::chain_for(snapshot, listener, &target.route);
    let filter = match chain.is_empty() {
        true => None,
        false => Some(Filter::start(chain, conn, &req, ex, &target.route, &normalised).await?),
    };
    let mut normalised = normalised;
    if let Some(filter) = &filter {
        let scheme = if conn.tls.is_some() { "https" } else { "http" };
        let decision = filter
            .request(&mut req, ex, &mut normalised, scheme)
            .await?;
        if let Decision::Respond(resp) = decision {
            return Ok((resp, Forwarded(false)));
        }
    }
    let (resp, forwarded) = act(
        shared,
        snapshot,
        conn,
        req,
        ex,
        &target,
        &normalised,
        upstream,
        filter.as_ref(),
    )
    .await?;
    match &filter {
        Some(filter) => Ok((filter.response(resp).await?, forwarded)),
        None => Ok((resp, forwarded)),
    }
}

/// The route's action: a direct response, a redirect, or forwarding to the upstream (with the
/// request body through the plugins' body callbacks when `filter` is given).
#[allow(clippy::too_many_arguments)]
async fn act(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    ex: &mut Exchange,
    target: &Target,
    normalised: &str,
    upstream: Option<Arc<crate::upstream::Upstream>>,
    filter: Option<&Filter>,
) -> Result<(Response<Body>, Forwarded), ProxyError> {
    let limits = &snapshot.settings.limits;
    match (&target.route.action, upstream) {
        (Action::Direct(d), _) => Ok((actions::direct(d), Forwarded(false))),
        (Action::Redirect(r), _) => Ok((
            actions::redirect(
                r,
                &req,
                conn,
                &ex.host,
                normalised,
                target.prefix.as_deref(),
            ),
            Forwarded(false),
        )),
        (Action::Forward(_), Some(upstream)) => {
            actions::check_body_size(&req, target.route.max_body)?;
            forward::prepare(&mut req, conn, snapshot, &ex.host, normalised, target)?;
            let started = Instant::now();
            // A request that ended with its headers has no body phase, nor one that no plugin
            // of the chain has body callbacks for.
            let filter = filter.filter(|f| {
                f.filters_request_body() && !http_body::Body::is_end_stream(req.body())
            });
            let resp = match filter {
                None => forward::send(shared, conn, limits, &upstream, req, target, None).await,
                Some(filter) => {
                    let (wrap, mut local) = filter.request_body();
                    let send = forward::send(
                        shared,
                        conn,
                        limits,
                        &upstream,
                        req,
                        target,
                        Some(Box::new(wrap)),
                    );
                    tokio::select! {
                        biased;
                        Ok(answer) = &mut local => Ok(crate::plugin::local_response(answer)),
                        resp = send => match (resp, local.try_recv()) {
                            // The body ended with the plugin's answer: that is the response.
                            (Err(_), Ok(answer)) => Ok(crate::plugin::local_response(answer)),
                            (resp, _) => resp,
                        },
                    }
                }
            };
            upstream
                .duration(&shared.metrics)
                .observe(started.elapsed().as_secs_f64());
            Ok((resp?, Forwarded(true)))
        }
        (Action::Forward(_), None) => Err(ProxyError::internal("no upstream picked")),
    }
}

/// Route lookup on the normalised path. A path with `;parameters` must match the same route
/// with them as without them: servers such as Tomcat drop them, so `/admin;x` is their
/// `/admin`, and a route on `/admin` (an auth plugin, a deny) must not be passed by.
fn route(
    snapshot: &Snapshot,
    req: &Request<Incoming>,
    host: &str,
    normalised: &str,
) -> Result<Target, ProxyError> {
    let find = |path: &str| {
        snapshot.router.find(&RouteRequest {
            host,
            path,
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        })
    };
    let found = find(normalised);
    if normalised.contains(';') {
        let bare = path::without_params(normalised);
        let same = match (found, find(&bare)) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(&a.route, &b.route) && a.prefix == b.prefix,
            _ => false,
        };
        if !same {
            return Err(ProxyError::BadRequest(format!(
                "request path is ambiguous: with its ';' parameters it matches another route than as {bare:?}, which servers that drop path parameters read"
            )));
        }
    }
    found.cloned().ok_or(ProxyError::NoRoute)
}

/// Wraps the response body so that, when it ends, the request's bookkeeping runs; stalled
/// bodies end after `body_idle_timeout` (see [`crate::body`]), and long-lived ones (no
/// `Content-Length`) when their route closes.
fn finish(mut pending: Pending, resp: Response<Body>, forwarded: Forwarded) -> Response<Body> {
    let status = resp.status();
    pending.status = Some(status);
    let (parts, body) = resp.into_parts();
    let mut tracked = Tracked::new(body)
        .idle(pending.body_idle, "response body", pending.ex.id.clone())
        .handoff(pending.conn.activity.watch_response());
    // A response of known length ends by itself; only open-ended streams (gRPC, SSE, long
    // downloads without a length) watch their route, which costs a waker registration.
    if forwarded.0
        && let Some(route) = &pending.ex.route
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        tracked = tracked.closing(&route.closing);
    }
    let tracked = tracked.on_end(move |bytes| {
        pending.bytes = bytes;
        drop(pending);
    });
    let mut resp = Response::from_parts(parts, body::boxed(tracked));
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The tunnel outlives this response; nothing else to do.
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    resp
}

/// One request from its head to the end of its response body. Dropping it does the
/// bookkeeping — in-flight counts, the connection's idle clock, metrics, the access log — so it
/// also runs when hyper drops a request midway (client gone, stream reset): that is logged and
/// counted with status 499, as nginx does.
struct Pending {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    ex: Exchange,
    status: Option<StatusCode>,
    bytes: u64,
    access_log: bool,
    body_idle: std::time::Duration,
    over_limit: bool,
}

impl Pending {
    fn begin(
        shared: &Arc<Shared>,
        conn: &Arc<ConnInfo>,
        snapshot: &Snapshot,
        req: &Request<Incoming>,
    ) -> Pending {
        conn.activity.begin();
        let inflight = shared.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.metrics.inflight.inc();
        Pending {
            shared: shared.clone(),
            conn: conn.clone(),
            ex: Exchange {
                id: request_id(req),
                started: Instant::now(),
                method: req.method().clone(),
                host: String::new(),
                path: String::new(),
                route: None,
                upstream: None,
                error: None,
            },
            status: None,
            bytes: 0,
            access_log: snapshot.settings.access_log,
            body_idle: snapshot.settings.limits.body_idle_timeout,
            over_limit: inflight > snapshot.settings.limits.max_inflight,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (shared, conn, ex) = (&self.shared, &self.conn, &self.ex);
        shared.inflight.fetch_sub(1, Ordering::AcqRel);
        shared.metrics.inflight.dec();
        // One clock reading for the connection's idle clock and the request's duration.
        let now = Instant::now();
        conn.activity.end(now);
        let status = self.status.map(|s| s.as_u16()).unwrap_or(499);
        let route = ex.route.as_ref().map(|r| &*r.name).unwrap_or("");
        let elapsed = now.saturating_duration_since(ex.started);
        match &ex.route {
            Some(r) => {
                r.stats
                    .requests(&shared.metrics, route, &ex.method, status)
                    .inc();
                r.stats
                    .duration(&shared.metrics, route)
                    .observe(elapsed.as_secs_f64());
            }
            None => {
                let labels = [route, method_label(&ex.method), status_class(status)];
                shared.metrics.requests.with_label_values(&labels).inc();
                shared
                    .metrics
                    .request_duration
                    .with_label_values(&[route])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if self.access_log {
            tracing::info!(
                target: "portico::access",
                id = ex.id.to_str().unwrap_or(""),
                listener = conn.listener.name.as_str(),
                client = %conn.peer.ip(),
                method = ex.method.as_str(),
                host = ex.host.as_str(),
                path = ex.path.as_str(),
                route,
                status,
                upstream = ex.upstream.as_ref().map(|u| &*u.name).unwrap_or(""),
                bytes = self.bytes,
                duration_us = elapsed.as_micros() as u64,
                error_side = ex.error.as_ref().map(|e| e.0.as_str()).unwrap_or(""),
                error = ex.error.as_ref().map(|e| e.1.as_str()).unwrap_or(""),
            );
        }
    }
}

/// Keeps a well-formed incoming `x-request-id`, or makes a new one.
fn request_id<B>(req: &Request<B>) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID) {
        let ok =
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    // 128 random bits as 32 lowercase hex digits.
    let bits = fastrand::u128(..);
    let id: [u8; 32] =
        std::array::from_fn(|i| b"0123456789abcdef"[(bits >> (124 - 4 * i)) as usize & 0xf]);
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(value: Option<&str>) -> HeaderValue {
        let mut req = Request::new(());
        if let Some(v) = value {
            req.headers_mut()
                .insert(&X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
        }
        request_id(&req)
    }

    #[test]
    fn request_ids_are_kept_when_well_formed() {
        assert_eq!(id_for(Some("abc-123_x.y")), "abc-123_x.y");
        let long = "x".repeat(128);
        assert_eq!(id_for(Some(&long)), long.as_str());
        for bad in [None, Some(""), Some("has space"), Some(&*"x".repeat(129))] {
            let id = id_for(bad);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)),
                "{bad:?}"
            );
        }
        // 128 random bits: every hex digit varies, the first as much as the last.
        let ids: Vec<HeaderValue> = (0..64).map(|_| id_for(None)).collect();
        for at in [0, 31] {
            let digits: std::collections::HashSet<u8> =
                ids.iter().map(|id| id.as_bytes()[at]).collect();
            assert!(digits.len() > 4, "digit {at} barely varies: {digits:?}");
        }
    }
}
