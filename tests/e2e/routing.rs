//! Routing through the real proxy: the Kubernetes Ingress path table, hosts, matchers and
//! their precedence, path normalisation, and the route actions (weighted backends, redirects,
//! direct responses, rewrites).

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;

use crate::support::*;

const LISTENER: &str = r#"listeners: [{ name: web, address: "127.0.0.1:0" }]"#;

/// A configuration whose routes answer with their own names, so a response tells which rule
/// matched. Each route is `(name, its matchers as YAML flow-mapping entries)`.
fn named_routes(routes: &[(&str, &str)]) -> String {
    let mut yaml = format!("{LISTENER}\nroutes:\n");
    for (name, matchers) in routes {
        yaml.push_str(&format!(
            "  - {{ name: {name}, {matchers}, direct_response: {{ status: 200, body: {name} }} }}\n"
        ));
    }
    yaml
}

/// Sends `target` byte for byte (no client-side URI handling) and returns (status, body).
async fn raw_get(addr: SocketAddr, host: &str, target: &str) -> (u16, String) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let text = raw(addr, request.as_bytes(), Duration::from_secs(10)).await;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (raw_status(&text), body)
}

/// Which route answered a request, or `None` for the proxy's own 404.
async fn matched(addr: SocketAddr, host: &str, target: &str) -> Option<String> {
    let (status, body) = raw_get(addr, host, target).await;
    match status {
        200 => Some(body),
        404 => None,
        other => panic!("{host}{target}: unexpected status {other}: {body}"),
    }
}

/// Runs a table of `(case, host, target, expected route)` and reports every mismatch at once.
async fn check_table(addr: SocketAddr, table: &[(&str, &str, &str, Option<&str>)]) {
    let mut failures = Vec::new();
    for (case, host, target, expected) in table {
        let got = matched(addr, host, target).await;
        if got.as_deref() != *expected {
            failures.push(format!(
                "{case}: {host}{target} → {got:?}, expected {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_ingress_path_table() {
    #[rustfmt::skip]
    let yaml = named_routes(&[
        ("a1-prefix-root", "hosts: [a1.test], paths: [{ type: Prefix, value: / }]"),
        ("a2-exact-foo", "hosts: [a2.test], paths: [{ type: Exact, value: /foo }]"),
        ("a5-exact-foo-slash", "hosts: [a5.test], paths: [{ type: Exact, value: /foo/ }]"),
        ("a6-prefix-foo", "hosts: [a6.test], paths: [{ type: Prefix, value: /foo }]"),
        ("a7-prefix-foo-slash", "hosts: [a7.test], paths: [{ type: Prefix, value: /foo/ }]"),
        ("a8-prefix-aaa-bb", "hosts: [a8.test], paths: [{ type: Prefix, value: /aaa/bb }]"),
        ("a9-prefix-aaa-bbb", "hosts: [a9.test], paths: [{ type: Prefix, value: /aaa/bbb }]"),
        ("a10-prefix-aaa-bbb-slash", "hosts: [a10.test], paths: [{ type: Prefix, value: /aaa/bbb/ }]"),
        ("a14-root", "hosts: [a14.test], paths: [{ type: Prefix, value: / }]"),
        ("a14-aaa", "hosts: [a14.test], paths: [{ type: Prefix, value: /aaa }]"),
        ("a15-root", "hosts: [a15.test], paths: [{ type: Prefix, value: / }]"),
        ("a15-aaa", "hosts: [a15.test], paths: [{ type: Prefix, value: /aaa }]"),
        ("a15-aaa-bbb", "hosts: [a15.test], paths: [{ type: Prefix, value: /aaa/bbb }]"),
        ("a17-aaa", "hosts: [a17.test], paths: [{ type: Prefix, value: /aaa }]"),
        // Prefix first, so declaration order cannot be what makes Exact win.
        ("a18-prefix", "hosts: [a18.test], paths: [{ type: Prefix, value: /foo }]"),
        ("a18-exact", "hosts: [a18.test], paths: [{ type: Exact, value: /foo }]"),
        ("h-wildcard", "hosts: ['*.foo.com'], paths: [{ type: Prefix, value: / }]"),
        ("x1-foo", "hosts: [x1.test], paths: [{ type: Prefix, value: /foo }]"),
        ("x1-foo-slash", "hosts: [x1.test], paths: [{ type: Prefix, value: /foo/ }]"),
    ]);
    let proxy = Proxy::start(&yaml).await;

    #[rustfmt::skip]
    let table: &[(&str, &str, &str, Option<&str>)] = &[
        ("A1", "a1.test", "/", Some("a1-prefix-root")),
        ("A1", "a1.test", "/foo", Some("a1-prefix-root")),
        ("A1", "a1.test", "/foo/bar/", Some("a1-prefix-root")),
        ("A1", "a1.test", "/aaa/bbb/ccc?x=1", Some("a1-prefix-root")),
        ("A2", "a2.test", "/foo", Some("a2-exact-foo")),
        ("A3", "a2.test", "/bar", None),
        ("A4", "a2.test", "/foo/", None),
        ("A5", "a5.test", "/foo", None),
        ("A5 (self)", "a5.test", "/foo/", Some("a5-exact-foo-slash")),
        ("A6", "a6.test", "/foo", Some("a6-prefix-foo")),
        ("A6", "a6.test", "/foo/", Some("a6-prefix-foo")),
        ("A7", "a7.test", "/foo", Some("a7-prefix-foo-slash")),
        ("A7", "a7.test", "/foo/", Some("a7-prefix-foo-slash")),
        ("A8", "a8.test", "/aaa/bbb", None),
        ("A8 (self)", "a8.test", "/aaa/bb/c", Some("a8-prefix-aaa-bb")),
        ("A9", "a9.test", "/aaa/bbb", Some("a9-prefix-aaa-bbb")),
        ("A10", "a10.test", "/aaa/bbb", Some("a10-prefix-aaa-bbb-slash")),
        ("A11", "a9.test", "/aaa/bbb/", Some("a9-prefix-aaa-bbb")),
        ("A12", "a9.test", "/aaa/bbb/ccc", Some("a9-prefix-aaa-bbb")),
        ("A13", "a9.test", "/aaa/bbbxyz", None),
        ("A14", "a14.test", "/aaa/ccc", Some("a14-aaa")),
        ("A15", "a15.test", "/aaa/bbb", Some("a15-aaa-bbb")),
        ("A16", "a15.test", "/ccc", Some("a15-root")),
        ("A17", "a17.test", "/ccc", None),
        ("A18", "a18.test", "/foo", Some("a18-exact")),
        ("A18 (subpath)", "a18.test", "/foo/bar", Some("a18-prefix")),
        ("H1", "bar.foo.com", "/", Some("h-wildcard")),
        ("H2", "baz.bar.foo.com", "/", None),
        ("H3", "foo.com", "/", None),
        // Implied cases.
        ("X1 longest wins", "x1.test", "/foo/", Some("x1-foo-slash")),
        ("X1 longest wins", "x1.test", "/foo/bar", Some("x1-foo-slash")),
        ("X1 tie → declaration order", "x1.test", "/foo", Some("x1-foo")),
        ("X2 Exact is case-sensitive", "a2.test", "/FOO", None),
        ("X3 query ignored", "a2.test", "/foo?x=1", Some("a2-exact-foo")),
        ("X3 query ignored", "a2.test", "/foo?", Some("a2-exact-foo")),
        // Hosts: case-insensitive, port ignored, trailing dot ignored.
        ("host case", "A2.Test", "/foo", Some("a2-exact-foo")),
        ("host port", "a2.test:8080", "/foo", Some("a2-exact-foo")),
        ("host trailing dot", "a2.test.", "/foo", Some("a2-exact-foo")),
        ("wildcard case and port", "BAR.Foo.com:81", "/x", Some("h-wildcard")),
        ("unknown host", "nowhere.test", "/", None),
    ];
    check_table(proxy.addr("web"), table).await;
}

/// A17's "default backend": a route without hosts catches what the host's own rules do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_fall_through_to_a_default_route() {
    let yaml = named_routes(&[
        (
            "a17-aaa",
            "hosts: [a17.test], paths: [{ type: Prefix, value: /aaa }]",
        ),
        // No hosts, every path.
        ("default-backend", "paths: []"),
    ]);
    let proxy = Proxy::start(&yaml).await;
    #[rustfmt::skip]
    check_table(proxy.addr("web"), &[
        ("A17", "a17.test", "/ccc", Some("default-backend")),
        ("A17 (self)", "a17.test", "/aaa/x", Some("a17-aaa")),
        ("unknown host", "other.test", "/aaa", Some("default-backend")),
    ]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_hosts_beat_wildcards_which_beat_any_host() {
    // Declared least specific first, and with the more specific paths on the less specific
    // hosts: host specificity must still decide.
    #[rustfmt::skip]
    let yaml = named_routes(&[
        ("any-host", "paths: [{ type: Exact, value: /x }]"),
        ("wildcard", "hosts: ['*.example.com'], paths: [{ type: Exact, value: /x }]"),
        ("exact", "hosts: [api.example.com], paths: [{ type: Prefix, value: / }]"),
    ]);
    let proxy = Proxy::start(&yaml).await;
    #[rustfmt::skip]
    check_table(proxy.addr("web"), &[
        ("exact host", "api.example.com", "/x", Some("exact")),
        ("exact host, any path", "api.example.com", "/y", Some("exact")),
        ("wildcard", "web.example.com", "/x", Some("wildcard")),
        ("wildcard falls through to any host", "a.b.example.com", "/x", Some("any-host")),
        ("apex is not the wildcard", "example.com", "/x", Some("any-host")),
        ("wildcard group without a match falls through", "web.example.com", "/y", None),
        // RFC 9112 §3.2.2: an absolute-form target's authority overrides Host.
        ("absolute-form target", "web.example.com", "http://api.example.com/x", Some("exact")),
    ]).await;
}

/// (case, method, target, request headers, expected route)
type MatcherCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_header_and_query_matchers_and_their_precedence() {
    #[rustfmt::skip]
    let yaml = named_routes(&[
        ("plain", "hosts: [m.test], paths: [{ type: Prefix, value: /api }]"),
        ("query", "hosts: [m.test], paths: [{ type: Prefix, value: /api }], query: [{ name: v, value: '2' }]"),
        ("two-queries", "hosts: [m.test], paths: [{ type: Prefix, value: /api }], query: [{ name: v, value: '2' }, { name: debug }]"),
        ("one-header", "hosts: [m.test], paths: [{ type: Prefix, value: /api }], headers: [{ name: X-Canary, value: '1' }]"),
        ("two-headers", "hosts: [m.test], paths: [{ type: Prefix, value: /api }], headers: [{ name: x-canary, value: '1' }, { name: x-tenant, regex: 't-[0-9]+' }]"),
        ("post", "hosts: [m.test], paths: [{ type: Prefix, value: /api }], methods: [POST, put]"),
        ("longer", "hosts: [m.test], paths: [{ type: Prefix, value: /api/v2 }]"),
        ("delete-only", "hosts: [m.test], paths: [{ type: Prefix, value: /admin }], methods: [DELETE]"),
        ("first-twin", "hosts: [m.test], paths: [{ type: Exact, value: /twin }]"),
        ("second-twin", "hosts: [m.test], paths: [{ type: Exact, value: /twin }]"),
    ]);
    let proxy = Proxy::start(&yaml).await;
    let addr = proxy.addr("web");

    #[rustfmt::skip]
    let cases: &[MatcherCase] = &[
        ("no conditions", "GET", "/api/x", &[], Some("plain")),
        ("method", "POST", "/api/x", &[], Some("post")),
        ("method (second of the list, written lower-case)", "PUT", "/api/x", &[], Some("post")),
        ("method beats headers", "POST", "/api/x", &[("x-canary", "1"), ("x-tenant", "t-7")], Some("post")),
        ("longest prefix beats method", "POST", "/api/v2/x", &[], Some("longer")),
        ("header", "GET", "/api/x", &[("x-canary", "1")], Some("one-header")),
        ("header value is exact", "GET", "/api/x", &[("x-canary", "10")], Some("plain")),
        ("more headers win", "GET", "/api/x", &[("x-canary", "1"), ("x-tenant", "t-42")], Some("two-headers")),
        ("header regex is anchored", "GET", "/api/x", &[("x-canary", "1"), ("x-tenant", "t-42x")], Some("one-header")),
        ("every header must match", "GET", "/api/x", &[("x-tenant", "t-42")], Some("plain")),
        ("headers beat query", "GET", "/api/x?v=2&debug", &[("x-canary", "1")], Some("one-header")),
        ("query", "GET", "/api/x?v=2", &[], Some("query")),
        ("query, other parameters around", "GET", "/api/x?a=1&v=2&b", &[], Some("query")),
        ("more query matches win", "GET", "/api/x?debug&v=2", &[], Some("two-queries")),
        ("query value is exact", "GET", "/api/x?v=20", &[], Some("plain")),
        ("method-only route, other method", "GET", "/admin", &[], None),
        ("method-only route", "DELETE", "/admin", &[], Some("delete-only")),
        ("declaration order breaks ties", "GET", "/twin", &[], Some("first-twin")),
    ];
    let mut failures = Vec::new();
    for (case, method, target, headers, expected) in cases {
        let mut req = Request::builder()
            .method(*method)
            .uri(*target)
            .header("host", "m.test");
        for (k, v) in *headers {
            req = req.header(*k, *v);
        }
        let got = send(addr, req.body(empty()).unwrap()).await;
        let route = match got.status.as_u16() {
            200 => Some(got.text()),
            404 => None,
            s => panic!("{case}: status {s}"),
        };
        if route.as_deref() != *expected {
            failures.push(format!(
                "{case}: {method} {target} {headers:?} → {route:?}, expected {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_expression_paths() {
    #[rustfmt::skip]
    let yaml = named_routes(&[
        ("prefix", "hosts: [re.test], paths: [{ type: Prefix, value: /users }]"),
        ("short-regex", "hosts: [re.test], paths: [{ type: RegularExpression, value: '/users/.*' }]"),
        ("id-regex", "hosts: [re.test], paths: [{ type: RegularExpression, value: '/users/[0-9]+/profile' }]"),
        ("exact", "hosts: [re.test], paths: [{ type: Exact, value: /users/42/profile }]"),
    ]);
    let proxy = Proxy::start(&yaml).await;
    #[rustfmt::skip]
    check_table(proxy.addr("web"), &[
        ("longer regex first", "re.test", "/users/7/profile", Some("id-regex")),
        ("Exact beats regex", "re.test", "/users/42/profile", Some("exact")),
        ("regex over prefix", "re.test", "/users/abc", Some("short-regex")),
        ("regex is anchored at the end", "re.test", "/users/7/profile/x", Some("short-regex")),
        ("regex must match the whole path", "re.test", "/users", Some("prefix")),
        ("regex sees the normalised path", "re.test", "/users/7/x/../profile", Some("id-regex")),
        ("query is not part of the path", "re.test", "/users/7/profile?a=1", Some("id-regex")),
    ]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_matching_and_forwarding() {
    let admin = Upstream::echo("admin").await;
    let public = Upstream::echo("public").await;
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
upstreams:
  admin: {{ endpoints: ["{}"] }}
  public: {{ endpoints: ["{}"] }}
routes:
  - {{ name: admin, paths: [{{ type: Prefix, value: /admin }}], upstream: admin }}
  - {{ name: public, paths: [{{ type: Prefix, value: /public }}], upstream: public }}
"#,
        admin.endpoint(),
        public.endpoint()
    ))
    .await;
    let addr = proxy.addr("web");

    #[rustfmt::skip]
    let cases: &[(&str, Option<(&str, &str)>)] = &[
        ("/admin", Some(("admin", "/admin"))),
        ("/public/../admin", Some(("admin", "/admin"))),
        ("/public/%2e%2e/admin", Some(("admin", "/admin"))),
        ("/public/%2E%2E/admin?x=1", Some(("admin", "/admin?x=1"))),
        ("/public/./../admin/./users", Some(("admin", "/admin/users"))),
        ("//admin", Some(("admin", "/admin"))),
        ("/public//..//admin//x", Some(("admin", "/admin/x"))),
        ("/../../admin", Some(("admin", "/admin"))),
        ("/%61dmin", Some(("admin", "/admin"))),
        ("/admin/..", None),
        // An encoded slash is data, never a separator: it is neither decoded nor a dot segment.
        ("/public/..%2Fadmin", Some(("public", "/public/..%2Fadmin"))),
        ("/public/a%2fb", Some(("public", "/public/a%2Fb"))),
        ("/public%2F..%2Fadmin", None),
        ("/public/%2e%2e%2fadmin", Some(("public", "/public/..%2Fadmin"))),
    ];
    let mut failures = Vec::new();
    for (target, expected) in cases {
        let (status, body) = raw_get(addr, "n.test", target).await;
        let got = match status {
            200 => {
                let seen: Seen = serde_json::from_str(&body).expect("echo body");
                Some((seen.server, seen.path))
            }
            404 => None,
            s => panic!("{target}: status {s}: {body}"),
        };
        let expected = expected.map(|(s, p)| (s.to_string(), p.to_string()));
        if got != expected {
            failures.push(format!("{target} → {got:?}, expected {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Malformed escapes are the client's error, and reach no upstream.
    let hits = admin.hits() + public.hits();
    assert_eq!(raw_get(addr, "n.test", "/admin/%zz").await.0, 400);
    assert_eq!(raw_get(addr, "n.test", "/admin/%2").await.0, 400);
    assert_eq!(admin.hits() + public.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_backends_split_traffic() {
    let stable = Upstream::echo("stable").await;
    let canary = Upstream::echo("canary").await;
    let drained = Upstream::echo("drained").await;
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
upstreams:
  stable: {{ endpoints: ["{}"] }}
  canary: {{ endpoints: ["{}"] }}
  drained: {{ endpoints: ["{}"] }}
routes:
  - name: split
    backends:
      - {{ upstream: stable, weight: 90 }}
      - {{ upstream: canary, weight: 10 }}
      - {{ upstream: drained, weight: 0 }}
"#,
        stable.endpoint(),
        canary.endpoint(),
        drained.endpoint()
    ))
    .await;
    let client = pooled_client();
    let url = format!("{}/x", proxy.url("web"));
    const N: usize = 1000;
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..N {
        let resp = client
            .request(Request::get(&url).body(empty()).unwrap())
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let name = resp.headers()["x-upstream"].to_str().unwrap().to_string();
        *answers.entry(name).or_default() += 1;
    }
    let canary_share = answers.get("canary").copied().unwrap_or(0);
    // Binomial(1000, 0.1): mean 100, standard deviation 9.5; 50..=150 is more than 5 sigma.
    assert!(
        (50..=150).contains(&canary_share),
        "canary got {canary_share} of {N}: {answers:?}"
    );
    assert_eq!(
        answers.get("stable").copied().unwrap_or(0) + canary_share,
        N
    );
    assert_eq!(drained.hits(), 0, "a weight-0 backend must get no traffic");
    assert_eq!(stable.hits() + canary.hits(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects() {
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
routes:
  - {{ name: prefix, hosts: [r.test], paths: [{{ type: Prefix, value: /old }}], redirect: {{ prefix: /new, status: 301 }} }}
  - {{ name: full, hosts: [r.test], paths: [{{ type: Exact, value: /moved }}], redirect: {{ path: /there, status: 308 }} }}
  - {{ name: scheme, hosts: [r.test], paths: [{{ type: Prefix, value: /secure }}], redirect: {{ scheme: https }} }}
  - {{ name: host-port, hosts: [r.test], paths: [{{ type: Prefix, value: /elsewhere }}], redirect: {{ host: other.example, port: 8443, status: 307 }} }}
  - {{ name: all, hosts: [r.test], paths: [{{ type: Prefix, value: /all }}], redirect: {{ scheme: https, host: www.example, port: 443, prefix: /, status: 302 }} }}
  - {{ name: see-other, hosts: [r.test], paths: [{{ type: Exact, value: /form }}], redirect: {{ path: /done, status: 303 }} }}
"#
    ))
    .await;
    let addr = proxy.addr("web");
    #[rustfmt::skip]
    let cases: &[(&str, &str, u16, &str)] = &[
        ("r.test", "/old/x/y?q=1&r=2", 301, "http://r.test/new/x/y?q=1&r=2"),
        ("r.test", "/old", 301, "http://r.test/new"),
        ("r.test:8080", "/old/x", 301, "http://r.test:8080/new/x"),
        ("r.test", "/moved?keep=me", 308, "http://r.test/there?keep=me"),
        // Changing the scheme drops the request's port (it belonged to the old scheme).
        ("r.test:8080", "/secure/a?b", 302, "https://r.test/secure/a?b"),
        ("r.test", "/elsewhere/p", 307, "http://other.example:8443/elsewhere/p"),
        // The scheme's default port is left out.
        ("r.test:8080", "/all/in/one?x", 302, "https://www.example/in/one?x"),
        ("r.test", "/form", 303, "http://r.test/done"),
        // Redirects are built from the normalised path.
        ("r.test", "/x/../old/./y", 301, "http://r.test/new/y"),
    ];
    for (host, target, status, location) in cases {
        let got = send(
            addr,
            Request::get(*target)
                .header("host", *host)
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(got.status.as_u16(), *status, "{host}{target}");
        assert_eq!(got.header("location"), Some(*location), "{host}{target}");
        assert!(got.body.is_empty(), "{host}{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses() {
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
routes:
  - name: teapot
    paths: [{{ type: Exact, value: /teapot }}]
    direct_response: {{ status: 418, body: "short and stout", content_type: text/x-teapot }}
  - name: json
    paths: [{{ type: Exact, value: /health }}]
    direct_response: {{ status: 200, body: '{{"ok":true}}', content_type: application/json }}
  - name: default-type
    paths: [{{ type: Exact, value: /plain }}]
    direct_response: {{ status: 503, body: "down for maintenance" }}
  - name: empty
    paths: [{{ type: Exact, value: /gone }}]
    direct_response: {{ status: 410 }}
"#
    ))
    .await;
    let addr = proxy.addr("web");

    let got = get(addr, "d.test", "/teapot").await;
    assert_eq!(got.status, 418);
    assert_eq!(got.text(), "short and stout");
    assert_eq!(got.header("content-type"), Some("text/x-teapot"));
    assert_eq!(got.header("content-length"), Some("15"));
    assert!(got.header("x-request-id").is_some());

    let got = get(addr, "d.test", "/health?probe=1").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), r#"{"ok":true}"#);
    assert_eq!(got.header("content-type"), Some("application/json"));

    let got = get(addr, "d.test", "/plain").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.text(), "down for maintenance");
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let got = get(addr, "d.test", "/gone").await;
    assert_eq!(got.status, 410);
    assert!(got.body.is_empty());
    assert_eq!(got.header("content-type"), None);

    // HEAD gets the head of the same answer.
    let got = send(
        addr,
        Request::head("/teapot")
            .header("host", "d.test")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 418);
    assert!(got.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_of_prefix_path_and_host() {
    let up = Upstream::echo("svc").await;
    let proxy = Proxy::start(&format!(
        r#"
{LISTENER}
upstreams: {{ svc: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: v2, paths: [{{ type: Prefix, value: /api }}], upstream: svc, rewrite: {{ prefix: /v2 }} }}
  - {{ name: strip, paths: [{{ type: Prefix, value: /strip/ }}], upstream: svc, rewrite: {{ prefix: / }} }}
  - {{ name: full, paths: [{{ type: Exact, value: /legacy }}], upstream: svc, rewrite: {{ path: /modern/endpoint }} }}
  - {{ name: host, paths: [{{ type: Prefix, value: /internal }}], upstream: svc, rewrite: {{ host: internal.svc.cluster.local }} }}
  - {{ name: both, paths: [{{ type: Prefix, value: /one }}, {{ type: Prefix, value: /two/deep }}], upstream: svc, rewrite: {{ prefix: /merged, host: merged.svc }} }}
  - {{ name: plain, paths: [{{ type: Prefix, value: / }}], upstream: svc }}
"#,
        up.endpoint()
    ))
    .await;
    let addr = proxy.addr("web");
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        ("/api/users?page=2", "/v2/users?page=2", "shop.test"),
        ("/api", "/v2", "shop.test"),
        ("/api/", "/v2/", "shop.test"),
        ("/api/../api/x", "/v2/x", "shop.test"),
        ("/strip/users/7", "/users/7", "shop.test"),
        ("/strip", "/", "shop.test"),
        ("/legacy?x=1", "/modern/endpoint?x=1", "shop.test"),
        ("/internal/a", "/internal/a", "internal.svc.cluster.local"),
        // Each path of a route replaces the prefix that matched.
        ("/one/a", "/merged/a", "merged.svc"),
        ("/two/deep/b?c", "/merged/b?c", "merged.svc"),
        ("/other", "/other", "shop.test"),
        // Not string prefixes: `/apix` is not under `/api`.
        ("/apix", "/apix", "shop.test"),
    ];
    for (target, path, host) in cases {
        let got = get(addr, "shop.test", target).await;
        assert_eq!(got.status, 200, "{target}");
        let seen = got.seen();
        assert_eq!(seen.path, *path, "{target}");
        assert_eq!(seen.headers["host"], *host, "{target}");
        assert_eq!(seen.headers["x-forwarded-host"], "shop.test", "{target}");
    }
}
