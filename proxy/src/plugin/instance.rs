//! One live plugin instance: a wasmtime store, the guest's exports, and the host-side state its
//! hostcalls read and write ([`HostCtx`]). Every guest call goes through [`Instance::call`],
//! which arms the epoch deadline and turns traps, timeouts and memory-cap hits into a
//! [`Fault`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use wasmtime::{InstancePre, Memory, ResourceLimiter, Store, Trap, TypedFunc, WasmParams};

use super::engine::EPOCH_TICK;
use super::pool::Slot;
use super::{PluginSpec, StreamInfo};

/// The id of every instance's root context. Stream contexts count up from 2.
pub const ROOT_CONTEXT: u32 = 1;

/// How many of a plugin's most recent log lines are kept for error reports.
const RECENT_LOGS: usize = 20;

/// Why a guest call failed. The instance is unusable afterwards.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fault {
    /// The limit, and about how long the call had run when it was stopped.
    #[error("exceeded its time limit of {0:?} per call (stopped after about {1:?})")]
    Timeout(Duration, Duration),
    #[error("exceeded its memory limit of {0} bytes")]
    MemoryCap(u64),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("{0}")]
    Abi(String),
    /// A paused request or response that the plugin did not resume, answer or close in time.
    /// The instance is sound and keeps serving; only the stream fails.
    #[error("paused the {0} for longer than {1:?} without resuming it")]
    PauseTimeout(&'static str, Duration),
    /// Every instance is failing and waiting out its backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A fault while an instance starts, in the named phase, with what the plugin logged
    /// before it (a canary's failure is the operator's error message).
    /// Boxed: `Fault` travels in the `Result` of every guest call, so it stays small.
    #[error("{} failed: {}{}", .0.0, .0.1, .0.2)]
    Starting(Box<(&'static str, Fault, Logged)>),
}

/// The plugin's recent log lines, for an error message: empty, or `; the plugin logged: ...`.
#[derive(Debug, Clone, Default)]
pub struct Logged(String);

impl Logged {
    fn from(ctx: &mut HostCtx) -> Logged {
        super::abi::flush_output(ctx);
        if ctx.recent_logs.is_empty() {
            return Logged::default();
        }
        let lines: Vec<&str> = ctx.recent_logs.iter().map(String::as_str).collect();
        Logged(format!("; the plugin logged: {}", lines.join(" | ")))
    }
}

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Timeout(..) => "timeout",
            Fault::MemoryCap(_) => "memory",
            Fault::Trap(_) => "trap",
            Fault::Abi(_) => "abi",
            Fault::PauseTimeout(..) => "pause_timeout",
            Fault::Unavailable(_) => "unavailable",
            Fault::Starting(start) => start.1.kind(),
        }
    }
}

/// The memory-cap marker a [`ResourceLimiter`] denial carries out of the guest.
#[derive(Debug, thiserror::Error)]
#[error("memory limit reached")]
struct MemoryCapHit;

/// A request head as plugins see it: Envoy's pseudo-headers plus the regular fields.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub scheme: &'static str,
    pub authority: String,
    /// Path and query, as the upstream will receive them.
    pub path: String,
    pub headers: HeaderMap,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// A response a plugin asked for with `proxy_send_local_response`.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub details: String,
}

/// What happened to a stream while a callback ran; applied after the callback returns.
#[derive(Debug, Default)]
pub struct StreamEffects {
    /// Boxed, like every field of [`StreamState`] that most streams never use: the state is
    /// read on every callback of every plugin, and a small one stays in fewer cache lines.
    pub local_response: Option<Box<LocalResponse>>,
    pub resume_request: bool,
    pub resume_response: bool,
    pub close: bool,
}

/// One request's state inside one instance, from context creation to `on_delete`.
///
/// Every callback of every plugin finds its stream's state in the instance's map, between
/// requests of other connections that have long since pushed it out of the CPU's caches; under
/// load those misses cost more than the rest of the host's work on the callback. So the state
/// is kept small (two cache lines): the heads travel through the chain boxed (moving one from
/// plugin to plugin moves a pointer), and what most streams never use is boxed too.
#[derive(Debug)]
pub struct StreamState {
    pub info: Arc<StreamInfo>,
    pub request: Option<Box<RequestHead>>,
    pub request_trailers: Option<Box<HeaderMap>>,
    /// The body a body callback sees: what the previous plugin let through, kept as it came
    /// (a plugin that only looks costs no copy); see [`append_body`].
    pub request_body: Bytes,
    pub response: Option<Box<ResponseHead>>,
    /// The response status once the response phase has begun (`response.code`).
    pub response_status: Option<StatusCode>,
    pub response_trailers: Option<Box<HeaderMap>>,
    pub response_body: Bytes,
    pub effects: StreamEffects,
    /// Woken when `effects` changes outside the stream's own callbacks (a callout's answer, a
    /// tick, another context acting on this one). Made when the stream first pauses.
    pub wake: Option<Arc<tokio::sync::Notify>>,
    /// Properties the plugin set (`proxy_set_property`); made on the first.
    #[allow(
        clippy::box_collection,
        reason = "an empty map would take 48 bytes of every stream's state, the box takes 8"
    )]
    pub properties: Option<Box<HashMap<String, Bytes>>>,
    /// Cancelled when the stream's state goes (the stream ended, or its instance was
    /// discarded): the callouts it dispatched stop waiting for an answer nobody will read.
    /// Made at the first callout.
    pub ended: Option<tokio_util::sync::CancellationToken>,
    /// In `on_log`, `on_done` or `on_delete`: a callout dispatched now is the stream's last
    /// word (a log shipped, say) and is not tied to it.
    pub ending: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if let Some(ended) = &self.ended {
            ended.cancel();
        }
    }
}

impl StreamState {
    pub fn new(info: Arc<StreamInfo>) -> StreamState {
        StreamState {
            info,
            request: None,
            request_trailers: None,
            request_body: Bytes::new(),
            response: None,
            response_status: None,
            response_trailers: None,
            response_body: Bytes::new(),
            effects: StreamEffects::default(),
            wake: None,
            properties: None,
            ended: None,
            ending: false,
        }
    }
}

/// Appends `chunk` to a stream's body buffer. The first chunk becomes the buffer as it is; a
/// plugin that buffers (pauses while more arrives) gets one growing copy, extended in place
/// from then on, as a buffer this function made is not shared.
pub fn append_body(buf: &mut Bytes, chunk: Bytes) {
    if chunk.is_empty() {
        return;
    }
    if buf.is_empty() {
        *buf = chunk;
        return;
    }
    let mut joined = std::mem::take(buf).try_into_mut().unwrap_or_else(|shared| {
        let mut copy = BytesMut::with_capacity(shared.len() + chunk.len());
        copy.extend_from_slice(&shared);
        copy
    });
    joined.extend_from_slice(&chunk);
    *buf = joined.freeze();
}

/// An HTTP callout's answer, readable while `proxy_on_http_call_response` runs.
#[derive(Debug, Default)]
pub struct CalloutAnswer {
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(Bytes, Bytes)>,
}

/// A callout the guest asked for; the pool starts it after the callback returns.
#[derive(Debug)]
pub struct CalloutRequest {
    pub token: u32,
    pub context: u32,
    /// The dispatching stream's [`StreamState::ended`] (`None` from a root context).
    pub ended: Option<tokio_util::sync::CancellationToken>,
    pub upstream: String,
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub timeout: Duration,
}

/// Work a callback asked of the host that must wait until it returns.
#[derive(Debug, Default)]
pub struct Deferred {
    pub tick_period: Option<Duration>,
    pub callouts: Vec<CalloutRequest>,
    /// Queues that received an item: (owner, owner's root context, queue id).
    pub queue_ready: Vec<(Weak<Slot>, u32, u32)>,
}

/// Stream contexts by id. Ids are a counter, so they hash as themselves: every hostcall looks
/// its context up here, and SipHash would cost more than the rest of the lookup.
pub type Streams = HashMap<u32, StreamState, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Spread the bits a little so hashbrown's top-7-bit control bytes differ.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Host-side state of one instance.
pub struct HostCtx {
    pub spec: Arc<PluginSpec>,
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<u32, u32>>,
    pub limiter: MemoryLimiter,
    pub streams: Streams,
    /// The context hostcalls act on (`proxy_set_effective_context` changes it).
    pub effective: u32,
    pub callout: Option<CalloutAnswer>,
    pub deferred: Deferred,
    pub next_token: u32,
    pub tick_period: Option<Duration>,
    /// The slot this instance lives in, for queue registrations.
    pub slot: Weak<Slot>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub recent_logs: VecDeque<String>,
    /// Buffer handed to `proxy_on_foreign_function` / returned by a foreign function.
    pub call_data: Bytes,
    /// Epoch ticks the running guest call has seen, and when it saw the first: its deadline
    /// is measured on the clock from there, so a ticker that runs late stretches it by one
    /// late tick, not by the sum of them.
    pub ticks_used: u64,
    pub first_tick: Option<Instant>,
}

impl HostCtx {
    /// Keeps a log line for error reports (a failed canary shows the plugin's own words).
    pub fn remember_log(&mut self, line: String) {
        if self.recent_logs.len() == RECENT_LOGS {
            self.recent_logs.pop_front();
        }
        self.recent_logs.push_back(line);
    }

    pub fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective)
    }
}

pub struct MemoryLimiter {
    pub max: u64,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max {
            return Err(wasmtime::Error::new(MemoryCapHit));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
pub type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The guest's exports that the host calls. Optional ones are skipped when absent.
pub struct Exports {
    pub on_context_create: TypedFunc<(u32, u32), ()>,
    pub on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    pub on_configure: Option<TypedFunc<(u32, u32), u32>>,
    pub on_request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub on_response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub on_log: Option<TypedFunc<u32, ()>>,
    pub on_done: Option<TypedFunc<u32, u32>>,
    pub on_delete: Option<TypedFunc<u32, ()>>,
    pub on_tick: Option<TypedFunc<u32, ()>>,
    pub on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    pub on_http_call_response: Option<CallResponseFn>,
}

pub struct Instance {
    pub store: Store<HostCtx>,
    pub exports: Exports,
    next_context: u32,
}

impl Instance {
    /// Instantiates the module and runs the start-up sequence: `_initialize`, the root context,
    /// `on_vm_start`, `on_configure`. A `false` from either of the last two is an error that
    /// carries the plugin's recent log lines.
    pub fn start(
        pre: &InstancePre<HostCtx>,
        spec: &Arc<PluginSpec>,
        slot: Weak<Slot>,
    ) -> Result<Instance, Fault> {
        let engine = pre.module().engine();
        let ctx = HostCtx {
            spec: spec.clone(),
            memory: None,
            malloc: None,
            limiter: MemoryLimiter {
                max: spec.limits.memory,
            },
            streams: Streams::default(),
            effective: ROOT_CONTEXT,
            callout: None,
            deferred: Deferred::default(),
            next_token: 0,
            tick_period: None,
            slot,
            stdout: Vec::new(),
            stderr: Vec::new(),
            recent_logs: VecDeque::new(),
            call_data: Bytes::new(),
            ticks_used: 0,
            first_tick: None,
        };
        let mut store = Store::new(engine, ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        // The deadline is checked one tick at a time, so that a call that runs long can let
        // the runtime know (see `engine::long_call`) well before it is stopped.
        // Calls shorter than a tick (nearly all) never get here and never read the clock.
        store.epoch_deadline_callback(|mut ctx| {
            let data = ctx.data_mut();
            data.ticks_used += 1;
            if data.ticks_used == 2 {
                data.spec.host.long_call();
            }
            let first = *data.first_tick.get_or_insert_with(Instant::now);
            if first.elapsed() >= data.spec.limits.time_per_call {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });
        store.data_mut().ticks_used = 0;
        store.data_mut().first_tick = None;
        store.set_epoch_deadline(1);
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Fault::Abi("the module exports no memory".into()))?;
        let malloc = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .map_err(|_| Fault::Abi("the module exports no proxy_on_memory_allocate".into()))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().malloc = Some(malloc);

        macro_rules! typed {
            ($name:literal) => {
                match instance.get_func(&mut store, $name) {
                    Some(f) => Some(f.typed(&store).map_err(|e| {
                        Fault::Abi(format!("export {} has the wrong signature: {e}", $name))
                    })?),
                    None => None,
                }
            };
        }
        let exports = Exports {
            on_context_create: typed!("proxy_on_context_create").ok_or_else(|| {
                Fault::Abi("the module exports no proxy_on_context_create".into())
            })?,
            on_vm_start: typed!("proxy_on_vm_start"),
            on_configure: typed!("proxy_on_configure"),
            on_request_headers: typed!("proxy_on_request_headers"),
            on_request_body: typed!("proxy_on_request_body"),
            on_request_trailers: typed!("proxy_on_request_trailers"),
            on_response_headers: typed!("proxy_on_response_headers"),
            on_response_body: typed!("proxy_on_response_body"),
            on_response_trailers: typed!("proxy_on_response_trailers"),
            on_log: typed!("proxy_on_log"),
            on_done: typed!("proxy_on_done"),
            on_delete: typed!("proxy_on_delete"),
            on_tick: typed!("proxy_on_tick"),
            on_queue_ready: typed!("proxy_on_queue_ready"),
            on_http_call_response: typed!("proxy_on_http_call_response"),
        };
        let init: Option<TypedFunc<(), ()>> = match typed!("_initialize") {
            Some(f) => Some(f),
            None => typed!("_start"),
        };
        let mut inst = Instance {
            store,
            exports,
            next_context: ROOT_CONTEXT + 1,
        };
        if let Some(init) = init {
            let result = invoke(&mut inst.store, &init, ());
            inst.starting("_initialize", result)?;
        }
        inst.store.data_mut().effective = ROOT_CONTEXT;
        let result = inst.call(|e| Some(&e.on_context_create), (ROOT_CONTEXT, 0));
        inst.starting("proxy_on_context_create", result)?;
        let vm_config_len = spec.vm_config.len() as u32;
        let result = inst.call(|e| e.on_vm_start.as_ref(), (ROOT_CONTEXT, vm_config_len));
        if inst.starting("on_vm_start", result)? == Some(0) {
            return Err(inst.refusal("on_vm_start"));
        }
        let config_len = spec.config.len() as u32;
        let result = inst.call(|e| e.on_configure.as_ref(), (ROOT_CONTEXT, config_len));
        if inst.starting("on_configure", result)? == Some(0) {
            return Err(inst.refusal("on_configure"));
        }
        Ok(inst)
    }

    /// A start-up call's fault, named by its phase and with the plugin's log lines.
    fn starting<T>(&mut self, phase: &'static str, result: Result<T, Fault>) -> Result<T, Fault> {
        result.map_err(|fault| {
            Fault::Starting(Box::new((
                phase,
                fault,
                Logged::from(self.store.data_mut()),
            )))
        })
    }

    fn refusal(&mut self, phase: &str) -> Fault {
        let logged = Logged::from(self.store.data_mut());
        Fault::Abi(format!("{phase} returned false{logged}"))
    }

    /// Calls a guest export under the plugin's deadline; `Ok(None)` when the module does not
    /// export it. The export is borrowed, never cloned: a `TypedFunc` clone costs reference
    /// counting in wasmtime's type registry, which showed in profiles.
    pub fn call<P: WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        pick: impl FnOnce(&Exports) -> Option<&TypedFunc<P, R>>,
        args: P,
    ) -> Result<Option<R>, Fault> {
        match pick(&self.exports) {
            Some(f) => invoke(&mut self.store, f, args).map(Some),
            None => Ok(None),
        }
    }

    /// Creates a stream context for a request.
    pub fn create_stream(&mut self, info: Arc<StreamInfo>) -> Result<u32, Fault> {
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT_CONTEXT + 1);
        let ctx = self.store.data_mut();
        ctx.streams.insert(id, StreamState::new(info));
        ctx.effective = id;
        self.call(|e| Some(&e.on_context_create), (id, ROOT_CONTEXT))?;
        Ok(id)
    }

    /// `on_log`, `on_done`, `on_delete`, then the stream's state is gone.
    pub fn end_stream(&mut self, id: u32) -> Result<(), Fault> {
        if !self.store.data().streams.contains_key(&id) {
            return Ok(());
        }
        self.store.data_mut().effective = id;
        if let Some(state) = self.store.data_mut().streams.get_mut(&id) {
            state.ending = true;
        }
        let result = (|| {
            self.call(|e| e.on_log.as_ref(), id)?;
            self.call(|e| e.on_done.as_ref(), id)?;
            self.call(|e| e.on_delete.as_ref(), id)?;
            Ok(())
        })();
        self.store.data_mut().streams.remove(&id);
        result
    }
}

/// One guest call under the deadline, counted tick by tick by the store's epoch callback.
fn invoke<P: WasmParams, R: wasmtime::WasmResults>(
    store: &mut Store<HostCtx>,
    f: &TypedFunc<P, R>,
    args: P,
) -> Result<R, Fault> {
    store.data_mut().ticks_used = 0;
    store.data_mut().first_tick = None;
    store.set_epoch_deadline(1);
    let result = f.call(&mut *store, args);
    super::abi::flush_output(store.data_mut());
    result.map_err(|e| classify(e, store))
}

fn classify(e: wasmtime::Error, store: &Store<HostCtx>) -> Fault {
    let limits = &store.data().spec.limits;
    if e.is::<MemoryCapHit>() {
        return Fault::MemoryCap(limits.memory);
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            // The call began at most a tick before the first tick it saw.
            let ran = store
                .data()
                .first_tick
                .map_or(Duration::ZERO, |t| t.elapsed() + EPOCH_TICK);
            let ran = Duration::from_millis(ran.as_millis() as u64);
            return Fault::Timeout(limits.time_per_call, ran);
        }
        // A Rust guest prints its panic message to stderr just before it aborts.
        if let Some(last) = store.data().recent_logs.back() {
            return Fault::Trap(format!("{trap} (last output: {last})"));
        }
        return Fault::Trap(trap.to_string());
    }
    Fault::Trap(format!("{e:#}"))
}

#[cfg(test)]
mod size_tests {
    /// `Fault` is in the `Result` of every guest call: keep it two words and a tag or so.
    /// The first chunk is kept as it came (no copy), empty chunks change nothing, and later
    /// chunks are appended in order.
    #[test]
    fn a_body_buffer_keeps_its_first_chunk_and_grows_in_place() {
        let first = bytes::Bytes::from_static(b"hello ");
        let mut buf = bytes::Bytes::new();
        super::append_body(&mut buf, first.clone());
        assert_eq!(
            buf.as_ptr(),
            first.as_ptr(),
            "the first chunk is not copied"
        );
        super::append_body(&mut buf, bytes::Bytes::new());
        assert_eq!(
            buf.as_ptr(),
            first.as_ptr(),
            "an empty chunk changes nothing"
        );
        super::append_body(&mut buf, bytes::Bytes::from_static(b"big "));
        super::append_body(&mut buf, bytes::Bytes::from_static(b"world"));
        assert_eq!(&buf[..], b"hello big world");
        assert_eq!(&first[..], b"hello ", "the chunk it came from is untouched");
    }

    #[test]
    fn a_fault_stays_small() {
        assert!(std::mem::size_of::<super::Fault>() <= 40);
    }
}
