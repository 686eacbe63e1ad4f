//! Criterion micro-benchmarks of the first-party plugins (plugins/, built by
//! scripts/build-plugins.sh into target/plugins/): one request's whole stream through a chain
//! (`Chain::start`, `request_headers`, `response_headers`, the drop that ends the contexts),
//! on a tokio current-thread runtime, through the public API only — the same harness as
//! bench/micro/plugin.rs. Beside them, the native baseline the issue compares with: the same
//! token decoded and validated by `jsonwebtoken` (aws-lc-rs), its key parsed once.
//!
//! - `jwt <ALG> cold`: every request verifies the signature (`cache_size: 0`);
//! - `jwt <ALG> warm`: the token is in the plugin's cache;
//! - `jwt <ALG> cold, in guest`: as cold, but the plugin is the jwt plugin built with the SDK's
//!   `crypto-fallback` feature (target/plugins/jwt-fallback.wasm) and denied the host's
//!   foreign functions, so it verifies inside Wasm with the RustCrypto crates, as it would in
//!   a Proxy-Wasm host without Portico's `portico.verify_signature`;
//! - `native <ALG>`: `jsonwebtoken::decode` of the same token (signature, exp, iss, aud);
//! - `rate-limit`, `auth api_key`, `header-rewrite`: each plugin alone;
//! - `chain of 4 (warm)`: jwt (RS256, cached) + rate-limit + auth api_key + header-rewrite.
//!
//! Run: `bash scripts/build-plugins.sh && cargo bench -p portico --bench first_party`.
//! Numbers and how to read them: docs/benchmarks.md ("First-party plugins").

mod harness;
#[path = "../../plugins/jwt/testdata/mint.rs"]
// Its self-tests are compiled in (cfg(test)) but not run by a harness-less bench.
#[allow(unused_imports)]
mod mint;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use portico::plugin::{Chain, PluginHost, RequestHead, Verdict};
use serde_json::{Value, json};

use harness::{load, load_with, request_head, response_head, stream_info};
use mint::Alg;
use portico::plugin::foreign::Allowed;

/// The API key the auth plugin is configured with (by its SHA-256).
const API_KEY: &str = "bench-key-0123456789";

fn module(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/build-plugins.sh` first",
        path.display()
    );
    path
}

/// First-party plugin `wasm` (target/plugins/<wasm>.wasm) as `name`.
fn plugin(
    host: &PluginHost,
    name: &str,
    wasm: &str,
    config: Value,
) -> Arc<portico::plugin::Plugin> {
    load(host, name, &module(wasm), config.to_string())
}

fn jwt_config(cache_size: u64) -> Value {
    json!({
        "issuer": "https://idp.test",
        "audiences": ["api"],
        "jwks": mint::jwks(&["rsa-a", "ec-p256", "hmac"]),
        "cache_size": cache_size,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// One request's whole life through `chain`; `Err` with the status of a local response.
async fn one_stream(chain: &Chain, headers: &[(&'static str, String)]) -> Result<RequestHead, u16> {
    let stream = chain
        .start(Arc::new(stream_info()))
        .await
        .expect("chain start");
    let mut req = request_head(
        headers
            .iter()
            .map(|(k, v)| (*k, HeaderValue::from_str(v).expect("header value"))),
    );
    match stream
        .request_headers(&mut req, true)
        .await
        .expect("request headers")
    {
        Verdict::Continue => {}
        Verdict::Respond(local) => return Err(local.status),
    }
    let mut resp = response_head();
    let verdict = stream
        .response_headers(&mut resp, false)
        .await
        .expect("response headers");
    assert!(matches!(verdict, Verdict::Continue));
    black_box(&resp);
    drop(stream);
    Ok(req)
}

struct Case {
    name: String,
    chain: Chain,
    headers: Vec<(&'static str, String)>,
}

fn streams(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let host = PluginHost::default();

    let claims = mint::claims(now(), json!({}));
    let bearer = |alg: Alg| format!("Bearer {}", mint::mint(alg, &claims));
    let mut cases = vec![Case {
        name: "no plugins".into(),
        chain: Chain::new(Vec::new()),
        headers: Vec::new(),
    }];
    for alg in [Alg::HS256, Alg::RS256, Alg::ES256] {
        for (temp, cache) in [("cold", 0), ("warm", 10_000)] {
            let name = format!("jwt-{}-{temp}", mint::alg_name(alg)).to_lowercase();
            cases.push(Case {
                name: format!("jwt {} {temp}", mint::alg_name(alg)),
                chain: Chain::new(vec![plugin(&host, &name, "jwt", jwt_config(cache))]),
                headers: vec![("authorization", bearer(alg))],
            });
        }
    }
    for alg in [Alg::HS256, Alg::RS256, Alg::ES256] {
        let name = format!("jwt-{}-guest", mint::alg_name(alg)).to_lowercase();
        cases.push(Case {
            name: format!("jwt {} cold, in guest", mint::alg_name(alg)),
            chain: Chain::new(vec![load_with(
                &host,
                &name,
                &module("jwt-fallback"),
                jwt_config(0).to_string(),
                Allowed::NONE,
            )]),
            headers: vec![("authorization", bearer(alg))],
        });
    }
    let rate_limit = || json!({ "rate": 1_000_000_000u64, "per": "1s" });
    let api_key = || json!({ "type": "api_key", "keys": [{ "name": "bench", "sha256": sha256_hex(API_KEY) }] });
    let rewrite = || {
        json!({
            "request": { "set": { "x-request-host": "{request.host}" }, "remove": ["x-debug"] },
            "response": {
                "set": { "strict-transport-security": "max-age=63072000" },
                "remove": ["server"]
            }
        })
    };
    cases.push(Case {
        name: "rate-limit".into(),
        chain: Chain::new(vec![plugin(&host, "rl", "rate-limit", rate_limit())]),
        headers: Vec::new(),
    });
    cases.push(Case {
        name: "auth api_key".into(),
        chain: Chain::new(vec![plugin(&host, "key", "auth", api_key())]),
        headers: vec![("x-api-key", API_KEY.to_string())],
    });
    cases.push(Case {
        name: "header-rewrite".into(),
        chain: Chain::new(vec![plugin(&host, "hr", "header-rewrite", rewrite())]),
        headers: Vec::new(),
    });
    cases.push(Case {
        name: "chain of 4 (warm)".into(),
        chain: Chain::new(vec![
            plugin(&host, "c-jwt", "jwt", jwt_config(10_000)),
            plugin(&host, "c-rl", "rate-limit", rate_limit()),
            plugin(&host, "c-key", "auth", api_key()),
            plugin(&host, "c-hr", "header-rewrite", rewrite()),
        ]),
        headers: vec![
            ("authorization", bearer(Alg::RS256)),
            ("x-api-key", API_KEY.to_string()),
        ],
    });

    // Every case lets its request through (a refusal would measure the wrong path), and the
    // plugins really ran: the api key is stripped, header-rewrite set its header.
    for case in &cases {
        let req = rt
            .block_on(one_stream(&case.chain, &case.headers))
            .unwrap_or_else(|status| panic!("{}: answered {status}", case.name));
        if case.name.contains("api_key") || case.name.starts_with("chain") {
            assert!(req.headers.get("x-api-key").is_none(), "{}", case.name);
        }
        if case.name.contains("rewrite") || case.name.starts_with("chain") {
            assert!(req.headers.get("x-request-host").is_some(), "{}", case.name);
        }
    }

    let mut group = c.benchmark_group("first-party plugins");
    for case in &cases {
        group.bench_function(&case.name, |b| {
            b.iter(|| rt.block_on(one_stream(&case.chain, &case.headers)))
        });
    }
    // The native baseline: decode and validate the same tokens, keys parsed once.
    for alg in [Alg::HS256, Alg::RS256, Alg::ES256] {
        let token = mint::mint(alg, &claims);
        let kid = match alg {
            Alg::HS256 => "hmac",
            Alg::RS256 => "rsa-a",
            _ => "ec-p256",
        };
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(mint::jwk(kid)).expect("JWK");
        let key = match alg {
            Alg::HS256 => jsonwebtoken::DecodingKey::from_secret(mint::HMAC_SECRET),
            _ => jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key"),
        };
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_issuer(&["https://idp.test"]);
        validation.set_audience(&["api"]);
        jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("native decode");
        group.bench_function(format!("native {}", mint::alg_name(alg)), |b| {
            b.iter(|| jsonwebtoken::decode::<Value>(black_box(&token), &key, &validation))
        });
    }
    group.finish();
}

fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

criterion_group!(benches, streams);
criterion_main!(benches);
