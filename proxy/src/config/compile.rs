//! Raw configuration → [`Snapshot`]: every check, every error with its location.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use tokio_util::sync::CancellationToken;

use super::raw::{RawFile, RawPathKind, RawRoute, RawUpstream, RawUpstreamProtocol, RawValueMatch};
use super::{ConfigError, ConfigErrors, Loaded, Location, Source};
use crate::route::{self, HeaderMatch, QueryMatch, RuleSpec, ValueMatch};
use crate::snapshot::{
    Action, Backends, DirectResponse, Limits, ListenerConfig, PathReplace, Redirect, Rewrite,
    Route, Settings, Snapshot, Target,
};
use crate::tls::{CertSpec, ClientAuthMode, ClientAuthSpec, TlsSettings, TlsSpec};
use crate::upstream::{ClientCache, ClientKey, Upstream, UpstreamProtocol};

/// What a compile may reuse from the running process.
#[derive(Default)]
pub struct CompileContext {
    /// Upstream connection pools, kept across reloads so connections are reused.
    pub clients: ClientCache,
    /// Closing tokens of the routes currently serving, by (name, fingerprint): an unchanged route
    /// keeps its token, so its long-lived streams are untouched by the reload.
    pub route_tokens: HashMap<(String, u64), CancellationToken>,
    /// The process's plugin host: engine, compiled modules, shared data.
    pub plugins: crate::plugin::PluginHost,
    /// Plugins of the snapshot serving now, by fingerprint: an unchanged plugin keeps its
    /// instances.
    pub previous_plugins: HashMap<u64, Arc<crate::plugin::Plugin>>,
}

/// Where one item of a merged list came from.
struct Origin<'a> {
    source: &'a Source,
    /// YAML path of the item inside its file, e.g. `routes[2]`.
    path: String,
}

impl Origin<'_> {
    fn error(&self, sub: &str, message: impl Into<String>) -> ConfigError {
        self.location(sub).error(message)
    }

    fn location(&self, sub: &str) -> Location {
        let path = if sub.is_empty() {
            self.path.clone()
        } else if sub.starts_with('[') {
            format!("{}{sub}", self.path)
        } else {
            format!("{}.{sub}", self.path)
        };
        self.source.location(&path)
    }
}

/// Validates a loaded configuration and builds the snapshot it describes.
pub fn compile(loaded: &Loaded, ctx: &CompileContext) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Vec::new();
    let files: Vec<(&Source, &RawFile)> = loaded.sources.iter().zip(loaded.files.iter()).collect();

    let settings = compile_settings(&files, &mut errors);

    // Upstreams (a map per file; a name defined twice across files is an error).
    let mut upstream_defs: HashMap<&str, (Origin<'_>, &RawUpstream)> = HashMap::new();
    for (source, file) in &files {
        for (name, up) in &file.upstreams {
            let origin = Origin {
                source,
                path: format!("upstreams.{name}"),
            };
            if let Some((first, _)) = upstream_defs.get(name.as_str()) {
                errors.push(origin.error(
                    "",
                    format!(
                        "upstream \"{name}\" is already defined at {}",
                        describe(first)
                    ),
                ));
                continue;
            }
            validate_upstream(name, up, &origin, &mut errors);
            upstream_defs.insert(name, (origin, up));
        }
    }

    // Upstream objects are built per (upstream, connect timeout) the routes ask for.
    let mut built: HashMap<(String, Option<Duration>, Option<Duration>), Arc<Upstream>> =
        HashMap::new();
    let mut upstream_for = |name: &str,
                            connect: Option<Duration>,
                            request: Option<Duration>|
     -> Option<Arc<Upstream>> {
        let (_, raw) = upstream_defs.get(name)?;
        let key = (name.to_string(), connect, request);
        if let Some(u) = built.get(&key) {
            return Some(u.clone());
        }
        let protocol = match raw.protocol {
            Some(RawUpstreamProtocol::H2c) => UpstreamProtocol::H2c,
            _ => UpstreamProtocol::Http1,
        };
        let connect_timeout = connect
            .or(raw.connect_timeout.map(|d| d.0))
            .unwrap_or(Duration::from_secs(5));
        let request_timeout = request
            .or(raw.request_timeout.map(|d| d.0))
            .unwrap_or(Duration::from_secs(60));
        let idle = raw
            .idle_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(90));
        let client_key = ClientKey {
            protocol,
            connect_timeout,
            idle_timeout: idle,
        };
        let endpoints = raw
            .endpoints
            .iter()
            .filter_map(|e| e.parse().ok())
            .collect();
        let u = Arc::new(Upstream::new(
            name.to_string(),
            endpoints,
            &ctx.clients,
            client_key,
            request_timeout,
        ));
        built.insert(key, u.clone());
        Some(u)
    };

    // Plugins: compiled and started now, so a refused configuration fails this compile. Their
    // callouts reach upstreams by name.
    let callout_upstreams: HashMap<String, Arc<Upstream>> = upstream_defs
        .keys()
        .filter_map(|name| Some((name.to_string(), upstream_for(name, None, None)?)))
        .collect();
    let upstreams_fingerprint = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, (_, raw)) in &upstream_defs {
            (name, serde_json::to_string(raw).unwrap_or_default()).hash(&mut h);
        }
        h.finish()
    };
    let plugins = super::plugins::compile(
        &files,
        &ctx.plugins,
        &ctx.previous_plugins,
        &callout_upstreams,
        upstreams_fingerprint,
        &mut errors,
    );
    let mut default_plugins = crate::plugin::Chain::default();
    let mut default_plugins_from: Option<&Source> = None;
    for (source, file) in &files {
        if let Some(names) = &file.default_plugins {
            if let Some(first) = default_plugins_from {
                errors.push(source.error(
                    "default_plugins",
                    format!("`default_plugins` is also set in {}", first.path.display()),
                ));
                continue;
            }
            default_plugins_from = Some(source);
            default_plugins =
                super::plugins::chain(names, &plugins, source, "default_plugins", &mut errors);
        }
    }

    // Listeners.
    let mut listeners = Vec::new();
    let mut addresses: Vec<(SocketAddr, String)> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    // The referenced files are hashed before they are parsed: if one is replaced in between,
    // the hash is the older content's, so the next reload sees a change and loads the newer
    // file. (Hashed after parsing, a swap in between would leave an old certificate serving
    // under the new content's hash, and every later reload would say "unchanged".)
    let mut extra_files = Vec::new();
    for (source, file) in &files {
        for l in &file.listeners {
            if let Some(t) = &l.tls {
                let base = source.base_dir();
                for c in &t.certificates {
                    extra_files.push(resolve(base, &c.cert));
                    extra_files.push(resolve(base, &c.key));
                }
                if let Some(ca) = &t.client_auth {
                    extra_files.push(resolve(base, &ca.ca));
                }
            }
        }
    }
    for (source, file) in &files {
        for p in file.plugins.values() {
            extra_files.push(resolve(source.base_dir(), &p.module));
        }
    }
    let hash = content_hash(&loaded.root, loaded.text_digest.as_ref(), &extra_files);
    let mut index = 0usize;
    for (source, file) in &files {
        for (i, l) in file.listeners.iter().enumerate() {
            let origin = Origin {
                source,
                path: format!("listeners[{i}]"),
            };
            index += 1;
            if !names.insert(l.name.clone()) {
                errors
                    .push(origin.error("name", format!("duplicate listener name \"{}\"", l.name)));
            }
            let addr: SocketAddr = match l.address.parse() {
                Ok(a) => a,
                Err(_) => {
                    errors.push(origin.error(
                        "address",
                        format!("\"{}\" is not an IP:port address (write e.g. \"0.0.0.0:8080\" or \"[::]:8443\")", l.address),
                    ));
                    continue;
                }
            };
            match addresses.iter().find(|(a, _)| overlap(*a, addr)) {
                Some((a, other)) if *a == addr => errors.push(origin.error(
                    "address",
                    format!("address {addr} is already used by listener \"{other}\""),
                )),
                Some((a, other)) => errors.push(origin.error(
                    "address",
                    format!(
                        "address {addr} overlaps {a} of listener \"{other}\" (a wildcard address takes its port on every interface of its family, and [::] on IPv4 too)"
                    ),
                )),
                None => addresses.push((addr, l.name.clone())),
            }
            let tls = match &l.tls {
                None => None,
                Some(t) => {
                    if t.certificates.is_empty() {
                        errors.push(origin.error(
                            "tls.certificates",
                            "a TLS listener needs at least one certificate",
                        ));
                        None
                    } else {
                        let base = source.base_dir();
                        let spec = TlsSpec {
                            certificates: t
                                .certificates
                                .iter()
                                .map(|c| CertSpec {
                                    cert: resolve(base, &c.cert),
                                    key: resolve(base, &c.key),
                                })
                                .collect(),
                            default_certificate: t.certificates.iter().position(|c| c.default),
                            client_auth: t.client_auth.as_ref().map(|ca| ClientAuthSpec {
                                ca: resolve(base, &ca.ca),
                                mode: match ca.mode {
                                    super::raw::RawClientAuthMode::Required => {
                                        ClientAuthMode::Required
                                    }
                                    super::raw::RawClientAuthMode::Optional => {
                                        ClientAuthMode::Optional
                                    }
                                },
                            }),
                            alpn_h2: t.http2.unwrap_or(true),
                        };
                        if t.certificates.iter().filter(|c| c.default).count() > 1 {
                            errors.push(origin.error(
                                "tls.certificates",
                                "only one certificate can be the default",
                            ));
                        }
                        match TlsSettings::compile(&spec) {
                            Ok(s) => Some(Arc::new(s)),
                            Err(tls_errors) => {
                                for e in tls_errors {
                                    errors.push(origin.error("tls", e.to_string()));
                                }
                                None
                            }
                        }
                    }
                }
            };
            if l.redirect_https.is_some() && l.tls.is_some() {
                errors.push(origin.error(
                    "redirect_https",
                    "redirect_https belongs on a plain listener, not a TLS one",
                ));
            }
            listeners.push(Arc::new(ListenerConfig {
                name: l.name.clone(),
                key: listener_key(&l.name, &l.address, addr),
                origin: origin.location("address"),
                addr,
                tls,
                redirect_https: l.redirect_https.as_ref().map(|r| r.port),
                h2c: l.h2c.unwrap_or(true),
                plugins: l.plugins.as_ref().map(|names| {
                    let at = format!("{}.plugins", origin.path);
                    super::plugins::chain(names, &plugins, source, &at, &mut errors)
                }),
            }));
        }
    }
    if index == 0 {
        let message = "no listeners: add at least one under `listeners:`";
        // Named after the file when there is one (an emptied file, say).
        errors.push(match files.as_slice() {
            [(source, _)] => source.error("", message),
            _ => ConfigError::global(message),
        });
    }

    let mut admin_origin = None;
    let admin = match files
        .iter()
        .filter_map(|(s, f)| f.admin.as_ref().map(|a| (s, a)))
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => None,
        [(source, a)] => match a.address.parse::<SocketAddr>() {
            Ok(addr) => {
                admin_origin = Some(source.location("admin.address"));
                if let Some((l, name)) = addresses.iter().find(|(l, _)| overlap(*l, addr)) {
                    errors.push(source.error(
                        "admin.address",
                        format!("address {addr} is taken by listener \"{name}\" ({l})"),
                    ));
                }
                Some(addr)
            }
            Err(_) => {
                errors.push(source.error(
                    "admin.address",
                    format!("\"{}\" is not an IP:port address", a.address),
                ));
                None
            }
        },
        [_, (source, _), ..] => {
            errors.push(source.error("admin", "admin is defined in more than one file"));
            None
        }
    };

    // Routes.
    let mut rules = Vec::new();
    let mut routes = Vec::new();
    let mut route_names: HashMap<String, String> = HashMap::new();
    for (source, file) in &files {
        for (i, r) in file.routes.iter().enumerate() {
            let origin = Origin {
                source,
                path: format!("routes[{i}]"),
            };
            if r.name.trim().is_empty() {
                errors.push(origin.error("name", "a route needs a non-empty name"));
            } else if let Some(first) = route_names.get(&r.name) {
                errors.push(origin.error(
                    "name",
                    format!(
                        "duplicate route name \"{}\" (first defined at {first})",
                        r.name
                    ),
                ));
            } else {
                route_names.insert(r.name.clone(), origin_string(&origin));
            }
            let before = errors.len();
            let (specs, prefixes) = compile_matchers(r, &origin, &mut errors);
            let action = compile_action(r, &origin, &upstream_defs, &mut upstream_for, &mut errors);
            let rewrite = compile_rewrite(r, &origin, &mut errors);
            let route_plugins = r.plugins.as_ref().map(|names| {
                let at = format!("{}.plugins", origin.path);
                super::plugins::chain(names, &plugins, source, &at, &mut errors)
            });
            if errors.len() > before {
                continue;
            }
            let Some(action) = action else { continue };
            let fingerprint = fingerprint(r);
            let closing = ctx
                .route_tokens
                .get(&(r.name.clone(), fingerprint))
                .cloned()
                .unwrap_or_default();
            let route = Arc::new(Route {
                name: r.name.as_str().into(),
                action,
                rewrite,
                max_body: r.max_body.map(|b| b.0).or(settings.limits.max_body),
                closing,
                fingerprint,
                stats: Default::default(),
                plugins: route_plugins,
            });
            for (spec, prefix) in specs.into_iter().zip(prefixes) {
                rules.push((
                    spec,
                    Target {
                        route: route.clone(),
                        prefix,
                    },
                ));
            }
            routes.push(route);
        }
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    let live: Vec<_> = plugins.all.iter().map(|(_, p)| p.clone()).collect();
    ctx.plugins.retain_modules(&live);

    Ok(Snapshot {
        hash,
        loaded_at: SystemTime::now(),
        listeners,
        admin,
        admin_origin,
        router: route::Router::new(rules),
        routes,
        settings,
        files: loaded.sources.iter().map(|s| s.path.clone()).collect(),
        referenced: extra_files,
        plugins: plugins.all,
        default_plugins,
    })
}

/// Hex SHA-256 over the configuration digest and the bytes of every referenced file (named
/// relative to the configuration's directory when under it: see [`super::hashed_path`]).
pub fn content_hash(root: &Path, config_digest: &[u8], referenced: &[PathBuf]) -> String {
    let base = super::base_dir(root);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(config_digest);
    for path in referenced {
        ctx.update(super::hashed_path(base, path).to_string_lossy().as_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_le_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"<unreadable>"),
        }
    }
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn describe(origin: &Origin<'_>) -> String {
    origin_string(origin)
}

fn origin_string(origin: &Origin<'_>) -> String {
    let e = origin.source.error(&origin.path, "");
    match e.line {
        Some(line) => format!("{}:{line}", origin.source.path.display()),
        None => origin.source.path.display().to_string(),
    }
}

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The identity of a listening socket across reloads: its address as written. A listener on
/// port 0 ("any free port") is also told apart by its name, or two of them would share one
/// socket (and a second one added by a reload would never be bound).
fn listener_key(name: &str, address: &str, addr: SocketAddr) -> String {
    if addr.port() == 0 {
        format!("{address}#{name}")
    } else {
        address.to_string()
    }
}

fn fingerprint(r: &RawRoute) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(r).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn validate_upstream(
    name: &str,
    up: &RawUpstream,
    origin: &Origin<'_>,
    errors: &mut Vec<ConfigError>,
) {
    if name.is_empty() {
        errors.push(origin.error("", "an upstream needs a non-empty name"));
    }
    if up.endpoints.is_empty() {
        errors.push(origin.error(
            "endpoints",
            "an upstream needs at least one endpoint (\"host:port\")",
        ));
    }
    for (i, e) in up.endpoints.iter().enumerate() {
        let ok = e.parse::<http::uri::Authority>().ok().is_some_and(|a| {
            a.port_u16().is_some_and(|p| p != 0) && !a.host().is_empty() && !e.contains('@')
        });
        if !ok {
            errors.push(origin.error(
                &format!("endpoints[{i}]"),
                format!("\"{e}\" is not a host:port endpoint (write e.g. \"10.0.0.7:8080\" or \"orders.shop.svc:80\")"),
            ));
        }
    }
}

fn compile_settings(files: &[(&Source, &RawFile)], errors: &mut Vec<ConfigError>) -> Settings {
    let mut settings = Settings {
        access_log: true,
        limits: Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            max_body: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 50_000,
            max_inflight: 10_000,
        },
        drain_delay: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(30),
        reload_debounce: Duration::from_millis(200),
        reload_poll_interval: Duration::from_secs(30),
        stream_grace: Duration::from_secs(600),
        trust_forwarded: false,
    };
    let mut seen: HashMap<&str, &Source> = HashMap::new();
    for (source, file) in files {
        let mut dup = |key: &'static str, errors: &mut Vec<ConfigError>| {
            if let Some(first) = seen.insert(key, source) {
                errors.push(source.error(
                    key,
                    format!("`{key}` is also set in {}", first.path.display()),
                ));
            }
        };
        if let Some(v) = file.access_log {
            dup("access_log", errors);
            settings.access_log = v;
        }
        if let Some(l) = &file.limits {
            dup("limits", errors);
            let lim = &mut settings.limits;
            if let Some(v) = l.max_header_bytes {
                if v.0 < 8192 {
                    errors.push(source.error("limits.max_header_bytes", "must be at least 8KiB"));
                }
                lim.max_header_bytes = v.0 as usize;
            }
            if let Some(v) = l.max_headers {
                lim.max_headers = v;
            }
            if let Some(v) = l.max_uri_length {
                lim.max_uri_length = v.0 as usize;
            }
            if let Some(v) = l.max_body {
                lim.max_body = Some(v.0);
            }
            if let Some(v) = l.header_read_timeout {
                lim.header_read_timeout =
                    nonzero(v.0, source, "limits.header_read_timeout", errors);
            }
            if let Some(v) = l.idle_timeout {
                lim.idle_timeout = nonzero(v.0, source, "limits.idle_timeout", errors);
            }
            if let Some(v) = l.body_idle_timeout {
                lim.body_idle_timeout = nonzero(v.0, source, "limits.body_idle_timeout", errors);
            }
            if let Some(v) = l.tunnel_idle_timeout {
                lim.tunnel_idle_timeout =
                    nonzero(v.0, source, "limits.tunnel_idle_timeout", errors);
            }
            if let Some(v) = l.tls_handshake_timeout {
                lim.tls_handshake_timeout =
                    nonzero(v.0, source, "limits.tls_handshake_timeout", errors);
            }
            if let Some(v) = l.max_connections {
                lim.max_connections = v;
            }
            if let Some(v) = l.max_inflight {
                lim.max_inflight = v;
            }
        }
        if let Some(s) = &file.shutdown {
            dup("shutdown", errors);
            if let Some(v) = s.drain_delay {
                settings.drain_delay = v.0;
            }
            if let Some(v) = s.timeout {
                settings.shutdown_timeout = v.0;
            }
        }
        if let Some(r) = &file.reload {
            dup("reload", errors);
            if let Some(v) = r.debounce {
                settings.reload_debounce = v.0;
            }
            if let Some(v) = r.poll_interval {
                settings.reload_poll_interval =
                    nonzero(v.0, source, "reload.poll_interval", errors);
            }
            if let Some(v) = r.stream_grace {
                settings.stream_grace = v.0;
            }
        }
        if let Some(f) = &file.forwarding {
            dup("forwarding", errors);
            settings.trust_forwarded = f.trust_incoming.unwrap_or(false);
        }
    }
    settings
}

fn nonzero(d: Duration, source: &Source, path: &str, errors: &mut Vec<ConfigError>) -> Duration {
    if d.is_zero() {
        errors.push(source.error(path, "must be greater than zero"));
        return Duration::from_secs(1);
    }
    d
}

type Prefixes = Vec<Option<Arc<str>>>;

/// Builds (or reuses) the upstream object for a name and a route's timeouts.
type UpstreamFor<'a> =
    dyn FnMut(&str, Option<Duration>, Option<Duration>) -> Option<Arc<Upstream>> + 'a;

fn compile_matchers(
    r: &RawRoute,
    origin: &Origin<'_>,
    errors: &mut Vec<ConfigError>,
) -> (Vec<RuleSpec>, Prefixes) {
    let mut hosts = Vec::new();
    for (i, h) in r.hosts.iter().enumerate() {
        match route::validate_host(h) {
            Ok(h) => hosts.push(h),
            Err(e) => errors.push(origin.error(&format!("hosts[{i}]"), e.to_string())),
        }
    }
    let mut methods = Vec::new();
    for (i, m) in r.methods.iter().enumerate() {
        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => errors.push(origin.error(
                &format!("methods[{i}]"),
                format!("\"{m}\" is not an HTTP method"),
            )),
        }
    }
    let headers: Vec<HeaderMatch> = r
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let sub = format!("headers[{i}]");
            let name = match HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    errors.push(
                        origin.error(&sub, format!("\"{}\" is not a valid header name", h.name)),
                    );
                    return None;
                }
            };
            let value = value_match(h, origin, &sub, errors)?;
            Some(HeaderMatch { name, value })
        })
        .collect();
    let query: Vec<QueryMatch> = r
        .query
        .iter()
        .enumerate()
        .filter_map(|(i, q)| {
            let sub = format!("query[{i}]");
            let value = value_match(q, origin, &sub, errors)?;
            Some(QueryMatch {
                name: q.name.clone(),
                value,
            })
        })
        .collect();

    let mut specs = Vec::new();
    let mut prefixes = Vec::new();
    let default_path = [super::raw::RawPath {
        kind: RawPathKind::Prefix,
        value: "/".into(),
    }];
    let paths: &[super::raw::RawPath] = if r.paths.is_empty() {
        &default_path
    } else {
        &r.paths
    };
    for (i, p) in paths.iter().enumerate() {
        let sub = format!("paths[{i}].value");
        let (matcher, prefix) = match p.kind {
            RawPathKind::Exact => (
                route::validate_path_value(route::PathKind::Exact, &p.value),
                None,
            ),
            RawPathKind::Prefix => (
                route::validate_path_value(route::PathKind::Prefix, &p.value),
                Some(Arc::<str>::from(p.value.trim_end_matches('/'))),
            ),
            RawPathKind::RegularExpression => (
                route::validate_path_value(route::PathKind::RegularExpression, &p.value),
                None,
            ),
        };
        match matcher {
            Ok(path) => {
                specs.push(RuleSpec {
                    hosts: hosts.clone(),
                    path,
                    methods: methods.clone(),
                    headers: headers.clone(),
                    query: query.clone(),
                });
                prefixes.push(prefix);
            }
            Err(e) => errors.push(origin.error(&sub, e.to_string())),
        }
    }
    (specs, prefixes)
}

/// Would two listening sockets on these addresses conflict? Same port (port 0 never: the
/// system picks one each) and the same IP, or one of them a wildcard that covers the other:
/// `0.0.0.0` covers IPv4, `[::]` both families (Portico's IPv6 sockets are dual-stack). An
/// IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]`) is the IPv4 address it maps.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: std::net::IpAddr, other: std::net::IpAddr| {
        w.is_unspecified() && (w.is_ipv6() || other.is_ipv4())
    };
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    a.port() != 0 && a.port() == b.port() && (ia == ib || covers(ia, ib) || covers(ib, ia))
}

fn value_match(
    m: &RawValueMatch,
    origin: &Origin<'_>,
    sub: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<ValueMatch> {
    match (&m.value, &m.regex) {
        (Some(_), Some(_)) => {
            errors.push(origin.error(sub, "give either `value` or `regex`, not both"));
            None
        }
        (Some(v), None) => Some(ValueMatch::Exact(v.clone())),
        // Anchored as paths are, refusing patterns that would escape the anchors.
        (None, Some(re)) => match route::anchored_regex(re) {
            Ok(re) => Some(ValueMatch::Regex(re)),
            Err(e) => {
                errors.push(origin.error(&format!("{sub}.regex"), e.to_string()));
                None
            }
        },
        (None, None) => Some(ValueMatch::Present),
    }
}

fn compile_action(
    r: &RawRoute,
    origin: &Origin<'_>,
    upstream_defs: &HashMap<&str, (Origin<'_>, &RawUpstream)>,
    upstream_for: &mut UpstreamFor<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Action> {
    let count = [
        r.upstream.is_some(),
        r.backends.is_some(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count != 1 {
        errors.push(origin.error(
            "",
            if count == 0 {
                "a route needs an action: one of `upstream`, `backends`, `redirect`, `direct_response`"
            } else {
                "a route has exactly one action: choose one of `upstream`, `backends`, `redirect`, `direct_response`"
            },
        ));
        return None;
    }
    let connect = r.timeouts.as_ref().and_then(|t| t.connect).map(|d| d.0);
    let request = r.timeouts.as_ref().and_then(|t| t.request).map(|d| d.0);
    let known = |name: &str| upstream_defs.contains_key(name);
    let suggest = |name: &str| -> String {
        let mut names: Vec<&&str> = upstream_defs.keys().collect();
        names.sort();
        if names.is_empty() {
            format!("unknown upstream \"{name}\" (no upstreams are defined)")
        } else {
            format!(
                "unknown upstream \"{name}\" (defined: {})",
                names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    if let Some(name) = &r.upstream {
        if !known(name) {
            errors.push(origin.error("upstream", suggest(name)));
            return None;
        }
        let u = upstream_for(name, connect, request)?;
        return Some(Action::Forward(Backends {
            backends: vec![(u, 1)],
            total_weight: 1,
        }));
    }
    if let Some(list) = &r.backends {
        if list.is_empty() {
            errors.push(origin.error("backends", "`backends` needs at least one entry"));
            return None;
        }
        let mut backends = Vec::new();
        let mut total: u32 = 0;
        let errors_before = errors.len();
        for (i, b) in list.iter().enumerate() {
            if !known(&b.upstream) {
                errors.push(origin.error(&format!("backends[{i}].upstream"), suggest(&b.upstream)));
                continue;
            }
            total = total.saturating_add(b.weight);
            if b.weight > 0 {
                backends.push((upstream_for(&b.upstream, connect, request)?, b.weight));
            }
        }
        if backends.is_empty() {
            // With every upstream known, only zero weights leave none: the route would match
            // requests and have nowhere to send them.
            if errors.len() == errors_before {
                errors.push(origin.error(
                    "backends",
                    "every weight is 0, so this route could send no request anywhere (give a backend a weight above 0, or answer with `direct_response`)",
                ));
            }
            return None;
        }
        return Some(Action::Forward(Backends {
            backends,
            total_weight: total,
        }));
    }
    if let Some(rd) = &r.redirect {
        let status = match rd.status.unwrap_or(302) {
            s @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(s).ok()?,
            s => {
                errors.push(origin.error(
                    "redirect.status",
                    format!("{s} is not a redirect status (301, 302, 303, 307 or 308)"),
                ));
                return None;
            }
        };
        if let Some(s) = &rd.scheme
            && s != "http"
            && s != "https"
        {
            errors.push(origin.error("redirect.scheme", format!("\"{s}\" is not http or https")));
        }
        let path = path_replace(
            rd.path.as_deref(),
            rd.prefix.as_deref(),
            r,
            origin,
            "redirect",
            errors,
        )?;
        if rd.scheme.is_none() && rd.host.is_none() && rd.port.is_none() && path.is_none() {
            errors.push(origin.error(
                "redirect",
                "a redirect must change at least one of scheme, host, port, path, prefix",
            ));
            return None;
        }
        if let Some(h) = &rd.host
            && (h.parse::<http::uri::Authority>().is_err() || h.contains(':'))
        {
            errors.push(origin.error(
                "redirect.host",
                format!("\"{h}\" is not a host name (set the port with `port`)"),
            ));
        }
        return Some(Action::Redirect(Redirect {
            scheme: rd.scheme.clone(),
            host: rd.host.clone(),
            port: rd.port,
            path,
            status,
        }));
    }
    if let Some(d) = &r.direct_response {
        let status = match StatusCode::from_u16(d.status) {
            Ok(s) if d.status >= 200 => s,
            _ => {
                errors.push(origin.error(
                    "direct_response.status",
                    format!("{} is not a valid response status (200-999)", d.status),
                ));
                return None;
            }
        };
        let content_type = match &d.content_type {
            None if d.body.is_empty() => None,
            None => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
            Some(ct) => match HeaderValue::from_str(ct) {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(
                        origin.error("direct_response.content_type", "not a valid header value"),
                    );
                    return None;
                }
            },
        };
        return Some(Action::Direct(DirectResponse {
            status,
            body: Bytes::from(d.body.clone()),
            content_type,
        }));
    }
    None
}

fn path_replace(
    full: Option<&str>,
    prefix: Option<&str>,
    r: &RawRoute,
    origin: &Origin<'_>,
    block: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Option<PathReplace>> {
    match (full, prefix) {
        (Some(_), Some(_)) => {
            errors.push(origin.error(block, "give either `path` or `prefix`, not both"));
            None
        }
        (Some(p), None) => {
            if !p.starts_with('/') {
                errors.push(origin.error(&format!("{block}.path"), "must start with /"));
                return None;
            }
            Some(Some(PathReplace::Full(p.to_string())))
        }
        (None, Some(p)) => {
            if !p.starts_with('/') {
                errors.push(origin.error(&format!("{block}.prefix"), "must start with /"));
                return None;
            }
            let prefix_rules =
                r.paths.is_empty() || r.paths.iter().all(|p| p.kind == RawPathKind::Prefix);
            if !prefix_rules {
                errors.push(origin.error(
                    &format!("{block}.prefix"),
                    "replacing a prefix needs every path of the route to be of type Prefix",
                ));
                return None;
            }
            Some(Some(PathReplace::Prefix(p.to_string())))
        }
        (None, None) => Some(None),
    }
}

fn compile_rewrite(
    r: &RawRoute,
    origin: &Origin<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Rewrite> {
    let rw = r.rewrite.as_ref()?;
    if r.upstream.is_none() && r.backends.is_none() {
        errors.push(origin.error(
            "rewrite",
            "`rewrite` applies to routes that forward to an upstream",
        ));
        return None;
    }
    let path = path_replace(
        rw.path.as_deref(),
        rw.prefix.as_deref(),
        r,
        origin,
        "rewrite",
        errors,
    )?;
    let host = match &rw.host {
        None => None,
        Some(h) => match (h.parse::<http::uri::Authority>(), HeaderValue::from_str(h)) {
            (Ok(_), Ok(v)) => Some(v),
            _ => {
                errors.push(origin.error("rewrite.host", format!("\"{h}\" is not a valid host")));
                return None;
            }
        },
    };
    Some(Rewrite { path, host })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_text(yaml: &str) -> Result<Snapshot, ConfigErrors> {
        compile_files(&[("portico.yaml", yaml)])
    }

    /// Compiles a configuration directory holding `files` (name, text).
    fn compile_files(files: &[(&str, &str)]) -> Result<Snapshot, ConfigErrors> {
        let dir = std::env::temp_dir().join(format!(
            "portico-compile-test-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let path = match files {
            [(name, _)] => dir.join(name),
            _ => dir.clone(),
        };
        let result = super::super::load_with_env(&path, |_| None)
            .and_then(|loaded| compile(&loaded, &CompileContext::default()));
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// The messages (without their locations) of a configuration that must be refused.
    fn refused(files: &[(&str, &str)]) -> Vec<String> {
        let errors = compile_files(files).expect_err("refused");
        errors
            .to_string()
            .lines()
            // An error's first line starts with its file (a message may go on over more lines).
            .filter(|l| l.starts_with('/'))
            .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest.to_owned()))
            .collect()
    }

    #[test]
    fn header_and_query_regexes_cannot_escape_their_anchors() {
        // Wrapped as `^(?:a)|(?:b)$`, this would match any value starting with `a`.
        let errors = refused(&[(
            "portico.yaml",
            r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
routes:
  - name: r
    headers: [{ name: x-env, regex: "a)|(?:b" }]
    query: [{ name: v, regex: "1)|(?:2" }]
    direct_response: { status: 200 }
"#,
        )]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("routes[0].headers[0].regex: invalid regular expression \"a)|(?:b\""),
            "{errors:?}"
        );
        assert!(errors[1].starts_with("routes[0].query[0].regex: invalid regular expression"));
    }

    #[test]
    fn backends_whose_weights_are_all_zero_are_refused() {
        let split = |a: u32, b: u32| {
            format!(
                r#"listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams:
  a: {{ endpoints: ["127.0.0.1:9"] }}
  b: {{ endpoints: ["127.0.0.1:9"] }}
routes:
  - name: split
    backends: [{{ upstream: a, weight: {a} }}, {{ upstream: b, weight: {b} }}]
"#
            )
        };
        let errors = refused(&[("portico.yaml", &split(0, 0))]);
        assert_eq!(
            errors,
            [
                "routes[0].backends: every weight is 0, so this route could send no request anywhere (give a backend a weight above 0, or answer with `direct_response`)"
            ]
        );
        // One backend at 0 is a canary switched off: fine.
        compile_text(&split(100, 0)).expect("valid");
    }

    #[test]
    fn default_plugins_set_in_two_files_is_refused() {
        let errors = refused(&[
            (
                "10-a.yaml",
                "listeners: [{ name: web, address: \"127.0.0.1:0\" }]\ndefault_plugins: []\n",
            ),
            (
                "20-b.yaml",
                "default_plugins: []\nroutes: [{ name: r, direct_response: { status: 200 } }]\n",
            ),
        ]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("default_plugins: `default_plugins` is also set in ")
                && errors[0].ends_with("10-a.yaml"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_empty_file_is_refused_naming_it() {
        let err = compile_text("").expect_err("refused").to_string();
        assert!(
            err.ends_with("/portico.yaml: no listeners: add at least one under `listeners:`"),
            "{err}"
        );
    }

    #[test]
    fn plugin_limits_out_of_range_are_refused() {
        let errors = refused(&[
            ("p.wasm", "not a module"),
            (
                "portico.yaml",
                r#"listeners: [{ name: web, address: "127.0.0.1:0" }]
plugins:
  p:
    module: p.wasm
    limits: { body_buffer: 5GiB, callout_body: 0B, callout_timeout: 1h, pause_timeout: 2h }
routes: [{ name: r, direct_response: { status: 200 } }]
"#,
            ),
        ]);
        for want in [
            "plugins.p.limits.body_buffer: must be between 1B and 1GiB",
            "plugins.p.limits.callout_body: must be between 1B and 64MiB",
            "plugins.p.limits.callout_timeout: must be between 1ms and 5m",
            "plugins.p.limits.pause_timeout: must be between 1ms and 1h",
        ] {
            assert!(
                errors.iter().any(|e| e == want),
                "{want:?} not in {errors:?}"
            );
        }
    }

    #[test]
    fn overlapping_listener_and_admin_addresses_are_refused() {
        let errors = refused(&[(
            "portico.yaml",
            r#"listeners:
  - { name: any, address: "0.0.0.0:18480" }
  - { name: local, address: "127.0.0.1:18480" }
  - { name: v6, address: "[::]:18481" }
  - { name: v4, address: "127.0.0.1:18481" }
  - { name: other, address: "127.0.0.1:18482" }
admin: { address: "127.0.0.1:18482" }
routes: [{ name: r, direct_response: { status: 200 } }]
"#,
        )]);
        assert_eq!(
            errors,
            [
                "listeners[1].address: address 127.0.0.1:18480 overlaps 0.0.0.0:18480 of listener \"any\" (a wildcard address takes its port on every interface of its family, and [::] on IPv4 too)",
                "listeners[3].address: address 127.0.0.1:18481 overlaps [::]:18481 of listener \"v6\" (a wildcard address takes its port on every interface of its family, and [::] on IPv4 too)",
                "admin.address: address 127.0.0.1:18482 is taken by listener \"other\" (127.0.0.1:18482)",
            ]
        );
        // Other families, other IPs, other ports, port 0: no conflict.
        for (a, b) in [
            ("0.0.0.0:80", "[::1]:80"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("0.0.0.0:80", "0.0.0.0:81"),
            ("0.0.0.0:0", "127.0.0.1:0"),
        ] {
            assert!(!overlap(a.parse().unwrap(), b.parse().unwrap()), "{a} {b}");
        }
        // An IPv4-mapped IPv6 address is its IPv4 address (Linux binds it so).
        for (a, b) in [
            ("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
            ("[::ffff:0.0.0.0]:80", "127.0.0.1:80"),
        ] {
            assert!(overlap(a.parse().unwrap(), b.parse().unwrap()), "{a} {b}");
        }
    }

    #[test]
    fn listeners_are_identified_by_address_and_port_zero_ones_also_by_name() {
        let snapshot = compile_text(
            r#"listeners:
  - { name: web, address: "127.0.0.1:0" }
  - { name: extra, address: "127.0.0.1:0" }
  - { name: fixed, address: "127.0.0.1:8080" }
routes:
  - { name: r, direct_response: { status: 200 } }
"#,
        )
        .expect("valid");
        let keys: Vec<&str> = snapshot.listeners.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(
            keys,
            ["127.0.0.1:0#web", "127.0.0.1:0#extra", "127.0.0.1:8080"]
        );
        let origin = &snapshot.listeners[1].origin;
        assert_eq!(
            (origin.line, origin.column, origin.path.as_str()),
            (Some(3), Some(20), "listeners[1].address")
        );
    }
}
