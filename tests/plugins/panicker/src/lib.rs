//! `panicker`: panics in callbacks (on wasm32-wasip1 a panic aborts: the guest traps).
//!
//! `x-panic` panics in `on_http_request_headers`; `x-panic-response` (on the request) panics in
//! `on_http_response_headers`; `x-panic-trailers` in `on_http_request_trailers`; otherwise the
//! request gets `x-panicker: ok`. `x-print` writes its value to stdout and stderr (WASI
//! `fd_write`) first.
//! Details in tests/plugins/README.md.

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

#[derive(Default)]
struct Panicker {
    /// The request carried `x-panic-response`.
    panic_in_response: bool,
    /// The request carried `x-panic-trailers`.
    panic_in_trailers: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("panicker: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::<Panicker>::default())
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Panicker {}

impl HttpContext for Panicker {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(value) = self.get_http_request_header("x-print") {
            println!("panicker: stdout {value}");
            eprintln!("panicker: stderr {value}");
        }
        if self.get_http_request_header("x-panic").is_some() {
            panic!("panicker: asked to panic");
        }
        self.panic_in_response = self.get_http_request_header("x-panic-response").is_some();
        self.panic_in_trailers = self.get_http_request_header("x-panic-trailers").is_some();
        self.add_http_request_header("x-panicker", "ok");
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.panic_in_trailers {
            panic!("panicker: asked to panic in on_http_request_trailers");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.panic_in_response {
            panic!("panicker: asked to panic in on_http_response_headers");
        }
        Action::Continue
    }
}
