//! A JWS compact serialisation (RFC 7515) read strictly, its signature checked against the keys
//! that may have made it, and its claims (RFC 7519) checked against the configuration.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portico_plugin_sdk::crypto::{self, Algorithm};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::Settings;
use crate::jwk::VerifyKey;

/// Why a token was refused. The description goes to the client in `error_description`: short,
/// and never more than the client could work out itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    TooLarge,
    Algorithm,
    UnknownKey,
    Signature,
    NoExpiry,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl Reject {
    pub fn description(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed token",
            Reject::TooLarge => "token too large",
            Reject::Algorithm => "algorithm not accepted",
            Reject::UnknownKey => "unknown signing key",
            Reject::Signature => "invalid signature",
            Reject::NoExpiry => "token has no expiry",
            Reject::Expired => "token expired",
            Reject::NotYetValid => "token not yet valid",
            Reject::Issuer => "issuer not accepted",
            Reject::Audience => "audience not accepted",
        }
    }
}

/// A token whose structure is sound: what the signature and the claims are checked on.
#[derive(Debug)]
pub struct Jws<'t> {
    /// `header.payload`, the bytes signed.
    pub signing_input: &'t str,
    pub signature: Vec<u8>,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
}

/// Splits, decodes and parses a token. Anything but three base64url (unpadded) segments whose
/// first two are JSON objects without duplicate members is malformed; so is a header without a
/// string `alg`, with a `kid` that is not a string, or with `crit` (no extension is understood,
/// so a critical one can never be honoured). An `alg` not allowed — `none` above all — is
/// refused here, before any key is looked at.
pub fn parse<'t>(token: &'t str, allowed: &[Algorithm]) -> Result<Jws<'t>, Reject> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Malformed);
    };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header: Object = decode_json(header)?;
    let claims: Object = decode_json(payload)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Reject::Malformed)?;

    let header = header.0;
    if header.contains_key("crit") {
        return Err(Reject::Malformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Reject::Malformed),
    };
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Algorithm::from_name(name)
            .filter(|a| allowed.contains(a))
            .ok_or(Reject::Algorithm)?,
        _ => return Err(Reject::Malformed),
    };
    if signature.is_empty() {
        return Err(Reject::Signature);
    }
    Ok(Jws {
        signing_input,
        signature,
        alg,
        kid,
        claims: claims.0,
    })
}

fn decode_json(segment: &str) -> Result<Object, Reject> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reject::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Reject::Malformed)
}

/// A JSON object whose members are all distinct: a duplicate is an error (RFC 7515 §5.2 lets a
/// parser take the last one, but two readers of the same token must never disagree).
struct Object(Map<String, Value>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Object;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Object, A::Error> {
                let mut members = Map::new();
                while let Some(name) = a.next_key::<String>()? {
                    let value: Value = a.next_value()?;
                    if members.insert(name, value).is_some() {
                        return Err(serde::de::Error::custom("a duplicate member"));
                    }
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// What checking the signature found.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    Invalid(Reject),
    /// No key could have signed it: a refetch of the remote keys might find one.
    NoKey,
}

/// Checks the signature with the keys that fit: those with the token's `kid` (keys without a
/// `kid` too, when none has it), or, for a token without `kid`, every key. A `kid` that no key
/// has, whose signature no `kid`-less key verifies either, is [`SignatureCheck::NoKey`]: the
/// key may be one the remote JWKS has not been fetched with yet. A key fits when its
/// `alg` (or, without one, its type and curve) is the token's `alg`, so a token can never pick
/// how a key is used: an `HS256` token naming an RSA key's `kid` is refused without any HMAC
/// being computed. `Err` only when no verifier is available at all. `tried` counts the
/// signature checks made (one per key tried).
pub fn check_signature<'k>(
    jws: &Jws<'_>,
    keys: impl Iterator<Item = &'k VerifyKey> + Clone,
    tried: &mut u64,
) -> portico_plugin_sdk::Result<SignatureCheck> {
    let fitting = |k: &&VerifyKey| k.fits(jws.alg);
    let mut kid_unknown = false;
    let candidates: Vec<&VerifyKey> = match &jws.kid {
        Some(kid) => {
            let named: Vec<&VerifyKey> = keys
                .clone()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect();
            if named.is_empty() {
                kid_unknown = true;
                keys.filter(|k| k.kid.is_none()).filter(fitting).collect()
            } else if !named.iter().any(fitting) {
                // The key exists, for another algorithm: an attempt at alg confusion.
                return Ok(SignatureCheck::Invalid(Reject::Algorithm));
            } else {
                named.into_iter().filter(fitting).collect()
            }
        }
        None => keys.filter(fitting).collect(),
    };
    if candidates.is_empty() {
        return Ok(SignatureCheck::NoKey);
    }
    let message = jws.signing_input.as_bytes();
    for key in candidates {
        *tried += 1;
        match crypto::verify(jws.alg, &key.key, message, &jws.signature) {
            Ok(true) => {
                portico_plugin_sdk::debug!(
                    "verified a {} signature with key {:?}",
                    jws.alg.name(),
                    key.kid.as_deref().unwrap_or("(no kid)")
                );
                return Ok(SignatureCheck::Valid);
            }
            Ok(false) => {}
            Err(e) if e.is_unsupported() => return Err(e),
            Err(e) => {
                portico_plugin_sdk::warn!(
                    "key {:?} could not verify a {} signature: {e}",
                    key.kid.as_deref().unwrap_or("(no kid)"),
                    jws.alg.name()
                );
            }
        }
    }
    if kid_unknown {
        return Ok(SignatureCheck::NoKey);
    }
    Ok(SignatureCheck::Invalid(Reject::Signature))
}

/// Checks `exp` (required), `nbf` and `iat` against `now` (seconds since the epoch) with the
/// leeway, then `iss` and `aud` against the configuration. Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    settings: &Settings,
    now: f64,
) -> Result<f64, Reject> {
    let leeway = settings.leeway.as_secs_f64();
    let date = |name: &str| -> Result<Option<f64>, Reject> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Reject::Malformed),
            Some(_) => Err(Reject::Malformed),
        }
    };
    let exp = date("exp")?.ok_or(Reject::NoExpiry)?;
    if now >= exp + leeway {
        return Err(Reject::Expired);
    }
    if let Some(nbf) = date("nbf")?
        && now + leeway < nbf
    {
        return Err(Reject::NotYetValid);
    }
    if let Some(iat) = date("iat")?
        && now + leeway < iat
    {
        return Err(Reject::NotYetValid);
    }
    if !settings.issuers.is_empty() {
        let iss = claims.get("iss").and_then(Value::as_str);
        if !iss.is_some_and(|iss| settings.issuers.iter().any(|i| i == iss)) {
            return Err(Reject::Issuer);
        }
    }
    if !settings.audiences.is_empty() {
        let accepted = |aud: &str| settings.audiences.iter().any(|a| a == aud);
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => accepted(aud),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        };
        if !ok {
            return Err(Reject::Audience);
        }
    }
    Ok(exp)
}

/// A claim as a header value: strings as they are, anything else as compact JSON. `None` when
/// absent, or when the value cannot be a header value (control characters).
pub fn claim_header_value(claims: &Map<String, Value>, claim: &str) -> Option<String> {
    let value = match claims.get(claim)? {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    let valid = value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    valid.then_some(value)
}
