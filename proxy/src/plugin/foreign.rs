//! Host functions reachable through `proxy_call_foreign_function`: native services that are
//! faster or more exact than anything a guest can do alone, offered without adding imports, so
//! plugins that use them still load in other Proxy-Wasm hosts (where the call answers
//! `NotFound` and the plugin falls back).
//!
//! | name | arguments | result |
//! |---|---|---|
//! | `portico.counter_add` | 8-byte LE `i64` delta, then the key | the new value, 8-byte LE `i64` |
//! | `portico.counter_get` | the key | the value, 8-byte LE `i64` (0 when unknown) |
//! | `portico.verify_signature` | `u8` len + JWS `alg`, `u32` LE len + key, `u32` LE len + message, then the signature | 1 byte: 1 valid, 0 invalid (key encodings in foreign/verify.rs) |
//!
//! Counters are process-wide and scoped by plugin name, like shared data; each plugin may hold
//! up to 100,000 (past that, `counter_add` of a new key fails with `InternalFailure`), so one
//! plugin keying counters per client cannot exhaust them for the others. A key is at most 256
//! bytes (`BadArgument` past that).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use super::PluginSpec;

mod verify;

pub use verify::KeyCache;

/// Why a foreign function refused its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    BadArgument,
    Internal,
}

pub type Function = fn(&PluginSpec, &[u8]) -> Result<Vec<u8>, Error>;

/// Counters per plugin; capped so a flood of keys cannot grow the process without bound.
const MAX_COUNTERS: usize = 100_000;
/// Bytes of one counter's key: counters live as long as the process.
const MAX_COUNTER_KEY: usize = 256;

/// The registry: names and their functions.
pub const FUNCTIONS: &[(&str, Function)] = &[
    ("portico.counter_add", counter_add),
    ("portico.counter_get", counter_get),
    ("portico.verify_signature", verify_signature),
];

/// The function called `name`, if `allowed` lets the plugin call it.
pub fn lookup(name: &str, allowed: Allowed) -> Option<Function> {
    FUNCTIONS
        .iter()
        .position(|(n, _)| *n == name)
        .filter(|&i| allowed.0 & (1 << i) != 0)
        .map(|i| FUNCTIONS[i].1)
}

/// Which of [`FUNCTIONS`] a plugin may call (a plugin's `foreign_functions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allowed(u32);

impl Default for Allowed {
    /// All of them.
    fn default() -> Allowed {
        Allowed((1 << FUNCTIONS.len()) - 1)
    }
}

impl Allowed {
    pub const NONE: Allowed = Allowed(0);

    /// `self` and the function `name`; `None` when Portico has no such function.
    pub fn with(self, name: &str) -> Option<Allowed> {
        let i = FUNCTIONS.iter().position(|(n, _)| *n == name)?;
        Some(Allowed(self.0 | (1 << i)))
    }

    /// The names allowed, in registry order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        FUNCTIONS
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, (n, _))| *n)
    }
}

/// plugin → key → counter.
type CounterMap = HashMap<String, HashMap<Vec<u8>, std::sync::Arc<AtomicI64>>>;

#[derive(Default)]
pub struct Counters(Mutex<CounterMap>);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    fn get(&self, scope: &str, key: &[u8], create: bool) -> Option<std::sync::Arc<AtomicI64>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up by reference: no allocation for a counter that exists.
        if let Some(c) = map.get(scope).and_then(|keys| keys.get(key)) {
            return Some(c.clone());
        }
        if !create {
            return None;
        }
        let keys = map.entry(scope.to_string()).or_default();
        if keys.len() >= MAX_COUNTERS {
            return None;
        }
        Some(keys.entry(key.to_vec()).or_default().clone())
    }
}

fn counter_add(spec: &PluginSpec, args: &[u8]) -> Result<Vec<u8>, Error> {
    let (delta, key) = args.split_at_checked(8).ok_or(Error::BadArgument)?;
    if key.len() > MAX_COUNTER_KEY {
        return Err(Error::BadArgument);
    }
    let delta = i64::from_le_bytes(delta.try_into().map_err(|_| Error::BadArgument)?);
    let counter = spec
        .host
        .counters
        .get(&spec.name, key, true)
        .ok_or(Error::Internal)?;
    let value = counter
        .fetch_add(delta, Ordering::AcqRel)
        .wrapping_add(delta);
    Ok(value.to_le_bytes().to_vec())
}

fn counter_get(spec: &PluginSpec, key: &[u8]) -> Result<Vec<u8>, Error> {
    let value = spec
        .host
        .counters
        .get(&spec.name, key, false)
        .map(|c| c.load(Ordering::Acquire))
        .unwrap_or(0);
    Ok(value.to_le_bytes().to_vec())
}

fn verify_signature(spec: &PluginSpec, args: &[u8]) -> Result<Vec<u8>, Error> {
    verify::verify_signature(&spec.host.keys, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_capped_per_plugin_not_per_process() {
        let c = Counters::default();
        for i in 0..MAX_COUNTERS as u32 {
            assert!(c.get("greedy", &i.to_le_bytes(), true).is_some());
        }
        assert!(c.get("greedy", b"one more", true).is_none(), "capped");
        assert!(
            c.get("greedy", &0u32.to_le_bytes(), true).is_some(),
            "existing still work"
        );
        assert!(
            c.get("other", b"k", true).is_some(),
            "another plugin is not starved"
        );
        assert!(
            c.get("other", b"absent", false).is_none(),
            "get never creates"
        );
    }
}
