//! # portico-plugin-sdk
//!
//! Write a Portico plugin as an ordinary Rust crate: implement [`Plugin`] in a block marked
//! [`#[plugin]`](plugin), build with `cargo build --target wasm32-wasip1 --release`, and load the
//! `.wasm` by naming it in Portico's YAML. The module speaks Proxy-Wasm ABI v0.2.1, so it also
//! runs in Envoy and other Proxy-Wasm hosts.
//!
//! ## A plugin in twenty lines
//!
//! ```
//! use portico_plugin_sdk::{plugin, Flow, Http, Plugin, Result, Root};
//! use serde::Deserialize;
//!
//! /// Adds a greeting header to every request.
//! struct Hello {
//!     greeting: String,
//! }
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     #[serde(default = "default_greeting")]
//!     greeting: String,
//! }
//!
//! fn default_greeting() -> String {
//!     "hello".into()
//! }
//!
//! #[plugin]
//! impl Plugin for Hello {
//!     type Config = Config;
//!     type State = ();
//!
//!     fn configure(config: Config, _root: &mut Root) -> Result<Self> {
//!         Ok(Hello { greeting: config.greeting })
//!     }
//!
//!     fn on_request_headers(&mut self, http: &mut Http<'_, ()>) -> Result<Flow> {
//!         http.request().set("x-greeting", &self.greeting)?;
//!         Ok(Flow::Continue)
//!     }
//! }
//! ```
//!
//! `Cargo.toml` needs `crate-type = ["cdylib", "rlib"]` under `[lib]` (the `.wasm`, and a
//! library for `cargo test`). In Portico:
//!
//! ```yaml
//! upstreams:
//!   app: { endpoints: ["127.0.0.1:9000"] }
//! plugins:
//!   hello:
//!     module: target/wasm32-wasip1/release/hello.wasm
//!     config: { greeting: hi }
//! routes:
//!   - name: app
//!     hosts: [example.com]
//!     plugins: [hello]
//!     upstream: app
//! ```
//!
//! ## The model
//!
//! - **`#[plugin]` exports it.** It exports the Proxy-Wasm entry points for your type, only
//!   those of the hooks your `impl` defines: the host never calls into the plugin for a phase
//!   it does not handle, and a chain with no body hooks streams bodies untouched.
//! - **One plugin value per configuration.** [`Plugin::configure`] builds it from your typed
//!   [`Plugin::Config`], deserialised from the YAML `config` with serde. An `Err` refuses the
//!   configuration: the message reaches the operator through `portico check` and the reload
//!   error. A key your `Config` does not read is refused too, so typos never pass silently.
//! - **Hooks per phase**, all defaulted: [`Plugin::on_request_headers`],
//!   [`Plugin::on_request_body`], [`Plugin::on_response_headers`], ... Each gets an [`Http`]:
//!   the request's headers, body, properties, and your per-request [`Plugin::State`].
//! - **[`Flow`]**: `Continue`, or `Pause` to hold the request (until a callout answers) or, in
//!   a body hook, to buffer the body until its end. [`Http::respond`] answers the request
//!   itself with a [`LocalResponse`] and stops the chain.
//! - **Errors, never panics**: every call that asks the host something returns [`Result`]
//!   (the logging macros and [`now`] do not: see there). A hook that returns `Err` fails
//!   its request with 500 and logs why — a failing auth plugin denies. A panic traps the
//!   instance, which Portico rebuilds; avoid it.
//! - **Shared state**: [`shared`] (process-wide key-value data with compare-and-swap, an atomic
//!   [`shared::Counter`], queues). **Callouts**: [`Callout`] to an upstream, answered in
//!   [`Plugin::on_http_call_response`]. **Ticks**: [`Root::set_tick_period`] and
//!   [`Plugin::on_tick`]. **Metrics**: [`metrics`]. **Logging**: [`info!`], [`warn!`], ...
//!   **Signatures**: [`crypto::verify`], native in Portico.
//!
//! ## Testing
//!
//! With the `testing` feature (`[dev-dependencies] portico-plugin-sdk = { ..., features =
//! ["testing"] }`), [`testing::Harness`] runs your hooks natively under `cargo test` against a
//! mock host: set headers, run a phase, assert on headers, the local response and the logs.
//!
//! No `unsafe` is needed in a plugin: the SDK keeps all of it in one private module.

#![deny(unsafe_code)]

#[cfg(target_arch = "wasm32")]
mod abi;
pub mod crypto;
#[doc(hidden)]
pub mod dispatch;
mod error;
mod host;
mod http;
pub mod log;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
mod mock;
pub mod property;
pub mod shared;
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub mod testing;
mod util;

#[cfg(target_arch = "wasm32")]
use abi as sys;
#[cfg(not(target_arch = "wasm32"))]
use mock as sys;

use std::time::{Duration, SystemTime};

pub use error::{Error, Result};
pub use http::{Body, CallResponse, Callout, Flow, Headers, Http, LocalResponse, check_header};
/// Put it on your `impl Plugin for T` block: exports the Proxy-Wasm entry points for `T`, only
/// those of the hooks the block defines (the host never calls into the plugin for the others).
pub use portico_plugin_sdk_macros::plugin;
#[doc(hidden)]
pub use serde;

/// A plugin: built once per configuration, then its hooks run for every request.
///
/// Every hook has a default that lets the request through, so a plugin implements only the
/// phases it cares about.
pub trait Plugin: Sized + 'static {
    /// The plugin's configuration: the YAML `config` value, deserialised with serde. A key
    /// that no field reads refuses the configuration (`unknown key `a.b``), with or without
    /// `deny_unknown_fields` — except inside an internally tagged or untagged enum or a
    /// `#[serde(flatten)]` field, which serde reads into a buffer of its own where the SDK
    /// cannot see what was left unread: put `#[serde(deny_unknown_fields)]` on such enums (and
    /// on the structs their variants hold), and avoid `flatten` in a `Config`.
    type Config: serde::de::DeserializeOwned;
    /// Per-request state, created with `Default` for every request (`()` when unused).
    type State: Default + 'static;

    /// Builds the plugin from its configuration. `Err` refuses the configuration.
    fn configure(config: Self::Config, root: &mut Root) -> Result<Self>;

    /// The request's headers arrived.
    fn on_request_headers(&mut self, http: &mut Http<'_, Self::State>) -> Result<Flow> {
        let _ = http;
        Ok(Flow::Continue)
    }

    /// A chunk of the request body arrived. Return [`Flow::Pause`] to buffer the body until
    /// its end (the host caps the buffer and answers 413 above it).
    fn on_request_body(&mut self, http: &mut Http<'_, Self::State>, body: Body) -> Result<Flow> {
        let _ = (http, body);
        Ok(Flow::Continue)
    }

    /// The request's trailers arrived.
    fn on_request_trailers(&mut self, http: &mut Http<'_, Self::State>) -> Result<Flow> {
        let _ = http;
        Ok(Flow::Continue)
    }

    /// The response's headers arrived (from the upstream, or a local response).
    fn on_response_headers(&mut self, http: &mut Http<'_, Self::State>) -> Result<Flow> {
        let _ = http;
        Ok(Flow::Continue)
    }

    /// A chunk of the response body arrived.
    fn on_response_body(&mut self, http: &mut Http<'_, Self::State>, body: Body) -> Result<Flow> {
        let _ = (http, body);
        Ok(Flow::Continue)
    }

    /// The response's trailers arrived.
    fn on_response_trailers(&mut self, http: &mut Http<'_, Self::State>) -> Result<Flow> {
        let _ = http;
        Ok(Flow::Continue)
    }

    /// The request is over (access logging).
    fn on_log(&mut self, http: &mut Http<'_, Self::State>) {
        let _ = http;
    }

    /// The answer to a callout this request sent. `Continue` resumes the request where it
    /// paused; [`Http::respond`] answers it instead; `Pause` keeps waiting (another callout).
    fn on_http_call_response(
        &mut self,
        http: &mut Http<'_, Self::State>,
        response: CallResponse,
    ) -> Result<Flow> {
        let _ = (http, response);
        Ok(Flow::Continue)
    }

    /// The tick set with [`Root::set_tick_period`].
    fn on_tick(&mut self, root: &mut Root) -> Result<()> {
        let _ = root;
        Ok(())
    }

    /// The answer to a callout sent with [`Root::http_call`] (outside any request).
    fn on_root_http_call_response(
        &mut self,
        root: &mut Root,
        response: CallResponse,
    ) -> Result<()> {
        let _ = (root, response);
        Ok(())
    }

    /// An item arrived on a queue this plugin registered.
    fn on_queue_ready(&mut self, root: &mut Root, queue: shared::Queue) -> Result<()> {
        let _ = (root, queue);
        Ok(())
    }
}

/// The plugin's context outside any request: ticks and callouts of its own.
#[derive(Debug)]
pub struct Root {
    pub(crate) id: u32,
}

impl Root {
    /// Calls [`Plugin::on_tick`] every `period` (zero stops it).
    pub fn set_tick_period(&mut self, period: Duration) -> Result<()> {
        let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        sys::set_tick_period(millis)
    }

    /// Sends a callout; its answer comes to [`Plugin::on_root_http_call_response`].
    pub fn http_call(&mut self, callout: &Callout) -> Result<u32> {
        callout.send(self.id)
    }

    /// This plugin's configured name (`plugin_name`).
    pub fn plugin_name(&self) -> Result<Option<String>> {
        property::string(&["plugin_name"])
    }
}

/// The host's wall-clock time. Not a `Result`: a host that cannot tell the time (no host
/// does) falls back to WASI's clock, which every wasm32-wasip1 host has.
pub fn now() -> SystemTime {
    match sys::now_nanos() {
        Ok(n) => SystemTime::UNIX_EPOCH + Duration::from_nanos(n),
        Err(_) => SystemTime::now(),
    }
}

/// What `#[plugin]` expands to: the lifecycle exports, and one per hook the `impl` defines
/// (other names — `configure`, helpers — export nothing).
#[doc(hidden)]
#[macro_export]
macro_rules! __export_hooks {
    ($plugin:ty; $($hook:ident),* $(,)?) => {
        // On a native target nothing is exported; naming the entry point keeps the plugin type
        // (and what only it uses) from reading as dead code there.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(u32, u32) = $crate::dispatch::on_context_create::<$plugin>;
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            extern "C" fn proxy_on_context_create(id: u32, root: u32) {
                $crate::dispatch::on_context_create::<$plugin>(id, root)
            }
            #[unsafe(no_mangle)]
            extern "C" fn proxy_on_vm_start(root: u32, size: usize) -> u32 {
                $crate::dispatch::on_vm_start::<$plugin>(root, size) as u32
            }
            #[unsafe(no_mangle)]
            extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
                $crate::dispatch::on_configure::<$plugin>(root, size) as u32
            }
            #[unsafe(no_mangle)]
            extern "C" fn proxy_on_delete(id: u32) {
                $crate::dispatch::on_delete::<$plugin>(id)
            }
            // Called only when the plugin asked for them (a tick period, a queue, a callout),
            // so they cost nothing per request.
            #[unsafe(no_mangle)]
            extern "C" fn proxy_on_tick(root: u32) {
                $crate::dispatch::on_tick::<$plugin>(root)
            }
            #[unsafe(no_mangle)]
            extern "C" fn proxy_on_queue_ready(root: u32, queue: u32) {
                $crate::dispatch::on_queue_ready::<$plugin>(root, queue)
            }
            #[unsafe(no_mangle)]
            extern "C" fn proxy_on_http_call_response(
                id: u32,
                token: u32,
                headers: usize,
                body: usize,
                trailers: usize,
            ) {
                $crate::dispatch::on_http_call_response::<$plugin>(id, token, headers, body, trailers)
            }
            $( $crate::__export_hook!($plugin, $hook); )*
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_hook {
    ($plugin:ty, on_request_headers) => {
        #[unsafe(no_mangle)]
        extern "C" fn proxy_on_request_headers(id: u32, n: usize, eos: u32) -> u32 {
            $crate::dispatch::on_request_headers::<$plugin>(id, n, eos != 0)
        }
    };
    ($plugin:ty, on_request_body) => {
        #[unsafe(no_mangle)]
        extern "C" fn proxy_on_request_body(id: u32, size: usize, eos: u32) -> u32 {
            $crate::dispatch::on_request_body::<$plugin>(id, size, eos != 0)
        }
    };
    ($plugin:ty, on_request_trailers) => {
        #[unsafe(no_mangle)]
        extern "C" fn proxy_on_request_trailers(id: u32, n: usize) -> u32 {
            $crate::dispatch::on_request_trailers::<$plugin>(id, n)
        }
    };
    ($plugin:ty, on_response_headers) => {
        #[unsafe(no_mangle)]
        extern "C" fn proxy_on_response_headers(id: u32, n: usize, eos: u32) -> u32 {
            $crate::dispatch::on_response_headers::<$plugin>(id, n, eos != 0)
        }
    };
    ($plugin:ty, on_response_body) => {
        #[unsafe(no_mangle)]
        extern "C" fn proxy_on_response_body(id: u32, size: usize, eos: u32) -> u32 {
            $crate::dispatch::on_response_body::<$plugin>(id, size, eos != 0)
        }
    };
    ($plugin:ty, on_response_trailers) => {
        #[unsafe(no_mangle)]
        extern "C" fn proxy_on_response_trailers(id: u32, n: usize) -> u32 {
            $crate::dispatch::on_response_trailers::<$plugin>(id, n)
        }
    };
    ($plugin:ty, on_log) => {
        #[unsafe(no_mangle)]
        extern "C" fn proxy_on_log(id: u32) {
            $crate::dispatch::on_log::<$plugin>(id)
        }
    };
    ($plugin:ty, $other:ident) => {};
}
