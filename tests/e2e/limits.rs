//! Limits and malformed requests end to end: the exact bytes go over raw TCP, every refusal
//! must happen before the upstream sees anything, and the proxy must keep serving afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Generous bound for reads the server must answer or close; only reached when a test fails.
const GUARD: Duration = Duration::from_secs(5);

/// A proxy in front of an echo upstream, with `limits` (a YAML flow mapping).
async fn proxy_with(limits: &str) -> (Proxy, Upstream) {
    let up = Upstream::echo("app").await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
limits: {limits}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: small, paths: [{{ type: Prefix, value: /small }}], upstream: app, max_body: 100 }}
  - {{ name: app, upstream: app }}
"#,
        up.endpoint()
    ))
    .await;
    (proxy, up)
}

/// Sends raw bytes and returns the status of the answer (0: the connection closed without one).
async fn raw_code(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> u16 {
    raw_status(&raw(addr, bytes.as_ref(), GUARD).await)
}

/// A well-formed request still goes through (the proxy keeps serving).
async fn still_serving(addr: SocketAddr) {
    let got = get(addr, "app.example", "/after").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.seen().path, "/after");
}

/// A raw request that closes the connection after its answer.
fn req(head: &str) -> String {
    format!("{head}\r\nConnection: close\r\n\r\n")
}

/// Waits until the server closes `stream` (EOF or reset); returns what it sent before.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GUARD, stream.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A slowloris: sends `head` and then a header value one byte every 100 ms until the server
/// closes the connection. Returns how long that took from the first byte (`None`: still open
/// after [`GUARD`]).
async fn trickle_until_closed(stream: TcpStream, head: &'static str) -> Option<Duration> {
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for b in head.bytes().chain(std::iter::repeat_n(b'x', 1000)) {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(GUARD, read.read_to_end(&mut sink)).await;
    trickle.abort();
    closed.ok().map(|_| started.elapsed())
}

/// A request body of these chunk sizes, with no length known in advance.
fn streamed(chunks: &[usize]) -> TestBody {
    let frames: Vec<
        Result<http_body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    > = chunks
        .iter()
        .map(|n| Ok(http_body::Frame::data(bytes::Bytes::from(vec![b'b'; *n]))))
        .collect();
    http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

/// Reads one HTTP/1.1 response with a `Content-Length` body, leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>())
                })
                .expect("a Content-Length")
                .expect("a number");
            if out.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
            .await
            .expect("a response")
            .expect("read");
        assert!(n > 0, "closed mid-response: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}

/// An HTTP/1.1 keep-alive connection: its sender and the task driving it.
async fn h1_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<TestBody>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    (sender, tokio::spawn(conn))
}

/// An HTTP/2 (h2c, prior knowledge) connection: its sender and the task driving it.
async fn h2c_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<TestBody>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

/// A GET on an open connection once it is ready; the status, the body read to its end.
async fn h1_get(sender: &mut hyper::client::conn::http1::SendRequest<TestBody>) -> StatusCode {
    sender.ready().await.expect("connection ready");
    let req = Request::get("/")
        .header("host", "app.example")
        .body(empty())
        .expect("request");
    send_h1(sender, req).await.status
}

// ---------------------------------------------------------------------------------------------
// Size limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (proxy, up) = proxy_with("{ max_header_bytes: 8KiB, max_headers: 20 }").await;
    let addr = proxy.addr("web");

    let big = "x".repeat(9 * 1024);
    let code = raw_code(
        addr,
        req(&format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}")),
    )
    .await;
    assert_eq!(code, 431, "one header over max_header_bytes");

    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let code = raw_code(
        addr,
        req(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}X-Last: v")),
    )
    .await;
    assert_eq!(code, 431, "more than max_headers headers");

    // Just under both limits.
    let some: String = (0..15).map(|i| format!("X-H{i}: v\r\n")).collect();
    let fits = "x".repeat(6 * 1024);
    let code = raw_code(
        addr,
        req(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{some}X-Fits: {fits}"
        )),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(up.hits(), 1);

    // On a kept-alive connection, after a first request: hyper's buffer has grown by then and
    // lets a head that arrives whole pass, so the proxy measures heads itself. Sent after the
    // first answer, and pipelined behind it.
    let big_head = format!("GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    for pipelined in [false, true] {
        let hits = up.hits();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let first = "GET /first HTTP/1.1\r\nHost: a\r\n\r\n";
        if pipelined {
            stream
                .write_all(format!("{first}{big_head}").as_bytes())
                .await
                .expect("write");
            assert_eq!(raw_status(&read_response(&mut stream).await), 200);
        } else {
            stream.write_all(first.as_bytes()).await.expect("write");
            assert_eq!(raw_status(&read_response(&mut stream).await), 200);
            stream.write_all(big_head.as_bytes()).await.expect("write");
        }
        let second = String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned();
        // Pipelined, hyper may see the head as too long itself, while the first request is in
        // progress; it then closes the connection without an answer.
        let want: &[u16] = if pipelined { &[431, 0] } else { &[431] };
        assert!(
            want.contains(&raw_status(&second)),
            "pipelined {pipelined}: {second}"
        );
        assert_eq!(up.hits(), hits + 1, "only the first request went upstream");
    }
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_longer_than_max_uri_length_gets_414() {
    let (proxy, up) = proxy_with("{ max_uri_length: 256 }").await;
    let addr = proxy.addr("web");

    // The limit counts path and query.
    let at_limit = format!("/{}", "a".repeat(255));
    let code = raw_code(addr, req(&format!("GET {at_limit} HTTP/1.1\r\nHost: a"))).await;
    assert_eq!(code, 200, "exactly max_uri_length");
    let over = format!("/a?{}", "q".repeat(254));
    let code = raw_code(addr, req(&format!("GET {over} HTTP/1.1\r\nHost: a"))).await;
    assert_eq!(code, 414, "one byte over, in the query");
    let far_over = format!("/{}", "a".repeat(4000));
    let code = raw_code(addr, req(&format!("GET {far_over} HTTP/1.1\r\nHost: a"))).await;
    assert_eq!(code, 414);

    // HTTP/2 too.
    let mut h2 = h2c_sender(addr).await;
    let got = send_h2(
        &mut h2,
        Request::get(format!("http://a{far_over}"))
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, 414);

    assert_eq!(up.hits(), 1, "only the request at the limit was forwarded");
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_gets_413_and_never_reaches_the_upstream() {
    let (proxy, up) = proxy_with("{ max_body: 1KiB }").await;
    let addr = proxy.addr("web");
    let body = |n: usize| "b".repeat(n);
    let chunked = |chunks: &[usize]| {
        let mut s = String::new();
        for n in chunks {
            s.push_str(&format!("{n:x}\r\n{}\r\n", body(*n)));
        }
        s.push_str("0\r\n\r\n");
        s
    };

    // Declared length over the limit: refused before the body is read.
    let over = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n{}",
        body(2048)
    );
    assert_eq!(raw_code(addr, over).await, 413, "declared length");
    let head_only = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n";
    assert_eq!(raw_code(addr, head_only).await, 413, "declared, not sent");
    // No declared length: chunked, the limit crossed in a later chunk.
    let over = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        chunked(&[600, 600, 600])
    );
    assert_eq!(raw_code(addr, over).await, 413, "chunked");
    // A route's own, smaller limit.
    let over = format!(
        "POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        chunked(&[60, 60])
    );
    assert_eq!(raw_code(addr, over).await, 413, "chunked, route limit");
    // HTTP/2 without content-length.
    let mut h2 = h2c_sender(addr).await;
    let got = send_h2(
        &mut h2,
        Request::post("http://a/")
            .body(streamed(&[600, 600, 600]))
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, 413, "HTTP/2, undeclared length");
    assert_eq!(up.hits(), 0, "no refused request reached the upstream");

    // At the limit, each way.
    let got = send_h2(
        &mut h2,
        Request::post("http://a/")
            .body(streamed(&[600, 424]))
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen().body_len, 1024);
    let at = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
        body(1024)
    );
    let answer = raw(addr, at.as_bytes(), GUARD).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(answer.contains(r#""body_len":1024"#), "{answer}");
    let at = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}",
        chunked(&[500, 524])
    );
    let answer = raw(addr, at.as_bytes(), GUARD).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(answer.contains(r#""body_len":1024"#), "{answer}");
    assert_eq!(up.hits(), 3);
    still_serving(addr).await;
}

// ---------------------------------------------------------------------------------------------
// Malformed requests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_gets_400() {
    let (proxy, up) = proxy_with("{}").await;
    let addr = proxy.addr("web");
    for (name, request) in [
        (
            "CL then TE",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "TE then CL",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "smuggled second request",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "TE not chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        ),
        (
            "absolute form",
            "POST HTTP://a/y HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "names in mixed case",
            "POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\ntransfer-ENCODING: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bare LF line ends",
            "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 5\n\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let answer = raw(addr, request.as_bytes(), GUARD).await;
        assert_eq!(raw_status(&answer), 400, "{name}: {answer}");
        assert!(
            !answer.contains("HTTP/1.1 200"),
            "{name}: a second response: {answer}"
        );
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");

    // The same on a kept-alive connection, after a good request.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let first = read_response(&mut stream).await;
    assert_eq!(raw_status(&first), 200, "{first}");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .expect("write");
    let second = String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned();
    assert_eq!(raw_status(&second), 400, "{second}");
    assert_eq!(up.hits(), 1, "only the good request reached the upstream");

    // A head that arrives one byte per read.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let head = b"POST HTTP://A/y HTTP/1.1\r\nHost: a\r\nContent-length: 5\r\nTRANSFER-ENCODING: chunked\r\n\r\n";
    for byte in head {
        stream.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stream
        .write_all(b"5\r\nhello\r\n0\r\n\r\n")
        .await
        .expect("write");
    let answer = String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned();
    assert_eq!(raw_status(&answer), 400, "byte by byte: {answer}");
    assert_eq!(up.hits(), 1, "nothing more reached the upstream");
    still_serving(addr).await;
}

/// Request body framing the proxy cannot pass on faithfully. Transfer codings other than
/// `chunked` alone: hyper would decode the chunked framing of `gzip, chunked` and drop the
/// gzip, so the upstream would take gzip bytes for the content. And malformed chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_framing_that_cannot_be_forwarded_is_refused() {
    let (proxy, up) = proxy_with("{}").await;
    let addr = proxy.addr("web");
    for (te, want) in [
        ("gzip, chunked", 501),
        ("x-custom, chunked", 501),
        ("chunked, chunked", 400),
        ("chunked\r\nTransfer-Encoding: chunked", 400),
    ] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let answer = raw(addr, request.as_bytes(), GUARD).await;
        assert_eq!(raw_status(&answer), want, "{te}: {answer}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");

    // A chunked body whose framing is malformed is the client's fault: 400, not a 502 blamed
    // on the upstream. (Its head and the chunks before the bad one may already have gone
    // upstream, as with any streamed body; a route whose `max_body` is held before contacting
    // the upstream sends nothing.)
    for size in ["2", "zz", "-4", "ffffffffffffffffff1"] {
        for path in ["/x", "/small/x"] {
            let hits = up.hits();
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabcd\r\n0\r\n\r\n"
            );
            let answer = raw(addr, request.as_bytes(), GUARD).await;
            assert_eq!(raw_status(&answer), 400, "{size} {path}: {answer}");
            if path == "/small/x" {
                assert_eq!(up.hits(), hits, "{size}: held, nothing sent upstream");
            }
        }
    }
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_checked_one_by_one() {
    let (proxy, up) = proxy_with("{}").await;
    let addr = proxy.addr("web");
    // Good requests with chunked and sized bodies (which look like heads) pass, in order; the
    // head with both fields is refused wherever it comes, and nothing after it is served.
    let fake = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let pipeline = format!(
        "POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{fake}\r\n0\r\n\r\n\
         POST HTTP://a/2 HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{fake}\
         POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
         POST /4 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
         GET /5 HTTP/1.1\r\nHost: a\r\n\r\n",
        fake.len(),
        fake.len(),
    );
    let answer = raw(addr, pipeline.as_bytes(), GUARD).await;
    let statuses: Vec<u16> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| raw_status(&answer[at..]))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 400], "{answer}");
    assert_eq!(
        up.hits(),
        3,
        "the refused request and the one after never reached the upstream"
    );
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_conflicting_content_length_gets_400() {
    let (proxy, up) = proxy_with("{}").await;
    let addr = proxy.addr("web");
    for (name, lengths) in [
        ("two different", "Content-Length: 5\r\nContent-Length: 6"),
        ("a list of different", "Content-Length: 5, 6"),
        ("not a number", "Content-Length: five"),
        ("negative", "Content-Length: -5"),
        ("signed", "Content-Length: +5"),
        ("hex", "Content-Length: 0x5"),
    ] {
        let request = format!("POST / HTTP/1.1\r\nHost: a\r\n{lengths}\r\n\r\nhello!");
        assert_eq!(raw_code(addr, request).await, 400, "{name}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");

    // The same length twice is one length (RFC 9110 §8.6).
    let request = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let answer = raw(addr, request.as_bytes(), GUARD).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(answer.contains(r#""body_len":5"#), "{answer}");
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_header_bytes_get_400() {
    let (proxy, up) = proxy_with("{}").await;
    let addr = proxy.addr("web");
    for (name, head) in [
        (
            "NUL in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b",
        ),
        (
            "NUL in a header name",
            "GET / HTTP/1.1\r\nHost: a\r\nX-\0A: b",
        ),
        (
            "space in a header name",
            "GET / HTTP/1.1\r\nHost: a\r\nX A: b",
        ),
        ("space before the colon", "GET / HTTP/1.1\r\nHost : a"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two"),
        ("no colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A"),
        (
            "separator in a header name",
            "GET / HTTP/1.1\r\nHost: a\r\nX(A): b",
        ),
        (
            "control character in a value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b",
        ),
        ("DEL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb"),
        ("bare CR", "GET / HTTP/1.1\r\nHost: a\rX-A: b"),
        ("space in the target", "GET /a b HTTP/1.1\r\nHost: a"),
        ("unknown version", "GET / HTTP/7.1\r\nHost: a"),
        ("bad Host", "GET / HTTP/1.1\r\nHost: a b"),
        ("Host with userinfo", "GET / HTTP/1.1\r\nHost: user@a"),
        (
            "target with userinfo",
            "GET http://user@a/ HTTP/1.1\r\nHost: a",
        ),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b"),
    ] {
        let code = raw_code(addr, req(head)).await;
        assert_eq!(code, 400, "{name}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_on_http11_gets_400() {
    let (proxy, up) = proxy_with("{}").await;
    let addr = proxy.addr("web");
    assert_eq!(raw_code(addr, req("GET / HTTP/1.1")).await, 400);
    assert_eq!(raw_code(addr, req("GET / HTTP/1.1\r\nHost:")).await, 400);
    assert_eq!(up.hits(), 0);
    // An absolute-form target names the host itself.
    let code = raw_code(
        addr,
        req("GET http://a.example/x HTTP/1.1\r\nHost: a.example"),
    )
    .await;
    assert_eq!(code, 200);
    still_serving(addr).await;
}

// ---------------------------------------------------------------------------------------------
// Timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_after_header_read_timeout() {
    let (proxy, up) = proxy_with("{ header_read_timeout: 300ms, idle_timeout: 30s }").await;
    let addr = proxy.addr("web");

    // A slowloris: one byte every 100 ms, from the first byte of the request line, and after a
    // request line sent at once.
    for prefix in ["", "GET / HTTP/1.1\r\nHost: a\r\n"] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        stream.write_all(prefix.as_bytes()).await.expect("write");
        let waited = trickle_until_closed(stream, "GET / HTTP/1.1\r\nX-Slow: ").await;
        let waited = waited.map(|_| started.elapsed());
        assert!(
            waited.is_some_and(|w| w >= Duration::from_millis(250) && w < Duration::from_millis(1500)),
            "prefix {prefix:?}: closed after {waited:?}, expected about 300ms"
        );
    }

    // Silence after connecting is cut off the same way.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    until_closed(&mut stream).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "silent connection closed after {waited:?}, expected about 300ms"
    );

    assert_eq!(up.hits(), 0);
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_after_an_idle_spell_is_cut_off_after_header_read_timeout() {
    // The connection's timer sleeps until the idle timeout once a request has ended; the
    // first byte of the next head must bring it forward to that head's header clock.
    let (proxy, up) = proxy_with("{ header_read_timeout: 300ms, idle_timeout: 30s }").await;
    let mut stream = TcpStream::connect(proxy.addr("web"))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let length = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .expect("a response with a content-length");
        got.len() >= end + 4 + length
    };
    while !complete(&got) {
        let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before the first response");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Past the header timeout with no head: the connection is idle, not reading a head.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let waited = trickle_until_closed(stream, "GET /second HTTP/1.1\r\nX-Slow: ").await;
    assert!(
        waited.is_some_and(|w| w >= Duration::from_millis(250) && w < Duration::from_millis(1500)),
        "closed {waited:?} after the second head began, expected about 300ms"
    );
    assert_eq!(up.hits(), 1);
}

/// How long `conn` (a client connection's driver) lives from now; fails past [`GUARD`].
async fn idle_until_closed<F: std::future::Future>(conn: F, what: &str) -> Duration {
    let idle_since = Instant::now();
    let closed = tokio::time::timeout(GUARD, conn).await;
    assert!(closed.is_ok(), "{what} still open");
    idle_since.elapsed()
}

/// An idle timeout shorter than the header read timeout still holds for a connection whose
/// first request came and went at once (the connection's first look must not wait for the
/// header clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_shorter_than_the_header_timeout_closes_after_the_first_request() {
    let (proxy, _up) = proxy_with("{ idle_timeout: 300ms, header_read_timeout: 8s }").await;
    let (mut sender, conn) = h1_connection(proxy.addr("web")).await;
    assert_eq!(h1_get(&mut sender).await, 200);
    let waited = idle_until_closed(conn, "connection").await;
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?} idle, expected about 300ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_after_idle_timeout() {
    // The idle timeout is longer than the header read timeout: an idle keep-alive connection
    // is not "reading headers" and must live for the whole idle timeout.
    let (proxy, _up) = proxy_with("{ idle_timeout: 600ms, header_read_timeout: 200ms }").await;
    let addr = proxy.addr("web");

    // HTTP/1.1
    let (mut sender, conn) = h1_connection(addr).await;
    assert_eq!(h1_get(&mut sender).await, 200);
    let waited = idle_until_closed(conn, "HTTP/1.1 connection").await;
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "HTTP/1.1 closed after {waited:?} idle, expected about 600ms"
    );

    // A connection that keeps working is not idle: requests every 150 ms for 900 ms.
    let (mut sender, conn) = h1_connection(addr).await;
    for _ in 0..6 {
        assert_eq!(h1_get(&mut sender).await, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(!conn.is_finished(), "a busy connection was closed");

    // HTTP/2 (h2c): GOAWAY and close.
    let (mut h2, conn) = h2c_connection(addr).await;
    let got = send_h2(
        &mut h2,
        Request::get("http://a/").body(empty()).expect("request"),
    )
    .await;
    assert_eq!(got.status, 200);
    let waited = idle_until_closed(conn, "HTTP/2 connection").await;
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "HTTP/2 closed after {waited:?} idle, expected about 600ms"
    );
}

// ---------------------------------------------------------------------------------------------
// Load shedding

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_exceeded_gets_503_with_retry_after() {
    let (proxy, up) = proxy_with("{ max_connections: 2 }").await;
    let addr = proxy.addr("web");

    // Two keep-alive connections, each proven accepted by a completed request.
    let (mut first, first_conn) = h1_connection(addr).await;
    assert_eq!(h1_get(&mut first).await, 200);
    let (mut second, _second_conn) = h1_connection(addr).await;
    assert_eq!(h1_get(&mut second).await, 200);
    let hits = up.hits();

    let got = get(addr, "app.example", "/third").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(got.header("connection"), Some("close"));
    assert_eq!(
        up.hits(),
        hits,
        "the refused request did not reach the upstream"
    );

    let (_, metrics) = admin_get(&proxy.admin(), "/metrics").await;
    assert!(
        metrics.contains(r#"portico_connections_rejected_total{listener="web"} 1"#),
        "{metrics}"
    );

    // Closing one makes room again.
    drop(first);
    first_conn.abort();
    eventually("a free connection slot", || async {
        get(addr, "app.example", "/again").await.status == 200
    })
    .await;
    assert_eq!(h1_get(&mut second).await, 200);
}

/// An h2c connection over the limit: HTTP/2 has no `Connection: close`, so the proxy sends
/// GOAWAY and the connection ends instead of answering 503 for as long as the client likes
/// (holding a slot all the while).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_over_max_connections_is_closed() {
    let (proxy, up) = proxy_with("{ max_connections: 1, idle_timeout: 60s }").await;
    let addr = proxy.addr("web");
    let (mut first, _first_conn) = h1_connection(addr).await;
    assert_eq!(h1_get(&mut first).await, 200);
    let hits = up.hits();

    let (mut h2, conn) = h2c_connection(addr).await;
    // Sent at once: it may reach the proxy before or after its GOAWAY. Either way it is
    // refused, with a 503 or with the connection.
    let sent = h2.send_request(Request::get("http://a/").body(empty()).expect("request"));
    if let Ok(resp) = tokio::time::timeout(GUARD, sent).await.expect("an answer") {
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
    assert!(
        tokio::time::timeout(GUARD, conn).await.is_ok(),
        "the refused h2c connection is still open"
    );
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_exceeded_gets_503_with_retry_after() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let up = Upstream::with_handler(move |req| {
        let gate = g.clone();
        Box::pin(async move {
            if req.uri().path() == "/slow" {
                let _permit = gate.acquire().await.expect("gate");
            }
            echo_response("slow", req).await
        })
    })
    .await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
limits: {{ max_inflight: 2 }}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: app, upstream: app }}
"#,
        up.endpoint()
    ))
    .await;
    let addr = proxy.addr("web");

    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "app.example", "/slow").await }))
        .collect();
    wait_for("two requests held at the upstream", || up.hits() == 2).await;

    let got = get(addr, "app.example", "/fast").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("1"));
    let mut h2 = h2c_sender(addr).await;
    let got = send_h2(
        &mut h2,
        Request::get("http://app.example/fast")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, 503, "HTTP/2 streams count too");
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(up.hits(), 2, "refused requests did not reach the upstream");

    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.expect("held request").status, 200);
    }
    eventually("room for new requests", || async {
        get(addr, "app.example", "/fast").await.status == 200
    })
    .await;
}

/// A client that gives up on a request (disconnects, or resets its HTTP/2 stream) must not
/// leave it counted in flight: otherwise `max_inflight` fills with ghosts and every later
/// request gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_leave_no_ghosts_in_flight() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let up = Upstream::gated(gate.clone()).await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
limits: {{ max_inflight: 3 }}
upstreams: {{ slow: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: hello, paths: [{{ type: Exact, value: /hello }}], direct_response: {{ status: 200, body: hi }} }}
  - {{ name: slow, upstream: slow }}
"#,
        up.endpoint()
    ))
    .await;
    let addr = proxy.addr("web");
    let admin = proxy.admin();

    // HTTP/1.1 clients that give up: the connection is closed with the request in flight.
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        eventually("the request to reach the upstream", || async {
            metric(&admin, "portico_inflight_requests").await >= 1
        })
        .await;
        drop(stream);
    }
    // An HTTP/2 client that resets its streams by dropping the response futures.
    let mut h2 = h2c_sender(addr).await;
    for _ in 0..3 {
        let req = Request::get(format!("http://{addr}/slow"))
            .body(empty())
            .expect("request");
        let pending = h2.send_request(req);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), pending).await;
    }
    drop(h2);

    eventually(
        "every abandoned request to leave the in-flight count",
        || async { metric(&admin, "portico_inflight_requests").await == 0 },
    )
    .await;
    assert_eq!(get(addr, "a", "/hello").await.status, 200);
    let (_, metrics) = admin_get(&admin, "/metrics").await;
    assert!(
        metrics.contains(r#"portico_requests_total{method="GET",route="slow",status="4xx"}"#),
        "abandoned requests are counted (499): {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_refused_before_any_upstream() {
    let up = Upstream::echo("app").await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: all, upstream: app }}
  - {{ name: admin, paths: [{{ type: Prefix, value: /admin }}], direct_response: {{ status: 403 }} }}
"#,
        up.endpoint()
    ))
    .await;
    for path in [
        "/public/..;/admin",
        "/public/%2e%2e;x/admin",
        "/public/..\\admin",
        // Escaped: a backslash, overlong UTF-8 dots, control bytes.
        "/x%5C..%5Cadmin",
        "/x/%c0%ae%c0%ae/admin",
        "/admin%00",
        "/x%0d%0aSet-Cookie:a",
        // `;parameters` that take the path past the route servers like Tomcat would choose.
        "/admin;x",
        "/admin;/secret",
    ] {
        let text = raw(
            proxy.addr("web"),
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            std::time::Duration::from_secs(5),
        )
        .await;
        assert_eq!(raw_status(&text), 400, "{path}: {text}");
    }
    assert_eq!(up.hits(), 0);
    // Parameters that leave the route as it is are fine, and reach the upstream as sent.
    let got = get(proxy.addr("web"), "a", "/a;jsessionid=1/b").await;
    assert_eq!(got.seen().path, "/a;jsessionid=1/b");
    assert_eq!(
        get(proxy.addr("web"), "a", "/admin/x;y=1").await.status,
        403
    );
}
