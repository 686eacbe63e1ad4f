//! Portico's end-to-end suite: the real proxy (in-process, or the `portico` binary where
//! signals are involved), real upstream servers, real rustls and HTTP/2 clients, all on
//! `127.0.0.1:0`. One test binary, a module per feature.

mod support;

mod config_errors;
mod forwarding;
mod limits;
mod plugins;
mod reload;
mod routing;
mod shutdown;
mod smoke;
mod timeouts;
mod tls;
