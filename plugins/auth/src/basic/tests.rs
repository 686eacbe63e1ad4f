use std::cell::RefCell;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use portico_plugin_sdk::testing::{Harness, Outcome, Request};
use serde_json::{Value, json};

use super::*;
use crate::Auth;

// Hashes made by the usual tools, not by the crates under test: `htpasswd -bnBC 4 NAME PW`
// (bcrypt, cost 4 to keep the tests fast) and `openssl passwd -5|-6 -salt ... PW`.
const ALICE: &str = "alice:$2y$04$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHGO"; // wonderland
const BOB: &str = "bob:$2b$05$EWoxx/MM9uKRG2OQmRLHxOCc2e.NgrrfkVdTZwas0qEWXi6DGH1MO"; // builder
const ERIN: &str = "erin:$2a$04$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHGO"; // wonderland
const CAROL: &str = "carol:$5$rounds=1000$carolsalt$kWQNWRHnPNUHMwa4wgw9u33hqxjpazuLHFL5PtzhN55"; // sha256 pass
const DAVE: &str = "dave:$6$abcdefgh$LXshl1mbTFG0r5cuODMCBhxKBlvExt6Nh/PRtr4IFNN5HcWgD5TLZ5pex7Hhp6uD5aBLvBENKmAvSzWZS6Cak1"; // p@ss:w0rd
const ZOE: &str = "zoë:$2y$04$o0DpGwppRvTnOI4iuzQ1eeEHC5iieEJR3wVCrQGRuDc5teCVojk5K"; // pässword
const FRANK: &str = "frank:$2y$05$D2v4HAeq119XZKO/Z.xjTOuLxrOPu3b8v4mxxZ1s5i6sEwI6hEFKi"; // frankpw
const GRACE: &str = "grace:$2y$05$.YodcpTP2GhXQ1/G0fWPY.b0EQOwO9dMXsAMrqZJfGU90ONzR.gyG"; // gracepw
const HEIDI: &str = "heidi:$6$heidisalt$CSX0vA51Rs/LZIzN96YcQ73Y5VCinFtrNbfcoA07Ls1E4ikoR0eGeiB889v9nDn66sx5TTlPsDuVsIxdQxI2A0"; // heidipw
const IVAN: &str = "ivan:$5$ivansalt$EDCM3Y3svEUpwRXQFD5KdUBIurfLKcA93pdmPqs1aSA"; // ivanpw

thread_local! {
    /// Every hash verified on this thread, in order (pushed by `Basic::verify_password`).
    pub(super) static VERIFIED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The hash the last verification used.
fn last_verified() -> String {
    VERIFIED.with_borrow(|v| v.last().cloned().expect("a verification"))
}

fn hash_of(line: &str) -> &str {
    line.split_once(':').unwrap().1
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn harness(extra: Value) -> Harness<Auth> {
    let mut config = json!({
        "type": "basic",
        "realm": "test",
        "users": [ALICE, BOB, ERIN, CAROL, DAVE, ZOE],
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    Harness::<Auth>::new(config).unwrap()
}

fn with_authorization<'h>(h: &'h Harness<Auth>, value: &str) -> Request<'h, Auth> {
    h.request().header("authorization", value)
}

fn assert_challenged(outcome: Outcome, what: &str) {
    let Outcome::Respond(r) = outcome else {
        panic!("{what}: not challenged but {outcome:?}");
    };
    assert_eq!(r.status, 401, "{what}");
    assert_eq!(
        r.headers,
        [
            (
                "www-authenticate".to_string(),
                "Basic realm=\"test\", charset=\"UTF-8\"".to_string()
            ),
            (
                "content-type".to_string(),
                "text/plain; charset=utf-8".to_string()
            ),
        ],
        "{what}"
    );
    assert_eq!(r.body, b"unauthorized\n", "{what}");
}

#[test]
fn every_supported_hash_admits_its_password_and_refuses_another() {
    let h = harness(json!({}));
    // (user, password, admitted)
    let cases = [
        ("alice", "wonderland", true),
        ("alice", "Wonderland", false),
        ("alice", "wonderlan", false),
        ("alice", "", false),
        ("bob", "builder", true),
        ("bob", "wonderland", false),
        ("erin", "wonderland", true),
        ("carol", "sha256 pass", true),
        ("carol", "sha256 pas", false),
        ("dave", "p@ss:w0rd", true),
        ("dave", "p@ss", false),
        ("zoë", "pässword", true),
        ("zoë", "password", false),
        ("mallory", "wonderland", false),
        ("", "wonderland", false),
        ("Alice", "wonderland", false),
    ];
    for (user, password, admitted) in cases {
        let what = format!("{user}:{password}");
        let req = with_authorization(&h, &basic(user, password));
        let outcome = req.on_request_headers();
        if admitted {
            assert_eq!(outcome, Outcome::Continue, "{what}");
            assert_eq!(req.request_header("x-auth-user").as_deref(), Some(user));
        } else {
            assert_challenged(outcome, &what);
        }
    }
}

#[test]
fn malformed_or_missing_credentials_are_challenged_never_a_panic() {
    let h = harness(json!({}));
    let long_password = "p".repeat(MAX_PASSWORD + 1);
    let too_long = format!("Basic {}", "A".repeat(MAX_AUTHORIZATION));
    let not_utf8 = format!("Basic {}", STANDARD.encode(b"alice:\xff\xfe"));
    let cases = [
        ("", "empty"),
        ("Basic", "no token"),
        ("Basic ", "empty token"),
        ("Basic !!!!", "not base64"),
        ("Basic YWxpY2U=", "no colon"),
        ("Bearer YWxpY2U6d29uZGVybGFuZA==", "another scheme"),
        ("YWxpY2U6d29uZGVybGFuZA==", "no scheme"),
        ("Basic YWxpY2U6d29uZGVybGFuZA== extra", "trailing garbage"),
        (too_long.as_str(), "over MAX_AUTHORIZATION"),
        (not_utf8.as_str(), "a password that is not UTF-8"),
    ];
    for (value, what) in cases {
        assert_challenged(with_authorization(&h, value).on_request_headers(), what);
    }
    assert_challenged(h.request().on_request_headers(), "no header");
    assert_challenged(
        with_authorization(&h, &basic("alice", &long_password)).on_request_headers(),
        "a password over MAX_PASSWORD",
    );
}

#[test]
fn the_scheme_is_case_insensitive_and_padding_optional() {
    let h = harness(json!({}));
    let token = STANDARD_NO_PAD.encode("alice:wonderland");
    for value in [
        format!("basic {token}"),
        format!("BASIC {token}"),
        format!("Basic  {token}  "),
        basic("alice", "wonderland"),
    ] {
        assert_eq!(
            with_authorization(&h, &value).on_request_headers(),
            Outcome::Continue,
            "{value}"
        );
    }
}

#[test]
fn the_user_goes_upstream_and_the_password_does_not() {
    let h = harness(json!({}));
    let req = with_authorization(&h, &basic("alice", "wonderland")).header("x-auth-user", "root");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.request_header_values("x-auth-user"), ["alice"]);
    assert_eq!(req.request_header("authorization"), None);
}

#[test]
fn the_user_header_and_credential_forwarding_are_configurable() {
    let h = harness(json!({ "user_header": "X-Remote-User", "forward_credentials": true }));
    let value = basic("bob", "builder");
    let req = with_authorization(&h, &value);
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.request_header("x-remote-user").as_deref(), Some("bob"));
    assert_eq!(req.request_header("x-auth-user"), None);
    assert_eq!(req.request_header("authorization"), Some(value));

    let h = harness(json!({ "user_header": null }));
    let req = with_authorization(&h, &basic("bob", "builder")).header("x-auth-user", "client");
    assert_eq!(req.on_request_headers(), Outcome::Continue);
    assert_eq!(req.request_header("x-auth-user").as_deref(), Some("client"));
}

#[test]
fn a_repeated_success_is_served_from_the_cache() {
    let h = harness(json!({}));
    let value = basic("alice", "wonderland");
    for _ in 0..3 {
        assert_eq!(
            with_authorization(&h, &value).on_request_headers(),
            Outcome::Continue
        );
    }
    assert_eq!(h.metric("basic_verifications"), Some(1));
    assert_eq!(h.metric("basic_cache_hits"), Some(2));
}

#[test]
fn a_cache_hit_needs_the_exact_credential() {
    let h = harness(json!({}));
    assert_eq!(
        with_authorization(&h, &basic("alice", "wonderland")).on_request_headers(),
        Outcome::Continue
    );
    // The same user with another password, or the same token with another scheme spelling,
    // is not the cached credential: verified again.
    assert_challenged(
        with_authorization(&h, &basic("alice", "wonderland!")).on_request_headers(),
        "another password",
    );
    let token = STANDARD.encode("alice:wonderland");
    assert_eq!(
        with_authorization(&h, &format!("basic {token}")).on_request_headers(),
        Outcome::Continue
    );
    assert_eq!(h.metric("basic_verifications"), Some(3));
    assert_eq!(h.metric("basic_cache_hits"), Some(0));
}

#[test]
fn failures_are_never_cached_and_unknown_users_cost_a_verification() {
    let h = harness(json!({}));
    for _ in 0..2 {
        assert_challenged(
            with_authorization(&h, &basic("alice", "guess")).on_request_headers(),
            "wrong password",
        );
    }
    assert_challenged(
        with_authorization(&h, &basic("mallory", "guess")).on_request_headers(),
        "unknown user",
    );
    assert_eq!(h.metric("basic_verifications"), Some(3));
    assert_eq!(h.metric("basic_cache_hits"), Some(0));
}

#[test]
fn cached_successes_expire_after_the_ttl() {
    let h = harness(json!({ "cache": { "ttl": "10s" } }));
    let value = basic("alice", "wonderland");
    let run = || with_authorization(&h, &value).on_request_headers();
    assert_eq!(run(), Outcome::Continue);
    h.advance(Duration::from_secs(9));
    assert_eq!(run(), Outcome::Continue);
    assert_eq!(h.metric("basic_verifications"), Some(1));
    h.advance(Duration::from_secs(1));
    assert_eq!(run(), Outcome::Continue);
    assert_eq!(h.metric("basic_verifications"), Some(2));
    assert_eq!(run(), Outcome::Continue);
    assert_eq!(h.metric("basic_verifications"), Some(2));
}

#[test]
fn the_cache_is_bounded_and_evicts_the_oldest() {
    let h = harness(json!({ "cache": { "size": 2 } }));
    let alice = basic("alice", "wonderland");
    let bob = basic("bob", "builder");
    let erin = basic("erin", "wonderland");
    for value in [&alice, &bob, &erin] {
        assert_eq!(
            with_authorization(&h, value).on_request_headers(),
            Outcome::Continue
        );
    }
    assert_eq!(h.metric("basic_verifications"), Some(3));
    // bob and erin are cached, alice was evicted.
    for value in [&bob, &erin] {
        with_authorization(&h, value).on_request_headers();
    }
    assert_eq!(h.metric("basic_verifications"), Some(3));
    with_authorization(&h, &alice).on_request_headers();
    assert_eq!(h.metric("basic_verifications"), Some(4));
}

#[test]
fn a_cache_of_size_zero_verifies_every_time() {
    let h = harness(json!({ "cache": { "size": 0 } }));
    let value = basic("alice", "wonderland");
    for _ in 0..2 {
        assert_eq!(
            with_authorization(&h, &value).on_request_headers(),
            Outcome::Continue
        );
    }
    assert_eq!(h.metric("basic_verifications"), Some(2));
}

#[test]
fn the_cache_keeps_salted_digests_and_compares_them_whole() {
    let now = SystemTime::UNIX_EPOCH;
    let mut cache = Cache::new([7; 16], 8, Duration::from_secs(60));
    let credential = b"Basic YWxpY2U6d29uZGVybGFuZA==";
    let digest = cache.digest(credential);
    assert_ne!(digest, util::sha256(&[credential]), "not salted");
    assert_ne!(
        digest,
        Cache::new([8; 16], 8, Duration::ZERO).digest(credential)
    );
    cache.insert(digest, 3, now);
    assert_eq!(cache.get(&digest, now), Some(3));
    // Same first 8 bytes (the map's key), different digest: a miss.
    let mut forged = digest;
    forged[31] ^= 1;
    assert_eq!(cache.get(&forged, now), None);
    assert_eq!(cache.get(&digest, now + Duration::from_secs(60)), None);
}

#[test]
fn users_can_be_given_as_an_htpasswd_text() {
    let text = format!("# team\n{ALICE}\n\n  {CAROL}  \n");
    let h = Harness::<Auth>::new(json!({ "type": "basic", "users": text })).unwrap();
    for (user, password) in [("alice", "wonderland"), ("carol", "sha256 pass")] {
        assert_eq!(
            with_authorization(&h, &basic(user, password)).on_request_headers(),
            Outcome::Continue,
            "{user}"
        );
    }
    // The default realm.
    let Outcome::Respond(r) = h.request().on_request_headers() else {
        panic!("let through");
    };
    assert_eq!(
        r.headers[0].1,
        "Basic realm=\"Restricted\", charset=\"UTF-8\""
    );
}

#[test]
fn configuration_errors_name_the_entry_and_never_show_a_password() {
    let cases: &[(Value, &str)] = &[
        (
            json!({ "users": ["root:hunter2"] }),
            "users[0] (\"root\"): plain-text passwords are refused",
        ),
        (
            json!({ "users": [ALICE, "md5user:$apr1$LTY9bAjK$vv6384umP/6Qr7NDKfbwS1"] }),
            "users[1] (\"md5user\"): MD5 and SHA-1 hashes are refused",
        ),
        (
            json!({ "users": ["shauser:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM="] }),
            "users[0] (\"shauser\"): MD5 and SHA-1",
        ),
        (
            json!({ "users": ["x:$2x$04$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHGO"] }),
            "$2x$",
        ),
        (
            json!({ "users": ["x:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"] }),
            "users[0] (\"x\"): unsupported hash",
        ),
        (
            json!({ "users": ["x:$2y$04$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHG"] }),
            "users[0] (\"x\"): not a bcrypt hash: a bcrypt hash is 60 characters",
        ),
        (
            json!({ "users": ["x:$2y$03$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHGO"] }),
            "the cost must be 04 to 31",
        ),
        (
            json!({ "users": ["x:$2y$4a$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHGO"] }),
            "the cost must be 04 to 31",
        ),
        (
            json!({ "users": ["x:$2y$04$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHG!"] }),
            "not bcrypt's base64",
        ),
        (
            json!({ "users": ["x:$5$rounds=999$carolsalt$kWQNWRHnPNUHMwa4wgw9u33hqxjpazuLHFL5PtzhN55"] }),
            "rounds must be 1000 to 999999999",
        ),
        (
            json!({ "users": ["x:$5$carolsalt$kWQNWRHnPNUHMwa4wgw9u33hqxjpazuLHFL5PtzhN5"] }),
            "not a SHA-crypt hash: the checksum",
        ),
        (
            json!({ "users": ["x:$6$carolsalt$kWQNWRHnPNUHMwa4wgw9u33hqxjpazuLHFL5PtzhN55"] }),
            "not a SHA-crypt hash: the checksum",
        ),
        (
            json!({ "users": ["x:$5$kWQNWRHnPNUHMwa4wgw9u33hqxjpazuLHFL5PtzhN55"] }),
            "expected a salt and a checksum",
        ),
        (json!({ "users": ["x:$5$"] }), "not a SHA-crypt hash"),
        (
            json!({ "users": ["alice"] }),
            "users[0]: not a name:hash line",
        ),
        (
            json!({ "users": [":$2y$04$IJRIXGwlqhDwHe6KGM9yOeafDbXFzD3YMlZzU.q7Qe.OeorMoMHGO"] }),
            "users[0]: the user name is empty",
        ),
        (
            json!({ "users": [ALICE, ALICE] }),
            "users[1] (\"alice\") is a second entry for that user",
        ),
        (json!({ "users": [] }), "users is empty"),
        (json!({ "users": "# nobody\n" }), "users is empty"),
        (json!({}), "missing field `users`"),
        (
            json!({ "users": [ALICE], "realm": "a\"b" }),
            "realm \"a\\\"b\" may not hold quotes",
        ),
        (
            json!({ "users": [ALICE], "user_header": "x user" }),
            "user_header: \"x user\" is not a header name",
        ),
        (
            json!({ "users": [ALICE], "cache": { "ttl": "5" } }),
            "cache.ttl: \"5\" is not a duration",
        ),
        (
            json!({ "users": [ALICE], "cache": { "size": -1 } }),
            "invalid value",
        ),
        (
            json!({ "users": [ALICE], "cache": { "max": 1 } }),
            "unknown field `max`",
        ),
    ];
    for (config, want) in cases {
        let mut config = config.clone();
        config["type"] = json!("basic");
        let err = Harness::<Auth>::new(config.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{config}:\n  {err}\n  wanted {want}");
        assert!(!err.contains("hunter2"), "the password is in {err}");
    }
}

#[test]
fn a_bcrypt_cost_beyond_the_default_deadline_is_warned_about_and_timed() {
    // htpasswd -bnBC 10 carol cost10pw, and cost 12 for dave.
    let c10 = "carol:$2y$10$ZljcawAvw.XzTq25qr0aG.R0TGy3/o4kVVQ1DDFUVN9O/EFzxhZca";
    let c12 = "dave:$2y$12$6gitS6FfwaBuTBr..ULtQeUFPn08vASqosbJu.yZdS680XLmznQKG";
    let h = Harness::<Auth>::new(json!({ "type": "basic", "users": [ALICE, c10, c12] })).unwrap();
    assert!(
        h.logged("users[2] (\"dave\") has bcrypt cost 12: a verification takes about 260 ms"),
        "{:?}",
        h.logs()
    );
    let h = Harness::<Auth>::new(json!({ "type": "basic", "users": [c10, ALICE] })).unwrap();
    assert!(
        h.logged("users[0] (\"carol\") has bcrypt cost 10"),
        "{:?}",
        h.logs()
    );
    // The trial that makes a time limit too short for the cost fail at configuration.
    assert!(
        h.logged("basic: one bcrypt cost 10 verification took "),
        "{:?}",
        h.logs()
    );
    let h = Harness::<Auth>::new(json!({ "type": "basic", "users": [ALICE, BOB, CAROL] })).unwrap();
    assert!(!h.logged("bcrypt cost"), "{:?}", h.logs());
}

#[test]
fn an_unknown_user_costs_what_most_users_cost_not_what_the_first_one_costs() {
    // alice, listed first, has bcrypt cost 4; most users have cost 5. An unknown name must
    // take as long as most known ones: verified at cost 5, against no user's hash.
    let h = Harness::<Auth>::new(
        json!({ "type": "basic", "realm": "test", "users": [ALICE, BOB, FRANK, GRACE] }),
    )
    .unwrap();
    assert_challenged(
        with_authorization(&h, &basic("mallory", "builder")).on_request_headers(),
        "unknown user",
    );
    let decoy = last_verified();
    // bob's cost and salt (the first user of cost 5), a zeroed checksum.
    assert_eq!(
        decoy,
        format!("{}{}", &hash_of(BOB)[..29], ".".repeat(31)),
        "verified against {decoy}"
    );
    // Well-formed, so bcrypt computes it in full (a malformed hash would fail fast), and no
    // password matches it: not even that of the user it was made from.
    assert_eq!(bcrypt::verify("builder", &decoy).ok(), Some(false));
    assert_eq!(h.metric("basic_verifications"), Some(1));
    // A known user is verified against its own hash, whatever its cost.
    assert_eq!(
        with_authorization(&h, &basic("alice", "wonderland")).on_request_headers(),
        Outcome::Continue
    );
    assert_eq!(last_verified(), hash_of(ALICE));
    assert_eq!(
        with_authorization(&h, &basic("grace", "gracepw")).on_request_headers(),
        Outcome::Continue
    );
    assert_eq!(last_verified(), hash_of(GRACE));
}

#[test]
fn the_decoy_follows_the_most_common_scheme_and_cost_then_the_slower() {
    let decoy_of = |users: &[&str]| {
        let h = Harness::<Auth>::new(json!({ "type": "basic", "realm": "test", "users": users }))
            .unwrap();
        assert_challenged(
            with_authorization(&h, &basic("nobody", "pw")).on_request_headers(),
            "unknown user",
        );
        last_verified()
    };
    let bcrypt_decoy = |line: &str| format!("{}{}", &hash_of(line)[..29], ".".repeat(31));
    let sha_decoy = |line: &str| {
        let hash = hash_of(line);
        let cut = hash.rfind('$').unwrap() + 1;
        format!("{}{}", &hash[..cut], ".".repeat(hash.len() - cut))
    };
    // SHA-512-crypt, 5000 rounds, twice; SHA-256-crypt at 1000 rounds and bcrypt 4 once.
    let d = decoy_of(&[CAROL, ALICE, DAVE, HEIDI]);
    assert_eq!(d, sha_decoy(DAVE));
    assert!(
        ShaCrypt::default()
            .verify_password(b"p@ss:w0rd", d.as_str())
            .is_err_and(|e| matches!(e, sha_crypt::password_hash::Error::PasswordInvalid)),
        "the decoy is well-formed and matches nothing"
    );
    // One each: the slowest (bcrypt 5 before bcrypt 4 before 1000 SHA-crypt rounds).
    assert_eq!(decoy_of(&[CAROL, ALICE, BOB]), bcrypt_decoy(BOB));
    assert_eq!(decoy_of(&[CAROL, ALICE]), bcrypt_decoy(ALICE));
    // $2a$, $2b$ and $2y$ are one algorithm: alice and erin (cost 4) outnumber bob (cost 5).
    assert_eq!(decoy_of(&[BOB, ERIN, ALICE]), bcrypt_decoy(ERIN));
    // The same work: the first listed.
    assert_eq!(decoy_of(&[IVAN, CAROL]), sha_decoy(IVAN));
    let d = decoy_of(&[IVAN]);
    assert_eq!(d, sha_decoy(IVAN));
    assert!(
        ShaCrypt::default()
            .verify_password(b"ivanpw", d.as_str())
            .is_err_and(|e| matches!(e, sha_crypt::password_hash::Error::PasswordInvalid))
    );
}

#[test]
fn the_cache_ttl_is_at_most_a_day() {
    let config = |ttl: &str| -> Config {
        serde_json::from_value(json!({ "users": [ALICE], "cache": { "ttl": ttl } })).unwrap()
    };
    // Far past a day, up to what would overflow the clock: a configuration error.
    for ttl in ["25h", "86401s", "18446744073709551615s"] {
        let err = Basic::new(config(ttl)).err().expect(ttl);
        assert!(err.is_config(), "{ttl}: {err:?}");
        assert_eq!(
            err.to_string(),
            format!("invalid configuration: basic: cache.ttl: {ttl:?} is more than 24h")
        );
    }
    // A day is fine, and a login is remembered for that long.
    let h = harness(json!({ "cache": { "ttl": "24h" } }));
    let value = basic("alice", "wonderland");
    for _ in 0..2 {
        assert_eq!(
            with_authorization(&h, &value).on_request_headers(),
            Outcome::Continue
        );
        h.advance(Duration::from_secs(24 * 3600 - 1));
    }
    assert_eq!(h.metric("basic_verifications"), Some(1));
}

#[test]
fn a_ttl_past_the_end_of_time_is_not_remembered_rather_than_a_panic() {
    let now = SystemTime::now();
    for ttl in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        let mut cache = Cache::new([1; 16], 8, ttl);
        let digest = cache.digest(b"Basic YWxpY2U6d29uZGVybGFuZA==");
        cache.insert(digest, 0, now);
        assert_eq!(cache.get(&digest, now), None);
    }
}

#[test]
fn configuration_errors_are_config_errors() {
    for config in [
        json!({ "users": [] }),
        json!({ "users": ["root:hunter2"] }),
        json!({ "users": [ALICE, ALICE] }),
        json!({ "users": [ALICE], "realm": "a\"b" }),
        json!({ "users": [ALICE], "user_header": "x y" }),
        json!({ "users": [ALICE], "cache": { "ttl": "5" } }),
    ] {
        let parsed: Config = serde_json::from_value(config.clone()).unwrap();
        let err = Basic::new(parsed).err().expect("refused");
        assert!(err.is_config(), "{config}: {err:?}");
    }
}

/// Breaks the mock host's metrics until dropped.
struct NoMetrics;

impl NoMetrics {
    fn start() -> NoMetrics {
        crate::metric::host::BROKEN.set(true);
        NoMetrics
    }
}

impl Drop for NoMetrics {
    fn drop(&mut self) {
        crate::metric::host::BROKEN.set(false);
    }
}

#[test]
fn metrics_that_fail_change_no_decision() {
    // Metrics that cannot be counted (the host refuses): every decision is as usual.
    let h = harness(json!({}));
    let broken = NoMetrics::start();
    let value = basic("alice", "wonderland");
    for what in ["verified", "from the cache"] {
        let req = with_authorization(&h, &value);
        assert_eq!(req.on_request_headers(), Outcome::Continue, "{what}");
        assert_eq!(req.request_header("x-auth-user").as_deref(), Some("alice"));
    }
    assert_challenged(
        with_authorization(&h, &basic("alice", "guess")).on_request_headers(),
        "wrong password",
    );
    assert_challenged(
        with_authorization(&h, &basic("mallory", "guess")).on_request_headers(),
        "unknown user",
    );
    assert_challenged(h.request().on_request_headers(), "no credentials");
    drop(broken);
    assert_eq!(h.metric("basic_verifications"), Some(0), "none counted");

    // Metrics the host cannot even define: the configuration stands.
    let broken = NoMetrics::start();
    let h = harness(json!({}));
    assert_eq!(
        with_authorization(&h, &value).on_request_headers(),
        Outcome::Continue
    );
    assert_challenged(
        with_authorization(&h, &basic("bob", "guess")).on_request_headers(),
        "wrong password",
    );
    drop(broken);
    assert_eq!(h.metric("basic_verifications"), None, "never defined");
    assert_eq!(h.metric("allowed"), None);
}
