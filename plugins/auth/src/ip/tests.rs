use super::*;
use crate::Auth;
use portico_plugin_sdk::testing::{Harness, Outcome};
use serde_json::{Value, json};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ranges_parse_and_match() {
    // (range, address, contained)
    let cases = [
        ("192.0.2.0/24", "192.0.2.0", true),
        ("192.0.2.0/24", "192.0.2.255", true),
        ("192.0.2.0/24", "192.0.3.0", false),
        ("192.0.2.7", "192.0.2.7", true),
        ("192.0.2.7", "192.0.2.8", false),
        ("192.0.2.7/32", "192.0.2.7", true),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("0.0.0.0/0", "2001:db8::1", false),
        ("10.1.2.3/8", "10.200.0.1", true),
        ("2001:db8::/32", "2001:db8:ffff::1", true),
        ("2001:db8::/32", "2001:db9::1", false),
        ("2001:DB8::/32", "2001:db8::1", true),
        ("::1", "::1", true),
        ("::/0", "::1", true),
        ("::/0", "127.0.0.1", false),
        // An IPv4-mapped range is the IPv4 range.
        ("::ffff:10.0.0.0/104", "10.9.8.7", true),
        ("::ffff:10.0.0.0/104", "11.0.0.1", false),
        (" 127.0.0.0/8 ", "127.0.0.1", true),
    ];
    for (range, addr, want) in cases {
        let cidr = Cidr::parse(range).unwrap_or_else(|e| panic!("{range}: {e}"));
        assert_eq!(cidr.contains(ip(addr)), want, "{range} contains {addr}");
    }
    assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(
        Cidr::parse("::ffff:10.0.0.0/104").unwrap().to_string(),
        "10.0.0.0/8"
    );
}

#[test]
fn bad_ranges_are_refused() {
    let cases = [
        ("10.0.0.0/33", "the prefix length must be 0 to 32"),
        ("2001:db8::/129", "the prefix length must be 0 to 128"),
        ("10.0.0.0/", "the prefix length"),
        ("10.0.0.0/-1", "the prefix length"),
        ("10.0.0.0/8/8", "the prefix length"),
        ("10.0.0/8", "\"10.0.0\" is not an IP address"),
        ("localhost", "is not an IP address"),
        ("", "is not an IP address"),
        ("10.0.0.0/8x", "the prefix length"),
    ];
    for (range, want) in cases {
        let err = Cidr::parse(range).unwrap_err();
        assert!(err.contains(want), "{range}: {err}");
    }
}

/// The spec of the method: (allow, deny, client address, allowed).
#[test]
fn deny_wins_and_an_allow_list_admits_only_itself() {
    let cases: &[(&[&str], &[&str], &str, bool)] = &[
        (&["10.0.0.0/8"], &[], "10.1.1.1", true),
        (&["10.0.0.0/8"], &[], "192.168.1.1", false),
        (&[], &["10.0.0.0/8"], "10.1.1.1", false),
        (&[], &["10.0.0.0/8"], "192.168.1.1", true),
        // Deny wins over allow, whatever the order or specificity.
        (&["10.0.0.0/8"], &["10.6.0.0/16"], "10.6.1.1", false),
        (&["10.6.0.0/16"], &["10.0.0.0/8"], "10.6.1.1", false),
        (&["10.0.0.0/8"], &["10.6.0.0/16"], "10.7.1.1", true),
        (&["127.0.0.1"], &[], "127.0.0.1", true),
        (&["127.0.0.1"], &[], "127.0.0.2", false),
        // IPv4-mapped clients (a dual-stack listener) are their IPv4 address.
        (&["127.0.0.0/8"], &[], "::ffff:127.0.0.1", true),
        (&[], &["127.0.0.0/8"], "::ffff:127.0.0.1", false),
        (&["::1"], &[], "::ffff:127.0.0.1", false),
        (&["2001:db8::/32"], &[], "2001:db8::5", true),
        (&["2001:db8::/32"], &[], "10.0.0.1", false),
    ];
    for (allow, deny, client, want) in cases {
        let m = Ip::new(Config {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap();
        assert_eq!(
            m.admits(ip(client)).is_ok(),
            *want,
            "allow {allow:?} deny {deny:?}: {client}"
        );
    }
}

fn harness(config: Value) -> Harness<Auth> {
    let mut config = config;
    config["type"] = json!("ip");
    Harness::<Auth>::new(config).unwrap()
}

#[test]
fn through_the_plugin_a_denied_client_gets_403_and_an_allowed_one_goes_on() {
    let h = harness(json!({ "allow": ["192.0.2.0/24", "::1"] }));
    // (source.address as the host gives it, allowed)
    let cases = [
        ("192.0.2.10:40000", true),
        ("[::ffff:192.0.2.10]:40000", true),
        ("198.51.100.1:40000", false),
        ("[2001:db8::1]:443", false),
    ];
    for (source, want) in cases {
        let outcome = h.request().source(source).on_request_headers();
        match outcome {
            Outcome::Continue => assert!(want, "{source} was let through"),
            Outcome::Respond(r) => {
                assert!(!want, "{source} was denied: {r:?}");
                assert_eq!(r.status, 403);
                assert_eq!(r.body, b"forbidden\n");
                assert!(r.details.contains("is in no allowed range"), "{r:?}");
            }
            Outcome::Pause => panic!("{source}: paused"),
        }
    }
}

#[test]
fn a_client_without_an_address_is_denied() {
    let h = harness(json!({ "deny": ["10.0.0.0/8"] }));
    for source in ["", "not-an-address"] {
        let Outcome::Respond(r) = h.request().source(source).on_request_headers() else {
            panic!("{source:?}: let through");
        };
        assert_eq!(r.status, 403, "{source:?}");
        assert!(r.details.contains("unknown"), "{r:?}");
    }
}

#[test]
fn configuration_errors_name_the_entry() {
    let cases = [
        (json!({}), "give an allow list, a deny list, or both"),
        (json!({ "allow": [], "deny": [] }), "give an allow list"),
        (
            json!({ "allow": ["10.0.0.0/8", "10.0.0.0/40"] }),
            "allow[1] (\"10.0.0.0/40\"): the prefix length must be 0 to 32",
        ),
        (
            json!({ "deny": ["bad"] }),
            "deny[0] (\"bad\"): \"bad\" is not an IP address",
        ),
        (json!({ "allow": "10.0.0.0/8" }), "invalid type"),
    ];
    for (mut config, want) in cases {
        config["type"] = json!("ip");
        let err = Harness::<Auth>::new(config.clone()).unwrap_err();
        assert!(err.to_string().contains(want), "{config}: {err}");
    }
}

#[test]
fn a_range_with_host_bits_is_accepted_with_a_warning() {
    let h = harness(json!({ "allow": ["10.1.2.3/8", "192.0.2.0/24"] }));
    assert!(
        h.logged("allow[0] (\"10.1.2.3/8\") has bits past its prefix: read as 10.0.0.0/8"),
        "{:?}",
        h.logs()
    );
    assert!(!h.logged("allow[1]"), "{:?}", h.logs());
    assert_eq!(
        h.request().source("10.200.0.1:1").on_request_headers(),
        Outcome::Continue
    );
}
