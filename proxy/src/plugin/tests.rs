//! The host with hand-written modules (WebAssembly text, through wasmtime's `wat` feature) and
//! the compiled compatibility corpus: what it accepts, what it refuses, and in which words.

use wasmtime::Module;

use super::*;

/// A minimal Proxy-Wasm module: memory, a bump allocator, context creation, `exports` (WAT
/// fields, e.g. the ABI marker), and `vm_start` as the body of `proxy_on_vm_start`, which
/// returns true after it.
fn module(host: &PluginHost, imports: &str, exports: &str, vm_start: &str) -> Module {
    let wat = format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    {vm_start}
    (i32.const 1))
  {exports}
)"#
    );
    let (engine, _) = host.engine().expect("engine");
    Module::new(engine.engine(), wat).expect("valid WAT")
}

const ABI_0_2_1: &str = r#"(func (export "proxy_abi_version_0_2_1"))"#;

fn spec(host: &PluginHost) -> Arc<PluginSpec> {
    spec_with(host, OnError::Deny)
}

fn spec_with(host: &PluginHost, on_error: OnError) -> Arc<PluginSpec> {
    Arc::new(PluginSpec {
        name: "t".into(),
        config: Bytes::new(),
        vm_config: Bytes::new(),
        limits: Limits {
            instances: 1,
            ..Limits::default()
        },
        on_error,
        foreign_functions: Default::default(),
        upstreams: HashMap::new(),
        host: host.inner.clone(),
        callouts_inflight: AtomicUsize::new(0),
    })
}

/// Starts one instance of `module` the way `PluginHost::load` does.
fn start(host: &PluginHost, module: &Module) -> Result<Pool, String> {
    let pre = host.link(module)?;
    Pool::start(&spec(host), pre, 1).map_err(|f| format!("{} fault: {f}", f.kind()))
}

#[test]
fn an_unknown_env_import_links_and_traps_naming_itself_when_called() {
    let host = PluginHost::default();
    let import = r#"(import "env" "proxy_frobnicate" (func $frob (param i32) (result i32)))"#;

    // Imported but never called: the module runs.
    let idle = module(&host, import, ABI_0_2_1, "");
    start(&host, &idle).expect("an uncalled unknown import is harmless");

    // Called from on_vm_start: the call traps, and the error says which import it was.
    let calling = module(
        &host,
        import,
        ABI_0_2_1,
        "(drop (call $frob (i32.const 7)))",
    );
    let err = start(&host, &calling)
        .err()
        .expect("calling an unknown import fails the start");
    assert!(err.starts_with("trap fault:"), "{err}");
    assert!(err.contains("env.proxy_frobnicate"), "{err}");
    assert!(err.contains("does not provide"), "{err}");
}

/// What a guest hands the host is capped before it is read: a header map over 4 MiB, a key
/// over 16 KiB, a callout body over `limits.callout_body` each trap the call, saying the cap.
#[test]
fn hostcall_arguments_past_their_caps_trap_naming_the_cap() {
    let host = PluginHost::default();
    let cases = [
        (
            r#"(import "env" "proxy_set_header_map_pairs" (func $f (param i32 i32 i32) (result i32)))"#,
            "(drop (call $f (i32.const 0) (i32.const 0) (i32.const 4194305)))",
            "plugin passed 4194305 bytes to a hostcall that accepts at most 4194304",
        ),
        (
            r#"(import "env" "proxy_get_shared_data" (func $f (param i32 i32 i32 i32 i32) (result i32)))"#,
            "(drop (call $f (i32.const 0) (i32.const 16385) (i32.const 0) (i32.const 4) (i32.const 8)))",
            "plugin passed 16385 bytes to a hostcall that accepts at most 16384",
        ),
        (
            r#"(import "env" "proxy_http_call" (func $f (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
            "(drop (call $f (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 4) \
               (i32.const 0) (i32.const 1048577) (i32.const 0) (i32.const 4) (i32.const 1000) (i32.const 8)))",
            "plugin passed 1048577 bytes to a hostcall that accepts at most 1048576",
        ),
    ];
    for (import, call, words) in cases {
        let m = module(&host, import, ABI_0_2_1, call);
        let err = start(&host, &m).err().expect("the call traps");
        assert!(err.starts_with("trap fault:"), "{err}");
        assert!(err.contains(words), "{words:?} not in {err}");
    }
}

#[test]
fn an_unknown_wasi_function_answers_enosys_instead_of_trapping() {
    let host = PluginHost::default();
    // path_open is not in the WASI subset; 52 is ENOSYS. on_vm_start traps unless it gets it.
    let m = module(
        &host,
        r#"(import "wasi_snapshot_preview1" "path_open"
             (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
        ABI_0_2_1,
        r#"(if (i32.ne (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0)
                                (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0)
                                (i32.const 0))
                      (i32.const 52))
             (then unreachable))"#,
    );
    start(&host, &m).expect("ENOSYS, not a trap");
}

#[test]
fn a_module_without_the_abi_marker_is_refused_with_a_clear_message() {
    let host = PluginHost::default();
    let cases = [
        (
            "",
            "the module exports no proxy_abi_version_0_2_1 marker: it is not a Proxy-Wasm plugin",
        ),
        (
            r#"(func (export "proxy_abi_version_0_1_0"))"#,
            "the module declares proxy_abi_version_0_1_0; Portico runs Proxy-Wasm 0.2.1 and 0.2.0",
        ),
    ];
    for (exports, want) in cases {
        let m = module(&host, "", exports, "");
        assert_eq!(inspect::check_abi(&m).err().as_deref(), Some(want));
        assert_eq!(
            host.link(&m).err().as_deref(),
            Some(want),
            "link refuses too"
        );
    }
    // The marker is all it takes (0.2.0 too).
    for marker in [ABI_0_2_1, r#"(func (export "proxy_abi_version_0_2_0"))"#] {
        start(&host, &module(&host, "", marker, "")).expect("a 0.2.x module starts");
    }
}

/// The corpus modules `bash scripts/build-test-plugins.sh` builds.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugins/wasm32-wasip1/release");
    let names = [
        "body",
        "bomb",
        "callout",
        "config",
        "foreign",
        "headers",
        "looper",
        "metrics",
        "panicker",
        "properties",
        "queue",
        "shared",
        "tick",
        "trailers",
        "utf8",
    ];
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("test_{name}.wasm"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: run bash scripts/build-test-plugins.sh",
                    path.display()
                )
            });
            (name.to_string(), bytes)
        })
        .collect()
}

#[test]
fn inspect_says_every_corpus_module_is_runnable() {
    for (name, bytes) in corpus() {
        let (report, runnable) = inspect::report(&bytes).expect("a valid module");
        assert!(runnable, "{name}:\n{report}");
        assert!(
            report.contains("abi: Proxy-Wasm 0.2.1\n"),
            "{name}:\n{report}"
        );
        // Nothing it imports is missing: not even a "runnable: yes, but ..." caveat.
        assert!(report.ends_with("runnable: yes\n"), "{name}:\n{report}");
        assert!(!report.contains("(not provided"), "{name}:\n{report}");
    }
}

/// What `portico plugin inspect` says of modules Portico cannot run, or can run with caveats.
#[test]
fn inspect_names_what_keeps_a_module_from_running() {
    let base = |extra: &str| {
        format!(
            r#"(module
  (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
  {extra}
  (memory (export "memory") 1)
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
)"#
        )
    };
    let cases = [
        // (extra items, runnable, the report's last line)
        (
            format!(r#"{ABI_0_2_1} (func (export "proxy_on_context_create") (param i32 i32))"#),
            true,
            "runnable: yes",
        ),
        (
            format!(
                r#"(import "env" "proxy_from_the_future" (func)) {ABI_0_2_1}
                   (func (export "proxy_on_context_create") (param i32 i32))"#
            ),
            true,
            "runnable: yes, but these imports trap if called: env.proxy_from_the_future",
        ),
        (
            ABI_0_2_1.to_string(),
            false,
            "runnable: no (missing exports: proxy_on_context_create)",
        ),
        (
            r#"(func (export "proxy_on_context_create") (param i32 i32))"#.to_string(),
            false,
            "runnable: no (not a Proxy-Wasm 0.2.x module)",
        ),
        // A host function imported with the wrong signature: names alone would pass it.
        (
            format!(
                r#"(import "env" "proxy_get_property" (func)) {ABI_0_2_1}
                   (func (export "proxy_on_context_create") (param i32 i32))"#
            ),
            false,
            "runnable: no (cannot link the module: incompatible import type for \
             `env::proxy_get_property`",
        ),
    ];
    for (extra, runnable, last) in cases {
        let wat = base(&extra);
        let (report, ok) = inspect::report(wat.as_bytes()).expect("a valid module");
        assert_eq!(ok, runnable, "{report}");
        let verdict = report.lines().last().unwrap_or_default();
        // (wasmtime's link error goes on after the import's name.)
        let exact = !last.contains("cannot link");
        assert!(
            if exact {
                verdict == last
            } else {
                verdict.starts_with(last)
            },
            "{report}"
        );
    }
}

/// A chain passes over a plugin in a header phase it has no callback for, but a plugin whose
/// `proxy_on_log` may read `response.code` still gets the response phase, without exporting
/// `proxy_on_response_headers`.
/// A `GET` of `path` on host `a`, route `r`, from 127.0.0.1:1 to 127.0.0.1:2, without TLS.
fn stream_info(scheme: &'static str, path: &str) -> StreamInfo {
    StreamInfo {
        id: http::HeaderValue::from_static("1"),
        started: std::time::Instant::now(),
        source: "127.0.0.1:1".parse().expect("addr"),
        destination: "127.0.0.1:2".parse().expect("addr"),
        tls_version: None,
        mtls: false,
        sni: None,
        protocol: "HTTP/1.1",
        scheme,
        method: http::Method::GET,
        host: "a".into(),
        path: path.into(),
        route: "r".into(),
        upstream: None,
        later: Default::default(),
    }
}

/// A stream through `chain` for a `GET /` that ends with its headers, and what the request
/// header phase decided.
async fn request_through(chain: &Chain) -> (Arc<ChainStream>, Result<Verdict, ProxyError>) {
    let stream = chain
        .start(Arc::new(stream_info("http", "/")))
        .await
        .expect("start");
    let mut req = request_head("http", "/");
    let verdict = stream.request_headers(&mut req, true).await;
    (stream, verdict)
}

/// The last lines a plugin's (only, idle) instance logged, oldest first.
fn recent_logs(plugin: &Plugin) -> Vec<String> {
    let state = plugin.pool.slots[0].state.try_lock().expect("idle");
    let data = state.instance.as_ref().expect("live").store.data();
    data.recent_logs.iter().cloned().collect()
}

/// `module` started as plugin `t`, a chain of it alone, and a runtime to run streams on.
fn one_plugin(host: &PluginHost, module: &Module) -> (Arc<Plugin>, Chain, tokio::runtime::Runtime) {
    let plugin = Arc::new(Plugin {
        spec: spec(host),
        pool: start(host, module).expect("starts"),
    });
    let chain = Chain::new(vec![plugin.clone()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    (plugin, chain, rt)
}

/// The request head [`stream_info`]'s request presents to plugins, with no headers.
fn request_head(scheme: &'static str, path: &str) -> RequestHead {
    RequestHead {
        method: http::Method::GET,
        scheme,
        authority: "a".into(),
        path: path.into(),
        headers: HeaderMap::new(),
    }
}

/// In `on_log` the heads are frozen: each map's pairs come whole (pseudo-headers first), a
/// pseudo-header reads like a header, and the properties over the heads read them. Keys are
/// read in any case, pseudo-headers too (Envoy lowercases them), in the live phase as later.
#[test]
fn frozen_heads_serve_pairs_pseudo_headers_and_properties() {
    let host = PluginHost::default();
    let imports = r#"
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
    // Logs: the request map's last value (the tail of its pairs), `:status` of the response
    // map, and the properties request.path, request.useragent, request.method.
    let exports = format!(
        r#"{ABI_0_2_1}
  (data (i32.const 16) ":Status")
  (data (i32.const 32) "request\00path")
  (data (i32.const 88) ":METHOD")
  (data (i32.const 48) "request\00useragent")
  (data (i32.const 72) "request\00method")
  (func $log_ret
    (drop (call $log (i32.const 2) (i32.load (i32.const 100)) (i32.load (i32.const 104)))))
  (func $log_prop (param $p i32) (param $n i32)
    (if (i32.eqz (call $prop (local.get $p) (local.get $n) (i32.const 100) (i32.const 104)))
      (then (call $log_ret))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 88) (i32.const 7) (i32.const 100) (i32.const 104)))
      (then (call $log_ret)))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (if (i32.eqz (call $pairs (i32.const 0) (i32.const 100) (i32.const 104)))
      (then (drop (call $log (i32.const 2)
        (i32.sub (i32.add (i32.load (i32.const 100)) (i32.load (i32.const 104))) (i32.const 13))
        (i32.const 12)))))
    (if (i32.eqz (call $get (i32.const 2) (i32.const 16) (i32.const 7) (i32.const 100) (i32.const 104)))
      (then (call $log_ret)))
    (call $log_prop (i32.const 32) (i32.const 12))
    (call $log_prop (i32.const 48) (i32.const 17))
    (call $log_prop (i32.const 72) (i32.const 14)))"#
    );
    let m = module(&host, imports, &exports, "");
    let (plugin, chain, rt) = one_plugin(&host, &m);
    let mut req = request_head("http", "/p?q=1");
    req.method = http::Method::PUT;
    req.headers
        .insert("user-agent", http::HeaderValue::from_static("tester/1"));
    req.headers
        .insert("x-a", http::HeaderValue::from_static("from-request"));
    let resp = ResponseHead {
        status: StatusCode::ACCEPTED,
        headers: HeaderMap::new(),
    };
    whole_stream(&chain, &rt, req, resp);
    assert_eq!(
        recent_logs(&plugin),
        ["PUT", "from-request", "202", "/p?q=1", "tester/1", "PUT"]
    );
}

/// One stream through `chain` on `rt`: `req` and `resp` through their phases (each ending
/// the stream's message), then the end of the stream (`on_log` and the rest).
fn whole_stream(
    chain: &Chain,
    rt: &tokio::runtime::Runtime,
    mut req: RequestHead,
    mut resp: ResponseHead,
) {
    rt.block_on(async {
        let stream = chain
            .start(Arc::new(stream_info("http", "/")))
            .await
            .expect("start");
        stream
            .request_headers(&mut req, true)
            .await
            .expect("request");
        stream
            .response_headers(&mut resp, true)
            .await
            .expect("response");
        drop(stream);
    });
}

#[test]
fn a_plugin_with_only_on_log_still_sees_the_response_status() {
    let host = PluginHost::default();
    // on_log logs "code=found" when response.code is readable, "code=missing" when not.
    let imports = r#"
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
    let exports = format!(
        r#"{ABI_0_2_1}
  (data (i32.const 16) "response\00code")
  (data (i32.const 48) "code=found")
  (data (i32.const 64) "code=missing")
  (func (export "proxy_on_log") (param i32)
    (if (i32.eqz (call $prop (i32.const 16) (i32.const 13) (i32.const 96) (i32.const 100)))
      (then (drop (call $log (i32.const 2) (i32.const 48) (i32.const 10))))
      (else (drop (call $log (i32.const 2) (i32.const 64) (i32.const 12))))))"#
    );
    let m = module(&host, imports, &exports, "");
    let (plugin, chain, rt) = one_plugin(&host, &m);
    assert!(
        !plugin.pool.head_hooks.request,
        "no request headers callback"
    );
    assert!(
        plugin.pool.head_hooks.response,
        "on_log needs the response phase"
    );
    rt.block_on(async {
        let (stream, verdict) = request_through(&chain).await;
        verdict.expect("request");
        let mut resp = ResponseHead {
            status: StatusCode::IM_A_TEAPOT,
            headers: HeaderMap::new(),
        };
        stream
            .response_headers(&mut resp, true)
            .await
            .expect("response");
        drop(stream);
    });
    let logs = recent_logs(&plugin);
    assert_eq!(
        logs.last().map(String::as_str),
        Some("code=found"),
        "{logs:?}"
    );
}

/// A stream's whole life on a hand-written module: `proxy_set_header_map_pairs` replaces the
/// request's headers (a pseudo-header included), `connection.mtls` reads true on a connection
/// with a client certificate, and when the stream ends the host calls `proxy_on_log`,
/// `proxy_on_done` and `proxy_on_delete`, in that order.
#[test]
fn a_stream_sets_header_pairs_reads_mtls_and_ends_with_log_done_delete() {
    let host = PluginHost::default();
    let imports = r#"
  (import "env" "proxy_set_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
    // The pairs: x-a: 1 and :path: /new, in the Proxy-Wasm map encoding.
    let exports = format!(
        r#"{ABI_0_2_1}
  (data (i32.const 16) "connection\00mtls")
  (data (i32.const 48) "mtls=1")
  (data (i32.const 56) "mtls=0")
  (data (i32.const 64) "log")
  (data (i32.const 72) "done")
  (data (i32.const 80) "delete")
  (data (i32.const 200) "\02\00\00\00\03\00\00\00\01\00\00\00\05\00\00\00\04\00\00\00x-a\001\00:path\00/new\00")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $pairs (i32.const 0) (i32.const 200) (i32.const 37)))
    (if (i32.eqz (call $prop (i32.const 16) (i32.const 15) (i32.const 96) (i32.const 100)))
      (then
        (if (i32.eq (i32.load8_u (i32.load (i32.const 96))) (i32.const 1))
          (then (drop (call $log (i32.const 2) (i32.const 48) (i32.const 6))))
          (else (drop (call $log (i32.const 2) (i32.const 56) (i32.const 6)))))))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (drop (call $log (i32.const 2) (i32.const 64) (i32.const 3))))
  (func (export "proxy_on_done") (param i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 72) (i32.const 4)))
    (i32.const 1))
  (func (export "proxy_on_delete") (param i32)
    (drop (call $log (i32.const 2) (i32.const 80) (i32.const 6))))"#
    );
    let m = module(&host, imports, &exports, "");
    let (plugin, chain, rt) = one_plugin(&host, &m);
    let req = rt.block_on(async {
        let info = StreamInfo {
            tls_version: Some("TLSv1.3"),
            mtls: true,
            ..stream_info("https", "/old")
        };
        let stream = chain.start(Arc::new(info)).await.expect("start");
        let mut req = request_head("https", "/old");
        req.headers
            .insert("x-old", http::HeaderValue::from_static("1"));
        stream
            .request_headers(&mut req, true)
            .await
            .expect("request");
        drop(stream);
        req
    });
    assert_eq!(req.path, "/new");
    assert_eq!(
        req.headers.get("x-a").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(req.headers.get("x-old").is_none(), "{:?}", req.headers);
    assert_eq!(recent_logs(&plugin), ["mtls=1", "log", "done", "delete"]);
}

/// What a plugin grows on a stream is capped: adding a header 2,000 times, or setting 300
/// properties, traps the call (the request fails by `on_error`) instead of growing host memory
/// without bound or overflowing the header map's own limit, which would panic the host.
#[test]
fn a_plugin_growing_a_header_map_or_its_properties_past_the_caps_fails_its_request() {
    let host = PluginHost::default();
    let cases = [
        (
            r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#,
            r#"(drop (call $add (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 24) (i32.const 1)))"#,
            2000,
            "plugin grew a header map past its cap",
        ),
        (
            r#"(import "env" "proxy_set_property" (func $set (param i32 i32 i32 i32) (result i32)))"#,
            r#"(i32.store8 (i32.const 32) (i32.add (i32.const 65) (i32.rem_u (local.get $i) (i32.const 26))))
      (i32.store8 (i32.const 33) (i32.add (i32.const 65) (i32.div_u (local.get $i) (i32.const 26))))
      (drop (call $set (i32.const 32) (i32.const 2) (i32.const 24) (i32.const 1)))"#,
            300,
            "plugin set more properties on a stream than allowed",
        ),
    ];
    for (import, call, times, words) in cases {
        let exports = format!(
            r#"{ABI_0_2_1}
  (data (i32.const 16) "x-a")
  (data (i32.const 24) "1")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (loop $l
      {call}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {times}))))
    (i32.const 0))"#
        );
        let m = module(&host, import, &exports, "");
        let (_plugin, chain, rt) = one_plugin(&host, &m);
        let err = rt.block_on(async {
            request_through(&chain)
                .await
                .1
                .expect_err("the request fails")
        });
        let text = err.to_string();
        assert!(text.contains(words), "{words:?} not in {text}");
    }
}

/// What an end-of-stream callback asks for runs: here `on_log` starts ticks (as a callout or a
/// queue notification from `on_log` must start), and `on_tick` then logs.
#[test]
fn work_asked_for_in_on_log_is_started() {
    let host = PluginHost::default();
    let imports = r#"
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
    let exports = format!(
        r#"{ABI_0_2_1}
  (data (i32.const 16) "ticked")
  (func (export "proxy_on_log") (param i32)
    (drop (call $tick (i32.const 5))))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 6))))"#
    );
    let m = module(&host, imports, &exports, "");
    let (plugin, chain, rt) = one_plugin(&host, &m);
    let ticked = || recent_logs(&plugin).iter().any(|l| l == "ticked");
    rt.block_on(async {
        let stream = chain
            .start(Arc::new(stream_info("http", "/")))
            .await
            .expect("start");
        drop(stream);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ticked() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no tick after on_log asked for them"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
}

/// A request dropped while its chain is still binding (the second plugin's instance busy)
/// ends the context it already created on the first: `on_delete` runs and the instance keeps
/// no state for it.
#[test]
fn a_request_dropped_while_its_chain_binds_ends_the_contexts_it_created() {
    let host = PluginHost::default();
    let imports = r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
    let exports = format!(
        r#"{ABI_0_2_1}
  (data (i32.const 16) "deleted")
  (func (export "proxy_on_delete") (param i32)
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 7))))"#
    );
    let m = module(&host, imports, &exports, "");
    let (first, _, rt) = one_plugin(&host, &m);
    let (second, _, _) = one_plugin(&host, &m);
    let chain = Chain::new(vec![first.clone(), second.clone()]);
    rt.block_on(async {
        let busy = second.pool.slots[0].state.try_lock().expect("idle");
        let mut start = Box::pin(chain.start(Arc::new(stream_info("http", "/"))));
        assert!(
            futures_util::poll!(&mut start).is_pending(),
            "waits for the busy instance"
        );
        drop(start);
        drop(busy);
    });
    let state = first.pool.slots[0].state.try_lock().expect("idle");
    let data = state.instance.as_ref().expect("live").store.data();
    assert!(
        data.streams.is_empty(),
        "the first plugin's context is left"
    );
    drop(state);
    assert_eq!(
        recent_logs(&first).last().map(String::as_str),
        Some("deleted")
    );
}

/// A request paused in a plugin whose instance then fails (another request's trap discards
/// it) fails too, also under `on_error: allow`: its head went with the instance, and going on
/// would forward an empty request.
#[test]
fn a_request_whose_head_was_lost_with_its_instance_fails_even_under_allow() {
    let host = PluginHost::default();
    // The first stream (context 2) pauses; any other traps.
    let exports = format!(
        r#"{ABI_0_2_1}
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (if (i32.eq (local.get $ctx) (i32.const 2)) (then (return (i32.const 1))))
    unreachable)"#
    );
    let m = module(&host, "", &exports, "");
    let plugin = Arc::new(Plugin {
        spec: spec_with(&host, OnError::Allow),
        pool: start(&host, &m).expect("starts"),
    });
    let chain = Chain::new(vec![plugin]);
    let (_, _, rt) = one_plugin(&host, &m);
    rt.block_on(async {
        let info = Arc::new(stream_info("http", "/"));
        let paused = chain.start(info.clone()).await.expect("start");
        let failing = chain.start(info).await.expect("start");
        let mut head = request_head("http", "/kept");
        let mut waiting = Box::pin(paused.request_headers(&mut head, true));
        assert!(futures_util::poll!(&mut waiting).is_pending(), "paused");
        let mut other = request_head("http", "/other");
        let skipped = failing.request_headers(&mut other, true).await;
        assert!(
            matches!(skipped, Ok(Verdict::Continue)),
            "allow skips the plugin that trapped"
        );
        let lost = waiting.await.expect_err("the paused request fails");
        assert!(
            lost.to_string()
                .contains("failed while holding the stream's request headers"),
            "{lost}"
        );
    });
}

/// As in Envoy, the request head stays readable after its phase (here in
/// `on_http_response_headers` and `on_log`), and so does the response head in `on_log`.
#[test]
fn heads_stay_readable_in_later_callbacks() {
    let host = PluginHost::default();
    let imports = r#"
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
    // Logs the value of header `x-a` of the request (map 0) or `x-b` of the response (map 2).
    let exports = format!(
        r#"{ABI_0_2_1}
  (data (i32.const 16) "x-a")
  (data (i32.const 24) "x-b")
  (func $log_header (param $map i32) (param $key i32)
    (if (i32.eqz (call $get (local.get $map) (local.get $key) (i32.const 3) (i32.const 100) (i32.const 104)))
      (then (drop (call $log (i32.const 2) (i32.load (i32.const 100)) (i32.load (i32.const 104)))))))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $log_header (i32.const 0) (i32.const 16))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (call $log_header (i32.const 0) (i32.const 16))
    (call $log_header (i32.const 2) (i32.const 24)))"#
    );
    let m = module(&host, imports, &exports, "");
    let (plugin, chain, rt) = one_plugin(&host, &m);
    let mut req = request_head("http", "/");
    req.headers
        .insert("x-a", http::HeaderValue::from_static("from-request"));
    let mut resp = ResponseHead {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
    };
    resp.headers
        .insert("x-b", http::HeaderValue::from_static("from-response"));
    whole_stream(&chain, &rt, req, resp);
    assert_eq!(
        recent_logs(&plugin),
        ["from-request", "from-request", "from-response"]
    );
}
