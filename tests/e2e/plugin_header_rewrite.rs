//! The header-rewrite plugin (plugins/header-rewrite) end to end: what the upstream and the
//! client see through the real proxy.

use http::{Request, Response};

use crate::support::*;

/// Listener `web`, upstream `up`, plugin `rewrite` with `plugin_config`, any `more_plugins`
/// lines, and `routes`.
fn config(up: &Upstream, plugin_config: &str, more_plugins: &str, routes: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
upstreams:
  up: {{ endpoints: ["{}"] }}
plugins:
  rewrite:
    module: "{}"
    config: {plugin_config}
{more_plugins}
routes:
{routes}
"#,
        up.endpoint(),
        first_party_wasm("header-rewrite").display()
    )
}

const ONE_ROUTE: &str = "  - { name: api, upstream: up, plugins: [rewrite] }";

async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(path).header("host", "rewrite.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(proxy.addr("web"), req.body(empty()).expect("request")).await
}

/// An echo upstream that also answers with the headers a typical origin leaks.
async fn chatty_upstream() -> Upstream {
    Upstream::with_handler(|req| {
        Box::pin(async move {
            let echoed = echo_response("up", req).await;
            let (mut parts, body) = echoed.into_parts();
            parts
                .headers
                .insert("server", "Apache/2.4.1".parse().unwrap());
            parts
                .headers
                .insert("x-powered-by", "PHP/5.6".parse().unwrap());
            parts
                .headers
                .insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
            Response::from_parts(parts, body)
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rules_and_templates_reach_the_upstream() {
    let up = Upstream::echo("up").await;
    let rules = r#"
      request:
        remove: [x-secret]
        rename: { x-old: x-new }
        set:
          x-client: "{source.ip}"
          x-client-address: "{source.address}"
          x-id: "{request.id}"
          x-where: "{request.method} {request.scheme}://{request.host}{request.path} on {route}"
          x-user-copy: "user={header.x-user}"
          x-forged: "{header.x-not-sent}"
        add: { x-tag: portico }
"#;
    let proxy = Proxy::start(&config(&up, rules, "", ONE_ROUTE)).await;
    let got = get_with(
        &proxy,
        "/orders/7?full=1",
        &[
            ("x-secret", "s3cret"),
            ("x-old", "moved"),
            ("x-user", "alice"),
            ("x-forged", "from-the-client"),
            ("x-request-id", "abc-123"),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = got.seen();
    let h = |name: &str| seen.headers.get(name).map(String::as_str);
    assert_eq!(h("x-secret"), None);
    assert_eq!((h("x-old"), h("x-new")), (None, Some("moved")));
    assert_eq!(h("x-client"), Some("127.0.0.1"));
    let address = h("x-client-address").unwrap_or_default();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    assert_eq!(h("x-id"), Some("abc-123"));
    assert_eq!(
        h("x-where"),
        Some("GET http://rewrite.test/orders/7?full=1 on api")
    );
    assert_eq!(h("x-user-copy"), Some("user=alice"));
    assert_eq!(
        h("x-forged"),
        None,
        "an empty value removes the client's copy"
    );
    assert_eq!(h("x-tag"), Some("portico"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules_set_security_headers_and_hide_the_origin() {
    let up = chatty_upstream().await;
    let rules = r#"
      response:
        remove: [server, x-powered-by]
        set:
          strict-transport-security: "max-age=31536000; includeSubDomains"
          x-content-type-options: nosniff
          x-frame-options: DENY
          x-trace: "{header.x-trace}"
      request:
        remove: [x-trace]
"#;
    let proxy = Proxy::start(&config(&up, rules, "", ONE_ROUTE)).await;
    let got = get_with(&proxy, "/", &[("x-trace", "t-42")]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("server"), None);
    assert_eq!(got.header("x-powered-by"), None);
    assert_eq!(
        got.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(got.header("x-frame-options"), Some("DENY"));
    assert_eq!(got.headers.get_all("x-frame-options").iter().count(), 1);
    // Read from the request, which the upstream never saw.
    assert_eq!(got.header("x-trace"), Some("t-42"));
    assert_eq!(got.seen().headers.get("x-trace"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules_cover_answers_that_never_reached_an_upstream() {
    let up = Upstream::echo("up").await;
    let rules = r#"{ response: { set: { x-frame-options: DENY, x-route: "{route}" } } }"#;
    // A rate limiter before the rewrite answers the second request itself.
    let limiter = format!(
        "  limit: {{ module: \"{}\", config: {{ rate: 1, per: 1h, burst: 1 }} }}",
        first_party_wasm("rate-limit").display()
    );
    let routes = r#"
  - name: static
    paths: [{ type: Prefix, value: /static }]
    direct_response: { status: 200, body: "hi" }
    plugins: [rewrite]
  - { name: api, upstream: up, plugins: [limit, rewrite] }
"#;
    let proxy = Proxy::start(&config(&up, rules, &limiter, routes)).await;
    let direct = get_with(&proxy, "/static/x", &[]).await;
    assert_eq!(
        (direct.status.as_u16(), direct.text().as_str()),
        (200, "hi")
    );
    assert_eq!(direct.header("x-frame-options"), Some("DENY"));
    assert_eq!(direct.header("x-route"), Some("static"));

    assert_eq!(get_with(&proxy, "/api", &[]).await.status, 200);
    let limited = get_with(&proxy, "/api", &[]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-frame-options"), Some("DENY"));
    assert_eq!(limited.header("x-route"), Some("api"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_fail_the_start_naming_the_rule() {
    let up = Upstream::echo("up").await;
    let cases = [
        (
            r#"{ response: { set: { "x frame": DENY } } }"#,
            "response.set.x frame: \"x frame\" is not a header name",
        ),
        (
            r#"{ request: { set: { x-client: "{source.adress}" } } }"#,
            "request.set.x-client: unknown placeholder {source.adress}",
        ),
        (
            r#"{ request: { add: { x-a: "line\nbreak" } } }"#,
            "request.add.x-a: '\\n' cannot be in a header value",
        ),
        (
            "{ response: { remove: [content-length] } }",
            "content-length is managed by Portico",
        ),
    ];
    for (rules, want) in cases {
        let err = Proxy::try_start_in(TempDir::new(), &config(&up, rules, "", ONE_ROUTE))
            .await
            .err()
            .unwrap_or_else(|| panic!("{rules} started"));
        assert!(err.contains(want), "{rules}: {err}");
    }
}
