//! The pipeline's plugin phases: turning a request into what plugins see (Envoy's
//! pseudo-headers over the normalised path), applying what they changed, and running the
//! response back through the chain. The plugins themselves run in [`crate::plugin`].

use std::sync::Arc;

use http::{HeaderValue, Request, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::ProxyError;
use crate::listener::ConnInfo;
use crate::pipeline::Exchange;
use crate::plugin::{
    self, Chain, ChainStream, LocalResponse, RequestHead, ResponseHead, StreamInfo, Verdict,
};
use crate::snapshot::{ListenerConfig, Route, Snapshot};

/// The chain a request runs through: its route's, else its listener's (as `listener` is
/// configured in `snapshot`), else the default.
pub fn chain_for<'a>(
    snapshot: &'a Snapshot,
    listener: &'a ListenerConfig,
    route: &'a Route,
) -> &'a Chain {
    route
        .plugins
        .as_ref()
        .or(listener.plugins.as_ref())
        .unwrap_or(&snapshot.default_plugins)
}

/// A request's plugin stream.
pub struct Filter {
    stream: Arc<ChainStream>,
}

/// What the request phase decided.
pub enum Decision {
    Continue,
    Respond(Response<Body>),
}

impl Filter {
    /// `normalised`: the path the plugins see (`:path` is it and the query).
    pub async fn start(
        chain: &Chain,
        conn: &ConnInfo,
        req: &Request<Incoming>,
        ex: &Exchange,
        route: &Route,
        normalised: &str,
    ) -> Result<Filter, ProxyError> {
        let info = StreamInfo {
            id: ex.id.clone(),
            started: ex.started,
            source: conn.peer,
            destination: conn.local,
            tls_version: conn.tls.as_ref().map(|t| t.version),
            mtls: conn.tls.as_ref().is_some_and(|t| t.client_cert),
            sni: conn.tls.as_ref().and_then(|t| t.sni.clone()),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            scheme: if conn.tls.is_some() { "https" } else { "http" },
            method: req.method().clone(),
            host: ex.host.clone(),
            // `request.path` in every phase, also after the request head is gone.
            path: match req.uri().query() {
                Some(q) => format!("{normalised}?{q}"),
                None => normalised.to_string(),
            },
            route: route.name.clone(),
            upstream: ex.upstream.as_ref().map(|u| u.name.clone()),
            later: Default::default(),
        };
        let stream = chain.start(Arc::new(info)).await?;
        Ok(Filter { stream })
    }

    /// `on_request_headers` over the whole chain. The request's method, path, host and headers
    /// become what the plugins left; `normalised` follows a changed path.
    pub async fn request(
        &self,
        req: &mut Request<Incoming>,
        ex: &mut Exchange,
        normalised: &mut std::borrow::Cow<'_, str>,
        scheme: &'static str,
    ) -> Result<Decision, ProxyError> {
        let path = match req.uri().query() {
            Some(q) => format!("{normalised}?{q}"),
            None => normalised.to_string(),
        };
        let mut head = RequestHead {
            method: req.method().clone(),
            scheme,
            authority: ex.host.clone(),
            path,
            headers: std::mem::take(req.headers_mut()),
        };
        let end_of_stream = req.body().is_end_stream();
        let verdict = self.stream.request_headers(&mut head, end_of_stream).await;
        // Whatever the verdict, the request gets its headers back.
        *req.headers_mut() = std::mem::take(&mut head.headers);
        if let Verdict::Respond(local) = verdict? {
            return Ok(Decision::Respond(self.respond(local).await?));
        }
        *req.method_mut() = head.method;
        if head.authority != ex.host {
            let value = HeaderValue::from_str(&head.authority)
                .map_err(|_| ProxyError::internal("a plugin set an invalid :authority"))?;
            req.headers_mut().insert(header::HOST, value);
            ex.host = head.authority;
        }
        if !is_path(&head.path, normalised, req.uri().query()) {
            let pq: http::uri::PathAndQuery = head
                .path
                .parse()
                .map_err(|_| ProxyError::internal("a plugin set an invalid :path"))?;
            *normalised = std::borrow::Cow::Owned(pq.path().to_string());
            *req.uri_mut() = http::Uri::from(pq);
        }
        Ok(Decision::Continue)
    }

    /// Whether the request body goes through the chain: only if some plugin has request body or
    /// trailer callbacks.
    pub fn filters_request_body(&self) -> bool {
        self.stream.filters_request_body()
    }

    /// Wraps a request body for the chain's body callbacks; a local response sent from one of
    /// them arrives on the receiver.
    pub fn request_body(
        &self,
    ) -> (
        impl FnOnce(Body) -> Body + Send + 'static,
        tokio::sync::oneshot::Receiver<LocalResponse>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stream = self.stream.clone();
        (move |body| stream.request_body(body, tx), rx)
    }

    /// `on_response_headers` in reverse order, and the response body wrapped for the body
    /// and trailer callbacks. The chain's contexts end with the response body.
    pub async fn response(&self, resp: Response<Body>) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = resp.into_parts();
        let mut head = ResponseHead {
            status: parts.status,
            headers: std::mem::take(&mut parts.headers),
        };
        let end_of_stream = body.is_end_stream();
        match self
            .stream
            .response_headers(&mut head, end_of_stream)
            .await?
        {
            Verdict::Respond(local) => {
                // A plugin replaced the response: the upstream's body is dropped.
                Ok(plugin::local_response(local))
            }
            Verdict::Continue => {
                parts.status = head.status;
                parts.headers = head.headers;
                let upgraded = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
                let body = if end_of_stream || upgraded {
                    body
                } else {
                    self.stream.response_body(body)
                };
                Ok(Response::from_parts(parts, body))
            }
        }
    }

    /// A plugin's local response, run back through the response phase as Envoy does.
    async fn respond(&self, local: LocalResponse) -> Result<Response<Body>, ProxyError> {
        self.response(plugin::local_response(local)).await
    }

    /// A response produced without an upstream (direct response, redirect).
    pub async fn finish_local(&self, resp: Response<Body>) -> Result<Response<Body>, ProxyError> {
        self.response(resp).await
    }
}

/// Whether `path` (the `:path` the plugins left) is still `normalised` with `query`, as the
/// request phase presented it.
fn is_path(path: &str, normalised: &str, query: Option<&str>) -> bool {
    match (path.strip_prefix(normalised), query) {
        (Some(rest), Some(q)) => rest.strip_prefix('?') == Some(q),
        (Some(rest), None) => rest.is_empty(),
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_path;

    #[test]
    fn a_path_is_unchanged_only_if_path_and_query_both_are() {
        assert!(is_path("/a/b", "/a/b", None));
        assert!(is_path("/a/b?x=1", "/a/b", Some("x=1")));
        assert!(is_path("/a/b?", "/a/b", Some("")));
        assert!(!is_path("/a/b?x=1", "/a/b", None));
        assert!(!is_path("/a/b", "/a/b", Some("x=1")));
        assert!(!is_path("/a/bc", "/a/b", None));
        assert!(!is_path("/a/b?x=2", "/a/b", Some("x=1")));
        assert!(!is_path("/a", "/a/b", None));
        assert!(!is_path("/a/b/", "/a/b", None));
    }
}
