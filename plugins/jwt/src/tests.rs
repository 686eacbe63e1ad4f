//! The plugin's rules, each run through its hooks on the SDK's mock host (signatures checked by
//! the SDK's in-guest fallback). Tokens are minted with jsonwebtoken (testdata/mint.rs).

#[path = "../testdata/mint.rs"]
mod mint;

use std::time::{Duration, UNIX_EPOCH};

use mint::{ALGORITHMS, Alg, claims, jwks, mint, mint_with};
use portico_plugin_sdk::testing::{Harness, Outcome, Request};
use serde_json::{Value, json};

use super::Jwt;
use crate::config::Remote;
use crate::remote::{self, Reason, RemoteKeys, Store};

/// The harness clock, in seconds since the epoch.
const NOW: u64 = 1_700_000_000;

const ALL_KEYS: [&str; 6] = ["rsa-a", "rsa-b", "ec-p256", "ec-p384", "ed25519", "hmac"];

fn harness(config: Value) -> Harness<Jwt> {
    let h = Harness::<Jwt>::new(config).unwrap_or_else(|e| panic!("configure: {e}"));
    h.set_time(UNIX_EPOCH + Duration::from_secs(NOW));
    h
}

/// Every test key inline, issuer `https://idp.test`, audience `api`, `sub` forwarded as
/// `x-user`; `extra` replaces or adds keys (a `null` removes one).
fn config(extra: Value) -> Value {
    let mut c = json!({
        "jwks": jwks(&ALL_KEYS),
        "issuer": "https://idp.test",
        "audiences": ["api"],
        "forward_claims": { "sub": "x-user" },
    });
    if let (Some(base), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    c
}

fn valid() -> Value {
    claims(NOW, json!({}))
}

fn bearer<'h>(h: &'h Harness<Jwt>, token: &str) -> Request<'h, Jwt> {
    h.request()
        .header("authorization", &format!("Bearer {token}"))
}

/// `Ok` when the request goes on; the status and `WWW-Authenticate` when it is answered.
type Verdict = Result<(), (u16, String)>;

fn verdict(outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Continue => Ok(()),
        Outcome::Respond(r) => {
            let challenge = r
                .headers
                .iter()
                .find(|(k, _)| k == "www-authenticate")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            Err((r.status, challenge))
        }
        Outcome::Pause => Err((0, "paused".into())),
    }
}

fn check(h: &Harness<Jwt>, token: &str) -> Verdict {
    verdict(bearer(h, token).on_request_headers())
}

fn invalid(description: &str) -> Verdict {
    Err((
        401,
        format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
    ))
}

/// How many signatures have been checked: the plugin's `verifications` metric.
fn verifications(h: &Harness<Jwt>) -> i64 {
    h.metric("verifications")
        .expect("the verifications metric is defined")
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn configuration_errors_name_the_problem() {
    let rsa = mint::jwk("rsa-a");
    let table: &[(Value, &str)] = &[
        (
            json!({ "jwks": jwks(&["rsa-a"]), "isuer": "x" }),
            "unknown field `isuer`",
        ),
        (
            json!({ "issuer": "x" }),
            "no keys: set jwks (inline keys) or remote_jwks",
        ),
        (json!({ "jwks": { "keys": [] } }), "no keys"),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "algorithms": ["RS256", "none"] }),
            "algorithms[1]: \"none\" (unsigned tokens) is never accepted",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "algorithms": ["NONE"] }),
            "never accepted",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "algorithms": ["RS999"] }),
            "algorithms[0]: unknown algorithm \"RS999\" (supported: RS256",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "algorithms": [] }),
            "algorithms: an empty list",
        ),
        (
            json!({ "jwks": { "keys": [rsa, { "kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA" }] } }),
            "jwks.keys[1] (kid \"k1\"): unsupported curve \"secp256k1\"",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "oct", "k": "c2hvcnQ" }] } }),
            "jwks.keys[0]: an oct key of 5 bytes",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "leeway": "1 minute" }),
            "leeway: invalid duration \"1 minute\"",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "leeway": -5 }),
            "leeway: duration -5 is negative",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "from": [] }),
            "from: an empty list",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "from": [{ "cookie": "a", "query": "b" }] }),
            "from[0]: write exactly one of header, cookie or query",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "from": [{ "cookie": "a", "prefix": "x" }] }),
            "from[0]: prefix: only a header source",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "from": [{ "header": "x y" }] }),
            "from[0]: header: \"x y\" is not a valid header name",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "from": [{ "header": "x", "cookie": "c" }] }),
            "exactly one",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "from": [{ "query": "" }] }),
            "from[0]: an empty name",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "forward_claims": { "sub": ":path" } }),
            "forward_claims.sub: \":path\" is not a valid request header name",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "forward_claims": { "sub": "x-a", "email": "X-A" } }),
            "header x-a is already used",
        ),
        (
            json!({ "remote_jwks": { "upstream": "idp", "path": "jwks" } }),
            "remote_jwks.path: \"jwks\" does not start with /",
        ),
        (
            json!({ "remote_jwks": { "upstream": "idp", "path": "/j", "cache_duration": "500ms" } }),
            "cache_duration: at least 1s",
        ),
        (
            json!({ "remote_jwks": { "upstream": "idp", "path": "/j", "refresh": "1m" } }),
            "unknown field `refresh`",
        ),
        (
            json!({ "remote_jwks": { "upstream": "idp" } }),
            "missing field `path`",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "max_token_size": 0 }),
            "max_token_size: 0 bytes is outside",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "max_token_size": "8XB" }),
            "invalid size \"8XB\"",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "cache_size": 2_000_000 }),
            "cache_size: 2000000 is more than",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "issuer": "" }),
            "issuer: an empty issuer",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "audiences": [""] }),
            "audiences: an empty audience",
        ),
        (
            json!({ "jwks": jwks(&["rsa-a"]), "forward_token": "no" }),
            "forward_token: invalid type",
        ),
    ];
    for (config, expected) in table {
        let err = Harness::<Jwt>::new(config.clone()).expect_err(&config.to_string());
        assert!(
            err.to_string().contains(expected),
            "{config}\n  gave: {err}\n  want: {expected}"
        );
    }
}

#[test]
fn a_minimal_configuration_and_every_form_of_its_keys_is_accepted() {
    for config in [
        json!({ "jwks": jwks(&["rsa-a"]) }),
        json!({ "jwks": jwks(&["rsa-a"]).to_string() }),
        json!({ "remote_jwks": { "upstream": "idp", "path": "/jwks" } }),
        json!({ "jwks": jwks(&["hmac"]), "issuer": ["a", "b"], "audiences": "api", "leeway": 0,
                "max_token_size": "16KiB", "cache_size": 0, "forward_token": false,
                "from": [{ "header": "x-token" }, { "cookie": "jwt" }, { "query": "t" }],
                "remote_jwks": { "upstream": "idp", "path": "/j", "authority": "idp.test",
                                  "cache_duration": "1h", "timeout": "500ms" } }),
    ] {
        Harness::<Jwt>::new(config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[test]
fn every_algorithm_is_verified_with_its_key() {
    let h = harness(config(json!({})));
    for (alg, _) in ALGORITHMS {
        let token = mint(alg, &valid());
        let req = bearer(&h, &token);
        assert_eq!(verdict(req.on_request_headers()), Ok(()), "{alg:?}");
        assert_eq!(
            req.request_header("x-user").as_deref(),
            Some("alice"),
            "{alg:?}"
        );
    }
    assert_eq!(verifications(&h), 12);
}

#[test]
fn a_token_signed_by_another_key_of_the_right_type_is_refused() {
    let h = harness(config(json!({})));
    // Signed by rsa-b, naming rsa-a.
    let token = mint_with(Alg::RS256, Some("rsa-a"), "rsa-b", &valid());
    assert_eq!(check(&h, &token), invalid("invalid signature"));
    // Without a kid, every fitting key is tried: rsa-b verifies it.
    let token = mint_with(Alg::RS256, None, "rsa-b", &valid());
    assert_eq!(check(&h, &token), Ok(()));
    // An HMAC token with another secret.
    let token = mint::mint_hmac_with_secret(Some("hmac"), &[7; 64], &valid());
    assert_eq!(check(&h, &token), invalid("invalid signature"));
}

#[test]
fn a_kid_picks_the_key_and_keys_without_kid_serve_any_token() {
    let mut anonymous = mint::jwk("rsa-a");
    anonymous.as_object_mut().unwrap().remove("kid");
    let h = harness(config(json!({ "jwks": { "keys": [anonymous] } })));
    let token = mint_with(Alg::RS256, Some("whatever"), "rsa-a", &valid());
    assert_eq!(check(&h, &token), Ok(()));
    // A kid no key has, and no kid-less key verifies it: the key is unknown (and a remote
    // JWKS would be asked for it, see below), not a bad signature.
    let token = mint_with(Alg::RS256, Some("whatever"), "rsa-b", &valid());
    assert_eq!(check(&h, &token), invalid("unknown signing key"));
}

/// A key without `kid` in the document does not hide a new `kid` from the refetch: a token
/// naming `rsa-b`, which the `kid`-less key cannot verify, fetches the document again, and the
/// rotated document's `rsa-b` verifies it.
#[test]
fn an_unknown_kid_refetches_even_when_a_kid_less_key_fits_its_algorithm() {
    let mut anonymous = mint::jwk("rsa-a");
    anonymous.as_object_mut().unwrap().remove("kid");
    let h = harness(remote_config(json!({})));
    h.tick();
    let doc = json!({ "keys": [anonymous.clone()] }).to_string();
    h.answer_callout(one_fetch(&h), 200, &[], doc.as_bytes());
    let token = mint_with(Alg::RS256, Some("rsa-b"), "rsa-b", &valid());
    let req = bearer(&h, &token);
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    let rotated = json!({ "keys": [anonymous, mint::jwk("rsa-b")] }).to_string();
    h.answer_callout(one_fetch(&h), 200, &[], rotated.as_bytes());
    assert!(req.resumed(), "the waiting request goes on");
    assert_eq!(req.local_response(), None);
}

/// The attacks of the issue, and their neighbours.
#[test]
fn attacks_are_refused() {
    let h = harness(config(json!({})));
    let good = mint(Alg::RS256, &valid());
    let rsa_public = mint::jwk("rsa-a").to_string();
    let none = |alg: &str| mint::assemble(&json!({ "alg": alg, "kid": "rsa-a" }), &valid(), b"");
    let other = mint(Alg::RS256, &claims(NOW, json!({ "sub": "mallory" })));
    let table: Vec<(&str, String, Verdict)> = vec![
        ("alg none", none("none"), invalid("algorithm not accepted")),
        ("alg None", none("None"), invalid("algorithm not accepted")),
        (
            "alg none with a signature",
            mint::assemble(&json!({ "alg": "none" }), &valid(), b"sig"),
            invalid("algorithm not accepted"),
        ),
        (
            "HS256 with the RSA public key as secret",
            mint::mint_hmac_with_secret(Some("rsa-a"), rsa_public.as_bytes(), &valid()),
            invalid("algorithm not accepted"),
        ),
        (
            "HS256 naming the EC key",
            mint::mint_hmac_with_secret(Some("ec-p256"), b"x", &valid()),
            invalid("algorithm not accepted"),
        ),
        (
            "RS256 naming the HMAC key",
            mint_with(Alg::RS256, Some("hmac"), "rsa-a", &valid()),
            invalid("algorithm not accepted"),
        ),
        (
            "ES384 naming the P-256 key",
            mint_with(Alg::ES384, Some("ec-p256"), "ec-p384", &valid()),
            invalid("algorithm not accepted"),
        ),
        (
            "PS256 naming a key pinned to RS256",
            mint_with(Alg::PS256, Some("rsa-b"), "rsa-b", &valid()),
            invalid("algorithm not accepted"),
        ),
        (
            "EdDSA naming an RSA key",
            mint_with(Alg::EdDSA, Some("rsa-a"), "ed25519", &valid()),
            invalid("algorithm not accepted"),
        ),
        (
            "tampered payload",
            mint::tamper(&good, &claims(NOW, json!({ "sub": "admin" }))),
            invalid("invalid signature"),
        ),
        (
            "stripped signature",
            mint::strip_signature(&good),
            invalid("invalid signature"),
        ),
        (
            "another token's signature",
            format!(
                "{}{}",
                mint::strip_signature(&good),
                other.rsplit('.').next().unwrap()
            ),
            invalid("invalid signature"),
        ),
        (
            "truncated signature",
            good[..good.len() - 6].to_string(),
            invalid("invalid signature"),
        ),
        (
            "unknown kid",
            mint_with(Alg::RS256, Some("nope"), "rsa-a", &valid()),
            invalid("unknown signing key"),
        ),
        (
            "expired",
            mint(Alg::ES256, &claims(NOW, json!({ "exp": NOW - 61 }))),
            invalid("token expired"),
        ),
        (
            "not yet valid",
            mint(Alg::ES256, &claims(NOW, json!({ "nbf": NOW + 61 }))),
            invalid("token not yet valid"),
        ),
        (
            "issued in the future",
            mint(Alg::ES256, &claims(NOW, json!({ "iat": NOW + 120 }))),
            invalid("token not yet valid"),
        ),
        (
            "no exp",
            mint(Alg::ES256, &claims(NOW, json!({ "exp": null }))),
            invalid("token has no expiry"),
        ),
        (
            "exp as a string",
            mint(
                Alg::ES256,
                &claims(NOW, json!({ "exp": (NOW + 60).to_string() })),
            ),
            invalid("malformed token"),
        ),
        (
            "nbf as a string",
            mint(Alg::ES256, &claims(NOW, json!({ "nbf": "0" }))),
            invalid("malformed token"),
        ),
        (
            "wrong issuer",
            mint(
                Alg::EdDSA,
                &claims(NOW, json!({ "iss": "https://evil.test" })),
            ),
            invalid("issuer not accepted"),
        ),
        (
            "no issuer",
            mint(Alg::EdDSA, &claims(NOW, json!({ "iss": null }))),
            invalid("issuer not accepted"),
        ),
        (
            "issuer not a string",
            mint(
                Alg::EdDSA,
                &claims(NOW, json!({ "iss": ["https://idp.test"] })),
            ),
            invalid("issuer not accepted"),
        ),
        (
            "wrong audience",
            mint(Alg::HS256, &claims(NOW, json!({ "aud": "other" }))),
            invalid("audience not accepted"),
        ),
        (
            "wrong audiences",
            mint(Alg::HS256, &claims(NOW, json!({ "aud": ["a", "b"] }))),
            invalid("audience not accepted"),
        ),
        (
            "no audience",
            mint(Alg::HS256, &claims(NOW, json!({ "aud": null }))),
            invalid("audience not accepted"),
        ),
        (
            "audience not a string",
            mint(Alg::HS256, &claims(NOW, json!({ "aud": 1 }))),
            invalid("audience not accepted"),
        ),
    ];
    for (what, token, expected) in table {
        assert_eq!(check(&h, &token), expected, "{what}");
    }
}

/// The confusion without a `kid`: an HS256 token signed with the RSA public key in any form a
/// server might hold it. No key is named, so the token tries every key that fits HS256: only
/// HMAC keys, never the RSA key, and with no HMAC key configured no HMAC is computed at all.
#[test]
fn hs256_signed_with_the_rsa_public_key_and_no_kid_is_refused() {
    let h = harness(config(json!({})));
    for (what, secret) in mint::rsa_public_secrets() {
        let token = mint::mint_hmac_with_secret(None, &secret, &valid());
        let before = verifications(&h);
        assert_eq!(check(&h, &token), invalid("invalid signature"), "{what}");
        assert_eq!(
            verifications(&h),
            before + 1,
            "{what}: checked with the HMAC key alone"
        );
    }

    let h = harness(config(json!({ "jwks": jwks(&["rsa-a", "rsa-b"]) })));
    for (what, secret) in mint::rsa_public_secrets() {
        let token = mint::mint_hmac_with_secret(None, &secret, &valid());
        assert_eq!(check(&h, &token), invalid("unknown signing key"), "{what}");
    }
    assert_eq!(verifications(&h), 0, "no HMAC with a public key, ever");
    assert_eq!(check(&h, &mint(Alg::RS256, &valid())), Ok(()));
}

/// `jwk` with the named base64url member changed in its last byte.
fn corrupt(mut jwk: Value, member: &str) -> Value {
    let mut bytes = mint::unb64(jwk[member].as_str().expect("a base64url member"));
    *bytes.last_mut().expect("not empty") ^= 1;
    jwk[member] = json!(mint::b64(&bytes));
    jwk
}

/// The shapes Portico's verifier refuses are refused at configuration, and every public key is
/// shown to the verifier once: a point off its curve is refused there, naming the key, rather
/// than failing every request that names it.
#[test]
fn keys_the_verifier_cannot_use_are_refused_at_configuration() {
    let mut even = mint::jwk("rsa-a");
    let mut n = mint::unb64(even["n"].as_str().unwrap());
    *n.last_mut().unwrap() &= 0xfe;
    even["n"] = json!(mint::b64(&n));
    let table: Vec<(Value, &str)> = vec![
        (
            corrupt(mint::jwk("ec-p256"), "y"),
            "jwks.keys[0] (kid \"ec-p256\"): the signature verifier refuses this ES256 key",
        ),
        (
            corrupt(mint::jwk("ec-p384"), "x"),
            "jwks.keys[0] (kid \"ec-p384\"): the signature verifier refuses this ES384 key",
        ),
        (
            even,
            "jwks.keys[0] (kid \"rsa-a\"): n is even, so not an RSA modulus",
        ),
    ];
    for (jwk, expected) in table {
        let err = Harness::<Jwt>::new(json!({ "jwks": { "keys": [jwk] } }))
            .err()
            .unwrap_or_else(|| panic!("{jwk} was accepted"));
        assert!(err.is_config(), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
    // The keys as they are pass.
    for kid in ALL_KEYS {
        assert!(
            Harness::<Jwt>::new(json!({ "jwks": jwks(&[kid]) })).is_ok(),
            "{kid}"
        );
    }
}

#[test]
fn remote_keys_the_verifier_cannot_use_are_skipped_with_one_warning() {
    let h = harness(remote_config(json!({})));
    h.tick();
    let document = json!({ "keys": [corrupt(mint::jwk("ec-p256"), "y"), mint::jwk("rsa-a")] });
    h.answer_callout(one_fetch(&h), 200, &[], document.to_string().as_bytes());
    let warnings: Vec<String> = h
        .logs()
        .into_iter()
        .filter(|l| l.contains("(kid \"ec-p256\") skipped: the signature verifier refuses"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(check(&h, &mint(Alg::RS256, &valid())), Ok(()));
    // A token naming the skipped key is refused, with no warning per request.
    let req = bearer(&h, &mint(Alg::ES256, &valid()));
    assert_eq!(
        req.on_request_headers(),
        Outcome::Pause,
        "an unknown kid refetches"
    );
    h.answer_callout(one_fetch(&h), 200, &[], document.to_string().as_bytes());
    assert_eq!(
        verdict(Outcome::Respond(req.local_response().expect("answered"))),
        invalid("unknown signing key")
    );
    assert!(!h.logged("could not verify"));
}

#[test]
fn malformed_tokens_are_refused() {
    let h = harness(config(json!({})));
    let good = mint(Alg::HS256, &valid());
    let (header, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let sign = |header: &Value, payload: &str| mint::sign_raw(header, payload, Alg::HS256, "hmac");
    let hs = json!({ "alg": "HS256", "kid": "hmac" });
    let c = valid().to_string();
    let table: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "malformed token"),
        ("one part", header.to_string(), "malformed token"),
        (
            "two parts",
            format!("{header}.{payload}"),
            "malformed token",
        ),
        ("four parts", format!("{good}.x"), "malformed token"),
        (
            "five parts (JWE)",
            format!("{header}.a.b.c.d"),
            "malformed token",
        ),
        (
            "bad base64 in the header",
            format!("*{}", &good[1..]),
            "malformed token",
        ),
        (
            "bad base64 in the payload",
            format!("{header}.{payload}!.{signature}"),
            "malformed token",
        ),
        (
            "bad base64 in the signature",
            format!("{header}.{payload}.{signature}*"),
            "malformed token",
        ),
        (
            "padding",
            format!("{header}=.{payload}.{signature}"),
            "malformed token",
        ),
        (
            "standard base64 alphabet",
            format!("{header}.{payload}.+{}", &signature[1..]),
            "malformed token",
        ),
        (
            "header not JSON",
            format!("{}.{payload}.{signature}", mint::b64(b"alg=HS256")),
            "malformed token",
        ),
        (
            "header a JSON array",
            format!("{}.{payload}.{signature}", mint::b64(b"[\"HS256\"]")),
            "malformed token",
        ),
        (
            "payload not JSON",
            sign(&hs, "sub=alice"),
            "malformed token",
        ),
        (
            "payload a JSON string",
            sign(&hs, "\"alice\""),
            "malformed token",
        ),
        (
            "payload with trailing bytes",
            sign(&hs, &format!("{c}x")),
            "malformed token",
        ),
        (
            "duplicate claims",
            sign(
                &hs,
                &format!(
                    "{{\"exp\":{},\"exp\":{},\"iss\":\"https://idp.test\",\"aud\":\"api\"}}",
                    NOW - 3600,
                    NOW + 3600
                ),
            ),
            "malformed token",
        ),
        (
            "duplicate header members",
            format!(
                "{}.{payload}.{signature}",
                mint::b64(b"{\"alg\":\"HS256\",\"alg\":\"none\"}")
            ),
            "malformed token",
        ),
        (
            "no alg",
            sign(&json!({ "kid": "hmac" }), &c),
            "malformed token",
        ),
        (
            "alg not a string",
            sign(&json!({ "alg": 256 }), &c),
            "malformed token",
        ),
        (
            "kid not a string",
            sign(&json!({ "alg": "HS256", "kid": 1 }), &c),
            "malformed token",
        ),
        (
            "a critical extension",
            sign(
                &json!({ "alg": "HS256", "kid": "hmac", "crit": ["b64"], "b64": false }),
                &c,
            ),
            "malformed token",
        ),
        (
            "unknown alg",
            sign(&json!({ "alg": "HS1" }), &c),
            "algorithm not accepted",
        ),
        (
            "spaces inside",
            format!("{header}. {payload}.{signature}"),
            "malformed token",
        ),
    ];
    for (what, token, description) in table {
        let got = verdict(
            h.request()
                .header("authorization", &format!("Bearer {token}"))
                .on_request_headers(),
        );
        assert_eq!(got, invalid(description), "{what}: {token}");
    }
    // The same helper makes a token that passes, so the table's failures are its payloads'.
    assert_eq!(check(&h, &sign(&hs, &c)), Ok(()));
}

#[test]
fn an_oversized_token_is_refused_before_it_is_parsed() {
    let h = harness(config(json!({})));
    let big = mint(Alg::HS256, &claims(NOW, json!({ "pad": "x".repeat(9000) })));
    assert!(big.len() > 8192);
    assert_eq!(check(&h, &big), invalid("token too large"));
    let junk = "a".repeat(8193);
    assert_eq!(check(&h, &junk), invalid("token too large"));
    let h = harness(config(json!({ "max_token_size": "16KiB" })));
    assert_eq!(check(&h, &big), Ok(()));
}

#[test]
fn an_algorithm_outside_the_allow_list_is_refused() {
    let h = harness(config(json!({ "algorithms": ["ES256", "EdDSA"] })));
    assert_eq!(check(&h, &mint(Alg::ES256, &valid())), Ok(()));
    assert_eq!(check(&h, &mint(Alg::EdDSA, &valid())), Ok(()));
    for alg in [Alg::RS256, Alg::PS256, Alg::ES384, Alg::HS256] {
        assert_eq!(
            check(&h, &mint(alg, &valid())),
            invalid("algorithm not accepted"),
            "{alg:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Time and claims

#[test]
fn exp_nbf_and_iat_are_honoured_with_the_leeway() {
    let h = harness(config(json!({})));
    let token = |extra: Value| mint(Alg::HS256, &claims(NOW, extra));
    let table: Vec<(Value, Verdict)> = vec![
        (json!({ "exp": NOW - 59 }), Ok(())),
        (json!({ "exp": NOW - 60 }), invalid("token expired")),
        (json!({ "exp": NOW + 1 }), Ok(())),
        (json!({ "exp": NOW as f64 + 0.5 }), Ok(())),
        (
            json!({ "exp": NOW as f64 - 60.5 }),
            invalid("token expired"),
        ),
        (json!({ "exp": 1e300 }), Ok(())),
        (json!({ "exp": u64::MAX }), Ok(())),
        (json!({ "exp": -1 }), invalid("token expired")),
        (json!({ "exp": 0 }), invalid("token expired")),
        (json!({ "nbf": NOW + 60 }), Ok(())),
        (json!({ "nbf": NOW + 61 }), invalid("token not yet valid")),
        (
            json!({ "nbf": NOW as f64 + 60.5 }),
            invalid("token not yet valid"),
        ),
        (json!({ "nbf": 0 }), Ok(())),
        (json!({ "iat": NOW + 60 }), Ok(())),
        (json!({ "iat": NOW + 61 }), invalid("token not yet valid")),
        (json!({ "iat": null }), Ok(())),
    ];
    for (extra, expected) in table {
        assert_eq!(check(&h, &token(extra.clone())), expected, "{extra}");
    }

    let strict = harness(config(json!({ "leeway": "0s" })));
    assert_eq!(check(&strict, &token(json!({ "exp": NOW + 1 }))), Ok(()));
    assert_eq!(
        check(&strict, &token(json!({ "exp": NOW }))),
        invalid("token expired")
    );
    assert_eq!(
        check(&strict, &token(json!({ "nbf": NOW + 1 }))),
        invalid("token not yet valid")
    );
    let lenient = harness(config(json!({ "leeway": "5m" })));
    assert_eq!(check(&lenient, &token(json!({ "exp": NOW - 299 }))), Ok(()));
    assert_eq!(
        check(&lenient, &token(json!({ "exp": NOW - 300 }))),
        invalid("token expired")
    );
}

#[test]
fn issuer_and_audience_are_checked_only_when_configured() {
    let token = |extra: Value| mint(Alg::HS256, &claims(NOW, extra));
    let h = harness(config(
        json!({ "issuer": ["https://a.test", "https://b.test"], "audiences": ["api", "web"] }),
    ));
    assert_eq!(
        check(&h, &token(json!({ "iss": "https://b.test", "aud": "web" }))),
        Ok(())
    );
    assert_eq!(
        check(
            &h,
            &token(json!({ "iss": "https://a.test", "aud": ["x", "api"] }))
        ),
        Ok(())
    );
    assert_eq!(
        check(&h, &token(json!({ "iss": "https://a.test", "aud": [] }))),
        invalid("audience not accepted")
    );
    assert_eq!(
        check(&h, &token(json!({ "iss": "https://A.test", "aud": "api" }))),
        invalid("issuer not accepted")
    );

    let open = harness(config(json!({ "issuer": null, "audiences": null })));
    assert_eq!(
        check(&open, &token(json!({ "iss": null, "aud": null }))),
        Ok(())
    );
    assert_eq!(
        check(&open, &token(json!({ "iss": "anyone", "aud": "anything" }))),
        Ok(())
    );
}

// ---------------------------------------------------------------------------------------------
// Where the token comes from, and where it goes

#[test]
fn no_token_is_a_bare_bearer_challenge() {
    let h = harness(config(json!({})));
    let Outcome::Respond(r) = h.request().on_request_headers() else {
        panic!("expected a local response");
    };
    assert_eq!(r.status, 401);
    assert!(
        r.headers
            .contains(&("www-authenticate".into(), "Bearer".into())),
        "{:?}",
        r.headers
    );
    // Another scheme is no bearer token either.
    let basic = h
        .request()
        .header("authorization", "Basic YWxpY2U6c2VjcmV0");
    assert_eq!(
        verdict(basic.on_request_headers()),
        Err((401, "Bearer".into()))
    );
}

#[test]
fn the_authorization_header_is_read_leniently_but_only_once() {
    let h = harness(config(json!({})));
    let token = mint(Alg::HS256, &valid());
    for value in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer    {token}  "),
        format!("Bearer\t{token}"),
    ] {
        let got = verdict(
            h.request()
                .header("authorization", &value)
                .on_request_headers(),
        );
        assert_eq!(got, Ok(()), "{value:?}");
    }
    // Portico joins repeated fields with a comma.
    let twice = h
        .request()
        .header("authorization", &format!("Bearer {token},Bearer {token}"));
    assert_eq!(
        verdict(twice.on_request_headers()),
        Err((
            400,
            "Bearer error=\"invalid_request\", error_description=\"more than one token\"".into()
        ))
    );
    let empty = h.request().header("authorization", "Bearer ");
    assert_eq!(
        verdict(empty.on_request_headers()),
        invalid("malformed token")
    );
}

#[test]
fn tokens_from_a_header_a_cookie_or_a_query_parameter() {
    let h = harness(config(json!({
        "from": [{ "header": "x-jwt" }, { "cookie": "jwt" }, { "query": "access_token" }],
    })));
    let token = mint(Alg::ES256, &valid());
    let by_header = h.request().header("x-jwt", &token);
    assert_eq!(verdict(by_header.on_request_headers()), Ok(()));
    let by_cookie = h
        .request()
        .header("cookie", &format!("theme=dark; jwt={token}"));
    assert_eq!(verdict(by_cookie.on_request_headers()), Ok(()));
    let by_query = h.request().path(&format!("/api?x=1&access_token={token}"));
    assert_eq!(verdict(by_query.on_request_headers()), Ok(()));
    // Not a configured source.
    assert_eq!(check(&h, &token), Err((401, "Bearer".into())));
    // Two sources at once: which one would the upstream believe?
    let both = h
        .request()
        .header("x-jwt", &token)
        .path(&format!("/api?access_token={token}"));
    assert_eq!(verdict(both.on_request_headers()).unwrap_err().0, 400);
    let twice = h
        .request()
        .path(&format!("/api?access_token={token}&access_token={token}"));
    assert_eq!(verdict(twice.on_request_headers()).unwrap_err().0, 400);
    let two_cookies = h
        .request()
        .header("cookie", &format!("jwt={token}; jwt={token}"));
    assert_eq!(
        verdict(two_cookies.on_request_headers()).unwrap_err().0,
        400
    );
}

#[test]
fn the_token_is_forwarded_or_stripped_from_where_it_came() {
    let token = mint(Alg::EdDSA, &valid());
    let keep = harness(config(json!({})));
    let req = bearer(&keep, &token);
    assert_eq!(verdict(req.on_request_headers()), Ok(()));
    assert_eq!(
        req.request_header("authorization"),
        Some(format!("Bearer {token}"))
    );

    let strip = harness(config(json!({
        "forward_token": false,
        "from": [{ "header": "authorization" }, { "cookie": "jwt" }, { "query": "access_token" }],
    })));
    let req = bearer(&strip, &token);
    assert_eq!(verdict(req.on_request_headers()), Ok(()));
    assert_eq!(req.request_header("authorization"), None);

    let req = strip
        .request()
        .header("cookie", &format!("a=1; jwt={token}; b=2"));
    assert_eq!(verdict(req.on_request_headers()), Ok(()));
    assert_eq!(req.request_header("cookie").as_deref(), Some("a=1; b=2"));
    let req = strip.request().header("cookie", &format!("jwt={token}"));
    assert_eq!(verdict(req.on_request_headers()), Ok(()));
    assert_eq!(req.request_header("cookie"), None);

    let req = strip
        .request()
        .path(&format!("/a/b?x=1&access_token={token}&y=%20"));
    assert_eq!(verdict(req.on_request_headers()), Ok(()));
    assert_eq!(
        req.request_header(":path").as_deref(),
        Some("/a/b?x=1&y=%20")
    );
    let req = strip.request().path(&format!("/a?access_token={token}"));
    assert_eq!(verdict(req.on_request_headers()), Ok(()));
    assert_eq!(req.request_header(":path").as_deref(), Some("/a"));
}

#[test]
fn claims_become_headers_and_clients_cannot_forge_them() {
    let h = harness(config(json!({
        "audiences": null,
        "forward_claims": { "sub": "x-user", "aud": "x-aud", "level": "X-Level", "admin": "x-admin",
                            "missing": "x-missing", "evil": "x-evil", "nothing": "x-nothing" },
    })));
    let token = mint(
        Alg::HS512,
        &claims(
            NOW,
            json!({
                "aud": ["api", "web"], "level": 3, "admin": false, "evil": "a\r\nx-injected: 1", "nothing": null,
            }),
        ),
    );
    let req = bearer(&h, &token)
        .header("x-user", "root")
        .header("x-missing", "forged")
        .header("x-evil", "forged")
        .header("x-nothing", "forged");
    assert_eq!(verdict(req.on_request_headers()), Ok(()));
    let header = |name: &str| req.request_header(name);
    assert_eq!(header("x-user").as_deref(), Some("alice"));
    assert_eq!(req.request_header_values("x-user").len(), 1);
    assert_eq!(header("x-aud").as_deref(), Some(r#"["api","web"]"#));
    assert_eq!(header("x-level").as_deref(), Some("3"));
    assert_eq!(header("x-admin").as_deref(), Some("false"));
    assert_eq!(
        header("x-missing"),
        None,
        "an absent claim removes the client's header"
    );
    assert_eq!(
        header("x-evil"),
        None,
        "a claim that cannot be a header value is dropped"
    );
    assert_eq!(header("x-injected"), None);
    assert_eq!(header("x-nothing"), None);
}

// ---------------------------------------------------------------------------------------------
// The cache of verified tokens

#[test]
fn a_repeated_token_is_verified_once_and_served_from_the_cache_until_it_expires() {
    let h = harness(config(json!({ "leeway": "10s" })));
    let token = mint(Alg::RS256, &claims(NOW, json!({ "exp": NOW + 100 })));
    for _ in 0..5 {
        let req = bearer(&h, &token).header("x-user", "forged");
        assert_eq!(verdict(req.on_request_headers()), Ok(()));
        assert_eq!(
            req.request_header("x-user").as_deref(),
            Some("alice"),
            "claims on a hit too"
        );
    }
    assert_eq!(verifications(&h), 1);

    h.advance(Duration::from_secs(109));
    assert_eq!(check(&h, &token), Ok(()));
    h.advance(Duration::from_secs(1));
    assert_eq!(
        check(&h, &token),
        invalid("token expired"),
        "not one second beyond exp + leeway"
    );
    assert_eq!(
        verifications(&h),
        2,
        "the expired entry was verified again, and refused"
    );
}

#[test]
fn the_cache_can_be_turned_off() {
    let h = harness(config(json!({ "cache_size": 0 })));
    let token = mint(Alg::HS256, &valid());
    for _ in 0..3 {
        assert_eq!(check(&h, &token), Ok(()));
    }
    assert_eq!(verifications(&h), 3);
}

#[test]
fn a_refused_token_is_not_cached() {
    let h = harness(config(json!({ "audiences": ["other"] })));
    let token = mint(Alg::HS256, &valid());
    for _ in 0..2 {
        assert_eq!(check(&h, &token), invalid("audience not accepted"));
    }
    assert_eq!(verifications(&h), 2);
}

// ---------------------------------------------------------------------------------------------
// The remote JWKS

const IDP: &str = "idp";

fn remote_config(extra: Value) -> Value {
    config(json!({
        "jwks": null,
        "remote_jwks": { "upstream": IDP, "path": "/.well-known/jwks.json", "cache_duration": "5m", "timeout": "2s" },
    }))
    .as_object()
    .cloned()
    .map(|mut c| {
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                c.insert(k, v);
            }
        }
        Value::Object(c)
    })
    .unwrap()
}

fn body(kids: &[&str]) -> Vec<u8> {
    jwks(kids).to_string().into_bytes()
}

/// The one pending callout: it must be the JWKS fetch.
fn one_fetch(h: &Harness<Jwt>) -> u32 {
    let callouts = h.callouts();
    assert_eq!(callouts.len(), 1, "{callouts:?}");
    let c = &callouts[0];
    assert_eq!(c.upstream, IDP);
    assert_eq!(c.header(":method"), Some("GET"));
    assert_eq!(c.header(":path"), Some("/.well-known/jwks.json"));
    assert_eq!(c.timeout_ms, 2000);
    c.token
}

/// A harness whose first tick fetched the JWKS with `kids`.
fn loaded(kids: &[&str]) -> Harness<Jwt> {
    let h = harness(remote_config(json!({})));
    h.tick();
    let fetch = one_fetch(&h);
    h.answer_callout(
        fetch,
        200,
        &[("content-type", "application/json")],
        &body(kids),
    );
    h
}

#[test]
fn the_remote_jwks_is_fetched_on_the_first_tick_and_refreshed_after_cache_duration() {
    let h = harness(remote_config(
        json!({ "remote_jwks": { "upstream": IDP, "path": "/.well-known/jwks.json", "authority": "idp.test", "timeout": "2s" } }),
    ));
    assert_eq!(h.tick_period(), Some(Duration::from_millis(1)));
    h.tick();
    assert_eq!(h.tick_period(), Some(Duration::from_secs(1)));
    let fetch = one_fetch(&h);
    assert_eq!(h.callouts()[0].header(":authority"), Some("idp.test"));
    h.answer_callout(fetch, 200, &[], &body(&["rsa-a"]));
    assert!(h.logged("loaded 1 keys from idp/.well-known/jwks.json"));
    assert_eq!(check(&h, &mint(Alg::RS256, &valid())), Ok(()));

    // Ticks within the default cache_duration (5m) do not fetch.
    h.advance(Duration::from_secs(299));
    h.tick();
    assert!(h.callouts().is_empty());
    h.advance(Duration::from_secs(1));
    h.tick();
    let fetch = one_fetch(&h);
    h.tick();
    assert_eq!(h.callouts().len(), 1, "one fetch at a time");
    h.answer_callout(fetch, 200, &[], &body(&["rsa-a", "ec-p256"]));
    assert_eq!(check(&h, &mint(Alg::ES256, &valid())), Ok(()));
    assert_eq!(h.metric("jwks_fetches"), Some(2));
}

#[test]
fn a_rotation_drops_the_removed_keys_and_the_tokens_they_verified() {
    let h = loaded(&["rsa-a"]);
    let old = mint(Alg::RS256, &valid());
    assert_eq!(check(&h, &old), Ok(()));
    assert_eq!(check(&h, &old), Ok(()), "cached");

    h.advance(Duration::from_secs(300));
    h.tick();
    let fetch = one_fetch(&h);
    h.answer_callout(fetch, 200, &[], &body(&["rsa-b"]));
    let new = mint_with(Alg::RS256, Some("rsa-b"), "rsa-b", &valid());
    assert_eq!(check(&h, &new), Ok(()));
    // rsa-a is gone: its token is refused, from the cache too. Its kid is unknown now, and the
    // refetch it triggers finds it gone.
    let req = bearer(&h, &old);
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    h.answer_callout(one_fetch(&h), 200, &[], &body(&["rsa-b"]));
    assert_eq!(
        req.local_response().map(|r| r.status),
        Some(401),
        "the token of a removed key"
    );
}

#[test]
fn an_unknown_kid_refetches_once_and_the_request_waits_for_the_answer() {
    let h = loaded(&["rsa-a"]);
    let token = mint(Alg::ES256, &valid());
    let req = bearer(&h, &token);
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    let fetch = one_fetch(&h);

    // Meanwhile, another request with an unknown kid does not fetch again.
    let other = mint(Alg::EdDSA, &valid());
    assert_eq!(check(&h, &other), invalid("unknown signing key"));
    assert_eq!(h.callouts().len(), 1);

    h.answer_callout(fetch, 200, &[], &body(&["rsa-a", "ec-p256"]));
    assert!(req.resumed(), "the waiting request goes on");
    assert_eq!(req.local_response(), None);
    assert_eq!(req.request_header("x-user").as_deref(), Some("alice"));

    // Within 30 s of that refetch, no other: the EdDSA key is still unknown.
    h.advance(Duration::from_secs(29));
    assert_eq!(check(&h, &other), invalid("unknown signing key"));
    assert!(h.callouts().is_empty());
    h.advance(Duration::from_secs(1));
    let req = bearer(&h, &other);
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    h.answer_callout(one_fetch(&h), 200, &[], &body(&["rsa-a", "ec-p256"]));
    assert!(!req.resumed());
    assert_eq!(
        verdict(Outcome::Respond(req.local_response().expect("answered"))),
        invalid("unknown signing key")
    );
}

/// Portico drops the answer of a callout whose request is gone. A client that leaves while its
/// request waits for a refetch must not lose the document, nor keep the fetch record held, nor
/// spend the 30 s budget for nothing: the fetch is sent again from the root context.
#[test]
fn a_refetch_whose_request_left_is_sent_again_from_the_root_context() {
    let h = loaded(&["rsa-a"]);
    let token = mint(Alg::ES256, &valid());
    let req = bearer(&h, &token);
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    let lost = one_fetch(&h);
    req.finish();
    // Its answer comes to a request that no longer exists: nobody hears it.
    h.answer_callout(lost, 200, &[], &body(&["rsa-a", "ec-p256"]));
    assert_eq!(check(&h, &token), invalid("unknown signing key"));
    assert!(
        h.callouts().is_empty(),
        "the budget is spent, the record held"
    );

    // The next tick sends it again, from the root context.
    h.advance(Duration::from_millis(500));
    h.tick();
    let again = one_fetch(&h);
    assert_eq!(h.callouts()[0].context, 1, "the root context");
    h.answer_callout(again, 200, &[], &body(&["rsa-a", "ec-p256"]));
    assert_eq!(check(&h, &token), Ok(()));
    assert_eq!(h.metric("jwks_fetches"), Some(3));

    // The record is free again, and the 30 s budget stands: an unknown kid waits for it.
    h.tick();
    assert!(
        h.callouts().is_empty(),
        "sent again once, not on every tick"
    );
    assert_eq!(
        check(&h, &mint(Alg::EdDSA, &valid())),
        invalid("unknown signing key")
    );
    assert!(h.callouts().is_empty());
    h.advance(Duration::from_secs(30));
    let req = bearer(&h, &mint(Alg::EdDSA, &valid()));
    assert_eq!(
        req.on_request_headers(),
        Outcome::Pause,
        "the record was released"
    );
    h.answer_callout(
        one_fetch(&h),
        200,
        &[],
        &body(&["rsa-a", "ec-p256", "ed25519"]),
    );
    assert!(req.resumed());
    // That request stayed to the end: nothing to send again.
    req.finish();
    h.tick();
    assert!(h.callouts().is_empty());
}

#[test]
fn before_any_jwks_is_loaded_a_request_fetches_it_or_gets_503() {
    let h = harness(remote_config(json!({})));
    let token = mint(Alg::RS256, &valid());
    // No tick yet: the request fetches and waits.
    let first = bearer(&h, &token);
    assert_eq!(first.on_request_headers(), Outcome::Pause);
    let fetch = one_fetch(&h);
    // A second one while that fetch is in flight: 503, try again.
    let Outcome::Respond(r) = bearer(&h, &token).on_request_headers() else {
        panic!("expected 503");
    };
    assert_eq!(r.status, 503);
    assert!(r.headers.contains(&("retry-after".into(), "1".into())));
    // The tick does not fetch either.
    h.tick();
    assert_eq!(h.callouts().len(), 1);
    h.answer_callout(fetch, 200, &[], &body(&["rsa-a"]));
    assert!(first.resumed());
    assert_eq!(check(&h, &token), Ok(()));
}

#[test]
fn a_failed_fetch_keeps_the_old_keys_and_is_retried_after_5s() {
    let h = harness(remote_config(json!({})));
    h.tick();
    h.answer_callout(one_fetch(&h), 0, &[], b"");
    assert!(h.logged("fetching the JWKS from idp/.well-known/jwks.json failed: no answer"));
    let token = mint(Alg::RS256, &valid());
    assert_eq!(
        verdict(bearer(&h, &token).on_request_headers())
            .unwrap_err()
            .0,
        503
    );
    assert!(h.callouts().is_empty(), "no retry before 5 s");
    h.advance(Duration::from_secs(5));
    h.tick();
    h.answer_callout(one_fetch(&h), 200, &[], &body(&["rsa-a"]));
    assert_eq!(check(&h, &token), Ok(()));

    // Later failures keep the keys: a 500, a page that is not JSON, a JWKS with no usable key.
    for (status, answer) in [
        (500, b"oops".to_vec()),
        (200, b"<html>".to_vec()),
        (
            200,
            br#"{"keys":[{"kty":"oct","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#
                .to_vec(),
        ),
    ] {
        h.advance(Duration::from_secs(300));
        h.tick();
        h.answer_callout(one_fetch(&h), status, &[], &answer);
        assert_eq!(
            check(&h, &mint(Alg::RS256, &valid())),
            Ok(()),
            "after {status}"
        );
    }
    assert_eq!(h.metric("jwks_fetch_failures"), Some(4));
}

#[test]
fn symmetric_keys_are_never_taken_from_a_remote_jwks() {
    let h = loaded(&["rsa-a", "hmac"]);
    assert!(h.logged(
        "keys[1] (kid \"hmac\") skipped: symmetric (oct) keys are not taken from a remote JWKS"
    ));
    let req = bearer(&h, &mint(Alg::HS256, &valid()));
    // The kid is unknown; the refetch finds the same document.
    assert_eq!(req.on_request_headers(), Outcome::Pause);
    h.answer_callout(one_fetch(&h), 200, &[], &body(&["rsa-a", "hmac"]));
    assert_eq!(
        verdict(Outcome::Respond(req.local_response().expect("answered"))),
        invalid("unknown signing key")
    );
}

/// The shared-data names this plugin's remote keys use (as another instance would see them).
fn shared_names() -> RemoteKeys {
    RemoteKeys::new(Remote {
        upstream: IDP.into(),
        path: "/.well-known/jwks.json".into(),
        authority: None,
        cache_duration: Duration::from_secs(300),
        timeout: Duration::from_secs(2),
    })
}

/// Shared data as the host has it, except that the first read lets `rival` (another instance)
/// claim the fetch before the write that follows it: the race of two instances' first ticks.
struct Rival<'r> {
    rival: Option<&'r RemoteKeys>,
    now: u64,
    rival_claimed: bool,
}

impl Store for Rival<'_> {
    fn get(
        &mut self,
        key: &str,
    ) -> portico_plugin_sdk::Result<Option<portico_plugin_sdk::shared::Entry>> {
        let read = remote::Host.get(key);
        if let Some(rival) = self.rival.take() {
            self.rival_claimed = rival.try_begin(self.now, Reason::Refresh)?;
        }
        read
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> portico_plugin_sdk::Result<()> {
        remote::Host.set(key, value, cas)
    }
}

#[test]
fn instances_share_one_copy_and_one_fetch() {
    {
        // Two instances claim the first fetch at the same moment: one wins. That holds only
        // because configure created the fetch record: a first write is unconditional.
        let h = harness(remote_config(json!({})));
        let (a, b) = (shared_names(), shared_names());
        assert!(
            h.shared(a.lock_key()).is_some(),
            "configure creates the record"
        );
        let now = NOW * 1_000_000_000;
        let mut store = Rival {
            rival: Some(&b),
            now,
            rival_claimed: false,
        };
        let a_claimed = a.try_begin_in(&mut store, now, Reason::Refresh).unwrap();
        assert!(store.rival_claimed);
        assert!(
            !a_claimed,
            "the rival's claim came between the read and the write"
        );
        // This instance's first tick finds the fetch in flight too.
        h.tick();
        assert!(h.callouts().is_empty());
    }

    let h = loaded(&["rsa-a"]);
    // What the fetch left in shared data.
    let names = shared_names();
    let stored = h.shared(names.jwks_key()).expect("the JWKS is shared");
    assert_eq!(&stored[8..], &body(&["rsa-a"])[..]);
    assert_eq!(
        u64::from_le_bytes(stored[..8].try_into().unwrap()),
        NOW * 1_000_000_000
    );

    // Another instance fetched a newer document: the next tick takes it, without a fetch.
    let mut newer = (NOW + 1)
        .saturating_mul(1_000_000_000)
        .to_le_bytes()
        .to_vec();
    newer.extend_from_slice(&body(&["rsa-a", "ed25519"]));
    portico_plugin_sdk::shared::set(names.jwks_key(), &newer, None).unwrap();
    let token = mint(Alg::EdDSA, &valid());
    // A request finds it too, before the tick: an unknown kid first looks at the shared copy.
    assert_eq!(check(&h, &token), Ok(()));
    assert!(h.callouts().is_empty());

    // A fetch in flight elsewhere: no second one, for ticks or for unknown kids.
    let mut until = vec![0u8; 24];
    until[..8].copy_from_slice(&(NOW + 1000).saturating_mul(1_000_000_000).to_le_bytes());
    portico_plugin_sdk::shared::set(names.lock_key(), &until, None).unwrap();
    h.advance(Duration::from_secs(301));
    h.tick();
    assert!(h.callouts().is_empty());
    assert_eq!(
        check(&h, &mint(Alg::ES256, &valid())),
        invalid("unknown signing key")
    );
    assert!(h.callouts().is_empty());
}
