//! Forwarding through the real proxy: endpoint choice, the headers an upstream receives and a
//! client gets back, streaming bodies with flat memory, WebSocket tunnels, HTTP/2 on either
//! side, trailers, and timeouts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const LISTENER: &str = r#"listeners: [{ name: web, address: "127.0.0.1:0" }]"#;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A proxy with one catch-all route to one upstream named `up`.
async fn proxy_to(endpoints: &[String], upstream_extra: &str, route_extra: &str) -> Proxy {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Proxy::start(&format!(
        r#"
{LISTENER}
upstreams:
  up: {{ endpoints: [{endpoints}] {upstream_extra} }}
routes:
  - {{ name: all, upstream: up {route_extra} }}
"#
    ))
    .await
}

fn get_req(host: &str, target: &str) -> http::request::Builder {
    Request::get(target).header("host", host)
}

// ---------------------------------------------------------------------------------------------
// Endpoints and headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_endpoints() {
    let ups = [
        Upstream::echo("e0").await,
        Upstream::echo("e1").await,
        Upstream::echo("e2").await,
    ];
    let endpoints: Vec<String> = ups.iter().map(Upstream::endpoint).collect();
    let proxy = proxy_to(&endpoints, "", "").await;
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(get(proxy.addr("web"), "rr.test", "/").await.seen().server);
    }
    // A strict rotation: every window of three holds each endpoint once, in the same order.
    assert_eq!(order[0..3], order[3..6], "{order:?}");
    assert_eq!(order[0..3], order[6..9], "{order:?}");
    let mut first: Vec<&String> = order[0..3].iter().collect();
    first.sort();
    assert_eq!(first, ["e0", "e1", "e2"], "{order:?}");
    for up in &ups {
        assert_eq!(up.hits(), 3);
        // Upstream connections are pooled: one per endpoint, reused.
        assert_eq!(up.connections.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let addr = proxy.addr("web");

    // What a client claims in x-forwarded-* is replaced: Portico is the edge.
    let got = send(
        addr,
        get_req("shop.test:8080", "/a")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.test")
            .body(empty())
            .unwrap(),
    )
    .await;
    let seen = got.seen();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.test:8080");
    // Host is preserved as sent, port included.
    assert_eq!(seen.headers["host"], "shop.test:8080");

    // With `forwarding.trust_incoming`, the chain is appended to.
    let trusting = Proxy::start(&format!(
        r#"
{LISTENER}
forwarding: {{ trust_incoming: true }}
upstreams: {{ up: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: up }}]
"#,
        up.endpoint()
    ))
    .await;
    let seen = send(
        trusting.addr("web"),
        get_req("shop.test", "/a")
            .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
            .body(empty())
            .unwrap(),
    )
    .await
    .seen();
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "203.0.113.9, 10.0.0.1, 127.0.0.1"
    );

    // Over TLS the proto is https.
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["secure.test"]);
    let tls = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: websecure
    address: "127.0.0.1:0"
    tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }}
upstreams: {{ up: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: up }}]
"#,
            up.endpoint()
        ),
    )
    .await;
    let stream = tls_connect(
        tls.addr("websecure"),
        "secure.test",
        pki.client_config(&[b"http/1.1"], None),
    )
    .await
    .expect("tls connect");
    let seen = send_tls_h1(stream, get_req("secure.test", "/t").body(empty()).unwrap())
        .await
        .seen();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "secure.test");
    assert_eq!(seen.headers["host"], "secure.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_generated_and_reach_both_sides() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let addr = proxy.addr("web");
    let with_id = |id: &str| {
        get_req("id.test", "/")
            .header("x-request-id", id)
            .body(empty())
            .unwrap()
    };

    // A well-formed id is kept, upstream and on the response.
    let got = send(addr, with_id("req-123.abc_DEF")).await;
    assert_eq!(got.header("x-request-id"), Some("req-123.abc_DEF"));
    assert_eq!(got.seen().headers["x-request-id"], "req-123.abc_DEF");

    // Without one, the proxy makes one, and the upstream and the client see the same.
    let got = send(addr, get_req("id.test", "/").body(empty()).unwrap()).await;
    let id = got
        .header("x-request-id")
        .expect("generated id")
        .to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(got.seen().headers["x-request-id"], id);
    let other = send(addr, get_req("id.test", "/").body(empty()).unwrap()).await;
    assert_ne!(other.header("x-request-id"), Some(id.as_str()));

    // A malformed one (spaces, or far too long) is replaced everywhere.
    for bad in ["has spaces in it", &"x".repeat(200)] {
        let got = send(addr, with_id(bad)).await;
        let id = got
            .header("x-request-id")
            .expect("replacement id")
            .to_string();
        assert_ne!(id, bad);
        assert_eq!(
            got.seen().headers["x-request-id"],
            id,
            "upstream got {bad:?}"
        );
    }

    // An upstream's own x-request-id does not override the request's.
    let liar = Upstream::with_handler(|_req| {
        Box::pin(async {
            Response::builder()
                .header("x-request-id", "from-upstream")
                .body(empty())
                .unwrap()
        })
    })
    .await;
    let proxy = proxy_to(&[liar.endpoint()], "", "").await;
    let got = send(proxy.addr("web"), with_id("from-client")).await;
    assert_eq!(got.header("x-request-id"), Some("from-client"));
    assert_eq!(got.headers.get_all("x-request-id").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_through_unchanged() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let seen = send(
        proxy.addr("web"),
        get_req("t.test", "/")
            .header("traceparent", traceparent)
            .header("tracestate", tracestate)
            .body(empty())
            .unwrap(),
    )
    .await
    .seen();
    assert_eq!(seen.headers["traceparent"], traceparent);
    assert_eq!(seen.headers["tracestate"], tracestate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    // The upstream answers with the echo body plus hop-by-hop headers of its own.
    let up = Upstream::with_handler(|req| {
        Box::pin(async move {
            let mut resp = echo_response("up", req).await;
            let h = resp.headers_mut();
            h.insert("connection", HeaderValue::from_static("X-Up-Secret"));
            // A second `Connection` line names another: the two lines are one list.
            h.append("connection", HeaderValue::from_static("x-up-second"));
            h.insert("x-up-secret", HeaderValue::from_static("1"));
            h.insert("x-up-second", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
            h.insert("upgrade", HeaderValue::from_static("h2c"));
            h.insert("x-up-keep", HeaderValue::from_static("1"));
            resp
        })
    })
    .await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let addr = proxy.addr("web");

    let got = send(
        addr,
        get_req("hop.test", "/")
            .header("connection", "keep-alive, X-Secret, x-other")
            .header("connection", "x-second-line")
            .header("x-secret", "1")
            .header("x-other", "2")
            .header("x-second-line", "3")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("upgrade", "websocket")
            .header("te", "gzip, trailers")
            .header("x-keep", "1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = got.seen();
    for gone in [
        "x-secret",
        "x-other",
        "x-second-line",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!seen.headers.contains_key(gone), "upstream got {gone}");
    }
    // hyper's client adds its own `connection` only when it means to close; ours is gone.
    assert_ne!(
        seen.headers.get("connection").map(String::as_str),
        Some("keep-alive, X-Secret, x-other")
    );
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["x-keep"], "1");

    for gone in [
        "connection",
        "x-up-secret",
        "x-up-second",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(got.headers.get(gone).is_none(), "client got {gone}");
    }
    assert_eq!(got.header("x-up-keep"), Some("1"));

    // The same upstream to an HTTP/2 client: connection-specific headers are illegal in
    // HTTP/2, so a proxy that leaked them would reset the stream.
    let mut h2 = h2c_sender(addr).await;
    let got = send_h2(
        &mut h2,
        Request::get("http://hop.test/h2").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.version, http::Version::HTTP_2);
    assert!(got.headers.get("x-up-secret").is_none());
    assert!(got.headers.get("x-up-second").is_none());
    assert_eq!(got.header("x-up-keep"), Some("1"));
}

// ---------------------------------------------------------------------------------------------
// Streaming

const PERIOD: usize = 251;
const CHUNK: usize = 64 * 1024;

/// `CHUNK + PERIOD` bytes of `i % 251`: any window of the endless pattern is a slice of it.
static PATTERN: LazyLock<Bytes> =
    LazyLock::new(|| (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect());

/// A generated body of `total` bytes of the pattern, in zero-copy chunks.
struct PatternBody {
    sent: u64,
    total: u64,
}

impl PatternBody {
    fn new(total: u64) -> Self {
        PatternBody { sent: 0, total }
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.total - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(CHUNK as u64) as usize;
        let start = (self.sent % PERIOD as u64) as usize;
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(PATTERN.slice(start..start + n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.total
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.total - self.sent)
    }
}

/// Reads a body to its end, checking every byte against the pattern; returns its length.
async fn consume_pattern<B>(mut body: B) -> Result<u64, String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body error after {offset} bytes: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for piece in data.chunks(CHUNK) {
            let start = (offset % PERIOD as u64) as usize;
            if piece != &PATTERN[start..start + piece.len()] {
                return Err(format!("corrupt data near byte {offset}"));
            }
            offset += piece.len() as u64;
        }
    }
    Ok(offset)
}

/// The RSS tests measure the whole test process: they never run at the same time as each other.
static MEMORY_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident set size, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Samples the RSS on its own thread until dropped, keeping the peak.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssPeak {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        self.peak.fetch_max(rss(), Ordering::Relaxed).max(rss())
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An upstream that checks uploads (any method with a body) and serves downloads of
/// `x-size` bytes of the pattern.
async fn pattern_upstream() -> Upstream {
    Upstream::with_handler(|req| {
        Box::pin(async move {
            if let Some(size) = req.headers().get("x-size") {
                let size: u64 = size.to_str().unwrap().parse().unwrap();
                return Response::new(PatternBody::new(size).map_err(|e| match e {}).boxed());
            }
            let verdict = match consume_pattern(req.into_body()).await {
                Ok(n) => format!("ok {n}"),
                Err(e) => e,
            };
            Response::new(full(verdict))
        })
    })
    .await
}

/// Sends one request over a fresh HTTP/1.1 connection and returns the response unread.
async fn send_streaming(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender.send_request(req).await.expect("send")
}

/// Sends one request over a fresh connection of either version and returns the response
/// unread. `target` is a path; the host is `big.test`.
async fn send_fresh(
    addr: SocketAddr,
    version: http::Version,
    req: http::request::Builder,
    target: &str,
    body: TestBody,
) -> Response<Incoming> {
    if version == http::Version::HTTP_2 {
        let req = req
            .uri(format!("http://big.test{target}"))
            .body(body)
            .unwrap();
        let mut sender = h2c_sender(addr).await;
        sender.send_request(req).await.expect("send")
    } else {
        let req = req
            .uri(target)
            .header("host", "big.test")
            .body(body)
            .unwrap();
        send_streaming(addr, req).await
    }
}

/// Uploads and then downloads `size` bytes of the pattern through the proxy, checking every
/// byte, and returns the peak growth of this process's RSS meanwhile. The proxy, the upstream
/// and the client all run in this process, so the RSS bounds all three.
async fn stream_both_ways(version: http::Version, size: u64) -> u64 {
    let up = pattern_upstream().await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let addr = proxy.addr("web");
    let pattern = |n: u64| PatternBody::new(n).map_err(|e| match e {}).boxed();

    // Warm up the pools and buffers so the baseline includes them.
    let warm = send_fresh(
        addr,
        version,
        Request::builder().method("POST"),
        "/warm",
        pattern(4 << 20),
    )
    .await;
    let warm = warm.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(warm, format!("ok {}", 4 << 20));

    let baseline = rss();
    let sampler = RssPeak::start();
    let started = Instant::now();

    let resp = send_fresh(
        addr,
        version,
        Request::builder().method("POST"),
        "/upload",
        pattern(size),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let verdict = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(verdict, format!("ok {size}"), "{version:?} upload");
    let upload_time = started.elapsed();

    let resp = send_fresh(
        addr,
        version,
        Request::builder().header("x-size", size.to_string()),
        "/download",
        empty(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), version);
    assert_eq!(
        consume_pattern(resp.into_body()).await,
        Ok(size),
        "{version:?} download"
    );

    let growth = sampler.peak().saturating_sub(baseline);
    eprintln!(
        "{version:?}: {} MiB up in {upload_time:?}, down in {:?}; RSS {} MiB, peak growth {} MiB",
        size >> 20,
        started.elapsed() - upload_time,
        baseline >> 20,
        growth >> 20
    );
    growth
}

/// 1 GiB each way over HTTP/1.1 (about 3 s in a debug build here) with flat memory. The
/// bound is loose because other tests run in this process at the same time; a proxy that
/// buffered either body would grow by a whole GiB (measured growth here: a few MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_and_download_stream_with_flat_memory() {
    const SIZE: u64 = 1 << 30;
    let _alone = MEMORY_TESTS.lock().await;
    let growth = stream_both_ways(http::Version::HTTP_11, SIZE).await;
    assert!(
        growth < SIZE / 8,
        "RSS grew by {} MiB while streaming {} MiB each way",
        growth >> 20,
        SIZE >> 20
    );
}

/// The same over HTTP/2 (h2c) from the client, with HTTP/2 flow control on the client side
/// and HTTP/1.1 to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_over_http2_with_flat_memory() {
    const SIZE: u64 = 256 << 20;
    let _alone = MEMORY_TESTS.lock().await;
    let growth = stream_both_ways(http::Version::HTTP_2, SIZE).await;
    // A proxy that buffered one body would grow by all of SIZE.
    assert!(
        growth < SIZE / 2,
        "RSS grew by {} MiB while streaming {} MiB each way",
        growth >> 20,
        SIZE >> 20
    );
}

/// Each chunk reaches the other side before the next is produced: nothing waits for a
/// whole body, in either direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_chunk_by_chunk_both_ways() {
    // The upstream reports every request chunk as it arrives, and streams its response from
    // a channel the test feeds.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Bytes>();
    let (chunks, chunks_rx) = mpsc::unbounded_channel::<Bytes>();
    let chunks_rx = Arc::new(std::sync::Mutex::new(Some(chunks_rx)));
    let up = Upstream::with_handler(move |req| {
        let seen_tx = seen_tx.clone();
        let chunks_rx = chunks_rx.clone();
        Box::pin(async move {
            if req.uri().path() == "/upload" {
                let mut body = req.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        let _ = seen_tx.send(data);
                    }
                }
                return Response::new(full("done"));
            }
            let rx = chunks_rx.lock().unwrap().take().expect("one download");
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        })
    })
    .await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let addr = proxy.addr("web");
    let step = Duration::from_secs(10);

    // Upload: the second chunk is only sent once the upstream has the first.
    let (body_tx, body_rx) = mpsc::unbounded_channel::<Bytes>();
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    let upload = tokio::spawn(send(
        addr,
        Request::post("/upload")
            .header("host", "s.test")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap(),
    ));
    // What the upstream received of one chunk (a chunk may arrive in pieces).
    let mut upstream_got = async |len: usize| {
        let mut got = Vec::new();
        while got.len() < len {
            match seen_rx.recv().await {
                Some(piece) => got.extend_from_slice(&piece),
                None => break,
            }
        }
        got
    };
    body_tx.send(Bytes::from_static(b"first chunk")).unwrap();
    let first = tokio::time::timeout(step, upstream_got(11)).await;
    assert_eq!(
        first.expect("first upload chunk held back by the proxy"),
        b"first chunk"
    );
    body_tx.send(Bytes::from_static(b"second chunk")).unwrap();
    let second = tokio::time::timeout(step, upstream_got(12)).await;
    assert_eq!(second.unwrap(), b"second chunk");
    drop(body_tx);
    assert_eq!(upload.await.unwrap().text(), "done");

    // Download: the second chunk is only produced once the client has the first.
    let resp = tokio::time::timeout(
        step,
        send_streaming(
            addr,
            Request::get("/download")
                .header("host", "s.test")
                .body(empty())
                .unwrap(),
        ),
    )
    .await
    .expect("response headers held back by the proxy");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // What the client received of one chunk, or `None` at the end of the body.
    let mut client_got = async |len: usize| {
        let mut got = Vec::new();
        while got.len() < len {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Some(Err(e)) => panic!("download failed: {e}"),
                None if got.is_empty() => return None,
                None => break,
            }
        }
        Some(got)
    };
    chunks.send(Bytes::from_static(b"one")).unwrap();
    let got = tokio::time::timeout(step, client_got(3)).await;
    assert_eq!(
        got.expect("first download chunk held back by the proxy"),
        Some(b"one".to_vec())
    );
    chunks.send(Bytes::from_static(b"two")).unwrap();
    let got = tokio::time::timeout(step, client_got(3)).await.unwrap();
    assert_eq!(got, Some(b"two".to_vec()));
    drop(chunks);
    assert_eq!(
        tokio::time::timeout(step, client_got(1)).await.unwrap(),
        None
    );
}

/// `Expect: 100-continue` (curl sends it for uploads over 1 MiB): the client gets its
/// `100 Continue` and the upload goes through, without waiting for the client's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_uploads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let mut stream = TcpStream::connect(proxy.addr("web")).await.unwrap();
    stream
        .write_all(
            b"PUT /file HTTP/1.1\r\nHost: e.test\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    // Reads until `done(text so far)`, failing after 10 s or on EOF.
    async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        let read = async {
            while !done(&text) {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed after {text:?}");
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("timed out after {text:?}"));
        text
    }

    let interim = read_until(&mut stream, |t| t.contains("\r\n\r\n")).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let done = |t: &str| t.contains("\r\n\r\n") && t.ends_with('}');
    let response = read_until(&mut stream, done).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    let seen: Seen = serde_json::from_str(body).unwrap();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body_len, 5);
}

// ---------------------------------------------------------------------------------------------
// WebSocket, HTTP/2, trailers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_the_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<(String, HeaderMap)>();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The callback's signature, error type included, is tungstenite's.
        #[allow(clippy::result_large_err)]
        let callback = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                             resp| {
            let _ = head_tx.send((req.uri().to_string(), req.headers().clone()));
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .expect("upstream handshake");
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => ws.send(msg).await.unwrap(),
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
upstreams: {{ ws: {{ endpoints: ["{ws_addr}"] }} }}
routes: [{{ name: chat, hosts: [ws.test], paths: [{{ type: Prefix, value: /chat }}], upstream: ws }}]
"#
    ))
    .await;

    let stream = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async("ws://ws.test/chat/../chat/room?id=7", stream)
            .await
            .expect("client handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("x-request-id").is_some());
    let (target, headers) = head_rx.await.unwrap();
    assert_eq!(target, "/chat/room?id=7");
    assert_eq!(headers["host"], "ws.test");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["upgrade"], "websocket");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    for i in 0..50 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    ws.close(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("upstream saw the close")
        .unwrap();
}

/// Upgrades other than WebSocket are tunnelled too (h2c left out of the offer): the upstream
/// switches to `x-echo` and echoes bytes. A `101` to a protocol nobody offered is a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrades_are_tunnelled_and_a_101_must_switch_to_an_offered_protocol() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::with_handler(|mut req| {
        Box::pin(async move {
            let offered = req.headers().get("upgrade").cloned();
            // `/rogue` switches to a protocol of its own choosing.
            let to = match req.uri().path() {
                "/rogue" => HeaderValue::from_static("x-other"),
                _ => HeaderValue::from_static("x-echo"),
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    if io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let mut resp = Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", to);
            if let Some(o) = offered {
                resp = resp.header("x-offered", o);
            }
            resp.body(empty()).expect("response")
        })
    })
    .await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;

    let head = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: t.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: x-echo, h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
    };
    let mut stream = TcpStream::connect(proxy.addr("web")).await.unwrap();
    stream.write_all(head("/tunnel").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("\r\nupgrade: x-echo\r\n"), "{text}");
    assert!(
        text.contains("\r\nx-offered: x-echo\r\n"),
        "h2c left out: {text}"
    );
    for message in [&b"ping"[..], &[0u8, 255, 13, 10, 7][..]] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
            .await
            .expect("the echo")
            .unwrap();
        assert_eq!(echoed, message);
    }

    // `close` too, so that the answer ends the read.
    let rogue = head("/rogue").replace("Connection: Upgrade,", "Connection: close, Upgrade,");
    let answer = raw(proxy.addr("web"), rogue.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(raw_status(&answer), 502, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_to_http1_upstream_and_back() {
    let up = Upstream::echo("h1").await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let sender = h2c_sender(proxy.addr("web")).await;

    // Many concurrent streams on one HTTP/2 connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let body = vec![b'x'; i * 1000];
            send_h2(
                &mut sender,
                Request::post(format!("http://h2.test:8080/echo/{i}?x=1"))
                    .header("x-n", i.to_string())
                    .body(full(body))
                    .unwrap(),
            )
            .await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let got = task.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.version, http::Version::HTTP_2);
        assert!(got.header("x-request-id").is_some());
        let seen = got.seen();
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, format!("/echo/{i}?x=1"));
        assert_eq!(seen.headers["host"], "h2.test:8080");
        assert_eq!(seen.headers["x-forwarded-host"], "h2.test:8080");
        assert_eq!(seen.headers["x-n"], i.to_string());
        assert_eq!(seen.body_len, i * 1000);
    }
    assert_eq!(up.hits(), 20);
}

/// An echo upstream that also reports the request URI's authority (HTTP/2 `:authority`).
async fn authority_echo(name: &'static str) -> Upstream {
    Upstream::with_handler(move |req| {
        let authority = req.uri().authority().map(|a| a.to_string());
        Box::pin(async move {
            let mut resp = echo_response(name, req).await;
            if let Some(a) = authority {
                resp.headers_mut()
                    .insert("x-authority", HeaderValue::from_str(&a).unwrap());
            }
            resp
        })
    })
    .await
}

/// HTTP/2 carries the host in `:authority`, which is what an h2c upstream (a gRPC server, an
/// Envoy sidecar) takes as the request's host, and a `host` header must not contradict it
/// (RFC 9113 §8.3.1): the client's host, or the rewritten one, must be the `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_to_h2c_upstream() {
    let a = authority_echo("a").await;
    let b = authority_echo("b").await;
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
upstreams: {{ grpc: {{ endpoints: ["{}", "{}"], protocol: h2c }} }}
routes:
  - {{ name: internal, paths: [{{ type: Prefix, value: /internal }}], upstream: grpc, rewrite: {{ host: internal.svc:50051 }} }}
  - {{ name: all, upstream: grpc }}
"#,
        a.endpoint(),
        b.endpoint()
    ))
    .await;
    let mut servers = Vec::new();
    for (path, host, authority) in [
        ("/grpc.Service/Call", "g.test", "g.test"),
        ("/grpc.Service/Call", "g.test:8080", "g.test:8080"),
        ("/grpc.Service/Call", "other.test", "other.test"),
        ("/internal/x", "g.test", "internal.svc:50051"),
    ] {
        let got = send(
            proxy.addr("web"),
            Request::post(path)
                .header("host", host)
                .body(full("payload"))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.version, http::Version::HTTP_11);
        assert_eq!(got.header("x-authority"), Some(authority), "{host}{path}");
        let seen = got.seen();
        assert_eq!(seen.version, "HTTP/2.0");
        assert_eq!(seen.path, path);
        assert!(
            seen.headers.get("host").is_none_or(|h| h == authority),
            "host header {:?} contradicts :authority {authority}",
            seen.headers.get("host")
        );
        assert_eq!(seen.headers["x-forwarded-host"], host);
        assert_eq!(seen.body_len, 7);
        servers.push(seen.server);
    }
    // Still round robin over the endpoints.
    assert_eq!(servers, ["a", "b", "a", "b"]);
}

/// An h2c upstream that answers with each request's `:authority`, counts the connections it
/// accepts, and can restart on the same port, which closes its connections.
struct RestartingH2c {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Cloned into each open connection.
    open: Arc<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RestartingH2c {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(()));
        let task = tokio::spawn(Self::serve(listener, connections.clone(), open.clone()));
        RestartingH2c {
            addr,
            connections,
            open,
            task,
        }
    }

    /// Stops, waits until its connections are closed, and listens again on the same port.
    async fn restart(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        wait_for("upstream connections closed", || {
            Arc::strong_count(&self.open) == 1
        })
        .await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let serve = Self::serve(listener, self.connections.clone(), self.open.clone());
        self.task = tokio::spawn(serve);
    }

    /// Accepts until dropped; the connections end with it.
    async fn serve(listener: TcpListener, connections: Arc<AtomicUsize>, open: Arc<()>) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            connections.fetch_add(1, Ordering::Relaxed);
            let open = open.clone();
            conns.spawn(async move {
                let _open = open;
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let authority = req.uri().authority().map(|a| a.to_string());
                    Ok::<_, Infallible>(Response::new(full(authority.unwrap_or_default())))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

impl Drop for RestartingH2c {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a TCP connection to `port` here was closed by its peer and not yet by this side
/// (CLOSE_WAIT in /proc/net/tcp).
fn close_wait_to(port: u16) -> bool {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!(":{port:04X}");
    tcp.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields[2].ends_with(&remote) && fields[3] == "08"
    })
}

/// However many hosts clients send, an h2c endpoint gets one multiplexed connection: a pool
/// keyed by `:authority` would let any client open an upstream connection per made-up host.
/// Once the upstream closes it, the next request dials a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_gets_one_connection_whatever_the_host() {
    let mut up = RestartingH2c::start().await;
    // One host-less route: every host reaches the upstream.
    let proxy = proxy_to(&[up.addr.to_string()], ", protocol: h2c", "").await;
    let addr = proxy.addr("web");
    let hosts: Vec<String> = (0..20).map(|i| format!("h{i}.test")).collect();
    // All at once, so they also race for the first dial.
    let gots = futures_util::future::join_all(hosts.iter().map(|h| get(addr, h, "/"))).await;
    for (host, got) in hosts.iter().zip(gots) {
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), *host, "the :authority is the request's host");
    }
    assert_eq!(up.connections.load(Ordering::Relaxed), 1);

    up.restart().await;
    // A request racing the close could still be sent on the old connection and fail, as
    // with any pool; the claim is that once the close is seen, the next request redials.
    wait_for("the proxy to see the close", || {
        !close_wait_to(up.addr.port())
    })
    .await;
    for host in ["after.test", "again.test"] {
        let got = get(addr, host, "/").await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), host);
    }
    assert_eq!(up.connections.load(Ordering::Relaxed), 2);
}

/// A body of one data frame followed by trailers.
fn with_trailers(data: &'static str, trailers: HeaderMap) -> TestBody {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(data.as_bytes()))),
        Ok(Frame::trailers(trailers)),
    ];
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// An upstream that echoes the request's trailers back as response trailers (declared in a
/// `Trailer` header, as HTTP/1.1 needs), adding `grpc-status`, and says in a response header
/// how many it got.
async fn trailer_echo() -> Upstream {
    Upstream::with_handler(|req| {
        Box::pin(async move {
            let collected = req.into_body().collect().await.expect("request body");
            let mut trailers = collected.trailers().cloned().unwrap_or_default();
            let count = trailers.len();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = collected.to_bytes();
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
            Response::builder()
                .header("x-request-trailers", count.to_string())
                .header("trailer", "x-checksum, x-count, grpc-status")
                .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                    frames,
                ))))
                .unwrap()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_between_an_http2_client_and_an_http1_upstream() {
    let up = trailer_echo().await;
    let proxy = proxy_to(&[up.endpoint()], "", "").await;
    let mut sender = h2c_sender(proxy.addr("web")).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    // HTTP/1.1 can carry request trailers only when they are declared up front.
    let resp = sender
        .send_request(
            Request::post("http://tr.test/echo")
                .header("te", "trailers")
                .header("trailer", "x-checksum")
                .body(with_trailers("hello", trailers))
                .unwrap(),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-trailers"], "1");
    let collected = resp.into_body().collect().await.expect("response body");
    let got = collected.trailers().cloned().expect("response trailers");
    assert_eq!(got["x-checksum"], "abc123");
    assert_eq!(got["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_cross_the_proxy_on_http2() {
    let up = trailer_echo().await;
    let proxy = proxy_to(&[up.endpoint()], ", protocol: h2c", "").await;
    let mut sender = h2c_sender(proxy.addr("web")).await;

    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    trailers.insert("x-count", HeaderValue::from_static("5"));
    let resp = sender
        .send_request(
            Request::post("http://tr.test/echo")
                .header("te", "trailers")
                .body(with_trailers("hello", trailers))
                .unwrap(),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-trailers"], "2");
    let collected = resp.into_body().collect().await.expect("response body");
    let got = collected.trailers().cloned().expect("response trailers");
    assert_eq!(got["x-checksum"], "abc123");
    assert_eq!(got["x-count"], "5");
    assert_eq!(got["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "hello");

    // An HTTP/1.1 client gets the same, in chunked encoding: it declares its trailers with
    // `Trailer` and accepts them with `TE: trailers`, and the upstream's `Trailer` header (an
    // end-to-end header) reaches it.
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("h1"));
    let stream = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = h1
        .send_request(
            Request::post("/echo")
                .header("host", "tr.test")
                .header("te", "trailers")
                .header("trailer", "x-checksum")
                .body(with_trailers("hello/1.1", trailers))
                .unwrap(),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-trailers"], "1");
    let collected = resp.into_body().collect().await.expect("response body");
    let got = collected
        .trailers()
        .cloned()
        .expect("response trailers over HTTP/1.1");
    assert_eq!(got["x-checksum"], "h1");
    assert_eq!(got["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "hello/1.1");
}

// ---------------------------------------------------------------------------------------------
// Failures and timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502() {
    for protocol in ["", ", protocol: h2c"] {
        let proxy = proxy_to(&[dead_endpoint().await], protocol, "").await;
        let got = get(proxy.addr("web"), "dead.test", "/").await;
        assert_eq!(got.status, 502, "{protocol}");
        assert!(got.header("x-request-id").is_some());
        // The client learns nothing about the upstream.
        assert_eq!(got.text(), "Bad Gateway\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_after_the_route_timeout() {
    let up = Upstream::with_handler(|_req| {
        Box::pin(async {
            // The behaviour under test: an upstream slower than the route allows.
            std::future::pending::<()>().await;
            Response::new(full("too late"))
        })
    })
    .await;
    // The upstream's own request_timeout applies unless the route sets one.
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
upstreams: {{ slow: {{ endpoints: ["{}"], request_timeout: 300ms }} }}
routes:
  - {{ name: route-timeout, paths: [{{ type: Prefix, value: /r }}], upstream: slow, timeouts: {{ request: 200ms }} }}
  - {{ name: upstream-timeout, paths: [{{ type: Prefix, value: /u }}], upstream: slow }}
"#,
        up.endpoint()
    ))
    .await;
    for (path, timeout) in [("/r", 200), ("/u", 300)] {
        let started = Instant::now();
        let got = get(proxy.addr("web"), "slow.test", path).await;
        let elapsed = started.elapsed();
        assert_eq!(got.status, 504, "{path}");
        assert_eq!(got.text(), "Gateway Timeout\n");
        assert!(got.header("x-request-id").is_some());
        assert!(
            elapsed >= Duration::from_millis(timeout) && elapsed < Duration::from_secs(3),
            "{path}: {elapsed:?}"
        );
    }
}

/// The request timeout is about the upstream's answer, not the client's upload: a slow but
/// steady upload longer than the timeout goes through, while a body that stops moving still
/// ends in a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_counts_from_the_last_upload_progress() {
    let up = Upstream::with_handler(|req| {
        Box::pin(async move {
            if req.uri().path() == "/stall" {
                // The behaviour under test: an upstream that neither reads nor answers.
                std::future::pending::<()>().await;
            }
            echo_response("up", req).await
        })
    })
    .await;
    let proxy = proxy_to(&[up.endpoint()], "", ", timeouts: { request: 400ms }").await;
    let addr = proxy.addr("web");

    // A slow client: 6 chunks 100 ms apart, so the upload (500 ms) outlasts the 400 ms
    // timeout, while each gap stays far below it.
    let slow_body = || {
        let stream = futures_util::stream::unfold(0u8, |i| async move {
            if i == 6 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let frame = Frame::data(Bytes::from(vec![i; 1000]));
            Some((Ok::<_, BoxError>(frame), i + 1))
        });
        BodyExt::boxed(StreamBody::new(stream))
    };
    let started = Instant::now();
    let got = send(
        addr,
        Request::post("/upload")
            .header("host", "u.test")
            .body(slow_body())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(got.seen().body_len, 6000);

    // A body that stops moving, to an upstream that does not answer: the request timeout
    // runs out while the client still owes the rest of its body, which is the client's fault
    // (408), whatever the upstream would have done with it.
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    tx.send(Bytes::from_static(b"first and last chunk"))
        .unwrap();
    let started = Instant::now();
    let got = send(
        addr,
        Request::post("/stall")
            .header("host", "u.test")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 408);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout() {
    // A listener with a backlog of 0 that never accepts: once one connection fills its queue,
    // the kernel drops further SYNs, so a connect hangs instead of being refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let _filler = TcpStream::connect(addr).await.unwrap();

    for protocol in ["", ", protocol: h2c"] {
        let proxy = proxy_to(
            &[addr.to_string()],
            protocol,
            ", timeouts: { connect: 200ms, request: 20s }",
        )
        .await;
        let started = Instant::now();
        let got = get(proxy.addr("web"), "c.test", "/").await;
        let elapsed = started.elapsed();
        assert_eq!(got.status, 502, "{protocol}: {}", got.text());
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(5),
            "{protocol}: {elapsed:?}"
        );
    }
    drop(listener);
}
