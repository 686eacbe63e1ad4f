//! The configuration file as written: serde types that mirror the YAML one to one.
//!
//! Nothing outside `config/` sees these types; [`super::compile`] turns them into a
//! [`crate::snapshot::Snapshot`]. Every struct denies unknown fields, so a typo is an error
//! that names the key and its location instead of a silently ignored setting.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Duration};

/// One YAML file. A configuration directory holds several, merged in name order.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[schemars(title = "Portico configuration")]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub access_log: Option<bool>,
    pub limits: Option<RawLimits>,
    pub shutdown: Option<RawShutdown>,
    pub reload: Option<RawReload>,
    pub forwarding: Option<RawForwarding>,
    /// WebAssembly plugins (Proxy-Wasm ABI 0.2.1), by name. Routes, listeners and
    /// `default_plugins` list them by that name.
    #[serde(default)]
    pub plugins: BTreeMap<String, RawPlugin>,
    /// The chain of every route that lists no `plugins` of its own, on a listener that lists
    /// none either.
    pub default_plugins: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    /// Path to the `.wasm` module (relative to this file's folder).
    pub module: String,
    /// Any YAML value; the plugin receives it as JSON through `proxy_on_configure`.
    pub config: Option<serde_json::Value>,
    /// `deny` (default): a failing plugin fails the request with 500. `allow`: it is skipped.
    pub on_error: Option<RawOnError>,
    pub limits: Option<RawPluginLimits>,
    /// The foreign functions (`proxy_call_foreign_function`) the plugin may call; any other
    /// answers `NotFound`, as in a host without it. Default: all that Portico offers.
    pub foreign_functions: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawOnError {
    Deny,
    Allow,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPluginLimits {
    /// Linear memory per instance. Default 64MiB, at most 1GiB.
    pub memory: Option<ByteSize>,
    /// Deadline of every call into the plugin, 10ms to 10s. Default 50ms.
    pub time_per_call: Option<Duration>,
    /// Instances (each serves one callback at a time). Default: one per CPU.
    pub instances: Option<usize>,
    /// Most of one body a plugin may buffer by pausing. Default 4MiB.
    pub body_buffer: Option<ByteSize>,
    /// Largest callout request or response body. Default 1MiB.
    pub callout_body: Option<ByteSize>,
    /// Timeout of a callout that sets none. Default 5s.
    pub callout_timeout: Option<Duration>,
    /// How long a paused request or response waits to be resumed before it fails. Default 60s.
    pub pause_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub address: String,
    pub tls: Option<RawTls>,
    /// Answer every request on this (plain) listener with a 308 to HTTPS.
    pub redirect_https: Option<RawRedirectHttps>,
    /// Accept HTTP/2 with prior knowledge (h2c) on a plain listener. Default true.
    pub h2c: Option<bool>,
    /// The plugin chain of routes reached through this listener that list no `plugins`.
    pub plugins: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedirectHttps {
    /// Port of the HTTPS listener; omitted means the scheme's default (443).
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Vec<RawCertificate>,
    pub client_auth: Option<RawClientAuth>,
    /// Offer HTTP/2 through ALPN. Default true.
    pub http2: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    /// Serve this certificate to clients without SNI (default: the first listed).
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub ca: String,
    #[serde(default)]
    pub mode: RawClientAuthMode,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawClientAuthMode {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub endpoints: Vec<String>,
    /// `http1` (default) or `h2c` (HTTP/2 with prior knowledge, for gRPC).
    pub protocol: Option<RawUpstreamProtocol>,
    pub connect_timeout: Option<Duration>,
    /// How long to wait for the response headers, counted from the request body's last
    /// progress (so a slow but steady upload is not cut). Default 60s.
    pub request_timeout: Option<Duration>,
    /// How long an idle pooled connection is kept. Default 90s.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawUpstreamProtocol {
    Http1,
    H2c,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub paths: Vec<RawPath>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<RawValueMatch>,
    #[serde(default)]
    pub query: Vec<RawValueMatch>,

    // The action: exactly one of these four.
    pub upstream: Option<String>,
    pub backends: Option<Vec<RawBackend>>,
    pub redirect: Option<RawRedirect>,
    pub direct_response: Option<RawDirectResponse>,

    pub rewrite: Option<RawRewrite>,
    pub timeouts: Option<RawRouteTimeouts>,
    pub max_body: Option<ByteSize>,
    /// Plugins run on this route's requests, in this order (responses in reverse). `[]` runs
    /// none, even where a listener or `default_plugins` would.
    pub plugins: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPath {
    #[serde(rename = "type")]
    pub kind: RawPathKind,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
pub enum RawPathKind {
    Exact,
    Prefix,
    RegularExpression,
}

/// A header or query-parameter condition: `value` (exact), `regex`, or neither (present).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawValueMatch {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub upstream: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Replace the whole path.
    pub path: Option<String>,
    /// Replace the matched prefix (Prefix rules only).
    pub prefix: Option<String>,
    /// 301, 302, 307 or 308. Default 302.
    pub status: Option<u16>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// Replace the matched prefix with this value (Prefix rules only).
    pub prefix: Option<String>,
    /// Replace the whole path with this value.
    pub path: Option<String>,
    /// Send this `Host` upstream instead of the client's.
    pub host: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTimeouts {
    /// Overrides the upstream's `connect_timeout` for this route.
    pub connect: Option<Duration>,
    /// Overrides the upstream's `request_timeout` for this route.
    pub request: Option<Duration>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<ByteSize>,
    pub max_headers: Option<usize>,
    pub max_uri_length: Option<ByteSize>,
    pub max_body: Option<ByteSize>,
    pub header_read_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// A request or response body that moves no data for this long is cut off.
    pub body_idle_timeout: Option<Duration>,
    /// A WebSocket tunnel that carries no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Option<Duration>,
    pub tls_handshake_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_inflight: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub drain_delay: Option<Duration>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    pub debounce: Option<Duration>,
    pub poll_interval: Option<Duration>,
    /// How long a long-lived stream (WebSocket, gRPC stream) may outlive the removal of its route,
    /// and a connection the removal of its listener.
    pub stream_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForwarding {
    /// Append to an incoming `x-forwarded-for` instead of replacing it. Default false: Portico
    /// is the edge, so what a client claims there is not trusted.
    pub trust_incoming: Option<bool>,
}
