//! `headers`: request and response header maps, pseudo-headers and local responses.
//!
//! A request with `x-deny: N` (N a number) is answered locally with status N; any other request
//! gets headers added, set, replaced and removed, and its response gets headers of its own.
//! The exact behaviour is in tests/plugins/README.md.

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

struct Headers;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("headers: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(status) = self
            .get_http_request_header("x-deny")
            .and_then(|value| value.parse::<u32>().ok())
        {
            self.send_http_response(
                status,
                vec![("x-denied-by", "headers")],
                Some(b"denied by headers plugin"),
            );
            return Action::Pause;
        }

        // Counted before this plugin changes anything; pseudo-headers included.
        let count = self.get_http_request_headers().len();

        self.add_http_request_header("x-plugin-headers", "seen");
        for (pseudo, name) in [
            (":method", "x-seen-method"),
            (":path", "x-seen-path"),
            (":authority", "x-seen-authority"),
            (":scheme", "x-seen-scheme"),
        ] {
            let value = self.get_http_request_header(pseudo);
            self.set_http_request_header(name, Some(value.as_deref().unwrap_or("<none>")));
        }
        self.remove_http_request_header("x-remove-me");
        if self.get_http_request_header("x-replace-me").is_some() {
            self.set_http_request_header("x-replace-me", Some("replaced"));
        }
        self.set_http_request_header("x-header-count", Some(&count.to_string()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-plugin-response", Some("headers"));
        self.remove_http_response_header("x-upstream-secret");
        let status = self.get_http_response_header(":status");
        self.set_http_response_header("x-seen-status", Some(status.as_deref().unwrap_or("<none>")));
        Action::Continue
    }
}
