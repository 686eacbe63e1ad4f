//! # Portico
//!
//! An edge proxy: TLS termination, Kubernetes-Ingress-grade routing by host and path,
//! streaming forwarding to pooled upstreams, live YAML reload, an admin endpoint and graceful
//! shutdown. The binary is `portico` (`portico run --config PATH`); this library is what it
//! runs, and what the end-to-end tests start in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = portico::server::Server::start(portico::server::Options::new("config/demo.yaml")).await?;
//! println!("web on {:?}", server.listener_addr("web"));
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A request's life is in [`pipeline`]; ARCHITECTURE.md maps every phase to its module.

pub mod actions;
pub mod admin;
pub mod body;
pub mod config;
pub mod error;
pub mod filter;
pub mod forward;
pub mod listener;
pub mod pipeline;
pub mod plugin;
pub mod route;
pub mod scaffold;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
