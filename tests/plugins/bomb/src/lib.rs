//! `bomb`: a callback that allocates until memory runs out, for the host's memory cap.
//!
//! `x-bomb` makes `on_http_request_headers` allocate 1 MiB chunks forever, writing to every
//! 4 KiB of each and keeping them all; without it the request gets `x-bomb: defused`.
//! Details in tests/plugins/README.md.

use std::hint::black_box;

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

struct Root;

struct Bomb;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("bomb: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Bomb))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Bomb {}

impl HttpContext for Bomb {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-bomb").is_some() {
            info!("bomb: allocating until memory runs out");
            explode();
        }
        self.add_http_request_header("x-bomb", "defused");
        Action::Continue
    }
}

/// Allocates and touches 1 MiB chunks, never freeing one, until allocation fails (which
/// aborts: a trap).
fn explode() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for offset in (0..CHUNK).step_by(PAGE) {
            chunk[offset] = 1;
        }
        hoard.push(black_box(chunk));
        black_box(&mut hoard);
    }
}
