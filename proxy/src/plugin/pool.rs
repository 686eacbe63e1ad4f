//! A plugin's instances: a few long-lived slots (about one per worker thread), each holding one
//! [`Instance`] behind an async mutex that is held only while a guest callback runs, never
//! across an `.await`. A slot whose instance failed is rebuilt on next use, with exponential
//! backoff while it keeps failing. Work a callback deferred — ticks, callouts, queue
//! notifications — runs here, after the callback has returned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::InstancePre;

use super::PluginSpec;
use super::instance::{
    CalloutAnswer, CalloutRequest, Deferred, Fault, HostCtx, Instance, ROOT_CONTEXT,
};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub struct Pool {
    pub slots: Box<[Arc<Slot>]>,
    /// Which body phases the module exports callbacks for; a direction no plugin of a chain
    /// handles is not filtered at all.
    pub body_hooks: BodyHooks,
    /// Which header phases it has callbacks for; the chain passes over it in the others.
    pub head_hooks: HeadHooks,
}

/// Whether a module has a use for a header phase. The response phase also counts when the
/// module exports `proxy_on_log` or `proxy_on_done`: those read the response status.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadHooks {
    pub request: bool,
    pub response: bool,
}

/// Whether a module exports body or trailer callbacks, per direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyHooks {
    pub request: bool,
    pub response: bool,
}

pub struct Slot {
    pub spec: Arc<PluginSpec>,
    pre: InstancePre<HostCtx>,
    pub state: SlotLock,
    ticker: Mutex<Option<tokio::task::AbortHandle>>,
}

pub struct SlotState {
    pub instance: Option<Instance>,
    pub generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
}

/// The lock around a slot's instance: a plain mutex, held only while a callback runs, that an
/// async task can wait for. Uncontended, a lock and unlock are two atomic operations (tokio's
/// async mutex costs a semaphore round trip and an internal lock on every release, which
/// showed in profiles: a request through four plugins takes this lock about twenty times).
pub struct SlotLock {
    state: std::sync::Mutex<SlotState>,
    waiters: std::sync::atomic::AtomicUsize,
    released: tokio::sync::Notify,
}

pub struct SlotGuard<'a> {
    guard: Option<std::sync::MutexGuard<'a, SlotState>>,
    lock: &'a SlotLock,
}

impl SlotLock {
    fn new(state: SlotState) -> SlotLock {
        SlotLock {
            state: std::sync::Mutex::new(state),
            waiters: std::sync::atomic::AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
        }
    }

    pub fn try_lock(&self) -> Result<SlotGuard<'_>, ()> {
        match self.state.try_lock() {
            Ok(guard) => Ok(self.guard(guard)),
            Err(std::sync::TryLockError::Poisoned(e)) => Ok(self.guard(e.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => Err(()),
        }
    }

    /// Waits (asynchronously) until the lock is free.
    pub async fn lock(&self) -> SlotGuard<'_> {
        loop {
            if let Ok(guard) = self.try_lock() {
                return guard;
            }
            // Counted while waiting, also when the waiting future is dropped.
            struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&self.waiters);
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the second look, so a release in between is not missed.
            released.as_mut().enable();
            if let Ok(guard) = self.try_lock() {
                return guard;
            }
            released.await;
        }
    }

    fn guard<'a>(&'a self, guard: std::sync::MutexGuard<'a, SlotState>) -> SlotGuard<'a> {
        SlotGuard {
            guard: Some(guard),
            lock: self,
        }
    }
}

impl std::ops::Deref for SlotGuard<'_> {
    type Target = SlotState;
    fn deref(&self) -> &SlotState {
        self.guard.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for SlotGuard<'_> {
    fn deref_mut(&mut self) -> &mut SlotState {
        self.guard.as_mut().expect("held until drop")
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.lock.waiters.load(Ordering::SeqCst) > 0 {
            self.lock.released.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.get_mut().ok().and_then(|t| t.take()) {
            t.abort();
        }
    }
}

impl Pool {
    /// Starts `n` instances. The first is the canary: its failure is the caller's error.
    pub fn start(
        spec: &Arc<PluginSpec>,
        pre: InstancePre<HostCtx>,
        n: usize,
    ) -> Result<Pool, Fault> {
        let mut slots = Vec::with_capacity(n);
        let mut body_hooks = BodyHooks::default();
        let mut head_hooks = HeadHooks::default();
        for _ in 0..n.max(1) {
            let slot = Arc::new(Slot {
                spec: spec.clone(),
                pre: pre.clone(),
                state: SlotLock::new(SlotState {
                    instance: None,
                    generation: 0,
                    failures: 0,
                    retry_at: None,
                }),
                ticker: Mutex::new(None),
            });
            let mut instance = Instance::start(&pre, spec, Arc::downgrade(&slot))?;
            let e = &instance.exports;
            body_hooks = BodyHooks {
                request: e.on_request_body.is_some() || e.on_request_trailers.is_some(),
                response: e.on_response_body.is_some() || e.on_response_trailers.is_some(),
            };
            head_hooks = HeadHooks {
                request: e.on_request_headers.is_some(),
                response: e.on_response_headers.is_some()
                    || e.on_log.is_some()
                    || e.on_done.is_some(),
            };
            let deferred = std::mem::take(&mut instance.store.data_mut().deferred);
            slot.state
                .try_lock()
                .expect("a new slot is not shared yet")
                .instance = Some(instance);
            slot.after(0, deferred);
            slots.push(slot);
        }
        Ok(Pool {
            slots: slots.into_boxed_slice(),
            body_hooks,
            head_hooks,
        })
    }

    pub fn module(&self) -> &wasmtime::Module {
        self.slots[0].pre.module()
    }

    /// Binds a new stream: on the slot [`Pool::pick`] chooses, or, while that one waits out a
    /// backoff, on the next that can take it.
    pub async fn bind(
        &self,
        info: &Arc<super::StreamInfo>,
    ) -> (Arc<Slot>, Result<(u32, u64), Fault>) {
        let first = self.pick().clone();
        let mut result = first
            .with(None, |inst| inst.create_stream(info.clone()))
            .await;
        if !matches!(result, Err(Fault::Unavailable(_))) {
            return (first, result);
        }
        for slot in self.slots.iter().filter(|s| !Arc::ptr_eq(s, &first)) {
            result = slot
                .with(None, |inst| inst.create_stream(info.clone()))
                .await;
            if !matches!(result, Err(Fault::Unavailable(_))) {
                return (slot.clone(), result);
            }
        }
        (first, result)
    }

    /// The slot for a new stream: an idle one if there is one, else the next in turn. The search
    /// starts at the calling thread's own slot, so a worker keeps using one instance (its memory
    /// stays in that core's caches) and threads do not contend on a shared counter; a thread
    /// whose slot is busy moves on to the next.
    pub fn pick(&self) -> &Arc<Slot> {
        let n = self.slots.len();
        let start = thread_index();
        for i in 0..n {
            let slot = &self.slots[(start + i) % n];
            if let Ok(state) = slot.state.try_lock()
                && state.usable()
            {
                return slot;
            }
        }
        &self.slots[start % n]
    }
}

/// A small number per thread, handed out once: threads spread over a pool's slots, each starting
/// its search at its own.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }
    INDEX.with(|i| match i.get() {
        Some(v) => v,
        None => {
            let v = NEXT.fetch_add(1, Ordering::Relaxed);
            i.set(Some(v));
            v
        }
    })
}

impl SlotState {
    fn usable(&self) -> bool {
        self.instance.is_some() || self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// Failed, and waiting out its backoff before the next rebuild.
    pub fn backing_off(&self) -> bool {
        self.instance.is_none() && self.retry_at.is_some_and(|t| Instant::now() < t)
    }
}

impl Slot {
    /// Runs `f` on this slot's live instance (rebuilding it if it failed earlier and its
    /// backoff has passed). `generation`, when given, must still be the instance's: a stream
    /// bound to a discarded instance cannot continue on its replacement.
    pub async fn with<T>(
        self: &Arc<Self>,
        generation: Option<u64>,
        f: impl FnOnce(&mut Instance) -> Result<T, Fault>,
    ) -> Result<(T, u64), Fault> {
        // Waiting is rare (another thread is in this instance): its state is boxed, so that
        // every callback's future stays small.
        let mut state = if let Ok(state) = self.state.try_lock() {
            state
        } else {
            Box::pin(self.state.lock()).await
        };
        if state.instance.is_none() {
            if generation.is_some() {
                return Err(Fault::Abi(
                    "the instance this request was bound to failed during another request".into(),
                ));
            }
            self.rebuild(&mut state)?;
        }
        if let Some(g) = generation
            && g != state.generation
        {
            return Err(Fault::Abi(
                "the instance this request was bound to failed during another request".into(),
            ));
        }
        let generation = state.generation;
        let instance = state.instance.as_mut().expect("rebuilt above");
        match f(instance) {
            Ok(v) => {
                let deferred = std::mem::take(&mut instance.store.data_mut().deferred);
                drop(state);
                self.after(generation, deferred);
                Ok((v, generation))
            }
            Err(fault) => {
                self.discard(&mut state, &fault);
                Err(fault)
            }
        }
    }

    /// Ends stream `ctx` (`on_log`, `on_done`, `on_delete`) on the instance it was bound to,
    /// if that is still the live one, without waiting: `false` when the slot is busy.
    pub fn try_end_stream(self: &Arc<Self>, generation: u64, ctx: u32) -> bool {
        let Ok(mut state) = self.state.try_lock() else {
            return false;
        };
        let deferred = self.end_stream(&mut state, generation, ctx);
        drop(state);
        self.after(generation, deferred);
        true
    }

    /// [`Slot::try_end_stream`], waiting for the slot.
    pub async fn end_stream_later(self: &Arc<Self>, generation: u64, ctx: u32) {
        let mut state = self.state.lock().await;
        let deferred = self.end_stream(&mut state, generation, ctx);
        drop(state);
        self.after(generation, deferred);
    }

    /// A stream that ends on the instance it was bound to met no fault there (a fault discards
    /// the instance): that, and only that, ends a failure streak. A successful callback does
    /// not, since a rebuilt instance's `on_context_create` succeeds even when the plugin fails
    /// every request right after it, and the streak would never reach its backoff.
    ///
    /// Returns what the end-of-stream callbacks asked for (a callout or a queue notification
    /// from `on_log`, say), for [`Slot::after`] once the slot is unlocked.
    fn end_stream(&self, state: &mut SlotState, generation: u64, ctx: u32) -> Deferred {
        if state.generation != generation {
            return Deferred::default();
        }
        let Some(instance) = state.instance.as_mut() else {
            return Deferred::default();
        };
        match instance.end_stream(ctx) {
            Ok(()) => {
                state.failures = 0;
                std::mem::take(&mut instance.store.data_mut().deferred)
            }
            Err(fault) => {
                self.discard(state, &fault);
                Deferred::default()
            }
        }
    }

    fn rebuild(self: &Arc<Self>, state: &mut SlotState) -> Result<(), Fault> {
        if let Some(t) = state.retry_at
            && Instant::now() < t
        {
            return Err(Fault::Unavailable(format!(
                "the instance failed; next attempt in {:?}",
                t - Instant::now()
            )));
        }
        self.spec
            .host
            .metrics_raw
            .plugin_instances_rebuilt
            .with_label_values(&[self.spec.name.as_str()])
            .inc();
        match Instance::start(&self.pre, &self.spec, Arc::downgrade(self)) {
            Ok(mut instance) => {
                let deferred = std::mem::take(&mut instance.store.data_mut().deferred);
                state.instance = Some(instance);
                state.generation += 1;
                state.retry_at = None;
                self.after(state.generation, deferred);
                Ok(())
            }
            Err(fault) => {
                self.discard(state, &fault);
                Err(fault)
            }
        }
    }

    /// Throws the instance away after a fault and schedules its rebuild: on next use after the
    /// first fault of a streak, with exponential backoff from the second on (a rebuild that
    /// fails, or faults with no stream ending cleanly between them).
    fn discard(&self, state: &mut SlotState, fault: &Fault) {
        if let Some(instance) = state.instance.take() {
            // Streams paused on this instance wait for a resume that can no longer come: wake
            // them, so that they find their instance gone and fail now (by their plugin's
            // `on_error`) rather than at their pause timeout.
            for stream in instance.store.data().streams.values() {
                if let Some(wake) = &stream.wake {
                    wake.notify_one();
                }
            }
        }
        state.generation += 1;
        state.failures = state.failures.saturating_add(1);
        state.retry_at = (state.failures > 1).then(|| {
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << (state.failures - 2).min(16))
                .min(BACKOFF_MAX);
            Instant::now() + backoff
        });
        if let Ok(mut t) = self.ticker.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
        self.spec.host.record_failure(&self.spec.name, fault);
    }

    /// Starts what a callback of the instance of `generation` deferred.
    fn after(self: &Arc<Self>, generation: u64, deferred: Deferred) {
        let Deferred {
            tick_period,
            callouts,
            queue_ready,
        } = deferred;
        if tick_period.is_none() && callouts.is_empty() && queue_ready.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // `portico check`: nothing runs after start-up.
            return;
        };
        if let Some(period) = tick_period {
            self.set_ticker(&rt, period);
        }
        for callout in callouts {
            let slot = self.clone();
            self.spec.callouts_inflight.fetch_add(1, Ordering::AcqRel);
            rt.spawn(async move { slot.callout(generation, callout).await });
        }
        for (owner, root, queue) in queue_ready {
            rt.spawn(async move {
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                let _ = owner
                    .with(None, |inst| {
                        inst.store.data_mut().effective = root;
                        inst.call(|e| e.on_queue_ready.as_ref(), (root, queue))
                    })
                    .await;
            });
        }
    }

    fn set_ticker(self: &Arc<Self>, rt: &tokio::runtime::Handle, period: Duration) {
        let mut ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = ticker.take() {
            t.abort();
        }
        if period.is_zero() {
            return;
        }
        let weak: Weak<Slot> = Arc::downgrade(self);
        let task = rt.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(slot) = weak.upgrade() else {
                    return;
                };
                let ticked = slot
                    .with(None, |inst| {
                        inst.store.data_mut().effective = ROOT_CONTEXT;
                        inst.call(|e| e.on_tick.as_ref(), ROOT_CONTEXT)
                    })
                    .await;
                if ticked.is_err() {
                    // The rebuilt instance sets its own period in on_vm_start.
                    return;
                }
            }
        });
        *ticker = Some(task.abort_handle());
    }

    /// Sends a callout of the instance of `generation` and hands it the answer. If that
    /// instance has been discarded meanwhile, the answer is dropped: its replacement numbers
    /// contexts and tokens afresh, so the answer would reach whichever of its requests now has
    /// the same ids (another request's authorization, say).
    async fn callout(self: Arc<Self>, generation: u64, req: CalloutRequest) {
        let spec = self.spec.clone();
        let context = req.context;
        let token = req.token;
        let ended = req.ended.clone();
        let send = tokio::time::timeout(req.timeout, send_callout(&spec, req));
        let answer = match ended {
            // A stream's callout ends with the stream: its answer would have no one to go to,
            // and it would hold one of the plugin's in-flight callouts until its timeout.
            Some(ended) => tokio::select! {
                biased;
                _ = ended.cancelled() => {
                    spec.callouts_inflight.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                answer = send => answer,
            },
            None => send.await,
        };
        spec.callouts_inflight.fetch_sub(1, Ordering::AcqRel);
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                tracing::warn!(target: "portico::plugin", plugin = %spec.name, "callout failed: {reason}");
                CalloutAnswer::default()
            }
            Err(_) => {
                tracing::warn!(target: "portico::plugin", plugin = %spec.name, "callout timed out");
                CalloutAnswer::default()
            }
        };
        let _ = self
            .with(Some(generation), |inst| {
                let ctx = inst.store.data_mut();
                // The stream it belonged to is gone: nobody to tell.
                if context != ROOT_CONTEXT && !ctx.streams.contains_key(&context) {
                    return Ok(());
                }
                let (nh, nb, nt) = (
                    answer.headers.len() as u32,
                    answer.body.len() as u32,
                    answer.trailers.len() as u32,
                );
                let ctx = inst.store.data_mut();
                ctx.callout = Some(answer);
                ctx.effective = context;
                let result = inst.call(
                    |e| e.on_http_call_response.as_ref(),
                    (context, token, nh, nb, nt),
                );
                inst.store.data_mut().callout = None;
                result.map(drop)
            })
            .await;
    }
}

/// Sends a callout through the upstream's pooled client; the answer's headers start with
/// `:status`, as Envoy presents them.
async fn send_callout(spec: &PluginSpec, req: CalloutRequest) -> Result<CalloutAnswer, String> {
    let upstream = spec
        .upstreams
        .get(&req.upstream)
        .ok_or_else(|| format!("no upstream {}", req.upstream))?
        .clone();
    let mut builder = http::Request::builder();
    let mut path = "/".to_string();
    for (k, v) in &req.headers {
        match &k[..] {
            b":method" => builder = builder.method(&v[..]),
            b":path" => path = String::from_utf8_lossy(v).into_owned(),
            b":authority" => builder = builder.header(http::header::HOST, &v[..]),
            b":scheme" => {}
            _ => builder = builder.header(&k[..], &v[..]),
        }
    }
    let request = builder
        .uri(path)
        .body(crate::body::full(req.body))
        .map_err(|e| format!("invalid callout request: {e}"))?;
    let response = upstream.send(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    // Plugins read header values as text (the reference SDK panics on other bytes): an answer
    // they could not read is a failed callout.
    if let Some(name) = super::non_utf8(&parts.headers) {
        return Err(format!("the answer's header {name} is not valid UTF-8"));
    }
    let cap = spec.limits.callout_bytes as usize;
    let limited = http_body_util::Limited::new(body, cap);
    let collected = limited
        .collect()
        .await
        .map_err(|e| format!("callout response body: {e}"))?;
    let trailers = collected.trailers().cloned();
    if let Some(name) = trailers.as_ref().and_then(super::non_utf8) {
        return Err(format!("the answer's trailer {name} is not valid UTF-8"));
    }
    let body: Bytes = collected.to_bytes();
    let mut headers = vec![(
        Bytes::from_static(b":status"),
        Bytes::copy_from_slice(parts.status.as_str().as_bytes()),
    )];
    for (k, v) in parts.headers.iter() {
        headers.push((
            Bytes::copy_from_slice(k.as_str().as_bytes()),
            Bytes::copy_from_slice(v.as_bytes()),
        ));
    }
    let trailers = trailers
        .map(|t| {
            t.iter()
                .map(|(k, v)| {
                    (
                        Bytes::copy_from_slice(k.as_str().as_bytes()),
                        Bytes::copy_from_slice(v.as_bytes()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CalloutAnswer {
        headers,
        body,
        trailers,
    })
}
