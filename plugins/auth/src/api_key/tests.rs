use portico_plugin_sdk::testing::{Harness, Outcome};
use serde_json::{Value, json};

use crate::Auth;

// sha256 of "k-ci-123", "k-ops-456" and "a key+with/slash".
const CI: &str = "c68b8116f97059004722dc78a7db0f09fabb66bb74b09fc7694d1c4030d99d07";
const OPS: &str = "12790D72E837FFFFD746CA71FF71FBCDA970475686054F579B48F5000C5F392E";
const ODD: &str = "d593e8d5adbbea92a8771e9baffd309ca4ebf556e77cd770dc485bf7f6891bb8";

fn harness(extra: Value) -> Harness<Auth> {
    let mut config = json!({
        "type": "api_key",
        "keys": [
            { "name": "ci", "sha256": CI },
            { "name": "ops team", "sha256": OPS },
            { "name": "odd", "sha256": ODD },
        ],
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Harness::<Auth>::new(config).unwrap()
}

fn assert_denied(outcome: Outcome, status: u16, challenge: &str, what: &str) {
    let Outcome::Respond(r) = outcome else {
        panic!("{what}: let through ({outcome:?})");
    };
    assert_eq!(r.status, status, "{what}");
    if status == 401 {
        let got = r.headers.iter().find(|(k, _)| k == "www-authenticate");
        assert_eq!(got.map(|(_, v)| v.as_str()), Some(challenge), "{what}");
    }
}

#[test]
fn a_known_key_in_the_header_passes_and_others_get_401() {
    let h = harness(json!({}));
    // (x-api-key value, the key's name when it passes)
    let cases = [
        (Some("k-ci-123"), Some("ci")),
        (Some("k-ops-456"), Some("ops team")),
        (Some("k-ci-124"), None),
        (Some("k-ci-123 "), None),
        (Some("K-CI-123"), None),
        (Some(""), None),
        (Some(CI), None),
        (Some("k-ci-123,k-ops-456"), None),
        (None, None),
    ];
    for (key, name) in cases {
        let mut req = h.request();
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let outcome = req.on_request_headers();
        match name {
            Some(name) => {
                assert_eq!(outcome, Outcome::Continue, "{key:?}");
                assert_eq!(req.request_header("x-api-key-name").as_deref(), Some(name));
                assert_eq!(
                    req.request_header("x-api-key"),
                    None,
                    "the key went upstream"
                );
            }
            None => assert_denied(
                outcome,
                401,
                "ApiKey header=\"x-api-key\"",
                &format!("{key:?}"),
            ),
        }
    }
}

#[test]
fn the_header_name_and_name_header_are_configurable_and_stripping_can_be_off() {
    let h = harness(
        json!({ "header": "Authorization-Key", "name_header": "X-Client", "strip": false }),
    );
    let req = h
        .request()
        .header("authorization-key", "k-ci-123")
        .header("x-client", "forged");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.request_header_values("x-client"), ["ci"]);
    assert_eq!(
        req.request_header("authorization-key").as_deref(),
        Some("k-ci-123")
    );
    assert_denied(
        h.request()
            .header("x-api-key", "k-ci-123")
            .on_request_headers(),
        401,
        "ApiKey header=\"authorization-key\"",
        "the default header is not read",
    );

    let h = harness(json!({ "name_header": null }));
    let req = h.request().header("x-api-key", "k-ci-123");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.request_header("x-api-key-name"), None);
}

#[test]
fn a_key_in_the_query_passes_and_is_stripped_from_the_path() {
    let h = harness(json!({ "query": "api_key" }));
    // (path, the path upstream, or None for a denial with its status)
    let cases: &[(&str, Result<&str, u16>)] = &[
        ("/v1/items?api_key=k-ci-123", Ok("/v1/items")),
        (
            "/v1/items?a=1&api_key=k-ops-456&b=2",
            Ok("/v1/items?a=1&b=2"),
        ),
        ("/v1?api_key=a+key%2Bwith%2Fslash", Ok("/v1")),
        ("/v1?api%5Fkey=k-ci-123", Ok("/v1")),
        ("/v1?api_key=wrong", Err(401)),
        ("/v1?api_key=", Err(401)),
        ("/v1?other=k-ci-123", Err(401)),
        ("/v1", Err(401)),
        ("/v1?api_key=k-ci-123&api_key=k-ci-123", Err(400)),
    ];
    for (path, want) in cases {
        let req = h.request().path(path).header("x-api-key", "k-ci-123");
        let outcome = req.on_request_headers();
        match want {
            Ok(upstream) => {
                assert_eq!(outcome, Outcome::Continue, "{path}");
                assert_eq!(
                    req.request_header(":path").as_deref(),
                    Some(*upstream),
                    "{path}"
                );
            }
            Err(status) => assert_denied(outcome, *status, "ApiKey query=\"api_key\"", path),
        }
    }

    let h = harness(json!({ "query": "api_key", "strip": false }));
    let req = h.request().path("/v1?api_key=k-ci-123");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(
        req.request_header(":path").as_deref(),
        Some("/v1?api_key=k-ci-123")
    );
}

#[test]
fn configuration_errors_name_the_entry() {
    let key = |name: &str, sha256: &str| json!({ "name": name, "sha256": sha256 });
    let cases: &[(Value, &str)] = &[
        (
            json!({ "keys": [key("ci", "abc")] }),
            "keys[0] (\"ci\"): sha256 is not 64 hex digits",
        ),
        (
            json!({ "keys": [key("ci", CI), key("ops", &CI.replace('c', "x"))] }),
            "keys[1] (\"ops\"): sha256 is not 64 hex digits",
        ),
        (
            json!({ "keys": [key("ci", CI), key("ci", OPS)] }),
            "keys[1] (\"ci\"): a second key with that name",
        ),
        (
            json!({ "keys": [key("ci", CI), key("ci2", &CI.to_uppercase())] }),
            "keys[1] (\"ci2\"): the same key as an earlier entry",
        ),
        (
            json!({ "keys": [key("", CI)] }),
            "keys[0] (\"\"): a name is printable ASCII",
        ),
        (
            json!({ "keys": [key("a\nb", CI)] }),
            "a name is printable ASCII",
        ),
        (json!({ "keys": [] }), "keys is empty"),
        (json!({}), "missing field `keys`"),
        (
            json!({ "keys": [key("ci", CI)], "header": "x-key", "query": "key" }),
            "give header or query, not both",
        ),
        (
            json!({ "keys": [key("ci", CI)], "query": "" }),
            "query is empty",
        ),
        (
            json!({ "keys": [key("ci", CI)], "header": "bad header" }),
            "header: \"bad header\" is not a header name",
        ),
        (
            json!({ "keys": [key("ci", CI)], "name_header": "" }),
            "name_header: \"\" is not a header name",
        ),
        (
            json!({ "keys": [{ "name": "ci", "sha256": CI, "key": "plain" }] }),
            "unknown field `key`",
        ),
    ];
    for (config, want) in cases {
        let mut config = config.clone();
        config["type"] = json!("api_key");
        let err = Harness::<Auth>::new(config.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{config}:\n  {err}\n  wanted {want}");
    }
}
