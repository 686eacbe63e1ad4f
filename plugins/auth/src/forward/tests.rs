use portico_plugin_sdk::testing::{Harness, Outcome, SentCallout};
use serde_json::{Value, json};

use crate::Auth;

fn harness(extra: Value) -> Harness<Auth> {
    let mut config = json!({
        "type": "forward",
        "upstream": "auth",
        "path": "/check?app=shop",
        "response_headers": ["x-user", "x-groups"],
        "timeout": "250ms",
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Harness::<Auth>::new(config).unwrap()
}

fn only_callout(h: &Harness<Auth>) -> SentCallout {
    let callouts = h.callouts();
    assert_eq!(callouts.len(), 1, "{callouts:?}");
    callouts.into_iter().next().unwrap()
}

#[test]
fn the_check_describes_the_request_and_carries_the_configured_headers() {
    let h = harness(json!({}));
    let req = h
        .request()
        .method("POST")
        .path("/orders?id=7")
        .authority("shop.example")
        .source("203.0.113.5:4000")
        .header("authorization", "Bearer abc")
        .header("cookie", "session=s1")
        .header("x-other", "not sent");
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    let call = only_callout(&h);
    assert_eq!(call.upstream, "auth");
    assert_eq!(call.timeout_ms, 250);
    let expected = [
        (":method", Some("GET")),
        (":path", Some("/check?app=shop")),
        ("x-forwarded-method", Some("POST")),
        ("x-forwarded-uri", Some("/orders?id=7")),
        ("x-forwarded-host", Some("shop.example")),
        ("x-forwarded-proto", Some("http")),
        ("x-forwarded-for", Some("203.0.113.5")),
        ("authorization", Some("Bearer abc")),
        ("cookie", Some("session=s1")),
        ("x-other", None),
    ];
    for (name, value) in expected {
        assert_eq!(call.header(name), value, "{name}");
    }
    assert!(call.body.is_empty());
}

#[test]
fn a_2xx_answer_lets_the_request_on_with_the_answer_headers_copied() {
    let h = harness(json!({}));
    for status in [200, 204, 299] {
        let req = h
            .request()
            .header("x-user", "forged")
            .header("x-groups", "admins");
        assert_eq!(req.on_request_headers(), Outcome::Pause);
        let call = only_callout(&h);
        h.answer_callout(
            call.token,
            status,
            &[
                ("x-user", "alice"),
                ("x-secret", "kept back"),
                ("set-cookie", "a=1"),
            ],
            b"",
        );
        assert!(req.resumed(), "{status}: not resumed");
        assert_eq!(req.local_response(), None, "{status}");
        // Copied when the answer has it; a client's copy is removed either way.
        assert_eq!(req.request_header_values("x-user"), ["alice"], "{status}");
        assert_eq!(req.request_header("x-groups"), None, "{status}");
        assert_eq!(req.request_header("x-secret"), None, "{status}");
    }
    assert_eq!(h.metric("allowed"), Some(3));
}

#[test]
fn any_other_answer_goes_to_the_client_with_its_status_body_and_headers() {
    let h = harness(json!({}));
    type Headers<'a> = &'a [(&'a str, &'a str)];
    // (status, answer headers, what the client gets besides the status and body)
    let cases: &[(u16, Headers, Headers)] = &[
        (
            401,
            &[
                ("www-authenticate", "Bearer realm=\"sso\""),
                ("x-internal", "no"),
            ],
            &[("www-authenticate", "Bearer realm=\"sso\"")],
        ),
        (
            302,
            &[
                ("location", "https://sso.example/login"),
                ("set-cookie", "state=xyz"),
            ],
            &[
                ("location", "https://sso.example/login"),
                ("set-cookie", "state=xyz"),
            ],
        ),
        (
            403,
            &[("content-type", "application/json")],
            &[("content-type", "application/json")],
        ),
        (429, &[("retry-after", "3")], &[("retry-after", "3")]),
        (500, &[], &[]),
    ];
    for (status, answer, want) in cases {
        let req = h.request();
        assert_eq!(req.on_request_headers(), Outcome::Pause);
        let call = only_callout(&h);
        h.answer_callout(call.token, *status, answer, b"{\"error\":\"nope\"}");
        let r = req
            .local_response()
            .unwrap_or_else(|| panic!("{status}: let through"));
        assert!(!req.resumed(), "{status}: resumed");
        assert_eq!(r.status, *status);
        assert_eq!(r.body, b"{\"error\":\"nope\"}");
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(r.headers, want, "{status}");
    }
    assert_eq!(h.metric("denied"), Some(5));
}

#[test]
fn no_answer_denies_with_403_or_the_configured_status() {
    for (extra, status) in [(json!({}), 403), (json!({ "failure_status": 503 }), 503)] {
        let h = harness(extra);
        let req = h.request().header("authorization", "Bearer abc");
        assert_eq!(req.on_request_headers(), Outcome::Pause);
        // A failed callout (timeout, connection refused) arrives with status 0, no headers.
        h.answer_callout(only_callout(&h).token, 0, &[], b"");
        let r = req.local_response().expect("denied");
        assert_eq!(r.status, status);
        assert_eq!(r.body, b"access denied\n");
        assert!(!req.resumed());
        assert!(
            h.logged("no answer from upstream \"auth\""),
            "{:?}",
            h.logs()
        );
    }
}

#[test]
fn configuration_errors_are_refused() {
    let cases: &[(Value, &str)] = &[
        (json!({}), "missing field `upstream`"),
        (json!({ "upstream": "" }), "upstream is empty"),
        (
            json!({ "upstream": "a", "path": "check" }),
            "path \"check\" must start with /",
        ),
        (
            json!({ "upstream": "a", "timeout": "0s" }),
            "timeout must be more than 0",
        ),
        (json!({ "upstream": "a", "timeout": "2m" }), "at most 60s"),
        (json!({ "upstream": "a", "timeout": 1000 }), "invalid type"),
        (
            json!({ "upstream": "a", "timeout": "soon" }),
            "timeout: \"soon\" is not a duration",
        ),
        (
            json!({ "upstream": "a", "failure_status": 200 }),
            "failure_status must be 400 to 599",
        ),
        (
            json!({ "upstream": "a", "request_headers": ["ok", "not ok"] }),
            "request_headers[1]: \"not ok\" is not a header name",
        ),
        (
            json!({ "upstream": "a", "request_headers": ["X-Forwarded-For"] }),
            "request_headers[0]: the plugin sets x-forwarded-for itself",
        ),
        (
            json!({ "upstream": "a", "response_headers": [":path"] }),
            "response_headers[0]: \":path\" is not a header name",
        ),
    ];
    for (config, want) in cases {
        let mut config = config.clone();
        config["type"] = json!("forward");
        let err = Harness::<Auth>::new(config.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{config}:\n  {err}\n  wanted {want}");
    }
}

#[test]
fn defaults_send_authorization_and_cookie_to_the_root_path() {
    let h = Harness::<Auth>::new(json!({ "type": "forward", "upstream": "auth" })).unwrap();
    let req = h
        .request()
        .header("authorization", "Basic x")
        .header("cookie", "a=b");
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    let call = only_callout(&h);
    assert_eq!(call.header(":path"), Some("/"));
    assert_eq!(call.timeout_ms, 1000);
    assert_eq!(call.header("authorization"), Some("Basic x"));
    assert_eq!(call.header("cookie"), Some("a=b"));
}
