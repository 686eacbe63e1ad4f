//! State shared by every instance of the plugin in the process (all worker threads, and across
//! reloads): key-value data with compare-and-swap, an atomic counter, and queues.
//!
//! ```no_run
//! use portico_plugin_sdk::shared;
//! // Read, change, write back; retried when another instance wrote in between.
//! let hits = shared::update("hits", |old| {
//!     let n = old.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
//!     Some((n + 1).to_le_bytes().to_vec())
//! })?;
//! # Ok::<(), portico_plugin_sdk::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::sys;

/// A value and the compare-and-swap token to write it back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub cas: u32,
}

/// The value of `key`, or `None`.
pub fn get(key: &str) -> Result<Option<Entry>> {
    Ok(sys::get_shared(key)?.map(|(value, cas)| Entry { value, cas }))
}

/// Writes `key`. With `Some(cas)` the write happens only if nobody wrote since that read
/// (else [`Error::is_cas_mismatch`]); `None` writes unconditionally.
pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<()> {
    sys::set_shared(key, value, cas.unwrap_or(0))
}

/// Removes `key` if nobody wrote it since the read that gave `cas`. In Portico an empty value
/// written with a token removes the key; in other hosts the key stays, empty.
pub fn remove(key: &str, cas: u32) -> Result<()> {
    sys::set_shared(key, &[], cas.max(1))
}

/// Read-modify-write with compare-and-swap, retried on conflict (up to 64 times). `f` gets the
/// current value (`None` when absent) and returns the new one, or `None` to leave it as is.
/// Returns what was written. Exact once the key exists; the write that creates a key is
/// unconditional (Proxy-Wasm has no create-if-absent), so create contended keys up front.
pub fn update(
    key: &str,
    mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>> {
    for _ in 0..64 {
        let current = get(key)?;
        let Some(next) = f(current.as_ref().map(|e| e.value.as_slice())) else {
            return Ok(None);
        };
        // A present key is written back with its token, so a rival write in between makes this
        // one fail and retry. A missing key is written with token 0, which in Proxy-Wasm means
        // "unconditionally": two instances creating the same key at once can both succeed, and
        // one update is lost. Create keys up front (in `configure`) where that matters.
        match sys::set_shared(key, &next, current.map_or(0, |e| e.cas)) {
            Ok(()) => return Ok(Some(next)),
            Err(e) if e.is_cas_mismatch() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::new(format!(
        "shared data {key}: too much contention (64 conflicting writes)"
    )))
}

/// A process-wide atomic counter: Portico's `portico.counter_add` host function where it
/// exists (exact), a compare-and-swap loop over shared data elsewhere ([`update`]: exact once
/// the counter exists, its very first increments may race).
#[derive(Debug, Clone)]
pub struct Counter {
    key: String,
}

thread_local! {
    static NO_HOST_COUNTERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Forgets that the host lacked the counter functions (the test harness starts each host afresh).
#[cfg(all(not(target_arch = "wasm32"), feature = "testing"))]
pub(crate) fn reset() {
    NO_HOST_COUNTERS.with(|c| c.set(false));
}

impl Counter {
    pub fn new(key: impl Into<String>) -> Counter {
        Counter { key: key.into() }
    }

    /// Adds `delta` and returns the new value.
    pub fn add(&self, delta: i64) -> Result<i64> {
        if !NO_HOST_COUNTERS.with(|c| c.get()) {
            let mut args = Vec::with_capacity(8 + self.key.len());
            args.extend_from_slice(&delta.to_le_bytes());
            args.extend_from_slice(self.key.as_bytes());
            match sys::call_foreign("portico.counter_add", &args)? {
                Some(v) => return decode(&v),
                None => NO_HOST_COUNTERS.with(|c| c.set(true)),
            }
        }
        let key = format!("portico.counter.{}", self.key);
        let written = update(&key, |old| {
            let n = old.map(|b| decode(b).unwrap_or(0)).unwrap_or(0);
            Some(n.wrapping_add(delta).to_le_bytes().to_vec())
        })?;
        decode(&written.unwrap_or_default())
    }

    /// The current value (0 when never added to).
    pub fn get(&self) -> Result<i64> {
        if !NO_HOST_COUNTERS.with(|c| c.get()) {
            match sys::call_foreign("portico.counter_get", self.key.as_bytes())? {
                Some(v) => return decode(&v),
                None => NO_HOST_COUNTERS.with(|c| c.set(true)),
            }
        }
        match get(&format!("portico.counter.{}", self.key))? {
            Some(e) => decode(&e.value),
            None => Ok(0),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<i64> {
    bytes
        .try_into()
        .map(i64::from_le_bytes)
        .map_err(|_| Error::invalid("a counter is not 8 bytes"))
}

/// A shared queue this plugin registered: other plugins (or instances) enqueue, the owner gets
/// `Plugin::on_queue_ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue(pub u32);

impl Queue {
    /// Registers (or takes over) the queue `name`; call from a root hook.
    pub fn register(name: &str) -> Result<Queue> {
        sys::register_queue(name).map(Queue)
    }

    /// A queue another instance registered.
    pub fn resolve(name: &str) -> Result<Option<Queue>> {
        Ok(sys::resolve_queue(name)?.map(Queue))
    }

    pub fn enqueue(&self, item: &[u8]) -> Result<()> {
        sys::enqueue(self.0, item)
    }

    /// The oldest item, or `None` when empty.
    pub fn dequeue(&self) -> Result<Option<Vec<u8>>> {
        sys::dequeue(self.0)
    }
}
