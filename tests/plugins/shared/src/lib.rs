//! `shared`: shared data with compare-and-swap.
//!
//! Every request increments the shared-data key `shared.counter` in a CAS loop and carries the
//! value it wrote as `x-count`, on the request and again on its response.
//! Details in tests/plugins/README.md.

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

const COUNTER: &str = "shared.counter";
const MAX_ATTEMPTS: usize = 1000;

struct Root;

#[derive(Default)]
struct Count {
    /// The value this request wrote, echoed on the response.
    count: Option<u64>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("shared: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::<Count>::default())
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Count {
    /// Increments the counter; `None` when every attempt lost the race.
    fn increment(&self) -> Option<u64> {
        for _ in 0..MAX_ATTEMPTS {
            let (value, cas) = self.get_shared_data(COUNTER);
            let current = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let next = current + 1;
            match self.set_shared_data(COUNTER, Some(next.to_string().as_bytes()), cas) {
                Ok(()) => return Some(next),
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!("shared: set_shared_data failed: {status:?}");
                    return None;
                }
            }
        }
        None
    }
}

impl Context for Count {}

impl HttpContext for Count {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(count) = self.increment() else {
            self.send_http_response(500, vec![], Some(b"shared: counter not updated"));
            return Action::Pause;
        };
        self.count = Some(count);
        self.set_http_request_header("x-count", Some(&count.to_string()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(count) = self.count {
            self.set_http_response_header("x-count", Some(&count.to_string()));
        }
        Action::Continue
    }
}
