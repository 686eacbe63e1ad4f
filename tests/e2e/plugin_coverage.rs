//! Plugin behaviour the per-ABI-feature tests in plugins.rs leave out: which chain a route runs
//! (its own, its listener's, `default_plugins`), the response phase in reverse chain order, a
//! callout that times out, a plugin's stdout and stderr in Portico's log, and
//! `portico plugin inspect` on a module with imports Portico does not provide.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

/// One entry under `plugins:`: `name` runs the corpus module `test_<corpus>.wasm` with
/// `extra` (e.g. `config: {...}`) added to its mapping.
fn plugin(name: &str, corpus: &str, extra: &str) -> String {
    format!(
        "  {name}: {{ module: \"{}\", {extra} }}\n",
        plugin_wasm(corpus).display()
    )
}

/// A GET for `path` (host `coverage.test`) over a fresh HTTP/1.1 connection.
async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(path).header("host", "coverage.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(addr, req.body(empty()).expect("request")).await
}

// ---------------------------------------------------------------------------------------------
// Which chain a route runs

/// A route's own `plugins` replace its listener's, a listener's replace `default_plugins`, and
/// `[]` runs none; the lists are never merged. Each chain is a `config` plugin that marks the
/// request with its own header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_runs_its_own_chain_else_its_listeners_else_the_default() {
    let up = Upstream::echo("up").await;
    let mark = |name: &str| {
        plugin(
            name,
            "config",
            &format!("config: {{ header: x-chain-{name}, value: \"1\" }}"),
        )
    };
    let yaml = format!(
        r#"
listeners:
  - {{ name: with, address: "127.0.0.1:0", plugins: [listener] }}
  - {{ name: without, address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
{}{}{}
default_plugins: [default]
routes:
  - {{ name: own, paths: [{{ type: Prefix, value: /own }}], upstream: up, plugins: [route] }}
  - {{ name: none, paths: [{{ type: Prefix, value: /none }}], upstream: up, plugins: [] }}
  - {{ name: inherits, upstream: up }}
"#,
        up.endpoint(),
        mark("listener"),
        mark("default"),
        mark("route"),
    );
    let proxy = Proxy::start(&yaml).await;

    // (listener, path, the chains whose mark reaches the upstream)
    let cases: &[(&str, &str, &[&str])] = &[
        ("with", "/inherit", &["listener"]),
        ("without", "/inherit", &["default"]),
        ("with", "/own", &["route"]),
        ("without", "/own", &["route"]),
        ("with", "/none", &[]),
        ("without", "/none", &[]),
    ];
    for (listener, path, expected) in cases {
        let got = get_with(proxy.addr(listener), path, &[]).await;
        assert_eq!(got.status, 200, "{listener} {path}: {}", got.text());
        let seen = got.seen();
        let ran: Vec<&str> = ["listener", "default", "route"]
            .into_iter()
            .filter(|c| seen.headers.contains_key(&format!("x-chain-{c}")))
            .collect();
        assert_eq!(&ran, expected, "{listener} {path}: chains that ran");
    }
}

// ---------------------------------------------------------------------------------------------
// Response phase order

/// Two `shared` plugins on one route both set `x-count` to their own counter, on the request and
/// on the response. `first` has counted two requests more than `second`, so the last writer
/// shows: `second` on the way in (chain order), `first` on the way out (reverse order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hooks_run_in_reverse_chain_order() {
    let up = Upstream::echo("up").await;
    let yaml = format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
{}{}
routes:
  - {{ name: warm, paths: [{{ type: Prefix, value: /warm }}], upstream: up, plugins: [first] }}
  - {{ name: both, upstream: up, plugins: [first, second] }}
"#,
        up.endpoint(),
        plugin("first", "shared", "limits: { instances: 1 }"),
        plugin("second", "shared", "limits: { instances: 1 }"),
    );
    let proxy = Proxy::start(&yaml).await;
    let web = proxy.addr("web");
    for n in ["1", "2"] {
        let got = get_with(web, "/warm", &[]).await;
        assert_eq!(got.header("x-count"), Some(n), "{}", got.text());
    }

    // first: 3, second: 1.
    let got = get_with(web, "/both", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.seen().headers.get("x-count").map(String::as_str),
        Some("1"),
        "on the request, second (later in the chain) writes last"
    );
    assert_eq!(
        got.header("x-count"),
        Some("3"),
        "on the response, first (earlier in the chain) writes last"
    );
}

// ---------------------------------------------------------------------------------------------
// Callout timeout

/// Listener `web`, the admin endpoint, upstream `up`, the authorisation service `auth`, and the
/// route `guarded` through the callout plugin `guard` with `extra` (its `config`, `limits`).
fn guarded(up: &Upstream, auth: &Upstream, extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
  auth: {{ endpoints: ["{}"], request_timeout: 60s }}
plugins:
{}
routes:
  - {{ name: guarded, upstream: up, plugins: [guard] }}
"#,
        up.endpoint(),
        auth.endpoint(),
        plugin("guard", "callout", extra),
    )
}

/// [`guarded`] with an authorisation service that never answers: the upstream, that service,
/// and the started proxy.
async fn guarded_by_a_silent_service(extra: &str) -> (Upstream, Upstream, Proxy) {
    let up = Upstream::echo("up").await;
    let silent = Upstream::gated(Arc::new(tokio::sync::Semaphore::new(0))).await;
    let proxy = Proxy::start(&guarded(&up, &silent, extra)).await;
    (up, silent, proxy)
}

/// A guarded request, answered within `within` (else the test fails), and how long it took.
async fn timed_guarded_get(proxy: &Proxy, within: Duration) -> (Got, Duration) {
    let start = Instant::now();
    let got = tokio::time::timeout(
        within,
        get_with(proxy.addr("web"), "/x", &[("authorization", "Bearer good")]),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer within {within:?}"));
    (got, start.elapsed())
}

/// A callout to a service that never answers ends at the plugin's `timeout_ms` (300 ms), not at
/// `limits.callout_timeout` or `limits.pause_timeout`: the plugin gets a response with no
/// `:status` and denies (403). It is no plugin failure, and the instance serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_that_times_out_is_answered_at_the_plugins_timeout() {
    let (up, silent, proxy) = guarded_by_a_silent_service(
        "config: { upstream: auth, timeout_ms: 300 }, \
         limits: { instances: 1, callout_timeout: 10s, pause_timeout: 30s }",
    )
    .await;

    for round in 1..=2 {
        let (got, took) = timed_guarded_get(&proxy, Duration::from_secs(5)).await;
        assert_eq!(got.status, 403, "round {round}: {}", got.text());
        assert_eq!(got.header("x-denied-by"), Some("callout"));
        assert_eq!(got.text(), "denied by callout");
        assert!(
            took >= Duration::from_millis(300),
            "round {round}: answered after {took:?}, before the callout's timeout"
        );
        assert!(
            took < Duration::from_secs(3),
            "round {round}: answered after {took:?}"
        );
        assert_eq!(
            silent.hits(),
            round,
            "the callout never reached the auth service"
        );
    }
    assert_eq!(up.hits(), 0, "a denied request reached the upstream");
    let (_, metrics) = admin_get(&proxy.admin(), "/metrics").await;
    for kind in ["trap", "timeout", "memory", "abi"] {
        let sample = format!(r#"portico_plugin_failures_total{{kind="{kind}",plugin="guard"}}"#);
        assert_eq!(metric_in(&metrics, &sample), 0, "{sample}");
    }
}

/// A callout whose instance was discarded never answers the rebuilt one. The rebuilt instance
/// numbers its contexts and tokens afresh, so request C, the first on the new instance, has the
/// same context id and callout token as request A had on the old one: A's answer must not
/// resume C with A's authorization. (A's callout ends with A's stream, so it never answers at
/// all; behind that, an answer for a discarded instance's generation is dropped.) The
/// authorization service answers `x-user: <the request's path>`, and C must reach the upstream
/// with its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_callout_answer_never_reaches_the_rebuilt_instance() {
    use http::Response;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let up = Upstream::echo("up").await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let (gate, waiting) = (release.clone(), held.clone());
    let auth = Upstream::with_handler(move |req| {
        let path = req
            .headers()
            .get("x-original-path")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (gate, waiting) = (gate.clone(), waiting.clone());
        Box::pin(async move {
            let mut answer = Response::builder().header("x-user", path.as_str());
            if path.contains("panic") {
                answer = answer.header("x-panic", "1");
            } else {
                waiting.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.expect("gate").forget();
            }
            answer.body(empty()).expect("response")
        })
    })
    .await;
    let yaml = guarded(
        &up,
        &auth,
        "config: { upstream: auth, timeout_ms: 30000 }, limits: { instances: 1 }",
    );
    let proxy = Proxy::start(&yaml).await;
    let web = proxy.addr("web");
    let get = move |path: &'static str| tokio::spawn(get_with(web, path, &[]));

    // A waits for its answer on the first instance.
    let a = get("/a");
    eventually("A's callout to be held", || async {
        held.load(Ordering::SeqCst) == 1
    })
    .await;
    // B's answer makes the plugin panic: the instance is discarded, and A fails with it.
    let b = get("/panic").await.expect("B");
    assert_eq!(b.status, 500, "B: {}", b.text());
    let a = a.await.expect("A");
    assert_eq!(a.status, 500, "A: {}", a.text());
    // C, on the rebuilt instance, waits for its own answer.
    let c = get("/c");
    eventually("C's callout to be held", || async {
        held.load(Ordering::SeqCst) == 2
    })
    .await;
    // A's callout ended with A: the one answer released goes to C, and is C's own.
    release.add_permits(1);
    let got = tokio::time::timeout(Duration::from_secs(10), c)
        .await
        .expect("C answered")
        .expect("C");
    assert_eq!(
        got.seen().headers.get("x-auth-user").map(String::as_str),
        Some("/c"),
        "{}",
        got.text()
    );
    assert_eq!(up.hits(), 1, "only C reached the upstream");
}

/// A request the plugin pauses and never resumes (its callout's own timeout is longer) fails at
/// `limits.pause_timeout` under `on_error: deny`, counts as a `pause_timeout` failure on
/// /metrics and /config, and leaves the instance in place: no rebuild, and the plugin's next
/// request runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_paused_past_its_pause_timeout_fails_and_is_counted() {
    let (up, silent, proxy) = guarded_by_a_silent_service(
        "config: { upstream: auth, timeout_ms: 30000 }, \
         limits: { instances: 1, callout_timeout: 60s, pause_timeout: 300ms }",
    )
    .await;

    for round in 1..=2u64 {
        let (got, took) = timed_guarded_get(&proxy, Duration::from_secs(10)).await;
        assert_eq!(got.status, 500, "round {round}: {}", got.text());
        assert!(
            took >= Duration::from_millis(300),
            "round {round}: answered after {took:?}, before the pause timeout"
        );
        let (_, metrics) = admin_get(&proxy.admin(), "/metrics").await;
        let sample = r#"portico_plugin_failures_total{kind="pause_timeout",plugin="guard"}"#;
        assert_eq!(metric_in(&metrics, sample), round, "{sample}");
        let sample = r#"portico_plugin_instances_rebuilt_total{plugin="guard"}"#;
        assert_eq!(metric_in(&metrics, sample), 0, "the instance was rebuilt");
        let (_, config) = admin_get(&proxy.admin(), "/config").await;
        let json: serde_json::Value = serde_json::from_str(&config).expect("/config is JSON");
        let p = &json["plugins"][0];
        assert_eq!(p["failures"], round, "{config}");
        assert!(
            p["last_failure"]
                .as_str()
                .is_some_and(|f| f.contains("paused the request for longer than 300ms")),
            "{config}"
        );
        assert_eq!(p["live"], 1, "{config}");
        assert_eq!(p["backing_off"], 0, "{config}");
    }
    assert_eq!(
        silent.hits(),
        2,
        "the callouts never reached the auth service"
    );
    assert_eq!(up.hits(), 0, "a failed request reached the upstream");
}

// ---------------------------------------------------------------------------------------------
// WASI stdout and stderr

/// What `panicker` writes with `println!` and `eprintln!` (WASI `fd_write` to fds 1 and 2) is
/// logged by the real binary at target `portico::plugin` under the plugin's name: stdout at
/// INFO, stderr at WARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_stdout_and_stderr_reach_the_log_under_its_name() {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new();
    let config = dir.write(
        "portico.yaml",
        with_test_settings(&format!(
            r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
{}
routes:
  - {{ name: printed, upstream: up, plugins: [printer] }}
"#,
            up.endpoint(),
            plugin("printer", "panicker", "limits: { instances: 1 }"),
        )),
    );
    let bin = Binary::start_with_env(&config, &["web"], &[("PORTICO_PLUGIN_CACHE", "off")]).await;
    let marker = format!("m{}", fastrand::u64(..));
    let got = get_with(bin.addr("web"), "/x", &[("x-print", &marker)]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.seen().headers.get("x-panicker").map(String::as_str),
        Some("ok")
    );

    let record = |stream: &str| {
        let message = format!("panicker: {stream} {marker}");
        bin.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message.as_str())
    };
    wait_for("both lines in the log", || {
        record("stdout").is_some() && record("stderr").is_some()
    })
    .await;
    for (stream, level) in [("stdout", "INFO"), ("stderr", "WARN")] {
        let v = record(stream).expect("logged");
        assert_eq!(v["target"], "portico::plugin", "{stream}: {v}");
        assert_eq!(v["plugin"], "printer", "{stream}: {v}");
        assert_eq!(v["level"], level, "{stream}: {v}");
    }
}

// ---------------------------------------------------------------------------------------------
// plugin inspect

/// A minimal Proxy-Wasm module, encoded by hand (the test crate has no WAT encoder): memory, the
/// ABI marker, `proxy_on_memory_allocate`, `proxy_on_context_create`, and three imports:
/// `env.proxy_log` (provided, with its real signature), `env.portico_no_such_call` (unknown)
/// and `wasi_snapshot_preview1.sock_accept` (a WASI function Portico does not implement).
fn module_with_unknown_imports() -> Vec<u8> {
    fn leb(mut n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }
    fn name(s: &str) -> Vec<u8> {
        [leb(s.len() as u32), s.as_bytes().to_vec()].concat()
    }
    fn vec(items: Vec<Vec<u8>>) -> Vec<u8> {
        [leb(items.len() as u32), items.concat()].concat()
    }
    fn section(id: u8, contents: Vec<u8>) -> Vec<u8> {
        [vec![id], leb(contents.len() as u32), contents].concat()
    }
    const I32: u8 = 0x7f;
    let func_type = |params: &[u8], results: &[u8]| {
        [
            vec![0x60],
            leb(params.len() as u32),
            params.to_vec(),
            leb(results.len() as u32),
            results.to_vec(),
        ]
        .concat()
    };
    let import = |module: &str, field: &str, ty: u32| {
        [name(module), name(field), vec![0x00], leb(ty)].concat()
    };
    let export = |field: &str, kind: u8, index: u32| [name(field), vec![kind], leb(index)].concat();
    let body = |code: &[u8]| {
        let code = [&[0x00][..], code, &[0x0b]].concat(); // no locals, ..., end
        [leb(code.len() as u32), code].concat()
    };
    [
        b"\0asm".to_vec(),
        vec![1, 0, 0, 0],
        // Types: 0 (i32, i32, i32) -> i32, 1 () -> (), 2 (i32) -> i32, 3 (i32, i32) -> ().
        section(
            1,
            vec(vec![
                func_type(&[I32, I32, I32], &[I32]),
                func_type(&[], &[]),
                func_type(&[I32], &[I32]),
                func_type(&[I32, I32], &[]),
            ]),
        ),
        // Imported functions 0, 1, 2.
        section(
            2,
            vec(vec![
                import("env", "proxy_log", 0),
                import("env", "portico_no_such_call", 1),
                import("wasi_snapshot_preview1", "sock_accept", 0),
            ]),
        ),
        // Defined functions 3, 4, 5.
        section(3, vec(vec![leb(1), leb(2), leb(3)])),
        // One memory of one page, no maximum.
        section(5, vec(vec![vec![0x00, 0x01]])),
        section(
            7,
            vec(vec![
                export("memory", 0x02, 0),
                export("proxy_abi_version_0_2_1", 0x00, 3),
                export("proxy_on_memory_allocate", 0x00, 4),
                export("proxy_on_context_create", 0x00, 5),
            ]),
        ),
        section(
            10,
            vec(vec![body(&[]), body(&[0x41, 0x00]), body(&[])]), // i32.const 0
        ),
    ]
    .concat()
}

/// `inspect` names each import Portico does not provide and what calling it does: an unknown
/// `env` function traps, an unknown WASI function answers `ENOSYS`. The module still runs
/// (docs/plugins.md: exit code 0, and `portico check` loads it), with a verdict that names the
/// import that traps.
#[test]
fn inspect_names_the_imports_portico_does_not_provide() {
    let dir = TempDir::new();
    let wasm = dir.write("unknown_imports.wasm", module_with_unknown_imports());
    let out = std::process::Command::new(Binary::path())
        .args(["plugin", "inspect"])
        .arg(&wasm)
        .output()
        .expect("run portico plugin inspect");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = |import: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(import))
            .unwrap_or_else(|| panic!("{import} is not listed: {report}"))
            .trim()
            .to_string()
    };
    assert!(stdout.contains("abi: Proxy-Wasm 0.2.1"), "{report}");
    assert_eq!(line("env.proxy_log"), "env.proxy_log", "{report}");
    assert_eq!(
        line("env.portico_no_such_call"),
        "env.portico_no_such_call  (not provided: traps if called)",
        "{report}"
    );
    assert_eq!(
        line("wasi_snapshot_preview1.sock_accept"),
        "wasi_snapshot_preview1.sock_accept  (not provided: answers ENOSYS)",
        "{report}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("runnable: yes, but these imports trap if called: env.portico_no_such_call"),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(0), "{report}");

    // And Portico does load it, as the verdict says.
    let config = dir.write(
        "portico.yaml",
        format!(
            r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams: {{ up: {{ endpoints: ["127.0.0.1:9"] }} }}
plugins: {{ p: {{ module: "{}" }} }}
routes: [{{ name: r, upstream: up, plugins: [p] }}]
"#,
            wasm.display()
        ),
    );
    let (code, text) = check_with(&config, &[], &[("PORTICO_PLUGIN_CACHE", "off")]);
    assert_eq!(code, Some(0), "portico check refused it: {text}");
}
