//! What the plugin micro-benchmarks (plugin.rs, first_party.rs) share: loading a plugin, and the
//! request, response and stream a keep-alive wrk request presents to the chain, which one
//! iteration builds before the chain sees it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use portico::plugin::foreign::Allowed;
use portico::plugin::{
    Limits, OnError, Plugin, PluginDef, PluginHost, RequestHead, ResponseHead, StreamInfo,
};

/// Plugin `name` running `module` with `config` (JSON), failing closed, one instance (the
/// benchmarks are single-threaded).
pub fn load(host: &PluginHost, name: &str, module: &Path, config: String) -> Arc<Plugin> {
    load_with(host, name, module, config, Allowed::default())
}

/// [`load`], the plugin allowed only the foreign functions in `foreign_functions`.
#[allow(dead_code, reason = "first_party.rs uses it, plugin.rs does not")]
pub fn load_with(
    host: &PluginHost,
    name: &str,
    module: &Path,
    config: String,
    foreign_functions: Allowed,
) -> Arc<Plugin> {
    let def = PluginDef {
        name: name.to_string(),
        module: module.to_path_buf(),
        config: Bytes::from(config),
        on_error: OnError::Deny,
        limits: Limits {
            instances: 1,
            ..Limits::default()
        },
        foreign_functions,
    };
    host.load(&def, HashMap::new())
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// `GET /` to `127.0.0.1:18080` with `extra` headers after `host`.
pub fn request_head(extra: impl IntoIterator<Item = (&'static str, HeaderValue)>) -> RequestHead {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert("host", HeaderValue::from_static("127.0.0.1:18080"));
    for (name, value) in extra {
        headers.insert(name, value);
    }
    RequestHead {
        method: Method::GET,
        scheme: "http",
        authority: "127.0.0.1:18080".to_string(),
        path: "/".to_string(),
        headers,
    }
}

/// The backend's `200` with `hello\n`, as nginx answers it.
pub fn response_head() -> ResponseHead {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert("server", HeaderValue::from_static("nginx"));
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("content-length", HeaderValue::from_static("6"));
    ResponseHead {
        status: StatusCode::OK,
        headers,
    }
}

/// The stream of a plain HTTP/1.1 request on route `all` to upstream `backend`.
pub fn stream_info() -> StreamInfo {
    let source: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let destination: SocketAddr = "127.0.0.1:18080".parse().expect("address");
    StreamInfo {
        id: HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
        started: Instant::now(),
        source,
        destination,
        tls_version: None,
        mtls: false,
        sni: None,
        protocol: "HTTP/1.1",
        scheme: "http",
        method: Method::GET,
        host: "127.0.0.1:18080".to_string(),
        path: "/".to_string(),
        route: "all".into(),
        upstream: Some("backend".into()),
        later: Default::default(),
    }
}
