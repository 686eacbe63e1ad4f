//! A native mock host for unit tests (feature `testing`): the plugin's hooks run exactly as the
//! exports would run them inside Wasm, against an in-memory host.
//!
//! ```
//! # use portico_plugin_sdk::{Flow, Http, Plugin, Result, Root, LocalResponse};
//! # struct Deny;
//! # impl Plugin for Deny {
//! #     type Config = ();
//! #     type State = ();
//! #     fn configure(_: (), _: &mut Root) -> Result<Self> { Ok(Deny) }
//! #     fn on_request_headers(&mut self, http: &mut Http<'_, ()>) -> Result<Flow> {
//! #         if http.request().get("x-key")?.as_deref() == Some("secret") {
//! #             return Ok(Flow::Continue);
//! #         }
//! #         http.respond(LocalResponse::new(403))
//! #     }
//! # }
//! use portico_plugin_sdk::testing::{Harness, Outcome};
//!
//! let plugin = Harness::<Deny>::new(serde_json::json!(null)).unwrap();
//! let denied = plugin.request().path("/admin");
//! assert!(matches!(denied.on_request_headers(), Outcome::Respond(r) if r.status == 403));
//! let allowed = plugin.request().header("x-key", "secret");
//! assert_eq!(allowed.on_request_headers(), Outcome::Continue);
//! ```
//!
//! One harness at a time per test thread (the mock host is thread-local); `cargo test` runs
//! each test on its own thread.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use crate::dispatch as d;
use crate::error::Error;
use crate::host::Map;
use crate::mock::{self, MockHost, MockStream};
use crate::{LocalResponse, Plugin};

pub use crate::mock::SentCallout;

const ROOT: u32 = 1;

/// What a phase did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request goes on.
    Continue,
    /// The request is held (a callout, or body buffering).
    Pause,
    /// The plugin answered the request itself.
    Respond(LocalResponse),
}

/// A configured plugin on a mock host.
pub struct Harness<P: Plugin> {
    next_id: Cell<u32>,
    _plugin: PhantomData<P>,
}

impl<P: Plugin> std::fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

fn host<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
    mock::HOST.with(|h| f(h.borrow_mut().as_mut().expect("a Harness is alive")))
}

impl<P: Plugin> Harness<P> {
    /// Configures the plugin with `config` (the YAML `config` as JSON). `Err` carries the
    /// message the operator would see.
    pub fn new(config: serde_json::Value) -> Result<Harness<P>, Error> {
        let bytes = if config.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&config).map_err(Error::new)?
        };
        Self::with_config_bytes(bytes)
    }

    /// Configures the plugin with raw configuration bytes.
    pub fn with_config_bytes(config: Vec<u8>) -> Result<Harness<P>, Error> {
        Self::start(config, true)
    }

    /// Like [`Harness::new`], on a host like Envoy: no `portico.*` foreign functions, from the
    /// start (configure included). `shared::Counter` then falls back to shared data, and
    /// `crypto::verify` to the in-guest verifier (feature `crypto-fallback`) or an
    /// [`Error::is_unsupported`] error.
    pub fn in_other_host(config: serde_json::Value) -> Result<Harness<P>, Error> {
        let bytes = if config.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&config).map_err(Error::new)?
        };
        Self::start(bytes, false)
    }

    fn start(config: Vec<u8>, portico_functions: bool) -> Result<Harness<P>, Error> {
        d::reset();
        let mut fresh = MockHost::new(config.clone());
        fresh.portico_functions = portico_functions;
        fresh.globals.insert("plugin_name".into(), b"test".to_vec());
        mock::HOST.with(|h| *h.borrow_mut() = Some(fresh));
        d::on_context_create::<P>(ROOT, 0);
        let len = config.len();
        if !d::on_vm_start::<P>(ROOT, 0) || !d::on_configure::<P>(ROOT, len) {
            let message = host(|h| {
                h.logs
                    .iter()
                    .filter(|(level, _)| *level >= 4)
                    // The log line is the error's own text ("invalid configuration: ...");
                    // `Error::config` says that again.
                    .map(|(_, m)| {
                        m.strip_prefix("invalid configuration: ")
                            .unwrap_or(m)
                            .to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            return Err(Error::config(message));
        }
        Ok(Harness {
            next_id: Cell::new(ROOT + 1),
            _plugin: PhantomData,
        })
    }

    /// A new request: `GET /` to `example.com` over http from `192.0.2.1:50000` until the
    /// builder methods say otherwise.
    pub fn request(&self) -> Request<'_, P> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        host(|h| {
            let mut s = MockStream::default();
            s.maps.insert(
                Map::RequestHeaders,
                vec![
                    (":method".into(), b"GET".to_vec()),
                    (":path".into(), b"/".to_vec()),
                    (":authority".into(), b"example.com".to_vec()),
                    (":scheme".into(), b"http".to_vec()),
                ],
            );
            s.properties
                .insert("source.address".into(), b"192.0.2.1:50000".to_vec());
            s.properties
                .insert("request.id".into(), format!("req-{id}").into_bytes());
            h.streams.insert(id, s);
        });
        d::on_context_create::<P>(id, ROOT);
        Request {
            id,
            _harness: PhantomData,
        }
    }

    /// The host's clock (starts at the real time).
    pub fn set_time(&self, at: SystemTime) {
        let nanos = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        host(|h| h.now = nanos);
    }

    /// Moves the host's clock forward.
    pub fn advance(&self, by: Duration) {
        host(|h| h.now = h.now.saturating_add(by.as_nanos() as u64));
    }

    /// The tick period the plugin asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        host(|h| (h.tick_millis > 0).then(|| Duration::from_millis(h.tick_millis as u64)))
    }

    /// Runs `on_tick` once.
    pub fn tick(&self) {
        host(|h| h.effective = ROOT);
        d::on_tick::<P>(ROOT);
    }

    /// Callouts sent and not yet answered.
    pub fn callouts(&self) -> Vec<SentCallout> {
        host(|h| h.callouts.clone())
    }

    /// Answers callout `token`; status 0 with no headers is a failed callout (timeout).
    pub fn answer_callout(&self, token: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let Some(call) = host(|h| {
            let i = h.callouts.iter().position(|c| c.token == token)?;
            Some(h.callouts.remove(i))
        }) else {
            panic!("no pending callout {token}");
        };
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        if status != 0 {
            pairs.push((":status".into(), status.to_string().into_bytes()));
        }
        pairs.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
        );
        let n = pairs.len();
        host(|h| {
            h.answer = Some((pairs, body.to_vec()));
            h.effective = call.context;
        });
        d::on_http_call_response::<P>(call.context, token, n, body.len(), 0);
        host(|h| h.answer = None);
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        host(|h| h.logs.iter().map(|(_, m)| m.clone()).collect())
    }

    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        host(|h| h.logs.iter().any(|(_, m)| m.contains(needle)))
    }

    /// A shared-data value.
    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        host(|h| h.shared.get(key).map(|(v, _)| v.clone()))
    }

    /// How many shared-data keys exist.
    pub fn shared_len(&self) -> usize {
        host(|h| h.shared.len())
    }

    /// A metric's value by name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        host(|h| {
            h.metrics
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, v)| *v)
        })
    }
}

/// One request through the plugin. Build it, then run its phases in order.
#[derive(Debug)]
pub struct Request<'h, P: Plugin> {
    id: u32,
    _harness: PhantomData<&'h Harness<P>>,
}

impl<P: Plugin> Request<'_, P> {
    fn stream<R>(&self, f: impl FnOnce(&mut MockStream) -> R) -> R {
        host(|h| f(h.streams.get_mut(&self.id).expect("the request exists")))
    }

    fn set(&self, map: Map, name: &str, value: &str) {
        self.stream(|s| {
            let m = s.maps.entry(map).or_default();
            let name = name.to_ascii_lowercase();
            m.retain(|(k, _)| *k != name);
            m.push((name, value.as_bytes().to_vec()));
        });
    }

    /// Sets a request header (replacing it).
    pub fn header(self, name: &str, value: &str) -> Self {
        self.set(Map::RequestHeaders, name, value);
        self
    }

    /// Adds a request header value.
    pub fn add_header(self, name: &str, value: &str) -> Self {
        self.stream(|s| {
            s.maps
                .entry(Map::RequestHeaders)
                .or_default()
                .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()))
        });
        self
    }

    pub fn method(self, method: &str) -> Self {
        self.header(":method", method)
    }

    pub fn path(self, path: &str) -> Self {
        self.header(":path", path)
    }

    pub fn authority(self, authority: &str) -> Self {
        self.header(":authority", authority)
    }

    /// The client's address, `ip:port`.
    pub fn source(self, address: &str) -> Self {
        self.property("source.address", address.as_bytes())
    }

    /// Any property, by its dotted name (`route_name`, `request.id`, ...).
    pub fn property(self, name: &str, value: &[u8]) -> Self {
        self.stream(|s| s.properties.insert(name.to_string(), value.to_vec()));
        self
    }

    fn run(&self, phase: impl FnOnce(u32) -> u32) -> Outcome {
        let before = self.stream(|s| s.local_response.clone());
        host(|h| h.effective = self.id);
        let action = phase(self.id);
        let after = self.stream(|s| s.local_response.clone());
        match after {
            Some(r) if Some(&r) != before.as_ref() => Outcome::Respond(r),
            _ if action == 0 => Outcome::Continue,
            _ => Outcome::Pause,
        }
    }

    pub fn on_request_headers(&self) -> Outcome {
        self.run(|id| d::on_request_headers::<P>(id, 0, false))
    }

    /// Delivers `chunk` (appended to the request body buffer).
    pub fn on_request_body(&self, chunk: &[u8], end_of_stream: bool) -> Outcome {
        let size = self.stream(|s| {
            s.request_body.extend_from_slice(chunk);
            s.request_body.len()
        });
        self.run(|id| d::on_request_body::<P>(id, size, end_of_stream))
    }

    /// Delivers the response head: `status` and `headers`.
    pub fn on_response_headers(&self, status: u16, headers: &[(&str, &str)]) -> Outcome {
        self.stream(|s| {
            let mut m = vec![(":status".to_string(), status.to_string().into_bytes())];
            m.extend(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
            );
            s.maps.insert(Map::ResponseHeaders, m);
        });
        self.run(|id| d::on_response_headers::<P>(id, 0, false))
    }

    pub fn on_response_body(&self, chunk: &[u8], end_of_stream: bool) -> Outcome {
        let size = self.stream(|s| {
            s.response_body.extend_from_slice(chunk);
            s.response_body.len()
        });
        self.run(|id| d::on_response_body::<P>(id, size, end_of_stream))
    }

    /// Ends the request: `on_log`, then the context is deleted.
    pub fn finish(self) {
        host(|h| h.effective = self.id);
        d::on_log::<P>(self.id);
        d::on_done::<P>(self.id);
        d::on_delete::<P>(self.id);
    }

    fn get(&self, map: Map, name: &str) -> Option<String> {
        self.stream(|s| {
            s.maps.get(&map).and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            })
        })
    }

    /// A request header as the upstream would see it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.get(Map::RequestHeaders, name)
    }

    /// Every value of a request header.
    pub fn request_header_values(&self, name: &str) -> Vec<String> {
        self.stream(|s| {
            s.maps
                .get(&Map::RequestHeaders)
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// A response header as the client would see it.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.get(Map::ResponseHeaders, name)
    }

    /// Every response header.
    pub fn response_headers(&self) -> Vec<(String, String)> {
        self.stream(|s| {
            s.maps
                .get(&Map::ResponseHeaders)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// The local response the plugin sent, if any.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.stream(|s| s.local_response.clone())
    }

    /// Whether the plugin resumed the request (after a callout).
    pub fn resumed(&self) -> bool {
        self.stream(|s| !s.resumed.is_empty())
    }

    /// The request body as the upstream would see it.
    pub fn request_body(&self) -> Vec<u8> {
        self.stream(|s| s.request_body.clone())
    }

    /// A property the plugin set on this request.
    pub fn property_value(&self, name: &str) -> Option<Vec<u8>> {
        self.stream(|s| s.properties.get(name).cloned())
    }
}
