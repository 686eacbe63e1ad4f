//! `config`: plugin configuration and VM start.
//!
//! The plugin configuration is JSON `{"header": STRING, "value": STRING, "reject": BOOL?}`.
//! `on_configure` refuses it when it is missing, does not parse, or says `"reject": true`;
//! otherwise every request gets the request header `<header>: <value>`.
//! Details in tests/plugins/README.md.

use std::rc::Rc;

use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Deserialize)]
struct Config {
    header: String,
    value: String,
    #[serde(default)]
    reject: bool,
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
}

struct AddHeader {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("config: no plugin configuration");
            return false;
        };
        let config: Config = match serde_json::from_slice(&bytes) {
            Ok(config) => config,
            Err(e) => {
                error!("config: invalid plugin configuration: {e}");
                return false;
            }
        };
        if config.reject {
            error!("config: rejected by configuration");
            return false;
        }
        self.config = Some(Rc::new(config));
        info!("config: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The host creates HTTP contexts only after on_configure succeeded.
        let config = self.config.clone()?;
        Some(Box::new(AddHeader { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_request_header(&self.config.header, &self.config.value);
        Action::Continue
    }
}
