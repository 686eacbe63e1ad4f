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
