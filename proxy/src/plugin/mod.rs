//! The plugin host: Proxy-Wasm ABI v0.2.1 on wasmtime.
//!
//! The rest of the proxy sees three things: [`PluginHost`] (process-wide, kept across reloads:
//! the engine, compiled modules, shared data, health), [`Plugin`] (one configured plugin with
//! its pool of instances, built by `config::compile`) and [`Chain`] / [`ChainStream`] (the
//! plugins of one route, run over one request). No wasmtime type leaves this module.
//!
//! A request's life through a chain: [`Chain::start`] binds each plugin to one instance and
//! creates its stream context; `on_request_headers` runs in order, the request body through
//! [`ChainStream::request_body`], `on_response_headers` and the response body in reverse
//! order; when the response ends (or the request is dropped) every plugin gets `on_log`,
//! `on_done` and `on_delete`.

mod abi;
pub mod engine;
pub mod foreign;
mod frozen;
pub mod inspect;
mod instance;
mod metrics;
mod pool;
mod properties;
mod shared;
mod wasi;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Frame;
use wasmtime::{InstancePre, Linker, Module};

use crate::body::Body;
use crate::error::ProxyError;
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstream;

pub use abi::MAX_CALLOUT_TIMEOUT;
pub use frozen::Frozen;
use instance::{Fault, HostCtx};
pub use instance::{LocalResponse, RequestHead, ResponseHead};
use pool::{Pool, Slot};

/// What a plugin's failure does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnError {
    /// Fail closed: 500. The default — an auth plugin that crashes never lets a request by.
    Deny,
    /// Fail open: the plugin is skipped for the rest of the request.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limits {
    pub memory: u64,
    pub time_per_call: Duration,
    pub instances: usize,
    /// The most a plugin may buffer of one body by pausing in a body callback.
    pub body_buffer: u64,
    /// Largest callout request or response body.
    pub callout_bytes: u64,
    /// Timeout of a callout that gives none.
    pub callout_timeout: Duration,
    /// How long a paused request or response waits for the plugin to resume it.
    pub pause_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            time_per_call: Duration::from_millis(50),
            instances: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            body_buffer: 4 << 20,
            callout_bytes: 1 << 20,
            callout_timeout: Duration::from_secs(5),
            pause_timeout: Duration::from_secs(60),
        }
    }
}

/// What `config::compile` asks for one plugin.
#[derive(Debug, Clone)]
pub struct PluginDef {
    pub name: String,
    pub module: std::path::PathBuf,
    /// The YAML `config` value as JSON, handed to `proxy_on_configure`.
    pub config: Bytes,
    pub on_error: OnError,
    pub limits: Limits,
    pub foreign_functions: foreign::Allowed,
}

/// Everything an instance's hostcalls need that is the same for all of a plugin's instances.
pub struct PluginSpec {
    pub name: String,
    pub config: Bytes,
    pub vm_config: Bytes,
    pub limits: Limits,
    pub on_error: OnError,
    pub foreign_functions: foreign::Allowed,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub host: Arc<HostShared>,
    pub callouts_inflight: AtomicUsize,
}

impl std::fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A plugin's health, for `/config`: survives reloads, keyed by plugin name.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PluginHealth {
    pub failures: u64,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<u64>,
}

/// Process-wide plugin state.
pub struct HostShared {
    engine: OnceLock<Result<(engine::PluginEngine, Linker<HostCtx>), String>>,
    modules: Mutex<HashMap<Vec<u8>, Module>>,
    shared: shared::SharedState,
    metrics: metrics::PluginMetrics,
    metrics_raw: Metrics,
    counters: foreign::Counters,
    keys: foreign::KeyCache,
    health: Mutex<HashMap<String, PluginHealth>>,
}

impl std::fmt::Debug for HostShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostShared").finish_non_exhaustive()
    }
}

impl HostShared {
    /// See [`engine::PluginEngine::long_call`].
    fn long_call(&self) {
        if let Some(Ok((engine, _))) = self.engine.get() {
            engine.long_call();
        }
    }

    fn record_failure(&self, plugin: &str, fault: &Fault) {
        tracing::warn!(target: "portico::plugin", plugin, kind = fault.kind(), "plugin failed: {fault}");
        self.metrics_raw
            .plugin_failures
            .with_label_values(&[plugin, fault.kind()])
            .inc();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let h = health.entry(plugin.to_string()).or_default();
        h.failures += 1;
        h.last_failure = Some(fault.to_string());
        h.last_failure_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
    }
}

/// The process's plugin host; cheap to clone.
#[derive(Clone, Debug)]
pub struct PluginHost {
    inner: Arc<HostShared>,
}

impl Default for PluginHost {
    fn default() -> Self {
        PluginHost::new(Metrics::new())
    }
}

impl PluginHost {
    pub fn new(metrics: Metrics) -> PluginHost {
        PluginHost {
            inner: Arc::new(HostShared {
                engine: OnceLock::new(),
                modules: Mutex::new(HashMap::new()),
                shared: shared::SharedState::default(),
                metrics: metrics::PluginMetrics::new(metrics.clone()),
                metrics_raw: metrics,
                counters: foreign::Counters::default(),
                keys: foreign::KeyCache::default(),
                health: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The engine and the linker with every host function, made on first use.
    fn engine(&self) -> Result<&(engine::PluginEngine, Linker<HostCtx>), String> {
        self.inner
            .engine
            .get_or_init(|| {
                let engine = engine::PluginEngine::new().map_err(|e| e.to_string())?;
                let mut linker = Linker::new(engine.engine());
                abi::add_to_linker(&mut linker).map_err(|e| e.to_string())?;
                wasi::add_to_linker(&mut linker).map_err(|e| e.to_string())?;
                Ok((engine, linker))
            })
            .as_ref()
            .map_err(|e| format!("cannot start the WebAssembly engine: {e}"))
    }

    /// Reads, compiles (or reuses the compiled code of the same bytes), links, and starts a
    /// plugin's instances. The first instance is the canary: if `on_vm_start` or
    /// `on_configure` refuses, so does this call, with the plugin's own log lines.
    pub fn load(
        &self,
        def: &PluginDef,
        upstreams: HashMap<String, Arc<Upstream>>,
    ) -> Result<Arc<Plugin>, String> {
        let wasm = std::fs::read(&def.module)
            .map_err(|e| format!("cannot read module {}: {e}", def.module.display()))?;
        let pre = self.prepare(&wasm)?;
        let spec = Arc::new(PluginSpec {
            name: def.name.clone(),
            config: def.config.clone(),
            vm_config: Bytes::new(),
            limits: def.limits.clone(),
            on_error: def.on_error,
            foreign_functions: def.foreign_functions,
            upstreams,
            host: self.inner.clone(),
            callouts_inflight: AtomicUsize::new(0),
        });
        let pool = Pool::start(&spec, pre, def.limits.instances)
            .map_err(|f| format!("plugin failed to start: {f}"))?;
        Ok(Arc::new(Plugin { spec, pool }))
    }

    /// Compiles and links `wasm`, checking that it speaks Proxy-Wasm 0.2.x.
    fn prepare(&self, wasm: &[u8]) -> Result<InstancePre<HostCtx>, String> {
        let (engine, _) = self.engine()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, wasm)
            .as_ref()
            .to_vec();
        let cached = {
            let modules = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
            modules.get(&digest).cloned()
        };
        let module = match cached {
            Some(m) => m,
            None => {
                let m = engine
                    .compile(wasm)
                    .map_err(|e| format!("not a valid WebAssembly module: {e}"))?;
                let mut modules = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
                modules.insert(digest, m.clone());
                m
            }
        };
        self.link(&module)
    }

    /// Checks that a compiled module speaks Proxy-Wasm 0.2.x and links it: imports the host
    /// lacks are defined to fail when called (WASI ones with `ENOSYS`).
    fn link(&self, module: &Module) -> Result<InstancePre<HostCtx>, String> {
        let (_, linker) = self.engine()?;
        inspect::check_abi(module)?;
        let mut linker = linker.clone();
        wasi::stub_unknown(&mut linker, module).map_err(|e| e.to_string())?;
        linker
            .instantiate_pre(module)
            .map_err(|e| format!("cannot link the module: {e}"))
    }

    /// Forgets compiled modules no plugin of `keep` uses (called after a reload).
    pub fn retain_modules(&self, keep: &[Arc<Plugin>]) {
        let keep: Vec<&Module> = keep.iter().map(|p| p.pool.module()).collect();
        let mut modules = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
        modules.retain(|_, m| keep.iter().any(|k| Module::same(k, m)));
    }

    /// Failures per plugin, for `/config`.
    pub fn health(&self) -> HashMap<String, PluginHealth> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One configured plugin and its instances.
pub struct Plugin {
    spec: Arc<PluginSpec>,
    pool: Pool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// For `/config`: instances, how many are live now and how many wait out a backoff after
    /// failing again and again, and the plugin's failure record (kept across reloads). A
    /// crash-looping plugin shows `backing_off` above 0, `live` below `instances` and a growing
    /// `failures`.
    pub fn status(&self) -> serde_json::Value {
        let (mut live, mut backing_off) = (0, 0);
        for slot in self.pool.slots.iter() {
            match slot.state.try_lock() {
                Ok(state) => {
                    live += usize::from(state.instance.is_some());
                    backing_off += usize::from(state.backing_off());
                }
                // Busy running a callback: alive.
                Err(_) => live += 1,
            }
        }
        let health = self
            .spec
            .host
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.spec.name)
            .cloned()
            .unwrap_or_default();
        serde_json::json!({
            "name": self.spec.name,
            "instances": self.pool.slots.len(),
            "live": live,
            "backing_off": backing_off,
            "on_error": match self.spec.on_error { OnError::Deny => "deny", OnError::Allow => "allow" },
            "foreign_functions": self.spec.foreign_functions.names().collect::<Vec<_>>(),
            "failures": health.failures,
            "last_failure": health.last_failure,
            "last_failure_at": health.last_failure_at,
        })
    }
}

/// Attributes of a request that plugins read as properties.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// The request id (`x-request-id`), shared with the request's header.
    pub id: http::HeaderValue,
    /// When the request arrived (monotonic; `request.time` derives the wall clock from it).
    pub started: std::time::Instant,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub tls_version: Option<&'static str>,
    pub mtls: bool,
    pub sni: Option<String>,
    pub protocol: &'static str,
    pub scheme: &'static str,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub route: Arc<str>,
    pub upstream: Option<Arc<str>>,
    /// The heads after their phase, for the callbacks after it.
    pub later: Later,
}

/// The request and response heads as their phase left them, readable (not writable) by the
/// stream's later callbacks, as Envoy keeps them: a response callback reading a request
/// header, `on_log` reading either. One [`Frozen`] copy each per request, shared by the
/// chain's plugins.
#[derive(Debug, Clone, Default)]
pub struct Later {
    pub request: OnceLock<Frozen>,
    pub response: OnceLock<Frozen>,
}

/// The plugins a request runs through, in request order.
#[derive(Clone, Debug, Default)]
pub struct Chain(Arc<[Arc<Plugin>]>);

impl Chain {
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Chain {
        Chain(plugins.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.0
    }

    /// Binds every plugin to an instance and creates its stream context.
    pub async fn start(&self, info: Arc<StreamInfo>) -> Result<Arc<ChainStream>, ProxyError> {
        // The contexts created so far belong to `stream` from the start, so that they end
        // (`on_log`, `on_done`, `on_delete`) however this stops: a denied plugin, or the
        // request dropped while a later plugin's instance is busy.
        let mut stream = ChainStream {
            bindings: Bindings::with_capacity(self.0.len()),
            info: info.clone(),
        };
        for plugin in self.0.iter() {
            let (slot, created) = plugin.pool.bind(&info).await;
            match created {
                Ok((ctx, generation)) => stream.bindings.push(Binding {
                    plugin: plugin.clone(),
                    slot,
                    generation,
                    ctx,
                    skip: AtomicBool::new(false),
                }),
                Err(fault) => match plugin.spec.on_error {
                    OnError::Allow => {}
                    OnError::Deny => return Err(failed(plugin, &fault)),
                },
            }
        }
        Ok(Arc::new(stream))
    }
}

fn failed(plugin: &Plugin, fault: &Fault) -> ProxyError {
    ProxyError::PluginFailed {
        plugin: plugin.spec.name.clone(),
        reason: fault.to_string(),
    }
}

struct Binding {
    plugin: Arc<Plugin>,
    slot: Arc<Slot>,
    generation: u64,
    ctx: u32,
    /// Set when the plugin failed and its policy is `allow`: skipped from then on.
    skip: AtomicBool,
}

/// What a phase decided.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    Respond(LocalResponse),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

/// A stream's bindings: a chain of one or two plugins keeps them inside the stream's own
/// allocation.
type Bindings = smallvec::SmallVec<[Binding; 2]>;

/// One request's pass through a chain.
pub struct ChainStream {
    bindings: Bindings,
    info: Arc<StreamInfo>,
}

impl std::fmt::Debug for ChainStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainStream")
            .field("plugins", &self.bindings.len())
            .finish()
    }
}

/// What one callback left behind.
struct Outcome {
    action: u32,
    local: Option<Box<LocalResponse>>,
    resumed: bool,
    close: bool,
    /// Set when the stream paused: what the waiter waits on.
    wake: Option<Arc<tokio::sync::Notify>>,
}

const ACTION_PAUSE: u32 = 1;

impl Outcome {
    /// Paused and nothing else: the stream waits for the plugin.
    fn paused(&self) -> bool {
        self.action == ACTION_PAUSE && self.local.is_none() && !self.close && !self.resumed
    }
}

impl ChainStream {
    /// The bindings in the order a phase visits them: the chain's for requests, reversed for
    /// responses.
    fn order(&self, dir: Dir) -> impl Iterator<Item = &Binding> + Send + '_ {
        let n = self.bindings.len();
        (0..n).map(move |i| match dir {
            Dir::Request => &self.bindings[i],
            Dir::Response => &self.bindings[n - 1 - i],
        })
    }

    /// Runs one callback on `b`'s instance with `load` putting state in before and `unload`
    /// taking it out after, whatever the callback did.
    async fn run(
        &self,
        b: &Binding,
        dir: Dir,
        load: impl FnOnce(&mut instance::StreamState),
        call: impl FnOnce(&mut instance::Instance, u32) -> Result<u32, Fault>,
        unload: impl FnOnce(&mut instance::StreamState),
    ) -> Result<Outcome, Fault> {
        let ctx = b.ctx;
        let (outcome, _) = b
            .slot
            .with(Some(b.generation), |inst| {
                let Some(state) = inst.store.data_mut().streams.get_mut(&ctx) else {
                    return Err(Fault::Abi("stream context vanished".into()));
                };
                load(state);
                inst.store.data_mut().effective = ctx;
                let result = call(inst, ctx);
                let state = inst
                    .store
                    .data_mut()
                    .streams
                    .get_mut(&ctx)
                    .expect("streams are removed only by end_stream");
                let effects = std::mem::take(&mut state.effects);
                let mut outcome = result.map(|action| Outcome {
                    action,
                    local: effects.local_response,
                    resumed: match dir {
                        Dir::Request => effects.resume_request,
                        Dir::Response => effects.resume_response,
                    },
                    close: effects.close,
                    wake: None,
                });
                // A pause leaves the state inside, for whoever resumes; anything else (a
                // fault included: the instance is about to be discarded) takes it back now.
                let paused = outcome.as_ref().is_ok_and(Outcome::paused);
                if paused {
                    // Made only for a pause: most streams never need one.
                    let wake = state.wake.get_or_insert_with(Default::default).clone();
                    if let Ok(o) = outcome.as_mut() {
                        o.wake = Some(wake);
                    }
                } else {
                    unload(state);
                }
                outcome
            })
            .await?;
        Ok(outcome)
    }

    /// After a pause: waits until the plugin resumes the stream, answers it, or closes it.
    async fn wait_resume(
        &self,
        b: &Binding,
        dir: Dir,
        wake: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<Outcome, Fault> {
        let wake = wake.unwrap_or_default();
        let deadline = tokio::time::Instant::now() + b.plugin.spec.limits.pause_timeout;
        loop {
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                let fault = Fault::PauseTimeout(
                    if dir == Dir::Request {
                        "request"
                    } else {
                        "response"
                    },
                    b.plugin.spec.limits.pause_timeout,
                );
                // Counted, but the instance stays: it did nothing wrong that a rebuild cures.
                b.plugin
                    .spec
                    .host
                    .record_failure(&b.plugin.spec.name, &fault);
                return Err(fault);
            }
            let ctx = b.ctx;
            let (outcome, _) = b
                .slot
                .with(Some(b.generation), |inst| {
                    let state = inst
                        .store
                        .data_mut()
                        .streams
                        .get_mut(&ctx)
                        .ok_or_else(|| Fault::Abi("stream context vanished".into()))?;
                    let effects = std::mem::take(&mut state.effects);
                    let resumed = match dir {
                        Dir::Request => effects.resume_request,
                        Dir::Response => effects.resume_response,
                    };
                    Ok(Outcome {
                        action: if resumed { 0 } else { ACTION_PAUSE },
                        local: effects.local_response,
                        resumed,
                        close: effects.close,
                        wake: state.wake.clone(),
                    })
                })
                .await?;
            if outcome.resumed || outcome.local.is_some() || outcome.close {
                return Ok(outcome);
            }
        }
    }

    /// After a callback: a plain pause waits until the plugin resumes, answers or closes the
    /// stream; any other outcome stands.
    async fn settle(
        &self,
        b: &Binding,
        dir: Dir,
        result: Result<Outcome, Fault>,
    ) -> Result<Outcome, Fault> {
        match result {
            // Boxed: most callbacks do not pause, and every phase's future would otherwise
            // carry (and move around) the waiting state.
            Ok(o) if o.paused() => Box::pin(self.wait_resume(b, dir, o.wake)).await,
            other => other,
        }
    }

    /// What a settled callback means for the chain: go on (`None`), answer with the plugin's
    /// local response, or fail (a closed stream, or a fault under `on_error: deny`).
    fn decide(
        &self,
        b: &Binding,
        result: Result<Outcome, Fault>,
    ) -> Result<Option<LocalResponse>, ProxyError> {
        match result {
            Err(fault) => self.policy(b, fault).map(|()| None),
            Ok(o) if o.local.is_some() => Ok(o.local.map(|l| *l)),
            Ok(o) if o.close => Err(closed(b)),
            Ok(_) => Ok(None),
        }
    }

    /// Turns a plugin fault into the plugin's policy: `Ok(())` to go on without it.
    fn policy(&self, b: &Binding, fault: Fault) -> Result<(), ProxyError> {
        match b.plugin.spec.on_error {
            OnError::Allow => {
                b.skip.store(true, Ordering::Release);
                Ok(())
            }
            OnError::Deny => Err(failed(&b.plugin, &fault)),
        }
    }

    /// `on_request_headers` through the chain, in order.
    pub async fn request_headers(
        &self,
        head: &mut RequestHead,
        end_of_stream: bool,
    ) -> Result<Verdict, ProxyError> {
        if let Some(name) = non_utf8(&head.headers) {
            return Err(ProxyError::BadRequest(format!(
                "header {name} is not valid UTF-8, which the plugins of this route require"
            )));
        }
        let mut boxed = boxed(head, empty_request());
        let verdict = self.request_headers_boxed(&mut boxed, end_of_stream).await;
        unbox(head, boxed);
        if verdict.is_ok() {
            let _ = self.info.later.request.set(Frozen::request(head));
        }
        verdict
    }

    async fn request_headers_boxed(
        &self,
        head: &mut Option<Box<RequestHead>>,
        end_of_stream: bool,
    ) -> Result<Verdict, ProxyError> {
        for b in self.order(Dir::Request) {
            if b.skip.load(Ordering::Acquire) || !b.plugin.pool.head_hooks.request {
                continue;
            }
            let n = head.as_ref().map_or(0, |h| h.headers.len()) as u32 + 4;
            let eos = end_of_stream as u32;
            // Kept here until the callback runs, so a failure before it loses nothing.
            let mut carry = head.take();
            let mut taken = None;
            let result = self
                .run(
                    b,
                    Dir::Request,
                    |s| s.request = carry.take(),
                    |inst, ctx| {
                        inst.call(|e| e.on_request_headers.as_ref(), (ctx, n, eos))
                            .map(|a| a.unwrap_or(0))
                    },
                    |s| taken = s.request.take(),
                )
                .await;
            let result = self.settle(b, Dir::Request, result).await;
            // Whatever happened, take the head back out of the instance.
            let back = match carry.take() {
                Some(h) => Some(h),
                None => take_back(taken, b, |s| s.request.take()).await,
            };
            // Gone only with an instance that failed while the request was paused in it: not
            // even `on_error: allow` can go on without the plugin then.
            *head = Some(back.ok_or_else(|| lost(b, "request headers"))?);
            if let Some(local) = self.decide(b, result)? {
                return Ok(Verdict::Respond(local));
            }
        }
        Ok(Verdict::Continue)
    }

    /// `on_response_headers` through the chain, in reverse order.
    pub async fn response_headers(
        &self,
        head: &mut ResponseHead,
        end_of_stream: bool,
    ) -> Result<Verdict, ProxyError> {
        if let Some(name) = non_utf8(&head.headers) {
            return Err(ProxyError::UpstreamFailed {
                upstream: String::new(),
                reason: format!(
                    "response header {name} is not valid UTF-8, which the plugins of this route require"
                ),
            });
        }
        let mut boxed = boxed(head, empty_response());
        let verdict = self.response_headers_boxed(&mut boxed, end_of_stream).await;
        unbox(head, boxed);
        if verdict.is_ok() {
            let _ = self.info.later.response.set(Frozen::response(head));
        }
        verdict
    }

    async fn response_headers_boxed(
        &self,
        head: &mut Option<Box<ResponseHead>>,
        end_of_stream: bool,
    ) -> Result<Verdict, ProxyError> {
        for b in self.order(Dir::Response) {
            if b.skip.load(Ordering::Acquire) || !b.plugin.pool.head_hooks.response {
                continue;
            }
            let n = head.as_ref().map_or(0, |h| h.headers.len()) as u32 + 1;
            let eos = end_of_stream as u32;
            let mut carry = head.take();
            let mut taken = None;
            let result = self
                .run(
                    b,
                    Dir::Response,
                    |s| {
                        s.response_status = carry.as_ref().map(|h| h.status);
                        s.response = carry.take();
                    },
                    |inst, ctx| {
                        inst.call(|e| e.on_response_headers.as_ref(), (ctx, n, eos))
                            .map(|a| a.unwrap_or(0))
                    },
                    |s| {
                        // Its status stays readable (`response.code`) for on_log.
                        s.response_status = s.response.as_ref().map(|h| h.status);
                        taken = s.response.take();
                    },
                )
                .await;
            let result = self.settle(b, Dir::Response, result).await;
            let back = match carry.take() {
                Some(h) => Some(h),
                None => take_back(taken, b, |s| s.response.take()).await,
            };
            *head = Some(back.ok_or_else(|| lost(b, "response headers"))?);
            if let Some(local) = self.decide(b, result)? {
                return Ok(Verdict::Respond(local));
            }
        }
        Ok(Verdict::Continue)
    }

    /// Runs a body chunk through the chain (`Dir::Request` in order, `Dir::Response` in
    /// reverse). Returns what leaves the last plugin; a plugin that pauses keeps its part
    /// buffered until a later chunk or the end of the stream.
    async fn body(&self, dir: Dir, mut data: Bytes, eos: bool) -> Result<BodyStep, ProxyError> {
        for b in self.order(dir) {
            if b.skip.load(Ordering::Acquire) {
                continue;
            }
            if data.is_empty() && !eos {
                return Ok(BodyStep::Data(data));
            }
            let cap = b.plugin.spec.limits.body_buffer;
            // Moved into the plugin's buffer; back here only if the callback never ran.
            let mut carry = Some(std::mem::take(&mut data));
            let mut over = false;
            let over_flag = &mut over;
            let mut out = Bytes::new();
            let result = self
                .run(
                    b,
                    dir,
                    |s| {
                        let chunk = carry.take().unwrap_or_default();
                        let buf = match dir {
                            Dir::Request => &mut s.request_body,
                            Dir::Response => &mut s.response_body,
                        };
                        if (buf.len() + chunk.len()) as u64 > cap {
                            *over_flag = true;
                        }
                        instance::append_body(buf, chunk);
                    },
                    |inst, ctx| {
                        let size = {
                            let s = inst.store.data().streams.get(&ctx).expect("loaded");
                            match dir {
                                Dir::Request => s.request_body.len(),
                                Dir::Response => s.response_body.len(),
                            }
                        } as u32;
                        inst.call(
                            |e| match dir {
                                Dir::Request => e.on_request_body.as_ref(),
                                Dir::Response => e.on_response_body.as_ref(),
                            },
                            (ctx, size, eos as u32),
                        )
                        .map(|a| a.unwrap_or(0))
                    },
                    |s| {
                        let buf = match dir {
                            Dir::Request => &mut s.request_body,
                            Dir::Response => &mut s.response_body,
                        };
                        out = std::mem::take(buf);
                    },
                )
                .await;
            if let Some(chunk) = carry.take() {
                data = chunk;
            }
            if over {
                return Ok(BodyStep::TooLarge(b.plugin.spec.name.clone(), cap));
            }
            let paused = result.as_ref().is_ok_and(Outcome::paused);
            if !eos && paused {
                // Buffering: nothing leaves this plugin yet.
                return Ok(BodyStep::Data(Bytes::new()));
            }
            let result = self.settle(b, dir, result).await;
            let faulted = result.is_err();
            if let Some(local) = self.decide(b, result)? {
                return Ok(BodyStep::Respond(local));
            }
            if faulted {
                // Skipped from now on: what it had buffered (this chunk included) goes on. After
                // a pause the buffer is still inside the instance (a pause timeout leaves it
                // there); with the instance gone, so is the body.
                let buffered = match paused {
                    false => std::mem::take(&mut out),
                    true => take_back(None, b, |s| {
                        Some(std::mem::take(match dir {
                            Dir::Request => &mut s.request_body,
                            Dir::Response => &mut s.response_body,
                        }))
                    })
                    .await
                    .ok_or_else(|| lost(b, "body"))?,
                };
                if !buffered.is_empty() {
                    data = buffered;
                }
                continue;
            }
            let taken = std::mem::take(&mut out);
            data = if taken.is_empty() {
                // Resumed after a pause at the end: the buffer is still inside.
                take_back(None, b, |s| {
                    Some(std::mem::take(match dir {
                        Dir::Request => &mut s.request_body,
                        Dir::Response => &mut s.response_body,
                    }))
                })
                .await
                .unwrap_or_default()
            } else {
                taken
            };
        }
        Ok(BodyStep::Data(data))
    }

    /// Trailers through the chain.
    async fn trailers(
        &self,
        dir: Dir,
        trailers: &mut HeaderMap,
    ) -> Result<Option<LocalResponse>, ProxyError> {
        if let Some(name) = non_utf8(trailers) {
            // As with headers: plugins read values as text. Mid-stream, refusing means ending
            // the stream with an error.
            return Err(ProxyError::PluginFailed {
                plugin: String::new(),
                reason: format!(
                    "{} trailer {name} is not valid UTF-8, which the plugins of this route require",
                    if dir == Dir::Request {
                        "request"
                    } else {
                        "response"
                    }
                ),
            });
        }
        for b in self.order(dir) {
            if b.skip.load(Ordering::Acquire) {
                continue;
            }
            let n = trailers.len() as u32;
            let mut carry = Some(Box::new(std::mem::take(trailers)));
            let mut out = None;
            let result = self
                .run(
                    b,
                    dir,
                    |s| match dir {
                        Dir::Request => s.request_trailers = carry.take(),
                        Dir::Response => s.response_trailers = carry.take(),
                    },
                    |inst, ctx| {
                        inst.call(
                            |e| match dir {
                                Dir::Request => e.on_request_trailers.as_ref(),
                                Dir::Response => e.on_response_trailers.as_ref(),
                            },
                            (ctx, n),
                        )
                        .map(|a| a.unwrap_or(0))
                    },
                    |s| {
                        out = match dir {
                            Dir::Request => s.request_trailers.take(),
                            Dir::Response => s.response_trailers.take(),
                        }
                    },
                )
                .await;
            let result = self.settle(b, dir, result).await;
            let back = match carry.take() {
                Some(t) => Some(t),
                None => {
                    take_back(out, b, |s| match dir {
                        Dir::Request => s.request_trailers.take(),
                        Dir::Response => s.response_trailers.take(),
                    })
                    .await
                }
            };
            *trailers = *back.ok_or_else(|| lost(b, "trailers"))?;
            if let Some(local) = self.decide(b, result)? {
                return Ok(Some(local));
            }
        }
        Ok(None)
    }

    /// Whether any plugin of the chain has request body or trailer callbacks: without one, the
    /// request body is not filtered at all.
    pub fn filters_request_body(&self) -> bool {
        self.bindings
            .iter()
            .any(|b| b.plugin.pool.body_hooks.request)
    }

    /// Wraps the request body so every chunk runs through the chain. A local response sent
    /// from a body callback goes to `local`; the body then ends with an error, which abandons
    /// the upstream request.
    pub fn request_body(
        self: &Arc<Self>,
        body: Body,
        local: tokio::sync::oneshot::Sender<LocalResponse>,
    ) -> Body {
        filtered(self.clone(), Dir::Request, body, Some(local))
    }

    /// Wraps the response body; the chain's stream contexts end when it does. When no plugin
    /// has response body or trailer callbacks, the frames pass untouched and the wrapper only
    /// keeps the contexts alive until the body ends (so `on_log` still comes last).
    pub fn response_body(self: &Arc<Self>, body: Body) -> Body {
        if self
            .bindings
            .iter()
            .any(|b| b.plugin.pool.body_hooks.response)
        {
            filtered(self.clone(), Dir::Response, body, None)
        } else {
            crate::body::boxed(KeepAlive {
                inner: body,
                _chain: self.clone(),
            })
        }
    }
}

impl Drop for ChainStream {
    /// `on_log`, `on_done`, `on_delete` for every plugin: now if its instance is free, else
    /// in a task.
    fn drop(&mut self) {
        for b in self.bindings.drain(..) {
            if !b.slot.try_end_stream(b.generation, b.ctx)
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                rt.spawn(async move { b.slot.end_stream_later(b.generation, b.ctx).await });
            }
        }
    }
}

/// Takes state back out of an instance after a callback that left it inside (a pause, a
/// fault of the callback itself discards the instance and with it the state).
async fn take_back<T: Send>(
    taken: Option<T>,
    b: &Binding,
    take: impl FnOnce(&mut instance::StreamState) -> Option<T>,
) -> Option<T> {
    if let Some(v) = taken {
        return Some(v);
    }
    let ctx = b.ctx;
    // Boxed, as only a stream that paused gets here.
    Box::pin(b.slot.with(Some(b.generation), |inst| {
        Ok(inst.store.data_mut().streams.get_mut(&ctx).and_then(take))
    }))
    .await
    .ok()
    .and_then(|(v, _)| v)
}

/// What a plugin held when its instance failed, lost with the instance: the request cannot go
/// on with or without the plugin.
fn lost(b: &Binding, what: &str) -> ProxyError {
    ProxyError::PluginFailed {
        plugin: b.plugin.spec.name.clone(),
        reason: format!("its instance failed while holding the stream's {what}"),
    }
}

fn closed(b: &Binding) -> ProxyError {
    ProxyError::PluginFailed {
        plugin: b.plugin.spec.name.clone(),
        reason: "the plugin closed the stream".into(),
    }
}

/// A phase's head, boxed once for the whole chain: from plugin to plugin, only the pointer
/// moves. `empty` stands in its place until [`unbox`] puts it back.
fn boxed<H>(head: &mut H, empty: H) -> Option<Box<H>> {
    Some(Box::new(std::mem::replace(head, empty)))
}

/// Puts back what the chain left of a head [`boxed`] took.
fn unbox<H>(head: &mut H, boxed: Option<Box<H>>) {
    if let Some(back) = boxed {
        *head = *back;
    }
}

fn empty_response() -> ResponseHead {
    ResponseHead {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
    }
}

fn empty_request() -> RequestHead {
    RequestHead {
        method: http::Method::GET,
        scheme: "http",
        authority: String::new(),
        path: String::new(),
        headers: HeaderMap::new(),
    }
}

pub(crate) fn non_utf8(headers: &HeaderMap) -> Option<&HeaderName> {
    // Nearly every value is ASCII, which a word-at-a-time scan confirms fastest.
    headers
        .iter()
        .find(|(_, v)| {
            let v = v.as_bytes();
            !v.is_ascii() && std::str::from_utf8(v).is_err()
        })
        .map(|(k, _)| k)
}

/// A local response as an HTTP response.
pub fn local_response(local: LocalResponse) -> Response<Body> {
    let status = StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(crate::body::full(local.body));
    *resp.status_mut() = status;
    // At most as many headers as a plugin may give any map (the pairs came in under the
    // map byte cap already).
    for (k, v) in local.headers.into_iter().take(abi::MAX_MAP_VALUES) {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v)) {
            let _ = resp.headers_mut().try_append(k, v);
        }
    }
    resp
}

enum BodyStep {
    Data(Bytes),
    Respond(LocalResponse),
    TooLarge(String, u64),
}

type StepFuture = Pin<Box<dyn std::future::Future<Output = Result<StepDone, ProxyError>> + Send>>;

pin_project_lite::pin_project! {
    /// A body that holds the chain's stream contexts until it ends.
    struct KeepAlive {
        #[pin]
        inner: Body,
        _chain: Arc<ChainStream>,
    }
}

impl http_body::Body for KeepAlive {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose frames pass through the chain.
struct Filtered {
    chain: Arc<ChainStream>,
    dir: Dir,
    inner: Option<Body>,
    local: Option<tokio::sync::oneshot::Sender<LocalResponse>>,
    /// Trailers waiting until the data buffered before them has been sent.
    held: Option<Frame<Bytes>>,
    done: bool,
    pending: Option<StepFuture>,
}

fn filtered(
    chain: Arc<ChainStream>,
    dir: Dir,
    body: Body,
    local: Option<tokio::sync::oneshot::Sender<LocalResponse>>,
) -> Body {
    crate::body::boxed(Filtered {
        chain,
        dir,
        inner: Some(body),
        local,
        held: None,
        done: false,
        pending: None,
    })
}

impl Filtered {
    /// What is left once the chain has seen the end: held trailers, then nothing.
    fn after_end(&mut self) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        Poll::Ready(self.held.take().map(Ok))
    }

    /// A body callback answered the request: hand the answer over and end this body with an
    /// error (which abandons the upstream request).
    fn answer_locally(&mut self, local: LocalResponse) -> ProxyError {
        self.done = true;
        let plugin = String::new();
        match self.local.take() {
            Some(tx) => {
                let _ = tx.send(local);
                ProxyError::PluginFailed {
                    plugin,
                    reason: "request answered by a plugin during its body".into(),
                }
            }
            None => ProxyError::PluginFailed {
                plugin,
                reason: "a plugin sent a local response after the response had started".into(),
            },
        }
    }
}

impl http_body::Body for Filtered {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(fut) = this.pending.as_mut() {
                let out = std::task::ready!(fut.as_mut().poll(cx));
                this.pending = None;
                let step = match out {
                    Ok(step) => step,
                    Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                };
                if let Some(local) = step.local {
                    return Poll::Ready(Some(Err(Box::new(this.answer_locally(local)))));
                }
                this.done |= step.end;
                if step.held.is_some() {
                    this.held = step.held;
                }
                if let Some(frame) = step.frame {
                    return Poll::Ready(Some(Ok(frame)));
                }
                continue;
            }
            if this.done {
                return this.after_end();
            }
            // Pull the next frame from the inner body.
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = std::task::ready!(Pin::new(&mut *inner).poll_frame(cx));
            let end_after = inner.is_end_stream();
            let step = match frame {
                None => Step::Data(Bytes::new(), true),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Step::Data(data, end_after),
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => Step::Trailers(t),
                        // A frame of another kind: skip it.
                        Err(_) => continue,
                    },
                },
            };
            this.pending = Some(Box::pin(run_step(this.chain.clone(), this.dir, step)));
        }
    }

    /// Ended once the chain has seen the end and nothing is left to send, so that the server
    /// finishes the message with its last frame instead of polling once more.
    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none() && self.pending.is_none()
    }
}

enum Step {
    Data(Bytes, bool),
    Trailers(HeaderMap),
}

/// What a step through the chain produced, for [`Filtered`] to apply.
#[derive(Default)]
struct StepDone {
    /// The frame to pass on, if any.
    frame: Option<Frame<Bytes>>,
    /// The chain has seen the end of the body: after `frame` and `held`, nothing more.
    end: bool,
    /// Trailers to send after `frame`.
    held: Option<Frame<Bytes>>,
    /// A plugin answered the request from a body callback.
    local: Option<LocalResponse>,
}

impl StepDone {
    fn data(d: Bytes, end: bool) -> StepDone {
        StepDone {
            frame: (!d.is_empty()).then(|| Frame::data(d)),
            end,
            ..StepDone::default()
        }
    }

    fn local(local: LocalResponse) -> StepDone {
        StepDone {
            local: Some(local),
            ..StepDone::default()
        }
    }
}

async fn run_step(chain: Arc<ChainStream>, dir: Dir, step: Step) -> Result<StepDone, ProxyError> {
    let (data, eos) = match step {
        Step::Data(d, eos) => (d, eos),
        Step::Trailers(mut t) => {
            // The data callbacks see the end of the stream before the trailers.
            let flushed = chain.body(dir, Bytes::new(), true).await?;
            if let Some(local) = chain.trailers(dir, &mut t).await? {
                return Ok(StepDone::local(local));
            }
            let held = Some(Frame::trailers(t));
            return match flushed {
                BodyStep::Data(d) => Ok(StepDone {
                    held,
                    ..StepDone::data(d, true)
                }),
                BodyStep::Respond(local) => Ok(StepDone::local(local)),
                BodyStep::TooLarge(p, cap) => Err(too_large(dir, p, cap)),
            };
        }
    };
    match chain.body(dir, data, eos).await? {
        BodyStep::Data(d) => Ok(StepDone::data(d, eos)),
        BodyStep::Respond(local) => Ok(StepDone::local(local)),
        BodyStep::TooLarge(p, cap) => {
            if dir == Dir::Request {
                return Ok(StepDone::local(LocalResponse {
                    status: 413,
                    headers: Vec::new(),
                    body: Bytes::from(format!(
                        "request body exceeds the {cap}-byte buffer of plugin {p}\n"
                    )),
                    details: "plugin body buffer".into(),
                }));
            }
            Err(too_large(dir, p, cap))
        }
    }
}

fn too_large(dir: Dir, plugin: String, cap: u64) -> ProxyError {
    ProxyError::PluginFailed {
        plugin,
        reason: format!(
            "{} body exceeds the plugin's {cap}-byte buffer",
            if dir == Dir::Request {
                "request"
            } else {
                "response"
            }
        ),
    }
}

/// Whether `path` looks like something `portico plugin inspect` can read.
pub fn is_wasm(path: &Path) -> bool {
    std::fs::read(path)
        .map(|b| b.starts_with(b"\0asm"))
        .unwrap_or(false)
}

#[allow(dead_code)]
fn _assert_send() {
    fn send<T: Send + Sync>() {}
    send::<ChainStream>();
    send::<PluginHost>();
    let _ = BytesMut::new();
}

#[cfg(test)]
mod tests;
