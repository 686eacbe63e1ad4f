//! `type: forward`: external authorisation, as Traefik's forwardAuth and Envoy's HTTP
//! ext_authz do it.
//!
//! For every request the plugin sends `GET <path>` to an upstream of the proxy with the
//! configured request headers and `x-forwarded-method`, `-proto`, `-host`, `-uri` and `-for`
//! describing the original request, and holds the request until the answer:
//!
//! - 2xx: the request goes on, with the configured `response_headers` copied from the answer
//!   (a client's own values of those headers are removed first, so they cannot be forged);
//! - any other status: that answer goes to the client (its status, body, and the headers a
//!   client needs: `www-authenticate`, `location`, `set-cookie`, `content-type`,
//!   `retry-after`), and the request never reaches its upstream;
//! - no answer (timeout, connection refused, unknown upstream): denied with `failure_status`
//!   (403 by default, as Envoy's ext_authz does).

use std::time::Duration;

use portico_plugin_sdk::{CallResponse, Callout, Error, Http, LocalResponse, Result, warn};
use serde::Deserialize;

use crate::util;
use crate::{State, Verdict};

/// The answer's headers a denial passes on to the client.
const DENIAL_HEADERS: [&str; 5] = [
    "www-authenticate",
    "location",
    "set-cookie",
    "content-type",
    "retry-after",
];

/// What the check says about the original request.
const FORWARDED: [&str; 5] = [
    "x-forwarded-method",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-for",
];

/// `type: forward`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A name from the proxy's `upstreams:`.
    upstream: String,
    /// The path (and query) the check is sent to.
    #[serde(default = "default_path")]
    path: String,
    /// Request headers passed to the authorisation service.
    #[serde(default = "default_request_headers")]
    request_headers: Vec<String>,
    /// Headers of a 2xx answer copied onto the request that goes upstream.
    #[serde(default)]
    response_headers: Vec<String>,
    /// How long to wait for the answer.
    #[serde(default = "default_timeout")]
    timeout: String,
    /// The status of a denial when no answer came.
    #[serde(default = "default_failure_status")]
    failure_status: u16,
}

fn default_path() -> String {
    "/".into()
}

fn default_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

fn default_timeout() -> String {
    "1s".into()
}

fn default_failure_status() -> u16 {
    403
}

/// The method, configured.
#[derive(Debug)]
pub struct Forward {
    upstream: String,
    path: String,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    timeout: Duration,
    failure_status: u16,
}

impl Forward {
    pub fn new(config: Config) -> Result<Forward> {
        let err = |m: String| Error::config(format!("forward: {m}"));
        if config.upstream.is_empty() {
            return Err(err("upstream is empty".into()));
        }
        if !config.path.starts_with('/') || !util::is_header_value(&config.path) {
            return Err(err(format!(
                "path {:?} must start with / and be printable ASCII",
                config.path
            )));
        }
        let names = |list: Vec<String>, key: &str| -> Result<Vec<String>> {
            list.iter()
                .enumerate()
                .map(|(i, h)| util::header_name(h).map_err(|e| err(format!("{key}[{i}]: {e}"))))
                .collect()
        };
        let request_headers = names(config.request_headers, "request_headers")?;
        if let Some((i, h)) = request_headers
            .iter()
            .enumerate()
            .find(|(_, h)| FORWARDED.contains(&h.as_str()))
        {
            return Err(err(format!(
                "request_headers[{i}]: the plugin sets {h} itself"
            )));
        }
        let response_headers = names(config.response_headers, "response_headers")?;
        let timeout =
            util::parse_duration(&config.timeout).map_err(|e| err(format!("timeout: {e}")))?;
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err(err("timeout must be more than 0 and at most 60s".into()));
        }
        if !(400..=599).contains(&config.failure_status) {
            return Err(err("failure_status must be 400 to 599".into()));
        }
        Ok(Forward {
            upstream: config.upstream,
            path: config.path,
            request_headers,
            response_headers,
            timeout,
            failure_status: config.failure_status,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "forward to {} {} (timeout {:?})",
            self.upstream, self.path, self.timeout
        )
    }

    /// Sends the check; the request waits for [`Forward::answer`].
    pub fn ask(&self, http: &mut Http<'_, State>) -> Result<Verdict> {
        let request = http.request();
        let mut callout = Callout::get(&self.upstream, &self.path)
            .timeout(self.timeout)
            .header("x-forwarded-method", http.method()?)
            .header("x-forwarded-proto", http.scheme()?)
            .header("x-forwarded-host", http.authority()?)
            .header("x-forwarded-uri", http.path()?);
        if let Some(ip) = http.client_ip()? {
            callout = callout.header("x-forwarded-for", ip.to_string());
        }
        for name in &self.request_headers {
            let Some(value) = request.get_bytes(name)? else {
                continue;
            };
            let Ok(value) = String::from_utf8(value) else {
                return Ok(Verdict::Deny(
                    LocalResponse::new(400)
                        .text("bad request\n")
                        .details(format!("forward: header {name} is not UTF-8")),
                ));
            };
            callout = callout.header(name.clone(), value);
        }
        match http.http_call(&callout) {
            Ok(token) => {
                http.state.callout = Some(token);
                Ok(Verdict::Pending)
            }
            Err(e) => {
                warn!("forward: cannot call upstream {:?}: {e}", self.upstream);
                Ok(self.failure(&format!("the callout failed: {e}")))
            }
        }
    }

    /// Decides on the authorisation service's answer.
    pub fn answer<S>(&self, http: &mut Http<'_, S>, response: &CallResponse) -> Result<Verdict> {
        if response.is_failure() {
            warn!(
                "forward: no answer from upstream {:?} (timeout or error)",
                self.upstream
            );
            return Ok(self.failure("no answer from the authorisation service"));
        }
        match response.status {
            200..=299 => {
                let request = http.request();
                for name in &self.response_headers {
                    request.remove(name)?;
                    for (k, v) in &response.headers {
                        if k.eq_ignore_ascii_case(name) {
                            request.add(name, v)?;
                        }
                    }
                }
                Ok(Verdict::Allow)
            }
            status @ 300..=599 => {
                let mut denial = LocalResponse::new(status)
                    .body(response.body.clone())
                    .details(format!(
                        "forward: the authorisation service answered {status}"
                    ));
                for (k, v) in &response.headers {
                    if DENIAL_HEADERS.iter().any(|d| k.eq_ignore_ascii_case(d)) {
                        denial = denial.header(k.to_ascii_lowercase(), v.clone());
                    }
                }
                Ok(Verdict::Deny(denial))
            }
            status => Ok(self.failure(&format!("the authorisation service answered {status}"))),
        }
    }

    fn failure(&self, why: &str) -> Verdict {
        Verdict::Deny(
            LocalResponse::new(self.failure_status)
                .text("access denied\n")
                .details(format!("forward: {why}")),
        )
    }
}

#[cfg(test)]
mod tests;
