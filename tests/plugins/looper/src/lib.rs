//! `looper`: a callback that never returns, for the host's deadline.
//!
//! `x-loop` spins forever in `on_http_request_headers`; `x-loop-response` (on the request)
//! spins forever in `on_http_response_headers`. Details in tests/plugins/README.md.

use std::hint::black_box;

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

#[derive(Default)]
struct Looper {
    /// The request carried `x-loop-response`.
    loop_in_response: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("looper: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::<Looper>::default())
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Looper {}

impl HttpContext for Looper {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-loop").is_some() {
            info!("looper: looping in on_http_request_headers");
            spin_forever();
        }
        self.loop_in_response = self.get_http_request_header("x-loop-response").is_some();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.loop_in_response {
            info!("looper: looping in on_http_response_headers");
            spin_forever();
        }
        Action::Continue
    }
}

/// Never returns; `black_box` keeps the optimiser from proving the loop does nothing.
fn spin_forever() -> ! {
    let mut spins: u64 = 0;
    loop {
        spins = black_box(spins.wrapping_add(1));
    }
}
