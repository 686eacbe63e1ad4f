//! The SDK's API through its own test harness: a probe plugin that exercises what the
//! first-party plugins do not (bodies, counters with and without Portico's host functions,
//! queues, gauges and histograms, typed properties, header validation, signature checks without
//! a verifier, configuration refusals).

use portico_plugin_sdk::crypto::{self, Algorithm, Key};
use portico_plugin_sdk::metrics::{Gauge, Histogram};
use portico_plugin_sdk::shared::{self, Counter, Queue};
use portico_plugin_sdk::testing::{Harness, Outcome};
use portico_plugin_sdk::{Body, Error, Flow, Http, Plugin, Result, Root, plugin, property};
use serde::Deserialize;
use serde_json::json;

/// No `deny_unknown_fields`: the SDK refuses unknown keys by itself.
#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    uppercase_body: bool,
}

struct Probe {
    uppercase_body: bool,
    queue: Queue,
    gauge: Gauge,
    histogram: Histogram,
}

#[derive(Default)]
struct State {
    seen_body: usize,
}

#[plugin]
impl Plugin for Probe {
    type Config = Config;
    type State = State;

    fn configure(config: Config, _root: &mut Root) -> Result<Self> {
        Ok(Probe {
            uppercase_body: config.uppercase_body,
            queue: Queue::register("events")?,
            gauge: Gauge::define("probe_gauge")?,
            histogram: Histogram::define("probe_histogram")?,
        })
    }

    fn on_request_headers(&mut self, http: &mut Http<'_, State>) -> Result<Flow> {
        let req = http.request();
        match req.get("x-probe")?.as_deref() {
            Some("counter") => {
                let n = Counter::new("hits").add(1)?;
                req.set("x-count", n.to_string())?;
            }
            Some("bad-header") => {
                let name = req.set("bad name", "v").unwrap_err();
                let value = req.set("x-ok", "a\r\nb").unwrap_err();
                req.set(
                    "x-errors",
                    format!("{} {}", name.is_invalid(), value.is_invalid()),
                )?;
            }
            Some("crypto") => {
                let answer = match crypto::verify(
                    Algorithm::HS256,
                    &Key::Hmac(b"0123456789abcdef0123456789abcdef".to_vec()),
                    b"message",
                    &[0; 32],
                ) {
                    Err(e) => format!("unsupported={}", e.is_unsupported()),
                    Ok(valid) => format!("fallback says valid={valid}"),
                };
                req.set("x-crypto", answer)?;
                // A key that does not fit the algorithm is never valid, host or not.
                let fits = crypto::verify(
                    Algorithm::RS256,
                    &Key::Hmac(b"k".to_vec()),
                    b"message",
                    &[0; 32],
                )?;
                req.set("x-crypto-mismatch", fits.to_string())?;
            }
            Some("properties") => {
                let port = property::int(&["source", "port"])?;
                let mtls = property::bool(&["connection", "mtls"])?;
                req.set("x-props", format!("{port:?} {mtls:?}"))?;
                property::set(&["probe", "mark"], b"set")?;
            }
            Some("queue") => {
                self.queue.enqueue(b"one")?;
                self.queue.enqueue(b"two")?;
                let first = self.queue.dequeue()?.unwrap_or_default();
                req.set("x-queue", String::from_utf8_lossy(&first).as_ref())?;
            }
            Some("metrics") => {
                self.gauge.set(7)?;
                self.gauge.add(-2)?;
                self.histogram.record(42)?;
            }
            Some("shared") => {
                shared::update("k", |old| {
                    let n = old.map_or(0, |b| b.len());
                    Some(vec![b'x'; n + 1])
                })?;
                let entry = shared::get("k")?.ok_or_else(|| Error::new("written"))?;
                req.set("x-shared", entry.value.len().to_string())?;
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn on_request_body(&mut self, http: &mut Http<'_, State>, body: Body) -> Result<Flow> {
        if !self.uppercase_body {
            return Ok(Flow::Continue);
        }
        http.state.seen_body = body.len();
        if !body.end_of_stream() {
            return Ok(Flow::Pause);
        }
        let upper = body.read()?.to_ascii_uppercase();
        body.replace(&upper)?;
        Ok(Flow::Continue)
    }
}

#[test]
fn a_body_hook_buffers_then_rewrites_the_whole_body() {
    let h = Harness::<Probe>::new(json!({ "uppercase_body": true })).unwrap();
    let req = h.request().method("POST");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.on_request_body(b"hello ", false), Outcome::Pause);
    assert_eq!(req.on_request_body(b"world", true), Outcome::Continue);
    assert_eq!(req.request_body(), b"HELLO WORLD");
}

#[test]
fn counters_count_with_portico_and_fall_back_elsewhere() {
    // One harness at a time per thread: each is made when the last is done.
    for portico in [true, false] {
        let h = if portico {
            Harness::<Probe>::new(json!(null)).unwrap()
        } else {
            Harness::<Probe>::in_other_host(json!(null)).unwrap()
        };
        for n in 1..=3 {
            let req = h.request().header("x-probe", "counter");
            assert_eq!(req.on_request_headers(), Outcome::Continue);
            assert_eq!(req.request_header("x-count"), Some(n.to_string()));
        }
    }
    // The fallback kept its count in shared data; Portico's counter did not touch it.
    let other = Harness::<Probe>::in_other_host(json!(null)).unwrap();
    other
        .request()
        .header("x-probe", "counter")
        .on_request_headers();
    assert!(other.shared("portico.counter.hits").is_some());
    let portico = Harness::<Probe>::new(json!(null)).unwrap();
    portico
        .request()
        .header("x-probe", "counter")
        .on_request_headers();
    assert!(portico.shared("portico.counter.hits").is_none());
}

#[test]
fn invalid_header_names_and_values_are_errors_not_silence() {
    let h = Harness::<Probe>::new(json!(null)).unwrap();
    let req = h.request().header("x-probe", "bad-header");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.request_header("x-errors").as_deref(), Some("true true"));
    assert_eq!(req.request_header("x-ok"), None);
}

#[test]
fn without_a_verifier_signatures_are_unsupported_never_a_trap() {
    let h = Harness::<Probe>::in_other_host(json!(null)).unwrap();
    let req = h.request().header("x-probe", "crypto");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    // Without the in-guest fallback: an error that says so. With it (the workspace's plugins
    // turn the feature on for their tests): the guest checks, and a zero signature is invalid.
    let expected = if cfg!(feature = "crypto-fallback") {
        "fallback says valid=false"
    } else {
        "unsupported=true"
    };
    assert_eq!(req.request_header("x-crypto").as_deref(), Some(expected));
    assert_eq!(
        req.request_header("x-crypto-mismatch").as_deref(),
        Some("false")
    );
}

#[test]
fn typed_properties_read_envoy_encodings() {
    let h = Harness::<Probe>::new(json!(null)).unwrap();
    let req = h
        .request()
        .header("x-probe", "properties")
        .property("source.port", &50000i64.to_le_bytes())
        .property("connection.mtls", &[1]);
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(
        req.request_header("x-props").as_deref(),
        Some("Some(50000) Some(true)")
    );
    assert_eq!(
        req.property_value("probe.mark").as_deref(),
        Some(&b"set"[..])
    );

    // A property of the wrong width is an error (the hook's Err fails the request with 500).
    let bad = h
        .request()
        .header("x-probe", "properties")
        .property("source.port", b"80");
    assert!(matches!(bad.on_request_headers(), Outcome::Respond(r) if r.status == 500));
}

#[test]
fn queues_shared_data_and_metrics() {
    let h = Harness::<Probe>::new(json!(null)).unwrap();
    let req = h.request().header("x-probe", "queue");
    req.on_request_headers();
    assert_eq!(req.request_header("x-queue").as_deref(), Some("one"));

    for n in 1..=2 {
        let req = h.request().header("x-probe", "shared");
        req.on_request_headers();
        assert_eq!(req.request_header("x-shared"), Some(n.to_string()));
    }

    h.request()
        .header("x-probe", "metrics")
        .on_request_headers();
    assert_eq!(h.metric("probe_gauge"), Some(5));
    assert_eq!(h.metric("probe_histogram"), Some(42));
}

#[test]
fn unknown_configuration_keys_are_refused_by_the_sdk() {
    let err = Harness::<Probe>::new(json!({ "uppercase_bdy": true })).unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(
        err.to_string().contains("unknown key `uppercase_bdy`"),
        "{err}"
    );
    let err = Harness::<Probe>::new(json!({ "uppercase_body": "yes" })).unwrap_err();
    assert!(err.to_string().contains("uppercase_body"), "{err}");
}
