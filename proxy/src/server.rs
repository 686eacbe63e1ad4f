//! The running proxy: the one `ArcSwap<Snapshot>`, listeners reconciled on reload, the admin
//! endpoint, the reload triggers, and graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::compile::{CompileContext, content_hash};
use crate::config::{self, ConfigError, ConfigErrors};
use crate::listener::{self, RunningListener};
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

/// State shared by every task of the proxy.
pub struct Shared {
    pub current: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub inflight: AtomicUsize,
    pub draining: AtomicBool,
    /// Fired when the shutdown timeout is reached: closes tunnels still open.
    pub hard_stop: CancellationToken,
    /// Upgraded connections (WebSockets), which outlive their HTTP connection's task.
    pub tunnels: TaskTracker,
    pub status: Mutex<Status>,
    pub reloads: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// What `/config` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Increases by one with every snapshot that starts serving.
    pub version: u64,
    pub last_attempt: Option<SystemTime>,
    pub last_result: Option<&'static str>,
    pub last_error: Option<String>,
}

/// How a reload ended.
#[derive(Debug)]
pub enum ReloadOutcome {
    Unchanged,
    Applied { hash: String },
    Failed(ConfigErrors),
}

/// Options beyond the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Watch the files and poll (the binary: yes; in-process tests: usually).
    pub watch: bool,
    /// Reload on SIGHUP.
    pub sighup: bool,
}

impl Options {
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Options {
            config: config.into(),
            watch: true,
            sighup: false,
        }
    }
}

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
}

/// A running Portico.
pub struct Server {
    shared: Arc<Shared>,
    root: PathBuf,
    ctx: Mutex<CompileContext>,
    listeners: Mutex<HashMap<String, RunningListener>>,
    reload_lock: tokio::sync::Mutex<()>,
    admin_addr: Option<SocketAddr>,
    stop_watch: CancellationToken,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Binds every listener of `snapshot` and lets go of the sockets: `portico check --bind`.
pub fn check_bind(snapshot: &Snapshot) -> Result<(), ConfigErrors> {
    let listeners = bind_new(snapshot, &HashMap::new());
    let admin = match snapshot.admin {
        Some(addr) => std::net::TcpListener::bind(addr)
            .map(drop)
            .map_err(|e| admin_error(snapshot, addr, &e)),
        None => Ok(()),
    };
    match (listeners, admin) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(mut a), Err(b)) => {
            a.0.push(b);
            Err(a)
        }
        (Err(a), Ok(())) => Err(a),
        (Ok(_), Err(b)) => Err(b.into()),
    }
}

/// The admin endpoint could not bind `addr`: an error at `admin.address`.
fn admin_error(snapshot: &Snapshot, addr: SocketAddr, e: &std::io::Error) -> ConfigError {
    let message = format!("the admin endpoint cannot bind {addr}: {e}");
    match &snapshot.admin_origin {
        Some(origin) => origin.error(message),
        None => ConfigError::global(message),
    }
}

/// Loads and compiles without binding anything: `portico check`.
pub fn check(root: &Path) -> Result<Snapshot, ConfigErrors> {
    let loaded = config::load(root)?;
    config::compile(&loaded, &CompileContext::default())
}

impl Server {
    /// Loads the configuration, binds every listener and the admin endpoint, and starts serving.
    pub async fn start(options: Options) -> Result<Arc<Server>, StartError> {
        // SIGHUP ends a process by default: catch it before anyone can know we are running.
        let hup = if options.sighup {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("cannot handle SIGHUP: {e}");
                    None
                }
            }
        } else {
            None
        };
        let root = options.config.clone();
        let metrics = Metrics::new();
        let ctx = CompileContext {
            plugins: crate::plugin::PluginHost::new(metrics.clone()),
            ..CompileContext::default()
        };
        let snapshot = {
            let loaded = config::load(&root).map_err(StartError::Config)?;
            config::compile(&loaded, &ctx).map_err(StartError::Config)?
        };
        let sockets = bind_new(&snapshot, &HashMap::new()).map_err(StartError::Config)?;
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            hard_stop: CancellationToken::new(),
            tunnels: TaskTracker::new(),
            status: Mutex::new(Status {
                version: 1,
                ..Status::default()
            }),
            reloads: AtomicU64::new(0),
        });
        let snapshot = shared.current.load_full();
        publish_info(&shared.metrics, None, &snapshot);

        let admin_addr = match snapshot.admin {
            Some(addr) => Some(
                crate::admin::start(shared.clone(), addr)
                    .await
                    .map_err(|e| StartError::Config(admin_error(&snapshot, addr, &e).into()))?,
            ),
            None => None,
        };

        let mut listeners = HashMap::new();
        for (key, socket) in sockets {
            let running = listener::start(shared.clone(), key.clone(), socket).map_err(|e| {
                StartError::Config(ConfigError::global(format!("listener {key}: {e}")).into())
            })?;
            tracing::info!(listener = %listener_name(&snapshot, &key), address = %running.local_addr, "listening");
            listeners.insert(key, running);
        }
        let server = Arc::new(Server {
            shared,
            root,
            ctx: Mutex::new(ctx),
            listeners: Mutex::new(listeners),
            reload_lock: tokio::sync::Mutex::new(()),
            admin_addr,
            stop_watch: CancellationToken::new(),
        });
        if options.watch || hup.is_some() {
            config::watch::spawn(server.clone(), options.watch, hup);
        }
        Ok(server)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn config_root(&self) -> &Path {
        &self.root
    }

    pub fn watch_stopped(&self) -> &CancellationToken {
        &self.stop_watch
    }

    /// The bound address of the listener with this name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let snapshot = self.shared.current.load();
        let key = &snapshot.listeners.iter().find(|l| l.name == name)?.key;
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.get(key).map(|l| l.local_addr)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Re-reads the configuration; applies it if it changed and is valid.
    pub async fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.reload_lock.lock().await;
        let outcome = self.reload_locked().await;
        let result = match &outcome {
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Applied { .. } => "success",
            ReloadOutcome::Failed(_) => "failure",
        };
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        {
            let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            status.last_attempt = Some(SystemTime::now());
            status.last_result = Some(result);
            // The error belongs to the last attempt: once the files are back to what serves
            // ("unchanged"), there is nothing wrong to report any more.
            match &outcome {
                ReloadOutcome::Failed(e) => status.last_error = Some(e.to_string()),
                ReloadOutcome::Applied { .. } => {
                    status.last_error = None;
                    status.version += 1;
                }
                ReloadOutcome::Unchanged => status.last_error = None,
            }
        }
        match &outcome {
            ReloadOutcome::Failed(e) => tracing::error!(
                "configuration reload failed; the previous configuration keeps serving:\n{e}"
            ),
            ReloadOutcome::Applied { hash } => tracing::info!(%hash, "configuration reloaded"),
            ReloadOutcome::Unchanged => tracing::debug!("configuration unchanged"),
        }
        self.shared.reloads.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    async fn reload_locked(&self) -> ReloadOutcome {
        let current = self.shared.current.load_full();
        // Cheap no-op check: hash the texts and the files the current snapshot references.
        let root = self.root.clone();
        let referenced = current.referenced.clone();
        let quick = tokio::task::spawn_blocking(move || {
            config::read_texts(&root)
                .map(|t| content_hash(&root, config::digest_texts(&root, &t).as_ref(), &referenced))
        })
        .await;
        match quick {
            Ok(Ok(hash)) if hash == current.hash => return ReloadOutcome::Unchanged,
            Ok(Err(e)) => return ReloadOutcome::Failed(e.into()),
            _ => {}
        }

        let tokens = current
            .routes
            .iter()
            .map(|r| ((r.name.to_string(), r.fingerprint), r.closing.clone()))
            .collect();
        let root = self.root.clone();
        let ctx = std::mem::take(&mut *self.ctx.lock().unwrap_or_else(|e| e.into_inner()));
        let previous = current
            .plugins
            .iter()
            .map(|(fp, p)| (*fp, p.clone()))
            .collect();
        let compiled = tokio::task::spawn_blocking(move || {
            let ctx = CompileContext {
                route_tokens: tokens,
                previous_plugins: previous,
                ..ctx
            };
            let result = config::load(&root).and_then(|loaded| config::compile(&loaded, &ctx));
            (result, ctx)
        })
        .await;
        let (result, ctx) = match compiled {
            Ok(r) => r,
            Err(e) => {
                return ReloadOutcome::Failed(
                    ConfigError::global(format!("compile task failed: {e}")).into(),
                );
            }
        };
        *self.ctx.lock().unwrap_or_else(|e| e.into_inner()) = CompileContext {
            route_tokens: HashMap::new(),
            previous_plugins: HashMap::new(),
            ..ctx
        };
        let snapshot = match result {
            Ok(s) => s,
            Err(e) => return ReloadOutcome::Failed(e),
        };
        if snapshot.hash == current.hash {
            return ReloadOutcome::Unchanged;
        }
        if snapshot.admin != current.admin {
            tracing::warn!("admin.address changed; the admin endpoint moves only on restart");
        }

        // Bind what is new before anything changes: a port in use fails the reload.
        let sockets = {
            let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            match bind_new(&snapshot, &running) {
                Ok(s) => s,
                Err(e) => return ReloadOutcome::Failed(e),
            }
        };

        let hash = snapshot.hash.clone();
        let snapshot = Arc::new(snapshot);
        self.shared.current.store(snapshot.clone());
        publish_info(&self.shared.metrics, Some(&current), &snapshot);

        // Reconcile listeners: start the new, stop the removed, keep the rest untouched.
        let mut removed = Vec::new();
        {
            let mut running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for (key, socket) in sockets {
                match listener::start(self.shared.clone(), key.clone(), socket) {
                    Ok(l) => {
                        tracing::info!(listener = %listener_name(&snapshot, &key), address = %l.local_addr, "listening");
                        running.insert(key, l);
                    }
                    Err(e) => tracing::error!(listener = %key, "cannot start listener: {e}"),
                }
            }
            // Kept listeners whose connections were admitted under other settings (TLS on or
            // off, client certificates, ALPN, h2c): their open connections finish gracefully.
            for (key, l) in running.iter() {
                if let (Some(old), Some(new)) = (current.listener(key), snapshot.listener(key))
                    && old.admission() != new.admission()
                {
                    tracing::info!(listener = %new.name, address = %l.local_addr, "TLS or protocol settings changed; closing the listener's open connections gracefully");
                    l.retire();
                }
            }
            let keep: Vec<String> = snapshot.listeners.iter().map(|l| l.key.clone()).collect();
            let gone: Vec<String> = running
                .keys()
                .filter(|k| !keep.contains(k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(l) = running.remove(&key) {
                    tracing::info!(address = %l.local_addr, "listener removed; draining its connections");
                    l.stop();
                    removed.push(l);
                }
            }
        }
        // Removed listeners drain; what is still open after the grace period is closed, so a
        // deleted listener never keeps serving a long-lived stream forever.
        let grace = snapshot.settings.stream_grace;
        for l in removed {
            tokio::spawn(async move {
                if tokio::time::timeout(grace, l.drained()).await.is_err() {
                    tracing::info!(address = %l.local_addr, "grace period over; closing the removed listener's connections");
                    l.kill();
                    l.drained().await;
                }
            });
        }

        // Routes that are gone or changed: close their long-lived streams after the grace period.
        let kept: std::collections::HashSet<(&str, u64)> = snapshot
            .routes
            .iter()
            .map(|r| (&*r.name, r.fingerprint))
            .collect();
        for route in current.routes.iter() {
            if !kept.contains(&(&*route.name, route.fingerprint)) {
                let token = route.closing.clone();
                let name = route.name.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if !token.is_cancelled() {
                        tracing::debug!(route = %name, "grace period over for streams of a removed route");
                        token.cancel();
                    }
                });
            }
        }
        ReloadOutcome::Applied { hash }
    }

    /// Graceful shutdown: `/ready` turns 503, wait `drain_delay`, stop accepting, let requests
    /// in flight finish up to `shutdown.timeout`, then close whatever is left.
    pub async fn shutdown(&self) {
        // No reload may start listeners once shutdown has begun.
        let _no_more_reloads = self.reload_lock.lock().await;
        let settings = self.shared.current.load().settings.clone();
        self.shared.draining.store(true, Ordering::Release);
        self.stop_watch.cancel();
        tracing::info!(drain_delay = ?settings.drain_delay, "shutting down: not ready, draining");
        tokio::time::sleep(settings.drain_delay).await;
        let listeners: Vec<RunningListener> = {
            let mut running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            running.drain().map(|(_, l)| l).collect()
        };
        for l in &listeners {
            l.stop();
        }
        self.shared.tunnels.close();
        let all = async {
            for l in &listeners {
                l.drained().await;
            }
            self.shared.tunnels.wait().await;
        };
        if tokio::time::timeout(settings.shutdown_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?settings.shutdown_timeout, "shutdown timeout reached; closing remaining connections");
            self.shared.hard_stop.cancel();
            for l in &listeners {
                l.kill();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.tunnels.wait()).await;
        }
        tracing::info!("shutdown complete");
    }
}

fn listener_name<'a>(snapshot: &'a Snapshot, key: &str) -> &'a str {
    snapshot
        .listener(key)
        .map(|l| l.name.as_str())
        .unwrap_or("?")
}

/// Binds every listener of `snapshot` that is not running yet. All or nothing.
fn bind_new(
    snapshot: &Snapshot,
    running: &HashMap<String, RunningListener>,
) -> Result<Vec<(String, std::net::TcpListener)>, ConfigErrors> {
    let mut sockets = Vec::new();
    let mut errors = Vec::new();
    for l in snapshot.listeners.iter() {
        if running.contains_key(&l.key) {
            continue;
        }
        match listener::bind(l.addr) {
            Ok(s) => sockets.push((l.key.clone(), s)),
            Err(e) => errors.push(l.origin.error(format!(
                "listener \"{}\" cannot bind {}: {e}",
                l.name, l.addr
            ))),
        }
    }
    if errors.is_empty() {
        Ok(sockets)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn publish_info(metrics: &Metrics, old: Option<&Snapshot>, new: &Snapshot) {
    if let Some(old) = old {
        let _ = metrics
            .config_info
            .remove_label_values(&[old.hash.as_str()]);
    }
    metrics
        .config_info
        .with_label_values(&[new.hash.as_str()])
        .set(1);
    let secs = new
        .loaded_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    metrics.config_load_time.set(secs as i64);
}
