//! Verified tokens, kept until they expire so that a repeated token costs a hash, a
//! comparison and the claim headers, not a signature check.
//!
//! The token itself is not kept (a token may be 8 KiB, ten thousand of them would not fit an
//! instance's memory): an entry is found by one half of a keyed 128-bit hash of the token
//! (SipHash-1-3-128, one pass over the token) and confirmed by the other half. The key is drawn
//! at random per instance, so nobody outside can compute the hash and no other token can pass
//! for a cached one, and a comparison of one word takes the same time whatever it finds.
//! Bounded: when full, expired entries go first, then arbitrary ones until a tenth of the room
//! is free.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

/// What a verified token leaves behind.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `exp`, seconds since the epoch.
    pub exp: f64,
    /// The `forward_claims` headers and their values (`None`: the claim is absent).
    pub forward: Vec<Option<String>>,
}

#[derive(Debug)]
struct Entry {
    /// The second half of the token's hash.
    check: u64,
    verified: Verified,
}

/// The map's keys are already keyed hashes: they are used as they are.
type ByHash = HashMap<u64, Entry, BuildHasherDefault<Unhashed>>;

#[derive(Default)]
struct Unhashed(u64);

impl Hasher for Unhashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug)]
pub struct Cache {
    entries: ByHash,
    capacity: usize,
    /// The SipHash key, random per instance.
    keys: (u64, u64),
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        // 128 random bits from the standard library's per-process random keys (WASI's
        // `random_get` in a plugin), without another dependency for randomness.
        let seed = RandomState::new();
        Cache {
            entries: ByHash::default(),
            capacity,
            keys: (seed.hash_one(0u8), seed.hash_one(1u8)),
        }
    }

    /// The token's hash: where its entry is, and the check that confirms it.
    fn hash(&self, token: &str) -> (u64, u64) {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        h.write(token.as_bytes());
        let h = h.finish128();
        (h.h1, h.h2)
    }

    /// The token's entry if it is cached and still valid at `now` (with `leeway`, as a
    /// verification would judge it). An expired entry is dropped.
    pub fn get(&mut self, token: &str, now: f64, leeway: f64) -> Option<&Verified> {
        let (key, check) = self.hash(token);
        let (same, expired) = {
            let entry = self.entries.get(&key)?;
            (entry.check == check, now >= entry.verified.exp + leeway)
        };
        if !same {
            return None;
        }
        if expired {
            self.entries.remove(&key);
            return None;
        }
        self.entries.get(&key).map(|e| &e.verified)
    }

    pub fn insert(&mut self, token: &str, verified: Verified, now: f64, leeway: f64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now < e.verified.exp + leeway);
            let room = self.capacity - self.capacity / 10;
            if self.entries.len() >= room {
                let excess = self.entries.len() + 1 - room;
                let victims: Vec<u64> = self.entries.keys().take(excess).copied().collect();
                for k in victims {
                    self.entries.remove(&k);
                }
            }
        }
        let (key, check) = self.hash(token);
        self.entries.insert(key, Entry { check, verified });
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(exp: f64) -> Verified {
        Verified {
            exp,
            forward: vec![Some("alice".into())],
        }
    }

    #[test]
    fn a_token_is_served_until_it_expires_plus_the_leeway() {
        let mut c = Cache::new(10);
        c.insert("t1", verified(100.0), 50.0, 5.0);
        assert_eq!(c.get("t1", 99.0, 5.0).map(|v| v.exp), Some(100.0));
        assert!(c.get("t1", 104.9, 5.0).is_some());
        assert!(c.get("t1", 105.0, 5.0).is_none());
        assert_eq!(c.len(), 0, "the expired entry is dropped");
        assert!(c.get("t2", 50.0, 5.0).is_none());
    }

    #[test]
    fn it_stays_bounded_and_evicts_expired_entries_first() {
        let mut c = Cache::new(10);
        for i in 0..5 {
            c.insert(&format!("old{i}"), verified(10.0), 0.0, 0.0);
        }
        for i in 0..5 {
            c.insert(&format!("new{i}"), verified(1000.0), 0.0, 0.0);
        }
        assert_eq!(c.len(), 10);
        c.insert("one-more", verified(1000.0), 20.0, 0.0);
        assert_eq!(c.len(), 6, "the five expired ones went");
        for i in 0..5 {
            assert!(c.get(&format!("new{i}"), 20.0, 0.0).is_some());
        }
        for i in 0..100 {
            c.insert(&format!("many{i}"), verified(1000.0), 20.0, 0.0);
            assert!(c.len() <= 10);
        }
        assert!(c.get("many99", 20.0, 0.0).is_some(), "the newest is kept");
    }

    #[test]
    fn a_zero_capacity_caches_nothing() {
        let mut c = Cache::new(0);
        c.insert("t", verified(100.0), 0.0, 0.0);
        assert!(c.get("t", 1.0, 0.0).is_none());
    }

    #[test]
    fn a_token_that_lands_on_another_tokens_entry_is_not_served() {
        let mut c = Cache::new(10);
        // What a collision of the first hash would look like: right place, wrong confirmation.
        let (key, check) = c.hash("forged");
        let check = check ^ 1;
        c.entries.insert(
            key,
            Entry {
                check,
                verified: verified(100.0),
            },
        );
        assert!(c.get("forged", 1.0, 0.0).is_none());
        c.insert("forged", verified(100.0), 1.0, 0.0);
        assert!(c.get("forged", 1.0, 0.0).is_some());
    }
}
