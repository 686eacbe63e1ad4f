//! `callout`: `dispatch_http_call`, in the external-authorisation pattern.
//!
//! Each request is held while the plugin asks the configured upstream
//! (`{"upstream": NAME, "path": "/check"?, "timeout_ms": 1000?}`); a 200 answer lets it through
//! with `x-auth-user`/`x-auth-body` added, anything else (including a timeout) answers 403.
//! An answer with `x-panic` makes `on_http_call_response` panic (the guest traps).
//! Details in tests/plugins/README.md.

use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Deserialize)]
struct Config {
    upstream: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_path() -> String {
    "/check".to_owned()
}

fn default_timeout_ms() -> u64 {
    1000
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
}

struct Authorize {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                info!("callout: configured");
                true
            }
            Err(e) => {
                error!("callout: invalid plugin configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Authorize { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Authorize {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if self.get_http_call_response_header("x-panic").is_some() {
            panic!("callout: asked to panic in on_http_call_response");
        }
        let status = self.get_http_call_response_header(":status");
        if status.as_deref() != Some("200") {
            info!("callout: denied (callout status {status:?})");
            self.send_http_response(
                403,
                vec![("x-denied-by", "callout")],
                Some(b"denied by callout"),
            );
            return;
        }
        if let Some(user) = self.get_http_call_response_header("x-user") {
            self.add_http_request_header("x-auth-user", &user);
        }
        if let Some(body) = self.get_http_call_response_body(0, body_size)
            && !body.is_empty()
        {
            self.add_http_request_header("x-auth-body", &String::from_utf8_lossy(&body));
        }
        self.resume_http_request();
    }
}

impl HttpContext for Authorize {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let original_path = self.get_http_request_header(":path").unwrap_or_default();
        let authorization = self.get_http_request_header("authorization");
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", "auth"),
            ("x-original-path", original_path.as_str()),
        ];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match self.dispatch_http_call(&self.config.upstream, headers, None, vec![], timeout) {
            Ok(_token) => Action::Pause,
            Err(status) => {
                warn!("callout: dispatch_http_call failed: {status:?}");
                self.send_http_response(500, vec![], Some(b"callout dispatch failed"));
                Action::Pause
            }
        }
    }
}
