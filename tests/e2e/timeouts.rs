//! Timeouts while a request is in progress and tunnel hygiene: a body that stops moving on
//! either side (`limits.body_idle_timeout`), upgrades other than WebSocket, WebSocket tunnels
//! holding their connection slot, and idle tunnels (`limits.tunnel_idle_timeout`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BODY_IDLE: Duration = Duration::from_millis(500);

/// A proxy with admin, one catch-all route to `endpoint`, and `limits` as given.
async fn proxy(endpoint: &str, limits: &str) -> Proxy {
    Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
limits: {{ {limits} }}
upstreams: {{ up: {{ endpoints: ["{endpoint}"] }} }}
routes: [{{ name: all, upstream: up }}]
"#
    ))
    .await
}

/// An upstream whose response body comes from `body()`; `dropped` turns true when the
/// upstream's server lets go of a response body it did not finish (its connection closed).
async fn streaming_upstream<F, S>(body: F) -> (Upstream, Arc<AtomicBool>)
where
    F: Fn() -> S + Send + Sync + 'static,
    S: futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static,
{
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let body = Arc::new(body);
    let up = Upstream::with_handler(move |_req| {
        let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let source = (*body)();
        let flag = flag.clone();
        tokio::spawn(async move {
            let mut source = std::pin::pin!(source);
            loop {
                tokio::select! {
                    _ = tx.closed() => {
                        flag.store(true, Ordering::Release);
                        return;
                    }
                    next = source.next() => match next {
                        Some(frame) => {
                            if tx.send(frame).await.is_err() {
                                flag.store(true, Ordering::Release);
                                return;
                            }
                        }
                        // Finished: nothing to report.
                        None => return,
                    },
                }
            }
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Box::pin(async move { Response::new(BodyExt::boxed(StreamBody::new(stream))) })
    })
    .await;
    (up, dropped)
}

/// "start", then nothing ever again.
fn stalls_after_one_chunk() -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    futures_util::stream::once(async { Ok(Frame::data(Bytes::from_static(b"start"))) })
        .chain(futures_util::stream::pending())
}

/// 64KiB chunks, as many as the reader takes (up to 1GiB).
fn endless() -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    futures_util::stream::iter((0..16 * 1024).map(move |_| Ok(Frame::data(chunk.clone()))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_body_that_stalls_after_headers_ends_the_client_stream() {
    let (up, dropped) = streaming_upstream(stalls_after_one_chunk).await;
    let proxy = proxy(&up.endpoint(), "body_idle_timeout: 500ms").await;

    // HTTP/1.1: the response is cut (the connection closes before the end of the body).
    let mut sender = h1_sender(proxy.addr("web")).await;
    let resp = sender
        .send_request(Request::get("/").header("host", "a").body(empty()).unwrap())
        .await
        .expect("response headers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().unwrap(), "start");
    let waiting = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Some(Ok(_))), "no more data: {end:?}");
    let waited = waiting.elapsed();
    assert!(
        waited >= BODY_IDLE - Duration::from_millis(50) && waited < 2 * BODY_IDLE + BODY_IDLE / 2,
        "ended after {waited:?}"
    );
    // The upstream connection was let go, not pinned.
    wait_for("the upstream connection to close", || {
        dropped.load(Ordering::Acquire)
    })
    .await;

    // HTTP/2: the stream is reset; the connection carries on.
    dropped.store(false, Ordering::Release);
    let mut sender = h2c_sender(proxy.addr("web")).await;
    let resp = sender
        .send_request(Request::get("http://a/").body(empty()).unwrap())
        .await
        .expect("response headers");
    let mut body = resp.into_body();
    body.frame().await.expect("a frame").expect("data");
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Some(Err(_))), "a reset: {end:?}");
    wait_for("the upstream connection to close", || {
        dropped.load(Ordering::Acquire)
    })
    .await;
    assert!(!sender.is_closed(), "only the stream was reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_upload_that_stalls_is_aborted_upstream() {
    let up = Upstream::echo("up").await;
    let proxy = proxy(&up.endpoint(), "body_idle_timeout: 500ms").await;
    // A chunked upload that sends one chunk and then nothing, over a raw connection.
    let text = stalled_upload(
        proxy.addr("web"),
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), 408, "{text}");
}

/// Sends `bytes` (a request whose body stops short) and returns what the proxy answers before
/// it closes the connection.
async fn stalled_upload(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// A request timeout shorter than `body_idle_timeout` that runs out while the client still
/// owes body bytes blames the client (408), not the upstream (504), which was waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_under_a_short_request_timeout_is_408() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams: {{ up: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: up, timeouts: {{ request: 500ms }} }}]
"#,
        up.endpoint()
    ))
    .await;
    let text = stalled_upload(
        proxy.addr("web"),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
    )
    .await;
    assert_eq!(raw_status(&text), 408, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_has_its_connection_closed() {
    let (up, dropped) = streaming_upstream(endless).await;
    let proxy = proxy(&up.endpoint(), "body_idle_timeout: 500ms").await;

    // HTTP/1.1: the client reads nothing; the proxy's writes block.
    let mut stream = TcpStream::connect(proxy.addr("web")).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    wait_for("the upstream response to be dropped", || {
        dropped.load(Ordering::Acquire)
    })
    .await;
    let mut sink = vec![0u8; 1 << 20];
    let mut read = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was closed");
    assert!(read < 1 << 30, "the response was cut, {read} bytes read");
    eventually("the connection slot to be released", || async {
        metric(
            &proxy.admin(),
            r#"portico_active_connections{listener="web"}"#,
        )
        .await
            == 0
    })
    .await;

    // HTTP/2: the client's connection is alive (it answers pings) but grants the stream no
    // window, so hyper stops asking the body for frames.
    dropped.store(false, Ordering::Release);
    let mut sender = h2c_sender(proxy.addr("web")).await;
    let resp = sender
        .send_request(Request::get("http://a/big").body(empty()).unwrap())
        .await
        .expect("response headers");
    let body = resp.into_body();
    wait_for("the upstream response to be dropped", || {
        dropped.load(Ordering::Acquire)
    })
    .await;
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the stream ends");
    assert!(rest.is_err(), "the stream was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_answered_as_a_plain_request() {
    let up = Upstream::echo("up").await;
    let proxy = proxy(&up.endpoint(), "").await;
    let got = send(
        proxy.addr("web"),
        Request::get("/smuggle")
            .header("host", "a")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen: Seen = serde_json::from_slice(&got.body).expect("echo");
    assert_eq!(seen.path, "/smuggle");
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(!seen.headers.contains_key(name), "{name}: {seen:?}");
    }

    // Offered next to websocket, h2c is dropped from the offer.
    let got = send(
        proxy.addr("web"),
        Request::get("/ws")
            .header("host", "a")
            .header("connection", "Upgrade")
            .header("upgrade", "h2c, websocket")
            .body(empty())
            .unwrap(),
    )
    .await;
    let seen: Seen = serde_json::from_slice(&got.body).expect("echo");
    assert_eq!(
        seen.headers.get("upgrade").map(String::as_str),
        Some("websocket")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_holds_its_connection_slot_until_it_ends() {
    let up = Upstream::websocket_echo().await;
    let proxy = proxy(&up.endpoint(), "max_connections: 1").await;
    let gauge = r#"portico_active_connections{listener="web"}"#;
    let mut ws = ws_connect(proxy.addr("web"), "/chat")
        .await
        .expect("handshake");
    ws_echo(&mut ws, "hello").await;
    assert_eq!(metric(&proxy.admin(), gauge).await, 1);
    // The tunnel takes the only slot: another connection is refused.
    let refused = get(proxy.addr("web"), "a", "/").await;
    assert_eq!(refused.status, 503);
    ws_echo(&mut ws, "still open").await;

    ws.close(None).await.expect("close");
    drop(ws);
    eventually("the slot to be released", || async {
        metric(&proxy.admin(), gauge).await == 0
    })
    .await;
    let mut ws = ws_connect(proxy.addr("web"), "/chat")
        .await
        .expect("a new tunnel fits");
    ws_echo(&mut ws, "again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_is_closed() {
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::websocket_echo().await;
    let idle = Duration::from_millis(500);
    let proxy = proxy(&up.endpoint(), "tunnel_idle_timeout: 500ms").await;
    let mut ws = ws_connect(proxy.addr("web"), "/chat")
        .await
        .expect("handshake");
    // Traffic keeps it open past the timeout.
    let busy = Instant::now();
    loop {
        ws_echo(&mut ws, "tick").await;
        if busy.elapsed() >= 2 * idle {
            break;
        }
        tokio::time::sleep(idle / 5).await;
    }
    // Silence closes it.
    let silent = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the tunnel closes");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "no message: {end:?}"
    );
    assert!(silent.elapsed() >= idle - Duration::from_millis(50));
    eventually("the slot to be released", || async {
        metric(
            &proxy.admin(),
            r#"portico_active_connections{listener="web"}"#,
        )
        .await
            == 0
    })
    .await;
}
