//! `body`: request and response bodies buffered across chunks.
//!
//! The request body is held back until its end and then forwarded ASCII-uppercased. A response
//! whose headers carry `x-rewrite-body` is held back until its end and forwarded with every
//! `hello` replaced by `HOWDY`, including matches that straddle the upstream's chunks. Both
//! rewrites keep the length, so `content-length` stays right. Details in tests/plugins/README.md.

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

#[derive(Default)]
struct Body {
    /// The response carried `x-rewrite-body`.
    rewrite_response: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("body: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::<Body>::default())
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Body {}

impl HttpContext for Body {
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.rewrite_response = self.get_http_response_header("x-rewrite-body").is_some();
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.rewrite_response {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(mut body) = self.get_http_response_body(0, body_size) {
            replace_in_place(&mut body, b"hello", b"HOWDY");
            self.set_http_response_body(0, body_size, &body);
        }
        Action::Continue
    }
}

/// Replaces each non-overlapping `from`, left to right, with `to` of the same length.
fn replace_in_place(haystack: &mut [u8], from: &[u8], to: &[u8]) {
    debug_assert_eq!(from.len(), to.len());
    let mut i = 0;
    while i + from.len() <= haystack.len() {
        if haystack[i..].starts_with(from) {
            haystack[i..i + to.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
}
