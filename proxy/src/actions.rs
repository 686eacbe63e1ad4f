//! Request checks and the route actions that answer without an upstream: redirects and
//! direct responses.

use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::body::{self, Body, BodyTooLarge};
use crate::error::ProxyError;
use crate::listener::{ConnInfo, HeadFraming};
use crate::snapshot::{DirectResponse, Limits, PathReplace, Redirect};

/// Refuses what must never reach an upstream: over-long URIs, ambiguous framing.
pub fn check_request<B>(req: &Request<B>, limits: &Limits) -> Result<(), ProxyError> {
    let uri_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len > limits.max_uri_length {
        return Err(ProxyError::UriTooLong {
            limit: limits.max_uri_length,
        });
    }
    let headers = req.headers();
    // RFC 9112 §6.1: a message with both is a request-smuggling vector; refuse it.
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding are present".into(),
        ));
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next()
        && (lengths.any(|v| v != first)
            || first
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_none())
    {
        return Err(ProxyError::BadRequest(
            "invalid or conflicting Content-Length".into(),
        ));
    }
    if req.uri().path_and_query().is_none() && req.method() != http::Method::OPTIONS {
        return Err(ProxyError::BadRequest(
            "request target must be an absolute path".into(),
        ));
    }
    Ok(())
}

/// Refuses an HTTP/1 request that came with both `Content-Length` and `Transfer-Encoding`.
/// hyper has already removed the `Content-Length` (RFC 9112 §6.3 lets a server do that or
/// refuse) and kept `Transfer-Encoding`, so only such requests need a look at what the
/// connection's byte stream showed of their head ([`crate::listener::HeadFraming`]). A head
/// that was not followed is refused too (fail closed): that happens only after input hyper
/// refuses or a head with both, each of which ends the connection, so no good request meets it.
///
/// The transfer coding must be `chunked` alone: hyper decodes the chunked framing of
/// `gzip, chunked` and drops the rest, so the upstream would take gzip bytes for the content
/// (RFC 9112 §6.1: a coding the server does not understand is 501), and `chunked` applied
/// twice is invalid framing (400).
pub fn check_framing<B>(req: &Request<B>, conn: &ConnInfo) -> Result<(), ProxyError> {
    if req.version() > http::Version::HTTP_11
        || !req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Ok(());
    }
    let mut chunked = 0;
    for coding in req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty())
    {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(ProxyError::UnsupportedTransferCoding(
                String::from_utf8_lossy(coding).into_owned(),
            ));
        }
        chunked += 1;
    }
    if chunked != 1 {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding must name chunked exactly once".into(),
        ));
    }
    match conn.activity.head_framing() {
        HeadFraming::Clean => Ok(()),
        HeadFraming::Both => Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding are present".into(),
        )),
        HeadFraming::Unknown => Err(ProxyError::BadRequest(
            "the request's framing could not be verified".into(),
        )),
    }
}

/// Refuses a body whose declared length is over the route's limit, before any upstream work.
pub fn check_body_size<B>(req: &Request<B>, max: Option<u64>) -> Result<(), ProxyError> {
    let Some(limit) = max else { return Ok(()) };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(ProxyError::BodyTooLarge(BodyTooLarge { limit })),
        _ => Ok(()),
    }
}

/// The request's host: `Host` (HTTP/1.1) or the URI authority (HTTP/2 `:authority`), with
/// any port, as sent.
/// A host never carries userinfo (RFC 9110 §4.2.4, RFC 9113 §8.3.1), so `user@host` is refused
/// rather than routed or forwarded.
pub fn request_host<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    if let Some(a) = req.uri().authority() {
        // HTTP/1.1 still needs exactly one Host next to an absolute-form target (RFC 9112 §3.2).
        if req.version() == http::Version::HTTP_11
            && req.headers().get_all(header::HOST).iter().count() != 1
        {
            return Err(ProxyError::BadRequest(
                "an HTTP/1.1 request needs exactly one Host header".into(),
            ));
        }
        if a.as_str().contains('@') {
            return Err(ProxyError::BadRequest(
                "the request target's authority has userinfo".into(),
            ));
        }
        if !port_ok(a) {
            return Err(ProxyError::BadRequest(
                "the request target's authority has an invalid port".into(),
            ));
        }
        return Ok(a.as_str());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => {
            let s = h
                .to_str()
                .map_err(|_| ProxyError::BadRequest("Host is not valid ASCII".into()))?;
            let valid = !s.is_empty()
                && !s.contains('@')
                && s.parse::<http::uri::Authority>().is_ok_and(|a| port_ok(&a));
            if !valid {
                return Err(ProxyError::BadRequest("Host is not a valid host".into()));
            }
            Ok(s)
        }
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header".into())),
        (None, _) => Err(ProxyError::BadRequest("missing Host header".into())),
    }
}

/// Is an authority's port, if it has one, a number from 0 to 65535 (RFC 3986 §3.2.3; an empty
/// port is allowed)? `http` parses the port only on demand, so `host:abc` would pass.
fn port_ok(a: &http::uri::Authority) -> bool {
    match a.as_str()[a.host().len()..].strip_prefix(':') {
        None | Some("") => true,
        Some(_) => a.port_u16().is_some(),
    }
}

/// A TLS client that sent SNI must not use the connection for a host its certificate does
/// not cover (RFC 9110 §15.5.20; HTTP/2 connection coalescing makes this real).
pub fn check_misdirected(conn: &ConnInfo, host: &str) -> Result<(), ProxyError> {
    let Some(tls) = &conn.tls else { return Ok(()) };
    let Some(sni) = &tls.sni else { return Ok(()) };
    let bare = strip_port(host);
    if bare.eq_ignore_ascii_case(sni) || tls.settings.cert_covers(tls.cert_index, bare) {
        return Ok(());
    }
    Err(ProxyError::Misdirected {
        host: host.to_string(),
    })
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn port_of(host: &str) -> Option<&str> {
    let bare = strip_port(host);
    host.get(bare.len() + 1..).filter(|p| !p.is_empty())
}

/// The listener's blanket 308 to HTTPS.
pub fn https_redirect<B>(req: &Request<B>, host: &str, port: Option<u16>) -> Response<Body> {
    let mut location = format!("https://{}", strip_port(host));
    if let Some(p) = port.filter(|p| *p != 443) {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    redirect_response(StatusCode::PERMANENT_REDIRECT, &location)
}

/// A route's redirect: each part replaced or kept from the request.
pub fn redirect<B>(
    r: &Redirect,
    req: &Request<B>,
    conn: &ConnInfo,
    host: &str,
    normalised: &str,
    matched_prefix: Option<&str>,
) -> Response<Body> {
    let request_scheme = if conn.tls.is_some() { "https" } else { "http" };
    let scheme = r.scheme.as_deref().unwrap_or(request_scheme);
    let name = r.host.as_deref().unwrap_or_else(|| strip_port(host));
    let port = match r.port {
        Some(p) => Some(p.to_string()),
        // Changing the scheme drops the old port; otherwise it is kept.
        None if scheme != request_scheme => None,
        None => port_of(host).map(str::to_string),
    };
    let path = match &r.path {
        Some(p) => replace_path(p, normalised, matched_prefix),
        None => normalised.to_string(),
    };
    let default_port = if scheme == "https" { "443" } else { "80" };
    let mut location = format!("{scheme}://{name}");
    if let Some(p) = port.filter(|p| p != default_port) {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&path);
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    redirect_response(r.status, &location)
}

/// Applies a path replacement: the whole path, or the prefix the rule matched.
pub fn replace_path(p: &PathReplace, path: &str, matched_prefix: Option<&str>) -> String {
    match p {
        PathReplace::Full(full) => full.clone(),
        PathReplace::Prefix(with) => {
            let prefix = matched_prefix.unwrap_or("");
            let rest = path.get(prefix.len()..).unwrap_or("");
            let mut out = format!("{}{rest}", with.trim_end_matches('/'));
            if !out.starts_with('/') {
                out.insert(0, '/');
            }
            out
        }
    }
}

fn redirect_response(status: StatusCode, location: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

pub fn direct(d: &DirectResponse) -> Response<Body> {
    let mut resp = Response::new(body::full(d.body.clone()));
    *resp.status_mut() = d.status;
    if let Some(ct) = &d.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(port_of("a.example:8080"), Some("8080"));
        assert_eq!(port_of("a.example"), None);
    }

    #[test]
    fn hosts_come_from_the_target_or_the_host_header() {
        let host = |target: &str, hosts: &[&str]| {
            let mut req = Request::get(target);
            for h in hosts {
                req = req.header(header::HOST, *h);
            }
            request_host(&req.body(()).unwrap())
                .map(str::to_string)
                .map_err(|e| e.status().as_u16())
        };
        assert_eq!(host("/", &["a.example:8080"]), Ok("a.example:8080".into()));
        assert_eq!(
            host("http://b.example/", &["a.example"]),
            Ok("b.example".into())
        );
        assert_eq!(host("/", &[]), Err(400));
        assert_eq!(host("/", &[""]), Err(400));
        assert_eq!(host("/", &["a.example", "b.example"]), Err(400));
        assert_eq!(host("/", &["a b"]), Err(400));
        assert_eq!(host("/", &["user@a.example"]), Err(400));
        assert_eq!(host("http://user:pw@a.example/", &["a.example"]), Err(400));
        // Ports: a number up to 65535, or empty.
        assert_eq!(host("/", &["a.example:"]), Ok("a.example:".into()));
        assert_eq!(host("/", &["[::1]:443"]), Ok("[::1]:443".into()));
        assert_eq!(host("/", &["[::1]"]), Ok("[::1]".into()));
        for bad in [
            "a.example:abc",
            "a.example:999999",
            "a.example:-1",
            "[::1]:x",
        ] {
            assert_eq!(host("/", &[bad]), Err(400), "{bad}");
        }
        assert_eq!(host("http://a.example:abc/", &["a.example"]), Err(400));
    }

    #[test]
    fn replaces_prefixes() {
        let p = PathReplace::Prefix("/v2".into());
        assert_eq!(replace_path(&p, "/api/x", Some("/api")), "/v2/x");
        assert_eq!(replace_path(&p, "/api", Some("/api")), "/v2");
        let root = PathReplace::Prefix("/".into());
        assert_eq!(replace_path(&root, "/api/users", Some("/api")), "/users");
        assert_eq!(replace_path(&root, "/api", Some("/api")), "/");
        let app = PathReplace::Prefix("/app".into());
        assert_eq!(replace_path(&app, "/x", Some("")), "/app/x");
        assert_eq!(
            replace_path(&PathReplace::Full("/new".into()), "/old/x", None),
            "/new"
        );
    }
}
