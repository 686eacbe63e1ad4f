//! # portico-header-rewrite
//!
//! Portico's header-rewrite plugin: removes, renames, sets and adds request headers (before the
//! upstream sees them) and response headers (before the client does), with values that may
//! name parts of the request (`{request.id}`, `{source.ip}`, `{header.x-user}`, ...).
//!
//! ```yaml
//! plugins:
//!   security-headers:
//!     module: target/plugins/header-rewrite.wasm
//!     config:
//!       response:
//!         remove: [server, x-powered-by]
//!         set: { strict-transport-security: "max-age=31536000; includeSubDomains" }
//! ```
//!
//! Rules are compiled at configure ([`config`], [`template`]); a phase runs them in the order
//! remove, rename, set, add ([`apply`]). README.md has the operator's view.
#![forbid(unsafe_code)]

pub mod config;
pub mod template;

use portico_plugin_sdk::{Flow, Headers, Http, Plugin, Result, Root, plugin};

use crate::config::{Config, Rules};
use crate::template::{Var, Vars};

/// One configured rewrite.
pub struct HeaderRewrite {
    request: Rules,
    response: Rules,
}

/// The response rules' values, rendered while the request headers were there to read.
#[derive(Debug, Default)]
pub struct State {
    response_values: Option<Vec<String>>,
}

#[plugin]
impl Plugin for HeaderRewrite {
    type Config = Config;
    type State = State;

    fn configure(config: Config, _root: &mut Root) -> Result<Self> {
        Ok(HeaderRewrite {
            request: Rules::compile("request", config.request)?,
            response: Rules::compile("response", config.response)?,
        })
    }

    fn on_request_headers(&mut self, http: &mut Http<'_, State>) -> Result<Flow> {
        // Every value reads the request as it reached this plugin, before any rule of it ran.
        let values = render(&self.request, http)?;
        if self.response.has_placeholders() {
            // The request headers are gone by the response phase.
            http.state.response_values = Some(render(&self.response, http)?);
        }
        apply(&self.request, http.request(), &values)?;
        Ok(Flow::Continue)
    }

    fn on_response_headers(&mut self, http: &mut Http<'_, State>) -> Result<Flow> {
        let values = match http.state.response_values.take() {
            Some(v) => v,
            // Literal values, or a request answered before it reached this plugin: render
            // now, from what the host still knows (request headers then read as absent).
            None => render(&self.response, http)?,
        };
        apply(&self.response, http.response(), &values)?;
        Ok(Flow::Continue)
    }
}

/// The values of `rules` (`set`'s, then `add`'s) for this request.
fn render(rules: &Rules, http: &Http<'_, State>) -> Result<Vec<String>> {
    let mut vars = Request(http);
    rules.templates().map(|t| t.render(&mut vars)).collect()
}

/// Runs `rules` on `headers`: remove, rename, set, add. `values` are the rendered values of
/// `set` then `add`. A `set` whose value is empty removes its header (so a client's copy never
/// survives a placeholder with no value); an `add` whose value is empty adds nothing.
pub fn apply(rules: &Rules, headers: Headers, values: &[String]) -> Result<()> {
    for name in &rules.remove {
        headers.remove(name)?;
    }
    if !rules.rename.is_empty() {
        let all = headers.all_bytes()?;
        for (from, to) in &rules.rename {
            let moved: Vec<&[u8]> = all
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(from))
                .map(|(_, v)| v.as_slice())
                .collect();
            if moved.is_empty() {
                continue;
            }
            headers.remove(from)?;
            headers.remove(to)?;
            for value in moved {
                headers.add(to, value)?;
            }
        }
    }
    let (set, add) = values.split_at(rules.set.len().min(values.len()));
    for ((name, _), value) in rules.set.iter().zip(set) {
        if value.is_empty() {
            headers.remove(name)?;
        } else {
            headers.set(name, value)?;
        }
    }
    for ((name, _), value) in rules.add.iter().zip(add) {
        if !value.is_empty() {
            headers.add(name, value)?;
        }
    }
    Ok(())
}

/// Placeholders filled from the request.
struct Request<'a, 'h>(&'a Http<'h, State>);

impl Vars for Request<'_, '_> {
    fn get(&mut self, var: &Var) -> Result<Option<String>> {
        let http = self.0;
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        Ok(match var {
            Var::RequestId => http.request_id()?,
            Var::RequestHost => some(http.authority()?),
            Var::RequestPath => some(http.path()?),
            Var::RequestMethod => some(http.method()?),
            Var::RequestScheme => some(http.scheme()?),
            Var::SourceAddress => http.source_address()?,
            Var::SourceIp => http.client_ip()?.map(|ip| ip.to_string()),
            Var::Route => http.route_name()?,
            Var::Header(name) => http
                .request()
                .get_bytes(name)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        })
    }
}

#[cfg(test)]
mod tests;
