//! `foreign`: `proxy_call_foreign_function`.
//!
//! `x-foreign-fn: NAME` calls the host's foreign function NAME with the bytes of
//! `x-foreign-arg` (or none) and reports the outcome as `x-foreign-result` or
//! `x-foreign-error`. Details in tests/plugins/README.md.

use log::info;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

struct Foreign;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("foreign: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Foreign))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Foreign {}

impl HttpContext for Foreign {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(name) = self.get_http_request_header("x-foreign-fn") else {
            return Action::Continue;
        };
        let argument = self
            .get_http_request_header_bytes("x-foreign-arg")
            .unwrap_or_default();
        match hostcalls::call_foreign_function(&name, Some(&argument)) {
            Ok(Some(result)) => {
                self.set_http_request_header(
                    "x-foreign-result",
                    Some(&String::from_utf8_lossy(&result)),
                );
            }
            Ok(None) => self.set_http_request_header("x-foreign-result", Some("<empty>")),
            Err(status) => {
                self.set_http_request_header("x-foreign-error", Some(&format!("{status:?}")));
            }
        }
        Action::Continue
    }
}
