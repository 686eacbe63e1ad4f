//! `properties`: `proxy_get_property` and `proxy_set_property`.
//!
//! Every request gets one `x-prop-<path>` header per well-known property (the path's dots
//! replaced by dashes), decoded as the property's type, plus `x-prop-roundtrip` from writing
//! and reading back `portico.test`. Details in tests/plugins/README.md.

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

/// How a property's bytes are turned into a header value.
#[derive(Clone, Copy)]
enum Encoding {
    /// UTF-8 text (decoded lossily).
    String,
    /// An `i64`, 8 bytes little-endian.
    Int,
    /// A `bool`, one byte 0 or 1.
    Bool,
    /// A map in the pairs encoding (count, then each key and value length, then the NUL-ended
    /// keys and values): shown as its keys, sorted and comma-separated.
    Pairs,
}

const PROPERTIES: &[(&str, Encoding)] = &[
    ("request.path", Encoding::String),
    ("request.url_path", Encoding::String),
    ("request.host", Encoding::String),
    ("request.scheme", Encoding::String),
    ("request.method", Encoding::String),
    ("request.id", Encoding::String),
    ("request.protocol", Encoding::String),
    ("request.query", Encoding::String),
    ("source.address", Encoding::String),
    ("source.port", Encoding::Int),
    ("destination.address", Encoding::String),
    ("destination.port", Encoding::Int),
    ("connection.tls_version", Encoding::String),
    ("connection.mtls", Encoding::Bool),
    ("plugin_name", Encoding::String),
    ("plugin_root_id", Encoding::String),
    ("route_name", Encoding::String),
    ("xds.route_name", Encoding::String),
    ("request.headers", Encoding::Pairs),
    ("request.size", Encoding::Int),
    ("request.total_size", Encoding::Int),
    ("request.duration", Encoding::Int),
];

struct Root;

struct Properties;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        info!("properties: configured");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Properties))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Properties {}

impl HttpContext for Properties {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for &(path, encoding) in PROPERTIES {
            let value = self.get_property(path.split('.').collect());
            let header = format!("x-prop-{}", path.replace('.', "-"));
            self.add_http_request_header(&header, &decode(value.as_deref(), encoding));
        }

        self.set_property(vec!["portico", "test"], Some(b"v1"));
        let roundtrip = self.get_property(vec!["portico", "test"]);
        self.add_http_request_header(
            "x-prop-roundtrip",
            &decode(roundtrip.as_deref(), Encoding::String),
        );
        Action::Continue
    }
}

fn decode(value: Option<&[u8]>, encoding: Encoding) -> String {
    let Some(bytes) = value else {
        return "<none>".to_owned();
    };
    match encoding {
        Encoding::String => String::from_utf8_lossy(bytes).into_owned(),
        Encoding::Int => match <[u8; 8]>::try_from(bytes) {
            Ok(le) => i64::from_le_bytes(le).to_string(),
            Err(_) => format!("<invalid: {bytes:?}>"),
        },
        Encoding::Pairs => match pair_keys(bytes) {
            Some(mut keys) => {
                keys.sort();
                keys.join(",")
            }
            None => format!("<invalid: {} bytes>", bytes.len()),
        },
        Encoding::Bool => match bytes {
            [0] => "false".to_owned(),
            [1] => "true".to_owned(),
            _ => format!("<invalid: {bytes:?}>"),
        },
    }
}

/// The keys of a pairs-encoded map, or `None` when the bytes are not one.
fn pair_keys(bytes: &[u8]) -> Option<Vec<String>> {
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut keys = Vec::with_capacity(n);
    for (k, v) in sizes {
        keys.push(String::from_utf8_lossy(bytes.get(at..at + k)?).into_owned());
        at += k + 1 + v + 1;
    }
    (at == bytes.len()).then_some(keys)
}
