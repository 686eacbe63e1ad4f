//! Proxy-Wasm plugins end to end: the compatibility corpus (tests/plugins, built by
//! scripts/build-test-plugins.sh; what each plugin does is in tests/plugins/README.md) run by
//! the real proxy between real clients and upstreams. A test per ABI feature, then failure
//! isolation (time, memory, panics, bad input), reload, and memory over many reloads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use portico::server::{Options, ReloadOutcome, Server};
use tokio::net::TcpStream;

use crate::support::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Helpers

/// One entry under `plugins:`: `name` runs the corpus module `test_<corpus>.wasm`, with
/// `extra` (e.g. `config: {...}, limits: {...}`) added to its mapping.
fn plugin(name: &str, corpus: &str, extra: &str) -> String {
    let module = plugin_wasm(corpus);
    if extra.is_empty() {
        format!("  {name}: {{ module: \"{}\" }}\n", module.display())
    } else {
        format!(
            "  {name}: {{ module: \"{}\", {extra} }}\n",
            module.display()
        )
    }
}

/// Listener `web`, the admin endpoint, upstream `up` (plus `more_upstreams` lines), the
/// `plugins` lines, and two routes: `/free/...` with no plugins, everything else (`plugged`)
/// through `chain` (comma-separated plugin names).
fn config_with(up: &Upstream, more_upstreams: &str, plugins: &str, chain: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
{more_upstreams}
plugins:
{plugins}
routes:
  - {{ name: free, paths: [{{ type: Prefix, value: /free }}], upstream: up, plugins: [] }}
  - {{ name: plugged, upstream: up, plugins: [{chain}] }}
"#,
        up.endpoint()
    )
}

fn config(up: &Upstream, plugins: &str, chain: &str) -> String {
    config_with(up, "", plugins, chain)
}

/// A proxy whose `plugged` route runs one plugin `p` (corpus module `corpus`, with `extra`).
async fn proxy_with(up: &Upstream, corpus: &str, extra: &str) -> Proxy {
    Proxy::start(&config(up, &plugin("p", corpus, extra), "p")).await
}

fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Request<TestBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "plugins.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).expect("request")
}

/// A GET with `headers` over a fresh HTTP/1.1 connection.
async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    send(proxy.addr("web"), request("GET", path, headers, empty())).await
}

/// A body of one data frame `data` and then the trailer `name: value`.
fn body_with_trailer(data: &'static [u8], name: &'static str, value: HeaderValue) -> TestBody {
    let mut trailers = HeaderMap::new();
    trailers.insert(name, value);
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ];
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// The echo upstream's view of a request that must have reached it.
fn seen_ok(got: &Got) -> Seen {
    assert_eq!(got.status, 200, "{}", got.text());
    got.seen()
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(String::as_str)
}

/// A body sent as `chunks`, one data frame each, a few milliseconds apart so that they reach
/// the proxy as separate reads.
fn chunked(chunks: Vec<&'static str>) -> TestBody {
    let frames = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(3)).await;
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(c.as_bytes())))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

async fn admin_metrics(proxy: &Proxy) -> String {
    let (status, text) = admin_get(&proxy.admin(), "/metrics").await;
    assert_eq!(status, 200);
    text
}

/// `portico_plugin_failures_total` of plugin `p` for `kind`.
async fn failures(proxy: &Proxy, kind: &str) -> u64 {
    metric(
        &proxy.admin(),
        &format!(r#"portico_plugin_failures_total{{kind="{kind}",plugin="p"}}"#),
    )
    .await
}

/// Waits for a reload attempt after `before` that succeeded.
async fn reloaded_since(proxy: &Proxy, before: u64) {
    let status = || proxy.server.shared().status.lock().unwrap().clone();
    wait_for("a successful reload", || {
        proxy.reloads() > before && status().last_result == Some("success")
    })
    .await;
}

/// The running snapshot's instance of plugin `name`.
fn running_plugin(proxy: &Proxy, name: &str) -> Arc<portico::plugin::Plugin> {
    proxy
        .server
        .shared()
        .current
        .load()
        .plugins
        .iter()
        .map(|(_, p)| p.clone())
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("no running plugin {name}"))
}

// ---------------------------------------------------------------------------------------------
// Headers (test_headers.wasm)

/// An upstream that answers with every request header and all its values as JSON
/// (`{name: [values]}`), plus a response header `x-upstream-secret` for the plugin to strip.
async fn header_lists() -> Upstream {
    Upstream::with_handler(|req| {
        Box::pin(async move {
            let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in req.headers() {
                seen.entry(k.as_str().to_string())
                    .or_default()
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            }
            Response::builder()
                .header("x-upstream-secret", "s3cret")
                .header("x-upstream-keep", "1")
                .body(full(serde_json::to_string(&seen).expect("json")))
                .expect("response")
        })
    })
    .await
}

fn lists(got: &Got) -> BTreeMap<String, Vec<String>> {
    assert_eq!(got.status, 200, "{}", got.text());
    serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{e}: {}", got.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headers_plugin_adds_sets_replaces_and_removes_request_and_response_headers() {
    let up = header_lists().await;
    let proxy = proxy_with(&up, "headers", "").await;
    let sent = [
        ("x-plugin-headers", "client"),
        ("x-remove-me", "1"),
        ("x-replace-me", "a"),
        ("x-replace-me", "b"),
        ("x-keep", "yes"),
    ];
    let got = get_with(&proxy, "/p/x?q=1", &sent).await;
    let at_upstream = lists(&got);
    let values = |name: &str| at_upstream.get(name).cloned().unwrap_or_default();

    // add appends, the client's value stays.
    assert_eq!(values("x-plugin-headers"), ["client", "seen"]);
    // Pseudo-headers as Envoy presents them.
    assert_eq!(values("x-seen-method"), ["GET"]);
    assert_eq!(values("x-seen-path"), ["/p/x?q=1"]);
    assert_eq!(values("x-seen-authority"), ["plugins.test"]);
    assert_eq!(values("x-seen-scheme"), ["http"]);
    // remove, and replace turning two values into one.
    assert!(!at_upstream.contains_key("x-remove-me"), "{at_upstream:?}");
    assert_eq!(values("x-replace-me"), ["replaced"]);
    assert_eq!(values("x-keep"), ["yes"]);
    // The pairs the plugin saw: 4 pseudo-headers, `host`, the 6 sent above (x-replace-me
    // twice), and the `x-request-id` the proxy adds first.
    assert_eq!(
        values("x-header-count"),
        [(4 + 1 + sent.len() + 1).to_string()]
    );

    // The response: set, remove, and the `:status` pseudo-header.
    assert_eq!(got.header("x-plugin-response"), Some("headers"));
    assert_eq!(got.header("x-seen-status"), Some("200"));
    assert_eq!(got.header("x-upstream-secret"), None);
    assert_eq!(got.header("x-upstream-keep"), Some("1"));

    // The same upstream without the plugin: what the plugin removed is really there.
    let got = get_with(&proxy, "/free/x", &sent).await;
    let at_upstream = lists(&got);
    assert!(at_upstream.contains_key("x-remove-me"));
    assert_eq!(at_upstream["x-replace-me"], ["a", "b"]);
    assert!(!at_upstream.contains_key("x-seen-path"));
    assert_eq!(got.header("x-upstream-secret"), Some("s3cret"));
    assert_eq!(got.header("x-plugin-response"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_response_from_request_headers_never_reaches_the_upstream() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "headers", "").await;

    let got = get_with(&proxy, "/p/deny", &[("x-deny", "418")]).await;
    assert_eq!(got.status, 418);
    assert_eq!(got.text(), "denied by headers plugin");
    assert_eq!(got.header("x-denied-by"), Some("headers"));
    // Local responses run through the response phase, as in Envoy.
    assert_eq!(got.header("x-seen-status"), Some("418"));
    assert_eq!(up.hits(), 0, "the upstream got the denied request");

    // A value that is not a number is not a denial.
    let seen = seen_ok(&get_with(&proxy, "/p/deny", &[("x-deny", "teapot")]).await);
    assert_eq!(header(&seen, "x-deny"), Some("teapot"));
    assert_eq!(header(&seen, "x-plugin-headers"), Some("seen"));
    assert_eq!(up.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Bodies (test_body.wasm)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_body_is_buffered_and_rewritten_whole() {
    let up = body_echo().await;
    let proxy = proxy_with(&up, "body", "").await;
    let chunks = vec![
        "hel",
        "lo wor",
        "ld, ",
        "Mixed Case 123 ",
        "caf\u{e9} ",
        "and the end",
    ];
    let whole: String = chunks.concat();
    let got = send(
        proxy.addr("web"),
        request("POST", "/p/upload", &[], chunked(chunks)),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    // ASCII letters uppercased, every other byte (the UTF-8 of é included) untouched.
    assert_eq!(got.text(), whole.to_ascii_uppercase());
    assert_eq!(
        got.header("x-received-length"),
        Some(whole.len().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_is_rewritten_across_chunk_boundaries() {
    // `hello` split across upstream chunks every way this list allows.
    let up = Upstream::with_handler(|req| {
        Box::pin(async move {
            let mut resp = Response::builder();
            if req.headers().contains_key("x-ask-rewrite") {
                resp = resp.header("x-rewrite-body", "yes");
            }
            resp.body(chunked(vec![
                "h",
                "ello ",
                "he",
                "llo ",
                "hel",
                "lo ",
                "hell",
                "o ",
                "hello",
                " world ",
                "hhello",
                " hellohello",
                " hel",
                "l",
                "o",
            ]))
            .expect("response")
        })
    })
    .await;
    let proxy = proxy_with(&up, "body", "").await;
    let original = "hello hello hello hello hello world hhello hellohello hello";

    let got = get_with(&proxy, "/p/page", &[("x-ask-rewrite", "1")]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.text(),
        "HOWDY HOWDY HOWDY HOWDY HOWDY world hHOWDY HOWDYHOWDY HOWDY"
    );

    // Without `x-rewrite-body` the plugin lets every chunk through untouched.
    let got = get_with(&proxy, "/p/page", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_beyond_the_plugin_buffer_is_413() {
    let up = body_echo().await;
    let proxy = proxy_with(&up, "body", "limits: { body_buffer: 64KiB }").await;
    let big = Bytes::from(vec![b'a'; 256 << 10]);
    let got = send(
        proxy.addr("web"),
        request("POST", "/p/upload", &[], full(big)),
    )
    .await;
    assert_eq!(got.status, 413, "{}", got.text());
    assert!(got.text().contains("buffer"), "{}", got.text());

    // Within the buffer, the same route works.
    let got = send(
        proxy.addr("web"),
        request("POST", "/p/upload", &[], full(vec![b'b'; 60 << 10])),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, vec![b'B'; 60 << 10]);
}

// ---------------------------------------------------------------------------------------------
// Configuration (test_config.wasm)

fn config_plugin(up: &Upstream, value: &str, reject: bool) -> String {
    config(
        up,
        &plugin(
            "c",
            "config",
            &format!("config: {{ header: x-from-config, value: \"{value}\", reject: {reject} }}"),
        ),
        "c",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_configuration_reaches_the_plugin() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config_plugin(&up, "from yaml", false)).await;
    let seen = seen_ok(&get_with(&proxy, "/p/c", &[]).await);
    assert_eq!(header(&seen, "x-from-config"), Some("from yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_refuses_its_configuration_fails_the_start_with_its_own_words() {
    let up = Upstream::echo("up").await;
    match Proxy::try_start_in(TempDir::new(), &config_plugin(&up, "v", true)).await {
        Ok(_) => panic!("the proxy started with a plugin that refused its configuration"),
        Err(e) => {
            assert!(e.contains("config: rejected by configuration"), "{e}");
            assert!(e.contains("plugins.c"), "the error names the plugin: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_refused_plugin_configuration_fails_and_the_old_one_keeps_serving() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config_plugin(&up, "old", false)).await;
    let status = proxy
        .rewrite_until(&config_plugin(&up, "new", true), "failure")
        .await;
    let error = status.last_error.expect("the failure is reported");
    assert!(
        error.contains("config: rejected by configuration"),
        "{error}"
    );
    let seen = seen_ok(&get_with(&proxy, "/p/c", &[]).await);
    assert_eq!(header(&seen, "x-from-config"), Some("old"));

    // Accepted again, the new value serves.
    proxy
        .rewrite_until(&config_plugin(&up, "new", false), "success")
        .await;
    let seen = seen_ok(&get_with(&proxy, "/p/c", &[]).await);
    assert_eq!(header(&seen, "x-from-config"), Some("new"));
}

// ---------------------------------------------------------------------------------------------
// HTTP callouts (test_callout.wasm)

/// An authorisation service: `authorization: Bearer good` is user alice, anything else 401.
async fn auth_service() -> Upstream {
    Upstream::with_handler(|req| {
        Box::pin(async move {
            let good = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer good");
            let original = req
                .headers()
                .get("x-original-path")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let panic = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer panic");
            if panic {
                // The callout plugin panics on this answer.
                return Response::builder()
                    .header("x-panic", "1")
                    .body(empty())
                    .expect("response");
            }
            if req
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer binary")
            {
                // A header value the plugin could not read as text.
                return Response::builder()
                    .header(
                        "x-user",
                        HeaderValue::from_bytes(b"al\xffice").expect("obs-text"),
                    )
                    .body(empty())
                    .expect("response");
            }
            if good && req.uri().path() == "/check" {
                Response::builder()
                    .header("x-user", "alice")
                    .body(full(format!("checked {original}")))
                    .expect("response")
            } else {
                Response::builder()
                    .status(401)
                    .body(empty())
                    .expect("response")
            }
        })
    })
    .await
}

fn callout_config(up: &Upstream, auth_endpoint: &str) -> String {
    config_with(
        up,
        &format!("  auth: {{ endpoints: [\"{auth_endpoint}\"] }}"),
        &plugin(
            "p",
            "callout",
            "config: { upstream: auth, path: /check, timeout_ms: 2000 }",
        ),
        "p",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_allows_or_denies_the_request() {
    let up = Upstream::echo("up").await;
    let auth = auth_service().await;
    let proxy = Proxy::start(&callout_config(&up, &auth.endpoint())).await;

    let got = get_with(&proxy, "/p/orders", &[("authorization", "Bearer good")]).await;
    let seen = seen_ok(&got);
    assert_eq!(header(&seen, "x-auth-user"), Some("alice"));
    assert_eq!(header(&seen, "x-auth-body"), Some("checked /p/orders"));
    assert_eq!((auth.hits(), up.hits()), (1, 1));

    let got = get_with(&proxy, "/p/orders", &[("authorization", "Bearer bad")]).await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.header("x-denied-by"), Some("callout"));
    assert_eq!(got.text(), "denied by callout");
    assert_eq!(
        (auth.hits(), up.hits()),
        (2, 1),
        "the upstream got a denied request"
    );

    let got = get_with(&proxy, "/p/orders", &[]).await;
    assert_eq!(got.status, 403);
    assert_eq!(up.hits(), 1);
}

/// A request paused for a callout whose callback traps: the trap discards the instance the
/// request waits on, and the request fails then (500), not at its pause timeout (60 s by
/// default). Under `on_error: allow` too: the request's head was inside the instance, so it
/// cannot go on without the plugin (it once went on with an empty head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_paused_on_an_instance_that_fails_fails_at_once() {
    let up = Upstream::echo("up").await;
    let auth = auth_service().await;
    for policy in ["deny", "allow"] {
        let yaml = callout_config(&up, &auth.endpoint()).replace(
            "timeout_ms: 2000 }",
            &format!("timeout_ms: 2000 }}, on_error: {policy}"),
        );
        let proxy = Proxy::start(&yaml).await;
        let hits = up.hits();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            get_with(&proxy, "/p/orders", &[("authorization", "Bearer panic")]),
        )
        .await
        .expect("the paused request was answered before its pause timeout");
        assert_eq!(got.status, 500, "{policy}: {}", got.text());
        assert_eq!(up.hits(), hits, "{policy}: nothing reached the upstream");
        assert_eq!(failures(&proxy, "trap").await, 1);
        // The next request gets a rebuilt instance.
        let got = get_with(&proxy, "/p/orders", &[("authorization", "Bearer good")]).await;
        assert_eq!(header(&seen_ok(&got), "x-auth-user"), Some("alice"));
    }
}

/// A client that goes away while its request waits for a callout ends the callout too: the
/// authorization service sees its request dropped at once, not at the callout's timeout (a
/// minute here), so abandoned requests do not pile up callouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_ends_with_its_stream() {
    let up = Upstream::echo("up").await;
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, d) = (asked.clone(), dropped.clone());
    let auth = Upstream::with_handler(move |_req| {
        let (asked, dropped) = (a.clone(), d.clone());
        Box::pin(async move {
            struct OnDrop(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                }
            }
            let _guard = OnDrop(dropped);
            asked.store(true, Ordering::Release);
            std::future::pending::<()>().await;
            unreachable!()
        })
    })
    .await;
    let yaml =
        callout_config(&up, &auth.endpoint()).replace("timeout_ms: 2000", "timeout_ms: 60000");
    let proxy = Proxy::start(&yaml).await;
    let mut stream = TcpStream::connect(proxy.addr("web"))
        .await
        .expect("connect");
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(
            b"GET /p/orders HTTP/1.1\r\nHost: plugins.test\r\nAuthorization: Bearer good\r\n\r\n",
        )
        .await
        .expect("write");
    wait_for("the callout to reach the service", || {
        asked.load(Ordering::Acquire)
    })
    .await;
    drop(stream);
    wait_for("the service to see the callout dropped", || {
        dropped.load(Ordering::Acquire)
    })
    .await;
    assert_eq!(up.hits(), 0);
}

/// A request paused in a plugin when the plugin is reloaded finishes on the instance it
/// started on, with the old configuration, while new requests get the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_across_a_plugin_reload_finishes_on_its_old_instance() {
    let up = Upstream::echo("up").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    // Answers /check (200, `x-user: alice`) once the gate opens; any other path 401.
    let auth = Upstream::with_handler(move |req| {
        let held = held.clone();
        Box::pin(async move {
            if req.uri().path() != "/check" {
                return Response::builder()
                    .status(401)
                    .body(empty())
                    .expect("response");
            }
            held.acquire().await.expect("gate").forget();
            Response::builder()
                .header("x-user", "alice")
                .body(full("checked"))
                .expect("response")
        })
    })
    .await;
    let config = |path: &str| {
        config_with(
            &up,
            &format!("  auth: {{ endpoints: [\"{}\"] }}", auth.endpoint()),
            &plugin(
                "p",
                "callout",
                &format!("config: {{ upstream: auth, path: {path}, timeout_ms: 10000 }}"),
            ),
            "p",
        )
    };
    let proxy = Proxy::start(&config("/check")).await;
    let web = proxy.addr("web");
    let in_flight = tokio::spawn(async move {
        send(
            web,
            request(
                "GET",
                "/p/orders",
                &[("authorization", "Bearer old")],
                empty(),
            ),
        )
        .await
    });
    wait_for("the request to be paused on its callout", || {
        auth.hits() == 1
    })
    .await;

    // The plugin's configuration changes: a new pool, with the new path.
    proxy.rewrite_until(&config("/elsewhere"), "success").await;
    let got = get_with(&proxy, "/p/orders", &[("authorization", "Bearer new")]).await;
    assert_eq!(got.status, 403, "the new configuration asks /elsewhere");

    // The old request's callout answers: its old instance resumes it.
    gate.add_permits(1);
    let got = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the paused request finished")
        .expect("request task");
    let seen = seen_ok(&got);
    assert_eq!(header(&seen, "x-auth-user"), Some("alice"));
    assert_eq!(header(&seen, "x-auth-body"), Some("checked"));
    assert_eq!(up.hits(), 1);
}

/// An answer with a header value that is not UTF-8 reaches the plugin as a failed callout (no
/// headers), which the plugin can read, rather than as bytes its SDK would panic on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_answer_that_is_not_utf8_is_a_failed_callout() {
    let up = Upstream::echo("up").await;
    let auth = auth_service().await;
    let proxy = Proxy::start(&callout_config(&up, &auth.endpoint())).await;
    let got = get_with(&proxy, "/p/orders", &[("authorization", "Bearer binary")]).await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.header("x-denied-by"), Some("callout"));
    assert_eq!((auth.hits(), up.hits()), (1, 0));
    assert_eq!(failures(&proxy, "trap").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_to_an_upstream_that_is_down_denies() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&callout_config(&up, &dead_endpoint().await)).await;
    let got = get_with(&proxy, "/p/orders", &[("authorization", "Bearer good")]).await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.header("x-denied-by"), Some("callout"));
    assert_eq!(up.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// Ticks, shared data, queues, metrics

/// `x-ticks` as the tick plugin last wrote it.
async fn ticks(proxy: &Proxy) -> u64 {
    let seen = seen_ok(&get_with(proxy, "/p/t", &[]).await);
    header(&seen, "x-ticks")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no x-ticks: {seen:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_run_on_their_period() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "tick", "").await;
    eventually("x-ticks above 2", || async { ticks(&proxy).await > 2 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_compare_and_swap_counts_concurrent_requests_exactly() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "shared", "limits: { instances: 2 }").await;
    let count = |got: &Got| -> u64 {
        assert_eq!(got.status, 200, "{}", got.text());
        got.header("x-count")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no x-count: {:?}", got.headers))
    };
    // The first write of the key has no CAS (see the README); after it, every one has.
    assert_eq!(count(&get_with(&proxy, "/p/warm", &[]).await), 1);

    let addr = proxy.addr("web");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move { send(addr, request("GET", "/p/n", &[], empty())).await })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        let got = t.await.expect("request task");
        // The upstream saw the same number the client got back.
        assert_eq!(
            header(&got.seen(), "x-count"),
            got.header("x-count"),
            "request and response disagree"
        );
        counts.push(count(&got));
    }
    counts.sort_unstable();
    assert_eq!(counts, (2..=51).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_items_reach_the_queue_owner() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "queue", "").await;
    let received = |seen: &Seen| header(seen, "x-queue-received").unwrap_or("").to_string();

    let seen = seen_ok(&get_with(&proxy, "/p/q", &[("x-enqueue", "a")]).await);
    // on_queue_ready runs after the enqueueing callback: never in the same request.
    assert!(!received(&seen).contains('a'), "{seen:?}");
    eventually("item a to be received", || async {
        received(&seen_ok(&get_with(&proxy, "/p/q", &[]).await)) == "a"
    })
    .await;
    seen_ok(&get_with(&proxy, "/p/q", &[("x-enqueue", "b")]).await);
    eventually("item b to be received after a", || async {
        received(&seen_ok(&get_with(&proxy, "/p/q", &[]).await)) == "a,b"
    })
    .await;
}

/// A reload that fails after the plugin's canary registered its queue (here a route names a
/// missing upstream) leaves the queue with the instances that keep serving: their items still
/// reach `on_queue_ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_leaves_queues_with_the_serving_instances() {
    let up = Upstream::echo("up").await;
    let yaml = |v: u32, extra_route: &str| {
        format!(
            "{}{extra_route}",
            config(
                &up,
                &plugin("p", "queue", &format!("config: {{ v: {v} }}")),
                "p"
            )
        )
    };
    let proxy = Proxy::start(&yaml(1, "")).await;
    proxy
        .rewrite_until(
            &yaml(
                2,
                "  - { name: broken, paths: [{ type: Prefix, value: /b }], upstream: nope }\n",
            ),
            "failure",
        )
        .await;
    seen_ok(&get_with(&proxy, "/p/q", &[("x-enqueue", "a")]).await);
    eventually("item a to be received", || async {
        let seen = seen_ok(&get_with(&proxy, "/p/q", &[]).await);
        header(&seen, "x-queue-received") == Some("a")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_metrics_are_exported_on_the_admin_endpoint() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(&up, &plugin("m", "metrics", ""), "m")).await;
    let sizes = [10usize, 20, 30, 40, 50];
    let mut last_path = String::new();
    for (i, size) in sizes.iter().enumerate() {
        last_path = format!("/p/metrics?i={i}");
        let got = send(
            proxy.addr("web"),
            request("POST", &last_path, &[], full(vec![b'x'; *size])),
        )
        .await;
        let seen = seen_ok(&got);
        assert_eq!(
            header(&seen, "x-requests-total"),
            Some((i + 1).to_string().as_str())
        );
    }
    let text = admin_metrics(&proxy).await;
    // Prometheus renders labels sorted by name.
    let expect = [
        format!(
            r#"portico_plugin_counter{{name="requests_total",plugin="m"}} {}"#,
            sizes.len()
        ),
        format!(
            r#"portico_plugin_gauge{{name="last_path_length",plugin="m"}} {}"#,
            last_path.len()
        ),
        format!(
            r#"portico_plugin_histogram_count{{name="body_bytes",plugin="m"}} {}"#,
            sizes.len()
        ),
        format!(
            r#"portico_plugin_histogram_sum{{name="body_bytes",plugin="m"}} {}"#,
            sizes.iter().sum::<usize>()
        ),
    ];
    for line in expect {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{}",
            text.lines()
                .filter(|l| l.starts_with("portico_plugin"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Properties (test_properties.wasm)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_describe_the_request_and_connection() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(&up, &plugin("props", "properties", ""), "props")).await;
    let listener = proxy.addr("web");
    let stream = TcpStream::connect(listener).await.expect("connect");
    let client = stream.local_addr().expect("client address");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let got = send_h1(&mut sender, request("GET", "/p/x?a=1&b=two", &[], empty())).await;
    let seen = seen_ok(&got);
    let id = got
        .header("x-request-id")
        .expect("x-request-id")
        .to_string();
    assert_eq!(header(&seen, "x-request-id"), Some(id.as_str()));
    let want = [
        ("x-prop-request-path", "/p/x?a=1&b=two".to_string()),
        ("x-prop-request-url_path", "/p/x".into()),
        ("x-prop-request-query", "a=1&b=two".into()),
        ("x-prop-request-host", "plugins.test".into()),
        ("x-prop-request-method", "GET".into()),
        ("x-prop-request-scheme", "http".into()),
        ("x-prop-request-id", id),
        ("x-prop-request-protocol", "HTTP/1.1".into()),
        ("x-prop-source-address", client.to_string()),
        ("x-prop-source-port", client.port().to_string()),
        ("x-prop-destination-address", listener.to_string()),
        ("x-prop-destination-port", listener.port().to_string()),
        ("x-prop-connection-tls_version", "<none>".into()),
        ("x-prop-connection-mtls", "false".into()),
        ("x-prop-plugin_name", "props".into()),
        ("x-prop-plugin_root_id", "props".into()),
        ("x-prop-route_name", "plugged".into()),
        ("x-prop-xds-route_name", "plugged".into()),
        ("x-prop-roundtrip", "v1".into()),
        // A GET announces no body.
        ("x-prop-request-size", "<none>".into()),
    ];
    for (name, value) in want {
        assert_eq!(header(&seen, name), Some(value.as_str()), "{name}");
    }
    // The request's headers as the plugin gets them (a map in the pairs encoding).
    let keys = header(&seen, "x-prop-request-headers").expect("request.headers");
    assert!(keys.split(',').any(|k| k == "host"), "{keys}");
    let int = |name: &str| -> i64 {
        header(&seen, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {:?}", header(&seen, name)))
    };
    assert!(int("x-prop-request-total_size") > "host".len() as i64);
    assert!(int("x-prop-request-duration") >= 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_on_a_tls_listener() {
    let up = Upstream::echo("up").await;
    let pki = Pki::new();
    let dir = TempDir::new();
    pki.write(&dir, "site", &["props.test"]);
    let proxy = Proxy::start_in(
        dir,
        &format!(
            r#"
listeners:
  - {{ name: websecure, address: "127.0.0.1:0", tls: {{ certificates: [{{ cert: site.crt, key: site.key }}] }} }}
upstreams: {{ up: {{ endpoints: ["{}"] }} }}
plugins:
{}
routes: [{{ name: secure, upstream: up, plugins: [props] }}]
"#,
            up.endpoint(),
            plugin("props", "properties", "")
        ),
    )
    .await;
    let stream = tls_connect(
        proxy.addr("websecure"),
        "props.test",
        pki.client_config(&[b"http/1.1".as_slice()], None),
    )
    .await
    .expect("TLS handshake");
    let got = send_tls_h1(
        stream,
        Request::get("/s?k=v")
            .header("host", "props.test")
            .body(empty())
            .expect("request"),
    )
    .await;
    let seen = seen_ok(&got);
    for (name, value) in [
        ("x-prop-connection-tls_version", "TLSv1.3"),
        ("x-prop-connection-mtls", "false"),
        ("x-prop-request-scheme", "https"),
        ("x-prop-request-host", "props.test"),
        ("x-prop-request-query", "k=v"),
        ("x-prop-route_name", "secure"),
    ] {
        assert_eq!(header(&seen, name), Some(value), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Trailers (test_trailers.wasm)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_add_trailers_over_http2() {
    // An h2c upstream that reports the request trailers it got (names, sorted) and answers
    // with trailers of its own.
    let up = Upstream::with_handler(|req| {
        Box::pin(async move {
            let collected = req.into_body().collect().await.expect("request body");
            let mut names: Vec<String> = collected
                .trailers()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            Response::builder()
                .header("x-request-trailers", names.join(","))
                .body(body_with_trailer(
                    b"payload",
                    "grpc-status",
                    HeaderValue::from_static("0"),
                ))
                .expect("response")
        })
    })
    .await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams: {{ up: {{ endpoints: ["{}"], protocol: h2c }} }}
plugins:
{}
routes: [{{ name: all, upstream: up, plugins: [t] }}]
"#,
        up.endpoint(),
        plugin("t", "trailers", "")
    ))
    .await;
    let mut sender = h2c_sender(proxy.addr("web")).await;
    let resp = sender
        .send_request(
            Request::post("http://trailers.test/rpc")
                .header("te", "trailers")
                .body(body_with_trailer(
                    b"hello",
                    "x-checksum",
                    HeaderValue::from_static("abc"),
                ))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-saw-trailers-plugin"], "yes");
    assert_eq!(
        resp.headers()["x-request-trailers"],
        "x-checksum=abc,x-plugin-request-trailer=yes"
    );
    let collected = resp.into_body().collect().await.expect("response body");
    let got = collected.trailers().cloned().expect("response trailers");
    assert_eq!(got["grpc-status"], "0");
    assert_eq!(got["x-plugin-response-trailer"], "yes");
    assert_eq!(collected.to_bytes(), "payload");
}

/// A plugin that traps on the request's trailers, after the head and body have gone upstream,
/// fails that request under `on_error: deny`: the upstream request is abandoned (never
/// complete), the client gets the plugin failure's 500, and the trap is counted. Under `allow`
/// the plugin is skipped and the request completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_request_trailers_fails_the_request_under_deny() {
    for (on_error, want_ok) in [("deny", false), ("allow", true)] {
        let up = Upstream::echo("up").await;
        let proxy = proxy_with(
            &up,
            "panicker",
            &format!("on_error: {on_error}, limits: {{ instances: 1 }}"),
        )
        .await;
        let mut sender = h2c_sender(proxy.addr("web")).await;
        let req = Request::post("http://plugins.test/p/rpc")
            .header("te", "trailers")
            .header("x-panic-trailers", "1")
            .body(body_with_trailer(
                b"hello",
                "x-checksum",
                HeaderValue::from_static("abc"),
            ))
            .expect("request");
        let outcome = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(body) => format!("status {status}, body {:?}", body.to_bytes()),
                    Err(e) => format!("status {status}, then error {e}"),
                }
            }
            Err(e) => format!("error {e}"),
        };
        eprintln!("on_error: {on_error}: {outcome}");
        if want_ok {
            assert!(outcome.starts_with("status 200 OK, body"), "{outcome}");
        } else {
            assert_eq!(
                outcome, "status 500 Internal Server Error, body b\"Internal Server Error\\n\"",
                "on_error: {on_error}"
            );
        }
        assert_eq!(failures(&proxy, "trap").await, 1, "on_error: {on_error}");
    }
}

/// A request trailer value that is not UTF-8 never reaches a plugin (its SDK would panic on
/// it): the request fails there, and the plugin stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailer_that_is_not_utf8_fails_the_request_not_the_plugin() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "trailers", "limits: { instances: 1 }").await;
    let mut sender = h2c_sender(proxy.addr("web")).await;
    let req = Request::post("http://plugins.test/p/rpc")
        .header("te", "trailers")
        .body(body_with_trailer(
            b"hello",
            "x-checksum",
            HeaderValue::from_bytes(b"a\xffb").expect("obs-text"),
        ))
        .expect("request");
    let outcome = match sender.send_request(req).await {
        Ok(resp) => format!("status {}", resp.status()),
        Err(e) => format!("error {e}"),
    };
    assert_ne!(outcome, "status 200 OK");
    assert_eq!(failures(&proxy, "trap").await, 0, "{outcome}");
    let got = get_with(&proxy, "/p/after", &[]).await;
    assert_eq!(got.header("x-saw-trailers-plugin"), Some("yes"));
}

// ---------------------------------------------------------------------------------------------
// Failure isolation: time, memory, panics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_loops_is_stopped_and_the_next_request_succeeds() {
    let up = Upstream::echo("up").await;
    // The default time limit (50ms per call).
    let proxy = proxy_with(&up, "looper", "limits: { instances: 1 }").await;

    let started = Instant::now();
    let got = get_with(&proxy, "/p/loop", &[("x-loop", "1")]).await;
    assert_eq!(got.status, 500, "{}", got.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the loop ran {:?}",
        started.elapsed()
    );
    assert_eq!(up.hits(), 0);
    assert_eq!(failures(&proxy, "timeout").await, 1);
    // The next request gets a fresh instance.
    let seen = seen_ok(&get_with(&proxy, "/p/after", &[]).await);
    assert_eq!(seen.path, "/p/after");

    // A loop in the response phase is stopped too, before the response is sent.
    let got = get_with(&proxy, "/p/loop", &[("x-loop-response", "1")]).await;
    assert_eq!(got.status, 500, "{}", got.text());
    assert_eq!(failures(&proxy, "timeout").await, 2);
    seen_ok(&get_with(&proxy, "/p/after", &[]).await);
}

/// The issue's rule: a `loop {}` plugin is stopped within twice its time limit. With a 200ms
/// limit the looping request is answered after at least 200ms (a call always gets its time)
/// and well before 400ms, and the failure says how long the call ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_is_stopped_within_twice_its_time_limit() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(
        &up,
        "looper",
        "limits: { instances: 1, time_per_call: 200ms }",
    )
    .await;
    let started = Instant::now();
    let got = get_with(&proxy, "/p/loop", &[("x-loop", "1")]).await;
    let took = started.elapsed();
    assert_eq!(got.status, 500, "{}", got.text());
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(400),
        "the looping request was answered after {took:?}"
    );
    let json = config_json(&proxy.admin()).await;
    let last = json["plugins"][0]["last_failure"]
        .as_str()
        .unwrap_or_default();
    let ran: u64 = last
        .strip_prefix("exceeded its time limit of 200ms per call (stopped after about ")
        .and_then(|rest| rest.strip_suffix("ms)"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("last_failure: {last:?}"));
    assert!((200..400).contains(&ran), "{last}");
}

/// One round of [`while_a_plugin_loops_other_routes_keep_flowing`], on threads (and runtimes)
/// of its own: a request that loops in the plugin and, once it is in the proxy, 20 concurrent
/// requests to the plugin-free route. Returns the looping request's status, the quick ones',
/// and whether the quick ones all ended before the looping one.
fn loop_round(
    addr: std::net::SocketAddr,
    shared: &portico::server::Shared,
) -> (u16, Vec<u16>, bool) {
    let client = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime")
    };
    let looping = std::thread::spawn(move || {
        client().block_on(async move {
            let got = send(addr, request("GET", "/p/loop", &[("x-loop", "1")], empty())).await;
            (got.status.as_u16(), Instant::now())
        })
    });
    // The looping request is in the proxy, and so (nothing in between waits) in the plugin.
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.inflight.load(Ordering::Acquire) == 0 {
        assert!(
            Instant::now() < deadline,
            "the looping request never arrived"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let quick = client().block_on(async move {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                tokio::spawn(send(
                    addr,
                    request("GET", &format!("/free/{i}"), &[], empty()),
                ))
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.expect("quick request").status.as_u16());
        }
        statuses
    });
    let quick_done = Instant::now();
    let (status, loop_done) = looping.join().expect("looping client");
    (status, quick, quick_done < loop_done)
}

/// Waits (on a runtime of its own) until a request through the plugin passes.
fn plugin_serves(addr: std::net::SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(eventually("the plugin serves", || async move {
        send(addr, request("GET", "/p/ok", &[], empty()))
            .await
            .status
            == 200
    }));
}

/// While one request's plugin callback runs (here: loops until its time limit), the rest of
/// the proxy keeps serving. The clients run on threads of their own, so only the proxy is
/// under test, and it is otherwise idle, as a proxy between bursts is. A few rounds, because
/// whether a blocked worker stalls the others depends on which worker picked the request up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_plugin_loops_other_routes_keep_flowing() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams: {{ up: {{ endpoints: ["{}"] }} }}
plugins:
{}
routes:
  - {{ name: free, paths: [{{ type: Prefix, value: /free }}], direct_response: {{ status: 200, body: ok }} }}
  - {{ name: plugged, upstream: up, plugins: [p] }}
"#,
        up.endpoint(),
        // Long enough for the quick requests to finish well within it, even on a loaded
        // machine.
        plugin("p", "looper", "limits: { instances: 1, time_per_call: 500ms }")
    ))
    .await;
    let addr = proxy.addr("web");
    let shared = proxy.server.shared().clone();
    let rounds = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| {
                // Each round starts on a serving plugin: two faults in a row put its instance
                // in backoff, and a request that passes ends the streak.
                plugin_serves(addr);
                loop_round(addr, &shared)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("rounds");
    for (i, (status, quick, quick_first)) in rounds.into_iter().enumerate() {
        assert_eq!(status, 500, "round {i}");
        assert!(quick.iter().all(|s| *s == 200), "round {i}: {quick:?}");
        assert!(
            quick_first,
            "round {i}: the plugin-free requests waited for the plugin's loop to end"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_exhausts_its_memory_is_replaced() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "bomb", "limits: { memory: 16MiB, instances: 1 }").await;
    let got = get_with(&proxy, "/p/boom", &[("x-bomb", "1")]).await;
    assert_eq!(got.status, 500, "{}", got.text());
    let seen = seen_ok(&get_with(&proxy, "/p/after", &[]).await);
    assert_eq!(header(&seen, "x-bomb"), Some("defused"));
    assert_eq!(failures(&proxy, "memory").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_panics_fails_the_request_and_recovers() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "panicker", "limits: { instances: 1 }").await;

    let got = get_with(&proxy, "/p/x", &[("x-panic", "1")]).await;
    assert_eq!(got.status, 500, "{}", got.text());
    assert_eq!(up.hits(), 0);
    let seen = seen_ok(&get_with(&proxy, "/p/x", &[]).await);
    assert_eq!(header(&seen, "x-panicker"), Some("ok"));

    // A panic in on_http_response_headers: the response has not been sent yet, so it is 500.
    let got = get_with(&proxy, "/p/x", &[("x-panic-response", "1")]).await;
    assert_eq!(got.status, 500, "{}", got.text());
    let seen = seen_ok(&get_with(&proxy, "/p/x", &[]).await);
    assert_eq!(header(&seen, "x-panicker"), Some("ok"));

    assert_eq!(failures(&proxy, "trap").await, 2);
}

/// A plugin that fails every request is not rebuilt for every request: from its second fault in
/// a row its instance waits out a backoff (100 ms, doubling), which /config shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_every_request_is_rebuilt_with_backoff() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "panicker", "limits: { instances: 1 }").await;
    let rebuilt = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(r#"portico_plugin_instances_rebuilt_total{plugin="p"} "#))
            .map_or(0, |v| v.parse::<u64>().expect("a count"))
    };
    let before = rebuilt(&admin_metrics(&proxy).await);
    let panic = || get_with(&proxy, "/p/x", &[("x-panic", "1")]);
    // The first fault: rebuilt on next use. The second in a row: 100 ms of backoff.
    for _ in 0..2 {
        assert_eq!(panic().await.status, 500);
    }
    let (_, config) = admin_get(&proxy.admin(), "/config").await;
    let json: serde_json::Value = serde_json::from_str(&config).expect("/config is JSON");
    assert_eq!(json["plugins"][0]["backing_off"], 1, "{config}");
    assert_eq!(json["plugins"][0]["live"], 0, "{config}");
    let n = 20;
    for _ in 2..n {
        let got = panic().await;
        assert_eq!(got.status, 500, "{}", got.text());
    }
    assert_eq!(up.hits(), 0);
    // Without backoff every request after the first would rebuild (19); with it, a handful
    // (how many depends on how long the requests took: one per doubling backoff).
    let rebuilds = rebuilt(&admin_metrics(&proxy).await) - before;
    assert!(
        rebuilds <= 6,
        "{rebuilds} rebuilds for {n} failing requests"
    );
    // Requests that the plugin would let through wait for the backoff too, then pass.
    eventually("the plugin serves again after its backoff", || async {
        get_with(&proxy, "/p/x", &[]).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_open_lets_the_request_through() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "panicker", "on_error: allow, limits: { instances: 1 }").await;
    let seen = seen_ok(&get_with(&proxy, "/p/x", &[("x-panic", "1")]).await);
    // It panicked before adding its header.
    assert_eq!(header(&seen, "x-panicker"), None);
    seen_ok(&get_with(&proxy, "/p/x", &[("x-panic-response", "1")]).await);
    assert_eq!(up.hits(), 2);
    assert_eq!(failures(&proxy, "trap").await, 2);
    // Two faults in a row: the instance waits out a backoff, and meanwhile the plugin is
    // skipped (fail open) rather than run.
    let seen = seen_ok(&get_with(&proxy, "/p/x", &[]).await);
    assert_eq!(header(&seen, "x-panicker"), None);
    eventually("the plugin runs again after its backoff", || async {
        let seen = seen_ok(&get_with(&proxy, "/p/x", &[]).await);
        header(&seen, "x-panicker") == Some("ok")
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Header values that are not UTF-8 (test_utf8.wasm)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_value_that_is_not_utf8_is_refused_before_plugins_that_need_it() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "utf8", "").await;
    let raw_get = |path: &str| {
        let mut bytes =
            format!("GET {path} HTTP/1.1\r\nHost: plugins.test\r\nX-Bin: a").into_bytes();
        bytes.push(0xff);
        bytes.extend_from_slice(b"b\r\nConnection: close\r\n\r\n");
        bytes
    };

    let text = raw(proxy.addr("web"), &raw_get("/p/u"), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&text), 400, "{text}");
    assert_eq!(up.hits(), 0);
    assert_eq!(failures(&proxy, "trap").await, 0, "the plugin never saw it");

    // The same header where no plugin runs is forwarded as it is.
    let text = raw(
        proxy.addr("web"),
        &raw_get("/free/u"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&text), 200, "{text}");
    assert!(text.contains("\"x-bin\":\"a\u{fffd}b\""), "{text}");
    assert_eq!(up.hits(), 1);

    // UTF-8 beyond ASCII is fine for the plugin.
    let got = send(
        proxy.addr("web"),
        Request::get("/p/u")
            .header("host", "plugins.test")
            .header(
                "x-text",
                HeaderValue::from_bytes("café".as_bytes()).unwrap(),
            )
            .body(empty())
            .unwrap(),
    )
    .await;
    let seen = seen_ok(&got);
    assert_eq!(header(&seen, "x-text"), Some("café"));
    // host, x-text, x-request-id, and 4 pseudo-headers.
    assert_eq!(header(&seen, "x-utf8-count"), Some("7"));
}

// ---------------------------------------------------------------------------------------------
// Reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_module_file_or_configuration_reloads_the_plugin() {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new();
    let read = |name: &str| std::fs::read(plugin_wasm(name)).expect("read module");
    dir.write("plugin.wasm", read("headers"));
    let yaml = |value: &str| {
        config(
            &up,
            &format!(
                "  p: {{ module: plugin.wasm, config: {{ header: x-from-config, value: {value} }} }}\n"
            ),
            "p",
        )
    };
    let proxy = Proxy::start_in(dir, &yaml("one")).await;
    let seen = seen_ok(&get_with(&proxy, "/p/r", &[]).await);
    assert_eq!(header(&seen, "x-plugin-headers"), Some("seen"));
    assert_eq!(header(&seen, "x-from-config"), None);

    // Another module under the same file name.
    let before = proxy.reloads();
    proxy.dir.write("plugin.wasm", read("config"));
    reloaded_since(&proxy, before).await;
    let seen = seen_ok(&get_with(&proxy, "/p/r", &[]).await);
    assert_eq!(header(&seen, "x-plugin-headers"), None);
    assert_eq!(header(&seen, "x-from-config"), Some("one"));

    // The same module, another configuration.
    proxy.rewrite_until(&yaml("two"), "success").await;
    let seen = seen_ok(&get_with(&proxy, "/p/r", &[]).await);
    assert_eq!(header(&seen, "x-from-config"), Some("two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_leaves_a_plugin_alone_keeps_its_instances() {
    let up = Upstream::echo("up").await;
    // Each instance counts its own ticks from 1, so one whose count keeps growing across a
    // reload was not restarted.
    let yaml = |extra_route: &str, plugin_extra: &str| {
        format!(
            "{}{extra_route}",
            config(&up, &plugin("p", "tick", plugin_extra), "p")
        )
    };
    let plain = "limits: { instances: 1 }";
    let proxy = Proxy::start(&yaml("", plain)).await;
    eventually("10 ticks", || async { ticks(&proxy).await >= 10 }).await;
    let instance = running_plugin(&proxy, "p");
    let before = ticks(&proxy).await;

    proxy
        .rewrite_until(
            &yaml(
                "  - { name: more, paths: [{ type: Prefix, value: /more }], upstream: up }\n",
                plain,
            ),
            "success",
        )
        .await;
    assert!(
        Arc::ptr_eq(&instance, &running_plugin(&proxy, "p")),
        "an unchanged plugin was rebuilt"
    );
    let after = ticks(&proxy).await;
    assert!(after >= before, "ticks went from {before} to {after}");
    eventually("ticks to keep counting", || async {
        ticks(&proxy).await >= before + 5
    })
    .await;

    // The check can tell: a change to the plugin restarts its count.
    let before = ticks(&proxy).await;
    proxy
        .rewrite_until(
            &yaml("", "config: { changed: true }, limits: { instances: 1 }"),
            "success",
        )
        .await;
    assert!(!Arc::ptr_eq(&instance, &running_plugin(&proxy, "p")));
    eventually("the new instance to count from 1", || async {
        ticks(&proxy).await < before
    })
    .await;
}

/// A reload that gives a listener a plugin chain (or a redirect to HTTPS) applies to the
/// connections that listener accepted before it: the next request on an open keep-alive
/// connection runs the new chain. A listener-wide auth plugin added by a reload must not be
/// bypassed by clients that were already connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_chain_changed_by_a_reload_applies_to_open_connections() {
    let up = Upstream::echo("up").await;
    let yaml = |listener_extra: &str| {
        format!(
            r#"
listeners: [{{ name: web, address: "127.0.0.1:0"{listener_extra} }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
{}
routes:
  - {{ name: all, upstream: up }}
"#,
            up.endpoint(),
            plugin("p", "headers", "")
        )
    };
    let proxy = Proxy::start(&yaml("")).await;
    let mut kept = h1_sender(proxy.addr("web")).await;
    let mut next = async |deny: &str| {
        kept.ready().await.expect("the connection stays open");
        send_h1(&mut kept, request("GET", "/", &[("x-deny", deny)], empty())).await
    };
    assert_eq!(next("403").await.status, 200, "no plugin runs yet");

    proxy
        .rewrite_until(&yaml(", plugins: [p]"), "success")
        .await;
    let got = next("403").await;
    assert_eq!(
        got.status,
        403,
        "the listener's new chain ran: {}",
        got.text()
    );
    assert_eq!(got.header("x-denied-by"), Some("headers"));

    proxy
        .rewrite_until(&yaml(", redirect_https: { port: 8443 }"), "success")
        .await;
    let got = next("403").await;
    assert_eq!(got.status, 308, "{}", got.text());
    assert_eq!(
        got.header("location"),
        Some("https://plugins.test:8443/"),
        "the redirect the reload added"
    );
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

/// `wasm` with a custom section appended: other bytes (so another compiled module), the same
/// behaviour.
fn with_custom_section(wasm: &[u8], name: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// 1,000 reloads, each of which replaces the plugin: its configuration changes every time and
/// its module file every other time (two modules that differ by a custom section, so each
/// reload loads other compiled code, which the code cache serves). Each reload builds a
/// canary and two instances and retires the old ones with their module. Resident memory after
/// the first 100 reloads (allocator arenas and the pool's slots warmed up) must stay flat.
///
/// Resident memory is the process's: the other tests of this binary, running alongside, would
/// count in it (they did, 13 MiB once). So this test starts this binary again for itself alone,
/// with `MEASURE_ALONE` set, and that process measures.
#[test]
fn a_thousand_plugin_reloads_do_not_grow_memory() {
    const MEASURE_ALONE: &str = "PORTICO_TEST_MEASURE_ALONE";
    if std::env::var_os(MEASURE_ALONE).is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(thousand_plugin_reloads_measured());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "plugins::a_thousand_plugin_reloads_do_not_grow_memory",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEASURE_ALONE, "1")
        .output()
        .expect("the test binary runs again");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("plugin reloads in") && text.contains("1 passed"),
        "the measurement did not run: {text}"
    );
}

async fn thousand_plugin_reloads_measured() {
    const RELOADS: usize = 1000;
    const MEASURE_FROM: usize = 100;
    const BOUND: u64 = 8 << 20;
    let up = Upstream::echo("up").await;
    let dir = TempDir::new();
    let wasm = std::fs::read(plugin_wasm("config")).expect("test_config.wasm");
    let modules = [
        dir.write("a.wasm", wasm.clone()),
        dir.write("b.wasm", with_custom_section(&wasm, "portico-test-b")),
    ];
    let yaml = |i: usize| {
        with_test_settings(&config(
            &up,
            &format!(
                "  c: {{ module: \"{}\", config: {{ header: x-generation, value: \"{i}\" }}, \
                 limits: {{ instances: 2 }} }}\n",
                modules[i % 2].display()
            ),
            "c",
        ))
    };
    // Reloaded by direct calls, so no watcher runs.
    let path = dir.write("portico.yaml", yaml(0));
    init_logs();
    let server = Server::start(Options {
        config: path,
        watch: false,
        sighup: false,
    })
    .await
    .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    let addr = server.listener_addr("web").expect("web");

    let started = Instant::now();
    let mut baseline = 0;
    for i in 1..=RELOADS {
        dir.write("portico.yaml", yaml(i));
        match server.reload().await {
            ReloadOutcome::Applied { .. } => {}
            other => panic!("reload {i}: {other:?}"),
        }
        if i % 100 == 0 || i == MEASURE_FROM + 1 {
            // The new plugin serves, and requests end their streams on it.
            let got = send(addr, request("GET", "/p/gen", &[], empty())).await;
            assert_eq!(
                header(&seen_ok(&got), "x-generation"),
                Some(i.to_string().as_str())
            );
        }
        if i == MEASURE_FROM {
            baseline = rss();
        }
    }
    let grown = rss().saturating_sub(baseline);
    eprintln!(
        "{RELOADS} plugin reloads in {:?}; RSS grew {} KiB after reload {MEASURE_FROM}",
        started.elapsed(),
        grown >> 10
    );
    assert!(
        grown < BOUND,
        "RSS grew {} MiB between reload {MEASURE_FROM} and {RELOADS}",
        grown >> 20
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Foreign functions (test_foreign.wasm) and the plugin report on /config

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_functions_answer_by_name() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "foreign", "").await;
    let call = |name: &'static str, arg: &'static str| {
        let proxy = &proxy;
        async move {
            let got = get_with(
                proxy,
                "/p/f",
                &[("x-foreign-fn", name), ("x-foreign-arg", arg)],
            )
            .await;
            seen_ok(&got)
        }
    };
    let seen = call("portico.no_such_function", "").await;
    assert_eq!(header(&seen, "x-foreign-error"), Some("NotFound"));
    // counter_add takes an 8-byte little-endian delta before the key.
    let seen = call("portico.counter_add", "abc").await;
    assert_eq!(header(&seen, "x-foreign-error"), Some("BadArgument"));
    // "AAAAAAAA" is the delta 0x4141414141414141; the counter starts at 0, so the new value
    // has the same bytes.
    let seen = call("portico.counter_add", "AAAAAAAAhits").await;
    assert_eq!(header(&seen, "x-foreign-result"), Some("AAAAAAAA"));
    let seen = call("portico.counter_get", "hits").await;
    assert_eq!(header(&seen, "x-foreign-result"), Some("AAAAAAAA"));
    // verify_signature's arguments are binary (see its unit tests); "abc" announces a
    // 97-byte algorithm name that is not there.
    let seen = call("portico.verify_signature", "abc").await;
    assert_eq!(header(&seen, "x-foreign-error"), Some("BadArgument"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reports_each_plugin_and_its_failures() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_with(&up, "panicker", "limits: { instances: 2 }").await;
    let got = get_with(&proxy, "/p/x", &[("x-panic", "1")]).await;
    assert_eq!(got.status, 500);
    let (status, config) = admin_get(&proxy.admin(), "/config").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&config).expect("/config is JSON");
    let p = &json["plugins"][0];
    assert_eq!(p["name"], "p", "{config}");
    assert_eq!(p["instances"], 2, "{config}");
    assert_eq!(p["on_error"], "deny", "{config}");
    assert_eq!(p["failures"], 1, "{config}");
    let last = p["last_failure"].as_str().unwrap_or_default();
    assert!(last.contains("panicker: asked to panic"), "{config}");
}
