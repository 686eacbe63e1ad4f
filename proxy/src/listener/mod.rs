//! Downstream connections: binding, accepting, TLS, and serving HTTP/1.1 and HTTP/2 on each.
//!
//! A listening socket is identified by its configured address and survives every reload that
//! keeps that address. Each accepted connection reads its listener's settings (TLS
//! certificates included) from the snapshot current at accept time, so a certificate change
//! applies to new handshakes while open connections continue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body};
use crate::server::Shared;
use crate::snapshot::{Limits, ListenerConfig};
use crate::tls::{self, TlsSettings};

/// What the pipeline knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<ListenerConfig>,
    pub peer: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub activity: Activity,
    /// Fired when the connection must end now, not gracefully: its listener was removed by a
    /// reload and `reload.stream_grace` has passed. Tunnels started from it end too.
    pub kill: CancellationToken,
}

#[derive(Debug)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub cert_index: usize,
    pub settings: Arc<TlsSettings>,
    pub version: &'static str,
    pub client_cert: bool,
}

/// Requests in progress on a connection and when the last one ended: the idle clock.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    active: AtomicUsize,
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end(&self) {
        self.last_end_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// How long the connection has had no request in progress (`None` while one is).
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        Some(self.born.elapsed().saturating_sub(last))
    }
}

/// A bound socket and the tasks serving it.
#[derive(Debug)]
pub struct RunningListener {
    pub key: String,
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
}

impl RunningListener {
    /// Stops accepting and asks every connection to finish gracefully (HTTP/1.1 closes after
    /// the response in progress, HTTP/2 sends GOAWAY).
    pub fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
    }

    /// Closes every connection still open, and the tunnels started from them.
    pub fn kill(&self) {
        self.kill.cancel();
    }

    /// Waits until every connection of this listener has closed.
    pub async fn drained(&self) {
        self.tracker.wait().await;
    }
}

/// Binds a listening socket (SO_REUSEADDR, a deep backlog) without starting to accept.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts the accept loop of a bound socket.
pub fn start(
    shared: Arc<Shared>,
    key: String,
    socket: std::net::TcpListener,
) -> std::io::Result<RunningListener> {
    let listener = TcpListener::from_std(socket)?;
    let local_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let kill = CancellationToken::new();
    let tracker = TaskTracker::new();
    let running = RunningListener {
        key: key.clone(),
        local_addr,
        stop: stop.clone(),
        kill: kill.clone(),
        tracker: tracker.clone(),
    };
    let open = Arc::new(AtomicUsize::new(0));
    let tokens = Tokens { stop, kill };
    tokio::spawn(accept_loop(shared, key, listener, tokens, tracker, open));
    Ok(running)
}

/// A listener's graceful stop and its hard one.
#[derive(Clone)]
struct Tokens {
    stop: CancellationToken,
    kill: CancellationToken,
}

async fn accept_loop(
    shared: Arc<Shared>,
    key: String,
    listener: TcpListener,
    tokens: Tokens,
    tracker: TaskTracker,
    open: Arc<AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tokens.stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %key, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let snapshot = shared.current.load();
        let Some(config) = snapshot.listener(&key).cloned() else {
            continue;
        };
        let limits = snapshot.settings.limits.clone();
        drop(snapshot);
        let _ = stream.set_nodelay(true);
        let over_limit = open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections;
        let shared = shared.clone();
        let tokens = tokens.clone();
        let open = open.clone();
        tracker.spawn(async move {
            let gauge = shared
                .metrics
                .active_connections
                .with_label_values(&[config.name.as_str()]);
            gauge.inc();
            shared
                .metrics
                .connections
                .with_label_values(&[config.name.as_str()])
                .inc();
            if over_limit {
                shared
                    .metrics
                    .connections_rejected
                    .with_label_values(&[config.name.as_str()])
                    .inc();
            }
            serve(shared, config, limits, stream, peer, tokens, over_limit).await;
            gauge.dec();
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn serve(
    shared: Arc<Shared>,
    config: Arc<ListenerConfig>,
    limits: Limits,
    stream: TcpStream,
    peer: SocketAddr,
    tokens: Tokens,
    reject: bool,
) {
    let Tokens { stop, kill } = tokens;
    match config.tls.clone() {
        None => {
            let conn = Arc::new(ConnInfo {
                listener: config.clone(),
                peer,
                tls: None,
                activity: Activity::new(),
                kill,
            });
            serve_http(
                shared, conn, &limits, stream, stop, reject, config.h2c, false,
            )
            .await;
        }
        Some(settings) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(settings.server_config());
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await;
            let tls_stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    shared
                        .metrics
                        .tls_handshake_failures
                        .with_label_values(&[config.name.as_str()])
                        .inc();
                    tracing::debug!(listener = %config.name, %peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    shared
                        .metrics
                        .tls_handshake_failures
                        .with_label_values(&[config.name.as_str()])
                        .inc();
                    tracing::debug!(listener = %config.name, %peer, "TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls_stream.get_ref();
            let sni = session.server_name().map(str::to_ascii_lowercase);
            let h2 = session.alpn_protocol() == Some(b"h2");
            let info = TlsInfo {
                cert_index: settings.select(sni.as_deref()).unwrap_or(0),
                sni,
                version: tls::tls_version_str(session),
                client_cert: tls::peer_has_client_cert(session),
                settings,
            };
            let conn = Arc::new(ConnInfo {
                listener: config,
                peer,
                tls: Some(info),
                activity: Activity::new(),
                kill,
            });
            serve_http(shared, conn, &limits, tls_stream, stop, reject, h2, h2).await;
        }
    }
}

/// Serves HTTP on an established connection until it closes, goes idle, or is stopped.
#[allow(clippy::too_many_arguments)]
async fn serve_http<IO>(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    limits: &Limits,
    io: IO,
    stop: CancellationToken,
    reject: bool,
    allow_h2: bool,
    h2_only: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(!reject);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(250)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    if h2_only {
        builder = builder.http2_only();
    } else if !allow_h2 {
        builder = builder.http1_only();
    }

    let activity_conn = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move {
            if reject {
                return Ok::<_, std::convert::Infallible>(overloaded());
            }
            crate::pipeline::handle(shared, conn, req).await
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);

    let idle = limits.idle_timeout;
    let mut next_check = tokio::time::Instant::now() + idle;
    let mut stopping = false;
    loop {
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "connection error: {e}");
                }
                break;
            }
            _ = activity_conn.kill.cancelled() => {
                tracing::debug!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "connection closed: its listener was removed");
                break;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(next_check), if !stopping => {
                match activity_conn.activity.idle_for() {
                    Some(for_) if for_ >= idle => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    Some(for_) => next_check = tokio::time::Instant::now() + (idle - for_),
                    None => next_check = tokio::time::Instant::now() + idle,
                }
            }
        }
    }
}

/// The answer on a connection over `max_connections`.
fn overloaded() -> Response<Body> {
    let mut resp = Response::new(body::full("too many connections\n"));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}
