//! `utf8`: header values that are not UTF-8.
//!
//! Reads the request headers through the byte API and then through the `String` API (which in
//! proxy-wasm 0.2.5 panics on a value that is not UTF-8), and adds `x-utf8-count`. What a
//! non-UTF-8 value does is the host's decision; this plugin only exercises both paths.
//! Details in tests/plugins/README.md.

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

struct Utf8;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("utf8: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Utf8))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Utf8 {}

impl HttpContext for Utf8 {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Bytes first: this read survives any value; the String read after it does not.
        let _as_bytes = self.get_http_request_headers_bytes();
        let as_strings = self.get_http_request_headers();
        self.set_http_request_header("x-utf8-count", Some(&as_strings.len().to_string()));
        Action::Continue
    }
}
