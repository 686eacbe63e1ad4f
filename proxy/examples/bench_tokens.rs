//! The JWKS and tokens of bench/run.sh's scenario 7 (the first-party plugins under load).
//!
//! Prints `NAME=value` lines for the script to read: `JWKS=` the JSON document the jwt plugin is
//! configured with (the test keys `rsa-a`, `ec-p256` and `hmac`, as in
//! bench/micro/first_party.rs), then `TOKEN_HS256=`, `TOKEN_RS256=` and `TOKEN_ES256=`, one
//! valid token each: issuer `https://idp.test`, audience `api`, subject `alice`, expiring a
//! day from now. The keys are the jwt plugin's test keys (plugins/jwt/testdata), which protect
//! nothing; the tokens are minted at bench time and never committed.
//!
//! Run: `cargo run --release -p portico --example bench_tokens`.

#[path = "../../plugins/jwt/testdata/mint.rs"]
mod mint; // (mint.rs allows its own dead code)

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use mint::Alg;

/// How long the tokens stay valid: long enough for any run of the benchmark.
const VALID_FOR_SECS: u64 = 24 * 60 * 60;

fn main() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let claims = mint::claims(now, json!({ "exp": now + VALID_FOR_SECS }));
    println!("JWKS={}", mint::jwks(&["rsa-a", "ec-p256", "hmac"]));
    for alg in [Alg::HS256, Alg::RS256, Alg::ES256] {
        println!("TOKEN_{}={}", mint::alg_name(alg), mint::mint(alg, &claims));
    }
}
