//! The plugin through the SDK's mock host: one rule of the README per test.

use portico_plugin_sdk::testing::{Harness, Outcome, Request};
use serde_json::{Value, json};

use super::*;

fn plugin(config: Value) -> Harness<HeaderRewrite> {
    Harness::new(config).unwrap_or_else(|e| panic!("refused: {e}"))
}

/// A request with `headers` through `on_request_headers`.
fn request<'h>(
    h: &'h Harness<HeaderRewrite>,
    headers: &[(&str, &str)],
) -> Request<'h, HeaderRewrite> {
    let req = headers
        .iter()
        .fold(h.request(), |req, (k, v)| req.add_header(k, v));
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    req
}

/// Every request header but the pseudo-headers, in order.
fn request_headers(req: &Request<'_, HeaderRewrite>) -> Vec<(String, String)> {
    let names = ["x-a", "x-b", "x-c", "x-d", "x-new", "x-old", "x-keep"];
    let mut out = Vec::new();
    for name in names {
        for v in req.request_header_values(name) {
            out.push((name.to_string(), v));
        }
    }
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn request_rules() {
    // (rules, request headers, headers the upstream gets)
    type Case = (
        Value,
        &'static [(&'static str, &'static str)],
        &'static [(&'static str, &'static str)],
    );
    let cases: Vec<Case> = vec![
        (
            json!({ "set": { "x-a": "1" } }),
            &[("x-a", "0"), ("x-a", "9")],
            &[("x-a", "1")],
        ),
        (json!({ "set": { "X-A": "1" } }), &[], &[("x-a", "1")]),
        (
            json!({ "add": { "x-a": "1" } }),
            &[("x-a", "0")],
            &[("x-a", "0"), ("x-a", "1")],
        ),
        (
            json!({ "add": { "x-a": ["1", "2"] } }),
            &[],
            &[("x-a", "1"), ("x-a", "2")],
        ),
        (
            json!({ "remove": ["x-a", "X-B"] }),
            &[("x-a", "0"), ("x-b", "0"), ("x-keep", "k")],
            &[("x-keep", "k")],
        ),
        // rename moves every value and replaces the target...
        (
            json!({ "rename": { "x-old": "x-new" } }),
            &[("x-old", "1"), ("x-old", "2"), ("x-new", "0")],
            &[("x-new", "1"), ("x-new", "2")],
        ),
        // ...but leaves the target alone when there is nothing to move.
        (
            json!({ "rename": { "x-old": "x-new" } }),
            &[("x-new", "0")],
            &[("x-new", "0")],
        ),
        // The order within a phase: remove, rename, set, add.
        (
            json!({
                "add": { "x-a": "added" },
                "set": { "x-a": "set", "x-new": "set" },
                "rename": { "x-old": "x-new", "x-b": "x-c" },
                "remove": ["x-b"],
            }),
            &[("x-a", "client"), ("x-old", "old"), ("x-b", "b")],
            &[("x-a", "set"), ("x-a", "added"), ("x-new", "set")],
        ),
        // An empty value: `set` removes, `add` adds nothing.
        (
            json!({ "set": { "x-a": "{header.x-absent}" }, "add": { "x-b": "{header.x-absent}" } }),
            &[("x-a", "spoofed"), ("x-b", "0")],
            &[("x-b", "0")],
        ),
        (json!({ "set": { "x-a": "" } }), &[("x-a", "0")], &[]),
        // Numbers and booleans are their text.
        (
            json!({ "set": { "x-a": 0, "x-b": true } }),
            &[],
            &[("x-a", "0"), ("x-b", "true")],
        ),
    ];
    for (rules, sent, want) in cases {
        let h = plugin(json!({ "request": rules }));
        let req = request(&h, sent);
        assert_eq!(request_headers(&req), pairs(want), "{rules}");
    }
}

#[test]
fn templates_name_parts_of_the_request() {
    let h = plugin(json!({ "request": { "set": {
        "x-a": "{request.id} {request.host} {request.path} {request.method} {request.scheme}",
        "x-b": "for={source.ip} by={source.address}",
        "x-c": "{route}/{header.x-user}/{header.x-absent}/{{literal}}",
    } } }));
    let req = h
        .request()
        .method("POST")
        .path("/api/v1?q=1")
        .authority("shop.example")
        .source("198.51.100.7:4242")
        .property("route_name", b"api")
        .header("x-user", "alice");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(
        request_headers(&req),
        pairs(&[
            ("x-a", "req-2 shop.example /api/v1?q=1 POST http"),
            ("x-b", "for=198.51.100.7 by=198.51.100.7:4242"),
            ("x-c", "api/alice//{literal}"),
        ])
    );
}

#[test]
fn templates_read_the_request_as_it_reached_the_plugin() {
    let h = plugin(json!({ "request": {
        "remove": ["x-a"],
        "set": { "x-b": "{header.x-a}", "x-c": "{header.x-b}" },
    } }));
    let req = request(&h, &[("x-a", "from-client"), ("x-b", "old-b")]);
    assert_eq!(
        request_headers(&req),
        pairs(&[("x-b", "from-client"), ("x-c", "old-b")])
    );
}

#[test]
fn response_rules_add_security_headers_and_hide_the_server() {
    let h = plugin(json!({ "response": {
        "remove": ["server", "x-powered-by"],
        "set": {
            "strict-transport-security": "max-age=31536000; includeSubDomains",
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
        },
    } }));
    let req = request(&h, &[]);
    let upstream = [
        ("server", "nginx/1.25"),
        ("x-powered-by", "PHP/8"),
        ("x-frame-options", "SAMEORIGIN"),
        ("content-type", "text/html"),
    ];
    assert_eq!(req.on_response_headers(200, &upstream), Outcome::Continue);
    assert_eq!(
        req.response_headers(),
        pairs(&[
            (":status", "200"),
            ("x-frame-options", "DENY"),
            ("content-type", "text/html"),
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains"
            ),
            ("x-content-type-options", "nosniff"),
        ])
    );
}

#[test]
fn response_templates_read_the_request_headers() {
    let h = plugin(json!({
        "request": { "remove": ["x-trace"] },
        "response": { "set": { "x-trace": "{header.x-trace}", "x-id": "{request.id}" } },
    }));
    let req = request(&h, &[("x-trace", "abc")]);
    assert_eq!(
        req.request_header("x-trace"),
        None,
        "removed before the upstream"
    );
    req.on_response_headers(200, &[]);
    assert_eq!(req.response_header("x-trace").as_deref(), Some("abc"));
    assert_eq!(req.response_header("x-id").as_deref(), Some("req-2"));
}

#[test]
fn a_response_to_a_request_that_never_reached_the_plugin_still_gets_the_rules() {
    // An earlier plugin answered: only the response phase runs here.
    let h = plugin(json!({ "response": { "set": {
        "x-frame-options": "DENY",
        "x-route": "{route}",
        "x-trace": "{header.x-trace}",
    } } }));
    let req = h
        .request()
        .property("route_name", b"api")
        .header("x-trace", "abc");
    assert_eq!(req.on_response_headers(429, &[]), Outcome::Continue);
    assert_eq!(
        req.response_header("x-frame-options").as_deref(),
        Some("DENY")
    );
    assert_eq!(req.response_header("x-route").as_deref(), Some("api"));
}

#[test]
fn a_plugin_without_rules_changes_nothing() {
    let h = plugin(json!(null));
    let req = request(&h, &[("x-a", "1")]);
    req.on_response_headers(200, &[("server", "s")]);
    assert_eq!(request_headers(&req), pairs(&[("x-a", "1")]));
    assert_eq!(req.response_header("server").as_deref(), Some("s"));
}

#[test]
fn invalid_rules_are_refused_naming_the_rule() {
    let cases = [
        (
            json!({ "request": { "set": { "x bad": "1" } } }),
            "request.set.x bad: \"x bad\" is not a header name",
        ),
        (
            json!({ "request": { "set": { "": "1" } } }),
            "request.set.: \"\" is not a header name",
        ),
        (
            json!({ "response": { "add": { "x-é": "1" } } }),
            "response.add.x-é: \"x-é\" is not a header name",
        ),
        (
            json!({ "response": { "remove": ["x:y"] } }),
            "response.remove.x:y: \"x:y\" is not a header name",
        ),
        (
            json!({ "request": { "rename": { "x-a": "bad name" } } }),
            "request.rename.x-a: \"bad name\" is not a header name",
        ),
        (
            json!({ "request": { "set": { "x-a": "a\r\nx-injected: 1" } } }),
            "request.set.x-a: '\\r' cannot be in a header value",
        ),
        (
            json!({ "response": { "add": { "x-a": ["ok", "bad\u{0}"] } } }),
            "response.add.x-a: '\\0' cannot be in a header value",
        ),
        (
            json!({ "request": { "set": { "x-a": "{source.adress}" } } }),
            "request.set.x-a: unknown placeholder {source.adress}",
        ),
        (
            json!({ "request": { "set": { "x-a": "{route" } } }),
            "request.set.x-a: { without a closing }",
        ),
        (
            json!({ "request": { "set": { "x-a": "a}" } } }),
            "request.set.x-a: } without an opening {",
        ),
        (
            json!({ "request": { "set": { ":path": "/x" } } }),
            "request.set.:path: \":path\" is a pseudo-header",
        ),
        (
            json!({ "request": { "set": { "Host": "x" } } }),
            "request.set.Host: host is managed by Portico",
        ),
        (
            json!({ "response": { "remove": ["content-length"] } }),
            "response.remove.content-length: content-length is managed",
        ),
        (
            json!({ "response": { "rename": { "x-a": "transfer-encoding" } } }),
            "transfer-encoding is managed",
        ),
        (
            json!({ "request": { "set": { "x-a": "1", "X-A": "2" } } }),
            "set twice",
        ),
        (
            json!({ "request": { "rename": { "x-a": "X-A" } } }),
            "request.rename.x-a: renamed to itself",
        ),
        (
            json!({ "request": { "rename": { "x-a": "x-b", "x-b": "x-c" } } }),
            "request.rename.x-b: a header is renamed twice, or renamed and a rename's target",
        ),
        (
            json!({ "request": { "rename": { "x-a": "x-c", "x-b": "x-c" } } }),
            "request.rename.x-b: two headers renamed to x-c",
        ),
        (
            json!({ "request": { "set": { "x-a": ["1"] } } }),
            "request.set.x-a: invalid type: sequence",
        ),
        (
            json!({ "request": { "set": { "x-a": null } } }),
            "invalid type: null",
        ),
        (
            json!({ "request": { "set": ["x-a"] } }),
            "request.set: invalid type: sequence, expected a map",
        ),
        (
            json!({ "request": { "replace": {} } }),
            "unknown field `replace`",
        ),
        (json!({ "requests": {} }), "unknown field `requests`"),
    ];
    for (config, want) in cases {
        match Harness::<HeaderRewrite>::new(config.clone()) {
            Ok(_) => panic!("{config} was accepted"),
            Err(e) => assert!(
                e.to_string().contains(want),
                "{config}:\n  {e}\n  wanted {want}"
            ),
        }
    }
}
