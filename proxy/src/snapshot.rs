//! The compiled, immutable configuration that serves traffic.
//!
//! One [`Snapshot`] lives behind the server's single `ArcSwap`; a request loads it once and
//! keeps it until it ends, so a reload never changes the rules under a request in flight.
//! Nothing here is a serde type: [`crate::config::compile`] is the only way to build one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::config::Location;
use crate::route::Router;
use crate::tls::TlsSettings;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the configuration and every file it references (hex).
    pub hash: String,
    pub loaded_at: SystemTime,
    pub listeners: Vec<Arc<ListenerConfig>>,
    pub admin: Option<SocketAddr>,
    /// Where `admin.address` was written, for errors found when binding it.
    pub admin_origin: Option<crate::config::Location>,
    pub router: Router<Target>,
    pub routes: Vec<Arc<Route>>,
    pub settings: Settings,
    /// The YAML files the configuration was read from.
    pub files: Vec<PathBuf>,
    /// Every other file it references (certificates, keys, CA bundles); part of the hash.
    pub referenced: Vec<PathBuf>,
    /// Every configured plugin, with the fingerprint a reload reuses it by.
    pub plugins: Vec<(u64, Arc<crate::plugin::Plugin>)>,
    /// The chain of routes and listeners that name none.
    pub default_plugins: crate::plugin::Chain,
}

impl Snapshot {
    pub fn listener(&self, key: &str) -> Option<&Arc<ListenerConfig>> {
        self.listeners.iter().find(|l| l.key == key)
    }
}

/// What the router returns: the route and, for a Prefix rule, the prefix that matched
/// (path rewrites and prefix redirects replace it).
#[derive(Debug, Clone)]
pub struct Target {
    pub route: Arc<Route>,
    pub prefix: Option<Arc<str>>,
}

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    /// The identity of the listening socket across reloads: the address as configured (and
    /// the name, for port 0).
    pub key: String,
    /// Where the address was written, for errors found when binding it.
    pub origin: Location,
    pub addr: SocketAddr,
    pub tls: Option<Arc<TlsSettings>>,
    /// `Some(port)`: answer everything with a 308 to HTTPS on that port (`None` = 443).
    pub redirect_https: Option<Option<u16>>,
    pub h2c: bool,
    /// The chain of routes without their own `plugins`, reached through this listener.
    pub plugins: Option<crate::plugin::Chain>,
}

impl ListenerConfig {
    /// What a connection is admitted under for its whole life: plain or TLS (with the client
    /// certificate check and the protocols it offers, see [`TlsSettings::admission`]), and h2c.
    /// A reload that changes it closes the listener's open connections gracefully, so that no
    /// connection keeps serving under settings the configuration no longer has.
    ///
    /// [`TlsSettings::admission`]: crate::tls::TlsSettings::admission
    pub fn admission(&self) -> (Option<u64>, bool) {
        (self.tls.as_ref().map(|t| t.admission()), self.h2c)
    }
}

#[derive(Debug)]
pub struct Route {
    /// Shared with every request's plugin stream (`route_name`), so not copied per request.
    pub name: Arc<str>,
    pub action: Action,
    pub rewrite: Option<Rewrite>,
    pub max_body: Option<u64>,
    /// Cancelled `stream_grace` after the route is removed or changed by a reload: closes the
    /// long-lived streams (WebSockets, streaming responses) that still use it.
    pub closing: CancellationToken,
    /// Hash of the route's definition; a reload that keeps it keeps the route's streams.
    pub fingerprint: u64,
    pub stats: crate::telemetry::metrics::RouteStats,
    /// This route's own chain; `None` falls back to the listener's, then `default_plugins`.
    pub plugins: Option<crate::plugin::Chain>,
}

#[derive(Debug)]
pub enum Action {
    Forward(Backends),
    Redirect(Redirect),
    Direct(DirectResponse),
}

#[derive(Debug)]
pub struct Backends {
    pub backends: Vec<(Arc<Upstream>, u32)>,
    pub total_weight: u32,
}

impl Backends {
    /// Weighted pick (a single backend costs nothing).
    pub fn pick(&self) -> &Arc<Upstream> {
        if self.backends.len() == 1 {
            return &self.backends[0].0;
        }
        let mut n = fastrand::u32(0..self.total_weight);
        for (upstream, weight) in &self.backends {
            if n < *weight {
                return upstream;
            }
            n -= weight;
        }
        &self.backends[self.backends.len() - 1].0
    }
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathReplace>,
    pub status: StatusCode,
}

#[derive(Debug, Clone)]
pub enum PathReplace {
    Full(String),
    Prefix(String),
}

#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: Option<http::HeaderValue>,
}

#[derive(Debug)]
pub struct Rewrite {
    pub path: Option<PathReplace>,
    pub host: Option<http::HeaderValue>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub access_log: bool,
    pub limits: Limits,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    pub reload_debounce: Duration,
    pub reload_poll_interval: Duration,
    pub stream_grace: Duration,
    pub trust_forwarded: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_length: usize,
    pub max_body: Option<u64>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// A body that moves no frame for this long ends with an error (see [`crate::body`]).
    pub body_idle_timeout: Duration,
    /// A tunnel that carries no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_inflight: usize,
}
