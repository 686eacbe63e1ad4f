//! The jwt plugin (plugins/jwt, built by scripts/build-plugins.sh) through the real proxy:
//! tokens of every algorithm minted with jsonwebtoken, the attacks of its spec answered 401
//! before any upstream sees them, tokens taken from a cookie or the query and stripped, and a
//! remote JWKS fetched, rotated and refetched for an unknown `kid` while the request waits (and
//! fetched again when that request's client leaves before the answer).

#[path = "../../plugins/jwt/testdata/mint.rs"]
mod mint;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use mint::{ALGORITHMS, Alg, claims, jwks, mint, mint_with};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::support::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn valid() -> Value {
    claims(now(), json!({}))
}

/// An identity provider: `GET /jwks` answers the current JWKS (settable), counted; the next
/// answer can be made to take a while.
struct Idp {
    upstream: Upstream,
    document: Arc<Mutex<String>>,
    delay_next_ms: Arc<AtomicU64>,
}

impl Idp {
    async fn start(kids: &[&str]) -> Idp {
        let document = Arc::new(Mutex::new(jwks(kids).to_string()));
        let delay_next_ms = Arc::new(AtomicU64::new(0));
        let (doc, delay) = (document.clone(), delay_next_ms.clone());
        let upstream = Upstream::with_handler(move |req| {
            let body = doc.lock().unwrap().clone();
            let delay = Duration::from_millis(delay.swap(0, Ordering::SeqCst));
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if req.uri().path() != "/jwks" {
                    return Response::builder()
                        .status(404)
                        .body(empty())
                        .expect("response");
                }
                Response::builder()
                    .header("content-type", "application/jwk-set+json")
                    .body(full(body))
                    .expect("response")
            })
        })
        .await;
        Idp {
            upstream,
            document,
            delay_next_ms,
        }
    }

    /// The next fetch is answered after `delay`.
    fn delay_next(&self, delay: Duration) {
        self.delay_next_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn publish(&self, kids: &[&str]) {
        *self.document.lock().unwrap() = jwks(kids).to_string();
    }

    fn fetches(&self) -> usize {
        self.upstream.hits()
    }
}

/// Listener `web`, upstream `app` (and `idp`), the jwt plugin with `plugin_config` (JSON) on
/// the only route.
fn yaml(app: &Upstream, idp: Option<&Idp>, plugin_config: &Value) -> String {
    yaml_with(app, idp, "jwt", "", plugin_config)
}

/// [`yaml`] with the plugin module `target/plugins/<wasm>.wasm` and `extra` in its mapping.
fn yaml_with(
    app: &Upstream,
    idp: Option<&Idp>,
    wasm: &str,
    extra: &str,
    plugin_config: &Value,
) -> String {
    let idp = idp.map_or(String::new(), |idp| {
        format!(
            "  idp: {{ endpoints: [\"{}\"] }}\n",
            idp.upstream.endpoint()
        )
    });
    format!(
        r#"
listeners: [{{ name: web, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  app: {{ endpoints: ["{}"] }}
{idp}
plugins:
  jwt: {{ module: "{}", config: {plugin_config} {extra} }}
routes:
  - {{ name: api, upstream: app, plugins: [jwt] }}
"#,
        app.endpoint(),
        first_party_wasm(wasm).display()
    )
}

/// Every test key inline, issuer and audience checked, `sub` forwarded as `x-user`.
fn inline_config(extra: Value) -> Value {
    let mut c = json!({
        "jwks": jwks(&["rsa-a", "rsa-b", "ec-p256", "ec-p384", "ed25519", "hmac"]),
        "issuer": "https://idp.test",
        "audiences": ["api"],
        "forward_claims": { "sub": "x-user" },
    });
    if let (Some(base), Value::Object(extra)) = (c.as_object_mut(), extra) {
        base.extend(extra);
    }
    c
}

async fn request(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(path).header("host", "jwt.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(proxy.addr("web"), b.body(empty()).expect("request")).await
}

async fn with_bearer(proxy: &Proxy, token: &str) -> Got {
    request(
        proxy,
        "/api",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn invalid(description: &str) -> String {
    format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_passes_and_its_claims_reach_the_upstream() {
    let app = Upstream::echo("app").await;
    let proxy = Proxy::start(&yaml(&app, None, &inline_config(json!({})))).await;
    for (alg, _) in ALGORITHMS {
        let token = mint(alg, &valid());
        let got = request(
            &proxy,
            "/api",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-user", "root"),
            ],
        )
        .await;
        assert_eq!(got.status, 200, "{alg:?}: {}", got.text());
        let seen = got.seen();
        assert_eq!(
            seen.headers.get("x-user").map(String::as_str),
            Some("alice"),
            "{alg:?}: the claim, not the client's header"
        );
        assert_eq!(
            seen.headers.get("authorization"),
            Some(&format!("Bearer {token}")),
            "{alg:?}: forwarded by default"
        );
    }
    assert_eq!(app.hits(), 12);
}

/// The jwt plugin built with the SDK's `crypto-fallback` feature (jwt-fallback.wasm) and
/// denied Portico's foreign functions (`foreign_functions: []`) runs as in a Proxy-Wasm host
/// without `portico.verify_signature`: it verifies every algorithm inside Wasm, and a tampered
/// token of each family still fails. Built without the feature and denied the same, the plugin
/// cannot verify and lets nothing through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_host_verifier_the_fallback_build_verifies_inside_wasm() {
    let app = Upstream::echo("app").await;
    let config = inline_config(json!({}));
    let proxy = Proxy::start(&yaml_with(
        &app,
        None,
        "jwt-fallback",
        ", foreign_functions: []",
        &config,
    ))
    .await;
    for (alg, _) in ALGORITHMS {
        let token = mint(alg, &valid());
        let got = with_bearer(&proxy, &token).await;
        assert_eq!(got.status, 200, "{alg:?}: {}", got.text());
        assert_eq!(
            got.seen().headers.get("x-user").map(String::as_str),
            Some("alice"),
            "{alg:?}"
        );
    }
    assert_eq!(app.hits(), ALGORITHMS.len());
    let n = now();
    for alg in [
        Alg::RS256,
        Alg::PS384,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS512,
    ] {
        let token = mint::tamper(&mint(alg, &valid()), &claims(n, json!({ "sub": "admin" })));
        let got = with_bearer(&proxy, &token).await;
        assert_eq!(got.status, 401, "{alg:?}: {}", got.text());
        assert_eq!(
            got.header("www-authenticate"),
            Some(invalid("invalid signature").as_str()),
            "{alg:?}"
        );
    }
    assert_eq!(app.hits(), ALGORITHMS.len(), "a tampered token passed");

    let proxy = Proxy::start(&yaml_with(
        &app,
        None,
        "jwt",
        ", foreign_functions: [portico.counter_add]",
        &config,
    ))
    .await;
    for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let got = with_bearer(&proxy, &mint(alg, &valid())).await;
        assert_eq!(got.status, 500, "{alg:?}: {}", got.text());
    }
    assert_eq!(
        app.hits(),
        ALGORITHMS.len(),
        "a token passed without a verifier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_answered_401_and_never_reach_the_upstream() {
    let app = Upstream::echo("app").await;
    let proxy = Proxy::start(&yaml(&app, None, &inline_config(json!({})))).await;
    let n = now();
    let good = mint(Alg::RS256, &valid());
    let rsa_public = mint::jwk("rsa-a").to_string();
    let table: Vec<(&str, String, String)> = vec![
        (
            "alg none",
            mint::assemble(&json!({ "alg": "none", "kid": "rsa-a" }), &valid(), b""),
            invalid("algorithm not accepted"),
        ),
        (
            "HS256 signed with the RSA public key",
            mint::mint_hmac_with_secret(Some("rsa-a"), rsa_public.as_bytes(), &valid()),
            invalid("algorithm not accepted"),
        ),
        (
            "tampered payload",
            mint::tamper(&good, &claims(n, json!({ "sub": "admin" }))),
            invalid("invalid signature"),
        ),
        (
            "stripped signature",
            mint::strip_signature(&good),
            invalid("invalid signature"),
        ),
        (
            "expired",
            mint(Alg::ES256, &claims(n, json!({ "exp": n - 120 }))),
            invalid("token expired"),
        ),
        (
            "not yet valid",
            mint(Alg::ES384, &claims(n, json!({ "nbf": n + 600 }))),
            invalid("token not yet valid"),
        ),
        (
            "wrong issuer",
            mint(
                Alg::EdDSA,
                &claims(n, json!({ "iss": "https://evil.test" })),
            ),
            invalid("issuer not accepted"),
        ),
        (
            "wrong audience",
            mint(Alg::PS256, &claims(n, json!({ "aud": ["billing"] }))),
            invalid("audience not accepted"),
        ),
        (
            "unknown kid",
            mint_with(Alg::RS256, Some("rsa-z"), "rsa-a", &valid()),
            invalid("unknown signing key"),
        ),
        ("not a JWT", "not.a.jwt".into(), invalid("malformed token")),
        (
            "oversized",
            mint(Alg::HS256, &claims(n, json!({ "pad": "x".repeat(9000) }))),
            invalid("token too large"),
        ),
    ];
    let mut table = table;
    // The same without a kid, with every form of the public key as the secret: only the HMAC
    // key fits HS256, and it did not sign them.
    for (what, secret) in mint::rsa_public_secrets() {
        table.push((
            what,
            mint::mint_hmac_with_secret(None, &secret, &valid()),
            invalid("invalid signature"),
        ));
    }
    for (what, token, challenge) in table {
        let got = with_bearer(&proxy, &token).await;
        assert_eq!(got.status, 401, "{what}: {}", got.text());
        assert_eq!(
            got.header("www-authenticate"),
            Some(challenge.as_str()),
            "{what}"
        );
    }

    let got = request(&proxy, "/api", &[]).await;
    assert_eq!(got.status, 401);
    assert_eq!(
        got.header("www-authenticate"),
        Some("Bearer"),
        "no credentials, no error code"
    );
    let got = request(
        &proxy,
        "/api",
        &[
            ("authorization", &format!("Bearer {good}")),
            ("authorization", &format!("Bearer {good}")),
        ],
    )
    .await;
    assert_eq!(got.status, 400, "two Authorization headers");
    assert_eq!(app.hits(), 0, "no refused request reached the upstream");

    // The same proxy lets the good token through.
    assert_eq!(with_bearer(&proxy, &good).await.status, 200);
    assert_eq!(app.hits(), 1);

    // With RSA keys alone, no key fits a kid-less HS256 token at all.
    let rsa_only = inline_config(json!({ "jwks": jwks(&["rsa-a", "rsa-b"]) }));
    let proxy = Proxy::start(&yaml(&app, None, &rsa_only)).await;
    for (what, secret) in mint::rsa_public_secrets() {
        let token = mint::mint_hmac_with_secret(None, &secret, &valid());
        let got = with_bearer(&proxy, &token).await;
        assert_eq!(got.status, 401, "{what}: {}", got.text());
        assert_eq!(
            got.header("www-authenticate"),
            Some(invalid("unknown signing key").as_str()),
            "{what}"
        );
    }
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_cookie_or_the_query_is_stripped_before_the_upstream() {
    let app = Upstream::echo("app").await;
    let config = inline_config(json!({
        "forward_token": false,
        "from": [{ "header": "authorization" }, { "cookie": "jwt" }, { "query": "access_token" }],
    }));
    let proxy = Proxy::start(&yaml(&app, None, &config)).await;
    let token = mint(Alg::ES256, &valid());

    let got = request(&proxy, &format!("/api/x?a=1&access_token={token}&b=2"), &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.seen().path, "/api/x?a=1&b=2");

    let cookie = format!("theme=dark; jwt={token}");
    let got = request(&proxy, "/api", &[("cookie", &cookie)]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.seen().headers.get("cookie").map(String::as_str),
        Some("theme=dark")
    );

    let got = with_bearer(&proxy, &token).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.seen().headers.get("authorization"), None);

    let got = request(
        &proxy,
        &format!("/api?access_token={token}"),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(
        got.status, 400,
        "two tokens: which would the upstream believe?"
    );
    assert_eq!(app.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_jwks_is_fetched_once_rotated_and_refetched_for_an_unknown_kid() {
    let (_app, idp, proxy, old) = loaded(&["rsa-a"], Alg::RS256, "10m").await;
    assert_eq!(
        idp.fetches(),
        1,
        "one fetch for every instance (shared data, single-flight)"
    );

    // The identity provider rotates to rsa-b. The first token naming it makes the plugin
    // refetch, and that very request waits for the answer and passes.
    idp.publish(&["rsa-b"]);
    let new = mint_with(Alg::RS256, Some("rsa-b"), "rsa-b", &valid());
    let got = with_bearer(&proxy, &new).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(idp.fetches(), 2);

    // rsa-a is gone: its tokens are refused once every instance has the new document (each
    // looks at the shared copy every second), cached or not.
    let unknown = invalid("unknown signing key");
    eventually("the old key's token to be refused", || async {
        let got = with_bearer(&proxy, &old).await;
        got.status == 401 && got.header("www-authenticate") == Some(unknown.as_str())
    })
    .await;
    // Another unknown kid within 30 s of the last refetch: refused without a fetch.
    let stranger = mint(Alg::ES256, &valid());
    assert_eq!(with_bearer(&proxy, &stranger).await.status, 401);
    assert_eq!(idp.fetches(), 2, "at most one refetch per 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_plugin_refuses_fails_the_start_with_its_words() {
    let app = Upstream::echo("app").await;
    for (config, words) in [
        (
            inline_config(json!({ "algorithms": ["RS256", "none"] })),
            "\"none\" (unsigned tokens) is never accepted",
        ),
        (json!({ "issuer": "x" }), "no keys: set jwks"),
        (
            json!({ "jwks": { "keys": [{ "kty": "EC", "crv": "P-521", "kid": "big", "x": "AA", "y": "AA" }] } }),
            "jwks.keys[0] (kid \"big\"): unsupported curve \"P-521\"",
        ),
        (inline_config(json!({ "leeway": "a minute" })), "leeway"),
        // A point off the curve: Portico's verifier itself refuses it, at configuration.
        (
            json!({ "jwks": { "keys": [corrupt(mint::jwk("ec-p256"), "y", |b| b ^ 1)] } }),
            "jwks.keys[0] (kid \"ec-p256\"): the signature verifier refuses this ES256 key",
        ),
        (
            json!({ "jwks": { "keys": [corrupt(mint::jwk("rsa-a"), "n", |b| b & 0xfe)] } }),
            "jwks.keys[0] (kid \"rsa-a\"): n is even",
        ),
    ] {
        let err = Proxy::try_start_in(TempDir::new(), &yaml(&app, None, &config))
            .await
            .err()
            .unwrap_or_else(|| panic!("{config} was accepted"));
        assert!(err.contains(words), "{config}: {err}");
    }
}

/// `jwk` with the last byte of its base64url member `member` changed by `f`.
fn corrupt(mut jwk: Value, member: &str, f: impl Fn(u8) -> u8) -> Value {
    let mut bytes = mint::unb64(jwk[member].as_str().expect("a base64url member"));
    let last = bytes.last_mut().expect("not empty");
    *last = f(*last);
    jwk[member] = json!(mint::b64(&bytes));
    jwk
}

/// `inline_config` with the keys from the `idp` upstream instead of inline ones.
fn remote_config(cache_duration: &str, extra: Value) -> Value {
    let mut config = inline_config(extra);
    let c = config.as_object_mut().expect("an object");
    c.remove("jwks");
    c.insert(
        "remote_jwks".into(),
        json!({ "upstream": "idp", "path": "/jwks", "cache_duration": cache_duration }),
    );
    config
}

/// An echo app behind a proxy whose jwt plugin takes its keys from an identity provider serving
/// `keys` (refreshed every `cache_duration`), once the keys are loaded; and a token, signed with
/// `alg` by one of them, that passes.
async fn loaded(keys: &[&str], alg: Alg, cache_duration: &str) -> (Upstream, Idp, Proxy, String) {
    let app = Upstream::echo("app").await;
    let idp = Idp::start(keys).await;
    let config = remote_config(cache_duration, json!({}));
    let proxy = Proxy::start(&yaml(&app, Some(&idp), &config)).await;
    let token = mint(alg, &valid());
    eventually("the JWKS to be loaded", || async {
        with_bearer(&proxy, &token).await.status == 200
    })
    .await;
    (app, idp, proxy, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_jwks_is_fetched_again_every_cache_duration() {
    let (_app, idp, proxy, old) = loaded(&["rsa-a"], Alg::RS256, "1s").await;

    // No request asks for it: the refresh alone brings the new key.
    idp.publish(&["rsa-a", "rsa-b"]);
    let before = idp.fetches();
    wait_for("two refreshes", || idp.fetches() >= before + 2).await;
    let new = mint_with(Alg::RS256, Some("rsa-b"), "rsa-b", &valid());
    assert_eq!(with_bearer(&proxy, &new).await.status, 200);
    assert_eq!(with_bearer(&proxy, &old).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_plugin_starts_with_the_keys_already_fetched() {
    let (app, idp, proxy, token) = loaded(&["ec-p256"], Alg::ES256, "10m").await;
    assert_eq!(idp.fetches(), 1);

    let changed = remote_config("10m", json!({ "forward_claims": { "sub": "x-subject" } }));
    proxy
        .rewrite_until(&yaml(&app, Some(&idp), &changed), "success")
        .await;
    let got = with_bearer(&proxy, &token).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.seen().headers.get("x-subject").map(String::as_str),
        Some("alice"),
        "the new configuration serves"
    );
    assert_eq!(
        idp.fetches(),
        1,
        "its keys came from shared data, not a new fetch"
    );
}

/// The attack of a client that sends a token with an unknown `kid` and hangs up: the refetch it
/// triggered was sent from its request, whose answer Portico drops once the request is gone.
/// The plugin sends the fetch again from its own context, so the rotated key still loads at
/// once rather than after the 30 s refetch budget (or `cache_duration`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refetch_survives_the_client_that_triggered_it_leaving() {
    let (_app, idp, proxy, _) = loaded(&["rsa-a"], Alg::RS256, "10m").await;
    assert_eq!(idp.fetches(), 1);

    idp.publish(&["rsa-a", "rsa-b"]);
    idp.delay_next(Duration::from_secs(3));
    let new = mint_with(Alg::RS256, Some("rsa-b"), "rsa-b", &valid());
    let mut client = tokio::net::TcpStream::connect(proxy.addr("web"))
        .await
        .expect("connect");
    let request =
        format!("GET /api HTTP/1.1\r\nhost: jwt.test\r\nauthorization: Bearer {new}\r\n\r\n");
    client.write_all(request.as_bytes()).await.expect("write");
    wait_for("the refetch", || idp.fetches() == 2).await;
    drop(client);

    // Long before the 30 s budget allows another refetch, the key is there.
    eventually("the rotated key to be accepted", || async {
        with_bearer(&proxy, &new).await.status == 200
    })
    .await;
    assert_eq!(
        idp.fetches(),
        3,
        "the lost fetch, and the same sent once more from the plugin's own context"
    );
}
