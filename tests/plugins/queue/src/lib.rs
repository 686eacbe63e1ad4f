//! `queue`: shared queues.
//!
//! The root context registers the queue `events` and, whenever it is told the queue is ready,
//! drains it into the shared-data key `queue.received` (comma-joined). A request with
//! `x-enqueue: V` enqueues V; every request gets the current `queue.received` as
//! `x-queue-received`. Details in tests/plugins/README.md.

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

const QUEUE: &str = "events";
const RECEIVED: &str = "queue.received";
const MAX_ATTEMPTS: usize = 1000;

#[derive(Default)]
struct Root {
    queue_id: Option<u32>,
}

struct Enqueue;

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.queue_id = Some(self.register_shared_queue(QUEUE));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("queue: configured");
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if self.queue_id != Some(queue_id) {
            warn!("queue: on_queue_ready for unknown queue {queue_id}");
        }
        loop {
            match self.dequeue_shared_queue(queue_id) {
                Ok(Some(item)) => self.append_received(&String::from_utf8_lossy(&item)),
                Ok(None) => break,
                Err(status) => {
                    warn!("queue: dequeue_shared_queue failed: {status:?}");
                    break;
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Enqueue))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Appends `item` to the comma-joined list under `queue.received`, in a CAS loop.
    fn append_received(&self, item: &str) {
        for _ in 0..MAX_ATTEMPTS {
            let (value, cas) = self.get_shared_data(RECEIVED);
            let mut list = value
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(item);
            match self.set_shared_data(RECEIVED, Some(list.as_bytes()), cas) {
                Ok(()) => return,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!("queue: set_shared_data failed: {status:?}");
                    return;
                }
            }
        }
        warn!("queue: gave up appending {item:?} after {MAX_ATTEMPTS} attempts");
    }
}

impl Context for Enqueue {}

impl HttpContext for Enqueue {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(value) = self.get_http_request_header_bytes("x-enqueue") {
            match self.resolve_shared_queue("", QUEUE) {
                Some(queue_id) => {
                    if let Err(status) = self.enqueue_shared_queue(queue_id, Some(&value)) {
                        warn!("queue: enqueue_shared_queue failed: {status:?}");
                    }
                }
                None => warn!("queue: queue {QUEUE:?} not found"),
            }
        }
        let (received, _cas) = self.get_shared_data(RECEIVED);
        let received = received
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        self.set_http_request_header("x-queue-received", Some(&received));
        Action::Continue
    }
}
