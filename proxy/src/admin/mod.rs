//! The admin listener: `/health`, `/ready`, `/metrics`, `/config`.
//!
//! Bound once at start; keep it on a loopback or cluster-internal address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::server::Shared;

/// Binds the admin address and serves it until the process exits. Returns the bound address.
pub async fn start(shared: Arc<Shared>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE under load: back off instead of spinning a worker.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&shared, req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http1_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            if shared.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            let mut resp = text(StatusCode::OK, shared.metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/config" => {
            let json = config_json(shared);
            let mut resp = Response::new(body::full(json));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /health, /ready, /metrics, /config\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn config_json(shared: &Shared) -> String {
    let snapshot = shared.current.load();
    let status = shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let value = serde_json::json!({
        "version": status.version,
        "hash": snapshot.hash,
        "loaded_at": unix(snapshot.loaded_at),
        "files": snapshot.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "referenced_files": snapshot.referenced.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "listeners": snapshot.listeners.iter().map(|l| serde_json::json!({
            "name": l.name, "address": l.addr.to_string(), "tls": l.tls.is_some(),
        })).collect::<Vec<_>>(),
        "routes": snapshot.routes.iter().map(|r| &*r.name).collect::<Vec<_>>(),
        "plugins": snapshot.plugins.iter().map(|(_, p)| p.status()).collect::<Vec<_>>(),
        "reloads": shared.reloads.load(Ordering::Acquire),
        "last_reload": {
            "at": status.last_attempt.map(unix),
            "result": status.last_result,
            "error": status.last_error,
        },
        "draining": shared.draining.load(Ordering::Acquire),
    });
    let mut s = serde_json::to_string_pretty(&value).unwrap_or_default();
    s.push('\n');
    s
}
