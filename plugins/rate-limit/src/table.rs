//! The buckets, in shared data: exact across every instance and thread of the process.
//!
//! Keys are spread over [`SHARDS`] shared-data values ("shards"), each a small table of
//! `key → TAT`. Every change is a compare-and-swap of one shard, retried when another instance
//! wrote it in between, so no admission is ever lost. Why shards rather than one shared-data
//! key per bucket: Proxy-Wasm has no "create only if absent" write (a write without a token
//! replaces whatever is there), so two instances creating the same new key at once could each
//! admit a request and one admission would be overwritten; and a deleted-then-recreated key
//! restarts its token, so a stale token could match again. Shards are created once, before any
//! instance serves a request ([`create_shards`], from `configure`), and never deleted; all
//! later writes carry a token.
//!
//! Idle keys expire by themselves: a TAT at or before `now` means a full bucket, exactly what
//! an absent key means, so every write of a shard drops such entries, and [`sweep`] (on a tick)
//! drops them from shards nobody writes. A shard holds at most [`SHARD_CAPACITY`] keys; a new key
//! in a full shard evicts the key closest to a full bucket (which then starts full again: the
//! limiter errs towards letting a request through, never towards refusing one). Keys longer
//! than [`MAX_RAW_KEY`] bytes are stored as a prefix and a hash.
//!
//! Both hashes, the one that picks a key's shard and the one that stands for a long key, are
//! keyed by a [`Salt`]: random, made by the first instance ([`create_salt`], from `configure`,
//! like the shards) and read from shared data by every other, so all instances agree on where
//! a key lives while a client, who never sees the salt, can neither make two of its keys share
//! a bucket nor pile its keys onto one shard.

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};

use portico_plugin_sdk::{Error, Result, shared};

use crate::gcra::{Decision, Gcra};

/// Shared-data values the keys are spread over.
pub const SHARDS: u32 = 1024;
/// Keys one shard holds at most (so at most 131,072 buckets that are not full).
pub const SHARD_CAPACITY: usize = 128;
/// Keys up to this many bytes are stored as they are.
pub const MAX_RAW_KEY: usize = 64;
/// Compare-and-swap attempts before a request fails.
const MAX_ATTEMPTS: usize = 1_000;
/// The first byte of a shard's value: its encoding.
const VERSION: u8 = 1;
/// The shared-data key of the [`Salt`].
pub const SALT_KEY: &str = "salt";
/// Bytes in a [`Salt`]: two 128-bit SipHash keys.
const SALT_LEN: usize = 32;
/// Bytes of a long key kept as they are, before its hash.
const LONG_KEY_PREFIX: usize = MAX_RAW_KEY - 16;

/// Shared data as the table uses it: the host's in the plugin, a scripted one in tests.
pub trait Store {
    fn get(&mut self, key: &str) -> Result<Option<shared::Entry>>;
    /// Writes `value` if the key's token is still `cas` (`None`: unconditionally).
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

/// Why a write did not happen.
#[derive(Debug)]
pub enum SetError {
    /// Someone wrote the key since it was read.
    Conflict,
    Failed(Error),
}

/// The host's shared data.
#[derive(Debug, Default)]
pub struct Host;

impl Store for Host {
    fn get(&mut self, key: &str) -> Result<Option<shared::Entry>> {
        shared::get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        shared::set(key, value, cas).map_err(|e| {
            if e.is_cas_mismatch() {
                SetError::Conflict
            } else {
                SetError::Failed(e)
            }
        })
    }
}

/// Creates the shards that do not exist yet. Portico configures every instance of a plugin
/// before any of them serves a request, and shards are never deleted, so these are the only
/// writes without a token.
pub fn create_shards(store: &mut impl Store) -> Result<()> {
    let empty = Shard::default().encode();
    for i in 0..SHARDS {
        let name = shard_name(i);
        if store.get(&name)?.is_none() {
            store
                .set(&name, &empty, None)
                .map_err(SetError::into_error)?;
        }
    }
    Ok(())
}

/// The keys of the table's hashes, the same in every instance: the first instance makes one
/// at random and stores it, every other reads that one ([`create_salt`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Salt([u8; SALT_LEN]);

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(..)")
    }
}

impl Salt {
    /// A new random salt. std's `RandomState` draws its keys from the system's randomness
    /// (WASI `random_get` inside Wasm, the host's CSPRNG); four hashes under them give 256 bits
    /// that depend on all 128 of those.
    pub fn random() -> Salt {
        let state = RandomState::new();
        let mut bytes = [0u8; SALT_LEN];
        for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&state.hash_one(i).to_le_bytes());
        }
        Salt(bytes)
    }

    /// A salt as stored; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Salt> {
        bytes.try_into().ok().map(Salt)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// SipHash-2-4 of `bytes` under the salt's key number `which` (0 or 1).
    fn hash(&self, which: usize, bytes: &[u8]) -> u64 {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.0[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        // std's one hasher that takes keys; deprecated only in favour of `DefaultHasher`,
        // which takes none.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(word(2 * which), word(2 * which + 1));
        hasher.write(bytes);
        hasher.finish()
    }

    /// The shard of a stored key.
    fn shard_of(&self, key: &[u8]) -> u32 {
        (self.hash(0, key) % u64::from(SHARDS)) as u32
    }

    /// The key as a shard stores it: as it is up to [`MAX_RAW_KEY`] bytes, else a prefix and a
    /// 128-bit keyed hash of the whole key (one byte longer than any raw key, so the two never
    /// meet).
    fn stored_key(&self, key: &[u8]) -> Vec<u8> {
        if key.len() <= MAX_RAW_KEY {
            return key.to_vec();
        }
        let mut out = key[..LONG_KEY_PREFIX].to_vec();
        out.push(b'#');
        out.extend_from_slice(&self.hash(0, key).to_le_bytes());
        out.extend_from_slice(&self.hash(1, key).to_le_bytes());
        out
    }
}

/// The salt every instance uses: the one in shared data, or, when there is none yet (the
/// first instance, before any request is served), `fresh`, stored. A value that is not a salt
/// (another encoding) is replaced.
pub fn create_salt(store: &mut impl Store, fresh: Salt) -> Result<Salt> {
    let current = store.get(SALT_KEY)?;
    if let Some(salt) = current.as_ref().and_then(|e| Salt::from_bytes(&e.value)) {
        return Ok(salt);
    }
    store
        .set(SALT_KEY, fresh.as_bytes(), current.map(|e| e.cas))
        .map_err(SetError::into_error)?;
    // What is there now: ours, or that of an instance that wrote in between.
    Ok(read_salt(store)?.unwrap_or(fresh))
}

/// The salt in shared data, if there is one.
pub fn read_salt(store: &mut impl Store) -> Result<Option<Salt>> {
    Ok(store
        .get(SALT_KEY)?
        .and_then(|e| Salt::from_bytes(&e.value)))
}

/// Decides a request for `key` and records it: exactly one compare-and-swap of the key's
/// shard lands per admitted request. `clock` is read after every read of the shard, so a
/// request that lost a race is decided at a time no earlier than the write it lost to.
pub fn admit(
    store: &mut impl Store,
    gcra: &Gcra,
    salt: &Salt,
    key: &[u8],
    mut clock: impl FnMut() -> u64,
) -> Result<Decision> {
    let key = salt.stored_key(key);
    let name = shard_name(salt.shard_of(&key));
    for _ in 0..MAX_ATTEMPTS {
        let current = store.get(&name)?;
        let now = clock();
        let mut shard = current
            .as_ref()
            .and_then(|e| Shard::decode(&e.value))
            .unwrap_or_default();
        let stored = shard.get(&key);
        let decision = gcra.decide(stored, now);
        if stored == Some(decision.tat) {
            // A refusal leaves the bucket as it was: nothing to write.
            return Ok(decision);
        }
        shard.prune(now);
        shard.put(&key, decision.tat);
        // A shard that is missing (never in Portico, see `create_shards`) is created here.
        match store.set(&name, &shard.encode(), current.map(|e| e.cas)) {
            Ok(()) => return Ok(decision),
            Err(SetError::Conflict) => continue,
            Err(SetError::Failed(e)) => return Err(e),
        }
    }
    Err(Error::new(format!(
        "shared data {name}: {MAX_ATTEMPTS} conflicting writes in a row"
    )))
}

/// Drops the idle keys of `count` shards from `start` on (wrapping); returns where the next
/// sweep starts. A shard someone writes meanwhile is left to that writer, which prunes too.
pub fn sweep(store: &mut impl Store, start: u32, count: u32, now: u64) -> Result<u32> {
    for i in 0..count {
        let name = shard_name((start + i) % SHARDS);
        let Some(entry) = store.get(&name)? else {
            continue;
        };
        let Some(mut shard) = Shard::decode(&entry.value) else {
            continue;
        };
        if shard.prune(now) > 0 {
            match store.set(&name, &shard.encode(), Some(entry.cas)) {
                Ok(()) | Err(SetError::Conflict) => {}
                Err(SetError::Failed(e)) => return Err(e),
            }
        }
    }
    Ok((start + count) % SHARDS)
}

impl SetError {
    fn into_error(self) -> Error {
        match self {
            SetError::Conflict => Error::new("shared data: conflicting write"),
            SetError::Failed(e) => e,
        }
    }
}

/// The shared-data key of shard `i`: `shard.` and four digits. Written by hand, it runs once
/// per request, and `format!` was a visible part of the plugin's time.
pub fn shard_name(i: u32) -> String {
    if i >= 10_000 {
        return format!("shard.{i}");
    }
    let mut name = String::with_capacity(10);
    name.push_str("shard.");
    for div in [1000, 100, 10, 1] {
        name.push(char::from(b'0' + (i / div % 10) as u8));
    }
    name
}

/// One shard: keys and their TATs, in no particular order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shard {
    entries: Vec<(Vec<u8>, u64)>,
}

impl Shard {
    /// `VERSION`, then per key: its length (one byte), the key, the TAT (8 bytes LE). `None`
    /// for anything else (another encoding: the shard then starts empty).
    pub fn decode(bytes: &[u8]) -> Option<Shard> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let mut entries = Vec::new();
        while let Some((&len, after)) = rest.split_first() {
            let (key, after) = after.split_at_checked(len as usize)?;
            let (tat, after) = after.split_at_checked(8)?;
            entries.push((key.to_vec(), u64::from_le_bytes(tat.try_into().ok()?)));
            rest = after;
        }
        Some(Shard { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.entries.iter().map(|(k, _)| 9 + k.len()).sum();
        let mut out = Vec::with_capacity(1 + size);
        out.push(VERSION);
        for (key, tat) in &self.entries {
            out.push(key.len() as u8);
            out.extend_from_slice(key);
            out.extend_from_slice(&tat.to_le_bytes());
        }
        out
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, key: &[u8]) -> Option<u64> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, t)| *t)
    }

    /// Drops the keys whose bucket is full again; returns how many.
    fn prune(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(_, tat)| *tat > now);
        before - self.entries.len()
    }

    /// Sets `key`'s TAT; a new key in a full shard takes the place of the fullest bucket.
    fn put(&mut self, key: &[u8], tat: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|(k, _)| k == key) {
            entry.1 = tat;
            return;
        }
        if self.entries.len() >= SHARD_CAPACITY {
            let fullest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].1);
            if let Some(i) = fullest {
                self.entries.swap_remove(i);
            }
        }
        debug_assert!(key.len() <= MAX_RAW_KEY + 1);
        self.entries.push((key.to_vec(), tat));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn shard_names_have_four_digits() {
        assert_eq!(shard_name(0), "shard.0000");
        assert_eq!(shard_name(7), "shard.0007");
        assert_eq!(shard_name(SHARDS - 1), "shard.1023");
        assert_eq!(shard_name(12_345), "shard.12345");
    }

    type Data = HashMap<String, (Vec<u8>, u32)>;
    type Hook = Box<dyn FnMut(&mut Data)>;

    /// Shared data in a map, with a hook that runs before each write (another instance
    /// writing in between, say).
    #[derive(Default)]
    struct Fake {
        data: Data,
        before_set: Option<Hook>,
        sets: usize,
    }

    impl Store for Fake {
        fn get(&mut self, key: &str) -> Result<Option<shared::Entry>> {
            Ok(self.data.get(key).map(|(v, cas)| shared::Entry {
                value: v.clone(),
                cas: *cas,
            }))
        }

        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            self.sets += 1;
            if let Some(hook) = self.before_set.as_mut() {
                hook(&mut self.data);
            }
            let token = self.data.get(key).map(|(_, t)| *t);
            match (cas, token) {
                (Some(c), Some(t)) if c != t => return Err(SetError::Conflict),
                (Some(_), None) => return Err(SetError::Conflict),
                _ => {}
            }
            self.data
                .insert(key.into(), (value.to_vec(), token.unwrap_or(0) + 1));
            Ok(())
        }
    }

    /// A fixed salt: the tests' buckets land where they did last time.
    fn salt() -> Salt {
        Salt(*b"0123456789abcdef0123456789abcdef")
    }

    fn gcra(burst: u64) -> Gcra {
        Gcra::new(1, std::time::Duration::from_secs(60), burst).unwrap()
    }

    fn shard_of_key(store: &mut Fake, key: &[u8]) -> Shard {
        let name = shard_name(salt().shard_of(&salt().stored_key(key)));
        Shard::decode(&store.data[&name].0).unwrap()
    }

    fn entries(store: &Fake) -> usize {
        store
            .data
            .values()
            .map(|(v, _)| Shard::decode(v).map_or(0, |s| s.len()))
            .sum()
    }

    #[test]
    fn shards_are_created_once_and_kept() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        assert_eq!(store.data.len(), SHARDS as usize);
        assert_eq!(store.sets, SHARDS as usize);
        admit(&mut store, &gcra(5), &salt(), b"a", || 100 * S).unwrap();
        let before = store.data.clone();
        // Another instance configured later writes nothing.
        create_shards(&mut store).unwrap();
        assert_eq!(store.data, before);
    }

    #[test]
    fn a_write_that_loses_a_race_is_retried_on_the_winner_s_value() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        let g = gcra(3);
        let now = 100 * S;
        // Another instance admits a request for the same key before each of our first two
        // writes lands.
        let mut rival = 0;
        store.before_set = Some(Box::new(move |data| {
            if rival < 2 {
                rival += 1;
                let mut other = Fake {
                    data: std::mem::take(data),
                    ..Fake::default()
                };
                admit(&mut other, &gcra(3), &salt(), b"k", || now).unwrap();
                *data = other.data;
            }
        }));
        let d = admit(&mut store, &g, &salt(), b"k", || now).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0, "the third of three");
        assert!(
            !admit(&mut store, &g, &salt(), b"k", || now)
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn a_request_that_lost_a_race_is_decided_at_the_time_of_its_retry() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        let t = 100 * S;
        let ms = S / 1_000;
        // Two a minute, two at once. A rival admits at t + 10 ms, just before our first write.
        let mut rival = false;
        store.before_set = Some(Box::new(move |data| {
            if !std::mem::replace(&mut rival, true) {
                let mut other = Fake {
                    data: std::mem::take(data),
                    ..Fake::default()
                };
                admit(&mut other, &gcra(2), &salt(), b"k", || t + 10 * ms).unwrap();
                *data = other.data;
            }
        }));
        // Our clock read t first, t + 20 ms on the retry. Decided at t, the request would find
        // the bucket 10 ms short of a second token; at t + 20 ms it fits.
        let mut reads = [t, t + 20 * ms].into_iter();
        let d = admit(&mut store, &gcra(2), &salt(), b"k", || {
            reads.next().unwrap()
        })
        .unwrap();
        assert!(d.allowed);
        assert_eq!(reads.next(), None, "the clock was read once per attempt");
    }

    #[test]
    fn a_refusal_writes_nothing() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        let g = gcra(1);
        assert!(
            admit(&mut store, &g, &salt(), b"k", || 100 * S)
                .unwrap()
                .allowed
        );
        let sets = store.sets;
        assert!(
            !admit(&mut store, &g, &salt(), b"k", || 100 * S)
                .unwrap()
                .allowed
        );
        assert_eq!(store.sets, sets);
    }

    #[test]
    fn endless_conflicts_fail_the_request_instead_of_spinning() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        store.before_set = Some(Box::new(|data| {
            for (_, token) in data.values_mut() {
                *token += 1;
            }
        }));
        let err = admit(&mut store, &gcra(1), &salt(), b"k", || S).unwrap_err();
        assert!(err.to_string().contains("conflicting writes"), "{err}");
    }

    #[test]
    fn idle_keys_leave_their_shard_when_it_is_next_written() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        let g = gcra(2);
        admit(&mut store, &g, &salt(), b"idle", || 100 * S).unwrap();
        // Find another key in the same shard.
        let shard = salt().shard_of(&salt().stored_key(b"idle"));
        let other = (0..)
            .map(|i| format!("other-{i}").into_bytes())
            .find(|k| salt().shard_of(&salt().stored_key(k)) == shard)
            .unwrap();
        assert_eq!(shard_of_key(&mut store, b"idle").len(), 1);
        // 60 s later the bucket of "idle" is full again.
        admit(&mut store, &g, &salt(), &other, || 160 * S).unwrap();
        let s = shard_of_key(&mut store, b"idle");
        assert_eq!((s.len(), s.get(b"idle")), (1, None));
    }

    #[test]
    fn a_sweep_empties_shards_nobody_writes() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        let g = gcra(2);
        for i in 0..5_000 {
            admit(
                &mut store,
                &g,
                &salt(),
                format!("client-{i}").as_bytes(),
                || 100 * S,
            )
            .unwrap();
        }
        assert_eq!(entries(&store), 5_000);
        // Not yet idle: nothing goes.
        let mut at = sweep(&mut store, 0, SHARDS, 159 * S).unwrap();
        assert_eq!((at, entries(&store)), (0, 5_000));
        // In slices, wrapping around.
        at = 1000;
        for _ in 0..(SHARDS / 64) {
            at = sweep(&mut store, at, 64, 160 * S).unwrap();
        }
        assert_eq!((at, entries(&store)), (1000, 0));
    }

    #[test]
    fn a_full_shard_forgets_the_fullest_bucket_first() {
        let mut shard = Shard::default();
        for i in 0..SHARD_CAPACITY as u64 {
            shard.put(format!("k{i}").as_bytes(), 1_000 + i);
        }
        shard.put(b"k5", 5_000);
        assert_eq!(shard.len(), SHARD_CAPACITY, "an update takes no room");
        shard.put(b"new", 2_000);
        assert_eq!(shard.len(), SHARD_CAPACITY);
        assert_eq!(shard.get(b"k0"), None, "the lowest TAT went");
        assert_eq!(
            (shard.get(b"k1"), shard.get(b"new")),
            (Some(1_001), Some(2_000))
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_keys() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        let g = gcra(10);
        for i in 0..150_000u32 {
            admit(&mut store, &g, &salt(), &i.to_le_bytes(), || 100 * S).unwrap();
        }
        assert_eq!(store.data.len(), SHARDS as usize);
        let cap = SHARDS as usize * SHARD_CAPACITY;
        assert!(entries(&store) <= cap, "{} > {cap}", entries(&store));
        let biggest = store.data.values().map(|(v, _)| v.len()).max().unwrap();
        assert!(biggest <= 1 + SHARD_CAPACITY * (9 + 4), "{biggest}");
    }

    #[test]
    fn long_keys_are_stored_as_a_prefix_and_a_hash() {
        let long_a = vec![b'a'; 500];
        let mut long_b = long_a.clone();
        long_b[499] = b'b';
        let (a, b) = (salt().stored_key(&long_a), salt().stored_key(&long_b));
        assert_eq!(a.len(), MAX_RAW_KEY + 1);
        assert_ne!(a, b, "keys that differ after the prefix stay apart");
        assert_eq!(salt().stored_key(b"short"), b"short");
        assert_eq!(salt().stored_key(&[b'x'; MAX_RAW_KEY]).len(), MAX_RAW_KEY);
    }

    #[test]
    fn shards_round_trip_and_refuse_what_they_did_not_write() {
        let mut shard = Shard::default();
        shard.put(b"", 1);
        shard.put(b"client", u64::MAX);
        shard.put(&[0xff; MAX_RAW_KEY + 1], 7);
        let bytes = shard.encode();
        assert_eq!(Shard::decode(&bytes), Some(shard));
        for cut in 0..bytes.len() {
            let decoded = Shard::decode(&bytes[..cut]);
            // A cut between two entries is a shorter valid shard; anywhere else, refused.
            assert!(decoded.is_none_or(|s| s.len() < 3), "cut at {cut}");
        }
        assert_eq!(Shard::decode(b""), None);
        assert_eq!(Shard::decode(&[2]), None, "another version");
        assert_eq!(Shard::decode(&[VERSION]), Some(Shard::default()));
    }

    /// FNV-1a, 64 bits: the unkeyed hash the table once used, to build attacks on it.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Two keys a client can send (`header:x-api-key` with these values): the same first 48
    /// bytes, longer than [`MAX_RAW_KEY`], and the same FNV-1a (found by a birthday search on
    /// FNV-1a's top 56 bits, then a last byte each that cancels the low 8).
    fn colliding_long_keys() -> (Vec<u8>, Vec<u8>) {
        let key = |suffix: &str| format!("x-api-key={}{suffix}", "A".repeat(54)).into_bytes();
        (key(COLLIDING.0), key(COLLIDING.1))
    }

    const COLLIDING: (&str, &str) = ("0EE52031FC9248!", "30CA853B7EAC36^");

    #[test]
    fn long_keys_whose_unkeyed_hashes_collide_keep_their_own_buckets() {
        let (a, b) = colliding_long_keys();
        assert_eq!(fnv1a(&a), fnv1a(&b), "the keys collide unkeyed");
        assert_eq!(a[..LONG_KEY_PREFIX], b[..LONG_KEY_PREFIX]);
        assert!(a != b && a.len() > MAX_RAW_KEY && a.len() == b.len());
        for salt in [salt(), Salt::random()] {
            assert_ne!(salt.stored_key(&a), salt.stored_key(&b));
            let mut store = Fake::default();
            create_shards(&mut store).unwrap();
            let g = gcra(1);
            assert!(
                admit(&mut store, &g, &salt, &a, || 100 * S)
                    .unwrap()
                    .allowed
            );
            assert!(
                admit(&mut store, &g, &salt, &b, || 100 * S)
                    .unwrap()
                    .allowed,
                "draining one key's bucket left the other's alone"
            );
            assert!(
                !admit(&mut store, &g, &salt, &a, || 100 * S)
                    .unwrap()
                    .allowed
            );
            assert!(
                !admit(&mut store, &g, &salt, &b, || 100 * S)
                    .unwrap()
                    .allowed
            );
        }
    }

    #[test]
    fn the_shard_of_a_key_depends_on_the_salt() {
        // 64 keys that an unkeyed FNV-1a puts in one shard (easy to find: one in 1,024).
        let target = fnv1a(b"client-0") % u64::from(SHARDS);
        let keys: Vec<Vec<u8>> = (0..)
            .map(|i| format!("client-{i}").into_bytes())
            .filter(|k| fnv1a(k) % u64::from(SHARDS) == target)
            .take(64)
            .collect();
        let shards = |salt: &Salt| -> Vec<u32> {
            keys.iter()
                .map(|k| salt.shard_of(&salt.stored_key(k)))
                .collect()
        };
        let spread = |shards: &[u32]| {
            let mut distinct = shards.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            distinct.len()
        };
        let (one, other) = (Salt::random(), Salt::random());
        assert_ne!(one, other);
        // Spread over about 62 shards (64 keys in 1,024 shards); at least 48 but by a
        // 1-in-10^12 chance.
        assert!(spread(&shards(&one)) >= 48, "{:?}", shards(&one));
        assert!(spread(&shards(&other)) >= 48, "{:?}", shards(&other));
        // Another salt, other shards; the same salt, the same shards.
        let moved = shards(&one)
            .iter()
            .zip(shards(&other))
            .filter(|(a, b)| **a != *b)
            .count();
        assert!(moved >= 48, "{moved} of 64 keys moved");
        assert_eq!(
            shards(&one),
            shards(&Salt::from_bytes(one.as_bytes()).unwrap())
        );
    }

    #[test]
    fn every_instance_uses_the_salt_the_first_one_stored() {
        let mut store = Fake::default();
        create_shards(&mut store).unwrap();
        let first = create_salt(&mut store, Salt::random()).unwrap();
        let second = create_salt(&mut store, Salt::random()).unwrap();
        assert_eq!(first, second);
        assert_eq!(read_salt(&mut store).unwrap(), Some(first.clone()));
        assert_eq!(store.data[SALT_KEY].0, first.as_bytes());
        // One instance drains a bucket; the other finds it drained.
        let g = gcra(1);
        let key = b"x-api-key=a long key that is hashed rather than stored as it is, twice over";
        assert!(
            admit(&mut store, &g, &first, key, || 100 * S)
                .unwrap()
                .allowed
        );
        assert!(
            !admit(&mut store, &g, &second, key, || 100 * S)
                .unwrap()
                .allowed
        );
        // A value that is no salt (another encoding) is replaced.
        store.data.insert(SALT_KEY.into(), (vec![1, 2, 3], 7));
        let fresh = Salt::random();
        assert_eq!(create_salt(&mut store, fresh.clone()).unwrap(), fresh);
        assert_eq!(store.data[SALT_KEY], (fresh.as_bytes().to_vec(), 8));
        // Salts are random.
        let salts: Vec<Salt> = (0..8).map(|_| Salt::random()).collect();
        for (i, s) in salts.iter().enumerate() {
            assert!(!salts[..i].contains(s));
        }
        assert_eq!(format!("{first:?}"), "Salt(..)");
    }
}
