//! The SDK's probe: a plugin that exercises what the first-party plugins do not (bodies,
//! counters, queues, shared data, gauges and histograms, typed properties, header validation,
//! signature checks, a callout from the response phase). Its request header `x-probe` picks
//! what it does; what it found goes back
//! in request headers for the upstream to see. plugin-sdk/tests/harness.rs runs it on the mock
//! host (`testing`), and the end-to-end tests (tests/e2e/sdk.rs) run its `.wasm`, built by
//! scripts/build-plugins.sh, in Portico.
//!
//! ```sh
//! cargo build -p portico-plugin-sdk --example probe --target wasm32-wasip1 --release
//! ```

use portico_plugin_sdk::crypto::{self, Algorithm, Key};
use portico_plugin_sdk::metrics::{Gauge, Histogram};
use portico_plugin_sdk::shared::{self, Counter, Queue};
use portico_plugin_sdk::{
    Body, CallResponse, Callout, Error, Flow, Http, Plugin, Result, Root, plugin, property,
};
use serde::Deserialize;

/// No `deny_unknown_fields`: the SDK refuses unknown keys by itself.
#[derive(Deserialize)]
pub struct Config {
    #[serde(default)]
    uppercase_body: bool,
}

pub struct Probe {
    uppercase_body: bool,
    queue: Queue,
    gauge: Gauge,
    histogram: Histogram,
}

#[derive(Default)]
pub struct State {
    seen_body: usize,
    /// `x-probe: response-callout`: the response waits for a callout to the `up` upstream.
    callout_on_response: bool,
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
        let probe = http.request().get("x-probe")?;
        http.state.callout_on_response = probe.as_deref() == Some("response-callout");
        let req = http.request();
        match probe.as_deref() {
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

    /// Holds the response (`Flow::Pause`) until a callout answers; the answer's status goes on
    /// the response as `x-probe-callout`, and `Flow::Continue` from the callout hook resumes
    /// the response (`proxy_continue_stream` of the response), not the request.
    fn on_response_headers(&mut self, http: &mut Http<'_, State>) -> Result<Flow> {
        if !http.state.callout_on_response {
            return Ok(Flow::Continue);
        }
        http.http_call(&Callout::get("up", "/probe-callout"))?;
        Ok(Flow::Pause)
    }

    fn on_http_call_response(
        &mut self,
        http: &mut Http<'_, State>,
        response: CallResponse,
    ) -> Result<Flow> {
        http.response()
            .set("x-probe-callout", response.status.to_string())?;
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
