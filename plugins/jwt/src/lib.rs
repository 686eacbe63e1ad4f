//! # portico-jwt
//!
//! Portico's JSON Web Token plugin: a request passes only with a valid JWS-signed token
//! (RFC 7519) from the configured place (`Authorization: Bearer` by default), signed by a key of
//! an inline JWKS or of a remote one, with acceptable `exp`, `nbf`, `iat`, `iss` and `aud`.
//! Anything else is answered `401` with `WWW-Authenticate: Bearer` (RFC 6750) — `400` for more
//! than one token, `503` while only a remote JWKS not yet loaded could vouch for it — and never
//! reaches the upstream. Chosen claims go upstream as request headers. The configuration and its
//! defaults are in README.md.
//!
//! A request's path through the plugin, top-down ([`Jwt::decide`]):
//!
//! 1. find the token ([`source`]): none → 401 `Bearer`; two → 400 `invalid_request`;
//! 2. the cache of verified tokens ([`cache`]): a hit is admitted at once;
//! 3. parse it strictly, check the signature with the keys that fit, then the claims
//!    ([`token`]); a failure → 401 `invalid_token` with a short description;
//! 4. no key could have signed it and a remote JWKS is configured ([`remote`]): take a newer
//!    shared copy, or refetch (single-flight, once per 30 s) and wait for the answer; if the
//!    request leaves first, its answer is lost, and the next tick fetches again from the root
//!    context ([`Waiting`]'s `Drop`);
//! 5. admit: set the claim headers, strip the token if asked, cache the result.
//!
//! Signatures are checked by [`portico_plugin_sdk::crypto::verify`], natively in Portico.
#![forbid(unsafe_code)]

mod cache;
mod config;
mod jwk;
mod remote;
mod source;
mod token;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use portico_plugin_sdk::metrics::Counter;
use portico_plugin_sdk::{
    CallResponse, Error, Flow, Http, LocalResponse, Plugin, Result, Root, debug, info, plugin, warn,
};

use crate::cache::{Cache, Verified};
use crate::config::{Config, Settings};
use crate::remote::{Reason, RemoteKeys};
use crate::source::Found;
use crate::token::{Reject, SignatureCheck};

/// The first tick comes as soon as the host allows, to fetch the remote JWKS; later ones
/// check for a newer shared copy and for the refresh.
const FIRST_TICK: Duration = Duration::from_millis(1);
const TICK: Duration = Duration::from_secs(1);

/// The plugin: its settings, the remote keys as this instance sees them, and its cache.
pub struct Jwt {
    settings: Settings,
    remote: Option<RemoteKeys>,
    cache: Cache,
    /// The fetch this instance's root context is waiting for.
    root_fetch: Option<u32>,
    /// Set when a request that was waiting for a fetch it sent left before the answer: the
    /// host drops the answer of a request that is gone, so the next tick sends the fetch
    /// again, from the root context, whose answers are never dropped. Shared with every
    /// [`Waiting`], which sets it when it is dropped unanswered.
    handover: Rc<Cell<bool>>,
    ticked: bool,
    metrics: Metrics,
}

/// A request held while the remote JWKS is fetched for it. Dropped before its answer came (the
/// request left, and the host drops answers for requests that are gone), it hands the fetch
/// over to the root context. A `Drop` rather than an `on_log` hook: exporting `on_log` would
/// cost every request one more guest call, for an event this rare.
#[derive(Debug)]
pub struct Waiting {
    token: String,
    source: usize,
    fetch: u32,
    /// The plugin's handover flag; `None` once the answer came.
    handover: Option<Rc<Cell<bool>>>,
}

impl Waiting {
    /// The answer came: the token and its source, and nothing to hand over.
    fn answered(mut self) -> (String, usize) {
        self.handover = None;
        (std::mem::take(&mut self.token), self.source)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(handover) = self.handover.take() {
            debug!("a request left while waiting for the JWKS: fetching it again on the next tick");
            handover.set(true);
        }
    }
}

struct Metrics {
    denied: Option<Counter>,
    verifications: Option<Counter>,
    fetches: Option<Counter>,
    fetch_failures: Option<Counter>,
}

impl Metrics {
    fn define() -> Metrics {
        Metrics {
            denied: Counter::define("denied").ok(),
            verifications: Counter::define("verifications").ok(),
            fetches: Counter::define("jwks_fetches").ok(),
            fetch_failures: Counter::define("jwks_fetch_failures").ok(),
        }
    }

    fn count(counter: &Option<Counter>) {
        Metrics::add(counter, 1);
    }

    fn add(counter: &Option<Counter>, n: u64) {
        if let Some(c) = counter
            && n > 0
        {
            let _ = c.increment(n);
        }
    }
}

/// Why a request is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deny {
    /// No token: a bare challenge (RFC 6750 §3.1: no error code without credentials).
    Missing,
    /// More than one token.
    Ambiguous,
    Invalid(Reject),
    /// Only a remote JWKS could vouch for the token and none has been loaded yet.
    KeysUnavailable,
}

/// What verifying a token found.
enum Outcome {
    Valid(Verified),
    Invalid(Reject),
    /// No key fits: the remote JWKS may have one.
    NoKey,
}

#[plugin]
impl Plugin for Jwt {
    type Config = Config;
    type State = Option<Waiting>;

    fn configure(config: Config, root: &mut Root) -> Result<Self> {
        let settings = Settings::compile(config).map_err(Error::config)?;
        let mut remote = settings.remote.clone().map(RemoteKeys::new);
        if let Some(remote) = &mut remote {
            // The fetch record exists before any instance can race to claim it.
            remote.create()?;
            // A reload finds the keys an earlier generation fetched.
            remote.sync()?;
            root.set_tick_period(FIRST_TICK)?;
        }
        info!(
            "{} inline keys{}; algorithms {}",
            settings.keys.len(),
            settings.remote.as_ref().map_or(String::new(), |r| format!(
                ", remote JWKS {}{}",
                r.upstream, r.path
            )),
            settings
                .algorithms
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Jwt {
            cache: Cache::new(settings.cache_size),
            settings,
            remote,
            root_fetch: None,
            handover: Rc::default(),
            ticked: false,
            metrics: Metrics::define(),
        })
    }

    fn on_request_headers(&mut self, http: &mut Http<'_, Option<Waiting>>) -> Result<Flow> {
        match source::find(http, &self.settings.sources)? {
            Found::Missing => self.deny(http, Deny::Missing),
            Found::Ambiguous => self.deny(http, Deny::Ambiguous),
            Found::One { token, source } => self.decide(http, token, source, true),
        }
    }

    fn on_http_call_response(
        &mut self,
        http: &mut Http<'_, Option<Waiting>>,
        response: CallResponse,
    ) -> Result<Flow> {
        let Some(waiting) = http.state.take_if(|w| w.fetch == response.token) else {
            return Ok(Flow::Continue);
        };
        let (token, source) = waiting.answered();
        self.finish_fetch(&response)?;
        self.decide(http, token, source, false)
    }

    fn on_tick(&mut self, root: &mut Root) -> Result<()> {
        if !self.ticked {
            self.ticked = true;
            root.set_tick_period(TICK)?;
        }
        let Some(remote) = &mut self.remote else {
            return Ok(());
        };
        if remote.sync()? {
            self.cache.clear();
        }
        if self.root_fetch.is_some() {
            return Ok(());
        }
        let now = now_nanos();
        let send = if self.handover.replace(false) {
            // The fetch record is still this instance's: keep it, for the new callout.
            remote.renew(now)?;
            true
        } else {
            remote.due(now) && remote.try_begin(now, Reason::Refresh)?
        };
        if send {
            Metrics::count(&self.metrics.fetches);
            match root.http_call(&remote.callout()) {
                Ok(token) => self.root_fetch = Some(token),
                Err(e) => {
                    warn!("cannot fetch the JWKS: {e}");
                    self.finish_fetch(&CallResponse::default())?;
                }
            }
        }
        Ok(())
    }

    fn on_root_http_call_response(
        &mut self,
        _root: &mut Root,
        response: CallResponse,
    ) -> Result<()> {
        if self.root_fetch != Some(response.token) {
            return Ok(());
        }
        self.root_fetch = None;
        self.finish_fetch(&response)
    }
}

impl Jwt {
    /// Admits or denies a request whose token is `token`, from source `source`. `may_fetch`:
    /// the remote JWKS may be refetched for it (not a second time for the same request).
    fn decide(
        &mut self,
        http: &mut Http<'_, Option<Waiting>>,
        token: String,
        source: usize,
        may_fetch: bool,
    ) -> Result<Flow> {
        let now = now_nanos();
        let now_secs = now as f64 / 1e9;
        let leeway = self.settings.leeway.as_secs_f64();
        if let Some(hit) = self.cache.get(&token, now_secs, leeway) {
            return admit(http, &self.settings, source, &hit.forward);
        }
        match self.verify(&token, now_secs)? {
            Outcome::Valid(verified) => {
                let flow = admit(http, &self.settings, source, &verified.forward)?;
                self.cache.insert(&token, verified, now_secs, leeway);
                Ok(flow)
            }
            Outcome::Invalid(reject) => self.deny(http, Deny::Invalid(reject)),
            Outcome::NoKey => {
                let Some(remote) = &mut self.remote else {
                    return self.deny(http, Deny::Invalid(Reject::UnknownKey));
                };
                // Another instance may have fetched the key already.
                if remote.sync()? {
                    self.cache.clear();
                    return self.decide(http, token, source, may_fetch);
                }
                let reason = if remote.loaded() {
                    Reason::UnknownKid
                } else {
                    Reason::Refresh
                };
                if may_fetch && remote.try_begin(now, reason)? {
                    Metrics::count(&self.metrics.fetches);
                    match http.http_call(&remote.callout()) {
                        Ok(fetch) => {
                            debug!("fetching the JWKS for an unknown key");
                            *http.state = Some(Waiting {
                                token,
                                source,
                                fetch,
                                handover: Some(self.handover.clone()),
                            });
                            return Ok(Flow::Pause);
                        }
                        Err(e) => {
                            warn!("cannot fetch the JWKS: {e}");
                            self.finish_fetch(&CallResponse::default())?;
                        }
                    }
                }
                let loaded = self.remote.as_ref().is_some_and(RemoteKeys::loaded);
                if loaded {
                    self.deny(http, Deny::Invalid(Reject::UnknownKey))
                } else {
                    self.deny(http, Deny::KeysUnavailable)
                }
            }
        }
    }

    /// Checks a token that is not in the cache.
    fn verify(&self, token: &str, now: f64) -> Result<Outcome> {
        if token.len() > self.settings.max_token_size {
            return Ok(Outcome::Invalid(Reject::TooLarge));
        }
        let jws = match token::parse(token, &self.settings.algorithms) {
            Ok(jws) => jws,
            Err(reject) => return Ok(Outcome::Invalid(reject)),
        };
        let remote_keys = self.remote.iter().flat_map(|r| r.keys.iter());
        let keys = self.settings.keys.iter().chain(remote_keys);
        let mut tried = 0;
        let checked = token::check_signature(&jws, keys, &mut tried);
        Metrics::add(&self.metrics.verifications, tried);
        match checked? {
            SignatureCheck::Valid => {}
            SignatureCheck::Invalid(reject) => return Ok(Outcome::Invalid(reject)),
            SignatureCheck::NoKey if self.remote.is_some() => return Ok(Outcome::NoKey),
            SignatureCheck::NoKey => return Ok(Outcome::Invalid(Reject::UnknownKey)),
        }
        let exp = match token::check_claims(&jws.claims, &self.settings, now) {
            Ok(exp) => exp,
            Err(reject) => return Ok(Outcome::Invalid(reject)),
        };
        let forward = self
            .settings
            .forward_claims
            .iter()
            .map(|(claim, _)| token::claim_header_value(&jws.claims, claim))
            .collect();
        Ok(Outcome::Valid(Verified { exp, forward }))
    }

    /// Takes the answer of a fetch this instance began (or a failure to send it).
    fn finish_fetch(&mut self, response: &CallResponse) -> Result<()> {
        let Some(remote) = &mut self.remote else {
            return Ok(());
        };
        let had = remote.loaded();
        let fetched = remote.finish(now_nanos(), response)?;
        if !fetched.ok {
            Metrics::count(&self.metrics.fetch_failures);
        }
        if fetched.changed {
            // Tokens verified with a key that is gone must be checked again.
            self.cache.clear();
        }
        if fetched.ok && !had {
            info!(
                "loaded {} keys from {}{}",
                remote.keys.len(),
                remote.config.upstream,
                remote.config.path
            );
        }
        Ok(())
    }

    fn deny(&self, http: &mut Http<'_, Option<Waiting>>, why: Deny) -> Result<Flow> {
        Metrics::count(&self.metrics.denied);
        let response = match why {
            Deny::Missing => LocalResponse::new(401)
                .header("www-authenticate", "Bearer")
                .text("missing token\n")
                .details("jwt: no token"),
            Deny::Ambiguous => LocalResponse::new(400)
                .header(
                    "www-authenticate",
                    "Bearer error=\"invalid_request\", error_description=\"more than one token\"",
                )
                .text("more than one token\n")
                .details("jwt: more than one token"),
            Deny::Invalid(reject) => {
                let description = reject.description();
                LocalResponse::new(401)
                    .header(
                        "www-authenticate",
                        format!(
                            "Bearer error=\"invalid_token\", error_description=\"{description}\""
                        ),
                    )
                    .text(format!("{description}\n"))
                    .details(format!("jwt: {description}"))
            }
            Deny::KeysUnavailable => LocalResponse::new(503)
                .header("retry-after", "1")
                .text("signing keys not available yet\n")
                .details("jwt: the remote JWKS has not been loaded"),
        };
        debug!("denied: {}", response.details);
        http.respond(response)
    }
}

/// Lets the request through: the claim headers set (or removed, so a client can never supply
/// them), the token stripped unless it is forwarded.
fn admit(
    http: &mut Http<'_, Option<Waiting>>,
    settings: &Settings,
    source: usize,
    forward: &[Option<String>],
) -> Result<Flow> {
    let request = http.request();
    for ((_, header), value) in settings.forward_claims.iter().zip(forward) {
        match value {
            Some(v) => request.set(header, v)?,
            None => request.remove(header)?,
        }
    }
    if !settings.forward_token {
        source::strip(http, &settings.sources[source])?;
    }
    Ok(Flow::Continue)
}

fn now_nanos() -> u64 {
    portico_plugin_sdk::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
