//! The SDK's example plugin (plugin-sdk/examples/hello.rs, built by scripts/build-plugins.sh)
//! through the real proxy: what a newcomer following docs/plugins.md gets.

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
