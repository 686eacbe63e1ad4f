//! `tick`: timers.
//!
//! The root context asks for a tick every 20 ms and writes how many ticks it has seen to the
//! shared-data key `tick.count`; every request gets that number as `x-ticks`.
//! Details in tests/plugins/README.md.

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

const TICK_COUNT: &str = "tick.count";

#[derive(Default)]
struct Root {
    ticks: u64,
}

struct ReportTicks;

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.set_tick_period(Duration::from_millis(20));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("tick: configured");
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let count = self.ticks.to_string();
        if let Err(status) = self.set_shared_data(TICK_COUNT, Some(count.as_bytes()), None) {
            warn!("tick: set_shared_data failed: {status:?}");
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ReportTicks))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for ReportTicks {}

impl HttpContext for ReportTicks {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (value, _cas) = self.get_shared_data(TICK_COUNT);
        let ticks = value.map_or_else(|| "0".to_owned(), |v| String::from_utf8_lossy(&v).into());
        self.set_http_request_header("x-ticks", Some(&ticks));
        Action::Continue
    }
}
