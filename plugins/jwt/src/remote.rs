//! The remote JWKS: one copy and one fetch for the whole process.
//!
//! Every instance of the plugin (about one per CPU) runs this, but they share two keys of
//! shared data, named after the JWKS's location:
//!
//! - `jwt.jwks.<id>`: the last good document, after the time it was fetched (8 bytes, LE
//!   nanoseconds). An instance that sees a newer one than its own parses it and takes its keys.
//! - `jwt.fetch.<id>`: a small record taken by compare-and-swap — whether a fetch is in flight
//!   (and until when it counts as alive), when the last refetch for an unknown `kid` started,
//!   and when a failed fetch may be retried. Whoever writes "in flight" first fetches; the
//!   others wait for its result to show up in the document. The record is created in
//!   `configure` ([`RemoteKeys::create`]), before any request or tick: Proxy-Wasm has no
//!   create-if-absent, so the write that creates a key is unconditional, and two instances that
//!   both found it missing would both win. Every later write is a compare-and-swap.
//!
//! Shared data outlives a reload of the plugin, so new instances start with the keys at once.

use std::time::Duration;

use portico_plugin_sdk::shared::Entry;
use portico_plugin_sdk::{CallResponse, Callout, Error, Result, shared, warn};

use crate::config::Remote;
use crate::jwk::{self, VerifyKey};

/// At most one refetch for an unknown `kid` per this long, process-wide.
pub const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// A failed fetch is retried after this long.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No keys yet, or the document is older than `cache_duration`.
    Refresh,
    /// A token names a key nobody has: rate-limited by [`KID_REFETCH_INTERVAL`].
    UnknownKid,
}

/// What a fetch brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// A usable document arrived.
    pub ok: bool,
    /// The keys differ from those before.
    pub changed: bool,
}

/// This instance's view of the remote JWKS.
#[derive(Debug)]
pub struct RemoteKeys {
    pub config: Remote,
    jwks_key: String,
    lock_key: String,
    /// When the document this instance uses was fetched (nanoseconds); `None`: no keys yet.
    fetched_at: Option<u64>,
    pub keys: Vec<VerifyKey>,
}

/// The fetch record in `jwt.fetch.<id>`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Lock {
    /// A fetch is in flight until then (nanoseconds; 0: none).
    in_flight_until: u64,
    last_kid_refetch: u64,
    retry_at: u64,
}

impl Lock {
    fn decode(bytes: Option<&[u8]>) -> Lock {
        let word = |i: usize| {
            bytes
                .and_then(|b| b.get(i * 8..i * 8 + 8))
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Lock {
            in_flight_until: word(0),
            last_kid_refetch: word(1),
            retry_at: word(2),
        }
    }

    fn encode(&self) -> Vec<u8> {
        [self.in_flight_until, self.last_kid_refetch, self.retry_at]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }
}

/// Shared data as the fetch record is read and written: the host's, or in tests one that lets
/// a rival instance write between a read and its write.
pub trait Store {
    fn get(&mut self, key: &str) -> Result<Option<Entry>>;
    /// `cas`: the token of the read this write follows; `None` writes unconditionally.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<()>;
}

/// The host's shared data.
pub struct Host;

impl Store for Host {
    fn get(&mut self, key: &str) -> Result<Option<Entry>> {
        shared::get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<()> {
        shared::set(key, value, cas)
    }
}

/// Read-modify-write of the fetch record with compare-and-swap, retried on conflict. `f` gets
/// the record and returns the new one, or `None` to leave it. Returns whether it wrote.
fn update_lock(
    store: &mut impl Store,
    key: &str,
    mut f: impl FnMut(Lock) -> Option<Lock>,
) -> Result<bool> {
    for _ in 0..64 {
        let current = store.get(key)?;
        let Some(next) = f(Lock::decode(current.as_ref().map(|e| e.value.as_slice()))) else {
            return Ok(false);
        };
        // A missing record (never after `create`) is written unconditionally: the only write
        // that is.
        match store.set(key, &next.encode(), current.map(|e| e.cas)) {
            Ok(()) => return Ok(true),
            Err(e) if e.is_cas_mismatch() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::new(format!(
        "shared data {key}: too much contention (64 conflicting writes)"
    )))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// FNV-1a: a hash that is the same in every instance and every build.
fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl RemoteKeys {
    pub fn new(config: Remote) -> RemoteKeys {
        let id = format!(
            "{:016x}",
            stable_hash(&[
                &config.upstream,
                &config.path,
                config.authority.as_deref().unwrap_or("")
            ])
        );
        RemoteKeys {
            jwks_key: format!("jwt.jwks.{id}"),
            lock_key: format!("jwt.fetch.{id}"),
            config,
            fetched_at: None,
            keys: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn jwks_key(&self) -> &str {
        &self.jwks_key
    }

    #[cfg(test)]
    pub fn lock_key(&self) -> &str {
        &self.lock_key
    }

    /// Creates the fetch record if no instance has yet. Called from `configure`, before this
    /// instance serves a request or ticks: instances are configured one after another, so the
    /// first creates it and the others find it, and from then on every write is a
    /// compare-and-swap that only one of two rivals wins.
    pub fn create(&self) -> Result<()> {
        if shared::get(&self.lock_key)?.is_none() {
            shared::set(&self.lock_key, &Lock::default().encode(), None)?;
        }
        Ok(())
    }

    /// Whether a document has ever been loaded.
    pub fn loaded(&self) -> bool {
        self.fetched_at.is_some()
    }

    /// Takes the shared document if it is newer than this instance's. `true` when the keys
    /// changed.
    pub fn sync(&mut self) -> Result<bool> {
        let Some(entry) = shared::get(&self.jwks_key)? else {
            return Ok(false);
        };
        let Some((stamp, body)) = entry.value.split_at_checked(8) else {
            return Ok(false);
        };
        let stamp = u64::from_le_bytes(stamp.try_into().unwrap_or_default());
        if self.fetched_at.is_some_and(|t| t >= stamp) {
            return Ok(false);
        }
        match jwk::parse_remote(body) {
            Ok((keys, _)) => {
                self.fetched_at = Some(stamp);
                let changed = keys != self.keys;
                self.keys = keys;
                Ok(changed)
            }
            Err(e) => {
                warn!("the shared JWKS does not parse: {e}");
                Ok(false)
            }
        }
    }

    /// Whether the keys are older than `cache_duration` (or missing).
    pub fn due(&self, now: u64) -> bool {
        self.fetched_at
            .is_none_or(|t| now.saturating_sub(t) >= nanos(self.config.cache_duration))
    }

    /// Claims the fetch for this caller if nobody is fetching and `reason` allows one now.
    pub fn try_begin(&self, now: u64, reason: Reason) -> Result<bool> {
        self.try_begin_in(&mut Host, now, reason)
    }

    /// [`RemoteKeys::try_begin`] on `store`.
    pub fn try_begin_in(&self, store: &mut impl Store, now: u64, reason: Reason) -> Result<bool> {
        update_lock(store, &self.lock_key, |mut lock| {
            if now < lock.in_flight_until {
                return None;
            }
            match reason {
                Reason::Refresh if now < lock.retry_at => return None,
                Reason::UnknownKid
                    if lock.last_kid_refetch != 0
                        && now
                            < lock
                                .last_kid_refetch
                                .saturating_add(nanos(KID_REFETCH_INTERVAL)) =>
                {
                    return None;
                }
                Reason::UnknownKid => lock.last_kid_refetch = now,
                Reason::Refresh => {}
            }
            lock.in_flight_until = self.alive_until(now);
            Some(lock)
        })
    }

    /// Keeps the fetch this caller claimed in flight for another timeout, from `now`: it is
    /// being sent again (its first answer was lost with the request that sent it).
    pub fn renew(&self, now: u64) -> Result<()> {
        update_lock(&mut Host, &self.lock_key, |mut lock| {
            lock.in_flight_until = self.alive_until(now);
            Some(lock)
        })?;
        Ok(())
    }

    /// One second beyond the callout's own timeout: a fetcher that died frees the record then.
    fn alive_until(&self, now: u64) -> u64 {
        now.saturating_add(nanos(self.config.timeout))
            .saturating_add(nanos(Duration::from_secs(1)))
    }

    /// The fetch as a callout.
    pub fn callout(&self) -> Callout {
        let callout = Callout::get(&self.config.upstream, &self.config.path)
            .header("accept", "application/json, application/jwk-set+json")
            .timeout(self.config.timeout);
        match &self.config.authority {
            Some(a) => callout.authority(a),
            None => callout,
        }
    }

    /// Takes the answer of the fetch this caller began: a good document becomes everyone's
    /// keys, anything else keeps the old keys and schedules a retry.
    pub fn finish(&mut self, now: u64, response: &CallResponse) -> Result<Fetched> {
        let outcome = self.accept(now, response);
        let failed = outcome.is_err();
        update_lock(&mut Host, &self.lock_key, |mut lock| {
            lock.in_flight_until = 0;
            lock.retry_at = if failed {
                now.saturating_add(nanos(RETRY_AFTER_FAILURE))
            } else {
                0
            };
            Some(lock)
        })?;
        match outcome {
            Ok(changed) => Ok(Fetched { ok: true, changed }),
            Err(why) => {
                warn!(
                    "fetching the JWKS from {}{} failed: {why}; keeping the {} keys loaded",
                    self.config.upstream,
                    self.config.path,
                    self.keys.len()
                );
                Ok(Fetched {
                    ok: false,
                    changed: false,
                })
            }
        }
    }

    fn accept(&mut self, now: u64, response: &CallResponse) -> std::result::Result<bool, String> {
        if response.is_failure() {
            return Err("no answer (timeout or connection error)".into());
        }
        if response.status != 200 {
            return Err(format!("status {}", response.status));
        }
        let (keys, skipped) = jwk::parse_remote(&response.body)?;
        for s in &skipped {
            warn!("JWKS from {}: {s}", self.config.upstream);
        }
        if keys.is_empty() {
            return Err("no usable key in the document".into());
        }
        let mut value = Vec::with_capacity(8 + response.body.len());
        value.extend_from_slice(&now.to_le_bytes());
        value.extend_from_slice(&response.body);
        if let Err(e) = shared::set(&self.jwks_key, &value, None) {
            // Still good for this instance; the others fetch their own later.
            warn!("cannot share the JWKS: {e}");
        }
        self.fetched_at = Some(now);
        let changed = keys != self.keys;
        self.keys = keys;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_record_round_trips() {
        let lock = Lock {
            in_flight_until: 1,
            last_kid_refetch: u64::MAX,
            retry_at: 3,
        };
        assert_eq!(Lock::decode(Some(&lock.encode())), lock);
        assert_eq!(Lock::decode(None), Lock::default());
        assert_eq!(Lock::decode(Some(b"short")), Lock::default());
    }

    #[test]
    fn the_shared_keys_are_named_after_the_location() {
        let remote = |upstream: &str, path: &str| {
            RemoteKeys::new(Remote {
                upstream: upstream.into(),
                path: path.into(),
                authority: None,
                cache_duration: Duration::from_secs(60),
                timeout: Duration::from_secs(1),
            })
        };
        let a = remote("idp", "/jwks");
        assert_eq!(a.jwks_key, remote("idp", "/jwks").jwks_key);
        assert_ne!(a.jwks_key, remote("idp", "/jwks2").jwks_key);
        assert_ne!(a.jwks_key, remote("idp2", "/jwks").jwks_key);
        assert_ne!(remote("a", "b/c").jwks_key, remote("a/b", "c").jwks_key);
        assert!(a.lock_key.starts_with("jwt.fetch."));
    }
}
