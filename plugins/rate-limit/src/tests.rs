//! The plugin through the SDK's mock host: one rule of the README per test.

use std::time::Duration;

use portico_plugin_sdk::LocalResponse;
use portico_plugin_sdk::testing::{Harness, Outcome, Request};
use serde_json::{Value, json};

use super::*;

fn plugin(config: Value) -> Harness<RateLimit> {
    Harness::new(config).unwrap_or_else(|e| panic!("refused: {e}"))
}

/// A request from `ip` run through the request phase: `None` when it passed, the local
/// response when it was answered.
fn from<'h>(
    h: &'h Harness<RateLimit>,
    ip: &str,
) -> (Request<'h, RateLimit>, Option<LocalResponse>) {
    let req = h.request().source(&format!("{ip}:40000"));
    let answer = match req.on_request_headers() {
        Outcome::Continue => None,
        Outcome::Respond(r) => Some(r),
        Outcome::Pause => panic!("the rate limiter never pauses"),
    };
    (req, answer)
}

/// How many of `n` requests from `ip` pass.
fn passes(h: &Harness<RateLimit>, ip: &str, n: usize) -> usize {
    (0..n).filter(|_| from(h, ip).1.is_none()).count()
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn exactly_burst_requests_pass_from_a_burst() {
    for burst in [1, 3, 20] {
        let h = plugin(json!({ "rate": 1, "per": "1h", "burst": burst }));
        assert_eq!(passes(&h, "192.0.2.1", 50), burst, "burst {burst}");
    }
}

#[test]
fn over_the_limit_is_429_with_retry_after() {
    let h = plugin(json!({ "rate": 1, "per": "1m", "burst": 1 }));
    assert!(from(&h, "192.0.2.1").1.is_none());
    let denied = from(&h, "192.0.2.1").1.expect("a 429");
    assert_eq!(denied.status, 429);
    assert_eq!(header(&denied, "retry-after"), Some("60"));
    assert_eq!(denied.body, b"too many requests\n");
    assert_eq!(header(&denied, "ratelimit-limit"), None, "headers are off");
}

#[test]
fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
    // (rate, per, seconds into the empty bucket, Retry-After)
    let cases = [
        (10, "1s", 0, "1"),
        (1, "1m", 0, "60"),
        (1, "1m", 30, "30"),
        (1, "1m", 59, "1"),
        (2, "3s", 0, "2"),
    ];
    for (rate, per, after, want) in cases {
        let h = plugin(json!({ "rate": rate, "per": per, "burst": 1 }));
        assert!(from(&h, "192.0.2.1").1.is_none());
        h.advance(Duration::from_secs(after));
        let denied = from(&h, "192.0.2.1").1.expect("a 429");
        assert_eq!(
            header(&denied, "retry-after"),
            Some(want),
            "{rate} per {per} +{after}s"
        );
    }
}

#[test]
fn the_bucket_refills_at_the_rate() {
    // 10 per second: one every 100 ms.
    let h = plugin(json!({ "rate": 10, "per": "1s", "burst": 2 }));
    assert_eq!(passes(&h, "192.0.2.1", 5), 2);
    h.advance(Duration::from_millis(99));
    assert_eq!(passes(&h, "192.0.2.1", 1), 0, "not quite one interval");
    h.advance(Duration::from_millis(1));
    assert_eq!(passes(&h, "192.0.2.1", 5), 1, "one interval: one request");
    h.advance(Duration::from_millis(250));
    assert_eq!(
        passes(&h, "192.0.2.1", 5),
        2,
        "2.5 intervals: two (the burst)"
    );
    h.advance(Duration::from_secs(3600));
    assert_eq!(passes(&h, "192.0.2.1", 5), 2, "idle: full, never fuller");
}

#[test]
fn two_clients_have_independent_buckets() {
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 2 }));
    assert_eq!(passes(&h, "192.0.2.1", 5), 2);
    assert_eq!(passes(&h, "192.0.2.2", 5), 2);
    assert_eq!(passes(&h, "2001:db8::1", 5), 2);
    assert_eq!(passes(&h, "192.0.2.1", 1), 0);
}

#[test]
fn header_keys_split_by_value_and_fall_back_to_the_client_ip() {
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 1, "key": "header:X-User" }));
    let with = |ip: &str, user: Option<&str>| {
        let mut req = h.request().source(&format!("{ip}:1"));
        if let Some(u) = user {
            req = req.header("x-user", u);
        }
        req.on_request_headers() == Outcome::Continue
    };
    assert!(with("192.0.2.1", Some("alice")));
    assert!(!with("192.0.2.1", Some("alice")));
    assert!(
        !with("192.0.2.9", Some("alice")),
        "the header, not the address"
    );
    assert!(with("192.0.2.1", Some("bob")));
    // Without the header (or with an empty one): the client's address.
    assert!(with("192.0.2.1", None));
    assert!(!with("192.0.2.1", Some("")));
    assert!(with("192.0.2.2", None));
    // A value that looks like an address is not that address's bucket.
    assert!(with("192.0.2.3", Some("ip=192.0.2.3")));
    assert!(with("192.0.2.3", None));
}

#[test]
fn route_keys_share_a_bucket_per_route() {
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 1, "key": "route" }));
    let on = |route: &str, ip: &str| {
        h.request()
            .source(&format!("{ip}:1"))
            .property("route_name", route.as_bytes())
            .on_request_headers()
            == Outcome::Continue
    };
    assert!(on("api", "192.0.2.1"));
    assert!(!on("api", "192.0.2.2"), "every client of the route");
    assert!(on("web", "192.0.2.1"));
}

#[test]
fn combined_keys_split_by_every_part() {
    let h = plugin(json!({
        "rate": 1, "per": "1h", "burst": 1, "key": ["route", "client_ip"]
    }));
    let on = |route: &str, ip: &str| {
        h.request()
            .source(&format!("{ip}:1"))
            .property("route_name", route.as_bytes())
            .on_request_headers()
            == Outcome::Continue
    };
    assert!(on("api", "192.0.2.1"));
    assert!(!on("api", "192.0.2.1"));
    assert!(on("api", "192.0.2.2"));
    assert!(on("web", "192.0.2.1"));
}

#[test]
fn quota_headers_on_every_response_when_asked() {
    let h = plugin(json!({ "rate": 1, "per": "10s", "burst": 3, "headers": true }));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (req, answer) = from(&h, "192.0.2.1");
        assert!(answer.is_none());
        assert_eq!(req.on_response_headers(200, &[]), Outcome::Continue);
        seen.push(
            ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
                .map(|n| req.response_header(n).unwrap_or_default()),
        );
    }
    assert_eq!(
        seen,
        [["3", "2", "10"], ["3", "1", "20"], ["3", "0", "30"]].map(|r| r.map(String::from))
    );

    // The 429 carries them too, with Retry-After, and passing back through the response
    // phase (as the host does with a local response) does not repeat them.
    let (req, answer) = from(&h, "192.0.2.1");
    let denied = answer.expect("a 429");
    assert_eq!(header(&denied, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&denied, "ratelimit-reset"), Some("30"));
    assert_eq!(header(&denied, "retry-after"), Some("10"));
    let local: Vec<(&str, &str)> = denied
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(req.on_response_headers(429, &local), Outcome::Continue);
    let names: Vec<String> = req.response_headers().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names.iter().filter(|n| *n == "ratelimit-limit").count(), 1);

    // An upstream's own values are replaced.
    let (req, _) = from(&h, "192.0.2.2");
    req.on_response_headers(200, &[("ratelimit-limit", "1000")]);
    assert_eq!(req.response_header("ratelimit-limit").as_deref(), Some("3"));
}

#[test]
fn no_quota_headers_unless_asked() {
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 1 }));
    let (req, _) = from(&h, "192.0.2.1");
    req.on_response_headers(200, &[]);
    assert_eq!(req.response_header("ratelimit-remaining"), None);
}

#[test]
fn defaults_are_a_bucket_of_rate_per_second_per_client_ip() {
    let h = plugin(json!({ "rate": 4 }));
    assert_eq!(passes(&h, "192.0.2.1", 10), 4);
    assert_eq!(passes(&h, "192.0.2.2", 10), 4);
    h.advance(Duration::from_millis(250));
    assert_eq!(passes(&h, "192.0.2.1", 10), 1);
    // A client's connections share its bucket, whatever their ports; IPv6 clients too.
    h.advance(Duration::from_millis(250));
    let from_port = |port: u16| {
        h.request()
            .source(&format!("192.0.2.1:{port}"))
            .on_request_headers()
    };
    assert_eq!(from_port(1), Outcome::Continue);
    assert!(matches!(from_port(2), Outcome::Respond(r) if r.status == 429));
    let v6 = |port: u16| {
        h.request()
            .source(&format!("[2001:db8::1]:{port}"))
            .on_request_headers()
    };
    assert_eq!((0..10).filter(|&p| v6(p) == Outcome::Continue).count(), 4);
}

#[test]
fn idle_keys_expire_so_a_flood_leaves_nothing_behind() {
    let h = plugin(json!({ "rate": 1, "per": "1s", "burst": 5 }));
    assert_eq!(h.tick_period(), Some(SWEEP_PERIOD));
    for i in 0..3_000u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        assert!(from(&h, &ip).1.is_none());
    }
    let entries = || -> usize {
        (0..table::SHARDS)
            .filter_map(|i| h.shared(&table::shard_name(i)))
            .map(|v| table::Shard::decode(&v).map_or(0, |s| s.len()))
            .sum()
    };
    assert_eq!(entries(), 3_000);
    assert_eq!(
        h.shared_len(),
        table::SHARDS as usize + 1,
        "one value per shard and the salt, never more"
    );
    // One second later every bucket is full again; the ticks sweep them all out.
    h.advance(Duration::from_secs(1));
    for _ in 0..table::SHARDS / SWEEP_SHARDS {
        h.tick();
    }
    assert_eq!(entries(), 0);
}

#[test]
fn the_salt_of_the_key_hashes_is_kept_in_shared_data() {
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 1, "key": "header:x-key" }));
    let salt = h.shared(table::SALT_KEY).expect("a salt in shared data");
    assert_eq!(salt.len(), 32);
    // Long keys are hashed with it: two that differ only at the end have their own buckets.
    let long = |last: &str| format!("{}{last}", "k".repeat(100));
    for value in [long("a"), long("b")] {
        let req = || h.request().header("x-key", &value).on_request_headers();
        assert_eq!(req(), Outcome::Continue);
        assert!(matches!(req(), Outcome::Respond(r) if r.status == 429));
    }
    // Ticks read it again and keep it.
    h.tick();
    assert_eq!(h.shared(table::SALT_KEY), Some(salt));
    assert!(matches!(
        h.request().header("x-key", &long("a")).on_request_headers(),
        Outcome::Respond(r) if r.status == 429
    ));
}

#[test]
fn requests_are_counted_in_metrics() {
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 2 }));
    passes(&h, "192.0.2.1", 5);
    assert_eq!(h.metric(metric::ALLOWED), Some(2));
    assert_eq!(h.metric(metric::LIMITED), Some(3));
}

#[test]
fn odd_keys_never_fail_a_request() {
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 1, "key": "header:x-key" }));
    let long = "k".repeat(8_000);
    let odd = ["\u{1f}", "\t", "é", long.as_str()];
    for value in odd {
        assert_eq!(
            h.request().header("x-key", value).on_request_headers(),
            Outcome::Continue,
            "{value:?}"
        );
    }
    // No client address at all: one bucket for all such requests.
    let h = plugin(json!({ "rate": 1, "per": "1h", "burst": 1 }));
    let anonymous = || {
        h.request()
            .property("source.address", b"")
            .on_request_headers()
    };
    assert_eq!(anonymous(), Outcome::Continue);
    assert!(matches!(anonymous(), Outcome::Respond(r) if r.status == 429));
}

#[test]
fn invalid_configurations_are_refused_naming_the_key() {
    let cases = [
        (json!({}), "missing field `rate`"),
        (json!({ "rate": 0 }), "rate: must be at least 1"),
        (json!({ "rate": -1 }), "rate: invalid value"),
        (json!({ "rate": 1.5 }), "rate: invalid type"),
        (
            json!({ "rate": 1, "burst": 0 }),
            "burst: must be at least 1",
        ),
        (json!({ "rate": 1, "per": "0" }), "per: must be more than 0"),
        (json!({ "rate": 1, "per": 0 }), "per: must be more than 0"),
        (
            json!({ "rate": 1, "per": "10" }),
            "per: duration \"10\" has no unit",
        ),
        (
            json!({ "rate": 1, "per": 10 }),
            "per: duration 10 has no unit",
        ),
        (json!({ "rate": 1, "per": "1d" }), "per: duration \"1d\""),
        (
            json!({ "rate": 1, "per": "-1s" }),
            "per: duration \"-1s\" is negative",
        ),
        (json!({ "rate": 1, "key": "ip" }), "key: unknown key \"ip\""),
        (
            json!({ "rate": 1, "key": [] }),
            "key: name at least one part",
        ),
        (
            json!({ "rate": 1, "key": ["route", "header:a b"] }),
            "key[1]: \"a b\" is not a header name",
        ),
        (
            json!({ "rate": 1, "key": ["route", "route"] }),
            "key[1]: \"route\" is named twice",
        ),
        (json!({ "rate": 1, "key": 7 }), "key: invalid type"),
        (
            json!({ "rate": 1, "headers": "yes" }),
            "headers: invalid type",
        ),
        (json!({ "rate": 1, "burts": 5 }), "unknown field `burts`"),
        (
            json!({ "rate": 2_000_000_000, "per": "1s" }),
            "more than one request per nanosecond",
        ),
    ];
    for (config, want) in cases {
        match Harness::<RateLimit>::new(config.clone()) {
            Ok(_) => panic!("{config} was accepted"),
            Err(e) => assert!(e.to_string().contains(want), "{config}: {e}"),
        }
    }
}

#[test]
fn the_client_key_is_the_ip_without_the_port() {
    assert_eq!(ip_part("192.0.2.7:40000"), "192.0.2.7");
    assert_eq!(ip_part("[2001:db8::1]:443"), "2001:db8::1");
    assert_eq!(ip_part("2001:db8::1"), "2001:db8::1");
    assert_eq!(ip_part("::1"), "::1");
    assert_eq!(ip_part("192.0.2.7"), "192.0.2.7");
}
