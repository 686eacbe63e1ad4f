//! `metrics`: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric`.
//!
//! The root context defines a counter `requests_total`, a gauge `last_path_length` and a
//! histogram `body_bytes`; each request updates them and carries the counter's value as
//! `x-requests-total`. Details in tests/plugins/README.md.

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Clone, Copy)]
struct MetricIds {
    requests_total: u32,
    last_path_length: u32,
    body_bytes: u32,
}

#[derive(Default)]
struct Root {
    ids: Option<MetricIds>,
}

struct Measure {
    ids: MetricIds,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        let define = |kind, name| match hostcalls::define_metric(kind, name) {
            Ok(id) => Some(id),
            Err(status) => {
                warn!("metrics: define_metric({name}) failed: {status:?}");
                None
            }
        };
        let requests_total = define(MetricType::Counter, "requests_total");
        let last_path_length = define(MetricType::Gauge, "last_path_length");
        let body_bytes = define(MetricType::Histogram, "body_bytes");
        let (Some(requests_total), Some(last_path_length), Some(body_bytes)) =
            (requests_total, last_path_length, body_bytes)
        else {
            return false;
        };
        self.ids = Some(MetricIds {
            requests_total,
            last_path_length,
            body_bytes,
        });
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("metrics: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Measure { ids: self.ids? }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Measure {}

impl HttpContext for Measure {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ids = self.ids;
        if let Err(status) = hostcalls::increment_metric(ids.requests_total, 1) {
            warn!("metrics: increment_metric(requests_total) failed: {status:?}");
        }
        let path_length = self.get_http_request_header(":path").map_or(0, |p| p.len());
        if let Err(status) = hostcalls::record_metric(ids.last_path_length, path_length as u64) {
            warn!("metrics: record_metric(last_path_length) failed: {status:?}");
        }
        if let Some(length) = self
            .get_http_request_header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            && let Err(status) = hostcalls::record_metric(ids.body_bytes, length)
        {
            warn!("metrics: record_metric(body_bytes) failed: {status:?}");
        }
        let total = match hostcalls::get_metric(ids.requests_total) {
            Ok(total) => total.to_string(),
            Err(status) => format!("{status:?}"),
        };
        self.set_http_request_header("x-requests-total", Some(&total));
        Action::Continue
    }
}
