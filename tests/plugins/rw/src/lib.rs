//! `rw`: the benchmark plugin. Reads and writes request headers, nothing else.
//!
//! The plugin configuration is JSON `{"hostcalls": N}` (default 2). On request headers the
//! plugin makes exactly N header hostcalls, alternating a read of `x-rw-in` and a write of
//! `x-rw-<i>: 1`, and continues. bench/run.sh (scenario 6) and bench/micro/plugin.rs measure
//! chains of it. Details in tests/plugins/README.md.

use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { hostcalls: 2 }) });
}}

#[derive(Deserialize)]
struct Config {
    #[serde(default = "default_hostcalls")]
    hostcalls: u32,
}

fn default_hostcalls() -> u32 {
    2
}

struct Root {
    hostcalls: u32,
}

struct ReadWrite {
    hostcalls: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        if let Some(bytes) = self.get_plugin_configuration() {
            match serde_json::from_slice::<Config>(&bytes) {
                Ok(config) => self.hostcalls = config.hostcalls,
                Err(e) => {
                    error!("rw: invalid plugin configuration: {e}");
                    return false;
                }
            }
        }
        info!("rw: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ReadWrite {
            hostcalls: self.hostcalls,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for ReadWrite {}

impl HttpContext for ReadWrite {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for i in 0..self.hostcalls {
            if i % 2 == 0 {
                // The value is not used; the hostcall is what is measured.
                let _ = self.get_http_request_header("x-rw-in");
            } else {
                self.set_http_request_header(&format!("x-rw-{i}"), Some("1"));
            }
        }
        Action::Continue
    }
}
