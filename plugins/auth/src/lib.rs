//! # portico-auth
//!
//! Portico's authentication and authorisation plugin: one method per configured instance,
//! chosen by `type`:
//!
//! - [`basic`]: HTTP Basic against htpasswd lines (bcrypt, SHA-crypt), with a cache of
//!   successful verifications;
//! - [`api_key`]: a key in a header or a query parameter, compared by SHA-256 in constant time;
//! - [`forward`]: external authorisation, a callout to an upstream that answers 2xx to allow;
//! - [`ip`]: allow and deny CIDR lists over the client's address.
//!
//! ```yaml
//! plugins:
//!   admin-login:
//!     module: target/plugins/auth.wasm
//!     config:
//!       type: basic
//!       realm: admin
//!       users: ["alice:$2y$10$..."]
//! routes:
//!   - { name: admin, paths: [{ type: Prefix, value: /admin }], upstream: app, plugins: [admin-login] }
//! ```
//!
//! Every method decides in `on_request_headers` (forward: when its callout answers) and either
//! lets the request go on or answers it itself (401, 403, or the authorisation service's
//! answer). Every key, its default and the errors are in the crate's README.md.

#![forbid(unsafe_code)]

pub mod api_key;
pub mod basic;
pub mod forward;
pub mod ip;
mod metric;
mod util;

use portico_plugin_sdk::{
    CallResponse, Flow, Http, LocalResponse, Plugin, Result, Root, debug, info, plugin,
};
use serde::Deserialize;

use crate::metric::Metric;

/// The plugin's configuration: the method and its settings.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Config {
    Basic(basic::Config),
    ApiKey(api_key::Config),
    Forward(forward::Config),
    Ip(ip::Config),
}

/// What a method decided about a request.
#[derive(Debug)]
pub enum Verdict {
    /// Let it through (the method has already adjusted the request's headers).
    Allow,
    /// Answer it with this response; its `details` say why, for the log.
    Deny(LocalResponse),
    /// Hold it until a callout answers.
    Pending,
}

/// The configured plugin.
pub struct Auth {
    method: Method,
    allowed: Metric,
    denied: Metric,
}

enum Method {
    Basic(basic::Basic),
    ApiKey(api_key::ApiKey),
    Forward(forward::Forward),
    Ip(ip::Ip),
}

/// Per request: the callout a `forward` request waits for.
#[derive(Debug, Default)]
pub struct State {
    callout: Option<u32>,
}

#[plugin]
impl Plugin for Auth {
    type Config = Config;
    type State = State;

    fn configure(config: Config, _root: &mut Root) -> Result<Self> {
        let method = Method::new(config)?;
        info!("auth: {}", method.describe());
        Ok(Auth {
            method,
            allowed: Metric::define("allowed"),
            denied: Metric::define("denied"),
        })
    }

    fn on_request_headers(&mut self, http: &mut Http<'_, State>) -> Result<Flow> {
        let verdict = match &mut self.method {
            Method::Basic(m) => m.check(http)?,
            Method::ApiKey(m) => m.check(http)?,
            Method::Forward(m) => m.ask(http)?,
            Method::Ip(m) => m.check(http)?,
        };
        self.settle(http, verdict)
    }

    fn on_http_call_response(
        &mut self,
        http: &mut Http<'_, State>,
        response: CallResponse,
    ) -> Result<Flow> {
        let Method::Forward(m) = &self.method else {
            return Ok(Flow::Continue);
        };
        if http.state.callout != Some(response.token) {
            // Not the answer this request waits for.
            return Ok(Flow::Pause);
        }
        http.state.callout = None;
        let verdict = m.answer(http, &response)?;
        self.settle(http, verdict)
    }
}

impl Auth {
    /// Carries out a verdict: the one place a decision becomes a flow or a response.
    fn settle(&self, http: &mut Http<'_, State>, verdict: Verdict) -> Result<Flow> {
        match verdict {
            Verdict::Allow => {
                self.allowed.count();
                Ok(Flow::Continue)
            }
            Verdict::Deny(response) => {
                self.denied.count();
                debug!("auth: {} ({})", response.status, response.details);
                http.respond(response)
            }
            Verdict::Pending => Ok(Flow::Pause),
        }
    }
}

impl Method {
    /// The method `config` describes; a refusal is an [`Error::config`](portico_plugin_sdk::Error::config).
    fn new(config: Config) -> Result<Method> {
        Ok(match config {
            Config::Basic(c) => Method::Basic(basic::Basic::new(c)?),
            Config::ApiKey(c) => Method::ApiKey(api_key::ApiKey::new(c)?),
            Config::Forward(c) => Method::Forward(forward::Forward::new(c)?),
            Config::Ip(c) => Method::Ip(ip::Ip::new(c)?),
        })
    }

    fn describe(&self) -> String {
        match self {
            Method::Basic(m) => m.describe(),
            Method::ApiKey(m) => m.describe(),
            Method::Forward(m) => m.describe(),
            Method::Ip(m) => m.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_plugin_sdk::testing::{Harness, Outcome};
    use serde_json::json;

    #[test]
    fn the_type_picks_the_method_and_typos_are_refused() {
        let cases = [
            (json!({ "type": "ldap" }), "unknown variant `ldap`"),
            (json!({ "realm": "x" }), "missing field `type`"),
            (json!(null), "missing field `type`"),
            (
                json!({ "type": "ip", "allow": ["10.0.0.0/8"], "alow": [] }),
                "unknown field `alow`",
            ),
            (
                json!({ "type": "forward", "upstream": "auth", "timout": "1s" }),
                "unknown field `timout`",
            ),
        ];
        for (config, want) in cases {
            let err = Harness::<Auth>::new(config.clone()).unwrap_err();
            assert!(err.to_string().contains(want), "{config}: {err}");
        }
    }

    #[test]
    fn the_configured_method_is_logged_and_decisions_are_counted() {
        let h = Harness::<Auth>::new(json!({ "type": "ip", "allow": ["192.0.2.0/24"] })).unwrap();
        assert!(h.logged("auth: ip"), "{:?}", h.logs());
        h.request().on_request_headers();
        h.request().source("198.51.100.1:1").on_request_headers();
        h.request().source("198.51.100.2:1").on_request_headers();
        assert_eq!(
            (h.metric("allowed"), h.metric("denied")),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn every_method_refuses_a_bad_configuration_as_a_configuration_error() {
        for config in [
            json!({ "type": "basic", "users": [] }),
            json!({ "type": "api_key", "keys": [] }),
            json!({ "type": "api_key", "keys": [{ "name": "a", "sha256": "00" }] }),
            json!({ "type": "forward", "upstream": "" }),
            json!({ "type": "forward", "upstream": "auth", "timeout": "2m" }),
            json!({ "type": "ip" }),
            json!({ "type": "ip", "deny": ["10.0.0.0/33"] }),
        ] {
            let parsed: Config = serde_json::from_value(config.clone()).unwrap();
            let err = Method::new(parsed).err().expect("refused");
            assert!(err.is_config(), "{config}: {err:?}");
            assert!(
                err.to_string().starts_with("invalid configuration: "),
                "{err}"
            );
        }
    }

    #[test]
    fn a_host_without_metrics_still_decides() {
        // The host refuses to define metrics (as one without them would), then to count them.
        metric::host::BROKEN.set(true);
        let h = Harness::<Auth>::new(json!({ "type": "ip", "allow": ["192.0.2.0/24"] }));
        let h = h.expect("configured without metrics");
        assert_eq!(h.request().on_request_headers(), Outcome::Continue);
        let denied = h.request().source("198.51.100.1:1").on_request_headers();
        assert!(matches!(denied, Outcome::Respond(r) if r.status == 403));
        metric::host::BROKEN.set(false);
        assert_eq!((h.metric("allowed"), h.metric("denied")), (None, None));

        let h = Harness::<Auth>::new(json!({ "type": "ip", "allow": ["192.0.2.0/24"] })).unwrap();
        metric::host::BROKEN.set(true);
        assert_eq!(h.request().on_request_headers(), Outcome::Continue);
        let denied = h.request().source("198.51.100.1:1").on_request_headers();
        assert!(matches!(denied, Outcome::Respond(r) if r.status == 403));
        metric::host::BROKEN.set(false);
        assert_eq!(
            (h.metric("allowed"), h.metric("denied")),
            (Some(0), Some(0))
        );
    }
}
