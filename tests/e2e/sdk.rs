//! The SDK's example plugins (plugin-sdk/examples/, built by scripts/build-plugins.sh) through
//! the real proxy: what a newcomer following docs/plugins.md gets (`hello`), and every SDK call
//! that the first-party plugins do not make, against Portico's host rather than the SDK's mock
//! (`probe`).

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use crate::support::*;

fn config(up: &Upstream, plugin_config: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
  hello: {{ module: "{}"{plugin_config} }}
routes:
  - {{ name: app, upstream: up, plugins: [hello] }}
"#,
        up.endpoint(),
        first_party_wasm("hello").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugin_adds_its_header_and_answers_hello_itself() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(&up, r#", config: { greeting: "good day" }"#)).await;

    let got = get(proxy.addr("web"), "sdk.test", "/api").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.seen().headers.get("x-hello").map(String::as_str),
        Some("good day")
    );

    let hits = up.hits();
    let got = get(proxy.addr("web"), "sdk.test", "/hello").await;
    assert_eq!(
        (got.status.as_u16(), got.text()),
        (200, "good day\n".into())
    );
    assert_eq!(
        up.hits(),
        hits,
        "a local response never reaches the upstream"
    );
}

/// The probe's `x-probe` answer, as the upstream saw it: the request headers it set.
async fn probe(proxy: &Proxy, what: &str) -> Seen {
    let req = http::Request::get("/")
        .header("host", "sdk.test")
        .header("x-probe", what)
        .body(empty())
        .expect("request");
    let got = send(proxy.addr("web"), req).await;
    assert_eq!(got.status, 200, "x-probe: {what}: {}", got.text());
    got.seen()
}

fn probe_header(seen: &Seen, name: &str) -> Option<String> {
    seen.headers.get(name).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sdk_call_the_first_party_plugins_do_not_make_works_in_portico() {
    let up = Upstream::echo("up").await;
    let echo = body_echo().await;
    let yaml = format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  up: {{ endpoints: ["{}"] }}
  echo: {{ endpoints: ["{}"] }}
plugins:
  probe: {{ module: "{probe}", limits: {{ instances: 2 }} }}
  upper: {{ module: "{probe}", config: {{ uppercase_body: true }} }}
routes:
  - {{ name: upper, upstream: echo, plugins: [upper], paths: [{{ type: Prefix, value: /upper }}] }}
  - {{ name: app, upstream: up, plugins: [probe] }}
"#,
        up.endpoint(),
        echo.endpoint(),
        probe = first_party_wasm("probe").display()
    );
    let proxy = Proxy::start(&yaml).await;

    // Portico's counter (a foreign function), one count across both instances.
    for n in 1..=3 {
        let seen = probe(&proxy, "counter").await;
        assert_eq!(probe_header(&seen, "x-count"), Some(n.to_string()));
    }
    // Shared data through `shared::update` (compare-and-swap).
    for n in 1..=2 {
        let seen = probe(&proxy, "shared").await;
        assert_eq!(probe_header(&seen, "x-shared"), Some(n.to_string()));
    }
    let seen = probe(&proxy, "queue").await;
    assert_eq!(probe_header(&seen, "x-queue").as_deref(), Some("one"));

    // Header validation: the SDK refuses what the host would have to refuse.
    let seen = probe(&proxy, "bad-header").await;
    assert_eq!(
        probe_header(&seen, "x-errors").as_deref(),
        Some("true true")
    );
    assert_eq!(probe_header(&seen, "x-ok"), None);

    // Signatures through Portico's verifier: a zero signature is invalid, a key of the wrong
    // type never fits (an answer, not an error).
    let seen = probe(&proxy, "crypto").await;
    assert_eq!(
        probe_header(&seen, "x-crypto").as_deref(),
        Some("fallback says valid=false")
    );
    assert_eq!(
        probe_header(&seen, "x-crypto-mismatch").as_deref(),
        Some("false")
    );

    // Typed properties in Envoy's encodings: the client's port (8 bytes), mTLS (1 byte).
    let seen = probe(&proxy, "properties").await;
    let props = probe_header(&seen, "x-props").expect("x-props");
    let port = props
        .strip_prefix("Some(")
        .and_then(|p| p.strip_suffix(") Some(false)"))
        .and_then(|p| p.parse::<u16>().ok());
    assert!(port.is_some_and(|p| p > 0), "{props}");

    // A callout from the response phase holds the response, and its answer resumes it: the
    // SDK calls `proxy_continue_stream` for the response. The callout went to `up` too.
    let hits = up.hits();
    let got = send(
        proxy.addr("web"),
        http::Request::get("/x")
            .header("host", "sdk.test")
            .header("x-probe", "response-callout")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-probe-callout"), Some("200"));
    assert_eq!(
        got.seen().path,
        "/x",
        "the upstream's answer, not the callout's"
    );
    assert_eq!(up.hits(), hits + 2, "the request and the callout");

    // A gauge and a histogram on /metrics, under the plugin's name.
    probe(&proxy, "metrics").await;
    let (status, metrics) = admin_get(&proxy.admin(), "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"portico_plugin_gauge{name="probe_gauge",plugin="probe"} 5"#,
        r#"portico_plugin_histogram_count{name="probe_histogram",plugin="probe"} 1"#,
        r#"portico_plugin_histogram_sum{name="probe_histogram",plugin="probe"} 42"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }

    // A body hook that pauses until the end, then rewrites the whole body.
    let chunks = ["hello ", "wor", "ld"]
        .map(|c| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(c))));
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
    let req = http::Request::post("/upper")
        .header("host", "sdk.test")
        .body(body)
        .expect("request");
    let got = send(proxy.addr("web"), req).await;
    assert_eq!(
        (got.status.as_u16(), got.text()),
        (200, "HELLO WORLD".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_plugin_refuses_names_the_field_and_keeps_the_old_snapshot() {
    let up = Upstream::echo("up").await;
    // Refused at start: the typed Config rejects unknown keys with the field's name.
    let err = Proxy::try_start_in(TempDir::new(), &config(&up, r#", config: { greting: hi }"#))
        .await
        .err()
        .expect("an unknown config key is refused");
    assert!(err.contains("unknown field `greting`"), "{err}");

    // Refused at reload: the running snapshot keeps serving.
    let proxy = Proxy::start(&config(&up, "")).await;
    let status = proxy
        .rewrite_until(&config(&up, r#", config: { greeting: 7 }"#), "failure")
        .await;
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("greeting"), "{error}");
    let got = get(proxy.addr("web"), "sdk.test", "/hello").await;
    assert_eq!(got.text(), "hello\n", "the default greeting still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_check_shows_the_plugins_own_refusal() {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new();
    let bad = dir.write(
        "portico.yaml",
        with_test_settings(&config(&up, r#", config: { greting: hi }"#)),
    );
    let check = tokio::process::Command::new(Binary::path())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .await
        .expect("run portico check");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(out.contains("portico.yaml"), "names the file: {out}");
    assert!(out.contains("unknown field `greting`"), "{out}");

    let good = dir.write("good.yaml", with_test_settings(&config(&up, "")));
    let check = tokio::process::Command::new(Binary::path())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .await
        .expect("run portico check");
    assert_eq!(check.status.code(), Some(0));
}

/// Every function of Proxy-Wasm ABI v0.2.1 a module may import from `env` (the spec's list).
const ABI_0_2_1_IMPORTS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
];

/// The callbacks a v0.2.1 module may export, besides memory and the allocator.
const ABI_0_2_1_EXPORTS: &[&str] = &[
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_queue_ready",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_log",
    "proxy_on_done",
    "proxy_on_delete",
    "proxy_on_http_call_response",
    "_initialize",
    "_start",
    "memory",
];

/// What the SDK promises for portability: its plugins import nothing but Proxy-Wasm v0.2.1
/// functions and WASI preview 1, and export only v0.2.1 callbacks (with the ABI marker), so
/// they load in any Proxy-Wasm host.
#[test]
fn sdk_plugins_import_and_export_only_proxy_wasm_0_2_1() {
    let engine = wasmtime::Engine::default();
    for name in ["hello", "jwt", "rate-limit", "auth", "header-rewrite"] {
        let bytes = std::fs::read(first_party_wasm(name)).expect("read module");
        let module = wasmtime::Module::new(&engine, &bytes).expect("a valid module");
        for import in module.imports() {
            let ok = match import.module() {
                "env" => ABI_0_2_1_IMPORTS.contains(&import.name()),
                "wasi_snapshot_preview1" => true,
                _ => false,
            };
            assert!(
                ok,
                "{name}.wasm imports {}.{}",
                import.module(),
                import.name()
            );
        }
        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        for export in &exports {
            assert!(
                ABI_0_2_1_EXPORTS.contains(export),
                "{name}.wasm exports {export}"
            );
        }
        for required in [
            "proxy_abi_version_0_2_1",
            "proxy_on_memory_allocate",
            "proxy_on_context_create",
            "proxy_on_configure",
        ] {
            assert!(exports.contains(&required), "{name}.wasm lacks {required}");
        }
    }
}
