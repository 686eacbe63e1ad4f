//! Keys and tokens for the jwt plugin's tests: its unit tests (`src/tests.rs`) and the
//! end-to-end suite (`tests/e2e/plugin_jwt.rs`) both include this file. Tokens are minted with
//! `jsonwebtoken`, a maintained JWT library that shares no code with the plugin; tokens no
//! library would make (unsigned, tampered, malformed) are assembled by hand. The PEM files
//! beside this one are test keys, made with `openssl genrsa`/`genpkey`, and protect nothing.
#![allow(dead_code)]

use std::sync::OnceLock;

pub use jsonwebtoken::Algorithm as Alg;
use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

/// A test key: its `kid`, the `alg` its JWK names (if any), and the private half.
pub struct TestKey {
    pub kid: &'static str,
    pub jwk_alg: Option<Alg>,
    pub encoding: EncodingKey,
}

/// The key ring: two RSA keys (the second pinned to RS256), one key per curve, and a 64-byte
/// HMAC secret.
pub fn ring() -> &'static [TestKey] {
    static RING: OnceLock<Vec<TestKey>> = OnceLock::new();
    RING.get_or_init(|| {
        let rsa = |pem: &str| EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA test key");
        let ec = |pem: &str| EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC test key");
        vec![
            TestKey {
                kid: "rsa-a",
                jwk_alg: None,
                encoding: rsa(include_str!("rsa-a.pem")),
            },
            TestKey {
                kid: "rsa-b",
                jwk_alg: Some(Alg::RS256),
                encoding: rsa(include_str!("rsa-b.pem")),
            },
            TestKey {
                kid: "ec-p256",
                jwk_alg: Some(Alg::ES256),
                encoding: ec(include_str!("ec-p256.pem")),
            },
            TestKey {
                kid: "ec-p384",
                jwk_alg: None,
                encoding: ec(include_str!("ec-p384.pem")),
            },
            TestKey {
                kid: "ed25519",
                jwk_alg: Some(Alg::EdDSA),
                encoding: EncodingKey::from_ed_pem(include_str!("ed25519.pem").as_bytes())
                    .expect("Ed25519 test key"),
            },
            TestKey {
                kid: "hmac",
                jwk_alg: None,
                encoding: EncodingKey::from_secret(HMAC_SECRET),
            },
        ]
    })
}

pub const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every algorithm the plugin supports, with the kid of a key that signs it.
pub const ALGORITHMS: [(Alg, &str); 12] = [
    (Alg::RS256, "rsa-a"),
    (Alg::RS384, "rsa-a"),
    (Alg::RS512, "rsa-a"),
    (Alg::PS256, "rsa-a"),
    (Alg::PS384, "rsa-a"),
    (Alg::PS512, "rsa-a"),
    (Alg::ES256, "ec-p256"),
    (Alg::ES384, "ec-p384"),
    (Alg::EdDSA, "ed25519"),
    (Alg::HS256, "hmac"),
    (Alg::HS384, "hmac"),
    (Alg::HS512, "hmac"),
];

pub fn key(kid: &str) -> &'static TestKey {
    ring()
        .iter()
        .find(|k| k.kid == kid)
        .unwrap_or_else(|| panic!("no test key {kid}"))
}

/// The public JWK of a test key (the secret itself for HMAC), with its kid and alg.
pub fn jwk(kid: &str) -> Value {
    let k = key(kid);
    // The algorithm only picks the key's family here; `alg` is set below as the ring says.
    let family_alg = match kid {
        "ec-p256" => Alg::ES256,
        "ec-p384" => Alg::ES384,
        "ed25519" => Alg::EdDSA,
        "hmac" => Alg::HS256,
        _ => Alg::RS256,
    };
    let jwk = Jwk::from_encoding_key(&k.encoding, family_alg).expect("public JWK");
    let mut value = serde_json::to_value(jwk).expect("JWK as JSON");
    let members = value.as_object_mut().expect("a JWK is an object");
    members.remove("alg");
    members.insert("kid".into(), json!(kid));
    if let Some(alg) = k.jwk_alg {
        members.insert("alg".into(), json!(alg_name(alg)));
    }
    value
}

/// `{ "keys": [...] }` of the named test keys.
pub fn jwks(kids: &[&str]) -> Value {
    json!({ "keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>() })
}

pub fn alg_name(alg: Alg) -> &'static str {
    match alg {
        Alg::HS256 => "HS256",
        Alg::HS384 => "HS384",
        Alg::HS512 => "HS512",
        Alg::RS256 => "RS256",
        Alg::RS384 => "RS384",
        Alg::RS512 => "RS512",
        Alg::PS256 => "PS256",
        Alg::PS384 => "PS384",
        Alg::PS512 => "PS512",
        Alg::ES256 => "ES256",
        Alg::ES384 => "ES384",
        Alg::EdDSA => "EdDSA",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Claims valid at `now` (seconds since the epoch) for an hour, from issuer `https://idp.test`
/// for audience `api`, merged with `extra` (a `null` member removes a claim).
pub fn claims(now: u64, extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://idp.test",
        "aud": "api",
        "sub": "alice",
        "iat": now,
        "exp": now + 3600,
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

/// A token signed by the key `signer` with `alg`, naming `kid` in its header.
pub fn mint_with(alg: Alg, kid: Option<&str>, signer: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key(signer).encoding).expect("mint a token")
}

/// A token signed by the ring's key for `alg`, naming that key.
pub fn mint(alg: Alg, claims: &Value) -> String {
    let kid = ALGORITHMS
        .iter()
        .find(|(a, _)| *a == alg)
        .map(|(_, k)| *k)
        .expect("a supported algorithm");
    mint_with(alg, Some(kid), kid, claims)
}

/// An HS256 token whose HMAC key is `secret` (the classic confusion: an RSA public key used
/// as an HMAC secret), naming `kid` or no key at all.
pub fn mint_hmac_with_secret(kid: Option<&str>, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Alg::HS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("mint")
}

/// The public half of the RSA test key `rsa-a` in every form a server might hold it, to be
/// tried as an HMAC secret: the JWK as JSON text, its `n` bytes, `n` then `e`, and the PEM
/// texts (SubjectPublicKeyInfo and PKCS#1, made with `openssl rsa -pubout` and
/// `-RSAPublicKey_out`).
pub fn rsa_public_secrets() -> Vec<(&'static str, Vec<u8>)> {
    let jwk = jwk("rsa-a");
    let n = unb64(jwk["n"].as_str().expect("n"));
    let e = unb64(jwk["e"].as_str().expect("e"));
    vec![
        ("the JWK text", jwk.to_string().into_bytes()),
        ("the JWK's n", n.clone()),
        ("the JWK's n and e", [n, e].concat()),
        ("the SPKI PEM", include_bytes!("rsa-a.pub.pem").to_vec()),
        (
            "the PKCS#1 PEM",
            include_bytes!("rsa-a.rsapub.pem").to_vec(),
        ),
    ]
}

/// A token around any header and any payload text (valid JSON or not), signed with `alg` by
/// the key `signer`: what no JWT library would write.
pub fn sign_raw(header: &Value, payload: &str, alg: Alg, signer: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key(signer).encoding, alg).expect("sign");
    format!("{input}.{signature}")
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The bytes of base64url text without padding.
pub fn unb64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64url without padding") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// `header.payload.signature` from JSON values and raw signature bytes.
pub fn assemble(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// The same token with its payload replaced by `claims` (the signature kept).
pub fn tamper(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().expect("header");
    let _ = parts.next();
    let signature = parts.next().expect("signature");
    format!(
        "{header}.{}.{signature}",
        b64(claims.to_string().as_bytes())
    )
}

/// The same token without its signature (`header.payload.`).
pub fn strip_signature(token: &str) -> String {
    let end = token.rfind('.').expect("a JWS");
    token[..=end].to_string()
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn base64url_matches_the_rfc_examples() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg");
        assert_eq!(b64(b"fo"), "Zm8");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foob"), "Zm9vYg");
        assert_eq!(b64(&[0xfb, 0xff]), "-_8");
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0xfb, 0xff]] {
            assert_eq!(unb64(&b64(bytes)), bytes);
        }
    }
}
