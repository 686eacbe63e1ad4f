//! The SDK's API through its own test harness: the probe plugin (plugin-sdk/examples/probe.rs)
//! on the mock host. tests/e2e/sdk.rs runs the same plugin, compiled to Wasm, in Portico.

#[path = "../examples/probe.rs"]
#[allow(dead_code)]
mod probe;

use portico_plugin_sdk::testing::{Harness, Outcome};
use probe::Probe;
use serde_json::json;

#[test]
fn a_body_hook_buffers_then_rewrites_the_whole_body() {
    let h = Harness::<Probe>::new(json!({ "uppercase_body": true })).unwrap();
    let req = h.request().method("POST");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.on_request_body(b"hello ", false), Outcome::Pause);
    assert_eq!(req.on_request_body(b"world", true), Outcome::Continue);
    assert_eq!(req.request_body(), b"HELLO WORLD");
}

#[test]
fn counters_count_with_portico_and_fall_back_elsewhere() {
    // One harness at a time per thread: each is made when the last is done.
    for portico in [true, false] {
        let h = if portico {
            Harness::<Probe>::new(json!(null)).unwrap()
        } else {
            Harness::<Probe>::in_other_host(json!(null)).unwrap()
        };
        for n in 1..=3 {
            let req = h.request().header("x-probe", "counter");
            assert_eq!(req.on_request_headers(), Outcome::Continue);
            assert_eq!(req.request_header("x-count"), Some(n.to_string()));
        }
    }
    // The fallback kept its count in shared data; Portico's counter did not touch it.
    let other = Harness::<Probe>::in_other_host(json!(null)).unwrap();
    other
        .request()
        .header("x-probe", "counter")
        .on_request_headers();
    assert!(other.shared("portico.counter.hits").is_some());
    let portico = Harness::<Probe>::new(json!(null)).unwrap();
    portico
        .request()
        .header("x-probe", "counter")
        .on_request_headers();
    assert!(portico.shared("portico.counter.hits").is_none());
}

#[test]
fn invalid_header_names_and_values_are_errors_not_silence() {
    let h = Harness::<Probe>::new(json!(null)).unwrap();
    let req = h.request().header("x-probe", "bad-header");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.request_header("x-errors").as_deref(), Some("true true"));
    assert_eq!(req.request_header("x-ok"), None);
}

#[test]
fn without_a_verifier_signatures_are_unsupported_never_a_trap() {
    let h = Harness::<Probe>::in_other_host(json!(null)).unwrap();
    let req = h.request().header("x-probe", "crypto");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    // Without the in-guest fallback: an error that says so. With it (the workspace's plugins
    // turn the feature on for their tests): the guest checks, and a zero signature is invalid.
    let expected = if cfg!(feature = "crypto-fallback") {
        "fallback says valid=false"
    } else {
        "unsupported=true"
    };
    assert_eq!(req.request_header("x-crypto").as_deref(), Some(expected));
    assert_eq!(
        req.request_header("x-crypto-mismatch").as_deref(),
        Some("false")
    );
}

#[test]
fn typed_properties_read_envoy_encodings() {
    let h = Harness::<Probe>::new(json!(null)).unwrap();
    let req = h
        .request()
        .header("x-probe", "properties")
        .property("source.port", &50000i64.to_le_bytes())
        .property("connection.mtls", &[1]);
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(
        req.request_header("x-props").as_deref(),
        Some("Some(50000) Some(true)")
    );
    assert_eq!(
        req.property_value("probe.mark").as_deref(),
        Some(&b"set"[..])
    );

    // A property of the wrong width is an error (the hook's Err fails the request with 500).
    let bad = h
        .request()
        .header("x-probe", "properties")
        .property("source.port", b"80");
    assert!(matches!(bad.on_request_headers(), Outcome::Respond(r) if r.status == 500));
}

#[test]
fn queues_shared_data_and_metrics() {
    let h = Harness::<Probe>::new(json!(null)).unwrap();
    let req = h.request().header("x-probe", "queue");
    req.on_request_headers();
    assert_eq!(req.request_header("x-queue").as_deref(), Some("one"));

    for n in 1..=2 {
        let req = h.request().header("x-probe", "shared");
        req.on_request_headers();
        assert_eq!(req.request_header("x-shared"), Some(n.to_string()));
    }

    h.request()
        .header("x-probe", "metrics")
        .on_request_headers();
    assert_eq!(h.metric("probe_gauge"), Some(5));
    assert_eq!(h.metric("probe_histogram"), Some(42));
}

#[test]
fn unknown_configuration_keys_are_refused_by_the_sdk() {
    let err = Harness::<Probe>::new(json!({ "uppercase_bdy": true })).unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(
        err.to_string().contains("unknown key `uppercase_bdy`"),
        "{err}"
    );
    let err = Harness::<Probe>::new(json!({ "uppercase_body": "yes" })).unwrap_err();
    assert!(err.to_string().contains("uppercase_body"), "{err}");
}
