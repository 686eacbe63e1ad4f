//! `type: basic`: HTTP Basic authentication (RFC 7617) against htpasswd lines.
//!
//! Hashes are bcrypt (`$2y$`, `$2b$`, `$2a$`) or SHA-crypt (`$5$`, `$6$`); plain text and weak
//! schemes are refused at configuration. A verification is slow on purpose (bcrypt at cost 10
//! is tens of milliseconds inside Wasm), so successes are cached per instance, keyed by a
//! salted SHA-256 of the whole `Authorization` value; failures are never cached.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use portico_plugin_sdk::{Error, Http, LocalResponse, Result, info, warn};
use serde::Deserialize;
use sha_crypt::{PasswordHashRef, PasswordVerifier as _, ShaCrypt};

use crate::Verdict;
use crate::metric::Metric;
use crate::util::{self, Digest};

/// The longest `Authorization` value that is looked at; a longer one is refused unread.
pub const MAX_AUTHORIZATION: usize = 1024;
/// The longest password that is verified. SHA-crypt's work grows with the password's length
/// (about 10 ms at 256 bytes and 5000 rounds inside Wasm); bcrypt reads only the first 72 bytes.
pub const MAX_PASSWORD: usize = 256;
/// The bcrypt cost from which a verification takes longer than Portico's default
/// `limits.time_per_call` (50ms): cost 10 took 65 ms inside Wasm on the machine Portico is
/// tested on, and every step doubles it.
const SLOW_BCRYPT_COST: u32 = 10;
/// SHA-crypt's rounds when a hash names none.
const SHA_CRYPT_DEFAULT_ROUNDS: u32 = 5_000;
/// The longest `cache.ttl`. It bounds how long a removed user or a changed password stays
/// admitted by an instance that is not reloaded, and keeps `now + ttl` far from overflowing.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// `type: basic`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The realm of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    realm: String,
    /// htpasswd lines, `name:hash`: a list, or one block of text.
    #[serde(deserialize_with = "util::lines")]
    users: Vec<String>,
    /// The header that carries the user's name upstream (`null`: none).
    #[serde(default = "default_user_header")]
    user_header: Option<String>,
    /// Whether the `Authorization` header (the password) goes upstream.
    #[serde(default)]
    forward_credentials: bool,
    #[serde(default)]
    cache: CacheConfig,
}

/// The success cache: `size` credentials per instance (0 turns it off), each for `ttl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheConfig {
    #[serde(default = "default_cache_size")]
    size: usize,
    #[serde(default = "default_cache_ttl")]
    ttl: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            size: default_cache_size(),
            ttl: default_cache_ttl(),
        }
    }
}

fn default_realm() -> String {
    "Restricted".into()
}

fn default_user_header() -> Option<String> {
    Some("x-auth-user".into())
}

fn default_cache_size() -> usize {
    1024
}

fn default_cache_ttl() -> String {
    "5m".into()
}

/// The method, configured.
pub struct Basic {
    users: Vec<User>,
    challenge: String,
    realm: String,
    user_header: Option<String>,
    forward_credentials: bool,
    cache: Cache,
    /// What an unknown user's password is verified against (see [`decoy`]).
    decoy: User,
    verifications: Metric,
    cache_hits: Metric,
}

struct User {
    name: String,
    hash: String,
    scheme: Scheme,
    work: Work,
}

/// What one verification of a hash costs: its algorithm and cost parameter. Two hashes with
/// the same `Work` take the same time to verify the same password (SHA-crypt's varies a little
/// with the salt's length, up to 16 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// bcrypt (`$2a$`, `$2b$`, `$2y$`: one algorithm) at this cost.
    Bcrypt(u32),
    /// SHA-crypt `$5$` with this many rounds.
    Sha256Crypt(u32),
    /// SHA-crypt `$6$` with this many rounds.
    Sha512Crypt(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bcrypt,
    ShaCrypt,
}

impl Basic {
    pub fn new(config: Config) -> Result<Basic> {
        let realm = config.realm;
        if realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(Error::config(format!(
                "basic: realm {realm:?} may not hold quotes, backslashes or control characters"
            )));
        }
        if config.users.is_empty() {
            return Err(Error::config("basic: users is empty"));
        }
        let mut users: Vec<User> = Vec::with_capacity(config.users.len());
        for (i, line) in config.users.iter().enumerate() {
            let user =
                User::parse(line).map_err(|e| Error::config(format!("basic: users[{i}]{e}")))?;
            if users.iter().any(|u| u.name == user.name) {
                return Err(Error::config(format!(
                    "basic: users[{i}] ({:?}) is a second entry for that user",
                    user.name
                )));
            }
            users.push(user);
        }
        if let Some((i, user, cost)) = slowest_bcrypt(&users) {
            // Said before the trial: if the trial outruns `limits.time_per_call`, this call
            // fails, and the refusal that `portico check` or the reload prints carries this
            // line. A limit too short for the hashes fails here, not on the first logins.
            warn!(
                "basic: users[{i}] ({:?}) has bcrypt cost {cost}: a verification takes about {} ms \
                 inside Wasm, more than the default limits.time_per_call (50ms); timing one now, \
                 so that a limit too short for it refuses this configuration (README)",
                user.name,
                65u64 << (cost - SLOW_BCRYPT_COST).min(20)
            );
            let started = portico_plugin_sdk::now();
            std::hint::black_box(user.verify(b"portico: a trial verification"));
            let took = portico_plugin_sdk::now()
                .duration_since(started)
                .unwrap_or_default();
            info!(
                "basic: one bcrypt cost {cost} verification took {} ms",
                took.as_millis()
            );
        }
        let user_header = config
            .user_header
            .map(|h| util::header_name(&h))
            .transpose()
            .map_err(|e| Error::config(format!("basic: user_header: {e}")))?;
        let ttl = util::parse_duration(&config.cache.ttl)
            .map_err(|e| Error::config(format!("basic: cache.ttl: {e}")))?;
        if ttl > MAX_CACHE_TTL {
            return Err(Error::config(format!(
                "basic: cache.ttl: {:?} is more than 24h",
                config.cache.ttl.trim()
            )));
        }
        let decoy = decoy(&users);
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|e| Error::new(format!("basic: no randomness for the cache's salt: {e}")))?;
        Ok(Basic {
            challenge: format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            realm,
            users,
            user_header,
            forward_credentials: config.forward_credentials,
            cache: Cache::new(salt, config.cache.size, ttl),
            decoy,
            verifications: Metric::define("basic_verifications"),
            cache_hits: Metric::define("basic_cache_hits"),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "basic, realm {:?}, {} users, cache of {} for {:?}",
            self.realm,
            self.users.len(),
            self.cache.capacity,
            self.cache.ttl
        )
    }

    pub fn check<S>(&mut self, http: &mut Http<'_, S>) -> Result<Verdict> {
        let Some(value) = http.request().get_bytes("authorization")? else {
            return Ok(self.challenge("no credentials"));
        };
        if value.len() > MAX_AUTHORIZATION {
            return Ok(self.challenge("credentials too long"));
        }
        let now = portico_plugin_sdk::now();
        let digest = self.cache.digest(&value);
        let user = match self.cache.get(&digest, now) {
            Some(user) => {
                self.cache_hits.count();
                user
            }
            None => {
                let Some(user) = self.verify(&value) else {
                    return Ok(self.challenge("wrong credentials"));
                };
                self.cache.insert(digest, user, now);
                user
            }
        };
        let request = http.request();
        if let Some(header) = &self.user_header {
            request.set(header, &self.users[user].name)?;
        }
        if !self.forward_credentials {
            request.remove("authorization")?;
        }
        Ok(Verdict::Allow)
    }

    /// The index of the user `value` (an `Authorization` value) names, if its password is
    /// right. An unknown user costs a verification too, against the [`decoy`], so timing does
    /// not tell which users exist (as far as their hashes cost the same, see there).
    fn verify(&self, value: &[u8]) -> Option<usize> {
        let (name, password) = credentials(value)?;
        if password.len() > MAX_PASSWORD {
            return None;
        }
        let found = self.users.iter().position(|u| u.name.as_bytes() == name);
        let hash = found.map_or(&self.decoy, |i| &self.users[i]);
        let right = self.verify_password(hash, &password);
        found.filter(|_| right)
    }

    /// The one place a hash is computed (counted in `basic_verifications`).
    fn verify_password(&self, user: &User, password: &[u8]) -> bool {
        self.verifications.count();
        #[cfg(test)]
        tests::VERIFIED.with_borrow_mut(|v| v.push(user.hash.clone()));
        user.verify(password)
    }

    fn challenge(&self, why: &str) -> Verdict {
        Verdict::Deny(
            LocalResponse::new(401)
                .header("www-authenticate", self.challenge.clone())
                .text("unauthorized\n")
                .details(format!("basic: {why}")),
        )
    }
}

/// The user with the highest bcrypt cost, if that cost is [`SLOW_BCRYPT_COST`] or more.
fn slowest_bcrypt(users: &[User]) -> Option<(usize, &User, u32)> {
    users
        .iter()
        .enumerate()
        .filter_map(|(i, u)| match u.work {
            Work::Bcrypt(cost) => Some((i, u, cost)),
            _ => None,
        })
        .filter(|(_, _, cost)| *cost >= SLOW_BCRYPT_COST)
        .max_by_key(|(i, _, cost)| (*cost, std::cmp::Reverse(*i)))
}

/// The hash an unknown user's password is verified against: the [`Work`] most users' hashes
/// have (on a tie, the slower; then the one listed first), so an unknown name takes as long
/// as most known ones. It is a copy of the first such user's hash (the same salt length too)
/// with its checksum zeroed: well-formed, so it is verified in full, and matched by no
/// password anyone knows. A user whose hash has another `Work` still answers in a time of its
/// own, which tells that the name exists: give every user the same scheme and cost to hide
/// them all.
fn decoy(users: &[User]) -> User {
    // Each `Work` present: how many users have it, and the first of them.
    let mut kinds: Vec<(Work, usize, &User)> = Vec::new();
    for user in users {
        match kinds.iter_mut().find(|(work, _, _)| *work == user.work) {
            Some((_, n, _)) => *n += 1,
            None => kinds.push((user.work, 1, user)),
        }
    }
    let mut model = &users[0];
    let mut best = (0, 0);
    for (work, n, first) in kinds {
        // `>`: on a full tie, the one listed first.
        if (n, work.estimate()) > best {
            best = (n, work.estimate());
            model = first;
        }
    }
    // The checksum is the last field; '.' is 0 in bcrypt's and crypt's base64.
    let checksum = model.hash.rfind('$').map_or(0, |i| i + 1);
    let checksum = match model.scheme {
        Scheme::Bcrypt => checksum + 22, // the salt, then the checksum, in one field
        Scheme::ShaCrypt => checksum,
    };
    let hash = format!(
        "{}{}",
        &model.hash[..checksum],
        ".".repeat(model.hash.len() - checksum)
    );
    User {
        name: String::new(),
        hash,
        scheme: model.scheme,
        work: model.work,
    }
}

/// The user name and password of a `Basic` credential.
fn credentials(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut decoded = LENIENT.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let password = decoded.split_off(colon + 1);
    decoded.truncate(colon);
    Some((decoded, password))
}

impl User {
    /// An htpasswd line. `Err` starts with what follows `users[i]` in the message: the user's
    /// name, never the line (it may hold a plain-text password).
    fn parse(line: &str) -> Result<User, String> {
        let line = line.trim();
        let Some((name, hash)) = line.split_once(':') else {
            return Err(": not a name:hash line".into());
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(": the user name is empty or holds control characters".into());
        }
        let scheme = Scheme::of(hash).map_err(|e| format!(" ({name:?}): {e}"))?;
        Ok(User {
            name: name.to_string(),
            hash: hash.to_string(),
            scheme,
            work: Work::of(hash),
        })
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self.scheme {
            Scheme::Bcrypt => bcrypt::verify(password, &self.hash).unwrap_or(false),
            Scheme::ShaCrypt => ShaCrypt::default()
                .verify_password(password, self.hash.as_str())
                .is_ok(),
        }
    }
}

impl Work {
    /// The work of a hash [`Scheme::of`] accepted.
    fn of(hash: &str) -> Work {
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
        if hash.starts_with("$2") {
            return Work::Bcrypt(number(hash.get(4..6)).unwrap_or(0));
        }
        let rounds = number(
            hash.get(3..)
                .and_then(|s| s.strip_prefix("rounds=")?.split('$').next()),
        )
        .unwrap_or(SHA_CRYPT_DEFAULT_ROUNDS);
        if hash.starts_with("$5$") {
            Work::Sha256Crypt(rounds)
        } else {
            Work::Sha512Crypt(rounds)
        }
    }

    /// Roughly how long a verification takes, in nanoseconds (README's measures inside Wasm:
    /// 65 ms for bcrypt cost 10, about 0.5 µs a SHA-crypt round): only to order hashes.
    fn estimate(self) -> u64 {
        match self {
            Work::Bcrypt(cost) => (65_000_000u64 << cost.min(31)) >> 10,
            Work::Sha256Crypt(rounds) | Work::Sha512Crypt(rounds) => u64::from(rounds) * 500,
        }
    }
}

impl Scheme {
    /// The scheme of a hash whose format is valid, or why it is refused.
    fn of(hash: &str) -> Result<Scheme, String> {
        let prefix = |p: &str| hash.starts_with(p);
        if prefix("$2a$") || prefix("$2b$") || prefix("$2y$") {
            check_bcrypt(hash).map(|()| Scheme::Bcrypt)
        } else if prefix("$5$") || prefix("$6$") {
            check_sha_crypt(hash).map(|()| Scheme::ShaCrypt)
        } else if prefix("$2x$") {
            Err(
                "$2x$ (crypt_blowfish's buggy variant) is refused; hash again with htpasswd -B"
                    .into(),
            )
        } else if prefix("$apr1$") || prefix("$1$") || prefix("{SHA}") {
            Err("MD5 and SHA-1 hashes are refused; use bcrypt (htpasswd -B) or SHA-crypt".into())
        } else if prefix("$") {
            Err("unsupported hash; use bcrypt ($2y$, $2b$) or SHA-crypt ($5$, $6$)".into())
        } else {
            Err("plain-text passwords are refused; hash it with htpasswd -B (bcrypt)".into())
        }
    }
}

fn check_bcrypt(hash: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("not a bcrypt hash: {why}"));
    if hash.len() != 60 || !hash.is_ascii() {
        return bad("a bcrypt hash is 60 characters");
    }
    if &hash[6..7] != "$" {
        return bad("no $ after the cost");
    }
    match hash[4..6].parse::<u32>() {
        Ok(cost) if (4..=31).contains(&cost) => {}
        _ => return bad("the cost must be 04 to 31"),
    }
    let (salt, checksum) = hash[7..].split_at(22);
    let decodes = bcrypt::BASE_64.decode_slice(salt, &mut [0u8; 16]).is_ok()
        && bcrypt::BASE_64
            .decode_slice(checksum, &mut [0u8; 23])
            .is_ok();
    if !decodes {
        return bad("the salt or checksum is not bcrypt's base64");
    }
    Ok(())
}

fn check_sha_crypt(hash: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("not a SHA-crypt hash: {why}"));
    let Ok(parsed) = PasswordHashRef::new(hash) else {
        return bad("malformed");
    };
    let checksum_len = if hash.starts_with("$5$") { 43 } else { 86 };
    let mut fields: Vec<&str> = parsed.fields().map(|f| f.as_str()).collect();
    if let Some(rounds) = fields.first().and_then(|f| f.strip_prefix("rounds=")) {
        match rounds.parse::<u32>() {
            Ok(n)
                if (sha_crypt::Params::ROUNDS_MIN..=sha_crypt::Params::ROUNDS_MAX).contains(&n) => {
            }
            _ => return bad("rounds must be 1000 to 999999999"),
        }
        fields.remove(0);
    }
    let [salt, checksum] = fields[..] else {
        return bad("expected a salt and a checksum");
    };
    if salt.is_empty() || salt.len() > 16 {
        return bad("the salt is 1 to 16 characters");
    }
    let crypt64 = |c: u8| c == b'.' || c == b'/' || c.is_ascii_alphanumeric();
    if checksum.len() != checksum_len || !checksum.bytes().all(crypt64) {
        return bad("the checksum has the wrong length or characters");
    }
    Ok(())
}

/// Successful verifications: the salted digest of an `Authorization` value → the user. Only
/// digests are kept, never a password; a hit compares the whole digest in constant time.
struct Cache {
    salt: [u8; 16],
    capacity: usize,
    ttl: Duration,
    /// Keyed by the digest's first 8 bytes.
    entries: HashMap<u64, Entry>,
    /// Keys in insertion order, for eviction: the same keys as `entries`.
    order: VecDeque<u64>,
}

struct Entry {
    digest: Digest,
    user: usize,
    expires: SystemTime,
}

impl Cache {
    fn new(salt: [u8; 16], capacity: usize, ttl: Duration) -> Cache {
        Cache {
            salt,
            capacity,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn digest(&self, credential: &[u8]) -> Digest {
        util::sha256(&[&self.salt, credential])
    }

    fn key(digest: &Digest) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn get(&self, digest: &Digest, now: SystemTime) -> Option<usize> {
        let entry = self.entries.get(&Cache::key(digest))?;
        (util::digests_equal(&entry.digest, digest) && now < entry.expires).then_some(entry.user)
    }

    fn insert(&mut self, digest: Digest, user: usize, now: SystemTime) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        // A clock near the end of time: not remembered rather than a panic.
        let Some(expires) = now.checked_add(self.ttl) else {
            return;
        };
        let key = Cache::key(&digest);
        let entry = Entry {
            digest,
            user,
            expires,
        };
        if self.entries.insert(key, entry).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.entries.remove(&oldest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
