//! # portico-rate-limit
//!
//! Portico's rate-limit plugin: a token bucket per key (client IP, a request header, the route,
//! or a combination), exact across every instance and worker thread of the process. A request
//! over the limit is answered `429 Too Many Requests` with `Retry-After`; with `headers: true`
//! every response carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
//!
//! ```yaml
//! plugins:
//!   per-client:
//!     module: target/plugins/rate-limit.wasm
//!     config: { rate: 100, per: 1m, burst: 20, key: client_ip, headers: true }
//! ```
//!
//! The bucket is GCRA ([`gcra`]) over shared data ([`table`]); the configuration is in
//! [`config`]; README.md has the operator's view.
#![forbid(unsafe_code)]

pub mod config;
pub mod gcra;
pub mod table;

use std::time::{Duration, UNIX_EPOCH};

use portico_plugin_sdk::{
    Flow, Http, LocalResponse, Plugin, Result, Root, debug, metrics, now, plugin,
};

use crate::config::{Config, KeyPart, Settings};
use crate::gcra::{Decision, seconds_up};
use crate::table::Salt;

/// Names of the metrics the plugin defines (`portico_plugin_counter{plugin,name}`).
pub mod metric {
    /// Requests let through.
    pub const ALLOWED: &str = "requests_allowed";
    /// Requests answered 429.
    pub const LIMITED: &str = "requests_limited";
}

/// How often an instance sweeps idle keys out of shared data, and how many shards each time
/// (every shard is visited about every 16 s by each instance).
const SWEEP_PERIOD: Duration = Duration::from_secs(1);
const SWEEP_SHARDS: u32 = 64;

/// Between the parts of a key; no header value can contain it.
const SEPARATOR: u8 = 0x1f;

/// One configured rate limit.
pub struct RateLimit {
    settings: Settings,
    /// The keys of the table's hashes, shared by every instance.
    salt: Salt,
    allowed: Option<metrics::Counter>,
    limited: Option<metrics::Counter>,
    /// The next shard this instance sweeps.
    sweep_at: u32,
}

/// What the request hook decided, for the response headers.
#[derive(Debug, Default)]
pub struct State {
    decision: Option<Decision>,
}

#[plugin]
impl Plugin for RateLimit {
    type Config = Config;
    type State = State;

    fn configure(config: Config, root: &mut Root) -> Result<Self> {
        let settings = Settings::compile(config)?;
        table::create_shards(&mut table::Host)?;
        let salt = table::create_salt(&mut table::Host, Salt::random())?;
        root.set_tick_period(SWEEP_PERIOD)?;
        // Instances start their sweeps at different shards.
        let sweep_at = (now_nanos() % u64::from(table::SHARDS)) as u32;
        Ok(RateLimit {
            settings,
            salt,
            // Metrics are a courtesy: a host without them still limits.
            allowed: metrics::Counter::define(metric::ALLOWED).ok(),
            limited: metrics::Counter::define(metric::LIMITED).ok(),
            sweep_at,
        })
    }

    fn on_request_headers(&mut self, http: &mut Http<'_, State>) -> Result<Flow> {
        let key = self.key(http)?;
        let decision = table::admit(
            &mut table::Host,
            &self.settings.gcra,
            &self.salt,
            &key,
            now_nanos,
        )?;
        http.state.decision = Some(decision);
        if decision.allowed {
            count(self.allowed);
            return Ok(Flow::Continue);
        }
        count(self.limited);
        debug!(
            "limited {} (retry in {} ms)",
            String::from_utf8_lossy(&key).replace(SEPARATOR as char, " "),
            decision.retry_after / 1_000_000
        );
        let mut response = LocalResponse::new(429)
            .header(
                "retry-after",
                seconds_up(decision.retry_after).max(1).to_string(),
            )
            .text("too many requests\n")
            .details("rate limited");
        if self.settings.headers {
            for (name, value) in self.quota_headers(&decision) {
                response = response.header(name, value);
            }
        }
        http.respond(response)
    }

    fn on_response_headers(&mut self, http: &mut Http<'_, State>) -> Result<Flow> {
        let Some(decision) = http.state.decision.filter(|_| self.settings.headers) else {
            return Ok(Flow::Continue);
        };
        let response = http.response();
        for (name, value) in self.quota_headers(&decision) {
            response.set(name, value)?;
        }
        Ok(Flow::Continue)
    }

    fn on_tick(&mut self, _root: &mut Root) -> Result<()> {
        // Portico configures instances one after the other, so they read the salt the first
        // one stored; a host that configures them at once could have two write theirs. The
        // one that stays in shared data is then every instance's from the next tick on.
        if let Some(salt) = table::read_salt(&mut table::Host)? {
            self.salt = salt;
        }
        self.sweep_at = table::sweep(&mut table::Host, self.sweep_at, SWEEP_SHARDS, now_nanos())?;
        Ok(())
    }
}

impl RateLimit {
    /// The request's bucket: its key parts, each `name=value`, joined by [`SEPARATOR`].
    fn key(&self, http: &Http<'_, State>) -> Result<Vec<u8>> {
        let mut key = Vec::new();
        for (i, part) in self.settings.key.iter().enumerate() {
            if i > 0 {
                key.push(SEPARATOR);
            }
            match part {
                KeyPart::ClientIp => client_ip(http, &mut key)?,
                KeyPart::Route => {
                    key.extend_from_slice(b"route=");
                    key.extend_from_slice(http.route_name()?.unwrap_or_default().as_bytes());
                }
                KeyPart::Header(name) => match http.request().get_bytes(name)? {
                    Some(value) if !value.is_empty() => {
                        key.extend_from_slice(name.as_bytes());
                        key.push(b'=');
                        key.extend_from_slice(&value);
                    }
                    // No value: the client's own bucket, never one shared by everyone.
                    _ => client_ip(http, &mut key)?,
                },
            }
        }
        Ok(key)
    }

    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft
    /// httpapi-ratelimit-headers): the bucket's size, requests left now, seconds until full.
    fn quota_headers(&self, d: &Decision) -> [(&'static str, String); 3] {
        [
            ("ratelimit-limit", self.settings.gcra.burst().to_string()),
            ("ratelimit-remaining", d.remaining.to_string()),
            ("ratelimit-reset", seconds_up(d.reset).to_string()),
        ]
    }
}

fn client_ip(http: &Http<'_, State>, key: &mut Vec<u8>) -> Result<()> {
    key.extend_from_slice(b"ip=");
    if let Some(address) = http.source_address()? {
        // The host writes an address one way, so its text is the key as it is: no parsing and
        // formatting of the address on every request.
        key.extend_from_slice(ip_part(&address).as_bytes());
    }
    Ok(())
}

/// The IP of `ip:port`, `[ip]:port` or a bare `ip`.
fn ip_part(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(address, |(ip, _)| ip);
    }
    match address.rsplit_once(':') {
        // One colon: IPv4 and its port. More: a bare IPv6 address.
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

fn count(counter: Option<metrics::Counter>) {
    if let Some(c) = counter {
        // A metric that cannot be counted is no reason to fail the request.
        let _ = c.increment(1);
    }
}

/// The host's clock in nanoseconds since the epoch.
fn now_nanos() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
