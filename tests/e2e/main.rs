//! Portico's end-to-end suite: the real proxy (in-process, or the `portico` binary where
//! signals are involved), real upstream servers, real rustls and HTTP/2 clients, all on
//! `127.0.0.1:0`. One test binary, a module per feature.

mod support;

mod config_errors;
mod forwarding;
mod limits;
mod plugin_auth;
mod plugin_coverage;
mod plugin_header_rewrite;
mod plugin_jwt;
mod plugin_rate_limit;
mod plugins;
mod reload;
mod routing;
mod sdk;
mod shutdown;
mod smoke;
mod timeouts;
mod tls;
