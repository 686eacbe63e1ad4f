//! `ProxyError`: every way a request can fail, and the one place that turns it into a response.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body, BodyIdle, BodyTooLarge};

/// Which side of the proxy failed; recorded in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Plugin,
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Plugin => "plugin",
            Side::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no route matches")]
    NoRoute,
    /// A request transfer coding other than `chunked` (RFC 9112 §6.1: 501).
    #[error("transfer coding {0:?} is not supported (only chunked)")]
    UnsupportedTransferCoding(String),
    #[error("URI longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request head longer than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("{0}")]
    BodyTooLarge(#[from] BodyTooLarge),
    /// The client stopped sending its request body (`limits.body_idle_timeout`).
    #[error("request body moved no data for {after:?}")]
    BodyIdle { after: Duration },
    #[error("host {host:?} is not covered by the certificate of this connection")]
    Misdirected { host: String },
    #[error("too many requests in flight")]
    Overloaded,
    #[error("cannot connect to upstream {upstream}: {reason}")]
    UpstreamConnect { upstream: String, reason: String },
    #[error("upstream {upstream} failed: {reason}")]
    UpstreamFailed { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {after:?}")]
    UpstreamTimeout { upstream: String, after: Duration },
    /// A plugin trapped, timed out, hit a cap or closed the stream, and its policy is `deny`.
    #[error("plugin {plugin} failed: {reason}")]
    PluginFailed { plugin: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn internal(msg: impl Into<String>) -> Self {
        ProxyError::Internal(msg.into())
    }

    /// Classifies an error of a request to an upstream (`connecting`: no connection could be
    /// made): connection failures are 502, a request body over its limit is 413, a request
    /// body that stopped moving 408, a request body a plugin failed on (`on_error: deny`) 500,
    /// a request body the client sent malformed (or did not finish) 400, anything else the
    /// upstream did is 502.
    pub fn from_upstream_error(
        upstream: &str,
        e: &(dyn std::error::Error + 'static),
        connecting: bool,
    ) -> Self {
        if let Some(ProxyError::PluginFailed { plugin, reason }) = find_cause::<ProxyError>(e) {
            return ProxyError::PluginFailed {
                plugin: plugin.clone(),
                reason: reason.clone(),
            };
        }
        if let Some(limit) = find_cause::<BodyTooLarge>(e) {
            return ProxyError::BodyTooLarge(BodyTooLarge { limit: limit.limit });
        }
        if let Some(idle) = find_cause::<BodyIdle>(e) {
            return ProxyError::BodyIdle { after: idle.after };
        }
        if let Some(client) = find_cause::<crate::body::ClientBody>(e) {
            // Malformed chunked framing, or the client gone before the body's end.
            return ProxyError::BadRequest(client.to_string());
        }
        let reason = error_chain(e);
        if connecting {
            ProxyError::UpstreamConnect {
                upstream: upstream.to_string(),
                reason,
            }
        } else {
            ProxyError::UpstreamFailed {
                upstream: upstream.to_string(),
                reason,
            }
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UnsupportedTransferCoding(_)
            | ProxyError::NoRoute
            | ProxyError::UriTooLong { .. }
            | ProxyError::HeadTooLarge { .. }
            | ProxyError::BodyTooLarge(_)
            | ProxyError::BodyIdle { .. }
            | ProxyError::Misdirected { .. } => Side::Downstream,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::UpstreamTimeout { .. } => Side::Upstream,
            ProxyError::PluginFailed { .. } => Side::Plugin,
            ProxyError::Overloaded | ProxyError::Internal(_) => Side::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyIdle { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) | ProxyError::PluginFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The response a client sees. Upstream and internal details stay in the log.
    pub fn to_response(&self) -> Response<Body> {
        let status = self.status();
        let text = match self.side() {
            Side::Downstream => format!("{self}\n"),
            _ => format!("{}\n", status.canonical_reason().unwrap_or("error")),
        };
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadTooLarge { .. }
                | ProxyError::UnsupportedTransferCoding(_)
                | ProxyError::BodyTooLarge(_)
                | ProxyError::BodyIdle { .. }
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// "a: b: c" from an error and its sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let msg = err.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = err.source();
    }
    s
}
