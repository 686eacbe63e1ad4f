//! Downstream connections: binding, accepting, TLS, and serving HTTP/1.1 and HTTP/2 on each.
//!
//! A listening socket is identified by its configured address and survives every reload that
//! keeps that address. Each accepted connection reads its listener's settings (TLS
//! certificates included) from the snapshot current at accept time, so a certificate change
//! applies to new handshakes while open connections continue.
//!
//! Three clocks close a connection that is not working ([`Activity::expiry`]): the header
//! clock (`header_read_timeout`) runs from accept until the first request head is complete,
//! and on a kept-alive HTTP/1 connection from the first byte of each later head; the idle
//! clock (`idle_timeout`) runs whenever no request is in progress and no head is arriving;
//! while requests are in progress, the client-stall clock (`body_idle_timeout`) runs whenever
//! a response body has handed hyper a frame that the client has not made room for (a full
//! write buffer, or an HTTP/2 stream without window): past it the connection is closed. A body
//! whose *source* stalls is timed by the body itself; [`crate::body`] explains the split.
//! hyper's own header timer is off, since it also runs while a kept-alive connection waits,
//! which would make `header_read_timeout` the idle timeout of every HTTP/1 connection.
//!
//! A connection holds a [`Slot`] of its listener (counted against `max_connections` and in
//! `portico_active_connections`) until it closes; a WebSocket tunnel started from it holds the
//! slot on until the tunnel ends.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body, Handoff};
use crate::server::Shared;
use crate::snapshot::{Limits, ListenerConfig};
use crate::tls::{self, TlsSettings};

mod watched;

use watched::{Head, Watched};

/// What the pipeline knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<ListenerConfig>,
    pub peer: SocketAddr,
    /// The peer's IP address as text, formatted once for every request's `x-forwarded-for`.
    pub peer_ip: http::HeaderValue,
    /// The address the client connected to.
    pub local: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub activity: Activity,
    /// Fired when the connection must end now, not gracefully: its listener was removed by a
    /// reload and `reload.stream_grace` has passed. Tunnels started from it end too.
    pub kill: CancellationToken,
    /// Released when the last holder of this `ConnInfo` (the connection, or a tunnel started
    /// from it) is gone.
    _slot: Slot,
}

/// One of a listener's connection slots, released on drop.
pub struct Slot {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Slot {
    fn take(open: Arc<AtomicUsize>, gauge: prometheus::IntGauge) -> (Slot, usize) {
        let before = open.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        (Slot { open, gauge }, before)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub cert_index: usize,
    pub settings: Arc<TlsSettings>,
    pub version: &'static str,
    pub client_cert: bool,
}

/// A connection's clocks: requests in progress and when the last one ended (the idle clock),
/// and when the bytes of the next request head began to arrive (the header clock).
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    active: AtomicUsize,
    /// Requests begun on this connection. On HTTP/1 they come one at a time, so during a
    /// request this is its number, which is also its head's number in arrival order: hyper
    /// hands every head it parses to the service, and `pipeline::handle` counts it first
    /// (a connection over `max_connections` is answered without counting, but it serves one
    /// request only).
    requests: AtomicU64,
    last_end_ms: AtomicU64,
    /// When the first byte of a request head arrived while no request was in progress
    /// ([`NO_HEAD`]: none since the last request began).
    head_start_ms: AtomicU64,
    /// The connection began with the HTTP/2 preface.
    h2: AtomicBool,
    /// Wakes the connection's loop when a head starts to arrive that its header clock would
    /// let expire before the timer looks again, and when the connection turns out to speak
    /// HTTP/2 (a refused connection then sends GOAWAY).
    head_started: tokio::sync::Notify,
    /// Heads that start before this (ms since accept) wake the timer (see [`Activity::armed`]).
    /// A later one expires no sooner than the timer looks, which sees it then; so on a busy
    /// kept-alive connection a request's head costs no wake and no timer change.
    wake_head_before_ms: AtomicU64,
    /// HTTP/1 heads 1..=n were read whole, in order, and none had both `Content-Length` and
    /// `Transfer-Encoding` (see [`watched`]).
    heads_clean: AtomicU64,
    /// The HTTP/1 head that had both (0: none); nothing after it is followed.
    head_both: AtomicU64,
    /// The first HTTP/1 head longer than `max_header_bytes` (0: none).
    head_too_large: AtomicU64,
    /// The response bodies in progress, for the client-stall clock.
    responses: Mutex<Responses>,
}

/// What the connection's byte stream showed of the head of the HTTP/1 request in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadFraming {
    /// Read whole; it did not have both `Content-Length` and `Transfer-Encoding`.
    Clean,
    /// It had both.
    Both,
    /// Not followed (the scanner stopped before it): nothing is known.
    Unknown,
}

/// Handoffs of the response bodies on a connection (one at a time on HTTP/1.1, one per
/// stream on HTTP/2); finished ones are dropped when the list has doubled since the last
/// sweep, so a kept-alive connection does not grow it.
#[derive(Debug, Default)]
struct Responses {
    handoffs: Vec<Arc<Handoff>>,
    sweep_at: usize,
}

impl Responses {
    fn sweep(&mut self) {
        // The body holds the other reference while it lives.
        self.handoffs.retain(|h| Arc::strong_count(h) > 1);
        self.sweep_at = (self.handoffs.len() * 2).max(8);
    }
}

const NO_HEAD: u64 = u64::MAX;

/// When a connection that is not working must close, as a time since it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request is in progress: no clock runs.
    Busy,
    /// A request head must be complete by then (`header_read_timeout`).
    Header(Duration),
    /// Idle until then (`idle_timeout`).
    Idle(Duration),
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
            head_start_ms: AtomicU64::new(NO_HEAD),
            h2: AtomicBool::new(false),
            head_started: tokio::sync::Notify::new(),
            wake_head_before_ms: AtomicU64::new(0),
            heads_clean: AtomicU64::new(0),
            head_both: AtomicU64::new(0),
            head_too_large: AtomicU64::new(0),
            responses: Mutex::new(Responses::default()),
        }
    }

    /// A handoff for a response body on this connection, watched by the client-stall clock.
    pub fn watch_response(&self) -> Arc<Handoff> {
        let handoff = Arc::new(Handoff::new(self.born));
        let mut responses = self
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if responses.handoffs.len() >= responses.sweep_at {
            responses.sweep();
        }
        responses.handoffs.push(handoff.clone());
        handoff
    }

    /// Since when the longest-waiting response frame has waited for the client to take it.
    fn client_stalled_since(&self) -> Option<Instant> {
        let mut responses = self
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        responses.sweep();
        responses
            .handoffs
            .iter()
            .filter_map(|h| h.waiting_since())
            .min()
    }

    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_start_ms.store(NO_HEAD, Ordering::Release);
    }

    /// A request ended at `now` (the caller's clock reading, shared with its own bookkeeping).
    pub fn end(&self, now: Instant) {
        let age = now.saturating_duration_since(self.born).as_millis() as u64;
        self.last_end_ms.store(age, Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    fn age_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Bytes arrived on an HTTP/1 connection (or one not yet known to be HTTP/2): with no
    /// request in progress they start a request head, and its clock, or continue it.
    fn head_bytes(&self) {
        if self.active.load(Ordering::Acquire) > 0 {
            return;
        }
        let now = self.age_ms();
        let started = self
            .head_start_ms
            .compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if started && now < self.wake_head_before_ms.load(Ordering::Acquire) {
            self.head_started.notify_one();
        }
    }

    /// The connection's timer now looks at `at`: a head starting later than `at - header`
    /// expires no sooner, so only an earlier one needs to wake it.
    fn armed(&self, at: tokio::time::Instant, header: Duration) {
        let since = at.into_std().saturating_duration_since(self.born);
        let before = since.saturating_sub(header).as_millis() as u64;
        self.wake_head_before_ms.store(before, Ordering::Release);
    }

    /// The scanner read a head whole (heads come in order, each once).
    fn head_scanned(&self, head: Head) {
        match head {
            Head::Clean(n) => self.heads_clean.store(n, Ordering::Release),
            Head::Both(n) => self.head_both.store(n, Ordering::Release),
            Head::TooLarge(n) => {
                // The first is enough: it is answered 431 and the connection closed.
                let _ =
                    self.head_too_large
                        .compare_exchange(0, n, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }

    /// Was the HTTP/1 request in progress (or one before it on this connection) longer than
    /// `max_header_bytes`?
    pub fn head_too_large(&self) -> bool {
        let first = self.head_too_large.load(Ordering::Acquire);
        first != 0 && self.requests.load(Ordering::Acquire) >= first
    }

    /// What the byte stream showed of the head of the HTTP/1 request in progress. hyper
    /// parses a head only from bytes that have passed the scanner, so a head it followed is
    /// always recorded by the time its request is handled.
    pub fn head_framing(&self) -> HeadFraming {
        let n = self.requests.load(Ordering::Acquire);
        if n == 0 {
            HeadFraming::Unknown
        } else if self.head_both.load(Ordering::Acquire) == n {
            HeadFraming::Both
        } else if n <= self.heads_clean.load(Ordering::Acquire) {
            HeadFraming::Clean
        } else {
            HeadFraming::Unknown
        }
    }

    fn set_h2(&self) {
        self.h2.store(true, Ordering::Release);
        self.head_started.notify_one();
    }

    /// Which clock runs, and when it expires. The first request's head is timed from accept
    /// (which also bounds an HTTP/2 client's preface); on HTTP/2 streams carry their own
    /// heads, so only the idle clock runs.
    pub fn expiry(&self, idle: Duration, header: Duration) -> Expiry {
        if self.active.load(Ordering::Acquire) > 0 {
            return Expiry::Busy;
        }
        if !self.h2.load(Ordering::Acquire) {
            if self.requests.load(Ordering::Acquire) == 0 {
                return Expiry::Header(header);
            }
            let head = self.head_start_ms.load(Ordering::Acquire);
            if head != NO_HEAD {
                return Expiry::Header(Duration::from_millis(head) + header);
            }
        }
        Expiry::Idle(Duration::from_millis(self.last_end_ms.load(Ordering::Acquire)) + idle)
    }

    /// The instant `expiry` names.
    fn at(&self, since_accept: Duration) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.born + since_accept)
    }
}

/// A bound socket and the tasks serving it.
#[derive(Debug)]
pub struct RunningListener {
    pub key: String,
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    kill: CancellationToken,
    /// The graceful stop of the connections accepted since the last [`retire`](Self::retire).
    generation: Arc<Mutex<CancellationToken>>,
    tracker: TaskTracker,
}

impl RunningListener {
    /// Stops accepting and asks every connection to finish gracefully (HTTP/1.1 closes after
    /// the response in progress, HTTP/2 sends GOAWAY).
    pub fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
    }

    /// Asks the connections open now to finish gracefully, as [`stop`](Self::stop) does, and
    /// goes on accepting: for a reload that changed what connections are admitted under (see
    /// [`ListenerConfig::admission`]). Tunnels already started from them continue.
    pub fn retire(&self) {
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *generation, self.stop.child_token());
        old.cancel();
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
    let generation = Arc::new(Mutex::new(stop.child_token()));
    let tracker = TaskTracker::new();
    let running = RunningListener {
        key: key.clone(),
        local_addr,
        stop: stop.clone(),
        kill: kill.clone(),
        generation: generation.clone(),
        tracker: tracker.clone(),
    };
    let open = Arc::new(AtomicUsize::new(0));
    let tokens = Tokens {
        stop,
        kill,
        generation,
    };
    tokio::spawn(accept_loop(shared, key, listener, tokens, tracker, open));
    Ok(running)
}

/// A listener's graceful stop, its hard one, and the current generation's graceful stop (a
/// child of `stop`).
#[derive(Clone)]
struct Tokens {
    stop: CancellationToken,
    kill: CancellationToken,
    generation: Arc<Mutex<CancellationToken>>,
}

/// What one connection is stopped by.
struct ConnTokens {
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
        // The generation before the snapshot: a reload stores its snapshot, then retires the
        // generation, so a connection that got the old generation may have the new settings
        // (and is closed gracefully for nothing), but never the other way round.
        let stop = tokens
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let snapshot = shared.current.load();
        let Some(config) = snapshot.listener(&key).cloned() else {
            continue;
        };
        let limits = snapshot.settings.limits.clone();
        drop(snapshot);
        let _ = stream.set_nodelay(true);
        let gauge = shared
            .metrics
            .active_connections
            .with_label_values(&[config.name.as_str()]);
        let (slot, open_before) = Slot::take(open.clone(), gauge);
        let over_limit = open_before >= limits.max_connections;
        let shared = shared.clone();
        let tokens = ConnTokens {
            stop,
            kill: tokens.kill.clone(),
        };
        tracker.spawn(async move {
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
            let conn = Accepted {
                stream,
                peer,
                slot,
                reject: over_limit,
            };
            serve(shared, config, limits, conn, tokens).await;
        });
    }
}

/// An accepted connection and its slot; `reject`: over `max_connections`.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    reject: bool,
}

async fn serve(
    shared: Arc<Shared>,
    config: Arc<ListenerConfig>,
    limits: Limits,
    accepted: Accepted,
    tokens: ConnTokens,
) {
    let ConnTokens { stop, kill } = tokens;
    let Accepted {
        stream,
        peer,
        slot,
        reject,
    } = accepted;
    // A listener bound to one address and port accepts on exactly that: only a wildcard
    // address (or port 0) needs asking the socket, a syscall per connection.
    let local = if config.addr.ip().to_canonical().is_unspecified() || config.addr.port() == 0 {
        stream.local_addr().unwrap_or(config.addr)
    } else {
        config.addr
    };
    match config.tls.clone() {
        None => {
            let conn = Arc::new(ConnInfo {
                listener: config.clone(),
                peer,
                peer_ip: ip_header(peer),
                local,
                tls: None,
                activity: Activity::new(),
                kill,
                _slot: slot,
            });
            serve_http(
                shared, conn, &limits, stream, stop, reject, config.h2c, false,
            )
            .await;
        }
        Some(settings) => {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, settings.accept(stream)).await;
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
                peer_ip: ip_header(peer),
                local,
                tls: Some(info),
                activity: Activity::new(),
                kill,
                _slot: slot,
            });
            serve_http(shared, conn, &limits, tls_stream, stop, reject, h2, h2).await;
        }
    }
}

/// An IP address as a header value (always valid: digits, hex, `.` and `:`).
fn ip_header(peer: SocketAddr) -> http::HeaderValue {
    http::HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
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
    let max_buf_size = limits.max_header_bytes.max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The header clock below replaces hyper's (see the module docs).
        .header_read_timeout(None)
        .max_buf_size(max_buf_size)
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
    let io = Watched::new(io, activity_conn.clone(), limits.max_header_bytes);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);

    let activity = &activity_conn.activity;
    let (idle, header) = (limits.idle_timeout, limits.header_read_timeout);
    let body_idle = limits.body_idle_timeout;
    // One timer for the connection's life, moved only when a clock needs it earlier or has
    // been looked at: a new `Sleep` per loop would re-enter tokio's timer wheel, and one
    // earlier than every other timer wakes the runtime's driver (a syscall) each time. So its
    // first look is not "now" (that cost every accepted connection one wake of the driver) but
    // as while requests run (see `Expiry::Busy` below): within the shortest of the clocks,
    // since a first request may come and go before it, and nothing else wakes the timer when
    // a request ends.
    let mut next_check = activity.at(header.min(idle).min(body_idle));
    activity.armed(next_check, header);
    let timer = tokio::time::sleep_until(next_check);
    tokio::pin!(timer);
    let mut stopping = false;
    if reject && h2_only {
        // HTTP/2 has no `Connection: close`: GOAWAY right away frees the slot.
        stopping = true;
        connection.as_mut().graceful_shutdown();
    }
    // The branches other than the connection are polled only when one of them woke the task:
    // hyper's connection wakes it several times per request.
    let rare = Arc::new(WakeFlag::default());
    let rare_waker = Waker::from(rare.clone());
    loop {
        let event = {
            let stopping = stopping;
            let others = WhenWoken::new(
                async {
                    tokio::select! {
                        biased;
                        _ = activity_conn.kill.cancelled() => Event::Killed,
                        _ = stop.cancelled(), if !stopping => Event::Stop,
                        _ = activity.head_started.notified() => Event::HeadStarted,
                        _ = &mut timer => Event::Timer,
                    }
                },
                &rare,
                &rare_waker,
            );
            tokio::select! {
                biased;
                res = connection.as_mut() => Event::Ended(res),
                event = others => event,
            }
        };
        match event {
            Event::Ended(res) => {
                if let Err(e) = res {
                    tracing::debug!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "connection error: {e}");
                }
                break;
            }
            Event::Killed => {
                tracing::debug!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "connection closed: its listener was removed");
                break;
            }
            Event::Stop => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            Event::HeadStarted => {
                if reject && !stopping && activity.h2.load(Ordering::Acquire) {
                    // An h2c connection over `max_connections`: HTTP/2 has no
                    // `Connection: close`, so GOAWAY ends it once its streams have their 503.
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
                next_check = tokio::time::Instant::now();
                timer.as_mut().reset(next_check);
            }
            Event::Timer => {
                let age = activity.born.elapsed();
                match activity.expiry(idle, header) {
                    Expiry::Busy => {
                        // Also re-checks soon after the requests end, for the other clocks.
                        let mut next = Instant::now() + idle.min(header).min(body_idle);
                        if let Some(since) = activity.client_stalled_since() {
                            // HTTP/1.1: a client that takes no response data for
                            // body_idle_timeout is dropped. HTTP/2: one stream without window
                            // may be plain flow control (a paused download), so GOAWAY first —
                            // the other streams can finish — and drop only at twice the time.
                            let stalled = since.elapsed();
                            let h2 = activity.h2.load(Ordering::Acquire);
                            let drop_at = if h2 { body_idle * 2 } else { body_idle };
                            if stalled >= drop_at {
                                tracing::info!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "client took no response data for {stalled:?}; closing the connection");
                                break;
                            }
                            if stalled >= body_idle && !stopping {
                                tracing::info!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "an HTTP/2 stream took no response data for {body_idle:?}; sending GOAWAY");
                                stopping = true;
                                connection.as_mut().graceful_shutdown();
                            }
                            next = next.min(if stalled >= body_idle {
                                since + drop_at
                            } else {
                                since + body_idle
                            });
                        }
                        next_check = tokio::time::Instant::from_std(next);
                    }
                    Expiry::Header(at) if age >= at => {
                        // Mid-head there is nothing to finish gracefully: drop the connection.
                        tracing::debug!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "request head not received within {header:?}; closing");
                        break;
                    }
                    Expiry::Idle(at) if stopping && age >= at + header => {
                        // The graceful close has not finished in time (a client that does
                        // not read the end of its last response, say).
                        tracing::debug!(listener = %activity_conn.listener.name, peer = %activity_conn.peer, "connection did not close gracefully; closing");
                        break;
                    }
                    Expiry::Idle(at) if age >= at => {
                        if !stopping {
                            stopping = true;
                            connection.as_mut().graceful_shutdown();
                        }
                        next_check = tokio::time::Instant::now() + header;
                    }
                    Expiry::Header(at) | Expiry::Idle(at) => {
                        // A request may begin before then (with no head to see, on HTTP/2):
                        // the client-stall clock must not wait longer than its own timeout.
                        let soon = tokio::time::Instant::now() + body_idle;
                        next_check = activity.at(at).min(soon);
                    }
                }
                timer.as_mut().reset(next_check);
                activity.armed(next_check, header);
            }
        }
    }
}

/// What ended a turn of a connection's loop.
enum Event<E> {
    /// The connection ended (hyper's result).
    Ended(Result<(), E>),
    /// Its listener was removed.
    Killed,
    /// The proxy is stopping: close gracefully.
    Stop,
    /// A request head began that the timer must see sooner, or the connection turned out to
    /// speak HTTP/2.
    HeadStarted,
    /// The connection's timer fired: look at its clocks.
    Timer,
}

/// Set when a future polled through [`WhenWoken`] wakes its task.
#[derive(Default)]
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// Polls `inner` on its first poll and then only after `inner` woke the task (through
    /// `flag`). A connection's loop polls its rare branches — a stop, its listener's removal,
    /// a head's clock, its timer — through this, so that the wake-ups hyper's connection
    /// causes, several per request, do not poll them all each time (two mutexes and a waiter
    /// list, ~3 % of a request's CPU).
    struct WhenWoken<'a, F> {
        #[pin]
        inner: F,
        flag: &'a Arc<WakeFlag>,
        waker: &'a Waker,
        first: bool,
    }
}

impl<'a, F: Future> WhenWoken<'a, F> {
    /// `waker` wakes `flag` (made from it once per connection).
    fn new(inner: F, flag: &'a Arc<WakeFlag>, waker: &'a Waker) -> Self {
        WhenWoken {
            inner,
            flag,
            waker,
            first: true,
        }
    }
}

impl<F: Future> Future for WhenWoken<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake after the read finds this task.
        this.flag.task.register(cx.waker());
        let first = std::mem::take(this.first);
        if !first && !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_follow_the_connection() {
        let (idle, header) = (Duration::from_secs(60), Duration::from_secs(10));
        let a = Activity::new();
        // From accept until the first request: the header clock, bytes or not.
        assert_eq!(a.expiry(idle, header), Expiry::Header(header));
        a.head_bytes();
        assert_eq!(a.expiry(idle, header), Expiry::Header(header));
        a.begin();
        assert_eq!(a.expiry(idle, header), Expiry::Busy);
        // Bytes during a request (its body) start no clock.
        a.head_bytes();
        a.end(Instant::now());
        let ended = Duration::from_millis(a.last_end_ms.load(Ordering::Acquire));
        assert_eq!(a.expiry(idle, header), Expiry::Idle(ended + idle));
        // The next head's first byte starts the header clock.
        a.head_bytes();
        let started = Duration::from_millis(a.head_start_ms.load(Ordering::Acquire));
        assert_eq!(a.expiry(idle, header), Expiry::Header(started + header));
        a.begin();
        a.end(Instant::now());
        assert!(matches!(a.expiry(idle, header), Expiry::Idle(_)));
    }

    #[test]
    fn a_head_wakes_the_timer_only_when_its_clock_ends_first() {
        use futures_util::FutureExt;
        let header = Duration::from_secs(10);
        let a = Activity::new();
        a.begin();
        a.end(Instant::now());
        // The timer looks again within the header timeout (as while requests run): a head
        // starting now expires no sooner, so it wakes nothing.
        a.armed(tokio::time::Instant::now() + header, header);
        a.head_bytes();
        assert!(a.head_started.notified().now_or_never().is_none());
        a.begin();
        a.end(Instant::now());
        // The timer sleeps until the idle timeout: the next head must bring it forward.
        a.armed(
            tokio::time::Instant::now() + Duration::from_secs(60),
            header,
        );
        a.head_bytes();
        assert!(a.head_started.notified().now_or_never().is_some());
        // Bytes that continue the same head do not wake it again.
        a.head_bytes();
        assert!(a.head_started.notified().now_or_never().is_none());
    }

    #[test]
    fn http2_connections_only_idle_after_the_preface() {
        let (idle, header) = (Duration::from_secs(60), Duration::from_secs(10));
        let a = Activity::new();
        a.set_h2();
        assert_eq!(a.expiry(idle, header), Expiry::Idle(idle));
    }
}
