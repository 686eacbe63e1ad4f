//! JSON Web Keys (RFC 7517, RFC 7518 §6, RFC 8037) into verification keys.
//!
//! Inline keys are the operator's own: a key that cannot be used is a configuration error that
//! names it. Keys fetched from a remote JWKS are the identity provider's: one that cannot be
//! used (an encryption key, a curve not supported) is skipped with a warning, and symmetric
//! (`oct`) keys are never taken from there — a key anybody can fetch signs nothing.
//!
//! "Usable" is what Portico's verifier (`portico.verify_signature`) takes: an RSA modulus that is
//! odd and of 2048 to 8192 bits, an odd exponent of 2 to 33 bits, EC coordinates of the curve's
//! size that make a point on it, a 32-byte Ed25519 key. The shapes are checked here, and every
//! public key is then shown to the verifier itself once, with a dummy signature: a key it
//! refuses (a point off the curve) would otherwise fail every request that names it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portico_plugin_sdk::crypto::{self, Algorithm, Curve, Key};
use serde_json::Value;

/// A key a token may be verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The JWK's `alg`: when set, the only algorithm the key verifies.
    pub alg: Option<Algorithm>,
    pub key: Key,
}

impl VerifyKey {
    /// Whether a token signed with `alg` may be checked with this key: the key's `alg` if it
    /// names one, else its type (and curve). An HMAC key must be at least as long as the
    /// hash's output (RFC 7518 §3.2).
    pub fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) || !self.key.fits(alg) {
            return false;
        }
        match (&self.key, alg) {
            (Key::Hmac(k), Algorithm::HS384) => k.len() >= 48,
            (Key::Hmac(k), Algorithm::HS512) => k.len() >= 64,
            _ => true,
        }
    }
}

/// The smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus the verifier takes.
const MAX_RSA_BITS: usize = 8192;
/// The bit lengths of an RSA public exponent the verifier takes.
const RSA_EXPONENT_BITS: std::ops::RangeInclusive<usize> = 2..=33;
/// The shortest HMAC secret accepted (HS256's output size).
const MIN_HMAC_BYTES: usize = 32;

/// An inline JWKS: `{ "keys": [...] }` or the same document as JSON text. Every key must be
/// usable.
pub fn parse_inline(value: &Value) -> Result<Vec<VerifyKey>, String> {
    let parsed;
    let doc = match value {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("jwks: not a JSON document: {e}"))?;
            &parsed
        }
        other => other,
    };
    let keys = key_list(doc).map_err(|e| format!("jwks: {e}"))?;
    keys.iter()
        .enumerate()
        .map(|(i, jwk)| {
            parse_key(jwk, true).map_err(|e| format!("jwks.keys[{i}]{}: {e}", describe(jwk)))
        })
        .collect()
}

/// A fetched JWKS: the usable keys, and a warning for each key skipped.
pub fn parse_remote(body: &[u8]) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in key_list(&doc)?.iter().enumerate() {
        match parse_key(jwk, false) {
            Ok(k) => keys.push(k),
            Err(e) => skipped.push(format!("keys[{i}]{} skipped: {e}", describe(jwk))),
        }
    }
    Ok((keys, skipped))
}

fn key_list(doc: &Value) -> Result<&Vec<Value>, String> {
    match doc.get("keys") {
        Some(Value::Array(keys)) => Ok(keys),
        Some(_) => Err("\"keys\" is not a list".into()),
        None => Err("no \"keys\" list (a JWKS is { \"keys\": [...] })".into()),
    }
}

/// ` (kid "abc")` when the key has a kid, for messages.
fn describe(jwk: &Value) -> String {
    match jwk.get("kid").and_then(Value::as_str) {
        Some(kid) => format!(" (kid {kid:?})"),
        None => String::new(),
    }
}

fn parse_key(jwk: &Value, inline: bool) -> Result<VerifyKey, String> {
    let Value::Object(members) = jwk else {
        return Err("not a JSON object".into());
    };
    let text = |name: &str| -> Result<Option<&str>, String> {
        match members.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let value = text(name)?.ok_or_else(|| format!("no {name}"))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| format!("{name} is not base64url without padding"))
    };

    if let Some(usage) = text("use")?
        && usage != "sig"
    {
        return Err(format!("use is {usage:?}, not \"sig\""));
    }
    if let Some(ops) = members.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let kid = text("kid")?.map(str::to_string);
    let kty = text("kty")?.ok_or("no kty")?;
    let key = match kty {
        "RSA" => {
            let n = bytes("n")?;
            let n = strip_leading_zeros(&n);
            let bits = bit_len(n);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits (at least {MIN_RSA_BITS} are required)"
                ));
            }
            if bits > MAX_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits (at most {MAX_RSA_BITS} are supported)"
                ));
            }
            if !odd(n) {
                return Err("n is even, so not an RSA modulus".into());
            }
            let e = bytes("e")?;
            let e = strip_leading_zeros(&e);
            if !odd(e) || !RSA_EXPONENT_BITS.contains(&bit_len(e)) {
                return Err(
                    "e is not a usable RSA exponent (an odd number of 2 to 33 bits)".into(),
                );
            }
            Key::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            }
        }
        "EC" => {
            let (curve, size) = match text("crv")? {
                Some("P-256") => (Curve::P256, 32),
                Some("P-384") => (Curve::P384, 48),
                Some(other) => return Err(format!("unsupported curve {other:?} for kty EC")),
                None => return Err("no crv".into()),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != size || y.len() != size {
                return Err(format!(
                    "x and y of a {size}-byte curve must be {size} bytes"
                ));
            }
            Key::Ec { curve, x, y }
        }
        "OKP" => match text("crv")? {
            Some("Ed25519") => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err("x of an Ed25519 key must be 32 bytes".into());
                }
                Key::Ed25519(x)
            }
            Some(other) => return Err(format!("unsupported curve {other:?} for kty OKP")),
            None => return Err("no crv".into()),
        },
        "oct" if !inline => {
            return Err("symmetric (oct) keys are not taken from a remote JWKS".into());
        }
        "oct" => {
            let k = bytes("k")?;
            if k.len() < MIN_HMAC_BYTES {
                return Err(format!(
                    "an oct key of {} bytes (at least {MIN_HMAC_BYTES} are required)",
                    k.len()
                ));
            }
            Key::Hmac(k)
        }
        other => return Err(format!("unsupported kty {other:?}")),
    };

    let alg = match text("alg")? {
        None => None,
        Some(name) => {
            let alg =
                Algorithm::from_name(name).ok_or_else(|| format!("unsupported alg {name:?}"))?;
            let candidate = VerifyKey {
                kid: None,
                alg: None,
                key: key.clone(),
            };
            if !candidate.fits(alg) {
                return Err(format!("alg {name} does not fit a kty {kty} key"));
            }
            Some(alg)
        }
    };
    probe(&key, alg)?;
    Ok(VerifyKey { kid, alg, key })
}

/// Shows a public key to the signature verifier with a dummy signature: a key it cannot use
/// is an error (`Err` with [`portico_plugin_sdk::Error::is_invalid`]), a signature it merely
/// finds wrong is not. Outside a host (the module's own unit tests) there is no verifier, and
/// nothing is concluded.
fn probe(key: &Key, alg: Option<Algorithm>) -> Result<(), String> {
    let alg = match (alg, key) {
        (Some(alg), _) => alg,
        (None, Key::Rsa { .. }) => Algorithm::RS256,
        (None, Key::Ec { curve, .. }) if *curve == Curve::P384 => Algorithm::ES384,
        (None, Key::Ec { .. }) => Algorithm::ES256,
        (None, Key::Ed25519(_)) => Algorithm::EdDSA,
        // Any secret of the accepted length keys an HMAC.
        (None, _) => return Ok(()),
    };
    if alg.family() == crypto::Family::Hmac {
        return Ok(());
    }
    match crypto::verify(alg, key, b"portico jwt key probe", &[0]) {
        Err(e) if e.is_invalid() => Err(format!(
            "the signature verifier refuses this {} key ({e})",
            alg.name()
        )),
        _ => Ok(()),
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The bit length of a big-endian integer without leading zeros.
fn bit_len(bytes: &[u8]) -> usize {
    bytes
        .first()
        .map_or(0, |b| bytes.len() * 8 - b.leading_zeros() as usize)
}

fn odd(bytes: &[u8]) -> bool {
    bytes.last().is_some_and(|b| b & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(bits: usize) -> Value {
        let mut n = vec![0xc5u8; bits / 8];
        n[0] = 0xd1;
        json!({ "kty": "RSA", "n": b64(&n), "e": "AQAB" })
    }

    fn ec(crv: &str, size: usize) -> Value {
        json!({ "kty": "EC", "crv": crv, "x": b64(&vec![1; size]), "y": b64(&vec![2; size]) })
    }

    fn with(mut jwk: Value, k: &str, v: Value) -> Value {
        jwk[k] = v;
        jwk
    }

    #[test]
    fn usable_keys_of_every_type() {
        let keys = parse_inline(&json!({ "keys": [
            with(with(rsa(2048), "kid", json!("r")), "e", json!(b64(&[1, 0, 0, 0, 1]))),
            with(rsa(8192), "e", json!(b64(&[0, 3]))),
            with(ec("P-256", 32), "alg", json!("ES256")),
            ec("P-384", 48),
            { "kty": "OKP", "crv": "Ed25519", "x": b64(&[7; 32]), "use": "sig" },
            { "kty": "oct", "k": b64(&[9; 32]), "key_ops": ["sign", "verify"] },
        ]}))
        .unwrap();
        assert_eq!(keys.len(), 6);
        assert_eq!(keys[0].kid.as_deref(), Some("r"));
        assert_eq!(keys[2].alg, Some(Algorithm::ES256));
        assert!(matches!(
            keys[3].key,
            Key::Ec {
                curve: Curve::P384,
                ..
            }
        ));
        assert!(matches!(keys[4].key, Key::Ed25519(_)));
        assert!(matches!(keys[5].key, Key::Hmac(_)));
    }

    #[test]
    fn a_jwks_as_json_text_is_read_too() {
        let text = json!({ "keys": [rsa(2048)] }).to_string();
        assert_eq!(parse_inline(&Value::String(text)).unwrap().len(), 1);
    }

    #[test]
    fn unusable_inline_keys_are_errors_that_name_the_key() {
        let table: &[(Value, &str)] = &[
            (
                json!({ "kty": "RSA", "n": "AQAB" }),
                "jwks.keys[0]: an RSA key of 17 bits",
            ),
            (
                json!({ "kty": "RSA", "n": "AAAA", "e": "AQAB" }),
                "an RSA key of 0 bits",
            ),
            (
                json!({ "kty": "RSA", "n": "", "e": "AQAB" }),
                "an RSA key of 0 bits",
            ),
            (rsa(1024), "an RSA key of 1024 bits (at least 2048"),
            (
                rsa(8200),
                "an RSA key of 8200 bits (at most 8192 are supported)",
            ),
            (
                with(rsa(2048), "n", json!(b64(&[0xd1; 256].map(|b| b & 0xfe)))),
                "n is even, so not an RSA modulus",
            ),
            (
                with(rsa(2048), "e", json!(b64(&[1, 0, 0]))),
                "e is not a usable RSA exponent (an odd number of 2 to 33 bits)",
            ),
            (
                with(rsa(2048), "e", json!(b64(&[1]))),
                "e is not a usable RSA exponent",
            ),
            (
                with(rsa(2048), "e", json!(b64(&[3, 0, 0, 0, 1]))),
                "e is not a usable RSA exponent",
            ),
            (
                with(rsa(2048), "e", json!("")),
                "e is not a usable RSA exponent",
            ),
            (with(rsa(2048), "n", json!("a+b/")), "n is not base64url"),
            (with(rsa(2048), "e", json!(65537)), "e is not a string"),
            (ec("P-521", 66), "unsupported curve \"P-521\" for kty EC"),
            (
                ec("P-256", 31),
                "x and y of a 32-byte curve must be 32 bytes",
            ),
            (
                json!({ "kty": "OKP", "crv": "X25519", "x": b64(&[1; 32]) }),
                "unsupported curve \"X25519\"",
            ),
            (
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31]) }),
                "32 bytes",
            ),
            (
                json!({ "kty": "oct", "k": b64(b"short") }),
                "an oct key of 5 bytes",
            ),
            (
                json!({ "kty": "oct", "k": b64(&[1; 32]), "kid": "h", "use": "enc" }),
                "jwks.keys[0] (kid \"h\"): use is \"enc\"",
            ),
            (
                json!({ "kty": "oct", "k": b64(&[1; 32]), "key_ops": ["sign"] }),
                "key_ops does not include \"verify\"",
            ),
            (
                json!({ "kty": "Dilithium" }),
                "unsupported kty \"Dilithium\"",
            ),
            (json!({ "n": "AQAB" }), "no kty"),
            (
                with(rsa(2048), "alg", json!("HS256")),
                "alg HS256 does not fit a kty RSA key",
            ),
            (
                with(ec("P-256", 32), "alg", json!("ES384")),
                "alg ES384 does not fit a kty EC key",
            ),
            (
                with(rsa(2048), "alg", json!("RSA-OAEP")),
                "unsupported alg \"RSA-OAEP\"",
            ),
            (
                with(rsa(2048), "alg", json!("none")),
                "unsupported alg \"none\"",
            ),
            (json!("RSA"), "not a JSON object"),
        ];
        for (jwk, expected) in table {
            let err = parse_inline(&json!({ "keys": [jwk] })).unwrap_err();
            assert!(err.contains(expected), "{jwk}: {err}");
        }
        assert!(
            parse_inline(&json!({ "kty": "RSA" }))
                .unwrap_err()
                .contains("no \"keys\" list")
        );
        assert!(
            parse_inline(&json!("{not json"))
                .unwrap_err()
                .contains("not a JSON document")
        );
    }

    #[test]
    fn a_remote_jwks_skips_what_it_cannot_use() {
        let body = json!({ "keys": [
            with(rsa(2048), "kid", json!("ok")),
            { "kty": "oct", "k": b64(&[1; 64]), "kid": "secret" },
            with(ec("P-256", 32), "use", json!("enc")),
            { "kty": "RSA", "kid": "tiny", "n": "AQAB", "e": "AQAB" },
        ]})
        .to_string();
        let (keys, skipped) = parse_remote(body.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ok"));
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(
            skipped[0].contains("(kid \"secret\") skipped: symmetric"),
            "{skipped:?}"
        );
        assert!(parse_remote(b"<html>").is_err());
        assert!(parse_remote(b"{\"keys\": 1}").is_err());
    }

    #[test]
    fn a_key_fits_its_alg_its_type_and_for_hmac_its_length() {
        let hs32 = VerifyKey {
            kid: None,
            alg: None,
            key: Key::Hmac(vec![1; 32]),
        };
        assert!(hs32.fits(Algorithm::HS256));
        assert!(!hs32.fits(Algorithm::HS384));
        assert!(!hs32.fits(Algorithm::HS512));
        assert!(!hs32.fits(Algorithm::RS256));
        let pinned = VerifyKey {
            kid: None,
            alg: Some(Algorithm::RS256),
            key: Key::Rsa {
                n: vec![1; 256],
                e: vec![1, 0, 1],
            },
        };
        assert!(pinned.fits(Algorithm::RS256));
        assert!(!pinned.fits(Algorithm::PS256));
        assert!(!pinned.fits(Algorithm::HS256));
    }
}
